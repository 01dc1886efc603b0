//! In-memory key health: keys that failed with a credential error are skipped until a cooldown passes, then exactly one
//! request may try each again. Keys can only be decrypted while serving a request that carries the token, so there is
//! no background probing.
//!
//! Marks live in a `BoundedMap` (see `crate::bounded`): at most [`CAPACITY`] keys, and a mark past its skip time is
//! dropped (the key is then judged by its stored status again). Evicting a live mark under pressure only means one more
//! request tries that key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::breaker::TargetKey;
use crate::bounded::{Expires, SWEEP_EVERY, SharedMap};
use crate::vault::ProviderKey;

/// Most keys marked at once (a mark is about 50 bytes).
pub const CAPACITY: usize = 57_344;

pub struct KeyHealth {
    retry_after: Duration,
    marks: SharedMap<Uuid, Mark>,
}

#[derive(Clone, Copy)]
struct Mark {
    /// Since when the database is known to call the key invalid (its status was read so, or our write of the mark
    /// committed); `None` while that write is on its way. A key set read after this that calls the key active was
    /// revived by its owner.
    stored: Option<Instant>,
    skip_until: Instant,
}

impl Expires for Mark {
    fn expires_at(&self) -> Instant {
        self.skip_until
    }
}

impl KeyHealth {
    pub fn new(retry_after: Duration) -> Self {
        Self { retry_after, marks: SharedMap::new(CAPACITY, SWEEP_EVERY) }
    }

    /// Whether this request may use the key (`loaded_at`: when its key set was read from the database). A key past its
    /// cooldown is claimed for one try: concurrent requests skip it until that try reports back. A key the database
    /// calls active although we marked it before the set was read has been revived by its owner: use it at once.
    pub fn usable(&self, key: &ProviderKey, loaded_at: Instant) -> bool {
        self.usable_at(key, loaded_at, Instant::now())
    }

    fn usable_at(&self, key: &ProviderKey, loaded_at: Instant, now: Instant) -> bool {
        let mut map = self.marks.lock();
        let until = match map.get_mut(&key.id, now).copied() {
            Some(mark) if key.invalid_since.is_none() && mark.stored.is_some_and(|at| at < loaded_at) => {
                map.remove(&key.id);
                return true;
            }
            Some(mark) => mark.skip_until,
            None => match key.invalid_since {
                None => return true,
                Some(since) => {
                    let elapsed = (Utc::now() - since).to_std().unwrap_or(Duration::ZERO);
                    now + self.retry_after.saturating_sub(elapsed)
                }
            },
        };
        if now < until {
            map.get_or_insert_with(key.id, now, || Mark { stored: Some(now), skip_until: until });
            false
        } else {
            map.insert(key.id, Mark { stored: Some(now), skip_until: now + self.retry_after }, now);
            true
        }
    }

    pub fn mark_invalid(&self, key_id: Uuid) {
        self.mark_invalid_at(key_id, Instant::now());
    }

    fn mark_invalid_at(&self, key_id: Uuid, now: Instant) {
        self.marks.lock().insert(key_id, Mark { stored: None, skip_until: now + self.retry_after }, now);
    }

    /// The mark of `key_id` is now in the database. Until then a key set read from the database still calls the key
    /// active (a read racing the write, e.g. a reload after an unrelated change), which must not count as a revival.
    pub fn stored(&self, key_id: Uuid) {
        let now = Instant::now();
        if let Some(mark) = self.marks.lock().get_mut(&key_id, now) {
            mark.stored.get_or_insert(now);
        }
    }

    /// Called on success; true if the key had been marked invalid (so the stored status must be cleared).
    pub fn recovered(&self, key: &ProviderKey) -> bool {
        let was_marked = self.marks.lock().remove(&key.id).is_some();
        was_marked || key.invalid_since.is_some()
    }

    /// Drops marks past their skip time; returns how many. Accesses do this every few seconds anyway.
    pub fn sweep(&self) -> usize {
        self.marks.sweep()
    }
}

/// `last_used_at` updates, batched so the request path never writes to the database.
#[derive(Default)]
pub struct UsageRecorder {
    used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl UsageRecorder {
    pub fn touch(&self, key_id: Uuid) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(key_id, Utc::now());
    }

    pub fn drain(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).drain().collect()
    }
}

