//! The Redis backend across nodes (CONTRACT section 7): nodes sharing one Redis agree,
//! expiries are processed once, skewed node clocks do not matter, Redis going away or
//! stalling is 503 and then recovers, a cluster master failover, retention by key expiry.
//!
//! Runs with `PRESENCE_TEST_BACKEND=redis` or `redis-cluster` (see `bash .ci/redis start`);
//! on the memory backend every test here says it is skipped. The tests that stop, pause or
//! kill Redis start servers of their own on free ports, so the shared ones are never
//! disturbed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use common::process::{command_of, config_file, start, Running, BASE, BIN};
use common::redis::{self as r, OwnCluster, OwnServer, TestBackend};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use serde_json::{json, Value};

/// The value of a series in a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A second app on the same Redis and key prefix as `first`: another node of one
/// deployment.
async fn another_node(
    first: &TestApp,
    change: impl FnOnce(&mut presence_server::Settings),
) -> TestApp {
    let prefix = first.settings.redis.key_prefix.clone();
    spawn_app_with(|s| {
        change(s);
        s.redis.key_prefix = prefix;
    })
    .await
}

#[tokio::test]
async fn a_heartbeat_on_one_node_is_seen_by_a_lookup_on_the_other() {
    if r::skip_unless_redis("two nodes sharing one Redis") {
        return;
    }
    let a = spawn_app_with(|s| s.places = vec![crossroads()]).await;
    let b = another_node(&a, |s| s.places = vec![crossroads()]).await;

    a.heartbeat(1, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let on_a = a.presence_of(1).await;
    assert_eq!(on_a["userPresenceType"], "InGame", "{on_a}");
    assert_eq!(b.presence_of(1).await, on_a);

    b.heartbeat(2, json!({"location": "Website"})).await;
    b.heartbeat(1, json!({"disconnect": true})).await;
    let on_b = b.lookup(&[1, 2, 3]).await;
    assert_eq!(on_b[0]["userPresenceType"], "Offline");
    assert_eq!(on_b[0]["lastLocation"], "Classic: Crossroads");
    assert_eq!(on_b[1]["userPresenceType"], "Online");
    assert_eq!(on_b[2]["lastOnline"], NEVER_SEEN);
    assert_eq!(a.lookup(&[1, 2, 3]).await, on_b);

    // presence_users counts the deployment on every node: one Online, one Offline.
    for node in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            let text = node.metrics().await;
            (metric(&text, r#"presence_users{type="Online"}"#) == 1.0
                && metric(&text, r#"presence_users{type="InGame"}"#) == 0.0)
                .then_some(())
        })
        .await;
    }

    // Another deployment (another key prefix) on the same Redis sees none of it.
    let other = spawn_app().await;
    assert_eq!(other.presence_of(1).await["lastOnline"], NEVER_SEEN);
}

#[tokio::test]
async fn a_game_server_reported_through_one_node_is_live_on_the_other() {
    use common::game::{self as g, SERVER_A};
    if r::skip_unless_redis("two nodes sharing one Redis") {
        return;
    }
    let a = spawn_app_with(g::game_settings).await;
    let b = another_node(&a, g::game_settings).await;
    a.until_ready(Duration::from_secs(10)).await;
    b.until_ready(Duration::from_secs(10)).await;
    let mut sse = common::live::Sse::open(b.addr, "userIds=1,2,3", &[], None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    sse.event().await;

    // A report through a: every node shows it, and b's watchers are told.
    a.report(SERVER_A, 1818, &[1, 2]).await;
    let on_a = a.lookup(&[1, 2, 3]).await;
    assert_eq!(
        g::fields(&on_a[0]),
        g::in_game(1, SERVER_A, 1818, None),
        "{on_a:?}"
    );
    assert_eq!(b.lookup(&[1, 2, 3]).await, on_a);
    let want = [
        g::in_game(1, SERVER_A, 1818, None),
        g::in_game(2, SERVER_A, 1818, None),
    ];
    let mut seen = std::collections::HashMap::new();
    while [1, 2]
        .iter()
        .zip(&want)
        .any(|(u, w)| seen.get(u) != Some(w))
    {
        let event = sse.event().await;
        for e in event.entries() {
            seen.insert(e["userId"].as_u64().unwrap(), g::fields(&e));
        }
    }

    // The server is live on b: players join and leave through it, and it is stopped there.
    b.join_leave(SERVER_A, &[3], &[1]).await;
    let on_a = a.lookup(&[1, 3]).await;
    assert_eq!(on_a[0]["userPresenceType"], "Offline", "{on_a:?}");
    assert_eq!(
        g::fields(&on_a[1]),
        g::in_game(3, SERVER_A, 1818, None),
        "{on_a:?}"
    );
    for node in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            (node.gauge("presence_game_servers").await == 1.0).then_some(())
        })
        .await;
    }
    b.stop_server(SERVER_A).await;
    for p in a.lookup(&[1, 2, 3]).await {
        assert_eq!(p["userPresenceType"], "Offline", "{p}");
        assert_eq!(p["lastLocation"], "Classic: Crossroads", "{p}");
    }
    let res = a.post_players(SERVER_A, &json!({"joined": [4]})).await;
    assert_eq!(error_of(res).await.0, 404);
    for node in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            (node.gauge("presence_game_servers").await == 0.0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn each_expiry_is_processed_once_across_nodes() {
    if r::skip_unless_redis("expiry across nodes") {
        return;
    }
    let fast = |s: &mut presence_server::Settings| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        s.presence.sweep_interval = Duration::from_millis(100);
    };
    let a = spawn_app_with(fast).await;
    let b = another_node(&a, fast).await;
    let users: Vec<u64> = (1..=40).collect();
    for &user in &users {
        let node = if user % 2 == 0 { &a } else { &b };
        node.heartbeat(user, json!({"location": "Website"})).await;
    }
    // One deployment: each node knows every user, whichever node it was sent to.
    for node in [&a, &b] {
        for p in node.lookup(&users).await {
            assert_ne!(p["lastOnline"], NEVER_SEEN, "{p}");
        }
    }

    let expired = |a_text: &str, b_text: &str| {
        metric(a_text, "presence_expired_total") + metric(b_text, "presence_expired_total")
    };
    eventually(Duration::from_secs(20), || async {
        let (ta, tb) = (a.metrics().await, b.metrics().await);
        let sum = expired(&ta, &tb);
        assert!(sum <= 40.0, "{sum} expiries processed for 40 users");
        (sum == 40.0).then_some(())
    })
    .await;
    for p in a.lookup(&users).await {
        assert_eq!(p["userPresenceType"], "Offline", "{p}");
    }

    // Both nodes sweep a few more times: nothing is processed a second time.
    let sweeps = |text: &str| metric(text, "presence_sweep_duration_seconds_count");
    let before = (sweeps(&a.metrics().await), sweeps(&b.metrics().await));
    eventually(Duration::from_secs(10), || async {
        (sweeps(&a.metrics().await) >= before.0 + 3.0
            && sweeps(&b.metrics().await) >= before.1 + 3.0)
            .then_some(())
    })
    .await;
    assert_eq!(expired(&a.metrics().await, &b.metrics().await), 40.0);
}

