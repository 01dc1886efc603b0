//! One upstream HTTP client per thread. An actix worker is a single-threaded runtime, and a pooled connection is
//! driven by a task on the runtime that opened it: with one client shared by every worker, a request on worker A
//! often took a connection opened on worker B, and each call then woke B's thread twice (request out, answer back).
//! With a client per thread, every connection a worker uses lives on its own runtime and the call needs no other
//! thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::egress::EgressPolicy;

/// The clients of one engine: built per thread on first use, all with the same settings.
pub struct Clients {
    id: u64,
    /// Dropped with the engine, so that threads can forget its clients.
    alive: Arc<()>,
    connect_timeout: Duration,
    egress: EgressPolicy,
    /// Built at start (so that a client that cannot be built fails start-up), and used where a thread's own cannot be.
    first: reqwest::Client,
}

type PerThread = Vec<(Weak<()>, u64, reqwest::Client)>;

thread_local! {
    static PER_THREAD: RefCell<PerThread> = const { RefCell::new(Vec::new()) };
}

impl Clients {
    pub fn new(connect_timeout: Duration, egress: EgressPolicy) -> reqwest::Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let first = super::upstream::build_client(connect_timeout, egress.clone())?;
        Ok(Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), alive: Arc::new(()), connect_timeout, egress, first })
    }

    /// This thread's client.
    pub fn get(&self) -> reqwest::Client {
        PER_THREAD
            .try_with(|cell| {
                let mut list = cell.borrow_mut();
                if let Some((_, _, client)) = list.iter().find(|(_, id, _)| *id == self.id) {
                    return client.clone();
                }
                // Engines that are gone (tests build many) leave their clients behind until the next new one.
                list.retain(|(alive, _, _)| alive.strong_count() > 0);
                let client = super::upstream::build_client(self.connect_timeout, self.egress.clone())
                    .unwrap_or_else(|_| self.first.clone());
                list.push((Arc::downgrade(&self.alive), self.id, client.clone()));
                client
            })
            .unwrap_or_else(|_| self.first.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        Clients::new(Duration::from_secs(1), EgressPolicy::new(Vec::new(), true)).unwrap()
    }

    #[test]
    fn a_thread_reuses_its_client_and_forgets_dropped_engines() {
        let a = clients();
        a.get();
        a.get();
        let b = clients();
        b.get();
        assert_eq!(PER_THREAD.with(|c| c.borrow().len()), 2);
        drop(a);
        let c = clients();
        c.get();
        // `a`'s client went when `c`'s came.
        let ids: Vec<u64> = PER_THREAD.with(|l| l.borrow().iter().map(|(_, id, _)| *id).collect());
        assert_eq!(ids, vec![b.id, c.id]);
    }

    #[test]
    fn each_thread_has_its_own_list() {
        let a = Arc::new(clients());
        a.get();
        let other = a.clone();
        let n = std::thread::spawn(move || {
            other.get();
            PER_THREAD.with(|c| c.borrow().len())
        })
        .join()
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(PER_THREAD.with(|c| c.borrow().iter().filter(|(_, id, _)| *id == a.id).count()), 1);
    }
}
