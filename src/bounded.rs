//! A hash map with a capacity bound and per-entry expiry, for the per-process state whose keys clients influence
//! (circuit breakers, pacing buckets, key marks, client limits, cached key sets).
//!
//! Each value says from when on it carries no information ([`Expires`]): an open breaker long past its open time, a
//! GCRA bucket whose theoretical arrival time has passed (it equals a fresh one), a key mark past its skip time, a
//! cached key set at its TTL. Such an entry reads as absent, is replaced on the next write, and is dropped by the next
//! sweep: [`BoundedMap::sweep`] from a background tick, or lazily on access at most every `sweep_every`. When the map is
//! full of live entries, inserting forgets the eighth that expire soonest (they carry the least), so the O(n) pass runs
//! once per `capacity / 8` inserts and the amortised cost per insert stays O(1).
//!
//! Capacities are 7/8 of a power of two: hashbrown's largest load for that many buckets, so a full map does not double
//! its table for the last few entries.
//!
//! Why not `moka` (0.12): its `sync::Cache` returns clones and updates through `entry().and_compute_with`, so the
//! breaker's "one half-open probe" and the pacer's check-then-reserve would each become a compute closure with an
//! `Expiry` implementation recomputing state-dependent lifetimes; it also records every read for its TinyLFU policy,
//! keeps per-entry bookkeeping (several words plus deque nodes) and pulls in crossbeam, parking_lot and friends. The
//! owners here already serialise each operation under one short mutex; a `HashMap` plus an expiry rule keeps every
//! read-modify-write atomic for free, costs one hash lookup on the hot path, and is small enough to reason about.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often an access sweeps expired entries when no background tick has done it.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A value that knows from when on it may be forgotten without changing any decision.
pub(crate) trait Expires {
    fn expires_at(&self) -> Instant;
}

impl Expires for Instant {
    fn expires_at(&self) -> Instant {
        *self
    }
}

/// A [`BoundedMap`] behind one short mutex: how each owner holds its state, so that every read-modify-write is atomic.
#[derive(Debug)]
pub(crate) struct SharedMap<K, V>(Mutex<BoundedMap<K, V>>);

impl<K: Eq + Hash, V: Expires> SharedMap<K, V> {
    pub(crate) fn new(capacity: usize, sweep_every: Duration) -> Self {
        Self(Mutex::new(BoundedMap::new(capacity, sweep_every)))
    }

    /// A poisoned lock is still used: no operation leaves the map half-changed.
    pub(crate) fn lock(&self) -> MutexGuard<'_, BoundedMap<K, V>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries held, expired ones not yet swept included.
    #[allow(dead_code, reason = "for tests and diagnostics")]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops every expired entry now; returns how many. Accesses do this every few seconds anyway; a background tick
    /// keeps memory low while the process is idle.
    pub(crate) fn sweep(&self) -> usize {
        self.lock().sweep(Instant::now())
    }
}

#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    capacity: usize,
    sweep_every: Duration,
    next_sweep: Instant,
}

