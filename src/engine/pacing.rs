//! Rate pacing: per key set and model, request and token budgets per minute. A request over budget reserves the next
//! free slot and waits for it (a bounded, first-come queue) instead of collecting 429s from the provider; if the wait
//! would be longer than allowed, it reserves nothing and the engine moves on to the next model.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::vault::input::ModelLimit;

#[derive(Default)]
struct Buckets {
    /// Theoretical arrival times (GCRA) of the request and token budgets.
    requests_tat: Option<Instant>,
    tokens_tat: Option<Instant>,
}

#[derive(Default)]
pub struct Pacer {
    buckets: Mutex<HashMap<(Uuid, String), Buckets>>,
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
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry((key_set, model.to_owned())).or_default();
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
}
