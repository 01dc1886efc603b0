//! All SQL of the vault module. Other modules call `vault` functions, never these tables.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::input::{KeyTarget, Policy};

#[derive(sqlx::FromRow)]
pub struct KeySetSecretRow {
    pub id: Uuid,
    pub token_hash: Vec<u8>,
    pub wrapped_dek: Vec<u8>,
    pub master_key_version: i32,
    /// 1: one-layer wrap, provider keys bound to set and record only; 2: two layers, keys bound to their target.
    pub format: i16,
}

/// The request path's read of a token's key set: its secret columns and its policy in one query.
#[derive(sqlx::FromRow)]
pub struct OpeningRow {
    #[sqlx(flatten)]
    pub secret: KeySetSecretRow,
    pub policy: Json<Policy>,
}

/// A format-2 wrapped data key, for offline master key rotation.
#[derive(sqlx::FromRow)]
pub struct WrappedRow {
    pub id: Uuid,
    pub wrapped_dek: Vec<u8>,
    pub master_key_version: i32,
}

#[derive(sqlx::FromRow)]
pub struct KeySetRow {
    pub user_email: String,
    pub email_verified: bool,
    pub policy: Json<Policy>,
}

#[derive(sqlx::FromRow)]
pub struct ProviderKeyRow {
    pub id: Uuid,
    pub provider: String,
    pub masked: String,
    pub target: Json<KeyTarget>,
    pub status: String,
    pub cooling_down: bool,
    pub last_error: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub struct CiphertextRow {
    pub id: Uuid,
    pub provider: String,
    pub ciphertext: Vec<u8>,
    pub target: Json<KeyTarget>,
    pub invalid_since: Option<DateTime<Utc>>,
}

/// One provider key ready for insertion (already encrypted).
pub struct SealedKey {
    pub id: Uuid,
    pub provider: &'static str,
    pub ciphertext: Vec<u8>,
    pub masked: String,
    pub target: KeyTarget,
}

const SECRET_COLUMNS: &str = "id, token_hash, wrapped_dek, master_key_version, format";

/// The hot path's one indexed lookup (hashes under the active pepper).
pub async fn find_by_token_hash(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<KeySetSecretRow>> {
    sqlx::query_as(&format!("SELECT {SECRET_COLUMNS} FROM vault_key_sets WHERE token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(pool)
        .await
}

/// [`find_by_token_hash`] with the policy, for opening the set on one connection.
pub async fn find_for_opening<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    token_hash: &[u8],
) -> sqlx::Result<Option<OpeningRow>> {
    sqlx::query_as(&format!("SELECT {SECRET_COLUMNS}, policy FROM vault_key_sets WHERE token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(conn)
        .await
}

/// After a miss: the same token's hashes under every older pepper, in one query on the same index.
pub async fn find_by_any_token_hash(pool: &PgPool, token_hashes: &[Vec<u8>]) -> sqlx::Result<Option<KeySetSecretRow>> {
    sqlx::query_as(&format!("SELECT {SECRET_COLUMNS} FROM vault_key_sets WHERE token_hash = ANY($1) LIMIT 1"))
        .bind(token_hashes)
        .fetch_optional(pool)
        .await
}

/// Moves a token's hash to the active pepper, unless another replica already did.
pub async fn rehash_token(
    pool: &PgPool,
    id: Uuid,
    old_hash: &[u8],
    new_hash: &[u8],
    pepper_version: i32,
) -> sqlx::Result<bool> {
    let done =
        sqlx::query("UPDATE vault_key_sets SET token_hash = $3, pepper_version = $4 WHERE id = $1 AND token_hash = $2")
            .bind(id)
            .bind(old_hash)
            .bind(new_hash)
            .bind(pepper_version)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// The key set being inserted (always format 2).
pub struct NewKeySetRow<'a> {
    pub id: Uuid,
    pub token_hash: &'a [u8],
    pub pepper_version: i32,
    pub wrapped_dek: &'a [u8],
    pub master_key_version: i32,
    pub user_email: &'a str,
    pub policy: &'a Policy,
}

pub async fn insert_key_set(conn: &mut PgConnection, row: NewKeySetRow<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO vault_key_sets \
             (id, token_hash, pepper_version, wrapped_dek, master_key_version, format, user_email, policy) \
         VALUES ($1, $2, $3, $4, $5, 2, $6, $7)",
    )
    .bind(row.id)
    .bind(row.token_hash)
    .bind(row.pepper_version)
    .bind(row.wrapped_dek)
    .bind(row.master_key_version)
    .bind(row.user_email)
    .bind(Json(row.policy))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Inserts keys at positions `first_position..` in one round trip.
pub async fn insert_keys(
    conn: &mut PgConnection,
    key_set_id: Uuid,
    first_position: i32,
    keys: Vec<SealedKey>,
) -> sqlx::Result<()> {
    let mut ids = Vec::with_capacity(keys.len());
    let mut positions = Vec::with_capacity(keys.len());
    let mut providers = Vec::with_capacity(keys.len());
    let mut ciphertexts = Vec::with_capacity(keys.len());
    let mut masks = Vec::with_capacity(keys.len());
    let mut targets = Vec::with_capacity(keys.len());
    for (offset, key) in (0..).zip(keys) {
        ids.push(key.id);
        positions.push(first_position + offset);
        providers.push(key.provider);
        ciphertexts.push(key.ciphertext);
        masks.push(key.masked);
        targets.push(Json(key.target));
    }
    sqlx::query(
        "INSERT INTO vault_provider_keys (id, key_set_id, position, provider, ciphertext, masked, target) \
         SELECT u.id, $2, u.position, u.provider, u.ciphertext, u.masked, u.target \
         FROM UNNEST($1::uuid[], $3::int4[], $4::text[], $5::bytea[], $6::text[], $7::jsonb[]) \
              AS u(id, position, provider, ciphertext, masked, target)",
    )
    .bind(ids)
    .bind(key_set_id)
    .bind(positions)
    .bind(providers)
    .bind(ciphertexts)
    .bind(masks)
    .bind(targets)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Replaces a format-2 data key's outer layer, unless someone else moved it first.
pub async fn rewrap(
    pool: &PgPool,
    id: Uuid,
    old_version: i32,
    new_version: i32,
    wrapped_dek: &[u8],
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE vault_key_sets SET wrapped_dek = $3, master_key_version = $4 \
         WHERE id = $1 AND master_key_version = $2 AND format = 2",
    )
    .bind(id)
    .bind(old_version)
    .bind(wrapped_dek)
    .bind(new_version)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn key_set<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    id: Uuid,
    for_update: bool,
) -> sqlx::Result<Option<KeySetRow>> {
    let sql = if for_update {
        "SELECT user_email, email_verified, policy FROM vault_key_sets WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT user_email, email_verified, policy FROM vault_key_sets WHERE id = $1"
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

pub async fn provider_keys<'c>(conn: impl sqlx::PgExecutor<'c>, key_set_id: Uuid) -> sqlx::Result<Vec<ProviderKeyRow>> {
    sqlx::query_as(
        "SELECT id, provider, masked, target, status, \
                (cooling_down_until IS NOT NULL AND cooling_down_until > now()) AS cooling_down, \
                last_error, last_used_at \
         FROM vault_provider_keys WHERE key_set_id = $1 ORDER BY position",
    )
    .bind(key_set_id)
    .fetch_all(conn)
    .await
}

/// Format-2 key sets not under `active_version`, in id order after `after` (a page for `rotate-master-key`).
pub async fn wrapped_not_under(
    pool: &PgPool,
    active_version: i32,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<WrappedRow>> {
    sqlx::query_as(
        "SELECT id, wrapped_dek, master_key_version FROM vault_key_sets \
         WHERE format = 2 AND master_key_version <> $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(active_version)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Locks a key set for its one-time upgrade; its format, or `None` when revoked meanwhile.
pub async fn lock_format(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<i16>> {
    sqlx::query_scalar("SELECT format FROM vault_key_sets WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(conn).await
}

/// Stores a data key wrapped in two layers (format 2).
pub async fn set_two_layer_wrap(
    conn: &mut PgConnection,
    id: Uuid,
    wrapped_dek: &[u8],
    master_key_version: i32,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE vault_key_sets SET wrapped_dek = $2, master_key_version = $3, format = 2 WHERE id = $1")
        .bind(id)
        .bind(wrapped_dek)
        .bind(master_key_version)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Replaces provider keys' ciphertexts (re-sealed with their target bound).
pub async fn reseal_keys(
    conn: &mut PgConnection,
    key_set_id: Uuid,
    ids: &[Uuid],
    ciphertexts: &[Vec<u8>],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE vault_provider_keys AS k SET ciphertext = u.ciphertext \
         FROM UNNEST($2::uuid[], $3::bytea[]) AS u(id, ciphertext) WHERE k.key_set_id = $1 AND k.id = u.id",
    )
    .bind(key_set_id)
    .bind(ids)
    .bind(ciphertexts)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn ciphertexts<'c>(conn: impl sqlx::PgExecutor<'c>, key_set_id: Uuid) -> sqlx::Result<Vec<CiphertextRow>> {
    sqlx::query_as(
        "SELECT id, provider, ciphertext, target, \
                CASE WHEN status = 'invalid' THEN coalesce(invalid_since, now()) END AS invalid_since \
         FROM vault_provider_keys WHERE key_set_id = $1 ORDER BY position",
    )
    .bind(key_set_id)
    .fetch_all(conn)
    .await
}

pub async fn delete_keys(conn: &mut PgConnection, key_set_id: Uuid, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM vault_provider_keys WHERE key_set_id = $1 AND id = ANY($2)")
        .bind(key_set_id)
        .bind(ids)
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn set_positions(conn: &mut PgConnection, key_set_id: Uuid, ordered_ids: &[Uuid]) -> sqlx::Result<()> {
    let positions: Vec<i32> = (0..).take(ordered_ids.len()).collect();
    sqlx::query(
        "UPDATE vault_provider_keys AS k SET position = u.position \
         FROM UNNEST($2::uuid[], $3::int4[]) AS u(id, position) \
         WHERE k.key_set_id = $1 AND k.id = u.id AND k.position <> u.position",
    )
    .bind(key_set_id)
    .bind(ordered_ids)
    .bind(positions)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn revive_keys(conn: &mut PgConnection, key_set_id: Uuid, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE vault_provider_keys \
         SET status = 'active', last_error = NULL, invalid_since = NULL, cooling_down_until = NULL \
         WHERE key_set_id = $1 AND id = ANY($2)",
    )
    .bind(key_set_id)
    .bind(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn update_key_set(
    conn: &mut PgConnection,
    id: Uuid,
    user_email: &str,
    email_verified: bool,
    policy: &Policy,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE vault_key_sets SET user_email = $2, email_verified = $3, policy = $4, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(user_email)
    .bind(email_verified)
    .bind(Json(policy))
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn mark_key_invalid(pool: &PgPool, key_set_id: Uuid, key_id: Uuid, reason: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE vault_provider_keys SET status = 'invalid', last_error = $3, invalid_since = now() \
         WHERE key_set_id = $1 AND id = $2",
    )
    .bind(key_set_id)
    .bind(key_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts a key back into rotation after it answered successfully again.
pub async fn mark_key_active(pool: &PgPool, key_set_id: Uuid, key_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE vault_provider_keys SET status = 'active', last_error = NULL, invalid_since = NULL \
         WHERE key_set_id = $1 AND id = $2 AND status = 'invalid'",
    )
    .bind(key_set_id)
    .bind(key_id)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records when keys last served a request (batched by the caller).
pub async fn touch_keys(pool: &PgPool, ids: &[Uuid], at: &[DateTime<Utc>]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE vault_provider_keys AS k SET last_used_at = greatest(k.last_used_at, u.at) \
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
    )
    .bind(ids)
    .bind(at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Sets or clears a key's rate-limit cooldown (shown as `cooling_down`).
pub async fn set_cooldown(pool: &PgPool, key_id: Uuid, until: Option<DateTime<Utc>>) -> sqlx::Result<()> {
    sqlx::query("UPDATE vault_provider_keys SET cooling_down_until = $2 WHERE id = $1")
        .bind(key_id)
        .bind(until)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Deletes the key set, its wrapped data key and (by cascade) every ciphertext, and tells every replica.
pub async fn delete_key_set(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM vault_key_sets WHERE id = $1").bind(id).execute(&mut *conn).await?;
    notify_change(conn, id).await?;
    Ok(done.rows_affected() == 1)
}

/// `pg_notify(channel, payload)` on its own.
pub async fn notify(pool: &PgPool, channel: &str, payload: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(pool).await.map(|_| ())
}

/// Delivered to every replica's listener when the transaction commits.
pub async fn notify_change(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::CHANGE_CHANNEL)
        .bind(id.to_string())
        .execute(conn)
        .await
        .map(|_| ())
}

/// Per master key version: key sets in two layers (format 2) and in one layer (format 1, which needs its token to move).
pub async fn master_key_usage(pool: &PgPool) -> sqlx::Result<Vec<(i32, i64, i64)>> {
    sqlx::query_as(
        "SELECT master_key_version, count(*) FILTER (WHERE format = 2), count(*) FILTER (WHERE format = 1) \
         FROM vault_key_sets GROUP BY master_key_version ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

/// How many tokens are hashed under each pepper version (an older version with none left can be removed).
pub async fn pepper_usage(pool: &PgPool) -> sqlx::Result<Vec<(i32, i64)>> {
    sqlx::query_as("SELECT pepper_version, count(*) FROM vault_key_sets GROUP BY pepper_version ORDER BY 1")
        .fetch_all(pool)
        .await
}

/// A key set's policy, or `None` when it does not exist (revoked).
pub async fn policy(pool: &PgPool, key_set_id: Uuid) -> sqlx::Result<Option<Policy>> {
    let row: Option<(Json<Policy>,)> =
        sqlx::query_as("SELECT policy FROM vault_key_sets WHERE id = $1").bind(key_set_id).fetch_optional(pool).await?;
    Ok(row.map(|(policy,)| policy.0))
}

/// `(key id, provider, masked key)` of every key of a set, for alert digests.
pub async fn masked_keys(pool: &PgPool, key_set_id: Uuid) -> sqlx::Result<Vec<(Uuid, String, String)>> {
    sqlx::query_as("SELECT id, provider, masked FROM vault_provider_keys WHERE key_set_id = $1 ORDER BY position")
        .bind(key_set_id)
        .fetch_all(pool)
        .await
}

/// The key set's contact address and whether it confirmed it.
pub async fn contact(pool: &PgPool, key_set_id: Uuid) -> sqlx::Result<Option<(String, bool)>> {
    sqlx::query_as("SELECT user_email, email_verified FROM vault_key_sets WHERE id = $1")
        .bind(key_set_id)
        .fetch_optional(pool)
        .await
}

/// Marks the contact address confirmed, only if it is still `email` (it may have changed since the link was sent).
pub async fn mark_email_verified(pool: &PgPool, key_set_id: Uuid, email: &str) -> sqlx::Result<bool> {
    sqlx::query("UPDATE vault_key_sets SET email_verified = true WHERE id = $1 AND lower(user_email) = lower($2)")
        .bind(key_set_id)
        .bind(email)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1)
}

/// Remembers which provider key created a stored response (a repeat of the same id changes nothing).
pub async fn record_response_key(pool: &PgPool, key_set_id: Uuid, response_id: &str, key_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO vault_response_keys (key_set_id, response_id, key_id) \
         SELECT $1, $2, id FROM vault_provider_keys WHERE key_set_id = $1 AND id = $3 \
         ON CONFLICT (key_set_id, response_id) DO NOTHING",
    )
    .bind(key_set_id)
    .bind(response_id)
    .bind(key_id)
    .execute(pool)
    .await
    .map(|_| ())
}

/// `None`: not recorded; `Some(None)`: recorded, but its key has since been removed from the set.
pub async fn response_key(pool: &PgPool, key_set_id: Uuid, response_id: &str) -> sqlx::Result<Option<Option<Uuid>>> {
    sqlx::query_scalar("SELECT key_id FROM vault_response_keys WHERE key_set_id = $1 AND response_id = $2")
        .bind(key_set_id)
        .bind(response_id)
        .fetch_optional(pool)
        .await
}

pub async fn forget_response(pool: &PgPool, key_set_id: Uuid, response_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM vault_response_keys WHERE key_set_id = $1 AND response_id = $2")
        .bind(key_set_id)
        .bind(response_id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Forgets records older than `before`; returns how many.
pub async fn prune_response_keys(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM vault_response_keys WHERE created_at < $1").bind(before).execute(pool).await?;
    Ok(done.rows_affected())
}
