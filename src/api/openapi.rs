//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` attributes and the request types' derives, then completed with what
//! only the configuration knows (the id limit, the presence type format, whether lookups
//! need a credential).

use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config::{PresenceTypeFormat, Settings};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Presence API",
        version = "v1",
        description = "Who is online, and where: heartbeats in, presence of batches of users out."
    ),
    paths(
        super::routes::register_app_presence,
        super::routes::users,
        super::game_servers::report,
        super::game_servers::players,
        super::game_servers::end,
        super::privacy::own_settings,
        super::privacy::change_own_settings,
        super::privacy::change_settings,
        super::privacy::friendships,
        super::privacy::replace_friends,
        super::privacy::friends,
        super::ops::health,
        super::ops::ready,
        super::ops::metrics,
        super::ops::openapi,
    ),
    components(schemas(
        UserPresencesResponse,
        UserPresence,
        ErrorBody,
        ErrorItem,
        Empty,
        Status,
        super::game_servers::GameServerReport,
        super::game_servers::PlayersChange,
        PresenceSettings,
        PresenceSettingsChange,
        Visibility,
        FriendshipsChange,
        FriendListRequest,
        Skipped,
        FriendIds
    )),
    modifiers(&Credentials)
)]
struct ApiDoc;

/// The two ways to send a user's credential, and the service key of trusted callers.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                super::extract::SESSION_COOKIE,
            ))),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "A service key (auth.service_keys) with the route's scope",
            ))),
        );
    }
}

/// `{"userPresences":[...]}` as `/v1/presence/users` answers it.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(description = "User Presences Response model")]
pub struct UserPresencesResponse {
    user_presences: Vec<UserPresence>,
}

/// One user's presence: every key is always present, `null` where it does not apply.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserPresence {
    /// `Offline`, `Online`, `InGame`, `InStudio`, `Invisible`, or 0 to 4 (`api.presence_type`).
    #[schema(value_type = String)]
    user_presence_type: Value,
    /// The user's last location; `""` for a user never seen.
    last_location: String,
    #[schema(required)]
    place_id: Option<i64>,
    #[schema(required)]
    root_place_id: Option<i64>,
    #[schema(required)]
    universe_id: Option<i64>,
    #[schema(required)]
    game_id: Option<uuid::Uuid>,
    #[schema(minimum = 1)]
    user_id: i64,
    /// RFC 3339, UTC, milliseconds; `0001-01-01T00:00:00.000Z` for a user never seen.
    #[schema(format = DateTime)]
    last_online: String,
}

/// Every error: `{"errors":[{"code":N,"message":"..."}]}`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    #[schema(min_items = 1)]
    errors: Vec<ErrorItem>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorItem {
    code: i32,
    message: String,
}

/// `{}`: a heartbeat's answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A user's privacy settings, as `GET` and `PATCH /v1/presence/settings` answer them.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(description = "A user's privacy settings")]
pub struct PresenceSettings {
    visibility: Visibility,
    /// Whether the user appears Offline to everyone else now.
    invisible: bool,
    /// When the invisibility ends by itself (RFC 3339, UTC, milliseconds); `null` when the
    /// user is not invisible, or is until turned off.
    #[schema(required, format = DateTime)]
    invisible_until: Option<String>,
}

/// Who may see a user.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(
    description = "Who may see the user: everyone, signed-in friends only, or nobody \
    (the user itself and read keys always do)"
)]
pub enum Visibility {
    Everyone,
    Friends,
    Nobody,
}

/// The body of `PATCH /v1/presence/settings` and `PUT /v1/users/{userId}/presence-settings`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "The settings to change; every field is optional, absent or null keeps it")]
pub struct PresenceSettingsChange {
    visibility: Option<Visibility>,
    /// `true`: invisible from now, until `invisibleUntil` or, without it, until turned off
    /// (replacing an earlier end); `false`: visible again.
    invisible: Option<bool>,
    /// When the invisibility turned on in the same body ends (RFC 3339); accepted only
    /// with `invisible: true`, and must be later than now.
    #[schema(format = DateTime)]
    invisible_until: Option<String>,
}

/// The body of `POST /v1/friendships`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[schema(description = "Friendship pairs to remove, then to add: at most 1000 pairs in all")]
pub struct FriendshipsChange {
    #[serde(default)]
    #[schema(schema_with = add_pairs_schema)]
    add: Option<Value>,
    #[serde(default)]
    #[schema(schema_with = remove_pairs_schema)]
    remove: Option<Value>,
}

