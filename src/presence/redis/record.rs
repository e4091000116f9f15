//! One user's record as Redis holds it: a short string, read by the scripts and by lookups.
//!
//! Fields are separated by `|`, numbers in decimal, the location last (so it may hold any
//! byte, `|` included):
//!
//! - Offline: `0|<lastOnline ms>|<location>`, or, when the location is one of
//!   [`BUILTIN_LOCATIONS`], the one integer `<lastOnline ms> * 4 + <its index>`: Redis keeps
//!   an integer in the key's own object rather than in a string allocation, which saves
//!   about 32 bytes per Offline user (most are at `Website` or `Playing`).
//! - present: `<type>|<lastOnline ms>|<deadline ms>|<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`
//!   with type `1` Online, `2` InGame, `3` InStudio; absent place fields empty, `gameId`
//!   as 32 hex digits.
//!
//! - with game-server sessions (CONTRACT section 10):
//!   `g|<lastOnline ms>|<n>|<app session: n bytes, a present record, or none>` then, per game
//!   session, `<m>|<joined>|<deadline ms>|<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`
//!   (m the bytes after `<m>|`). Only the scripts write it (see `scripts`); nodes of the
//!   previous version cannot read it, which is fine: only users in game servers have one.
//!
//! A user's privacy settings (CONTRACT section 11) are a key of their own beside the record
//! (see `keys`), absent for the default settings, written by [`encode_settings`]:
//!
//! - `<visibility>`: `1` friends, `2` nobody (`0`, everyone, is the default and not
//!   stored), not invisible; an integer, which Redis keeps without a string allocation;
//! - `<visibility>,<invisibleUntil ms>,<frozen lastOnline ms>`: invisible, either time
//!   empty when there is none (until turned off; never seen when invisibility began).
//!
//! Times are Redis's clock, in milliseconds since the Unix epoch. A present record whose
//! deadline has passed reads as Offline at once, whether or not a sweeper has claimed it;
//! a record with game sessions shows, at the time it is read, the session
//! [`sessions::pick`] ranks first, or Offline at the location [`sessions::last_shown`]
//! names.

use std::borrow::Cow;
use std::num::NonZeroI64;

use uuid::Uuid;

use crate::presence::model::{PlaceInfo, PresenceType, PresenceView, Session, UserId};
use crate::presence::privacy::{Invisibility, Settings, Visibility};
use crate::presence::sessions::{self, GamePlace, Pick, Ranked};
use crate::presence::time::WallMillis;

/// The locations an Offline record can name by a two-bit code: the ones the server itself
/// gives (no location, the default, a game without a location, Studio). Append-only: a
/// code, once written to Redis, keeps its meaning.
pub const BUILTIN_LOCATIONS: [&str; 4] = ["", "Website", "Playing", "Studio"];

/// The record of a present user, written whole by a heartbeat.
pub fn encode_present(
    session: &Session,
    location: &str,
    last_online: i64,
    deadline: i64,
    out: &mut Vec<u8>,
) {
    let mut int = itoa::Buffer::new();
    out.clear();
    out.reserve(64 + location.len());
    out.push(b'0' + session.kind.as_int());
    out.push(b'|');
    out.extend_from_slice(int.format(last_online).as_bytes());
    out.push(b'|');
    out.extend_from_slice(int.format(deadline).as_bytes());
    out.push(b'|');
    if let Some(place) = session.place {
        out.extend_from_slice(int.format(place.place_id).as_bytes());
        out.push(b'|');
        out.extend_from_slice(int.format(place.root_place_id).as_bytes());
        out.push(b'|');
        if let Some(universe) = place.universe_id {
            out.extend_from_slice(int.format(universe.get()).as_bytes());
        }
        out.push(b'|');
    } else {
        out.extend_from_slice(b"|||");
    }
    if let Some(game) = session.game_id {
        let mut hex = Uuid::encode_buffer();
        out.extend_from_slice(game.simple().encode_lower(&mut hex).as_bytes());
    }
    out.push(b'|');
    out.extend_from_slice(location.as_bytes());
}

/// A game-server session's `<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`, as
/// the scripts keep it (the fields after the deadline of a present record).
pub fn encode_game_session(game: Uuid, place: &GamePlace) -> Vec<u8> {
    let session = Session {
        kind: PresenceType::InGame,
        place: Some(place.place),
        game_id: Some(game),
    };
    let mut out = Vec::new();
    encode_present(&session, place.location.as_str(), 0, 0, &mut out);
    out.split_off(b"2|0|0|".len())
}

