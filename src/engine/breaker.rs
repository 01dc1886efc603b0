//! Circuit breakers per (endpoint, model, key). Open after consecutive failures, or on 429 until Retry-After; while open
//! the target is skipped; after the cooldown one request probes it (half-open); success closes it.
//!
//! Targets include client-chosen model names, so the state is a `BoundedMap` (see `crate::bounded` for why not a
//! cache crate): at most [`CAPACITY`] targets, each forgotten once it says nothing more — a failure count or a
//! half-open breaker after [`FORGET_AFTER`] of quiet, a probe that never reported after [`PROBE_LEASE`]. Forgetting
//! (or evicting under pressure) a breaker only makes its target look closed again: one more attempt at it.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::bounded::{Expires, SWEEP_EVERY, SharedMap};

/// Most targets tracked at once; beyond it the breakers closest to expiry are forgotten. An entry is about 220 bytes
/// with its strings (more with long model names), so a full map is about 3 MiB.
pub const CAPACITY: usize = 14_336;
/// A closed breaker's failure count, or an open one past its open time that nobody probed, is kept this long after its
/// last change.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// A probe whose outcome never came back (its request was dropped) stops holding the target half-open after this.
pub const PROBE_LEASE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub endpoint: String,
    pub model: String,
    pub key_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Entry {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// When the half-open probe was handed out, while it is pending.
    probe_since: Option<Instant>,
    /// Last failure, opening, probe or release.
    touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self { consecutive_failures: 0, open_until: None, probe_since: None, touched: now }
    }
}

impl Expires for Entry {
    fn expires_at(&self) -> Instant {
        match self.probe_since {
            Some(since) => since + PROBE_LEASE,
            None => self.open_until.map_or(self.touched, |u| u.max(self.touched)) + FORGET_AFTER,
        }
    }
}

#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    entries: SharedMap<TargetKey, Entry>,
}

/// Permission to send one request to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The single half-open probe: report its outcome.
    Probe,
    Rejected,
}

