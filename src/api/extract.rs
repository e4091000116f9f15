//! Credential extractors: who is calling, checked before the body is read.
//!
//! Authentication comes before CSRF, so a bad credential is 401 even without a CSRF token.
//! Trusted callers send a service key instead ([`ServiceCaller`]): no CSRF token, no rate
//! limit, and a user's credential is never one. A sent key that matches no configured key
//! is refused before any extractor runs, on every API route
//! ([`super::middleware::refuse_unknown_keys`]); on the routes that act for a user's own
//! credential, a known key is not read at all.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, Scope, ServiceKey, ServiceKeys};
use crate::presence::privacy::Viewer;
use crate::presence::time::WallMillis;
use crate::presence::UserId;

/// The cookie that carries a credential, as the platform's clients send it.
pub const SESSION_COOKIE: &str = ".ROBLOSECURITY";

/// The header that carries a CSRF token, both ways.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The header that carries a service key (CONTRACT section 10).
pub const API_KEY_HEADER: &str = "x-api-key";

/// How a credential arrived: only cookie-borne calls need CSRF tokens. A Bearer credential
/// is read in place from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential<'a> {
    Bearer(&'a str),
    Cookie(String),
}

impl<'a> Credential<'a> {
    /// The `Authorization` header wins when present; it must then be a Bearer credential.
    fn of(req: &'a HttpRequest) -> Result<Self, AuthError> {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AuthError::Malformed)?;
            let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
            let token = token.trim();
            if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
                return Err(AuthError::Malformed);
            }
            return Ok(Self::Bearer(token));
        }
        // Parsing cookies files them in the request's extensions: not for a request
        // without any.
        if !req.headers().contains_key(header::COOKIE) {
            return Err(AuthError::Missing);
        }
        match req.cookie(SESSION_COOKIE) {
            Some(cookie) if !cookie.value().is_empty() => {
                Ok(Self::Cookie(cookie.value().to_owned()))
            }
            _ => Err(AuthError::Missing),
        }
    }

    fn jwt(&self) -> &str {
        match self {
            Self::Bearer(jwt) => jwt,
            Self::Cookie(jwt) => jwt,
        }
    }
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state is not registered")))
}

fn authenticate<'a>(
    req: &'a HttpRequest,
    state: &AppState,
) -> Result<(UserId, Credential<'a>), ApiError> {
    let credential = Credential::of(req)?;
    let user = state.auth.verify(credential.jwt())?;
    Ok((user, credential))
}

/// A caller allowed to change its own presence (a heartbeat) or its own privacy settings:
/// a valid credential, within its user's rate limit, and for cookie-borne credentials the
/// CSRF token issued for that credential.
///
/// Heartbeats and settings changes share the user's bucket (`rate_limit.register_*`): both
/// write the user's own presence and both are sent to every watcher of the user, so one
/// bound on a user's writes bounds what the user can make the server send. A settings
/// change is rare beside the heartbeats that keep a user present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritingUser(pub UserId);

impl FromRequest for WritingUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            let (user, credential) = authenticate(req, state)?;
            state.limits.register(user)?;
            if let Credential::Cookie(jwt) = &credential {
                let now = state.clock.wall().to_system_time();
                let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
                if !sent.is_some_and(|token| state.auth.csrf_valid(jwt, token, now)) {
                    return Err(ApiError::CsrfFailed {
                        token: state.auth.csrf_token(jwt, now),
                    });
                }
            }
            Ok(WritingUser(user))
        }))
    }
}

/// A signed-in caller reading its own data (`GET /v1/presence/settings`): a valid
/// credential, bearer or cookie, and no CSRF token (a read changes nothing). Within its
/// address's read limit (`rate_limit.lookup_*`), as lookups are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedIn(pub UserId);

impl FromRequest for SignedIn {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            let (user, _) = authenticate(req, state)?;
            state.limits.lookup(req)?;
            Ok(SignedIn(user))
        }))
    }
}

