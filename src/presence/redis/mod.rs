//! The Redis backend (standalone or Redis Cluster), the only module that knows Redis.
//!
//! - Keys: one record per user and, per shard, an expiry set and counters, all of a shard
//!   under one hash tag (see [`keys`]); records are short strings (see [`record`]).
//! - Writes: a heartbeat or disconnect is one script call (EVALSHA, loading the script on
//!   `NOSCRIPT`), one round trip, atomic on the shard's node.
//! - Reads: a lookup is one `MGET` of the records and settings (and, for a signed-in
//!   viewer, one `SMISMEMBER` of its friends, sent at the same time); on a cluster the
//!   client splits the `MGET` by slot and sends every node its part at once. Nothing is
//!   written on a read.
//! - Time: Redis's clock for every node, estimated from a `TIME` sample plus this process's
//!   monotonic time since the sample (refreshed by the sweeper every second, and by any
//!   call that finds the sample stale), so no request waits for `TIME`. With a mock
//!   [`Clock`] the backend runs on that clock instead, so that tests drive its time.
//! - Expiry: each sweep reads every shard's due users, then runs one claim script per shard
//!   that has some; the script re-checks each user, so whichever nodes sweep, each expiry is
//!   claimed once. Retention is Redis key expiry on Offline records.
//! - Failure: every call, connecting included, is bounded by `redis.timeout`; past it, or on
//!   any Redis error, the caller gets [`PresenceError::Unavailable`]. A connection is made
//!   on first use and re-made by the client after a failure. On a standalone Redis, each
//!   HTTP worker has a connection of its own, whose task runs on the worker's thread, and
//!   the rest (sweeps, clock samples) share one; a cluster has one connection. On a
//!   cluster, repeated failures also make a whole new cluster connection in the
//!   background, seeded with every node seen so far, which replaces the old one once it is
//!   up: the client's own repair can stay on a dead master's address (see
//!   [`ClusterTarget`]).
//! - Live presence: the scripts publish each change a watcher must see, and every node
//!   subscribes and hands them to its [`Hub`] (see [`feed`]).
//! - Game servers (see [`games`]): a report is one script on the server's record, then one
//!   script per shard of its players, pipelined per Redis node.
//! - Privacy (see [`privacy`]): settings are a key beside each record, read with it by
//!   lookups and published with it by the scripts; friendships are a set per user, changed
//!   by scripts per shard in an order that keeps both sides equal.

mod feed;
mod games;
pub mod keys;
mod privacy;
pub mod record;
pub mod scripts;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use tokio::sync::oneshot;

use self::keys::{shard_of, Keys, SHARDS};
use super::memory::store::SweepReport;
use super::model::{Heartbeat, PresenceType, PresenceView, UserId};
use super::service::{Counts, PresenceError};
use super::time::{duration_millis, Clock};
use super::watch::Hub;
use crate::config::{PresenceSettings, RedisSettings};

/// Due users claimed per shard and script call; a shard with more is claimed again in the
/// same sweep.
const CLAIM_BATCH: usize = 256;
/// Rounds of claims in one sweep, at most (each round up to `CLAIM_BATCH` per shard).
const MAX_CLAIM_ROUNDS: usize = 64;
/// A `TIME` sample older than this is taken again before it is used.
const STALE_SAMPLE: Duration = Duration::from_secs(5);
/// How often the sweeper takes a new `TIME` sample.
pub const CLOCK_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// On a cluster, failures within this window that make a new cluster connection.
const REBUILD_AFTER_FAILURES: u32 = 3;
/// The window in which those failures are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Least time between two new cluster connections.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

/// A sweep that failed part way: what it did before, or beside, the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialSweep {
    /// The expiries of the claims that answered (counted: they happened).
    pub done: SweepReport,
    pub error: PresenceError,
}

/// What one round of claims did.
#[derive(Default)]
struct ClaimRound {
    flipped: usize,
    /// Due users whose record could not be read.
    unreadable: Vec<u64>,
    /// Set when some claims failed or did not answer in time.
    error: Option<PresenceError>,
}

