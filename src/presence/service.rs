//! The one interface the API calls: heartbeats, lookups, counts, readiness and sweeps, on
//! whichever backend `store.backend` chose. The API knows nothing of which one answers.
//!
//! An enum rather than a trait object: the memory backend's calls stay plain synchronous
//! calls inside an `async fn` (no boxing, no allocation per request), and a match on two
//! variants costs nothing next to a request.

use std::fmt;
use std::sync::Arc;

use super::memory::store::{GameLimits, Store, SweepReport};
use uuid::Uuid;

use super::model::{Heartbeat, PresenceType, PresenceView, UserId};
use super::privacy::{self, CheckedPatch, FriendList, FriendPair, FriendshipChanges, Seen, Viewer};
use super::redis::RedisBackend;
use super::sessions::GamePlace;
use super::time::Clock;
use super::time::WallMillis;
use super::watch::{Encoder, Hub, Limits};
use crate::config::{Backend, Settings};

/// Why a presence call could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The backend could not be reached, or did not answer within `redis.timeout`. Nothing
    /// was applied (a heartbeat is atomic), or all of it was and the answer was lost.
    #[error("the presence backend is unavailable")]
    Unavailable,
}

/// Why a game server's report, or its players' changes, were refused. Nothing was applied,
/// except for `Unavailable` on Redis, where a report may have been applied in part and
/// repeating it converges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GameServerError {
    #[error("the presence backend is unavailable")]
    Unavailable,
    /// Players changed on a server that is not live.
    #[error("unknown game server")]
    Unknown,
    /// A new server beyond `presence.max_game_servers`.
    #[error("as many game servers are live as allowed")]
    Full,
    /// The server would hold more than `api.max_players_per_server` players.
    #[error("too many players")]
    TooManyPlayers,
}

impl From<PresenceError> for GameServerError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::Unavailable => Self::Unavailable,
        }
    }
}

/// What `/metrics` reports about presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Users holding a session of each present type, as of the last sweep.
    pub sessions: [(PresenceType, i64); 3],
    /// Users held, present or Offline: exact on memory; on Redis, the keys of the database
    /// (see the README).
    pub tracked: i64,
    /// Live game servers, as of the last sweep.
    pub game_servers: i64,
}

impl Counts {
    /// The counts of a memory store.
    pub fn of_store(store: &Store) -> Self {
        Self {
            sessions: store.sessions_by_type(),
            tracked: i64::try_from(store.len()).unwrap_or(i64::MAX),
            game_servers: i64::try_from(store.game_servers()).unwrap_or(i64::MAX),
        }
    }
}

/// Presence, on one backend. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    clock: Clock,
    backend: Engine,
    hub: Arc<Hub>,
}

#[derive(Clone)]
enum Engine {
    Memory(Arc<Store>),
    Redis(RedisBackend),
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Engine::Memory(store) => f
                .debug_struct("Presence")
                .field("memory_users", &store.len())
                .finish(),
            Engine::Redis(redis) => f.debug_struct("Presence").field("redis", redis).finish(),
        }
    }
}

