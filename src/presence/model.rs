//! The domain's values: user ids, presence types, a heartbeat and the view a lookup returns.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroI64;

use uuid::Uuid;

use super::memory::location::Location;
use super::places::PlaceCatalog;
use super::time::{Mono, WallMillis};

/// A user id: a positive int64, validated once where it enters the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(u64);

impl UserId {
    /// `Some` for `1..=i64::MAX`, the ids the API accepts.
    pub fn new(id: u64) -> Option<Self> {
        (id > 0 && id <= i64::MAX as u64).then_some(Self(id))
    }

    /// Parses a decimal string of ASCII digits only (no sign, no spaces).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<u64>().ok().and_then(Self::new)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl UserId {
    /// The id a JSON number written as a float stands for, when it is a whole number from
    /// 1 to `i64::MAX` (`5.0`, `1e3`): JSON Schema counts such numbers as integers.
    pub fn from_whole_number(v: f64) -> Option<Self> {
        // 2^63, the first float past i64::MAX; every whole float below it converts exactly.
        const ABOVE_MAX: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (1.0..ABOVE_MAX).contains(&v) {
            Self::new(v as u64)
        } else {
            None
        }
    }
}

/// One element where a user id is expected, as sent: a valid id (a positive int64 as a
/// JSON integer, as a whole number written with a fraction or exponent, or as decimal
/// text), or something that is not one, which the caller refuses with code 1. Never fails
/// to deserialize, so that a bad element is told apart from a malformed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdItem {
    Valid(UserId),
    Invalid,
}

impl IdItem {
    pub fn from_text(text: &str) -> Self {
        UserId::parse(text).map_or(Self::Invalid, Self::Valid)
    }

    /// The id, when it is one.
    pub fn id(self) -> Option<UserId> {
        match self {
            Self::Valid(id) => Some(id),
            Self::Invalid => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for IdItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = IdItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<IdItem, E> {
                Ok(UserId::from_whole_number(v).map_or(IdItem::Invalid, IdItem::Valid))
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

/// What a lookup reports. The discriminants are the integer wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceType {
    Offline = 0,
    Online = 1,
    InGame = 2,
    InStudio = 3,
}

impl PresenceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "Offline",
            Self::Online => "Online",
            Self::InGame => "InGame",
            Self::InStudio => "InStudio",
        }
    }

    pub fn as_int(self) -> u8 {
        self as u8
    }
}

/// The place fields of an InGame or InStudio session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlaceInfo {
    pub place_id: i64,
    pub root_place_id: i64,
    pub universe_id: Option<NonZeroI64>,
}

/// What a present user is doing; lives only while the user is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `Online`, `InGame` or `InStudio`, never `Offline`.
    pub kind: PresenceType,
    pub place: Option<PlaceInfo>,
    pub game_id: Option<Uuid>,
}

/// What a client reported in one `register-app-presence` call, already typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppReport<'a> {
    pub location: Option<&'a str>,
    pub place_id: Option<i64>,
    pub disconnect: bool,
    pub game_id: Option<Uuid>,
    pub universe_id: Option<i64>,
}

/// The effect of one heartbeat, decided before the store is touched. Borrows the client's
/// location text, so that a heartbeat that repeats its location allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heartbeat<'a> {
    /// The user leaves now; session details are dropped, the last location kept.
    Disconnect,
    /// The user is present until `now + heartbeat_ttl`, at `location`.
    Present {
        location: LocationName<'a>,
        session: Session,
    },
}

/// Where a heartbeat puts its user: a location already shared, or a client's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationName<'a> {
    Shared(Location),
    Given(&'a str),
}

impl LocationName<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Shared(location) => location.as_str(),
            Self::Given(text) => text,
        }
    }
}

