//! The game servers' routes (CONTRACT section 10): a server reports its whole state, the
//! players who joined or left since, and its end. Callers are service keys with the
//! `game-servers` scope; no CSRF token, no per-user or per-address rate limit.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::body::{Body, FromBody};
use super::error::{ApiError, JSON_UTF8};
use super::extract::GameServerCaller;
use super::json::{bad_request, int64, is_list_key, null_as_empty, IdItem, LookupRequest};
use super::AppState;
use crate::presence::service::GameServerError;
use crate::presence::sessions::GamePlace;
use crate::presence::UserId;

pub const GAME_SERVER: &str = "/v1/game-servers/{gameId}";
pub const GAME_SERVER_PLAYERS: &str = "/v1/game-servers/{gameId}/players";

/// The body of `PUT /v1/game-servers/{gameId}`: the server's whole state.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "A game server's whole state")]
pub struct GameServerReport {
    /// The place the server runs; required, > 0.
    #[serde(default, deserialize_with = "int64")]
    #[schema(value_type = i64, required, minimum = 1, maximum = 9223372036854775807_i64)]
    pub place_id: Option<i64>,
    /// Overrides the place catalog's universe.
    #[serde(default, deserialize_with = "int64")]
    #[schema(minimum = -9223372036854775808_i64, maximum = 9223372036854775807_i64)]
    pub universe_id: Option<i64>,
    /// Every player in the server now; required (`[]` for none). Numbers or numeric strings.
    #[serde(default, deserialize_with = "some_list")]
    #[schema(schema_with = super::openapi::player_ids_schema, required)]
    pub players: Option<Vec<IdItem>>,
}

/// The body of `POST /v1/game-servers/{gameId}/players`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(description = "Players who joined or left a live game server since its last report")]
pub struct PlayersChange {
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(schema_with = super::openapi::joined_ids_schema)]
    pub joined: Vec<IdItem>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(schema_with = super::openapi::left_ids_schema)]
    pub left: Vec<IdItem>,
}

/// A list that is present (possibly empty) as `Some`; `null` is absent.
fn some_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IdItem>>, D::Error> {
    Option::<Vec<IdItem>>::deserialize(d)
}

impl FromBody<'_> for GameServerReport {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    /// `placeId=1818&universeId=13058&players=1&players=2`; `players[]` and `players[0]`
    /// also name the list; a lone `players=` is the empty list.
    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_html_form::from_bytes(bytes).map_err(bad_request)?;
        let mut report = Self::default();
        for (key, value) in &pairs {
            match key.as_str() {
                "placeId" => report.place_id = Some(form_int(value)?),
                "universeId" => report.universe_id = Some(form_int(value)?),
                _ if is_list_key(key, "players") => {
                    let players = report.players.get_or_insert_with(Vec::new);
                    if !value.is_empty() {
                        players.push(IdItem::from_text(value));
                    }
                }
                _ => {}
            }
        }
        Ok(report)
    }
}

impl FromBody<'_> for PlayersChange {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_html_form::from_bytes(bytes).map_err(bad_request)?;
        let mut change = Self::default();
        for (key, value) in &pairs {
            if is_list_key(key, "joined") {
                change.joined.push(IdItem::from_text(value));
            } else if is_list_key(key, "left") {
                change.left.push(IdItem::from_text(value));
            }
        }
        Ok(change)
    }
}

fn form_int(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest("not an int64".into()))
}

/// The path's game id: a UUID, else 400 code 0.
fn game_id(path: &str) -> Result<Uuid, ApiError> {
    if path.len() != 36 {
        return Err(ApiError::BadRequest(
            "gameId must be a hyphenated UUID".into(),
        ));
    }
    Uuid::parse_str(path)
        .map_err(|_| ApiError::BadRequest("gameId must be a hyphenated UUID".into()))
}

/// Validated, de-duplicated ids, counted before de-duplication against `max`.
fn ids(items: Vec<IdItem>, max: usize) -> Result<Vec<UserId>, ApiError> {
    LookupRequest { user_ids: items }.into_user_ids(max)
}

impl From<GameServerError> for ApiError {
    fn from(e: GameServerError) -> Self {
        match e {
            GameServerError::Unavailable => Self::BackendUnavailable,
            GameServerError::Unknown => Self::UnknownGameServer,
            GameServerError::Full => Self::GameServersFull,
            GameServerError::TooManyPlayers => Self::TooManyUserIds,
        }
    }
}

fn ok() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body("{}")
}

