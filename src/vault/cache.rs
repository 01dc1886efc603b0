//! Opened key sets kept in memory for a short time, so the request path does not decrypt and query on every call.
//! Entries are keyed by the token's HMAC, hold zeroize-on-drop secrets, and are evicted on every replica when a key set
//! changes or is revoked (PostgreSQL NOTIFY on `CHANGE_CHANNEL`).
//!
//! The entries live in a `BoundedMap` (see `crate::bounded`): at most [`CAPACITY`] sets, and a set at its TTL reads
//! as absent and is removed at the next sweep, so its decrypted keys leave memory once the last request using it ends.
//! Evicting a live set under pressure only costs its next request a reload. A zero TTL caches nothing.
//!
//! Three guards on top:
//! - **Single flight**: concurrent misses on one token share one database read ([`KeySetCache::get_or_load`]).
//! - **Refresh ahead**: a set used in the last quarter of its TTL is read again in the background
//!   ([`KeySetCache::refresh_flight`]), so a busy token never waits for a reload on its request path. The refreshed
//!   set is a fresh database read with a fresh TTL; staleness stays bounded by the TTL as before.
//! - **Generation**: every eviction bumps a counter; a read that began before an eviction is not cached, so a `PATCH`
//!   or `DELETE` landing between the read and the insert cannot leave the old set alive for a TTL.
//! - **Outage**: while the change listener has lost the database ([`KeySetCache::begin_outage`]) nobody can revoke a
//!   token, so warm sets keep serving, past their TTL, for the grace counted from the loss; nothing new is cached (no
//!   eviction could reach it). When the listener is back ([`KeySetCache::end_outage`]) everything is dropped, since
//!   notifications may have been missed.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use super::{OpenKeySet, VaultError};
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

/// How a shared read ended, as its followers see it: the set, or a refusal they may repeat without a read of their own.
type Landed = Option<Result<Arc<OpenKeySet>, Shared>>;

#[derive(Clone, Copy)]
enum Shared {
    Unauthenticated,
    Unavailable,
    /// Anything else (logged by the leader's request): each follower reads for itself.
    Retry,
}

struct Slot {
    id: u64,
    landed: watch::Receiver<Landed>,
}

pub struct KeySetCache {
    ttl: Duration,
    grace: Duration,
    entries: SharedMap<[u8; 32], Entry>,
    /// Bumped (under the entries' lock) by every eviction, clear and outage change.
    generation: AtomicU64,
    flights: Mutex<HashMap<[u8; 32], Slot>>,
    next_flight: AtomicU64,
    /// When the change listener lost the database; `None` while it listens.
    outage: watch::Sender<Option<Instant>>,
}

impl KeySetCache {
    pub fn new(ttl: Duration, grace: Duration) -> Self {
        // Sweep at least as often as the TTL, so an expired set does not outlive it by more than one TTL.
        let sweep_every = SWEEP_EVERY.min(ttl).max(Duration::from_millis(100));
        Self {
            ttl,
            grace,
            entries: SharedMap::new(CAPACITY, sweep_every),
            generation: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            outage: watch::Sender::new(None),
        }
    }

    #[cfg(test)]
    pub fn get(&self, token_hash: &[u8; 32]) -> Option<Arc<OpenKeySet>> {
        self.get_at(token_hash, Instant::now())
    }

    fn get_at(&self, token_hash: &[u8; 32], now: Instant) -> Option<Arc<OpenKeySet>> {
        Some(self.entries.lock().get_mut(token_hash, now)?.opened.clone())
    }

