//! Live presence: who watches which users, and the changes owed to each watcher.
//!
//! A backend publishes the new view of a user whenever that user's entry changes in
//! anything but `lastOnline` (the memory store while it holds the user's lock, the Redis
//! backend from its subscription, in the order Redis published). The hub encodes the entry
//! once and hands it to every watcher of that user; for a user nobody watches nothing
//! happens (one map lookup, none at all while no stream is open).
//!
//! Three invariants carry the rule of CONTRACT section 8 (*the client ends with the latest
//! entry of every user it watches*), each held by a structure rather than by the order of
//! calls:
//!
//! - **A version per change.** Every published change of a watched user takes the next
//!   number of one counter, under the user's topic lock, so the changes of one user are
//!   numbered in the order they were made, and a topic made again later starts above every
//!   number given before.
//! - **A watermark per watched user.** Each watcher keeps, for each user it watches, the
//!   highest version it has accepted ([`Slot::seen`]). When it starts watching a user it
//!   takes the topic's current version as its watermark *before* it reads the user's entry:
//!   every change up to it is in what the read returns, every later one is offered. An
//!   offer at or below the watermark is dropped, so a late or repeated delivery can never
//!   put an older entry after a newer one, and starting to watch one user never touches
//!   what is pending for another.
//! - **What each client holds.** Each slot keeps a digest of the last entry handed to the
//!   client (`lastOnline` aside) and the event that carried it; an entry equal to it is not
//!   sent again. A closed stream leaves that record behind for `stream.resume_window`
//!   (bounded in all and per address), and a client that comes back with the id of an
//!   event is sent exactly the users whose entry now differs from what it held as of that
//!   event, or everything when the record is gone.
//!
//! Privacy (CONTRACT section 11) is decided per watcher by the one function `sight`: each
//! watcher has its viewer, each slot knows whether that viewer is a friend of the user
//! (from the first read, or from a friendship change told since, which is newer and wins),
//! and every change carries the user's settings. A change encodes each distinct entry it
//! can show once (one for a user who restricted nothing), and a watcher from whom the user
//! is hidden is offered the never-seen entry it already holds: it is sent nothing at all.
//! A change of settings or of a friendship is published like any other change, and the
//! end of an invisibility is noted per watched user and re-sent when due
//! ([`Hub::due_ends`]).
//!
//! Each watcher holds at most one pending entry per user (a newer one replaces it), so what
//! a slow reader makes the server hold is bounded by the users it watches. Entries are
//! handed to watchers after the store's lock is released ([`Delivery`]): a popular user's
//! fan-out never holds the store.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::model::{PresenceType, PresenceView, UserId};
use super::privacy::{sight, Seen, Settings, Sight, Viewer, Visibility};
use super::time::WallMillis;

type Hasher = foldhash::fast::RandomState;

/// Turns a view into the JSON object a lookup writes for it (injected by the application,
/// which owns the wire format); `true` writes its type as `Invisible` (a user shown to
/// itself while invisible and present, CONTRACT section 11).
pub type Encoder = Box<dyn Fn(&PresenceView<'_>, bool) -> Bytes + Send + Sync>;

/// An encoded entry and the digest of everything in it but `lastOnline`.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub bytes: Bytes,
    digest: u64,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Entry")
            .field(&String::from_utf8_lossy(&self.bytes))
            .finish()
    }
}

/// The part of an entry that counts as a change: everything before `lastOnline`, the last
/// key an entry is written with.
fn significant(entry: &[u8]) -> &[u8] {
    const KEY: &[u8] = b",\"lastOnline\":";
    match memchr::memmem::rfind(entry, KEY) {
        Some(at) => &entry[..at],
        None => entry,
    }
}

/// What a backend tells about changes. Implemented by [`Hub`].
pub trait Changes: Send + Sync + fmt::Debug {
    /// Whether anyone may be watching anything: when false, a backend skips building views.
    fn watched(&self) -> bool;
    /// `view` is the new real entry of its user, whose settings are `settings`, as of
    /// `now`: the entry changed in something other than `lastOnline`, or the settings
    /// changed, or a friendship of the user did (after [`Self::befriend`]). Returns what is
    /// to be handed to the watchers, each shown what its viewer may see, which the caller
    /// does once it holds no lock ([`Delivery::deliver`]). Calls for one user must come in
    /// the order of the changes.
    fn publish_later(
        &self,
        view: &PresenceView<'_>,
        settings: Settings,
        now: WallMillis,
    ) -> Option<Delivery>;
    /// [`Self::publish_later`], delivered at once.
    fn publish(&self, view: &PresenceView<'_>, settings: Settings, now: WallMillis) {
        if let Some(delivery) = self.publish_later(view, settings, now) {
            delivery.deliver();
        }
    }
    /// Users `watched` and `viewer` became friends (`friends`) or stopped being friends:
    /// every watcher of `watched` whose viewer is the signed-in `viewer` now decides with
    /// that. Returns whether there was any such watcher: then the caller publishes
    /// `watched` again (its current entry and settings) so that each of them is sent what
    /// it now sees. Called after the change is applied, in the order of the changes of the
    /// pair.
    fn befriend(&self, watched: UserId, viewer: UserId, friends: bool) -> bool;
}

/// A change to hand to the watchers of one user, made under the store's lock and delivered
/// after it is released.
#[must_use = "a delivery does nothing until delivered"]
pub struct Delivery {
    hub: Arc<HubShared>,
    user: UserId,
    version: u64,
    shown: Shown,
    watchers: Arc<[Arc<Watcher>]>,
}

/// The entries one change can show, each encoded once: the real one always, the others
/// only when the user's settings can make some viewer see them (a user who restricted
/// nothing costs one encoding, as before settings existed).
struct Shown {
    settings: Settings,
    now: WallMillis,
    show_last_online: bool,
    real: Entry,
    /// Real, but with the `lastOnline` of a user never seen (`show_last_online` false).
    no_last_online: Option<Entry>,
    /// The entry of a user never seen.
    hidden: Option<Entry>,
    /// What others see of an invisible user.
    invisible: Option<Entry>,
    /// Real, with the type `Invisible` (the user itself, invisible and present).
    own_invisible: Option<Entry>,
}

impl Shown {
    fn new(hub: &Hub, view: &PresenceView<'_>, settings: Settings, now: WallMillis) -> Self {
        let show = hub.show_last_online;
        let invisible = settings.invisibility_at(now);
        let visibility = settings.visibility();
        let variant = |sight: Sight| hub.entry_as(view, sight);
        Self {
            settings,
            now,
            show_last_online: show,
            real: variant(Sight::Own { invisible: false }),
            no_last_online: (!show && invisible.is_none()).then(|| {
                variant(Sight::Real {
                    show_last_online: false,
                })
            }),
            hidden: (visibility != Visibility::Everyone).then(|| variant(Sight::Hidden)),
            invisible: invisible
                .filter(|_| visibility != Visibility::Nobody)
                .map(|i| {
                    variant(Sight::Invisible {
                        last_online: i.last_online.filter(|_| show),
                    })
                }),
            own_invisible: (invisible.is_some() && view.kind != PresenceType::Offline)
                .then(|| variant(Sight::Own { invisible: true })),
        }
    }

    /// What a watcher of `user` with `viewer` is shown (`friend`: the viewer is a signed-in
    /// friend of the user).
    fn for_viewer(&self, viewer: Viewer, user: UserId, friend: bool) -> &Entry {
        let sight = sight(
            viewer,
            user,
            self.settings,
            self.now,
            self.show_last_online,
            |_| friend,
        );
        let chosen = match sight {
            Sight::Own { invisible: true } => self.own_invisible.as_ref(),
            Sight::Own { invisible: false }
            | Sight::Real {
                show_last_online: true,
            } => None,
            Sight::Real {
                show_last_online: false,
            } => self.no_last_online.as_ref(),
            Sight::Hidden => self.hidden.as_ref(),
            Sight::Invisible { .. } => self.invisible.as_ref(),
        };
        chosen.unwrap_or(&self.real)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("user", &self.user)
            .field("version", &self.version)
            .finish()
    }
}