/// A record that cannot be read (written by something else under our prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unreadable presence record")]
pub struct Corrupt;

/// The view of `user` from its record, as of Redis time `now`: Offline once the deadline is
/// `<= now`, with its `lastOnline` and location kept.
pub fn decode(user: UserId, record: &[u8], now: i64) -> Result<PresenceView<'_>, Corrupt> {
    if record.starts_with(b"g|") {
        return decode_sessions(user, record, now);
    }
    if !record.contains(&b'|') {
        return decode_packed(user, record);
    }
    let (&kind, rest) = record.split_first().ok_or(Corrupt)?;
    let rest = rest.strip_prefix(b"|").ok_or(Corrupt)?;
    let mut view = PresenceView {
        user_id: user,
        kind: PresenceType::Offline,
        last_location: Cow::Borrowed(""),
        place: None,
        game_id: None,
        last_online: None,
    };
    if kind == b'0' {
        let mut fields = rest.splitn(2, |&b| b == b'|');
        view.last_online = Some(WallMillis(number(fields.next())?));
        view.last_location = text(fields.next())?;
        return Ok(view);
    }
    let kind = present_type(kind)?;
    let mut fields = rest.splitn(3, |&b| b == b'|');
    view.last_online = Some(WallMillis(number(fields.next())?));
    let deadline = number(fields.next())?;
    let session = session_fields(fields.next().ok_or(Corrupt)?)?;
    view.last_location = session.location;
    if now < deadline {
        view.kind = kind;
        view.place = session.place;
        view.game_id = session.game_id;
    }
    Ok(view)
}

fn present_type(kind: u8) -> Result<PresenceType, Corrupt> {
    match kind {
        b'1' => Ok(PresenceType::Online),
        b'2' => Ok(PresenceType::InGame),
        b'3' => Ok(PresenceType::InStudio),
        _ => Err(Corrupt),
    }
}

/// A session's fields after its deadline.
struct SessionFields<'a> {
    place: Option<PlaceInfo>,
    game_id: Option<Uuid>,
    location: Cow<'a, str>,
}

/// `<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`.
fn session_fields(rest: &[u8]) -> Result<SessionFields<'_>, Corrupt> {
    let mut fields = rest.splitn(5, |&b| b == b'|');
    let place_id = optional(fields.next())?;
    let root_place_id = optional(fields.next())?;
    let universe_id = optional(fields.next())?;
    let game = fields.next().ok_or(Corrupt)?;
    let location = text(fields.next())?;
    let game_id = if game.is_empty() {
        None
    } else {
        let game = std::str::from_utf8(game).map_err(|_| Corrupt)?;
        Some(Uuid::try_parse(game).map_err(|_| Corrupt)?)
    };
    Ok(SessionFields {
        place: place_id.map(|place_id| PlaceInfo {
            place_id,
            root_place_id: root_place_id.unwrap_or(place_id),
            universe_id: universe_id.and_then(NonZeroI64::new),
        }),
        game_id,
        location,
    })
}

/// One session of a record with game sessions: its rank, deadline and fields.
struct Held<'a> {
    joined: u32,
    deadline: i64,
    kind: PresenceType,
    rest: &'a [u8],
}

impl Ranked<i64> for Held<'_> {
    fn joined(&self) -> u32 {
        self.joined
    }
    fn deadline(&self) -> i64 {
        self.deadline
    }
}

/// Splits `<digits>|` off the front of `bytes`.
fn leading_number(bytes: &[u8]) -> Result<(i64, &[u8]), Corrupt> {
    let bar = bytes.iter().position(|&b| b == b'|').ok_or(Corrupt)?;
    Ok((number(Some(&bytes[..bar]))?, &bytes[bar + 1..]))
}

/// `n` bytes off the front of `bytes`.
fn take(bytes: &[u8], n: i64) -> Result<(&[u8], &[u8]), Corrupt> {
    let n = usize::try_from(n).map_err(|_| Corrupt)?;
    (n <= bytes.len()).then(|| bytes.split_at(n)).ok_or(Corrupt)
}

