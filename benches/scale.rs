//! Figures that criterion does not time: memory per user at 1M users, measured by a
//! counting allocator; lookup latency while the sweeper expires 1M users at once; and
//! snapshot write and load time, file size, and lookup latency while a snapshot is written;
//! and the memory of game-server sessions (CONTRACT section 10): per user with an app
//! session, as a player of game servers of 700 players, or both, and a live server's own
//! cost, fitted from many servers of few players against few servers of many; and the
//! memory of privacy (CONTRACT section 11): per friendship pair at 1M pairs, and per user
//! of its settings at 1M users.
//!
//! Run: `cargo bench --bench scale` (about a minute). Prints a table and writes it to
//! `target/bench-scale.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;
use std::time::{Duration, Instant};

use common::*;
use presence_server::presence::memory::snapshot as persistence;
use presence_server::presence::memory::store::GameLimits;
use presence_server::presence::model::{PlaceInfo, Session};
use presence_server::presence::sessions::GamePlace;
use presence_server::presence::time::Mono;
use presence_server::presence::{
    Heartbeat, Location, LocationName, PlaceCatalog, PresenceType, Store, UserId,
};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MILLION: u64 = 1_000_000;

/// Bytes still allocated after `build`, per user.
fn bytes_per_user<T>(users: u64, build: impl FnOnce() -> T) -> (f64, T) {
    let region = Region::new(GLOBAL);
    let built = build();
    let change = region.change();
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    (live / users as f64, built)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Lookup latencies (50 random ids each) on this thread for `rounds` lookups, while
/// `during` runs on another thread.
fn lookup_latencies(
    store: &presence_server::presence::Store,
    rounds: usize,
    during: impl FnOnce() + Send,
) -> (Vec<Duration>, Duration) {
    let mut ids = Ids::new(99);
    let batches: Vec<Vec<UserId>> = (0..rounds)
        .map(|_| (0..50).map(|_| ids.next_in(MILLION)).collect())
        .collect();
    let mut took = Duration::ZERO;
    let mut latencies = Vec::with_capacity(rounds);
    std::thread::scope(|s| {
        let other = s.spawn(move || {
            let start = Instant::now();
            during();
            start.elapsed()
        });
        for batch in &batches {
            let start = Instant::now();
            std::hint::black_box(store.get_many(batch, Mono(2 * ms(TTL))));
            latencies.push(start.elapsed());
        }
        took = other.join().unwrap();
    });
    latencies.sort();
    (latencies, took)
}

/// `users` users: odd ids in game (with place and game ids), even ids Offline.
fn snapshot_users(users: u64) -> presence_server::presence::Store {
    let store = new_store();
    for n in 1..=users {
        let heartbeat = if n % 2 == 1 {
            Heartbeat::Present {
                location: LocationName::Shared(Location::playing()),
                session: Session {
                    kind: PresenceType::InGame,
                    place: Some(PlaceInfo {
                        place_id: 1818,
                        root_place_id: 1818,
                        universe_id: std::num::NonZeroI64::new(13058),
                    }),
                    game_id: Some(uuid::Uuid::from_u128(u128::from(n))),
                },
            }
        } else {
            Heartbeat::Disconnect
        };
        store.heartbeat(user(n), heartbeat, at(0));
    }
    store
}

/// Players per game server in the per-user figures (`api.max_players_per_server`).
const PER_SERVER: u64 = 700;
/// Users in the per-user figures: 1,430 full servers, about 1M users.
const GAME_USERS: u64 = 1_430 * PER_SERVER;
/// Players in the server-cost fit: every one of them is in each configuration's servers.
const FIT_PLAYERS: u64 = 700_000;

/// A store whose bounds leave room for every server the bench reports.
fn game_store() -> Store {
    new_store().with_games(GameLimits {
        servers: 10_000_000,
        ..GameLimits::default()
    })
}

fn game_place() -> GamePlace {
    GamePlace::new(1818, Some(13058), &PlaceCatalog::new(&[])).unwrap()
}

/// Server ids of one series: distinct per `series` and `n`.
fn server_id(series: u64, n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(series, n)
}

/// Reports servers of `per_server` players each, of users `1..=users` in order (the last
/// server takes what is left), all at `at(0)`.
fn report_servers(store: &Store, series: u64, users: u64, per_server: u64) -> u64 {
    let place = game_place();
    let mut servers = 0;
    let mut first = 1;
    while first <= users {
        let last = (first + per_server - 1).min(users);
        let players: Vec<UserId> = (first..=last).map(user).collect();
        store
            .report_game_server(server_id(series, servers), &place, &players, at(0))
            .unwrap();
        servers += 1;
        first = last + 1;
    }
    servers
}

/// Memory rows of game-server sessions (CONTRACT section 10).
fn game_memory(rows: &mut Vec<(&'static str, f64)>) {
    // Per user: an app session, game sessions only, both; the same ids every time.
    let (app, store) = bytes_per_user(GAME_USERS, || present_users(GAME_USERS, 0));
    drop(store);
    let (players, store) = bytes_per_user(GAME_USERS, || {
        let store = game_store();
        report_servers(&store, 1, GAME_USERS, PER_SERVER);
        store
    });
    assert_eq!(store.game_servers() as u64, GAME_USERS / PER_SERVER);
    drop(store);
    let (both, store) = bytes_per_user(GAME_USERS, || {
        let store = present_users(GAME_USERS, 0);
        report_servers(&store, 1, GAME_USERS, PER_SERVER);
        store
    });
    drop(store);
    rows.push(("memory per user, app session, 1M users (bytes)", app));
    rows.push((
        "memory per user, player of a 700-player server, no app session",
        players,
    ));
    rows.push(("memory per user, app session and player (bytes)", both));
    rows.push(("extra per player over the app session (bytes)", both - app));

    // A server's own cost. Every player already holds the most game sessions allowed, so a
    // further join replaces the oldest in a record of the same size: what a new server
    // adds is the server alone (its map slot, its place, its expiry slot, its list of
    // players). The same 700,000 players go to S servers of 700,000 / S each.
    let sessions = GameLimits::default().sessions_per_user as u64;
    let mut points = Vec::new();
    for per_server in [700, 70, 7] {
        let store = game_store();
        for series in 0..sessions {
            report_servers(&store, 100 + series, FIT_PLAYERS, PER_SERVER);
        }
        let region = Region::new(GLOBAL);
        let servers = report_servers(&store, 200, FIT_PLAYERS, per_server);
        let change = region.change();
        let added = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
        drop(store);
        points.push((servers as f64, added));
    }
    // total = servers * base + players * per_player, with the players fixed: a line in the
    // number of servers (least squares over the three points).
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let slope = points
        .iter()
        .map(|p| (p.0 - mean_x) * (p.1 - mean_y))
        .sum::<f64>()
        / points.iter().map(|p| (p.0 - mean_x).powi(2)).sum::<f64>();
    let intercept = mean_y - slope * mean_x;
    for (&(servers, added), label) in points.iter().zip([
        "server cost: 1,000 servers of 700, per server (bytes)",
        "server cost: 10,000 servers of 70, per server (bytes)",
        "server cost: 100,000 servers of 7, per server (bytes)",
    ]) {
        rows.push((label, added / servers));
    }
    rows.push(("server cost, fitted base per server (bytes)", slope));
    rows.push((
        "server cost, fitted per player (bytes)",
        intercept / FIT_PLAYERS as f64,
    ));
}

/// Memory rows of friendships (CONTRACT section 11): bytes per friendship at 1M of them,
/// each user befriending the next `per_side` users of a ring, so that every user has
/// `2 * per_side` friends; added through `apply`, 1,000 pairs a call as the API takes them.
fn friendship_memory(rows: &mut Vec<(&'static str, f64)>) {
    use presence_server::presence::memory::friends::Friendships;
    use presence_server::presence::privacy::FriendshipsBody;

    fn ring(users: u64, per_side: u64) -> Friendships {
        let table = Friendships::new(2_000);
        let mut add = Vec::with_capacity(1_000);
        let pairs = (1..=users).flat_map(|i| {
            (1..=per_side).map(move |k| [Some(user(i)), Some(user((i - 1 + k) % users + 1))])
        });
        let flush = |add: &mut Vec<_>| {
            let body = FriendshipsBody {
                add: std::mem::take(add),
                remove: Vec::new(),
            };
            assert!(table.apply(&body.check().unwrap()).is_empty());
        };
        for pair in pairs {
            add.push(pair);
            if add.len() == 1_000 {
                flush(&mut add);
            }
        }
        if !add.is_empty() {
            flush(&mut add);
        }
        table
    }

    for (users, per_side, label) in [
        (
            40_000,
            25,
            "memory per friend pair, 1M, 40,000 users of 50 friends (bytes)",
        ),
        (
            200_000,
            5,
            "memory per friend pair, 1M, 200,000 users of 10 friends (bytes)",
        ),
    ] {
        let (bytes, table) = bytes_per_user(MILLION, || ring(users, per_side));
        assert_eq!(table.pairs() as u64, MILLION);
        assert_eq!(table.users() as u64, users);
        assert_eq!(table.friends_of(user(users)).len() as u64, 2 * per_side);
        drop(table);
        rows.push((label, bytes));
    }
}

/// A settings body, checked at `at(0)`.
fn settings_patch(
    visibility: Option<&str>,
    invisible_until: Option<&str>,
) -> presence_server::presence::privacy::CheckedPatch {
    presence_server::presence::privacy::SettingsPatch {
        visibility: visibility.map(str::to_owned),
        invisible: invisible_until.map(|_| true),
        invisible_until: invisible_until.map(str::to_owned),
    }
    .check(at(0).wall)
    .unwrap()
}

/// Bytes `apply` leaves allocated, per user, applied to `store` (built before counting).
fn extra_per_user(users: u64, store: &Store, apply: impl FnOnce(&Store)) -> f64 {
    let region = Region::new(GLOBAL);
    apply(store);
    let change = region.change();
    (change.bytes_allocated as f64 - change.bytes_deallocated as f64) / users as f64
}

/// Memory rows of privacy settings (CONTRACT section 11), at 1M users: what settings add
/// to the same Offline users without them (a visibility alone; an invisibility with an end
/// time), and what users never seen cost once they hold settings (nothing without).
fn settings_memory(rows: &mut Vec<(&'static str, f64)>) {
    let friends = settings_patch(Some("friends"), None);
    let until = settings_patch(None, Some("2030-01-01T00:00:00Z"));
    let change_all = |patch: presence_server::presence::privacy::CheckedPatch| {
        move |store: &Store| {
            for n in 1..=MILLION {
                store.change_settings(user(n), &patch, at(ms(TTL)));
            }
        }
    };

    let store = offline_users(MILLION);
    let visibility = extra_per_user(MILLION, &store, change_all(friends));
    assert_eq!(store.len() as u64, MILLION);
    assert_eq!(store.users_with_settings() as u64, MILLION);
    assert_eq!(store.invisible_users(), 0);
    drop(store);
    rows.push((
        "settings: extra per Offline user with a visibility only, 1M (bytes)",
        visibility,
    ));

    let store = offline_users(MILLION);
    let invisible = extra_per_user(MILLION, &store, change_all(until));
    assert_eq!(store.invisible_users() as u64, MILLION);
    drop(store);
    rows.push((
        "settings: extra per Offline user invisible with an end, 1M (bytes)",
        invisible,
    ));

    for (patch, label) in [
        (
            friends,
            "settings: per user never seen with a visibility only, 1M (bytes)",
        ),
        (
            until,
            "settings: per user never seen invisible with an end, 1M (bytes)",
        ),
    ] {
        let (bytes, store) = bytes_per_user(MILLION, || {
            let store = new_store();
            change_all(patch)(&store);
            store
        });
        assert!(store.is_empty());
        assert_eq!(store.unseen_with_settings() as u64, MILLION);
        drop(store);
        rows.push((label, bytes));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks benches to name themselves.
    }
    let mut rows = Vec::new();

    let (offline, store) = bytes_per_user(MILLION, || offline_users(MILLION));
    assert_eq!(store.len() as u64, MILLION);
    assert_eq!(store.scheduled(), 0);
    drop(store);
    rows.push(("memory per Offline user, 1M users (bytes)", offline));

    let (present, store) = bytes_per_user(MILLION, || present_users(MILLION, 0));
    assert_eq!(store.scheduled() as u64, MILLION);
    rows.push(("memory per present user, 1M users (bytes)", present));

    // Lookups with no sweep, then while one sweep expires all 1M users at once.
    const ROUNDS: usize = 200_000;
    // A first pass warms caches and page tables, so that the two measured passes compare.
    lookup_latencies(&store, ROUNDS, || {});
    let (quiet, _) = lookup_latencies(&store, ROUNDS, || {});
    let (busy, sweep_took) = lookup_latencies(&store, ROUNDS, || {
        let report = store.sweep(at(ms(TTL)));
        assert_eq!(report.expired as u64, MILLION);
    });
    let p99_quiet = percentile(&quiet, 0.99);
    let p99_busy = percentile(&busy, 0.99);
    rows.push((
        "lookup of 50, p50 with no sweep (µs)",
        percentile(&quiet, 0.5).as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, p99 with no sweep (µs)",
        p99_quiet.as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, p50 during a 1M expiry (µs)",
        percentile(&busy, 0.5).as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, p99 during a 1M expiry (µs)",
        p99_busy.as_secs_f64() * 1e6,
    ));
    rows.push((
        "p99 ratio, during expiry / no sweep",
        p99_busy.as_secs_f64() / p99_quiet.as_secs_f64(),
    ));
    rows.push((
        "sweep expiring 1M users at once (ms)",
        sweep_took.as_secs_f64() * 1e3,
    ));
    rows.push((
        "sweep expiring 1M users, per user (ns)",
        sweep_took.as_secs_f64() * 1e9 / MILLION as f64,
    ));

    // Snapshots of 1M users, half of them present (in game, with place and game ids).
    drop(store);
    let store = snapshot_users(MILLION);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("presence.snapshot");
    let now = at(1_000);
    let written = persistence::write(&store, &path, now).unwrap();
    rows.push(("snapshot write, 1M users (ms)", written.seconds * 1e3));
    rows.push(("snapshot size, 1M users (MB)", written.bytes as f64 / 1e6));
    rows.push((
        "snapshot size per user (bytes)",
        written.bytes as f64 / MILLION as f64,
    ));
    let loaded_into = new_store();
    let loaded = persistence::load(&loaded_into, &path, now)
        .unwrap()
        .unwrap();
    assert_eq!(loaded.users, MILLION);
    rows.push(("snapshot load, 1M users (ms)", loaded.seconds * 1e3));
    drop(loaded_into);
    let (quiet, _) = lookup_latencies(&store, ROUNDS / 4, || {});
    let (busy, _) = lookup_latencies(&store, ROUNDS / 4, || {
        persistence::write(&store, &path, now).unwrap();
    });
    rows.push((
        "lookup of 50, p99 with no snapshot (µs)",
        percentile(&quiet, 0.99).as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, p99 while writing a snapshot (µs)",
        percentile(&busy, 0.99).as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, worst while writing a snapshot (µs)",
        busy[busy.len() - 1].as_secs_f64() * 1e6,
    ));
    rows.push((
        "lookup of 50, worst with no snapshot (µs)",
        quiet[quiet.len() - 1].as_secs_f64() * 1e6,
    ));

    drop(store);
    game_memory(&mut rows);
    friendship_memory(&mut rows);
    settings_memory(&mut rows);

    println!("{:<64} {:>12}", "measure", "value");
    for (name, value) in &rows {
        println!("{name:<64} {value:>12.2}");
    }
    let json: Vec<_> = rows
        .iter()
        .map(|(name, value)| serde_json::json!({"measure": name, "value": value}))
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scale.json");
    if let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
