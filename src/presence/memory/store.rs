//! The sharded maps of users and of game servers.
//!
//! Every entry carries its own deadline and every read compares it with `now`, so presence
//! is exact at read time whether or not the sweeper has reached the entry yet.
//!
//! An entry is 16 bytes: one word holding `lastOnline` and the user's visibility, and one
//! pointer to a [`Record`]. A present user's record is its own session; an Offline user's
//! is the shared record of its last location (see `location`), so an Offline user costs
//! only its map slot.
//!
//! Privacy settings (CONTRACT section 11) cost nothing for a user who never set any, and
//! nothing either for one who only chose a visibility: it sits in spare bits of the entry's
//! word. Only an invisible user pays, for one slot of a side map holding its whole
//! [`Settings`] (the invisibility's end and the `lastOnline` frozen when it began). A user
//! who sets settings before it is ever seen (or whose presence retention forgets) is kept
//! as an entry marked unseen: it reads exactly as a user never seen, and is not counted
//! among the users held, until its first heartbeat.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use parking_lot::Mutex;
use triomphe::Arc;

use super::expiry::ExpiryIndex;
use super::friends::Friendships;
use super::location::{GameSession, Games, Live, Location, Locations, Places, Record, SharedPlace};
use crate::presence::model::{
    Heartbeat, LocationName, Now, PlaceInfo, PresenceType, PresenceView, SavedGame, SavedServer,
    SavedSession, SavedUser, Session, UserId,
};
use crate::presence::privacy::{
    self, CheckedPatch, FriendList, FriendPair, FriendshipChanges, Seen, Settings, Viewer,
    Visibility, EARLIEST_TIME, LATEST_TIME,
};
use crate::presence::service::GameServerError;
use crate::presence::sessions::{self, GamePlace, Pick};
use crate::presence::time::{duration_millis, Mono, WallMillis};
use crate::presence::watch::{Changes, Delivery};
use uuid::Uuid;

/// Users re-checked between two yields of the sweeper.
const SWEEP_BATCH: usize = 256;

/// Sweeps between two purges of location texts nobody uses any more.
const PURGE_EVERY_SWEEPS: u64 = 64;

/// `privacy.max_friends` unless [`Store::with_max_friends`] says otherwise.
pub const DEFAULT_MAX_FRIENDS: usize = 2000;

type Hasher = foldhash::fast::RandomState;

/// Bits 0-47 of [`Entry::word`]: `lastOnline`, in ms since the epoch, kept from
/// [`EARLIEST_TIME`] to [`LATEST_TIME`] (an instant outside is kept as the nearest of them).
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const _: () = assert!(EARLIEST_TIME.0 == 0 && (LATEST_TIME.0 as u64) <= TIME_MASK);
/// Bit 48: the entry holds settings only. The user was never seen (or retention forgot its
/// presence): it reads as never seen, its time bits are unused, and it is not a user held.
const UNSEEN: u64 = 1 << TIME_BITS;
/// Bit 49: the user's settings hold an invisibility, kept whole in `Store::invisible`.
const INVISIBLE: u64 = 1 << (TIME_BITS + 1);
/// Bits 50-51: the visibility (0 everyone, 1 friends, 2 nobody).
const VISIBILITY_SHIFT: u32 = TIME_BITS + 2;
const VISIBILITY_MASK: u64 = 0b11 << VISIBILITY_SHIFT;
/// Every bit of the word that belongs to the settings: all zero for the default ones.
const SETTINGS_BITS: u64 = INVISIBLE | VISIBILITY_MASK;

/// `t` as the time bits of an entry's word.
fn pack_time(t: WallMillis) -> u64 {
    // Non-negative and below 2^48 after the clamp: the conversion cannot fail.
    u64::try_from(t.0.clamp(EARLIEST_TIME.0, LATEST_TIME.0)).unwrap_or(0)
}

/// `visibility` as the visibility bits of an entry's word.
fn visibility_bits(visibility: Visibility) -> u64 {
    let code = match visibility {
        Visibility::Everyone => 0,
        Visibility::Friends => 1,
        Visibility::Nobody => 2,
    };
    code << VISIBILITY_SHIFT
}

/// One user: 16 bytes.
#[derive(Debug)]
struct Entry {
    /// `lastOnline` and the settings' flags: see `TIME_BITS`, `UNSEEN`, `INVISIBLE`,
    /// `VISIBILITY_SHIFT`. Zero above the time bits for a user who set nothing.
    word: u64,
    record: Arc<Record>,
}

impl Entry {
    /// A user seen at `last_online`, with the default settings.
    fn seen(last_online: WallMillis, record: Arc<Record>) -> Self {
        Self {
            word: pack_time(last_online),
            record,
        }
    }

    /// A user never seen, to hold settings (the caller stores them).
    fn unseen() -> Self {
        Self {
            word: UNSEEN,
            record: Location::nowhere().record(),
        }
    }

    fn last_online(&self) -> WallMillis {
        // At most 2^48 - 1: always an i64.
        WallMillis(i64::try_from(self.word & TIME_MASK).unwrap_or(0))
    }

    /// Sets `lastOnline`, keeping every other bit.
    fn set_last_online(&mut self, t: WallMillis) {
        self.word = (self.word & !TIME_MASK) | pack_time(t);
    }

    /// Whether the entry holds settings only (see `UNSEEN`).
    fn is_unseen(&self) -> bool {
        self.word & UNSEEN != 0
    }

    /// Makes an unseen entry a user seen at `last_online` with `record`, keeping its
    /// settings.
    fn first_seen(&mut self, last_online: WallMillis, record: Arc<Record>) {
        self.word = (self.word & SETTINGS_BITS) | pack_time(last_online);
        self.record = record;
    }

    fn visibility(&self) -> Visibility {
        match (self.word & VISIBILITY_MASK) >> VISIBILITY_SHIFT {
            0 => Visibility::Everyone,
            1 => Visibility::Friends,
            // Only codes written by `visibility_bits` are read back.
            _ => Visibility::Nobody,
        }
    }

    fn is_invisible(&self) -> bool {
        self.word & INVISIBLE != 0
    }

    fn view(&self, user_id: UserId, now: Mono) -> PresenceView<'_> {
        if self.is_unseen() {
            return PresenceView::never_seen(user_id);
        }
        let last_online = self.last_online();
        let live = match &*self.record {
            Record::Live(live) => live,
            Record::Location(text) => return offline(user_id, text, last_online),
        };
        match live.pick(now) {
            Some(Pick::App) => PresenceView {
                user_id,
                kind: live.kind,
                last_location: Cow::Borrowed(live.location.as_str()),
                place: live.place,
                game_id: live.game_id,
                last_online: Some(last_online),
            },
            Some(Pick::Game(i)) => {
                let game = &live.games[i];
                PresenceView {
                    user_id,
                    kind: PresenceType::InGame,
                    last_location: Cow::Borrowed(game.place.location.as_str()),
                    place: Some(game.place.place),
                    game_id: Some(game.game),
                    last_online: Some(last_online),
                }
            }
            None => offline(user_id, live.offline_location().as_str(), last_online),
        }
    }
}

fn offline(user_id: UserId, location: &str, last_online: WallMillis) -> PresenceView<'_> {
    PresenceView {
        user_id,
        kind: PresenceType::Offline,
        last_location: Cow::Borrowed(location),
        place: None,
        game_id: None,
        last_online: Some(last_online),
    }
}

/// What a user shows, `lastOnline` aside, to tell whether a change changed it. Holds a
/// location handle, not a borrow, so that it outlives the change.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    kind: PresenceType,
    location: Location,
    place: Option<PlaceInfo>,
    game_id: Option<Uuid>,
}

impl Shown {
    /// Whether a session of `live` ended (its deadline passed) and no sweep has told its
    /// watchers yet: they may still hold the entry from before, so the next change of this
    /// record is published whatever it shows after (the hub drops an entry a watcher
    /// already holds).
    fn unswept(live: &Live, now: Mono) -> bool {
        (!live.left && live.deadline <= now) || live.games.iter().any(|g| g.deadline <= now)
    }

    fn of(live: &Live, now: Mono) -> Self {
        match live.pick(now) {
            Some(Pick::App) => Self {
                kind: live.kind,
                location: live.location.clone(),
                place: live.place,
                game_id: live.game_id,
            },
            Some(Pick::Game(i)) => {
                let game = &live.games[i];
                Self {
                    kind: PresenceType::InGame,
                    location: game.place.location.clone(),
                    place: Some(game.place.place),
                    game_id: Some(game.game),
                }
            }
            None => Self {
                kind: PresenceType::Offline,
                location: live.offline_location().clone(),
                place: None,
                game_id: None,
            },
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Users flipped Offline.
    pub expired: usize,
    /// Users found fresh (they heartbeated since) and moved to their new deadline's bucket.
    pub rescheduled: usize,
    /// Offline users forgotten under `presence.offline_retention`.
    pub dropped: usize,
}

/// What [`Store::save_many`] hands out for a snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Saving<'s, 'a> {
    /// A user's presence (of a user seen).
    User(&'s SavedUser<'a>),
    /// A user's settings, when they are not the default ones: after its presence, if any.
    Settings(UserId, Settings),
}

/// Forgetting Offline users whose `lastOnline` is older than `after`.
///
/// Invariant: every Offline user has exactly one slot in `index`, and a present user has
/// at most one (the slot of its last Offline period, marked by `Live::retention_pending`),
/// so the index never holds more slots than there are users. Going Offline files a slot
/// only when none is pending; a slot that comes due re-checks its user (see
/// `Store::forget_retired`) and is refiled at the user's exact due time when it is early.
#[derive(Debug)]
struct Retention {
    after: Duration,
    index: ExpiryIndex,
}

impl Retention {
    /// When a user whose last heartbeat was at `since` is due to be forgotten.
    fn due(&self, since: Mono) -> Mono {
        since.saturating_add(self.after)
    }
}

/// All users' presence. Shared behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    users: DashMap<UserId, Entry, Hasher>,
    expiry: ExpiryIndex,
    retention: Option<Retention>,
    locations: Locations,
    ttl: Duration,
    sweeps: AtomicU64,
    /// Users holding a session, by type (Online, InGame, InStudio): exact as of the last
    /// sweep, since a session past its deadline counts until the sweeper reclaims it.
    sessions: [AtomicI64; 3],
    /// Who is told of changes (live streams); `None` when nobody can watch.
    changes: Option<std::sync::Arc<dyn Changes>>,
    games: GameLimits,
    /// Live game servers (and those past their deadline that no sweep has reclaimed yet).
    servers: DashMap<Uuid, Server, Hasher>,
    /// No server's deadline is earlier than this: the sweeper looks for servers to reclaim
    /// only from then on. Deadlines only move later (one TTL for every server), so a value
    /// lowered for every new server stays a lower bound without being raised by reports.
    servers_due: AtomicU64,
    /// The places of game servers, shared between the servers of one place.
    places: Places,
    /// `servers.len()`, kept beside the map: `DashMap::len` locks every shard, which a
    /// report holding one of them must not do.
    server_count: AtomicUsize,
    /// The whole settings of every user whose entry has the `INVISIBLE` bit, and of no
    /// other. Changed only under that user's lock in `users` (taken first, always), so an
    /// entry and its slot here always agree for whoever holds that lock. An invisibility
    /// that has ended stays until a sweep cleans it (`end_invisibilities`); every read
    /// decides with the time, so it is shown ended from its end on.
    invisible: DashMap<UserId, Settings, Hasher>,
    /// Entries marked `UNSEEN`, not counted by [`Store::len`]; changed under their lock.
    unseen: AtomicUsize,
    /// Who is whose friend.
    friends: Friendships,
    /// Held through a friendship write and the notices to watchers that follow it, so that
    /// watchers are told of the changes of one pair in the order they were made.
    befriending: Mutex<()>,
}

/// The bounds and lifetime of game servers (CONTRACT section 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameLimits {
    /// `presence.game_server_ttl`.
    pub server_ttl: Duration,
    /// `presence.max_game_sessions`.
    pub sessions_per_user: usize,
    /// `presence.max_game_servers`.
    pub servers: usize,
    /// `api.max_players_per_server`.
    pub players_per_server: usize,
}

impl Default for GameLimits {
    fn default() -> Self {
        Self {
            server_ttl: Duration::from_secs(60),
            sessions_per_user: 4,
            servers: 100_000,
            players_per_server: 700,
        }
    }
}

/// A live game server: its place (shared), its deadline and its players (sorted: 8 bytes
/// each). Held in its map slot, with no allocation of its own but its players' list.
#[derive(Debug)]
struct Server {
    place: SharedPlace,
    deadline: Mono,
    players: Box<[UserId]>,
}

impl Store {
    /// `bucket_width` is the expiry index's resolution, normally the sweep interval;
    /// `offline_retention` of `None` keeps Offline users forever.
    pub fn new(ttl: Duration, bucket_width: Duration, offline_retention: Option<Duration>) -> Self {
        Self {
            users: DashMap::with_hasher(Hasher::default()),
            expiry: ExpiryIndex::new(bucket_width),
            retention: offline_retention.map(|after| Retention {
                after,
                index: ExpiryIndex::new(bucket_width.max(after / 64)),
            }),
            locations: Locations::default(),
            ttl,
            sweeps: AtomicU64::new(0),
            sessions: Default::default(),
            changes: None,
            games: GameLimits::default(),
            servers: DashMap::with_hasher(Hasher::default()),
            servers_due: AtomicU64::new(u64::MAX),
            places: Places::default(),
            server_count: AtomicUsize::new(0),
            invisible: DashMap::with_hasher(Hasher::default()),
            unseen: AtomicUsize::new(0),
            friends: Friendships::new(DEFAULT_MAX_FRIENDS),
            befriending: Mutex::new(()),
        }
    }

