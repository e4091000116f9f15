//! Privacy on Redis (CONTRACT section 11): each user's settings and friends, shared by
//! every node.
//!
//! - Settings: a key beside the record, in the user's shard (see [`super::keys`], encoded
//!   by [`record::encode_settings`]), absent for the default settings, with no key expiry
//!   (they outlive the record's retention). A lookup reads them with the records, in the
//!   same `MGET`; every script that publishes a user's change reads them as it publishes,
//!   so that each node's hub decides with them (see [`super::scripts`]).
//! - A change of settings is worked out here, in Rust ([`privacy::apply`]), from the
//!   settings and record read together; a script then writes it only if neither changed
//!   since (the record matters only when the change begins an invisibility, which freezes
//!   the record's `lastOnline`), and publishes it; after a conflict it is read and worked
//!   out again.
//! - Friends: a set per user in its shard; every friendship is in both users' sets. A
//!   lookup by a signed-in viewer asks the viewer's own set about every id with one
//!   `SMISMEMBER`, sent at the same time as the `MGET`: at most one round trip per node.
//!
//! Changing friendships: the two sides of a pair are in different shards (on a cluster,
//! different nodes), so no one script can change both. A call runs steps, each one script
//! per shard concerned, the scripts of one node pipelined and every node at once:
//!
//! 1. removals, both sides at once;
//! 2. for the additions, both sides of every pair are read (how many friends each user
//!    holds, whether each side has the pair), and the pairs are decided in the order given
//!    as they would be by a call alone (the memory backend's rule): a pair both sides hold
//!    changes nothing, a pair that would take a side past `privacy.max_friends` is skipped;
//! 3. for each pair to add, `a` the lower id and `b` the other: a place is held in `a`'s
//!    count for `b`, the bound checked (a held place counts as a friend for every check,
//!    but is no friendship: no reader sees it);
//! 4. `a` is added to `b`'s set, the bound checked;
//! 5. `a`'s held place becomes `b` in `a`'s set; or, when step 4 found `b` full, the place
//!    is freed and the pair skipped.
//!
//! So the bound holds exactly whatever calls run at once: every check counts the places
//! held, and a place turns into a friend without a new check. A pair that a concurrent
//! call made too many for is skipped too. A reader (a lookup, or a stream's first read)
//! may meanwhile see a pair on one side only: during step 1 either side may go first;
//! between steps 4 and 5, `b` already counts `a` as a friend and `a` not yet `b`. A pair
//! that ends up skipped is never seen as a friendship by anyone (unless its place's hold
//! ended before step 5 and the place was taken meanwhile: then `b`'s side is taken back,
//! but that needs a call far slower than `redis.timeout` allows). A pair found on one side
//! only is completed, or, when skipped, taken off that side. Once a call returns, both
//! sides agree. A call cut short (past `redis.timeout`, answered 503) may leave a pair on
//! one side, and places held until their hold ends ([`Scripts::hold_ms`]); repeating the
//! call completes it. An addition and a removal of the same pair in two calls at once may
//! also leave it on one side, until the pair is changed again.
//!
//! Every friendship added or removed on a side is published by its script (see
//! [`super::scripts`]); each node's feed tells its hub ([`Changes::befriend`]) and sends
//! the watchers concerned what they now see.
//!
//! [`Changes::befriend`]: crate::presence::watch::Changes::befriend

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike as _;
use redis::{Cmd, RedisResult, Script, Value};

use super::games::ShardCall;
use super::keys::{shard_of, Keys};
use super::{record, scripts, Connection, RedisBackend};
use crate::presence::model::{PresenceView, UserId};
use crate::presence::privacy::{
    self, CheckedPatch, FriendList, FriendPair, FriendshipChanges, Seen, Settings, Viewer,
    Visibility,
};
use crate::presence::service::PresenceError;
use crate::presence::time::{duration_millis, WallMillis};

/// Default `privacy.max_friends`, until [`RedisBackend::with_max_friends`] says otherwise.
const DEFAULT_MAX_FRIENDS: usize = 2000;
/// Times a change of settings is read and worked out again after a conflict.
const SETTINGS_ATTEMPTS: usize = 16;
/// The least time a place held for a friendship being added lasts.
const LEAST_HOLD: Duration = Duration::from_secs(10);

