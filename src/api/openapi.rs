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
        super::game_servers::PlayersChange
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
    /// `Offline`, `Online`, `InGame`, `InStudio`, or 0 to 3 (`api.presence_type`).
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

/// A game server's `players`: required, never `null` (`[]` for an empty server).
pub fn player_ids_schema() -> impl Into<RefOr<Schema>> {
    ids_schema(&[Type::Array], "every player in the server now")
}

/// An array of user ids, each a positive int64 as a number or a decimal string.
fn ids_schema(types: &[Type], description: &str) -> ArrayBuilder {
    let number = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(i64::MAX));
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(positive_int64_pattern()));
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter(types.iter().cloned()))
        .items(OneOfBuilder::new().item(number).item(text))
        .description(Some(description))
}

/// A regular expression matching exactly the decimal strings of `1..=i64::MAX`, leading
/// zeros allowed, as `UserId::parse` reads them.
pub fn positive_int64_pattern() -> String {
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
    format!("^0*({})$", alternatives.join("|"))
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
            "enum": ["Offline", "Online", "InGame", "InStudio"],
            "description": "User presence Type"
        }),
        PresenceTypeFormat::Integer => json!({
            "type": "integer",
            "enum": [0, 1, 2, 3],
            "description": "User presence Type: 0 Offline, 1 Online, 2 InGame, 3 InStudio"
        }),
    };
    // Forms cannot say `null`: their schemas are the JSON ones without it.
    for (json_schema, form_schema, path, method, empty_allowed) in [
        (
            "LookupRequest",
            "LookupForm",
            "/v1/presence/users",
            "post",
            true,
        ),
        (
            "RegisterAppPresenceRequest",
            "RegisterAppPresenceForm",
            "/v1/presence/register-app-presence",
            "post",
            true,
        ),
        (
            "PlayersChange",
            "PlayersChangeForm",
            "/v1/game-servers/{gameId}/players",
            "post",
            true,
        ),
        (
            "GameServerReport",
            "GameServerReportForm",
            "/v1/game-servers/{gameId}",
            "put",
            false,
        ),
    ] {
        let mut form = doc["components"]["schemas"][json_schema].clone();
        strip_null(&mut form);
        doc["components"]["schemas"][form_schema] = form;
        let body = &mut doc["paths"][path][method]["requestBody"];
        // An empty body counts as `{}` (a report without its players is refused).
        body["required"] = json!(!empty_allowed);
        body["content"]["application/x-www-form-urlencoded"]["schema"] =
            json!({ "$ref": format!("#/components/schemas/{form_schema}") });
    }
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
