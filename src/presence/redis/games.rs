//! Game servers and their players' sessions on Redis (CONTRACT section 10).
//!
//! - A server's record lives under the hash tag `{gs}` with the set of live servers (see
//!   [`super::keys`]); one script reads and writes it (report, players, end) and answers
//!   the players to change: on a report, the players listed and those who left (the
//!   players of its last report not listed, and those still leaving from earlier reports;
//!   see `scripts::SERVER_HELPERS`).
//! - Then each shard holding some of those players runs one script (`scripts::GAME_USERS_BODY`)
//!   that applies them all, atomically per user and published by the script. The scripts
//!   of the shards of one Redis node go as one pipeline, all nodes at once: a report costs
//!   the server's round trip, then one round trip per node holding some of its players.
//!   On a cluster the shards are grouped by the node a slot map read from `CLUSTER SLOTS`
//!   names (read once, and again after a redirection); a script the node answers with an
//!   error (a redirection after the slots moved, a script not loaded yet) is sent again
//!   on its own, which the client routes and repairs.
//! - A report cut short (503) may have applied some of this: its server's record keeps the
//!   players who left, so repeating it sends their leaves again; joins and leaves repeated
//!   change nothing more, so the repeat ends in the same state.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use futures_util::future::join_all;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisError, RedisResult, Script, ServerErrorKind, Value};
use uuid::Uuid;

use super::keys::{shard_of, slot_of_shard, SHARDS};
use super::{record, scripts, Connection, RedisBackend};
use crate::config::{ApiSettings, PresenceSettings};
use crate::presence::model::UserId;
use crate::presence::service::GameServerError;
use crate::presence::sessions::GamePlace;
use crate::presence::time::duration_millis;

/// What the backend keeps for game servers.
pub(super) struct Settings {
    ttl_ms: i64,
    max_sessions: usize,
    max_servers: usize,
    /// `api.max_players_per_server` (see [`RedisBackend::with_max_players`]).
    max_players: std::sync::atomic::AtomicUsize,
    users: Script,
    report: Script,
    players: Script,
    end: Script,
    /// On a cluster, the node (an index) of each shard, as last read.
    nodes: std::sync::Mutex<Option<Arc<Vec<usize>>>>,
    /// Pipelines and single script calls sent to shards, for players and friendships
    /// (for tests of the cost).
    round_trips: std::sync::atomic::AtomicU64,
}

impl Settings {
    pub(super) fn new(presence: &PresenceSettings) -> Self {
        Self {
            ttl_ms: i64::try_from(duration_millis(presence.game_server_ttl)).unwrap_or(i64::MAX),
            max_sessions: presence.max_game_sessions,
            max_servers: presence.max_game_servers,
            max_players: ApiSettings::default().max_players_per_server.into(),
            users: Script::new(&scripts::game_users()),
            report: Script::new(&scripts::server_report()),
            players: Script::new(&scripts::server_players()),
            end: Script::new(&scripts::server_end()),
            nodes: std::sync::Mutex::new(None),
            round_trips: 0.into(),
        }
    }
}

/// A player's change in one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// In the server (joins, or is refreshed).
    Join,
    /// Left it.
    Leave,
}

/// One shard's script call: its keys and arguments.
pub(super) struct ShardCall {
    pub(super) shard: u16,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<Vec<u8>>,
}

impl ShardCall {
    fn evalsha(&self, script: &Script) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key);
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }

    async fn invoke(&self, script: &Script, c: &mut Connection) -> RedisResult<Value> {
        let mut call = script.prepare_invoke();
        for key in &self.keys {
            call.key(key);
        }
        for arg in &self.args {
            call.arg(arg.as_slice());
        }
        call.invoke_async(c).await
    }
}

/// The answer of a server script: `{status, deadline, ...}`.
fn status(answer: &[Value]) -> RedisResult<i64> {
    match answer.first() {
        Some(v) => redis::from_redis_value_ref(v).map_err(RedisError::from),
        None => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "empty answer",
        ))),
    }
}

fn csv(users: &[UserId]) -> String {
    let mut out = String::with_capacity(users.len() * 12);
    let mut int = itoa::Buffer::new();
    for (i, user) in users.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(int.format(user.get()));
    }
    out
}

fn game_hex(game: Uuid) -> String {
    let mut hex = Uuid::encode_buffer();
    game.simple().encode_lower(&mut hex).to_owned()
}

impl RedisBackend {
    /// `api.max_players_per_server`, the bound of a server's players after a change of
    /// [`Self::game_server_players`] (700 unless told).
    pub fn with_max_players(self, max: usize) -> Self {
        self.inner.games.max_players.store(max, Ordering::Relaxed);
        self
    }

