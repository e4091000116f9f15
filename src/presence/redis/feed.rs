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
//! A message is `<user id>|<record>`; an empty record means the user was forgotten (reads
//! as never seen). One that cannot be read is logged and skipped. The task ends when the
//! backend is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt as _;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};

use super::keys::{Keys, SHARDS};
use super::{record, Inner, RedisBackend, Target};
use crate::presence::model::{PresenceView, UserId};
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

/// Follows the changes until `stop` fires or is dropped (with the backend).
pub(super) async fn run(backend: Weak<Inner>, hub: Arc<Hub>, stop: oneshot::Receiver<()>) {
    let feed = Feed { backend, hub };
    tokio::select! {
        _ = stop => {}
        () = feed.follow() => {}
    }
}

struct Feed {
    /// Weak, so that the task never keeps the backend alive.
    backend: Weak<Inner>,
    hub: Arc<Hub>,
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
        self.hub.set_live(true);
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
                    resync = (!self.resync().await).then(|| Instant::now() + RESYNC_RETRY);
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
            let (pushes, received) = mpsc::unbounded_channel();
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
                    if self
                        .listen_cluster(keys, connection, received, &mut down)
                        .await
                    {
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
            sleep(retry.next()).await;
        }
    }

    /// Subscribes `connection` to every shard's channel and hands every message to the
    /// hub, until the connection is to be replaced; says whether every channel had been
    /// subscribed.
    async fn listen_cluster(
        &self,
        keys: &Keys,
        connection: ClusterConnection,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        down: &mut bool,
    ) -> bool {
        let mut pending: Vec<u16> = (0..SHARDS).collect();
        let mut confirmed = vec![false; usize::from(SHARDS)];
        let mut subscribe = Some(Instant::now());
        let mut retry = Backoff::new();
        let mut failed_rounds = 0;
        let mut resync: Option<Instant> = None;
        // A disconnection that no new subscription has followed yet.
        let mut silent_since: Option<Instant> = None;
        loop {
            let rebuild = silent_since.map(|since| since + SILENT_AFTER_DISCONNECT);
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return pending.is_empty();
                    };
                    match push.kind {
                        PushKind::SMessage | PushKind::Message => {
                            if let Some(Value::BulkString(payload)) = push.data.get(1) {
                                self.deliver(payload).await;
                            }
                        }
                        PushKind::SSubscribe => {
                            let shard = match push.data.first() {
                                Some(Value::BulkString(channel)) => keys.shard_of_channel(channel),
                                _ => None,
                            };
                            if let Some(shard) = shard {
                                let seen = &mut confirmed[usize::from(shard)];
                                if *seen {
                                    // Subscribed again after a reconnection: a gap.
                                    silent_since = None;
                                    resync = Some(Instant::now() + SETTLE);
                                }
                                *seen = true;
                            }
                        }
                        PushKind::Disconnection => {
                            if !*down {
                                tracing::warn!(
                                    "live presence: a Redis Cluster node's subscription dropped; \
                                     subscribing again"
                                );
                                *down = true;
                            }
                            silent_since.get_or_insert_with(Instant::now);
                            resync = Some(Instant::now() + SETTLE);
                        }
                        _ => {}
                    }
                }
                () = wait_for(subscribe) => {
                    pending = subscribe_shards(keys, &connection, pending).await;
                    if pending.is_empty() {
                        subscribe = None;
                        self.hub.set_live(true);
                        resync = Some(Instant::now());
                    } else {
                        failed_rounds += 1;
                        if !*down {
                            tracing::warn!(
                                channels = pending.len(),
                                "live presence: cannot subscribe to some Redis Cluster shards; \
                                 retrying"
                            );
                            *down = true;
                        }
                        if failed_rounds >= FAILED_ROUNDS {
                            return false;
                        }
                        subscribe = Some(Instant::now() + retry.next());
                    }
                }
                () = wait_for(resync) => {
                    if self.resync().await {
                        resync = None;
                        if *down && pending.is_empty() && silent_since.is_none() {
                            tracing::info!("live presence: subscribed to the Redis Cluster again");
                            *down = false;
                        }
                    } else {
                        resync = Some(Instant::now() + RESYNC_RETRY);
                    }
                }
                () = wait_for(rebuild) => {
                    tracing::warn!(
                        "live presence: no new subscription after a Redis Cluster disconnection; \
                         making a new connection"
                    );
                    *down = true;
                    return pending.is_empty();
                }
            }
        }
    }

    // ---- both ----

    /// Hands one message to the hub; one that cannot be read is logged and skipped.
    async fn deliver(&self, payload: &[u8]) {
        if !self.hub.watched() {
            return;
        }
        let Some((user, record)) = parse(payload) else {
            tracing::warn!(
                message = %String::from_utf8_lossy(payload),
                "live presence: ignoring an unreadable message"
            );
            return;
        };
        if record.is_empty() {
            self.hub.publish(&PresenceView::never_seen(user));
            return;
        }
        let Some(backend) = self.backend() else {
            return;
        };
        let now = backend.feed_now().await;
        match record::decode(user, record, now) {
            Ok(view) => self.hub.publish(&view),
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
        for chunk in users.chunks(RESYNC_CHUNK) {
            let marks = self.hub.marks(chunk);
            let mut marks = marks.into_iter();
            if let Err(e) = backend
                .visit_many(chunk, |view| {
                    self.hub.catch_up(view, marks.next().unwrap_or_default());
                })
                .await
            {
                tracing::warn!(error = %e, "live presence: catching up after a gap failed; retrying");
                return false;
            }
        }
        tracing::debug!(users = users.len(), "live presence: caught up after a gap");
        true
    }
}

/// `<user id>|<record>`.
fn parse(payload: &[u8]) -> Option<(UserId, &[u8])> {
    let bar = payload.iter().position(|&b| b == b'|')?;
    let id: u64 = std::str::from_utf8(&payload[..bar]).ok()?.parse().ok()?;
    Some((UserId::new(id)?, &payload[bar + 1..]))
}

/// A RESP3 cluster client whose pushes (messages, subscriptions, disconnections) go to
/// `pushes`.
fn pubsub_client(
    seeds: &[String],
    timeout: Duration,
    pushes: mpsc::UnboundedSender<PushInfo>,
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

    #[test]
    fn messages_name_a_user_and_a_record() {
        let (user, record) = parse(b"42|1|5|10|||||Web|site").unwrap();
        assert_eq!((user.get(), record), (42, &b"1|5|10|||||Web|site"[..]));
        assert_eq!(parse(b"7|").map(|(u, r)| (u.get(), r)), Some((7, &b""[..])));
        for bad in [&b""[..], b"42", b"x|1", b"0|1", b"-3|1"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
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