impl Breakers {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self { threshold: threshold.max(1), open_for, entries: SharedMap::new(CAPACITY, SWEEP_EVERY) }
    }

    pub fn admit(&self, target: &TargetKey) -> Admission {
        self.admit_at(target, Instant::now())
    }

    fn admit_at(&self, target: &TargetKey, now: Instant) -> Admission {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(target, now) else { return Admission::Allowed };
        match entry.open_until {
            None => Admission::Allowed,
            Some(until) if now < until => Admission::Rejected,
            Some(_) if entry.probe_since.is_some() => Admission::Rejected,
            Some(_) => {
                entry.probe_since = Some(now);
                entry.touched = now;
                Admission::Probe
            }
        }
    }

    pub fn record_success(&self, target: &TargetKey) {
        self.entries.lock().remove(target);
    }

    /// A failure that says something about the target's health (transient, timeout).
    pub fn record_failure(&self, target: &TargetKey) {
        self.record_failure_at(target, Instant::now());
    }

    fn record_failure_at(&self, target: &TargetKey, now: Instant) {
        let mut entries = self.entries.lock();
        let entry = entries.get_or_insert_with(target.clone(), now, || Entry::new(now));
        entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        entry.touched = now;
        if entry.probe_since.is_some() || entry.consecutive_failures >= self.threshold {
            entry.open_until = Some(now + self.open_for);
            entry.probe_since = None;
        }
    }

    /// Opens at once for a known time (429 with Retry-After, or a rate-limit cooldown).
    pub fn open_for(&self, target: &TargetKey, wait: Duration) {
        self.open_for_at(target, wait, Instant::now());
    }

    fn open_for_at(&self, target: &TargetKey, wait: Duration, now: Instant) {
        let mut entries = self.entries.lock();
        let entry = entries.get_or_insert_with(target.clone(), now, || Entry::new(now));
        // Waits come capped from the classifier; a far-future instant must still never overflow.
        let until = now.checked_add(wait).unwrap_or(now + super::classify::MAX_RETRY_AFTER);
        entry.open_until = Some(entry.open_until.map_or(until, |u| u.max(until)));
        entry.probe_since = None;
        entry.touched = now;
    }

    /// Releases a probe slot whose request ended without a verdict (cancelled, or a caller fault).
    pub fn release_probe(&self, target: &TargetKey) {
        self.release_probe_at(target, Instant::now());
    }

    fn release_probe_at(&self, target: &TargetKey, now: Instant) {
        if let Some(entry) = self.entries.lock().get_mut(target, now) {
            entry.probe_since = None;
            entry.touched = now;
        }
    }

    pub fn state(&self, target: &TargetKey) -> BreakerState {
        self.state_at(target, Instant::now())
    }

    fn state_at(&self, target: &TargetKey, now: Instant) -> BreakerState {
        match self.entries.lock().get_mut(target, now).and_then(|e| e.open_until) {
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }

    /// (open, half-open) counts, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        self.counts_at(Instant::now())
    }

    fn counts_at(&self, now: Instant) -> (usize, usize) {
        let entries = self.entries.lock();
        let (mut open, mut half) = (0, 0);
        for until in entries.live(now).filter_map(|e| e.open_until) {
            if now < until {
                open += 1;
            } else {
                half += 1;
            }
        }
        (open, half)
    }

    /// Drops the breakers that no longer carry information; returns how many. Accesses do this every few seconds
    /// anyway; a background tick keeps memory low while the gateway is idle.
    pub fn sweep(&self) -> usize {
        self.entries.sweep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetKey {
        TargetKey { endpoint: "https://api.openai.com/v1".into(), model: "gpt-4o".into(), key_id: Uuid::nil() }
    }

    #[test]
    fn opens_after_threshold_then_probes_once_then_closes() {
        let b = Breakers::new(3, Duration::from_millis(30));
        let t = target();
        for _ in 0..2 {
            b.record_failure(&t);
            assert_eq!(b.admit(&t), Admission::Allowed);
        }
        b.record_failure(&t);
        assert_eq!(b.admit(&t), Admission::Rejected);
        assert_eq!(b.state(&t), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(&t), BreakerState::HalfOpen);
        assert_eq!(b.admit(&t), Admission::Probe);
        assert_eq!(b.admit(&t), Admission::Rejected, "only one probe at a time");
        b.record_success(&t);
        assert_eq!(b.admit(&t), Admission::Allowed);
        assert_eq!(b.state(&t), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breakers::new(1, Duration::from_millis(20));
        let t = target();
        b.record_failure(&t);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(&t), Admission::Probe);
        b.record_failure(&t);
        assert_eq!(b.admit(&t), Admission::Rejected);
    }

    #[test]
    fn retry_after_opens_immediately_and_success_resets_count() {
        let b = Breakers::new(5, Duration::from_secs(30));
        let t = target();
        b.open_for(&t, Duration::from_millis(20));
        assert_eq!(b.admit(&t), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(&t), Admission::Probe);
        b.record_success(&t);
        for _ in 0..4 {
            b.record_failure(&t);
        }
        assert_eq!(b.admit(&t), Admission::Allowed);
        assert_eq!(b.counts(), (0, 0));
    }

    fn numbered(i: usize) -> TargetKey {
        TargetKey { model: format!("unknown-model-{i}"), ..target() }
    }

    #[test]
    fn distinct_targets_stay_within_capacity() {
        let b = Breakers::new(3, Duration::from_secs(30));
        let start = Instant::now();
        let mut now = start;
        for i in 0..50_000 {
            now = start + Duration::from_micros(i as u64);
            b.open_for_at(&numbered(i), Duration::from_secs(30), now);
            b.record_failure_at(&numbered(i + 1_000_000), now);
        }
        assert!(b.entries.len() <= CAPACITY, "{}", b.entries.len());
        // The latest to expire are kept; whatever was evicted simply reads as closed.
        assert_eq!(b.state_at(&numbered(49_999), now), BreakerState::Open);
        assert_eq!(b.state_at(&numbered(0), now), BreakerState::Closed);
    }

    #[test]
    fn an_open_breaker_long_past_its_open_time_is_dropped() {
        let b = Breakers::new(3, Duration::from_secs(30));
        let (t, now) = (target(), Instant::now());
        b.open_for_at(&t, Duration::from_secs(30), now);
        let half_open = now + Duration::from_secs(31);
        assert_eq!(b.state_at(&t, half_open), BreakerState::HalfOpen);
        assert_eq!(b.counts_at(half_open), (0, 1));
        assert_eq!(b.entries.lock().sweep(half_open), 0, "still half-open: it carries information");
        let later = now + Duration::from_secs(30) + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(b.counts_at(later), (0, 0));
        assert_eq!(b.entries.lock().sweep(later), 1);
        assert_eq!(b.entries.len(), 0);
        assert_eq!(b.admit_at(&t, later), Admission::Allowed);
    }

    #[test]
    fn old_failure_counts_are_forgotten() {
        let b = Breakers::new(2, Duration::from_secs(30));
        let (t, now) = (target(), Instant::now());
        b.record_failure_at(&t, now);
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        b.record_failure_at(&t, later);
        assert_eq!(b.admit_at(&t, later), Admission::Allowed, "the first failure was too long ago to count");
        b.record_failure_at(&t, later);
        assert_eq!(b.admit_at(&t, later), Admission::Rejected);
    }

    #[test]
    fn a_pending_probe_is_kept_until_its_lease_ends() {
        let b = Breakers::new(1, Duration::from_secs(1));
        let (t, now) = (target(), Instant::now());
        b.record_failure_at(&t, now);
        let probe = now + Duration::from_secs(2);
        assert_eq!(b.admit_at(&t, probe), Admission::Probe);
        let quiet = probe + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(b.entries.lock().sweep(quiet), 0, "the probe is still out");
        assert_eq!(b.admit_at(&t, quiet), Admission::Rejected);
        // Its request was dropped without reporting: the target is not blocked forever.
        let lease_over = probe + PROBE_LEASE + Duration::from_secs(1);
        assert_eq!(b.admit_at(&t, lease_over), Admission::Allowed);
    }

    #[test]
    fn a_released_probe_leaves_the_breaker_half_open() {
        let b = Breakers::new(1, Duration::from_secs(1));
        let (t, now) = (target(), Instant::now());
        b.record_failure_at(&t, now);
        // Late in its half-open time a probe goes out, and is released without a verdict after the time a quiet
        // half-open breaker would have been forgotten.
        let probe = now + FORGET_AFTER;
        assert_eq!(b.admit_at(&t, probe), Admission::Probe);
        let release = probe + Duration::from_secs(10);
        b.release_probe_at(&t, release);
        assert_eq!(b.admit_at(&t, release + Duration::from_secs(1)), Admission::Probe);
    }
}