impl Presence {
    /// The backend `settings.store.backend` names, on `clock`, with live streams writing
    /// entries with `encode` (the API's own writer). The memory store starts empty
    /// (snapshots are loaded by the caller, see [`Self::memory_store`]); the Redis backend
    /// connects on first use. Must be called inside a Tokio runtime.
    pub fn from_settings(
        settings: &Settings,
        clock: Clock,
        encode: Encoder,
    ) -> anyhow::Result<Self> {
        let stream = &settings.stream;
        let hub = Hub::new(
            encode,
            Limits {
                connections: stream.max_connections,
                per_address: stream.max_connections_per_address,
                per_user: stream.max_connections_per_user,
                resume_window: stream.resume_window,
                resume_users: stream.max_resume_users,
                resume_users_per_address: stream.max_resume_users_per_address,
            },
            settings.privacy.show_last_online,
        );
        match settings.store.backend {
            Backend::Memory => {
                let presence = &settings.presence;
                let store = Store::new(
                    presence.heartbeat_ttl,
                    presence.sweep_interval,
                    presence.offline_retention,
                )
                .with_games(GameLimits {
                    server_ttl: presence.game_server_ttl,
                    sessions_per_user: presence.max_game_sessions,
                    servers: presence.max_game_servers,
                    players_per_server: settings.api.max_players_per_server,
                })
                .with_changes(hub.clone())
                .with_max_friends(settings.privacy.max_friends);
                Ok(Self::memory(Arc::new(store), clock, hub))
            }
            Backend::Redis => {
                let redis =
                    RedisBackend::new(&settings.redis, &settings.presence, &clock, hub.clone())?
                        .with_max_players(settings.api.max_players_per_server)
                        .with_max_friends(settings.privacy.max_friends);
                Ok(Self::redis(redis, clock, hub))
            }
        }
    }

    /// Presence in `store`, on `clock`; `hub` must be the one `store` tells of changes.
    pub fn memory(store: Arc<Store>, clock: Clock, hub: Arc<Hub>) -> Self {
        Self {
            clock,
            backend: Engine::Memory(store),
            hub,
        }
    }

    /// Presence in Redis. `clock` is used for nothing else than what the backend takes from
    /// it (its time, when it is a mock).
    pub fn redis(backend: RedisBackend, clock: Clock, hub: Arc<Hub>) -> Self {
        Self {
            clock,
            backend: Engine::Redis(backend),
            hub,
        }
    }

    /// The watchers of live presence on this node.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The clock this presence runs on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The memory backend's store, for snapshots; `None` on Redis.
    pub fn memory_store(&self) -> Option<&Arc<Store>> {
        match &self.backend {
            Engine::Memory(store) => Some(store),
            Engine::Redis(_) => None,
        }
    }

    /// The Redis backend, for its sweeper; `None` on memory.
    pub fn redis_backend(&self) -> Option<&RedisBackend> {
        match &self.backend {
            Engine::Memory(_) => None,
            Engine::Redis(redis) => Some(redis),
        }
    }