    /// Pipelines (and lone script calls) sent to the shards of players so far: what the
    /// tests of a report's cost count.
    #[doc(hidden)]
    pub fn player_round_trips(&self) -> u64 {
        self.inner.games.round_trips.load(Ordering::Relaxed)
    }

    /// The whole state of game server `game`: live until now + `presence.game_server_ttl`,
    /// every player of `players` (distinct) in it, everyone of its previous report not
    /// listed gone.
    pub async fn report_game_server(
        &self,
        game: Uuid,
        place: &GamePlace,
        players: &[UserId],
    ) -> Result<(), GameServerError> {
        let games = &self.inner.games;
        if players.len() > games.max_players.load(Ordering::Relaxed) {
            return Err(GameServerError::TooManyPlayers);
        }
        let keys = &self.inner.keys;
        let session = record::encode_game_session(game, place);
        let hex = game_hex(game);
        let listed = csv(players);
        let (session, hex, listed) = (&session, &hex, &listed);
        self.bounded("game server report", |mut c| async move {
            let now = self.now(&mut c).await?;
            let mut call = games.report.key(keys.game_server(game));
            call.key(keys.game_servers())
                .arg(now)
                .arg(games.ttl_ms)
                .arg(games.max_servers)
                .arg(hex)
                .arg(session)
                .arg(listed);
            let answer: Vec<Value> = call.invoke_async(&mut c).await?;
            if status(&answer)? == 0 {
                return Ok(Err(GameServerError::Full));
            }
            let deadline: i64 = redis::from_redis_value_ref(&answer[1])?;
            let leaving: Vec<u64> = match answer.get(2) {
                Some(v) => redis::from_redis_value_ref(v)?,
                None => Vec::new(),
            };
            let mut ops: Vec<(UserId, Op)> = players.iter().map(|&u| (u, Op::Join)).collect();
            ops.extend(
                leaving
                    .into_iter()
                    .filter_map(UserId::new)
                    .map(|u| (u, Op::Leave)),
            );
            self.apply(&mut c, now, hex, deadline, session, &ops)
                .await?;
            Ok(Ok(()))
        })
        .await?
    }

    /// Players who joined or left live server `game` since its last report.
    pub async fn game_server_players(
        &self,
        game: Uuid,
        joined: &[UserId],
        left: &[UserId],
    ) -> Result<(), GameServerError> {
        let games = &self.inner.games;
        let keys = &self.inner.keys;
        let hex = &game_hex(game);
        let (joined_csv, left_csv) = (&csv(joined), &csv(left));
        self.bounded("game server players", |mut c| async move {
            let now = self.now(&mut c).await?;
            let mut call = games.players.key(keys.game_server(game));
            call.arg(now)
                .arg(games.max_players.load(Ordering::Relaxed))
                .arg(joined_csv)
                .arg(left_csv);
            let answer: Vec<Value> = call.invoke_async(&mut c).await?;
            match status(&answer)? {
                0 => return Ok(Err(GameServerError::Unknown)),
                -1 => return Ok(Err(GameServerError::TooManyPlayers)),
                _ => {}
            }
            let deadline: i64 = redis::from_redis_value_ref(&answer[1])?;
            let session: Vec<u8> = redis::from_redis_value_ref(&answer[2])?;
            let ops: Vec<(UserId, Op)> = joined
                .iter()
                .map(|&u| (u, Op::Join))
                .chain(left.iter().map(|&u| (u, Op::Leave)))
                .collect();
            self.apply(&mut c, now, hex, deadline, &session, &ops)
                .await?;
            Ok(Ok(()))
        })
        .await?
    }

    /// Server `game` stopped: every player in it leaves now.
    pub async fn end_game_server(&self, game: Uuid) -> Result<(), GameServerError> {
        let games = &self.inner.games;
        let keys = &self.inner.keys;
        let hex = &game_hex(game);
        self.bounded("game server end", |mut c| async move {
            let now = self.now(&mut c).await?;
            let mut call = games.end.key(keys.game_server(game));
            call.key(keys.game_servers()).arg(now).arg(hex);
            let leaving: Vec<u64> = call.invoke_async(&mut c).await?;
            let ops: Vec<(UserId, Op)> = leaving
                .into_iter()
                .filter_map(UserId::new)
                .map(|u| (u, Op::Leave))
                .collect();
            self.apply(&mut c, now, hex, 0, b"", &ops).await
        })
        .await?;
        Ok(())
    }

