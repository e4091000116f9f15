//! Routes and handlers: each handler turns a decoded body into a domain call and its answer.

use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder};

use super::body::Body;
use super::error::{ApiError, JSON_UTF8};
use super::extract::{Reader, WritingUser};
use super::json::{LookupRequest, PresencesWriter, RegisterAppPresenceRequest};
use super::openapi::{Empty, ErrorBody, UserPresencesResponse};
use super::ops;
use super::page;
use super::AppState;
use super::{game_servers, privacy, stream, ws};
use crate::presence::Heartbeat;

pub const REGISTER_APP_PRESENCE: &str = "/v1/presence/register-app-presence";
pub const USERS: &str = "/v1/presence/users";
pub const STREAM: &str = "/v1/presence/stream";
pub const WS: &str = "/v1/presence/ws";
pub const PAGE: &str = "/";

/// Mounts the API's routes and the operators' ones; anything else is 404, another method
/// on them 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(Method::GET, PAGE, page::index))
        .service(only(Method::GET, ops::HEALTH, ops::health))
        .service(only(Method::GET, ops::READY, ops::ready))
        .service(only(Method::GET, ops::METRICS, ops::metrics))
        .service(only(Method::GET, ops::OPENAPI, ops::openapi))
        .service(only(
            Method::POST,
            REGISTER_APP_PRESENCE,
            register_app_presence,
        ))
        .service(only(Method::POST, USERS, users))
        .service(only(Method::GET, STREAM, stream::sse))
        .service(only(Method::GET, WS, ws::ws))
        .service(
            resource(game_servers::GAME_SERVER, GAME_SERVER_METHODS)
                .route(web::put().to(game_servers::report))
                .route(web::delete().to(game_servers::end)),
        )
        .service(only(
            Method::POST,
            game_servers::GAME_SERVER_PLAYERS,
            game_servers::players,
        ))
        .service(
            resource(privacy::SETTINGS, SETTINGS_METHODS)
                .route(web::get().to(privacy::own_settings))
                .route(web::patch().to(privacy::change_own_settings)),
        )
        .service(only(
            Method::PUT,
            privacy::USER_SETTINGS,
            privacy::change_settings,
        ))
        .service(only(
            Method::POST,
            privacy::FRIENDSHIPS,
            privacy::friendships,
        ))
        .service(
            resource(privacy::USER_FRIENDS, USER_FRIENDS_METHODS)
                .route(web::get().to(privacy::friends))
                .route(web::put().to(privacy::replace_friends)),
        );
}

/// What `/v1/game-servers/{gameId}` answers.
const GAME_SERVER_METHODS: &str = "PUT, DELETE";
/// What `/v1/presence/settings` answers.
const SETTINGS_METHODS: &str = "GET, PATCH";
/// What `/v1/users/{userId}/friends` answers.
const USER_FRIENDS_METHODS: &str = "GET, PUT";

/// `path` answered by `handler` for `method`, and 405 with `Allow` for any other method.
fn only<F, Args>(method: Method, path: &'static str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let allow = match method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "POST",
    };
    resource(path, allow).route(web::method(method).to(handler))
}

/// `path`, answering 405 with `Allow: allow` to any method its routes do not take.
fn resource(path: &'static str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow })
    }))
}

