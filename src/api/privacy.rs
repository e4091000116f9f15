//! The privacy routes (CONTRACT section 11): a user's own settings with its credential,
//! anyone's settings and the friendships with a `privacy` service key.
//!
//! Every body is checked whole (`presence::privacy`) before anything is applied; a refusal
//! is 400 with the code the check gives. Service-key calls need no CSRF token and have no
//! rate limit; a user's settings change needs the CSRF token with a cookie, as a heartbeat
//! does, and shares the heartbeats' per-user bucket ([`WritingUser`]).

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::body::{Body, FromBody};
use super::error::{ApiError, JSON_UTF8};
use super::extract::{PrivacyCaller, SignedIn, WritingUser};
use super::json::{bad_request, is_list_key};
use super::openapi::{
    ErrorBody, FriendIds, FriendListRequest, FriendshipsChange, PresenceSettings,
    PresenceSettingsChange, Skipped,
};
use super::AppState;
use crate::presence::privacy::{FriendListBody, FriendPair, FriendshipsBody, SettingsPatch};
use crate::presence::UserId;

pub const SETTINGS: &str = "/v1/presence/settings";
pub const USER_SETTINGS: &str = "/v1/users/{userId}/presence-settings";
pub const FRIENDSHIPS: &str = "/v1/friendships";
pub const USER_FRIENDS: &str = "/v1/users/{userId}/friends";

/// `visibility=friends&invisible=true&invisibleUntil=2030-01-31T18:00:00Z`: each field
/// optional, an empty value the same as a field left out.
impl FromBody<'_> for SettingsPatch {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_html_form::from_bytes(bytes).map_err(bad_request)
    }
}

/// `add=1,2&add=1,3&remove=4,5`: one field per pair, its two ids separated by a comma;
/// `add[]` and `add[0]` also name the list. A value that is not two texts around one comma
/// is 400 code 0 (as a JSON pair that is not an array of two is); a text that is not an id
/// is refused by the check, code 1.
impl FromBody<'_> for FriendshipsBody {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        let fields: Vec<(String, String)> =
            serde_html_form::from_bytes(bytes).map_err(bad_request)?;
        let mut body = Self::default();
        for (key, value) in &fields {
            let list = if is_list_key(key, "add") {
                &mut body.add
            } else if is_list_key(key, "remove") {
                &mut body.remove
            } else {
                continue;
            };
            let (first, second) = value
                .split_once(',')
                .filter(|(_, second)| !second.contains(','))
                .ok_or_else(|| {
                    ApiError::BadRequest("a pair is two user ids separated by a comma".into())
                })?;
            list.push([UserId::parse(first), UserId::parse(second)]);
        }
        Ok(body)
    }
}

/// `userIds=1&userIds=2` (`userIds[]`, `userIds[0]` too); empty values name no id, so that
/// `userIds=` alone is the empty list, as a game server's `players=` is. Without any
/// `userIds` field the list is missing (code 0).
impl FromBody<'_> for FriendListBody {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        let fields: Vec<(String, String)> =
            serde_html_form::from_bytes(bytes).map_err(bad_request)?;
        let mut body = Self::default();
        for (key, value) in &fields {
            if is_list_key(key, "userIds") {
                let ids = body.user_ids.get_or_insert_with(Vec::new);
                if !value.is_empty() {
                    ids.push(UserId::parse(value));
                }
            }
        }
        Ok(body)
    }
}

/// The path's user id: a positive int64 in decimal, else 400 code 1 (an id that is not
/// one, as in every body).
fn path_user(text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).ok_or(ApiError::InvalidUserId)
}

fn json_answer(value: &impl Serialize) -> Result<HttpResponse, ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(bytes))
}

/// `{"skipped":[[1,3]]}`: the pairs not added because a side was full.
#[derive(Serialize)]
struct SkippedAnswer<'a> {
    skipped: &'a [FriendPair],
}