impl Delivery {
    /// Offers the entry to every watcher of the user.
    pub fn deliver(self) {
        let mut accepted = 0;
        for watcher in self.watchers.iter() {
            accepted += u64::from(watcher.offer(self.user, self.version, &self.shown));
        }
        self.hub.deliveries.fetch_add(accepted, Ordering::Relaxed);
    }
}

/// The position of an event in one stream: which stream (a random token, unknown to any
/// other process) and its number in it, written `<token>-<number>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub token: u64,
    pub number: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.token, self.number)
    }
}

impl EventId {
    pub fn parse(text: &str) -> Option<Self> {
        let (token, number) = text.trim().split_once('-')?;
        if token.len() != 16 {
            return None;
        }
        Some(Self {
            token: u64::from_str_radix(token, 16).ok()?,
            number: number.parse().ok()?,
        })
    }
}

/// One watched user: its watchers (copied on change, so that a delivery takes them
/// without holding the topic) and the version of its latest change.
struct Topic {
    watchers: Arc<[Arc<Watcher>]>,
    version: u64,
    /// The end of the user's invisibility, as last published or read, when it has one:
    /// filed in [`Hub::ends`], so that its watchers are sent the user again then.
    invisible_until: Option<WallMillis>,
}

/// The limits on streams and on what closed streams leave behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open subscriptions counted against limits, in all.
    pub connections: usize,
    /// ... per client address (0: none).
    pub per_address: usize,
    /// ... per signed-in user (0: none).
    pub per_user: usize,
    /// How long a closed stream's record stays for resuming.
    pub resume_window: Duration,
    /// Users held in the records of closed streams, in all.
    pub resume_users: usize,
    /// ... per client address.
    pub resume_users_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: usize::MAX,
            per_address: 0,
            per_user: 0,
            resume_window: Duration::from_secs(60),
            resume_users: 500_000,
            resume_users_per_address: 20_000,
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this node serves as many live streams as it may")]
    Full,
    #[error("this client address has as many live streams as it may")]
    AddressFull,
    #[error("this user has as many live streams as it may")]
    UserFull,
}

/// Room for pending entries a watcher keeps between batches (more is given back).
const PENDING_KEPT: usize = 16;

/// The watchers of one process.
pub struct Hub {
    shared: Arc<HubShared>,
    encode: Encoder,
    digests: Hasher,
    topics: DashMap<UserId, Topic, Hasher>,
    /// Topics held: zero means no publish has anything to do.
    topic_count: AtomicUsize,
    /// The version of the latest change (see the module's invariants).
    versions: AtomicU64,
    /// Every open watcher, to end them all at shutdown.
    watchers: DashMap<u64, Arc<Watcher>, Hasher>,
    next_watcher: AtomicU64,
    closing: AtomicBool,
    limits: Limits,
    /// Subscriptions counted against the limits: in all, per address, per user.
    open: AtomicUsize,
    per_address: DashMap<IpAddr, usize, Hasher>,
    per_user: DashMap<UserId, usize, Hasher>,
    resumes: Mutex<Resumes>,
    /// `privacy.show_last_online`.
    show_last_online: bool,
    /// The ends of watched users' invisibility, soonest first (see [`Hub::due_ends`]).
    ends: Mutex<std::collections::BTreeSet<(WallMillis, UserId)>>,
}

/// What deliveries need of the hub (kept apart so that a delivery holds no topic map).
struct HubShared {
    deliveries: AtomicU64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("topics", &self.topic_count.load(Ordering::Relaxed))
            .field("watchers", &self.watchers.len())
            .finish()
    }
}

/// What one connection is owed: per watched user, its watermark, what the client holds,
/// and the latest entry not taken yet.
pub struct Watcher {
    state: Mutex<WatcherState>,
    waker: AtomicWaker,
    closed: AtomicBool,
    /// Who is looking: decides what each change shows this watcher.
    viewer: Viewer,
}

#[derive(Default)]
struct WatcherState {
    slots: HashMap<UserId, Slot, Hasher>,
    /// The latest entry not taken yet of each user that has one, in the order the users'
    /// first pending entries came; each such user's slot names its place here.
    pending: Vec<(UserId, Entry)>,
}

/// 32 bytes per watched user: what an idle stream holds per user it watches.
#[derive(Default)]
struct Slot {
    /// The highest version accepted: covered by the first read, or offered since.
    seen: u64,
    /// The digest of the last entry handed to the client (0: none yet).
    given: u64,
    /// The event that carried it (0: before this stream's first event).
    given_in: u64,
    /// 1 + the index of this user's entry in [`WatcherState::pending`]; 0 for none.
    pending: u32,
    /// Whether the viewer is a signed-in friend of this user: from the first read, or from
    /// a friendship change told since ([`Changes::befriend`]), which is newer and wins.
    friend: bool,
    /// A friendship change was told since the slot was made.
    friend_told: bool,
}

impl WatcherState {
    /// Drops the pending entries of users that are no longer watched or whose slot gave
    /// its entry up (`pending` set to 0), and renumbers the rest.
    fn compact(&mut self) {
        let Self { slots, pending } = self;
        pending.retain(|(user, _)| slots.get(user).is_some_and(|slot| slot.pending != 0));
        for (i, (user, _)) in pending.iter().enumerate() {
            if let Some(slot) = slots.get_mut(user) {
                slot.pending = u32::try_from(i + 1).unwrap_or(u32::MAX);
            }
        }
    }
}

impl Watcher {
    /// Offers a change of `user`; whether it was taken (the user is watched and the change
    /// is newer than anything seen, and differs from what the client will hold).
    fn offer(&self, user: UserId, version: u64, shown: &Shown) -> bool {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let WatcherState { slots, pending } = state;
        let Some(slot) = slots.get_mut(&user) else {
            return false;
        };
        if version <= slot.seen {
            return false;
        }
        slot.seen = version;
        let entry = shown.for_viewer(self.viewer, user, slot.friend);
        let mine = (slot.pending as usize)
            .checked_sub(1)
            .and_then(|i| pending.get_mut(i));
        let holds = mine.as_ref().map_or(slot.given, |(_, e)| e.digest);
        if holds == entry.digest {
            return false;
        }
        match mine {
            Some((_, waiting)) => *waiting = entry.clone(),
            None => {
                pending.push((user, entry.clone()));
                slot.pending = u32::try_from(pending.len()).unwrap_or(u32::MAX);
            }
        }
        drop(guard);
        self.waker.wake();
        true
    }
}

/// Entries taken from a watcher, in the order of their changes.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Bytes>,
    /// The id of the event that carries them (streams that can resume).
    pub id: Option<EventId>,
}

