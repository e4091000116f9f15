//! The wire shapes: request bodies as clients send them, and the one serializer of
//! presences (the one place that knows string versus integer presence types).

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::body::FromBody;
use super::error::ApiError;
use crate::config::PresenceTypeFormat;
use crate::presence::{AppReport, PresenceView, UserId};

/// `lastOnline` of a user never seen.
pub const NEVER_SEEN_LAST_ONLINE: &str = "0001-01-01T00:00:00.000Z";

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// The body of `register-app-presence`. Unknown fields are ignored; `null` is absent. The
/// location borrows from the body when it needs no unescaping.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAppPresenceRequest<'a> {
    #[serde(borrow)]
    pub location: Option<Cow<'a, str>>,
    pub place_id: Option<i64>,
    pub disconnect: Option<bool>,
    /// Extension: the game-server instance.
    pub game_id: Option<Uuid>,
    /// Extension: overrides the catalog's universe.
    pub universe_id: Option<i64>,
}

impl<'a> FromBody<'a> for RegisterAppPresenceRequest<'a> {
    fn from_json(bytes: &'a [u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    fn from_form(bytes: &'a [u8]) -> Result<Self, ApiError> {
        serde_html_form::from_bytes(bytes).map_err(bad_request)
    }
}

impl<'a> RegisterAppPresenceRequest<'a> {
    /// The report, borrowing the location text from this request.
    pub fn report(&'a self) -> AppReport<'a> {
        AppReport {
            location: self.location.as_deref(),
            place_id: self.place_id,
            disconnect: self.disconnect.unwrap_or(false),
            game_id: self.game_id,
            universe_id: self.universe_id,
        }
    }
}

/// One element of `userIds` as sent: a valid id, or something that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdItem {
    Valid(UserId),
    Invalid,
}

impl IdItem {
    fn from_text(text: &str) -> Self {
        UserId::parse(text).map_or(Self::Invalid, Self::Valid)
    }
}

