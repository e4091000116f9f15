//! The Lua scripts: each runs atomically on the one Redis node that holds its shard, so a
//! heartbeat, a disconnect or a claim of due users is applied whole or not at all. Only
//! commands that Valkey 7.2 also has.
//!
//! Each change a watcher must see (anything but `lastOnline` and the deadline) is published
//! by the script that makes it, as `<user id>|<new record>` (`<user id>|` for a record
//! deleted: the user reads as never seen). The command and channel are arguments: `PUBLISH`
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

/// A heartbeat or a disconnect of one user.
///
/// The counters' field `t` counts the records a heartbeat created (less those a claim
/// deleted): the users tracked, while no retention makes Redis forget records by itself.
///
/// A present heartbeat changes what watchers see when the old record is absent or Offline,
/// or its deadline has passed (it reads as Offline already, claimed or not), or it has
/// another type, or differs from the new one anywhere after the deadline (place, universe,
/// game, location); one that only moves a deadline still ahead publishes nothing. A
/// disconnect changes it when the old record was present. An old record this version
/// cannot read (it reads as never seen) is replaced, uncounted, as a change.
///
/// KEYS: the record, the shard's expiry set, the shard's counters.
/// ARGV: the user id, now (ms), `p` (present) or `d` (disconnect), the new record (for
/// `p`), the deadline (for `p`), the retention in ms or `-1` for none (for `d`), the
/// publish command, the channel.
const HEARTBEAT_BODY: &str = r#"
local old = redis.call('GET', KEYS[1])
local old_type = 0
local old_deadline = nil
if old then
  if not is_offline(old) then
    local kind, _, deadline = present_fields(old)
    if kind then
      old_type, old_deadline = kind, deadline
    else
      old_type = -1
    end
  end
else
  redis.call('HINCRBY', KEYS[3], 't', 1)
end
if ARGV[3] == 'p' then
  local new_type = string.byte(ARGV[4], 1) - 48
  local changed = old_type <= 0 or old_type ~= new_type or old_deadline <= tonumber(ARGV[2])
  if old_type ~= new_type then
    if old_type > 0 then redis.call('HINCRBY', KEYS[3], old_type, -1) end
    redis.call('HINCRBY', KEYS[3], new_type, 1)
  end
  if not changed then
    changed = string.sub(old, field_start(old, 4)) ~= string.sub(ARGV[4], field_start(ARGV[4], 4))
  end
  -- SET drops any retention expiry the record had while Offline.
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  if changed then redis.call(ARGV[7], ARGV[8], ARGV[1] .. '|' .. ARGV[4]) end
  return 1
end
local location = ''
if old and old_type >= 0 then location = location_of(old) end
if old_type > 0 then redis.call('HINCRBY', KEYS[3], old_type, -1) end
if old_type ~= 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
local offline = offline_record(ARGV[2], location)
redis.call('SET', KEYS[1], offline)
if ARGV[6] ~= '-1' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
if old_type ~= 0 then redis.call(ARGV[7], ARGV[8], ARGV[1] .. '|' .. offline) end
return 1
"#;

/// Claims the due users of one shard: each whose expiry entry is still due and whose
/// record's deadline has passed is flipped Offline (keeping `lastOnline` and the location),
/// uncounted, removed from the expiry set, and given its retention expiry. A user that
/// heartbeated since is left present; one claimed already (by another node) is skipped.
/// Each user flipped is published with its Offline record, or, when its retention has
/// passed already and its record is deleted, as forgotten (`<user id>|`).
///
/// A present record this version cannot read (written by a newer version during a rolling
/// upgrade, or by hand) is left as it is and its expiry entry moved [`UNREADABLE_RETRY`]
/// later: kept, so that a node that can read it (or an operator who fixes it) still claims
/// it, but out of the way of the shard's next batches, which would otherwise start with it
/// every sweep. Returns `{flipped, {skipped user ids}}`: how many this call flipped, and
/// the users it could not read.
///
/// KEYS: the shard's expiry set, the shard's counters, then the candidates' records.
/// ARGV: now (ms), the retention in ms or `-1`, the publish command, the channel, then the
/// candidates' user ids, aligned with their records (ARGV[i + 2] is the user of KEYS[i],
/// from 3 on).
const CLAIM_BODY: &str = r#"
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local flipped = 0
local skipped = {}
for i = 3, #KEYS do
  local user = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], user)
  if score and tonumber(score) <= now then
    local rec = redis.call('GET', KEYS[i])
    local kind, last_online, deadline = nil, nil, nil
    if rec and not is_offline(rec) then
      kind, last_online, deadline = present_fields(rec)
    end
    if not rec or is_offline(rec) then
      redis.call('ZREM', KEYS[1], user)
    elseif not kind then
      redis.call('ZADD', KEYS[1], now + UNREADABLE_RETRY_MS, user)
      skipped[#skipped + 1] = user
    elseif deadline > now then
      redis.call('ZADD', KEYS[1], deadline, user)
    else
      local offline = offline_record(last_online, location_of(rec))
      redis.call('SET', KEYS[i], offline)
      redis.call('HINCRBY', KEYS[2], kind, -1)
      redis.call('ZREM', KEYS[1], user)
      if keep >= 0 then
        local left = tonumber(last_online) + keep - now
        if left > 0 then
          redis.call('PEXPIRE', KEYS[i], string.format('%.0f', left))
        else
          redis.call('DEL', KEYS[i])
          redis.call('HINCRBY', KEYS[2], 't', -1)
          offline = ''
        end
      end
      redis.call(ARGV[3], ARGV[4], user .. '|' .. offline)
      flipped = flipped + 1
    end
  end
end
return {flipped, skipped}
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

/// The heartbeat script's source.
pub fn heartbeat() -> String {
    format!("{}{HELPERS}{HEARTBEAT_BODY}", builtin_tables())
}

/// The claim script's source.
pub fn claim() -> String {
    format!(
        "{}local UNREADABLE_RETRY_MS = {}\n{HELPERS}{CLAIM_BODY}",
        builtin_tables(),
        UNREADABLE_RETRY.as_millis()
    )
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
}
