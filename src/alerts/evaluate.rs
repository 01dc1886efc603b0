//! The evaluator: every few seconds, for each key set with recent counts or an open alert, it compares the window with
//! the thresholds and opens or resolves an alert, queueing the emails in the same transaction. Replicas all run it; a
//! per-key-set advisory lock and the one-open-alert index make each decision once.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::buckets::bucket_of;
use super::input::Thresholds;
use super::queries::{self, NewMail};
use super::rules::{self, BASELINE_HOURS, Trigger, WindowFacts};
use super::{Alerts, AlertsError, digest};

/// The longest window a key set may set: key sets with counts this recent are evaluated.
const LOOKBACK: TimeDelta = TimeDelta::days(1);

pub(super) fn spawn(alerts: Alerts) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(alerts.settings.evaluate_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep: Option<DateTime<Utc>> = None;
        loop {
            tick.tick().await;
            let now = Utc::now();
            if let Err(e) = evaluate_all(&alerts, now).await {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
            if last_sweep.is_none_or(|at| now - at > TimeDelta::hours(1)) {
                last_sweep = Some(now);
                let retention = TimeDelta::from_std(alerts.settings.retention).unwrap_or(TimeDelta::days(7));
                if let Err(e) = queries::delete_counts_before(&alerts.pool, now - retention).await {
                    tracing::warn!(error = %e, "cannot delete old alert event counts");
                }
            }
        }
    })
}

async fn evaluate_all(alerts: &Alerts, now: DateTime<Utc>) -> Result<(), AlertsError> {
    let bucket = TimeDelta::from_std(alerts.settings.bucket).unwrap_or(TimeDelta::minutes(1));
    for key_set_id in queries::key_sets_to_evaluate(&alerts.pool, now - LOOKBACK - bucket).await? {
        tracing::trace!(%key_set_id, "evaluating alert rules");
        if let Err(e) = evaluate(alerts, key_set_id, now).await {
            tracing::warn!(%key_set_id, error = %e, "alert evaluation failed for a key set");
        }
    }
    Ok(())
}

async fn evaluate(alerts: &Alerts, key_set_id: Uuid, now: DateTime<Utc>) -> Result<(), AlertsError> {
    let t: Thresholds = queries::settings(&alerts.pool, key_set_id).await?.map(|(t, _)| t).unwrap_or_default();
    let bucket_secs = i64::try_from(alerts.settings.bucket.as_secs()).unwrap_or(60).max(1);
    let window = TimeDelta::seconds(i64::from(t.window_seconds));
    // The window is every bucket that overlaps (now - window, now], the current partial one included.
    let first = bucket_of(now - window, bucket_secs);
    let buckets = (now - first).num_seconds().div_euclid(bucket_secs) + 1;
    let rows = queries::window_rows(&alerts.pool, key_set_id, first).await?;
    let horizon = BASELINE_HOURS * 3600 / bucket_secs;
    let history = queries::failure_history(&alerts.pool, key_set_id, first - TimeDelta::hours(BASELINE_HOURS), first)
        .await?
        .into_iter()
        .map(|(b, n)| ((first - b).num_seconds() / bucket_secs, u64::try_from(n).unwrap_or(0)))
        .collect::<Vec<_>>();
    let baseline = rules::baseline_per_bucket(&history, bucket_secs as f64, horizon);
    let baseline_per_minute = baseline * 60.0 / bucket_secs as f64;
    let span = (first, now, t.window_seconds);
    let mut summary = digest::summarise(&rows, &HashMap::new(), span, baseline_per_minute, t.spike_factor);
    let facts = WindowFacts {
        failures: summary.failures,
        failed_requests: summary.failed_requests,
        buckets: u64::try_from(buckets).unwrap_or(1),
        baseline_per_bucket: baseline,
    };
    let verdict = if t.enabled { rules::judge(&t, &facts) } else { None };
    // Read before the transaction so it never holds one pooled connection while waiting for another. Masked keys are
    // joined only here: events carry key ids, never keys.
    let mut recipients = Vec::new();
    if verdict.is_some() {
        let masked: HashMap<Uuid, (String, String)> =
            alerts.vault.masked_keys(key_set_id).await?.into_iter().map(|(id, p, m)| (id, (p, m))).collect();
        summary = digest::summarise(&rows, &masked, span, baseline_per_minute, t.spike_factor);
        recipients = alerts.verified_recipients(key_set_id).await?;
    }

    let mut tx = alerts.pool.begin().await?;
    if !queries::try_lock_key_set(&mut tx, key_set_id).await? {
        return Ok(());
    }
    let open = queries::open_alert(&mut tx, key_set_id).await?;
    let alerts_url = format!("{}/v1/alerts", alerts.settings.public_url);
    match (open, verdict) {
        (Some(alert), None) => {
            if !queries::resolve_alert(&mut tx, alert.id, now).await? {
                return Ok(());
            }
            let trigger = if alert.trigger == Trigger::TotalFailure.as_str() {
                Trigger::TotalFailure
            } else {
                Trigger::ErrorSpike
            };
            if alerts.mailer.is_some() {
                let mail = digest::resolved(trigger, key_set_id, alert.opened_at, now, &alerts_url);
                for to in &alert.recipients {
                    super::outbox::enqueue(
                        &mut tx,
                        &alerts.vault,
                        &new_mail(key_set_id, Some(alert.id), "resolved", to, &mail),
                    )
                    .await?;
                }
            }
            tracing::info!(%key_set_id, alert_id = %alert.id, "alert resolved");
        }
        (None, Some(trigger)) => {
            let cooldown = TimeDelta::seconds(i64::from(t.cooldown_seconds));
            if queries::last_opened_at(&mut tx, key_set_id).await?.is_some_and(|at| now - at < cooldown) {
                return Ok(());
            }
            let id = Uuid::new_v4();
            let stored = serde_json::to_value(&summary).unwrap_or_default();
            if !queries::insert_alert(&mut tx, id, key_set_id, now, trigger.as_str(), &stored, &recipients).await? {
                return Ok(());
            }
            if alerts.mailer.is_some() {
                let mail = digest::digest(trigger, key_set_id, &summary, &alerts_url);
                for to in &recipients {
                    super::outbox::enqueue(&mut tx, &alerts.vault, &new_mail(key_set_id, Some(id), "spike", to, &mail))
                        .await?;
                }
            }
            tracing::warn!(%key_set_id, alert_id = %id, trigger = trigger.as_str(), failures = summary.failures,
                recipients = recipients.len(), "alert opened");
        }
        _ => {}
    }
    tx.commit().await?;
    Ok(())
}

fn new_mail(
    key_set_id: Uuid,
    alert_id: Option<Uuid>,
    kind: &'static str,
    to: &str,
    mail: &digest::Rendered,
) -> NewMail {
    NewMail {
        key_set_id,
        alert_id,
        kind,
        recipient: to.to_owned(),
        subject: mail.subject.clone(),
        text: mail.text.clone(),
        html: mail.html.clone(),
    }
}