impl<'de> Deserialize<'de> for IdItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = IdItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdItem, E> {
                Ok(UserId::new(v).map_or(IdItem::Invalid, IdItem::Valid))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdItem, E> {
                Ok(u64::try_from(v)
                    .ok()
                    .and_then(UserId::new)
                    .map_or(IdItem::Invalid, IdItem::Valid))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IdItem, E> {
                Ok(IdItem::Invalid)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdItem, E> {
                Ok(IdItem::from_text(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IdItem, E> {
                Ok(IdItem::Invalid)
            }
            fn visit_unit<E: de::Error>(self) -> Result<IdItem, E> {
                Ok(IdItem::Invalid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdItem, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IdItem::Invalid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdItem, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IdItem::Invalid)
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// The body of `/v1/presence/users`, before validation. Missing or `null` ids are none.
#[derive(Debug, Default, Deserialize)]
pub struct LookupRequest {
    #[serde(rename = "userIds", default, deserialize_with = "null_as_empty")]
    pub user_ids: Vec<IdItem>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IdItem>, D::Error> {
    Ok(Option::<Vec<IdItem>>::deserialize(d)?.unwrap_or_default())
}

impl FromBody<'_> for LookupRequest {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(bad_request)
    }

    /// `userIds=1&userIds=2`, `userIds[]=1` and `userIds[0]=1` all name the list; other keys
    /// are ignored. Ids keep the order in which they appear.
    fn from_form(bytes: &[u8]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_html_form::from_bytes(bytes).map_err(bad_request)?;
        let user_ids = pairs
            .iter()
            .filter(|(key, _)| is_user_ids_key(key))
            .map(|(_, value)| IdItem::from_text(value))
            .collect();
        Ok(Self { user_ids })
    }
}

fn is_user_ids_key(key: &str) -> bool {
    match key.strip_prefix("userIds") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|index| index.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

impl LookupRequest {
    /// Counts (before de-duplication), validates and de-duplicates, keeping first appearance.
    pub fn into_user_ids(self, max: usize) -> Result<Vec<UserId>, ApiError> {
        if self.user_ids.len() > max {
            return Err(ApiError::TooManyUserIds);
        }
        let mut ids = Vec::with_capacity(self.user_ids.len());
        let mut seen = std::collections::HashSet::with_capacity(self.user_ids.len());
        for item in self.user_ids {
            let IdItem::Valid(id) = item else {
                return Err(ApiError::InvalidUserId);
            };
            if seen.insert(id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// `{"userPresences":[...]}` for the given views, with presence types as configured.
pub fn user_presences(
    views: &[PresenceView],
    format: PresenceTypeFormat,
) -> Result<Vec<u8>, ApiError> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "userPresences")]
        user_presences: Vec<Item<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Item<'a> {
        user_presence_type: TypeRepr,
        last_location: &'a str,
        place_id: Option<i64>,
        root_place_id: Option<i64>,
        universe_id: Option<i64>,
        game_id: Option<Uuid>,
        user_id: u64,
        last_online: LastOnline,
    }
    let body = Body {
        user_presences: views
            .iter()
            .map(|v| Item {
                user_presence_type: TypeRepr(v.kind, format),
                last_location: v.last_location.as_str(),
                place_id: v.place.map(|p| p.place_id),
                root_place_id: v.place.map(|p| p.root_place_id),
                universe_id: v.place.and_then(|p| p.universe_id).map(|u| u.get()),
                game_id: v.game_id,
                user_id: v.user_id.get(),
                last_online: LastOnline(v.last_online.map(|w| w.0)),
            })
            .collect(),
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.into()))
}

struct TypeRepr(crate::presence::PresenceType, PresenceTypeFormat);

impl Serialize for TypeRepr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            PresenceTypeFormat::String => s.serialize_str(self.0.as_str()),
            PresenceTypeFormat::Integer => s.serialize_u8(self.0.as_int()),
        }
    }
}

/// RFC 3339 in UTC with milliseconds and `Z`; the sentinel for a user never seen.
struct LastOnline(Option<i64>);

impl Serialize for LastOnline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.and_then(DateTime::<Utc>::from_timestamp_millis) {
            Some(t) => {
                let mut text = String::with_capacity(24);
                let _ = write!(text, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
                s.serialize_str(&text)
            }
            None => s.serialize_str(NEVER_SEEN_LAST_ONLINE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(json: &str) -> Result<Vec<u64>, ApiError> {
        LookupRequest::from_json(json.as_bytes())?
            .into_user_ids(50)
            .map(|v| v.into_iter().map(UserId::get).collect())
    }

    fn form_ids(form: &str) -> Result<Vec<u64>, ApiError> {
        LookupRequest::from_form(form.as_bytes())?
            .into_user_ids(50)
            .map(|v| v.into_iter().map(UserId::get).collect())
    }

    #[test]
    fn numbers_and_numeric_strings_are_ids_deduplicated_in_first_order() {
        assert_eq!(
            ids(r#"{"userIds":[3,"1",3,2,"1"]}"#).unwrap(),
            vec![3, 1, 2]
        );
        assert_eq!(ids(r#"{"userIds":[]}"#).unwrap(), Vec::<u64>::new());
        assert_eq!(ids(r#"{"userIds":null}"#).unwrap(), Vec::<u64>::new());
        assert_eq!(ids(r#"{"other":1}"#).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn anything_but_a_positive_int64_is_an_invalid_id() {
        for bad in [
            "0",
            "-1",
            "1.5",
            "\"x\"",
            "\"\"",
            "true",
            "null",
            "{}",
            "[1]",
            "9223372036854775808",
            "99999999999999999999999",
            "\"-2\"",
        ] {
            let body = format!(r#"{{"userIds":[1,{bad}]}}"#);
            assert!(matches!(ids(&body), Err(ApiError::InvalidUserId)), "{bad}");
        }
    }

    #[test]
    fn a_list_of_the_wrong_type_or_broken_json_is_a_bad_request() {
        for bad in [
            r#"{"userIds":"1"}"#,
            r#"{"userIds":{}}"#,
            r#"[1,2]"#,
            r#"{"userIds":[1"#,
            "nope",
        ] {
            assert!(matches!(ids(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn too_many_ids_are_counted_before_deduplication() {
        let body = format!(r#"{{"userIds":[{}]}}"#, vec!["1"; 51].join(","));
        assert!(matches!(ids(&body), Err(ApiError::TooManyUserIds)));
        let body = format!(r#"{{"userIds":[{}]}}"#, vec!["1"; 50].join(","));
        assert_eq!(ids(&body).unwrap(), vec![1]);
    }

    #[test]
    fn all_three_form_spellings_name_the_list() {
        assert_eq!(form_ids("userIds=1&userIds=2").unwrap(), vec![1, 2]);
        assert_eq!(form_ids("userIds%5B%5D=1&userIds[]=2").unwrap(), vec![1, 2]);
        assert_eq!(
            form_ids("userIds[0]=5&userIds[1]=4&x=9").unwrap(),
            vec![5, 4]
        );
        assert!(matches!(
            form_ids("userIds=abc"),
            Err(ApiError::InvalidUserId)
        ));
        assert!(!is_user_ids_key("userIdsX"));
        assert!(!is_user_ids_key("userIds[a]"));
    }

    #[test]
    fn register_bodies_read_from_json_and_forms_alike() {
        let j = RegisterAppPresenceRequest::from_json(
            br#"{"location":"Xbox","placeId":5,"disconnect":false,"extra":[1]}"#,
        )
        .unwrap();
        let f = RegisterAppPresenceRequest::from_form(b"location=Xbox&placeId=5&disconnect=false")
            .unwrap();
        assert_eq!(j.report(), f.report());
        assert!(matches!(
            RegisterAppPresenceRequest::from_json(br#"{"placeId":"five"}"#),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn last_online_is_rfc3339_utc_with_milliseconds() {
        let v = serde_json::to_value(LastOnline(Some(1_795_652_111_123))).unwrap();
        assert_eq!(v, "2026-11-26T00:15:11.123Z");
        let v = serde_json::to_value(LastOnline(None)).unwrap();
        assert_eq!(v, NEVER_SEEN_LAST_ONLINE);
    }
}