    /// This store, bounding friends per user by `max_friends` (`privacy.max_friends`).
    /// Call it before any friendship is added: the table starts empty again.
    pub fn with_max_friends(mut self, max_friends: usize) -> Self {
        self.friends = Friendships::new(max_friends);
        self
    }

    /// This store, with these bounds on game servers.
    pub fn with_games(mut self, games: GameLimits) -> Self {
        self.games = games;
        self
    }

    /// This store, telling `changes` of every change (see [`Changes`]).
    pub fn with_changes(mut self, changes: std::sync::Arc<dyn Changes>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn count_session(&self, kind: PresenceType, delta: i64) {
        if let Some(counter) = (kind.as_int() as usize)
            .checked_sub(1)
            .and_then(|i| self.sessions.get(i))
        {
            counter.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Users holding a session of each present type, as of the last sweep. Never negative:
    /// a session is counted when its record is made and uncounted when it is replaced,
    /// both under that user's lock, so every decrement follows its increment.
    pub fn sessions_by_type(&self) -> [(PresenceType, i64); 3] {
        let count = |i: usize| self.sessions[i].load(Ordering::Relaxed);
        [
            (PresenceType::Online, count(0)),
            (PresenceType::InGame, count(1)),
            (PresenceType::InStudio, count(2)),
        ]
    }

    /// Records one heartbeat of `user` at `now`. A change in anything but `lastOnline` is
    /// published to the watchers, if any, while the user's lock is held: watchers see a
    /// user's changes in the order they were made.
    pub fn heartbeat(&self, user: UserId, heartbeat: Heartbeat<'_>, now: Now) {
        let deadline = now.mono.saturating_add(self.ttl);
        // The shard lock is held for this statement only. The indexes are filed, and the
        // change handed to watchers, after it is released: a slot filed late is harmless,
        // since the sweeper re-checks every slot against the entry (see `sweep`), and
        // watchers order a user's changes by their versions, taken under the lock.
        let (filed, delivery) = match self.users.entry(user) {
            MapEntry::Occupied(mut occupied) if occupied.get().is_unseen() => {
                // Settings only until now: seen for the first time, its settings kept.
                let (record, filed) = self.first_heartbeat(heartbeat, now, deadline);
                let entry = occupied.get_mut();
                entry.first_seen(now.wall, record);
                self.unseen.fetch_sub(1, Ordering::Relaxed);
                let changed = matches!(filed, Filed::Expiry(_));
                let delivery = changed.then(|| self.tell(user, entry, now)).flatten();
                (filed, delivery)
            }
            MapEntry::Occupied(mut occupied) => {
                let (filed, changed) = self.apply(occupied.get_mut(), heartbeat, now, deadline);
                let delivery = changed
                    .then(|| self.tell(user, occupied.get(), now))
                    .flatten();
                (filed, delivery)
            }
            MapEntry::Vacant(vacant) => {
                let (record, filed) = self.first_heartbeat(heartbeat, now, deadline);
                // A disconnect of a user never seen changes only `lastOnline`.
                let changed = matches!(filed, Filed::Expiry(_));
                let entry = vacant.insert(Entry::seen(now.wall, record));
                let delivery = changed.then(|| self.tell(user, &entry, now)).flatten();
                (filed, delivery)
            }
        };
        if let Some(delivery) = delivery {
            delivery.deliver();
        }
        self.file(user, filed);
    }

    /// The record of a user's first heartbeat, and the slot it needs.
    fn first_heartbeat(
        &self,
        heartbeat: Heartbeat<'_>,
        now: Now,
        deadline: Mono,
    ) -> (Arc<Record>, Filed) {
        match heartbeat {
            Heartbeat::Disconnect => (
                Location::nowhere().record(),
                self.retention_due(now.mono)
                    .map_or(Filed::Nothing, Filed::Retention),
            ),
            Heartbeat::Present { location, session } => (
                self.new_live(self.resolve(location), session, deadline, false),
                Filed::Expiry(deadline),
            ),
        }
    }

    /// The change of `user` to hand to its watchers, if anyone may be watching: its entry
    /// and settings as of `now`. Called under its lock; delivered by the caller once the
    /// lock is released.
    #[must_use]
    fn tell(&self, user: UserId, entry: &Entry, now: Now) -> Option<Delivery> {
        let changes = self.changes.as_ref()?;
        if !changes.watched() {
            return None;
        }
        let settings = self.settings_of(user, entry);
        changes.publish_later(&entry.view(user, now.mono), settings, now.wall)
    }

    /// Applies a heartbeat to a known user's entry; says which index needs a new slot, and
    /// whether what the user shows changed (anything but `lastOnline`).
    ///
    /// "Changed" compares what a read shows before and after, at `now`: a session past its
    /// deadline reads Offline (whether or not the sweeper has reached it), so a heartbeat
    /// that renews it is a change even when the session is the same: a watcher may have
    /// been given that Offline entry. A heartbeat of a user shown in a game changes nothing
    /// shown until the game ends.
    fn apply(
        &self,
        entry: &mut Entry,
        heartbeat: Heartbeat<'_>,
        now: Now,
        deadline: Mono,
    ) -> (Filed, bool) {
        entry.set_last_online(now.wall);
        let Some(live) = live_mut(&mut entry.record) else {
            return match heartbeat {
                // Offline already: its one retention slot is filed.
                Heartbeat::Disconnect => (Filed::Nothing, false),
                Heartbeat::Present { location, session } => {
                    // Offline until now: with retention on, its slot stays filed and pending.
                    let pending = self.retention.is_some();
                    entry.record =
                        self.new_live(self.resolve(location), session, deadline, pending);
                    (Filed::Expiry(deadline), true)
                }
            };
        };
        let before = Shown::of(live, now.mono);
        let unswept = Shown::unswept(live, now.mono);
        let counted = live.counted();
        let filed = match heartbeat {
            Heartbeat::Disconnect => {
                if live.left {
                    return (Filed::Nothing, unswept);
                }
                // The app session ends now, but the record and its expiry slot stay until
                // the sweeper reaches that slot (see `Live::left`).
                live.left = true;
                live.deadline = live.deadline.min(now.mono);
                match self.retention_due(now.mono) {
                    Some(due) if !live.retention_pending && live.pick(now.mono).is_none() => {
                        live.retention_pending = true;
                        Filed::Retention(due)
                    }
                    _ => Filed::Nothing,
                }
            }
            Heartbeat::Present { location, session } => {
                live.left = false;
                live.deadline = deadline;
                live.set_session(session);
                if live.location.as_str() != location.as_str() {
                    live.location = self.resolve(location);
                }
                self.refile(live, now.mono)
            }
        };
        self.recount(counted, live.counted());
        let changed = unswept || Shown::of(live, now.mono) != before;
        (filed, changed)
    }

    /// Moves a user's counted type in `presence_users` from `before` to `after`.
    fn recount(&self, before: Option<PresenceType>, after: Option<PresenceType>) {
        if before != after {
            if let Some(kind) = before {
                self.count_session(kind, -1);
            }
            if let Some(kind) = after {
                self.count_session(kind, 1);
            }
        }
    }

    /// The slot a present user needs when a change made one of its sessions end before the
    /// slot it holds: filed earlier, the old one is found stale when its bucket comes due.
    fn refile(&self, live: &mut Live, now: Mono) -> Filed {
        match live.next_deadline(now) {
            Some(next) if self.expiry.bucket_of(next) < self.expiry.bucket_of(live.scheduled) => {
                live.scheduled = next;
                Filed::Expiry(next)
            }
            _ => Filed::Nothing,
        }
    }

    /// Stops counting a record that is replaced.
    fn uncount(&self, live: &Live) {
        self.recount(live.counted(), None);
    }

    /// A present user's own record, its session counted.
    fn new_live(
        &self,
        location: Location,
        session: Session,
        deadline: Mono,
        retention_pending: bool,
    ) -> Arc<Record> {
        self.count_session(session.kind, 1);
        Arc::new(Record::Live(Live {
            location,
            deadline,
            scheduled: deadline,
            retention_pending,
            left: false,
            kind: session.kind,
            place: session.place,
            game_id: session.game_id,
            games: Games::default(),
        }))
    }

    /// Files the slot a change asked for. Called after the user's lock is released: a slot
    /// filed late is harmless, since the sweeper re-checks every slot against the entry.
    fn file(&self, user: UserId, filed: Filed) {
        match filed {
            Filed::Nothing => {}
            Filed::Expiry(deadline) => self.expiry.schedule(user, deadline),
            Filed::Retention(due) => {
                if let Some(retention) = &self.retention {
                    retention.index.schedule(user, due);
                }
            }
        }
    }

    fn resolve(&self, name: LocationName<'_>) -> Location {
        match name {
            LocationName::Shared(location) => location,
            LocationName::Given(text) => self.locations.get(text),
        }
    }

    /// When a user whose last heartbeat was at `since` is due to be forgotten, if ever.
    fn retention_due(&self, since: Mono) -> Option<Mono> {
        self.retention.as_ref().map(|r| r.due(since))
    }

    /// Calls `visit` with the presence of each id, in the given order, each borrowed from
    /// the store under its shard's read lock (see [`Store::read_many`]). Never creates or
    /// changes an entry.
    pub fn visit_many(&self, ids: &[UserId], now: Mono, mut visit: impl FnMut(&PresenceView<'_>)) {
        self.read_many(ids, |id, entry| match entry {
            Some(entry) => visit(&entry.view(id, now)),
            None => visit(&PresenceView::never_seen(id)),
        });
    }

    /// Calls `read` with each of `ids`, in the given order, and its entry if it has one.
    ///
    /// Each shard the ids fall in is read-locked once for the whole call rather than once
    /// per id (a lookup of 50 ids takes a handful of locks, not 50), the shards in
    /// ascending order. Every other holder of these locks holds one shard at a time, so a
    /// call that waits for one shard while holding lower ones cannot close a cycle; and
    /// `read` may take the locks that are always taken after a user's (the `invisible`
    /// map's, the hub's), as under a single shard's lock.
    fn read_many(&self, ids: &[UserId], mut read: impl FnMut(UserId, Option<&Entry>)) {
        let shards = self.users.shards();
        let mut guards: Vec<Option<_>> = Vec::with_capacity(shards.len());
        guards.resize_with(shards.len(), || None);
        let hashes: Vec<u64> = ids
            .iter()
            .map(|id| self.users.hash_usize(id) as u64)
            .collect();
        let mut wanted = vec![false; shards.len()];
        for &hash in &hashes {
            wanted[self.users.determine_shard(hash as usize)] = true;
        }
        for (index, shard) in shards.iter().enumerate() {
            if wanted[index] {
                guards[index] = Some(shard.read());
            }
        }
        // Every entry is found and its record touched first, and only then is each one
        // read: the loop is short enough for the processor to have the cache misses
        // of many ids in flight at once (a table slot and a record each, for users the
        // caches do not hold), where reading each user whole before finding the next would
        // wait for them one by one.
        let entries: Vec<Option<&Entry>> = ids
            .iter()
            .zip(&hashes)
            .map(|(&id, &hash)| {
                let entry = guards[self.users.determine_shard(hash as usize)]
                    .as_ref()
                    .and_then(|table| table.get(hash, |(key, _)| *key == id))
                    .map(|(_, value)| value.get());
                if let Some(entry) = entry {
                    std::hint::black_box(matches!(*entry.record, Record::Live(_)));
                }
                entry
            })
            .collect();
        for (&id, entry) in ids.iter().zip(entries) {
            read(id, entry);
        }
    }

    /// The presence of each id, in the given order, as owned copies.
    pub fn get_many(&self, ids: &[UserId], now: Mono) -> Vec<PresenceView<'static>> {
        let mut views = Vec::with_capacity(ids.len());
        self.visit_many(ids, now, |view| views.push(view.clone().into_owned()));
        views
    }

    /// Every user id, copied shard by shard: one shard's read lock at a time, held only to
    /// copy its keys.
    pub fn user_ids(&self) -> Vec<UserId> {
        let mut ids = Vec::with_capacity(self.users.len());
        ids.extend(self.users.iter().map(|entry| *entry.key()));
        ids
    }

    /// Calls `save` with each of `ids` that is still known, as of `now`: the user's
    /// presence ([`Saving::User`]), unless it was never seen, then its settings
    /// ([`Saving::Settings`]) when they are not the default ones as of `now`. A present
    /// user's deadline is written as wall-clock time; a user past its deadline is saved
    /// Offline.
    ///
    /// The whole batch is copied first, each user under its shard's read lock for just that
    /// copy (a location handle and the session: no text is copied), and `save` runs after
    /// every lock is released: it may write to disk, and a slow disk must not stall
    /// heartbeats to a shard. Callers keep `ids` to a bounded batch.
    pub fn save_many(&self, ids: &[UserId], now: Now, mut save: impl FnMut(Saving<'_, '_>)) {
        let mut copied = Vec::with_capacity(ids.len());
        // Wall-clock time of a deadline still ahead.
        let wall = |deadline: Mono| {
            let left = deadline.0.saturating_sub(now.mono.0);
            (left > 0).then(|| WallMillis(now.wall.0.saturating_add(left as i64)))
        };
        for &id in ids {
            let Some(entry) = self.users.get(&id) else {
                continue;
            };
            let settings = self.settings_of(id, &entry).as_of(now.wall);
            let settings = (!settings.is_default()).then_some(settings);
            if entry.is_unseen() {
                if settings.is_some() {
                    copied.push((id, None, settings));
                }
                continue;
            }
            let (location, live, games) = match &*entry.record {
                Record::Live(live) => {
                    let app = live
                        .app_deadline()
                        .and_then(wall)
                        .map(|deadline| SavedSession {
                            deadline,
                            session: live.session(),
                        });
                    let games: Vec<_> = (0u32..)
                        .zip(live.games.iter())
                        .filter_map(|(joined, g)| {
                            wall(g.deadline).map(|deadline| (joined, g.clone(), deadline))
                        })
                        .collect();
                    let location = if app.is_none() && games.is_empty() {
                        live.offline_location().clone()
                    } else {
                        live.location.clone()
                    };
                    (location, app, games)
                }
                Record::Location(_) => match Location::of_record(&entry.record) {
                    Some(location) => (location, None, Vec::new()),
                    None => continue,
                },
            };
            let presence = (entry.last_online(), location, live, games);
            copied.push((id, Some(presence), settings));
        }
        for (user_id, presence, settings) in copied {
            if let Some((last_online, location, live, games)) = presence {
                save(Saving::User(&SavedUser {
                    user_id,
                    last_online,
                    last_location: Cow::Borrowed(location.as_str()),
                    live,
                    games: games
                        .iter()
                        .map(|(joined, g, deadline)| SavedGame {
                            game: g.game,
                            place: g.place.place,
                            location: Cow::Borrowed(g.place.location.as_str()),
                            joined: *joined,
                            deadline: *deadline,
                        })
                        .collect(),
                }));
            }
            if let Some(settings) = settings {
                save(Saving::Settings(user_id, settings));
            }
        }
    }

    /// Calls `save` with every live game server as of `now`, copied first (one shard's read
    /// lock at a time) so that `save` runs with no lock held.
    pub fn save_servers(&self, now: Now, mut save: impl FnMut(&SavedServer<'_>)) {
        let mut copied = Vec::new();
        for server in self.servers.iter() {
            let left = server.deadline.0.saturating_sub(now.mono.0);
            if left > 0 {
                let deadline = WallMillis(now.wall.0.saturating_add(left as i64));
                copied.push((
                    *server.key(),
                    server.place.clone(),
                    deadline,
                    server.players.to_vec(),
                ));
            }
        }
        for (game, place, deadline, players) in copied {
            save(&SavedServer {
                game,
                place: place.place,
                location: Cow::Borrowed(place.location.as_str()),
                deadline,
                players,
            });
        }
    }

    /// Puts back a saved game server as of `now`, if its deadline is still ahead by the
    /// wall clock; its players' sessions come back with the players (see `restore`).
    pub fn restore_server(&self, saved: SavedServer<'_>, now: Now) -> bool {
        let left = saved.deadline.0.saturating_sub(now.wall.0);
        if left <= 0 {
            return false;
        }
        let deadline = Mono(now.mono.0.saturating_add(left as u64));
        let place = self.places.get(&GamePlace {
            place: saved.place,
            location: self.locations.get(&saved.location),
        });
        let mut players = saved.players;
        players.sort_unstable();
        players.dedup();
        let server = Server {
            place,
            deadline,
            players: players.into_boxed_slice(),
        };
        if self.servers.insert(saved.game, server).is_none() {
            self.server_count.fetch_add(1, Ordering::Relaxed);
        }
        self.servers_due.fetch_min(deadline.0, Ordering::Relaxed);
        true
    }

    /// Puts back a saved user as of `now`: present until its deadline if that is still
    /// ahead by the wall clock, Offline otherwise. Replaces the presence the store had for
    /// it, keeping its settings (restored by [`Store::restore_settings`]).
    ///
    /// An Offline user already past `presence.offline_retention` by the wall clock is not
    /// restored at all (returns `false`); any other Offline user is due to be forgotten at
    /// its exact time, `lastOnline + offline_retention`, counted from `now`.
    pub fn restore(&self, saved: SavedUser<'_>, now: Now) -> bool {
        let left = saved
            .live
            .as_ref()
            .map_or(0, |live| live.deadline.0.saturating_sub(now.wall.0));
        let live = saved.live.filter(|_| left > 0);
        // Kept in join order: a session's index is its rank.
        let mut saved_games: Vec<_> = saved.games.iter().collect();
        saved_games.sort_by_key(|g| g.joined);
        let games: Games = saved_games
            .into_iter()
            .filter_map(|g| {
                let left = g.deadline.0.saturating_sub(now.wall.0);
                (left > 0).then(|| GameSession {
                    game: g.game,
                    place: self.places.get(&GamePlace {
                        place: g.place,
                        location: self.locations.get(&g.location),
                    }),
                    deadline: Mono(now.mono.0.saturating_add(left as u64)),
                })
            })
            .collect();
        // With retention: when an Offline user is due, or `None` when it is past due now.
        let offline_due = self.retention.as_ref().map(|retention| {
            let age = now.wall.0.saturating_sub(saved.last_online.0).max(0) as u64;
            duration_millis(retention.after)
                .checked_sub(age)
                .filter(|&left| left > 0)
                .map(|left| Mono(now.mono.0.saturating_add(left)))
        });
        let forget = live.is_none() && games.is_empty() && matches!(offline_due, Some(None));
        let new_entry = |had_slot: bool| {
            let location = self.locations.get(&saved.last_location);
            let (record, filed) = match &live {
                _ if !games.is_empty() => {
                    let (deadline, session, left) = match &live {
                        Some(live) => (
                            Mono(now.mono.0.saturating_add(left as u64)),
                            live.session.clone(),
                            false,
                        ),
                        None => (
                            Mono(0),
                            Session {
                                kind: PresenceType::Online,
                                place: None,
                                game_id: None,
                            },
                            true,
                        ),
                    };
                    let mut record = Live {
                        location,
                        deadline,
                        scheduled: deadline,
                        retention_pending: had_slot,
                        left,
                        kind: session.kind,
                        place: session.place,
                        game_id: session.game_id,
                        games: games.clone(),
                    };
                    record.scheduled = record.next_deadline(now.mono).unwrap_or(deadline);
                    self.recount(None, record.counted());
                    let filed = Filed::Expiry(record.scheduled);
                    (Arc::new(Record::Live(record)), filed)
                }
                Some(live) => {
                    let deadline = Mono(now.mono.0.saturating_add(left as u64));
                    let record = self.new_live(location, live.session.clone(), deadline, had_slot);
                    (record, Filed::Expiry(deadline))
                }
                None => {
                    let filed = match offline_due.flatten() {
                        Some(due) if !had_slot => Filed::Retention(due),
                        _ => Filed::Nothing,
                    };
                    (location.record(), filed)
                }
            };
            (Entry::seen(saved.last_online, record), filed)
        };
        let filed = match self.users.entry(saved.user_id) {
            MapEntry::Occupied(mut occupied) => {
                let old = occupied.get_mut();
                let had_slot = match &*old.record {
                    Record::Live(old) => {
                        self.uncount(old);
                        old.retention_pending
                    }
                    // An unseen entry has no retention slot.
                    Record::Location(_) => self.retention.is_some() && !old.is_unseen(),
                };
                if forget {
                    if self.forget_presence(saved.user_id, old, now.wall).is_none() {
                        occupied.remove();
                    }
                    return false;
                }
                let (mut entry, filed) = new_entry(had_slot);
                entry.word |= old.word & SETTINGS_BITS;
                if old.is_unseen() {
                    self.unseen.fetch_sub(1, Ordering::Relaxed);
                }
                *old = entry;
                filed
            }
            MapEntry::Vacant(vacant) => {
                if forget {
                    return false;
                }
                let (entry, filed) = new_entry(false);
                vacant.insert(entry);
                filed
            }
        };
        self.file(saved.user_id, filed);
        true
    }

    /// Flips Offline every user whose deadline is `<= now` and forgets Offline users past
    /// the retention, working only on the index buckets whose span has begun: nothing is
    /// scanned. A user is flipped by the first sweep at or after its deadline, whatever the
    /// buckets' width. Holds one shard lock at a time, for one user, and yields between
    /// batches.
    pub fn sweep(&self, now: Now) -> SweepReport {
        let mut report = SweepReport::default();
        // Refiled once every started bucket is taken: a user not due yet may belong to the
        // bucket just taken.
        let mut later = Vec::new();
        while let Some((bucket, due)) = self.expiry.take_started(now.mono) {
            for batch in due.chunks(SWEEP_BATCH) {
                let mut retired = Vec::new();
                for &user in batch {
                    let (slot, delivery) = self.expire_one(user, bucket, now);
                    if let Some(delivery) = delivery {
                        delivery.deliver();
                    }
                    match slot {
                        Slot::Stale | Slot::Left => {}
                        Slot::Fresh(deadline) => {
                            // Heartbeated since it was filed, or in this bucket but not due.
                            report.rescheduled +=
                                usize::from(self.expiry.bucket_of(deadline) != bucket);
                            later.push((user, deadline));
                        }
                        Slot::Expired(retire) => {
                            report.expired += 1;
                            if let Some(due) = retire {
                                retired.push((user, due));
                            }
                        }
                    }
                }
                if let Some(retention) = &self.retention {
                    retention.index.schedule_many(retired);
                }
                std::thread::yield_now();
            }
        }
        self.expiry.schedule_many(later);
        self.reclaim_servers(now.mono);
        if let Some(retention) = &self.retention {
            report.dropped = self.forget_retired(retention, now);
        }
        if self
            .sweeps
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PURGE_EVERY_SWEEPS)
        {
            self.locations.purge_unused();
            self.places.purge_unused();
            self.end_invisibilities(now.wall);
        }
        report
    }

    /// Re-checks one expiry slot under the entry's lock: a heartbeat or report that landed
    /// first wins. A user with a session still live loses the sessions that ended (its
    /// watchers are told what it shows now: the hub drops what they hold already) and is
    /// filed at its next deadline; a user with none is flipped Offline at the location it
    /// showed last. The change, if any, is delivered by the caller once the lock is released.
    fn expire_one(&self, user: UserId, bucket: u64, at: Now) -> (Slot, Option<Delivery>) {
        let now = at.mono;
        let Some(mut entry) = self.users.get_mut(&user) else {
            return (Slot::Stale, None);
        };
        let entry = &mut *entry;
        let Some(live) = live_mut(&mut entry.record) else {
            // Offline already (disconnected): the slot outlived its session.
            return (Slot::Stale, None);
        };
        if self.expiry.bucket_of(live.scheduled) != bucket {
            // A later session of the same user has its own slot.
            return (Slot::Stale, None);
        }
        if let Some(next) = live.next_deadline(now) {
            live.scheduled = next;
            let counted = live.counted();
            let mut ended = false;
            if live.games.iter().any(|g| g.deadline <= now) {
                live.games = live
                    .games
                    .iter()
                    .filter(|g| now < g.deadline)
                    .cloned()
                    .collect();
                ended = true;
            }
            if !live.left && live.deadline <= now {
                // The app session ended while a game is shown.
                live.left = true;
                ended = true;
            }
            self.recount(counted, live.counted());
            let delivery = ended.then(|| self.tell(user, entry, at)).flatten();
            return (Slot::Fresh(next), delivery);
        }
        if live.left && live.games.is_empty() {
            // Disconnected: its retention slot was filed then, and it was uncounted.
            entry.record = live.location.record();
            return (Slot::Left, None);
        }
        // When it was last reported, at the earliest: a retention slot filed early is
        // refiled at its exact time (see `forget_retired`).
        let app_seen = live.deadline.0.saturating_sub(duration_millis(self.ttl));
        let game_seen = live.games.iter().map(|g| {
            g.deadline
                .0
                .saturating_sub(duration_millis(self.games.server_ttl))
        });
        let last_seen = Mono(game_seen.chain([app_seen]).max().unwrap_or(app_seen));
        self.uncount(live);
        let retire = self
            .retention_due(last_seen)
            .filter(|_| !live.retention_pending);
        let offline = live.offline_location().record();
        entry.record = offline;
        (Slot::Expired(retire), self.tell(user, entry, at))
    }

    /// Forgets the game servers past their deadline, once the earliest of them has come
    /// (one pass over the servers then). Their players' sessions ended at that deadline by
    /// themselves (each holds it), and their own slots flip them.
    fn reclaim_servers(&self, now: Mono) {
        if now.0 < self.servers_due.load(Ordering::Relaxed) {
            return;
        }
        // Lowered by a server created during the pass, never raised past one it missed.
        self.servers_due.store(u64::MAX, Ordering::Relaxed);
        let mut earliest = u64::MAX;
        let mut removed = 0;
        self.servers.retain(|_, server| {
            if now < server.deadline {
                earliest = earliest.min(server.deadline.0);
                true
            } else {
                removed += 1;
                false
            }
        });
        self.server_count.fetch_sub(removed, Ordering::Relaxed);
        self.servers_due.fetch_min(earliest, Ordering::Relaxed);
    }

    /// Re-checks the users whose retention slot came due: an Offline user whose
    /// `lastOnline` is older than the retention by the wall clock is dropped; one that is
    /// not (it came back and left again since, or the wall clock was set back) keeps its one
    /// slot, refiled at its exact due time; a present user just loses the pending mark, so
    /// that its next Offline period files a new slot.
    fn forget_retired(&self, retention: &Retention, now: Now) -> usize {
        let after_ms = duration_millis(retention.after);
        let mut dropped = 0;
        let mut not_yet = Vec::new();
        while let Some((_, due)) = retention.index.take_due(now.mono) {
            for batch in due.chunks(SWEEP_BATCH) {
                for &user in batch {
                    let mut refile = None;
                    let mut delivery = None;
                    let mut kept = false;
                    let removed = self.users.remove_if_mut(&user, |_, entry| {
                        if entry.is_unseen() {
                            // Forgotten already (a slot left by a restore): settings only.
                            return false;
                        }
                        if let Some(live) = live_mut(&mut entry.record) {
                            if !live.left {
                                live.retention_pending = false;
                                return false;
                            }
                            // Disconnected: Offline, and this is its slot.
                        }
                        let age = now.wall.0.saturating_sub(entry.last_online().0).max(0) as u64;
                        let left = after_ms.saturating_sub(age);
                        if left > 0 {
                            refile = Some(Mono(now.mono.0.saturating_add(left)));
                            return false;
                        }
                        // Forgotten: from now on it reads as never seen; settings stay.
                        match self.forget_presence(user, entry, now.wall) {
                            Some(settings) => {
                                kept = true;
                                delivery = self.tell_forgotten(user, settings, now.wall);
                                false
                            }
                            None => {
                                let settings = Settings::default();
                                delivery = self.tell_forgotten(user, settings, now.wall);
                                true
                            }
                        }
                    });
                    if let Some(delivery) = delivery {
                        delivery.deliver();
                    }
                    if removed.is_some() || kept {
                        dropped += 1;
                    } else if let Some(due) = refile {
                        not_yet.push((user, due));
                    }
                }
                std::thread::yield_now();
            }
        }
        retention.index.schedule_many(not_yet);
        dropped
    }

    /// Forgets `user`'s presence, under its lock. With settings that are not the default
    /// ones as of `now`, the entry stays, marked unseen, with those settings (the frozen
    /// `lastOnline` of an invisibility included), and they are returned; otherwise `None`,
    /// and the caller removes the entry (its slot in `invisible` is removed here).
    fn forget_presence(
        &self,
        user: UserId,
        entry: &mut Entry,
        now: WallMillis,
    ) -> Option<Settings> {
        let settings = self.settings_of(user, entry).as_of(now);
        if settings.is_default() {
            if entry.is_invisible() {
                self.invisible.remove(&user);
            }
            if entry.is_unseen() {
                self.unseen.fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        }
        if !entry.is_unseen() {
            self.unseen.fetch_add(1, Ordering::Relaxed);
        }
        entry.word = UNSEEN | (entry.word & SETTINGS_BITS);
        entry.record = Location::nowhere().record();
        self.store_settings(user, entry, settings);
        Some(settings)
    }

    /// The change of `user` to reading as never seen, with `settings`, to hand to its
    /// watchers. Called under its lock; delivered by the caller once the lock is released.
    #[must_use]
    fn tell_forgotten(
        &self,
        user: UserId,
        settings: Settings,
        now: WallMillis,
    ) -> Option<Delivery> {
        let changes = self.changes.as_ref()?;
        if !changes.watched() {
            return None;
        }
        changes.publish_later(&PresenceView::never_seen(user), settings, now)
    }

    /// See [`crate::presence::Presence::report_game_server`]. The server's lock is held while
    /// its players are changed, one user's lock at a time (servers before users, always),
    /// so that two calls for one server apply whole, one after the other.
    pub fn report_game_server(
        &self,
        game: Uuid,
        place: &GamePlace,
        players: &[UserId],
        now: Now,
    ) -> Result<(), GameServerError> {
        let deadline = now.mono.saturating_add(self.games.server_ttl);
        let mut listed = players.to_vec();
        listed.sort_unstable();
        listed.dedup();
        let mut server = match self.servers.entry(game) {
            MapEntry::Occupied(occupied) => occupied.into_ref(),
            MapEntry::Vacant(vacant) => {
                if self.server_count.load(Ordering::Relaxed) >= self.games.servers {
                    return Err(GameServerError::Full);
                }
                self.server_count.fetch_add(1, Ordering::Relaxed);
                self.servers_due.fetch_min(deadline.0, Ordering::Relaxed);
                vacant.insert(Server {
                    place: self.places.get(place),
                    deadline,
                    players: Box::default(),
                })
            }
        };
        let server = &mut *server;
        if *server.place != *place {
            server.place = self.places.get(place);
        }
        // A server past its deadline had ended every session in it: listing a player again
        // is a new join (see `join`).
        server.deadline = deadline;
        let gone = sorted_difference(&server.players, &listed);
        server.players = listed.into_boxed_slice();
        for &user in &server.players {
            self.join(user, game, &server.place, deadline, now);
        }
        for user in gone {
            self.leave(user, game, now);
        }
        Ok(())
    }

    /// See [`crate::presence::Presence::game_server_players`].
    pub fn game_server_players(
        &self,
        game: Uuid,
        joined: &[UserId],
        left: &[UserId],
        now: Now,
    ) -> Result<(), GameServerError> {
        let Some(mut server) = self.servers.get_mut(&game) else {
            return Err(GameServerError::Unknown);
        };
        let server = &mut *server;
        if server.deadline <= now.mono {
            return Err(GameServerError::Unknown);
        }
        let mut added = joined.to_vec();
        added.sort_unstable();
        added.dedup();
        let added = sorted_difference(&added, &server.players);
        let mut removed = left.to_vec();
        removed.sort_unstable();
        removed.dedup();
        let staying = server.players.len() - sorted_intersection_len(&server.players, &removed);
        if staying + added.len() > self.games.players_per_server {
            return Err(GameServerError::TooManyPlayers);
        }
        let mut players = sorted_difference(&server.players, &removed);
        players.extend_from_slice(&added);
        players.sort_unstable();
        server.players = players.into_boxed_slice();
        for &user in joined {
            self.join(user, game, &server.place, server.deadline, now);
        }
        for &user in &removed {
            self.leave(user, game, now);
        }
        Ok(())
    }

    /// See [`crate::presence::Presence::end_game_server`].
    pub fn end_game_server(&self, game: Uuid, now: Now) {
        let Some((_, server)) = self.servers.remove(&game) else {
            return;
        };
        self.server_count.fetch_sub(1, Ordering::Relaxed);
        if now.mono < server.deadline {
            for &user in &server.players {
                self.leave(user, game, now);
            }
        }
    }

    /// Live game servers, as of the last sweep.
    pub fn game_servers(&self) -> usize {
        self.server_count.load(Ordering::Relaxed)
    }

    /// `user` is in `server` until `deadline`: a new session (joined above every one it
    /// holds, the oldest ended when it holds the most allowed), or the same one renewed.
    fn join(&self, user: UserId, game: Uuid, place: &SharedPlace, deadline: Mono, now: Now) {
        let session = || GameSession {
            game,
            place: place.clone(),
            deadline,
        };
        let (filed, delivery) = match self.users.entry(user) {
            MapEntry::Occupied(mut occupied) if occupied.get().is_unseen() => {
                // Settings only until now: seen for the first time, its settings kept.
                let entry = occupied.get_mut();
                entry.first_seen(now.wall, self.new_player(session(), false));
                self.unseen.fetch_sub(1, Ordering::Relaxed);
                (Filed::Expiry(deadline), self.tell(user, entry, now))
            }
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                entry.set_last_online(now.wall);
                let (filed, changed) = match live_mut(&mut entry.record) {
                    None => {
                        let pending = self.retention.is_some();
                        entry.record = self.new_player(session(), pending);
                        (Filed::Expiry(deadline), true)
                    }
                    Some(live) => {
                        let before = Shown::of(live, now.mono);
                        let unswept = Shown::unswept(live, now.mono);
                        let counted = live.counted();
                        // Ended sessions go: something is live from now on, so none of
                        // them is the one an Offline user would show.
                        if live.games.iter().any(|g| g.deadline <= now.mono) {
                            live.games = live
                                .games
                                .iter()
                                .filter(|g| now.mono < g.deadline)
                                .cloned()
                                .collect();
                        }
                        match live.game_index(game) {
                            Some(i) => {
                                let held = &mut live.games[i];
                                held.deadline = deadline;
                                if !held.place.same(place) {
                                    held.place = place.clone();
                                }
                            }
                            None => {
                                // Appended: the last in the list ranks above every other.
                                let evicted = sessions::evicted_by_join(
                                    live.ranks(),
                                    self.games.sessions_per_user,
                                );
                                let mut games = std::mem::take(&mut live.games).into_vec();
                                if let Some(oldest) = evicted {
                                    games.remove(oldest);
                                }
                                games.push(session());
                                live.games = Games::from_vec(games);
                            }
                        }
                        let filed = self.refile(live, now.mono);
                        self.recount(counted, live.counted());
                        (filed, unswept || Shown::of(live, now.mono) != before)
                    }
                };
                let delivery = changed
                    .then(|| self.tell(user, occupied.get(), now))
                    .flatten();
                (filed, delivery)
            }
            MapEntry::Vacant(vacant) => {
                let record = self.new_player(session(), false);
                let entry = vacant.insert(Entry::seen(now.wall, record));
                (Filed::Expiry(deadline), self.tell(user, &entry, now))
            }
        };
        if let Some(delivery) = delivery {
            delivery.deliver();
        }
        self.file(user, filed);
    }

    /// The record of a user whose only session is `session`, counted.
    fn new_player(&self, session: GameSession, retention_pending: bool) -> Arc<Record> {
        self.count_session(PresenceType::InGame, 1);
        Arc::new(Record::Live(Live {
            location: session.place.location.clone(),
            deadline: Mono(0),
            scheduled: session.deadline,
            retention_pending,
            left: true,
            kind: PresenceType::Online,
            place: None,
            game_id: None,
            games: Games::from_vec(vec![session]),
        }))
    }

    /// `user`'s session in server `game` ends now, if it is live; nothing else of the user
    /// is touched. A user left with no live session is Offline from now on, at the location
    /// of the session just ended.
    fn leave(&self, user: UserId, game: Uuid, now: Now) {
        let Some(mut guard) = self.users.get_mut(&user) else {
            return;
        };
        let entry = &mut *guard;
        let Some(live) = live_mut(&mut entry.record) else {
            return;
        };
        let Some(i) = live
            .game_index(game)
            .filter(|&i| now.mono < live.games[i].deadline)
        else {
            return;
        };
        // The word alone (`live` borrows the record): `set_last_online`, field by field.
        entry.word = (entry.word & !TIME_MASK) | pack_time(now.wall);
        let before = Shown::of(live, now.mono);
        let unswept = Shown::unswept(live, now.mono);
        let counted = live.counted();
        let mut filed = Filed::Nothing;
        live.games[i].deadline = now.mono;
        if live.pick(now.mono).is_none() {
            // Nothing live any more: Offline now, keeping what it showed last.
            self.recount(counted, None);
            if let (Some(due), false) = (self.retention_due(now.mono), live.retention_pending) {
                filed = Filed::Retention(due);
            }
            entry.record = live.offline_location().record();
        } else {
            let mut games = std::mem::take(&mut live.games).into_vec();
            games.remove(i);
            live.games = Games::from_vec(games);
            self.recount(counted, live.counted());
        }
        let delivery = match &*entry.record {
            _ if unswept => self.tell(user, entry, now),
            Record::Live(live) if Shown::of(live, now.mono) == before => None,
            _ => self.tell(user, entry, now),
        };
        drop(guard);
        if let Some(delivery) = delivery {
            delivery.deliver();
        }
        self.file(user, filed);
    }

    /// Users held in memory, present or not: every user seen and not forgotten. Entries
    /// that hold only the settings of a user never seen (or forgotten) are not counted:
    /// they read as never seen. Locks every shard in turn; exact when nothing changes
    /// meanwhile.
    pub fn len(&self) -> usize {
        self.users
            .len()
            .saturating_sub(self.unseen.load(Ordering::Relaxed))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Users whose settings are not the default ones, as stored (an invisibility that ended
    /// since the last clean-up still counts), seen or not: the entries with settings bits.
    /// Walks the whole map: for tests and benches.
    pub fn users_with_settings(&self) -> usize {
        self.users
            .iter()
            .filter(|entry| entry.word & SETTINGS_BITS != 0)
            .count()
    }

    /// Entries that hold only settings (see [`Store::len`]).
    pub fn unseen_with_settings(&self) -> usize {
        self.unseen.load(Ordering::Relaxed)
    }

    /// Slots in the expiry index (one per present user, plus stale ones not yet due).
    pub fn scheduled(&self) -> usize {
        self.expiry.len()
    }

    /// Slots in the retention index: never more than the users held (0 without retention).
    pub fn retention_scheduled(&self) -> usize {
        self.retention.as_ref().map_or(0, |r| r.index.len())
    }
}

// ---- privacy (CONTRACT section 11): settings and friendships ----

impl Store {
    /// `user`'s settings as its entry holds them (read under its lock).
    #[inline]
    fn settings_of(&self, user: UserId, entry: &Entry) -> Settings {
        if entry.word & SETTINGS_BITS == 0 {
            // Most users: nothing to decode.
            return Settings::default();
        }
        if entry.is_invisible() {
            if let Some(settings) = self.invisible.get(&user) {
                return *settings;
            }
        }
        Settings::new(entry.visibility(), None)
    }

    /// Makes `settings` `user`'s in its entry and in `invisible`, under its lock.
    fn store_settings(&self, user: UserId, entry: &mut Entry, settings: Settings) {
        let was_invisible = entry.is_invisible();
        entry.word = (entry.word & !SETTINGS_BITS) | visibility_bits(settings.visibility());
        if settings.invisibility().is_some() {
            entry.word |= INVISIBLE;
            self.invisible.insert(user, settings);
        } else if was_invisible {
            self.invisible.remove(&user);
        }
    }

    /// Calls `visit` with each id as read for `viewer`, in the given order, at `now`: its
    /// real entry, its settings, and whether `viewer` is a signed-in friend of it (see
    /// [`crate::presence::Presence::visit_seen`]). The users are read under their shards'
    /// read locks, each taken once (see [`Store::read_many`]).
    ///
    /// An anonymous viewer or a `read` key costs nothing more than [`Store::visit_many`]
    /// but two bit tests a user. A signed-in viewer's friend list is read once, in place:
    /// its shard's read lock is held for the whole call (taken before any lock of a user,
    /// the only order in which these two kinds of lock are ever nested).
    pub fn visit_seen(
        &self,
        viewer: Viewer,
        ids: &[UserId],
        now: Now,
        mut visit: impl FnMut(&Seen<'_, '_>),
    ) {
        let friends = match viewer {
            Viewer::User(id) => self.friends.list(id),
            Viewer::Anonymous | Viewer::Reader => None,
        };
        self.read_many(ids, |id, entry| {
            let friend = friends.as_ref().is_some_and(|list| list.contains(id));
            match entry {
                Some(entry) => visit(&Seen {
                    view: &entry.view(id, now.mono),
                    settings: self.settings_of(id, entry),
                    friend,
                    now: now.wall,
                }),
                None => visit(&Seen {
                    view: &PresenceView::never_seen(id),
                    settings: Settings::default(),
                    friend,
                    now: now.wall,
                }),
            }
        });
    }

    /// `user`'s settings as of `now` (an invisibility that has ended is not kept).
    pub fn settings(&self, user: UserId, now: Now) -> Settings {
        self.users
            .get(&user)
            .map_or_else(Settings::default, |entry| self.settings_of(user, &entry))
            .as_of(now.wall)
    }

    /// Applies `patch` to `user`'s settings at `now` with [`privacy::apply`], under the
    /// user's lock, so that an invisibility that begins freezes the `lastOnline` the user
    /// has at that instant (none for a user never seen). Returns the new settings.
    ///
    /// A user never seen gets an entry that holds only its settings (it still reads as
    /// never seen); one whose settings become the default ones again loses it. The user's
    /// watchers are always told (what each already holds is not sent again).
    pub fn change_settings(&self, user: UserId, patch: &CheckedPatch, now: Now) -> Settings {
        let (settings, delivery) = match self.users.entry(user) {
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                let last_online = (!entry.is_unseen()).then(|| entry.last_online());
                let old = self.settings_of(user, entry);
                let settings = privacy::apply(old, patch, now.wall, last_online);
                self.store_settings(user, entry, settings);
                let delivery = self.tell(user, entry, now);
                if entry.is_unseen() && settings.is_default() {
                    occupied.remove();
                    self.unseen.fetch_sub(1, Ordering::Relaxed);
                }
                (settings, delivery)
            }
            MapEntry::Vacant(vacant) => {
                let settings = privacy::apply(Settings::default(), patch, now.wall, None);
                let delivery = if settings.is_default() {
                    self.tell_forgotten(user, settings, now.wall)
                } else {
                    let mut entry = Entry::unseen();
                    self.store_settings(user, &mut entry, settings);
                    self.unseen.fetch_add(1, Ordering::Relaxed);
                    let entry = vacant.insert(entry);
                    self.tell(user, &entry, now)
                };
                (settings, delivery)
            }
        };
        if let Some(delivery) = delivery {
            delivery.deliver();
        }
        settings
    }

    /// Puts back `user`'s saved settings as of `now`, keeping its presence (a user not
    /// restored, or never seen, gets an entry holding only them). Settings that are the
    /// default ones by `now` (an invisibility ended meanwhile) leave nothing behind.
    pub fn restore_settings(&self, user: UserId, settings: Settings, now: Now) {
        let settings = settings.as_of(now.wall);
        match self.users.entry(user) {
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                self.store_settings(user, entry, settings);
                if entry.is_unseen() && settings.is_default() {
                    occupied.remove();
                    self.unseen.fetch_sub(1, Ordering::Relaxed);
                }
            }
            MapEntry::Vacant(vacant) => {
                if !settings.is_default() {
                    let mut entry = Entry::unseen();
                    self.store_settings(user, &mut entry, settings);
                    self.unseen.fetch_add(1, Ordering::Relaxed);
                    vacant.insert(entry);
                }
            }
        }
    }

    /// Drops the invisibilities that have ended by `now` (reads already show them ended:
    /// this only gives their memory back), and the entries of users never seen left with
    /// the default settings. Run by the sweeper now and then.
    ///
    /// The ended ones are found first, reading `invisible` alone (no user's lock held),
    /// then each is re-checked under its user's lock, taken before `invisible`'s as always.
    fn end_invisibilities(&self, now: WallMillis) -> usize {
        let ended: Vec<UserId> = self
            .invisible
            .iter()
            .filter(|settings| !settings.value().invisible_at(now))
            .map(|settings| *settings.key())
            .collect();
        let mut cleaned = 0;
        for user in ended {
            match self.users.entry(user) {
                MapEntry::Occupied(mut occupied) => {
                    let entry = occupied.get_mut();
                    let settings = self.settings_of(user, entry).as_of(now);
                    if settings.invisibility().is_some() {
                        continue; // Made invisible again meanwhile.
                    }
                    self.store_settings(user, entry, settings);
                    if entry.is_unseen() && settings.is_default() {
                        occupied.remove();
                        self.unseen.fetch_sub(1, Ordering::Relaxed);
                    }
                    cleaned += 1;
                }
                // Never left behind (both change under the user's lock); dropped if it were.
                MapEntry::Vacant(_) => {
                    self.invisible.remove(&user);
                }
            }
        }
        cleaned
    }

    /// Users whose invisibility is held in the side map (ended ones not cleaned up yet
    /// included).
    pub fn invisible_users(&self) -> usize {
        self.invisible.len()
    }

    /// The friendship table.
    pub fn friendships(&self) -> &Friendships {
        &self.friends
    }

    /// See [`crate::presence::Presence::change_friendships`]: the pairs skipped for
    /// `privacy.max_friends`, in the order given.
    pub fn change_friendships(&self, changes: &FriendshipChanges, now: Now) -> Vec<FriendPair> {
        let _order = self.befriending.lock();
        let applied = self.friends.apply_reported(changes);
        self.tell_friendships(&applied.changed, now);
        applied.skipped
    }

    /// See [`crate::presence::Presence::replace_friends`]: the pairs skipped, as
    /// `(user, other)`, ascending.
    pub fn replace_friends(&self, user: UserId, list: &FriendList, now: Now) -> Vec<FriendPair> {
        let _order = self.befriending.lock();
        let applied = self.friends.replace_reported(user, list);
        self.tell_friendships(&applied.changed, now);
        applied.skipped
    }

    /// Puts back saved friendships, `privacy.max_friends` applied as additions apply it;
    /// returns the pairs that did not fit. Nobody watches yet: no watcher is told.
    pub fn restore_friendships(
        &self,
        pairs: impl IntoIterator<Item = FriendPair>,
    ) -> Vec<FriendPair> {
        self.friends.restore(pairs)
    }

    /// The friends of `user`, ascending.
    pub fn friends_of(&self, user: UserId) -> Vec<UserId> {
        self.friends.friends_of(user)
    }

    /// Tells the watchers of both users of every changed pair that their viewer's
    /// friendship changed ([`Changes::befriend`]) and, where one had such a watcher,
    /// publishes that user again as it is now, so that each watcher is sent what it now
    /// sees. Called with `befriending` held, after the write.
    fn tell_friendships(&self, changed: &[(FriendPair, bool)], now: Now) {
        let Some(changes) = self.changes.as_ref() else {
            return;
        };
        for &(pair, friends) in changed {
            let (a, b) = pair.users();
            for (watched, viewer) in [(a, b), (b, a)] {
                if changes.befriend(watched, viewer, friends) {
                    self.republish(watched, now);
                }
            }
        }
    }

    /// Publishes `user` as it is now (its entry, or a user never seen), under its lock like
    /// every other change, delivered once the lock is released.
    fn republish(&self, user: UserId, now: Now) {
        let delivery = match self.users.entry(user) {
            MapEntry::Occupied(occupied) => self.tell(user, occupied.get(), now),
            // The vacant slot holds the shard's lock until the change is versioned.
            MapEntry::Vacant(_vacant) => self.tell_forgotten(user, Settings::default(), now.wall),
        };
        if let Some(delivery) = delivery {
            delivery.deliver();
        }
    }
}

/// The ids of sorted `a` that are not in sorted `b`.
fn sorted_difference(a: &[UserId], b: &[UserId]) -> Vec<UserId> {
    let mut out = Vec::new();
    let mut j = 0;
    for &id in a {
        while j < b.len() && b[j] < id {
            j += 1;
        }
        if b.get(j) != Some(&id) {
            out.push(id);
        }
    }
    out
}

/// How many ids sorted `a` and sorted `b` share.
fn sorted_intersection_len(a: &[UserId], b: &[UserId]) -> usize {
    a.len() - sorted_difference(a, b).len()
}

/// A present user's own session, to change in place; `None` for an Offline user.
///
/// Nothing clones a `Live` record (snapshots copy the session, not the record), so this
/// never copies. Should one ever be shared all the same, `make_mut` gives this entry its own
/// copy instead of leaving the session unchangeable (a shared record was once skipped by
/// the sweeper as stale and never expired).
fn live_mut(record: &mut Arc<Record>) -> Option<&mut Live> {
    if !matches!(**record, Record::Live(_)) {
        // Checked first: `make_mut` on a shared location record would copy it.
        return None;
    }
    match Arc::make_mut(record) {
        Record::Live(live) => Some(live),
        Record::Location(_) => None,
    }
}

/// Which index a change must file its user in, and when the slot is due.
enum Filed {
    Nothing,
    Expiry(Mono),
    Retention(Mono),
}

/// What the sweeper found for one expiry slot.
enum Slot {
    Stale,
    Fresh(Mono),
    /// Flipped Offline; carries when it is due to be forgotten, if it needs a new
    /// retention slot.
    Expired(Option<Mono>),
    /// A disconnected user's record, now reclaimed (not an expiry).
    Left,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::model::PlaceInfo;
    use uuid::Uuid;

    const TTL: Duration = Duration::from_millis(1000);

    fn store() -> Store {
        Store::new(TTL, Duration::from_millis(100), None)
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn at(ms: u64) -> Now {
        Now {
            mono: Mono(ms),
            wall: WallMillis(1_700_000_000_000 + ms as i64),
        }
    }

    fn online(location: &str) -> Heartbeat<'_> {
        Heartbeat::Present {
            location: LocationName::Given(location),
            session: Session {
                kind: PresenceType::Online,
                place: None,
                game_id: None,
            },
        }
    }

    fn in_game(place_id: i64) -> Heartbeat<'static> {
        Heartbeat::Present {
            location: LocationName::Shared(Location::playing()),
            session: Session {
                kind: PresenceType::InGame,
                place: Some(PlaceInfo {
                    place_id,
                    root_place_id: place_id,
                    universe_id: None,
                }),
                game_id: Some(Uuid::nil()),
            },
        }
    }

    fn one(store: &Store, n: u64, now: u64) -> PresenceView<'static> {
        store.get_many(&[user(n)], Mono(now)).remove(0)
    }

    /// A settings body, checked at `at(0)`.
    fn checked(json: &str) -> CheckedPatch {
        checked_at(json, 0)
    }

    fn checked_at(json: &str, ms: u64) -> CheckedPatch {
        serde_json::from_str::<privacy::SettingsPatch>(json)
            .unwrap()
            .check(at(ms).wall)
            .unwrap()
    }

    /// `at(ms)`'s wall-clock time as RFC 3339, for `invisibleUntil`.
    fn rfc3339(ms: u64) -> String {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at(ms).wall.0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// What `viewer` is shown of user `n` at `ms`, through `visit_seen` and the one
    /// decision, with `privacy.show_last_online` on.
    fn shown(store: &Store, viewer: Viewer, n: u64, ms: u64) -> PresenceView<'static> {
        let mut got = None;
        store.visit_seen(viewer, &[user(n)], at(ms), |seen| {
            got = Some(
                seen.sight(viewer, true)
                    .entry(seen.view.clone())
                    .into_owned(),
            );
        });
        got.unwrap()
    }

    /// The settings, friendship flag and real entry `visit_seen` gives of user `n`.
    fn seen(
        store: &Store,
        viewer: Viewer,
        n: u64,
        ms: u64,
    ) -> (Settings, bool, PresenceView<'static>) {
        let mut got = None;
        store.visit_seen(viewer, &[user(n)], at(ms), |seen| {
            got = Some((seen.settings, seen.friend, seen.view.clone().into_owned()));
        });
        got.unwrap()
    }

    fn pairs(remove: &[(u64, u64)], add: &[(u64, u64)]) -> FriendshipChanges {
        let raw = |pairs: &[(u64, u64)]| {
            pairs
                .iter()
                .map(|&(a, b)| [UserId::new(a), UserId::new(b)])
                .collect()
        };
        privacy::FriendshipsBody {
            add: raw(add),
            remove: raw(remove),
        }
        .check()
        .unwrap()
    }

    fn friend_list(owner: u64, ids: &[u64]) -> FriendList {
        privacy::FriendListBody {
            user_ids: Some(ids.iter().map(|&n| UserId::new(n)).collect()),
        }
        .check(user(owner), usize::MAX)
        .unwrap()
    }

    /// Watchers as the store sees them: every publish and friendship notice, in order.
    /// `watching` lists the (watched, viewer) pairs whose notice has a watcher.
    #[derive(Debug, Default)]
    struct Recorder {
        published: parking_lot::Mutex<Vec<(PresenceView<'static>, Settings, WallMillis)>>,
        befriended: parking_lot::Mutex<Vec<(u64, u64, bool)>>,
        watching: Vec<(u64, u64)>,
    }

    impl Changes for Recorder {
        fn watched(&self) -> bool {
            true
        }

        fn publish_later(
            &self,
            view: &PresenceView<'_>,
            settings: Settings,
            now: WallMillis,
        ) -> Option<Delivery> {
            let view = view.clone().into_owned();
            self.published.lock().push((view, settings, now));
            None
        }

        fn befriend(&self, watched: UserId, viewer: UserId, friends: bool) -> bool {
            let (watched, viewer) = (watched.get(), viewer.get());
            self.befriended.lock().push((watched, viewer, friends));
            self.watching.contains(&(watched, viewer))
        }
    }

    fn recorded(watching: &[(u64, u64)]) -> (Store, std::sync::Arc<Recorder>) {
        let recorder = std::sync::Arc::new(Recorder {
            watching: watching.to_vec(),
            ..Recorder::default()
        });
        let store = store().with_changes(recorder.clone());
        (store, recorder)
    }

    impl Recorder {
        fn take(&self) -> Vec<(PresenceView<'static>, Settings, WallMillis)> {
            std::mem::take(&mut *self.published.lock())
        }
    }

    #[test]
    fn an_entry_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn a_user_never_seen_is_offline_with_no_last_online() {
        let s = store();
        assert_eq!(one(&s, 1, 0), PresenceView::never_seen(user(1)));
    }

    #[test]
    fn a_lookup_never_creates_an_entry() {
        let s = store();
        let ids: Vec<_> = (1..=1000).map(user).collect();
        let views = s.get_many(&ids, Mono(0));
        assert_eq!(views.len(), 1000);
        assert!(s.is_empty());
    }

    #[test]
    fn a_heartbeat_makes_the_user_present_until_its_deadline_exactly() {
        let s = store();
        s.heartbeat(user(1), in_game(5), at(10));
        let v = one(&s, 1, 10 + 999);
        assert_eq!(v.kind, PresenceType::InGame);
        assert_eq!(v.place.map(|p| p.place_id), Some(5));
        assert_eq!(v.game_id, Some(Uuid::nil()));
        assert_eq!(v.last_online, Some(at(10).wall));

        // From the deadline on, without any sweep, every read says Offline.
        let v = one(&s, 1, 10 + 1000);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.place, None);
        assert_eq!(v.game_id, None);
        assert_eq!(v.last_location, "Playing");
        assert_eq!(v.last_online, Some(at(10).wall));
    }

    #[test]
    fn the_sweeper_flips_expired_users_offline_keeping_last_online_and_location() {
        let s = store();
        s.heartbeat(user(1), online("Website"), at(0));
        s.heartbeat(user(2), online("Xbox"), at(500));
        assert_eq!(s.sweep(at(999)), SweepReport::default());

        let report = s.sweep(at(1100));
        assert_eq!(report.expired, 1);
        let v = one(&s, 1, 1100);
        assert_eq!(
            (v.kind, &*v.last_location, v.last_online),
            (PresenceType::Offline, "Website", Some(at(0).wall))
        );
        assert_eq!(one(&s, 2, 1100).kind, PresenceType::Online);

        assert_eq!(s.sweep(at(1600)).expired, 1);
        assert_eq!(s.scheduled(), 0);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_expired_user_points_at_the_shared_location_record() {
        let s = store();
        s.heartbeat(user(1), online("Xbox"), at(0));
        s.heartbeat(user(2), online("Xbox"), at(0));
        s.sweep(at(2000));
        let a = s.users.get(&user(1)).unwrap().record.clone();
        let b = s.users.get(&user(2)).unwrap().record.clone();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn a_user_is_flipped_by_the_first_sweep_at_or_after_its_deadline() {
        // Buckets are 100 ms wide: deadlines 1050 and 1090 share one; sweeping at 1050 must
        // flip the first without waiting for the bucket's end, and keep the second.
        let s = store();
        s.heartbeat(user(1), online("a"), at(50));
        s.heartbeat(user(2), online("a"), at(90));
        let report = s.sweep(at(1_050));
        assert_eq!((report.expired, report.rescheduled), (1, 0));
        assert_eq!(one(&s, 2, 1_050).kind, PresenceType::Online);
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.sweep(at(1_090)).expired, 1);
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn a_user_who_heartbeated_since_is_rescheduled_not_expired() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), online("b"), at(900));
        let report = s.sweep(at(1000));
        assert_eq!(report.expired, 0);
        assert_eq!(report.rescheduled, 1);
        assert_eq!(one(&s, 1, 1800).kind, PresenceType::Online);
        assert_eq!(one(&s, 1, 1800).last_location, "b");
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.sweep(at(2000)).expired, 1);
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn a_present_user_sits_in_the_index_once_however_often_it_heartbeats() {
        let s = store();
        for t in 0..50 {
            s.heartbeat(user(1), online("a"), at(t * 10));
        }
        assert_eq!(s.scheduled(), 1);
    }

