//! Credential extractors: who is calling, checked before the body is read.
//!
//! Authentication comes before CSRF, so a bad credential is 401 even without a CSRF token.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::auth::AuthError;
use crate::presence::time::WallMillis;
use crate::presence::UserId;

/// The cookie that carries a credential, as the platform's clients send it.
pub const SESSION_COOKIE: &str = ".ROBLOSECURITY";

/// The header that carries a CSRF token, both ways.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a credential arrived: only cookie-borne calls need CSRF tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Bearer(String),
    Cookie(String),
}

impl Credential {
    /// The `Authorization` header wins when present; it must then be a Bearer credential.
    fn of(req: &HttpRequest) -> Result<Self, AuthError> {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AuthError::Malformed)?;
            let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
            let token = token.trim();
            if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
                return Err(AuthError::Malformed);
            }
            return Ok(Self::Bearer(token.to_owned()));
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
            Self::Bearer(jwt) | Self::Cookie(jwt) => jwt,
        }
    }
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state is not registered")))
}

fn authenticate(req: &HttpRequest, state: &AppState) -> Result<(UserId, Credential), ApiError> {
    let credential = Credential::of(req)?;
    let user = state.auth.verify(credential.jwt())?;
    Ok((user, credential))
}

/// A caller allowed to change its own presence: a valid credential, within its user's
/// rate limit, and for cookie-borne credentials the CSRF token issued for that credential.
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

/// A caller of the lookup: anyone within its address's rate limit, unless
/// `api.require_auth_for_lookup` asks for a valid credential. No CSRF token is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader;

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            if state.settings.api.require_auth_for_lookup {
                authenticate(req, state)?;
            }
            state.limits.lookup(req)?;
            Ok(Reader)
        }))
    }
}

/// The signed-in caller of a live stream, if it sent a valid credential, and the wall-clock
/// millisecond its credential stops being valid.
pub fn stream_caller(req: &HttpRequest, state: &AppState) -> Option<(UserId, WallMillis)> {
    let credential = Credential::of(req).ok()?;
    state.auth.verify_until(credential.jwt()).ok()
}