/// The config of the skewed-clock test's nodes.
fn skew_config() -> tempfile::NamedTempFile {
    config_file(&format!(
        "{BASE}[auth]\njwt_secret = \"{SECRET}\"\n[presence]\nheartbeat_ttl = \"2s\"\nsweep_interval = \"100ms\"\n[rate_limit]\nregister_per_second = 0\nlookup_per_second = 0\n"
    ))
}

/// The binary, its clock moved by `offset` (libfaketime: `-5m`, `+5m`), or not moved.
fn node(config: &std::path::Path, offset: Option<&str>, prefix: &str) -> Running {
    let mut launcher = Command::new(BIN);
    if let Some(offset) = offset {
        // libfaketime preloaded into the binary itself, as the `faketime` program does, but
        // without that program in between: it stays the parent and a test's kill would stop
        // it and leave the server running. Only the wall clock moves: a monotonic clock
        // shifted back could go below zero.
        launcher
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let mut cmd = command_of(launcher, config);
    cmd.env("PRESENCE__REDIS__KEY_PREFIX", prefix);
    start(cmd)
}

/// Where Debian's `libfaketime` package puts the library (`.ci/redis` installs it).
fn libfaketime() -> &'static str {
    const PLACES: [&str; 4] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    PLACES
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("libfaketime is installed (apt-get install faketime)")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn post(addr: &str, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

async fn entries(addr: &str, ids: &[u64]) -> Vec<Value> {
    let res = post(addr, USERS, None, &json!({ "userIds": ids })).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["userPresences"].as_array().unwrap().clone()
}

fn seconds_from_now(last_online: &Value) -> i64 {
    let at: DateTime<Utc> = last_online.as_str().unwrap().parse().unwrap();
    (at - Utc::now()).num_seconds()
}

#[tokio::test]
async fn nodes_with_clocks_minutes_apart_agree_on_every_answer() {
    if r::skip_unless_redis("skewed node clocks (libfaketime)") {
        return;
    }
    let cfg = skew_config();
    let prefix = r::unique_prefix();
    let exact = node(cfg.path(), None, &prefix);
    let behind = node(cfg.path(), Some("-5m"), &prefix);
    let ahead = node(cfg.path(), Some("+5m"), &prefix);
    let nodes = [&exact.addr, &behind.addr, &ahead.addr];

    // The skew is real: each skewed node judges credentials by its own clock.
    let now = unix_now();
    let short = jwt(&json!({"sub": "9", "exp": now + 120}));
    let recent = jwt(&json!({"sub": "9", "exp": now + 3600, "nbf": now - 120}));
    let hb = json!({"location": "Website"});
    assert_eq!(
        post(&exact.addr, REGISTER, Some(&short), &hb)
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&ahead.addr, REGISTER, Some(&short), &hb)
            .await
            .status(),
        401,
        "+5m node"
    );
    assert_eq!(
        post(&exact.addr, REGISTER, Some(&recent), &hb)
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&behind.addr, REGISTER, Some(&recent), &hb)
            .await
            .status(),
        401,
        "-5m node"
    );

    let auth = Authenticator::new(SECRET);
    let token = |user: u64| {
        auth.mint(UserId::new(user).unwrap(), Duration::from_secs(3600))
            .unwrap()
    };
    let same_everywhere = |ids: &'static [u64]| async move {
        let first = entries(nodes[0], ids).await;
        for addr in &nodes[1..] {
            assert_eq!(entries(addr, ids).await, first, "node {addr}");
        }
        first
    };

    // A heartbeat on the node 5 minutes behind: present everywhere, at Redis's time.
    assert_eq!(
        post(&behind.addr, REGISTER, Some(&token(1)), &hb)
            .await
            .status(),
        200
    );
    let p = same_everywhere(&[1]).await.remove(0);
    assert_eq!(p["userPresenceType"], "Online", "{p}");
    assert!(seconds_from_now(&p["lastOnline"]).abs() < 60, "{p}");

    // It expires after heartbeat_ttl of real time, for every node at once.
    eventually(Duration::from_secs(10), || async {
        (entries(&exact.addr, &[1]).await[0]["userPresenceType"] == "Offline").then_some(())
    })
    .await;
    let gone = same_everywhere(&[1]).await.remove(0);
    assert_eq!(gone["userPresenceType"], "Offline");
    assert_eq!(gone["lastOnline"], p["lastOnline"]);

    // A heartbeat on the node ahead, a disconnect on the node behind.
    let game = json!({"placeId": 1818, "gameId": GAME});
    assert_eq!(
        post(&ahead.addr, REGISTER, Some(&token(2)), &game)
            .await
            .status(),
        200
    );
    let p = same_everywhere(&[2]).await.remove(0);
    assert_eq!(p["userPresenceType"], "InGame", "{p}");
    let bye = json!({"disconnect": true});
    assert_eq!(
        post(&behind.addr, REGISTER, Some(&token(2)), &bye)
            .await
            .status(),
        200
    );
    let p = same_everywhere(&[1, 2, 3]).await;
    assert_eq!(p[1]["userPresenceType"], "Offline", "{p:?}");
    assert!(seconds_from_now(&p[1]["lastOnline"]).abs() < 60, "{p:?}");
    assert_eq!(p[2]["lastOnline"], NEVER_SEEN);
}

