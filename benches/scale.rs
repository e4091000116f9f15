//! Figures that criterion does not time: memory per user at 1M users, measured by a
//! counting allocator; lookup latency while the sweeper expires 1M users at once; and
//! snapshot write and load time, file size, and lookup latency while a snapshot is written.
//!
//! Run: `cargo bench --bench scale` (about a minute). Prints a table and writes it to
//! `target/bench-scale.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;
use std::time::{Duration, Instant};

use common::*;
use presence_server::presence::memory::snapshot as persistence;
use presence_server::presence::model::{PlaceInfo, Session};
use presence_server::presence::time::Mono;
use presence_server::presence::{Heartbeat, Location, LocationName, PresenceType, UserId};
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

    println!("{:<48} {:>12}", "measure", "value");
    for (name, value) in &rows {
        println!("{name:<48} {value:>12.2}");
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