impl Hub {
    /// A hub whose watchers are shown entries written by `encode`, within `limits`, with
    /// `privacy.show_last_online` as `show_last_online`.
    pub fn new(encode: Encoder, limits: Limits, show_last_online: bool) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(HubShared {
                deliveries: AtomicU64::new(0),
            }),
            encode,
            digests: Hasher::default(),
            topics: DashMap::with_hasher(Hasher::default()),
            topic_count: AtomicUsize::new(0),
            versions: AtomicU64::new(0),
            watchers: DashMap::with_hasher(Hasher::default()),
            next_watcher: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            limits,
            open: AtomicUsize::new(0),
            per_address: DashMap::with_hasher(Hasher::default()),
            per_user: DashMap::with_hasher(Hasher::default()),
            resumes: Mutex::new(Resumes::default()),
            show_last_online,
            ends: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// The entry of `view` as a viewer with `sight` is shown it, encoded as a lookup
    /// writes it.
    ///
    /// The digest, a function of the entry shown alone (equal entries, equal digests),
    /// leaves `lastOnline` out, which moves with every heartbeat, except for a blank entry
    /// (Offline, `lastLocation` `""`, no place or game): there `lastOnline` is all that
    /// tells a user never seen (or hidden) from an invisible one, so a watcher moved
    /// between the two (an invisible user who hides from a friend) is sent the change.
    pub fn entry_as(&self, view: &PresenceView<'_>, sight: Sight) -> Entry {
        let invisible_type = sight.shows_invisible_type(view);
        let shown = sight.entry(view.clone());
        let bytes = (self.encode)(&shown, invisible_type);
        let blank = shown.kind == PresenceType::Offline
            && shown.last_location.is_empty()
            && shown.place.is_none()
            && shown.game_id.is_none();
        let digested = if blank {
            &bytes[..]
        } else {
            significant(&bytes)
        };
        let digest = self.digests.hash_one(digested) | 1;
        Entry { bytes, digest }
    }

    /// `privacy.show_last_online`.
    pub fn show_last_online(&self) -> bool {
        self.show_last_online
    }

    /// Notes the end of `user`'s invisibility in `settings` at `now`, if one is to come
    /// (see [`Self::due_ends`]). `published`: the settings come with a change, in the order
    /// of the changes, and replace what was noted (an end that passed is then in the change
    /// itself, which every watcher is offered). Otherwise they come from a stream's first
    /// read, which may be older than the latest change: an end is only added when none is
    /// noted, never replaced or dropped, so that a watcher opened after an end passed,
    /// before it was sent, does not take it from the others.
    fn note_end(
        &self,
        topic: &mut Topic,
        user: UserId,
        settings: Settings,
        now: WallMillis,
        published: bool,
    ) {
        let until = settings.invisibility_at(now).and_then(|i| i.until);
        let replace = if published {
            until != topic.invisible_until
        } else {
            until.is_some() && topic.invisible_until.is_none()
        };
        if replace {
            topic.invisible_until = until;
            if let Some(until) = until {
                self.ends.lock().insert((until, user));
            }
        }
    }

    /// The watched users whose invisibility ended by `now`, each once: the caller reads
    /// each one's entry and settings and [`Self::catch_up`]s it (marks taken before the
    /// read), so that every watcher is sent what it now sees.
    pub fn due_ends(&self, now: WallMillis) -> Vec<UserId> {
        let mut due = Vec::new();
        loop {
            let next = {
                let mut ends = self.ends.lock();
                match ends.first() {
                    Some(&(until, user)) if until <= now => {
                        ends.pop_first();
                        Some((until, user))
                    }
                    _ => None,
                }
            };
            let Some((until, user)) = next else {
                break;
            };
            if let Some(mut topic) = self.topics.get_mut(&user) {
                if topic.invisible_until == Some(until) {
                    topic.invisible_until = None;
                    due.push(user);
                }
            }
        }
        due
    }

    /// A new watcher of nobody yet, within the limits (`address` and `user` are whom it is
    /// counted against); it stops watching when the subscription is dropped.
    pub fn subscribe_within(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        user: Option<UserId>,
        viewer: Viewer,
    ) -> Result<Subscription, Refused> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let mut counted = Counted {
            all: true,
            address: None,
            user: None,
        };
        if open >= self.limits.connections {
            self.uncount(&counted);
            return Err(Refused::Full);
        }
        if let Some(address) = address.filter(|_| self.limits.per_address > 0) {
            if !take_share(&self.per_address, address, self.limits.per_address) {
                self.uncount(&counted);
                return Err(Refused::AddressFull);
            }
            counted.address = Some(address);
        }
        if let Some(user) = user.filter(|_| self.limits.per_user > 0) {
            if !take_share(&self.per_user, user, self.limits.per_user) {
                self.uncount(&counted);
                return Err(Refused::UserFull);
            }
            counted.user = Some(user);
        }
        let mut sub = self.subscribe_as(viewer);
        sub.counted = counted;
        sub.address = address;
        Ok(sub)
    }

    fn uncount(&self, counted: &Counted) {
        if counted.all {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(address) = counted.address {
            give_share(&self.per_address, address);
        }
        if let Some(user) = counted.user {
            give_share(&self.per_user, user);
        }
    }

    /// A new watcher of nobody yet for an anonymous viewer, counted against no limit.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribe_as(Viewer::Anonymous)
    }

    /// A new watcher of nobody yet for `viewer`, counted against no limit.
    pub fn subscribe_as(self: &Arc<Self>, viewer: Viewer) -> Subscription {
        let watcher = Arc::new(Watcher {
            state: Mutex::new(WatcherState::default()),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            viewer,
        });
        let key = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        self.watchers.insert(key, watcher.clone());
        // Registered first, then checked: either `close` finds this watcher, or this sees
        // that the hub is closing.
        if self.closing.load(Ordering::SeqCst) {
            watcher.closed.store(true, Ordering::SeqCst);
        }
        Subscription {
            hub: self.clone(),
            key,
            watcher,
            counted: Counted::default(),
            address: None,
            token: random_token(),
            events: AtomicU64::new(0),
        }
    }

    /// Watchers open now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Users watched now.
    pub fn topic_count(&self) -> usize {
        self.topic_count.load(Ordering::Relaxed)
    }

    /// Users held in the records of closed streams, for resuming.
    pub fn resume_users(&self) -> usize {
        self.resumes.lock().users
    }

    /// Every watched user. A backend that may have missed changes publishes these users'
    /// entries again (see [`Self::marks`]).
    pub fn watched_users(&self) -> Vec<UserId> {
        self.topics.iter().map(|topic| *topic.key()).collect()
    }

    /// Every signed-in viewer of an open watcher, with the users its watchers watch (itself
    /// left out): after a gap in what a backend heard, friendship changes may have been
    /// missed too, and the backend tells each of these again ([`Changes::befriend`]) before
    /// it publishes the watched users again.
    pub fn signed_in_viewers(&self) -> Vec<(UserId, Vec<UserId>)> {
        let mut viewers: HashMap<UserId, Vec<UserId>, Hasher> = HashMap::default();
        for watcher in self.watchers.iter() {
            let Viewer::User(viewer) = watcher.viewer else {
                continue;
            };
            let state = watcher.state.lock();
            viewers
                .entry(viewer)
                .or_default()
                .extend(state.slots.keys().copied().filter(|&user| user != viewer));
        }
        viewers
            .into_iter()
            .map(|(viewer, mut users)| {
                users.sort_unstable();
                users.dedup();
                (viewer, users)
            })
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }

    /// Notes `users` due again at `now` (their re-send failed): the next [`Self::due_ends`]
    /// returns those still watched.
    pub fn due_again(&self, users: &[UserId], now: WallMillis) {
        for &user in users {
            if let Some(mut topic) = self.topics.get_mut(&user) {
                if topic.invisible_until.is_none() {
                    topic.invisible_until = Some(now);
                    self.ends.lock().insert((now, user));
                }
            }
        }
    }

    /// The version of each user's latest change (0 for a user nobody watches): taken before
    /// a read that may [`Self::catch_up`] on them.
    pub fn marks(&self, users: &[UserId]) -> Vec<u64> {
        users
            .iter()
            .map(|user| self.topics.get(user).map_or(0, |topic| topic.version))
            .collect()
    }

    /// Entries handed to watchers so far (one per watcher per change).
    pub fn deliveries(&self) -> u64 {
        self.shared.deliveries.load(Ordering::Relaxed)
    }

    /// Ends every subscription: their streams finish once they have sent what they hold.
    /// A subscription made from now on starts closed.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for watcher in self.watchers.iter() {
            watcher.closed.store(true, Ordering::SeqCst);
            watcher.waker.wake();
        }
    }

    /// Forgets the records of streams closed more than `stream.resume_window` ago.
    pub fn reap(&self) {
        let window = self.limits.resume_window;
        self.resumes.lock().expire(Instant::now(), window);
    }

    /// After a gap in what a backend heard (changes may have been missed), `view` is a
    /// user's current entry, read after `mark` was taken (see [`Self::marks`]): it is
    /// published unless a change of that user arrived since (which is newer than the
    /// read, or the same). Each watcher is sent it only if it differs from what it holds.
    pub fn catch_up(
        &self,
        view: &PresenceView<'_>,
        settings: Settings,
        now: WallMillis,
        mark: u64,
    ) {
        if let Some(delivery) = self.publish_if(view, settings, now, |version| version == mark) {
            delivery.deliver();
        }
    }

    fn publish_if(
        &self,
        view: &PresenceView<'_>,
        settings: Settings,
        now: WallMillis,
        current: impl FnOnce(u64) -> bool,
    ) -> Option<Delivery> {
        if !self.watched() {
            return None;
        }
        let mut topic = self.topics.get_mut(&view.user_id)?;
        if !current(topic.version) {
            return None;
        }
        let shown = Shown::new(self, view, settings, now);
        self.note_end(&mut topic, view.user_id, settings, now, true);
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        topic.version = version;
        let watchers = topic.watchers.clone();
        drop(topic);
        Some(Delivery {
            hub: self.shared.clone(),
            user: view.user_id,
            version,
            shown,
            watchers,
        })
    }

    /// The record a closed stream left for `token`, if it is still held.
    fn resume_record(&self, token: u64) -> Option<Arc<ResumeRecord>> {
        self.resumes.lock().records.get(&token).cloned()
    }
}

