//! Live presence on Redis (CONTRACT section 8): a change made through one node, expiries
//! and forgotten users included, reaches the watchers on every node through Redis pub/sub;
//! a heartbeat that changes nothing but the deadline sends nothing; and after the
//! subscription drops, a watcher still ends with the latest entry.
//!
//! The tests on two nodes run on the suite's Redis (`PRESENCE_TEST_BACKEND=redis` or
//! `redis-cluster`, see `bash .ci/redis start`) and say they are skipped on memory. The test
//! that kills the subscription starts a server of its own when `redis-server` is installed
//! (whatever the backend), says it is skipped where it is not, and fails under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis::{self as r, OwnServer};
use common::{crossroads, encoder, test_settings, NEVER_SEEN};
use presence_server::api::json::presence_entry;
use presence_server::config::Backend;
use presence_server::presence::model::AppReport;
use presence_server::presence::{Clock, Heartbeat, PlaceCatalog, Presence, Subscription, UserId};
use presence_server::Settings;
use serde_json::Value;

/// Longest wait for a change to reach the other node.
const DELIVERY: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn present<'a>(location: &'a str, place: Option<i64>) -> Heartbeat<'a> {
    let catalog = PlaceCatalog::new(&[crossroads()]);
    Heartbeat::from_report(
        AppReport {
            location: Some(location),
            place_id: place,
            ..Default::default()
        },
        &catalog,
    )
}

/// The next batch of `sub`, as raw entries; fails after [`DELIVERY`].
async fn next_raw(sub: &Subscription) -> Vec<Vec<u8>> {
    let batch = tokio::time::timeout(DELIVERY, sub.next_batch())
        .await
        .expect("a change within the delivery time")
        .expect("the hub is open");
    batch.entries.iter().map(|e| e.to_vec()).collect()
}

/// The next batch of `sub`, parsed.
async fn next(sub: &Subscription) -> Vec<Value> {
    next_raw(sub)
        .await
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect()
}

/// Asserts that nothing arrives for [`QUIET`].
async fn quiet(sub: &Subscription) {
    if let Ok(batch) = tokio::time::timeout(QUIET, sub.next_batch()).await {
        let entries: Vec<String> = batch
            .map(|b| b.entries)
            .unwrap_or_default()
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect();
        panic!("nothing expected, got {entries:?}");
    }
}

/// The entry `node` writes for `n` on a lookup.
async fn looked_up(node: &Presence, settings: &Settings, n: u64) -> Vec<u8> {
    let view = node.get_many(&[user(n)]).await.unwrap().remove(0);
    presence_entry(&view, settings.api.presence_type)
}