impl<'a> Heartbeat<'a> {
    /// Applies the contract's rules (section 1) to a report, using the place catalog.
    pub fn from_report(report: AppReport<'a>, catalog: &PlaceCatalog) -> Self {
        if report.disconnect {
            return Self::Disconnect;
        }
        let location = report.location.filter(|l| !l.is_empty());
        let place_id = report.place_id.filter(|&id| id > 0);
        let known = place_id.and_then(|id| catalog.get(id));
        let universe_id = report.universe_id.and_then(NonZeroI64::new);
        let place = place_id.map(|place_id| PlaceInfo {
            place_id,
            root_place_id: known.map_or(place_id, |p| p.root_place_id),
            universe_id: universe_id.or(known.and_then(|p| NonZeroI64::new(p.universe_id))),
        });

        let is_studio = location.is_some_and(starts_with_studio);
        if is_studio {
            let location = match known {
                Some(p) => p.studio_location.clone(),
                None => Location::studio(),
            };
            let session = Session {
                kind: PresenceType::InStudio,
                place,
                game_id: None,
            };
            let location = LocationName::Shared(location);
            return Self::Present { location, session };
        }
        if place.is_some() {
            let location = match (known, location) {
                (Some(p), _) => LocationName::Shared(p.name.clone()),
                (None, Some(given)) => LocationName::Given(given),
                (None, None) => LocationName::Shared(Location::playing()),
            };
            let session = Session {
                kind: PresenceType::InGame,
                place,
                game_id: report.game_id,
            };
            return Self::Present { location, session };
        }
        let location = match location {
            Some(given) => LocationName::Given(given),
            None => LocationName::Shared(Location::website()),
        };
        let session = Session {
            kind: PresenceType::Online,
            place: None,
            game_id: None,
        };
        Self::Present { location, session }
    }
}

/// Whether a heartbeat's location makes it InStudio: it starts with `Studio`, in any case.
pub(crate) fn starts_with_studio(location: &str) -> bool {
    location
        .as_bytes()
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"studio"))
}

/// One user's presence as a lookup reports it. A lookup borrows the location text from
/// the store for as long as it writes the answer; [`PresenceView::into_owned`] detaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView<'a> {
    pub user_id: UserId,
    pub kind: PresenceType,
    pub last_location: Cow<'a, str>,
    pub place: Option<PlaceInfo>,
    pub game_id: Option<Uuid>,
    /// `None` for a user never seen.
    pub last_online: Option<WallMillis>,
}

impl PresenceView<'_> {
    pub fn never_seen(user_id: UserId) -> Self {
        Self {
            user_id,
            kind: PresenceType::Offline,
            last_location: Cow::Borrowed(""),
            place: None,
            game_id: None,
            last_online: None,
        }
    }

    pub fn into_owned(self) -> PresenceView<'static> {
        PresenceView {
            last_location: Cow::Owned(self.last_location.into_owned()),
            ..self
        }
    }
}

/// One user as a snapshot keeps it: what a lookup returns, and for a present user its
/// session and deadline as wall-clock time, so that it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedUser<'a> {
    pub user_id: UserId,
    pub last_online: WallMillis,
    pub last_location: Cow<'a, str>,
    /// The app session; `None` when it has none live (an Offline user, or one only in games).
    pub live: Option<SavedSession>,
    /// Its live game-server sessions (CONTRACT section 10); empty for most users.
    pub games: Vec<SavedGame<'a>>,
}

/// A live game-server session as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedGame<'a> {
    pub game: Uuid,
    pub place: PlaceInfo,
    pub location: Cow<'a, str>,
    pub joined: u32,
    /// Live until this wall-clock time.
    pub deadline: WallMillis,
}

/// A live game server as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedServer<'a> {
    pub game: Uuid,
    pub place: PlaceInfo,
    pub location: Cow<'a, str>,
    /// Live until this wall-clock time.
    pub deadline: WallMillis,
    pub players: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    /// Present until this wall-clock time.
    pub deadline: WallMillis,
    pub session: Session,
}

