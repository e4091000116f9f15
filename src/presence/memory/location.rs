//! Location strings, shared rather than copied per user, and the record an entry points at.
//!
//! Every map entry holds one 8-byte pointer to a [`Record`]. A present user owns its record
//! (its session, never shared). An Offline user points at the shared record of its last
//! location, so going Offline costs no allocation and an Offline user costs no more than
//! its map slot. A [`Location`] is a handle to such a location record.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use dashmap::DashSet;
use triomphe::Arc;

use uuid::Uuid;

use crate::presence::model::{PlaceInfo, PresenceType, Session};
use crate::presence::sessions::{self, GamePlace, Pick};
use crate::presence::time::Mono;

/// What a map entry points at.
///
/// `Clone` only so that the store can take a `Live` record back with `Arc::make_mut`
/// should it ever be shared (see `Store::live_mut`); a `Location` record is never cloned.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    /// The text of a location; shared.
    Location(Box<str>),
    /// A present user's session; owned by that user alone.
    Live(Live),
}

/// A present user's sessions (CONTRACT section 10): its app session (the fields below up to
/// `session`) and its game-server sessions. Lives only while the user is present (or,
/// after every deadline or a disconnect, until the sweeper reaches its slot).
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// The app session's location.
    pub location: Location,
    /// The app session is live while `now < deadline` (and not `left`).
    pub deadline: Mono,
    /// The deadline this user's expiry-index slot was filed under: the earliest deadline
    /// of its sessions when filed.
    pub scheduled: Mono,
    /// With `presence.offline_retention` on: the retention slot filed when this user was
    /// last Offline has not come due yet, so going Offline again files none.
    pub retention_pending: bool,
    /// The app session ended by a disconnect (`deadline` set to that moment), or the user
    /// never had one (`deadline` 0). A record whose sessions have all ended is kept, with
    /// its expiry slot, until the sweeper reaches that slot, so that a user who comes back
    /// before then reuses both: no sequence of connects and disconnects files more than
    /// one expiry slot.
    pub left: bool,
    /// The app session's type and place fields, laid out flat in the record (see
    /// [`Live::session`]): a nested `Session` would pad the record by 8 bytes.
    pub kind: PresenceType,
    pub place: Option<PlaceInfo>,
    pub game_id: Option<Uuid>,
    /// Game-server sessions, at most `presence.max_game_sessions`; empty for most users
    /// (8 bytes, no allocation).
    pub games: Games,
}

/// A user's game sessions behind one thin pointer: a user in no game (most of them) pays
/// 8 bytes and no allocation; a player pays one more pointer hop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Games(Option<Box<Box<[GameSession]>>>);

impl Games {
    pub fn from_vec(games: Vec<GameSession>) -> Self {
        Self((!games.is_empty()).then(|| Box::new(games.into_boxed_slice())))
    }

    pub fn into_vec(self) -> Vec<GameSession> {
        self.0.map_or_else(Vec::new, |games| games.into_vec())
    }
}

impl std::ops::Deref for Games {
    type Target = [GameSession];
    fn deref(&self) -> &[GameSession] {
        self.0.as_deref().map_or(&[], |games| games)
    }
}

impl std::ops::DerefMut for Games {
    fn deref_mut(&mut self) -> &mut [GameSession] {
        self.0.as_deref_mut().map_or(&mut [], |games| games)
    }
}

impl FromIterator<GameSession> for Games {
    fn from_iter<I: IntoIterator<Item = GameSession>>(iter: I) -> Self {
        Self::from_vec(iter.into_iter().collect())
    }
}

/// A user's session in one game server. Sessions are kept in join order, oldest first: a
/// session's index is its rank (see [`Live::ranks`]), so none stores a join counter.
#[derive(Debug, Clone)]
pub(crate) struct GameSession {
    /// The server's id.
    pub game: Uuid,
    /// Its place, shared by every server of that place (see [`Places`]).
    pub place: SharedPlace,
    /// The server's deadline when it last listed this user (or when the user joined).
    pub deadline: Mono,
}

/// A game server's place and location, shared by the servers that play it and their
/// players' sessions. Compared and hashed by value.
#[derive(Debug, Clone)]
pub struct SharedPlace(Arc<GamePlace>);

impl SharedPlace {
    fn new(place: &GamePlace) -> Self {
        Self(Arc::new(place.clone()))
    }

    /// Whether both are the same shared place (not only equal places).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for SharedPlace {
    type Target = GamePlace;
    fn deref(&self) -> &GamePlace {
        &self.0
    }
}

