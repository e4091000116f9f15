//! Privacy (CONTRACT section 11): a user's settings, the bodies that change settings and
//! friendships, and the one decision of what a viewer is shown of a user.
//!
//! Pure values and functions: no store, no HTTP, no clock. Every time is passed in as
//! `now`, so that one request decides with one instant, whichever backend's clock gave it.
//!
//! - [`Settings`]: what is stored per user, 16 bytes; [`SettingsView`]: the JSON answer of
//!   `GET`/`PATCH /v1/presence/settings`.
//! - [`SettingsPatch`] → [`SettingsPatch::check`] → [`CheckedPatch`] → [`apply`]: a change
//!   of settings, refused whole or applied whole.
//! - [`FriendshipsBody`] and [`FriendListBody`]: the platform's friendship bodies, checked
//!   into [`FriendshipChanges`] and [`FriendList`].
//! - [`sight`]: what a [`Viewer`] is shown of a user, as a [`Sight`];
//!   [`Sight::entry`] turns the user's real entry into the one the viewer gets.

use std::fmt;

use chrono::DateTime;
use serde::de::Deserializer;
use serde::ser::{SerializeStruct as _, SerializeTuple as _, Serializer};
use serde::{Deserialize, Serialize};

use super::model::{IdItem, PresenceType, PresenceView, UserId};
use super::time::WallMillis;

// ---------------------------------------------------------------------------------------
// Visibility

/// Who may see a user at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Every viewer (the default).
    #[default]
    Everyone,
    /// Signed-in friends only.
    Friends,
    /// No one but the user itself and `read` keys.
    Nobody,
}

impl Visibility {
    /// The wire name: `everyone`, `friends` or `nobody`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Friends => "friends",
            Self::Nobody => "nobody",
        }
    }

    /// The visibility named exactly by `text` (lower case, no spaces); `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "everyone" => Some(Self::Everyone),
            "friends" => Some(Self::Friends),
            "nobody" => Some(Self::Nobody),
            _ => None,
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Everyone => 0,
            Self::Friends => 1,
            Self::Nobody => 2,
        }
    }

    /// Inverse of [`Visibility::code`]. Only codes written by `code` are ever read back;
    /// anything else would mean the most private setting rather than the least.
    fn from_code(code: u64) -> Self {
        match code {
            0 => Self::Everyone,
            1 => Self::Friends,
            _ => Self::Nobody,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Settings

/// The earliest time settings hold: the Unix epoch. Earlier times are kept as this one.
pub const EARLIEST_TIME: WallMillis = WallMillis(0);

/// The latest time settings hold: `9999-12-31T23:59:59.999Z`, the last instant RFC 3339's
/// four-digit years can write. Later times are kept as this one.
pub const LATEST_TIME: WallMillis = WallMillis(253_402_300_799_999);

/// Bits of a kept time: every time from [`EARLIEST_TIME`] to [`LATEST_TIME`] fits.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const _: () = assert!(LATEST_TIME.0 >= 0 && (LATEST_TIME.0 as u64) <= TIME_MASK);

/// In `Settings::head`: an end time is set in the low bits.
const HAS_UNTIL: u64 = 1 << TIME_BITS;
/// In `Settings::head`: the user is invisible (until the end time, if one is set).
const INVISIBLE: u64 = 1 << (TIME_BITS + 1);
/// In `Settings::head`: the first of the two bits of the visibility's code.
const VISIBILITY_SHIFT: u32 = TIME_BITS + 2;
/// In `Settings::frozen`: a frozen `lastOnline` is set in the low bits.
const HAS_FROZEN: u64 = 1 << TIME_BITS;

/// `t` brought into [`EARLIEST_TIME`]`..=`[`LATEST_TIME`], as the low bits of a word.
fn pack_time(t: WallMillis) -> u64 {
    // Non-negative and below 2^48 after the clamp: the conversion cannot fail.
    u64::try_from(t.0.clamp(EARLIEST_TIME.0, LATEST_TIME.0)).unwrap_or(0)
}

/// The time in the low bits of `word`.
fn unpack_time(word: u64) -> WallMillis {
    // At most 2^48 - 1: always an i64.
    WallMillis(i64::try_from(word & TIME_MASK).unwrap_or(0))
}

/// An invisibility as stored: its end and the `lastOnline` others see while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Invisibility {
    /// When it ends by itself (`invisibleUntil`); `None`: when it is turned off.
    pub until: Option<WallMillis>,
    /// The `lastOnline` others are shown meanwhile: the user's own when invisibility began;
    /// `None` when the user had never been seen then.
    pub last_online: Option<WallMillis>,
}

impl Invisibility {
    /// Whether it still holds at `now`: it ends exactly at `until`.
    pub fn active_at(&self, now: WallMillis) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// One user's privacy settings as stored: a visibility and, while the user is invisible,
/// the invisibility's end and frozen `lastOnline`.
///
/// Two words, 16 bytes, so that a store can keep one beside every user. Times are kept
/// from [`EARLIEST_TIME`] to [`LATEST_TIME`]: [`Settings::new`] brings anything outside
/// that range to its nearest end, so no value of this type holds one.
///
/// - `head`: bits 0-47 the end time (ms since the epoch, 0 when none), bit 48 set when
///   there is an end time, bit 49 set while invisible, bits 50-51 the visibility (0
///   everyone, 1 friends, 2 nobody), bits 52-63 zero.
/// - `frozen`: bits 0-47 the frozen `lastOnline`, bit 48 set when there is one, bits
///   49-63 zero.
///
/// A user who is not invisible keeps no end time and no frozen `lastOnline` (both words
/// zero but for the visibility), so equal settings are equal values and the default is
/// all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Settings {
    head: u64,
    frozen: u64,
}

impl Settings {
    /// Settings with `visibility` and, when given, that invisibility (times out of range
    /// are kept as the nearest of [`EARLIEST_TIME`] and [`LATEST_TIME`]).
    pub fn new(visibility: Visibility, invisibility: Option<Invisibility>) -> Self {
        let mut head = visibility.code() << VISIBILITY_SHIFT;
        let mut frozen = 0;
        if let Some(invisibility) = invisibility {
            head |= INVISIBLE;
            if let Some(until) = invisibility.until {
                head |= HAS_UNTIL | pack_time(until);
            }
            if let Some(last_online) = invisibility.last_online {
                frozen = HAS_FROZEN | pack_time(last_online);
            }
        }
        Self { head, frozen }
    }

    /// Who may see the user.
    pub fn visibility(self) -> Visibility {
        Visibility::from_code((self.head >> VISIBILITY_SHIFT) & 0b11)
    }

    /// The invisibility as stored, whether or not its end has passed.
    pub fn invisibility(self) -> Option<Invisibility> {
        if self.head & INVISIBLE == 0 {
            return None;
        }
        Some(Invisibility {
            until: (self.head & HAS_UNTIL != 0).then(|| unpack_time(self.head)),
            last_online: (self.frozen & HAS_FROZEN != 0).then(|| unpack_time(self.frozen)),
        })
    }

    /// The invisibility that holds at `now`, if any.
    pub fn invisibility_at(self, now: WallMillis) -> Option<Invisibility> {
        self.invisibility().filter(|i| i.active_at(now))
    }

    /// Whether the user is invisible at `now`: from the moment it was turned on until it is
    /// turned off, or until `invisibleUntil` (exclusive).
    pub fn invisible_at(self, now: WallMillis) -> bool {
        self.invisibility_at(now).is_some()
    }

    /// The same settings without an invisibility that has ended by `now`: what a store may
    /// keep instead, and the default again for a user who changed nothing else.
    pub fn as_of(self, now: WallMillis) -> Self {
        Self::new(self.visibility(), self.invisibility_at(now))
    }

    /// Whether these are the default settings: visible to everyone, not invisible. (An
    /// invisibility whose end has passed still counts; see [`Settings::as_of`].)
    pub fn is_default(self) -> bool {
        self == Self::default()
    }

    /// The settings as the user is told them at `now`.
    pub fn view(self, now: WallMillis) -> SettingsView {
        let invisibility = self.invisibility_at(now);
        SettingsView {
            visibility: self.visibility(),
            invisible: invisibility.is_some(),
            invisible_until: invisibility.and_then(|i| i.until),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("visibility", &self.visibility())
            .field("invisibility", &self.invisibility())
            .finish()
    }
}

/// The settings as `GET` and `PATCH /v1/presence/settings` answer them, at one instant:
/// `{"visibility":"everyone","invisible":false,"invisibleUntil":null}`, keys in that order.
/// Made by [`Settings::view`]; an invisibility whose end has passed is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsView {
    visibility: Visibility,
    invisible: bool,
    invisible_until: Option<WallMillis>,
}

impl SettingsView {
    /// `visibility`.
    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// `invisible`.
    pub fn invisible(&self) -> bool {
        self.invisible
    }

    /// `invisibleUntil`: `None` when not invisible, or invisible until turned off.
    pub fn invisible_until(&self) -> Option<WallMillis> {
        self.invisible_until
    }
}

impl Serialize for SettingsView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SettingsView", 3)?;
        s.serialize_field("visibility", &self.visibility)?;
        s.serialize_field("invisible", &self.invisible)?;
        s.serialize_field("invisibleUntil", &self.invisible_until.and_then(time_text))?;
        s.end()
    }
}

