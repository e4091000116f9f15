#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `POST /v1/presence/register-app-presence`, black-box: CONTRACT section 1, each rule
//! checked through a lookup.
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use presence_server::config::PlaceSettings;
use serde_json::{json, Value};

/// The TTL of the expiry tests, which run on a mock clock: time moves only when a test
/// says so, so the TTL can be realistic.
const TTL: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);

/// A place whose root is another place of the same universe.
fn annex() -> PlaceSettings {
    PlaceSettings {
        id: 2000,
        universe_id: 500,
        root_place_id: 1999,
        name: "The Annex".into(),
    }
}

async fn app_with_places() -> TestApp {
    spawn_app_with(|s| s.places = vec![crossroads(), annex()]).await
}

/// An app on a mock clock with a TTL of [`TTL`], a sweeper that wakes often, and the
/// catalog.
async fn app_on_a_mock_clock() -> TestApp {
    spawn_app_with_clock(|s| {
        s.presence.heartbeat_ttl = TTL;
        s.presence.sweep_interval = Duration::from_millis(100);
        s.places = vec![crossroads(), annex()];
    })
    .await
}

/// A Bearer heartbeat of `user` with a raw body and, when given, a content type.
async fn register_raw(
    app: &TestApp,
    user: u64,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(user));
    if let Some(content_type) = content_type {
        req = req.header("content-type", content_type);
    }
    req.body(body).send().await.unwrap()
}

/// The presence of `user` without its `lastOnline`, which is checked apart.
async fn state_of(app: &TestApp, user: u64) -> Value {
    let mut p = app.presence_of(user).await;
    p.as_object_mut().unwrap().remove("lastOnline").unwrap();
    p
}

fn expected(
    user: u64,
    kind: &str,
    location: &str,
    place: Option<(i64, i64, Option<i64>)>,
    game: Option<&str>,
) -> Value {
    let (place_id, root, universe) = match place {
        Some((p, r, u)) => (json!(p), json!(r), json!(u)),
        None => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "userPresenceType": kind,
        "lastLocation": location,
        "placeId": place_id,
        "rootPlaceId": root,
        "universeId": universe,
        "gameId": game,
        "userId": user,
    })
}