/// What one request of the load saw.
#[derive(Debug)]
struct Outcome {
    what: &'static str,
    status: u16,
    retry_after: bool,
    body: String,
    took: Duration,
    at: Instant,
}

/// Heartbeats, lookups and `/health` in a loop until stopped, every answer recorded.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(app: &TestApp, users: u64) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (client, base) = (app.client.clone(), app.url(""));
        let tokens: Vec<String> = (1..=users).map(|u| app.token(u)).collect();
        let ids: Vec<u64> = (1..=users.min(50)).collect();
        let (out, halt) = (outcomes.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut i = 0;
            while !halt.load(Ordering::Relaxed) {
                let requests = [
                    (
                        "heartbeat",
                        client
                            .post(format!("{base}{REGISTER}"))
                            .bearer_auth(&tokens[i % tokens.len()])
                            .json(&json!({"location": "Website"})),
                    ),
                    (
                        "lookup",
                        client
                            .post(format!("{base}{USERS}"))
                            .json(&json!({ "userIds": ids })),
                    ),
                    ("health", client.get(format!("{base}/health"))),
                ];
                for (what, req) in requests {
                    let sent = Instant::now();
                    // No answer within 30 s (a hang) is recorded as status 0.
                    let (status, retry_after, body) =
                        match req.timeout(Duration::from_secs(30)).send().await {
                            Ok(res) => (
                                res.status().as_u16(),
                                res.headers().contains_key("retry-after"),
                                res.text().await.unwrap_or_default(),
                            ),
                            Err(e) => (0, false, e.to_string()),
                        };
                    out.lock().unwrap().push(Outcome {
                        what,
                        status,
                        retry_after,
                        body,
                        took: sent.elapsed(),
                        at: Instant::now(),
                    });
                }
                i += 1;
            }
        });
        Self {
            outcomes,
            stop,
            task,
        }
    }

    /// Whether some `what` answered `status` after `since`.
    fn saw(&self, what: &str, status: u16, since: Instant) -> bool {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .any(|o| o.what == what && o.status == status && o.at > since)
    }

    /// Stops the load; checks every answer against section 7 and returns them.
    async fn finish(self, timeout: Duration) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        for o in &outcomes {
            match (o.what, o.status) {
                (_, 200) => {}
                ("heartbeat" | "lookup", 503) => {
                    assert!(o.retry_after, "503 without Retry-After: {o:?}");
                    let body: Value = serde_json::from_str(&o.body).unwrap();
                    assert_eq!(
                        body,
                        json!({"errors": [{"code": 0, "message": "ServiceUnavailable"}]}),
                        "{o:?}"
                    );
                    // Within redis.timeout; the second is room for scheduling on a busy
                    // machine, far below a wait on Redis itself.
                    assert!(
                        o.took < timeout + Duration::from_secs(1),
                        "503 too late: {o:?}"
                    );
                }
                _ => panic!("unexpected answer: {o:?}"),
            }
        }
        outcomes
    }
}