/// A caller of the lookup and of live streams: anyone within its address's rate limit,
/// unless `api.require_auth_for_lookup` asks for a valid credential. No CSRF token is
/// needed. Carries who is looking (CONTRACT section 11): a service key with `read` sees
/// everyone, a valid credential is its user, anything else is anonymous; an unknown
/// service key is 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader(pub Viewer);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            let viewer = viewer_of(req, state)?;
            // A `read` key is a trusted caller (CONTRACT section 10): it needs no user's
            // credential and no rate limit applies to it.
            if viewer == Viewer::Reader {
                return Ok(Reader(viewer));
            }
            if state.settings.api.require_auth_for_lookup {
                authenticate(req, state)?;
            }
            state.limits.lookup(req)?;
            Ok(Reader(viewer))
        }))
    }
}

/// Who is looking, for `req`: a sent service key decides (with `read`, [`Viewer::Reader`];
/// without, anonymous; unknown, 401); otherwise a valid credential's user, or anonymous.
pub fn viewer_of(req: &HttpRequest, state: &AppState) -> Result<Viewer, ApiError> {
    if req.headers().contains_key(API_KEY_HEADER) {
        return match ServiceCaller::check(req, &state.service_keys, Scope::Read) {
            Ok(_) => Ok(Viewer::Reader),
            Err(ApiError::Forbidden) => Ok(Viewer::Anonymous),
            Err(e) => Err(e),
        };
    }
    Ok(Credential::of(req)
        .ok()
        .and_then(|credential| state.auth.verify(credential.jwt()).ok())
        .map_or(Viewer::Anonymous, Viewer::User))
}

/// The signed-in caller of a live stream, if it sent a valid credential, and the wall-clock
/// millisecond its credential stops being valid.
pub fn stream_caller(req: &HttpRequest, state: &AppState) -> Option<(UserId, WallMillis)> {
    let credential = Credential::of(req).ok()?;
    state.auth.verify_until(credential.jwt()).ok()
}

/// A trusted caller, by the configured name of the service key it sent in `x-api-key`.
/// The key itself is never kept, logged or shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    pub name: Arc<str>,
}

impl ServiceCaller {
    /// The caller of `req` if it sent a configured service key that has `scope`: without
    /// `x-api-key` (a user's credential does not count), or with an unknown one, 401; with a
    /// known key without `scope`, 403 `Forbidden`.
    pub fn require(req: &HttpRequest, scope: Scope) -> Result<ServiceCaller, ApiError> {
        let state = state(req)?;
        Self::check(req, &state.service_keys, scope)
    }

    /// [`Self::require`] against `keys`.
    fn check(req: &HttpRequest, keys: &ServiceKeys, scope: Scope) -> Result<Self, ApiError> {
        let key = Self::identify(req, keys)?;
        if !key.allows(scope) {
            return Err(ApiError::Forbidden);
        }
        Ok(Self {
            name: key.name().clone(),
        })
    }

    /// The configured key that `req` sent in `x-api-key`, whatever its scopes. 401 without
    /// the header or with an empty one, with two of them, with one that is not printable
    /// ASCII, or with one that matches no configured key.
    pub fn identify<'k>(
        req: &HttpRequest,
        keys: &'k ServiceKeys,
    ) -> Result<&'k ServiceKey, ApiError> {
        let mut sent = req.headers().get_all(API_KEY_HEADER);
        let value = sent.next().ok_or(AuthError::Missing)?;
        if sent.next().is_some() {
            // Two keys: which one a proxy in between would pass on is not ours to guess.
            return Err(AuthError::Malformed.into());
        }
        let presented = value.as_bytes();
        if presented.is_empty() {
            return Err(AuthError::Missing.into());
        }
        if !presented.iter().all(u8::is_ascii_graphic) {
            return Err(AuthError::Malformed.into());
        }
        keys.verify(presented)
            .ok_or_else(|| AuthError::Invalid("unknown service key".into()).into())
    }
}

/// A caller of the `/v1/game-servers` routes: a service key with the `game-servers` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameServerCaller(pub ServiceCaller);

impl FromRequest for GameServerCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(ServiceCaller::require(req, Scope::GameServers).map(GameServerCaller))
    }
}

/// A caller of the privacy routes (CONTRACT section 11): a service key with the `privacy`
/// scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyCaller(pub ServiceCaller);

