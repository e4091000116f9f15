//! Rate limits: token buckets per user on heartbeats and per client address on lookups,
//! answered with 429 and `Retry-After`.
//!
//! The buckets live in `governor`'s keyed limiters. A key's state is dropped by
//! [`RateLimits::forget_idle`] (run by the sweeper) once it is indistinguishable from a
//! full bucket, so memory holds only the keys seen within about one refill time.

use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use crate::config::RateLimitSettings;
use crate::presence::UserId;

#[derive(Debug)]
pub struct RateLimits {
    register: Option<DefaultKeyedRateLimiter<UserId>>,
    lookup: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trust_forwarded_for: bool,
    clock: DefaultClock,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_second: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_second);
    Some(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            register: limiter(settings.register_per_second, settings.register_burst),
            lookup: limiter(settings.lookup_per_second, settings.lookup_burst),
            trust_forwarded_for: settings.trust_forwarded_for,
            clock: DefaultClock::default(),
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
        let Some(limiter) = &self.lookup else {
            return Ok(());
        };
        match self.client_address(req) {
            Some(address) => self.take(limiter, &address),
            None => Ok(()),
        }
    }

    fn take<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), ApiError> {
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// The socket's peer, or with `trust_forwarded_for` the first `X-Forwarded-For` entry.
    fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|first| first.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        req.peer_addr().map(|a| a.ip())
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn settings(per_second: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            register_per_second: per_second,
            register_burst: burst,
            lookup_per_second: per_second,
            lookup_burst: burst,
            trust_forwarded_for: false,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_after() {
        let limits = RateLimits::new(&settings(1, 3));
        let user = UserId::new(1).unwrap();
        for _ in 0..3 {
            assert!(limits.register(user).is_ok());
        }
        match limits.register(user) {
            Err(ApiError::TooManyRequests { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limits.register(UserId::new(2).unwrap()).is_ok());
    }

    #[test]
    fn a_rate_of_zero_disables_the_limit() {
        let limits = RateLimits::new(&settings(0, 0));
        let user = UserId::new(1).unwrap();
        for _ in 0..1000 {
            assert!(limits.register(user).is_ok());
        }
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "203.0.113.7, 10.0.0.2"))
            .to_http_request();
        let mut limits = RateLimits::new(&settings(1, 1));
        assert_eq!(
            limits.client_address(&req),
            Some("10.0.0.1".parse().unwrap())
        );
        limits.trust_forwarded_for = true;
        assert_eq!(
            limits.client_address(&req),
            Some("203.0.113.7".parse().unwrap())
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = RateLimits::new(&settings(1000, 1));
        for n in 1..=500 {
            assert!(limits.register(UserId::new(n).unwrap()).is_ok());
        }
        assert_eq!(limits.remembered(), 500);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limits.forget_idle();
        assert_eq!(limits.remembered(), 0);
    }
}
