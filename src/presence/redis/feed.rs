//! Live presence on Redis: every node subscribes to the changes the scripts publish (see
//! [`super::scripts`]) and hands each to its [`Hub`], so that a change made through any
//! node, expiries included, reaches the watchers on every node.
//!
//! - Standalone: one pub/sub connection, `SUBSCRIBE <prefix>c` (Redis 6.2 has it), checked
//!   with a `PING` every 10 s. When it drops, stops answering or cannot be made, it is made
//!   again with a capped backoff.
//! - Cluster: a RESP3 cluster connection of its own, `SSUBSCRIBE`d to every shard's channel
//!   `<prefix>{<shard>}c`; the client subscribes again by itself after a node reconnects or
//!   the slots move. After a disconnection that no new subscription follows (a master that
//!   died: the client keeps reconnecting to its address), a new connection replaces it.
//! - Gaps: a change published while a node is not subscribed never reaches it. After every
//!   subscription that may follow a gap, the node reads the current entry of every user its
//!   hub has a topic for and publishes it, so each watcher ends with the latest entry.
//!
//! - Overflow: on a cluster, pushes wait in a bounded channel ([`PUSH_CAPACITY`]); one that
//!   does not fit is dropped and counted as a gap, caught up as above.
//! - Health: the feed notes since when it has been down (not subscribed, or subscribed but
//!   not yet caught up); `/ready` is 503 once that is longer than [`DOWN_GRACE`], and
//!   until the first subscription is in place.
//! - Retention: Redis forgets an Offline record by key expiry, which publishes nothing.
//!   The feed keeps a schedule of the watched users it last saw Offline, due at
//!   `lastOnline + presence.offline_retention` (Redis time), fed by the messages it
//!   delivers and by the first reads of streams ([`super::RedisBackend::watching`]). Every
//!   [`FORGET_CHECK_EVERY`] it reads the due users still watched, and publishes those whose
//!   record is gone as never seen, as the memory backend does when it drops a user.
//!
//! - Friendships: a message that a user's friends gained or lost another user tells the
//!   hub ([`Changes::befriend`]); when some watcher of the other user has the first as its
//!   viewer, the other user's entry and settings are read and published again (as after a
//!   gap), so that each such watcher is sent what it now sees. Those reads are made by a
//!   task of their own, a batch at a time, so that the messages behind never wait for them.
//!
//! A change message is `<user id>|<record>` for a user with the default settings (as
//! every change was before settings existed), `<user id>|s<settings>|<record>` for one with
//! settings of its own; an empty record means the user was forgotten (reads as never
//! seen). A friendship message is
//! `f<user id>|<other user id>|<1 or 0>` (see [`super::scripts`]). One that cannot be read
//! is logged and skipped. The task ends when the backend is dropped.
//!
//! After a gap, friendship messages may have been missed too: before publishing every
//! watched user again, the catch-up reads, for each signed-in viewer of an open watcher,
//! whether it is a friend of each user its watchers watch (`Hub::signed_in_viewers`), and
//! tells the hub.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt as _;
use redis::aio::{AsyncPushSender, SendError};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep, sleep_until, Instant};

use super::keys::{Keys, SHARDS};
use super::privacy::stored_settings;
use super::{record, Inner, RedisBackend, Target};
use crate::presence::model::{PresenceType, PresenceView, UserId};
use crate::presence::privacy::{Settings, Viewer};
use crate::presence::watch::{Changes, Hub};

