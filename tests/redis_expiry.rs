//! Expiry, retention and sweeps on Redis as watchers and operators see them: a heartbeat
//! after a passed deadline reaches watchers, a user forgotten by retention is sent as never
//! seen, a record this version cannot read never stops the sweeps, and a sweep in which
//! some claims fail still counts what the others did.
//!
//! Runs with `PRESENCE_TEST_BACKEND=redis` or `redis-cluster` (see `bash .ci/redis start`);
//! the Redis-only tests say they are skipped on memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::live::Sse;
use common::redis as r;
use common::*;
use presence_server::presence::model::AppReport;
use presence_server::presence::{Clock, Heartbeat, PlaceCatalog, Presence, Subscription, UserId};
use serde_json::{json, Value};

/// Longest wait for a change to reach a watcher.
const DELIVERY: Duration = Duration::from_secs(10);

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn present(location: &str) -> Heartbeat<'_> {
    let catalog = PlaceCatalog::new(&[]);
    Heartbeat::from_report(
        AppReport {
            location: Some(location),
            ..Default::default()
        },
        &catalog,
    )
}

/// `redis-cli` on the suite's Redis, following cluster redirections.
fn cli(args: &[&str]) -> String {
    let (_, port) = r::host_port(&r::url());
    let mut all = vec!["-c"];
    all.extend_from_slice(args);
    r::cli(port, &all)
}

/// The key of `n`'s record, of its shard's expiry set and of its shard's counters, under
/// `prefix` (see `src/presence/redis/keys.rs`).
fn record_key(prefix: &str, n: u64) -> String {
    format!("{prefix}{{{}}}{n}", n % 1024)
}

fn expiry_key(prefix: &str, n: u64) -> String {
    format!("{prefix}{{{}}}e", n % 1024)
}

fn counters_key(prefix: &str, n: u64) -> String {
    format!("{prefix}{{{}}}n", n % 1024)
}

/// The next entries `sub` is given; fails after [`DELIVERY`].
async fn next(sub: &Subscription) -> Vec<Value> {
    let batch = tokio::time::timeout(DELIVERY, sub.next_batch())
        .await
        .expect("a change within the delivery time")
        .expect("the hub is open");
    batch
        .entries
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect()
}

#[tokio::test]
async fn a_heartbeat_after_the_deadline_reaches_a_stream_that_was_sent_offline() {
    if r::skip_unless_redis("a heartbeat past its deadline on Redis") {
        return;
    }
    let app = spawn_app_with_clock(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        // No claim runs during the test: the record stays present past its deadline.
        s.presence.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    app.until_ready(DELIVERY).await;
    app.heartbeat(21, json!({"location": "Lobby"})).await;
    app.advance(Duration::from_secs(2));
    assert_eq!(app.presence_of(21).await["userPresenceType"], "Offline");

    let mut sse = Sse::open(app.addr, "userIds=21", &[], None).await;
    assert_eq!(sse.status, 200);
    let first = sse.event().await.entries();
    assert_eq!(first[0]["userPresenceType"], "Offline", "{first:?}");

    // The same location again: the record's type and fields are unchanged, but it read as
    // Offline, so this is a change.
    app.heartbeat(21, json!({"location": "Lobby"})).await;
    let entries = sse.event().await.entries();
    assert_eq!(entries[0]["userPresenceType"], "Online", "{entries:?}");
    assert_eq!(entries[0]["lastLocation"], "Lobby");
    assert_eq!(entries, vec![app.presence_of(21).await]);
}

#[tokio::test]
async fn a_watched_user_forgotten_by_retention_is_sent_as_never_seen() {
    if r::skip_unless_redis("retention by Redis key expiry") {
        return;
    }
    let mut settings = test_settings();
    settings.presence.heartbeat_ttl = Duration::from_secs(1);
    settings.presence.offline_retention = Some(Duration::from_secs(2));
    settings.validate().unwrap();
    let a = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    // Users of one shard, so that one shard channel serves them all on a cluster.
    r::wait_subscribed(&a, &b, 2050).await;

    // Watched while it goes Offline: the feed hears of it.
    let mut heard = b.hub().subscribe();
    heard.add(&[user(2)]);
    a.heartbeat(user(2), present("Website")).await.unwrap();
    assert_eq!(next(&heard).await[0]["userPresenceType"], "Online");
    a.heartbeat(user(2), Heartbeat::Disconnect).await.unwrap();
    let offline = next(&heard).await;
    assert_eq!(offline[0]["userPresenceType"], "Offline");
    assert_ne!(offline[0]["lastOnline"], NEVER_SEEN);

    // Offline before anyone watched: the stream's first read tells the backend.
    a.heartbeat(user(1026), present("Website")).await.unwrap();
    a.heartbeat(user(1026), Heartbeat::Disconnect)
        .await
        .unwrap();
    let mut read = b.hub().subscribe();
    read.add(&[user(1026)]);
    let first = b.get_many(&[user(1026)]).await.unwrap();
    assert!(first[0].last_online.is_some());
    for view in &first {
        b.watching(view);
    }

    for (sub, n) in [(&heard, 2), (&read, 1026)] {
        let entries = next(sub).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["userId"], n);
        assert_eq!(entries[0]["userPresenceType"], "Offline");
        assert_eq!(entries[0]["lastOnline"], NEVER_SEEN, "{entries:?}");
        let looked_up = b.get_many(&[user(n)]).await.unwrap();
        assert_eq!(looked_up[0].last_online, None);
    }
}

#[tokio::test]
async fn a_record_this_version_cannot_read_never_stops_the_sweeps() {
    if r::skip_unless_redis("unreadable records in Redis") {
        return;
    }
    let app = spawn_app_with(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    app.until_ready(DELIVERY).await;
    let prefix = app.settings.redis.key_prefix.clone();
    // 1031 shares a shard with 7: the claim that meets the bad record also holds a good one.
    let bad = 7;
    cli(&["SET", &record_key(&prefix, bad), "1|not|a record"]);
    cli(&["ZADD", &expiry_key(&prefix, bad), "0", &bad.to_string()]);
    for n in [1031, 8, 9] {
        app.heartbeat(n, json!({"location": "Lobby"})).await;
    }
    app.swept(3).await;
    for n in [1031, 8, 9] {
        assert_eq!(app.presence_of(n).await["userPresenceType"], "Offline");
    }
    // Sweeps go on.
    app.heartbeat(10, json!({"location": "Lobby"})).await;
    app.swept(4).await;
    // The bad record is left as it is, its expiry entry moved later (not retried each
    // sweep, not lost).
    assert_eq!(
        cli(&["GET", &record_key(&prefix, bad)]).trim(),
        "1|not|a record"
    );
    let score: f64 = cli(&["ZSCORE", &expiry_key(&prefix, bad), &bad.to_string()])
        .trim()
        .parse()
        .unwrap();
    assert!(score > 0.0, "{score}");
}

#[tokio::test]
async fn a_sweep_counts_the_claims_that_succeeded_when_others_fail() {
    if r::skip_unless_redis("claims failing in one shard") {
        return;
    }
    let app = spawn_app_with(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    app.until_ready(DELIVERY).await;
    let prefix = app.settings.redis.key_prefix.clone();
    for n in [11, 12, 13] {
        app.heartbeat(n, json!({"location": "Lobby"})).await;
    }
    // The counters of 11's shard become a string: its claim fails at HINCRBY, every time.
    cli(&["SET", &counters_key(&prefix, 11), "not a hash"]);
    app.swept(2).await;
    for n in [12, 13] {
        assert_eq!(app.presence_of(n).await["userPresenceType"], "Offline");
    }
}
