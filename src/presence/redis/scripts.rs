//! The Lua scripts: each runs atomically on the one Redis node that holds its shard, so a
//! heartbeat, a disconnect or a claim of due users is applied whole or not at all. Only
//! commands that Valkey 7.2 also has.
//!
//! Each change a watcher must see (anything but `lastOnline` and the deadline) is published
//! by the script that makes it, as `<user id>|<new record>` for a user with the default
//! privacy settings, `<user id>|s<settings>|<new record>` for one with settings of its own
//! (as stored, see `record`), read by the script as it publishes; an empty record means
//! the record was deleted (the user reads as never seen). A record never starts with `s`;
//! a node of the previous version reads every change of a user without settings, and
//! skips (as unreadable) those of a user with some, which it could not honour anyway. A
//! change of settings is published the same way, with the record as it is. A change of a
//! user's friends is published as `f<user id>|<other user id>|<1 or 0>`: the other user
//! was added to (1) or removed from (0) the user's set. The command and channel are
//! arguments: `PUBLISH`
//! to the one channel of a standalone server, `SPUBLISH` to the shard's channel on a cluster
//! (same hash tag as the shard's keys, so the script may name it and it stays on the
//! shard's node). Published from within the script, a user's changes reach subscribers in
//! the order they were made.

/// Finds where field `n` (1-based) of a record starts, a record's type and location, and
/// writes Offline records (see `record`: an Offline record at a built-in location is one
/// integer, `lastOnline * 4 + code`; the table of codes, `BUILTIN`, is made from
/// `record::BUILTIN_LOCATIONS`).
const HELPERS: &str = r#"
local function is_packed(rec)
  return not string.find(rec, '|', 1, true)
end
local function present_fields(rec)
  local kind, last_online, deadline =
    string.match(rec, '^([123])|(-?%d+)|(-?%d+)|[^|]*|[^|]*|[^|]*|[^|]*|')
  if not kind then return nil end
  return tonumber(kind), last_online, tonumber(deadline)
end
local function is_offline(rec)
  return is_packed(rec) or string.byte(rec, 1) == 48
end
local function offline_record(last_online, location)
  local code = BUILTIN[location]
  if code then
    return string.format('%.0f', tonumber(last_online) * 4 + code)
  end
  return '0|' .. last_online .. '|' .. location
end
local function field_start(rec, n)
  local at = 1
  for _ = 2, n do
    at = string.find(rec, '|', at, true) + 1
  end
  return at
end
local function field(rec, n)
  local at = field_start(rec, n)
  local stop = string.find(rec, '|', at, true)
  return string.sub(rec, at, stop - 1)
end
-- The message of a change of `user`: its settings, if it has any, and its record.
local function message(user, settings, rec)
  if settings and settings ~= '' then
    return user .. '|s' .. settings .. '|' .. rec
  end
  return user .. '|' .. rec
end
local function location_of(rec)
  if is_packed(rec) then
    return BUILTIN_NAMES[tonumber(rec) % 4]
  end
  if string.byte(rec, 1) == 48 then
    return string.sub(rec, field_start(rec, 3))
  end
  return string.sub(rec, field_start(rec, 8))
end
"#;

/// A user's sessions (CONTRACT section 10), as every user script reads and writes them.
///
/// A record is one of today's (see `record`): Offline, or one app session, written exactly
/// as a heartbeat always wrote it, so that nodes of the previous version still read every
/// user that holds no game session. A user holding a game session has a record of its own:
///
/// `g|<lastOnline>|<n>|<app session: n bytes, a present record, or nothing>` followed, for
/// each game session, by `<m>|<m bytes: <joined>|<deadline>|<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>>`
///
/// (lengths in bytes, so that locations may hold any byte). Nodes of the previous version
/// read it as unreadable (never seen, and skipped by their sweeps for a while): game servers
/// only report once every node is upgraded.
///
/// Every write keeps only the sessions still live, and a record with a game session holds
/// one at least; a record with no live session left is written Offline at the location of
/// the session that ended last. So what a record shows as of its last write (what watchers
/// were last sent, and what the shard's counters count) is its highest-ranked session,
/// deadlines aside: the latest-joined game session, else the app session, else Offline.
///
/// The ranking rule is `sessions::pick` and `sessions::last_shown`, encoded again here
/// (`pick`, `last_shown`); the table of cases of `sessions` checks both.
const SESSIONS: &str = r#"
local function num(n)
  return string.format('%.0f', n)