/// A record with game sessions (see the module's documentation).
fn decode_sessions(user: UserId, record: &[u8], now: i64) -> Result<PresenceView<'_>, Corrupt> {
    let (last_online, rest) = leading_number(&record[2..])?;
    let (app_len, rest) = leading_number(rest)?;
    let (app, mut rest) = take(rest, app_len)?;
    let app = if app.is_empty() {
        None
    } else {
        let (&kind, fields) = app.split_first().ok_or(Corrupt)?;
        let kind = present_type(kind)?;
        let fields = fields.strip_prefix(b"|").ok_or(Corrupt)?;
        let (_, fields) = leading_number(fields)?;
        let (deadline, fields) = leading_number(fields)?;
        Some(Held {
            joined: 0,
            deadline,
            kind,
            rest: fields,
        })
    };
    let mut games = Vec::new();
    while !rest.is_empty() {
        let (len, after) = leading_number(rest)?;
        let (game, after) = take(after, len)?;
        rest = after;
        let (joined, game) = leading_number(game)?;
        let (deadline, game) = leading_number(game)?;
        games.push(Held {
            joined: u32::try_from(joined).map_err(|_| Corrupt)?,
            deadline,
            kind: PresenceType::InGame,
            rest: game,
        });
    }
    if games.is_empty() {
        return Err(Corrupt);
    }
    let app_deadline = app.as_ref().map(|a| a.deadline);
    let (held, present) = match sessions::pick(app_deadline, &games, now) {
        Some(pick) => (pick, true),
        None => (
            sessions::last_shown(app_deadline, &games).ok_or(Corrupt)?,
            false,
        ),
    };
    let held = match held {
        Pick::Game(i) => &games[i],
        Pick::App => app.as_ref().ok_or(Corrupt)?,
    };
    let session = session_fields(held.rest)?;
    let mut view = PresenceView {
        user_id: user,
        kind: PresenceType::Offline,
        last_location: session.location,
        place: None,
        game_id: None,
        last_online: Some(WallMillis(last_online)),
    };
    if present {
        view.kind = held.kind;
        view.place = session.place;
        view.game_id = session.game_id;
    }
    Ok(view)
}

/// An Offline record at a built-in location: `<lastOnline ms> * 4 + <code>`.
fn decode_packed(user: UserId, record: &[u8]) -> Result<PresenceView<'static>, Corrupt> {
    let packed = number(Some(record))?;
    if packed < 0 {
        return Err(Corrupt);
    }
    Ok(PresenceView {
        user_id: user,
        kind: PresenceType::Offline,
        last_location: Cow::Borrowed(BUILTIN_LOCATIONS[(packed % 4) as usize]),
        place: None,
        game_id: None,
        last_online: Some(WallMillis(packed / 4)),
    })
}

/// `settings` as Redis holds them (see the module's documentation); `None` for the default
/// settings, which are not stored.
pub fn encode_settings(settings: Settings) -> Option<String> {
    if settings.is_default() {
        return None;
    }
    let visibility = match settings.visibility() {
        Visibility::Everyone => '0',
        Visibility::Friends => '1',
        Visibility::Nobody => '2',
    };
    let mut out = String::with_capacity(32);
    out.push(visibility);
    if let Some(invisibility) = settings.invisibility() {
        let mut int = itoa::Buffer::new();
        out.push(',');
        if let Some(until) = invisibility.until {
            out.push_str(int.format(until.0));
        }
        out.push(',');
        if let Some(last_online) = invisibility.last_online {
            out.push_str(int.format(last_online.0));
        }
    }
    Some(out)
}

/// Settings written by [`encode_settings`]; an empty value is the default (what a change
/// message carries for a user without settings).
pub fn decode_settings(value: &[u8]) -> Result<Settings, Corrupt> {
    if value.is_empty() {
        return Ok(Settings::default());
    }
    let mut fields = value.split(|&b| b == b',');
    let visibility = match fields.next() {
        Some(b"0") => Visibility::Everyone,
        Some(b"1") => Visibility::Friends,
        Some(b"2") => Visibility::Nobody,
        _ => return Err(Corrupt),
    };
    let invisibility = match (fields.next(), fields.next(), fields.next()) {
        (None, _, _) => None,
        (Some(until), Some(last_online), None) => Some(Invisibility {
            until: optional(Some(until))?.map(WallMillis),
            last_online: optional(Some(last_online))?.map(WallMillis),
        }),
        _ => return Err(Corrupt),
    };
    Ok(Settings::new(visibility, invisibility))
}

fn number(field: Option<&[u8]>) -> Result<i64, Corrupt> {
    let field = field.ok_or(Corrupt)?;
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Corrupt)
}