    /// Records one heartbeat (or disconnect) of `user`, now.
    pub async fn heartbeat(
        &self,
        user: UserId,
        heartbeat: Heartbeat<'_>,
    ) -> Result<(), PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.heartbeat(user, heartbeat, self.clock.now());
                Ok(())
            }
            Engine::Redis(redis) => redis.heartbeat(user, &heartbeat).await,
        }
    }

    /// The whole state of game server `game` (CONTRACT section 10): live until now +
    /// `presence.game_server_ttl`, each of `players` (distinct, at most
    /// `api.max_players_per_server`) in it at `place`, everyone of its previous report not
    /// listed gone now.
    pub async fn report_game_server(
        &self,
        game: Uuid,
        place: &GamePlace,
        players: &[UserId],
    ) -> Result<(), GameServerError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.report_game_server(game, place, players, self.clock.now())
            }
            Engine::Redis(redis) => redis.report_game_server(game, place, players).await,
        }
    }

    /// Players who joined or left live game server `game` since its last report, applied
    /// now; the server's deadline stays. `joined` and `left` are distinct and disjoint.
    pub async fn game_server_players(
        &self,
        game: Uuid,
        joined: &[UserId],
        left: &[UserId],
    ) -> Result<(), GameServerError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.game_server_players(game, joined, left, self.clock.now())
            }
            Engine::Redis(redis) => redis.game_server_players(game, joined, left).await,
        }
    }

    /// Game server `game` stopped: every player in it leaves now. Nothing to do for a server
    /// that is not live.
    pub async fn end_game_server(&self, game: Uuid) -> Result<(), GameServerError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.end_game_server(game, self.clock.now());
                Ok(())
            }
            Engine::Redis(redis) => redis.end_game_server(game).await,
        }
    }

    /// Calls `visit` with the presence of each id, in the given order, as of now. Never
    /// creates or changes anything.
    pub async fn visit_many(
        &self,
        ids: &[UserId],
        visit: impl FnMut(&PresenceView<'_>),
    ) -> Result<(), PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.visit_many(ids, self.clock.now().mono, visit);
                Ok(())
            }
            Engine::Redis(redis) => redis.visit_many(ids, visit).await,
        }
    }

    /// The presence of each id, in order, as owned copies.
    pub async fn get_many(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<PresenceView<'static>>, PresenceError> {
        let mut views = Vec::with_capacity(ids.len());
        self.visit_many(ids, |view| views.push(view.clone().into_owned()))
            .await?;
        Ok(views)
    }

    /// Calls `visit` with each id's presence as read for `viewer`, in the given order, as
    /// of one instant: the real entry, the user's settings, and whether the viewer is a
    /// signed-in friend of it, so that the caller decides what the viewer is shown
    /// ([`Seen::sight`]). Never creates or changes anything. On Redis, at most one round
    /// trip per node (the friendship test travels with the read).
    pub async fn visit_seen(
        &self,
        viewer: Viewer,
        ids: &[UserId],
        visit: impl FnMut(&Seen<'_, '_>),
    ) -> Result<(), PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                store.visit_seen(viewer, ids, self.clock.now(), visit);
                Ok(())
            }
            Engine::Redis(redis) => redis.visit_seen(viewer, ids, visit).await,
        }
    }

    /// `user`'s settings, as stored (the caller shows them as of now with
    /// [`privacy::Settings::view`]), and the instant they were read at.
    pub async fn settings(
        &self,
        user: UserId,
    ) -> Result<(privacy::Settings, WallMillis), PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                let now = self.clock.now();
                Ok((store.settings(user, now), now.wall))
            }
            Engine::Redis(redis) => redis.settings(user).await,
        }
    }

    /// Applies `patch` (checked at about now) to `user`'s settings, now, atomically with
    /// the user's `lastOnline` (an invisibility that begins freezes it), and tells every
    /// watcher of the user, on every node, what it now sees. Returns the new settings and
    /// the instant they were applied at.
    pub async fn change_settings(
        &self,
        user: UserId,
        patch: &CheckedPatch,
    ) -> Result<(privacy::Settings, WallMillis), PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                let now = self.clock.now();
                Ok((store.change_settings(user, patch, now), now.wall))
            }
            Engine::Redis(redis) => redis.change_settings(user, patch).await,
        }
    }

    /// Removes, then adds, friendship pairs (CONTRACT section 11); returns the pairs not
    /// added because one side would hold more than `privacy.max_friends`, in the order
    /// given. Every watcher whose sight of a user changed is told.
    pub async fn change_friendships(
        &self,
        changes: &FriendshipChanges,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        match &self.backend {
            Engine::Memory(store) => Ok(store.change_friendships(changes, self.clock.now())),
            Engine::Redis(redis) => redis.change_friendships(changes).await,
        }
    }

    /// Makes `list` the friends of `user` (both sides of every pair change); returns the
    /// pairs skipped as [`Self::change_friendships`] does.
    pub async fn replace_friends(
        &self,
        user: UserId,
        list: &FriendList,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        match &self.backend {
            Engine::Memory(store) => Ok(store.replace_friends(user, list, self.clock.now())),
            Engine::Redis(redis) => redis.replace_friends(user, list).await,
        }
    }

    /// The friends of `user`, ascending.
    pub async fn friends(&self, user: UserId) -> Result<Vec<UserId>, PresenceError> {
        match &self.backend {
            Engine::Memory(store) => Ok(store.friends_of(user)),
            Engine::Redis(redis) => redis.friends_of(user).await,
        }
    }

    /// The one clock's time now (CONTRACT section 7): Redis's on Redis, this process's on
    /// memory. A settings body is checked against it (`invisibleUntil` must be later).
    pub async fn wall_now(&self) -> WallMillis {
        match &self.backend {
            Engine::Memory(_) => self.clock.wall(),
            Engine::Redis(redis) => redis.wall_now().await,
        }
    }

    /// Sends the watchers of every watched user whose invisibility ended by now what they
    /// now see (run after each sweep; reads are exact regardless). Users whose read fails
    /// are noted again, to be tried after the next sweep.
    pub async fn end_invisibility(&self) -> Result<(), PresenceError> {
        let now = self.wall_now().await;
        let due = self.hub.due_ends(now);
        if due.is_empty() {
            return Ok(());
        }
        let marks = self.hub.marks(&due);
        let mut marks = marks.into_iter();
        let hub = &self.hub;
        let read = self
            .visit_seen(Viewer::Anonymous, &due, |seen| {
                hub.catch_up(
                    seen.view,
                    seen.settings,
                    seen.now,
                    marks.next().unwrap_or_default(),
                );
            })
            .await;
        if read.is_err() {
            self.hub.due_again(&due, now);
        }
        read
    }

    /// [`Self::end_invisibility`] on the memory backend, from the sweeper's own thread (no
    /// runtime needed); nothing on Redis.
    pub fn end_invisibility_on_memory(&self) {
        let Engine::Memory(store) = &self.backend else {
            return;
        };
        let now = self.clock.now();
        let due = self.hub.due_ends(now.wall);
        if due.is_empty() {
            return;
        }
        let marks = self.hub.marks(&due);
        let mut marks = marks.into_iter();
        store.visit_seen(Viewer::Anonymous, &due, now, |seen| {
            self.hub.catch_up(
                seen.view,
                seen.settings,
                seen.now,
                marks.next().unwrap_or_default(),
            );
        });
    }

    /// The deployment's counts (this process's, on memory).
    pub async fn counts(&self) -> Result<Counts, PresenceError> {
        match &self.backend {
            Engine::Memory(store) => Ok(Counts::of_store(store)),
            Engine::Redis(redis) => redis.counts().await,
        }
    }

    /// Whether requests can be served now: always on memory; on Redis, whether it answers.
    pub async fn check_ready(&self) -> Result<(), PresenceError> {
        match &self.backend {
            Engine::Memory(_) => Ok(()),
            Engine::Redis(redis) => redis.ping().await,
        }
    }

    /// Whether this node hears every change, for its live streams: always on memory; on
    /// Redis, once its change feed is first subscribed, and unless it has been down for
    /// more than a few seconds since (see [`RedisBackend::feed_ready`]). No Redis call.
    pub fn feed_ready(&self) -> bool {
        match &self.backend {
            Engine::Memory(_) => true,
            Engine::Redis(redis) => redis.feed_ready(),
        }
    }

    /// `view` is the entry a stream was just given as its first read of a watched user: on
    /// Redis, an Offline user is then sent as never seen when its retention forgets it
    /// (see [`RedisBackend::watching`]); nothing to do on memory, whose store publishes that
    /// itself. Cheap: call it for every entry of a first read.
    pub fn watching(&self, view: &PresenceView<'_>) {
        match &self.backend {
            Engine::Memory(_) => {}
            Engine::Redis(redis) => redis.watching(view),
        }
    }

    /// One sweep, now. On memory this is CPU work that runs on the caller's thread (the
    /// sweeper gives it a thread of its own).
    pub async fn sweep(&self) -> Result<SweepReport, PresenceError> {
        match &self.backend {
            Engine::Memory(store) => {
                let report = store.sweep(self.clock.now());
                self.end_invisibility_on_memory();
                Ok(report)
            }
            Engine::Redis(redis) => {
                let report = redis.sweep().await.map_err(|partial| partial.error)?;
                self.end_invisibility().await?;
                Ok(report)
            }
        }
    }
}
