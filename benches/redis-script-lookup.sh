#!/usr/bin/env bash
# What a lookup would cost Redis if its MGET of 100 keys (50 records, 50 settings keys)
# ran inside a script that answers one value instead of 100: the node would parse one
# value (redis-rs spends 15-17 us on the 100 of an MGET), Redis would do the rest.
#
# Loads 4,096 records of 190 bytes (ids 1..4096, keys shaped as the backend's: a shard
# tag, then the id), then, three times, alternately: the MGET of 50 ids spread over
# 1..8192 (about half present, no settings keys present), and the same through each
# script. Prints Redis's own CPU time per call (utime + stime of the server process over
# the run) and the command's execution time as Redis counts it (INFO commandstats).
#
#   bash benches/redis-script-lookup.sh          # N=100000 calls per run, port 7317
#
# Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
PORT=${PORT:-7317}
N=${N:-100000}
CLIENTS=${CLIENTS:-16}

cli() { redis-cli -p "$PORT" "$@"; }
cli shutdown nosave >/dev/null 2>&1 || true
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --io-threads 1 >/dev/null
trap 'cli shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done

record=$(printf 'x%.0s' $(seq 190))
for u in $(seq 1 4096); do
  key="bench:{$((u % 1024))}$u"
  printf '*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n' "${#key}" "$key" "${#record}" "$record"
done | cli --pipe >/dev/null

keys=()
for i in $(seq 0 49); do u=$(((i * 163) % 8192 + 1)); keys+=("bench:{$((u % 1024))}$u"); done
for i in $(seq 0 49); do u=$(((i * 163) % 8192 + 1)); keys+=("bench:{$((u % 1024))}p$u"); done

# Each value with a 4-byte length before it (0xFFFFFFFF for none).
packed=$(cli script load "local v = redis.call('MGET', unpack(KEYS)) local out = {} \
for i = 1, #v do local x = v[i] if x then out[i] = struct.pack('>I4', #x) .. x \
else out[i] = '\255\255\255\255' end end return table.concat(out)")
# The least a script can do: none as empty, joined by NUL (not safe for binary values).
joined=$(cli script load "local v = redis.call('MGET', unpack(KEYS)) \
for i = 1, #v do if not v[i] then v[i] = '' end end return table.concat(v, '\0')")

pid=$(cli info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

run() { # name, command...
  local name=$1 stat=$2
  shift 2
  cli config resetstat >/dev/null
  local before after rps
  before=$(ticks)
  rps=$(redis-benchmark -p "$PORT" -c "$CLIENTS" -n "$N" --threads 1 -P 1 -q "$@" |
    tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
  after=$(ticks)
  printf '%-26s %8.1f us Redis CPU per call, %7s us executing (%s)\n' "$name" \
    "$(awk -v t=$((after - before)) -v hz="$hz" -v n="$N" 'BEGIN {print t * 1e6 / hz / n}')" \
    "$(cli info commandstats | grep -o "cmdstat_$stat:.*usec_per_call=[0-9.]*" |
      sed 's/.*usec_per_call=//')" "$rps"
}

for round in 1 2 3; do
  echo "round $round"
  run "MGET of 100 keys" mget MGET "${keys[@]}"
  run "script, length-prefixed" evalsha EVALSHA "$packed" 100 "${keys[@]}"
  run "script, joined" evalsha EVALSHA "$joined" 100 "${keys[@]}"
done