/// What the backend keeps for privacy.
pub(super) struct Scripts {
    settings: Script,
    friends: Script,
    max_friends: AtomicUsize,
    /// How long a place held for a friendship being added lasts (ms): four times
    /// `redis.timeout`, at least [`LEAST_HOLD`]; a call that holds places ends, one way or
    /// the other, within one `redis.timeout`.
    hold_ms: i64,
}

impl Scripts {
    pub(super) fn new(timeout: Duration) -> Self {
        let hold = (timeout * 4).max(LEAST_HOLD);
        Self {
            settings: Script::new(&scripts::settings()),
            friends: Script::new(&scripts::friends()),
            max_friends: AtomicUsize::new(DEFAULT_MAX_FRIENDS),
            hold_ms: i64::try_from(duration_millis(hold)).unwrap_or(i64::MAX),
        }
    }
}

/// `MGET` of the record and the settings of each of `ids`, in that order, built in place
/// (no key of its own per id: a lookup names two keys per id).
pub(super) fn mget_records(keys: &Keys, ids: &[UserId]) -> Cmd {
    let mut mget = Cmd::with_capacity(1 + 2 * ids.len(), 8 + 2 * ids.len() * 32);
    mget.arg("MGET");
    let mut key = Vec::with_capacity(64);
    for &id in ids {
        key.clear();
        keys.push_user(id, &mut key);
        mget.arg(key.as_slice());
        key.clear();
        keys.push_settings(id, &mut key);
        mget.arg(key.as_slice());
    }
    mget
}

/// `answer` if it is an `MGET` answer: values or nothing, in an array. A Redis error, or
/// an answer of another shape, is an error.
pub(super) fn mget_answer(answer: Value) -> Result<Value, redis::RedisError> {
    match answer {
        Value::ServerError(e) => Err(e.into()),
        Value::Array(items)
            if items
                .iter()
                .all(|item| matches!(item, Value::BulkString(_) | Value::Nil)) =>
        {
            Ok(Value::Array(items))
        }
        other => Err(redis::RedisError::from(std::io::Error::other(format!(
            "unexpected answer to MGET: {other:?}"
        )))),
    }
}

