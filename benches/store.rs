//! Store operations without HTTP: heartbeat, lookup of 50 ids, and sweeps.
//!
//! Run: `cargo bench --bench store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use presence_server::presence::model::Session;
use presence_server::presence::time::{Mono, WallMillis};
use presence_server::presence::{Heartbeat, Now, PresenceType, Store, UserId};

const TTL: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_secs(1);

fn at(ms: u64) -> Now {
    Now {
        mono: Mono(ms),
        wall: WallMillis(1_700_000_000_000 + ms as i64),
    }
}

fn online() -> Heartbeat {
    Heartbeat::Present {
        location: Arc::from("Website"),
        session: Session {
            kind: PresenceType::Online,
            place: None,
            game_id: None,
        },
    }
}

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn filled(users: u64) -> Store {
    let store = Store::new(TTL, TICK);
    for n in 1..=users {
        store.heartbeat(user(n), online(), at(0));
    }
    store
}

fn heartbeat(c: &mut Criterion) {
    let store = filled(100_000);
    let mut n = 0u64;
    c.bench_function("store/heartbeat (100k users)", |b| {
        b.iter(|| {
            n = n % 100_000 + 1;
            store.heartbeat(user(n), online(), at(10));
        })
    });
}

fn lookup_50(c: &mut Criterion) {
    let store = filled(100_000);
    let ids: Vec<UserId> = (1..=50).map(|i| user(i * 1999 % 100_000 + 1)).collect();
    c.bench_function("store/get_many 50 (100k users)", |b| {
        b.iter(|| black_box(store.get_many(black_box(&ids), Mono(10))))
    });
}

fn sweep(c: &mut Criterion) {
    let store = filled(100_000);
    c.bench_function("store/sweep nothing due (100k users)", |b| {
        b.iter(|| black_box(store.sweep(at(1_000))))
    });
    c.bench_function("store/sweep 10k due", |b| {
        b.iter_batched(
            || filled(10_000),
            |store| black_box(store.sweep(at(120_000))),
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = heartbeat, lookup_50, sweep
}
criterion_main!(benches);