/// Rate-limit cooldowns to store (`cooling_down_until`) and announce to the other replicas, coalesced per target with
/// the latest time winning, so a burst of 429s costs one writer and about one write per target in flight instead of a
/// task and a write each (tens of thousands of pending writes under a burst otherwise hold tens of megabytes). Bounded
/// by the targets that exist.
#[derive(Default)]
pub struct CooldownRecorder {
    pending: Mutex<HashMap<TargetKey, DateTime<Utc>>>,
    ready: tokio::sync::Notify,
}

impl CooldownRecorder {
    pub fn record(&self, target: &TargetKey, until: DateTime<Utc>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let at = pending.entry(target.clone()).or_insert(until);
            *at = (*at).max(until);
        }
        // Stores a wake-up if the writer is busy, so nothing recorded meanwhile waits for a later one.
        self.ready.notify_one();
    }

    /// Everything recorded since the last call (possibly nothing).
    pub fn drain(&self) -> Vec<(TargetKey, DateTime<Utc>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Hand the table back too: a burst over many keys should not keep its size.
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Waits until something is recorded, then drains: for one writer task that loops on it.
    pub async fn next_batch(&self) -> Vec<(TargetKey, DateTime<Utc>)> {
        loop {
            let batch = self.drain();
            if !batch.is_empty() {
                return batch;
            }
            self.ready.notified().await;
        }
    }
}

/// A cooldown as announced to the other replicas.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CooldownNote {
    pub endpoint: String,
    pub model: String,
    pub key_id: Uuid,
    /// Unix time in milliseconds.
    pub until_ms: i64,
}

impl CooldownNote {
    pub fn new(target: &TargetKey, until: DateTime<Utc>) -> Self {
        Self {
            endpoint: target.endpoint.clone(),
            model: target.model.clone(),
            key_id: target.key_id,
            until_ms: until.timestamp_millis(),
        }
    }