/// First wait before subscribing again; doubled after each failure up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Users read per `MGET` when catching up after a gap.
const RESYNC_CHUNK: usize = 500;
/// On a cluster, a catch-up waits this long after the last sign of a gap, so that a burst
/// of disconnections and new subscriptions makes one.
const SETTLE: Duration = Duration::from_millis(300);
/// A catch-up that failed is tried again after this.
const RESYNC_RETRY: Duration = Duration::from_secs(1);
/// On a cluster, a disconnection that no new subscription follows within this makes a new
/// connection.
const SILENT_AFTER_DISCONNECT: Duration = Duration::from_secs(3);
/// How often a standalone subscription is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(10);
/// The least time a `PING` of the subscription is given, whatever `redis.timeout` says.
const PING_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);
/// On a cluster, rounds of failed subscriptions after which a new connection is made.
const FAILED_ROUNDS: u32 = 3;
/// On a cluster, pushes (messages, subscriptions, disconnections) waiting to be handled;
/// beyond, they are dropped and the feed catches up.
const PUSH_CAPACITY: usize = 16_384;
/// How long the feed may be down before `/ready` says so: a reconnection is quicker.
pub const DOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the users due to be forgotten by retention are looked at.
const FORGET_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A retention schedule larger than this many entries beyond twice the users watched is
/// pruned of the users no longer watched.
const SCHEDULE_SLACK: usize = 1024;

/// What the feed shares with its backend: its health and its retention schedule.
pub(super) struct Shared {
    health: Mutex<Health>,
    forgetting: Mutex<Forgetting>,
    /// `presence.offline_retention` in ms, if any.
    retention_ms: Option<i64>,
}

/// Whether the feed hears every change now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Never subscribed yet.
    Starting,
    /// Subscribed and caught up.
    Up,
    /// Down since then.
    Down(Instant),
}

impl Shared {
    pub(super) fn new(retention_ms: Option<i64>) -> Self {
        Self {
            health: Mutex::new(Health::Starting),
            forgetting: Mutex::new(Forgetting::default()),
            retention_ms,
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Forgetting> {
        self.forgetting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribed and caught up.
    fn up(&self) {
        *self.health() = Health::Up;
    }

    /// Not hearing every change (from now, unless it was already down).
    fn down(&self) {
        let mut health = self.health();
        if *health == Health::Up {
            *health = Health::Down(Instant::now());
        }
    }

    /// Whether the feed is up, or down for less than [`DOWN_GRACE`].
    pub(super) fn ready(&self) -> bool {
        match *self.health() {
            Health::Starting => false,
            Health::Up => true,
            Health::Down(since) => since.elapsed() < DOWN_GRACE,
        }
    }

    /// `view` is a watched user's latest entry: schedules it to be looked at once its
    /// retention has passed if it is Offline, or forgets about it otherwise.
    pub(super) fn note(&self, view: &PresenceView<'_>) {
        let Some(retention) = self.retention_ms else {
            return;
        };
        let mut schedule = self.schedule();
        match (view.kind, view.last_online) {
            (PresenceType::Offline, Some(last_online)) => {
                schedule.add(view.user_id, last_online.0.saturating_add(retention));
            }
            _ => schedule.remove(view.user_id),
        }
    }
}

/// Users due to be looked at, by Redis time; one entry per user.
#[derive(Default)]
struct Forgetting {
    queue: BTreeSet<(i64, UserId)>,
    due: HashMap<UserId, i64>,
}

impl Forgetting {
    fn add(&mut self, user: UserId, at: i64) {
        if let Some(before) = self.due.insert(user, at) {
            self.queue.remove(&(before, user));
        }
        self.queue.insert((at, user));
    }

    fn remove(&mut self, user: UserId) {
        if let Some(before) = self.due.remove(&user) {
            self.queue.remove(&(before, user));
        }
    }

    /// Takes the users due at `now`.
    fn take_due(&mut self, now: i64) -> Vec<UserId> {
        let mut users = Vec::new();
        while let Some(&(at, user)) = self.queue.first() {
            if at > now {
                break;
            }
            self.queue.pop_first();
            self.due.remove(&user);
            users.push(user);
        }
        users
    }

    fn len(&self) -> usize {
        self.due.len()
    }

    fn retain(&mut self, keep: impl Fn(UserId) -> bool) {
        self.queue.retain(|&(_, user)| keep(user));
        self.due.retain(|&user, _| keep(user));
    }
}

/// The cluster client's push sender: a bounded channel. A push that does not fit is dropped
/// and `overflowed` set (a gap: the listener catches up); never blocks the connection.
struct BoundedPushes {
    sender: mpsc::Sender<PushInfo>,
    overflowed: Arc<AtomicBool>,
}

impl BoundedPushes {
    fn new(capacity: usize) -> (Self, mpsc::Receiver<PushInfo>, Arc<AtomicBool>) {
        let (sender, received) = mpsc::channel(capacity);
        let overflowed = Arc::new(AtomicBool::new(false));
        let pushes = Self {
            sender,
            overflowed: Arc::clone(&overflowed),
        };
        (pushes, received, overflowed)
    }
}

impl AsyncPushSender for BoundedPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match self.sender.try_send(info) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(SendError),
        }
    }
}