impl FromRequest for PrivacyCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(ServiceCaller::require(req, Scope::Privacy).map(PrivacyCaller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sha256_hex;
    use crate::config::ServiceKeySettings;
    use actix_web::http::StatusCode;
    use actix_web::test::TestRequest;
    use actix_web::ResponseError as _;

    const GAME_KEY: &str = "game-server-key-0123456789";
    const READ_KEY: &str = "read-key-0123456789";

    fn keys() -> ServiceKeys {
        let entry = |name: &str, key: &str, scope: &str| ServiceKeySettings {
            name: name.into(),
            sha256: sha256_hex(key),
            scopes: vec![scope.into()],
        };
        ServiceKeys::new(&[
            entry("games", GAME_KEY, "game-servers"),
            entry("reader", READ_KEY, "read"),
        ])
        .unwrap()
    }

    fn check(req: TestRequest, scope: Scope) -> Result<ServiceCaller, ApiError> {
        ServiceCaller::check(&req.to_http_request(), &keys(), scope)
    }

    fn with_key(key: &str) -> TestRequest {
        TestRequest::default().insert_header((API_KEY_HEADER, key))
    }

    fn status(result: Result<ServiceCaller, ApiError>) -> StatusCode {
        result.map_or_else(|e| e.status_code(), |_| StatusCode::OK)
    }

    #[test]
    fn a_key_with_the_scope_names_its_caller() {
        let caller = check(with_key(GAME_KEY), Scope::GameServers).unwrap();
        assert_eq!(&*caller.name, "games");
        let caller = check(with_key(READ_KEY), Scope::Read).unwrap();
        assert_eq!(&*caller.name, "reader");
    }

    #[test]
    fn no_key_is_401() {
        let result = check(TestRequest::default(), Scope::GameServers);
        assert!(matches!(
            result,
            Err(ApiError::Unauthorized(AuthError::Missing))
        ));
        let result = check(with_key(""), Scope::GameServers);
        assert!(matches!(
            result,
            Err(ApiError::Unauthorized(AuthError::Missing))
        ));
    }

    #[test]
    fn an_unknown_or_malformed_key_is_401() {
        for key in [
            "not-a-key",
            "game-server-key-012345678",
            &sha256_hex(GAME_KEY),
        ] {
            assert_eq!(
                status(check(with_key(key), Scope::GameServers)),
                StatusCode::UNAUTHORIZED,
                "{key}"
            );
        }
        let inner_space = with_key("game-server key");
        assert!(matches!(
            check(inner_space, Scope::GameServers),
            Err(ApiError::Unauthorized(AuthError::Malformed))
        ));
        let not_ascii = TestRequest::default().insert_header((
            API_KEY_HEADER,
            actix_web::http::header::HeaderValue::from_bytes(b"key\xff").unwrap(),
        ));
        assert!(matches!(
            check(not_ascii, Scope::GameServers),
            Err(ApiError::Unauthorized(AuthError::Malformed))
        ));
        let twice = with_key(GAME_KEY).append_header((API_KEY_HEADER, GAME_KEY));
        assert!(matches!(
            check(twice, Scope::GameServers),
            Err(ApiError::Unauthorized(AuthError::Malformed))
        ));
    }

    #[test]
    fn a_known_key_without_the_scope_is_403() {
        let result = check(with_key(READ_KEY), Scope::GameServers);
        assert!(matches!(result, Err(ApiError::Forbidden)), "{result:?}");
        let result = check(with_key(GAME_KEY), Scope::Privacy);
        assert!(matches!(result, Err(ApiError::Forbidden)), "{result:?}");
    }

    #[test]
    fn a_users_credential_is_never_a_service_key() {
        let jwt = crate::auth::Authenticator::new("s")
            .mint(UserId::new(1).unwrap(), std::time::Duration::from_secs(60))
            .unwrap();
        let bearer =
            TestRequest::default().insert_header((header::AUTHORIZATION, format!("Bearer {jwt}")));
        assert!(matches!(
            check(bearer, Scope::GameServers),
            Err(ApiError::Unauthorized(AuthError::Missing))
        ));
        let cookie = TestRequest::default()
            .cookie(actix_web::cookie::Cookie::new(SESSION_COOKIE, jwt.clone()));
        assert_eq!(
            status(check(cookie, Scope::GameServers)),
            StatusCode::UNAUTHORIZED
        );
        // Nor a user's credential sent as the key, or beside a wrong one.
        let as_key = with_key(&jwt);
        assert_eq!(
            status(check(as_key, Scope::GameServers)),
            StatusCode::UNAUTHORIZED
        );
    }
}