/// The body of `PUT /v1/users/{userId}/friends`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[schema(description = "A user's whole friend list")]
pub struct FriendListRequest {
    #[serde(rename = "userIds")]
    #[schema(schema_with = friend_ids_schema, required)]
    user_ids: Value,
}

/// `{"skipped":[[1,3]]}`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "The pairs not added because a side would hold more than privacy.max_friends friends"
)]
pub struct Skipped {
    #[schema(schema_with = skipped_schema)]
    skipped: Vec<[u64; 2]>,
}

/// `{"userIds":[...]}`, as `GET /v1/users/{userId}/friends` answers.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A user's friends")]
pub struct FriendIds {
    #[serde(rename = "userIds")]
    #[schema(schema_with = friend_ids_answer_schema)]
    user_ids: Vec<u64>,
}

/// `{"status":"ok"}` or `{"status":"ready"}`.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Status {
    status: String,
}

/// The schema of `userIds`: positive int64s, as JSON numbers or decimal strings.
pub fn user_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(
        &[Type::Array, Type::Null],
        "list of userIds to get presence for",
    )
}

/// A players change's `joined`: absent or `null` is none.
pub fn joined_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(
        &[Type::Array, Type::Null],
        "players who joined since the last report",
    )
}

/// A players change's `left`: absent or `null` is none.
pub fn left_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(
        &[Type::Array, Type::Null],
        "players who left since the last report",
    )
}

/// A game server's `players`: required, never `null` (`[]` for an empty server).
pub fn player_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(&[Type::Array], "every player in the server now")
}

/// A friend list's `userIds`: required, never `null`; its bound is set by [`document`].
pub fn friend_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(&[Type::Array], "the user's whole friend list; [] for none")
}

/// A friendships change's `add`: absent or `null` is none.
pub fn add_pairs_schema() -> impl Into<RefOr<Schema>> {
    pairs_schema("friendships to make, after the removals")
}

/// A friendships change's `remove`: absent or `null` is none.
pub fn remove_pairs_schema() -> impl Into<RefOr<Schema>> {
    pairs_schema("friendships to end, first")
}

/// A list of friendship pairs, each an array of two ids as [`ids_schema`] reads them.
fn pairs_schema(description: &str) -> ArrayBuilder {
    let pair = ArrayBuilder::new()
        .items(id_item())
        .min_items(Some(2))
        .max_items(Some(2));
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(pair)
        .max_items(Some(crate::presence::privacy::MAX_PAIRS_PER_CALL))
        .description(Some(description))
}

/// An answer's `skipped`: pairs of ids, as given.
pub fn skipped_schema() -> impl Into<RefOr<Schema>> {
    let pair = ArrayBuilder::new()
        .items(positive_integer())
        .min_items(Some(2))
        .max_items(Some(2));
    ArrayBuilder::new()
        .items(pair)
        .description(Some("pairs not added, as they were given"))
}

/// An answer's `userIds`: ids, ascending.
pub fn friend_ids_answer_schema() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(positive_integer())
        .description(Some("the user's friends, ascending"))
}

/// A positive int64 as a JSON number.
fn positive_integer() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(i64::MAX))
}

/// A user id as a body may send it: a positive int64 as a number or a decimal string.
fn id_item() -> OneOfBuilder {
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(positive_int64_pattern()));
    OneOfBuilder::new().item(positive_integer()).item(text)
}

/// An array of user ids, each a positive int64 as a number or a decimal string.
fn ids_schema(types: &[Type], description: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter(types.iter().cloned()))
        .items(id_item())
        .description(Some(description))
}

/// A regular expression matching exactly the decimal strings of `1..=i64::MAX`, leading
/// zeros allowed, as `UserId::parse` reads them.
pub fn positive_int64_pattern() -> String {
    format!("^0*({})$", positive_int64_digits())
}

/// The text of an int64 in a form, as Rust's `i64` parser reads it (what the server uses
/// for forms): an optional sign, then decimal digits, leading zeros allowed, in range.
fn int64_text_pattern() -> String {
    let positive = positive_int64_digits();
    format!("^(\\+?0*(0|{positive})|-0*(0|{positive}|9223372036854775808))$")
}