/// `POST /v1/presence/register-app-presence`: the caller's own heartbeat.
#[utoipa::path(
    post,
    path = "/v1/presence/register-app-presence",
    description = "Register User Presence for IOS, Android, Xbox, regular studio session. \
        The user comes from the credential. An empty body counts as `{}`.",
    request_body(
        description = "Request model to Register App Presence",
        content(
            (RegisterAppPresenceRequest = "application/json"),
            (RegisterAppPresenceRequest = "text/json"),
            (RegisterAppPresenceRequest = "application/x-www-form-urlencoded"),
        )
    ),
    params(
        ("x-csrf-token" = Option<String>, Header,
            description = "Required with a cookie credential: the token from a 403's x-csrf-token header"),
    ),
    responses(
        (status = 200, description = "OK", content((Empty = "application/json"), (Empty = "text/json"))),
        (status = 400, description = "0: BadRequest", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (also an x-api-key that matches no configured key)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Token Validation Failed", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("x-csrf-token" = String, description = "The CSRF token to repeat the call with"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 429, description = "0: TooManyRequests", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn register_app_presence(
    state: web::Data<AppState>,
    user: WritingUser,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let request: RegisterAppPresenceRequest = body.decode()?;
    if let Some(location) = &request.location {
        check_location_length(location, state.settings.api.max_location_length)?;
    }
    let mut report = request.report();
    if !state.settings.presence.client_reported_games {
        report = report.without_games();
    }
    let heartbeat = Heartbeat::from_report(report, &state.catalog);
    state.presence.heartbeat(user.0, heartbeat).await?;
    state.metrics.heartbeat();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body("{}"))
}

/// A `location` longer than `max` characters is refused (CONTRACT section 6), so that no
/// client can make every lookup of it long. Counting characters is needed only when the
/// UTF-8 length is over `max`, since a character is at least one byte.
fn check_location_length(location: &str, max: usize) -> Result<(), ApiError> {
    if location.len() > max && location.chars().nth(max).is_some() {
        return Err(ApiError::BadRequest(format!(
            "location is longer than {max} characters"
        )));
    }
    Ok(())
}

/// `POST /v1/presence/users`: the presence of up to `api.max_user_ids` users.
#[utoipa::path(
    post,
    path = "/v1/presence/users",
    description = "Get Presence for a list of users: one entry per distinct id, in order of \
        first appearance, each as the caller may see it (a user's privacy settings: a \
        signed-in caller sees its friends and its own entry, a service key with the read \
        scope every real entry). An empty body counts as `{}`.",
    request_body(
        description = "Get users presences request model",
        content(
            (LookupRequest = "application/json"),
            (LookupRequest = "text/json"),
            (LookupRequest = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK", content((UserPresencesResponse = "application/json"), (UserPresencesResponse = "text/json"))),
        (status = 400, description = "0: BadRequest; 1: Invalid user id.; 2: Too many User Ids being sent in the request.", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (an x-api-key that matches no configured key; with api.require_auth_for_lookup, no valid credential)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 429, description = "0: TooManyRequests", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security((), ("bearer" = []), ("cookie" = []), ("api_key" = []))
)]
pub async fn users(
    state: web::Data<AppState>,
    Reader(viewer): Reader,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let request: LookupRequest = body.decode()?;
    let ids = request.into_user_ids(state.settings.api.max_user_ids)?;
    let mut answer = PresencesWriter::new(state.settings.api.presence_type, ids.len());
    let show_last_online = state.settings.privacy.show_last_online;
    state
        .presence
        .visit_seen(viewer, &ids, |seen| {
            answer.push_seen(seen, viewer, show_last_online);
        })
        .await?;
    let bytes = answer.finish();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(bytes))
}

/// The fixed name of a request's route, for metrics: unknown paths share one name, so an
/// attacker cannot create series.
pub fn route_name(path: &str) -> &'static str {
    if let Some(route) = templated_route(path) {
        return route;
    }
    ROUTES
        .iter()
        .copied()
        .find(|&route| route == path)
        .unwrap_or(UNMATCHED)
}

/// The route with a path parameter that `path` is, whatever its parameter's segment (any
/// non-empty segment, as the router matches it).
fn templated_route(path: &str) -> Option<&'static str> {
    if let Some(rest) = path.strip_prefix("/v1/game-servers/") {
        return match rest.split_once('/') {
            None if !rest.is_empty() => Some(game_servers::GAME_SERVER),
            Some((id, "players")) if !id.is_empty() => Some(game_servers::GAME_SERVER_PLAYERS),
            _ => None,
        };
    }
    let rest = path.strip_prefix("/v1/users/")?;
    match rest.split_once('/') {
        Some((id, "presence-settings")) if !id.is_empty() => Some(privacy::USER_SETTINGS),
        Some((id, "friends")) if !id.is_empty() => Some(privacy::USER_FRIENDS),
        _ => None,
    }
}

