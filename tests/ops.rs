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
    // On Redis a node is ready once it has connected and subscribed to the other nodes'
    // changes, a few milliseconds after start (longer on a busy machine).
    let res = eventually(Duration::from_secs(10), || async {
        let res = get(&app, "/ready").await;
        (res.status() == 200).then_some(res)
    })
    .await;
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
    let ttl = Duration::from_secs(60);
    let app = spawn_app_with_clock(|s| {
        s.presence.heartbeat_ttl = ttl;
        s.presence.sweep_interval = Duration::from_millis(100);
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
    assert!(text.contains("presence_expired_total 0"), "{text}");
    app.advance(ttl);
    // The sweeper wakes every 20 ms of real time and reads the moved clock.
    // On Redis the counts are read from Redis at each scrape while the expiry counter is
    // this node's: a scrape that began before the sweep ended may show the old counts with
    // the new expiries, so both are awaited.
    let text = eventually(Duration::from_secs(10), || async {
        let text = metrics_text(&app).await;
        (text.contains("presence_expired_total 2")
            && text.contains(r#"presence_users{type="Online"} 0"#)
            && text.contains(r#"presence_users{type="InGame"} 0"#))
        .then_some(text)
    })
    .await;
    assert!(text.contains("presence_tracked_users 2"), "{text}");
}

#[tokio::test]
async fn heartbeats_past_a_users_burst_get_429_with_retry_after() {
    let app = spawn_app_with_clock(|s| {
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
    // One token a second: the next one is exactly a second away on the stopped clock.
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_of(res).await, (429, 0, "TooManyRequests".to_owned()));
    // Another user has a bucket of its own, and a bad credential is still 401.
    app.heartbeat(8, json!({})).await;
    let res = app.post_json(REGISTER, &json!({})).await;
    assert_eq!(error_of(res).await.0, 401);
    // The bucket refills by the server's clock: not before the second is up, then one.
    app.advance(Duration::from_millis(999));
    assert_eq!(register_status(&app, 7).await, 429);
    app.advance(Duration::from_millis(1));
    assert_eq!(register_status(&app, 7).await, 200);
    assert_eq!(register_status(&app, 7).await, 429);
}

async fn register_status(app: &TestApp, user: u64) -> u16 {
    app.client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(user))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn lookups_past_an_addresses_burst_get_429() {
    let app = spawn_app_with_clock(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 3;
    })
    .await;
    for _ in 0..3 {
        app.lookup(&[1]).await;
    }
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_of(res).await, (429, 0, "TooManyRequests".to_owned()));
    app.advance(Duration::from_secs(3));
    for _ in 0..3 {
        app.lookup(&[1]).await;
    }
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert_eq!(res.status(), 429);
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
    let trusting = spawn_app_with_clock(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
        s.rate_limit.trust_forwarded_for = true;
    })
    .await;
    assert_eq!(lookup_from(&trusting, "203.0.113.1").await, 200);
    assert_eq!(lookup_from(&trusting, "203.0.113.1").await, 429);
    assert_eq!(lookup_from(&trusting, "203.0.113.2").await, 200);
    // The rightmost entry (the nearest proxy's) is the key: what a client writes to its
    // left is not.
    assert_eq!(lookup_from(&trusting, "192.0.2.7, 203.0.113.2").await, 429);

    let wary = spawn_app_with(|s| {
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
    })
    .await;
    assert_eq!(lookup_from(&wary, "203.0.113.1").await, 200);
    assert_eq!(lookup_from(&wary, "203.0.113.2").await, 429);
}

#[tokio::test]
async fn rotating_the_leftmost_forwarded_entry_does_not_escape_the_lookup_limit() {
    async fn lookup_from(app: &TestApp, lines: &[String]) -> u16 {
        let mut req = app.client.post(app.url(USERS));
        for line in lines {
            req = req.header("x-forwarded-for", line);
        }
        req.json(&json!({"userIds": [1]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    for hops in [1, 2] {
        let app = spawn_app_with_clock(|s| {
            s.rate_limit.lookup_per_second = 1;
            s.rate_limit.lookup_burst = 3;
            s.rate_limit.trust_forwarded_for = true;
            s.rate_limit.trusted_hops = hops;
        })
        .await;
        // The proxies append "203.0.113.9" (the client as the outer proxy saw it) and,
        // with two hops, the outer proxy's own address; the client writes the rest.
        let proxies = if hops == 1 {
            "203.0.113.9".to_owned()
        } else {
            "203.0.113.9, 10.0.0.2".to_owned()
        };
        let mut statuses = Vec::new();
        for n in 0..6 {
            let spoofed = format!("198.51.100.{n}, 192.0.2.{n}");
            statuses.push(lookup_from(&app, &[format!("{spoofed}, {proxies}")]).await);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "hops {hops}");
        // The same list split over several header lines, joined in order, is the same key.
        let split = ["198.51.100.77".to_owned(), proxies.clone()];
        assert_eq!(lookup_from(&app, &split).await, 429, "hops {hops}");
        // Another client behind the same proxies has a bucket of its own.
        let other = proxies.replace("203.0.113.9", "203.0.113.10");
        assert_eq!(lookup_from(&app, &[other]).await, 200, "hops {hops}");
        // With fewer entries than hops, or a bad one, the key is the socket's peer (the
        // nearest proxy, here the test itself): one bucket, not a fresh one per request.
        let short_or_bad = if hops == 1 {
            ["unknown".to_owned(), "unknown".to_owned()]
        } else {
            ["10.0.0.2".to_owned(), "junk, 10.0.0.2".to_owned()]
        };
        let mut statuses = Vec::new();
        for _ in 0..4 {
            for line in &short_or_bad {
                statuses.push(lookup_from(&app, std::slice::from_ref(line)).await);
            }
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 429, 429, 429, 429, 429],
            "hops {hops}"
        );
    }
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