impl PartialEq for SharedPlace {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for SharedPlace {}

impl Hash for SharedPlace {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Borrow<GamePlace> for SharedPlace {
    fn borrow(&self) -> &GamePlace {
        &self.0
    }
}

impl Interned for SharedPlace {
    fn holders(&self) -> usize {
        Arc::count(&self.0)
    }
}

impl Live {
    /// The app session's fields.
    pub fn session(&self) -> Session {
        Session {
            kind: self.kind,
            place: self.place,
            game_id: self.game_id,
        }
    }

    /// Sets the app session's fields.
    pub fn set_session(&mut self, session: Session) {
        self.kind = session.kind;
        self.place = session.place;
        self.game_id = session.game_id;
    }

    /// The app session's deadline, when it has not ended by a disconnect.
    pub fn app_deadline(&self) -> Option<Mono> {
        (!self.left).then_some(self.deadline)
    }

    /// The session shown at `now`, if any is live.
    pub fn pick(&self, now: Mono) -> Option<Pick> {
        sessions::pick(self.app_deadline(), self.ranks(), now)
    }

    /// Its game sessions as the ranking sees them: join order (their index) and deadline.
    pub fn ranks(&self) -> impl ExactSizeIterator<Item = (u32, Mono)> + Clone + '_ {
        self.games
            .iter()
            .enumerate()
            .map(|(i, g)| (i as u32, g.deadline))
    }

    /// The location this user shows once Offline: that of the session that ended last.
    pub fn offline_location(&self) -> &Location {
        match sessions::last_shown(Some(self.deadline), self.ranks()) {
            Some(Pick::Game(i)) => &self.games[i].place.location,
            _ => &self.location,
        }
    }

    /// The type this user is counted under in `presence_users` (as of the last sweep: a
    /// session past its deadline counts until the sweeper reaches it).
    pub fn counted(&self) -> Option<PresenceType> {
        if !self.games.is_empty() {
            Some(PresenceType::InGame)
        } else if !self.left {
            Some(self.kind)
        } else {
            None
        }
    }

    /// The earliest deadline after `now` among its sessions: when what it shows may next
    /// change by itself. `None` when nothing is live.
    pub fn next_deadline(&self, now: Mono) -> Option<Mono> {
        self.games
            .iter()
            .map(|g| g.deadline)
            .chain(self.app_deadline())
            .filter(|&d| now < d)
            .min()
    }

    /// The index of its session in server `game`, if any.
    pub fn game_index(&self, game: Uuid) -> Option<usize> {
        self.games.iter().position(|g| g.game == game)
    }
}

/// A shared location: a handle to a [`Record::Location`]. Clones share one allocation.
#[derive(Debug, Clone)]
pub struct Location(Arc<Record>);

impl Location {
    pub(crate) fn new(text: &str) -> Self {
        Self(Arc::new(Record::Location(text.into())))
    }

    pub fn as_str(&self) -> &str {
        match &*self.0 {
            Record::Location(text) => text,
            // Unreachable by construction: only `Location::new` builds the inner record.
            Record::Live(_) => "",
        }
    }

    /// The location an Offline user's record is, or `None` for a present user's record.
    pub(crate) fn of_record(record: &Arc<Record>) -> Option<Self> {
        match **record {
            Record::Location(_) => Some(Self(Arc::clone(record))),
            Record::Live(_) => None,
        }
    }

    /// The record an Offline user at this location points at.
    pub(crate) fn record(&self) -> Arc<Record> {
        Arc::clone(&self.0)
    }

    pub fn website() -> Self {
        WEBSITE.clone()
    }

    pub fn playing() -> Self {
        PLAYING.clone()
    }

    pub fn studio() -> Self {
        STUDIO.clone()
    }