async fn ready(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_load_is_503_then_recovers_without_a_restart() {
    if r::skip_unless_redis("Redis stopped and restarted") {
        return;
    }
    if r::backend() == TestBackend::Cluster {
        eprintln!("skipped on Cluster: a standalone server's restart, run with PRESENCE_TEST_BACKEND=redis");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = OwnServer::standalone(dir.path());
    let timeout = Duration::from_millis(500);
    let app = spawn_app_with(|s| {
        s.redis.url = redis.url();
        s.redis.cluster = false;
        s.redis.timeout = timeout;
    })
    .await;
    // The node connects on its first call, which on a busy machine may take longer than
    // the short timeout under test: start once it is ready.
    app.until_ready(Duration::from_secs(10)).await;
    app.heartbeat(1, json!({"location": "Website"})).await;
    assert_eq!(ready(&app).await, 200);

    let load = Load::start(&app, 20);
    let began = Instant::now();
    eventually(Duration::from_secs(10), || async {
        load.saw("heartbeat", 200, began).then_some(())
    })
    .await;

    redis.kill();
    let down = Instant::now();
    eventually(Duration::from_secs(10), || async {
        (ready(&app).await == 503).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (load.saw("heartbeat", 503, down) && load.saw("lookup", 503, down)).then_some(())
    })
    .await;

    redis.restart();
    let up = Instant::now();
    app.until_ready(Duration::from_secs(15)).await;
    eventually(Duration::from_secs(15), || async {
        (load.saw("heartbeat", 200, up) && load.saw("lookup", 200, up)).then_some(())
    })
    .await;
    load.finish(timeout).await;

    // Writes land again: the restarted Redis is empty (no persistence here), so this is new.
    app.heartbeat(7, json!({"location": "Website"})).await;
    assert_eq!(app.presence_of(7).await["userPresenceType"], "Online");
    assert_eq!(ready(&app).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_timeout_is_503_within_the_timeout() {
    if r::skip_unless_redis("a stalled Redis") {
        return;
    }
    if r::backend() == TestBackend::Cluster {
        eprintln!(
            "skipped on Cluster: a standalone server's stall, run with PRESENCE_TEST_BACKEND=redis"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = OwnServer::standalone(dir.path());
    let timeout = Duration::from_millis(300);
    let app = spawn_app_with(|s| {
        s.redis.url = redis.url();
        s.redis.timeout = timeout;
    })
    .await;
    // The node connects on its first call, which on a busy machine may take longer than
    // the short timeout under test: start once it is ready.
    app.until_ready(Duration::from_secs(10)).await;
    app.heartbeat(1, json!({"location": "Website"})).await;
    let stall = Duration::from_secs(5);

    // Every client's commands wait for 5 s: far longer than redis.timeout.
    let paused = Instant::now();
    assert_eq!(
        r::cli(
            redis.port,
            &["client", "pause", &stall.as_millis().to_string(), "all"]
        )
        .trim(),
        "OK"
    );
    let load = Load::start(&app, 5);
    eventually(Duration::from_secs(4), || async {
        (load.saw("heartbeat", 503, paused) && load.saw("lookup", 503, paused)).then_some(())
    })
    .await;
    if paused.elapsed() < stall - Duration::from_secs(1) {
        assert_eq!(ready(&app).await, 503, "/ready while Redis stalls");
    }
    eventually(Duration::from_secs(20), || async {
        (ready(&app).await == 200 && load.saw("heartbeat", 200, paused + stall)).then_some(())
    })
    .await;
    load.finish(timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_fails_over_without_a_node_restart() {
    if r::skip_unless_redis("a cluster failover") {
        return;
    }
    if r::backend() != TestBackend::Cluster {
        eprintln!("skipped on Standalone: a cluster failover, run with PRESENCE_TEST_BACKEND=redis-cluster");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = OwnCluster::start(dir.path());
    let timeout = Duration::from_millis(500);
    let app = spawn_app_with(|s| {
        s.redis.url = cluster.url();
        s.redis.cluster = true;
        s.redis.timeout = timeout;
    })
    .await;
    // The node connects on its first call, which on a busy machine may take longer than
    // the short timeout under test: start once it is ready.
    app.until_ready(Duration::from_secs(10)).await;
    let users: Vec<u64> = (1..=50).collect();
    for &user in &users {
        app.heartbeat(user, json!({"location": "Website"})).await;
    }

    let load = Load::start(&app, 50);
    let began = Instant::now();
    eventually(Duration::from_secs(10), || async {
        load.saw("lookup", 200, began).then_some(())
    })
    .await;

    let victim = cluster.a_master();
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    // A replica takes over its slots.
    cluster.wait_failed_over(victim);
    // Requests succeed again, through the same node process.
    let promoted = Instant::now();
    loop {
        let recent = Instant::now() - Duration::from_millis(200);
        if load.saw("heartbeat", 200, recent) && load.saw("lookup", 200, recent) {
            break;
        }
        if promoted.elapsed() > Duration::from_secs(30) {
            let last = {
                let outcomes = load.outcomes.lock().unwrap();
                format!("{:?}", outcomes.iter().rev().take(6).collect::<Vec<_>>())
            };
            panic!("no success within 30s of the promotion; last answers: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched = Instant::now();
    eprintln!(
        "failover seen by the node {:?} after the kill",
        switched - killed
    );

    // After the switch: every user's heartbeat and a lookup of all of them are 200.
    for &user in &users {
        app.heartbeat(user, json!({"location": "Website"})).await;
    }
    for p in app.lookup(&users).await {
        assert_eq!(p["userPresenceType"], "Online", "{p}");
    }

    // The killed node comes back as a replica; nothing is refused meanwhile.
    cluster.nodes[victim].restart();
    cluster.wait_rejoined(victim);
    for p in app.lookup(&users).await {
        assert_eq!(p["userPresenceType"], "Online", "{p}");
    }
    let outcomes = load.finish(timeout).await;
    let late: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != 200 && o.at > switched + Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "refused after the switch: {late:?}");
}

#[tokio::test]
async fn offline_retention_is_carried_by_redis_key_expiry() {
    if r::skip_unless_redis("retention on Redis") {
        return;
    }
    let app = spawn_app_with(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(1);
        s.presence.sweep_interval = Duration::from_millis(100);
        s.presence.offline_retention = Some(Duration::from_secs(2));
    })
    .await;
    let (_, port) = r::host_port(&app.settings.redis.url);
    let cluster = app.settings.redis.cluster;
    let prefix = app.settings.redis.key_prefix.clone();

    let users: Vec<u64> = (1..=20).collect();
    for &user in &users {
        app.heartbeat(user, json!({"location": "Website"})).await;
    }
    for &user in &users[..10] {
        app.heartbeat(user, json!({"disconnect": true})).await;
    }
    // Within the retention, every user is known: Offline or Online, with its lastOnline.
    for p in app.lookup(&users).await {
        assert_ne!(p["lastOnline"], NEVER_SEEN, "{p}");
    }
    let held = r::keys_with_prefix(port, cluster, &prefix).len();

    // Past lastOnline + retention every one of them is forgotten, and so are their keys.
    eventually(Duration::from_secs(20), || async {
        app.lookup(&users)
            .await
            .iter()
            .all(|p| p["lastOnline"] == NEVER_SEEN)
            .then_some(())
    })
    .await;
    let left = r::keys_with_prefix(port, cluster, &prefix);
    assert!(
        held >= users.len() && left.len() + users.len() <= held,
        "{held} keys while the users were known, still {left:?} after they were forgotten"
    );
}
