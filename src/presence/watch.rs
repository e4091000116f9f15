//! Live presence: who watches which users, and the changes owed to each watcher.
//!
//! A backend calls [`Hub::publish`] with the new view of a user whenever that user's entry
//! changes in anything but `lastOnline` (the memory store while it holds the user's lock,
//! the Redis backend from its subscription, in the order Redis published). The hub encodes
//! the entry once and hands it to every watcher of that user. Nothing else happens for a
//! user nobody watches: one map lookup, and none at all while no stream is open.
//!
//! Each watcher holds at most one pending entry per user (a newer one replaces it), so what
//! a slow reader makes the server hold is bounded by the users it watches, never by the
//! number of changes; when it reads again it gets the latest entry of each changed user.
//!
//! Every published change gets a sequence number, and the hub keeps a ring of the last
//! changes of watched users. An event names the last change it carries (see
//! [`EventId`]); a client that reconnects with that id is sent the users of its list that
//! changed since, or, when the ring no longer reaches back that far (or the process
//! restarted), the full state. A user's changes are logged while anyone watches it and for
//! a while after its last watcher left ([`Hub::reap`]), so that a quick reconnect finds
//! them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::model::{PresenceView, UserId};

type Hasher = foldhash::fast::RandomState;

/// Changes of watched users kept for resuming streams.
const LOG_CAPACITY: usize = 1 << 18;

/// Turns a view into the JSON object a lookup writes for it.
pub type Encoder = Box<dyn Fn(&PresenceView<'_>) -> Bytes + Send + Sync>;

/// What a backend tells about changes. Implemented by [`Hub`]; a store without watchers
/// has none.
pub trait Changes: Send + Sync + fmt::Debug {
    /// Whether anyone may be watching anything: when false, a backend skips building views.
    fn watched(&self) -> bool;
    /// `view` is the new entry of its user, which changed in something other than
    /// `lastOnline`. Calls for one user must come in the order of the changes.
    fn publish(&self, view: &PresenceView<'_>);
}

/// The position of an event in this process's stream of changes, written
/// `<process>-<sequence>`; the process part makes ids of another process (or of another
/// node) unreadable here, which falls back to the full state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

impl EventId {
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.trim().split_once('-')?;
        if epoch.len() != 16 {
            return None;
        }
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// One watched user: its watchers, and since when its changes are logged.
struct Topic {
    watchers: Vec<Arc<Watcher>>,
    /// The sequence number when logging of this user's changes began.
    since: u64,
    /// When its last watcher left; `None` while watched.
    idle_since: Option<Instant>,
    /// Its place in the order topics were made (see [`Hub::generation`]).
    generation: u64,
    /// The entry its watchers were last given (published, or read for a first event
    /// when nothing was published before): a catch-up after a gap sends only what differs.
    last: Option<Bytes>,
}

/// The recent changes of watched users, in order.
struct Log {
    /// The sequence number of the latest change.
    seq: u64,
    ring: VecDeque<(u64, UserId)>,
    /// Changes up to this number may have left the ring.
    floor: u64,
}

/// The watchers of one process.
pub struct Hub {
    epoch: u64,
    encode: Encoder,
    topics: DashMap<UserId, Topic, Hasher>,
    /// Topics held, watched or lingering: zero means no publish has anything to do.
    topic_count: AtomicUsize,
    log: Mutex<Log>,
    /// How long a user's changes stay logged after its last watcher left.
    linger: Duration,
    last_reap: Mutex<Instant>,
    /// Every open watcher, to end them all at shutdown.
    watchers: DashMap<u64, Arc<Watcher>, Hasher>,
    next_watcher: AtomicU64,
    closing: AtomicBool,
    deliveries: AtomicU64,
    /// Subscriptions counted against a limit (streams and WebSockets).
    open: AtomicUsize,
    /// Topics made so far.
    generation: AtomicU64,
    /// Whether changes made elsewhere reach this hub yet (false on Redis until the first
    /// subscription is in place).
    live: AtomicBool,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.epoch)
            .field("topics", &self.topic_count.load(Ordering::Relaxed))
            .field("watchers", &self.watchers.len())
            .finish()
    }
}

/// What one connection is owed: the latest entry of each watched user that changed since
/// it last took them.
pub struct Watcher {
    pending: Mutex<Pending>,
    waker: AtomicWaker,
    closed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    entries: HashMap<UserId, (u64, Bytes), Hasher>,
    /// The sequence number of the latest change offered.
    upto: u64,
}

impl Watcher {
    fn offer(&self, user: UserId, seq: u64, entry: &Bytes) {
        let mut pending = self.pending.lock();
        pending.entries.insert(user, (seq, entry.clone()));
        pending.upto = seq;
        drop(pending);
        self.waker.wake();
    }
}

/// Entries taken from a watcher, in the order of their changes.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Bytes>,
    /// The event id to send with them.
    pub id: Option<EventId>,
}