/// `t` as the API writes every time ([`WallMillis::write_rfc3339`]). `None` only for a
/// time chrono cannot hold, which settings never keep.
fn time_text(t: WallMillis) -> Option<String> {
    let mut out = Vec::with_capacity(24);
    t.write_rfc3339(&mut out)
        .then(|| String::from_utf8(out).ok())
        .flatten()
}

/// The instant an RFC 3339 text names, in milliseconds since the epoch, rounded up to the
/// next whole millisecond: a user invisible "until" an instant between two milliseconds is
/// still invisible at the first of them. `None` when chrono does not read it as RFC 3339.
fn parse_time(text: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    let partial = t.timestamp_subsec_nanos() % 1_000_000 != 0;
    Some(t.timestamp_millis().saturating_add(i64::from(partial)))
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why a privacy body is refused. Every refusal is a 400 answer; nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    /// `visibility` is not one of the three names.
    #[error(r#"visibility must be "everyone", "friends" or "nobody""#)]
    UnknownVisibility,
    /// `invisibleUntil` without `"invisible": true` in the same body.
    #[error(r#"invisibleUntil is accepted only with "invisible": true in the same body"#)]
    UntilWithoutInvisible,
    /// `invisibleUntil` is not an RFC 3339 date and time.
    #[error("invisibleUntil must be an RFC 3339 date and time, such as 2030-01-31T18:00:00Z")]
    UntilNotATime,
    /// `invisibleUntil` is now or earlier.
    #[error("invisibleUntil must be later than now")]
    UntilNotInFuture,
    /// `invisibleUntil` is after [`LATEST_TIME`] (possible only with a negative offset).
    #[error("invisibleUntil must be no later than 9999-12-31T23:59:59.999Z")]
    UntilTooLate,
    /// A friend list body without `userIds` (or with `null`).
    #[error("userIds is required; [] removes every friend")]
    MissingUserIds,
    /// An id that is not a positive int64.
    #[error("every user id must be a positive int64")]
    InvalidUserId,
    /// A friend pair of one user with itself.
    #[error("a friend pair must name two different users")]
    SelfPair,
    /// A user's own id in its friend list.
    #[error("a user cannot be its own friend")]
    OwnId,
    /// More pairs in one call than [`MAX_PAIRS_PER_CALL`].
    #[error("at most {max} friend pairs per call, adds and removes together")]
    TooManyPairs {
        /// The bound that was exceeded.
        max: usize,
    },
    /// More ids in a friend list than the bound the caller gave.
    #[error("at most {max} user ids in a friend list")]
    TooManyUserIds {
        /// The bound that was exceeded.
        max: usize,
    },
}

impl PrivacyError {
    /// The contract's error code: 0 for a bad body, 1 for a bad id, 2 for too many.
    pub fn code(&self) -> u8 {
        match self {
            Self::UnknownVisibility
            | Self::UntilWithoutInvisible
            | Self::UntilNotATime
            | Self::UntilNotInFuture
            | Self::UntilTooLate
            | Self::MissingUserIds => 0,
            Self::InvalidUserId | Self::SelfPair | Self::OwnId => 1,
            Self::TooManyPairs { .. } | Self::TooManyUserIds { .. } => 2,
        }
    }

    /// The message the contract's table gives for that code. The specific reason is this
    /// error's `Display`, for logs.
    pub fn message(&self) -> &'static str {
        match self.code() {
            0 => "BadRequest",
            1 => "Invalid user id.",
            _ => "Too many User Ids being sent in the request.",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Changing settings

/// The body of `PATCH /v1/presence/settings` and `PUT /v1/users/{userId}/presence-settings`
/// as sent, before [`SettingsPatch::check`].
///
/// Read like the server's other bodies: every field is optional, `null` is the same as an
/// absent field, unknown fields are ignored, and a field of the wrong type (such as
/// `"invisible": "yes"`) fails deserialization (a 400 code 0 for the caller to answer).
/// In a form body, an empty value (`invisibleUntil=`) is absent too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    /// The new visibility's name, checked by [`SettingsPatch::check`].
    pub visibility: Option<String>,
    /// `true`: invisible from now; `false`: visible again.
    pub invisible: Option<bool>,
    /// The end of the invisibility turned on in the same body, as RFC 3339 text.
    pub invisible_until: Option<String>,
}

/// A change of invisibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvisibleChange {
    /// `"invisible": false`: visible again; any end time is dropped.
    Off,
    /// `"invisible": true`: invisible until `until`, or until turned off when `None`
    /// (replacing an earlier end time).
    On {
        /// The end, after the `now` the patch was checked at.
        until: Option<WallMillis>,
    },
}

/// A settings change that passed [`SettingsPatch::check`]; [`apply`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckedPatch {
    visibility: Option<Visibility>,
    invisible: Option<InvisibleChange>,
}

impl CheckedPatch {
    /// The new visibility, if the body names one.
    pub fn visibility(&self) -> Option<Visibility> {
        self.visibility
    }

    /// The change of invisibility, if the body makes one.
    pub fn invisible(&self) -> Option<InvisibleChange> {
        self.invisible
    }
}

impl SettingsPatch {
    /// Checks the body at `now`: a known visibility, and an `invisibleUntil` only beside
    /// `"invisible": true`, readable as RFC 3339, later than `now` and no later than
    /// [`LATEST_TIME`]. Every refusal is code 0.
    pub fn check(&self, now: WallMillis) -> Result<CheckedPatch, PrivacyError> {
        let visibility = match &self.visibility {
            Some(name) => Some(Visibility::parse(name).ok_or(PrivacyError::UnknownVisibility)?),
            None => None,
        };
        let until = match &self.invisible_until {
            None => None,
            Some(_) if self.invisible != Some(true) => {
                return Err(PrivacyError::UntilWithoutInvisible)
            }
            Some(text) => {
                let until = parse_time(text).ok_or(PrivacyError::UntilNotATime)?;
                if until <= now.0 {
                    return Err(PrivacyError::UntilNotInFuture);
                }
                if until > LATEST_TIME.0 {
                    return Err(PrivacyError::UntilTooLate);
                }
                Some(WallMillis(until))
            }
        };
        let invisible = self.invisible.map(|on| match on {
            true => InvisibleChange::On { until },
            false => InvisibleChange::Off,
        });
        Ok(CheckedPatch {
            visibility,
            invisible,
        })
    }
}

/// The settings after `patch`, at `now`.
///
/// - A visibility in the patch replaces the old one.
/// - `"invisible": true` makes the user invisible until the patch's end, or until turned
///   off when it has none. When that begins an invisibility (the user was not invisible at
///   `now`), others are shown `current_last_online`, the user's `lastOnline` at `now`, for
///   as long as it lasts; when the user already was, the frozen value is kept and only the
///   end changes.
/// - `"invisible": false` ends the invisibility and its end time.
/// - An invisibility that had ended by `now` is dropped, and so is one the patch ends at or
///   before `now` (possible only when `now` is later than the instant it was checked at).
pub fn apply(
    settings: Settings,
    patch: &CheckedPatch,
    now: WallMillis,
    current_last_online: Option<WallMillis>,
) -> Settings {
    let visibility = patch.visibility.unwrap_or(settings.visibility());
    let ongoing = settings.invisibility_at(now);
    let invisibility = match patch.invisible {
        None => ongoing,
        Some(InvisibleChange::Off) => None,
        Some(InvisibleChange::On { until }) => Some(Invisibility {
            until,
            last_online: match ongoing {
                Some(ongoing) => ongoing.last_online,
                None => current_last_online,
            },
        }),
    };
    Settings::new(visibility, invisibility).as_of(now)
}

// ---------------------------------------------------------------------------------------
// Friendships

/// At most this many pairs in one `POST /v1/friendships`, adds and removes together.
pub const MAX_PAIRS_PER_CALL: usize = 1000;

/// Two different users who are, or are to be, friends. Friendship is symmetric: `[1, 2]`
/// and `[2, 1]` are the same friendship ([`FriendPair::key`]); the pair keeps the order it
/// was written in, for answers that list it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FriendPair {
    first: UserId,
    second: UserId,
}

impl FriendPair {
    /// The pair of `first` and `second`; `None` when they are the same user.
    pub fn new(first: UserId, second: UserId) -> Option<Self> {
        (first != second).then_some(Self { first, second })
    }

    /// The two users, as written.
    pub fn users(self) -> (UserId, UserId) {
        (self.first, self.second)
    }