    /// Live game servers now (the set is trimmed by reports and sweeps; the count is exact).
    pub(super) async fn live_game_servers(&self, c: &mut Connection) -> RedisResult<i64> {
        let now = self.now(c).await?;
        redis::cmd("ZCOUNT")
            .arg(self.inner.keys.game_servers())
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(c)
            .await
    }

    /// Forgets the servers whose deadline has passed from the set of live ones (their
    /// records expire by themselves).
    pub(super) async fn forget_game_servers(
        &self,
        connection: &Connection,
        now: i64,
    ) -> RedisResult<()> {
        let mut c = connection.clone();
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(self.inner.keys.game_servers())
            .arg("-inf")
            .arg(now)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }

    /// Applies `ops` for server `game` (deadline and session for the joins): one script
    /// per shard, pipelined per node, every node at once.
    async fn apply(
        &self,
        c: &mut Connection,
        now: i64,
        game: &str,
        deadline: i64,
        session: &[u8],
        ops: &[(UserId, Op)],
    ) -> RedisResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut by_shard: BTreeMap<u16, Vec<(UserId, Op)>> = BTreeMap::new();
        for &(user, op) in ops {
            by_shard.entry(shard_of(user)).or_default().push((user, op));
        }
        let calls: Vec<ShardCall> = by_shard
            .into_iter()
            .map(|(shard, users)| {
                let (publish, channel) = self.publish_to(shard);
                let mut keys = Vec::with_capacity(2 * users.len() + 2);
                keys.push(inner.keys.expiry(shard));
                keys.push(inner.keys.counters(shard));
                let mut args: Vec<Vec<u8>> = Vec::with_capacity(8 + 2 * users.len());
                args.push(now.to_string().into_bytes());
                args.push(inner.retention_ms.unwrap_or(-1).to_string().into_bytes());
                args.push(publish.as_bytes().to_vec());
                args.push(channel.into_bytes());
                args.push(inner.games.max_sessions.to_string().into_bytes());
                args.push(game.as_bytes().to_vec());
                args.push(deadline.to_string().into_bytes());
                args.push(session.to_vec());
                for &(user, op) in &users {
                    keys.push(inner.keys.user(user));
                    args.push(user.get().to_string().into_bytes());
                    args.push(match op {
                        Op::Join => b"j".to_vec(),
                        Op::Leave => b"l".to_vec(),
                    });
                }
                keys.extend(users.iter().map(|&(user, _)| inner.keys.settings(user)));
                ShardCall { shard, keys, args }
            })
            .collect();
        for answer in self.run_per_shard(c, &inner.games.users, &calls).await? {
            if let Value::ServerError(e) = answer {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Runs `script` once for each of `calls`: the calls of the shards of one node as one
    /// pipeline, every node at once. A call its node answers with an error (a redirection
    /// after the slots moved, a script not loaded yet) is sent again on its own, which the
    /// client routes and repairs (after loading the script on every master when it was
    /// missing). Returns each call's answer, in the order of `calls`.
    pub(super) async fn run_per_shard(
        &self,
        c: &mut Connection,
        script: &Script,
        calls: &[ShardCall],
    ) -> RedisResult<Vec<Value>> {
        let mut answers: Vec<Value> = vec![Value::Nil; calls.len()];
        let all: Vec<usize> = (0..calls.len()).collect();
        let mut failed = self
            .send_grouped(c, script, calls, &all, &mut answers)
            .await?;
        if failed
            .iter()
            .any(|(_, e)| e.kind() == Some(ServerErrorKind::NoScript))
        {
            // First use on some node: loaded on every master, then those sent again.
            script.load_async(c).await?;
            let retry: Vec<usize> = failed.iter().map(|&(i, _)| i).collect();
            failed = self
                .send_grouped(c, script, calls, &retry, &mut answers)
                .await?;
        }
        if failed.iter().any(|(_, e)| {
            matches!(
                e.kind(),
                Some(ServerErrorKind::Moved | ServerErrorKind::Ask)
            )
        }) {
            *self
                .inner
                .games
                .nodes
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        let alone = failed.iter().map(|&(i, _)| {
            let mut c = c.clone();
            self.inner.games.round_trips.fetch_add(1, Ordering::Relaxed);
            async move { (i, calls[i].invoke(script, &mut c).await) }
        });
        for (i, result) in join_all(alone).await {
            answers[i] = result?;
        }
        Ok(answers)
    }

    /// Sends the calls of `calls` at `which` as one pipeline per node, all at once, and
    /// puts their answers in `answers`; returns those a node answered with an error (by
    /// index), with it.
    async fn send_grouped(
        &self,
        c: &mut Connection,
        script: &Script,
        calls: &[ShardCall],
        which: &[usize],
        answers: &mut [Value],
    ) -> RedisResult<Vec<(usize, redis::ServerError)>> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let groups: Vec<Vec<usize>> = match c {
            Connection::Single(_) => vec![which.to_vec()],
            Connection::Cluster(cluster) => {
                let nodes = self.shard_nodes(cluster).await?;
                let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                for &i in which {
                    let shard = calls[i].shard;
                    let node = nodes.get(usize::from(shard)).copied();
                    groups
                        .entry(node.unwrap_or(usize::MAX - usize::from(shard)))
                        .or_default()
                        .push(i);
                }
                groups.into_values().collect()
            }
        };
        let sends = groups.into_iter().map(|group| {
            let mut c = c.clone();
            let mut pipe = redis::pipe();
            for &i in &group {
                pipe.add_command(calls[i].evalsha(script));
            }
            self.inner.games.round_trips.fetch_add(1, Ordering::Relaxed);
            let first_shard = calls[group[0]].shard;
            async move {
                let count = group.len();
                let values = match &mut c {
                    Connection::Single(single) => {
                        redis::aio::ConnectionLike::req_packed_commands(single, &pipe, 0, count)
                            .await?
                    }
                    Connection::Cluster(cluster) => {
                        let route = Route::new(slot_of_shard(first_shard), SlotAddr::Master);
                        cluster
                            .route_pipeline(
                                pipe,
                                0,
                                count,
                                SingleNodeRoutingInfo::SpecificNode(route),
                            )
                            .await?
                    }
                };
                Ok::<_, RedisError>((group, values))
            }
        });
        let mut failed = Vec::new();
        for result in join_all(sends).await {
            let (group, values) = result?;
            for (i, value) in group.into_iter().zip(values) {
                match value {
                    Value::ServerError(e) => failed.push((i, e)),
                    value => answers[i] = value,
                }
            }
        }
        Ok(failed)
    }

    /// The node (an index) of each shard on the cluster, from `CLUSTER SLOTS`, read once and
    /// again after a redirection.
    async fn shard_nodes(
        &self,
        cluster: &mut redis::cluster_async::ClusterConnection,
    ) -> RedisResult<Arc<Vec<usize>>> {
        let games = &self.inner.games;
        if let Some(nodes) = games
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(nodes);
        }
        let slots = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let nodes = Arc::new(nodes_of_shards(&slots));
        *games.nodes.lock().unwrap_or_else(PoisonError::into_inner) = Some(nodes.clone());
        Ok(nodes)
    }
}

/// The master (an index, `usize::MAX` when no range holds it) of each shard's slot, from a
/// `CLUSTER SLOTS` answer: `[[start, end, [host, port, ...], replicas...], ...]`.
fn nodes_of_shards(slots: &Value) -> Vec<usize> {
    let mut masters: Vec<String> = Vec::new();
    let mut ranges: Vec<(i64, i64, usize)> = Vec::new();
    if let Value::Array(entries) = slots {
        for entry in entries {
            let Value::Array(fields) = entry else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host: Option<String> = master
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            let port: Option<i64> = master
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            let (Some(host), Some(port)) = (host, port) else {
                continue;
            };
            let name = format!("{host}:{port}");
            let index = match masters.iter().position(|m| *m == name) {
                Some(i) => i,
                None => {
                    masters.push(name);
                    masters.len() - 1
                }
            };
            ranges.push((*start, *end, index));
        }
    }
    (0..SHARDS)
        .map(|shard| {
            let slot = i64::from(slot_of_shard(shard));
            ranges
                .iter()
                .find(|(start, end, _)| (*start..=*end).contains(&slot))
                .map_or(usize::MAX, |&(_, _, node)| node)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_grouped_by_the_master_of_their_slot() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("a", 1),
                node("r", 9),
            ]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node("b", 2)]),
        ]);
        let nodes = nodes_of_shards(&slots);
        assert_eq!(nodes.len(), usize::from(SHARDS));
        // Shard 0's slot is 13907, shard 1023's 14911: both on the second master.
        assert_eq!((nodes[0], nodes[1023]), (1, 1));
        assert!(nodes.contains(&0));
        assert!(nodes.iter().all(|&n| n <= 1));
    }

    #[test]
    fn players_are_listed_in_decimal() {
        let users: Vec<UserId> = [1, 22, 333].into_iter().filter_map(UserId::new).collect();
        assert_eq!(csv(&users), "1,22,333");
        assert_eq!(csv(&[]), "");
    }
}