fn time_of(last_online: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(last_online.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn assert_recent(last_online: &Value) {
    let skew = (Utc::now() - time_of(last_online)).num_milliseconds().abs();
    assert!(skew < 5_000, "{last_online} is {skew} ms from now");
}

#[tokio::test]
async fn the_answer_is_exactly_an_empty_object_as_utf8_json() {
    let app = spawn_app().await;
    let res = register_raw(&app, 1, Some("application/json"), r#"{"location":"Xbox"}"#).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], JSON_UTF8);
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(res.text().await.unwrap(), "{}");
}

#[tokio::test]
async fn an_empty_body_without_a_content_type_is_online_at_the_website() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
    assert_eq!(
        state_of(&app, 1).await,
        expected(1, "Online", "Website", None, None)
    );
    assert_recent(&app.presence_of(1).await["lastOnline"]);
}

#[tokio::test]
async fn an_empty_json_body_is_online_at_the_website() {
    let app = spawn_app().await;
    let res = register_raw(&app, 2, Some("application/json"), "").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
    assert_eq!(
        state_of(&app, 2).await,
        expected(2, "Online", "Website", None, None)
    );
}

#[tokio::test]
async fn an_empty_object_or_an_empty_location_is_online_at_the_website() {
    let app = spawn_app().await;
    app.heartbeat(3, json!({})).await;
    app.heartbeat(4, json!({"location": ""})).await;
    assert_eq!(
        state_of(&app, 3).await,
        expected(3, "Online", "Website", None, None)
    );
    assert_eq!(
        state_of(&app, 4).await,
        expected(4, "Online", "Website", None, None)
    );
}

#[tokio::test]
async fn a_location_without_a_place_makes_the_user_online_there() {
    let app = spawn_app().await;
    app.heartbeat(5, json!({"location": "Xbox"})).await;
    assert_eq!(
        state_of(&app, 5).await,
        expected(5, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn a_place_id_of_zero_or_below_means_no_place() {
    let app = app_with_places().await;
    app.heartbeat(6, json!({"placeId": 0, "location": "Xbox"}))
        .await;
    app.heartbeat(7, json!({"placeId": -1818})).await;
    assert_eq!(
        state_of(&app, 6).await,
        expected(6, "Online", "Xbox", None, None)
    );
    assert_eq!(
        state_of(&app, 7).await,
        expected(7, "Online", "Website", None, None)
    );
}

#[tokio::test]
async fn a_known_place_makes_the_user_in_game_under_its_catalog_name() {
    let app = app_with_places().await;
    app.heartbeat(8, json!({"placeId": 1818, "location": "ignored"}))
        .await;
    assert_eq!(
        state_of(&app, 8).await,
        expected(
            8,
            "InGame",
            "Classic: Crossroads",
            Some((1818, 1818, Some(13058))),
            None
        )
    );
}

#[tokio::test]
async fn a_known_place_reports_its_catalog_root_place_and_universe() {
    let app = app_with_places().await;
    app.heartbeat(9, json!({"placeId": 2000})).await;
    assert_eq!(
        state_of(&app, 9).await,
        expected(
            9,
            "InGame",
            "The Annex",
            Some((2000, 1999, Some(500))),
            None
        )
    );
}

#[tokio::test]
async fn an_unknown_place_is_in_game_at_the_given_location() {
    let app = app_with_places().await;
    app.heartbeat(10, json!({"placeId": 77, "location": "Obby"}))
        .await;
    assert_eq!(
        state_of(&app, 10).await,
        expected(10, "InGame", "Obby", Some((77, 77, None)), None)
    );
}

#[tokio::test]
async fn an_unknown_place_without_a_location_is_in_game_playing() {
    let app = app_with_places().await;
    app.heartbeat(11, json!({"placeId": 77})).await;
    app.heartbeat(12, json!({"placeId": 78, "location": ""}))
        .await;
    assert_eq!(
        state_of(&app, 11).await,
        expected(11, "InGame", "Playing", Some((77, 77, None)), None)
    );
    assert_eq!(
        state_of(&app, 12).await,
        expected(12, "InGame", "Playing", Some((78, 78, None)), None)
    );
}

#[tokio::test]
async fn the_universe_id_extension_overrides_the_catalog_and_fills_unknown_places() {
    let app = app_with_places().await;
    app.heartbeat(13, json!({"placeId": 1818, "universeId": 4242}))
        .await;
    app.heartbeat(14, json!({"placeId": 77, "universeId": 4343}))
        .await;
    assert_eq!(
        state_of(&app, 13).await,
        expected(
            13,
            "InGame",
            "Classic: Crossroads",
            Some((1818, 1818, Some(4242))),
            None
        )
    );
    assert_eq!(
        state_of(&app, 14).await,
        expected(14, "InGame", "Playing", Some((77, 77, Some(4343))), None)
    );
}

#[tokio::test]
async fn the_game_id_extension_is_reported_for_a_user_in_game() {
    let app = app_with_places().await;
    app.heartbeat(15, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    app.heartbeat(16, json!({"placeId": 77, "gameId": GAME.to_uppercase()}))
        .await;
    assert_eq!(
        state_of(&app, 15).await,
        expected(
            15,
            "InGame",
            "Classic: Crossroads",
            Some((1818, 1818, Some(13058))),
            Some(GAME)
        )
    );
    assert_eq!(state_of(&app, 16).await["gameId"], GAME);
}

#[tokio::test]
async fn the_game_id_extension_is_dropped_for_a_user_online() {
    let app = app_with_places().await;
    app.heartbeat(17, json!({"location": "Xbox", "gameId": GAME}))
        .await;
    assert_eq!(
        state_of(&app, 17).await,
        expected(17, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn a_studio_location_with_a_known_place_is_in_studio_under_studio_dash_name() {
    let app = app_with_places().await;
    app.heartbeat(
        18,
        json!({"location": "Studio", "placeId": 1818, "gameId": GAME}),
    )
    .await;
    assert_eq!(
        state_of(&app, 18).await,
        expected(
            18,
            "InStudio",
            "Studio - Classic: Crossroads",
            Some((1818, 1818, Some(13058))),
            None
        )
    );
}

#[tokio::test]
async fn a_studio_location_matches_in_any_case_and_with_a_suffix() {
    let app = app_with_places().await;
    for (user, location) in [
        (20, "studio"),
        (21, "STUDIO"),
        (22, "sTuDiO session"),
        (23, "Studio - anything"),
    ] {
        app.heartbeat(user, json!({"location": location, "placeId": 2000}))
            .await;
        assert_eq!(
            state_of(&app, user).await,
            expected(
                user,
                "InStudio",
                "Studio - The Annex",
                Some((2000, 1999, Some(500))),
                None
            ),
            "{location}"
        );
    }
}

#[tokio::test]
async fn a_studio_location_with_an_unknown_place_is_in_studio_at_plain_studio() {
    let app = app_with_places().await;
    app.heartbeat(
        24,
        json!({"location": "studio edit", "placeId": 77, "gameId": GAME}),
    )
    .await;
    assert_eq!(
        state_of(&app, 24).await,
        expected(24, "InStudio", "Studio", Some((77, 77, None)), None)
    );
    app.heartbeat(
        25,
        json!({"location": "Studio", "placeId": 77, "universeId": 9}),
    )
    .await;
    assert_eq!(
        state_of(&app, 25).await,
        expected(25, "InStudio", "Studio", Some((77, 77, Some(9))), None)
    );
}

#[tokio::test]
async fn a_studio_location_without_a_place_is_in_studio_with_null_place_fields() {
    let app = app_with_places().await;
    app.heartbeat(26, json!({"location": "Studio", "gameId": GAME}))
        .await;
    assert_eq!(
        state_of(&app, 26).await,
        expected(26, "InStudio", "Studio", None, None)
    );
}

#[tokio::test]
async fn a_location_that_only_contains_studio_is_not_in_studio() {
    let app = app_with_places().await;
    app.heartbeat(27, json!({"location": "My Studio"})).await;
    app.heartbeat(28, json!({"location": "Studi"})).await;
    assert_eq!(
        state_of(&app, 27).await,
        expected(27, "Online", "My Studio", None, None)
    );
    assert_eq!(
        state_of(&app, 28).await,
        expected(28, "Online", "Studi", None, None)
    );
}

#[tokio::test]
async fn disconnect_makes_the_user_offline_at_once_keeping_its_last_location() {
    let app = app_on_a_mock_clock().await;
    app.heartbeat(30, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let before = app.presence_of(30).await;
    assert_eq!(before["userPresenceType"], "InGame");
    // Move the clock on, so that an updated lastOnline is visible.
    app.advance(Duration::from_millis(20));
    app.heartbeat(30, json!({"disconnect": true})).await;
    let after = app.presence_of(30).await;
    assert_eq!(
        state_of(&app, 30).await,
        expected(30, "Offline", "Classic: Crossroads", None, None)
    );
    assert_eq!(
        time_of(&after["lastOnline"]) - time_of(&before["lastOnline"]),
        chrono::Duration::milliseconds(20),
        "lastOnline {} is not 20 ms after {}",
        after["lastOnline"],
        before["lastOnline"]
    );
    assert_recent(&after["lastOnline"]);
}

#[tokio::test]
async fn disconnect_wins_over_a_location_and_a_place_in_the_same_body() {
    let app = app_with_places().await;
    app.heartbeat(31, json!({"location": "Xbox"})).await;
    app.heartbeat(
        31,
        json!({"disconnect": true, "location": "Elsewhere", "placeId": 1818}),
    )
    .await;
    assert_eq!(
        state_of(&app, 31).await,
        expected(31, "Offline", "Xbox", None, None)
    );
}

#[tokio::test]
async fn disconnect_false_is_an_ordinary_heartbeat() {
    let app = spawn_app().await;
    app.heartbeat(32, json!({"disconnect": false, "location": "Xbox"}))
        .await;
    assert_eq!(
        state_of(&app, 32).await,
        expected(32, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn disconnect_of_a_user_never_seen_is_offline_with_last_online_now() {
    let app = spawn_app().await;
    app.heartbeat(33, json!({"disconnect": true})).await;
    let p = app.presence_of(33).await;
    assert_eq!(
        state_of(&app, 33).await,
        expected(33, "Offline", "", None, None)
    );
    assert_ne!(p["lastOnline"], NEVER_SEEN);
    assert_recent(&p["lastOnline"]);
}

#[tokio::test]
async fn a_heartbeat_after_a_disconnect_brings_the_user_back() {
    let app = spawn_app().await;
    app.heartbeat(34, json!({"location": "Xbox"})).await;
    app.heartbeat(34, json!({"disconnect": true})).await;
    app.heartbeat(34, json!({"location": "Phone"})).await;
    assert_eq!(
        state_of(&app, 34).await,
        expected(34, "Online", "Phone", None, None)
    );
}

#[tokio::test]
async fn a_new_heartbeat_replaces_the_previous_session() {
    let app = app_with_places().await;
    app.heartbeat(35, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    app.heartbeat(35, json!({"location": "Xbox"})).await;
    assert_eq!(
        state_of(&app, 35).await,
        expected(35, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let app = spawn_app().await;
    app.heartbeat(
        36,
        json!({"location": "Xbox", "foo": [1, {"a": 2}], "bar": null, "visitorId": 5}),
    )
    .await;
    assert_eq!(
        state_of(&app, 36).await,
        expected(36, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_bad_request_and_changes_nothing() {
    let app = spawn_app().await;
    for body in [
        r#"{"placeId":"x"}"#,
        r#"{"disconnect":"maybe"}"#,
        r#"{"location":5}"#,
        r#"{"placeId":1.5}"#,
        r#"{"universeId":"x"}"#,
        r#"{"gameId":"not-a-uuid"}"#,
        r#"[{"location":"Xbox"}]"#,
        r#""Xbox""#,
        r#"{"location":"Xbox""#,
        "nope",
    ] {
        let res = register_raw(&app, 37, Some("application/json"), body).await;
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "{body}"
        );
    }
    let p = app.presence_of(37).await;
    assert_eq!(p["lastOnline"], NEVER_SEEN);
    assert_eq!(p["lastLocation"], "");
}

#[tokio::test]
async fn a_form_body_is_read_like_json() {
    let app = app_with_places().await;
    let res = register_raw(
        &app,
        38,
        Some("application/x-www-form-urlencoded"),
        format!("location=ignored&placeId=1818&gameId={GAME}"),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
    assert_eq!(
        state_of(&app, 38).await,
        expected(
            38,
            "InGame",
            "Classic: Crossroads",
            Some((1818, 1818, Some(13058))),
            Some(GAME)
        )
    );

    let res = register_raw(
        &app,
        39,
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        "location=My+Xbox%21",
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        state_of(&app, 39).await,
        expected(39, "Online", "My Xbox!", None, None)
    );

    let res = register_raw(
        &app,
        39,
        Some("application/x-www-form-urlencoded"),
        "disconnect=true",
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        state_of(&app, 39).await,
        expected(39, "Offline", "My Xbox!", None, None)
    );
}

#[tokio::test]
async fn a_form_body_with_a_field_of_the_wrong_type_is_a_bad_request() {
    let app = spawn_app().await;
    for body in ["placeId=x", "disconnect=maybe"] {
        let res = register_raw(&app, 40, Some("application/x-www-form-urlencoded"), body).await;
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "{body}"
        );
    }
    assert_eq!(app.presence_of(40).await["lastOnline"], NEVER_SEEN);
}

#[tokio::test]
async fn a_text_json_body_with_a_charset_is_read_as_json() {
    let app = spawn_app().await;
    let res = register_raw(
        &app,
        41,
        Some("text/json; charset=utf-8"),
        r#"{"location":"Xbox"}"#,
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        state_of(&app, 41).await,
        expected(41, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn the_user_id_comes_from_the_credential_never_from_the_body() {
    let app = spawn_app().await;
    app.heartbeat(42, json!({"userId": 99, "location": "Xbox"}))
        .await;
    assert_eq!(
        state_of(&app, 42).await,
        expected(42, "Online", "Xbox", None, None)
    );
    let other = app.presence_of(99).await;
    assert_eq!(other["userPresenceType"], "Offline");
    assert_eq!(other["lastOnline"], NEVER_SEEN);
    assert_eq!(other["lastLocation"], "");
}

#[tokio::test]
async fn a_heartbeat_only_changes_the_caller() {
    let app = spawn_app().await;
    app.heartbeat(43, json!({"location": "Xbox"})).await;
    app.heartbeat(44, json!({"disconnect": true})).await;
    assert_eq!(
        state_of(&app, 43).await,
        expected(43, "Online", "Xbox", None, None)
    );
}

#[tokio::test]
async fn a_user_expires_to_offline_keeping_its_location_and_last_online() {
    let app = app_on_a_mock_clock().await;
    app.heartbeat(50, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let online = app.presence_of(50).await;
    assert_eq!(online["userPresenceType"], "InGame");
    assert_eq!(online["gameId"], GAME);
    // Present until the deadline, exclusive, whether or not the sweeper has run.
    app.advance(TTL - MS);
    assert_eq!(app.presence_of(50).await["userPresenceType"], "InGame");
    app.advance(MS);
    let offline = app.presence_of(50).await;
    assert_eq!(offline["lastOnline"], online["lastOnline"]);
    assert_eq!(
        state_of(&app, 50).await,
        expected(50, "Offline", "Classic: Crossroads", None, None)
    );
    // And the same once the sweeper has flipped the user.
    app.swept(1).await;
    assert_eq!(app.presence_of(50).await, offline);
}

#[tokio::test]
async fn a_heartbeat_before_expiry_keeps_the_user_present() {
    let app = app_on_a_mock_clock().await;
    app.heartbeat(51, json!({"location": "Xbox"})).await;
    // Each heartbeat, one millisecond before the previous one's deadline, keeps the user
    // Online for another TTL: four TTLs in all.
    for _ in 0..4 {
        app.advance(TTL - MS);
        assert_eq!(app.presence_of(51).await["userPresenceType"], "Online");
        app.heartbeat(51, json!({"location": "Xbox"})).await;
    }
    app.advance(TTL - MS);
    assert_eq!(app.presence_of(51).await["userPresenceType"], "Online");
    app.advance(MS);
    assert_eq!(app.presence_of(51).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_heartbeat_after_expiry_brings_the_user_back() {
    let app = app_on_a_mock_clock().await;
    app.heartbeat(52, json!({"location": "Xbox"})).await;
    app.advance(TTL);
    app.swept(1).await;
    let offline = app.presence_of(52).await;
    assert_eq!(offline["userPresenceType"], "Offline");
    app.advance(Duration::from_secs(1));
    app.heartbeat(52, json!({"location": "Phone"})).await;
    let back = app.presence_of(52).await;
    assert_eq!(back["userPresenceType"], "Online");
    assert_eq!(back["lastLocation"], "Phone");
    assert_eq!(
        time_of(&back["lastOnline"]) - time_of(&offline["lastOnline"]),
        chrono::Duration::milliseconds(61_000)
    );
    // And it expires again on its own.
    app.advance(TTL);
    app.swept(2).await;
    let p = app.presence_of(52).await;
    assert_eq!(p["userPresenceType"], "Offline");
    assert_eq!(p["lastLocation"], "Phone");
    assert_eq!(p["lastOnline"], back["lastOnline"]);
}