    /// The cached set, or the result of `load`, run once for all concurrent callers with this token. Only the leader's
    /// `load` runs; a follower whose leader was cancelled, or failed in a way it cannot share, tries again.
    pub async fn get_or_load<Fut>(
        &self,
        token_hash: [u8; 32],
        load: impl Fn() -> Fut,
    ) -> Result<Arc<OpenKeySet>, VaultError>
    where
        Fut: Future<Output = Result<OpenKeySet, VaultError>>,
    {
        // A hit needs neither the flights' lock nor a second look.
        if let Some(opened) = self.get_at(&token_hash, Instant::now()) {
            return Ok(opened);
        }
        loop {
            let joined = {
                let mut flights = self.flights();
                // Checked under the flights' lock: a leader inserts before it leaves, so no landing is missed.
                if let Some(opened) = self.get_at(&token_hash, Instant::now()) {
                    return Ok(opened);
                }
                match flights.get(&token_hash) {
                    Some(slot) => Ok(slot.landed.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                        flights.insert(token_hash, Slot { id, landed: rx });
                        Err(Flight { cache: self, token_hash, id, generation: self.generation(), tx })
                    }
                }
            };
            let mut landed = match joined {
                Ok(landed) => landed,
                Err(flight) => {
                    let result = load().await.map(Arc::new);
                    flight.land(&result);
                    return result;
                }
            };
            let shared = match landed.wait_for(Option::is_some).await {
                Ok(landed) => landed.clone(),
                Err(_) => None, // the leader's request was cancelled
            };
            match shared {
                Some(Ok(opened)) => return Ok(opened),
                Some(Err(Shared::Unauthenticated)) => return Err(VaultError::Unauthenticated),
                Some(Err(Shared::Unavailable)) => return Err(VaultError::Unavailable),
                Some(Err(Shared::Retry)) | None => continue,
            }
        }
    }

    /// Whether `opened` may be in the last quarter of its TTL: read at least three quarters of the TTL ago. It is
    /// cached when its read lands, after `loaded_at`, so `false` here means [`Self::refresh_flight`] would say no; the
    /// request path asks this first and takes no lock on a fresh set.
    pub fn refresh_may_be_due(&self, opened: &OpenKeySet, now: Instant) -> bool {
        !self.ttl.is_zero() && now.saturating_duration_since(opened.loaded_at) >= self.ttl - self.ttl / 4
    }

