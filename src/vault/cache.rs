//! Opened key sets kept in memory for a short time, so the request path does not decrypt and query on every call.
//! Entries are keyed by the token's HMAC, hold zeroize-on-drop secrets, and are evicted on every replica when a key set
//! changes or is revoked (PostgreSQL NOTIFY on `CHANGE_CHANNEL`).
//!
//! The entries live in a `BoundedMap` (see `crate::bounded`): at most [`CAPACITY`] sets, and a set at its TTL reads
//! as absent and is removed at the next sweep, so its decrypted keys leave memory once the last request using it ends.
//! Evicting a live set under pressure only costs its next request a reload. A zero TTL caches nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::OpenKeySet;
use crate::bounded::{Expires, SWEEP_EVERY, SharedMap};

/// Most key sets held at once; an opened set with a few keys and a policy is a few kilobytes.
pub const CAPACITY: usize = 14_336;

struct Entry {
    opened: Arc<OpenKeySet>,
    expires: Instant,
}

impl Expires for Entry {
    fn expires_at(&self) -> Instant {
        self.expires
    }
}

pub struct KeySetCache {
    ttl: Duration,
    entries: SharedMap<[u8; 32], Entry>,
}

impl KeySetCache {
    pub fn new(ttl: Duration) -> Self {
        // Sweep at least as often as the TTL, so an expired set does not outlive it by more than one TTL.
        let sweep_every = SWEEP_EVERY.min(ttl).max(Duration::from_millis(100));
        Self { ttl, entries: SharedMap::new(CAPACITY, sweep_every) }
    }

    pub fn get(&self, token_hash: &[u8; 32]) -> Option<Arc<OpenKeySet>> {
        self.get_at(token_hash, Instant::now())
    }

    fn get_at(&self, token_hash: &[u8; 32], now: Instant) -> Option<Arc<OpenKeySet>> {
        Some(self.entries.lock().get_mut(token_hash, now)?.opened.clone())
    }

    pub fn insert(&self, token_hash: [u8; 32], opened: Arc<OpenKeySet>) {
        self.insert_at(token_hash, opened, Instant::now());
    }

    fn insert_at(&self, token_hash: [u8; 32], opened: Arc<OpenKeySet>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries.lock().insert(token_hash, Entry { opened, expires: now + self.ttl }, now);
    }

    pub fn evict_key_set(&self, key_set_id: Uuid) {
        self.entries.lock().retain(|_, e| e.opened.key_set_id != key_set_id);
    }

    pub fn clear(&self) {
        self.entries.lock().clear();
    }

    /// Drops the sets at their TTL (their keys leave memory once no request holds them); returns how many. Accesses
    /// do this every few seconds; a background tick does it while the gateway is idle.
    pub fn sweep(&self) -> usize {
        self.entries.sweep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::input::Policy;

    fn set(key_set_id: Uuid) -> Arc<OpenKeySet> {
        Arc::new(OpenKeySet::new(key_set_id, Policy::default(), Vec::new()))
    }

    fn hash(i: u32) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let cache = KeySetCache::new(Duration::ZERO);
        cache.insert(hash(1), set(Uuid::new_v4()));
        assert!(cache.get(&hash(1)).is_none());
        assert_eq!(cache.entries.len(), 0);
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = KeySetCache::new(Duration::from_secs(30));
        let opened = set(Uuid::new_v4());
        for i in 0..50_000 {
            cache.insert(hash(i), opened.clone());
        }
        assert!(cache.entries.len() <= CAPACITY, "{}", cache.entries.len());
        assert!(cache.get(&hash(49_999)).is_some());
    }

    #[test]
    fn a_set_at_its_ttl_is_dropped_with_its_keys() {
        let cache = KeySetCache::new(Duration::from_secs(30));
        let now = Instant::now();
        let opened = set(Uuid::new_v4());
        cache.insert_at(hash(1), opened.clone(), now);
        assert!(cache.get_at(&hash(1), now + Duration::from_secs(29)).is_some());
        assert_eq!(Arc::strong_count(&opened), 2);
        assert_eq!(cache.entries.lock().sweep(now + Duration::from_secs(30)), 1);
        assert_eq!(Arc::strong_count(&opened), 1, "the cache no longer holds the decrypted set");
        // A read past the TTL drops it as well, without waiting for a sweep.
        cache.insert_at(hash(2), opened.clone(), now);
        assert!(cache.get_at(&hash(2), now + Duration::from_secs(31)).is_none());
        assert_eq!(Arc::strong_count(&opened), 1);
    }

    #[test]
    fn evicts_by_key_set_and_clears() {
        let cache = KeySetCache::new(Duration::from_secs(30));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        cache.insert(hash(1), set(a));
        cache.insert(hash(2), set(a));
        cache.insert(hash(3), set(b));
        cache.evict_key_set(a);
        assert!(cache.get(&hash(1)).is_none() && cache.get(&hash(2)).is_none());
        assert!(cache.get(&hash(3)).is_some());
        cache.clear();
        assert_eq!(cache.entries.len(), 0);
    }
}
