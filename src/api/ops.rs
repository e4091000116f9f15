//! Routes for operators: liveness, readiness and metrics.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::{ApiError, JSON_UTF8};
use super::AppState;

pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// `GET /health`: 200 while the process runs.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(r#"{"status":"ok"}"#)
}

/// `GET /ready`: 200 once the store is loaded and work is accepted, 503 while shutting down.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::Unavailable);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(r#"{"status":"ready"}"#))
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let body = state.metrics.render(&state.store);
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(body)
}
