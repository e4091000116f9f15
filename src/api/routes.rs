//! Routes and handlers: each handler turns a decoded body into a domain call and its answer.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::body::Body;
use super::error::{ApiError, JSON_UTF8};
use super::extract::{Reader, WritingUser};
use super::json::{LookupRequest, PresencesWriter, RegisterAppPresenceRequest};
use super::ops;
use super::AppState;
use crate::presence::Heartbeat;

pub const REGISTER_APP_PRESENCE: &str = "/v1/presence/register-app-presence";
pub const USERS: &str = "/v1/presence/users";

/// Mounts the API's routes and the operators' ones; anything else is 404, another method
/// on them 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(ops::HEALTH)
            .route(web::get().to(ops::health))
            .default_service(web::to(get_only)),
    )
    .service(
        web::resource(ops::READY)
            .route(web::get().to(ops::ready))
            .default_service(web::to(get_only)),
    )
    .service(
        web::resource(ops::METRICS)
            .route(web::get().to(ops::metrics))
            .default_service(web::to(get_only)),
    )
    .service(
        web::resource(REGISTER_APP_PRESENCE)
            .route(web::post().to(register_app_presence))
            .default_service(web::to(post_only)),
    )
    .service(
        web::resource(USERS)
            .route(web::post().to(users))
            .default_service(web::to(post_only)),
    );
}

/// `POST /v1/presence/register-app-presence`: the caller's own heartbeat.
async fn register_app_presence(
    state: web::Data<AppState>,
    user: WritingUser,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let request: RegisterAppPresenceRequest = body.decode()?;
    let heartbeat = Heartbeat::from_report(request.report(), &state.catalog);
    state.store.heartbeat(user.0, heartbeat, state.clock.now());
    state.metrics.heartbeat();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body("{}"))
}

/// `POST /v1/presence/users`: the presence of up to `api.max_user_ids` users.
async fn users(
    state: web::Data<AppState>,
    _reader: Reader,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let request: LookupRequest = body.decode()?;
    let ids = request.into_user_ids(state.settings.api.max_user_ids)?;
    let mut answer = PresencesWriter::new(state.settings.api.presence_type, ids.len());
    state
        .store
        .visit_many(&ids, state.clock.now().mono, |view| answer.push(view));
    let bytes = answer.finish();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(bytes))
}

async fn post_only() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "POST" })
}

async fn get_only() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "GET" })
}

/// The fixed name of a request's route, for metrics: unknown paths share one name, so an
/// attacker cannot create series.
pub fn route_name(path: &str) -> &'static str {
    match path {
        REGISTER_APP_PRESENCE => REGISTER_APP_PRESENCE,
        USERS => USERS,
        ops::HEALTH => ops::HEALTH,
        ops::READY => ops::READY,
        ops::METRICS => ops::METRICS,
        ops::OPENAPI => ops::OPENAPI,
        _ => "unmatched",
    }
}

/// The answer to any route that does not exist.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