fn optional(field: Option<&[u8]>) -> Result<Option<i64>, Corrupt> {
    match field {
        Some([]) => Ok(None),
        other => number(other).map(Some),
    }
}

fn text(field: Option<&[u8]>) -> Result<Cow<'_, str>, Corrupt> {
    // Locations arrive as JSON strings, so they are UTF-8; anything else was not written
    // by a heartbeat, and is shown rather than refused.
    Ok(String::from_utf8_lossy(field.ok_or(Corrupt)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::new(42).unwrap()
    }

    fn in_game() -> Session {
        Session {
            kind: PresenceType::InGame,
            place: Some(PlaceInfo {
                place_id: 1818,
                root_place_id: 1800,
                universe_id: NonZeroI64::new(13058),
            }),
            game_id: Some(Uuid::from_u128(0x3f2504e0_4f89_11d3_9a0c_0305e82c3301)),
        }
    }

    #[test]
    fn a_present_record_reads_back_until_its_deadline() {
        let mut out = Vec::new();
        encode_present(&in_game(), "Classic | Crossroads", 1_000, 61_000, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2|1000|61000|1818|1800|13058|3f2504e04f8911d39a0c0305e82c3301|Classic | Crossroads"
        );
        let v = decode(user(), &out, 60_999).unwrap();
        assert_eq!(v.kind, PresenceType::InGame);
        assert_eq!(v.place, in_game().place);
        assert_eq!(v.game_id, in_game().game_id);
        assert_eq!(v.last_location, "Classic | Crossroads");
        assert_eq!(v.last_online, Some(WallMillis(1_000)));
    }

    #[test]
    fn a_present_record_past_its_deadline_reads_offline_with_its_location() {
        let mut out = Vec::new();
        encode_present(&in_game(), "Obby", 1_000, 61_000, &mut out);
        let v = decode(user(), &out, 61_000).unwrap();
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!((v.place, v.game_id), (None, None));
        assert_eq!(v.last_location, "Obby");
        assert_eq!(v.last_online, Some(WallMillis(1_000)));
    }

    #[test]
    fn an_online_record_has_empty_place_fields() {
        let session = Session {
            kind: PresenceType::Online,
            place: None,
            game_id: None,
        };
        let mut out = Vec::new();
        encode_present(&session, "Website", 5, 10, &mut out);
        assert_eq!(out, b"1|5|10|||||Website");
        let v = decode(user(), &out, 6).unwrap();
        assert_eq!(
            (v.kind, v.place, v.game_id),
            (PresenceType::Online, None, None)
        );
    }

    #[test]
    fn an_offline_record_keeps_last_online_and_location() {
        let v = decode(user(), b"0|1700000000123|Studio - A|B", 0).unwrap();
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.last_location, "Studio - A|B");
        assert_eq!(v.last_online, Some(WallMillis(1_700_000_000_123)));
        assert_eq!(decode(user(), b"0|7|", 0).unwrap().last_location, "");
    }

    #[test]
    fn an_offline_record_at_a_built_in_location_is_one_integer() {
        for (code, name) in BUILTIN_LOCATIONS.iter().enumerate() {
            let packed = (1_700_000_000_123_i64 * 4 + code as i64).to_string();
            let v = decode(user(), packed.as_bytes(), i64::MAX).unwrap();
            assert_eq!(v.kind, PresenceType::Offline);
            assert_eq!(v.last_location, *name);
            assert_eq!(v.last_online, Some(WallMillis(1_700_000_000_123)));
            assert_eq!((v.place, v.game_id), (None, None));
        }
    }

    /// A record with game sessions, as the scripts write it.
    fn with_games(last_online: i64, app: &[u8], games: &[(u32, i64, &str)]) -> Vec<u8> {
        let mut out = format!("g|{last_online}|{}|", app.len()).into_bytes();
        out.extend_from_slice(app);
        for &(joined, deadline, rest) in games {
            let body = format!("{joined}|{deadline}|{rest}");
            out.extend_from_slice(format!("{}|{body}", body.len()).as_bytes());
        }
        out
    }

    const GAME_A: &str = "1818|1800|13058|3f2504e04f8911d39a0c0305e82c3301|Crossroads | A";
    const GAME_B: &str = "77|77||00000000000000000000000000000002|Playing";

    #[test]
    fn a_record_with_game_sessions_shows_the_latest_joined_live_one() {
        let mut app = Vec::new();
        let online = Session {
            kind: PresenceType::Online,
            place: None,
            game_id: None,
        };
        encode_present(&online, "Website", 5, 300, &mut app);
        let rec = with_games(7, &app, &[(3, 100, GAME_A), (1, 200, GAME_B)]);
        let v = decode(user(), &rec, 50).unwrap();
        assert_eq!(v.kind, PresenceType::InGame);
        assert_eq!(v.last_location, "Crossroads | A");
        assert_eq!(v.game_id, in_game().game_id);
        assert_eq!(v.place, in_game().place);
        assert_eq!(v.last_online, Some(WallMillis(7)));
        let v = decode(user(), &rec, 150).unwrap();
        assert_eq!(
            (v.kind, v.last_location.as_ref()),
            (PresenceType::InGame, "Playing")
        );
        assert_eq!(
            v.place.map(|p| (p.place_id, p.universe_id)),
            Some((77, None))
        );
        let v = decode(user(), &rec, 250).unwrap();
        assert_eq!(
            (v.kind, v.last_location.as_ref(), v.place, v.game_id),
            (PresenceType::Online, "Website", None, None)
        );
        let v = decode(user(), &rec, 300).unwrap();
        assert_eq!(
            (v.kind, v.last_location.as_ref()),
            (PresenceType::Offline, "Website")
        );
        let rec = with_games(7, b"", &[(0, 100, GAME_A)]);
        let v = decode(user(), &rec, 100).unwrap();
        assert_eq!(
            (v.kind, v.last_location.as_ref(), v.place, v.game_id),
            (PresenceType::Offline, "Crossroads | A", None, None)
        );
        assert_eq!(v.last_online, Some(WallMillis(7)));
    }

    #[test]
    fn a_game_session_is_encoded_as_the_fields_after_a_deadline() {
        let catalog = crate::presence::places::PlaceCatalog::new(&[]);
        let place = GamePlace::new(77, None, &catalog).unwrap();
        let rest = encode_game_session(Uuid::from_u128(2), &place);
        assert_eq!(rest, GAME_B.as_bytes());
    }

    #[test]
    fn settings_read_back_as_written() {
        let at = |ms| Some(WallMillis(ms));
        let cases = [
            (Settings::default(), None),
            (Settings::new(Visibility::Friends, None), Some("1")),
            (Settings::new(Visibility::Nobody, None), Some("2")),
            (
                Settings::new(
                    Visibility::Everyone,
                    Some(Invisibility {
                        until: None,
                        last_online: None,
                    }),
                ),
                Some("0,,"),
            ),
            (
                Settings::new(
                    Visibility::Friends,
                    Some(Invisibility {
                        until: at(1_795_652_111_123),
                        last_online: at(1_700_000_000_000),
                    }),
                ),
                Some("1,1795652111123,1700000000000"),
            ),
            (
                Settings::new(
                    Visibility::Nobody,
                    Some(Invisibility {
                        until: None,
                        last_online: at(0),
                    }),
                ),
                Some("2,,0"),
            ),
        ];
        for (settings, text) in cases {
            let written = encode_settings(settings);
            assert_eq!(written.as_deref(), text, "{settings:?}");
            let value = written.unwrap_or_default();
            assert_eq!(decode_settings(value.as_bytes()), Ok(settings), "{value}");
        }
        assert_eq!(decode_settings(b"0"), Ok(Settings::default()));
    }

    #[test]
    fn settings_not_written_by_this_module_are_refused() {
        for bad in [
            &b"3"[..],
            b"x",
            b"01",
            b"1,",
            b"1,2",
            b"1,2,3,4",
            b"1,x,",
            b"1,,-",
            b" 1",
            b"1|2|3",
        ] {
            assert_eq!(decode_settings(bad), Err(Corrupt), "{bad:?}");
        }
    }

    #[test]
    fn records_not_written_by_a_heartbeat_are_refused() {
        for bad in [
            &b""[..],
            b"-4",
            b"12x",
            b"99999999999999999999999",
            b"9|1|x",
            b"1|x|2||||a",
            b"0|1",
            b"2|1|2|3|4|5|nothex|a",
            b"g|1|0|",
            b"g|1|5|1|2|",
            b"g|1|0|99|1|2|x",
            b"g|x|0|5|1|2|3",
        ] {
            assert_eq!(decode(user(), bad, 0), Err(Corrupt), "{bad:?}");
        }
    }
}