/// `{"userIds":[...]}`, ascending.
#[derive(Serialize)]
struct FriendsAnswer {
    #[serde(rename = "userIds")]
    user_ids: Vec<u64>,
}

/// Checks `body` against now and applies it to `user`'s settings; the new settings.
async fn change(state: &AppState, user: UserId, body: &Body) -> Result<HttpResponse, ApiError> {
    let patch: SettingsPatch = body.decode()?;
    let checked = patch.check(state.presence.wall_now().await)?;
    let (settings, now) = state.presence.change_settings(user, &checked).await?;
    json_answer(&settings.view(now))
}

/// `GET /v1/presence/settings`: the caller's own settings.
#[utoipa::path(
    get,
    path = "/v1/presence/settings",
    description = "The caller's own privacy settings. An invisibility whose invisibleUntil has \
        passed is shown as ended.",
    responses(
        (status = 200, description = "OK", content((PresenceSettings = "application/json"), (PresenceSettings = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no valid credential, or an x-api-key that matches no configured key)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 429, description = "0: TooManyRequests (the address's read limit, rate_limit.lookup_*)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn own_settings(
    state: web::Data<AppState>,
    user: SignedIn,
) -> Result<HttpResponse, ApiError> {
    let (settings, now) = state.presence.settings(user.0).await?;
    json_answer(&settings.view(now))
}

/// `PATCH /v1/presence/settings`: changes the caller's own settings.
#[utoipa::path(
    patch,
    path = "/v1/presence/settings",
    description = "Changes the caller's own privacy settings: the fields sent, the others \
        kept. `invisible: true` without `invisibleUntil` lasts until turned off (replacing \
        an earlier end); `invisibleUntil` is accepted only with `invisible: true` in the \
        same body and must be later than now. Nothing changes when the body is refused. \
        Answers the new settings.",
    request_body(
        description = "The settings to change",
        content(
            (PresenceSettingsChange = "application/json"),
            (PresenceSettingsChange = "text/json"),
            (PresenceSettingsChange = "application/x-www-form-urlencoded"),
        )
    ),
    params(
        ("x-csrf-token" = Option<String>, Header,
            description = "Required with a cookie credential: the token from a 403's x-csrf-token header"),
    ),
    responses(
        (status = 200, description = "OK: the new settings", content((PresenceSettings = "application/json"), (PresenceSettings = "text/json"))),
        (status = 400, description = "0: BadRequest (unknown visibility, invisibleUntil not a later RFC 3339 time or without invisible: true, a field of the wrong type)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no valid credential, or an x-api-key that matches no configured key)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Token Validation Failed", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("x-csrf-token" = String, description = "The CSRF token to repeat the call with"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 429, description = "0: TooManyRequests (the user's bucket, shared with heartbeats)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn change_own_settings(
    state: web::Data<AppState>,
    user: WritingUser,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    change(&state, user.0, &body).await
}

/// `PUT /v1/users/{userId}/presence-settings`: changes any user's settings.
#[utoipa::path(
    put,
    path = "/v1/users/{userId}/presence-settings",
    description = "Changes a user's privacy settings, as PATCH /v1/presence/settings does for \
        the caller's own: the same body, rules and answer.",
    params(("userId" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "The user (a positive int64)")),
    request_body(
        description = "The settings to change",
        content(
            (PresenceSettingsChange = "application/json"),
            (PresenceSettingsChange = "text/json"),
            (PresenceSettingsChange = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK: the new settings", content((PresenceSettings = "application/json"), (PresenceSettings = "text/json"))),
        (status = 400, description = "0: BadRequest (as PATCH /v1/presence/settings); 1: Invalid user id. (userId)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no x-api-key, or an unknown one)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Forbidden (the key lacks the privacy scope)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn change_settings(
    state: web::Data<AppState>,
    _caller: PrivacyCaller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let user = path_user(&path)?;
    change(&state, user, &body).await
}

/// `POST /v1/friendships`: adds and removes friendship pairs.
#[utoipa::path(
    post,
    path = "/v1/friendships",
    description = "Removes, then adds, friendships (symmetric: [1, 2] and [2, 1] are one). At \
        most 1000 pairs per call, adds and removes together. A user holds at most \
        privacy.max_friends friends: pairs that would take a side over it are not added and \
        are listed in `skipped`. Nothing is applied when the request is refused.",
    request_body(
        description = "Pairs to add and to remove",
        content(
            (FriendshipsChange = "application/json"),
            (FriendshipsChange = "text/json"),
            (FriendshipsChange = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK", content((Skipped = "application/json"), (Skipped = "text/json"))),
        (status = 400, description = "0: BadRequest (a pair that is not two ids); 1: Invalid user id. (a bad id, or a user paired with itself); 2: Too many User Ids being sent in the request. (over 1000 pairs)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no x-api-key, or an unknown one)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Forbidden (the key lacks the privacy scope)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn friendships(
    state: web::Data<AppState>,
    _caller: PrivacyCaller,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let body: FriendshipsBody = body.decode()?;
    let changes = body.check()?;
    let skipped = state.presence.change_friendships(&changes).await?;
    json_answer(&SkippedAnswer { skipped: &skipped })
}

/// `PUT /v1/users/{userId}/friends`: replaces a user's friend list.
#[utoipa::path(
    put,
    path = "/v1/users/{userId}/friends",
    description = "Makes `userIds` the user's whole friend list (`[]`: none); both sides of \
        every pair change. Ids named twice count once. Pairs that would take the other side \
        over privacy.max_friends friends are not added and are listed in `skipped`. Nothing \
        is applied when the request is refused.",
    params(("userId" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "The user (a positive int64)")),
    request_body(
        description = "The user's friends",
        content(
            (FriendListRequest = "application/json"),
            (FriendListRequest = "text/json"),
            (FriendListRequest = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 200, description = "OK", content((Skipped = "application/json"), (Skipped = "text/json"))),
        (status = 400, description = "0: BadRequest (userIds missing); 1: Invalid user id. (userId, a bad id, or the user itself in its list); 2: Too many User Ids being sent in the request. (over privacy.max_friends ids)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no x-api-key, or an unknown one)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Forbidden (the key lacks the privacy scope)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 408, description = "0: RequestTimeout", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 413, description = "0: PayloadTooLarge", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 415, description = "0: UnsupportedMediaType", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn replace_friends(
    state: web::Data<AppState>,
    _caller: PrivacyCaller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let owner = path_user(&path)?;
    let body: FriendListBody = body.decode()?;
    let list = body.check(owner, state.settings.privacy.max_friends)?;
    let skipped = state.presence.replace_friends(owner, &list).await?;
    json_answer(&SkippedAnswer { skipped: &skipped })
}

/// `GET /v1/users/{userId}/friends`: a user's friends.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/friends",
    description = "The user's friends, ascending (`[]` for a user without any).",
    params(("userId" = i64, Path, minimum = 1, maximum = 9223372036854775807_i64, description = "The user (a positive int64)")),
    responses(
        (status = 200, description = "OK", content((FriendIds = "application/json"), (FriendIds = "text/json"))),
        (status = 400, description = "1: Invalid user id. (userId)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 401, description = "0: Authorization has been denied for this request. (no x-api-key, or an unknown one)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 403, description = "0: Forbidden (the key lacks the privacy scope)", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 500, description = "0: InternalServerError", content((ErrorBody = "application/json"), (ErrorBody = "text/json"))),
        (status = 503, description = "0: ServiceUnavailable (the storage backend cannot be reached in time)", content((ErrorBody = "application/json"), (ErrorBody = "text/json")),
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("api_key" = []))
)]
pub async fn friends(
    state: web::Data<AppState>,
    _caller: PrivacyCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user(&path)?;
    let ids = state.presence.friends(user).await?;
    json_answer(&FriendsAnswer {
        user_ids: ids.into_iter().map(UserId::get).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::privacy::PrivacyError;

    fn id(n: u64) -> Option<UserId> {
        UserId::new(n)
    }

    #[test]
    fn a_settings_form_reads_like_its_json_and_empty_values_are_absent() {
        let form = SettingsPatch::from_form(
            b"visibility=friends&invisible=true&invisibleUntil=2030-01-31T18%3A00%3A00Z",
        )
        .unwrap();
        let json = SettingsPatch::from_json(
            br#"{"visibility":"friends","invisible":true,"invisibleUntil":"2030-01-31T18:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(form, json);
        let empty = SettingsPatch::from_form(b"visibility=&invisible=&invisibleUntil=").unwrap();
        assert_eq!(empty, SettingsPatch::default());
        assert!(SettingsPatch::from_form(b"invisible=yes").is_err());
        assert!(SettingsPatch::from_json(br#"{"invisible":"true"}"#).is_err());
    }

    #[test]
    fn a_friendships_form_is_one_field_per_pair() {
        let body = FriendshipsBody::from_form(b"add=1,2&add[]=1,3&remove[0]=4,5&other=x").unwrap();
        assert_eq!(body.add, vec![[id(1), id(2)], [id(1), id(3)]]);
        assert_eq!(body.remove, vec![[id(4), id(5)]]);
        // Bad ids reach the check, which refuses them with code 1.
        let body = FriendshipsBody::from_form(b"add=1,x&add=0,2&add=3,").unwrap();
        assert_eq!(body.add, vec![[id(1), None], [None, id(2)], [id(3), None]]);
        assert_eq!(body.check(), Err(PrivacyError::InvalidUserId));
        // A value that is not a pair is refused at once, code 0.
        for bad in [&b"add=1"[..], b"add=1,2,3", b"remove=", b"add=12"] {
            let e = FriendshipsBody::from_form(bad).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        }
    }

    #[test]
    fn a_friend_list_form_may_be_empty_but_not_missing() {
        let body = FriendListBody::from_form(b"userIds=3&userIds[]=2&userIds[5]=x").unwrap();
        assert_eq!(body.user_ids, Some(vec![id(3), id(2), None]));
        let empty = FriendListBody::from_form(b"userIds=").unwrap();
        assert_eq!(empty.user_ids, Some(vec![]));
        let missing = FriendListBody::from_form(b"other=1").unwrap();
        assert_eq!(missing.user_ids, None);
        assert_eq!(
            missing.check(id(1).unwrap(), 10),
            Err(PrivacyError::MissingUserIds)
        );
    }

    #[test]
    fn a_path_id_is_a_positive_int64_or_code_1() {
        assert_eq!(path_user("42").unwrap(), id(42).unwrap());
        assert_eq!(path_user("0042").unwrap(), id(42).unwrap());
        for bad in ["0", "-1", "+1", "x", "", "9223372036854775808", "1.0", " 1"] {
            assert!(
                matches!(path_user(bad), Err(ApiError::InvalidUserId)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_answers_have_the_contracts_shapes() {
        let pair = FriendPair::new(id(1).unwrap(), id(3).unwrap()).unwrap();
        let skipped = serde_json::to_string(&SkippedAnswer { skipped: &[pair] }).unwrap();
        assert_eq!(skipped, r#"{"skipped":[[1,3]]}"#);
        let none = serde_json::to_string(&SkippedAnswer { skipped: &[] }).unwrap();
        assert_eq!(none, r#"{"skipped":[]}"#);
        let friends = serde_json::to_string(&FriendsAnswer {
            user_ids: vec![2, 9],
        })
        .unwrap();
        assert_eq!(friends, r#"{"userIds":[2,9]}"#);
    }
}
