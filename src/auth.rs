//! Credentials and CSRF tokens; service keys in [`service`].
//!
//! A credential is an HS256 JWT whose `sub` is the user id and whose `exp` is required. The
//! algorithm is fixed here, never read from the token's header. A CSRF token is an HMAC of
//! the credential and a 30-minute window, so it is bound to that credential and stays
//! valid for 30 to 60 minutes with no server-side state.
//!
//! # When a credential is valid
//!
//! `exp` and the optional `nbf` are whole seconds since the Unix epoch (RFC 7519
//! NumericDate; a fractional or negative value is refused). With `now` the server clock's
//! wall time in milliseconds, a credential is accepted exactly when
//! `nbf * 1000 <= now < exp * 1000`: valid from the first millisecond of its `nbf` second,
//! refused from the first millisecond of its `exp` second (RFC 7519 4.1.4: "on or after").
//! There is no leeway. The times are checked here against the injected [`Clock`], not by
//! `jsonwebtoken`, so that the whole server runs on one clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::presence::time::WallMillis;
use crate::presence::{Clock, UserId};

pub mod service;

pub use service::{sha256_hex, Scope, ServiceKey, ServiceKeys, UnknownScope};

/// The only algorithm credentials are signed and verified with.
const ALGORITHM: Algorithm = Algorithm::HS256;

/// A CSRF token is accepted in the window it was issued in and in the next one.
const CSRF_WINDOW_SECS: u64 = 30 * 60;

/// Bytes of the HMAC kept in a CSRF token: 128 bits.
const CSRF_TOKEN_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Credentials remembered as verified, at most; see [`VerifiedCache`].
const VERIFIED_CACHE_CAPACITY: usize = 1 << 16;
const VERIFIED_CACHE_SHARDS: usize = 16;

/// Why a credential was refused. All of them answer 401; the reason is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("credential refused: {0}")]
    Invalid(String),
    #[error("credential has no valid user id in `sub`")]
    BadSubject,
    #[error("credential expired")]
    Expired,
    #[error("credential not valid yet (`nbf`)")]
    NotYetValid,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: serde_json::Value,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// When a verified credential may be used: `nbf * 1000 <= now < exp * 1000`, in
/// milliseconds of wall time (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    /// The first millisecond it is valid in (`nbf`, or 0 without one).
    from: i64,
    /// The first millisecond it is no longer valid in (`exp`).
    until: i64,
}

impl Validity {
    fn of(claims: &Claims) -> Self {
        Self {
            from: secs_to_millis(claims.nbf.unwrap_or(0)),
            until: secs_to_millis(claims.exp),
        }
    }

    fn check(self, now: WallMillis) -> Result<(), AuthError> {
        if now.0 < self.from {
            Err(AuthError::NotYetValid)
        } else if now.0 >= self.until {
            Err(AuthError::Expired)
        } else {
            Ok(())
        }
    }
}

fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs).map_or(i64::MAX, |s| s.saturating_mul(1000))
}