    /// `""`: the location of a user never seen, or who left before ever saying where.
    pub fn nowhere() -> Self {
        NOWHERE.clone()
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl Eq for Location {}

impl Hash for Location {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Location {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Interned for Location {
    fn holders(&self) -> usize {
        Arc::count(&self.0)
    }
}

static WEBSITE: LazyLock<Location> = LazyLock::new(|| Location::new("Website"));
static PLAYING: LazyLock<Location> = LazyLock::new(|| Location::new("Playing"));
static STUDIO: LazyLock<Location> = LazyLock::new(|| Location::new("Studio"));
static NOWHERE: LazyLock<Location> = LazyLock::new(|| Location::new(""));

/// A handle an [`Interner`] shares.
pub trait Interned: Clone + Eq + Hash {
    /// Handles to the shared value, the interner's own included.
    fn holders(&self) -> usize;
}

/// Values shared between their holders rather than copied: at most `capacity` distinct
/// ones; past that, a new value gets its own unshared copy until
/// [`Interner::purge_unused`] makes room.
#[derive(Debug)]
pub struct Interner<T: Interned> {
    shared: DashSet<T, foldhash::fast::RandomState>,
    capacity: usize,
    // Approximate count kept beside the set: `DashSet::len` locks every shard.
    len: AtomicUsize,
}

/// Location texts shared between users.
pub type Locations = Interner<Location>;

/// Game places shared between the servers playing them (see [`SharedPlace`]).
pub type Places = Interner<SharedPlace>;

/// Default bound on distinct shared location texts.
pub const DEFAULT_SHARED_LOCATIONS: usize = 1 << 16;

impl<T: Interned> Interner<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            shared: DashSet::with_hasher(foldhash::fast::RandomState::default()),
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    /// The shared handle for `key`, made by `make` and kept if there is room.
    fn get_or<Q>(&self, key: &Q, make: impl FnOnce(&Q) -> T) -> T
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(found) = self.shared.get(key) {
            return found.clone();
        }
        let value = make(key);
        if self.len.load(Ordering::Relaxed) < self.capacity && self.shared.insert(value.clone()) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        value
    }

    /// Forgets values nobody holds any more; returns how many. Safe to run while other
    /// threads add values: it counts what it removes itself rather than comparing lengths
    /// that those threads change meanwhile.
    pub fn purge_unused(&self) -> usize {
        let mut removed = 0;
        self.shared.retain(|value| {
            let used = value.holders() > 1;
            removed += usize::from(!used);
            used
        });
        self.len.store(self.shared.len(), Ordering::Relaxed);
        removed
    }

    pub fn len(&self) -> usize {
        self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }
}

impl Locations {
    /// The shared handle for `text`, created if there is room.
    pub fn get(&self, text: &str) -> Location {
        self.get_or(text, Location::new)
    }
}

impl Places {
    /// The shared handle for `place`, created if there is room.
    pub fn get(&self, place: &GamePlace) -> SharedPlace {
        self.get_or(place, SharedPlace::new)
    }
}

impl Default for Locations {
    fn default() -> Self {
        Self::new(DEFAULT_SHARED_LOCATIONS)
    }
}

impl Default for Places {
    fn default() -> Self {
        Self::new(DEFAULT_SHARED_LOCATIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stay_as_small_as_their_memory_figures_assume() {
        // BENCHMARKS.md's memory per present user and per player rest on these sizes.
        assert_eq!(std::mem::size_of::<Record>(), 88);
        assert_eq!(std::mem::size_of::<GameSession>(), 32);
        assert_eq!(std::mem::size_of::<Games>(), 8);
    }

    #[test]
    fn the_same_text_is_shared() {
        let locations = Locations::new(10);
        let a = locations.get("Xbox");
        let b = locations.get("Xbox");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a.as_str(), "Xbox");
        assert_eq!(locations.len(), 1);
    }

    #[test]
    fn past_capacity_texts_are_still_stored_but_not_shared() {
        let locations = Locations::new(1);
        let _keep = locations.get("a");
        let b1 = locations.get("b");
        let b2 = locations.get("b");
        assert_eq!(b1, b2);
        assert!(!Arc::ptr_eq(&b1.0, &b2.0));
        assert_eq!(locations.len(), 1);
    }

    #[test]
    fn unused_texts_are_purged_and_used_ones_kept() {
        let locations = Locations::new(10);
        let kept = locations.get("kept");
        drop(locations.get("dropped"));
        assert_eq!(locations.purge_unused(), 1);
        assert_eq!(locations.len(), 1);
        assert!(Arc::ptr_eq(&locations.get("kept").0, &kept.0));
    }

    #[test]
    fn purging_while_texts_are_added_counts_only_what_it_removed() {
        // Texts added during a purge are held, so the purge removes none of them; it used
        // to subtract the set's lengths and underflow when the set grew meanwhile.
        let locations = std::sync::Arc::new(Locations::new(1 << 20));
        let adder = {
            let locations = std::sync::Arc::clone(&locations);
            std::thread::spawn(move || {
                let held: Vec<_> = (0..20_000)
                    .map(|i| locations.get(&format!("place {i}")))
                    .collect();
                held
            })
        };
        let mut purges = 0;
        while !adder.is_finished() {
            assert_eq!(locations.purge_unused(), 0);
            purges += 1;
        }
        let held = adder.join().unwrap();
        assert!(purges > 0);
        assert_eq!(locations.purge_unused(), 0);
        assert_eq!(locations.len(), held.len());
        drop(held);
        assert_eq!(locations.purge_unused(), 20_000);
        assert!(locations.is_empty());
    }
}
