//! What counting costs on the request path: recording one request (counter and latency
//! histogram), one heartbeat, and one rate-limit check.
//!
//! Run: `cargo bench --bench metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use presence_server::api::limits::RateLimits;
use presence_server::config::RateLimitSettings;
use presence_server::metrics::Metrics;
use presence_server::presence::UserId;

fn record(c: &mut Criterion) {
    let metrics = Metrics::new(&presence_server::api::routes::ROUTES);
    c.bench_function("metrics/request (counter + histogram)", |b| {
        b.iter(|| {
            let route = presence_server::api::routes::route_name(black_box("/v1/presence/users"));
            metrics.request(route, 200, black_box(0.000_3))
        })
    });
    c.bench_function("metrics/heartbeat counter", |b| {
        b.iter(|| metrics.heartbeat())
    });
    let limits = RateLimits::new(&RateLimitSettings {
        register_per_second: 1_000_000,
        register_burst: 1_000_000,
        ..RateLimitSettings::default()
    });
    let mut n = 0u64;
    c.bench_function("rate limit/register check (4096 users)", |b| {
        b.iter(|| {
            n = n % 4096 + 1;
            black_box(limits.register(UserId::new(n).unwrap()).is_ok())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = record
}
criterion_main!(benches);