#[tokio::test]
async fn changes_through_one_node_reach_a_watcher_on_the_other() {
    if r::skip_unless_redis("live presence across nodes") {
        return;
    }
    let mut settings = test_settings();
    settings.places = vec![crossroads()];
    settings.presence.heartbeat_ttl = Duration::from_secs(1);
    settings.validate().unwrap();
    // Both nodes on one mock clock, which the backend takes as Redis time.
    let (clock, mock) = Clock::mock();
    let a = Presence::from_settings(&settings, clock.clone(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    // Users of one shard (id modulo 1024), so that one shard channel serves them all on a
    // cluster: 2049 warms it up.
    let (one, two) = (1, 1025);
    r::wait_subscribed(&a, &b, 2049).await;
    let mut sub = b.hub().subscribe();
    sub.add(&[user(one), user(two)]);

    // A heartbeat through a: the entry is the one a lookup writes.
    a.heartbeat(user(one), present("Website", None))
        .await
        .unwrap();
    let raw = next_raw(&sub).await;
    assert_eq!(raw, vec![looked_up(&b, &settings, one).await]);
    let entry: Value = serde_json::from_slice(&raw[0]).unwrap();
    assert_eq!(entry["userPresenceType"], "Online", "{entry}");
    assert_eq!(entry["lastLocation"], "Website");
    assert_eq!(entry["userId"], one);

    // The same heartbeat again, later: only the deadline and lastOnline move.
    mock.increment(Duration::from_millis(100));
    a.heartbeat(user(one), present("Website", None))
        .await
        .unwrap();
    quiet(&sub).await;

    // A new location, then a game.
    a.heartbeat(user(one), present("Phone", None))
        .await
        .unwrap();
    let entries = next(&sub).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["userPresenceType"], "Online");
    assert_eq!(entries[0]["lastLocation"], "Phone");
    b.heartbeat(user(one), present("ignored", Some(1818)))
        .await
        .unwrap();
    let entries = next(&sub).await;
    assert_eq!(entries[0]["userPresenceType"], "InGame");
    assert_eq!(entries[0]["lastLocation"], "Classic: Crossroads");
    assert_eq!(entries[0]["placeId"], 1818);

    // A disconnect is Offline with the last location; a second one changes nothing.
    a.heartbeat(user(one), Heartbeat::Disconnect).await.unwrap();
    let raw = next_raw(&sub).await;
    assert_eq!(raw, vec![looked_up(&b, &settings, one).await]);
    let entry: Value = serde_json::from_slice(&raw[0]).unwrap();
    assert_eq!(entry["userPresenceType"], "Offline");
    assert_eq!(entry["lastLocation"], "Classic: Crossroads");
    a.heartbeat(user(one), Heartbeat::Disconnect).await.unwrap();
    quiet(&sub).await;

    // An expiry claimed by a's sweep.
    a.heartbeat(user(two), present("Xbox", None)).await.unwrap();
    assert_eq!(next(&sub).await[0]["userPresenceType"], "Online");
    mock.increment(Duration::from_secs(1));
    assert_eq!(a.sweep().await.unwrap().expired, 2);
    let raw = next_raw(&sub).await;
    assert_eq!(raw, vec![looked_up(&b, &settings, two).await]);
    let entry: Value = serde_json::from_slice(&raw[0]).unwrap();
    assert_eq!(entry["userPresenceType"], "Offline");
    assert_eq!(entry["lastLocation"], "Xbox");
    assert_eq!(entry["userId"], two);
    quiet(&sub).await;
}

#[tokio::test]
async fn a_user_forgotten_by_a_claim_reads_as_never_seen_on_the_other_node() {
    if r::skip_unless_redis("live presence across nodes") {
        return;
    }
    let mut settings = test_settings();
    settings.presence.heartbeat_ttl = Duration::from_secs(1);
    settings.presence.offline_retention = Some(Duration::from_secs(1));
    settings.validate().unwrap();
    let (clock, mock) = Clock::mock();
    let a = Presence::from_settings(&settings, clock.clone(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    r::wait_subscribed(&a, &b, 1031).await;
    let mut sub = b.hub().subscribe();
    sub.add(&[user(7)]);
    a.heartbeat(user(7), present("Website", None))
        .await
        .unwrap();
    assert_eq!(next(&sub).await[0]["userPresenceType"], "Online");
    // Claimed after its retention has passed already: deleted at once.
    mock.increment(Duration::from_secs(3));
    a.sweep().await.unwrap();
    let entries = next(&sub).await;
    assert_eq!(entries[0]["userPresenceType"], "Offline", "{entries:?}");
    assert_eq!(entries[0]["lastOnline"], NEVER_SEEN);
    assert_eq!(
        serde_json::to_vec(&entries[0]).unwrap(),
        serde_json::to_vec(
            &serde_json::from_slice::<Value>(&looked_up(&b, &settings, 7).await).unwrap()
        )
        .unwrap()
    );
}

#[tokio::test]
async fn a_watcher_catches_up_after_the_subscription_drops() {
    if !r::installed_or_skip(std::path::Path::new("redis-server")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A server of this test's own: killing its subscriptions disturbs no other test.
    let server = OwnServer::standalone(dir.path());
    let mut settings = test_settings();
    settings.store.backend = Backend::Redis;
    settings.redis.url = server.url();
    settings.redis.cluster = false;
    settings.redis.key_prefix = r::unique_prefix();
    settings.redis.timeout = Duration::from_secs(2);
    settings.validate().unwrap();
    let a = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    r::wait_subscribed(&a, &b, 99).await;
    let mut sub = b.hub().subscribe();
    sub.add(&[user(1)]);
    a.heartbeat(user(1), present("Before", None)).await.unwrap();
    assert_eq!(next(&sub).await[0]["lastLocation"], "Before");

    // The subscriptions of both nodes are killed; the change right after is published
    // while nobody listens.
    let killed = r::cli(server.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.trim().parse::<u32>().unwrap() >= 1, "{killed}");
    a.heartbeat(user(1), present("During", None)).await.unwrap();
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let mut latest = Value::Null;
    while latest["lastLocation"] != "During" {
        let batch = tokio::time::timeout_at(deadline, sub.next_batch())
            .await
            .unwrap_or_else(|_| panic!("still {latest} after {DELIVERY:?}"))
            .unwrap();
        latest = serde_json::from_slice(batch.entries.last().unwrap()).unwrap();
    }

    // Subscribed again: later changes arrive as they happen.
    a.heartbeat(user(1), present("After", None)).await.unwrap();
    assert_eq!(next(&sub).await[0]["lastLocation"], "After");
}

#[tokio::test]
async fn ready_is_503_while_the_change_feed_is_down_and_200_once_it_is_back() {
    if !r::installed_or_skip(std::path::Path::new("redis-server")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A server of this test's own: its channel permissions are taken away.
    let server = OwnServer::standalone(dir.path());
    let url = server.url();
    let app = common::spawn_app_with(|s| {
        s.store.backend = Backend::Redis;
        s.redis.url = url;
        s.redis.cluster = false;
        s.redis.key_prefix = r::unique_prefix();
        s.redis.timeout = Duration::from_secs(2);
    })
    .await;
    app.until_ready(DELIVERY).await;
    let ready = || async {
        let res = app.client.get(app.url("/ready")).send().await.unwrap();
        res.status().as_u16()
    };

    // Subscribing is refused (and the subscription in place is closed) while every other
    // command, PING included, still works: the feed alone is down.
    r::cli(server.port, &["ACL", "SETUSER", "default", "resetchannels"]);
    assert_eq!(r::cli(server.port, &["PING"]).trim(), "PONG");
    let started = std::time::Instant::now();
    common::eventually(Duration::from_secs(20), || async {
        (ready().await == 503).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "503 only after the grace: {:?}",
        started.elapsed()
    );

    r::cli(server.port, &["ACL", "SETUSER", "default", "allchannels"]);
    app.until_ready(Duration::from_secs(20)).await;
}
