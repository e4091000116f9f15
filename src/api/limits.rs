//! Rate limits: token buckets per user on heartbeats and per client address on lookups,
//! answered with 429 and `Retry-After`.
//!
//! The buckets live in `governor`'s keyed limiters, on the server's [`Clock`]. A key's
//! state is dropped by [`RateLimits::forget_idle`] (run by the sweeper) once it is
//! indistinguishable from a full bucket, so memory holds only the keys seen within about
//! one refill time.
//!
//! # The client address
//!
//! Without `rate_limit.trust_forwarded_for`, a lookup is keyed by the socket's peer
//! address. With it, by the `X-Forwarded-For` entry `rate_limit.trusted_hops` places from
//! the right (1 = the rightmost, appended by the nearest proxy): each trusted proxy appends
//! the address it saw, so that entry is the address the outermost trusted proxy saw, and
//! everything to its left was written by the client and is never used. Several
//! `X-Forwarded-For` lines are one list, joined in the order they arrived (RFC 9110 5.3);
//! empty list elements are skipped. When the list has fewer entries than `trusted_hops`,
//! or that entry is not an IP address (an `IP:port` or `[IPv6]:port` is accepted), the
//! key is the socket's peer address: the request did not come through the configured
//! proxies as expected, and the peer is an address the client cannot choose.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use actix_web::http::header::HeaderMap;
use actix_web::HttpRequest;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::error::ApiError;
use crate::config::RateLimitSettings;
use crate::presence::{Clock, UserId};

/// A keyed limiter on the server's clock. Its buckets are found with the hash the store's
/// own maps use (`governor`'s default is SipHash, several times slower for a key of 8 or 16
/// bytes), seeded at random per limiter.
type KeyedLimiter<K> = RateLimiter<K, DashMapStateStore<K, Hasher>, Clock, NoOpMiddleware<Nanos>>;

type Hasher = foldhash::fast::RandomState;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

#[derive(Debug)]
pub struct RateLimits {
    register: Option<KeyedLimiter<UserId>>,
    lookup: Option<KeyedLimiter<IpAddr>>,
    /// `Some(trusted_hops)` when the address comes from `X-Forwarded-For`.
    forwarded_hops: Option<usize>,
    clock: Clock,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_second: u32,
    burst: u32,
    clock: &Clock,
) -> Option<KeyedLimiter<K>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_second);
    Some(RateLimiter::dashmap_with_clock_and_hasher(
        Quota::per_second(per_second).allow_burst(burst),
        clock.clone(),
        Hasher::default(),
    ))
}

impl RateLimits {
    /// Limits on the system clock.
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self::with_clock(settings, Clock::system())
    }

    /// Limits whose buckets refill by `clock`.
    pub fn with_clock(settings: &RateLimitSettings, clock: Clock) -> Self {
        Self {
            register: limiter(
                settings.register_per_second,
                settings.register_burst,
                &clock,
            ),
            lookup: limiter(settings.lookup_per_second, settings.lookup_burst, &clock),
            forwarded_hops: settings.trust_forwarded_for.then(|| {
                usize::try_from(settings.trusted_hops)
                    .unwrap_or(usize::MAX)
                    .max(1)
            }),
            clock,
        }
    }

    /// Takes one token from `user`'s heartbeat bucket.
    pub fn register(&self, user: UserId) -> Result<(), ApiError> {
        match &self.register {
            Some(limiter) => self.take(limiter, &user),
            None => Ok(()),
        }
    }

    /// Takes one token from the calling address's lookup bucket.
    pub fn lookup(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.lookup.is_none() {
            return Ok(());
        }
        self.lookup_from(self.client_address(req))
    }

    /// Takes one token from `address`'s lookup bucket (as found by
    /// [`Self::client_address`]); nothing without an address. For a connection that keeps
    /// the address rather than its request.
    pub fn lookup_from(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.lookup, address) {
            (Some(limiter), Some(address)) => self.take(limiter, &address),
            _ => Ok(()),
        }
    }

    fn take<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &KeyedLimiter<K>,
        key: &K,
    ) -> Result<(), ApiError> {
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
            ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// The address a lookup is keyed by (see the module's documentation).
    pub fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = || req.peer_addr().map(|a| a.ip());
        match self.forwarded_hops {
            Some(hops) => forwarded_client(req.headers(), hops).or_else(peer),
            None => peer(),
        }
    }

    /// Drops the state of keys whose bucket has refilled; keeps memory bounded.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.register {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.lookup {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently remembered, for tests and metrics.
    pub fn remembered(&self) -> usize {
        self.register.as_ref().map_or(0, |l| l.len()) + self.lookup.as_ref().map_or(0, |l| l.len())
    }
}

