//! Routes for operators: liveness, readiness and metrics.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::{ApiError, JSON_UTF8};
use super::openapi::{ErrorBody, Status};
use super::AppState;

pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// `GET /health`: 200 while the process runs.
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "The process runs", content((Status = "application/json"), (Status = "text/json"))),
))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(r#"{"status":"ok"}"#)
}

/// `GET /ready`: 200 once the store is loaded and work is accepted; 503 while shutting down,
/// while the storage backend (Redis) cannot be reached, or on Redis until the node's first
/// subscription to other nodes' changes is in place and while it has been down for more
/// than a few seconds.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Accepting work", content((Status = "application/json"), (Status = "text/json"))),
    (status = 503, description = "0: ServiceUnavailable (shutting down, or the storage backend cannot be reached)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::Unavailable);
    }
    state.presence.check_ready().await?;
    // On Redis, live streams miss other nodes' changes while the node's change feed is down.
    if !state.presence.feed_ready() {
        return Err(ApiError::BackendUnavailable);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(r#"{"status":"ready"}"#))
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Metrics in the OpenMetrics text format", body = String,
        content_type = "application/openmetrics-text"),
))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // On a backend that cannot answer now, the presence gauges keep their last values.
    let counts = match state.presence.counts().await {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::debug!(error = %e, "presence counts unavailable for /metrics");
            None
        }
    };
    let hub = state.presence.hub();
    state.metrics.live(
        hub.watcher_count(),
        hub.topic_count(),
        hub.resume_users(),
        hub.deliveries(),
    );
    let body = state.metrics.render(counts.as_ref());
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(body)
}

/// `GET /openapi.json`: this API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", responses(
    (status = 200, description = "The OpenAPI 3.1 document", body = Object,
        content_type = "application/json"),
))]
pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(state.openapi.clone())
}
