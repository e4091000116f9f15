//! The wire shapes: request bodies as clients send them, and the one serializer of
//! presences (the one place that knows string versus integer presence types).

use std::borrow::Cow;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;
use uuid::Uuid;

use super::body::FromBody;
use super::error::ApiError;
use crate::config::PresenceTypeFormat;
use crate::presence::privacy::{Seen, Viewer};
use crate::presence::time::WallMillis;
use crate::presence::{AppReport, PresenceType, PresenceView, UserId};

/// `lastOnline` of a user never seen.
pub const NEVER_SEEN_LAST_ONLINE: &str = "0001-01-01T00:00:00.000Z";

pub(crate) fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// The body of `register-app-presence`. Unknown fields are ignored; `null` is absent. The
/// location borrows from the body when it needs no unescaping.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "Request model to Register App Presence; every field is optional")]
pub struct RegisterAppPresenceRequest<'a> {
    /// Where the user is; starting with `Studio` (any case) means InStudio.
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub location: Option<Cow<'a, str>>,
    /// The place played; 0 or absent means none.
    #[serde(default, deserialize_with = "int64")]
    #[schema(minimum = -9223372036854775808_i64, maximum = 9223372036854775807_i64)]
    pub place_id: Option<i64>,
    /// True: the user is Offline at once.
    pub disconnect: Option<bool>,
    /// Extension: the game-server instance (InGame only), a hyphenated UUID; `""` is none.
    #[serde(default, deserialize_with = "game_id")]
    #[schema(value_type = Option<String>, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$")]
    pub game_id: Option<Uuid>,
    /// Extension: overrides the place catalog's universe.
    #[serde(default, deserialize_with = "int64")]
    #[schema(minimum = -9223372036854775808_i64, maximum = 9223372036854775807_i64)]
    pub universe_id: Option<i64>,
}

/// A hyphenated UUID (the form every client sends and the answer uses), `""` or `null` for
/// none. Other spellings the `uuid` crate would read are refused, as the schema says.
fn game_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let Some(text) = Option::<Cow<'de, str>>::deserialize(d)? else {
        return Ok(None);
    };
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() != 36 {
        return Err(de::Error::custom("gameId must be a hyphenated UUID"));
    }
    Uuid::parse_str(&text)
        .map(Some)
        .map_err(|_| de::Error::custom("gameId must be a hyphenated UUID"))
}

/// The int64 a JSON number written as a float stands for, if it is whole and in range
/// (`-0`, `1.0`, `1e3`); JSON Schema counts such numbers as integers.
fn whole_int64(v: f64) -> Option<i64> {
    // 2^63 is the first float past i64::MAX; every float below it converts exactly. -2^63
    // itself is left out: an integer literal below i64::MIN also rounds to it.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (v.fract() == 0.0 && v > -LIMIT && v < LIMIT).then_some(v as i64)
}