/// Follows the changes, and forgets watched users as retention does, until `stop` fires or
/// is dropped (with the backend).
pub(super) async fn run(
    backend: Weak<Inner>,
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    stop: oneshot::Receiver<()>,
) {
    let feed = Feed {
        backend,
        shared,
        hub,
        befriended: Mutex::new(HashSet::new()),
        befriend_wake: Notify::new(),
    };
    tokio::select! {
        _ = stop => {}
        () = feed.follow() => {}
        () = feed.forget_all_due() => {}
        () = feed.refresh_befriended() => {}
    }
}

struct Feed {
    /// Weak, so that the task never keeps the backend alive.
    backend: Weak<Inner>,
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    /// Users whose watchers were told of a friendship change and whose entry is to be
    /// published again (see [`Self::refresh_befriended`]).
    befriended: Mutex<HashSet<UserId>>,
    befriend_wake: Notify,
}

/// A doubling wait between attempts, capped.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(FIRST_RETRY)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(LAST_RETRY);
        wait
    }

    fn reset(&mut self) {
        self.0 = FIRST_RETRY;
    }
}

/// `sleep_until(at)`, or never when `at` is `None`.
async fn wait_for(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Feed {
    fn backend(&self) -> Option<RedisBackend> {
        self.backend.upgrade().map(|inner| RedisBackend { inner })
    }

    async fn follow(&self) {
        let Some(backend) = self.backend() else {
            return;
        };
        let keys = backend.inner.keys.clone();
        let timeout = backend.inner.timeout;
        let single = match &backend.inner.target {
            Target::Single(client) => Some(client.clone()),
            Target::Cluster(_) => None,
        };
        drop(backend);
        match single {
            Some(client) => self.follow_single(client, keys.channel(), timeout).await,
            None => self.follow_cluster(&keys, timeout).await,
        }
    }

    // ---- standalone ----

    async fn follow_single(&self, client: redis::Client, channel: String, timeout: Duration) {
        let mut retry = Backoff::new();
        let mut down = false;
        loop {
            let subscribed = tokio::time::timeout(timeout * 2, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match subscribed {
                Ok(Ok(pubsub)) => {
                    if down {
                        tracing::info!("live presence: subscribed to Redis again");
                    }
                    retry.reset();
                    self.listen_single(pubsub, timeout.max(PING_TIMEOUT_FLOOR))
                        .await;
                    self.shared.down();
                    tracing::warn!(
                        "live presence: the Redis subscription dropped; subscribing again"
                    );
                    down = true;
                }
                Ok(Err(e)) if !down => {
                    tracing::warn!(error = %e, "live presence: cannot subscribe to Redis; retrying");
                    down = true;
                }
                Err(_) if !down => {
                    tracing::warn!("live presence: subscribing to Redis timed out; retrying");
                    down = true;
                }
                _ => {}
            }
            sleep(retry.next()).await;
        }
    }

    /// Hands every message to the hub until the connection drops, or stops answering a
    /// `PING` within `timeout` (a connection that died without a word, which TCP alone
    /// would take many minutes to notice); catches up first.
    async fn listen_single(&self, pubsub: redis::aio::PubSub, timeout: Duration) {
        let (mut sink, mut messages) = pubsub.split();
        let mut resync = Some(Instant::now());
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.deliver(message.get_payload_bytes()).await,
                    None => return,
                },
                () = wait_for(resync) => {
                    if self.resync().await {
                        resync = None;
                        self.shared.up();
                    } else {
                        resync = Some(Instant::now() + RESYNC_RETRY);
                    }
                }
                _ = ping.tick() => {
                    let answered = tokio::time::timeout(timeout, sink.ping::<Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::warn!("live presence: the Redis subscription stopped answering");
                        return;
                    }
                }
            }
        }
    }

    // ---- cluster ----

    async fn follow_cluster(&self, keys: &Keys, timeout: Duration) {
        let mut retry = Backoff::new();
        let mut down = false;
        loop {
            let Some(seeds) = self.backend().and_then(|b| match &b.inner.target {
                Target::Cluster(cluster) => Some(cluster.seeds()),
                Target::Single(_) => None,
            }) else {
                return;
            };
            let (pushes, received, overflowed) = BoundedPushes::new(PUSH_CAPACITY);
            let connected = match pubsub_client(&seeds, timeout, pushes) {
                Ok(client) => tokio::time::timeout(timeout * 4, client.get_async_connection())
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connecting timed out",
                        )))
                    }),
                Err(e) => Err(e),
            };
            match connected {
                Ok(connection) => {
                    let listener = ClusterListener::new(self, keys, connection, &mut down);
                    if listener.run(received, &overflowed).await {
                        retry.reset();
                    }
                }
                Err(e) => {
                    if !down {
                        tracing::warn!(
                            error = %e,
                            "live presence: cannot connect to the Redis Cluster; retrying"
                        );
                        down = true;
                    }
                }
            }
            self.shared.down();
            sleep(retry.next()).await;
        }
    }

    // ---- both ----

    /// Hands one message to the hub; one that cannot be read is logged and skipped.
    async fn deliver(&self, payload: &[u8]) {
        if !self.hub.watched() {
            return;
        }
        let Some(message) = parse(payload) else {
            tracing::warn!(
                message = %String::from_utf8_lossy(payload),
                "live presence: ignoring an unreadable message"
            );
            return;
        };
        let (user, settings, record) = match message {
            Message::Change {
                user,
                settings,
                record,
            } => (user, settings, record),
            Message::Friends {
                user,
                other,
                friends,
            } => {
                if self.hub.befriend(other, user, friends) {
                    self.befriended
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(other);
                    self.befriend_wake.notify_one();
                }
                return;
            }
        };
        let Some(backend) = self.backend() else {
            return;
        };
        let settings = match settings {
            Some(value) => stored_settings(user, Some(value)),
            None => Settings::default(),
        };
        let now = backend.wall_now().await;
        if record.is_empty() {
            let view = PresenceView::never_seen(user);
            self.shared.note(&view);
            self.hub.publish(&view, settings, now);
            return;
        }
        match record::decode(user, record, now.0) {
            Ok(view) => {
                self.shared.note(&view);
                self.hub.publish(&view, settings, now);
            }
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "live presence: ignoring a message");
            }
        }
    }

    /// Publishes the current entry of every watched user, unless a newer change arrived
    /// meanwhile (see `Hub::catch_up`); says whether all were read. Called after every
    /// subscription that may follow a gap: changes from then on arrive, so what the read
    /// finds is either what was missed or older than what arrives.
    async fn resync(&self) -> bool {
        let users = self.hub.watched_users();
        if users.is_empty() {
            return true;
        }
        let Some(backend) = self.backend() else {
            return true;
        };
        if let Err(e) = self.refresh_friendships(&backend).await {
            tracing::warn!(error = %e, "live presence: catching up after a gap failed; retrying");
            return false;
        }
        if let Err(e) = self.catch_up(&backend, &users).await {
            tracing::warn!(error = %e, "live presence: catching up after a gap failed; retrying");
            return false;
        }
        tracing::debug!(users = users.len(), "live presence: caught up after a gap");
        true
    }

    /// Tells the hub, for every signed-in viewer of an open watcher, whether it is a friend
    /// of each user its watchers watch, as Redis now says (one read per viewer and chunk:
    /// after a gap only). Friendship messages arriving meanwhile are newer or the same.
    async fn refresh_friendships(
        &self,
        backend: &RedisBackend,
    ) -> Result<(), crate::presence::PresenceError> {
        for (viewer, watched) in self.hub.signed_in_viewers() {
            for chunk in watched.chunks(RESYNC_CHUNK) {
                backend
                    .visit_seen(Viewer::User(viewer), chunk, |seen| {
                        self.hub.befriend(seen.view.user_id, viewer, seen.friend);
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the entry and settings of each of `users` and publishes it unless a newer
    /// change of it arrived meanwhile (see `Hub::catch_up`).
    async fn catch_up(
        &self,
        backend: &RedisBackend,
        users: &[UserId],
    ) -> Result<(), crate::presence::PresenceError> {
        for chunk in users.chunks(RESYNC_CHUNK) {
            let marks = self.hub.marks(chunk);
            let mut marks = marks.into_iter();
            backend
                .visit_seen(Viewer::Anonymous, chunk, |seen| {
                    self.hub.catch_up(
                        seen.view,
                        seen.settings,
                        seen.now,
                        marks.next().unwrap_or_default(),
                    );
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes again, a batch at a time, the users whose watchers were told of a
    /// friendship change, so that each is sent what it now sees; a batch that cannot be
    /// read is tried again after [`RESYNC_RETRY`]. Returns when the backend is gone.
    async fn refresh_befriended(&self) {
        loop {
            self.befriend_wake.notified().await;
            loop {
                let users: Vec<UserId> = self
                    .befriended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain()
                    .collect();
                if users.is_empty() {
                    break;
                }
                let Some(backend) = self.backend() else {
                    return;
                };
                if let Err(e) = self.catch_up(&backend, &users).await {
                    tracing::debug!(error = %e, "live presence: reading users after a friendship change failed; retrying");
                    self.befriended
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(users);
                    drop(backend);
                    sleep(RESYNC_RETRY).await;
                }
            }
        }
    }

    /// Every [`FORGET_CHECK_EVERY`], publishes the users retention forgot (see
    /// [`Self::forget_due`]); returns when the backend is gone.
    async fn forget_all_due(&self) {
        if self.shared.retention_ms.is_none() {
            return std::future::pending().await;
        }
        let mut ticks = tokio::time::interval(FORGET_CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(backend) = self.backend() else {
                return;
            };
            self.forget_due(&backend).await;
        }
    }

    /// Reads the scheduled users that are due and still watched, and publishes those whose
    /// record is gone as never seen; those still Offline are scheduled again by their
    /// record (Redis may expire a key a little after our estimate of its clock), present
    /// ones are dropped. Users that could not be read are tried again at the next check.
    async fn forget_due(&self, backend: &RedisBackend) {
        let now = backend.feed_now().await;
        let due = self.shared.schedule().take_due(now);
        let watched: HashSet<UserId> = if due.is_empty() {
            HashSet::new()
        } else {
            self.hub.watched_users().into_iter().collect()
        };
        let due: Vec<UserId> = due.into_iter().filter(|u| watched.contains(u)).collect();
        for chunk in due.chunks(RESYNC_CHUNK) {
            let read = backend
                .visit_seen(Viewer::Anonymous, chunk, |seen| {
                    if seen.view.last_online.is_none() {
                        self.hub.publish(seen.view, seen.settings, seen.now);
                    } else {
                        self.shared.note(seen.view);
                    }
                })
                .await;
            if let Err(e) = read {
                tracing::debug!(error = %e, "live presence: reading users due to be forgotten failed");
                let mut schedule = self.shared.schedule();
                for &user in chunk {
                    schedule.add(user, now);
                }
            }
        }
        self.prune_schedule();
    }

    /// Keeps the schedule to about the users watched: past twice their number (plus
    /// [`SCHEDULE_SLACK`]), drops the users no longer watched.
    fn prune_schedule(&self) {
        let bound = self.hub.topic_count().saturating_mul(2) + SCHEDULE_SLACK;
        if self.shared.schedule().len() <= bound {
            return;
        }
        let watched: HashSet<UserId> = self.hub.watched_users().into_iter().collect();
        self.shared
            .schedule()
            .retain(|user| watched.contains(&user));
    }
}

/// One cluster connection's subscription: subscribes every shard's channel, hands every
/// message to the hub, and catches up after each gap (see the module's documentation).
struct ClusterListener<'a> {
    feed: &'a Feed,
    keys: &'a Keys,
    connection: ClusterConnection,
    /// Whether the feed is known to be down (logged once per outage).
    down: &'a mut bool,
    /// Shards whose channel is not subscribed yet.
    pending: Vec<u16>,
    /// Shards whose subscription has been confirmed at least once.
    confirmed: Vec<bool>,
    /// When to subscribe the pending shards.
    subscribe: Option<Instant>,
    retry: Backoff,
    failed_rounds: u32,
    /// When to catch up.
    resync: Option<Instant>,
    /// A disconnection that no new subscription has followed yet.
    silent_since: Option<Instant>,
}

/// What the listener does after handling one event.
enum Next {
    Listen,
    /// Ends, saying whether every channel had been subscribed.
    End(bool),
}

impl<'a> ClusterListener<'a> {
    fn new(
        feed: &'a Feed,
        keys: &'a Keys,
        connection: ClusterConnection,
        down: &'a mut bool,
    ) -> Self {
        Self {
            feed,
            keys,
            connection,
            down,
            pending: (0..SHARDS).collect(),
            confirmed: vec![false; usize::from(SHARDS)],
            subscribe: Some(Instant::now()),
            retry: Backoff::new(),
            failed_rounds: 0,
            resync: None,
            silent_since: None,
        }
    }

    /// Listens until the connection is to be replaced; says whether every channel had been
    /// subscribed.
    async fn run(mut self, mut pushes: mpsc::Receiver<PushInfo>, overflowed: &AtomicBool) -> bool {
        loop {
            let rebuild = self
                .silent_since
                .map(|since| since + SILENT_AFTER_DISCONNECT);
            let next = tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => {
                        if overflowed.swap(false, Ordering::AcqRel) {
                            self.on_overflow();
                        }
                        self.on_push(push).await
                    }
                    None => Next::End(self.pending.is_empty()),
                },
                () = wait_for(self.subscribe) => self.on_subscribe().await,
                () = wait_for(self.resync) => self.on_resync().await,
                () = wait_for(rebuild) => self.on_silence(),
            };
            if let Next::End(subscribed) = next {
                return subscribed;
            }
        }
    }

    async fn on_push(&mut self, push: PushInfo) -> Next {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    self.feed.deliver(payload).await;
                }
            }
            PushKind::SSubscribe => self.on_subscribed(&push),
            PushKind::Disconnection => self.on_disconnection(),
            _ => {}
        }
        Next::Listen
    }

    /// A shard's subscription confirmed: after a reconnection, a gap.
    fn on_subscribed(&mut self, push: &PushInfo) {
        let shard = match push.data.first() {
            Some(Value::BulkString(channel)) => self.keys.shard_of_channel(channel),
            _ => None,
        };
        let Some(shard) = shard else {
            return;
        };
        let seen = &mut self.confirmed[usize::from(shard)];
        if *seen {
            self.silent_since = None;
            self.resync = Some(Instant::now() + SETTLE);
        }
        *seen = true;
    }

    fn on_disconnection(&mut self) {
        if !*self.down {
            tracing::warn!(
                "live presence: a Redis Cluster node's subscription dropped; subscribing again"
            );
            *self.down = true;
        }
        self.feed.shared.down();
        self.silent_since.get_or_insert_with(Instant::now);
        self.resync = Some(Instant::now() + SETTLE);
    }

    /// Pushes were dropped: a gap like any other, whose start is unknown.
    fn on_overflow(&mut self) {
        tracing::warn!(
            capacity = PUSH_CAPACITY,
            "live presence: changes arrived faster than they were handled; catching up"
        );
        self.resync = Some(Instant::now() + SETTLE);
    }

    async fn on_subscribe(&mut self) -> Next {
        let pending = std::mem::take(&mut self.pending);
        self.pending = subscribe_shards(self.keys, &self.connection, pending).await;
        if self.pending.is_empty() {
            self.subscribe = None;
            self.resync = Some(Instant::now());
            return Next::Listen;
        }
        self.failed_rounds += 1;
        if !*self.down {
            tracing::warn!(
                channels = self.pending.len(),
                "live presence: cannot subscribe to some Redis Cluster shards; retrying"
            );
            *self.down = true;
        }
        if self.failed_rounds >= FAILED_ROUNDS {
            return Next::End(false);
        }
        self.subscribe = Some(Instant::now() + self.retry.next());
        Next::Listen
    }

    async fn on_resync(&mut self) -> Next {
        if !self.feed.resync().await {
            self.resync = Some(Instant::now() + RESYNC_RETRY);
            return Next::Listen;
        }
        self.resync = None;
        if self.pending.is_empty() && self.silent_since.is_none() {
            if *self.down {
                tracing::info!("live presence: subscribed to the Redis Cluster again");
                *self.down = false;
            }
            self.feed.shared.up();
        }
        Next::Listen
    }

    fn on_silence(&mut self) -> Next {
        tracing::warn!(
            "live presence: no new subscription after a Redis Cluster disconnection; \
             making a new connection"
        );
        *self.down = true;
        Next::End(self.pending.is_empty())
    }
}

/// A message of the scripts (see the module's documentation).
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// A user's record (empty: forgotten) and settings as stored (`None`: the default).
    Change {
        user: UserId,
        settings: Option<&'a [u8]>,
        record: &'a [u8],
    },
    /// `other` was added to (`friends`) or removed from `user`'s friends.
    Friends {
        user: UserId,
        other: UserId,
        friends: bool,
    },
}

/// A user id in decimal.
fn user_id(text: &[u8]) -> Option<UserId> {
    UserId::new(std::str::from_utf8(text).ok()?.parse().ok()?)
}

/// `<user id>|s<settings>|<record>`, `<user id>|<record>` or `f<user id>|<user id>|<0 or 1>`.
fn parse(payload: &[u8]) -> Option<Message<'_>> {
    if let Some(rest) = payload.strip_prefix(b"f") {
        let mut fields = rest.split(|&b| b == b'|');
        let user = user_id(fields.next()?)?;
        let other = user_id(fields.next()?)?;
        let friends = match fields.next()? {
            b"1" => true,
            b"0" => false,
            _ => return None,
        };
        return fields.next().is_none().then_some(Message::Friends {
            user,
            other,
            friends,
        });
    }
    let bar = payload.iter().position(|&b| b == b'|')?;
    let user = user_id(&payload[..bar])?;
    let rest = &payload[bar + 1..];
    // A record never starts with `s` (see `record`).
    let Some(rest) = rest.strip_prefix(b"s") else {
        return Some(Message::Change {
            user,
            settings: None,
            record: rest,
        });
    };
    let bar = rest.iter().position(|&b| b == b'|')?;
    Some(Message::Change {
        user,
        settings: Some(&rest[..bar]),
        record: &rest[bar + 1..],
    })
}