    /// The two users, lower id first: equal for both orders of one friendship.
    pub fn key(self) -> (UserId, UserId) {
        (self.first.min(self.second), self.first.max(self.second))
    }
}

/// `[first, second]`, as the answer's `skipped` lists a pair.
impl Serialize for FriendPair {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.first.get())?;
        t.serialize_element(&self.second.get())?;
        t.end()
    }
}

/// A list of pairs; `null` is the empty list. A pair is an array of exactly two elements
/// (anything else fails deserialization); each element is read as an [`IdItem`].
fn pair_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[Option<UserId>; 2]>, D::Error> {
    let pairs = Option::<Vec<[IdItem; 2]>>::deserialize(d)?.unwrap_or_default();
    Ok(pairs.into_iter().map(|[a, b]| [a.id(), b.id()]).collect())
}

/// A list of ids that must be present; `null` is absent.
fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Option<UserId>>>, D::Error> {
    let ids = Option::<Vec<IdItem>>::deserialize(d)?;
    Ok(ids.map(|ids| ids.into_iter().map(IdItem::id).collect()))
}

/// The body of `POST /v1/friendships` as sent: `{"add": [[1, 2]], "remove": [[4, 5]]}`.
///
/// Either list may be absent or `null` (none); unknown fields are ignored. A pair that is
/// not an array of two elements fails deserialization (code 0). An element that is not a
/// positive int64 is kept as `None` here and refused by [`FriendshipsBody::check`] (code 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FriendshipsBody {
    /// Friendships to make, after the removals.
    #[serde(default, deserialize_with = "pair_list")]
    pub add: Vec<[Option<UserId>; 2]>,
    /// Friendships to end, first.
    #[serde(default, deserialize_with = "pair_list")]
    pub remove: Vec<[Option<UserId>; 2]>,
}

/// A checked `POST /v1/friendships`: the removals, then the additions, each friendship
/// once, in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FriendshipChanges {
    remove: Vec<FriendPair>,
    add: Vec<FriendPair>,
}

impl FriendshipChanges {
    /// The friendships to end, applied first.
    pub fn remove(&self) -> &[FriendPair] {
        &self.remove
    }

    /// The friendships to make, applied after the removals: a pair in both lists ends as
    /// friends (unless `privacy.max_friends` skips it).
    pub fn add(&self) -> &[FriendPair] {
        &self.add
    }
}

impl FriendshipsBody {
    /// Checks the whole body before anything is applied: more than [`MAX_PAIRS_PER_CALL`]
    /// pairs, adds and removes counted together before de-duplication, is code 2; then a
    /// bad id or a user paired with itself anywhere is code 1. A friendship named twice in
    /// one list, in either order, is kept once: adding a friendship twice, or removing it
    /// twice, is the same as doing it once.
    pub fn check(&self) -> Result<FriendshipChanges, PrivacyError> {
        if self.add.len().saturating_add(self.remove.len()) > MAX_PAIRS_PER_CALL {
            return Err(PrivacyError::TooManyPairs {
                max: MAX_PAIRS_PER_CALL,
            });
        }
        Ok(FriendshipChanges {
            remove: checked_pairs(&self.remove)?,
            add: checked_pairs(&self.add)?,
        })
    }
}

/// The pairs, each friendship once (first appearance), or the first refusal.
fn checked_pairs(raw: &[[Option<UserId>; 2]]) -> Result<Vec<FriendPair>, PrivacyError> {
    let mut pairs: Vec<FriendPair> = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        raw.len(),
        foldhash::fast::RandomState::default(),
    );
    for &[first, second] in raw {
        let (Some(first), Some(second)) = (first, second) else {
            return Err(PrivacyError::InvalidUserId);
        };
        let pair = FriendPair::new(first, second).ok_or(PrivacyError::SelfPair)?;
        if seen.insert(pair.key()) {
            pairs.push(pair);
        }
    }
    Ok(pairs)
}

/// The body of `PUT /v1/users/{userId}/friends` as sent: `{"userIds": [...]}`, the user's
/// whole list. `userIds` is required, like a game server's `players`: absent or `null` is
/// refused (code 0) rather than read as "no friends"; `[]` is no friends. Unknown fields
/// are ignored; elements are read as in [`FriendshipsBody`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FriendListBody {
    /// The ids; `None` inside for an element that is not a positive int64.
    #[serde(rename = "userIds", default, deserialize_with = "id_list")]
    pub user_ids: Option<Vec<Option<UserId>>>,
}

/// A checked friend list: distinct ids, ascending, without its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FriendList(Vec<UserId>);

impl FriendList {
    /// The ids, ascending, each once.
    pub fn ids(&self) -> &[UserId] {
        &self.0
    }

    /// The ids, ascending, each once.
    pub fn into_ids(self) -> Vec<UserId> {
        self.0
    }
}

impl FriendListBody {
    /// Checks the list of `owner`'s friends: absent is code 0; more than `max` ids (counted
    /// before de-duplication) is code 2; a bad id or `owner` itself is code 1. Callers pass
    /// `privacy.max_friends` as `max`, so that every list a user may hold can be sent in one
    /// call and nothing longer is read. An id named twice is kept once.
    pub fn check(&self, owner: UserId, max: usize) -> Result<FriendList, PrivacyError> {
        let raw = self
            .user_ids
            .as_deref()
            .ok_or(PrivacyError::MissingUserIds)?;
        if raw.len() > max {
            return Err(PrivacyError::TooManyUserIds { max });
        }
        let mut ids = Vec::with_capacity(raw.len());
        for &id in raw {
            let id = id.ok_or(PrivacyError::InvalidUserId)?;
            if id == owner {
                return Err(PrivacyError::OwnId);
            }
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(FriendList(ids))
    }
}

// ---------------------------------------------------------------------------------------
// Who sees whom

/// Who is looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viewer {
    /// No credential, or one that is invalid or expired, or a service key without `read`.
    Anonymous,
    /// A signed-in user.
    User(UserId),
    /// A service key with the `read` scope.
    Reader,
}

/// What a viewer is shown of a user: the outcome of [`sight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// The viewer is the user: the real entry. `invisible`: the user is invisible now, so
    /// that its type is written `Invisible` while it is present
    /// ([`Sight::shows_invisible_type`]).
    Own {
        /// The user is invisible at the instant decided for.
        invisible: bool,
    },
    /// The real entry; with `show_last_online` false, with the `lastOnline` of a user never
    /// seen.
    Real {
        /// Whether the real `lastOnline` is shown.
        show_last_online: bool,
    },
    /// Exactly the entry of a user never seen: nothing tells whether the user exists.
    Hidden,
    /// Offline, `lastLocation` `""`, no place or game, and this `lastOnline` (`None`: that
    /// of a user never seen).
    Invisible {
        /// The `lastOnline` shown.
        last_online: Option<WallMillis>,
    },
}

/// What `viewer` is shown of user `target`, whose settings are `settings`, at `now`, with
/// `privacy.show_last_online` given as `show_last_online`. The first rule that applies
/// decides:
///
/// 1. The viewer is the target: [`Sight::Own`].
/// 2. The viewer is a `read` key: the real entry.
/// 3. Visibility `nobody`, or `friends` and the viewer is not a signed-in friend:
///    [`Sight::Hidden`], invisible or not.
/// 4. The target is invisible: [`Sight::Invisible`] with the frozen `lastOnline`.
/// 5. Otherwise the real entry.
///
/// In 4 and 5, `show_last_online` false shows the never-seen `lastOnline` instead.
///
/// `is_friend` is asked, with the viewer's id, only under visibility `friends` for a
/// signed-in viewer other than the target: a friendship lookup costs nothing otherwise.
pub fn sight(
    viewer: Viewer,
    target: UserId,
    settings: Settings,
    now: WallMillis,
    show_last_online: bool,
    is_friend: impl FnOnce(UserId) -> bool,
) -> Sight {
    match viewer {
        Viewer::User(id) if id == target => {
            return Sight::Own {
                invisible: settings.invisible_at(now),
            }
        }
        Viewer::Reader => {
            return Sight::Real {
                show_last_online: true,
            }
        }
        Viewer::User(_) | Viewer::Anonymous => {}
    }
    let visible = match settings.visibility() {
        Visibility::Everyone => true,
        Visibility::Nobody => false,
        Visibility::Friends => match viewer {
            Viewer::User(id) => is_friend(id),
            Viewer::Anonymous | Viewer::Reader => false,
        },
    };
    if !visible {
        return Sight::Hidden;
    }
    match settings.invisibility_at(now) {
        Some(invisibility) => Sight::Invisible {
            last_online: invisibility.last_online.filter(|_| show_last_online),
        },
        None => Sight::Real { show_last_online },
    }
}