/// The Redis backend: cheap to clone, every clone shares the connections.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The shared connection, once made; on a cluster, replaced by a new one after repeated
    /// failures.
    connection: Mutex<Option<Connection>>,
    /// Held while the first connection is made, so that it is made once.
    connecting: tokio::sync::Mutex<()>,
    /// On a standalone Redis, a connection of its own for each other runtime that calls
    /// (an HTTP worker's), made on first use there, so that its requests and answers do
    /// not hop between threads (see [`RedisBackend::connection`]).
    local: Mutex<Vec<(tokio::runtime::Id, ConnectionManager)>>,
    /// The runtime the connection's background tasks run on: the application's, which
    /// outlives every HTTP worker.
    runtime: tokio::runtime::Handle,
    keys: Keys,
    ttl_ms: i64,
    retention_ms: Option<i64>,
    timeout: Duration,
    time: TimeSource,
    heartbeat: Script,
    claim: Script,
    /// Privacy settings and friendships (see [`privacy`]).
    privacy: privacy::Scripts,
    /// Game servers and their players' sessions (see [`games`]).
    games: games::Settings,
    /// The change feed's health and retention schedule (see [`feed`]).
    feed: Arc<feed::Shared>,
    /// Dropped with the backend, which ends the subscription to changes (see [`feed`]).
    _feed: oneshot::Sender<()>,
}

enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterTarget>),
}

/// A cluster, and what is needed to connect to it again from scratch.
///
/// redis-rs's cluster client refreshes its slot map only on some errors of requests still
/// awaited (a request dropped by our timeout triggers nothing), and repairs a node's
/// connection by reconnecting to the same address for as long as its own, possibly stale,
/// slot map lists it. After a master is killed, it can keep routing that master's slots
/// to the dead address until the node restarts. A new connection starts with a fresh slot
/// map from a live node.
struct ClusterTarget {
    /// `redis.url`: one node of the cluster, and the scheme and credentials for all.
    url: String,
    /// Every node's `host:port` seen in `CLUSTER NODES`, to seed a new connection when
    /// the node of `url` is the one that died.
    known: Mutex<Vec<String>>,
    failures: Mutex<Failures>,
    /// A new connection is being made.
    rebuilding: AtomicBool,
}

#[derive(Default)]
struct Failures {
    /// Start of the window and failures in it.
    window: Option<(Instant, u32)>,
    last_rebuild: Option<Instant>,
}

/// A cluster client on `seeds`: each request and its retries fail well within `timeout`,
/// so that its errors (which make the client refresh its slot map) are seen.
fn cluster_client(seeds: &[String], timeout: Duration) -> redis::RedisResult<ClusterClient> {
    let attempt = (timeout / 2).max(Duration::from_millis(1));
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(attempt)
        .response_timeout(attempt)
        .overall_response_timeout(Some(timeout))
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .build()
}

/// A connection to a server or to a cluster; clones share it.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Inner {
    /// The connection, if made.
    fn current(&self) -> Option<Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ClusterTarget {
    /// The nodes to connect to: `redis.url` first, then every other node seen.
    fn seeds(&self) -> Vec<String> {
        let mut seeds = vec![self.url.clone()];
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        seeds.extend(known.iter().map(|addr| with_address(&self.url, addr)));
        seeds.dedup();
        seeds
    }
}

/// Makes a new cluster connection from every known node and, once it is up, puts it in
/// place of the old one (whose requests in flight finish on it).
async fn rebuild(inner: Arc<Inner>) {
    let Target::Cluster(cluster) = &inner.target else {
        return;
    };
    let made = match cluster_client(&cluster.seeds(), inner.timeout) {
        Ok(client) => {
            // Connecting tries every seed at once, each bounded by the connection timeout;
            // the slot map is then read from one that answered.
            tokio::time::timeout(inner.timeout * 4, client.get_async_connection()).await
        }
        Err(e) => Ok(Err(e)),
    };
    match made {
        Ok(Ok(connection)) => {
            tracing::info!("made a new Redis Cluster connection after repeated failures");
            *inner
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Connection::Cluster(connection));
            learn_nodes(inner.clone()).await;
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "a new Redis Cluster connection failed"),
        Err(_) => tracing::warn!("a new Redis Cluster connection timed out"),
    }
    cluster.rebuilding.store(false, Ordering::Release);
}