impl Hub {
    pub fn new(encode: Encoder, linger: Duration) -> Arc<Self> {
        Arc::new(Self {
            epoch: process_epoch(),
            encode,
            topics: DashMap::with_hasher(Hasher::default()),
            topic_count: AtomicUsize::new(0),
            log: Mutex::new(Log {
                seq: 0,
                ring: VecDeque::new(),
                floor: 0,
            }),
            linger,
            last_reap: Mutex::new(Instant::now()),
            watchers: DashMap::with_hasher(Hasher::default()),
            next_watcher: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            deliveries: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(true),
        })
    }

    /// A new watcher, unless `max` are open already.
    pub fn subscribe_within(self: &Arc<Self>, max: usize) -> Option<Subscription> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut sub = self.subscribe_unlimited();
        sub.counted = true;
        Some(sub)
    }

    /// A new watcher of nobody yet; it stops watching when the subscription is dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribe_unlimited()
    }

    fn subscribe_unlimited(self: &Arc<Self>) -> Subscription {
        let watcher = Arc::new(Watcher {
            pending: Mutex::new(Pending::default()),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(self.closing.load(Ordering::Acquire)),
        });
        let key = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        self.watchers.insert(key, watcher.clone());
        Subscription {
            hub: self.clone(),
            key,
            watcher,
            users: Vec::new(),
            counted: false,
        }
    }

    /// The id of the latest change.
    pub fn current(&self) -> EventId {
        self.id(self.log.lock().seq)
    }

    fn id(&self, seq: u64) -> EventId {
        EventId {
            epoch: self.epoch,
            seq,
        }
    }

    /// Marks whether changes made elsewhere reach this hub (see [`Self::is_live`]).
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    /// Whether changes made through other nodes reach this hub: always on memory; on Redis
    /// once the node's first subscription is in place.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Watchers open now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Users watched now or lately (their changes are logged).
    pub fn topic_count(&self) -> usize {
        self.topic_count.load(Ordering::Relaxed)
    }

    /// Every user with a topic: watched now, or lately (whose changes are still logged).
    /// A backend that may have missed changes publishes these users' entries again.
    pub fn watched_users(&self) -> Vec<UserId> {
        self.topics.iter().map(|topic| *topic.key()).collect()
    }

    /// Entries handed to watchers so far (one per watcher per change).
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Ends every subscription: their streams finish once they have sent what they hold.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for watcher in self.watchers.iter() {
            watcher.closed.store(true, Ordering::Release);
            watcher.waker.wake();
        }
    }

    /// Forgets users nobody has watched for `linger`; cheap when called more often (it
    /// works at most four times per `linger`).
    pub fn reap(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_reap.lock();
            if now.duration_since(*last) < self.linger / 4 {
                return;
            }
            *last = now;
        }
        let mut removed = 0;
        self.topics.retain(|_, topic| {
            let keep = topic
                .idle_since
                .is_none_or(|idle| now.duration_since(idle) < self.linger);
            removed += usize::from(!keep);
            keep
        });
        self.topic_count.fetch_sub(removed, Ordering::Relaxed);
    }
}

