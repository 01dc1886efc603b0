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
    /// key → not to be tried before this instant.
    skip_until: Mutex<HashMap<Uuid, Instant>>,
}

impl KeyHealth {
    pub fn new(retry_after: Duration) -> Self {
        Self { retry_after, skip_until: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.skip_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this request may use the key. A key past its cooldown is claimed for one try: concurrent requests skip
    /// it until that try reports back (or another cooldown passes).
    pub fn usable(&self, key: &ProviderKey) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let until = match map.get(&key.id) {
            Some(until) => *until,
            None => match key.invalid_since {
                None => return true,
                Some(since) => {
                    let elapsed = (Utc::now() - since).to_std().unwrap_or(Duration::ZERO);
                    now + self.retry_after.saturating_sub(elapsed)
                }
            },
        };
        if now < until {
            map.insert(key.id, until);
            false
        } else {
            map.insert(key.id, now + self.retry_after);
            true
        }
    }

    pub fn mark_invalid(&self, key_id: Uuid) {
        self.lock().insert(key_id, Instant::now() + self.retry_after);
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
        let k = key(None);
        assert!(health.usable(&k));
        health.mark_invalid(k.id);
        assert!(!health.usable(&k));
        std::thread::sleep(Duration::from_millis(35));
        assert!(health.usable(&k), "after the cooldown one request may try");
        assert!(!health.usable(&k), "but only one");
        assert!(health.recovered(&k));
        assert!(health.usable(&k));
    }

    #[test]
    fn stored_invalid_status_is_respected_across_restarts() {
        let health = KeyHealth::new(Duration::from_secs(600));
        assert!(!health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(5)))));
        assert!(health.usable(&key(Some(Utc::now() - chrono::Duration::seconds(601)))));
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