/// An optional int64, from a JSON integer, a whole JSON number written as a float, or a
/// form's decimal text; anything else is refused.
pub(crate) fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Int64;
    impl<'de> Visitor<'de> for Int64 {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an int64")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("out of int64 range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            whole_int64(v)
                .map(Some)
                .ok_or_else(|| E::custom("not an int64"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            // JSON gives numbers only; a form's text is parsed as an i64 by its deserializer.
            d.deserialize_i64(self)
        }
    }
    d.deserialize_option(Int64)
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

pub use crate::presence::model::IdItem;

/// The body of `/v1/presence/users`, before validation. Missing or `null` ids are none.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(description = "Get users presences request model")]
pub struct LookupRequest {
    #[serde(rename = "userIds", default, deserialize_with = "null_as_empty")]
    #[schema(schema_with = super::openapi::user_ids_schema)]
    pub user_ids: Vec<IdItem>,
}

pub(crate) fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IdItem>, D::Error> {
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

pub fn is_user_ids_key(key: &str) -> bool {
    is_list_key(key, "userIds")
}

/// Whether a form key names the list `name`: `name`, `name[]` or `name[<index>]`.
pub fn is_list_key(key: &str, name: &str) -> bool {
    match key.strip_prefix(name) {
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
        let mut ids: Vec<UserId> = Vec::with_capacity(self.user_ids.len());
        let mut seen = SeenIds::with_room_for(self.user_ids.len());
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

/// The ids of one request met so far, to answer each once: an open-addressing table of
/// twice as many slots as ids (at least 64), probed linearly from a multiplicative hash.
/// One small allocation and a probe or two per id, where a linear scan costs a comparison
/// with every earlier id and a general-purpose set hashes more and allocates more.
struct SeenIds {
    /// `0` is free: no user id is 0.
    slots: Vec<u64>,
    mask: usize,
    shift: u32,
}

impl SeenIds {
    fn with_room_for(ids: usize) -> Self {
        let size = (ids * 2).max(64).next_power_of_two();
        Self {
            slots: vec![0; size],
            mask: size - 1,
            shift: 64 - size.trailing_zeros(),
        }
    }

    /// Whether `id` is new (and now met).
    fn insert(&mut self, id: UserId) -> bool {
        let id = id.get();
        // Fibonacci hashing: the top bits of the product spread consecutive ids apart.
        let mut slot = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            match self.slots[slot] {
                0 => {
                    self.slots[slot] = id;
                    return true;
                }
                met if met == id => return false,
                _ => slot = (slot + 1) & self.mask,
            }
        }
    }
}

/// Writes `{"userPresences":[...]}`, one presence at a time, with presence types as
/// configured. Written by hand, key by key in the contract's order: this is the lookup's
/// hot path.
pub struct PresencesWriter {
    out: Vec<u8>,
    format: PresenceTypeFormat,
    empty: bool,
}

impl PresencesWriter {
    pub fn new(format: PresenceTypeFormat, expected: usize) -> Self {
        let mut out = Vec::with_capacity(24 + expected * 240);
        out.extend_from_slice(b"{\"userPresences\":[");
        Self {
            out,
            format,
            empty: true,
        }
    }

    pub fn push(&mut self, view: &PresenceView<'_>) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_presence(&mut self.out, view, self.format, false);
    }

    /// Appends the entry `viewer` is shown of `seen`'s user (CONTRACT section 11).
    pub fn push_seen(&mut self, seen: &Seen<'_, '_>, viewer: Viewer, show_last_online: bool) {
        // A user who restricted nothing is shown as it is to every viewer.
        if show_last_online && seen.settings.is_default() {
            self.push(seen.view);
            return;
        }
        let sight = seen.sight(viewer, show_last_online);
        let invisible = sight.shows_invisible_type(seen.view);
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_presence(
            &mut self.out,
            &sight.entry(seen.view.clone()),
            self.format,
            invisible,
        );
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"]}");
        self.out
    }
}

/// `{"userPresences":[...]}` for the given views.
pub fn user_presences(views: &[PresenceView<'_>], format: PresenceTypeFormat) -> Vec<u8> {
    let mut writer = PresencesWriter::new(format, views.len());
    views.iter().for_each(|v| writer.push(v));
    writer.finish()
}

/// The writer of entries live streams use: the same bytes as [`presence_entry`].
pub fn entry_encoder(format: PresenceTypeFormat) -> crate::presence::watch::Encoder {
    Box::new(move |view, invisible| {
        let mut out = Vec::with_capacity(240);
        write_presence(&mut out, view, format, invisible);
        bytes::Bytes::from(out)
    })
}

/// One entry as `/v1/presence/users` writes it; live streams send the same bytes.
pub fn presence_entry(v: &PresenceView<'_>, format: PresenceTypeFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(240);
    write_presence(&mut out, v, format, false);
    out
}

/// `invisible`: the type is written `Invisible` (integer `4`) instead of `v.kind`, the type
/// a user is shown to itself while invisible and present (CONTRACT section 11).
fn write_presence(
    out: &mut Vec<u8>,
    v: &PresenceView<'_>,
    format: PresenceTypeFormat,
    invisible: bool,
) {
    // Written in as few pieces as the entry allows: a head per type and format, and one
    // piece for the four place fields of an entry that has none (most entries).
    let head: &[u8] = match (format, invisible, v.kind) {
        (PresenceTypeFormat::String, true, _) => {
            br#"{"userPresenceType":"Invisible","lastLocation":"#
        }
        (PresenceTypeFormat::String, false, PresenceType::Offline) => {
            br#"{"userPresenceType":"Offline","lastLocation":"#
        }
        (PresenceTypeFormat::String, false, PresenceType::Online) => {
            br#"{"userPresenceType":"Online","lastLocation":"#
        }
        (PresenceTypeFormat::String, false, PresenceType::InGame) => {
            br#"{"userPresenceType":"InGame","lastLocation":"#
        }
        (PresenceTypeFormat::String, false, PresenceType::InStudio) => {
            br#"{"userPresenceType":"InStudio","lastLocation":"#
        }
        (PresenceTypeFormat::Integer, true, _) => br#"{"userPresenceType":4,"lastLocation":"#,
        (PresenceTypeFormat::Integer, false, PresenceType::Offline) => {
            br#"{"userPresenceType":0,"lastLocation":"#
        }
        (PresenceTypeFormat::Integer, false, PresenceType::Online) => {
            br#"{"userPresenceType":1,"lastLocation":"#
        }
        (PresenceTypeFormat::Integer, false, PresenceType::InGame) => {
            br#"{"userPresenceType":2,"lastLocation":"#
        }
        (PresenceTypeFormat::Integer, false, PresenceType::InStudio) => {
            br#"{"userPresenceType":3,"lastLocation":"#
        }
    };
    out.extend_from_slice(head);
    write_str(out, &v.last_location);
    if v.place.is_none() && v.game_id.is_none() {
        out.extend_from_slice(
            br#","placeId":null,"rootPlaceId":null,"universeId":null,"gameId":null,"userId":"#,
        );
    } else {
        out.extend_from_slice(b",\"placeId\":");
        write_opt_int(out, v.place.map(|p| p.place_id));
        out.extend_from_slice(b",\"rootPlaceId\":");
        write_opt_int(out, v.place.map(|p| p.root_place_id));
        out.extend_from_slice(b",\"universeId\":");
        write_opt_int(out, v.place.and_then(|p| p.universe_id).map(|u| u.get()));
        out.extend_from_slice(b",\"gameId\":");
        match v.game_id {
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(
                    id.hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"userId\":");
    }
    out.extend_from_slice(itoa::Buffer::new().format(v.user_id.get()).as_bytes());
    out.extend_from_slice(b",\"lastOnline\":\"");
    write_last_online(out, v.last_online.map(|w| w.0));
    out.extend_from_slice(b"\"}");
}

/// A JSON string with the escapes JSON requires.
fn write_str(out: &mut Vec<u8>, text: &str) {
    // Most texts (every location the server gives itself) need no escape: copied whole.
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail, and a str is always valid JSON once escaped.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_opt_int(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 3339 in UTC with milliseconds and `Z`; the sentinel for a user never seen.
fn write_last_online(out: &mut Vec<u8>, millis: Option<i64>) {
    if !millis.is_some_and(|t| WallMillis(t).write_rfc3339(out)) {
        out.extend_from_slice(NEVER_SEEN_LAST_ONLINE.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// De-duplication keeps each id's first appearance, in order, for lists of every size
    /// the API accepts, ids close together (one probe chain) or far apart.
    #[test]
    fn seen_ids_keep_first_appearances() {
        let mut rng = crate::test_rng::XorShift::new(0x5EE1);
        for round in 0..2000 {
            let len = rng.below(201) as usize;
            let spread = [4, 64, 1 << 20, i64::MAX as u64][round % 4];
            let ids: Vec<UserId> = (0..len)
                .map(|_| UserId::new(1 + rng.below(spread)).unwrap())
                .collect();
            let mut seen = SeenIds::with_room_for(ids.len());
            let ours: Vec<UserId> = ids.iter().copied().filter(|&id| seen.insert(id)).collect();
            let mut reference = Vec::new();
            for &id in &ids {
                if !reference.contains(&id) {
                    reference.push(id);
                }
            }
            assert_eq!(ours, reference);
        }
    }

    /// Every entry, whatever its type, format, place fields and text, is the contract's
    /// object with its keys in order: checked against an entry put together field by field
    /// with serde_json's writers.
    #[test]
    fn entries_are_written_field_by_field() {
        use crate::presence::model::PlaceInfo;
        use std::borrow::Cow;
        use std::num::NonZeroI64;
        let mut rng = crate::test_rng::XorShift::new(0xE27);
        let kinds = [
            PresenceType::Offline,
            PresenceType::Online,
            PresenceType::InGame,
            PresenceType::InStudio,
        ];
        let texts = ["", "Website", "Lobby \"12\"", "caf\u{e9}\n"];
        for _ in 0..4000 {
            let kind = kinds[rng.below(4) as usize];
            let place = (rng.below(2) == 0).then(|| PlaceInfo {
                place_id: rng.below(1 << 40) as i64,
                root_place_id: rng.below(1 << 40) as i64,
                universe_id: NonZeroI64::new(rng.below(3) as i64),
            });
            let game_id = (rng.below(3) == 0).then(|| Uuid::from_u128(u128::from(rng.next())));
            let view = PresenceView {
                user_id: UserId::new(1 + rng.below(i64::MAX as u64)).unwrap(),
                kind,
                last_location: Cow::Borrowed(texts[rng.below(4) as usize]),
                place,
                game_id,
                last_online: (rng.below(4) > 0)
                    .then(|| WallMillis(rng.below(300_000_000_000_000) as i64)),
            };
            let invisible = rng.below(5) == 0;
            for format in [PresenceTypeFormat::String, PresenceTypeFormat::Integer] {
                let mut ours = Vec::new();
                write_presence(&mut ours, &view, format, invisible);
                let kind_json = match (format, invisible) {
                    (PresenceTypeFormat::String, true) => "\"Invisible\"".to_owned(),
                    (PresenceTypeFormat::Integer, true) => "4".to_owned(),
                    (PresenceTypeFormat::String, false) => format!("\"{}\"", kind.as_str()),
                    (PresenceTypeFormat::Integer, false) => kind.as_int().to_string(),
                };
                let json = |v: serde_json::Value| v.to_string();
                let mut last_online = Vec::new();
                write_last_online(&mut last_online, view.last_online.map(|w| w.0));
                let expected = format!(
                    "{{\"userPresenceType\":{},\"lastLocation\":{},\"placeId\":{},\"rootPlaceId\":{},\"universeId\":{},\"gameId\":{},\"userId\":{},\"lastOnline\":\"{}\"}}",
                    kind_json,
                    json(view.last_location.as_ref().into()),
                    json(place.map(|p| p.place_id).into()),
                    json(place.map(|p| p.root_place_id).into()),
                    json(place.and_then(|p| p.universe_id).map(|u| u.get()).into()),
                    json(game_id.map(|g| g.to_string()).into()),
                    view.user_id.get(),
                    String::from_utf8(last_online).unwrap(),
                );
                assert_eq!(String::from_utf8(ours).unwrap(), expected);
            }
        }
    }

    /// Texts are written as serde_json writes them, with or without escapes.
    #[test]
    fn texts_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "Website",
            "Lobby 12",
            "caf\u{e9} \u{1F3AE}",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{0}\u{1f}\u{7f}",
            "line\nbreak\r",
        ] {
            let mut ours = Vec::new();
            write_str(&mut ours, text);
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

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
    fn whole_numbers_written_as_floats_are_ids() {
        assert_eq!(
            ids(r#"{"userIds":[1.0,1e3,479001601.0]}"#).unwrap(),
            vec![1, 1000, 479_001_601]
        );
    }

    /// A whole number written as a float is read as exactly that number, however many
    /// digits it has: read to the nearest float, not approximately (`2171142742765205.0`
    /// was once read as a neighbour with a fraction and refused). Ids and the int64 fields
    /// alike, written as `n.0` and as a float's shortest text (`2.3783896365854356e16`).
    #[test]
    fn whole_numbers_written_as_floats_are_read_exactly() {
        let mut rng = crate::test_rng::XorShift::new(0xF10A7);
        let mut numbers = vec![
            2_171_142_742_765_205_u64,
            (1 << 53) - 1,
            1 << 53,
            23_783_896_365_854_356,
            9_223_372_036_854_774_784, // the largest float below 2^63
        ];
        // Below 2^53 every integer is a float; above, only those the float holds exactly.
        numbers.extend((0..3000).map(|_| 1 + rng.below(1 << 53)));
        numbers.extend((0..1000).map(|_| (1 + rng.below(1 << 52)) << (1 + rng.below(10))));
        for n in numbers {
            assert_eq!(n as f64 as u64, n, "{n} is a float");
            for text in [format!("{n}.0"), format!("{:e}", n as f64)] {
                let body = format!(r#"{{"userIds":[{text}]}}"#);
                assert_eq!(ids(&body).unwrap(), vec![n], "{text}");
                let body = format!(r#"{{"location":"Website","placeId":{text}}}"#);
                let request = RegisterAppPresenceRequest::from_json(body.as_bytes()).unwrap();
                assert_eq!(request.place_id, Some(n as i64), "{text}");
            }
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
    fn long_lists_are_deduplicated_in_first_order_too() {
        let items: Vec<IdItem> = (0..300u64)
            .map(|i| IdItem::Valid(UserId::new(i % 100 + 1).unwrap()))
            .collect();
        let ids = LookupRequest { user_ids: items }
            .into_user_ids(1000)
            .unwrap();
        assert_eq!(ids.len(), 100);
        assert!(ids
            .iter()
            .enumerate()
            .all(|(i, id)| id.get() == i as u64 + 1));
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
    fn place_ids_are_whole_int64s_however_written() {
        let r =
            |body: &str| RegisterAppPresenceRequest::from_json(body.as_bytes()).map(|r| r.place_id);
        assert_eq!(r(r#"{"placeId":1818.0}"#).unwrap(), Some(1818));
        assert_eq!(r(r#"{"placeId":-0}"#).unwrap(), Some(0));
        assert_eq!(r(r#"{"placeId":null}"#).unwrap(), None);
        assert!(r(r#"{"placeId":1.5}"#).is_err());
        assert!(r(r#"{"placeId":"5"}"#).is_err());
        assert!(r(r#"{"placeId":-9223372036854775809}"#).is_err());
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

    fn last_online(millis: Option<i64>) -> String {
        let mut out = Vec::new();
        write_last_online(&mut out, millis);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn last_online_is_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            last_online(Some(1_795_652_111_123)),
            "2026-11-26T00:15:11.123Z"
        );
        assert_eq!(
            last_online(Some(1_795_652_111_003)),
            "2026-11-26T00:15:11.003Z"
        );
        assert_eq!(last_online(Some(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            last_online(Some(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(last_online(None), NEVER_SEEN_LAST_ONLINE);
    }

    #[test]
    fn every_presence_is_written_with_all_eight_keys_as_valid_json() {
        use crate::presence::model::PlaceInfo;
        use crate::presence::time::WallMillis;
        use crate::presence::PresenceType;
        let views = [
            PresenceView::never_seen(UserId::new(1).unwrap()),
            PresenceView {
                user_id: UserId::new(2).unwrap(),
                kind: PresenceType::InGame,
                last_location: "Quote \" and \\ and \u{1}".into(),
                place: Some(PlaceInfo {
                    place_id: 5,
                    root_place_id: 6,
                    universe_id: std::num::NonZeroI64::new(7),
                }),
                game_id: Some(Uuid::from_u128(0x6fbe6f4e_3a3f_4b43_9f7e_2d7c7c8e9a11)),
                last_online: Some(WallMillis(1_795_652_111_123)),
            },
        ];
        let text = user_presences(&views, PresenceTypeFormat::String);
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"userPresences": [
                {"userPresenceType": "Offline", "lastLocation": "", "placeId": null,
                 "rootPlaceId": null, "universeId": null, "gameId": null, "userId": 1,
                 "lastOnline": "0001-01-01T00:00:00.000Z"},
                {"userPresenceType": "InGame", "lastLocation": "Quote \" and \\ and \u{1}",
                 "placeId": 5, "rootPlaceId": 6, "universeId": 7,
                 "gameId": "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11", "userId": 2,
                 "lastOnline": "2026-11-26T00:15:11.123Z"}
            ]})
        );
        let text = user_presences(&views[..1], PresenceTypeFormat::Integer);
        assert!(text.starts_with(br#"{"userPresences":[{"userPresenceType":0,"lastLocation":"""#));
    }
}
