#![allow(clippy::unwrap_used, clippy::expect_used)]
//! CONTRACT section 6, black-box: what one client may make the server store.
mod common;

use common::*;
use serde_json::json;

/// A Bearer heartbeat with a JSON body, answered as it is.
async fn heartbeat_raw(app: &TestApp, user: u64, body: serde_json::Value) -> reqwest::Response {
    app.client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(user))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_location_of_exactly_the_limit_is_stored() {
    let app = spawn_app().await;
    let ascii = "a".repeat(100);
    app.heartbeat(1, json!({ "location": ascii })).await;
    assert_eq!(app.presence_of(1).await["lastLocation"], ascii);

    // The limit counts characters, not bytes: 100 four-byte characters are 400 bytes.
    let wide = "\u{1F3AE}".repeat(100);
    app.heartbeat(2, json!({ "location": wide })).await;
    assert_eq!(app.presence_of(2).await["lastLocation"], wide);
}

#[tokio::test]
async fn a_longer_location_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.heartbeat(1, json!({ "location": "Home" })).await;
    let before = app.presence_of(1).await;

    for location in ["a".repeat(101), "\u{e9}".repeat(101), "x".repeat(16_000)] {
        let res = heartbeat_raw(&app, 1, json!({ "location": location })).await;
        assert_eq!(error_of(res).await, (400, 0, "BadRequest".into()));
        // Not even lastOnline moved: the request had no effect.
        assert_eq!(app.presence_of(1).await, before);
    }

    // A user never seen stays never seen, and a disconnect with a long location is no
    // different: nothing is stored.
    let res = heartbeat_raw(
        &app,
        2,
        json!({ "location": "b".repeat(101), "disconnect": true }),
    )
    .await;
    assert_eq!(error_of(res).await.0, 400);
    assert_eq!(app.presence_of(2).await["lastOnline"], NEVER_SEEN);
}

#[tokio::test]
async fn the_limit_applies_to_forms_and_follows_the_configuration() {
    let app = spawn_app_with(|s| s.api.max_location_length = 5).await;
    let form = |location: &str| {
        app.client
            .post(app.url(REGISTER))
            .bearer_auth(app.token(3))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("location={location}"))
            .send()
    };
    assert_eq!(form("Xbox1").await.unwrap().status(), 200);
    let res = form("Xbox12").await.unwrap();
    assert_eq!(error_of(res).await, (400, 0, "BadRequest".into()));
    assert_eq!(app.presence_of(3).await["lastLocation"], "Xbox1");

    // The OpenAPI document states the configured limit.
    let doc: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["schemas"]["RegisterAppPresenceRequest"]["properties"]["location"]
            ["maxLength"],
        5
    );
}

#[tokio::test]
async fn a_lookup_of_fifty_users_stays_small_whatever_they_sent() {
    let app = spawn_app().await;
    for user in 1..=50 {
        app.heartbeat(user, json!({ "location": "\u{1F3AE}".repeat(100) }))
            .await;
        let res = heartbeat_raw(&app, user, json!({ "location": "z".repeat(16_000) })).await;
        assert_eq!(res.status(), 400);
    }
    let ids: Vec<u64> = (1..=50).collect();
    let body = app
        .post_json(USERS, &json!({ "userIds": ids }))
        .await
        .bytes()
        .await
        .unwrap();
    // Each entry is at most the longest location (400 bytes of UTF-8) plus its fixed
    // fields; the 808 KB answers that 16 KB locations made are impossible.
    assert!(body.len() < 50 * 700, "{} bytes", body.len());
}