impl Sight {
    /// The entry the viewer gets, from the user's real entry `real`. The `Invisible` type
    /// of [`Sight::Own`] is not expressed here: see [`Sight::shows_invisible_type`].
    pub fn entry(self, real: PresenceView<'_>) -> PresenceView<'_> {
        match self {
            Self::Own { .. }
            | Self::Real {
                show_last_online: true,
            } => real,
            Self::Real {
                show_last_online: false,
            } => PresenceView {
                last_online: None,
                ..real
            },
            Self::Hidden => PresenceView::never_seen(real.user_id),
            Self::Invisible { last_online } => PresenceView {
                last_online,
                ..PresenceView::never_seen(real.user_id)
            },
        }
    }

    /// Whether the entry's type is written `Invisible` (integer 4) instead of the real one:
    /// for the user itself, while it is invisible and present (its real entry is not
    /// Offline).
    pub fn shows_invisible_type(self, real: &PresenceView<'_>) -> bool {
        matches!(self, Self::Own { invisible: true }) && real.kind != PresenceType::Offline
    }
}

/// A user as read for a viewer: its real entry, its settings, and whether the viewer is a
/// signed-in friend of it (always `false` for a viewer that is not a signed-in user), at
/// the instant `now` the read was made.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'v, 'a> {
    pub view: &'v PresenceView<'a>,
    pub settings: Settings,
    pub friend: bool,
    pub now: WallMillis,
}