impl Changes for Hub {
    fn watched(&self) -> bool {
        self.topic_count.load(Ordering::SeqCst) > 0
    }

    fn publish(&self, view: &PresenceView<'_>) {
        if !self.watched() {
            return;
        }
        let Some(mut topic) = self.topics.get_mut(&view.user_id) else {
            return;
        };
        let entry = (self.encode)(view);
        self.offer(view.user_id, &mut topic, entry);
    }
}

impl Hub {
    /// Hands `entry` to every watcher of `topic`, in sequence.
    fn offer(&self, user: UserId, topic: &mut Topic, entry: Bytes) {
        // One lock orders every change: each watcher is offered changes in sequence, so
        // the latest number it was offered covers every earlier change of its users.
        let mut log = self.log.lock();
        log.seq += 1;
        let seq = log.seq;
        if log.ring.len() == LOG_CAPACITY {
            if let Some((gone, _)) = log.ring.pop_front() {
                log.floor = gone;
            }
        }
        log.ring.push_back((seq, user));
        for watcher in &topic.watchers {
            watcher.offer(user, seq, &entry);
        }
        drop(log);
        self.deliveries
            .fetch_add(topic.watchers.len() as u64, Ordering::Relaxed);
        topic.last = Some(entry);
    }

    /// How many topics have been made so far: a backend that has just started hearing of
    /// changes again notes it, since topics made later cannot have missed any.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// After a gap in what a backend heard (changes may have been missed), `view` is a
    /// user's current entry: it is published unless the user's topic was made after
    /// `generation` (it missed nothing) or its watchers were last given the same
    /// (`lastOnline` aside).
    pub fn catch_up(&self, view: &PresenceView<'_>, generation: u64) {
        let Some(mut topic) = self.topics.get_mut(&view.user_id) else {
            return;
        };
        if topic.generation > generation {
            return;
        }
        let entry = (self.encode)(view);
        if topic
            .last
            .as_ref()
            .is_some_and(|last| same_but_last_online(last, &entry))
        {
            return;
        }
        self.offer(view.user_id, &mut topic, entry);
    }
}

/// Whether two entries differ in nothing but `lastOnline`, the last key an entry is
/// written with.
fn same_but_last_online(a: &[u8], b: &[u8]) -> bool {
    const KEY: &[u8] = b",\"lastOnline\":";
    let head = |e: &[u8]| -> Option<usize> { memchr::memmem::rfind(e, KEY) };
    match (head(a), head(b)) {
        (Some(i), Some(j)) => a[..i] == b[..j],
        _ => a == b,
    }
}

