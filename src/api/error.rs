//! The one error type of the HTTP API, answering in the contract's shape:
//! `{"errors":[{"code":N,"message":"..."}]}`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;

/// Every way a request can fail. Extractor and parse failures go through it too.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body cannot be parsed, or a field has the wrong type. The detail is logged only.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid user id")]
    InvalidUserId,
    #[error("too many user ids")]
    TooManyUserIds,
    /// A privacy body that is refused (CONTRACT section 11): 400 with the error's own code
    /// and the table's message for it; the specific reason is logged only.
    #[error("privacy body refused: {0}")]
    Privacy(#[from] crate::presence::privacy::PrivacyError),
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    /// A cookie-authenticated call without the right CSRF token; carries the right one.
    #[error("csrf token missing or wrong")]
    CsrfFailed { token: String },
    /// A request this server will not serve for that caller, such as a live stream that
    /// carries a cookie from a foreign page (CONTRACT section 9).
    #[error("forbidden")]
    Forbidden,
    #[error("no such route")]
    NotFound,
    /// Players reported to a game server that is not live (CONTRACT section 10).
    #[error("unknown game server")]
    UnknownGameServer,
    /// As many game servers are live as `presence.max_game_servers` allows; answered with
    /// `Retry-After`.
    #[error("game servers full")]
    GameServersFull,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("rate limited for {retry_after_secs}s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The server is shutting down (`/ready`).
    #[error("shutting down")]
    Unavailable,
    /// This node, or this client's address or user, has as many live streams open as it
    /// may; answered with `Retry-After`.
    #[error("live streams full: {0}")]
    StreamsFull(crate::presence::watch::Refused),
    /// The storage backend cannot be reached in time (CONTRACT section 7); answered with
    /// `Retry-After`.
    #[error("storage backend unavailable")]
    BackendUnavailable,
    /// Never shown to the client; logged with its cause.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// What a 503 for an unavailable backend tells the client to wait, in seconds.
const BACKEND_RETRY_AFTER_SECS: &str = "1";
/// What a 503 for live streams, or game servers, that are full tells the client to wait,
/// in seconds.
const STREAMS_RETRY_AFTER_SECS: &str = "5";

impl From<crate::presence::PresenceError> for ApiError {
    fn from(e: crate::presence::PresenceError) -> Self {
        match e {
            crate::presence::PresenceError::Unavailable => Self::BackendUnavailable,
        }
    }
}

/// `application/json; charset=utf-8`, shared by every JSON answer.
pub const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

impl ApiError {
    /// `{"errors":[{"code":N,"message":"..."}]}` for this error: the body of its answer, and
    /// the error frame of a WebSocket.
    pub fn body(&self) -> String {
        let (code, message) = self.code_and_message();
        // The messages are fixed ASCII without quotes or backslashes: no escaping needed.
        format!(r#"{{"errors":[{{"code":{code},"message":"{message}"}}]}}"#)
    }

    fn code_and_message(&self) -> (u8, &'static str) {
        match self {
            Self::BadRequest(_) => (0, "BadRequest"),
            Self::InvalidUserId => (1, "Invalid user id."),
            Self::TooManyUserIds => (2, "Too many User Ids being sent in the request."),
            Self::Privacy(e) => (e.code(), e.message()),
            Self::Unauthorized(_) => (0, "Authorization has been denied for this request."),
            Self::CsrfFailed { .. } => (0, "Token Validation Failed"),
            Self::Forbidden => (0, "Forbidden"),
            Self::NotFound => (0, "NotFound"),
            Self::UnknownGameServer => (0, "Unknown game server."),
            Self::MethodNotAllowed { .. } => (0, "MethodNotAllowed"),
            Self::PayloadTooLarge { .. } => (0, "PayloadTooLarge"),
            Self::UnsupportedMediaType => (0, "UnsupportedMediaType"),
            Self::BodyTimeout(_) => (0, "RequestTimeout"),
            Self::TooManyRequests { .. } => (0, "TooManyRequests"),
            Self::Unavailable
            | Self::StreamsFull(_)
            | Self::BackendUnavailable
            | Self::GameServersFull => (0, "ServiceUnavailable"),
            Self::Internal(_) => (0, "InternalServerError"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidUserId | Self::TooManyUserIds | Self::Privacy(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::CsrfFailed { .. } | Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::UnknownGameServer => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable
            | Self::StreamsFull(_)
            | Self::BackendUnavailable
            | Self::GameServersFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) => tracing::error!(error = format!("{cause:#}"), "500"),
            other => tracing::debug!(error = %other, "request refused"),
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, JSON_UTF8));
        match self {
            Self::CsrfFailed { token } => {
                response.insert_header(("x-csrf-token", token.as_str()));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::TooManyRequests { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::BackendUnavailable => {
                response.insert_header((header::RETRY_AFTER, BACKEND_RETRY_AFTER_SECS));
            }
            Self::StreamsFull(_) | Self::GameServersFull => {
                response.insert_header((header::RETRY_AFTER, STREAMS_RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response.body(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(e: ApiError) -> serde_json::Value {
        let bytes = to_bytes(e.error_response().into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[actix_web::test]
    async fn every_error_has_the_contract_shape() {
        let v = body_of(ApiError::TooManyUserIds).await;
        assert_eq!(
            v,
            serde_json::json!({"errors":[{"code":2,"message":"Too many User Ids being sent in the request."}]})
        );
    }

    #[actix_web::test]
    async fn a_privacy_refusal_is_400_with_its_own_code_and_the_tables_message() {
        use crate::presence::privacy::PrivacyError;
        for (e, code, message) in [
            (PrivacyError::UnknownVisibility, 0, "BadRequest"),
            (PrivacyError::UntilNotInFuture, 0, "BadRequest"),
            (PrivacyError::SelfPair, 1, "Invalid user id."),
            (
                PrivacyError::TooManyPairs { max: 1000 },
                2,
                "Too many User Ids being sent in the request.",
            ),
        ] {
            let e = ApiError::from(e);
            assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
            assert_eq!(
                body_of(e).await,
                serde_json::json!({"errors":[{"code":code,"message":message}]})
            );
        }
    }

    #[actix_web::test]
    async fn forbidden_is_403_code_0() {
        let response = ApiError::Forbidden.error_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get("x-csrf-token").is_none());
        assert_eq!(
            body_of(ApiError::Forbidden).await,
            serde_json::json!({"errors":[{"code":0,"message":"Forbidden"}]})
        );
    }

    #[actix_web::test]
    async fn an_unavailable_backend_is_503_with_retry_after() {
        let e = ApiError::from(crate::presence::PresenceError::Unavailable);
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).unwrap(),
            BACKEND_RETRY_AFTER_SECS
        );
        assert_eq!(
            body_of(e).await,
            serde_json::json!({"errors":[{"code":0,"message":"ServiceUnavailable"}]})
        );
    }

    #[actix_web::test]
    async fn an_internal_error_says_nothing_of_its_cause() {
        let e = ApiError::Internal(anyhow::anyhow!("disk on fire at /secret/path"));
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body_of(e).await;
        assert_eq!(
            v,
            serde_json::json!({"errors":[{"code":0,"message":"InternalServerError"}]})
        );
    }
}
