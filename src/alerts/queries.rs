//! All SQL of the alerts module. Other modules call `alerts` functions, never these tables.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::buckets::CountKey;
use super::input::Thresholds;
use super::rules::{FAILURE_CLASSES, OVERLOAD_OUTCOME, TOTAL_FAILURE_OUTCOME};

// ---- event counts ---------------------------------------------------------------------------------------------------

/// Adds counts to their rows. Rows of a key set revoked meanwhile are skipped.
pub async fn add_counts(pool: &PgPool, rows: &[(CountKey, i64)]) -> sqlx::Result<()> {
    for chunk in rows.chunks(1000) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut buckets = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        let mut classes = Vec::with_capacity(chunk.len());
        let mut models = Vec::with_capacity(chunk.len());
        let mut providers = Vec::with_capacity(chunk.len());
        let mut instances = Vec::with_capacity(chunk.len());
        let mut key_ids = Vec::with_capacity(chunk.len());
        let mut counts = Vec::with_capacity(chunk.len());
        for (k, n) in chunk {
            ids.push(k.key_set_id);
            buckets.push(k.bucket);
            kinds.push(k.kind);
            classes.push(k.class);
            models.push(k.model.as_str());
            providers.push(k.provider);
            instances.push(k.instance.as_str());
            key_ids.push(k.key_id);
            counts.push(*n);
        }
        // The EXISTS reads the vault's table only to respect the foreign key: counts for a revoked key set are moot.
        sqlx::query(
            "INSERT INTO alerts_event_counts (key_set_id, bucket, kind, class, model, provider, instance, key_id, count) \
             SELECT u.* FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                    $7::text[], $8::uuid[], $9::int8[]) \
                  AS u(key_set_id, bucket, kind, class, model, provider, instance, key_id, count) \
             WHERE EXISTS (SELECT 1 FROM vault_key_sets s WHERE s.id = u.key_set_id) \
             ON CONFLICT (key_set_id, bucket, kind, class, model, provider, instance, key_id) \
             DO UPDATE SET count = alerts_event_counts.count + EXCLUDED.count",
        )
        .bind(ids)
        .bind(buckets)
        .bind(kinds)
        .bind(classes)
        .bind(models)
        .bind(providers)
        .bind(instances)
        .bind(key_ids)
        .bind(counts)
        .execute(pool)
        .await?;
    }
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub bucket: DateTime<Utc>,
    pub kind: String,
    pub class: String,
    pub model: String,
    pub provider: String,
    pub instance: String,
    pub count: i64,
}

/// Counts per bucket, class, model, provider and instance since `since` (keys summed), oldest first.
pub async fn event_rows(
    pool: &PgPool,
    key_set_id: Uuid,
    since: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT bucket, kind, class, model, provider, instance, sum(count)::int8 AS count FROM alerts_event_counts \
         WHERE key_set_id = $1 AND bucket >= $2 GROUP BY bucket, kind, class, model, provider, instance \
         ORDER BY bucket, kind, class, model, provider, instance LIMIT $3",
    )
    .bind(key_set_id)
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WindowRow {
    pub kind: String,
    pub class: String,
    pub model: String,
    pub provider: String,
    pub instance: String,
    pub key_id: Uuid,
    pub count: i64,
}

/// Everything counted in buckets from `first` on.
pub async fn window_rows(pool: &PgPool, key_set_id: Uuid, first: DateTime<Utc>) -> sqlx::Result<Vec<WindowRow>> {
    sqlx::query_as(
        "SELECT kind, class, model, provider, instance, key_id, sum(count)::int8 AS count FROM alerts_event_counts \
         WHERE key_set_id = $1 AND bucket >= $2 GROUP BY kind, class, model, provider, instance, key_id",
    )
    .bind(key_set_id)
    .bind(first)
    .fetch_all(pool)
    .await
}

/// Failures per bucket in `[from, to)`.
pub async fn failure_history(
    pool: &PgPool,
    key_set_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<(DateTime<Utc>, i64)>> {
    sqlx::query_as(
        "SELECT bucket, sum(count)::int8 FROM alerts_event_counts \
         WHERE key_set_id = $1 AND bucket >= $2 AND bucket < $3 \
           AND ((kind = 'attempt' AND class = ANY($4)) OR (kind = 'outcome' AND class = $5)) \
         GROUP BY bucket",
    )
    .bind(key_set_id)
    .bind(from)
    .bind(to)
    .bind(&FAILURE_CLASSES[..])
    .bind(OVERLOAD_OUTCOME)
    .fetch_all(pool)
    .await
}

/// Key sets with failures counted since `since`, or with an open alert. A key set with neither cannot open or resolve
/// an alert (every rule needs at least one failure), so healthy tenants cost the evaluator nothing.
pub async fn key_sets_to_evaluate(pool: &PgPool, since: DateTime<Utc>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT DISTINCT key_set_id FROM alerts_event_counts WHERE bucket > $1 \
           AND ((kind = 'attempt' AND class = ANY($2)) OR (kind = 'outcome' AND class IN ($3, $4))) \
         UNION SELECT key_set_id FROM alerts_alerts WHERE resolved_at IS NULL",
    )
    .bind(since)
    .bind(&FAILURE_CLASSES[..])
    .bind(OVERLOAD_OUTCOME)
    .bind(TOTAL_FAILURE_OUTCOME)
    .fetch_all(pool)
    .await
}