/// The `X-Forwarded-For` entry `hops` places from the right of all its lines joined in
/// order, if there is one and it is an IP address (optionally with a port).
fn forwarded_client(headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let mut entries = headers
        .get_all(X_FORWARDED_FOR)
        .rev()
        .flat_map(|line| {
            // A line that is not visible ASCII yields one entry that parses as nothing.
            let entries = line.to_str().unwrap_or("\u{0}");
            entries.rsplit(',')
        })
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    let entry = entries.nth(hops.checked_sub(1)?)?;
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use std::time::Duration;

    fn settings(per_second: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            register_per_second: per_second,
            register_burst: burst,
            lookup_per_second: per_second,
            lookup_burst: burst,
            trust_forwarded_for: false,
            trusted_hops: 1,
        }
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn retry_after(result: Result<(), ApiError>) -> u64 {
        match result {
            Err(ApiError::TooManyRequests { retry_after_secs }) => retry_after_secs,
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_after() {
        let limits = RateLimits::new(&settings(1, 3));
        for _ in 0..3 {
            assert!(limits.register(user(1)).is_ok());
        }
        assert_eq!(retry_after(limits.register(user(1))), 1);
        assert!(limits.register(user(2)).is_ok());
    }

    #[test]
    fn a_bucket_refills_by_the_injected_clock() {
        let (clock, mock) = Clock::mock();
        let limits = RateLimits::with_clock(&settings(2, 2), clock);
        assert!(limits.register(user(1)).is_ok());
        assert!(limits.register(user(1)).is_ok());
        assert_eq!(retry_after(limits.register(user(1))), 1);
        // One token every 500 ms: not yet at 499 ms, one at 500 ms, and only one.
        mock.increment(Duration::from_millis(499));
        assert!(limits.register(user(1)).is_err());
        mock.increment(Duration::from_millis(1));
        assert!(limits.register(user(1)).is_ok());
        assert!(limits.register(user(1)).is_err());
        // A full second refills two tokens, never more than the burst.
        mock.increment(Duration::from_secs(10));
        assert!(limits.register(user(1)).is_ok());
        assert!(limits.register(user(1)).is_ok());
        assert!(limits.register(user(1)).is_err());
    }

    #[test]
    fn a_rate_of_zero_disables_the_limit() {
        let limits = RateLimits::new(&settings(0, 0));
        for _ in 0..1000 {
            assert!(limits.register(user(1)).is_ok());
        }
    }

    fn request(forwarded: &[&str]) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr("10.0.0.1:5000".parse().unwrap());
        for line in forwarded {
            req = req.append_header(("x-forwarded-for", *line));
        }
        req.to_http_request()
    }

    fn address_of(hops: Option<u32>, forwarded: &[&str]) -> IpAddr {
        let mut s = settings(1, 1);
        if let Some(hops) = hops {
            s.trust_forwarded_for = true;
            s.trusted_hops = hops;
        }
        RateLimits::new(&s)
            .client_address(&request(forwarded))
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let header = ["203.0.113.7, 198.51.100.2"];
        assert_eq!(address_of(None, &header), ip("10.0.0.1"));
        assert_eq!(address_of(Some(1), &header), ip("198.51.100.2"));
    }

    #[test]
    fn the_key_is_the_entry_trusted_hops_from_the_right() {
        let header = ["192.0.2.66, 203.0.113.7, 198.51.100.2"];
        assert_eq!(address_of(Some(1), &header), ip("198.51.100.2"));
        assert_eq!(address_of(Some(2), &header), ip("203.0.113.7"));
        assert_eq!(address_of(Some(3), &header), ip("192.0.2.66"));
        // Whatever the client writes to the left changes nothing.
        let rotated = ["192.0.2.99, 192.0.2.98, 203.0.113.7, 198.51.100.2"];
        assert_eq!(address_of(Some(2), &rotated), ip("203.0.113.7"));
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        let lines = ["192.0.2.66, 203.0.113.7", "198.51.100.2"];
        assert_eq!(address_of(Some(1), &lines), ip("198.51.100.2"));
        assert_eq!(address_of(Some(2), &lines), ip("203.0.113.7"));
        assert_eq!(address_of(Some(3), &lines), ip("192.0.2.66"));
    }

    #[test]
    fn too_few_entries_or_a_bad_entry_fall_back_to_the_peer() {
        assert_eq!(address_of(Some(1), &[]), ip("10.0.0.1"));
        assert_eq!(
            address_of(Some(3), &["203.0.113.7, 198.51.100.2"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            address_of(Some(1), &["203.0.113.7, unknown"]),
            ip("10.0.0.1")
        );
        assert_eq!(address_of(Some(1), &["203.0.113.7, "]), ip("203.0.113.7"));
        assert_eq!(
            address_of(Some(2), &["junk, 203.0.113.7, 198.51.100.2"]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn an_entry_may_carry_a_port() {
        assert_eq!(
            address_of(Some(1), &["203.0.113.7:4711"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            address_of(Some(1), &["[2001:db8::1]:4711"]),
            ip("2001:db8::1")
        );
        assert_eq!(address_of(Some(1), &["2001:db8::1"]), ip("2001:db8::1"));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let (clock, mock) = Clock::mock();
        let limits = RateLimits::with_clock(&settings(1000, 1), clock);
        for n in 1..=500 {
            assert!(limits.register(user(n)).is_ok());
        }
        assert_eq!(limits.remembered(), 500);
        limits.forget_idle();
        assert_eq!(limits.remembered(), 500, "nothing has refilled yet");
        mock.increment(Duration::from_millis(10));
        limits.forget_idle();
        assert_eq!(limits.remembered(), 0);
    }
}