/// [`int64_text_pattern`] for the values `1..=i64::MAX`.
fn positive_int64_text_pattern() -> String {
    format!("^\\+?0*({})$", positive_int64_digits())
}

/// An alternation matching exactly the decimal strings of `1..=i64::MAX` without leading
/// zeros.
fn positive_int64_digits() -> String {
    const MAX: &str = "9223372036854775807";
    let mut alternatives = vec![format!("[1-9][0-9]{{0,{}}}", MAX.len() - 2)];
    // 19-digit numbers: equal to MAX on a prefix, then smaller at one digit.
    for (i, digit) in MAX.bytes().enumerate() {
        let low = if i == 0 { b'1' } else { b'0' };
        if digit > low {
            let rest = MAX.len() - i - 1;
            alternatives.push(format!(
                "{}[{}-{}][0-9]{{{rest}}}",
                &MAX[..i],
                low as char,
                (digit - 1) as char
            ));
        }
    }
    alternatives.push(MAX.to_owned());
    alternatives.join("|")
}

/// A form is fields of text, so its schema says what text the server reads in each field:
/// an integer is its decimal text ([`int64_text_pattern`]; JSON Schema's integers also
/// include `1.0` and `1e3`, which JSON bodies accept but a form's parser refuses), a
/// boolean `true` or `false`. A list is one field per item, each an id's text, and a single
/// field is a list of one: the list's schema or its item's. With `empty_is_absent` (forms
/// read by `serde_html_form`, where every field is optional), an empty value of a scalar
/// field is that field left out.
fn form_fields(form: &mut Value, empty_is_absent: bool) {
    let Some(properties) = form["properties"].as_object_mut() else {
        return;
    };
    for field in properties.values_mut() {
        let Some(map) = field.as_object_mut() else {
            continue;
        };
        match map.get("type").and_then(Value::as_str) {
            Some("integer") => {
                let positive = map
                    .get("minimum")
                    .and_then(Value::as_i64)
                    .is_some_and(|minimum| minimum >= 1);
                for key in ["format", "minimum", "maximum"] {
                    map.remove(key);
                }
                let pattern = if positive {
                    positive_int64_text_pattern()
                } else {
                    int64_text_pattern()
                };
                let pattern = if empty_is_absent {
                    optional_pattern(&pattern)
                } else {
                    pattern
                };
                map.insert("type".into(), json!("string"));
                map.insert("pattern".into(), json!(pattern));
            }
            Some("boolean") => {
                let mut texts = vec!["true", "false"];
                if empty_is_absent {
                    texts.push("");
                }
                map.insert("type".into(), json!("string"));
                map.insert("enum".into(), json!(texts));
            }
            Some("array") => {
                if let Some(alternatives) = map
                    .get_mut("items")
                    .and_then(|items| items.get_mut("oneOf"))
                    .and_then(Value::as_array_mut)
                {
                    alternatives.retain(|a| a["type"] != "integer");
                }
                let description = map.remove("description");
                let item = map.get("items").cloned().unwrap_or_else(|| json!({}));
                let list = Value::Object(std::mem::take(map));
                let mut either = json!({ "anyOf": [list, item] });
                if let Some(description) = description {
                    either["description"] = description;
                }
                *field = either;
            }
            _ => {}
        }
    }
}

/// `pattern` (anchored at both ends) or the empty text.
fn optional_pattern(pattern: &str) -> String {
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    format!("^({inner})?$")
}

/// Removes `null` from every `type` list below `schema`.
fn strip_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    map.insert("type".into(), only);
                }
            }
            map.values_mut().for_each(strip_null);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// A list field of a form read as a game server's `players` is: at least one field, where
/// an empty value stands for no id (so `name=` alone is the empty list), with `description`.
fn empty_value_is_no_id(field: &mut Value, description: &str) {
    let no_id = json!({ "const": "", "description": "no id (an empty form value)" });
    field["anyOf"][0]["minItems"] = json!(1);
    for item in ["/anyOf/0/items/oneOf", "/anyOf/1/oneOf"] {
        if let Some(alternatives) = field.pointer_mut(item).and_then(Value::as_array_mut) {
            alternatives.push(no_id.clone());
        }
    }
    field["description"] = json!(description);
}

