//! Opened key sets kept in memory for a short time, so the request path does not decrypt and query on every call.
//! Entries are keyed by the token's HMAC, hold zeroize-on-drop secrets, and are evicted on every replica when a key set
//! changes or is revoked (PostgreSQL NOTIFY on `CHANGE_CHANNEL`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::OpenKeySet;

struct Entry {
    opened: Arc<OpenKeySet>,
    at: Instant,
}

pub struct KeySetCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

const MAX_ENTRIES: usize = 100_000;

impl KeySetCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, token_hash: &[u8; 32]) -> Option<Arc<OpenKeySet>> {
        let entries = self.lock();
        let entry = entries.get(token_hash)?;
        (entry.at.elapsed() < self.ttl).then(|| entry.opened.clone())
    }

    pub fn insert(&self, token_hash: [u8; 32], opened: Arc<OpenKeySet>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.at.elapsed() < ttl);
        }
        entries.insert(token_hash, Entry { opened, at: Instant::now() });
    }

    pub fn evict_key_set(&self, key_set_id: Uuid) {
        self.lock().retain(|_, e| e.opened.key_set_id != key_set_id);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}