/// The methods a route answers (its `Allow`), `None` for a path that is no route.
pub fn method_of(path: &str) -> Option<&'static str> {
    match templated_route(path) {
        Some(game_servers::GAME_SERVER) => return Some(GAME_SERVER_METHODS),
        Some(privacy::USER_FRIENDS) => return Some(USER_FRIENDS_METHODS),
        Some(privacy::USER_SETTINGS) => return Some("PUT"),
        Some(_) => return Some("POST"),
        None => {}
    }
    match path {
        REGISTER_APP_PRESENCE | USERS | privacy::FRIENDSHIPS => Some("POST"),
        privacy::SETTINGS => Some(SETTINGS_METHODS),
        STREAM | WS | PAGE | ops::HEALTH | ops::READY | ops::METRICS | ops::OPENAPI => Some("GET"),
        _ => None,
    }
}

/// Whether `path` is a route of the API, which reads who is calling (a user's credential,
/// a service key, or both), rather than an operators' route or the page, which answer
/// every caller alike.
pub fn reads_credentials(path: &str) -> bool {
    path.starts_with("/v1/") && method_of(path).is_some()
}

/// Every route's name, as metrics label it.
pub const ROUTES: [&str; 15] = [
    game_servers::GAME_SERVER,
    game_servers::GAME_SERVER_PLAYERS,
    REGISTER_APP_PRESENCE,
    USERS,
    STREAM,
    WS,
    privacy::SETTINGS,
    privacy::USER_SETTINGS,
    privacy::FRIENDSHIPS,
    privacy::USER_FRIENDS,
    PAGE,
    ops::HEALTH,
    ops::READY,
    ops::METRICS,
    ops::OPENAPI,
];

/// The label of every path that is not a route.
pub const UNMATCHED: &str = "unmatched";

/// The answer to any route that does not exist.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_name_and_methods_whatever_its_path_parameter() {
        for (path, name, methods) in [
            (USERS, USERS, "POST"),
            ("/v1/presence/settings", privacy::SETTINGS, "GET, PATCH"),
            ("/v1/friendships", privacy::FRIENDSHIPS, "POST"),
            (
                "/v1/users/42/presence-settings",
                privacy::USER_SETTINGS,
                "PUT",
            ),
            ("/v1/users/x/friends", privacy::USER_FRIENDS, "GET, PUT"),
            (
                "/v1/game-servers/abc",
                game_servers::GAME_SERVER,
                "PUT, DELETE",
            ),
            (
                "/v1/game-servers/abc/players",
                game_servers::GAME_SERVER_PLAYERS,
                "POST",
            ),
            (ops::HEALTH, ops::HEALTH, "GET"),
        ] {
            assert_eq!(route_name(path), name, "{path}");
            assert_eq!(method_of(path), Some(methods), "{path}");
        }
        for path in [
            "/v1/users//friends",
            "/v1/users/1/friends/",
            "/v1/users/1",
            "/v1/users/1/other",
            "/v1/friendships/1",
            "/elsewhere",
        ] {
            assert_eq!(route_name(path), UNMATCHED, "{path}");
            assert_eq!(method_of(path), None, "{path}");
        }
    }

    #[test]
    fn only_the_apis_routes_read_credentials() {
        for path in [
            REGISTER_APP_PRESENCE,
            USERS,
            STREAM,
            WS,
            "/v1/presence/settings",
            "/v1/friendships",
            "/v1/users/1/friends",
            "/v1/users/1/presence-settings",
            "/v1/game-servers/g",
            "/v1/game-servers/g/players",
        ] {
            assert!(reads_credentials(path), "{path}");
        }
        for path in [
            PAGE,
            ops::HEALTH,
            ops::READY,
            ops::METRICS,
            ops::OPENAPI,
            "/v1/nothing",
            "/elsewhere",
        ] {
            assert!(!reads_credentials(path), "{path}");
        }
    }
}