/// `PUT /v1/game-servers/{gameId}`: the server's whole state.
#[utoipa::path(
    put,
    path = "/v1/game-servers/{gameId}",
    description = "A game server's whole state: live until now + presence.game_server_ttl; \
        every listed player InGame in it; every player of its previous report not listed \
        leaves now. Nothing is applied when the request is refused.",
    params(("gameId" = uuid::Uuid, Path, description = "The server instance's UUID (hyphenated)")),
    request_body(
        description = "The server's place and players",
        content(
            (GameServerReport = "application/json"),
            (GameServerReport = "text/json"),
            (GameServerReport = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK", content((super::openapi::Empty = "application/json"))),
        (status = 400, description = "0: BadRequest (gameId not a UUID, placeId missing or not positive, players missing); 1: Invalid user id.; 2: Too many User Ids being sent in the request. (over api.max_players_per_server)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no x-api-key, or an unknown one)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 403, description = "0: Forbidden (the key lacks the game-servers scope)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((super::openapi::ErrorBody = "application/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((super::openapi::ErrorBody = "application/json"))),
        (status = 500, description = "0: InternalServerError", content((super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "0: ServiceUnavailable (backend unreachable, or presence.max_game_servers live servers)", content((super::openapi::ErrorBody = "application/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn report(
    state: web::Data<AppState>,
    _caller: GameServerCaller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let game = game_id(&path)?;
    let report: GameServerReport = body.decode()?;
    let place_id = report
        .place_id
        .ok_or_else(|| ApiError::BadRequest("placeId is required".into()))?;
    let players = report
        .players
        .ok_or_else(|| ApiError::BadRequest("players is required".into()))?;
    let players = ids(players, state.settings.api.max_players_per_server)?;
    let place = GamePlace::new(place_id, report.universe_id, &state.catalog)
        .ok_or_else(|| ApiError::BadRequest("placeId must be positive".into()))?;
    state
        .presence
        .report_game_server(game, &place, &players)
        .await?;
    Ok(ok())
}

/// `POST /v1/game-servers/{gameId}/players`: joins and leaves since the last report.
#[utoipa::path(
    post,
    path = "/v1/game-servers/{gameId}/players",
    description = "Players who joined or left a live game server since its last report, \
        applied at once; the server's deadline does not move.",
    params(("gameId" = uuid::Uuid, Path, description = "The server instance's UUID (hyphenated)")),
    request_body(
        description = "Who joined and who left",
        content(
            (PlayersChange = "application/json"),
            (PlayersChange = "text/json"),
            (PlayersChange = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK", content((super::openapi::Empty = "application/json"))),
        (status = 400, description = "0: BadRequest (gameId not a UUID, an id in both lists); 1: Invalid user id.; 2: Too many User Ids being sent in the request. (the server would hold more than api.max_players_per_server)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 401, description = "0: Authorization has been denied for this request.", content((super::openapi::ErrorBody = "application/json"))),
        (status = 403, description = "0: Forbidden", content((super::openapi::ErrorBody = "application/json"))),
        (status = 404, description = "0: Unknown game server. (not live)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((super::openapi::ErrorBody = "application/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((super::openapi::ErrorBody = "application/json"))),
        (status = 500, description = "0: InternalServerError", content((super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "0: ServiceUnavailable", content((super::openapi::ErrorBody = "application/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn players(
    state: web::Data<AppState>,
    _caller: GameServerCaller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let game = game_id(&path)?;
    let change: PlayersChange = body.decode()?;
    let max = state.settings.api.max_players_per_server;
    let joined = ids(change.joined, max)?;
    let left = ids(change.left, max)?;
    if joined.iter().any(|id| left.contains(id)) {
        return Err(ApiError::BadRequest("an id is both joined and left".into()));
    }
    state
        .presence
        .game_server_players(game, &joined, &left)
        .await?;
    Ok(ok())
}

/// `DELETE /v1/game-servers/{gameId}`: the server stopped.
#[utoipa::path(
    delete,
    path = "/v1/game-servers/{gameId}",
    description = "The server stopped: every player in it leaves now. 200 also for a server \
        that is not live.",
    params(("gameId" = uuid::Uuid, Path, description = "The server instance's UUID (hyphenated)")),
    responses(
        (status = 200, description = "OK", content((super::openapi::Empty = "application/json"))),
        (status = 400, description = "0: BadRequest (gameId not a UUID)", content((super::openapi::ErrorBody = "application/json"))),
        (status = 401, description = "0: Authorization has been denied for this request.", content((super::openapi::ErrorBody = "application/json"))),
        (status = 403, description = "0: Forbidden", content((super::openapi::ErrorBody = "application/json"))),
        (status = 500, description = "0: InternalServerError", content((super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "0: ServiceUnavailable", content((super::openapi::ErrorBody = "application/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn end(
    state: web::Data<AppState>,
    _caller: GameServerCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let game = game_id(&path)?;
    state.presence.end_game_server(game).await?;
    Ok(ok())
}
