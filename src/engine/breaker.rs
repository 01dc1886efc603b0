//! Circuit breakers per (endpoint, model, key). Open after consecutive failures, or on 429 until Retry-After; while open
//! the target is skipped; after the cooldown one request probes it (half-open); success closes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

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

#[derive(Debug, Default)]
struct Entry {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    entries: Mutex<HashMap<TargetKey, Entry>>,
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
        Self { threshold: threshold.max(1), open_for, entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TargetKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, target: &TargetKey) -> Admission {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(target) else { return Admission::Allowed };
        match entry.open_until {
            None => Admission::Allowed,
            Some(until) if Instant::now() < until => Admission::Rejected,
            Some(_) if entry.probing => Admission::Rejected,
            Some(_) => {
                entry.probing = true;
                Admission::Probe
            }
        }
    }

    pub fn record_success(&self, target: &TargetKey) {
        let mut entries = self.lock();
        if entries.contains_key(target) {
            entries.remove(target);
        }
    }

    /// A failure that says something about the target's health (transient, timeout).
    pub fn record_failure(&self, target: &TargetKey) {
        let mut entries = self.lock();
        let entry = entries.entry(target.clone()).or_default();
        entry.consecutive_failures += 1;
        if entry.probing || entry.consecutive_failures >= self.threshold {
            entry.open_until = Some(Instant::now() + self.open_for);
            entry.probing = false;
        }
    }

    /// Opens at once for a known time (429 with Retry-After, or a rate-limit cooldown).
    pub fn open_for(&self, target: &TargetKey, wait: Duration) {
        let mut entries = self.lock();
        let entry = entries.entry(target.clone()).or_default();
        let until = Instant::now() + wait;
        entry.open_until = Some(entry.open_until.map_or(until, |u| u.max(until)));
        entry.probing = false;
    }

    /// Releases a probe slot whose request ended without a verdict (cancelled, or a caller fault).
    pub fn release_probe(&self, target: &TargetKey) {
        if let Some(entry) = self.lock().get_mut(target) {
            entry.probing = false;
        }
    }

    pub fn state(&self, target: &TargetKey) -> BreakerState {
        match self.lock().get(target) {
            Some(Entry { open_until: Some(until), .. }) if Instant::now() < *until => BreakerState::Open,
            Some(Entry { open_until: Some(_), .. }) => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// (open, half-open) counts, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let entries = self.lock();
        let open = entries.values().filter(|e| e.open_until.is_some_and(|u| now < u)).count();
        let half = entries.values().filter(|e| e.open_until.is_some_and(|u| now >= u)).count();
        (open, half)
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
}
