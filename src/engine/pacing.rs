//! Rate pacing: per key set and model, request and token budgets per minute. A request over budget reserves the next
//! free slot and waits for it (a bounded, first-come queue) instead of collecting 429s from the provider; if the wait
//! would be longer than allowed, it reserves nothing and the engine moves on to the next model.
//!
//! Buckets live in a `BoundedMap` (see `crate::bounded`): at most [`CAPACITY`], and a bucket whose theoretical arrival
//! times have passed is dropped, being the same as a fresh one. Evicting a live bucket under pressure forgets its
//! reservations: its key set may send a burst the provider answers with 429s, which the engine already handles.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::bounded::{Expires, SWEEP_EVERY, SharedMap};
use crate::vault::input::ModelLimit;

/// Most (key set, model) budgets tracked at once (a bucket is about 150 bytes with its model name).
pub const CAPACITY: usize = 57_344;

struct Buckets {
    /// Theoretical arrival times (GCRA) of the request and token budgets.
    requests_tat: Option<Instant>,
    tokens_tat: Option<Instant>,
    created: Instant,
}

impl Expires for Buckets {
    /// Once both arrival times have passed, a bucket grants what a fresh one would.
    fn expires_at(&self) -> Instant {
        self.created.max(self.requests_tat.max(self.tokens_tat).unwrap_or(self.created))
    }
}

pub struct Pacer {
    buckets: SharedMap<(Uuid, String), Buckets>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self { buckets: SharedMap::new(CAPACITY, SWEEP_EVERY) }
    }
}

impl Pacer {
    /// Reserves capacity for one request of `tokens` tokens. `Some(wait)`: sleep that long, then send. `None`: the budget
    /// cannot serve it within `max_wait`; nothing was reserved.
    pub fn reserve(
        &self,
        key_set: Uuid,
        model: &str,
        limit: ModelLimit,
        tokens: u32,
        max_wait: Duration,
    ) -> Option<Duration> {
        self.reserve_at(key_set, model, limit, tokens, max_wait, Instant::now())
    }

    fn reserve_at(
        &self,
        key_set: Uuid,
        model: &str,
        limit: ModelLimit,
        tokens: u32,
        max_wait: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let mut map = self.buckets.lock();
        let b = map.get_or_insert_with((key_set, model.to_owned()), now, || Buckets {
            requests_tat: None,
            tokens_tat: None,
            created: now,
        });
        // Each budget allows a burst of its whole minute, then one unit every minute / budget.
        let plan = |tat: Option<Instant>, per_minute: Option<u32>, cost: u32| -> Option<(Duration, Option<Instant>)> {
            let Some(per_minute) = per_minute else { return Some((Duration::ZERO, tat)) };
            let emission = Duration::from_secs(60) / per_minute.max(1);
            let tolerance = emission * per_minute.saturating_sub(1);
            let start = tat.unwrap_or(now).max(now);
            let new_tat = start + emission * cost.min(per_minute).max(1);
            let wait = (new_tat - now).saturating_sub(tolerance + emission);
            Some((wait, Some(new_tat)))
        };
        let (wait_r, tat_r) = plan(b.requests_tat, limit.rpm, 1)?;
        let (wait_t, tat_t) = plan(b.tokens_tat, limit.tpm, tokens)?;
        let wait = wait_r.max(wait_t);
        if wait > max_wait {
            return None;
        }
        b.requests_tat = tat_r;
        b.tokens_tat = tat_t;
        Some(wait)
    }

    /// Drops buckets whose arrival times have passed; returns how many. Accesses do this every few seconds anyway.
    pub fn sweep(&self) -> usize {
        self.buckets.sweep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_within_budget_go_at_once_then_wait_then_overflow_moves_on() {
        let p = Pacer::default();
        let set = Uuid::new_v4();
        let limit = ModelLimit { rpm: Some(60), tpm: None };
        for _ in 0..60 {
            assert_eq!(p.reserve(set, "m", limit, 10, Duration::ZERO), Some(Duration::ZERO));
        }
        let wait = p.reserve(set, "m", limit, 10, Duration::from_secs(5)).unwrap();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        let wait2 = p.reserve(set, "m", limit, 10, Duration::from_secs(5)).unwrap();
        assert!(wait2 > wait, "later arrivals queue behind earlier ones");
        assert_eq!(p.reserve(set, "m", limit, 10, Duration::from_millis(100)), None);
        // Other models and other key sets have their own budgets.
        assert_eq!(p.reserve(set, "other", limit, 10, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(p.reserve(Uuid::new_v4(), "m", limit, 10, Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn token_budgets_count_tokens() {
        let p = Pacer::default();
        let set = Uuid::new_v4();
        let limit = ModelLimit { rpm: None, tpm: Some(6_000) };
        assert_eq!(p.reserve(set, "m", limit, 6_000, Duration::ZERO), Some(Duration::ZERO));
        let wait = p.reserve(set, "m", limit, 3_000, Duration::from_secs(60)).unwrap();
        assert!(wait >= Duration::from_secs(29) && wait <= Duration::from_secs(31), "{wait:?}");
    }

    #[test]
    fn budgets_are_bounded() {
        let p = Pacer::default();
        let limit = ModelLimit { rpm: Some(60), tpm: None };
        let now = Instant::now();
        for _ in 0..(CAPACITY + 10_000) {
            assert!(p.reserve_at(Uuid::new_v4(), "m", limit, 1, Duration::ZERO, now).is_some());
        }
        assert!(p.buckets.len() <= CAPACITY, "{}", p.buckets.len());
    }

    #[test]
    fn a_bucket_whose_arrival_time_passed_is_dropped_and_equals_a_fresh_one() {
        let p = Pacer::default();
        let set = Uuid::new_v4();
        let limit = ModelLimit { rpm: Some(60), tpm: Some(6_000) };
        let now = Instant::now();
        for _ in 0..60 {
            assert_eq!(p.reserve_at(set, "m", limit, 10, Duration::ZERO, now), Some(Duration::ZERO));
        }
        assert_eq!(p.reserve_at(set, "m", limit, 10, Duration::ZERO, now), None);
        let soon = now + Duration::from_secs(30);
        assert_eq!(p.buckets.lock().sweep(soon), 0, "reservations still pending");
        let later = now + Duration::from_secs(61);
        assert_eq!(p.buckets.lock().sweep(later), 1);
        assert_eq!(p.buckets.len(), 0);
        for _ in 0..60 {
            assert_eq!(p.reserve_at(set, "m", limit, 10, Duration::ZERO, later), Some(Duration::ZERO));
        }
    }
}
