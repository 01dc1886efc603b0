//! Per-client-IP rate limits (GCRA): a steady rate with a burst of the same size, O(1) memory per active client.
//!
//! State lives in a `BoundedMap` (see `crate::bounded`): at most [`CAPACITY`] clients, and a client whose theoretical
//! arrival time has passed is dropped, being the same as a new one. When more clients than that are over their budget
//! at once, the ones closest to it are forgotten first (they get a fresh burst); the heaviest stay limited.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::client::{self, Cidr, ForwardedHeader};
use crate::bounded::{SWEEP_EVERY, SharedMap};
use crate::config::{parse, settings};

settings! {
    /// Per-client-IP abuse limits.
    #[derive(Debug, Clone)]
    pub struct AbuseLimits: Default {
        /// `POST /v1/keys` per client IP per minute (burst of the same size).
        pub key_sets_per_minute: u32 [
            KEY_SETS_PER_MINUTE = "RELIABLEGPT_KEY_SETS_PER_MINUTE", parse::positive, default 20
        ],
        /// Failed authentications per client IP per minute before further attempts get 429.
        pub auth_failures_per_minute: u32 [
            AUTH_FAILURES_PER_MINUTE = "RELIABLEGPT_AUTH_FAILURES_PER_MINUTE", parse::positive, default 30
        ],
        /// Load balancers whose `X-Forwarded-For` (or `Forwarded`) names the client: comma-separated addresses or CIDR
        /// blocks. Default none: the TCP peer is the client and those headers are ignored.
        pub trusted_proxies: Vec<Cidr> [
            TRUSTED_PROXIES = "RELIABLEGPT_TRUSTED_PROXIES", client::parse_trusted, default Vec::new()
        ],
        /// The header the trusted proxies write: `x-forwarded-for` (default) or `forwarded` (RFC 7239). Only that one
        /// is read, so a client cannot slip its own address in through the other.
        pub client_ip_header: ForwardedHeader [
            CLIENT_IP_HEADER = "RELIABLEGPT_CLIENT_IP_HEADER", client::parse_header, default ForwardedHeader::XForwardedFor
        ],
    }
}

/// Most clients tracked at once (an entry is about 50 bytes).
pub const CAPACITY: usize = 57_344;

pub struct ClientLimiter {
    emission: Duration,
    tolerance: Duration,
    /// Each client's theoretical arrival time; it is also when the entry expires.
    state: SharedMap<IpAddr, Instant>,
}

impl ClientLimiter {
    /// `per_minute` events per client per minute, up to `per_minute` at once.
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let emission = Duration::from_secs(60) / per_minute;
        Self { emission, tolerance: emission * (per_minute - 1), state: SharedMap::new(CAPACITY, SWEEP_EVERY) }
    }

    /// Counts one event; `Err(wait)` if the client is over its budget (the event is then not counted).
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.decide(ip, true, Instant::now())
    }

    /// Whether one more event would be allowed, without counting it.
    pub fn peek(&self, ip: IpAddr) -> Result<(), Duration> {
        self.decide(ip, false, Instant::now())
    }

    fn decide(&self, ip: IpAddr, count: bool, now: Instant) -> Result<(), Duration> {
        let key = client_key(ip);
        let mut state = self.state.lock();
        let tat = state.get_mut(&key, now).map_or(now, |t| *t).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        if count {
            state.insert(key, tat + self.emission, now);
        }
        Ok(())
    }

    /// Drops clients whose arrival time has passed; returns how many. Accesses do this every few seconds anyway.
    pub fn sweep(&self) -> usize {
        self.state.sweep()
    }
}

/// IPv6 clients are limited per /64: one host usually owns a whole /64, so per-address limits would be trivial to dodge.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_retry_hint() {
        let limiter = ClientLimiter::per_minute(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(retry_after_secs(wait), wait.as_secs() + 1);
        // Another client is unaffected.
        assert!(limiter.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn peek_does_not_count() {
        let limiter = ClientLimiter::per_minute(1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.peek(ip).is_ok());
        }
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.peek(ip).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let limiter = ClientLimiter::per_minute(1);
        assert!(limiter.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(limiter.check("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert!(limiter.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn clients_are_bounded_and_the_heaviest_stay_limited() {
        let limiter = ClientLimiter::per_minute(2);
        let now = Instant::now();
        let heavy: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limiter.decide(heavy, true, now).is_ok());
        assert!(limiter.decide(heavy, true, now).is_ok());
        for i in 0..(CAPACITY as u32 + 10_000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.decide(ip, true, now).is_ok());
        }
        assert!(limiter.state.len() <= CAPACITY, "{}", limiter.state.len());
        assert!(limiter.decide(heavy, true, now).is_err(), "the client furthest over its budget was kept");
    }

    #[test]
    fn a_client_whose_arrival_time_passed_is_dropped() {
        let limiter = ClientLimiter::per_minute(60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert!(limiter.decide(ip, true, now).is_ok());
        assert!(limiter.decide(ip, false, now).is_ok(), "peek");
        assert_eq!(limiter.state.lock().sweep(now + Duration::from_millis(500)), 0);
        assert_eq!(limiter.state.lock().sweep(now + Duration::from_secs(1)), 1);
        assert_eq!(limiter.state.len(), 0);
    }
}