/// Value `i` of an answer checked by [`mget_answer`], read in place (`None` for a missing
/// key).
pub(super) fn mget_value(answer: &Value, i: usize) -> Option<&[u8]> {
    match answer {
        Value::Array(items) => match items.get(i) {
            Some(Value::BulkString(bytes)) => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

/// Settings as stored for `user` (`None`: none, the default). A value this version cannot
/// read is taken as the most private settings (visible to nobody) rather than the least.
pub(super) fn stored_settings(user: UserId, value: Option<&[u8]>) -> Settings {
    match value {
        None => Settings::default(),
        Some(value) => record::decode_settings(value).unwrap_or_else(|_| {
            tracing::warn!(
                user = %user,
                value = %String::from_utf8_lossy(value),
                "unreadable privacy settings: taken as visible to nobody"
            );
            Settings::new(Visibility::Nobody, None)
        }),
    }
}

/// The view of `user` from its record, if any, as of `now`.
fn view_of(user: UserId, found: Option<&[u8]>, now: i64) -> PresenceView<'_> {
    match found {
        None => PresenceView::never_seen(user),
        Some(bytes) => record::decode(user, bytes, now).unwrap_or_else(|e| {
            tracing::warn!(user = %user, error = %e, "ignoring a presence record");
            PresenceView::never_seen(user)
        }),
    }
}

/// One operation of the friends script (see [`super::scripts`]) on `user`'s side.
#[derive(Debug, Clone, Copy)]
struct FriendOp {
    user: UserId,
    other: UserId,
    op: u8,
}

const QUERY: u8 = b'q';
const RESERVE: u8 = b'r';
const ADD: u8 = b'a';
const COMMIT: u8 = b'c';
const UNRESERVE: u8 = b'u';
const DROP: u8 = b'd';

fn op(user: UserId, other: UserId, op: u8) -> FriendOp {
    FriendOp { user, other, op }
}

impl RedisBackend {
    /// This backend, bounding friends per user by `max_friends` (`privacy.max_friends`).
    pub fn with_max_friends(self, max_friends: usize) -> Self {
        self.inner
            .privacy
            .max_friends
            .store(max_friends, Ordering::Relaxed);
        self
    }

    /// Redis's time now, as this backend estimates it.
    pub async fn wall_now(&self) -> WallMillis {
        WallMillis(self.feed_now().await)
    }

    /// See [`crate::presence::Presence::visit_seen`]: one `MGET` of every id's record and
    /// settings and, for a signed-in viewer, one `SMISMEMBER` of the viewer's friends with
    /// every id, both sent at once (on a cluster the client splits the `MGET` by slot and
    /// sends every node its part at once).
    pub async fn visit_seen(
        &self,
        viewer: Viewer,
        ids: &[UserId],
        mut visit: impl FnMut(&Seen<'_, '_>),
    ) -> Result<(), PresenceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let (now, values, friends) = self
            .bounded("lookup", |mut c| async move {
                let now = self.now(&mut c).await?;
                let mget = mget_records(&inner.keys, ids);
                let mut reader = c.clone();
                let read = async move { mget_answer(reader.req_packed_command(&mget).await?) };
                match viewer {
                    Viewer::User(me) => {
                        let mut ask = redis::cmd("SMISMEMBER");
                        ask.arg(inner.keys.friends(me));
                        for &id in ids {
                            ask.arg(id.get());
                        }
                        let friends = async move { ask.query_async::<Vec<bool>>(&mut c).await };
                        let (values, friends) =
                            futures_util::future::try_join(read, friends).await?;
                        Ok((now, values, friends))
                    }
                    Viewer::Anonymous | Viewer::Reader => Ok((now, read.await?, Vec::new())),
                }
            })
            .await?;
        let at = WallMillis(now);
        for (i, &id) in ids.iter().enumerate() {
            let found = mget_value(&values, 2 * i);
            let stored = mget_value(&values, 2 * i + 1);
            let view = view_of(id, found, now);
            visit(&Seen {
                view: &view,
                settings: stored_settings(id, stored),
                friend: friends.get(i).copied().unwrap_or(false),
                now: at,
            });
        }
        Ok(())
    }

    /// See [`crate::presence::Presence::settings`]: one `GET`.
    pub async fn settings(&self, user: UserId) -> Result<(Settings, WallMillis), PresenceError> {
        let key = self.inner.keys.settings(user);
        let key = &key;
        let (now, stored) = self
            .bounded("settings", |mut c| async move {
                let now = self.now(&mut c).await?;
                let stored: Option<Vec<u8>> =
                    redis::cmd("GET").arg(key).query_async(&mut c).await?;
                Ok((now, stored))
            })
            .await?;
        Ok((stored_settings(user, stored.as_deref()), WallMillis(now)))
    }

    /// See [`crate::presence::Presence::change_settings`]: the settings and record read
    /// together, the change worked out, then written by a script if neither changed since
    /// (see the module's documentation), and published.
    pub async fn change_settings(
        &self,
        user: UserId,
        patch: &CheckedPatch,
    ) -> Result<(Settings, WallMillis), PresenceError> {
        let inner = &self.inner;
        let (publish, channel) = self.publish_to(shard_of(user));
        let (record_key, settings_key) = (inner.keys.user(user), inner.keys.settings(user));
        let (channel, record_key, settings_key) = (&channel, &record_key, &settings_key);
        for _ in 0..SETTINGS_ATTEMPTS {
            let done = self
                .bounded("change settings", |mut c| async move {
                    let now = self.now(&mut c).await?;
                    let (found, stored): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("MGET")
                        .arg(record_key)
                        .arg(settings_key)
                        .query_async(&mut c)
                        .await?;
                    let old = stored_settings(user, stored.as_deref());
                    let last_online = view_of(user, found.as_deref(), now).last_online;
                    let at = WallMillis(now);
                    let new = privacy::apply(old, patch, at, last_online);
                    let begins = old.invisibility_at(at).is_none() && new.invisible_at(at);
                    let mut call = inner.privacy.settings.key(settings_key);
                    call.key(record_key)
                        .arg(stored.unwrap_or_default())
                        .arg(record::encode_settings(new).unwrap_or_default())
                        .arg(if begins { "1" } else { "0" })
                        .arg(found.unwrap_or_default())
                        .arg(user.get())
                        .arg(publish)
                        .arg(channel);
                    let written: i64 = call.invoke_async(&mut c).await?;
                    Ok((written == 1).then_some((new, at)))
                })
                .await?;
            if let Some(done) = done {
                return Ok(done);
            }
        }
        tracing::warn!(user = %user, "a change of settings kept conflicting with other changes");
        Err(PresenceError::Unavailable)
    }

    /// See [`crate::presence::Presence::change_friendships`] and the module's
    /// documentation.
    pub async fn change_friendships(
        &self,
        changes: &FriendshipChanges,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        if changes.remove().is_empty() && changes.add().is_empty() {
            return Ok(Vec::new());
        }
        self.bounded("friendships", |mut c| async move {
            let now = self.now(&mut c).await?;
            self.change_pairs(&mut c, now, changes.remove(), changes.add())
                .await
        })
        .await
    }

    /// See [`crate::presence::Presence::replace_friends`]: `user`'s set is read, then the
    /// friendships not in `list` are removed and those of `list` added as
    /// [`Self::change_friendships`] does, ascending.
    pub async fn replace_friends(
        &self,
        user: UserId,
        list: &FriendList,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        let key = self.inner.keys.friends(user);
        let key = &key;
        self.bounded("friends", |mut c| async move {
            let now = self.now(&mut c).await?;
            let current: Vec<u64> = redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await?;
            let wanted = list.ids();
            let remove: Vec<FriendPair> = current
                .into_iter()
                .filter_map(UserId::new)
                .filter(|other| wanted.binary_search(other).is_err())
                .filter_map(|other| FriendPair::new(user, other))
                .collect();
            let add: Vec<FriendPair> = wanted
                .iter()
                .filter_map(|&other| FriendPair::new(user, other))
                .collect();
            self.change_pairs(&mut c, now, &remove, &add).await
        })
        .await
    }

    /// See [`crate::presence::Presence::friends`]: one `SMEMBERS`, sorted.
    pub async fn friends_of(&self, user: UserId) -> Result<Vec<UserId>, PresenceError> {
        let key = self.inner.keys.friends(user);
        let key = &key;
        let ids: Vec<u64> = self
            .bounded("friends", |mut c| async move {
                redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await
            })
            .await?;
        let mut friends: Vec<UserId> = ids.into_iter().filter_map(UserId::new).collect();
        friends.sort_unstable();
        Ok(friends)
    }

    /// Removes `remove`, then adds `add` (each friendship once) in the steps of the
    /// module's documentation; returns the pairs of `add` skipped, in order.
    async fn change_pairs(
        &self,
        c: &mut Connection,
        now: i64,
        remove: &[FriendPair],
        add: &[FriendPair],
    ) -> RedisResult<Vec<FriendPair>> {
        let max = i64::try_from(self.inner.privacy.max_friends.load(Ordering::Relaxed))
            .unwrap_or(i64::MAX);
        // 1. Removals, both sides at once.
        let drops: Vec<FriendOp> = remove
            .iter()
            .flat_map(|pair| {
                let (a, b) = pair.users();
                [op(a, b, DROP), op(b, a, DROP)]
            })
            .collect();
        self.friend_ops(c, now, &drops).await?;
        if add.is_empty() {
            return Ok(Vec::new());
        }

        // 2. Both sides of every pair read, and the pairs decided in order.
        let queries: Vec<FriendOp> = add
            .iter()
            .flat_map(|pair| {
                let (a, b) = pair.key();
                [op(a, b, QUERY), op(b, a, QUERY)]
            })
            .collect();
        let answers = self.friend_ops(c, now, &queries).await?;
        let mut held: HashMap<UserId, i64> = HashMap::new();
        for (q, answer) in queries.iter().zip(&answers) {
            held.entry(q.user).or_insert(answer / 2);
        }
        let mut skipped = vec![false; add.len()];
        let mut planned: Vec<usize> = Vec::new();
        // Pairs found on one side only that are skipped: taken off that side, so that
        // both sides agree.
        let mut repairs: Vec<FriendOp> = Vec::new();
        for (k, pair) in add.iter().enumerate() {
            let (a, b) = pair.key();
            let (a_has, b_has) = (answers[2 * k] & 1 == 1, answers[2 * k + 1] & 1 == 1);
            if a_has && b_has {
                continue;
            }
            let full =
                |user: UserId, has: bool| !has && held.get(&user).copied().unwrap_or(0) >= max;
            if full(a, a_has) || full(b, b_has) {
                skipped[k] = true;
                if a_has {
                    repairs.push(op(a, b, DROP));
                }
                if b_has {
                    repairs.push(op(b, a, DROP));
                }
                continue;
            }
            for (user, has) in [(a, a_has), (b, b_has)] {
                if !has {
                    *held.entry(user).or_insert(0) += 1;
                }
            }
            planned.push(k);
        }

        // 3. A place held on the lower id's side.
        let reserve: Vec<FriendOp> = planned
            .iter()
            .map(|&k| {
                let (a, b) = add[k].key();
                op(a, b, RESERVE)
            })
            .collect();
        let reserved = self.friend_ops(c, now, &reserve).await?;

        // 4. The other side.
        let mut on_b: Vec<usize> = Vec::new();
        for (&k, &answer) in planned.iter().zip(&reserved) {
            if answer == 0 {
                skipped[k] = true;
            } else {
                on_b.push(k);
            }
        }
        let adds: Vec<FriendOp> = on_b
            .iter()
            .map(|&k| {
                let (a, b) = add[k].key();
                op(b, a, ADD)
            })
            .collect();
        let added = self.friend_ops(c, now, &adds).await?;

        // 5. The held place turned into the friendship, or freed.
        let was_reserved: HashMap<usize, i64> = planned.iter().copied().zip(reserved).collect();
        let mut finish: Vec<FriendOp> = repairs;
        let mut commits: Vec<usize> = Vec::new();
        for (&k, &answer) in on_b.iter().zip(&added) {
            let (a, b) = add[k].key();
            let held_place = was_reserved.get(&k) == Some(&1);
            if answer == 0 {
                skipped[k] = true;
                // A place held is freed; a pair that was on a's side only is taken off it.
                finish.push(op(a, b, if held_place { UNRESERVE } else { DROP }));
            } else if held_place {
                commits.push(finish.len());
                finish.push(op(a, b, COMMIT));
            }
        }
        let finished = self.friend_ops(c, now, &finish).await?;

        // A commit whose hold had ended and found no room (not within one call's time):
        // b's side is taken back.
        let mut undo: Vec<FriendOp> = Vec::new();
        for &at in &commits {
            if finished[at] == 0 {
                let FriendOp {
                    user: a, other: b, ..
                } = finish[at];
                undo.push(op(b, a, DROP));
                if let Some(k) = add.iter().position(|p| p.key() == (a, b)) {
                    skipped[k] = true;
                }
            }
        }
        self.friend_ops(c, now, &undo).await?;

        Ok(add
            .iter()
            .zip(skipped)
            .filter_map(|(&pair, skipped)| skipped.then_some(pair))
            .collect())
    }

    /// Runs `ops` with the friends script: one call per shard (its ops in the order given),
    /// pipelined per node, every node at once. Returns each op's answer, in order.
    async fn friend_ops(
        &self,
        c: &mut Connection,
        now: i64,
        ops: &[FriendOp],
    ) -> RedisResult<Vec<i64>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let mut by_shard: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, o) in ops.iter().enumerate() {
            by_shard.entry(shard_of(o.user)).or_default().push(i);
        }
        let max = inner.privacy.max_friends.load(Ordering::Relaxed);
        let hold = now.saturating_add(inner.privacy.hold_ms);
        let (shards, calls): (Vec<Vec<usize>>, Vec<ShardCall>) = by_shard
            .into_iter()
            .map(|(shard, members)| {
                let (publish, channel) = self.publish_to(shard);
                let mut keys = Vec::with_capacity(2 * members.len());
                let mut args: Vec<Vec<u8>> = Vec::with_capacity(5 + 3 * members.len());
                args.push(now.to_string().into_bytes());
                args.push(max.to_string().into_bytes());
                args.push(hold.to_string().into_bytes());
                args.push(publish.as_bytes().to_vec());
                args.push(channel.into_bytes());
                for &i in &members {
                    let FriendOp { user, other, op } = ops[i];
                    keys.push(inner.keys.friends(user));
                    keys.push(inner.keys.reserved(user));
                    args.push(user.get().to_string().into_bytes());
                    args.push(other.get().to_string().into_bytes());
                    args.push(vec![op]);
                }
                (members, ShardCall { shard, keys, args })
            })
            .unzip();
        let answers = self
            .run_per_shard(c, &inner.privacy.friends, &calls)
            .await?;
        let mut out = vec![0i64; ops.len()];
        for (members, answer) in shards.iter().zip(answers) {
            let values: Vec<i64> = match answer {
                Value::ServerError(e) => return Err(e.into()),
                other => redis::from_redis_value(other)?,
            };
            for (&i, value) in members.iter().zip(values) {
                out[i] = value;
            }
        }
        Ok(out)
    }
}