/// One connection's watch: the users it watches and what it is owed.
pub struct Subscription {
    hub: Arc<Hub>,
    key: u64,
    watcher: Arc<Watcher>,
    users: Vec<UserId>,
    counted: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Subscription {
    /// The users watched, in the order they were added.
    pub fn users(&self) -> &[UserId] {
        &self.users
    }

    /// Starts watching `ids` (those not watched yet); returns the ones added and the id
    /// of the latest change: every change up to it is in what a read made after this call
    /// returns, and every later one will be offered.
    pub fn add(&mut self, ids: &[UserId]) -> (Vec<UserId>, EventId) {
        let mut added = Vec::new();
        for &id in ids {
            if self.users.contains(&id) || added.contains(&id) {
                continue;
            }
            added.push(id);
            let mut topic = self.hub.topics.entry(id).or_insert_with(|| {
                self.hub.topic_count.fetch_add(1, Ordering::SeqCst);
                Topic {
                    watchers: Vec::new(),
                    since: self.hub.log.lock().seq,
                    idle_since: None,
                    generation: self.hub.generation.fetch_add(1, Ordering::SeqCst) + 1,
                    last: None,
                }
            });
            topic.watchers.push(self.watcher.clone());
            topic.idle_since = None;
        }
        self.users.extend_from_slice(&added);
        (added, self.hub.current())
    }

    /// Stops watching `ids`, and drops what was pending for them.
    pub fn remove(&mut self, ids: &[UserId]) {
        let gone: Vec<UserId> = ids
            .iter()
            .copied()
            .filter(|id| self.users.contains(id))
            .collect();
        if gone.is_empty() {
            return;
        }
        self.users.retain(|id| !gone.contains(id));
        self.leave(&gone);
        let mut pending = self.watcher.pending.lock();
        for id in &gone {
            pending.entries.remove(id);
        }
    }

    fn leave(&self, ids: &[UserId]) {
        let now = Instant::now();
        for id in ids {
            if let Some(mut topic) = self.hub.topics.get_mut(id) {
                topic.watchers.retain(|w| !Arc::ptr_eq(w, &self.watcher));
                if topic.watchers.is_empty() {
                    topic.idle_since = Some(now);
                }
            }
        }
    }

    /// Which of the watched users changed after `since` (an id this process wrote), or
    /// `None` when that cannot be told: an id of another process, or older than the log.
    pub fn changed_since(&self, since: EventId) -> Option<Vec<UserId>> {
        if since.epoch != self.hub.epoch {
            return None;
        }
        let mut changed: Vec<UserId> = self
            .users
            .iter()
            .copied()
            .filter(|id| {
                self.hub
                    .topics
                    .get(id)
                    .is_none_or(|topic| topic.since > since.seq)
            })
            .collect();
        let log = self.hub.log.lock();
        if since.seq > log.seq || since.seq < log.floor {
            return None;
        }
        let start = log.ring.partition_point(|&(seq, _)| seq <= since.seq);
        for &(_, user) in log.ring.range(start..) {
            if self.users.contains(&user) && !changed.contains(&user) {
                changed.push(user);
            }
        }
        Some(changed)
    }

    /// Records the entries a first event gave, for users nothing was published for yet
    /// (see [`Hub::catch_up`]).
    pub fn given(&self, user: UserId, entry: &Bytes) {
        if let Some(mut topic) = self.hub.topics.get_mut(&user) {
            if topic.last.is_none() {
                topic.last = Some(entry.clone());
            }
        }
    }

    /// Forgets what is pending up to `upto` (already covered by a full read).
    pub fn settle(&self, upto: EventId) {
        let mut pending = self.watcher.pending.lock();
        pending.entries.retain(|_, (seq, _)| *seq > upto.seq);
    }

    /// Takes what is pending, in the order of the changes; `Pending` (with the task woken
    /// on the next change) when nothing is, `Ready(None)` once the hub closes.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        if let Some(batch) = self.take() {
            return Poll::Ready(Some(batch));
        }
        self.watcher.waker.register(cx.waker());
        if let Some(batch) = self.take() {
            return Poll::Ready(Some(batch));
        }
        if self.watcher.closed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Whether something is pending (or the hub is closing), without taking it; if not,
    /// the task is woken when there is.
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        let ready = || {
            !self.watcher.pending.lock().entries.is_empty()
                || self.watcher.closed.load(Ordering::Acquire)
        };
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
        let mut pending = self.watcher.pending.lock();
        if pending.entries.is_empty() {
            return None;
        }
        let mut taken: Vec<(u64, Bytes)> = pending.entries.drain().map(|(_, e)| e).collect();
        let upto = pending.upto;
        drop(pending);
        taken.sort_unstable_by_key(|&(seq, _)| seq);
        Some(Batch {
            entries: taken.into_iter().map(|(_, entry)| entry).collect(),
            id: Some(self.hub.id(upto)),
        })
    }

    /// Whether the hub is closing (shutdown).
    pub fn closed(&self) -> bool {
        self.watcher.closed.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let users = std::mem::take(&mut self.users);
        self.leave(&users);
        self.hub.watchers.remove(&self.key);
        if self.counted {
            self.hub.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A number that differs between processes (and between runs of one), so that event ids
/// of a previous run are never mistaken for this one's.
fn process_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
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

    fn hub() -> Arc<Hub> {
        Hub::new(
            Box::new(|v: &PresenceView<'_>| {
                Bytes::from(format!("{}:{}", v.user_id, v.last_location))
            }),
            Duration::from_secs(60),
        )
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

    fn take(sub: &Subscription) -> Vec<String> {
        sub.take()
            .map(|b| {
                b.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn nothing_is_done_for_users_nobody_watches() {
        let hub = hub();
        assert!(!hub.watched());
        hub.publish(&view(1, "a"));
        let mut sub = hub.subscribe();
        sub.add(&[user(2)]);
        hub.publish(&view(1, "a"));
        assert_eq!(hub.current().seq, 0);
        assert!(take(&sub).is_empty());
    }

    #[test]
    fn changes_are_coalesced_per_user_and_come_in_order() {
        let hub = hub();
        let mut sub = hub.subscribe();
        sub.add(&[user(1), user(2)]);
        for i in 0..1000 {
            hub.publish(&view(1, &format!("x{i}")));
        }
        hub.publish(&view(2, "b"));
        hub.publish(&view(1, "last"));
        assert_eq!(take(&sub), vec!["2:b", "1:last"]);
        assert!(take(&sub).is_empty());
    }

    #[test]
    fn resuming_names_exactly_the_users_changed_since() {
        let hub = hub();
        let mut sub = hub.subscribe();
        let (_, start) = sub.add(&[user(1), user(2), user(3)]);
        hub.publish(&view(2, "b"));
        let after_b = hub.current();
        hub.publish(&view(3, "c"));
        drop(sub);
        let mut again = hub.subscribe();
        again.add(&[user(1), user(2), user(3), user(4)]);
        let mut changed = again.changed_since(after_b).unwrap();
        changed.sort();
        assert_eq!(changed, vec![user(3), user(4)]);
        let mut changed = again.changed_since(start).unwrap();
        changed.sort();
        assert_eq!(changed, vec![user(2), user(3), user(4)]);
        let foreign = EventId {
            epoch: start.epoch ^ 1,
            seq: 0,
        };
        assert!(again.changed_since(foreign).is_none());
        let future = EventId { seq: 99, ..start };
        assert!(again.changed_since(future).is_none());
    }

    #[test]
    fn catching_up_sends_only_what_watchers_have_not_been_given() {
        let hub = Hub::new(
            Box::new(|v: &PresenceView<'_>| {
                Bytes::from(format!(
                    "{{\"loc\":\"{}\",\"lastOnline\":\"{:?}\"}}",
                    v.last_location, v.last_online
                ))
            }),
            Duration::from_secs(60),
        );
        let mut sub = hub.subscribe();
        sub.add(&[user(1), user(2)]);
        let before_gap = hub.generation();
        sub.given(user(1), &(hub.encode)(&view(1, "a")));
        hub.publish(&view(2, "b"));
        take(&sub);
        // The same entries, lastOnline aside: nothing.
        let mut later = view(1, "a");
        later.last_online = Some(crate::presence::time::WallMillis(5));
        hub.catch_up(&later, before_gap);
        hub.catch_up(&view(2, "b"), before_gap);
        assert!(take(&sub).is_empty());
        // What changed unseen is sent.
        hub.catch_up(&view(2, "c"), before_gap);
        assert_eq!(take(&sub).len(), 1);
        // A topic made after the subscription came back missed nothing.
        let mut other = hub.subscribe();
        other.add(&[user(3)]);
        hub.catch_up(&view(3, "x"), before_gap);
        assert!(take(&other).is_empty());
        hub.catch_up(&view(3, "x"), hub.generation());
        assert_eq!(take(&other).len(), 1);
    }

    #[test]
    fn event_ids_read_back() {
        let id = EventId {
            epoch: 0xabc,
            seq: 42,
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
        sub.add(&[user(1)]);
        hub.publish(&view(1, "a"));
        sub.remove(&[user(1)]);
        assert!(take(&sub).is_empty());
        hub.publish(&view(1, "b"));
        assert!(take(&sub).is_empty());
        hub.close();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(sub.poll_batch(&mut cx), Poll::Ready(None)));
    }
}
