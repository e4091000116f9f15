#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_heartbeat_then_a_lookup_shows_the_user_online() {
    let app = spawn_app().await;
    app.heartbeat(42, json!({"location": "Xbox"})).await;
    let p = app.presence_of(42).await;
    assert_eq!(p["userPresenceType"], "Online");
    assert_eq!(p["lastLocation"], "Xbox");
    app.stop().await;
}