/// A RESP3 cluster client whose pushes (messages, subscriptions, disconnections) go to
/// `pushes`.
fn pubsub_client(
    seeds: &[String],
    timeout: Duration,
    pushes: BoundedPushes,
) -> redis::RedisResult<ClusterClient> {
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .build()
}

/// Subscribes to the channels of `shards`, all at once (each shard's channel is in a slot
/// of its own); returns those that failed.
async fn subscribe_shards(
    keys: &Keys,
    connection: &ClusterConnection,
    shards: Vec<u16>,
) -> Vec<u16> {
    let calls = shards.iter().map(|&shard| {
        let mut connection = connection.clone();
        let channel = keys.shard_channel(shard);
        async move { connection.ssubscribe(channel).await }
    });
    let results = join_all(calls).await;
    shards
        .into_iter()
        .zip(results)
        .filter_map(|(shard, result)| result.is_err().then_some(shard))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(user: u64, settings: Option<&'a [u8]>, record: &'a [u8]) -> Message<'a> {
        Message::Change {
            user: UserId::new(user).unwrap(),
            settings,
            record,
        }
    }

    #[test]
    fn messages_name_a_user_its_settings_and_its_record() {
        assert_eq!(
            parse(b"42|s1,,17|1|5|10|||||Web|site"),
            Some(change(42, Some(b"1,,17"), b"1|5|10|||||Web|site"))
        );
        assert_eq!(parse(b"42|s|0|5|"), Some(change(42, Some(b""), b"0|5|")));
        assert_eq!(parse(b"7|s2|"), Some(change(7, Some(b"2"), b"")));
        assert_eq!(parse(b"7|s|"), Some(change(7, Some(b""), b"")));
        for bad in [&b""[..], b"42", b"x|1", b"0|1", b"-3|1", b"7|s2"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_of_users_with_the_default_settings_carry_none() {
        assert_eq!(
            parse(b"42|1|5|10|||||Web|site"),
            Some(change(42, None, b"1|5|10|||||Web|site"))
        );
        assert_eq!(parse(b"7|"), Some(change(7, None, b"")));
        assert_eq!(parse(b"7|68"), Some(change(7, None, b"68")));
    }

    #[test]
    fn friendship_messages_name_both_users_and_the_change() {
        let id = |n| UserId::new(n).unwrap();
        assert_eq!(
            parse(b"f12|34|1"),
            Some(Message::Friends {
                user: id(12),
                other: id(34),
                friends: true
            })
        );
        assert_eq!(
            parse(b"f34|12|0"),
            Some(Message::Friends {
                user: id(34),
                other: id(12),
                friends: false
            })
        );
        for bad in [
            &b"f"[..],
            b"f12",
            b"f12|34",
            b"f12|34|2",
            b"f12|34|1|",
            b"f0|34|1",
            b"fx|34|1",
            b"f12|-1|0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_push_that_does_not_fit_is_dropped_and_marks_a_gap() {
        let push = || PushInfo {
            kind: PushKind::SMessage,
            data: vec![],
        };
        let (pushes, mut received, overflowed) = BoundedPushes::new(2);
        assert!(pushes.send(push()).is_ok());
        assert!(pushes.send(push()).is_ok());
        assert!(!overflowed.load(Ordering::Acquire));
        // Full: dropped, never an error (which would stop the client's pushes).
        assert!(pushes.send(push()).is_ok());
        assert!(overflowed.load(Ordering::Acquire));
        assert!(received.try_recv().is_ok());
        assert!(received.try_recv().is_ok());
        assert!(received.try_recv().is_err());
        drop(received);
        assert!(pushes.send(push()).is_err());
    }

    #[test]
    fn the_retention_schedule_keeps_one_entry_per_user() {
        let user = |n| UserId::new(n).unwrap();
        let mut schedule = Forgetting::default();
        schedule.add(user(1), 50);
        schedule.add(user(2), 10);
        schedule.add(user(1), 20);
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.take_due(15), vec![user(2)]);
        schedule.add(user(3), 5);
        schedule.remove(user(3));
        assert_eq!(schedule.take_due(100), vec![user(1)]);
        assert_eq!(schedule.len(), 0);
    }

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(waits[7], LAST_RETRY);
        backoff.reset();
        assert_eq!(backoff.next(), FIRST_RETRY);
    }
}