pub async fn delete_counts_before(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query("DELETE FROM alerts_event_counts WHERE bucket < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}

// ---- settings and recipients ------------------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct SettingsRow {
    enabled: bool,
    min_errors: i32,
    window_seconds: i32,
    spike_factor: f64,
    cooldown_seconds: i32,
    alert_on_total_failure: bool,
    emails: Vec<String>,
}

/// A key set's thresholds and extra recipients, if it ever set them.
pub async fn settings(pool: &PgPool, key_set_id: Uuid) -> sqlx::Result<Option<(Thresholds, Vec<String>)>> {
    let row: Option<SettingsRow> = sqlx::query_as(
        "SELECT enabled, min_errors, window_seconds, spike_factor, cooldown_seconds, alert_on_total_failure, emails \
         FROM alerts_settings WHERE key_set_id = $1",
    )
    .bind(key_set_id)
    .fetch_optional(pool)
    .await?;
    let unsigned = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(row.map(|r| {
        let thresholds = Thresholds {
            enabled: r.enabled,
            min_errors: unsigned(r.min_errors).max(1),
            window_seconds: unsigned(r.window_seconds).max(1),
            spike_factor: r.spike_factor,
            cooldown_seconds: unsigned(r.cooldown_seconds),
            alert_on_total_failure: r.alert_on_total_failure,
        };
        (thresholds, r.emails)
    }))
}

pub async fn put_settings(pool: &PgPool, key_set_id: Uuid, t: &Thresholds, emails: &[String]) -> sqlx::Result<()> {
    let signed = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO alerts_settings (key_set_id, enabled, min_errors, window_seconds, spike_factor, cooldown_seconds, \
                                      alert_on_total_failure, emails) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (key_set_id) DO UPDATE SET enabled = $2, min_errors = $3, window_seconds = $4, spike_factor = $5, \
             cooldown_seconds = $6, alert_on_total_failure = $7, emails = $8, updated_at = now()",
    )
    .bind(key_set_id)
    .bind(t.enabled)
    .bind(signed(t.min_errors))
    .bind(signed(t.window_seconds))
    .bind(t.spike_factor)
    .bind(signed(t.cooldown_seconds))
    .bind(t.alert_on_total_failure)
    .bind(emails)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Addresses of a key set that confirmed, lower-cased.
pub async fn verified_emails(pool: &PgPool, key_set_id: Uuid) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT lower(email) FROM alerts_recipients WHERE key_set_id = $1 AND verified_at IS NOT NULL")
        .bind(key_set_id)
        .fetch_all(pool)
        .await
}

/// Stores a new verification token for `email` unless it is confirmed or has a link that is still valid. Returns
/// whether it did (so concurrent calls send one link).
pub async fn issue_token(
    conn: &mut PgConnection,
    key_set_id: Uuid,
    email: &str,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let row: Option<i32> = sqlx::query_scalar(
        "INSERT INTO alerts_recipients (key_set_id, email, token_hash, token_expires_at) VALUES ($1, lower($2), $3, $4) \
         ON CONFLICT (key_set_id, email) DO UPDATE SET token_hash = $3, token_expires_at = $4 \
         WHERE alerts_recipients.verified_at IS NULL \
           AND (alerts_recipients.token_expires_at IS NULL OR alerts_recipients.token_expires_at <= now()) \
         RETURNING 1",
    )
    .bind(key_set_id)
    .bind(email)
    .bind(token_hash)
    .bind(expires_at)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Records an address the vault already knows to be confirmed.
pub async fn insert_verified(pool: &PgPool, key_set_id: Uuid, email: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO alerts_recipients (key_set_id, email, verified_at) VALUES ($1, lower($2), now()) \
         ON CONFLICT (key_set_id, email) DO UPDATE SET verified_at = coalesce(alerts_recipients.verified_at, now())",
    )
    .bind(key_set_id)
    .bind(email)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Uses a verification token: confirms its address once, if it has not expired.
pub async fn consume_token(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as(
        "UPDATE alerts_recipients SET verified_at = now(), token_hash = NULL, token_expires_at = NULL \
         WHERE token_hash = $1 AND token_expires_at > now() AND verified_at IS NULL RETURNING key_set_id, email",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}

// ---- alerts ---------------------------------------------------------------------------------------------------------------

/// Holds the key set's evaluation lock until the transaction ends; false when another replica holds it.
pub async fn try_lock_key_set(conn: &mut PgConnection, key_set_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended('alerts:' || $1::text, 0))")
        .bind(key_set_id)
        .fetch_one(conn)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: Uuid,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub trigger: String,
    pub summary: Json<serde_json::Value>,
    pub recipients: Vec<String>,
}

const ALERT_COLUMNS: &str = "id, opened_at, resolved_at, trigger, summary, recipients";

pub async fn open_alert(conn: &mut PgConnection, key_set_id: Uuid) -> sqlx::Result<Option<AlertRow>> {
    sqlx::query_as(&format!("SELECT {ALERT_COLUMNS} FROM alerts_alerts WHERE key_set_id = $1 AND resolved_at IS NULL"))
        .bind(key_set_id)
        .fetch_optional(conn)
        .await
}

pub async fn last_opened_at(conn: &mut PgConnection, key_set_id: Uuid) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(opened_at) FROM alerts_alerts WHERE key_set_id = $1")
        .bind(key_set_id)
        .fetch_one(conn)
        .await
}