/// When a heartbeat arrived, on both clocks (see `time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Mono,
    pub wall: WallMillis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PlaceSettings;

    fn catalog() -> PlaceCatalog {
        PlaceCatalog::new(&[PlaceSettings {
            id: 1818,
            universe_id: 13058,
            root_place_id: 1818,
            name: "Classic: Crossroads".into(),
        }])
    }

    fn present(hb: Heartbeat) -> (String, Session) {
        match hb {
            Heartbeat::Present { location, session } => (location.as_str().to_owned(), session),
            Heartbeat::Disconnect => panic!("expected a present heartbeat"),
        }
    }

    #[test]
    fn user_ids_must_be_positive_int64() {
        assert_eq!(UserId::new(0), None);
        assert!(UserId::new(1).is_some());
        assert!(UserId::new(i64::MAX as u64).is_some());
        assert_eq!(UserId::new(i64::MAX as u64 + 1), None);
        assert_eq!(UserId::parse("42").map(UserId::get), Some(42));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "0",
            "9223372036854775808",
            "1e3",
        ] {
            assert_eq!(UserId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_empty_report_is_online_on_the_website() {
        let (loc, s) = present(Heartbeat::from_report(AppReport::default(), &catalog()));
        assert_eq!(loc, "Website");
        assert_eq!(s.kind, PresenceType::Online);
        assert_eq!(s.place, None);
    }

    #[test]
    fn a_location_without_place_is_online_there() {
        let r = AppReport {
            location: Some("Xbox"),
            ..Default::default()
        };
        let (loc, s) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!((loc.as_str(), s.kind), ("Xbox", PresenceType::Online));
    }

    #[test]
    fn a_known_place_is_in_game_under_the_catalog_name() {
        let r = AppReport {
            location: Some("ignored"),
            place_id: Some(1818),
            game_id: Some(Uuid::nil()),
            ..Default::default()
        };
        let (loc, s) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!(loc, "Classic: Crossroads");
        assert_eq!(s.kind, PresenceType::InGame);
        assert_eq!(
            s.place,
            Some(PlaceInfo {
                place_id: 1818,
                root_place_id: 1818,
                universe_id: NonZeroI64::new(13058)
            })
        );
        assert_eq!(s.game_id, Some(Uuid::nil()));
    }

    #[test]
    fn an_unknown_place_is_in_game_at_the_given_location_or_playing() {
        let r = AppReport {
            location: Some("Obby"),
            place_id: Some(77),
            ..Default::default()
        };
        let (loc, s) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!(loc, "Obby");
        assert_eq!(
            s.place,
            Some(PlaceInfo {
                place_id: 77,
                root_place_id: 77,
                universe_id: None
            })
        );
        let r = AppReport {
            place_id: Some(77),
            universe_id: Some(9),
            ..Default::default()
        };
        let (loc, s) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!(loc, "Playing");
        assert_eq!(s.place.and_then(|p| p.universe_id), NonZeroI64::new(9));
    }

    #[test]
    fn studio_in_any_case_wins_over_the_place_and_drops_the_game_id() {
        let r = AppReport {
            location: Some("sTuDiO session"),
            place_id: Some(1818),
            game_id: Some(Uuid::nil()),
            ..Default::default()
        };
        let (loc, s) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!(loc, "Studio - Classic: Crossroads");
        assert_eq!(s.kind, PresenceType::InStudio);
        assert_eq!(s.game_id, None);
        assert!(s.place.is_some());

        let r = AppReport {
            location: Some("Studio"),
            place_id: Some(5),
            ..Default::default()
        };
        let (loc, _) = present(Heartbeat::from_report(r, &catalog()));
        assert_eq!(loc, "Studio");
    }

    #[test]
    fn a_zero_or_negative_place_means_none() {
        for id in [0, -5] {
            let r = AppReport {
                place_id: Some(id),
                ..Default::default()
            };
            let (_, s) = present(Heartbeat::from_report(r, &catalog()));
            assert_eq!(s.kind, PresenceType::Online);
        }
    }

    #[test]
    fn disconnect_wins_over_everything_else() {
        let r = AppReport {
            disconnect: true,
            place_id: Some(1818),
            ..Default::default()
        };
        assert_eq!(Heartbeat::from_report(r, &catalog()), Heartbeat::Disconnect);
    }
}