impl Seen<'_, '_> {
    /// What `viewer` is shown of this user: [`sight`] with the read's own answers.
    pub fn sight(&self, viewer: Viewer, show_last_online: bool) -> Sight {
        let friend = self.friend;
        sight(
            viewer,
            self.view.user_id,
            self.settings,
            self.now,
            show_last_online,
            |_| friend,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::test_rng::{seed_from_env, XorShift};
    use std::borrow::Cow;
    use std::cell::Cell;
    use std::num::NonZeroI64;

    use uuid::Uuid;

    use super::*;
    use crate::presence::model::PlaceInfo;

    const NOW: WallMillis = WallMillis(1_795_652_111_123); // 2026-11-26T00:15:11.123Z

    fn id(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn at(ms: i64) -> WallMillis {
        WallMillis(ms)
    }

    fn invisible(until: Option<i64>, last_online: Option<i64>) -> Option<Invisibility> {
        Some(Invisibility {
            until: until.map(WallMillis),
            last_online: last_online.map(WallMillis),
        })
    }

    fn patch(json: &str) -> SettingsPatch {
        serde_json::from_str(json).unwrap()
    }

    fn checked(json: &str, now: WallMillis) -> CheckedPatch {
        patch(json).check(now).unwrap()
    }

    fn json(view: SettingsView) -> String {
        serde_json::to_string(&view).unwrap()
    }

    fn in_game(user: u64, last_online: Option<i64>) -> PresenceView<'static> {
        PresenceView {
            user_id: id(user),
            kind: PresenceType::InGame,
            last_location: Cow::Borrowed("Classic: Crossroads"),
            place: Some(PlaceInfo {
                place_id: 1818,
                root_place_id: 1818,
                universe_id: NonZeroI64::new(13058),
            }),
            game_id: Some(Uuid::from_u128(7)),
            last_online: last_online.map(WallMillis),
        }
    }

    // --- Settings: size, packing, default ---------------------------------------------

    #[test]
    fn settings_are_copy_and_at_most_16_bytes() {
        fn copy<T: Copy>(t: T) -> (T, T) {
            (t, t)
        }
        assert!(std::mem::size_of::<Settings>() <= 16);
        let (a, b) = copy(Settings::default());
        assert_eq!(a, b);
    }

    #[test]
    fn the_default_is_everyone_and_not_invisible() {
        let s = Settings::default();
        assert_eq!(s.visibility(), Visibility::Everyone);
        assert_eq!(s.invisibility(), None);
        assert!(!s.invisible_at(NOW));
        assert!(s.is_default());
        assert_eq!(Settings::new(Visibility::Everyone, None), s);
        assert!(!Settings::new(Visibility::Friends, None).is_default());
        assert!(!Settings::new(Visibility::Everyone, invisible(None, None)).is_default());
    }

    #[test]
    fn every_combination_of_fields_reads_back_as_written() {
        let times = [None, Some(0), Some(1), Some(NOW.0), Some(LATEST_TIME.0)];
        for visibility in [
            Visibility::Everyone,
            Visibility::Friends,
            Visibility::Nobody,
        ] {
            assert_eq!(Settings::new(visibility, None).visibility(), visibility);
            assert_eq!(Settings::new(visibility, None).invisibility(), None);
            for until in times {
                for last_online in times {
                    let i = invisible(until, last_online);
                    let s = Settings::new(visibility, i);
                    assert_eq!((s.visibility(), s.invisibility()), (visibility, i), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn times_out_of_range_are_kept_as_the_nearest_end_of_the_range() {
        for (given, kept) in [
            (i64::MIN, 0),
            (-1, 0),
            (LATEST_TIME.0 + 1, LATEST_TIME.0),
            (1 << 48, LATEST_TIME.0),
            (i64::MAX, LATEST_TIME.0),
        ] {
            let s = Settings::new(Visibility::Nobody, invisible(Some(given), Some(given)));
            assert_eq!(s.visibility(), Visibility::Nobody, "{given}");
            assert_eq!(
                s.invisibility(),
                invisible(Some(kept), Some(kept)),
                "{given}"
            );
        }
        // The visibility's bits are never disturbed by a time.
        let s = Settings::new(Visibility::Everyone, invisible(Some(i64::MAX), None));
        assert_eq!(s.visibility(), Visibility::Everyone);
    }

    #[test]
    fn invisibility_ends_exactly_at_its_end_time() {
        let s = Settings::new(Visibility::Everyone, invisible(Some(NOW.0), Some(5)));
        assert!(s.invisible_at(at(NOW.0 - 1)));
        assert!(!s.invisible_at(NOW));
        assert!(!s.invisible_at(at(NOW.0 + 1)));
        let forever = Settings::new(Visibility::Everyone, invisible(None, None));
        assert!(forever.invisible_at(at(i64::MAX)));
        assert!(forever.invisible_at(at(i64::MIN)));
    }

    #[test]
    fn as_of_drops_only_an_ended_invisibility() {
        let s = Settings::new(Visibility::Friends, invisible(Some(NOW.0), Some(5)));
        assert_eq!(s.as_of(at(NOW.0 - 1)), s);
        assert_eq!(s.as_of(NOW), Settings::new(Visibility::Friends, None));
        let e = Settings::new(Visibility::Everyone, invisible(Some(NOW.0), None));
        assert!(e.as_of(NOW).is_default());
    }

    // --- Visibility and the JSON view ---------------------------------------------------

    #[test]
    fn visibility_names_are_exact_and_lower_case() {
        for v in [
            Visibility::Everyone,
            Visibility::Friends,
            Visibility::Nobody,
        ] {
            assert_eq!(Visibility::parse(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
            let back: Visibility = serde_json::from_str(&format!("\"{}\"", v.as_str())).unwrap();
            assert_eq!(back, v);
        }
        for bad in ["Everyone", "FRIENDS", " nobody", "", "public", "friend"] {
            assert_eq!(Visibility::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_view_has_three_keys_in_order() {
        assert_eq!(
            json(Settings::default().view(NOW)),
            r#"{"visibility":"everyone","invisible":false,"invisibleUntil":null}"#
        );
        let s = Settings::new(Visibility::Friends, invisible(None, Some(5)));
        assert_eq!(
            json(s.view(NOW)),
            r#"{"visibility":"friends","invisible":true,"invisibleUntil":null}"#
        );
        let s = Settings::new(Visibility::Nobody, invisible(Some(NOW.0 + 1000), None));
        assert_eq!(
            json(s.view(NOW)),
            r#"{"visibility":"nobody","invisible":true,"invisibleUntil":"2026-11-26T00:15:12.123Z"}"#
        );
        let view = s.view(NOW);
        assert_eq!(view.visibility(), Visibility::Nobody);
        assert!(view.invisible());
        assert_eq!(view.invisible_until(), Some(at(NOW.0 + 1000)));
    }

    #[test]
    fn the_view_forgets_an_invisibility_once_its_end_has_come() {
        let s = Settings::new(Visibility::Friends, invisible(Some(NOW.0), Some(5)));
        assert!(s.view(at(NOW.0 - 1)).invisible());
        for now in [NOW, at(NOW.0 + 1), at(i64::MAX)] {
            assert_eq!(
                json(s.view(now)),
                r#"{"visibility":"friends","invisible":false,"invisibleUntil":null}"#
            );
        }
    }

    #[test]
    fn times_are_written_exactly_as_lookups_write_last_online() {
        use crate::api::json::presence_entry;
        use crate::config::PresenceTypeFormat;
        let mut rng = XorShift::new(0x7155_0001);
        let mut times = vec![0, 1, 999, 1000, 951_782_400_000, NOW.0, LATEST_TIME.0];
        times.extend((0..500).map(|_| rng.below(LATEST_TIME.0 as u64 + 1) as i64));
        for t in times {
            let s = Settings::new(Visibility::Everyone, invisible(Some(t), None));
            let ours = serde_json::to_value(s.view(at(-1))).unwrap()["invisibleUntil"].clone();
            let entry = PresenceView {
                last_online: Some(at(t)),
                ..PresenceView::never_seen(id(1))
            };
            let entry: serde_json::Value =
                serde_json::from_slice(&presence_entry(&entry, PresenceTypeFormat::String))
                    .unwrap();
            assert_eq!(ours, entry["lastOnline"], "{t}");
        }
    }

    // --- The settings body --------------------------------------------------------------

    #[test]
    fn a_settings_body_reads_any_subset_nulls_as_absent_and_ignores_unknown_fields() {
        assert_eq!(patch("{}"), SettingsPatch::default());
        assert_eq!(
            patch(r#"{"visibility":null,"invisible":null,"invisibleUntil":null,"x":[1]}"#),
            SettingsPatch::default()
        );
        assert_eq!(
            patch(r#"{"invisible":true,"invisibleUntil":"2030-01-01T00:00:00Z"}"#),
            SettingsPatch {
                visibility: None,
                invisible: Some(true),
                invisible_until: Some("2030-01-01T00:00:00Z".into()),
            }
        );
        assert_eq!(checked("{}", NOW), CheckedPatch::default());
    }

    #[test]
    fn a_settings_field_of_the_wrong_type_does_not_deserialize() {
        for bad in [
            r#"{"invisible":"true"}"#,
            r#"{"invisible":1}"#,
            r#"{"visibility":2}"#,
            r#"{"invisibleUntil":1795652111123}"#,
            r#"{"visibility":["friends"]}"#,
        ] {
            assert!(serde_json::from_str::<SettingsPatch>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_settings_form_body_reads_the_same_fields() {
        let form: SettingsPatch = serde_html_form::from_str(
            "visibility=friends&invisible=true&invisibleUntil=2030-01-01T00%3A00%3A00Z&x=1",
        )
        .unwrap();
        assert_eq!(
            form,
            patch(
                r#"{"visibility":"friends","invisible":true,"invisibleUntil":"2030-01-01T00:00:00Z"}"#
            )
        );
        let empty: SettingsPatch =
            serde_html_form::from_str("invisible=false&invisibleUntil=").unwrap();
        assert_eq!(empty, patch(r#"{"invisible":false}"#));
        assert!(serde_html_form::from_str::<SettingsPatch>("invisible=yes").is_err());
    }

    #[test]
    fn an_unknown_visibility_is_code_0() {
        for bad in ["Everyone", "public", "", "friends ", "NOBODY"] {
            let body = serde_json::json!({ "visibility": bad }).to_string();
            let e = patch(&body).check(NOW).unwrap_err();
            assert_eq!(e, PrivacyError::UnknownVisibility, "{bad:?}");
            assert_eq!((e.code(), e.message()), (0, "BadRequest"));
        }
        assert_eq!(
            checked(r#"{"visibility":"friends"}"#, NOW).visibility(),
            Some(Visibility::Friends)
        );
    }

    #[test]
    fn an_end_time_now_or_earlier_is_code_0() {
        for text in [
            "2026-11-26T00:15:11.123Z",      // exactly now
            "2026-11-26T01:15:11.123+01:00", // now, in another offset
            "2026-11-26T00:15:11.122Z",
            "2000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
        ] {
            let body = serde_json::json!({ "invisible": true, "invisibleUntil": text });
            let e = patch(&body.to_string()).check(NOW).unwrap_err();
            assert_eq!(e, PrivacyError::UntilNotInFuture, "{text}");
            assert_eq!(e.code(), 0);
        }
        let p = checked(
            r#"{"invisible":true,"invisibleUntil":"2026-11-26T00:15:11.124Z"}"#,
            NOW,
        );
        assert_eq!(
            p.invisible(),
            Some(InvisibleChange::On {
                until: Some(at(NOW.0 + 1))
            })
        );
    }

    #[test]
    fn an_end_time_between_two_milliseconds_rounds_up() {
        let p = checked(
            r#"{"invisible":true,"invisibleUntil":"2026-11-26T00:15:11.1230001Z"}"#,
            NOW,
        );
        assert_eq!(
            p.invisible(),
            Some(InvisibleChange::On {
                until: Some(at(NOW.0 + 1))
            })
        );
    }

    #[test]
    fn an_end_time_without_invisible_true_is_code_0() {
        for body in [
            r#"{"invisibleUntil":"2030-01-01T00:00:00Z"}"#,
            r#"{"invisible":false,"invisibleUntil":"2030-01-01T00:00:00Z"}"#,
            r#"{"invisible":null,"invisibleUntil":"2030-01-01T00:00:00Z"}"#,
            r#"{"visibility":"friends","invisibleUntil":"2030-01-01T00:00:00Z"}"#,
            // The structural rule comes first, whatever the text.
            r#"{"invisibleUntil":"yesterday"}"#,
        ] {
            let e = patch(body).check(NOW).unwrap_err();
            assert_eq!(e, PrivacyError::UntilWithoutInvisible, "{body}");
            assert_eq!(e.code(), 0);
        }
    }

    #[test]
    fn an_end_time_that_is_not_rfc_3339_is_code_0() {
        for text in [
            "",
            "tomorrow",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "1795652111123",
            "2030-13-01T00:00:00Z",
            "2030-01-01T25:00:00Z",
        ] {
            let body = serde_json::json!({ "invisible": true, "invisibleUntil": text });
            let e = patch(&body.to_string()).check(NOW).unwrap_err();
            assert_eq!(e, PrivacyError::UntilNotATime, "{text:?}");
            assert_eq!(e.code(), 0);
        }
    }

    #[test]
    fn an_end_time_beyond_the_last_writable_instant_is_code_0() {
        let body = r#"{"invisible":true,"invisibleUntil":"9999-12-31T23:59:59.999-01:00"}"#;
        assert_eq!(
            patch(body).check(NOW).unwrap_err(),
            PrivacyError::UntilTooLate
        );
        let body = r#"{"invisible":true,"invisibleUntil":"9999-12-31T23:59:59.999Z"}"#;
        assert_eq!(
            checked(body, NOW).invisible(),
            Some(InvisibleChange::On {
                until: Some(LATEST_TIME)
            })
        );
    }

    #[test]
    fn every_error_has_the_contracts_code_and_message_and_a_specific_reason() {
        use PrivacyError::*;
        let all = [
            (UnknownVisibility, 0),
            (UntilWithoutInvisible, 0),
            (UntilNotATime, 0),
            (UntilNotInFuture, 0),
            (UntilTooLate, 0),
            (MissingUserIds, 0),
            (InvalidUserId, 1),
            (SelfPair, 1),
            (OwnId, 1),
            (TooManyPairs { max: 1000 }, 2),
            (TooManyUserIds { max: 2000 }, 2),
        ];
        let messages = [
            "BadRequest",
            "Invalid user id.",
            "Too many User Ids being sent in the request.",
        ];
        let mut reasons = std::collections::HashSet::new();
        for (e, code) in all {
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.message(), messages[usize::from(code)], "{e:?}");
            assert!(reasons.insert(e.to_string()), "{e:?} shares its reason");
        }
    }

    // --- apply ------------------------------------------------------------------------

    #[test]
    fn invisibility_beginning_freezes_the_current_last_online() {
        let p = checked(r#"{"invisible":true}"#, NOW);
        let s = apply(Settings::default(), &p, NOW, Some(at(42)));
        assert_eq!(s.invisibility(), invisible(None, Some(42)));
        assert_eq!(s.visibility(), Visibility::Everyone);
        // A user never seen has no lastOnline to freeze.
        let s = apply(Settings::default(), &p, NOW, None);
        assert_eq!(s.invisibility(), invisible(None, None));
    }

    #[test]
    fn a_patch_during_an_invisibility_keeps_the_frozen_last_online() {
        let start = Settings::new(Visibility::Everyone, invisible(None, Some(42)));
        for body in [
            r#"{"invisible":true}"#,
            r#"{"visibility":"nobody"}"#,
            r#"{"invisible":true,"invisibleUntil":"2030-01-01T00:00:00Z"}"#,
            "{}",
        ] {
            let s = apply(start, &checked(body, NOW), NOW, Some(NOW));
            assert_eq!(
                s.invisibility().and_then(|i| i.last_online),
                Some(at(42)),
                "{body}"
            );
        }
    }

    #[test]
    fn invisible_false_ends_the_invisibility_and_its_end_time() {
        let start = Settings::new(Visibility::Friends, invisible(Some(NOW.0 + 10), Some(42)));
        let s = apply(
            start,
            &checked(r#"{"invisible":false}"#, NOW),
            NOW,
            Some(NOW),
        );
        assert_eq!(s, Settings::new(Visibility::Friends, None));
        let s = apply(
            start,
            &checked(r#"{"invisible":false,"visibility":"everyone"}"#, NOW),
            NOW,
            Some(NOW),
        );
        assert!(s.is_default());
    }

    #[test]
    fn invisible_true_without_an_end_replaces_the_earlier_end() {
        let start = Settings::new(Visibility::Everyone, invisible(Some(NOW.0 + 10), Some(42)));
        let s = apply(
            start,
            &checked(r#"{"invisible":true}"#, NOW),
            NOW,
            Some(NOW),
        );
        assert_eq!(s.invisibility(), invisible(None, Some(42)));
        let later = r#"{"invisible":true,"invisibleUntil":"2030-01-01T00:00:00.000Z"}"#;
        let s = apply(start, &checked(later, NOW), NOW, Some(NOW));
        assert_eq!(
            s.invisibility(),
            invisible(Some(1_893_456_000_000), Some(42))
        );
    }

    #[test]
    fn a_visibility_patch_leaves_invisibility_alone() {
        let start = Settings::new(Visibility::Everyone, invisible(Some(NOW.0 + 10), Some(42)));
        let s = apply(
            start,
            &checked(r#"{"visibility":"friends"}"#, NOW),
            NOW,
            Some(NOW),
        );
        assert_eq!(s.visibility(), Visibility::Friends);
        assert_eq!(s.invisibility(), start.invisibility());
    }

    #[test]
    fn an_invisibility_reached_exactly_at_now_has_ended() {
        let start = Settings::new(Visibility::Everyone, invisible(Some(NOW.0), Some(42)));
        // Nothing patched: the ended invisibility is dropped.
        let s = apply(start, &checked("{}", NOW), NOW, Some(at(99)));
        assert!(s.is_default());
        // Turned on again at that instant: a new invisibility, frozen anew.
        let s = apply(
            start,
            &checked(r#"{"invisible":true}"#, NOW),
            NOW,
            Some(at(99)),
        );
        assert_eq!(s.invisibility(), invisible(None, Some(99)));
        // One millisecond earlier it was still ongoing: the frozen value is kept.
        let before = at(NOW.0 - 1);
        let s = apply(
            start,
            &checked(r#"{"invisible":true}"#, before),
            before,
            Some(at(99)),
        );
        assert_eq!(s.invisibility(), invisible(None, Some(42)));
    }

    #[test]
    fn a_patch_applied_after_its_own_end_changes_nothing_visible() {
        let p = checked(
            r#"{"invisible":true,"invisibleUntil":"2026-11-26T00:15:11.124Z"}"#,
            NOW,
        );
        let s = apply(Settings::default(), &p, at(NOW.0 + 1), Some(NOW));
        assert!(s.is_default());
    }

    // --- Friendships --------------------------------------------------------------------

    fn friendships(json: &str) -> Result<FriendshipChanges, PrivacyError> {
        serde_json::from_str::<FriendshipsBody>(json)
            .unwrap()
            .check()
    }

    fn keys(pairs: &[FriendPair]) -> Vec<(u64, u64)> {
        pairs
            .iter()
            .map(|p| (p.users().0.get(), p.users().1.get()))
            .collect()
    }

    fn pairs_json(n: usize) -> String {
        let pairs: Vec<String> = (0..n).map(|i| format!("[1,{}]", i + 2)).collect();
        pairs.join(",")
    }

    #[test]
    fn friendships_read_ids_as_lookups_do_and_keep_each_friendship_once() {
        let c = friendships(
            r#"{"add":[[1,2],["1","3"],[2,1],[1.0,2],[5,4]],"remove":[[4,5],[5,4]],"x":0}"#,
        )
        .unwrap();
        assert_eq!(keys(c.add()), vec![(1, 2), (1, 3), (5, 4)]);
        assert_eq!(keys(c.remove()), vec![(4, 5)]);
        assert_eq!(friendships("{}").unwrap(), FriendshipChanges::default());
        assert_eq!(
            friendships(r#"{"add":null,"remove":null}"#).unwrap(),
            FriendshipChanges::default()
        );
        let pair = c.add()[2];
        assert_eq!(pair.key(), (id(4), id(5)));
        assert_eq!(serde_json::to_string(&pair).unwrap(), "[5,4]");
    }

    #[test]
    fn more_than_1000_pairs_in_all_is_code_2_counted_before_deduplication() {
        let body = format!(r#"{{"add":[{}],"remove":[[1,2]]}}"#, pairs_json(1000));
        let e = friendships(&body).unwrap_err();
        assert_eq!(e, PrivacyError::TooManyPairs { max: 1000 });
        assert_eq!(e.code(), 2);
        let same = vec!["[1,2]"; 1001].join(",");
        assert_eq!(
            friendships(&format!(r#"{{"add":[{same}]}}"#))
                .unwrap_err()
                .code(),
            2
        );
        // Too many wins over a bad id, as in lookups.
        let body = format!(r#"{{"add":[{},[0,1]]}}"#, pairs_json(1000));
        assert_eq!(friendships(&body).unwrap_err().code(), 2);
        let body = format!(r#"{{"add":[{}],"remove":[[1,2]]}}"#, pairs_json(999));
        assert_eq!(friendships(&body).unwrap().add().len(), 999);
    }

    #[test]
    fn a_pair_with_a_bad_id_or_of_one_user_is_code_1() {
        for bad in [
            "0",
            "-1",
            "1.5",
            "\"x\"",
            "\"\"",
            "\" 2\"",
            "true",
            "null",
            "{}",
            "[2]",
            "9223372036854775808",
            "1e300",
        ] {
            for body in [
                format!(r#"{{"add":[[1,2],[1,{bad}]]}}"#),
                format!(r#"{{"remove":[[{bad},1]]}}"#),
            ] {
                let e = friendships(&body).unwrap_err();
                assert_eq!(e, PrivacyError::InvalidUserId, "{body}");
                assert_eq!((e.code(), e.message()), (1, "Invalid user id."));
            }
        }
        for body in [r#"{"add":[[1,2],[3,3]]}"#, r#"{"remove":[["7",7.0]]}"#] {
            let e = friendships(body).unwrap_err();
            assert_eq!(e, PrivacyError::SelfPair, "{body}");
            assert_eq!(e.code(), 1);
        }
        let max = i64::MAX;
        assert!(friendships(&format!(r#"{{"add":[[1,{max}]]}}"#)).is_ok());
    }

    #[test]
    fn a_pair_that_is_not_two_elements_does_not_deserialize() {
        for bad in [
            r#"{"add":[[1]]}"#,
            r#"{"add":[[1,2,3]]}"#,
            r#"{"add":[5]}"#,
            r#"{"add":["1,2"]}"#,
            r#"{"add":[null]}"#,
            r#"{"add":{"1":2}}"#,
            r#"{"remove":"[[1,2]]"}"#,
        ] {
            assert!(
                serde_json::from_str::<FriendshipsBody>(bad).is_err(),
                "{bad}"
            );
        }
    }

    fn friend_list(json: &str, owner: u64, max: usize) -> Result<Vec<u64>, PrivacyError> {
        let body: FriendListBody = serde_json::from_str(json).unwrap();
        body.check(id(owner), max)
            .map(|l| l.into_ids().into_iter().map(UserId::get).collect())
    }

    #[test]
    fn a_friend_list_is_ascending_without_repeats() {
        assert_eq!(
            friend_list(r#"{"userIds":[9,"3",3,5.0,9],"x":1}"#, 1, 10).unwrap(),
            vec![3, 5, 9]
        );
        assert_eq!(
            friend_list(r#"{"userIds":[]}"#, 1, 10).unwrap(),
            Vec::<u64>::new()
        );
        let body: FriendListBody = serde_json::from_str(r#"{"userIds":[4,2]}"#).unwrap();
        assert_eq!(body.check(id(1), 10).unwrap().ids(), &[id(2), id(4)]);
    }

    #[test]
    fn a_friend_list_must_be_given() {
        for body in ["{}", r#"{"userIds":null}"#] {
            let e = friend_list(body, 1, 10).unwrap_err();
            assert_eq!((e, 0), (PrivacyError::MissingUserIds, 0));
        }
        assert!(serde_json::from_str::<FriendListBody>(r#"{"userIds":"1"}"#).is_err());
    }

    #[test]
    fn a_friend_list_with_a_bad_id_or_its_owner_is_code_1() {
        for bad in ["0", "-3", "\"a\"", "null", "[1]", "2.5"] {
            let e = friend_list(&format!(r#"{{"userIds":[2,{bad}]}}"#), 1, 10).unwrap_err();
            assert_eq!(e, PrivacyError::InvalidUserId, "{bad}");
            assert_eq!(e.code(), 1);
        }
        let e = friend_list(r#"{"userIds":[2,"1"]}"#, 1, 10).unwrap_err();
        assert_eq!((e.code(), e), (1, PrivacyError::OwnId));
    }

    #[test]
    fn a_friend_list_longer_than_its_bound_is_code_2_counted_before_deduplication() {
        let e = friend_list(r#"{"userIds":[2,2,2,2]}"#, 1, 3).unwrap_err();
        assert_eq!(e, PrivacyError::TooManyUserIds { max: 3 });
        assert_eq!(e.code(), 2);
        assert_eq!(
            friend_list(r#"{"userIds":[2,2,2]}"#, 1, 3).unwrap(),
            vec![2]
        );
        // Too many wins over a bad id.
        assert_eq!(
            friend_list(r#"{"userIds":[0,0,0,0]}"#, 1, 3)
                .unwrap_err()
                .code(),
            2
        );
    }

    #[test]
    fn a_friend_pair_is_two_different_users() {
        assert_eq!(FriendPair::new(id(3), id(3)), None);
        let p = FriendPair::new(id(9), id(3)).unwrap();
        assert_eq!(p.users(), (id(9), id(3)));
        assert_eq!(p.key(), (id(3), id(9)));
        assert_eq!(p.key(), FriendPair::new(id(3), id(9)).unwrap().key());
    }

    // --- Who sees whom: each rule of the contract's list --------------------------------

    const U: u64 = 10;
    const V: u64 = 20;

    /// The decision and the entry it gives, with how often the friendship was asked.
    fn seen(
        viewer: Viewer,
        settings: Settings,
        friends: bool,
        show_last_online: bool,
        real: PresenceView<'static>,
    ) -> (Sight, PresenceView<'static>, bool, u32) {
        let asked = Cell::new(0);
        let sight = sight(viewer, id(U), settings, NOW, show_last_online, |v| {
            assert_eq!(v, id(V));
            asked.set(asked.get() + 1);
            friends
        });
        let flag = sight.shows_invisible_type(&real);
        (sight, sight.entry(real), flag, asked.get())
    }

    fn all_settings() -> Vec<Settings> {
        let mut all = Vec::new();
        for v in [
            Visibility::Everyone,
            Visibility::Friends,
            Visibility::Nobody,
        ] {
            for i in [
                None,
                invisible(None, Some(5)),
                invisible(Some(NOW.0 + 1), None),
            ] {
                all.push(Settings::new(v, i));
            }
        }
        all
    }

    #[test]
    fn rule_1_the_user_sees_its_real_entry_and_whether_it_is_invisible() {
        for s in all_settings() {
            for show in [true, false] {
                let real = in_game(U, Some(NOW.0));
                let (sight, entry, flag, asked) =
                    seen(Viewer::User(id(U)), s, false, show, real.clone());
                let invisible = s.invisible_at(NOW);
                assert_eq!(sight, Sight::Own { invisible });
                assert_eq!(entry, real);
                assert_eq!(flag, invisible);
                assert_eq!(asked, 0);
                // Offline: never the Invisible type.
                let offline = PresenceView {
                    kind: PresenceType::Offline,
                    place: None,
                    game_id: None,
                    ..real
                };
                let (_, entry, flag, _) =
                    seen(Viewer::User(id(U)), s, false, show, offline.clone());
                assert_eq!((entry, flag), (offline, false));
            }
        }
    }

    #[test]
    fn rule_2_a_read_key_sees_the_real_entry_with_the_real_type() {
        for s in all_settings() {
            for show in [true, false] {
                let real = in_game(U, Some(NOW.0));
                let (sight, entry, flag, asked) =
                    seen(Viewer::Reader, s, false, show, real.clone());
                assert_eq!(
                    sight,
                    Sight::Real {
                        show_last_online: true
                    }
                );
                assert_eq!((entry, flag, asked), (real, false, 0));
            }
        }
    }

    #[test]
    fn rule_3_nobody_hides_from_every_other_viewer_exactly_as_never_seen() {
        for i in [None, invisible(None, Some(5))] {
            let s = Settings::new(Visibility::Nobody, i);
            for viewer in [Viewer::Anonymous, Viewer::User(id(V))] {
                for friends in [true, false] {
                    let (sight, entry, flag, asked) =
                        seen(viewer, s, friends, true, in_game(U, Some(NOW.0)));
                    assert_eq!(sight, Sight::Hidden);
                    assert_eq!(entry, PresenceView::never_seen(id(U)));
                    assert_eq!((flag, asked), (false, 0));
                }
            }
        }
    }

    #[test]
    fn rule_3_friends_hides_from_anonymous_and_from_users_who_are_not_friends() {
        for i in [None, invisible(None, Some(5))] {
            let s = Settings::new(Visibility::Friends, i);
            let (sight, entry, _, asked) =
                seen(Viewer::Anonymous, s, true, true, in_game(U, Some(1)));
            assert_eq!((sight, asked), (Sight::Hidden, 0));
            assert_eq!(entry, PresenceView::never_seen(id(U)));
            let (sight, entry, _, asked) =
                seen(Viewer::User(id(V)), s, false, true, in_game(U, Some(1)));
            assert_eq!((sight, asked), (Sight::Hidden, 1));
            assert_eq!(entry, PresenceView::never_seen(id(U)));
            // A friend passes this rule, to the next ones.
            let (sight, _, _, asked) =
                seen(Viewer::User(id(V)), s, true, true, in_game(U, Some(1)));
            assert_ne!(sight, Sight::Hidden);
            assert_eq!(asked, 1);
        }
    }

    #[test]
    fn rule_4_an_invisible_user_is_offline_nowhere_at_its_frozen_last_online() {
        for v in [Visibility::Everyone, Visibility::Friends] {
            let s = Settings::new(v, invisible(Some(NOW.0 + 1), Some(5)));
            let (sight, entry, flag, _) =
                seen(Viewer::User(id(V)), s, true, true, in_game(U, Some(NOW.0)));
            assert_eq!(
                sight,
                Sight::Invisible {
                    last_online: Some(at(5))
                }
            );
            assert_eq!(
                entry,
                PresenceView {
                    user_id: id(U),
                    kind: PresenceType::Offline,
                    last_location: Cow::Borrowed(""),
                    place: None,
                    game_id: None,
                    last_online: Some(at(5)),
                }
            );
            assert!(!flag);
        }
        // Frozen before the user was ever seen: the never-seen entry.
        let s = Settings::new(Visibility::Everyone, invisible(None, None));
        let (_, entry, _, _) = seen(Viewer::Anonymous, s, false, true, in_game(U, Some(NOW.0)));
        assert_eq!(entry, PresenceView::never_seen(id(U)));
    }

    #[test]
    fn rule_5_otherwise_the_real_entry() {
        let real = in_game(U, Some(NOW.0));
        for viewer in [Viewer::Anonymous, Viewer::User(id(V))] {
            let (sight, entry, flag, asked) =
                seen(viewer, Settings::default(), false, true, real.clone());
            assert_eq!(
                sight,
                Sight::Real {
                    show_last_online: true
                }
            );
            assert_eq!((entry, flag, asked), (real.clone(), false, 0));
        }
        let s = Settings::new(Visibility::Friends, None);
        let (_, entry, _, _) = seen(Viewer::User(id(V)), s, true, true, real.clone());
        assert_eq!(entry, real);
        // An invisibility that has reached its end shows the real entry again.
        let s = Settings::new(Visibility::Everyone, invisible(Some(NOW.0), Some(5)));
        let (_, entry, _, _) = seen(Viewer::Anonymous, s, false, true, real.clone());
        assert_eq!(entry, real);
    }

    #[test]
    fn without_show_last_online_only_the_user_and_read_keys_see_last_online() {
        let real = in_game(U, Some(NOW.0));
        let (_, entry, _, _) = seen(
            Viewer::Anonymous,
            Settings::default(),
            false,
            false,
            real.clone(),
        );
        assert_eq!(
            entry,
            PresenceView {
                last_online: None,
                ..real.clone()
            }
        );
        let s = Settings::new(Visibility::Everyone, invisible(None, Some(5)));
        let (sight, entry, _, _) = seen(Viewer::User(id(V)), s, false, false, real.clone());
        assert_eq!(sight, Sight::Invisible { last_online: None });
        assert_eq!(entry, PresenceView::never_seen(id(U)));
        for viewer in [Viewer::User(id(U)), Viewer::Reader] {
            let (_, entry, _, _) = seen(viewer, s, false, false, real.clone());
            assert_eq!(entry, real);
        }
    }

    #[test]
    fn extreme_times_decide_without_panicking() {
        for now in [i64::MIN, -1, 0, LATEST_TIME.0, i64::MAX] {
            let now = at(now);
            for s in all_settings() {
                for viewer in [
                    Viewer::Anonymous,
                    Viewer::User(id(V)),
                    Viewer::User(id(U)),
                    Viewer::Reader,
                ] {
                    let sight = sight(viewer, id(U), s, now, false, |_| true);
                    let _ = sight.entry(in_game(U, Some(i64::MIN)));
                    let _ = json(s.view(now));
                }
                let p = SettingsPatch {
                    visibility: Some("nobody".into()),
                    invisible: Some(true),
                    invisible_until: Some("9999-12-31T23:59:59.999Z".into()),
                };
                if let Ok(p) = p.check(now) {
                    let _ = apply(s, &p, now, Some(at(i64::MIN)));
                }
            }
        }
    }

    // --- Model-based tests ------------------------------------------------------------

    /// `PRIVACY_MODEL_SEED` (decimal or `0x` hex), else a fixed seed.
    fn model_seed() -> u64 {
        seed_from_env("PRIVACY_MODEL_SEED", 0x5EED_0011_2026_0001)
    }

    const CASES: usize = 20_000;

    /// Settings as plain fields, for the reference.
    #[derive(Debug, Clone, Copy)]
    struct Plain {
        visibility: Visibility,
        invisible: bool,
        until: Option<i64>,
        frozen: Option<i64>,
    }

    impl Plain {
        fn random(rng: &mut XorShift, now: i64) -> Self {
            let visibility = [
                Visibility::Everyone,
                Visibility::Friends,
                Visibility::Nobody,
            ][rng.below(3) as usize];
            let invisible = rng.chance();
            Self {
                visibility,
                invisible,
                until: if invisible {
                    rng.maybe(|r| now - 3 + r.below(7) as i64)
                } else {
                    None
                },
                frozen: if invisible {
                    rng.maybe(|r| r.below(now as u64) as i64)
                } else {
                    None
                },
            }
        }

        fn settings(self) -> Settings {
            let i = self.invisible.then_some(Invisibility {
                until: self.until.map(WallMillis),
                last_online: self.frozen.map(WallMillis),
            });
            Settings::new(self.visibility, i)
        }
    }

    /// The contract's list, read literally, giving the entry V gets and whether its type is
    /// written `Invisible`.
    fn reference(
        s: Plain,
        viewer: Viewer,
        u: UserId,
        friends: bool,
        now: i64,
        show_last_online: bool,
        real: &PresenceView<'static>,
    ) -> (PresenceView<'static>, bool) {
        let invisible_now = s.invisible && (s.until.is_none() || now < s.until.unwrap());
        // "V is U: the real entry; while invisible and present, Invisible."
        if viewer == Viewer::User(u) {
            let present = real.kind != PresenceType::Offline;
            return (real.clone(), invisible_now && present);
        }
        // "V holds a read key: the real entry."
        if viewer == Viewer::Reader {
            return (real.clone(), false);
        }
        // "nobody, or friends and V is not a signed-in friend of U: never seen."
        let signed_in_friend = matches!(viewer, Viewer::User(_)) && friends;
        if s.visibility == Visibility::Nobody
            || (s.visibility == Visibility::Friends && !signed_in_friend)
        {
            return (PresenceView::never_seen(u), false);
        }
        // "U invisible: Offline, "", null place and game, lastOnline as it was."
        if invisible_now {
            let entry = PresenceView {
                user_id: u,
                kind: PresenceType::Offline,
                last_location: Cow::Borrowed(""),
                place: None,
                game_id: None,
                last_online: if show_last_online {
                    s.frozen.map(WallMillis)
                } else {
                    None
                },
            };
            return (entry, false);
        }
        // "Otherwise: the real entry", with show_last_online applied.
        let mut entry = real.clone();
        if !show_last_online {
            entry.last_online = None;
        }
        (entry, false)
    }

    fn random_view(rng: &mut XorShift, u: UserId, now: i64) -> PresenceView<'static> {
        let kind = [
            PresenceType::Offline,
            PresenceType::Online,
            PresenceType::InGame,
            PresenceType::InStudio,
        ][rng.below(4) as usize];
        let offline = kind == PresenceType::Offline;
        let location = ["", "Website", "Studio", "Classic: Crossroads"][rng.below(4) as usize];
        let place = (!offline && kind != PresenceType::Online && rng.chance()).then(|| PlaceInfo {
            place_id: 1 + rng.below(100) as i64,
            root_place_id: 1 + rng.below(100) as i64,
            universe_id: NonZeroI64::new(rng.below(3) as i64),
        });
        PresenceView {
            user_id: u,
            kind,
            last_location: Cow::Borrowed(location),
            place,
            game_id: (kind == PresenceType::InGame && rng.chance())
                .then(|| Uuid::from_u128(rng.next().into())),
            last_online: rng
                .maybe(|r| r.below(now as u64 + 1) as i64)
                .map(WallMillis),
        }
    }

    #[test]
    fn model_the_decision_agrees_with_the_contracts_list() {
        let seed = model_seed();
        let mut rng = XorShift::new(seed);
        let base = NOW.0;
        for case in 0..CASES {
            let now = base + rng.below(5) as i64 - 2;
            let plain = Plain::random(&mut rng, base);
            let u = id(1 + rng.below(3));
            let viewer = match rng.below(4) {
                0 => Viewer::Anonymous,
                1 => Viewer::Reader,
                _ => Viewer::User(id(1 + rng.below(3))),
            };
            let friends = rng.chance();
            let show = rng.chance();
            let real = random_view(&mut rng, u, now);

            let asked = Cell::new(false);
            let got = sight(viewer, u, plain.settings(), at(now), show, |v| {
                assert_eq!(Viewer::User(v), viewer);
                asked.set(true);
                friends
            });
            let flag = got.shows_invisible_type(&real);
            let entry = got.entry(real.clone());
            let want = reference(plain, viewer, u, friends, now, show, &real);
            let context = format!(
                "seed {seed:#x} case {case}: {plain:?} viewer {viewer:?} target {u} \
                 friends {friends} now {now} show {show} real {real:?} → {got:?} \
                 (replay: PRIVACY_MODEL_SEED={seed:#x})"
            );
            assert_eq!((entry, flag), want, "{context}");
            // The friendship is asked only when rule 3 turns on it.
            let needed = plain.visibility == Visibility::Friends
                && matches!(viewer, Viewer::User(v) if v != u);
            assert_eq!(asked.get(), needed, "{context}");
        }
    }

    /// A settings body as plain fields, for the reference of `apply`.
    #[derive(Debug, Clone, Copy)]
    struct PlainPatch {
        visibility: Option<Visibility>,
        invisible: Option<bool>,
        until: Option<i64>,
    }

    /// The contract's rules for a settings change, read literally.
    fn reference_apply(s: Plain, p: PlainPatch, now: i64, current: Option<i64>) -> Plain {
        let was_invisible = s.invisible && (s.until.is_none() || now < s.until.unwrap());
        let mut out = Plain {
            visibility: p.visibility.unwrap_or(s.visibility),
            invisible: was_invisible,
            until: if was_invisible { s.until } else { None },
            frozen: if was_invisible { s.frozen } else { None },
        };
        match p.invisible {
            Some(true) => {
                if !was_invisible {
                    out.frozen = current;
                }
                out.invisible = true;
                out.until = p.until;
            }
            Some(false) => {
                out.invisible = false;
                out.until = None;
                out.frozen = None;
            }
            None => {}
        }
        out
    }

    #[test]
    fn model_settings_changes_agree_with_the_contracts_rules() {
        let seed = model_seed() ^ 0xA5A5;
        let mut rng = XorShift::new(seed);
        let base = NOW.0;
        for case in 0..CASES {
            let now = base + rng.below(5) as i64 - 2;
            let plain = Plain::random(&mut rng, base);
            let p = PlainPatch {
                visibility: rng.maybe(|r| {
                    [
                        Visibility::Everyone,
                        Visibility::Friends,
                        Visibility::Nobody,
                    ][r.below(3) as usize]
                }),
                invisible: rng.maybe(XorShift::chance),
                until: rng.maybe(|r| now - 2 + r.below(6) as i64),
            };
            let body = SettingsPatch {
                visibility: p.visibility.map(|v| v.as_str().to_owned()),
                invisible: p.invisible,
                invisible_until: p.until.and_then(|t| time_text(at(t))),
            };
            let current = rng.maybe(|r| r.below(now as u64 + 1) as i64);
            let context = format!(
                "seed {seed:#x} case {case}: {plain:?} patch {p:?} now {now} current {current:?} \
                 (replay: PRIVACY_MODEL_SEED={:#x})",
                seed ^ 0xA5A5
            );
            let expected_error = match p.until {
                Some(_) if p.invisible != Some(true) => Some(PrivacyError::UntilWithoutInvisible),
                Some(t) if t <= now => Some(PrivacyError::UntilNotInFuture),
                _ => None,
            };
            match body.check(at(now)) {
                Err(e) => assert_eq!(Some(e), expected_error, "{context}"),
                Ok(checked) => {
                    assert_eq!(expected_error, None, "{context}");
                    let got = apply(plain.settings(), &checked, at(now), current.map(WallMillis));
                    let want = reference_apply(plain, p, now, current);
                    assert_eq!(got, want.settings(), "{context}");
                    assert_eq!(got.view(at(now)).invisible(), want.invisible, "{context}");
                }
            }
        }
    }
}
