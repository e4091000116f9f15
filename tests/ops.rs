//! The operators' side: health, readiness through a drain, metrics, rate limits and JSON
//! logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap()
}

async fn metrics_text(app: &TestApp) -> String {
    let res = get(app, "/metrics").await;
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    res.text().await.unwrap()
}

#[tokio::test]
async fn health_and_ready_answer_200_while_serving() {
    let app = spawn_app().await;
    let res = get(&app, "/health").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let res = get(&app, "/ready").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    let res = app.client.post(app.url("/health")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET");
    assert_eq!(error_of(res).await.0, 405);
}

#[tokio::test]
async fn ready_turns_503_as_soon_as_shutdown_begins_while_requests_are_still_served() {
    let app = Arc::new(spawn_app_with(|s| s.server.drain_delay = Duration::from_secs(3)).await);
    let stopper = Arc::clone(&app);
    let stopped = tokio::spawn(async move { stopper.stop().await });
    let res = eventually(Duration::from_secs(10), || async {
        let res = get(&app, "/ready").await;
        (res.status() == 503).then_some(res)
    })
    .await;
    assert_eq!(
        error_of(res).await,
        (503, 0, "ServiceUnavailable".to_owned())
    );
    // Still serving during the drain.
    assert_eq!(get(&app, "/health").await.status(), 200);
    assert_eq!(app.lookup(&[1]).await.len(), 1);
    stopped.await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_heartbeats_users_and_expiries() {
    let app = spawn_app_with(|s| {
        s.presence.heartbeat_ttl = Duration::from_millis(400);
        s.presence.sweep_interval = Duration::from_millis(20);
    })
    .await;
    app.heartbeat(1, json!({"location": "Xbox"})).await;
    app.heartbeat(2, json!({"placeId": 5})).await;
    app.lookup(&[1, 2]).await;
    let _ = get(&app, "/no/such/route").await;
    let text = metrics_text(&app).await;
    for expected in [
        r#"http_requests_total{route="/v1/presence/register-app-presence",status="200"} 2"#,
        r#"http_requests_total{route="/v1/presence/users",status="200"} 1"#,
        r#"http_requests_total{route="unmatched",status="404"} 1"#,
        r#"http_request_duration_seconds_count{route="/v1/presence/users"} 1"#,
        r#"presence_users{type="Online"} 1"#,
        r#"presence_users{type="InGame"} 1"#,
        r#"presence_users{type="InStudio"} 0"#,
        "presence_tracked_users 2",
        "presence_heartbeats_total 2",
        "presence_sweep_duration_seconds_count",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let text = eventually(Duration::from_secs(10), || async {
        let text = metrics_text(&app).await;
        text.contains("presence_expired_total 2").then_some(text)
    })
    .await;
    assert!(
        text.contains(r#"presence_users{type="Online"} 0"#),
        "{text}"
    );
    assert!(text.contains("presence_tracked_users 2"), "{text}");
}

#[tokio::test]
async fn heartbeats_past_a_users_burst_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.rate_limit.register_per_second = 1;
        s.rate_limit.register_burst = 2;
    })
    .await;
    app.heartbeat(7, json!({})).await;
    app.heartbeat(7, json!({})).await;
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(7))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(res).await, (429, 0, "TooManyRequests".to_owned()));
    // Another user has a bucket of its own, and a bad credential is still 401.
    app.heartbeat(8, json!({})).await;
    let res = app.post_json(REGISTER, &json!({})).await;
    assert_eq!(error_of(res).await.0, 401);
}

#[tokio::test]
async fn lookups_past_an_addresses_burst_get_429() {
    let app = spawn_app_with(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 3;
    })
    .await;
    for _ in 0..3 {
        app.lookup(&[1]).await;
    }
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res).await, (429, 0, "TooManyRequests".to_owned()));
}

#[tokio::test]
async fn forwarded_addresses_get_their_own_buckets_only_when_trusted() {
    async fn lookup_from(app: &TestApp, address: &str) -> u16 {
        app.client
            .post(app.url(USERS))
            .header("x-forwarded-for", address)
            .json(&json!({"userIds": [1]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    let trusting = spawn_app_with(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
        s.rate_limit.trust_forwarded_for = true;
    })
    .await;
    assert_eq!(lookup_from(&trusting, "203.0.113.1").await, 200);
    assert_eq!(lookup_from(&trusting, "203.0.113.1").await, 429);
    assert_eq!(lookup_from(&trusting, "203.0.113.2, 10.0.0.1").await, 200);

    let wary = spawn_app_with(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
    })
    .await;
    assert_eq!(lookup_from(&wary, "203.0.113.1").await, 200);
    assert_eq!(lookup_from(&wary, "203.0.113.2").await, 429);
}

#[test]
fn json_logs_are_one_object_per_line() {
    use common::process::*;
    let cfg = config_file(&format!("{BASE}[logging]\nformat = \"json\"\n"));
    let mut server = start(command(cfg.path()));
    server.signal("TERM");
    assert!(server.wait_exit());
    assert!(!server.logs.is_empty());
    for line in &server.logs {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}
