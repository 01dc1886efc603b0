//! Admission: each key set's `max_concurrency` holds across the whole process. Over the limit a request waits in a
//! bounded queue (at most `max_queue_ms`, and at most [`QUEUE_PER_SLOT`] waiters per slot) and is then shed. Key sets
//! without a limit pass straight through. A permit is held until the answer is complete (for a stream: its end).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::metrics::Metrics;

/// Waiters allowed per concurrency slot before new arrivals are shed at once.
pub const QUEUE_PER_SLOT: u32 = 4;

struct Gate {
    limit: u32,
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
}

/// The gates of key sets that have requests in flight or waiting; a gate disappears with its last permit.
#[derive(Default)]
pub struct Gates {
    gates: Mutex<HashMap<Uuid, Arc<Gate>>>,
}

/// Permission to serve one request. Dropping it frees the slot.
pub struct Permit {
    /// In flight / limit when admitted (0 without a limit).
    load: f32,
    held: Option<Held>,
    metrics: Arc<Metrics>,
}

struct Held {
    _slot: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    gates: Arc<Gates>,
    key_set: Uuid,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("load", &self.load).finish_non_exhaustive()
    }
}

impl Permit {
    pub fn load(&self) -> f32 {
        self.load
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.in_flight(-1);
        if let Some(held) = self.held.take() {
            let Held { _slot, gate, gates, key_set } = held;
            drop(_slot);
            gates.release(key_set, gate);
        }
    }
}

/// Refused: over the limit for longer than the queue allows.
#[derive(Debug, Clone, Copy)]
pub struct Shed {
    pub load: f32,
    /// A fair time to come back.
    pub retry_after: Duration,
}

impl Gates {
    pub async fn admit(
        self: &Arc<Self>,
        key_set: Uuid,
        limit: Option<u32>,
        max_queue: Duration,
        metrics: &Arc<Metrics>,
    ) -> Result<Permit, Shed> {
        let Some(limit) = limit.filter(|l| *l > 0) else {
            metrics.in_flight(1);
            return Ok(Permit { load: 0.0, held: None, metrics: metrics.clone() });
        };
        let gate = self.gate(key_set, limit);
        let shed = Shed { load: 1.0, retry_after: max_queue.max(Duration::from_secs(1)) };
        let slot = match gate.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let queued = gate.waiting.fetch_add(1, Relaxed) + 1;
                metrics.queued(1);
                let waited = if queued > limit.saturating_mul(QUEUE_PER_SLOT) {
                    None
                } else {
                    tokio::time::timeout(max_queue, gate.slots.clone().acquire_owned()).await.ok().and_then(Result::ok)
                };
                gate.waiting.fetch_sub(1, Relaxed);
                metrics.queued(-1);
                match waited {
                    Some(slot) => slot,
                    None => {
                        metrics.shed();
                        self.release(key_set, gate);
                        return Err(shed);
                    }
                }
            }
        };
        metrics.in_flight(1);
        let in_use = limit - u32::try_from(gate.slots.available_permits()).unwrap_or(0).min(limit);
        let load = in_use as f32 / limit as f32;
        Ok(Permit {
            load,
            held: Some(Held { _slot: slot, gate, gates: self.clone(), key_set }),
            metrics: metrics.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Gate>>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gate(&self, key_set: Uuid, limit: u32) -> Arc<Gate> {
        let mut gates = self.lock();
        let gate = gates.entry(key_set).or_insert_with(|| Arc::new(Gate::new(limit)));
        if gate.limit != limit {
            // The owner changed the limit: new arrivals use a fresh gate; requests already in flight finish on theirs.
            *gate = Arc::new(Gate::new(limit));
        }
        gate.clone()
    }

    /// Forgets a key set's gate once nobody holds or waits on it, so the map only holds busy key sets.
    fn release(&self, key_set: Uuid, gate: Arc<Gate>) {
        let mut gates = self.lock();
        if let Some(current) = gates.get(&key_set)
            && Arc::ptr_eq(current, &gate)
            && Arc::strong_count(&gate) == 2
        {
            gates.remove(&key_set);
        }
    }

    /// Key sets with a gate (busy ones), for tests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gate {
    fn new(limit: u32) -> Self {
        Self { limit, slots: Arc::new(Semaphore::new(limit as usize)), waiting: AtomicU32::new(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Arc<Gates>, Arc<Metrics>) {
        (Arc::new(Gates::default()), Arc::new(Metrics::new(&[])))
    }

    #[tokio::test]
    async fn no_limit_passes_through_and_keeps_no_state() {
        let (gates, metrics) = setup();
        let p = gates.admit(Uuid::new_v4(), None, Duration::ZERO, &metrics).await.unwrap();
        assert_eq!(p.load(), 0.0);
        assert!(gates.is_empty());
    }

    #[tokio::test]
    async fn over_the_limit_waits_then_is_shed_and_a_freed_slot_admits_a_waiter() {
        let (gates, metrics) = setup();
        let set = Uuid::new_v4();
        let a = gates.admit(set, Some(2), Duration::from_millis(20), &metrics).await.unwrap();
        assert_eq!(a.load(), 0.5);
        let b = gates.admit(set, Some(2), Duration::from_millis(20), &metrics).await.unwrap();
        assert_eq!(b.load(), 1.0);
        let shed = gates.admit(set, Some(2), Duration::from_millis(20), &metrics).await.unwrap_err();
        assert!(shed.retry_after >= Duration::from_secs(1));
        assert!(metrics.render(0, 0).contains("reliablegpt_requests_shed_total 1"));

        let waiter = {
            let (gates, metrics) = (gates.clone(), metrics.clone());
            tokio::spawn(async move { gates.admit(set, Some(2), Duration::from_secs(5), &metrics).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert!(waiter.await.unwrap(), "the waiter got the freed slot");
        drop(b);
        assert!(gates.is_empty(), "idle key sets leave no gate behind");
        assert!(metrics.render(0, 0).contains("reliablegpt_requests_in_flight 0"));
    }

    #[tokio::test]
    async fn other_key_sets_are_independent_and_a_full_queue_sheds_at_once() {
        let (gates, metrics) = setup();
        let set = Uuid::new_v4();
        let _held = gates.admit(set, Some(1), Duration::ZERO, &metrics).await.unwrap();
        assert!(gates.admit(Uuid::new_v4(), Some(1), Duration::ZERO, &metrics).await.is_ok());
        let mut waiters = Vec::new();
        for _ in 0..QUEUE_PER_SLOT {
            let (gates, metrics) = (gates.clone(), metrics.clone());
            waiters
                .push(tokio::spawn(async move { gates.admit(set, Some(1), Duration::from_secs(5), &metrics).await }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        assert!(gates.admit(set, Some(1), Duration::from_secs(5), &metrics).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1), "a full queue does not make newcomers wait");
        for w in waiters {
            w.abort();
        }
    }
}