    /// When the set cached for `token_hash` is in the last quarter of its TTL and nobody is reading it already: a
    /// flight for a background read of it (the caller runs the read and lands the flight). Nothing during an outage or
    /// with caching off.
    pub fn refresh_flight(self: &Arc<Self>, token_hash: &[u8; 32], now: Instant) -> Option<Flight<Arc<Self>>> {
        if self.ttl.is_zero() || self.outage.borrow().is_some() {
            return None;
        }
        let expires = self.entries.lock().get_mut(token_hash, now)?.expires;
        if now + self.ttl / 4 < expires {
            return None;
        }
        let mut flights = self.flights();
        if flights.contains_key(token_hash) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(*token_hash, Slot { id, landed: rx });
        Some(Flight { cache: self.clone(), token_hash: *token_hash, id, generation: self.generation(), tx })
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<[u8; 32], Slot>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Inserts a set read when the generation was `generation`, unless something was evicted since, the listener is
    /// down, or caching is off.
    fn insert_read_at(&self, token_hash: [u8; 32], opened: Arc<OpenKeySet>, generation: u64, now: Instant) -> bool {
        if self.ttl.is_zero() || self.outage.borrow().is_some() {
            return false;
        }
        let mut entries = self.entries.lock();
        if self.generation() != generation {
            return false;
        }
        entries.insert(token_hash, Entry { opened, expires: now + self.ttl }, now);
        true
    }

    /// Runs `change` on the entries and bumps the generation under one lock, then detaches reads in flight, so a
    /// request arriving after this starts a read of its own.
    fn evict_with(&self, change: impl FnOnce(&mut crate::bounded::BoundedMap<[u8; 32], Entry>)) {
        {
            let mut entries = self.entries.lock();
            change(&mut entries);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.flights().clear();
    }

    pub fn evict_key_set(&self, key_set_id: Uuid) {
        self.evict_with(|entries| entries.retain(|_, e| e.opened.key_set_id != key_set_id));
    }

    pub fn clear(&self) {
        self.evict_with(|entries| entries.clear());
    }

    /// The listener lost the database at `now`: warm sets serve until `now + grace` (longer or shorter than their TTL),
    /// then go. With no grace they go at once. Returns how many keep serving.
    pub fn begin_outage(&self, now: Instant) -> usize {
        let until = now + self.grace;
        let mut kept = 0;
        self.evict_with(|entries| {
            entries.retain(|_, e| {
                e.expires = until;
                kept += 1;
                !self.grace.is_zero()
            });
        });
        self.outage.send_replace(Some(now));
        if self.grace.is_zero() { 0 } else { kept }
    }

    /// The listener is back: notifications may have been missed, so nothing cached before can be trusted.
    pub fn end_outage(&self) {
        self.evict_with(|entries| entries.clear());
        self.outage.send_replace(None);
    }

    /// Since when the listener has lost the database, and until when warm sets serve.
    pub fn outage(&self) -> Option<(Instant, Instant)> {
        self.outage.borrow().map(|since| (since, since + self.grace))
    }

    /// Tells waiters when an outage begins or ends.
    pub fn watch_outage(&self) -> watch::Receiver<Option<Instant>> {
        self.outage.subscribe()
    }

    /// Drops the sets at their TTL (their keys leave memory once no request holds them); returns how many. Accesses
    /// do this every few seconds; a background tick does it while the gateway is idle.
    pub fn sweep(&self) -> usize {
        self.entries.sweep()
    }
}

/// The one read in flight for a token: a request's (holding `&KeySetCache`) or a background refresh's (holding the
/// `Arc`). Dropped without landing (its request was cancelled), it lets followers retry.
pub struct Flight<C: Deref<Target = KeySetCache>> {
    cache: C,
    token_hash: [u8; 32],
    id: u64,
    generation: u64,
    tx: watch::Sender<Landed>,
}

impl<C: Deref<Target = KeySetCache>> Flight<C> {
    pub fn land(self, result: &Result<Arc<OpenKeySet>, VaultError>) {
        let shared = match result {
            Ok(opened) => {
                self.cache.insert_read_at(self.token_hash, opened.clone(), self.generation, Instant::now());
                Ok(opened.clone())
            }
            // The token is gone (a refresh learns it this way if the revocation's notification was missed).
            Err(VaultError::Unauthenticated) => {
                self.cache.entries.lock().remove(&self.token_hash);
                Err(Shared::Unauthenticated)
            }
            Err(e) if e.is_unavailable() => Err(Shared::Unavailable),
            Err(_) => Err(Shared::Retry),
        };
        self.tx.send_replace(Some(shared));
        // Drop runs next and frees the slot.
    }
}

impl<C: Deref<Target = KeySetCache>> Drop for Flight<C> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights();
        if flights.get(&self.token_hash).is_some_and(|slot| slot.id == self.id) {
            flights.remove(&self.token_hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::input::Policy;
    use std::sync::atomic::AtomicUsize;

    fn set(key_set_id: Uuid) -> Arc<OpenKeySet> {
        Arc::new(OpenKeySet::new(key_set_id, Policy::default(), Vec::new()))
    }

    fn hash(i: u32) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h
    }

    fn cache(ttl_secs: u64) -> KeySetCache {
        KeySetCache::new(Duration::from_secs(ttl_secs), Duration::from_secs(60))
    }

    fn insert(cache: &KeySetCache, h: [u8; 32], opened: Arc<OpenKeySet>, now: Instant) {
        assert!(cache.insert_read_at(h, opened, cache.generation(), now));
    }

    async fn load_now(cache: &KeySetCache, h: [u8; 32], id: Uuid) -> Arc<OpenKeySet> {
        cache.get_or_load(h, || async move { Ok(OpenKeySet::new(id, Policy::default(), Vec::new())) }).await.unwrap()
    }

    #[tokio::test]
    async fn zero_ttl_caches_nothing() {
        let cache = cache(0);
        load_now(&cache, hash(1), Uuid::new_v4()).await;
        assert!(cache.get(&hash(1)).is_none());
        assert_eq!(cache.entries.len(), 0);
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = cache(30);
        let opened = set(Uuid::new_v4());
        let now = Instant::now();
        for i in 0..50_000 {
            insert(&cache, hash(i), opened.clone(), now);
        }
        assert!(cache.entries.len() <= CAPACITY, "{}", cache.entries.len());
        assert!(cache.get(&hash(49_999)).is_some());
    }

    #[test]
    fn a_set_at_its_ttl_is_dropped_with_its_keys() {
        let cache = cache(30);
        let now = Instant::now();
        let opened = set(Uuid::new_v4());
        insert(&cache, hash(1), opened.clone(), now);
        assert!(cache.get_at(&hash(1), now + Duration::from_secs(29)).is_some());
        assert_eq!(Arc::strong_count(&opened), 2);
        assert_eq!(cache.entries.lock().sweep(now + Duration::from_secs(30)), 1);
        assert_eq!(Arc::strong_count(&opened), 1, "the cache no longer holds the decrypted set");
        // A read past the TTL drops it as well, without waiting for a sweep.
        insert(&cache, hash(2), opened.clone(), now);
        assert!(cache.get_at(&hash(2), now + Duration::from_secs(31)).is_none());
        assert_eq!(Arc::strong_count(&opened), 1);
    }

    #[test]
    fn evicts_by_key_set_and_clears() {
        let cache = cache(30);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        insert(&cache, hash(1), set(a), now);
        insert(&cache, hash(2), set(a), now);
        insert(&cache, hash(3), set(b), now);
        cache.evict_key_set(a);
        assert!(cache.get(&hash(1)).is_none() && cache.get(&hash(2)).is_none());
        assert!(cache.get(&hash(3)).is_some());
        cache.clear();
        assert_eq!(cache.entries.len(), 0);
    }

    #[tokio::test]
    async fn a_read_overtaken_by_an_eviction_is_not_cached() {
        let cache = Arc::new(cache(30));
        let id = Uuid::new_v4();
        let (read_done_tx, read_done) = tokio::sync::oneshot::channel::<()>();
        let (evicted_tx, evicted) = tokio::sync::oneshot::channel::<()>();
        let signals = Mutex::new(Some((read_done_tx, evicted)));
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(hash(1), || {
                        let (done, evicted) = signals.lock().unwrap().take().unwrap();
                        async move {
                            // The database answered with the old set; a PATCH commits before we insert it.
                            let opened = OpenKeySet::new(id, Policy::default(), Vec::new());
                            done.send(()).unwrap();
                            evicted.await.unwrap();
                            Ok(opened)
                        }
                    })
                    .await
                    .unwrap()
            })
        };
        read_done.await.unwrap();
        cache.evict_key_set(id);
        evicted_tx.send(()).unwrap();
        reader.await.unwrap();
        assert!(cache.get(&hash(1)).is_none(), "the pre-PATCH set must not be cached");
        // A read that starts after the eviction is cached as usual.
        load_now(&cache, hash(1), id).await;
        assert!(cache.get(&hash(1)).is_some());
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_read() {
        let cache = Arc::new(cache(30));
        let reads = Arc::new(AtomicUsize::new(0));
        let id = Uuid::new_v4();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, reads) = (cache.clone(), reads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(hash(7), || {
                            let reads = reads.clone();
                            async move {
                                reads.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Ok(OpenKeySet::new(id, Policy::default(), Vec::new()))
                            }
                        })
                        .await
                        .unwrap()
                        .key_set_id
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), id);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(cache.flights().is_empty());
    }

    #[tokio::test]
    async fn followers_share_a_refusal_and_survive_a_cancelled_leader() {
        let cache = Arc::new(cache(30));
        let reads = Arc::new(AtomicUsize::new(0));
        let slow_unauth = |reads: Arc<AtomicUsize>| {
            move || {
                let reads = reads.clone();
                async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<OpenKeySet, _>(VaultError::Unauthenticated)
                }
            }
        };
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, load) = (cache.clone(), slow_unauth(reads.clone()));
                tokio::spawn(async move { cache.get_or_load(hash(3), load).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Err(VaultError::Unauthenticated)));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // A leader whose request goes away hands the read to a follower.
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache.get_or_load(hash(4), std::future::pending::<Result<OpenKeySet, VaultError>>).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let cache = cache.clone();
            tokio::spawn(async move { load_now(&cache, hash(4), Uuid::nil()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let opened = tokio::time::timeout(Duration::from_secs(5), follower).await.unwrap().unwrap();
        assert_eq!(opened.key_set_id, Uuid::nil());
    }

    #[test]
    fn an_outage_keeps_warm_sets_past_their_ttl_for_the_grace_then_reconnecting_clears() {
        let cache = KeySetCache::new(Duration::from_secs(5), Duration::from_secs(60));
        let now = Instant::now();
        insert(&cache, hash(1), set(Uuid::new_v4()), now);
        assert_eq!(cache.begin_outage(now + Duration::from_secs(1)), 1);
        assert!(cache.get_at(&hash(1), now + Duration::from_secs(30)).is_some(), "past its TTL, within the grace");
        // Nothing new is cached: no eviction could reach it.
        assert!(!cache.insert_read_at(hash(2), set(Uuid::new_v4()), cache.generation(), now));
        assert!(cache.get_at(&hash(1), now + Duration::from_secs(61)).is_none(), "the grace is over");

        cache.end_outage();
        assert!(cache.outage().is_none());
        insert(&cache, hash(3), set(Uuid::new_v4()), now);
        cache.begin_outage(now);
        assert_eq!(cache.entries.len(), 1);
        cache.end_outage();
        assert_eq!(cache.entries.len(), 0, "reconnecting clears everything: notifications may have been missed");
    }

    #[test]
    fn with_no_grace_an_outage_clears_at_once() {
        let cache = KeySetCache::new(Duration::from_secs(30), Duration::ZERO);
        let now = Instant::now();
        insert(&cache, hash(1), set(Uuid::new_v4()), now);
        assert_eq!(cache.begin_outage(now), 0);
        assert_eq!(cache.entries.len(), 0);
        assert!(cache.outage().is_some());
    }

    #[test]
    fn a_set_in_the_last_quarter_of_its_ttl_is_refreshed_once_in_the_background() {
        let cache = Arc::new(cache(40));
        let (now, id) = (Instant::now(), Uuid::new_v4());
        let old = set(id);
        insert(&cache, hash(1), old.clone(), now);
        assert!(cache.refresh_flight(&hash(1), now + Duration::from_secs(29)).is_none(), "not due yet");
        assert!(cache.refresh_flight(&hash(2), now + Duration::from_secs(31)).is_none(), "nothing cached to refresh");
        let flight = cache.refresh_flight(&hash(1), now + Duration::from_secs(31)).expect("due in the last quarter");
        assert!(cache.refresh_flight(&hash(1), now + Duration::from_secs(32)).is_none(), "one refresh at a time");
        assert!(Arc::ptr_eq(&cache.get(&hash(1)).unwrap(), &old), "the old set serves meanwhile");
        let fresh = set(id);
        flight.land(&Ok(fresh.clone()));
        assert!(Arc::ptr_eq(&cache.get(&hash(1)).unwrap(), &fresh), "the refreshed read replaced it");
        assert!(cache.flights().is_empty());
    }

    #[test]
    fn the_lock_free_precheck_never_hides_a_due_refresh() {
        let cache = Arc::new(cache(40));
        let opened = set(Uuid::new_v4());
        let loaded = opened.loaded_at;
        // Cached a little after its read began, as a landing read is.
        insert(&cache, hash(1), opened.clone(), loaded + Duration::from_millis(5));
        for secs in [0, 29, 30, 31, 39] {
            let at = loaded + Duration::from_secs(secs);
            if !cache.refresh_may_be_due(&opened, at) {
                assert!(
                    cache.refresh_flight(&hash(1), at).is_none(),
                    "precheck said no at {secs} s, a refresh was due"
                );
            }
        }
        assert!(!cache.refresh_may_be_due(&opened, loaded + Duration::from_secs(29)), "fresh for three quarters");
        assert!(cache.refresh_may_be_due(&opened, loaded + Duration::from_secs(30)));
        assert!(!cache_with_zero_ttl().refresh_may_be_due(&opened, loaded + Duration::from_secs(3600)));
    }

    #[test]
    fn a_refresh_racing_an_eviction_or_finding_the_token_gone_leaves_nothing_cached() {
        let cache = Arc::new(cache(40));
        let (now, id) = (Instant::now(), Uuid::new_v4());
        let due = now + Duration::from_secs(35);
        insert(&cache, hash(1), set(id), now);
        let flight = cache.refresh_flight(&hash(1), due).unwrap();
        cache.evict_key_set(id);
        flight.land(&Ok(set(id)));
        assert!(cache.get(&hash(1)).is_none(), "a read that began before the change is not cached");

        insert(&cache, hash(2), set(id), now);
        let flight = cache.refresh_flight(&hash(2), due).unwrap();
        flight.land(&Err(VaultError::Unauthenticated));
        assert!(cache.get(&hash(2)).is_none(), "a revoked token's set goes at once");

        insert(&cache, hash(3), set(id), now);
        drop(cache.refresh_flight(&hash(3), due).unwrap());
        assert!(cache.get(&hash(3)).is_some(), "a refresh that ended without landing leaves the set serving");
        assert!(cache.refresh_flight(&hash(3), due).is_some(), "and a later request may refresh again");
    }

    #[test]
    fn nothing_is_refreshed_during_an_outage_or_with_caching_off() {
        let cache = Arc::new(cache(40));
        let now = Instant::now();
        insert(&cache, hash(1), set(Uuid::new_v4()), now);
        cache.begin_outage(now);
        assert!(cache.refresh_flight(&hash(1), now + Duration::from_secs(35)).is_none());
        let off = Arc::new(cache_with_zero_ttl());
        assert!(off.refresh_flight(&hash(1), now).is_none());
    }

    fn cache_with_zero_ttl() -> KeySetCache {
        KeySetCache::new(Duration::ZERO, Duration::from_secs(60))
    }
}
