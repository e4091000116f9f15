#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live presence (CONTRACT sections 8 and 9): one test for each wrong answer found in the
//! stream, the WebSocket, resuming, expiry, what closed streams leave behind, the limits
//! on streams, and the browser rules. Some use settings documented with them in
//! `config.toml`: `stream.resume_window`, `stream.max_resume_users`,
//! `stream.max_resume_users_per_address`, `stream.max_connections_per_address` and
//! `stream.max_connections_per_user`, set here through a configuration file as an operator
//! would.
mod common;

use std::time::Duration;

use common::live::*;
use common::*;
use presence_server::presence::UserId;
use presence_server::Settings;
use serde_json::{json, Value};

/// Waits this long at most for an event that is owed.
const OWED: Duration = Duration::from_secs(5);

async fn spawn_live(change: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(change).await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

async fn spawn_live_with_clock(change: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with_clock(change).await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// Sets keys of the `[stream]` section through a configuration file (`lines` in TOML),
/// keeping the keys `settings` already has.
fn stream_keys(settings: &mut Settings, lines: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[stream]\n{lines}\n")).unwrap();
    let loaded = Settings::load(&path)
        .unwrap_or_else(|e| panic!("a configuration with [stream] {lines:?}: {e}"));
    let mut stream = loaded.stream;
    stream.max_user_ids = settings.stream.max_user_ids;
    stream.max_connections = settings.stream.max_connections;
    stream.keep_alive = settings.stream.keep_alive;
    settings.stream = stream;
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

async fn watch(app: &TestApp, ids: &[u64], headers: &[(&str, &str)]) -> Sse {
    let sse = Sse::open(app.addr, &format!("userIds={}", list(ids)), headers, None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    sse
}

/// Reads events until one holds an entry of `user` that `want` accepts; fails after `OWED`.
async fn until_entry(sse: &mut Sse, user: u64, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + OWED;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = sse.next_event(left).await else {
            panic!("no matching entry of {user} within {OWED:?}; events: {seen:?}");
        };
        seen.push(event.data.clone());
        for entry in event.entries() {
            if entry["userId"] == user && want(&entry) {
                return entry;
            }
        }
    }
}

/// A WebSocket upgrade request's answer, through a plain HTTP client.
async fn upgrade(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url(WS))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// The `Retry-After` of a 503, which must be a whole number of seconds, at least 1.
fn retry_after(value: Option<&str>) -> u64 {
    let value = value.expect("a 503 carries Retry-After");
    let secs: u64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is whole seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// A 503 `ServiceUnavailable` stream answer with `Retry-After`.
fn assert_unavailable(sse: &Sse) {
    assert_eq!(sse.status, 503, "{}", sse.body);
    let body = sse.error();
    assert_eq!(body["errors"][0]["code"], 0, "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    retry_after(sse.header("retry-after"));
}

async fn assert_unavailable_response(res: reqwest::Response) {
    let header = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, code, _) = error_of(res).await;
    assert_eq!((status, code), (503, 0));
    retry_after(header.as_deref());
}

/// A gauge's value in the `/metrics` text.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = rest.strip_prefix(' ')?;
            Some(value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("/metrics has no {name}"))
}

// ---- WebSocket ----

#[tokio::test]
async fn a_websocket_subscribe_does_not_lose_a_change_of_a_user_already_watched() {
    let app = spawn_live(|_| {}).await;
    let watched = 900;
    let mut ws = ws_connect(app.addr).await;
    ws_send(&mut ws, &json!({ "subscribe": [watched] }).to_string()).await;
    ws_frame(&mut ws).await;
    for round in 0..60u64 {
        // Two changes in quick succession: the second falls within the write pacing,
        // and a subscribe to someone else arrives meanwhile.
        app.heartbeat(
            watched,
            json!({ "location": format!("round {round} first") }),
        )
        .await;
        app.heartbeat(
            watched,
            json!({ "location": format!("round {round} second") }),
        )
        .await;
        ws_send(&mut ws, &json!({ "subscribe": [1000 + round] }).to_string()).await;
        let want = format!("round {round} second");
        let deadline = tokio::time::Instant::now() + OWED;
        let mut frames = Vec::new();
        'round: loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = ws_next(&mut ws, left).await else {
                panic!("round {round}: the second change never came; frames: {frames:?}");
            };
            for entry in frame["userPresences"].as_array().unwrap() {
                if entry["userId"] == watched && entry["lastLocation"] == want.as_str() {
                    break 'round;
                }
            }
            frames.push(frame);
        }
    }
}

#[tokio::test]
async fn a_subscribe_refused_while_redis_is_down_leaves_its_ids_unwatched() {
    if common::redis::skip_unless_redis("a WebSocket subscribe while Redis is down")
        || !common::redis::installed_or_skip(std::path::Path::new("redis-server"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = common::redis::OwnServer::standalone(dir.path());
    let app = spawn_live(|s| {
        s.redis.url = redis.url();
        s.redis.cluster = false;
        s.redis.timeout = Duration::from_millis(500);
    })
    .await;
    let mut ws = ws_connect(app.addr).await;
    redis.kill();
    ws_send(&mut ws, r#"{"subscribe":[41,42]}"#).await;
    let refused = ws_frame(&mut ws).await;
    assert_eq!(refused["errors"][0]["code"], 0, "{refused}");
    assert_eq!(
        refused["errors"][0]["message"], "ServiceUnavailable",
        "{refused}"
    );

    redis.restart();
    app.until_ready(Duration::from_secs(10)).await;
    app.heartbeat(41, json!({"location": "Back"})).await;
    // Nothing is watched on this WebSocket: nothing is sent.
    if let Some(frame) = ws_next(&mut ws, Duration::from_millis(700)).await {
        panic!("a refused subscribe left its ids watched: {frame}");
    }
    ws_send(&mut ws, r#"{"subscribe":[41,42]}"#).await;
    let answer = ws_frame(&mut ws).await;
    assert_eq!(
        answer["userPresences"],
        json!(app.lookup(&[41, 42]).await),
        "a refused subscribe must not count as made"
    );
}

// ---- Expiry ----

#[tokio::test]
async fn a_user_back_after_the_deadline_with_the_same_location_is_sent_online() {
    let app = spawn_live_with_clock(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(10);
        // No sweep runs within the test's few real milliseconds.
        s.presence.sweep_interval = Duration::from_secs(30);
    })
    .await;
    app.heartbeat(81, json!({"location": "Lobby"})).await;
    app.advance(Duration::from_millis(10_001));
    // Past the deadline, before any sweep: a read says Offline.
    let mut sse = watch(&app, &[81], &[]).await;
    let first = sse.event().await;
    assert_eq!(first.entries()[0]["userPresenceType"], "Offline");
    assert_eq!(first.entries(), app.lookup(&[81]).await);

    app.heartbeat(81, json!({"location": "Lobby"})).await;
    let entry = until_entry(&mut sse, 81, |e| e["userPresenceType"] == "Online").await;
    assert_eq!(entry["lastLocation"], "Lobby");
}

#[tokio::test]
async fn expiry_is_sent_within_a_sweep_interval_of_the_deadline() {
    let app = spawn_live_with_clock(|s| {
        s.presence.heartbeat_ttl = Duration::from_secs(10);
        s.presence.sweep_interval = Duration::from_secs(1);
    })
    .await;
    let mut sse = watch(&app, &[82], &[]).await;
    sse.event().await;
    // A deadline that is not on a whole second.
    app.advance(Duration::from_millis(300));
    app.heartbeat(82, json!({"location": "Lobby"})).await;
    until_entry(&mut sse, 82, |e| e["userPresenceType"] == "Online").await;
    // Just past the deadline; the clock then stands still. A sweep within the next
    // (real) sweep interval must find the user.
    app.advance(Duration::from_millis(10_001));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3_000);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = sse
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("no Offline within two sweep intervals of the deadline"));
        if event.entries()[0]["userPresenceType"] == "Offline" {
            assert_eq!(event.entries(), app.lookup(&[82]).await);
            break;
        }
    }
}

// ---- Resuming ----

#[tokio::test]
async fn resuming_after_the_resume_window_still_ends_on_the_latest_entry() {
    let app = spawn_live(|s| {
        s.stream.keep_alive = Duration::from_secs(1);
        stream_keys(s, "resume_window = \"1s\"");
    })
    .await;
    app.heartbeat(83, json!({"location": "Before"})).await;
    let mut sse = watch(&app, &[83], &[]).await;
    let first = sse.event().await;
    drop(sse);
    // The server may forget this stream once the window has passed.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.heartbeat(83, json!({"location": "After"})).await;
    let mut again = watch(&app, &[83], &[("Last-Event-ID", first.id.as_str())]).await;
    let entry = until_entry(&mut again, 83, |e| e["lastLocation"] == "After").await;
    assert_eq!(entry, app.presence_of(83).await);
}

#[tokio::test]
async fn resuming_with_a_longer_list_sends_the_added_users_even_unchanged() {
    let app = spawn_live(|_| {}).await;
    app.heartbeat(85, json!({"location": "Unchanged"})).await;
    // Watched by another stream all along, and not changed.
    let mut other = watch(&app, &[85], &[]).await;
    other.event().await;
    let mut sse = watch(&app, &[84], &[]).await;
    let first = sse.event().await;
    drop(sse);
    let mut grown = watch(&app, &[84, 85], &[("Last-Event-ID", first.id.as_str())]).await;
    let entry = until_entry(&mut grown, 85, |_| true).await;
    assert_eq!(entry, app.presence_of(85).await);
}

// ---- What closed streams leave behind ----

#[tokio::test]
async fn closed_streams_leave_bounded_resume_state_and_no_watched_users() {
    let app = spawn_live(|s| {
        // Pings find closed connections soon, should nothing else be written to them.
        s.stream.keep_alive = Duration::from_secs(1);
        stream_keys(
            s,
            "max_resume_users = 3000\nmax_resume_users_per_address = 1000",
        );
    })
    .await;
    for i in 0..100u64 {
        let ids: Vec<u64> = (1..=100).map(|k| 10_000 + i * 100 + k).collect();
        let mut sse = watch(&app, &ids, &[]).await;
        sse.event().await;
        drop(sse);
        if i % 10 == 9 {
            let held = gauge(&app.metrics().await, "presence_stream_resume_users");
            assert!(
                held <= 1000.0,
                "{held} users held for resuming after {} streams",
                i + 1
            );
        }
    }
    eventually(Duration::from_secs(10), || async {
        let metrics = app.metrics().await;
        let held = gauge(&metrics, "presence_stream_resume_users");
        assert!(held <= 1000.0, "{held} users held for resuming");
        (gauge(&metrics, "presence_watched_users") == 0.0).then_some(())
    })
    .await;
}

/// A measurement, not a check: how resident memory (of this process, which runs the
/// server) grows under many short streams of distinct users from one address, with the
/// default settings. `cargo test --test live_regressions -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; prints numbers"]
async fn measure_memory_under_many_short_streams_of_distinct_users() {
    let app = spawn_live(|_| {}).await;
    let streams = 2_000u64;
    let before = common::process::rss_kib(std::process::id());
    for i in 0..streams {
        let ids: Vec<u64> = (1..=200).map(|k| 1_000_000 + i * 200 + k).collect();
        let mut sse = watch(&app, &ids, &[]).await;
        sse.event().await;
        drop(sse);
        if (i + 1) % 500 == 0 {
            let metrics = app.metrics().await;
            println!(
                "after {} streams ({} distinct users): RSS +{} KiB; presence_watched_users {}",
                i + 1,
                (i + 1) * 200,
                common::process::rss_kib(std::process::id()).saturating_sub(before),
                gauge(&metrics, "presence_watched_users"),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "2 s after the last stream closed: RSS +{} KiB",
        common::process::rss_kib(std::process::id()).saturating_sub(before)
    );
}

// ---- Limits on streams ----

#[tokio::test]
async fn streams_from_one_address_are_limited_and_a_closed_one_frees_its_slot() {
    let app = spawn_live(|s| stream_keys(s, "max_connections_per_address = 3")).await;
    let one = watch(&app, &[1], &[]).await;
    let _two = watch(&app, &[2], &[]).await;
    let _ws = ws_connect(app.addr).await;
    // Streams and WebSockets share the limit.
    let fourth = Sse::open(app.addr, "userIds=4", &[], None).await;
    assert_unavailable(&fourth);
    assert_unavailable_response(upgrade(&app, &[]).await).await;

    drop(one);
    eventually(Duration::from_secs(5), || async {
        let sse = Sse::open(app.addr, "userIds=4", &[], None).await;
        (sse.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn streams_of_one_user_are_limited() {
    let app = spawn_live(|s| {
        s.api.require_auth_for_lookup = true;
        stream_keys(
            s,
            "max_connections_per_address = 100\nmax_connections_per_user = 2",
        );
    })
    .await;
    let bearer = format!("Bearer {}", app.token(7));
    let headers = [("Authorization", bearer.as_str())];
    let _one = watch(&app, &[1], &headers).await;
    let _two = watch(&app, &[2], &headers).await;
    let third = Sse::open(app.addr, "userIds=3", &headers, None).await;
    assert_unavailable(&third);
    assert_unavailable_response(upgrade(&app, &headers).await).await;
    // Another user is not held back by this one.
    let other = format!("Bearer {}", app.token(8));
    watch(&app, &[3], &[("Authorization", other.as_str())]).await;
}

#[tokio::test]
async fn a_full_node_answers_503_with_retry_after() {
    let app = spawn_live(|s| s.stream.max_connections = 1).await;
    let _one = watch(&app, &[1], &[]).await;
    let second = Sse::open(app.addr, "userIds=2", &[], None).await;
    assert_unavailable(&second);
    assert_unavailable_response(upgrade(&app, &[]).await).await;
}

// ---- Browsers ----

#[tokio::test]
async fn the_foreign_cookie_rule_does_not_trust_forwarded_hosts() {
    let app = spawn_live(|_| {}).await;
    let cookie = format!(".ROBLOSECURITY={}", app.token(5));
    for forwarded in [
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "host=evil.example"),
        ("Forwarded", "for=192.0.2.1;host=evil.example;proto=https"),
    ] {
        let headers = [
            ("Cookie", cookie.as_str()),
            ("Origin", "https://evil.example"),
            forwarded,
        ];
        let sse = Sse::open(app.addr, "userIds=1", &headers, None).await;
        assert_eq!(sse.status, 403, "{forwarded:?}: {}", sse.body);
        assert_eq!(sse.error()["errors"][0]["code"], 0, "{forwarded:?}");
        let (status, code, _) = error_of(upgrade(&app, &headers).await).await;
        assert_eq!((status, code), (403, 0), "{forwarded:?}");
    }
}

#[tokio::test]
async fn with_cors_on_every_answer_varies_by_origin() {
    let app = spawn_live(|s| s.api.cors_origins = vec!["https://app.example".into()]).await;
    let varies = |res: &reqwest::Response| {
        res.headers()
            .get_all("vary")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*")
    };
    let ids = json!({"userIds": [1]});
    let cases = [
        (
            "a lookup without Origin",
            app.client.post(app.url(USERS)).json(&ids),
        ),
        (
            "a lookup from an unlisted origin",
            app.client
                .post(app.url(USERS))
                .header("origin", "https://other.example")
                .json(&ids),
        ),
        (
            "a lookup from the listed origin",
            app.client
                .post(app.url(USERS))
                .header("origin", "https://app.example")
                .json(&ids),
        ),
        (
            "a heartbeat without a credential",
            app.client.post(app.url(REGISTER)).json(&json!({})),
        ),
        (
            "a heartbeat with a bad body",
            app.client
                .post(app.url(REGISTER))
                .bearer_auth(app.token(1))
                .header("content-type", "application/json")
                .body("{"),
        ),
        (
            "an unknown route",
            app.client.get(app.url("/v1/presence/nowhere")),
        ),
    ];
    for (what, req) in cases {
        let res = req.send().await.unwrap();
        assert!(
            varies(&res),
            "{what}: {} without Vary: Origin ({:?})",
            res.status(),
            res.headers()
        );
    }
}

#[tokio::test]
async fn a_stream_ends_when_its_credential_expires() {
    let app = spawn_live_with_clock(|s| {
        s.api.require_auth_for_lookup = true;
        s.stream.keep_alive = Duration::from_secs(1);
    })
    .await;
    let token = app
        .auth
        .mint(UserId::new(9).unwrap(), Duration::from_secs(3))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let mut sse = watch(&app, &[1], &[("Authorization", bearer.as_str())]).await;
    sse.event().await;
    // Past `exp`.
    app.advance(Duration::from_secs(4));
    assert!(
        sse.ended_within(Duration::from_secs(8)).await,
        "the stream outlived its credential"
    );
}

#[tokio::test]
async fn a_signed_in_stream_ends_when_its_credential_expires_even_where_lookups_are_open() {
    // What a signed-in viewer is shown of friends-only users (CONTRACT section 11) must not
    // outlive the credential that made it that viewer.
    let app = spawn_live_with_clock(|s| {
        s.stream.keep_alive = Duration::from_secs(1);
    })
    .await;
    let token = app
        .auth
        .mint(UserId::new(9).unwrap(), Duration::from_secs(3))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let mut sse = watch(&app, &[1], &[("Authorization", bearer.as_str())]).await;
    sse.event().await;
    let mut anonymous = watch(&app, &[1], &[]).await;
    anonymous.event().await;
    app.advance(Duration::from_secs(4));
    assert!(
        sse.ended_within(Duration::from_secs(8)).await,
        "the signed-in stream outlived its credential"
    );
    assert!(
        !anonymous.ended_within(Duration::from_secs(3)).await,
        "an anonymous stream has no credential to outlive"
    );
}
