//! The engine's event sink: events are counted in memory per key set, bucket, class, model, provider, instance and
//! key, and a task adds the counts to PostgreSQL every few seconds. Replicas add to the same rows (upserts), so the
//! database holds the fleet's totals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::queries;
use crate::engine::events::{Event, EventConsumer};

/// Distinct rows held between flushes; beyond it events are dropped (and counted) rather than growing memory while
/// the database is away.
const MAX_PENDING_ROWS: usize = 50_000;

/// One row of `alerts_event_counts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub key_set_id: Uuid,
    pub bucket: DateTime<Utc>,
    pub kind: &'static str,
    pub class: &'static str,
    pub model: String,
    pub provider: &'static str,
    pub instance: String,
    pub key_id: Uuid,
}

#[derive(Default)]
struct Pending {
    counts: Mutex<HashMap<CountKey, i64>>,
    dropped: AtomicU64,
}

impl Pending {
    fn add(&self, key: CountKey, n: i64) {
        let Ok(mut counts) = self.counts.lock() else { return };
        let len = counts.len();
        match counts.get_mut(&key) {
            Some(c) => *c += n,
            None if len < MAX_PENDING_ROWS => {
                counts.insert(key, n);
            }
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn take(&self) -> Vec<(CountKey, i64)> {
        let Ok(mut counts) = self.counts.lock() else { return Vec::new() };
        let mut rows: Vec<_> = std::mem::take(&mut *counts).into_iter().collect();
        // One order for every replica, so concurrent upserts lock rows in the same order (no deadlocks).
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// Implements the engine's [`EventConsumer`]: a counter increment under a short lock, nothing else.
pub struct EventCounter {
    pending: Arc<Pending>,
    bucket_secs: i64,
}

/// The start of the bucket holding `at`.
pub fn bucket_of(at: DateTime<Utc>, bucket_secs: i64) -> DateTime<Utc> {
    let secs = at.timestamp().div_euclid(bucket_secs) * bucket_secs;
    DateTime::from_timestamp(secs, 0).unwrap_or(at)
}

/// At most `max` characters (the table's limits), cut on a character boundary; the event's own string, not a copy.
fn clip(mut text: String, max: usize) -> String {
    if let Some((i, _)) = text.char_indices().nth(max) {
        text.truncate(i);
    }
    text
}

impl EventConsumer for EventCounter {
    fn consume(&mut self, event: Event) {
        let key = match event {
            Event::Attempt(a) => CountKey {
                key_set_id: a.key_set_id,
                bucket: bucket_of(a.at, self.bucket_secs),
                kind: "attempt",
                class: a.result.as_str(),
                model: clip(a.model, 256),
                provider: a.provider.as_str(),
                instance: clip(a.instance, 128),
                key_id: a.key_id,
            },
            Event::Outcome(o) => CountKey {
                key_set_id: o.key_set_id,
                bucket: bucket_of(o.at, self.bucket_secs),
                kind: "outcome",
                class: o.outcome.as_str(),
                model: clip(o.requested_model, 256),
                provider: o.served_by.map(|(_, p)| p.as_str()).unwrap_or(""),
                instance: clip(o.instance, 128),
                key_id: Uuid::nil(),
            },
        };
        self.pending.add(key, 1);
    }
}

/// The consumer for the engine and the task that flushes what it counted every `every`.
pub fn start(pool: PgPool, bucket: Duration, every: Duration) -> (EventCounter, tokio::task::JoinHandle<()>) {
    let pending = Arc::new(Pending::default());
    let bucket_secs = i64::try_from(bucket.as_secs()).unwrap_or(60).max(1);
    let counter = EventCounter { pending: pending.clone(), bucket_secs };
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            flush(&pool, &pending).await;
        }
    });
    (counter, task)
}

async fn flush(pool: &PgPool, pending: &Pending) {
    let dropped = pending.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(dropped, "alert event counts dropped: too many distinct rows waiting for the database");
    }
    let rows = pending.take();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = queries::add_counts(pool, &rows).await {
        // Kept for the next flush (bounded by MAX_PENDING_ROWS): a database blip loses nothing.
        tracing::warn!(error = %e, rows = rows.len(), "cannot store alert event counts; retrying at the next flush");
        for (key, n) in rows {
            pending.add(key, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_on_whole_multiples() {
        let at = DateTime::from_timestamp(1_700_000_123, 500).unwrap();
        assert_eq!(bucket_of(at, 60).timestamp(), 1_700_000_100);
        assert_eq!(bucket_of(at, 1).timestamp(), 1_700_000_123);
    }

    #[test]
    fn clipping_respects_characters() {
        assert_eq!(clip("ééé".into(), 2), "éé");
        assert_eq!(clip("ab".into(), 5), "ab");
    }

    #[test]
    fn pending_rows_merge_and_stay_bounded() {
        let p = Pending::default();
        let key = |i: u32| CountKey {
            key_set_id: Uuid::nil(),
            bucket: DateTime::from_timestamp(0, 0).unwrap(),
            kind: "attempt",
            class: "transient",
            model: format!("m{i}"),
            provider: "openai",
            instance: "default".into(),
            key_id: Uuid::nil(),
        };
        p.add(key(0), 1);
        p.add(key(0), 2);
        assert_eq!(p.take(), vec![(key(0), 3)]);
        for i in 0..(MAX_PENDING_ROWS as u32 + 5) {
            p.add(key(i), 1);
        }
        assert_eq!(p.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(p.take().len(), MAX_PENDING_ROWS);
    }
}