/// Records the address of every node of the cluster, from `CLUSTER NODES`.
async fn learn_nodes(inner: Arc<Inner>) {
    let (Target::Cluster(cluster), Some(mut connection)) = (&inner.target, inner.current()) else {
        return;
    };
    let nodes = tokio::time::timeout(
        inner.timeout,
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut connection),
    )
    .await;
    let Ok(Ok(nodes)) = nodes else {
        return;
    };
    let mut addrs: Vec<String> = nodes.lines().filter_map(node_address).collect();
    addrs.sort();
    addrs.dedup();
    if !addrs.is_empty() {
        *cluster.known.lock().unwrap_or_else(PoisonError::into_inner) = addrs;
    }
}

/// The `host:port` of a `CLUSTER NODES` line (`<id> <ip:port@cport[,hostname]> ...`).
fn node_address(line: &str) -> Option<String> {
    let field = line.split_whitespace().nth(1)?;
    let addr = field.split(['@', ',']).next()?;
    (!addr.is_empty() && !addr.starts_with(':')).then(|| addr.to_owned())
}

/// `url` with its `host:port` replaced by `addr` (scheme, credentials and the rest kept).
fn with_address(url: &str, addr: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rfind('@').map_or(0, |at| at + 1);
    format!(
        "{}{}{}{}",
        &url[..start],
        &authority[..host],
        addr,
        &rest[end..]
    )
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where "now" comes from.
enum TimeSource {
    /// The application's mock clock (tests).
    Mock(Clock),
    /// Redis's clock, estimated between `TIME` samples.
    Redis(Sampled),
}

/// Redis time = this process's monotonic milliseconds since `origin` + `offset_ms`.
struct Sampled {
    origin: Instant,
    offset_ms: AtomicI64,
    /// Monotonic milliseconds of the last sample; negative before the first.
    sampled_at: AtomicI64,
}

impl Sampled {
    fn mono_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The estimate, if the last sample is fresh enough.
    fn estimate(&self) -> Option<i64> {
        let at = self.sampled_at.load(Ordering::Acquire);
        let mono = self.mono_ms();
        (at >= 0 && mono - at < duration_millis(STALE_SAMPLE) as i64)
            .then(|| mono + self.offset_ms.load(Ordering::Acquire))
    }

    /// The estimate from the last sample however old, if there was one.
    fn latest(&self) -> Option<i64> {
        (self.sampled_at.load(Ordering::Acquire) >= 0)
            .then(|| self.mono_ms() + self.offset_ms.load(Ordering::Acquire))
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("cluster", &matches!(self.inner.target, Target::Cluster(_)))
            .field("keys", &self.inner.keys)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for `redis` (nothing is connected until first use: a Redis that is down
    /// at start-up makes requests 503 until it is up). Must be called inside a Tokio
    /// runtime, which then runs the connection's background tasks. With a mock `clock`,
    /// times come from it rather than from Redis. Subscribes at once, in the background, to
    /// the changes every node publishes, and hands them to `hub` until the backend is
    /// dropped.
    pub fn new(
        redis: &RedisSettings,
        presence: &PresenceSettings,
        clock: &Clock,
        hub: Arc<Hub>,
    ) -> anyhow::Result<Self> {
        let target = if redis.cluster {
            cluster_client(std::slice::from_ref(&redis.url), redis.timeout)
                .map_err(|e| anyhow::anyhow!("redis.url {}: {e}", redact(&redis.url)))?;
            Target::Cluster(Box::new(ClusterTarget {
                url: redis.url.clone(),
                known: Mutex::new(Vec::new()),
                failures: Mutex::new(Failures::default()),
                rebuilding: AtomicBool::new(false),
            }))
        } else {
            let client = redis::Client::open(redis.url.as_str())
                .map_err(|e| anyhow::anyhow!("redis.url {}: {e}", redact(&redis.url)))?;
            Target::Single(client)
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("the Redis backend needs a Tokio runtime"))?;
        let time = if clock.is_mock() {
            TimeSource::Mock(clock.clone())
        } else {
            TimeSource::Redis(Sampled {
                origin: Instant::now(),
                offset_ms: AtomicI64::new(0),
                sampled_at: AtomicI64::new(-1),
            })
        };
        let millis = |d: Duration| i64::try_from(duration_millis(d)).unwrap_or(i64::MAX);
        let (feed_stop, feed_stopped) = oneshot::channel();
        let retention_ms = presence.offline_retention.map(millis);
        let shared = Arc::new(feed::Shared::new(retention_ms));
        let inner = Arc::new(Inner {
            target,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            local: Mutex::new(Vec::new()),
            runtime,
            keys: Keys::new(&redis.key_prefix),
            ttl_ms: millis(presence.heartbeat_ttl),
            retention_ms,
            timeout: redis.timeout,
            time,
            heartbeat: Script::new(&scripts::heartbeat()),
            claim: Script::new(&scripts::claim()),
            privacy: privacy::Scripts::new(redis.timeout),
            games: games::Settings::new(presence),
            feed: Arc::clone(&shared),
            _feed: feed_stop,
        });
        inner
            .runtime
            .spawn(feed::run(Arc::downgrade(&inner), shared, hub, feed_stopped));
        Ok(Self { inner })
    }

    /// The command and channel the scripts publish a change of a user of `shard` with.
    fn publish_to(&self, shard: u16) -> (&'static str, String) {
        match &self.inner.target {
            Target::Single(_) => ("PUBLISH", self.inner.keys.channel()),
            Target::Cluster(_) => ("SPUBLISH", self.inner.keys.shard_channel(shard)),
        }
    }

    /// Redis's time now for reading a published record: the estimate from the last sample
    /// however old (this process's monotonic clock keeps it close), else a new sample, else
    /// this machine's clock.
    async fn feed_now(&self) -> i64 {
        let sampled = match &self.inner.time {
            TimeSource::Mock(clock) => return clock.wall().0,
            TimeSource::Redis(sampled) => sampled,
        };
        if let Some(now) = sampled.latest() {
            return now;
        }
        let _ = self.refresh_clock().await;
        sampled.latest().unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        })
    }

    /// Runs `work` with a connection, the whole bounded by `redis.timeout`.
    async fn bounded<T, F, Fut>(&self, what: &'static str, work: F) -> Result<T, PresenceError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let attempt = async {
            let connection = self.connection().await?;
            work(connection).await
        };
        self.bounded_by(what, attempt).await
    }

    /// `work` bounded by `redis.timeout`, its errors and its lateness as
    /// [`PresenceError`]; on a cluster, repeated failures make a new connection.
    async fn bounded_by<T>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, PresenceError> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                tracing::debug!(operation = what, error = %e, "redis call failed");
            }
            Err(_) => {
                tracing::debug!(operation = what, ?timeout, "redis call timed out");
            }
        }
        self.failed();
        Err(PresenceError::Unavailable)
    }

    /// The connection for a call from the current runtime. On a standalone Redis, a call
    /// from a runtime other than the application's (an HTTP worker's) gets that runtime's
    /// own connection, whose background task runs on it: a request's command and answer
    /// then stay on the worker's thread, instead of waking the application's thread twice
    /// (about a third of a heartbeat's CPU time on Redis, see BENCHMARKS.md). Everything
    /// else, and every call on a cluster, shares one connection, made on first use on the
    /// application's runtime.
    async fn connection(&self) -> Result<Connection, redis::RedisError> {
        let inner = &self.inner;
        if let Target::Single(client) = &inner.target {
            if let Ok(here) = tokio::runtime::Handle::try_current() {
                let id = here.id();
                if id != inner.runtime.id() {
                    return self
                        .local_connection(client, id)
                        .await
                        .map(Connection::Single);
                }
            }
        }
        if let Some(connection) = inner.current() {
            return Ok(connection);
        }
        let _connecting = inner.connecting.lock().await;
        if let Some(connection) = inner.current() {
            return Ok(connection);
        }
        let connect: std::pin::Pin<
            Box<dyn Future<Output = redis::RedisResult<Connection>> + Send>,
        > = match &inner.target {
            Target::Single(client) => {
                let (client, config) = (client.clone(), self.single_config());
                Box::pin(async move {
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map(Connection::Single)
                })
            }
            Target::Cluster(cluster) => {
                let client = cluster_client(&cluster.seeds(), inner.timeout)?;
                Box::pin(
                    async move { client.get_async_connection().await.map(Connection::Cluster) },
                )
            }
        };
        let connection = match inner.runtime.spawn(connect).await {
            Ok(result) => result?,
            Err(e) => return Err(redis::RedisError::from(std::io::Error::other(e))),
        };
        *inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        if let Target::Cluster(_) = &inner.target {
            inner.runtime.spawn(learn_nodes(self.inner.clone()));
        }
        Ok(connection)
    }

    /// The connection of runtime `id` to a standalone Redis, made on first use on that
    /// runtime (the current one). It reconnects by itself after a failure, as the shared
    /// one does; and, as for the shared one, it is made by a task of its own, so that an
    /// attempt that outlives the caller's `redis.timeout` still ends in a connection.
    async fn local_connection(
        &self,
        client: &redis::Client,
        id: tokio::runtime::Id,
    ) -> Result<ConnectionManager, redis::RedisError> {
        fn find(inner: &Inner, id: tokio::runtime::Id) -> Option<ConnectionManager> {
            inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|(runtime, _)| *runtime == id)
                .map(|(_, connection)| connection.clone())
        }
        if let Some(connection) = find(&self.inner, id) {
            return Ok(connection);
        }
        let (inner, client, config) = (self.inner.clone(), client.clone(), self.single_config());
        let made = tokio::spawn(async move {
            let _connecting = inner.connecting.lock().await;
            if let Some(connection) = find(&inner, id) {
                return Ok(connection);
            }
            let connection = client.get_connection_manager_with_config(config).await?;
            inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((id, connection.clone()));
            Ok(connection)
        });
        match made.await {
            Ok(result) => result,
            Err(e) => Err(redis::RedisError::from(std::io::Error::other(e))),
        }
    }

    /// How a connection to a standalone Redis connects and reconnects.
    fn single_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    }

    /// Counts a failed call; on a cluster, after [`REBUILD_AFTER_FAILURES`] in
    /// [`FAILURE_WINDOW`], starts making a new connection in the background (at most one
    /// at a time, and one per [`REBUILD_EVERY`]).
    fn failed(&self) {
        let Target::Cluster(cluster) = &self.inner.target else {
            return;
        };
        let now = Instant::now();
        {
            let mut failures = cluster
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = match failures.window {
                Some((since, count)) if now.duration_since(since) < FAILURE_WINDOW => count + 1,
                _ => 1,
            };
            let since = match failures.window {
                Some((since, _)) if count > 1 => since,
                _ => now,
            };
            failures.window = Some((since, count));
            let recent = failures
                .last_rebuild
                .is_some_and(|at| now.duration_since(at) < REBUILD_EVERY);
            if count < REBUILD_AFTER_FAILURES || recent {
                return;
            }
            if cluster.rebuilding.swap(true, Ordering::AcqRel) {
                return;
            }
            failures.window = None;
            failures.last_rebuild = Some(now);
        }
        self.inner.runtime.spawn(rebuild(self.inner.clone()));
    }

    /// Redis's time now, in milliseconds since the Unix epoch.
    async fn now(&self, connection: &mut Connection) -> Result<i64, redis::RedisError> {
        match &self.inner.time {
            TimeSource::Mock(clock) => Ok(clock.wall().0),
            TimeSource::Redis(sampled) => match sampled.estimate() {
                Some(now) => Ok(now),
                None => sample(sampled, connection).await,
            },
        }
    }

    /// Takes a new `TIME` sample (nothing with a mock clock).
    pub async fn refresh_clock(&self) -> Result<(), PresenceError> {
        let TimeSource::Redis(sampled) = &self.inner.time else {
            return Ok(());
        };
        self.bounded("TIME", |mut c| async move {
            sample(sampled, &mut c).await.map(|_| ())
        })
        .await
    }

    /// Records one heartbeat or disconnect of `user`: one script call.
    pub async fn heartbeat(
        &self,
        user: UserId,
        heartbeat: &Heartbeat<'_>,
    ) -> Result<(), PresenceError> {
        let inner = &self.inner;
        let shard = shard_of(user);
        let (publish, channel) = self.publish_to(shard);
        let (publish, channel) = (publish, channel.as_str());
        self.bounded("heartbeat", |mut c| async move {
            let now = self.now(&mut c).await?;
            // EVALSHA <sha> 4 <record> <expiry> <counters> <settings> <id> <now> <kind>
            // <record text> <deadline> <retention> <publish> <channel>, built in place.
            let mut call = Cmd::with_capacity(16, 256);
            call.arg("EVALSHA").arg(inner.heartbeat.get_hash()).arg(4);
            let mut key = Vec::with_capacity(64);
            inner.keys.push_user(user, &mut key);
            call.arg(key.as_slice());
            key.clear();
            inner.keys.push_expiry(shard, &mut key);
            call.arg(key.as_slice());
            key.clear();
            inner.keys.push_counters(shard, &mut key);
            call.arg(key.as_slice());
            key.clear();
            inner.keys.push_settings(user, &mut key);
            call.arg(key.as_slice()).arg(user.get()).arg(now);
            match heartbeat {
                Heartbeat::Disconnect => {
                    call.arg("d")
                        .arg("")
                        .arg(0)
                        .arg(inner.retention_ms.unwrap_or(-1));
                }
                Heartbeat::Present { location, session } => {
                    let deadline = now.saturating_add(inner.ttl_ms);
                    key.clear();
                    record::encode_present(session, location.as_str(), now, deadline, &mut key);
                    call.arg("p").arg(key.as_slice()).arg(deadline).arg(-1);
                }
            }
            call.arg(publish).arg(channel);
            evalsha(&inner.heartbeat, &call, &mut c).await.map(|_| ())
        })
        .await
    }

    /// `view` is the entry a stream was just given for a user it watches: if it is
    /// Offline and a retention is set, the user is scheduled to be read again once that
    /// retention has passed, and sent to its watchers as never seen if Redis has forgotten
    /// it by then (see [`feed`]). No Redis call.
    pub fn watching(&self, view: &PresenceView<'_>) {
        self.inner.feed.note(view);
    }

    /// Whether this node hears every change other nodes make: its subscription is in
    /// place and caught up, or has been down for less than [`feed::DOWN_GRACE`].
    pub fn feed_ready(&self) -> bool {
        self.inner.feed.ready()
    }

    /// Calls `visit` with the presence of each id, in order, from one `MGET`.
    pub async fn visit_many(
        &self,
        ids: &[UserId],
        mut visit: impl FnMut(&PresenceView<'_>),
    ) -> Result<(), PresenceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let (now, records) = self
            .bounded("lookup", |mut c| async move {
                let now = self.now(&mut c).await?;
                let mut mget = redis::cmd("MGET");
                for &id in ids {
                    mget.arg(inner.keys.user(id));
                }
                let records: Vec<Option<Vec<u8>>> = mget.query_async(&mut c).await?;
                Ok((now, records))
            })
            .await?;
        for (&id, found) in ids.iter().zip(records.iter()) {
            let view = match found {
                None => PresenceView::never_seen(id),
                Some(bytes) => record::decode(id, bytes, now).unwrap_or_else(|e| {
                    tracing::warn!(user = %id, error = %e, "ignoring a presence record");
                    PresenceView::never_seen(id)
                }),
            };
            visit(&view);
        }
        Ok(())
    }

    /// Claims the users whose deadline has passed, in every shard: their expiries are
    /// counted here only if this call flipped them (another node may claim some first).
    ///
    /// Each claim's count comes back from its script; when some claims fail or outlive
    /// `redis.timeout`, the others still count, and the error carries what was done.
    pub async fn sweep(&self) -> Result<SweepReport, PartialSweep> {
        let mut report = SweepReport::default();
        let failed = |report: SweepReport, error| PartialSweep {
            done: report,
            error,
        };
        let connection = self
            .bounded("connect", |c| async move { Ok(c) })
            .await
            .map_err(|e| failed(report, e))?;
        let now = self
            .bounded("TIME", |mut c| async move { self.now(&mut c).await })
            .await
            .map_err(|e| failed(report, e))?;
        self.bounded_by("sweep", self.forget_game_servers(&connection, now))
            .await
            .map_err(|e| failed(report, e))?;
        let mut shards: Vec<u16> = (0..SHARDS).collect();
        for _ in 0..MAX_CLAIM_ROUNDS {
            let due = self
                .due_users(&connection, &shards, now)
                .await
                .map_err(|e| failed(report, e))?;
            let round = self.claim_due(&connection, &shards, &due, now).await;
            report.expired += round.flipped;
            self.log_unreadable(&round.unreadable);
            if let Some(error) = round.error {
                return Err(failed(report, error));
            }
            shards = shards
                .iter()
                .zip(&due)
                .filter(|(_, users)| users.len() >= CLAIM_BATCH)
                .map(|(&shard, _)| shard)
                .collect();
            if shards.is_empty() {
                break;
            }
        }
        Ok(report)
    }

    /// The due users of each of `shards` (up to [`CLAIM_BATCH`] each), all reads in flight
    /// at once.
    async fn due_users(
        &self,
        connection: &Connection,
        shards: &[u16],
        now: i64,
    ) -> Result<Vec<Vec<u64>>, PresenceError> {
        let inner = &self.inner;
        self.bounded_by("sweep", async {
            let reads = shards.iter().map(|&shard| {
                let mut c = connection.clone();
                let mut read = redis::cmd("ZRANGEBYSCORE");
                read.arg(inner.keys.expiry(shard))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(CLAIM_BATCH);
                async move { read.query_async::<Vec<u64>>(&mut c).await }
            });
            join_all(reads)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    /// The claim script call for `users`, due in `shard`.
    fn claim_call(&self, shard: u16, users: &[u64], now: i64) -> redis::ScriptInvocation<'_> {
        let inner = &self.inner;
        let (publish, channel) = self.publish_to(shard);
        let mut call = inner.claim.key(inner.keys.expiry(shard));
        call.key(inner.keys.counters(shard))
            .arg(now)
            .arg(inner.retention_ms.unwrap_or(-1))
            .arg(publish)
            .arg(channel);
        let ids: Vec<UserId> = users.iter().filter_map(|&user| UserId::new(user)).collect();
        for &id in &ids {
            call.key(inner.keys.user(id)).arg(id.get());
        }
        for &id in &ids {
            call.key(inner.keys.settings(id));
        }
        call
    }

    /// Runs one claim per shard of `shards` with due users, all in flight at once, each
    /// bounded by `redis.timeout`; sums what those that answered flipped.
    async fn claim_due(
        &self,
        connection: &Connection,
        shards: &[u16],
        due: &[Vec<u64>],
        now: i64,
    ) -> ClaimRound {
        let claims: Vec<_> = shards
            .iter()
            .zip(due)
            .filter(|(_, users)| !users.is_empty())
            .map(|(&shard, users)| self.claim_call(shard, users, now))
            .collect();
        let timeout = self.inner.timeout;
        let calls = claims.iter().map(|call| {
            let mut c = connection.clone();
            async move {
                match tokio::time::timeout(timeout, call.invoke_async::<(i64, Vec<u64>)>(&mut c))
                    .await
                {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
        });
        let mut round = ClaimRound::default();
        let mut failures = 0;
        let mut first_failure = None;
        for result in join_all(calls).await {
            match result {
                Ok((flipped, unreadable)) => {
                    round.flipped += usize::try_from(flipped).unwrap_or(0);
                    round.unreadable.extend(unreadable);
                }
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_failure {
            tracing::debug!(failures, error = %e, "redis claims failed");
            self.failed();
            round.error = Some(PresenceError::Unavailable);
        }
        round
    }

    /// Says which due users a claim could not read (looked at again later, see
    /// [`scripts::UNREADABLE_RETRY`]).
    fn log_unreadable(&self, users: &[u64]) {
        for user in users {
            tracing::warn!(
                user,
                retry_in = ?scripts::UNREADABLE_RETRY,
                "sweep: skipping a presence record this version cannot read"
            );
        }
    }

    /// Users holding a session, by type, summed over every shard's counters (as of the last
    /// claims), and the users tracked: the records counted the same way without a
    /// retention; with one (Redis forgets records by itself, uncounted), the keys of the
    /// database(s), an upper bound (see the README).
    pub async fn counts(&self) -> Result<Counts, PresenceError> {
        let inner = &self.inner;
        self.bounded("counts", |c| async move {
            let reads = (0..SHARDS).map(|shard| {
                let mut c = c.clone();
                let mut read = redis::cmd("HMGET");
                read.arg(inner.keys.counters(shard))
                    .arg(1)
                    .arg(2)
                    .arg(3)
                    .arg("t");
                async move { read.query_async::<Vec<Option<i64>>>(&mut c).await }
            });
            let mut sums = [0i64; 4];
            for counters in join_all(reads).await {
                for (sum, n) in sums.iter_mut().zip(counters?) {
                    *sum += n.unwrap_or(0);
                }
            }
            let game_servers = self.live_game_servers(&mut c.clone()).await?;
            let tracked = match inner.retention_ms {
                None => sums[3],
                Some(_) => {
                    let mut c = c.clone();
                    redis::cmd("DBSIZE").query_async(&mut c).await?
                }
            };
            Ok(Counts {
                sessions: [
                    (PresenceType::Online, sums[0]),
                    (PresenceType::InGame, sums[1]),
                    (PresenceType::InStudio, sums[2]),
                ],
                tracked,
                game_servers,
            })
        })
        .await
    }

    /// Whether Redis answers `PING` within the timeout: the server, or on a cluster every
    /// master (a replica down does not stop requests from being served).
    pub async fn ping(&self) -> Result<(), PresenceError> {
        self.bounded("PING", |c| async move {
            match c {
                Connection::Cluster(mut c) => {
                    let routing = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    c.route_command(redis::cmd("PING"), routing)
                        .await
                        .map(|_| ())
                }
                mut c => redis::cmd("PING")
                    .query_async::<Value>(&mut c)
                    .await
                    .map(|_| ()),
            }
        })
        .await
    }
}

/// Runs `call`, an `EVALSHA` of `script` built by the caller; on `NOSCRIPT` (a Redis that
/// restarted, or a new one), loads the script and runs `call` once more, as
/// [`redis::ScriptInvocation`] does, without its copies of every key and argument.
async fn evalsha(
    script: &Script,
    call: &Cmd,
    connection: &mut Connection,
) -> Result<Value, redis::RedisError> {
    match call.query_async::<Value>(connection).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            call.query_async(connection).await
        }
        answer => answer,
    }
}

/// Takes a `TIME` sample: Redis's time is taken to be that of the middle of the round trip.
async fn sample(sampled: &Sampled, connection: &mut Connection) -> Result<i64, redis::RedisError> {
    let before = sampled.mono_ms();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(connection).await?;
    let after = sampled.mono_ms();
    let redis_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
    let middle = before + (after - before) / 2;
    sampled
        .offset_ms
        .store(redis_ms - middle, Ordering::Release);
    sampled.sampled_at.store(middle, Ordering::Release);
    Ok(redis_ms + (after - middle))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown_in_messages() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn seeds_keep_the_scheme_and_credentials_of_the_url() {
        assert_eq!(
            with_address("rediss://user:pw@a:1/0", "10.0.0.2:7002"),
            "rediss://user:pw@10.0.0.2:7002/0"
        );
        assert_eq!(with_address("redis://a:1", "b:2"), "redis://b:2");
    }

    #[test]
    fn node_addresses_are_read_from_cluster_nodes() {
        let line = "07c3 127.0.0.1:30004@31004,host replica e7d1 0 1426238317239 4 connected";
        assert_eq!(node_address(line).as_deref(), Some("127.0.0.1:30004"));
        assert_eq!(
            node_address("07c3 :0@0 master,noaddr - 0 0 0 disconnected"),
            None
        );
    }
}