/// Verifies and mints credentials, issues and checks CSRF tokens.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    csrf: HmacSha256,
    verified: Arc<VerifiedCache>,
    clock: Clock,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator on the system clock.
    pub fn new(secret: &str) -> Self {
        Self::with_clock(secret, Clock::system())
    }

    /// An authenticator that checks `exp` and `nbf`, and mints, by `clock`.
    pub fn with_clock(secret: &str, clock: Clock) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        // `exp` must be present; it and `nbf` are checked against our clock, not by the
        // library (which would read the system clock).
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        // The CSRF key is derived from the secret, so it changes with it, but a CSRF token
        // can never be mistaken for a signature made with the JWT key.
        let mut derive = HmacSha256::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        derive.update(b"presence-server csrf key v1");
        let csrf_key = derive.finalize().into_bytes();
        let csrf = HmacSha256::new_from_slice(&csrf_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
            csrf,
            verified: Arc::new(VerifiedCache::new()),
            clock,
        }
    }

    /// The user a valid credential speaks for, at the clock's current time.
    pub fn verify(&self, jwt: &str) -> Result<UserId, AuthError> {
        let digest: [u8; 32] = Sha256::digest(jwt.as_bytes()).into();
        let now = self.clock.wall();
        if let Some(user) = self.verified.get(&digest, now) {
            return Ok(user);
        }
        let (user, validity) = self.verify_signed(jwt)?;
        validity.check(now)?;
        self.verified.insert(digest, user, validity);
        Ok(user)
    }

    /// [`Self::verify`], and the wall-clock millisecond from which the credential is no
    /// longer valid (its `exp`).
    pub fn verify_until(&self, jwt: &str) -> Result<(UserId, WallMillis), AuthError> {
        let user = self.verify(jwt)?;
        let (_, validity) = self.verify_signed(jwt)?;
        Ok((user, WallMillis(validity.until)))
    }

    /// Verification of what does not change with time: signature, algorithm, `sub`, and
    /// that `exp` is present (and `nbf`, if present) as whole seconds.
    fn verify_signed(&self, jwt: &str) -> Result<(UserId, Validity), AuthError> {
        let data = jsonwebtoken::decode::<Claims>(jwt, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let validity = Validity::of(&data.claims);
        let user = match data.claims.sub {
            serde_json::Value::String(s) => UserId::parse(&s),
            serde_json::Value::Number(n) => n.as_u64().and_then(UserId::new),
            _ => None,
        }
        .ok_or(AuthError::BadSubject)?;
        Ok((user, validity))
    }

    /// A credential for `user`, valid for `ttl` (at least one second) from the clock's now.
    pub fn mint(&self, user: UserId, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_secs(self.clock.wall().to_system_time());
        let claims = Claims {
            sub: serde_json::Value::String(user.to_string()),
            exp: now.saturating_add(ttl.as_secs().max(1)),
            nbf: None,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
    }

    /// The CSRF token for `credential` at `now`.
    pub fn csrf_token(&self, credential: &str, now: SystemTime) -> String {
        let window = unix_secs(now) / CSRF_WINDOW_SECS;
        let mac = self.csrf_mac(credential, window).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&mac[..CSRF_TOKEN_BYTES])
    }

    /// Whether `token` was issued for `credential` in this window or the previous one.
    pub fn csrf_valid(&self, credential: &str, token: &str, now: SystemTime) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        if given.len() != CSRF_TOKEN_BYTES {
            return false;
        }
        let window = unix_secs(now) / CSRF_WINDOW_SECS;
        // Constant-time comparison of the kept prefix.
        [window, window.saturating_sub(1)].into_iter().any(|w| {
            self.csrf_mac(credential, w)
                .verify_truncated_left(&given)
                .is_ok()
        })
    }

    fn csrf_mac(&self, credential: &str, window: u64) -> HmacSha256 {
        let mut mac = self.csrf.clone();
        mac.update(&window.to_be_bytes());
        mac.update(credential.as_bytes());
        mac
    }
}

/// Credentials already verified, keyed by their SHA-256, so that the heartbeat a client
/// repeats with the same token skips decoding and the signature check. Keyed by a digest
/// rather than the token, so that comparing keys reveals nothing about a credential.
/// Expiry is still checked on every use. Bounded: a full shard is emptied.
#[derive(Debug)]
struct VerifiedCache {
    shards: Vec<Mutex<VerifiedShard>>,
}

/// Credential digest -> (user, when it is valid).
type VerifiedShard = HashMap<[u8; 32], (UserId, Validity), foldhash::fast::RandomState>;