/// What the privacy routes' schemas take from the configuration, and their forms.
///
/// - A friend list holds at most `privacy.max_friends` ids (more is 400 code 2); its form
///   is one `userIds` field per id, `userIds=` alone the empty list.
/// - The settings form is read by `serde_html_form`: each field is text, an empty value the
///   field left out.
/// - A friendships form is one `add` or `remove` field per pair, its two ids separated by
///   a comma.
fn privacy_schemas(doc: &mut Value, settings: &Settings) {
    let max_friends = settings.privacy.max_friends;
    let schemas = &mut doc["components"]["schemas"];
    schemas["FriendListRequest"]["properties"]["userIds"]["maxItems"] = json!(max_friends);
    empty_value_is_no_id(
        &mut schemas["FriendListForm"]["properties"]["userIds"],
        &format!(
            "the user's whole friend list, one field per id (at most {max_friends} non-empty \
             ones); `userIds=` alone is no friends"
        ),
    );
    schemas["PresenceSettingsForm"] = json!({
        "type": "object",
        "description": "The settings to change; every field is optional, an empty value keeps it",
        "properties": {
            "visibility": {
                "type": "string",
                "enum": ["everyone", "friends", "nobody", ""],
                "description": "Who may see the user"
            },
            "invisible": {
                "type": "string",
                "enum": ["true", "false", ""],
                "description": "true: invisible from now; false: visible again"
            },
            "invisibleUntil": {
                "anyOf": [{ "type": "string", "format": "date-time" }, { "const": "" }],
                "description": "When the invisibility turned on in the same body ends \
                    (RFC 3339); only with invisible=true, later than now"
            }
        }
    });
    let digits = positive_int64_digits();
    let pair = json!({
        "type": "string",
        "pattern": format!("^0*({digits}),0*({digits})$"),
        "description": "two user ids separated by a comma"
    });
    let pairs = |description: &str| {
        json!({
            "anyOf": [
                { "type": "array", "items": pair, "maxItems": crate::presence::privacy::MAX_PAIRS_PER_CALL },
                pair
            ],
            "description": description
        })
    };
    schemas["FriendshipsChangeForm"] = json!({
        "type": "object",
        "description": "Friendship pairs to remove, then to add, one field per pair: at most \
            1000 pairs in all",
        "properties": {
            "add": pairs("friendships to make, after the removals"),
            "remove": pairs("friendships to end, first"),
        }
    });
    for (path, method, form) in [
        ("/v1/presence/settings", "patch", "PresenceSettingsForm"),
        (
            "/v1/users/{userId}/presence-settings",
            "put",
            "PresenceSettingsForm",
        ),
        ("/v1/friendships", "post", "FriendshipsChangeForm"),
    ] {
        let body = &mut doc["paths"][path][method]["requestBody"];
        // An empty body counts as `{}`: nothing to change.
        body["required"] = json!(false);
        body["content"]["application/x-www-form-urlencoded"]["schema"] =
            json!({ "$ref": format!("#/components/schemas/{form}") });
    }
}