    #[test]
    fn a_heartbeat_after_expiry_brings_the_user_back_online() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.sweep(at(5000));
        assert_eq!(one(&s, 1, 5000).kind, PresenceType::Offline);
        s.heartbeat(user(1), in_game(9), at(5000));
        assert_eq!(one(&s, 1, 5001).kind, PresenceType::InGame);
        assert_eq!(s.scheduled(), 1);
    }

    #[test]
    fn a_heartbeat_after_the_deadline_but_before_the_sweep_is_kept() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), online("b"), at(1500));
        let report = s.sweep(at(1600));
        assert_eq!((report.expired, report.rescheduled), (0, 1));
        assert_eq!(one(&s, 1, 2499).kind, PresenceType::Online);
        assert_eq!(s.sweep(at(2500)).expired, 1);
    }

    #[test]
    fn disconnect_makes_the_user_offline_at_once_and_keeps_the_location() {
        let s = store();
        s.heartbeat(user(1), in_game(9), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(300));
        let v = one(&s, 1, 301);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.last_location, "Playing");
        assert_eq!(v.last_online, Some(at(300).wall));
        assert_eq!(v.place, None);
        // Its stale index slot is dropped by the next due sweep, without counting an expiry.
        assert_eq!(s.sweep(at(2000)), SweepReport::default());
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn disconnect_of_a_user_never_seen_records_last_online() {
        let s = store();
        s.heartbeat(user(7), Heartbeat::Disconnect, at(42));
        let v = one(&s, 7, 50);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.last_location, "");
        assert_eq!(v.last_online, Some(at(42).wall));
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn reconnecting_after_disconnect_in_the_same_bucket_is_swept_once() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(10));
        s.heartbeat(user(1), online("b"), at(20));
        // The disconnected session's record and slot were reused.
        assert_eq!(s.scheduled(), 1);
        let report = s.sweep(at(1100));
        assert_eq!((report.expired, report.rescheduled), (1, 0));
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn reconnecting_after_disconnect_keeps_only_the_new_sessions_slot_alive() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(100));
        s.heartbeat(user(1), online("b"), at(500));
        let report = s.sweep(at(1000));
        assert_eq!((report.expired, report.rescheduled), (0, 1));
        assert_eq!(one(&s, 1, 1000).kind, PresenceType::Online);
        assert_eq!(s.sweep(at(1500)).expired, 1);
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn connecting_and_disconnecting_in_a_loop_holds_one_expiry_slot() {
        let s = store();
        for t in 0..1000 {
            s.heartbeat(user(1), in_game(5), at(t * 2));
            assert_eq!(one(&s, 1, t * 2).kind, PresenceType::InGame);
            s.heartbeat(user(1), Heartbeat::Disconnect, at(t * 2 + 1));
            let v = one(&s, 1, t * 2 + 1);
            assert_eq!((v.kind, v.place), (PresenceType::Offline, None));
            assert_eq!(v.last_online, Some(at(t * 2 + 1).wall));
        }
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.sessions_by_type().map(|(_, n)| n), [0, 0, 0]);
        // Reclaiming the disconnected record is not an expiry, and frees the slot.
        assert_eq!(s.sweep(at(5000)), SweepReport::default());
        assert_eq!(s.scheduled(), 0);
        assert_eq!(one(&s, 1, 5000).last_location, "Playing");
    }

    #[test]
    fn sessions_are_counted_by_type_through_every_transition() {
        let s = store();
        let counts = |s: &Store| s.sessions_by_type().map(|(_, n)| n);
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(2), online("a"), at(0));
        s.heartbeat(user(3), in_game(5), at(0));
        assert_eq!(counts(&s), [2, 1, 0]);
        s.heartbeat(user(2), in_game(6), at(100));
        assert_eq!(counts(&s), [1, 2, 0]);
        s.heartbeat(user(3), Heartbeat::Disconnect, at(200));
        assert_eq!(counts(&s), [1, 1, 0]);
        s.sweep(at(1_050));
        assert_eq!(counts(&s), [0, 1, 0]);
        s.sweep(at(1_200));
        assert_eq!(counts(&s), [0, 0, 0]);
        s.heartbeat(user(1), online("b"), at(2_000));
        assert_eq!(counts(&s), [1, 0, 0]);
    }

    #[test]
    fn retention_forgets_exactly_the_offline_users_past_it() {
        let s = Store::new(
            TTL,
            Duration::from_millis(100),
            Some(Duration::from_secs(10)),
        );
        s.heartbeat(user(1), online("a"), at(0)); // offline at 1000, lastOnline 0
        s.heartbeat(user(2), Heartbeat::Disconnect, at(5_000)); // lastOnline 5000
        s.heartbeat(user(3), online("c"), at(0));
        s.sweep(at(1_000));
        for t in (1_000..=9_900).step_by(100) {
            s.heartbeat(user(3), online("c"), at(t)); // stays present throughout
            assert_eq!(s.sweep(at(t)).dropped, 0, "at {t}");
        }
        // Retention slots are a 64th of the retention wide, so a drop may come that late.
        assert_eq!(s.sweep(at(10_200)).dropped, 1);
        assert_eq!(one(&s, 1, 10_200), PresenceView::never_seen(user(1)));
        assert_eq!(one(&s, 2, 10_200).kind, PresenceType::Offline);
        assert_eq!(s.sweep(at(14_900)).dropped, 0);
        assert_eq!(s.sweep(at(15_200)).dropped, 1);
        // User 3's last heartbeat was at 9_900: Offline at 10_900, forgotten from 19_900.
        assert_eq!(s.sweep(at(19_800)).dropped, 0);
        assert_eq!(one(&s, 3, 19_800).kind, PresenceType::Offline);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(at(20_100)).dropped, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_user_who_comes_back_is_not_forgotten_by_an_old_retention_slot() {
        let s = Store::new(
            TTL,
            Duration::from_millis(100),
            Some(Duration::from_secs(10)),
        );
        s.heartbeat(user(1), Heartbeat::Disconnect, at(0));
        s.heartbeat(user(1), online("back"), at(9_000));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(9_500));
        assert_eq!(s.sweep(at(10_200)).dropped, 0);
        assert_eq!(one(&s, 1, 10_200).last_location, "back");
        assert_eq!(s.sweep(at(19_400)).dropped, 0);
        assert_eq!(s.sweep(at(19_700)).dropped, 1);
    }

    #[test]
    fn the_snapshot_writer_runs_with_no_shard_lock_held() {
        let s = store();
        for n in 1..=300 {
            s.heartbeat(user(n), online("a"), at(0));
            s.heartbeat(user(n + 1_000), Heartbeat::Disconnect, at(0));
        }
        // Some with settings, one of them never seen: its settings are saved alone.
        let friends_only = checked(r#"{"visibility":"friends"}"#);
        for n in [1, 1_001, 5_000] {
            s.change_settings(user(n), &friends_only, at(0));
        }
        let ids = s.user_ids();
        let (mut saved, mut settings) = (0, 0);
        s.save_many(&ids, at(10), |saving| {
            let id = match saving {
                Saving::User(u) => {
                    saved += 1;
                    u.user_id
                }
                Saving::Settings(id, kept) => {
                    assert_eq!(kept.visibility(), Visibility::Friends);
                    settings += 1;
                    id
                }
            };
            // A heartbeat to this user could take its shard's write lock right now.
            assert!(!s.users.try_get_mut(&id).is_locked(), "{id}");
        });
        assert_eq!((saved, settings), (600, 3));
    }

    fn with_retention() -> Store {
        Store::new(
            TTL,
            Duration::from_millis(100),
            Some(Duration::from_secs(10)),
        )
    }

    fn retention_slots(s: &Store) -> usize {
        s.retention.as_ref().unwrap().index.len()
    }

    #[test]
    fn going_online_and_offline_again_and_again_keeps_one_retention_slot() {
        let s = with_retention();
        for i in 0..1_000 {
            s.heartbeat(user(1), online("a"), at(i * 2));
            s.heartbeat(user(1), Heartbeat::Disconnect, at(i * 2 + 1));
            // Disconnecting again while Offline files nothing either.
            s.heartbeat(user(1), Heartbeat::Disconnect, at(i * 2 + 1));
        }
        assert_eq!(retention_slots(&s), 1);
        // Expiry instead of disconnect: still one slot, through sweeps.
        for i in 0..50 {
            let t = 2_000 + i * 2_000;
            s.heartbeat(user(1), online("b"), at(t));
            s.sweep(at(t + 1_000));
            assert_eq!(one(&s, 1, t + 1_000).kind, PresenceType::Offline);
        }
        assert_eq!(retention_slots(&s), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_retention_slot_due_while_present_is_filed_again_on_the_next_offline_period() {
        let s = with_retention();
        s.heartbeat(user(1), Heartbeat::Disconnect, at(0)); // slot due at 10_000
        s.heartbeat(user(1), online("a"), at(9_000)); // present: the slot stays pending
        assert_eq!(retention_slots(&s), 1);
        for t in (9_500..=10_500).step_by(500) {
            s.heartbeat(user(1), online("a"), at(t));
        }
        assert_eq!(s.sweep(at(10_500)).dropped, 0);
        // The slot came due while present: consumed, nothing pending any more.
        assert_eq!(retention_slots(&s), 0);
        s.heartbeat(user(1), Heartbeat::Disconnect, at(11_000));
        assert_eq!(retention_slots(&s), 1);
        assert_eq!(s.sweep(at(20_900)).dropped, 0);
        assert_eq!(s.sweep(at(21_200)).dropped, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn an_early_retention_slot_is_refiled_at_the_exact_due_time() {
        let s = with_retention();
        s.heartbeat(user(1), Heartbeat::Disconnect, at(0)); // due at 10_000
        s.heartbeat(user(1), online("a"), at(4_000));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(5_000)); // pending: nothing new
        assert_eq!(retention_slots(&s), 1);
        assert_eq!(s.sweep(at(10_200)).dropped, 0);
        assert_eq!(retention_slots(&s), 1);
        assert_eq!(s.sweep(at(14_900)).dropped, 0);
        assert_eq!(s.sweep(at(15_200)).dropped, 1);
        assert_eq!(retention_slots(&s), 0);
    }

    #[test]
    fn a_shared_live_record_is_still_updated_and_expired() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        let shared = s.users.get(&user(1)).unwrap().record.clone();
        // A heartbeat on a shared record takes a copy and keeps the one expiry slot.
        s.heartbeat(user(1), online("b"), at(100));
        assert_eq!(s.scheduled(), 1);
        assert_eq!(one(&s, 1, 1_050).kind, PresenceType::Online);
        // Shared again, so that the sweeper meets a shared record as well.
        let again = s.users.get(&user(1)).unwrap().record.clone();
        assert!(!Arc::ptr_eq(&shared, &again));
        // The sweeper expires a shared record too, and the count goes back to zero.
        assert_eq!(s.sweep(at(1_050)).rescheduled, 1);
        assert_eq!(s.sweep(at(1_100)).expired, 1);
        drop((shared, again));
        assert_eq!(s.sessions_by_type().map(|(_, n)| n), [0, 0, 0]);
        assert_eq!(s.scheduled(), 0);
    }

    fn saved(n: u64, last_online: i64) -> SavedUser<'static> {
        SavedUser {
            user_id: user(n),
            last_online: WallMillis(last_online),
            last_location: Cow::Borrowed("Home"),
            live: None,
            games: Vec::new(),
        }
    }

    #[test]
    fn restored_users_past_retention_are_not_kept_and_others_are_due_on_time() {
        let s = with_retention();
        // A process whose monotonic clock has just started, an hour after the snapshot.
        let now = Now {
            mono: Mono(5),
            wall: WallMillis(1_700_000_000_000),
        };
        assert!(!s.restore(saved(1, now.wall.0 - 3_600_000), now));
        assert!(!s.restore(saved(2, now.wall.0 - 10_000), now));
        assert!(s.restore(saved(3, now.wall.0 - 8_000), now));
        assert_eq!(s.len(), 1);
        assert_eq!(retention_slots(&s), 1);
        let later = |ms: u64| Now {
            mono: Mono(5 + ms),
            wall: WallMillis(now.wall.0 + ms as i64),
        };
        // Due 2s after the restart (bucket resolution: 156ms), not 10s.
        assert_eq!(s.sweep(later(1_800)).dropped, 0);
        assert_eq!(s.sweep(later(2_200)).dropped, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn heartbeats_racing_the_sweeper_are_never_lost() {
        let s = std::sync::Arc::new(store());
        let users: Vec<_> = (1..=2000).map(user).collect();
        for &u in &users {
            s.heartbeat(u, online("a"), at(0));
        }
        // Half the users heartbeat again at t=900 while the sweeper expires at t=1000.
        let writer = {
            let s = std::sync::Arc::clone(&s);
            let users = users.clone();
            std::thread::spawn(move || {
                for &u in users.iter().step_by(2) {
                    s.heartbeat(u, online("b"), at(900));
                }
            })
        };
        let mut expired = s.sweep(at(1000)).expired;
        writer.join().unwrap();
        expired += s.sweep(at(1000)).expired;
        // Odd users surely expired; an even one may have expired before its heartbeat landed.
        assert!(expired >= 1000, "{expired}");
        for (i, v) in s.get_many(&users, Mono(1000)).iter().enumerate() {
            let expected = if i % 2 == 0 {
                PresenceType::Online
            } else {
                PresenceType::Offline
            };
            assert_eq!(v.kind, expected, "user {}", v.user_id);
        }
        assert_eq!(s.scheduled(), 1000);
    }

    // --- Privacy: settings ----------------------------------------------------------------

    #[test]
    fn a_visibility_lives_in_the_entry_and_costs_nothing_more() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        for (json, visibility) in [
            (r#"{"visibility":"friends"}"#, Visibility::Friends),
            (r#"{"visibility":"nobody"}"#, Visibility::Nobody),
            (r#"{"visibility":"everyone"}"#, Visibility::Everyone),
        ] {
            let settings = s.change_settings(user(1), &checked(json), at(10));
            assert_eq!(settings, Settings::new(visibility, None));
            assert_eq!(s.settings(user(1), at(20)), settings);
            assert_eq!(s.invisible_users(), 0);
            // The presence is untouched.
            let v = one(&s, 1, 20);
            assert_eq!(
                (v.kind, v.last_online),
                (PresenceType::Online, Some(at(0).wall))
            );
        }
        assert_eq!(s.users_with_settings(), 0);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn a_user_never_seen_with_settings_reads_as_never_seen_until_its_first_heartbeat() {
        let s = store();
        let settings = s.change_settings(user(1), &checked(r#"{"visibility":"friends"}"#), at(0));
        assert_eq!(settings.visibility(), Visibility::Friends);
        // Lookups, the real entry given to the decision, counts: never seen.
        assert_eq!(one(&s, 1, 10), PresenceView::never_seen(user(1)));
        for viewer in [Viewer::Anonymous, Viewer::Reader, Viewer::User(user(1))] {
            assert_eq!(shown(&s, viewer, 1, 10), PresenceView::never_seen(user(1)));
            let (kept, _, real) = seen(&s, viewer, 1, 10);
            assert_eq!((kept, real), (settings, PresenceView::never_seen(user(1))));
        }
        assert_eq!((s.len(), s.is_empty()), (0, true));
        assert_eq!(s.unseen_with_settings(), 1);
        assert_eq!(s.sweep(at(5_000)), SweepReport::default());
        assert_eq!(s.scheduled(), 0);
        assert_eq!(s.sessions_by_type().map(|(_, n)| n), [0, 0, 0]);

        // Its first heartbeat: a user like any other, its settings kept.
        s.heartbeat(user(1), online("Home"), at(6_000));
        let v = one(&s, 1, 6_000);
        assert_eq!((v.kind, &*v.last_location), (PresenceType::Online, "Home"));
        assert_eq!(v.last_online, Some(at(6_000).wall));
        assert_eq!(s.settings(user(1), at(6_000)), settings);
        assert_eq!((s.len(), s.unseen_with_settings()), (1, 0));
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.sessions_by_type().map(|(_, n)| n), [1, 0, 0]);

        // A disconnect, or a game server, as the first sight keeps them too.
        let invisible = checked(r#"{"invisible":true}"#);
        s.change_settings(user(2), &invisible, at(0));
        s.heartbeat(user(2), Heartbeat::Disconnect, at(100));
        assert_eq!(one(&s, 2, 100).last_online, Some(at(100).wall));
        assert!(s.settings(user(2), at(100)).invisible_at(at(100).wall));
        s.change_settings(user(3), &invisible, at(0));
        let place = GamePlace::new(1818, None, &crate::presence::PlaceCatalog::new(&[])).unwrap();
        s.report_game_server(Uuid::from_u128(1), &place, &[user(3)], at(200))
            .unwrap();
        assert_eq!(one(&s, 3, 200).kind, PresenceType::InGame);
        assert!(s.settings(user(3), at(200)).invisible_at(at(200).wall));
        assert_eq!((s.len(), s.unseen_with_settings()), (3, 0));
    }

    #[test]
    fn a_user_never_seen_whose_settings_become_the_default_leaves_nothing_behind() {
        let s = store();
        s.change_settings(
            user(1),
            &checked(r#"{"visibility":"nobody","invisible":true}"#),
            at(0),
        );
        assert_eq!((s.users.len(), s.invisible_users()), (1, 1));
        let back = checked(r#"{"visibility":"everyone","invisible":false}"#);
        assert!(s.change_settings(user(1), &back, at(10)).is_default());
        assert_eq!((s.users.len(), s.invisible_users()), (0, 0));
        assert_eq!(s.unseen_with_settings(), 0);
        // A change to the default settings of a user never seen stores nothing at all.
        assert!(s.change_settings(user(2), &back, at(10)).is_default());
        assert!(s.users.is_empty());
    }

    #[test]
    fn an_invisibility_freezes_the_last_online_of_its_beginning() {
        let s = store();
        s.heartbeat(user(1), online("Home"), at(0));
        s.heartbeat(user(1), online("Home"), at(500));
        let settings = s.change_settings(user(1), &checked(r#"{"invisible":true}"#), at(700));
        assert_eq!(
            settings.invisibility().and_then(|i| i.last_online),
            Some(at(500).wall)
        );
        assert_eq!(s.invisible_users(), 1);
        // Active since: others keep seeing the frozen time; the user itself and read keys
        // the real one.
        s.heartbeat(user(1), online("Work"), at(900));
        let others = shown(&s, Viewer::Anonymous, 1, 950);
        assert_eq!(
            others,
            PresenceView {
                last_online: Some(at(500).wall),
                ..PresenceView::never_seen(user(1))
            }
        );
        for viewer in [Viewer::User(user(1)), Viewer::Reader] {
            let v = shown(&s, viewer, 1, 950);
            assert_eq!((v.kind, &*v.last_location), (PresenceType::Online, "Work"));
            assert_eq!(v.last_online, Some(at(900).wall));
        }
        // A later change during the invisibility keeps the frozen time.
        let settings = s.change_settings(
            user(1),
            &checked_at(
                &format!(
                    r#"{{"invisible":true,"invisibleUntil":"{}"}}"#,
                    rfc3339(5_000)
                ),
                1_000,
            ),
            at(1_000),
        );
        assert_eq!(
            settings.invisibility(),
            Some(privacy::Invisibility {
                until: Some(at(5_000).wall),
                last_online: Some(at(500).wall),
            })
        );
        // A user never seen has nothing to freeze.
        let settings = s.change_settings(user(2), &checked(r#"{"invisible":true}"#), at(0));
        assert_eq!(settings.invisibility().and_then(|i| i.last_online), None);
        assert_eq!(
            shown(&s, Viewer::Anonymous, 2, 0),
            PresenceView::never_seen(user(2))
        );
    }

    #[test]
    fn an_invisibility_ends_exactly_at_its_end_and_the_sweeper_gives_its_memory_back() {
        let s = store();
        s.heartbeat(user(1), online("Home"), at(0));
        let until = format!(
            r#"{{"visibility":"friends","invisible":true,"invisibleUntil":"{}"}}"#,
            rfc3339(3_000)
        );
        s.change_settings(user(1), &checked(&until), at(0));
        // A user never seen, invisible until then too: nothing is left of it after.
        let until = format!(
            r#"{{"invisible":true,"invisibleUntil":"{}"}}"#,
            rfc3339(3_000)
        );
        s.change_settings(user(2), &checked(&until), at(0));
        assert_eq!(s.invisible_users(), 2);
        let viewer = Viewer::User(user(1));
        assert!(seen(&s, viewer, 1, 2_999).0.invisible_at(at(2_999).wall));
        assert!(!seen(&s, viewer, 1, 3_000).0.invisible_at(at(3_000).wall));
        assert_eq!(
            s.settings(user(1), at(3_000)),
            Settings::new(Visibility::Friends, None)
        );
        assert!(s.settings(user(2), at(3_000)).is_default());
        // Reads were exact before any clean-up; the sweeper cleans up within its purge
        // period.
        for n in 0..PURGE_EVERY_SWEEPS {
            s.sweep(at(3_000 + n));
        }
        assert_eq!(s.invisible_users(), 0);
        assert_eq!(
            s.settings(user(1), at(3_100)),
            Settings::new(Visibility::Friends, None)
        );
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.unseen_with_settings(), 0);
    }

    #[test]
    fn retention_forgets_the_presence_of_a_user_with_settings_but_keeps_its_settings() {
        let s = with_retention();
        s.heartbeat(user(1), online("Home"), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(0));
        s.heartbeat(user(2), Heartbeat::Disconnect, at(0));
        s.heartbeat(user(3), Heartbeat::Disconnect, at(0));
        let friends = s.change_settings(user(1), &checked(r#"{"visibility":"friends"}"#), at(100));
        let invisible = s.change_settings(user(3), &checked(r#"{"invisible":true}"#), at(100));
        assert_eq!(s.sweep(at(10_200)).dropped, 3);
        // Forgotten: never seen for everyone, counted as nothing held; settings intact.
        for n in 1..=3 {
            assert_eq!(one(&s, n, 10_200), PresenceView::never_seen(user(n)));
            assert_eq!(
                seen(&s, Viewer::User(user(n)), n, 10_200).2,
                PresenceView::never_seen(user(n))
            );
        }
        assert_eq!(s.settings(user(1), at(10_200)), friends);
        assert_eq!(s.settings(user(3), at(10_200)), invisible);
        assert!(s.settings(user(2), at(10_200)).is_default());
        assert_eq!(
            (s.len(), s.unseen_with_settings(), s.users.len()),
            (0, 2, 2)
        );
        assert_eq!(s.retention_scheduled(), 0);
        // Much later, still there; back again, with them.
        assert_eq!(s.sweep(at(100_000)).dropped, 0);
        s.heartbeat(user(1), online("Back"), at(100_000));
        assert_eq!(one(&s, 1, 100_000).kind, PresenceType::Online);
        assert_eq!(s.settings(user(1), at(100_000)), friends);
        assert_eq!(s.len(), 1);
        // Its next Offline period is forgotten on time again, the settings kept again.
        s.heartbeat(user(1), Heartbeat::Disconnect, at(100_500));
        assert_eq!(s.sweep(at(110_700)).dropped, 1);
        assert_eq!(s.settings(user(1), at(110_700)), friends);
    }

    #[test]
    fn every_publish_carries_the_users_settings_and_the_time() {
        let (s, recorder) = recorded(&[]);
        s.heartbeat(user(1), online("Home"), at(0));
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 0), Settings::default(), at(0).wall)]
        );
        let friends = s.change_settings(user(1), &checked(r#"{"visibility":"friends"}"#), at(10));
        // A change of settings is always published, even when the entry is unchanged.
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 10), friends, at(10).wall)]
        );
        s.change_settings(user(1), &checked(r#"{"visibility":"friends"}"#), at(20));
        assert_eq!(recorder.take().len(), 1);
        s.heartbeat(user(1), online("Work"), at(30));
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 30), friends, at(30).wall)]
        );
        // Expiry by the sweeper.
        s.sweep(at(1_100));
        let published = recorder.take();
        assert_eq!(
            published,
            vec![(one(&s, 1, 1_100), friends, at(1_100).wall)]
        );
        assert_eq!(published[0].0.kind, PresenceType::Offline);
        // A game server's join and leave.
        let place = GamePlace::new(1818, None, &crate::presence::PlaceCatalog::new(&[])).unwrap();
        s.report_game_server(Uuid::from_u128(1), &place, &[user(1)], at(1_200))
            .unwrap();
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 1_200), friends, at(1_200).wall)]
        );
        s.end_game_server(Uuid::from_u128(1), at(1_300));
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 1_300), friends, at(1_300).wall)]
        );
        // A user never seen: its settings are published with the never-seen entry.
        let invisible = s.change_settings(user(2), &checked(r#"{"invisible":true}"#), at(1_400));
        assert_eq!(
            recorder.take(),
            vec![(PresenceView::never_seen(user(2)), invisible, at(1_400).wall)]
        );
    }

    #[test]
    fn retention_tells_watchers_of_a_forgotten_user_with_its_settings() {
        let recorder = std::sync::Arc::new(Recorder::default());
        let s = with_retention().with_changes(recorder.clone());
        s.heartbeat(user(1), Heartbeat::Disconnect, at(0));
        s.heartbeat(user(2), Heartbeat::Disconnect, at(0));
        let nobody = s.change_settings(user(1), &checked(r#"{"visibility":"nobody"}"#), at(0));
        recorder.take();
        s.sweep(at(10_200));
        let mut told = recorder.take();
        told.sort_by_key(|(v, _, _)| v.user_id);
        assert_eq!(
            told,
            vec![
                (PresenceView::never_seen(user(1)), nobody, at(10_200).wall),
                (
                    PresenceView::never_seen(user(2)),
                    Settings::default(),
                    at(10_200).wall
                ),
            ]
        );
    }

    // --- Privacy: friendships -------------------------------------------------------------

    #[test]
    fn visit_seen_says_whether_a_signed_in_viewer_is_a_friend() {
        let s = store();
        assert!(s
            .change_friendships(&pairs(&[], &[(1, 2), (3, 1)]), at(0))
            .is_empty());
        s.heartbeat(user(2), online("a"), at(0));
        let ids = [user(2), user(3), user(4), user(1)];
        let flags = |viewer| {
            let mut flags = Vec::new();
            s.visit_seen(viewer, &ids, at(0), |seen| flags.push(seen.friend));
            flags
        };
        assert_eq!(flags(Viewer::User(user(1))), [true, true, false, false]);
        assert_eq!(flags(Viewer::User(user(2))), [false, false, false, true]);
        assert_eq!(flags(Viewer::User(user(4))), [false; 4]);
        assert_eq!(flags(Viewer::Anonymous), [false; 4]);
        assert_eq!(flags(Viewer::Reader), [false; 4]);
        assert_eq!(s.friends_of(user(1)), vec![user(2), user(3)]);
        // A friends-only user: shown to its friend, hidden from anyone else.
        s.change_settings(user(2), &checked(r#"{"visibility":"friends"}"#), at(0));
        assert_eq!(
            shown(&s, Viewer::User(user(1)), 2, 10).kind,
            PresenceType::Online
        );
        for viewer in [Viewer::User(user(3)), Viewer::Anonymous] {
            assert_eq!(shown(&s, viewer, 2, 10), PresenceView::never_seen(user(2)));
        }
    }

    #[test]
    fn a_changed_friendship_is_told_both_ways_and_republished_where_watched() {
        // User 1 is watched by a stream of viewer 2; nobody watches 2 as 1.
        let (s, recorder) = recorded(&[(1, 2)]);
        s.heartbeat(user(1), online("Home"), at(0));
        let friends = s.change_settings(user(1), &checked(r#"{"visibility":"friends"}"#), at(0));
        recorder.take();
        let skipped = s.change_friendships(&pairs(&[], &[(2, 1)]), at(10));
        assert!(skipped.is_empty());
        assert_eq!(
            *recorder.befriended.lock(),
            vec![(2, 1, true), (1, 2, true)]
        );
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 10), friends, at(10).wall)]
        );
        // Nothing changes: nobody is told.
        s.change_friendships(&pairs(&[], &[(1, 2)]), at(20));
        s.replace_friends(user(2), &friend_list(2, &[1]), at(20));
        assert_eq!(recorder.befriended.lock().len(), 2);
        assert!(recorder.take().is_empty());
        // Ended by a new list of 2's: told and republished again.
        s.replace_friends(user(2), &friend_list(2, &[3]), at(30));
        assert_eq!(
            recorder.befriended.lock()[2..],
            [(2, 1, false), (1, 2, false), (2, 3, true), (3, 2, true)]
        );
        assert_eq!(
            recorder.take(),
            vec![(one(&s, 1, 30), friends, at(30).wall)]
        );
        assert_eq!(s.friends_of(user(2)), vec![user(3)]);
        assert!(s.friends_of(user(1)).is_empty());
    }

    #[test]
    fn a_watched_user_never_seen_is_republished_as_never_seen() {
        let (s, recorder) = recorded(&[(5, 6)]);
        s.change_friendships(&pairs(&[], &[(5, 6)]), at(10));
        assert_eq!(
            recorder.take(),
            vec![(
                PresenceView::never_seen(user(5)),
                Settings::default(),
                at(10).wall
            )]
        );
        assert!(s.users.is_empty());
    }

    #[test]
    fn friendships_are_bounded_by_max_friends_and_the_skipped_pairs_returned() {
        let s = store().with_max_friends(1);
        let skipped = s.change_friendships(&pairs(&[], &[(1, 2), (1, 3), (4, 3)]), at(0));
        assert_eq!(skipped, vec![FriendPair::new(user(1), user(3)).unwrap()]);
        let skipped = s.replace_friends(user(5), &friend_list(5, &[1, 6]), at(0));
        assert_eq!(skipped, vec![FriendPair::new(user(5), user(1)).unwrap()]);
        assert_eq!(s.friends_of(user(5)), vec![user(6)]);
        assert_eq!(s.friendships().max_friends(), 1);
    }

    // --- Privacy: a model -----------------------------------------------------------------

    /// `STORE_PRIVACY_MODEL_SEED` (decimal or `0x` hex), else a fixed seed.
    fn privacy_model_seed() -> u64 {
        crate::test_rng::seed_from_env("STORE_PRIVACY_MODEL_SEED", 0x5EED_2026_0016_0001)
    }

    /// One user as the contract describes it, read literally.
    #[derive(Debug, Clone, Default)]
    struct ModelUser {
        /// `None` until seen.
        last_online: Option<u64>,
        location: String,
        /// Present while `now < until` (mono ms); 0 once disconnected.
        until: u64,
        settings: Settings,
    }

    impl ModelUser {
        fn real(&self, n: u64, now: u64) -> PresenceView<'static> {
            let Some(last_online) = self.last_online else {
                return PresenceView::never_seen(user(n));
            };
            PresenceView {
                user_id: user(n),
                kind: if now < self.until {
                    PresenceType::Online
                } else {
                    PresenceType::Offline
                },
                last_location: Cow::Owned(self.location.clone()),
                place: None,
                game_id: None,
                last_online: Some(at(last_online).wall),
            }
        }
    }

    const MODEL_USERS: u64 = 8;
    const MODEL_STEPS: usize = 3_000;

    fn random_patch(rng: &mut crate::test_rng::XorShift, now: u64) -> privacy::SettingsPatch {
        let visibility =
            rng.maybe(|rng| ["everyone", "friends", "nobody"][rng.below(3) as usize].to_owned());
        let invisible = rng.maybe(|rng| rng.chance());
        // Sometimes an end time in the past, or without `invisible: true`: refused.
        let invisible_until =
            (rng.below(3) == 0).then(|| rfc3339((now + rng.below(4_000)).saturating_sub(500)));
        privacy::SettingsPatch {
            visibility,
            invisible,
            invisible_until,
        }
    }

    #[test]
    fn model_random_presence_settings_and_friendships_are_seen_as_the_contract_says() {
        use crate::test_rng::XorShift;
        use std::collections::BTreeSet;

        let seed = privacy_model_seed();
        let mut rng = XorShift::new(seed);
        let mut s = store();
        let mut users: Vec<ModelUser> = vec![ModelUser::default(); MODEL_USERS as usize + 1];
        let mut friendships: BTreeSet<(u64, u64)> = BTreeSet::new();
        let key = |a: u64, b: u64| (a.min(b), a.max(b));
        let mut now = 0u64;
        let ids: Vec<UserId> = (1..=MODEL_USERS).map(user).collect();
        for step in 0..MODEL_STEPS {
            let n = 1 + rng.below(MODEL_USERS);
            let what = match rng.below(12) {
                0..=2 => {
                    let location = ["Home", "Work", "Xbox"][rng.below(3) as usize];
                    s.heartbeat(user(n), online(location), at(now));
                    let u = &mut users[n as usize];
                    u.last_online = Some(now);
                    u.location = location.to_owned();
                    u.until = now + duration_millis(TTL);
                    format!("heartbeat {n} at {location}")
                }
                3 => {
                    s.heartbeat(user(n), Heartbeat::Disconnect, at(now));
                    let u = &mut users[n as usize];
                    u.last_online = Some(now);
                    u.until = 0;
                    format!("disconnect {n}")
                }
                4..=5 => {
                    let body = random_patch(&mut rng, now);
                    let what = format!("settings of {n}: {body:?}");
                    if let Ok(patch) = body.check(at(now).wall) {
                        let u = &mut users[n as usize];
                        let last_online = u.last_online.map(|t| at(t).wall);
                        let want = privacy::apply(u.settings, &patch, at(now).wall, last_online);
                        let got = s.change_settings(user(n), &patch, at(now));
                        assert_eq!(got, want, "seed {seed:#x} step {step}: {what}");
                        u.settings = want;
                    }
                    what
                }
                6 => {
                    let mut add = Vec::new();
                    let mut remove = Vec::new();
                    for _ in 0..rng.below(4) {
                        let a = 1 + rng.below(MODEL_USERS);
                        let b = 1 + (a + rng.below(MODEL_USERS - 1)) % MODEL_USERS;
                        if rng.chance() {
                            add.push((a, b))
                        } else {
                            remove.push((a, b))
                        }
                    }
                    assert!(s
                        .change_friendships(&pairs(&remove, &add), at(now))
                        .is_empty());
                    for &(a, b) in &remove {
                        friendships.remove(&key(a, b));
                    }
                    for &(a, b) in &add {
                        friendships.insert(key(a, b));
                    }
                    format!("friendships remove {remove:?} add {add:?}")
                }
                7 => {
                    let list: Vec<u64> = (1..=MODEL_USERS)
                        .filter(|&m| m != n && rng.below(3) == 0)
                        .collect();
                    assert!(s
                        .replace_friends(user(n), &friend_list(n, &list), at(now))
                        .is_empty());
                    friendships.retain(|&(a, b)| a != n && b != n);
                    friendships.extend(list.iter().map(|&m| key(n, m)));
                    format!("friends of {n} are {list:?}")
                }
                8 => {
                    // Through a snapshot, as a restart at the same instant.
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("snap");
                    super::super::snapshot::write(&s, &path, at(now)).unwrap();
                    let restored = store();
                    super::super::snapshot::load(&restored, &path, at(now)).unwrap();
                    s = restored;
                    "snapshot and restart".to_owned()
                }
                _ => {
                    now += rng.below(1_500);
                    if rng.chance() {
                        s.sweep(at(now));
                    }
                    format!("time {now}")
                }
            };
            let context = format!(
                "seed {seed:#x} step {step} (replay: STORE_PRIVACY_MODEL_SEED={seed:#x}): {what}"
            );
            let wall = at(now).wall;
            let mut viewers = vec![Viewer::Anonymous, Viewer::Reader];
            viewers.extend((1..=MODEL_USERS).map(|v| Viewer::User(user(v))));
            for viewer in viewers {
                let show = rng.chance();
                let mut got = Vec::new();
                s.visit_seen(viewer, &ids, at(now), |seen| {
                    let sight = seen.sight(viewer, show);
                    got.push((
                        seen.view.clone().into_owned(),
                        seen.settings.as_of(seen.now),
                        seen.friend,
                        sight.entry(seen.view.clone()).into_owned(),
                        sight.shows_invisible_type(seen.view),
                    ));
                });
                for (i, got) in got.into_iter().enumerate() {
                    let target = i as u64 + 1;
                    let u = &users[target as usize];
                    let real = u.real(target, now);
                    let friend = match viewer {
                        Viewer::User(v) => friendships.contains(&key(v.get(), target)),
                        _ => false,
                    };
                    let sight = privacy::sight(viewer, user(target), u.settings, wall, show, |v| {
                        friendships.contains(&key(v.get(), target))
                    });
                    let want = (
                        real.clone(),
                        u.settings.as_of(wall),
                        friend,
                        sight.entry(real.clone()),
                        sight.shows_invisible_type(&real),
                    );
                    assert_eq!(
                        got, want,
                        "{viewer:?} sees {target}, show_last_online {show}, {context}"
                    );
                }
            }
            for (n, u) in users.iter().enumerate().skip(1) {
                let n = n as u64;
                assert_eq!(
                    s.settings(user(n), at(now)),
                    u.settings.as_of(wall),
                    "{n}, {context}"
                );
                let friends: Vec<UserId> = (1..=MODEL_USERS)
                    .filter(|&m| friendships.contains(&key(n, m)) && m != n)
                    .map(user)
                    .collect();
                assert_eq!(s.friends_of(user(n)), friends, "friends of {n}, {context}");
            }
            let held = users.iter().filter(|u| u.last_online.is_some()).count();
            assert_eq!(s.len(), held, "users held, {context}");
        }
    }
}