/// Inserts an open alert; false when one is open already (another replica won).
pub async fn insert_alert(
    conn: &mut PgConnection,
    id: Uuid,
    key_set_id: Uuid,
    opened_at: DateTime<Utc>,
    trigger: &str,
    summary: &serde_json::Value,
    recipients: &[String],
) -> sqlx::Result<bool> {
    sqlx::query(
        "INSERT INTO alerts_alerts (id, key_set_id, opened_at, trigger, summary, recipients) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_set_id) WHERE resolved_at IS NULL DO NOTHING",
    )
    .bind(id)
    .bind(key_set_id)
    .bind(opened_at)
    .bind(trigger)
    .bind(Json(summary))
    .bind(recipients)
    .execute(conn)
    .await
    .map(|r| r.rows_affected() == 1)
}

pub async fn resolve_alert(conn: &mut PgConnection, id: Uuid, at: DateTime<Utc>) -> sqlx::Result<bool> {
    sqlx::query("UPDATE alerts_alerts SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL")
        .bind(id)
        .bind(at)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() == 1)
}

pub async fn recent_alerts(pool: &PgPool, key_set_id: Uuid, limit: i64) -> sqlx::Result<Vec<AlertRow>> {
    sqlx::query_as(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts_alerts WHERE key_set_id = $1 ORDER BY opened_at DESC LIMIT $2"
    ))
    .bind(key_set_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub alert_id: Uuid,
    pub kind: String,
    pub recipient: String,
    pub state: String,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
}

pub async fn deliveries(pool: &PgPool, alert_ids: &[Uuid]) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        "SELECT alert_id, kind, recipient, state, attempts, sent_at FROM alerts_outbox \
         WHERE alert_id = ANY($1) ORDER BY created_at, recipient",
    )
    .bind(alert_ids)
    .fetch_all(pool)
    .await
}

// ---- outbox ---------------------------------------------------------------------------------------------------------------

/// A rendered email waiting in the outbox.
#[derive(Debug, Clone)]
pub struct NewMail {
    pub key_set_id: Uuid,
    pub alert_id: Option<Uuid>,
    pub kind: &'static str,
    pub recipient: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Queues a mail whose subject and bodies are already sealed (`outbox::enqueue`).
pub async fn enqueue(
    conn: &mut PgConnection,
    id: Uuid,
    mail: &NewMail,
    master_key_version: i32,
    sealed: &[u8],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO alerts_outbox (id, key_set_id, alert_id, kind, recipient, sealed, master_key_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(mail.key_set_id)
    .bind(mail.alert_id)
    .bind(mail.kind)
    .bind(&mail.recipient)
    .bind(sealed)
    .bind(master_key_version)
    .execute(conn)
    .await
    .map(|_| ())
}

#[derive(Debug, sqlx::FromRow)]
pub struct DueMail {
    pub id: Uuid,
    pub recipient: String,
    pub sealed: Option<Vec<u8>>,
    pub master_key_version: Option<i32>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Claims one due email; the row stays locked (other workers skip it) until the transaction ends.
pub async fn claim_due(conn: &mut PgConnection) -> sqlx::Result<Option<DueMail>> {
    sqlx::query_as(
        "SELECT id, recipient, sealed, master_key_version, attempts, created_at FROM alerts_outbox \
         WHERE state = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await
}

/// Serialises sends to one address across workers until the transaction ends, so the hourly cap is exact.
pub async fn lock_recipient(conn: &mut PgConnection, recipient: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('alerts-to:' || lower($1), 0))")
        .bind(recipient)
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn sent_within_hour(conn: &mut PgConnection, recipient: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM alerts_outbox WHERE state = 'sent' AND lower(recipient) = lower($1) \
         AND sent_at > now() - interval '1 hour'",
    )
    .bind(recipient)
    .fetch_one(conn)
    .await
}

/// A final state: `sent`, `capped` or `expired`. The body goes (a verification link must not outlive its use).
pub async fn finish(conn: &mut PgConnection, id: Uuid, state: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE alerts_outbox SET state = $2, sealed = NULL, attempts = attempts + ($2 = 'sent')::int, \
                sent_at = CASE WHEN $2 = 'sent' THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn retry_later(
    conn: &mut PgConnection,
    id: Uuid,
    after: std::time::Duration,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE alerts_outbox SET attempts = attempts + 1, last_error = $3, \
                next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(after.as_secs_f64())
    .bind(error)
    .execute(conn)
    .await
    .map(|_| ())
}