/// The document for this configuration, as JSON.
pub fn document(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["LookupRequest"]["properties"]["userIds"]["maxItems"] =
        json!(settings.api.max_user_ids);
    // JSON Schema counts characters as the server does (Unicode scalar values).
    schemas["RegisterAppPresenceRequest"]["properties"]["location"]["maxLength"] =
        json!(settings.api.max_location_length);
    schemas["UserPresence"]["properties"]["userPresenceType"] = match settings.api.presence_type {
        PresenceTypeFormat::String => json!({
            "type": "string",
            "enum": ["Offline", "Online", "InGame", "InStudio", "Invisible"],
            "description": "User presence Type; Invisible only in a user's own entry, while \
                it is invisible and present"
        }),
        PresenceTypeFormat::Integer => json!({
            "type": "integer",
            "enum": [0, 1, 2, 3, 4],
            "description": "User presence Type: 0 Offline, 1 Online, 2 InGame, 3 InStudio, \
                4 Invisible (only in a user's own entry, while it is invisible and present)"
        }),
    };
    // Forms cannot say `null` and carry only text: their schemas are the JSON ones without
    // `null`, with each field's text (`form_fields`). The heartbeat's form is read by
    // `serde_html_form`, where an empty value is a field left out; the game servers' forms
    // are read field by field, where an empty `placeId` or `universeId` is refused.
    for (json_schema, form_schema, path, method, empty_allowed, empty_is_absent) in [
        (
            "LookupRequest",
            "LookupForm",
            "/v1/presence/users",
            "post",
            true,
            false,
        ),
        (
            "RegisterAppPresenceRequest",
            "RegisterAppPresenceForm",
            "/v1/presence/register-app-presence",
            "post",
            true,
            true,
        ),
        (
            "PlayersChange",
            "PlayersChangeForm",
            "/v1/game-servers/{gameId}/players",
            "post",
            true,
            false,
        ),
        (
            "GameServerReport",
            "GameServerReportForm",
            "/v1/game-servers/{gameId}",
            "put",
            false,
            false,
        ),
        (
            "FriendListRequest",
            "FriendListForm",
            "/v1/users/{userId}/friends",
            "put",
            false,
            false,
        ),
    ] {
        let mut form = doc["components"]["schemas"][json_schema].clone();
        strip_null(&mut form);
        form_fields(&mut form, empty_is_absent);
        doc["components"]["schemas"][form_schema] = form;
        let body = &mut doc["paths"][path][method]["requestBody"];
        // An empty body counts as `{}` (a report without its players is refused).
        body["required"] = json!(!empty_allowed);
        body["content"]["application/x-www-form-urlencoded"]["schema"] =
            json!({ "$ref": format!("#/components/schemas/{form_schema}") });
    }
    // A report's `players`: more than `api.max_players_per_server` entries, counted before
    // de-duplication, is 400 code 2. Set after the form's copy was made: a form counts its
    // players differently (below).
    doc["components"]["schemas"]["GameServerReport"]["properties"]["players"]["maxItems"] =
        json!(settings.api.max_players_per_server);
    // A form writes `players` as one field per player, and the server skips empty values so
    // that `players=` alone reports an empty server: the list has at least one field (a form
    // without any is a report without its players), an empty value among them stands for no
    // player. Only the other values count towards the bound, so the form states it in words.
    empty_value_is_no_id(
        &mut doc["components"]["schemas"]["GameServerReportForm"]["properties"]["players"],
        &format!(
            "every player in the server now, one field each (at most {} non-empty ones); \
             `players=` alone is an empty server",
            settings.api.max_players_per_server
        ),
    );
    privacy_schemas(&mut doc, settings);
    if settings.api.require_auth_for_lookup {
        doc["paths"]["/v1/presence/users"]["post"]["security"] =
            json!([{"bearer": []}, {"cookie": []}]);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        // The pattern is a plain alternation of anchored digit classes; test it through a
        // tiny matcher rather than a regex crate: expand `[a-b]` and `{n}`/`{0,n}`.
        let regex = pattern.trim_start_matches("^0*(").trim_end_matches(")$");
        let text = text.trim_start_matches('0');
        regex.split('|').any(|alt| matches_alternative(alt, text))
    }

    fn matches_alternative(alt: &str, text: &str) -> bool {
        let mut classes: Vec<(u8, u8, usize, usize)> = Vec::new();
        let bytes = alt.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let (lo, hi) = if bytes[i] == b'[' {
                let c = (bytes[i + 1], bytes[i + 3]);
                i += 5;
                c
            } else {
                let c = (bytes[i], bytes[i]);
                i += 1;
                c
            };
            let (mut min, mut max) = (1, 1);
            if i < bytes.len() && bytes[i] == b'{' {
                let end = alt[i..].find('}').unwrap() + i;
                let spec = &alt[i + 1..end];
                (min, max) = match spec.split_once(',') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (spec.parse().unwrap(), spec.parse().unwrap()),
                };
                i = end + 1;
            }
            classes.push((lo, hi, min, max));
        }
        fn go(classes: &[(u8, u8, usize, usize)], text: &[u8]) -> bool {
            let Some(&(lo, hi, min, max)) = classes.first() else {
                return text.is_empty();
            };
            (min..=max).any(|n| {
                n <= text.len()
                    && text[..n].iter().all(|&b| (lo..=hi).contains(&b))
                    && go(&classes[1..], &text[n..])
            })
        }
        go(&classes, text.as_bytes())
    }

    #[test]
    fn the_id_pattern_accepts_exactly_the_positive_int64s() {
        let pattern = positive_int64_pattern();
        for good in [
            "1",
            "7",
            "0042",
            "999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "9223372036854775799",
            "8999999999999999999",
            "9223372036854775706",
        ] {
            assert!(matches(&pattern, good), "{good} should match {pattern}");
        }
        for bad in [
            "0",
            "000",
            "",
            "9223372036854775808",
            "9223372036854775810",
            "9300000000000000000",
            "10000000000000000000",
            "92233720368547758070",
        ] {
            assert!(!matches(&pattern, bad), "{bad} should not match {pattern}");
        }
    }

    /// A backtracking matcher for the regular expressions written here: groups with `|`,
    /// `[a-b]` classes, `\` escapes, `?`, `*`, `{n}` and `{m,n}`, anchored at both ends.
    enum Node {
        Byte(u8, u8),
        Group(Vec<Vec<Node>>),
        Repeat(Box<Node>, usize, usize),
    }

    fn parse_alternatives(pattern: &[u8], i: &mut usize) -> Vec<Vec<Node>> {
        let mut alternatives = vec![Vec::new()];
        while *i < pattern.len() && pattern[*i] != b')' {
            let c = pattern[*i];
            *i += 1;
            let atom = match c {
                b'|' => {
                    alternatives.push(Vec::new());
                    continue;
                }
                b'^' | b'$' => continue,
                b'(' => {
                    let group = parse_alternatives(pattern, i);
                    *i += 1; // `)`
                    Node::Group(group)
                }
                b'[' => {
                    let class = Node::Byte(pattern[*i], pattern[*i + 2]);
                    *i += 4; // `a-b]`
                    class
                }
                b'\\' => {
                    *i += 1;
                    Node::Byte(pattern[*i - 1], pattern[*i - 1])
                }
                other => Node::Byte(other, other),
            };
            let (min, max) = match pattern.get(*i) {
                Some(b'?') => (0, 1),
                Some(b'*') => (0, usize::MAX),
                Some(b'{') => {
                    let end = *i + pattern[*i..].iter().position(|&b| b == b'}').unwrap();
                    let spec = std::str::from_utf8(&pattern[*i + 1..end]).unwrap();
                    *i = end;
                    match spec.split_once(',') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (spec.parse().unwrap(), spec.parse().unwrap()),
                    }
                }
                _ => (1, 1),
            };
            let node = if (min, max) == (1, 1) {
                atom
            } else {
                *i += 1;
                Node::Repeat(Box::new(atom), min, max)
            };
            alternatives.last_mut().unwrap().push(node);
        }
        alternatives
    }

    fn match_seq(seq: &[Node], text: &[u8], then: &dyn Fn(&[u8]) -> bool) -> bool {
        match seq.split_first() {
            None => then(text),
            Some((node, rest)) => match_node(node, text, &|after| match_seq(rest, after, then)),
        }
    }

    fn match_node(node: &Node, text: &[u8], then: &dyn Fn(&[u8]) -> bool) -> bool {
        match node {
            Node::Byte(lo, hi) => text
                .split_first()
                .is_some_and(|(b, rest)| (lo..=hi).contains(&b) && then(rest)),
            Node::Group(alternatives) => alternatives.iter().any(|alt| match_seq(alt, text, then)),
            Node::Repeat(inner, min, max) => {
                (*min == 0 && then(text))
                    || (*max > 0
                        && match_node(inner, text, &|after| {
                            after.len() < text.len()
                                && match_node(
                                    &Node::Repeat(
                                        Box::new(clone_node(inner)),
                                        min.saturating_sub(1),
                                        max - 1,
                                    ),
                                    after,
                                    then,
                                )
                        }))
            }
        }
    }

    fn clone_node(node: &Node) -> Node {
        match node {
            Node::Byte(lo, hi) => Node::Byte(*lo, *hi),
            Node::Group(alternatives) => Node::Group(
                alternatives
                    .iter()
                    .map(|alt| alt.iter().map(clone_node).collect())
                    .collect(),
            ),
            Node::Repeat(inner, min, max) => Node::Repeat(Box::new(clone_node(inner)), *min, *max),
        }
    }

    fn full_match(pattern: &str, text: &str) -> bool {
        let alternatives = parse_alternatives(pattern.as_bytes(), &mut 0);
        match_node(&Node::Group(alternatives), text.as_bytes(), &|rest| {
            rest.is_empty()
        })
    }

    /// Texts around every edge of the int64 range, with signs, zeros and non-numbers.
    fn int64_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "+",
            "-",
            "0",
            "00",
            "+0",
            "-0",
            "-00",
            "1",
            "+1",
            "-1",
            "0042",
            "+0042",
            "-0042",
            "++1",
            "+-1",
            "1+",
            "1.0",
            "1e3",
            " 1",
            "1 ",
            "a",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "+9223372036854775807",
            "00009223372036854775807",
            "-0009223372036854775808",
            "10000000000000000000",
            "-10000000000000000000",
            "9223372036854775799",
            "9223372036854775706",
            "8999999999999999999",
        ]
        .map(String::from)
        .to_vec();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x >> (x % 64);
            texts.push(n.to_string());
            texts.push(format!("-{n}"));
            texts.push(format!("+{}", n / 3));
        }
        texts
    }

    #[test]
    fn the_form_int64_patterns_match_exactly_what_the_server_parses() {
        let any = int64_text_pattern();
        let any_or_empty = optional_pattern(&any);
        let positive = positive_int64_text_pattern();
        let ids = positive_int64_pattern();
        for text in int64_texts() {
            let parsed = text.parse::<i64>().ok();
            assert_eq!(
                full_match(&any, &text),
                parsed.is_some(),
                "{text:?} in {any}"
            );
            assert_eq!(
                full_match(&any_or_empty, &text),
                parsed.is_some() || text.is_empty(),
                "{text:?} in {any_or_empty}"
            );
            assert_eq!(
                full_match(&positive, &text),
                parsed.is_some_and(|n| n >= 1),
                "{text:?} in {positive}"
            );
            assert_eq!(
                full_match(&ids, &text),
                crate::presence::UserId::parse(&text).is_some(),
                "{text:?} in {ids}"
            );
        }
    }

    #[test]
    fn forms_carry_numbers_as_text_and_a_report_form_its_empty_players() {
        let doc = document(&Settings::default());
        let schemas = &doc["components"]["schemas"];
        for form in [
            "LookupForm",
            "RegisterAppPresenceForm",
            "PlayersChangeForm",
            "GameServerReportForm",
        ] {
            let text = schemas[form].to_string();
            assert!(!text.contains("\"integer\""), "{form}: {text}");
            assert!(!text.contains("\"null\""), "{form}: {text}");
        }
        // A report's form refuses empty numbers; a heartbeat's reads them as left out.
        let report = &schemas["GameServerReportForm"]["properties"];
        assert_eq!(
            report["placeId"]["pattern"],
            json!(positive_int64_text_pattern())
        );
        assert_eq!(report["universeId"]["pattern"], json!(int64_text_pattern()));
        let heartbeat = &schemas["RegisterAppPresenceForm"]["properties"];
        for field in ["placeId", "universeId"] {
            assert_eq!(
                heartbeat[field]["pattern"],
                json!(optional_pattern(&int64_text_pattern())),
                "{field}"
            );
        }
        assert_eq!(
            heartbeat["disconnect"]["enum"],
            json!(["true", "false", ""])
        );
        // A list is one field per item, or a single field; a report's may hold `players=`.
        let players = &schemas["GameServerReportForm"]["properties"]["players"];
        let (list, single) = (&players["anyOf"][0], &players["anyOf"][1]);
        assert_eq!(list["type"], "array");
        assert_eq!(list["minItems"], 1);
        assert!(list.get("maxItems").is_none());
        for items in [&list["items"]["oneOf"], &single["oneOf"]] {
            let items = items.as_array().unwrap();
            assert_eq!(items.len(), 2);
            assert_eq!(items[0]["pattern"], json!(positive_int64_pattern()));
            assert_eq!(items[1]["const"], "");
        }
        let ids = &schemas["LookupForm"]["properties"]["userIds"];
        assert_eq!(ids["anyOf"][0]["maxItems"], 50);
        assert_eq!(
            ids["anyOf"][1]["oneOf"][0]["pattern"],
            json!(positive_int64_pattern())
        );
        // JSON bodies keep numbers, and a report's players their bound.
        let players = &schemas["GameServerReport"]["properties"]["players"];
        assert_eq!(players["maxItems"], 700);
        assert_eq!(players["items"]["oneOf"][0]["type"], "integer");
    }

    #[test]
    fn the_document_lists_every_route_and_the_configured_limits() {
        let mut settings = Settings::default();
        settings.api.max_user_ids = 7;
        settings.api.presence_type = PresenceTypeFormat::Integer;
        let doc = document(&settings);
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/v1/presence/register-app-presence",
            "/v1/presence/users",
            "/v1/presence/settings",
            "/v1/users/{userId}/presence-settings",
            "/v1/friendships",
            "/v1/users/{userId}/friends",
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let ids = &doc["components"]["schemas"]["LookupRequest"]["properties"]["userIds"];
        assert_eq!(ids["maxItems"], 7);
        let location =
            &doc["components"]["schemas"]["RegisterAppPresenceRequest"]["properties"]["location"];
        assert_eq!(location["maxLength"], 100);
        assert_eq!(
            doc["components"]["schemas"]["UserPresence"]["properties"]["userPresenceType"]["type"],
            "integer"
        );
    }

    #[test]
    fn the_privacy_routes_are_documented_with_their_keys_bounds_and_forms() {
        let mut settings = Settings::default();
        settings.privacy.max_friends = 123;
        let doc = document(&settings);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["FriendListRequest"]["properties"]["userIds"]["maxItems"],
            123
        );
        for form in [
            "PresenceSettingsForm",
            "FriendshipsChangeForm",
            "FriendListForm",
        ] {
            let text = schemas[form].to_string();
            assert!(!text.contains("\"integer\""), "{form}: {text}");
            assert!(!text.contains("\"null\""), "{form}: {text}");
        }
        let own = [json!({"bearer": []}), json!({"cookie": []})];
        let key = [json!({"api_key": []})];
        for (path, method, security) in [
            ("/v1/presence/settings", "get", &own[..]),
            ("/v1/presence/settings", "patch", &own[..]),
            ("/v1/users/{userId}/presence-settings", "put", &key[..]),
            ("/v1/friendships", "post", &key[..]),
            ("/v1/users/{userId}/friends", "put", &key[..]),
            ("/v1/users/{userId}/friends", "get", &key[..]),
        ] {
            let operation = &doc["paths"][path][method];
            assert_eq!(
                operation["security"].as_array().unwrap().as_slice(),
                security,
                "{method} {path}"
            );
            if let Some(body) = operation.get("requestBody") {
                let form = &body["content"]["application/x-www-form-urlencoded"]["schema"];
                assert!(form["$ref"].as_str().unwrap().ends_with("Form"), "{path}");
            }
        }
    }

    #[test]
    fn the_privacy_answers_match_their_documented_shapes() {
        use crate::presence::privacy::{Invisibility, Settings as Stored, Visibility as V};
        use crate::presence::time::WallMillis;
        let now = WallMillis(1_800_000_000_000);
        for stored in [
            Stored::default(),
            Stored::new(
                V::Friends,
                Some(Invisibility {
                    until: Some(WallMillis(now.0 + 1)),
                    last_online: None,
                }),
            ),
            Stored::new(
                V::Nobody,
                Some(Invisibility {
                    until: None,
                    last_online: None,
                }),
            ),
        ] {
            let written = serde_json::to_vec(&stored.view(now)).unwrap();
            let parsed: Result<PresenceSettings, _> = serde_json::from_slice(&written);
            assert!(parsed.is_ok(), "{}", String::from_utf8_lossy(&written));
        }
        let default = serde_json::to_string(&Stored::default().view(now)).unwrap();
        assert_eq!(
            default,
            r#"{"visibility":"everyone","invisible":false,"invisibleUntil":null}"#
        );
        let skipped: Skipped = serde_json::from_str(r#"{"skipped":[[1,3]]}"#).unwrap();
        assert_eq!(skipped.skipped, vec![[1, 3]]);
        let ids: FriendIds = serde_json::from_str(r#"{"userIds":[2,9]}"#).unwrap();
        assert_eq!(ids.user_ids, vec![2, 9]);
    }

    #[test]
    fn the_presence_writer_matches_the_documented_shape() {
        use crate::presence::{PresenceView, UserId};
        let views = [PresenceView::never_seen(UserId::new(1).unwrap())];
        let bytes = super::super::json::user_presences(&views, PresenceTypeFormat::String);
        let parsed: UserPresencesResponse = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.user_presences.len(), 1);
        let doc = document(&Settings::default());
        let documented: Vec<&str> = doc["components"]["schemas"]["UserPresence"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let written: Value = serde_json::from_slice(&bytes).unwrap();
        let mut written: Vec<&str> = written["userPresences"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut documented = documented;
        documented.sort_unstable();
        written.sort_unstable();
        assert_eq!(documented, written);
    }
}