impl VerifiedCache {
    fn new() -> Self {
        Self {
            shards: (0..VERIFIED_CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> &Mutex<VerifiedShard> {
        &self.shards[usize::from(digest[0]) % VERIFIED_CACHE_SHARDS]
    }

    /// The user of a remembered credential that is valid at `now`. One that is not is
    /// verified again in full, which refuses it with the reason.
    fn get(&self, digest: &[u8; 32], now: WallMillis) -> Option<UserId> {
        let shard = self.shard(digest).lock();
        shard
            .get(digest)
            .filter(|(_, validity)| validity.check(now).is_ok())
            .map(|(user, _)| *user)
    }

    fn insert(&self, digest: [u8; 32], user: UserId, validity: Validity) {
        let mut shard = self.shard(&digest).lock();
        if shard.len() >= VERIFIED_CACHE_CAPACITY / VERIFIED_CACHE_SHARDS {
            shard.clear();
        }
        shard.insert(digest, (user, validity));
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new("test-secret")
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        unix_secs(SystemTime::now()) + 3600
    }

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let a = auth();
        let jwt = a.mint(user(42), Duration::from_secs(60)).unwrap();
        assert_eq!(a.verify(&jwt), Ok(user(42)));
    }

    #[test]
    fn sub_may_be_a_string_or_a_number() {
        let a = auth();
        let jwt = sign(
            serde_json::json!({"sub": 7, "exp": in_an_hour()}),
            ALGORITHM,
            "test-secret",
        );
        assert_eq!(a.verify(&jwt), Ok(user(7)));
        for bad in [
            serde_json::json!("0"),
            serde_json::json!(-3),
            serde_json::json!("x"),
        ] {
            let jwt = sign(
                serde_json::json!({"sub": bad, "exp": in_an_hour()}),
                ALGORITHM,
                "test-secret",
            );
            assert_eq!(a.verify(&jwt), Err(AuthError::BadSubject));
        }
    }

    #[test]
    fn forged_expired_unsigned_and_exp_less_tokens_are_refused() {
        let a = auth();
        let forged = sign(
            serde_json::json!({"sub": "1", "exp": in_an_hour()}),
            ALGORITHM,
            "other-secret",
        );
        assert!(a.verify(&forged).is_err());
        let expired = sign(
            serde_json::json!({"sub": "1", "exp": unix_secs(SystemTime::now()) - 1}),
            ALGORITHM,
            "test-secret",
        );
        assert!(a.verify(&expired).is_err());
        let no_exp = sign(serde_json::json!({"sub": "1"}), ALGORITHM, "test-secret");
        assert!(a.verify(&no_exp).is_err());
        let other_alg = sign(
            serde_json::json!({"sub": "1", "exp": in_an_hour()}),
            Algorithm::HS512,
            "test-secret",
        );
        assert!(a.verify(&other_alg).is_err());
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"1","exp":{}}}"#, in_an_hour()));
        assert!(a.verify(&format!("{header}.{body}.")).is_err());
        assert!(a.verify("not a jwt").is_err());
    }

    /// An authenticator on a mock clock that stands at the start of second `at`.
    fn auth_at(at: u64) -> (Authenticator, crate::presence::MockClock) {
        let (clock, mock) = Clock::mock_at(WallMillis(secs_to_millis(at)));
        (Authenticator::with_clock("test-secret", clock), mock)
    }

    const T: u64 = 1_700_000_000;

    #[test]
    fn exp_is_exclusive_to_the_millisecond_even_when_remembered() {
        let (a, mock) = auth_at(T - 1);
        let jwt = sign(
            serde_json::json!({"sub": "5", "exp": T}),
            ALGORITHM,
            "test-secret",
        );
        assert_eq!(a.verify(&jwt), Ok(user(5)));
        mock.increment(Duration::from_millis(999));
        // Remembered, and still valid in the last millisecond before `exp`.
        assert_eq!(a.verify(&jwt), Ok(user(5)));
        mock.increment(Duration::from_millis(1));
        assert_eq!(a.verify(&jwt), Err(AuthError::Expired));
        // A fresh authenticator, without the remembered entry, agrees.
        let (fresh, _) = auth_at(T);
        assert_eq!(fresh.verify(&jwt), Err(AuthError::Expired));
    }