impl Changes for Hub {
    fn watched(&self) -> bool {
        self.topic_count.load(Ordering::SeqCst) > 0
    }

    fn publish_later(
        &self,
        view: &PresenceView<'_>,
        settings: Settings,
        now: WallMillis,
    ) -> Option<Delivery> {
        self.publish_if(view, settings, now, |_| true)
    }

    fn befriend(&self, watched: UserId, viewer: UserId, friends: bool) -> bool {
        if !self.watched() {
            return false;
        }
        let Some(topic) = self.topics.get(&watched) else {
            return false;
        };
        let mut told = false;
        for watcher in topic
            .watchers
            .iter()
            .filter(|w| w.viewer == Viewer::User(viewer))
        {
            if let Some(slot) = watcher.state.lock().slots.get_mut(&watched) {
                slot.friend = friends;
                slot.friend_told = true;
                told = true;
            }
        }
        told
    }
}

/// Takes one of `max` shares of `key`; false when all are taken.
fn take_share<K: std::hash::Hash + Eq>(
    map: &DashMap<K, usize, Hasher>,
    key: K,
    max: usize,
) -> bool {
    let mut count = map.entry(key).or_insert(0);
    if *count >= max {
        return false;
    }
    *count += 1;
    true
}

/// Gives back a share of `key`.
fn give_share<K: std::hash::Hash + Eq>(map: &DashMap<K, usize, Hasher>, key: K) {
    map.remove_if_mut(&key, |_, count| {
        *count = count.saturating_sub(1);
        *count == 0
    });
}

/// What a subscription is counted against.
#[derive(Debug, Default)]
struct Counted {
    all: bool,
    address: Option<IpAddr>,
    user: Option<UserId>,
}

/// What a closed stream's client held: per user, the digest of its entry and the event that
/// carried it, sorted by user.
struct ResumeRecord {
    users: Box<[(UserId, u64, u64)]>,
    address: Option<IpAddr>,
}

impl ResumeRecord {
    /// Whether the client, having read up to event `number`, holds `entry` for `user`.
    fn holds(&self, user: UserId, entry: &Entry, number: u64) -> bool {
        self.users
            .binary_search_by_key(&user, |&(u, _, _)| u)
            .ok()
            .and_then(|i| self.users.get(i))
            .is_some_and(|&(_, digest, given_in)| digest == entry.digest && given_in <= number)
    }
}

/// The records of closed streams, oldest first, bounded in users in all and per address.
/// Tokens are dropped from the queues lazily (a token whose record is gone is skipped), and
/// a queue is compacted once it holds more stale tokens than live ones.
#[derive(Default)]
struct Resumes {
    records: HashMap<u64, Arc<ResumeRecord>, Hasher>,
    /// Tokens in the order their streams closed, with when.
    order: VecDeque<(Instant, u64)>,
    by_address: HashMap<IpAddr, AddressRecords, Hasher>,
    users: usize,
}

/// The records of one address: users held, records held, tokens oldest first.
#[derive(Default)]
struct AddressRecords {
    users: usize,
    records: usize,
    tokens: VecDeque<u64>,
}

impl Resumes {
    fn insert(&mut self, token: u64, record: ResumeRecord, limits: &Limits) {
        let size = record.users.len();
        if size == 0 || size > limits.resume_users || limits.resume_window.is_zero() {
            return;
        }
        if let Some(address) = record.address {
            if size > limits.resume_users_per_address {
                return;
            }
            while let Some(held) = self.by_address.get_mut(&address) {
                if held.users + size <= limits.resume_users_per_address {
                    break;
                }
                match held.tokens.pop_front() {
                    Some(oldest) => self.forget(oldest),
                    None => break,
                }
            }
        }
        while self.users + size > limits.resume_users {
            match self.order.pop_front() {
                Some((_, oldest)) => self.forget(oldest),
                None => break,
            }
        }
        self.users += size;
        if let Some(address) = record.address {
            let held = self.by_address.entry(address).or_default();
            held.users += size;
            held.records += 1;
            held.tokens.push_back(token);
            if held.tokens.len() > 2 * held.records + 8 {
                let records = &self.records;
                held.tokens
                    .retain(|t| *t == token || records.contains_key(t));
            }
        }
        self.order.push_back((Instant::now(), token));
        self.records.insert(token, Arc::new(record));
        if self.order.len() > 2 * self.records.len() + 1024 {
            let records = &self.records;
            self.order.retain(|(_, t)| records.contains_key(t));
        }
    }

    /// Drops the record of `token`, if held.
    fn forget(&mut self, token: u64) {
        let Some(record) = self.records.remove(&token) else {
            return;
        };
        let size = record.users.len();
        self.users -= size;
        if let Some(address) = record.address {
            if let Some(held) = self.by_address.get_mut(&address) {
                held.users = held.users.saturating_sub(size);
                held.records = held.records.saturating_sub(1);
                if held.records == 0 {
                    self.by_address.remove(&address);
                }
            }
        }
    }

    /// Drops the records of streams closed `window` or longer ago.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(closed, token)) = self.order.front() {
            if self.records.contains_key(&token) && now.duration_since(closed) < window {
                break;
            }
            self.order.pop_front();
            self.forget(token);
        }
    }
}

/// One connection's watch: the users it watches and what it is owed.
pub struct Subscription {
    hub: Arc<Hub>,
    key: u64,
    watcher: Arc<Watcher>,
    counted: Counted,
    address: Option<IpAddr>,
    /// Names this stream's events; unguessable, and unknown to any other process.
    token: u64,
    /// Events this stream has written (see [`Self::event`]).
    events: AtomicU64,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("users", &self.len())
            .finish()
    }
}

/// What a client that resumes holds (see [`Subscription::resume`]).
pub struct Resume {
    record: Arc<ResumeRecord>,
    number: u64,
}