    /// The target and how long it stays cool from now; `None` for a malformed or past note.
    pub fn parse(payload: &str) -> Option<(TargetKey, Duration)> {
        let note: CooldownNote = serde_json::from_str(payload).ok()?;
        let until = DateTime::<Utc>::from_timestamp_millis(note.until_ms)?;
        let wait = (until - Utc::now()).to_std().ok().filter(|w| !w.is_zero())?;
        let target = TargetKey { endpoint: note.endpoint, model: note.model, key_id: note.key_id };
        Some((target, wait.min(super::classify::MAX_RETRY_AFTER)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{KeyTarget, Provider};
    use secrecy::SecretString;

    fn key(invalid_since: Option<DateTime<Utc>>) -> ProviderKey {
        ProviderKey {
            id: Uuid::new_v4(),
            provider: Provider::Openai,
            secret: SecretString::from("k"),
            target: KeyTarget::default(),
            invalid_since,
        }
    }

    #[test]
    fn invalid_key_is_skipped_then_tried_by_exactly_one_request() {
        let health = KeyHealth::new(Duration::from_millis(30));
        let loaded = Instant::now();
        let k = key(None);
        assert!(health.usable(&k, loaded));
        health.mark_invalid(k.id);
        let stored = key(Some(Utc::now()));
        let k = ProviderKey { id: k.id, ..stored };
        assert!(!health.usable(&k, loaded));
        std::thread::sleep(Duration::from_millis(35));
        assert!(health.usable(&k, loaded), "after the cooldown one request may try");
        assert!(!health.usable(&k, loaded), "but only one");
        assert!(health.recovered(&k));
        assert!(health.usable(&k, loaded));
    }

    #[test]
    fn a_key_revived_in_the_database_is_usable_at_once() {
        let health = KeyHealth::new(Duration::from_secs(600));
        let k = key(None);
        health.mark_invalid(k.id);
        // A set read while the mark's write is on its way still calls the key active: not a revival.
        assert!(!health.usable(&k, Instant::now()), "read racing the write");
        health.stored(k.id);
        assert!(!health.usable(&k, Instant::now() - Duration::from_secs(1)), "set read before the write");
        std::thread::sleep(Duration::from_millis(2));
        assert!(health.usable(&k, Instant::now()), "set read after the write shows the owner revived it");
    }

    #[test]
    fn stored_invalid_status_is_respected_across_restarts() {
        let health = KeyHealth::new(Duration::from_secs(600));
        let now = Instant::now();
        assert!(!health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(5))), now));
        assert!(health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(601))), now));
    }

    #[test]
    fn marks_are_bounded() {
        let health = KeyHealth::new(Duration::from_secs(600));
        let now = Instant::now();
        for _ in 0..(CAPACITY + 10_000) {
            health.mark_invalid_at(Uuid::new_v4(), now);
        }
        assert!(health.marks.len() <= CAPACITY, "{}", health.marks.len());
    }

    #[test]
    fn a_mark_past_its_skip_time_is_dropped() {
        let health = KeyHealth::new(Duration::from_secs(600));
        let (k, now) = (key(None), Instant::now());
        health.mark_invalid_at(k.id, now);
        // The stored status as it will read then (the database clock is wall time, not this test's clock).
        let stored = ProviderKey { id: k.id, ..key(Some(Utc::now() - chrono::Duration::seconds(601))) };
        assert!(!health.usable_at(&stored, now, now + Duration::from_secs(599)));
        let later = now + Duration::from_secs(601);
        assert_eq!(health.marks.lock().sweep(later), 1);
        assert_eq!(health.marks.len(), 0);
        // Past the skip time the key gets its one try, as before.
        assert!(health.usable_at(&stored, now, later));
        assert!(!health.usable_at(&stored, now, later));
    }

    #[test]
    fn usage_is_batched() {
        let u = UsageRecorder::default();
        let id = Uuid::new_v4();
        u.touch(id);
        u.touch(id);
        assert_eq!(u.drain().len(), 1);
        assert!(u.drain().is_empty());
    }

    #[test]
    fn cooldown_notes_round_trip_and_junk_is_ignored() {
        let target =
            TargetKey { endpoint: "https://api.openai.com/v1".into(), model: "gpt-4o".into(), key_id: Uuid::new_v4() };
        let until = Utc::now() + chrono::Duration::seconds(30);
        let payload = serde_json::to_string(&CooldownNote::new(&target, until)).unwrap();
        let (parsed, wait) = CooldownNote::parse(&payload).unwrap();
        assert_eq!(parsed, target);
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
        let past =
            serde_json::to_string(&CooldownNote::new(&target, Utc::now() - chrono::Duration::seconds(1))).unwrap();
        assert!(CooldownNote::parse(&past).is_none());
        let far = serde_json::to_string(&CooldownNote::new(&target, Utc::now() + chrono::Duration::days(400))).unwrap();
        assert_eq!(CooldownNote::parse(&far).unwrap().1, super::super::classify::MAX_RETRY_AFTER);
        for junk in ["", "{}", "not json", r#"{"endpoint":1}"#] {
            assert!(CooldownNote::parse(junk).is_none(), "{junk}");
        }
    }

    fn target(key_id: Uuid) -> TargetKey {
        TargetKey { endpoint: "e".into(), model: "m".into(), key_id }
    }

    #[test]
    fn cooldowns_are_coalesced_per_target_latest_wins() {
        let c = CooldownRecorder::default();
        let (a, b) = (target(Uuid::new_v4()), target(Uuid::new_v4()));
        let now = Utc::now();
        c.record(&a, now + chrono::Duration::seconds(30));
        c.record(&a, now + chrono::Duration::seconds(10));
        c.record(&b, now);
        let mut drained = c.drain();
        drained.sort_by_key(|(t, _)| t.key_id);
        let mut expected = vec![(a, now + chrono::Duration::seconds(30)), (b, now)];
        expected.sort_by_key(|(t, _)| t.key_id);
        assert_eq!(drained, expected);
        assert!(c.drain().is_empty());
    }

    #[tokio::test]
    async fn the_writer_wakes_when_a_cooldown_is_recorded() {
        let c = std::sync::Arc::new(CooldownRecorder::default());
        c.record(&target(Uuid::new_v4()), Utc::now());
        assert_eq!(c.next_batch().await.len(), 1);
        let writer = {
            let c = c.clone();
            tokio::spawn(async move { c.next_batch().await.len() })
        };
        // The writer is now waiting on an empty recorder.
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.record(&target(Uuid::new_v4()), Utc::now());
        c.record(&target(Uuid::new_v4()), Utc::now());
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap(), 2);
    }
}
