//! In-memory key health: keys that failed with a credential error are skipped until a cooldown passes, then exactly one
//! request may try each again. Keys can only be decrypted while serving a request that carries the token, so there is
//! no background probing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::vault::ProviderKey;

pub struct KeyHealth {
    retry_after: Duration,
    marks: Mutex<HashMap<Uuid, Mark>>,
}

#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    skip_until: Instant,
}

impl KeyHealth {
    pub fn new(retry_after: Duration) -> Self {
        Self { retry_after, marks: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Mark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this request may use the key (`loaded_at`: when its key set was read from the database). A key past its
    /// cooldown is claimed for one try: concurrent requests skip it until that try reports back. A key the database
    /// calls active although we marked it before the set was read has been revived by its owner: use it at once.
    pub fn usable(&self, key: &ProviderKey, loaded_at: Instant) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let until = match map.get(&key.id) {
            Some(mark) if key.invalid_since.is_none() && mark.at < loaded_at => {
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
            map.entry(key.id).or_insert(Mark { at: now, skip_until: until });
            false
        } else {
            map.insert(key.id, Mark { at: now, skip_until: now + self.retry_after });
            true
        }
    }

    pub fn mark_invalid(&self, key_id: Uuid) {
        let now = Instant::now();
        self.lock().insert(key_id, Mark { at: now, skip_until: now + self.retry_after });
    }

    /// Called on success; true if the key had been marked invalid (so the stored status must be cleared).
    pub fn recovered(&self, key: &ProviderKey) -> bool {
        let was_marked = self.lock().remove(&key.id).is_some();
        was_marked || key.invalid_since.is_some()
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
        assert!(!health.usable(&k, Instant::now() - Duration::from_secs(1)), "set read before the mark");
        assert!(health.usable(&k, Instant::now()), "set read after the mark shows the owner revived it");
    }

    #[test]
    fn stored_invalid_status_is_respected_across_restarts() {
        let health = KeyHealth::new(Duration::from_secs(600));
        let now = Instant::now();
        assert!(!health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(5))), now));
        assert!(health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(601))), now));
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
}
