//! The Redis backend against a real `redis-server` started by each test on a free loopback
//! port: shared presence between nodes, exactly-once expiry, retention by key expiry, and
//! what happens when Redis goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{encoder, eventually, spawn_app_with, test_settings};
use presence_server::config::Backend;
use presence_server::presence::model::{AppReport, PresenceType};
use presence_server::presence::{Clock, Heartbeat, PlaceCatalog, Presence, PresenceError, UserId};
use presence_server::Settings;
use serde_json::json;

/// A throwaway `redis-server`, killed on drop.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port; `None` (the test then prints that it is skipped) where
    /// `redis-server` is not installed, except under CI, which installs it (`.ci/redis`):
    /// there a missing server fails the test.
    fn start() -> Option<Self> {
        if !common::redis::installed_or_skip(&redis_server()) {
            return None;
        }
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut server = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.run();
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli` on this server.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_server() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn on_redis(redis: &RedisServer, change: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings();
    settings.store.backend = Backend::Redis;
    settings.redis.url = redis.url();
    // A server of this test's own, standalone whatever backend the suite runs on.
    settings.redis.cluster = false;
    // Roomy for a busy machine; the tests about the timeout set their own.
    settings.redis.timeout = Duration::from_secs(2);
    change(&mut settings);
    settings.validate().unwrap();
    settings
}

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn present<'a>(location: &'a str, place: Option<i64>) -> Heartbeat<'a> {
    let catalog = PlaceCatalog::new(&[common::crossroads()]);
    Heartbeat::from_report(
        AppReport {
            location: Some(location),
            place_id: place,
            ..Default::default()
        },
        &catalog,
    )
}

async fn one(presence: &Presence, n: u64) -> presence_server::presence::PresenceView<'static> {
    presence.get_many(&[user(n)]).await.unwrap().remove(0)
}

#[tokio::test]
async fn a_heartbeat_through_one_node_is_seen_by_every_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let settings = on_redis(&redis, |_| {});
    let a = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();

    a.heartbeat(user(1), present("ignored", Some(1818)))
        .await
        .unwrap();
    a.heartbeat(user(2), present("Xbox", None)).await.unwrap();
    let views = b.get_many(&[user(2), user(3), user(1)]).await.unwrap();
    assert_eq!(views[0].kind, PresenceType::Online);
    assert_eq!(views[0].last_location, "Xbox");
    assert_eq!(
        views[1],
        presence_server::presence::PresenceView::never_seen(user(3))
    );
    assert_eq!(views[2].kind, PresenceType::InGame);
    assert_eq!(views[2].last_location, "Classic: Crossroads");
    assert_eq!(views[2].place.unwrap().universe_id.unwrap().get(), 13058);

    b.heartbeat(user(1), Heartbeat::Disconnect).await.unwrap();
    let left = one(&a, 1).await;
    assert_eq!(left.kind, PresenceType::Offline);
    assert_eq!(left.last_location, "Classic: Crossroads");
    assert_eq!(left.place, None);
    assert!(left.last_online.unwrap() >= views[2].last_online.unwrap());

    let counts = a.counts().await.unwrap();
    assert_eq!(counts.sessions.map(|(_, n)| n), [1, 0, 0]);
    assert_eq!(counts.tracked, 2);
    a.check_ready().await.unwrap();
    // A lookup writes nothing: the unknown user 3 has no key.
    assert_eq!(
        redis.cli(&["--scan", "--pattern", "presence:*3"]).trim(),
        ""
    );
}

#[tokio::test]
async fn an_expiry_is_claimed_once_whichever_nodes_sweep() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let settings = on_redis(&redis, |s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1)
    });
    // Both nodes run on one mock clock, which the backend then takes as Redis time.
    let (clock, mock) = Clock::mock();
    let a = Presence::from_settings(&settings, clock.clone(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    let users: Vec<u64> = (1..=3000).collect();
    for &n in &users {
        a.heartbeat(user(n), present("Website", None))
            .await
            .unwrap();
    }
    // Exact at read time, before any sweep.
    mock.increment(Duration::from_millis(999));
    assert_eq!(one(&b, 7).await.kind, PresenceType::Online);
    mock.increment(Duration::from_millis(1));
    assert_eq!(one(&b, 7).await.kind, PresenceType::Offline);
    // User 5 heartbeats just in time for a new deadline: not expired.
    a.heartbeat(user(5), present("Phone", None)).await.unwrap();
    let (ra, rb) = tokio::join!(a.sweep(), b.sweep());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.expired + rb.expired, 2999, "{ra:?} {rb:?}");
    assert_eq!(a.sweep().await.unwrap().expired, 0);
    let counts = b.counts().await.unwrap();
    assert_eq!(counts.sessions.map(|(_, n)| n), [1, 0, 0]);
    let v = one(&a, 9).await;
    assert_eq!(
        (v.kind, v.last_location.as_ref()),
        (PresenceType::Offline, "Website")
    );
    assert_eq!(one(&a, 5).await.kind, PresenceType::Online);
    mock.increment(Duration::from_secs(1));
    assert_eq!(b.sweep().await.unwrap().expired, 1);
    assert_eq!(
        a.counts().await.unwrap().sessions.map(|(_, n)| n),
        [0, 0, 0]
    );
}

#[tokio::test]
async fn offline_users_are_forgotten_after_the_retention_by_key_expiry() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let settings = on_redis(&redis, |s| {
        s.presence.offline_retention = Some(Duration::from_millis(300));
    });
    let node = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    node.heartbeat(user(1), present("Home", None))
        .await
        .unwrap();
    node.heartbeat(user(1), Heartbeat::Disconnect)
        .await
        .unwrap();
    node.heartbeat(user(2), present("Home", None))
        .await
        .unwrap();
    assert_eq!(one(&node, 1).await.last_location, "Home");
    eventually(Duration::from_secs(5), || async {
        (one(&node, 1).await.last_online.is_none()).then_some(())
    })
    .await;
    // A present user has no expiry on its record.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(one(&node, 2).await.kind, PresenceType::Online);
}

#[tokio::test]
async fn a_stopped_redis_is_unavailable_within_the_timeout_and_recovers_without_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let settings = on_redis(&redis, |s| s.redis.timeout = Duration::from_millis(300));
    let node = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    // The first call connects, which on a busy machine may take longer than the timeout.
    eventually(Duration::from_secs(10), || async {
        node.heartbeat(user(1), present("Home", None)).await.ok()
    })
    .await;

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let result = node.heartbeat(user(1), present("Away", None)).await;
        assert_eq!(result, Err(PresenceError::Unavailable));
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_eq!(
            node.get_many(&[user(1)]).await.err(),
            Some(PresenceError::Unavailable)
        );
        assert_eq!(node.check_ready().await, Err(PresenceError::Unavailable));
        assert!(started.elapsed() < Duration::from_millis(1600));
    }

    redis.run();
    eventually(Duration::from_secs(10), || async {
        node.check_ready().await.ok()
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        node.heartbeat(user(1), present("Back", None)).await.ok()
    })
    .await;
    assert_eq!(one(&node, 1).await.last_location, "Back");
}

#[tokio::test]
async fn a_node_that_starts_before_redis_serves_once_redis_is_up() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.stop();
    let settings = on_redis(&redis, |s| s.redis.timeout = Duration::from_millis(300));
    let node = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
    assert_eq!(node.check_ready().await, Err(PresenceError::Unavailable));
    redis.run();
    eventually(Duration::from_secs(10), || async {
        node.heartbeat(user(1), present("Home", None)).await.ok()
    })
    .await;
}

#[tokio::test]
async fn the_http_api_answers_503_with_retry_after_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.store.backend = Backend::Redis;
        s.redis.url = redis.url();
        // This test's own server, standalone whatever backend the suite runs on.
        s.redis.cluster = false;
        s.redis.timeout = Duration::from_millis(300);
    })
    .await;
    // The node connects on its first call: on a busy machine that first connection may
    // itself take longer than the timeout, so the test starts once the node is ready.
    app.until_ready(Duration::from_secs(10)).await;
    app.heartbeat(42, json!({"location": "Home"})).await;
    let seen = app.presence_of(42).await;
    assert_eq!(seen["userPresenceType"], "Online");
    assert!(app
        .metrics()
        .await
        .contains("presence_users{type=\"Online\"} 1"));

    redis.stop();
    let res = app
        .client
        .post(app.url(common::REGISTER))
        .bearer_auth(app.token(42))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        common::error_of(res).await,
        (503, 0, "ServiceUnavailable".to_owned())
    );
    let res = app
        .post_json(common::USERS, &json!({"userIds": [42]}))
        .await;
    assert_eq!(res.status(), 503);
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    redis.run();
    app.until_ready(Duration::from_secs(10)).await;
    // Each HTTP worker's own connection comes back, and the heartbeat's script, gone with
    // the Redis that was killed, is loaded again on its first call.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = app
            .client
            .post(app.url(common::REGISTER))
            .bearer_auth(app.token(42))
            .json(&json!({"location": "Back"}))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats still refused after Redis came back: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = app.presence_of(42).await;
    assert_eq!(seen["userPresenceType"], "Online");
    assert_eq!(seen["lastLocation"], "Back");
    app.stop().await;
}

/// Redis memory per Offline user: `INFO memory` before and after 100k disconnects.
/// Run with `cargo test --test redis_backend -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check: prints Redis memory per user"]
async fn redis_memory_per_user() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let retentions = [None, Some(Duration::from_secs(30 * 86_400))];
    // A built-in location (an Offline record is then one integer) and a client's own.
    for (retention, location) in retentions
        .into_iter()
        .flat_map(|r| [(r, "Website"), (r, "Lobby 12")])
    {
        redis.cli(&["FLUSHALL"]);
        let settings = on_redis(&redis, |s| {
            s.redis.timeout = Duration::from_secs(5);
            s.presence.offline_retention = retention;
        });
        let node = Presence::from_settings(&settings, Clock::system(), encoder(&settings)).unwrap();
        let used = || -> i64 {
            let info = redis.cli(&["INFO", "memory"]);
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        const USERS: u64 = 100_000;
        // Every shard's keys exist first, so that the figure is the users' own cost.
        for n in 1..=1024 {
            node.heartbeat(user(n), present(location, None))
                .await
                .unwrap();
            node.heartbeat(user(n), Heartbeat::Disconnect)
                .await
                .unwrap();
        }
        let base = used();
        for n in 10_000..10_000 + USERS {
            node.heartbeat(user(n), present(location, None))
                .await
                .unwrap();
        }
        let present_cost = (used() - base) as f64 / USERS as f64;
        for n in 10_000..10_000 + USERS {
            node.heartbeat(user(n), Heartbeat::Disconnect)
                .await
                .unwrap();
        }
        let offline_cost = (used() - base) as f64 / USERS as f64;
        let with = match retention {
            None => format!("no retention, at {location:?}"),
            Some(_) => format!("offline_retention = 30d, at {location:?}"),
        };
        println!("Redis memory per present user ({with}): {present_cost:.1} bytes");
        println!("Redis memory per Offline user ({with}): {offline_cost:.1} bytes");
    }
}

/// On a Redis Cluster named by `PRESENCE_TEST_REDIS_CLUSTER` (any one node's URL; skipped
/// when unset): heartbeats and claims land on their shard's node, and a lookup spanning
/// many slots is answered whole, in order.
#[tokio::test]
async fn on_a_cluster_every_call_is_routed_by_slot() {
    let Ok(url) = std::env::var("PRESENCE_TEST_REDIS_CLUSTER") else {
        return;
    };
    let mut settings = test_settings();
    settings.store.backend = Backend::Redis;
    settings.redis.url = url;
    settings.redis.cluster = true;
    settings.redis.key_prefix = format!("cluster-test-{}:", std::process::id());
    settings.presence.heartbeat_ttl = Duration::from_secs(1);
    let (clock, mock) = Clock::mock();
    let a = Presence::from_settings(&settings, clock.clone(), encoder(&settings)).unwrap();
    let b = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    a.check_ready().await.unwrap();
    for n in 1..=2000 {
        a.heartbeat(user(n), present("Website", None))
            .await
            .unwrap();
    }
    let ids: Vec<UserId> = (0..50)
        .map(|i| user(1 + i * 37))
        .chain([user(999_999)])
        .collect();
    let views = b.get_many(&ids).await.unwrap();
    assert_eq!(views.len(), ids.len());
    for (view, id) in views.iter().zip(&ids).take(50) {
        assert_eq!((view.user_id, view.kind), (*id, PresenceType::Online));
    }
    assert_eq!(views[50].last_online, None);
    assert_eq!(b.counts().await.unwrap().sessions[0].1, 2000);
    mock.increment(Duration::from_secs(1));
    let (ra, rb) = tokio::join!(a.sweep(), b.sweep());
    assert_eq!(ra.unwrap().expired + rb.unwrap().expired, 2000);
    assert_eq!(a.counts().await.unwrap().sessions[0].1, 0);
    assert_eq!(one(&b, 77).await.kind, PresenceType::Offline);
}

/// An Offline user at a built-in location is stored as one integer (Redis keeps it in the
/// key's object, no string allocation); any other location keeps the string record. Both
/// read back exactly, through disconnects and expiries.
#[tokio::test]
async fn offline_records_at_built_in_locations_are_integers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let settings = on_redis(&redis, |s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        s.presence.offline_retention = Some(Duration::from_secs(30 * 86_400));
    });
    let (clock, mock) = Clock::mock();
    let node = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    let prefix = settings.redis.key_prefix.clone();
    let key = |n: u64| format!("{prefix}{{{}}}{n}", n % 1024);
    let encoding = |n: u64| {
        redis
            .cli(&["OBJECT", "ENCODING", &key(n)])
            .trim()
            .to_owned()
    };

    node.heartbeat(user(1), present("Website", None))
        .await
        .unwrap();
    node.heartbeat(user(2), present("Lobby", None))
        .await
        .unwrap();
    node.heartbeat(user(3), present("", Some(4242)))
        .await
        .unwrap();
    let at = one(&node, 1).await.last_online.unwrap().0;
    node.heartbeat(user(1), Heartbeat::Disconnect)
        .await
        .unwrap();
    node.heartbeat(user(2), Heartbeat::Disconnect)
        .await
        .unwrap();
    assert_eq!(encoding(1), "int");
    assert_eq!(
        redis.cli(&["GET", &key(1)]).trim(),
        (at * 4 + 1).to_string(),
        "lastOnline * 4 + the code of Website"
    );
    assert_eq!(encoding(2), "embstr");
    let (website, lobby) = (one(&node, 1).await, one(&node, 2).await);
    assert_eq!(
        (website.kind, website.last_location.as_ref()),
        (PresenceType::Offline, "Website")
    );
    assert_eq!(website.last_online.unwrap().0, at);
    assert_eq!(lobby.last_location, "Lobby");
    // A second disconnect reads the packed location back and keeps it.
    mock.increment(Duration::from_millis(5));
    node.heartbeat(user(1), Heartbeat::Disconnect)
        .await
        .unwrap();
    let again = one(&node, 1).await;
    assert_eq!(again.last_location, "Website");
    assert_eq!(again.last_online.unwrap().0, at + 5);
    assert_eq!(encoding(1), "int");
    // Retention still applies to the packed record.
    let ttl: i64 = redis.cli(&["PTTL", &key(1)]).trim().parse().unwrap();
    assert!(ttl > 29 * 86_400_000, "{ttl}");

    // An expiry claimed by a sweep packs too: InGame at an unknown place without a
    // location is at "Playing".
    assert_eq!(one(&node, 3).await.last_location, "Playing");
    mock.increment(Duration::from_secs(2));
    node.sweep().await.unwrap();
    assert_eq!(encoding(3), "int");
    let expired = one(&node, 3).await;
    assert_eq!(
        (expired.kind, expired.last_location.as_ref(), expired.place),
        (PresenceType::Offline, "Playing", None)
    );
    // Coming back online from a packed record.
    node.heartbeat(user(1), present("Website", None))
        .await
        .unwrap();
    let back = one(&node, 1).await;
    assert_eq!(
        (back.kind, back.last_location.as_ref()),
        (PresenceType::Online, "Website")
    );
    let counts = node.counts().await.unwrap();
    assert_eq!(counts.sessions.map(|(_, n)| n), [1, 0, 0]);
}