    #[test]
    fn a_credential_is_refused_before_its_nbf_and_accepted_from_it() {
        let (a, mock) = auth_at(T - 1);
        let jwt = sign(
            serde_json::json!({"sub": "6", "nbf": T, "exp": T + 60}),
            ALGORITHM,
            "test-secret",
        );
        assert_eq!(a.verify(&jwt), Err(AuthError::NotYetValid));
        mock.increment(Duration::from_millis(999));
        assert_eq!(a.verify(&jwt), Err(AuthError::NotYetValid));
        mock.increment(Duration::from_millis(1));
        assert_eq!(a.verify(&jwt), Ok(user(6)));
    }

    #[test]
    fn fractional_or_negative_times_are_refused() {
        let (a, _) = auth_at(T);
        for claims in [
            serde_json::json!({"sub": "1", "exp": (T + 60) as f64 + 0.5}),
            serde_json::json!({"sub": "1", "exp": -1}),
            serde_json::json!({"sub": "1", "exp": T + 60, "nbf": "soon"}),
        ] {
            let jwt = sign(claims, ALGORITHM, "test-secret");
            assert!(matches!(a.verify(&jwt), Err(AuthError::Invalid(_))));
        }
    }

    #[test]
    fn a_minted_credential_follows_the_clock() {
        let (a, mock) = auth_at(T);
        let jwt = a.mint(user(9), Duration::from_secs(60)).unwrap();
        assert_eq!(a.verify(&jwt), Ok(user(9)));
        mock.increment(Duration::from_secs(60));
        assert_eq!(a.verify(&jwt), Err(AuthError::Expired));
    }

    #[test]
    fn a_refused_credential_is_not_remembered() {
        let a = auth();
        let forged = sign(
            serde_json::json!({"sub": "1", "exp": in_an_hour()}),
            ALGORITHM,
            "other-secret",
        );
        assert!(a.verify(&forged).is_err());
        assert!(a.verify(&forged).is_err());
    }

    #[test]
    fn the_verified_cache_stays_bounded() {
        let cache = VerifiedCache::new();
        for i in 0..(VERIFIED_CACHE_CAPACITY as u32 * 2) {
            let digest: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            cache.insert(
                digest,
                user(1),
                Validity {
                    from: 0,
                    until: i64::MAX,
                },
            );
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().len()).sum();
        assert!(total <= VERIFIED_CACHE_CAPACITY, "{total}");
    }

    #[test]
    fn a_csrf_token_is_bound_to_its_credential() {
        let a = auth();
        let now = SystemTime::now();
        let token = a.csrf_token("credential-a", now);
        assert!(a.csrf_valid("credential-a", &token, now));
        assert!(!a.csrf_valid("credential-b", &token, now));
        assert!(!a.csrf_valid("credential-a", "", now));
        assert!(!a.csrf_valid("credential-a", "garbage!", now));
    }

    #[test]
    fn a_csrf_token_lasts_at_least_thirty_minutes_and_not_forever() {
        let a = auth();
        let issued =
            UNIX_EPOCH + Duration::from_secs(CSRF_WINDOW_SECS * 1000 + CSRF_WINDOW_SECS - 1);
        let token = a.csrf_token("c", issued);
        assert!(a.csrf_valid("c", &token, issued + Duration::from_secs(30 * 60)));
        assert!(!a.csrf_valid("c", &token, issued + Duration::from_secs(61 * 60)));
    }

    #[test]
    fn csrf_tokens_differ_between_secrets() {
        let now = SystemTime::now();
        let token = Authenticator::new("one").csrf_token("c", now);
        assert!(!Authenticator::new("two").csrf_valid("c", &token, now));
    }
}
