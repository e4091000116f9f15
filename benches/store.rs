//! Store operations without HTTP, timed by criterion: heartbeat (one and two threads, and
//! one thread on a cache-resident set of users),
//! lookup of 50 ids (read alone, and read and answered as the API does), a sweep with nothing due at 1M and 4M users, and a sweep that expires
//! 10k users among 1M.
//!
//! Run: `cargo bench --bench store` (about three minutes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_server::api::json::PresencesWriter;
use presence_server::config::PresenceTypeFormat;
use presence_server::presence::privacy::Viewer;
use presence_server::presence::time::Mono;
use presence_server::presence::UserId;

const MILLION: u64 = 1_000_000;

fn heartbeat(c: &mut Criterion) {
    let store = Arc::new(present_users(MILLION, 0));
    let mut group = c.benchmark_group("store/heartbeat (1M present users)");
    group.throughput(Throughput::Elements(1));
    let mut ids = Ids::new(7);
    group.bench_function("1 thread", |b| {
        b.iter(|| store.heartbeat(ids.next_in(MILLION), online(), at(10)))
    });
    // The same store, but heartbeats from 10k of its users only: their entries stay in
    // cache, so this is the CPU cost without the memory latency of a random user.
    let mut ids = Ids::new(9);
    group.bench_function("1 thread, 10k hot users", |b| {
        b.iter(|| store.heartbeat(ids.next_in(10_000), online(), at(10)))
    });
    // Two threads each do `iters` heartbeats; time per heartbeat is total time over both.
    group.throughput(Throughput::Elements(2));
    group.bench_function("2 threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for seed in [11, 13] {
                    let store = &store;
                    s.spawn(move || {
                        let mut ids = Ids::new(seed);
                        for _ in 0..iters {
                            store.heartbeat(ids.next_in(MILLION), online(), at(10));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

fn lookup_50(c: &mut Criterion) {
    let store = present_users(MILLION, 0);
    let mut ids = Ids::new(3);
    let batches: Vec<Vec<UserId>> = (0..1024)
        .map(|_| (0..50).map(|_| ids.next_in(MILLION)).collect())
        .collect();
    let mut i = 0;
    c.bench_function("store/get_many 50 (1M present users)", |b| {
        b.iter(|| {
            i = (i + 1) % batches.len();
            black_box(store.get_many(&batches[i], Mono(10)))
        })
    });
}

/// What a lookup does after its body is read: the store's reads of 50 ids and the answer
/// written, as `POST /v1/presence/users` does for an anonymous viewer; among 1M present
/// users (most reads miss the caches) and among the 8,192 ids of `benches/http.rs`, half
/// of them present (the caches hold them).
fn lookup_50_answered(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/lookup 50, answer written");
    for (name, users, asked) in [
        ("1M present users", MILLION, MILLION),
        ("4096 present among 8192 asked", 4096, 8192),
    ] {
        let store = present_users(users, 0);
        let mut ids = Ids::new(5);
        let batches: Vec<Vec<UserId>> = (0..1024)
            .map(|_| (0..50).map(|_| ids.next_in(asked)).collect())
            .collect();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                let mut answer = PresencesWriter::new(PresenceTypeFormat::String, 50);
                store.visit_seen(Viewer::Anonymous, &batches[i], at(10), |seen| {
                    answer.push_seen(seen, Viewer::Anonymous, true)
                });
                black_box(answer.finish())
            })
        });
    }
    group.finish();
}

fn sweep_nothing_due(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/sweep nothing due");
    for users in [MILLION, 4 * MILLION] {
        let store = present_users(users, 0);
        group.bench_function(format!("{}M present users", users / MILLION), |b| {
            b.iter(|| black_box(store.sweep(at(1_000))))
        });
    }
    group.finish();
}

fn sweep_10k_due(c: &mut Criterion) {
    const DUE: u64 = 10_000;
    let store = offline_users(MILLION);
    let mut group = c.benchmark_group("store/sweep 10k due among 1M users");
    group.throughput(Throughput::Elements(DUE));
    group.sample_size(20);
    let mut round = 1u64;
    group.bench_function("expire", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // Each round: 10k random users come online at `t`, and expire at `t + TTL`.
                round += 2;
                let t = round * ms(TTL);
                // Distinct ids spread over the whole map (99_991 is prime).
                for k in 0..DUE {
                    store.heartbeat(user((k * 99_991 + round) % MILLION + 1), online(), at(t));
                }
                let start = Instant::now();
                let report = store.sweep(at(t + ms(TTL)));
                spent += start.elapsed();
                assert_eq!(report.expired as u64, DUE);
            }
            spent
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = heartbeat, lookup_50, lookup_50_answered, sweep_nothing_due, sweep_10k_due
}
criterion_main!(benches);