impl Subscription {
    /// How many users this watches.
    pub fn len(&self) -> usize {
        self.watcher.state.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this watches `user`.
    pub fn watches(&self, user: UserId) -> bool {
        self.watcher.state.lock().slots.contains_key(&user)
    }

    /// Starts watching `ids` (those not watched yet) and returns them. Every change of
    /// them up to now is in what a read made after this returns; every later one is
    /// offered. Read them, then [`Self::settle`] what the client was given (or
    /// [`Self::abandon`] them when the read failed).
    pub fn add(&mut self, ids: &[UserId]) -> Vec<UserId> {
        let mut added = Vec::new();
        for &id in ids {
            if self.watcher.state.lock().slots.contains_key(&id) {
                continue;
            }
            let seen = match self.hub.topics.entry(id) {
                MapEntry::Occupied(mut topic) => {
                    let topic = topic.get_mut();
                    let mut watchers = topic.watchers.to_vec();
                    watchers.push(self.watcher.clone());
                    topic.watchers = watchers.into();
                    topic.version
                }
                MapEntry::Vacant(vacant) => {
                    self.hub.topic_count.fetch_add(1, Ordering::SeqCst);
                    // Above every version handed out so far: a delivery of an earlier
                    // topic of this user can never pass the watermark.
                    let version = self.hub.versions.load(Ordering::SeqCst);
                    vacant.insert(Topic {
                        watchers: Arc::from([self.watcher.clone()]),
                        version,
                        invisible_until: None,
                    });
                    version
                }
            };
            let mut state = self.watcher.state.lock();
            state.slots.insert(
                id,
                Slot {
                    seen,
                    ..Slot::default()
                },
            );
            added.push(id);
        }
        added
    }

    /// Records that the client was given `entries` (one per user, from a read made after
    /// [`Self::add`]) in event `event` (0: held before this stream, see [`Self::resume`]).
    /// A pending change newer than the read stays pending; one equal to it is dropped.
    pub fn settle(&self, entries: &[(UserId, &Entry)], event: u64) {
        let mut state = self.watcher.state.lock();
        let WatcherState { slots, pending } = &mut *state;
        let mut gave_up = false;
        for &(user, entry) in entries {
            if let Some(slot) = slots.get_mut(&user) {
                slot.given = entry.digest;
                slot.given_in = event;
                let same = (slot.pending as usize)
                    .checked_sub(1)
                    .and_then(|i| pending.get(i))
                    .is_some_and(|(_, waiting)| waiting.digest == entry.digest);
                if same {
                    slot.pending = 0;
                    gave_up = true;
                }
            }
        }
        if gave_up {
            state.compact();
        }
    }

    /// Stops watching `ids`, dropping what was pending for them.
    pub fn remove(&mut self, ids: &[UserId]) {
        let gone: Vec<UserId> = {
            let mut state = self.watcher.state.lock();
            let gone: Vec<UserId> = ids
                .iter()
                .copied()
                .filter(|id| state.slots.remove(id).is_some())
                .collect();
            if !gone.is_empty() {
                state.compact();
            }
            gone
        };
        self.leave(&gone);
    }

    /// Stops watching users just added whose read failed: the client was given nothing.
    pub fn abandon(&mut self, added: &[UserId]) {
        self.remove(added);
    }

    fn leave(&self, ids: &[UserId]) {
        for id in ids {
            let emptied = match self.hub.topics.get_mut(id) {
                Some(mut topic) => {
                    let watchers: Vec<Arc<Watcher>> = topic
                        .watchers
                        .iter()
                        .filter(|w| !Arc::ptr_eq(w, &self.watcher))
                        .cloned()
                        .collect();
                    topic.watchers = watchers.into();
                    topic.watchers.is_empty()
                }
                None => false,
            };
            if emptied
                && self
                    .hub
                    .topics
                    .remove_if(id, |_, topic| topic.watchers.is_empty())
                    .is_some()
            {
                self.hub.topic_count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// What the client that sent `last` (a `Last-Event-ID`) holds, when this process can
    /// tell: its stream's record is still kept.
    pub fn resume(&self, last: &str) -> Option<Resume> {
        let id = EventId::parse(last)?;
        let record = self.hub.resume_record(id.token)?;
        Some(Resume {
            record,
            number: id.number,
        })
    }

    /// Numbers the next event of this stream.
    pub fn event(&self) -> EventId {
        EventId {
            token: self.token,
            number: self.events.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// The entry this watcher's viewer is shown of a user it just started watching, from a
    /// read made after [`Self::add`]; notes what the read said of the viewer's friendship
    /// (unless a change was told since, which is newer) and of the end of an invisibility.
    pub fn first(&self, seen: &Seen<'_, '_>) -> Entry {
        let user = seen.view.user_id;
        let friend = {
            let mut state = self.watcher.state.lock();
            match state.slots.get_mut(&user) {
                Some(slot) if slot.friend_told => slot.friend,
                Some(slot) => {
                    slot.friend = seen.friend;
                    seen.friend
                }
                None => seen.friend,
            }
        };
        if let Some(mut topic) = self.hub.topics.get_mut(&user) {
            self.hub
                .note_end(&mut topic, user, seen.settings, seen.now, false);
        }
        let sight = Seen { friend, ..*seen }.sight(self.watcher.viewer, self.hub.show_last_online);
        self.hub.entry_as(seen.view, sight)
    }

    /// Who this watcher's viewer is.
    pub fn viewer(&self) -> Viewer {
        self.watcher.viewer
    }

    /// Takes what is pending, in the order of the changes; `Pending` (with the task woken
    /// on the next change) when nothing is, `Ready(None)` once the hub closes. Numbers the
    /// batch as an event of this stream.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        if let Some(batch) = self.take() {
            return Poll::Ready(Some(batch));
        }
        self.watcher.waker.register(cx.waker());
        if let Some(batch) = self.take() {
            return Poll::Ready(Some(batch));
        }
        if self.closed() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Whether something is pending (or the hub is closing), without taking it; if not,
    /// the task is woken when there is.
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        let ready = || !self.watcher.state.lock().pending.is_empty() || self.closed();
        if ready() {
            return Poll::Ready(());
        }
        self.watcher.waker.register(cx.waker());
        if ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Once something is pending (or the hub is closing).
    pub async fn pending(&self) {
        std::future::poll_fn(|cx| self.poll_pending(cx)).await;
    }

    /// The next batch, once there is one; `None` once the hub closes.
    pub async fn next_batch(&self) -> Option<Batch> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    fn take(&self) -> Option<Batch> {
        let mut state = self.watcher.state.lock();
        if state.pending.is_empty() {
            return None;
        }
        // Only this subscription's owner numbers its events: no other can come in between.
        let number = self.events.load(Ordering::Relaxed) + 1;
        let WatcherState { slots, pending } = &mut *state;
        let mut entries = Vec::with_capacity(pending.len());
        for (user, entry) in pending.drain(..) {
            let Some(slot) = slots.get_mut(&user) else {
                continue;
            };
            slot.pending = 0;
            if entry.digest == slot.given {
                continue;
            }
            slot.given = entry.digest;
            slot.given_in = number;
            entries.push(entry.bytes);
        }
        // What a burst grew is given back once it is written.
        if pending.capacity() > PENDING_KEPT {
            pending.shrink_to(PENDING_KEPT);
        }
        drop(state);
        if entries.is_empty() {
            return None;
        }
        self.events.store(number, Ordering::Relaxed);
        Some(Batch {
            entries,
            id: Some(EventId {
                token: self.token,
                number,
            }),
        })
    }

    /// Whether the hub is closing (shutdown).
    pub fn closed(&self) -> bool {
        self.watcher.closed.load(Ordering::SeqCst)
    }
}

impl Resume {
    /// Whether the client already holds `entry` for `user`.
    pub fn holds(&self, user: UserId, entry: &Entry) -> bool {
        self.record.holds(user, entry, self.number)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.watcher.state.lock().slots);
        let users: Vec<UserId> = slots.keys().copied().collect();
        self.leave(&users);
        self.hub.watchers.remove(&self.key);
        self.hub.uncount(&self.counted);
        if *self.events.get_mut() > 0 {
            let mut held: Vec<(UserId, u64, u64)> = slots
                .into_iter()
                .filter(|(_, slot)| slot.given != 0)
                .map(|(user, slot)| (user, slot.given, slot.given_in))
                .collect();
            held.sort_unstable_by_key(|&(user, _, _)| user);
            let record = ResumeRecord {
                users: held.into_boxed_slice(),
                address: self.address,
            };
            let limits = self.hub.limits;
            self.hub.resumes.lock().insert(self.token, record, &limits);
        }
    }
}

/// A token no other stream (of any process) is likely to have, and that a client cannot
/// guess.
fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher as _};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::model::PresenceType;
    use std::borrow::Cow;

    fn hub_with(limits: Limits) -> Arc<Hub> {
        hub_showing(limits, true)
    }

    /// Entries written `{"u":..,"t":"<type>","loc":"..","lastOnline":..}`.
    fn hub_showing(limits: Limits, show_last_online: bool) -> Arc<Hub> {
        Hub::new(
            Box::new(|v: &PresenceView<'_>, invisible| {
                let kind = if invisible {
                    "Invisible"
                } else {
                    v.kind.as_str()
                };
                Bytes::from(format!(
                    "{{\"u\":{},\"t\":\"{kind}\",\"loc\":\"{}\",\"lastOnline\":{:?}}}",
                    v.user_id,
                    v.last_location,
                    v.last_online.map(|t| t.0)
                ))
            }),
            limits,
            show_last_online,
        )
    }

    const NOW: WallMillis = WallMillis(1_795_652_111_123);
    const REAL: Sight = Sight::Real {
        show_last_online: true,
    };

    /// A read of `view` by a viewer who is nobody's friend, default settings.
    fn seen<'v, 'a>(view: &'v PresenceView<'a>) -> Seen<'v, 'a> {
        Seen {
            view,
            settings: Settings::default(),
            friend: false,
            now: NOW,
        }
    }

    fn hub() -> Arc<Hub> {
        hub_with(Limits::default())
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn view(n: u64, location: &str) -> PresenceView<'static> {
        PresenceView {
            user_id: user(n),
            kind: PresenceType::Online,
            last_location: Cow::Owned(location.to_owned()),
            place: None,
            game_id: None,
            last_online: None,
        }
    }

    fn locations(batch: Option<Batch>) -> Vec<String> {
        batch
            .map(|b| {
                b.entries
                    .iter()
                    .map(|e| {
                        let text = String::from_utf8_lossy(e);
                        let start = text.find("\"loc\":\"").unwrap() + 7;
                        let end = start + text[start..].find('"').unwrap();
                        text[start..end].to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn take(sub: &Subscription) -> Vec<String> {
        locations(sub.take())
    }

    /// Adds `ids` and settles them as if a read gave `location` for each.
    fn watch(sub: &mut Subscription, ids: &[u64], location: &str) {
        let ids: Vec<UserId> = ids.iter().map(|&n| user(n)).collect();
        let added = sub.add(&ids);
        let entries: Vec<(UserId, Entry)> = added
            .iter()
            .map(|&u| (u, sub.first(&seen(&view(u.get(), location)))))
            .collect();
        let refs: Vec<(UserId, &Entry)> = entries.iter().map(|(u, e)| (*u, e)).collect();
        sub.settle(&refs, 0);
    }

    #[test]
    fn a_watched_user_costs_a_watcher_thirty_two_bytes_and_its_key() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn nothing_is_done_for_users_nobody_watches() {
        let hub = hub();
        assert!(!hub.watched());
        hub.publish(&view(1, "a"), Settings::default(), NOW);
        let mut sub = hub.subscribe();
        watch(&mut sub, &[2], "");
        hub.publish(&view(1, "a"), Settings::default(), NOW);
        assert!(take(&sub).is_empty());
        assert_eq!(hub.deliveries(), 0);
    }

    #[test]
    fn changes_are_coalesced_per_user_and_come_in_order() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1, 2], "");
        for i in 0..1000 {
            hub.publish(&view(1, &format!("x{i}")), Settings::default(), NOW);
        }
        hub.publish(&view(2, "b"), Settings::default(), NOW);
        hub.publish(&view(1, "last"), Settings::default(), NOW);
        assert_eq!(take(&sub), vec!["last", "b"]);
        assert!(take(&sub).is_empty());
    }

    #[test]
    fn an_entry_the_client_holds_is_not_sent_again() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "a");
        // Read gave "a": publishing "a" again (lastOnline aside) sends nothing.
        let mut same = view(1, "a");
        same.last_online = Some(crate::presence::time::WallMillis(5));
        hub.publish(&same, Settings::default(), NOW);
        assert!(take(&sub).is_empty());
        // a -> b -> a while the reader was away: it holds "a" already.
        hub.publish(&view(1, "b"), Settings::default(), NOW);
        hub.publish(&view(1, "a"), Settings::default(), NOW);
        assert!(take(&sub).is_empty());
        hub.publish(&view(1, "c"), Settings::default(), NOW);
        assert_eq!(take(&sub), vec!["c"]);
    }

    #[test]
    fn starting_to_watch_one_user_keeps_what_is_pending_for_another() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "a");
        hub.publish(&view(1, "b"), Settings::default(), NOW);
        // A subscribe to user 2 in the middle: user 1's pending change must survive.
        watch(&mut sub, &[2], "x");
        assert_eq!(take(&sub), vec!["b"]);
    }

    #[test]
    fn a_late_delivery_never_overtakes_a_newer_one() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "a");
        let older = hub
            .publish_later(&view(1, "b"), Settings::default(), NOW)
            .unwrap();
        let newer = hub
            .publish_later(&view(1, "c"), Settings::default(), NOW)
            .unwrap();
        newer.deliver();
        older.deliver();
        assert_eq!(take(&sub), vec!["c"]);
    }

    #[test]
    fn changes_up_to_the_watermark_are_in_the_read() {
        let hub = hub();
        let mut other = hub.subscribe();
        watch(&mut other, &[1], "a");
        // Made before the second watcher joined, delivered after: its read has it.
        let before = hub
            .publish_later(&view(1, "b"), Settings::default(), NOW)
            .unwrap();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "b");
        before.deliver();
        assert!(take(&sub).is_empty());
        assert_eq!(take(&other), vec!["b"]);
    }

    #[test]
    fn a_topic_made_again_starts_above_every_earlier_version() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "a");
        let stale = hub
            .publish_later(&view(1, "stale"), Settings::default(), NOW)
            .unwrap();
        sub.remove(&[user(1)]);
        assert_eq!(hub.topic_count(), 0);
        watch(&mut sub, &[1], "fresh");
        stale.deliver();
        assert!(take(&sub).is_empty());
    }

    #[test]
    fn catching_up_sends_only_what_watchers_do_not_hold_and_never_overtakes() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1, 2], "a");
        let marks = hub.marks(&[user(1), user(2)]);
        // User 2 changed after the marks were taken: the read is not newer than that.
        hub.publish(&view(2, "new"), Settings::default(), NOW);
        hub.catch_up(&view(1, "a"), Settings::default(), NOW, marks[0]);
        hub.catch_up(&view(2, "old"), Settings::default(), NOW, marks[1]);
        assert_eq!(take(&sub), vec!["new"]);
        let marks = hub.marks(&[user(1)]);
        hub.catch_up(&view(1, "missed"), Settings::default(), NOW, marks[0]);
        assert_eq!(take(&sub), vec!["missed"]);
    }

    #[test]
    fn a_closed_stream_can_be_resumed_with_what_changed_since_an_event() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1, 2, 3], "a");
        let first = sub.event();
        hub.publish(&view(2, "b"), Settings::default(), NOW);
        let batch = sub.take().unwrap();
        let second = batch.id.unwrap();
        assert_eq!(second.number, first.number + 1);
        drop(sub);
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(hub.resume_users(), 3);

        let again = hub.subscribe();
        let resume = again.resume(&second.to_string()).unwrap();
        let entry = |n: u64, loc: &str| hub.entry_as(&view(n, loc), REAL);
        assert!(resume.holds(user(1), &entry(1, "a")));
        assert!(resume.holds(user(2), &entry(2, "b")));
        assert!(!resume.holds(user(3), &entry(3, "changed")));
        assert!(!resume.holds(user(4), &entry(4, "")));
        // As of the first event, the client did not have user 2's "b" yet.
        let resume = again.resume(&first.to_string()).unwrap();
        assert!(!resume.holds(user(2), &entry(2, "b")));
        assert!(again.resume("junk").is_none());
        assert!(again.resume(&format!("{:016x}-1", 7)).is_none());
    }

    #[test]
    fn records_of_closed_streams_are_bounded_in_all_and_per_address() {
        let limits = Limits {
            resume_users: 250,
            resume_users_per_address: 100,
            ..Limits::default()
        };
        let hub = hub_with(limits);
        let address = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        for round in 0..10u64 {
            for n in 1..=4 {
                let mut sub = hub
                    .subscribe_within(address(n), None, Viewer::Anonymous)
                    .unwrap();
                let ids: Vec<u64> = (1..=40).map(|i| round * 1000 + i).collect();
                watch(&mut sub, &ids, "a");
                sub.event();
            }
            let resumes = hub.resumes.lock();
            assert!(resumes.users <= 250, "{}", resumes.users);
            for held in resumes.by_address.values() {
                assert!(held.users <= 100);
            }
        }
        assert_eq!(hub.topic_count(), 0);
        let limits = Limits {
            resume_window: Duration::ZERO,
            ..limits
        };
        let hub = hub_with(limits);
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "a");
        sub.event();
        drop(sub);
        assert_eq!(hub.resume_users(), 0);
    }

    #[test]
    fn subscriptions_are_bounded_in_all_per_address_and_per_user() {
        let hub = hub_with(Limits {
            connections: 3,
            per_address: 2,
            per_user: 1,
            ..Limits::default()
        });
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let one = hub.subscribe_within(a, None, Viewer::Anonymous).unwrap();
        let _two = hub
            .subscribe_within(a, Some(user(1)), Viewer::Anonymous)
            .unwrap();
        assert_eq!(
            hub.subscribe_within(a, None, Viewer::Anonymous)
                .unwrap_err(),
            Refused::AddressFull
        );
        assert_eq!(
            hub.subscribe_within(b, Some(user(1)), Viewer::Anonymous)
                .unwrap_err(),
            Refused::UserFull
        );
        let _three = hub.subscribe_within(b, None, Viewer::Anonymous).unwrap();
        assert_eq!(
            hub.subscribe_within(b, None, Viewer::Anonymous)
                .unwrap_err(),
            Refused::Full
        );
        drop(one);
        assert!(hub.subscribe_within(a, None, Viewer::Anonymous).is_ok());
        assert!(hub.per_address.len() <= 2);
    }

    #[test]
    fn event_ids_read_back() {
        let id = EventId {
            token: 0xabc,
            number: 42,
        };
        assert_eq!(id.to_string(), "0000000000000abc-42");
        assert_eq!(EventId::parse(&id.to_string()), Some(id));
        assert_eq!(EventId::parse("junk"), None);
        assert_eq!(EventId::parse("abc-1"), None);
    }

    #[test]
    fn removed_users_are_no_longer_offered_and_closing_ends_the_watch() {
        let hub = hub();
        let mut sub = hub.subscribe();
        watch(&mut sub, &[1], "");
        hub.publish(&view(1, "a"), Settings::default(), NOW);
        sub.remove(&[user(1)]);
        assert!(take(&sub).is_empty());
        hub.publish(&view(1, "b"), Settings::default(), NOW);
        assert!(take(&sub).is_empty());
        hub.close();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(sub.poll_batch(&mut cx), Poll::Ready(None)));
        // Made after closing: closed from the start.
        let late = hub.subscribe();
        assert!(matches!(late.poll_batch(&mut cx), Poll::Ready(None)));
    }

    // ---- privacy: what each watcher is shown (CONTRACT section 11) ----

    fn settings(visibility: Visibility, invisible_until: Option<Option<i64>>) -> Settings {
        Settings::new(
            visibility,
            invisible_until.map(|until| crate::presence::privacy::Invisibility {
                until: until.map(WallMillis),
                last_online: Some(WallMillis(1_000)),
            }),
        )
    }

    fn seen_with<'v, 'a>(
        view: &'v PresenceView<'a>,
        settings: Settings,
        friend: bool,
    ) -> Seen<'v, 'a> {
        Seen {
            view,
            settings,
            friend,
            now: NOW,
        }
    }

    /// A watcher for `viewer` of user 1, first read with `settings` (`friend` as the read
    /// says); returns the first entry's text.
    fn watcher_of_one(
        hub: &Arc<Hub>,
        viewer: Viewer,
        settings: Settings,
        friend: bool,
    ) -> (Subscription, String) {
        let mut sub = hub.subscribe_as(viewer);
        sub.add(&[user(1)]);
        let read = view(1, "first");
        let entry = sub.first(&seen_with(&read, settings, friend));
        sub.settle(&[(user(1), &entry)], 0);
        (sub, String::from_utf8_lossy(&entry.bytes).into_owned())
    }

    fn texts(sub: &Subscription) -> Vec<String> {
        sub.take()
            .map(|b| {
                b.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    const NEVER_SEEN_ONE: &str = "{\"u\":1,\"t\":\"Offline\",\"loc\":\"\",\"lastOnline\":None}";

    #[test]
    fn each_watcher_is_shown_what_its_viewer_may_see() {
        let hub = hub();
        let friends_only = settings(Visibility::Friends, None);
        let (anonymous, first) = watcher_of_one(&hub, Viewer::Anonymous, friends_only, false);
        assert_eq!(first, NEVER_SEEN_ONE);
        let (stranger, first) = watcher_of_one(&hub, Viewer::User(user(7)), friends_only, false);
        assert_eq!(first, NEVER_SEEN_ONE);
        let (friend, first) = watcher_of_one(&hub, Viewer::User(user(8)), friends_only, true);
        assert!(first.contains("first"), "{first}");
        let (itself, _) = watcher_of_one(&hub, Viewer::User(user(1)), friends_only, false);
        let (reader, _) = watcher_of_one(&hub, Viewer::Reader, friends_only, false);
        for n in 0..5 {
            hub.publish(&view(1, &format!("moved{n}")), friends_only, NOW);
        }
        // A hidden user's activity sends those who cannot see it nothing at all.
        assert!(texts(&anonymous).is_empty());
        assert!(texts(&stranger).is_empty());
        for sub in [&friend, &itself, &reader] {
            assert_eq!(take(sub), vec!["moved4"]);
        }
    }

    #[test]
    fn a_user_who_restricted_nothing_is_encoded_once_for_every_watcher() {
        let hub = hub();
        let shown = Shown::new(&hub, &view(1, "a"), Settings::default(), NOW);
        assert!(shown.no_last_online.is_none());
        assert!(shown.hidden.is_none());
        assert!(shown.invisible.is_none());
        assert!(shown.own_invisible.is_none());
        for viewer in [
            Viewer::Anonymous,
            Viewer::Reader,
            Viewer::User(user(1)),
            Viewer::User(user(2)),
        ] {
            assert!(std::ptr::eq(
                shown.for_viewer(viewer, user(1), false),
                &shown.real
            ));
        }
    }

    #[test]
    fn a_friendship_change_re_decides_what_a_watcher_sees() {
        let hub = hub();
        let friends_only = settings(Visibility::Friends, None);
        let (sub, first) = watcher_of_one(&hub, Viewer::User(user(7)), friends_only, false);
        assert_eq!(first, NEVER_SEEN_ONE);
        // Nobody else's friendship concerns this watcher.
        assert!(!hub.befriend(user(1), user(8), true));
        assert!(!hub.befriend(user(2), user(7), true));
        assert!(hub.befriend(user(1), user(7), true));
        hub.publish(&view(1, "now-seen"), friends_only, NOW);
        assert_eq!(take(&sub), vec!["now-seen"]);
        assert!(hub.befriend(user(1), user(7), false));
        hub.publish(&view(1, "now-seen"), friends_only, NOW);
        assert_eq!(texts(&sub), vec![NEVER_SEEN_ONE.to_owned()]);
    }

    #[test]
    fn a_friendship_told_during_the_first_read_wins_over_the_read() {
        let hub = hub();
        let friends_only = settings(Visibility::Friends, None);
        let mut sub = hub.subscribe_as(Viewer::User(user(7)));
        sub.add(&[user(1)]);
        // The change arrives after the watch began, the read was made before it.
        assert!(hub.befriend(user(1), user(7), true));
        let read = view(1, "first");
        let entry = sub.first(&seen_with(&read, friends_only, false));
        assert!(String::from_utf8_lossy(&entry.bytes).contains("first"));
        sub.settle(&[(user(1), &entry)], 0);
        hub.publish(&view(1, "later"), friends_only, NOW);
        assert_eq!(take(&sub), vec!["later"]);
    }

    #[test]
    fn an_invisible_user_is_offline_to_others_and_invisible_to_itself_until_it_ends() {
        let hub = hub();
        let until = NOW.0 + 5_000;
        let invisible = settings(Visibility::Everyone, Some(Some(until)));
        let (other, first) = watcher_of_one(&hub, Viewer::Anonymous, invisible, false);
        assert_eq!(
            first,
            "{\"u\":1,\"t\":\"Offline\",\"loc\":\"\",\"lastOnline\":Some(1000)}"
        );
        let (itself, first) = watcher_of_one(&hub, Viewer::User(user(1)), invisible, false);
        assert!(first.contains("\"t\":\"Invisible\""), "{first}");
        let (reader, first) = watcher_of_one(&hub, Viewer::Reader, invisible, false);
        assert!(first.contains("\"t\":\"Online\""), "{first}");
        hub.publish(&view(1, "moved"), invisible, NOW);
        assert!(
            texts(&other).is_empty(),
            "an invisible user's moves show nothing"
        );
        assert_eq!(take(&itself), vec!["moved"]);
        assert_eq!(take(&reader), vec!["moved"]);
        // Its end is due exactly at `until`, once.
        assert!(hub.due_ends(WallMillis(until - 1)).is_empty());
        assert_eq!(hub.due_ends(WallMillis(until)), vec![user(1)]);
        assert!(hub.due_ends(WallMillis(until + 1)).is_empty());
        let mark = hub.marks(&[user(1)])[0];
        hub.catch_up(&view(1, "moved"), invisible, WallMillis(until), mark);
        assert_eq!(take(&other), vec!["moved"]);
        let shown = texts(&itself);
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("\"t\":\"Online\""), "{shown:?}");
        assert!(texts(&reader).is_empty());
    }

    #[test]
    fn an_invisible_user_who_hides_from_a_friend_sends_it_the_never_seen_entry() {
        // Invisible and hidden differ only in `lastOnline`: the change is still sent.
        let hub = hub();
        let invisible_to_friends = settings(Visibility::Friends, Some(None));
        let (sub, first) = watcher_of_one(&hub, Viewer::User(user(7)), invisible_to_friends, true);
        assert_eq!(
            first,
            "{\"u\":1,\"t\":\"Offline\",\"loc\":\"\",\"lastOnline\":Some(1000)}"
        );
        assert!(hub.befriend(user(1), user(7), false));
        hub.publish(&view(1, "first"), invisible_to_friends, NOW);
        assert_eq!(texts(&sub), vec![NEVER_SEEN_ONE.to_owned()]);
        // Hidden, its activity sends nothing.
        hub.publish(&view(1, "moved"), invisible_to_friends, NOW);
        assert!(texts(&sub).is_empty());
    }

    #[test]
    fn signed_in_viewers_are_listed_with_what_they_watch_but_themselves() {
        let hub = hub();
        let mut one = hub.subscribe_as(Viewer::User(user(7)));
        one.add(&[user(1), user(7)]);
        let mut two = hub.subscribe_as(Viewer::User(user(7)));
        two.add(&[user(2), user(1)]);
        let mut anonymous = hub.subscribe();
        anonymous.add(&[user(3)]);
        let mut itself = hub.subscribe_as(Viewer::User(user(8)));
        itself.add(&[user(8)]);
        assert_eq!(
            hub.signed_in_viewers(),
            vec![(user(7), vec![user(1), user(2)])]
        );
    }

    #[test]
    fn a_watcher_opened_after_an_end_passed_does_not_take_it_from_the_others() {
        let hub = hub();
        let until = NOW.0 + 10;
        let invisible = settings(Visibility::Everyone, Some(Some(until)));
        let (_first, _) = watcher_of_one(&hub, Viewer::Anonymous, invisible, false);
        // Past the end, before any sweep: a new watcher's first read shows it ended.
        let mut late = hub.subscribe();
        late.add(&[user(1)]);
        let read = view(1, "first");
        let _ = late.first(&Seen {
            view: &read,
            settings: invisible,
            friend: false,
            now: WallMillis(until + 1),
        });
        assert_eq!(hub.due_ends(WallMillis(until + 1)), vec![user(1)]);
    }

    #[test]
    fn a_user_never_seen_who_turns_invisible_sends_nothing() {
        // Never seen, and invisible with no `lastOnline` to freeze: the same bytes.
        let hub = hub();
        let (sub, first) = watcher_of_one(&hub, Viewer::Anonymous, Settings::default(), false);
        let _ = first;
        let never = PresenceView::never_seen(user(1));
        hub.publish(&never, Settings::default(), NOW);
        let _ = texts(&sub);
        let invisible = Settings::new(
            Visibility::Everyone,
            Some(crate::presence::privacy::Invisibility {
                until: None,
                last_online: None,
            }),
        );
        hub.publish(&never, invisible, NOW);
        assert!(texts(&sub).is_empty());
    }

    #[test]
    fn an_end_noted_then_replaced_is_not_due() {
        let hub = hub();
        let (_sub, _) = watcher_of_one(
            &hub,
            Viewer::Anonymous,
            settings(Visibility::Everyone, Some(Some(NOW.0 + 10))),
            false,
        );
        hub.publish(
            &view(1, "a"),
            settings(Visibility::Everyone, Some(None)),
            NOW,
        );
        assert!(hub.due_ends(WallMillis(NOW.0 + 10)).is_empty());
    }

    #[test]
    fn without_show_last_online_others_get_the_never_seen_last_online() {
        let hub = hub_showing(Limits::default(), false);
        let mut real = view(1, "a");
        real.last_online = Some(WallMillis(5));
        let mut other = hub.subscribe();
        other.add(&[user(1)]);
        let mut itself = hub.subscribe_as(Viewer::User(user(1)));
        itself.add(&[user(1)]);
        let mut reader = hub.subscribe_as(Viewer::Reader);
        reader.add(&[user(1)]);
        hub.publish(&real, Settings::default(), NOW);
        let last = |sub: &Subscription| texts(sub).concat();
        assert!(last(&other).ends_with("\"lastOnline\":None}"));
        assert!(last(&itself).ends_with("\"lastOnline\":Some(5)}"));
        assert!(last(&reader).ends_with("\"lastOnline\":Some(5)}"));
    }
}