end
-- sessions::pick: the live game session joined last (its index), else 0 for a live app
-- session, else nil. `app` is the app session's deadline, if any.
local function pick(app, games, now)
  local best = nil
  for i, g in ipairs(games) do
    if now < g.deadline and (not best or g.joined >= games[best].joined) then best = i end
  end
  if best then return best end
  if app and now < app then return 0 end
  return nil
end
-- sessions::last_shown: the session that ended last, ranked as pick ranks on a tie.
local function last_shown(app, games)
  local last = app
  for _, g in ipairs(games) do
    if not last or g.deadline > last then last = g.deadline end
  end
  if not last then return nil end
  local best = nil
  for i, g in ipairs(games) do
    if g.deadline == last and (not best or g.joined >= games[best].joined) then best = i end
  end
  return best or 0
end
local function rest_location(rest)
  return string.sub(rest, field_start(rest, 5))
end
local function rest_game(rest)
  return string.match(rest, '^[^|]*|[^|]*|[^|]*|([^|]*)|')
end
local function load_games(st, rec)
  local lo, alen, at = string.match(rec, '^g|(%d+)|(%d+)|()')
  if not lo then return false end
  st.lo = tonumber(lo)
  alen = tonumber(alen)
  if alen > 0 then
    local app = string.sub(rec, at, at + alen - 1)
    local kind, _, deadline = present_fields(app)
    if not kind then return false end
    st.app = {kind = kind, deadline = deadline, rest = string.sub(app, field_start(app, 4))}
  end
  at = at + alen
  while at <= #rec do
    local glen, body = string.match(rec, '^(%d+)|()', at)
    if not glen then return false end
    local stop = body + tonumber(glen) - 1
    local g = string.sub(rec, body, stop)
    local joined, deadline, rest = string.match(g, '^(%d+)|(%d+)|()')
    if not joined then return false end
    rest = string.sub(g, rest)
    local game = rest_game(rest)
    if not game then return false end
    st.games[#st.games + 1] = {joined = tonumber(joined), deadline = tonumber(deadline), rest = rest, id = game}
    at = stop + 1
  end
  return #st.games > 0
end
-- A user's state from its record (false: none).
local function load(rec)
  local st = {exists = rec and true or false, games = {}, counted = 0, lo = 0}
  if not rec then return st end
  if is_packed(rec) then
    local n = tonumber(rec)
    if not n or n < 0 then st.bad = true return st end
    st.lo = math.floor(n / 4)
    st.off = BUILTIN_NAMES[n % 4]
    return st
  end
  local first = string.byte(rec, 1)
  if first == 48 then
    local lo = string.match(rec, '^0|(%-?%d+)|')
    if not lo then st.bad = true return st end
    st.lo = tonumber(lo)
    st.off = string.sub(rec, field_start(rec, 3))
    return st
  end
  if first == 103 then
    if load_games(st, rec) then
      st.counted = 2
    else
      st.bad, st.app, st.games = true, nil, {}
    end
    return st
  end
  local kind, lo, deadline = present_fields(rec)
  if not kind then st.bad = true return st end
  st.lo = tonumber(lo)
  st.app = {kind = kind, deadline = deadline, rest = string.sub(rec, field_start(rec, 4))}
  st.counted = kind
  return st
end
local function app_deadline(st)
  return st.app and st.app.deadline
end
local function offline_location(st)
  local last = last_shown(app_deadline(st), st.games)
  if last == 0 then return rest_location(st.app.rest) end
  if last then return rest_location(st.games[last].rest) end
  return st.off or ''
end
-- What `st` shows at `now` (lastOnline aside), and its type.
local function shown(st, now)
  if st.bad then return 'X', 0 end
  local p = pick(app_deadline(st), st.games, now)
  if p == 0 then return st.app.kind .. '|' .. st.app.rest, st.app.kind end
  if p then return '2|' .. st.games[p].rest, 2 end
  return '0|' .. offline_location(st), 0
end
-- The earliest deadline of a session of `st`, if it has one.
local function earliest(st)
  local at = app_deadline(st)
  for _, g in ipairs(st.games) do
    if not at or g.deadline < at then at = g.deadline end
  end
  return at
end
-- What must be known of a record before it changes: what it showed as of its last write
-- (what watchers were sent), what it shows now, and what the counters count of it.
local function before(st, now)
  return {
    written = shown(st, -1e300),
    now = shown(st, now),
    counted = st.counted,
    exists = st.exists,
  }
end
-- Writes `st` as of `now` to `key`: keeps the live sessions; files the user in the expiry
-- set at its earliest deadline (or takes it out); moves the counters; gives an Offline
-- record its retention; publishes when what it shows differs from what it showed as of
-- its last write or shows at `now`, with the user's settings (key `skey`). Returns the
-- type written (0: Offline).
local function save(ctx, key, skey, user, st, old, now)
  local live, at = {}, nil
  for _, g in ipairs(st.games) do
    if g.deadline > now then
      live[#live + 1] = g
      if not at or g.deadline < at then at = g.deadline end
    end
  end
  local app = st.app
  if app and app.deadline <= now then app = nil end
  local rec, kind, sig
  local app_rec = ''
  if app then
    app_rec = app.kind .. '|' .. num(st.lo) .. '|' .. num(app.deadline) .. '|' .. app.rest
  end
  if #live > 0 then
    if app and app.deadline < at then at = app.deadline end
    local parts = {'g|' .. num(st.lo) .. '|' .. #app_rec .. '|' .. app_rec}
    local top = nil
    for _, g in ipairs(live) do
      local body = num(g.joined) .. '|' .. num(g.deadline) .. '|' .. g.rest
      parts[#parts + 1] = #body .. '|' .. body
      if not top or g.joined >= top.joined then top = g end
    end
    rec, kind, sig = table.concat(parts), 2, '2|' .. top.rest
  elseif app then
    rec, kind, sig, at = app_rec, app.kind, app.kind .. '|' .. app.rest, app.deadline
  else
    local location = offline_location(st)
    rec, kind, sig = offline_record(num(st.lo), location), 0, '0|' .. location
  end
  local changed = sig ~= old.written or sig ~= old.now
  if not old.exists then redis.call('HINCRBY', ctx.counters, 't', 1) end
  if old.counted ~= kind then
    if old.counted > 0 then redis.call('HINCRBY', ctx.counters, old.counted, -1) end
    if kind > 0 then redis.call('HINCRBY', ctx.counters, kind, 1) end
  end
  -- SET drops any retention expiry the record had while Offline.
  redis.call('SET', key, rec)
  if at then
    redis.call('ZADD', ctx.expiry, num(at), user)
  else
    redis.call('ZREM', ctx.expiry, user)
  end
  if kind == 0 and ctx.keep >= 0 then
    local left = st.lo + ctx.keep - now
    if left > 0 then
      redis.call('PEXPIRE', key, num(left))
    else
      redis.call('DEL', key)
      redis.call('HINCRBY', ctx.counters, 't', -1)
      rec, changed = '', true
    end
  end
  if changed then redis.call(ctx.publish, ctx.channel, message(user, redis.call('GET', skey), rec)) end
  return kind
end
"#;

/// A heartbeat or a disconnect of one user: its app session replaced, or ended now; its
/// game sessions kept.
///
/// The counters' field `t` counts the records a write created (less those a claim
/// deleted): the users tracked, while no retention makes Redis forget records by itself.
///
/// A present heartbeat changes what watchers see when the old record showed something else
/// as of its last write or shows something else now (absent, Offline, past its deadline,
/// another type, another place, universe, game or location, a game session ranking
/// first); one that only moves a deadline still ahead publishes nothing. An old record
/// this version cannot read (it reads as never seen) is replaced, uncounted, as a change.
///
/// KEYS: the record, the shard's expiry set, the shard's counters, the user's settings.
/// ARGV: the user id, now (ms), `p` (present) or `d` (disconnect), the new app record (for
/// `p`), its deadline (for `p`), the retention in ms or `-1` for none, the publish
/// command, the channel.
const HEARTBEAT_BODY: &str = r#"
local now = tonumber(ARGV[2])
local ctx = {expiry = KEYS[2], counters = KEYS[3], keep = tonumber(ARGV[6]), publish = ARGV[7], channel = ARGV[8]}
local st = load(redis.call('GET', KEYS[1]))
local old = before(st, now)
if st.bad then
  st = load(false)
  st.exists = true
end
st.lo = now
if ARGV[3] == 'p' then
  local kind, _, deadline = present_fields(ARGV[4])
  st.app = {kind = kind, deadline = deadline, rest = string.sub(ARGV[4], field_start(ARGV[4], 4))}
elseif st.app and st.app.deadline > now then
  st.app.deadline = now
end
save(ctx, KEYS[1], KEYS[4], ARGV[1], st, old, now)
return 1
"#;

/// Claims the due users of one shard: each whose expiry entry is still due and one of whose
/// sessions has ended is written again as of now (see `save`): the sessions ended dropped,
/// published if what it shows changed, filed again at its next deadline or, with none
/// left, flipped Offline (keeping `lastOnline` and the location shown last), uncounted and
/// given its retention expiry. A user whose sessions were all extended since is filed at
/// its new earliest deadline; one claimed already (by another node) is skipped. A user
/// flipped Offline after its retention has passed is deleted and published as forgotten
/// (`<user id>|`).
///
/// A present record this version cannot read (written by a newer version during a rolling
/// upgrade, or by hand) is left as it is and its expiry entry moved [`UNREADABLE_RETRY`]
/// later: kept, so that a node that can read it (or an operator who fixes it) still claims
/// it, but out of the way of the shard's next batches, which would otherwise start with it
/// every sweep. Returns `{flipped, {skipped user ids}}`: how many this call flipped
/// Offline, and the users it could not read.
///
/// KEYS: the shard's expiry set, the shard's counters, then the n candidates' records,
/// then their settings (`KEYS[i + n]` for `KEYS[i]`).
/// ARGV: now (ms), the retention in ms or `-1`, the publish command, the channel, then the
/// candidates' user ids, aligned with their records (ARGV[i + 2] is the user of KEYS[i],
/// from 3 on).
const CLAIM_BODY: &str = r#"
local now = tonumber(ARGV[1])
local ctx = {expiry = KEYS[1], counters = KEYS[2], keep = tonumber(ARGV[2]), publish = ARGV[3], channel = ARGV[4]}
local flipped = 0
local skipped = {}
local n = (#KEYS - 2) / 2
for i = 3, n + 2 do
  local user = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], user)
  if score and tonumber(score) <= now then
    local st = load(redis.call('GET', KEYS[i]))
    local at = earliest(st)
    if st.bad then
      redis.call('ZADD', KEYS[1], num(now + UNREADABLE_RETRY_MS), user)
      skipped[#skipped + 1] = user
    elseif not at then
      redis.call('ZREM', KEYS[1], user)
    elseif at > now then
      redis.call('ZADD', KEYS[1], num(at), user)
    elseif save(ctx, KEYS[i], KEYS[i + n], user, st, before(st, now), now) == 0 then
      flipped = flipped + 1
    end
  end
end
return {flipped, skipped}
"#;

/// Game-server sessions of users of one shard, for one server: joins (or refreshes) and
/// leaves, each user's change atomic with its publication.
///
/// - `j`: the user is in the server until the deadline given, `lastOnline` now: its live
///   session of this server keeps its join order and takes the new deadline and place; else
///   (none, or one ended) a new session joins above every one held, ending the
///   oldest-joined when `max` are held already.
/// - `l`: the user's live session of this server ends now (`lastOnline` now); nothing when
///   it holds none (left already, moved on, or ended by expiry, which keeps its
///   `lastOnline`). Repeating a leave changes nothing.
///
/// KEYS: the shard's expiry set, the shard's counters, then the n users' records, then
/// their settings (`KEYS[i + n]` for `KEYS[i]`).
/// ARGV: now (ms), the retention in ms or `-1`, the publish command, the channel, `max`
/// sessions per user, the game id (32 hex digits), the deadline, the session's
/// `<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`, then per record its user id
/// and `j` or `l` (ARGV[2i + 3] and ARGV[2i + 4] for KEYS[i], from 3 on).
const GAME_USERS_BODY: &str = r#"
local now = tonumber(ARGV[1])
local ctx = {expiry = KEYS[1], counters = KEYS[2], keep = tonumber(ARGV[2]), publish = ARGV[3], channel = ARGV[4]}
local max = math.max(tonumber(ARGV[5]), 1)
local game, deadline, rest = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local n = (#KEYS - 2) / 2
for i = 3, n + 2 do
  local user, op = ARGV[2 * i + 3], ARGV[2 * i + 4]
  local st = load(redis.call('GET', KEYS[i]))
  local old = before(st, now)
  local found = nil
  for j, g in ipairs(st.games) do
    if g.id == game then found = j end
  end
  local dirty = false
  if op == 'j' then
    if st.bad then
      st = load(false)
      st.exists, found = true, nil
    end
    if found and st.games[found].deadline > now then
      st.games[found].deadline, st.games[found].rest = deadline, rest
    else
      local held = {}
      for j, g in ipairs(st.games) do
        if j ~= found and g.deadline > now then held[#held + 1] = g end
      end
      if #held >= max then
        local oldest = 1
        for j, g in ipairs(held) do
          if g.joined < held[oldest].joined then oldest = j end
        end
        table.remove(held, oldest)
      end
      local next_join = 0
      for _, g in ipairs(held) do
        if g.joined + 1 > next_join then next_join = g.joined + 1 end
      end
      held[#held + 1] = {joined = next_join, deadline = deadline, rest = rest, id = game}
      st.games = held
    end
    dirty = true
  elseif found and st.games[found].deadline > now then
    -- Ended now: the location shown last when nothing else is live.
    st.games[found].deadline = now
    dirty = true
  end
  if dirty then
    st.lo = now
    save(ctx, KEYS[i], KEYS[i + n], user, st, old, now)
  end
end
return 1
"#;

/// A change of one user's settings, worked out by the caller from what it read (see
/// `privacy`), written only if nothing it was worked out from has changed since: the
/// settings, and the record when the change begins an invisibility (which freezes the
/// record's `lastOnline`). Published with the record as it is. Returns 1 when the settings
/// are as the caller wants them, 0 when it must read again.
///
/// KEYS: the user's settings, the user's record.
/// ARGV: the settings read (empty: none), the new settings (empty: the default, deleted),
/// `1` to compare the record too, the record read (empty: none), the user id, the publish
/// command, the channel.
const SETTINGS_BODY: &str = r#"
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
local rec = redis.call('GET', KEYS[2]) or ''
if ARGV[3] == '1' and rec ~= ARGV[4] then return 0 end
if ARGV[2] ~= cur then
  if ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
  redis.call(ARGV[6], ARGV[7], message(ARGV[5], ARGV[2], rec))
end
return 1
"#;

/// Changes of the friends of users of one shard, applied in order (the order of these
/// calls that keeps both sides of a friendship equal and the bound exact is in `privacy`).
/// A user's friends count against the bound together with the places held for friendships
/// being added to it; a hold whose end has passed is dropped before anything is counted, so
/// a hold still present has been counted by every check since it was made. Each entry names
/// a user, another user and an operation, and answers an integer:
///
/// - `q` (query): `2 * held + friend`: `held` the friends and places held, `friend` 1 when
///   the other user is a friend;
/// - `r` (reserve): 2 when the other user is a friend already; else 0 when `held` (not
///   counting a place held for it already) is `max` or more; else 1, with a place held for
///   it until the hold's end;
/// - `a` (add): 2 when a friend already; else 0 when `held` (as for `r`) is `max` or more;
///   else 1, added;
/// - `c` (commit): with a place held for it, 1 (added in that place) or 2 (a friend
///   already, the place freed); without one (its hold ended), as `a`;
/// - `u` (unreserve): frees the place held for it; 1;
/// - `d` (drop): frees the place held for it, if any, and removes it: 1 when it was a
///   friend, else 0.
///
/// Each addition and removal is published as `f<user>|<other>|1` or `f<user>|<other>|0`.
///
/// KEYS: per entry, the user's friends and held places (`KEYS[2i - 1]`, `KEYS[2i]`).
/// ARGV: now (ms), `max`, the end of a hold made now (ms), the publish command, the
/// channel, then per entry the user's id, the other user's id and the operation
/// (`ARGV[3i + 3]`, `ARGV[3i + 4]`, `ARGV[3i + 5]`).
const FRIENDS_BODY: &str = r#"
local now, max, hold = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function held(f, r, other)
  redis.call('ZREMRANGEBYSCORE', r, '-inf', now)
  local n = redis.call('SCARD', f) + redis.call('ZCARD', r)
  if redis.call('ZSCORE', r, other) then n = n - 1 end
  return n
end
local function tell(user, other, on)
  redis.call(ARGV[4], ARGV[5], 'f' .. user .. '|' .. other .. '|' .. on)
end
local function add(f, r, user, other)
  if redis.call('SISMEMBER', f, other) == 1 then return 2 end
  if held(f, r, other) >= max then return 0 end
  redis.call('SADD', f, other)
  tell(user, other, 1)
  return 1
end
local out = {}
for i = 1, #KEYS / 2 do
  local f, r = KEYS[2 * i - 1], KEYS[2 * i]
  local user, other, op = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
  local answer = 0
  if op == 'q' then
    redis.call('ZREMRANGEBYSCORE', r, '-inf', now)
    answer = 2 * (redis.call('SCARD', f) + redis.call('ZCARD', r)) + redis.call('SISMEMBER', f, other)
  elseif op == 'r' then
    if redis.call('SISMEMBER', f, other) == 1 then
      answer = 2
    elseif held(f, r, other) < max then
      redis.call('ZADD', r, hold, other)
      local last = redis.call('ZRANGE', r, -1, -1, 'WITHSCORES')
      redis.call('PEXPIREAT', r, string.format('%.0f', tonumber(last[2]) + HOLD_KEY_GRACE_MS))
      answer = 1
    end
  elseif op == 'a' then
    answer = add(f, r, user, other)
  elseif op == 'c' then
    if redis.call('ZREM', r, other) == 1 then
      if redis.call('SADD', f, other) == 1 then
        tell(user, other, 1)
        answer = 1
      else
        answer = 2
      end
    else
      answer = add(f, r, user, other)
    end
  elseif op == 'u' then
    redis.call('ZREM', r, other)
    answer = 1
  elseif op == 'd' then
    redis.call('ZREM', r, other)
    if redis.call('SREM', f, other) == 1 then
      tell(user, other, 0)
      answer = 1
    end
  end
  out[#out + 1] = answer
end
return out
"#;

/// A game server's record: `<state>|<deadline>|<players>|<leaving>|<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`,
/// state `l` (reported) or `e` (ended by a `DELETE`, kept only to repeat its leaves);
/// players comma-separated; leaving `<user id>@<until>` comma-separated: the players who
/// left in the last reports, whose leaves every later report (or `DELETE`) sends again
/// until their session in this server would have ended anyway, so that a report cut short
/// after this script still ends everyone when it is repeated. Whether a server is live is
/// its deadline against the one clock, never the key's existence; Redis drops the key
/// `SERVER_KEY_GRACE_MS` after the deadline (by Redis's own clock), so that a clock that
/// runs apart from Redis's (a node's estimate, or a test's mock) never loses a live
/// server's record.
const SERVER_HELPERS: &str = r#"
local SERVER_KEY_GRACE_MS = 60000
local function num(n)
  return string.format('%.0f', n)
end
local function read_server(rec)
  if not rec then return nil end
  local state, deadline, players, leaving, rest = string.match(rec, '^([le])|(%d+)|([%d,]*)|([%d,@]*)|()')
  if not state then return nil end
  return {state = state, deadline = tonumber(deadline), players = players, leaving = leaving, rest = string.sub(rec, rest)}
end
"#;

/// The whole state of a game server (`PUT`). A server not live (never reported, expired or
/// ended) is new: refused with `{0}` when `max` servers are live already. Otherwise it is
/// live until now + ttl with the players given, and the players of its last report not
/// listed, with the leaving ones not listed whose session may still be live, are leaving.
/// Returns `{1, deadline, {leaving user ids}}`.
///
/// KEYS: the server's record, the live servers. ARGV: now (ms), ttl (ms), `max` servers,
/// the game id, the session's `<placeId>|<rootPlaceId>|<universeId>|<gameId>|<location>`,
/// the players (comma-separated).
const SERVER_REPORT_BODY: &str = r#"
local now = tonumber(ARGV[1])
local old = read_server(redis.call('GET', KEYS[1]))
if not (old and old.state == 'l' and old.deadline > now) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {0} end
end
local deadline = now + tonumber(ARGV[2])
local listed = {}
for id in string.gmatch(ARGV[6], '%d+') do listed[id] = true end
local sent, leaving, seen = {}, {}, {}
local function leave(id, until_)
  if not listed[id] and not seen[id] and until_ > now then
    seen[id] = true
    sent[#sent + 1] = id
    leaving[#leaving + 1] = id .. '@' .. num(until_)
  end
end
if old then
  for id, until_ in string.gmatch(old.leaving, '(%d+)@(%d+)') do leave(id, tonumber(until_)) end
  if old.state == 'l' then
    for id in string.gmatch(old.players, '%d+') do leave(id, old.deadline) end
  end
end
redis.call('SET', KEYS[1], 'l|' .. num(deadline) .. '|' .. ARGV[6] .. '|' .. table.concat(leaving, ',') .. '|' .. ARGV[5], 'PX', num(tonumber(ARGV[2]) + SERVER_KEY_GRACE_MS))
redis.call('ZADD', KEYS[2], num(deadline), ARGV[4])
return {1, num(deadline), sent}
"#;

/// Players who joined or left a live server since its last report (`POST`): `{0}` when it
/// is not live, `{-1}` when it would hold more than `max` players (nothing changed), else
/// `{1, deadline, <the session's place fields and location>}`. Its deadline and key expiry
/// stay; those who left are leaving, those who joined no longer are.
///
/// KEYS: the server's record. ARGV: now (ms), `max` players, joined and left
/// (comma-separated).
const SERVER_PLAYERS_BODY: &str = r#"
local now = tonumber(ARGV[1])
local old = read_server(redis.call('GET', KEYS[1]))
if not (old and old.state == 'l' and old.deadline > now) then return {0} end
local gone = {}
for id in string.gmatch(ARGV[4], '%d+') do gone[id] = true end
local list, have = {}, {}
for id in string.gmatch(old.players, '%d+') do
  if not gone[id] and not have[id] then
    have[id] = true
    list[#list + 1] = id
  end
end
for id in string.gmatch(ARGV[3], '%d+') do
  if not have[id] then
    have[id] = true
    list[#list + 1] = id
  end
end
if #list > tonumber(ARGV[2]) then return {-1} end
local leaving, seen = {}, {}
for id, until_ in string.gmatch(old.leaving, '(%d+)@(%d+)') do
  if not have[id] and not gone[id] then leaving[#leaving + 1] = id .. '@' .. until_ end
end
for id in string.gmatch(ARGV[4], '%d+') do
  if not seen[id] then
    seen[id] = true
    leaving[#leaving + 1] = id .. '@' .. num(old.deadline)
  end
end
redis.call('SET', KEYS[1], 'l|' .. num(old.deadline) .. '|' .. table.concat(list, ',') .. '|' .. table.concat(leaving, ',') .. '|' .. old.rest, 'KEEPTTL')
return {1, num(old.deadline), old.rest}
"#;

/// A server stopped (`DELETE`): no longer live; its players, and the leaving ones whose
/// session may still be live, leave. The record stays, ended, until their sessions would
/// have ended anyway, so that a `DELETE` cut short ends everyone when it is repeated.
/// Returns the user ids leaving.
///
/// KEYS: the server's record, the live servers. ARGV: now (ms), the game id.
const SERVER_END_BODY: &str = r#"
local now = tonumber(ARGV[1])
local old = read_server(redis.call('GET', KEYS[1]))
redis.call('ZREM', KEYS[2], ARGV[2])
if not old then return {} end
local sent, leaving, seen = {}, {}, {}
local function leave(id, until_)
  if not seen[id] and until_ > now then
    seen[id] = true
    sent[#sent + 1] = id
    leaving[#leaving + 1] = id .. '@' .. num(until_)
  end
end
for id, until_ in string.gmatch(old.leaving, '(%d+)@(%d+)') do leave(id, tonumber(until_)) end
if old.state == 'l' then
  for id in string.gmatch(old.players, '%d+') do leave(id, old.deadline) end
end
local left = old.deadline - now
if #leaving > 0 and left > 0 then
  redis.call('SET', KEYS[1], 'e|' .. num(old.deadline) .. '||' .. table.concat(leaving, ',') .. '|' .. old.rest, 'PX', num(left + SERVER_KEY_GRACE_MS))
else
  redis.call('DEL', KEYS[1])
end
return sent
"#;

/// The ranking rule alone, for the tests that hold it to `sessions`' table.
/// ARGV: now, the app session's deadline or empty, then each game session's join order and
/// deadline. Returns `{shown, last shown}`: 0 the app, `i` the i-th game, -1 none.
#[cfg(test)]
const RANKING_BODY: &str = r#"
local app = tonumber(ARGV[2])
local games = {}
for i = 3, #ARGV, 2 do
  games[#games + 1] = {joined = tonumber(ARGV[i]), deadline = tonumber(ARGV[i + 1])}
end
local shown = pick(app, games, tonumber(ARGV[1]))
local last = last_shown(app, games)
return {shown or -1, last or -1}
"#;

/// `BUILTIN` (location → code) and `BUILTIN_NAMES` (code → location), in Lua.
fn builtin_tables() -> String {
    let mut codes = String::from("local BUILTIN = {");
    let mut names = String::from("local BUILTIN_NAMES = {");
    for (code, name) in BUILTIN_LOCATIONS.iter().enumerate() {
        // The names are plain ASCII words (checked by a test): no escaping needed.
        codes.push_str(&format!("[\"{name}\"] = {code}, "));
        names.push_str(&format!("[{code}] = \"{name}\", "));
    }
    format!("{codes}}}\n{names}}}\n")
}

fn user_script(body: &str) -> String {
    format!(
        "{}local UNREADABLE_RETRY_MS = {}\n{HELPERS}{SESSIONS}{body}",
        builtin_tables(),
        UNREADABLE_RETRY.as_millis()
    )
}

/// The heartbeat script's source.
pub fn heartbeat() -> String {
    user_script(HEARTBEAT_BODY)
}

/// The claim script's source.
pub fn claim() -> String {
    user_script(CLAIM_BODY)
}

/// The source of the script of one shard's game sessions.
pub fn game_users() -> String {
    user_script(GAME_USERS_BODY)
}

/// The source of the script that changes a user's settings.
pub fn settings() -> String {
    user_script(SETTINGS_BODY)
}

/// The source of the script of one shard's friendships.
pub fn friends() -> String {
    format!(
        "local HOLD_KEY_GRACE_MS = {}\n{FRIENDS_BODY}",
        HOLD_KEY_GRACE.as_millis()
    )
}

/// How long after the end of its last hold Redis drops a user's set of held places (a
/// hold past its end is dropped by the scripts anyway; this only takes an idle set away).
pub const HOLD_KEY_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The source of a game server's report script.
pub fn server_report() -> String {
    format!("{SERVER_HELPERS}{SERVER_REPORT_BODY}")
}

/// The source of a game server's players script.
pub fn server_players() -> String {
    format!("{SERVER_HELPERS}{SERVER_PLAYERS_BODY}")
}

/// The source of a game server's end script.
pub fn server_end() -> String {
    format!("{SERVER_HELPERS}{SERVER_END_BODY}")
}

/// How much later a claim looks again at a due user whose record it cannot read.
pub const UNREADABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

use super::record::BUILTIN_LOCATIONS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_locations_need_no_escaping_and_are_four() {
        assert_eq!(BUILTIN_LOCATIONS.len(), 4, "codes are two bits");
        for name in BUILTIN_LOCATIONS {
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' '));
        }
        assert!(heartbeat().starts_with("local BUILTIN = {[\"\"] = 0, [\"Website\"] = 1,"));
    }

    /// The Redis of the test run, if one is set (`PRESENCE_TEST_REDIS_URL`, see
    /// `bash .ci/redis start`).
    fn test_redis() -> Option<redis::Connection> {
        let url = std::env::var("PRESENCE_TEST_REDIS_URL").ok()?;
        let client = redis::Client::open(url.as_str()).ok()?;
        client.get_connection().ok()
    }

    #[test]
    fn the_scripts_rank_sessions_as_the_domain_does() {
        use crate::presence::sessions::tests::CASES;
        use crate::presence::sessions::Pick;
        let Some(mut redis) = test_redis() else {
            eprintln!("skipped: needs PRESENCE_TEST_REDIS_URL (bash .ci/redis start)");
            return;
        };
        let source = format!("{}{HELPERS}{SESSIONS}{RANKING_BODY}", builtin_tables());
        let code = |pick: Option<Pick>| match pick {
            None => -1,
            Some(Pick::App) => 0,
            Some(Pick::Game(i)) => i as i64 + 1,
        };
        for (i, &(app, games, now, shown, last)) in CASES.iter().enumerate() {
            let mut eval = redis::cmd("EVAL");
            eval.arg(&source).arg(0).arg(now);
            eval.arg(app.map(|a| a.to_string()).unwrap_or_default());
            for &(joined, deadline) in games {
                eval.arg(joined).arg(deadline);
            }
            let got: (i64, i64) = eval.query(&mut redis).unwrap();
            assert_eq!(got, (code(shown), code(last)), "case {i}");
        }
    }
}