impl<K: Eq + Hash, V: Expires> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize, sweep_every: Duration) -> Self {
        Self { map: HashMap::new(), capacity: capacity.max(1), sweep_every, next_sweep: Instant::now() + sweep_every }
    }

    /// Entries held, expired ones not yet swept included.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The live entry for `key`; an expired one is dropped and reads as absent.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q, now: Instant) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.maybe_sweep(now);
        if self.map.get(key)?.expires_at() <= now {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    /// The live entry for `key`, or a new one from `make` (replacing an expired one).
    pub(crate) fn get_or_insert_with(&mut self, key: K, now: Instant, make: impl FnOnce() -> V) -> &mut V {
        self.maybe_sweep(now);
        match self.map.get(&key).map(|v| v.expires_at() > now) {
            Some(true) => {}
            Some(false) => {
                self.map.remove(&key);
            }
            None => self.make_room(now),
        }
        self.map.entry(key).or_insert_with(make)
    }

    /// Inserts or replaces.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        self.maybe_sweep(now);
        if !self.map.contains_key(&key) {
            self.make_room(now);
        }
        self.map.insert(key, value);
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key)
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    pub(crate) fn clear(&mut self) {
        self.map = HashMap::new();
    }

    /// Live values.
    pub(crate) fn live(&self, now: Instant) -> impl Iterator<Item = &V> {
        self.map.values().filter(move |v| v.expires_at() > now)
    }

    /// Drops every expired entry and gives back table memory a burst left behind; returns how many were dropped.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| v.expires_at() > now);
        if self.map.capacity() > 64 && self.map.capacity() / 4 > self.map.len() {
            self.map.shrink_to(self.map.len() * 2);
        }
        self.next_sweep = now + self.sweep_every;
        before - self.map.len()
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    /// Before inserting a new key: if full, drop the expired entries, and if still full, the eighth that expire
    /// soonest.
    fn make_room(&mut self, now: Instant) {
        if self.map.len() < self.capacity {
            return;
        }
        self.sweep(now);
        if self.map.len() < self.capacity {
            return;
        }
        let batch = (self.capacity / 8).max(1);
        let mut expiries: Vec<Instant> = self.map.values().map(Expires::expires_at).collect();
        let (below, cutoff, _) = expiries.select_nth_unstable(batch - 1);
        let cutoff = *cutoff;
        // Everything strictly before the cutoff is in `below`; ties at the cutoff fill the batch up.
        let mut ties = batch - below.iter().filter(|e| **e < cutoff).count();
        self.map.retain(|_, v| {
            let e = v.expires_at();
            if e < cutoff {
                false
            } else if e == cutoff && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(capacity: usize) -> BoundedMap<u32, Instant> {
        BoundedMap::new(capacity, Duration::from_secs(3600))
    }

    #[test]
    fn never_exceeds_capacity_and_forgets_the_soonest_to_expire() {
        let now = Instant::now();
        let mut m = map(1_000);
        for i in 0..50_000u32 {
            m.insert(i, now + Duration::from_secs(u64::from(i) + 1), now);
            assert!(m.len() <= 1_000);
        }
        // The survivors are the latest to expire.
        assert!(m.get_mut(&49_999, now).is_some());
        assert!(m.get_mut(&0, now).is_none());
        assert!(m.len() > 800);
    }

    #[test]
    fn ties_evict_exactly_one_batch() {
        let now = Instant::now();
        let mut m = map(80);
        let later = now + Duration::from_secs(10);
        for i in 0..80 {
            m.insert(i, later, now);
        }
        m.insert(80, later, now);
        assert_eq!(m.len(), 80 - 10 + 1);
    }

    #[test]
    fn expired_entries_read_as_absent_and_are_swept() {
        let now = Instant::now();
        let mut m = map(100);
        m.insert(1, now + Duration::from_secs(1), now);
        m.insert(2, now + Duration::from_secs(100), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(m.live(later).count(), 1);
        assert_eq!(m.len(), 2, "not swept yet");
        assert_eq!(m.sweep(later), 1);
        assert_eq!(m.len(), 1);
        assert!(m.get_mut(&2, later).is_some());
        // Read-through of an expired entry drops it at once.
        m.insert(3, now + Duration::from_secs(1), now);
        assert!(m.get_mut(&3, later).is_none());
        assert_eq!(m.len(), 1);
        // get_or_insert_with replaces an expired entry.
        m.insert(4, now + Duration::from_secs(1), now);
        assert_eq!(*m.get_or_insert_with(4, later, || later + Duration::from_secs(5)), later + Duration::from_secs(5));
    }

    #[test]
    fn accesses_sweep_lazily() {
        let now = Instant::now();
        let mut m: BoundedMap<u32, Instant> = BoundedMap::new(100, Duration::from_secs(10));
        for i in 0..50 {
            m.insert(i, now + Duration::from_secs(1), now);
        }
        m.get_mut(&1_000, now + Duration::from_secs(5));
        assert_eq!(m.len(), 50, "no sweep before the interval");
        m.get_mut(&1_000, now + Duration::from_secs(11));
        assert_eq!(m.len(), 0);
    }
}
