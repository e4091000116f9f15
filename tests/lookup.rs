#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `POST /v1/presence/users`, black-box: CONTRACT sections 2 and 3.
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use presence_server::config::PresenceTypeFormat;
use serde_json::{json, Value};

/// `POST /v1/presence/users` with a raw body and content type, no credential.
async fn post_raw(
    app: &TestApp,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(app.url(USERS))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The `userPresences` of a 200 answer, checking its content type.
async fn presences_of(res: reqwest::Response) -> Vec<Value> {
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], JSON_UTF8);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body["userPresences"].as_array().unwrap().clone()
}

fn user_ids(presences: &[Value]) -> Vec<u64> {
    presences
        .iter()
        .map(|p| p["userId"].as_u64().unwrap())
        .collect()
}

/// The entry of a user never seen, exactly.
fn never_seen(id: u64) -> Value {
    json!({
        "userPresenceType": "Offline",
        "lastLocation": "",
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
        "userId": id,
        "lastOnline": NEVER_SEEN,
    })
}

/// Asserts the contract's `lastOnline` shape (RFC 3339, UTC, exactly three fractional
/// digits, `Z`) and that it lies within a few seconds of now.
fn assert_recent(last_online: &Value) -> DateTime<Utc> {
    let text = last_online.as_str().expect("lastOnline is a string");
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 24, "{text}");
    for (i, &b) in bytes.iter().enumerate() {
        let expected_punct = match i {
            4 | 7 => Some(b'-'),
            10 => Some(b'T'),
            13 | 16 => Some(b':'),
            19 => Some(b'.'),
            23 => Some(b'Z'),
            _ => None,
        };
        match expected_punct {
            Some(p) => assert_eq!(b, p, "byte {i} of {text}"),
            None => assert!(b.is_ascii_digit(), "byte {i} of {text}"),
        }
    }
    let at = DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc);
    let skew = (Utc::now() - at).num_milliseconds().abs();
    assert!(skew < 5_000, "{text} is {skew} ms away from now");
    at
}

async fn register(app: &TestApp, user: u64, body: Value) {
    app.heartbeat(user, body).await;
}

#[tokio::test]
async fn a_user_never_seen_is_offline_with_an_empty_location_and_the_sentinel_time() {
    let app = spawn_app().await;
    let p = app.presence_of(12345).await;
    assert_eq!(p, never_seen(12345));
}

#[tokio::test]
async fn an_online_user_has_all_eight_keys_with_null_place_fields() {
    let app = spawn_app().await;
    register(&app, 1, json!({"location": "Xbox"})).await;
    let p = app.presence_of(1).await;
    assert_recent(&p["lastOnline"]);
    assert_eq!(
        p,
        json!({
            "userPresenceType": "Online",
            "lastLocation": "Xbox",
            "placeId": null,
            "rootPlaceId": null,
            "universeId": null,
            "gameId": null,
            "userId": 1,
            "lastOnline": p["lastOnline"],
        })
    );
}

#[tokio::test]
async fn an_in_game_user_has_all_eight_keys_filled() {
    let app = spawn_app_with(|s| s.places = vec![crossroads()]).await;
    register(&app, 2, json!({"placeId": 1818, "gameId": GAME})).await;
    let p = app.presence_of(2).await;
    assert_recent(&p["lastOnline"]);
    assert_eq!(
        p,
        json!({
            "userPresenceType": "InGame",
            "lastLocation": "Classic: Crossroads",
            "placeId": 1818,
            "rootPlaceId": 1818,
            "universeId": 13058,
            "gameId": GAME,
            "userId": 2,
            "lastOnline": p["lastOnline"],
        })
    );
}

#[tokio::test]
async fn an_in_studio_user_has_all_eight_keys_with_a_null_game_id() {
    let app = spawn_app_with(|s| s.places = vec![crossroads()]).await;
    register(
        &app,
        3,
        json!({"location": "Studio", "placeId": 1818, "gameId": GAME}),
    )
    .await;
    let p = app.presence_of(3).await;
    assert_recent(&p["lastOnline"]);
    assert_eq!(
        p,
        json!({
            "userPresenceType": "InStudio",
            "lastLocation": "Studio - Classic: Crossroads",
            "placeId": 1818,
            "rootPlaceId": 1818,
            "universeId": 13058,
            "gameId": null,
            "userId": 3,
            "lastOnline": p["lastOnline"],
        })
    );
}

#[tokio::test]
async fn an_offline_user_has_all_eight_keys_and_keeps_its_last_location() {
    let app = spawn_app_with(|s| s.places = vec![crossroads()]).await;
    register(&app, 4, json!({"placeId": 1818, "gameId": GAME})).await;
    register(&app, 4, json!({"disconnect": true})).await;
    let p = app.presence_of(4).await;
    assert_recent(&p["lastOnline"]);
    assert_eq!(
        p,
        json!({
            "userPresenceType": "Offline",
            "lastLocation": "Classic: Crossroads",
            "placeId": null,
            "rootPlaceId": null,
            "universeId": null,
            "gameId": null,
            "userId": 4,
            "lastOnline": p["lastOnline"],
        })
    );
}

#[tokio::test]
async fn a_mixed_batch_answers_each_user_in_the_order_asked() {
    let app = spawn_app().await;
    register(&app, 10, json!({"location": "Xbox"})).await;
    register(&app, 11, json!({"placeId": 77})).await;
    let ps = app.lookup(&[11, 12, 10]).await;
    assert_eq!(user_ids(&ps), vec![11, 12, 10]);
    assert_eq!(ps[0]["userPresenceType"], "InGame");
    assert_eq!(ps[0]["lastLocation"], "Playing");
    assert_eq!(ps[1], never_seen(12));
    assert_eq!(ps[2]["userPresenceType"], "Online");
    assert_eq!(ps[2]["lastLocation"], "Xbox");
}

#[tokio::test]
async fn repeated_ids_are_answered_once_in_order_of_first_appearance() {
    let app = spawn_app().await;
    let ps = app.lookup(&[3, 1, 3, 2, 1, 3]).await;
    assert_eq!(user_ids(&ps), vec![3, 1, 2]);
}

#[tokio::test]
async fn numbers_and_numeric_strings_are_both_accepted_and_answered_as_numbers() {
    let app = spawn_app().await;
    register(&app, 6, json!({"location": "Phone"})).await;
    let res = app
        .post_json(
            USERS,
            &json!({"userIds": ["5", 6, "6", 7, "9223372036854775807"]}),
        )
        .await;
    let ps = presences_of(res).await;
    assert_eq!(user_ids(&ps), vec![5, 6, 7, 9_223_372_036_854_775_807]);
    assert_eq!(ps[0], never_seen(5));
    assert_eq!(ps[1]["lastLocation"], "Phone");
    assert_eq!(ps[1]["userId"], json!(6));
    assert_eq!(ps[3], never_seen(9_223_372_036_854_775_807));
}

#[tokio::test]
async fn an_empty_list_answers_an_empty_array() {
    let app = spawn_app().await;
    let res = post_raw(&app, "application/json", r#"{"userIds":[]}"#).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], JSON_UTF8);
    assert_eq!(res.text().await.unwrap(), r#"{"userPresences":[]}"#);
}

#[tokio::test]
async fn an_empty_body_or_a_missing_user_ids_key_answers_an_empty_array() {
    let app = spawn_app().await;
    let no_type = app.client.post(app.url(USERS)).send().await.unwrap();
    let empty_json = post_raw(&app, "application/json", "").await;
    let empty_object = post_raw(&app, "application/json", "{}").await;
    let other_key = post_raw(&app, "application/json", r#"{"ids":[1]}"#).await;
    for res in [no_type, empty_json, empty_object, other_key] {
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), r#"{"userPresences":[]}"#);
    }
}

#[tokio::test]
async fn fifty_one_ids_are_too_many_even_when_all_the_same() {
    let app = spawn_app().await;
    let res = app
        .post_json(USERS, &json!({ "userIds": vec![7; 51] }))
        .await;
    assert_eq!(
        error_of(res).await,
        (
            400,
            2,
            "Too many User Ids being sent in the request.".to_owned()
        )
    );
    let distinct: Vec<u64> = (1..=51).collect();
    let res = app.post_json(USERS, &json!({ "userIds": distinct })).await;
    assert_eq!(
        error_of(res).await,
        (
            400,
            2,
            "Too many User Ids being sent in the request.".to_owned()
        )
    );
}

#[tokio::test]
async fn fifty_ids_are_allowed() {
    let app = spawn_app().await;
    let ids: Vec<u64> = (1..=50).collect();
    let ps = app.lookup(&ids).await;
    assert_eq!(user_ids(&ps), ids);
}

#[tokio::test]
async fn the_id_limit_comes_from_configuration() {
    let app = spawn_app_with(|s| s.api.max_user_ids = 3).await;
    assert_eq!(user_ids(&app.lookup(&[1, 2, 3]).await), vec![1, 2, 3]);
    let res = app
        .post_json(USERS, &json!({"userIds": [1, 2, 3, 1]}))
        .await;
    assert_eq!(
        error_of(res).await,
        (
            400,
            2,
            "Too many User Ids being sent in the request.".to_owned()
        )
    );

    let app = spawn_app_with(|s| s.api.max_user_ids = 100).await;
    let ids: Vec<u64> = (1..=100).collect();
    assert_eq!(user_ids(&app.lookup(&ids).await), ids);
    let res = app
        .post_json(
            USERS,
            &json!({ "userIds": (1..=101).collect::<Vec<u64>>() }),
        )
        .await;
    assert_eq!(error_of(res).await.1, 2);
}

#[tokio::test]
async fn an_id_that_is_not_a_positive_int64_is_refused_with_code_1() {
    let app = spawn_app().await;
    for body in [
        r#"{"userIds":[0]}"#,
        r#"{"userIds":[-1]}"#,
        r#"{"userIds":[1.5]}"#,
        r#"{"userIds":["abc"]}"#,
        r#"{"userIds":[9223372036854775808]}"#,
        r#"{"userIds":["9223372036854775808"]}"#,
        r#"{"userIds":[true]}"#,
        r#"{"userIds":[""]}"#,
        r#"{"userIds":["-2"]}"#,
        r#"{"userIds":[1,2,0]}"#,
    ] {
        let res = post_raw(&app, "application/json", body).await;
        assert_eq!(
            error_of(res).await,
            (400, 1, "Invalid user id.".to_owned()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn user_ids_of_the_wrong_type_or_broken_json_is_a_bad_request() {
    let app = spawn_app().await;
    for body in [
        r#"{"userIds":"1"}"#,
        r#"{"userIds":5}"#,
        r#"{"userIds":{}}"#,
        r#"{"userIds":true}"#,
        r#"[1,2]"#,
        r#"{"userIds":[1"#,
        "nope",
        r#"{"userIds":[1]"#,
    ] {
        let res = post_raw(&app, "application/json", body).await;
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_form_body_with_repeated_user_ids_keys_is_a_list() {
    let app = spawn_app().await;
    register(&app, 2, json!({"location": "Xbox"})).await;
    let res = post_raw(
        &app,
        "application/x-www-form-urlencoded",
        "userIds=1&userIds=2&userIds=1",
    )
    .await;
    let ps = presences_of(res).await;
    assert_eq!(user_ids(&ps), vec![1, 2]);
    assert_eq!(ps[0], never_seen(1));
    assert_eq!(ps[1]["lastLocation"], "Xbox");
}

#[tokio::test]
async fn a_form_body_with_bracketed_user_ids_keys_is_a_list() {
    let app = spawn_app().await;
    let res = post_raw(
        &app,
        "application/x-www-form-urlencoded",
        "userIds[]=4&userIds[]=3",
    )
    .await;
    assert_eq!(user_ids(&presences_of(res).await), vec![4, 3]);
    let res = post_raw(
        &app,
        "application/x-www-form-urlencoded",
        "userIds%5B%5D=8&userIds%5B%5D=9",
    )
    .await;
    assert_eq!(user_ids(&presences_of(res).await), vec![8, 9]);
}

#[tokio::test]
async fn a_form_body_with_indexed_user_ids_keys_is_a_list() {
    let app = spawn_app().await;
    let res = post_raw(
        &app,
        "application/x-www-form-urlencoded",
        "userIds[0]=5&userIds[1]=6",
    )
    .await;
    assert_eq!(user_ids(&presences_of(res).await), vec![5, 6]);
    let res = post_raw(
        &app,
        "application/x-www-form-urlencoded",
        "userIds%5B0%5D=7&userIds%5B1%5D=8",
    )
    .await;
    assert_eq!(user_ids(&presences_of(res).await), vec![7, 8]);
}

#[tokio::test]
async fn a_form_body_follows_the_same_id_rules_as_json() {
    let app = spawn_app().await;
    let res = post_raw(&app, "application/x-www-form-urlencoded", "userIds=abc").await;
    assert_eq!(error_of(res).await, (400, 1, "Invalid user id.".to_owned()));
    let res = post_raw(&app, "application/x-www-form-urlencoded", "userIds=0").await;
    assert_eq!(error_of(res).await, (400, 1, "Invalid user id.".to_owned()));
    let too_many = vec!["userIds=1"; 51].join("&");
    let res = post_raw(&app, "application/x-www-form-urlencoded", too_many).await;
    assert_eq!(
        error_of(res).await,
        (
            400,
            2,
            "Too many User Ids being sent in the request.".to_owned()
        )
    );
}

#[tokio::test]
async fn a_text_json_request_body_is_read_as_json() {
    let app = spawn_app().await;
    let res = post_raw(&app, "text/json", r#"{"userIds":[21,"22"]}"#).await;
    assert_eq!(user_ids(&presences_of(res).await), vec![21, 22]);
}

#[tokio::test]
async fn charset_parameters_on_the_request_type_are_allowed() {
    let app = spawn_app().await;
    for (content_type, body) in [
        ("application/json; charset=utf-8", r#"{"userIds":[31]}"#),
        ("application/json;charset=UTF-8", r#"{"userIds":[31]}"#),
        ("text/json; charset=utf-8", r#"{"userIds":[31]}"#),
        (
            "application/x-www-form-urlencoded; charset=UTF-8",
            "userIds=31",
        ),
    ] {
        let res = post_raw(&app, content_type, body).await;
        assert_eq!(
            user_ids(&presences_of(res).await),
            vec![31],
            "{content_type}"
        );
    }
}

#[tokio::test]
async fn last_online_of_a_fresh_heartbeat_is_rfc3339_utc_with_milliseconds_near_now() {
    let app = spawn_app().await;
    let before = Utc::now();
    register(&app, 40, json!({})).await;
    let after = Utc::now();
    let at = assert_recent(&app.presence_of(40).await["lastOnline"]);
    // The server stamps at millisecond resolution, so compare with truncated bounds.
    let before_ms = before.timestamp_millis();
    let after_ms = after.timestamp_millis();
    assert!(
        (before_ms..=after_ms).contains(&at.timestamp_millis()),
        "{at} not between {before} and {after}"
    );
}

#[tokio::test]
async fn integer_mode_writes_presence_types_as_0_1_2_3() {
    let app = spawn_app_with(|s| {
        s.api.presence_type = PresenceTypeFormat::Integer;
        s.places = vec![crossroads()];
    })
    .await;
    register(&app, 1, json!({"location": "Xbox"})).await;
    register(&app, 2, json!({"placeId": 1818})).await;
    register(&app, 3, json!({"location": "Studio"})).await;
    register(&app, 4, json!({"location": "Xbox"})).await;
    register(&app, 4, json!({"disconnect": true})).await;
    let ps = app.lookup(&[5, 4, 1, 2, 3]).await;
    let types: Vec<&Value> = ps.iter().map(|p| &p["userPresenceType"]).collect();
    assert_eq!(
        types,
        vec![&json!(0), &json!(0), &json!(1), &json!(2), &json!(3)]
    );
    // Only the type changes: everything else is as in string mode.
    assert_eq!(ps[2]["lastLocation"], "Xbox");
    assert_eq!(ps[3]["lastLocation"], "Classic: Crossroads");
    assert_eq!(ps[0]["lastOnline"], NEVER_SEEN);
}

#[tokio::test]
async fn string_mode_is_the_default() {
    let app = spawn_app().await;
    register(&app, 1, json!({})).await;
    let ps = app.lookup(&[1, 2]).await;
    assert_eq!(ps[0]["userPresenceType"], "Online");
    assert_eq!(ps[1]["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_lookup_of_unknown_ids_does_not_create_them() {
    let app = spawn_app_with(|s| s.api.max_user_ids = 1000).await;
    let ids: Vec<u64> = (1_000_000..1_001_000).collect();
    let first = app.lookup(&ids).await;
    assert_eq!(first.len(), 1000);
    let second = app.lookup(&ids).await;
    for (i, p) in second.iter().enumerate() {
        assert_eq!(p, &never_seen(ids[i]));
    }
    assert_eq!(first, second);
}

#[tokio::test]
async fn lookups_never_extend_a_users_presence() {
    let ttl = Duration::from_secs(60);
    let app = spawn_app_with_clock(|s| {
        s.presence.heartbeat_ttl = ttl;
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    register(&app, 50, json!({"location": "Xbox"})).await;
    // A lookup every second of the TTL: had one extended the presence, the user would
    // still be present at the deadline.
    for _ in 1..60 {
        app.advance(Duration::from_secs(1));
        assert_eq!(app.presence_of(50).await["userPresenceType"], "Online");
    }
    app.advance(Duration::from_secs(1));
    let p = app.presence_of(50).await;
    assert_eq!(p["userPresenceType"], "Offline");
    assert_eq!(p["lastLocation"], "Xbox");
}

#[tokio::test]
async fn presence_is_exact_at_read_time_before_the_sweeper_runs() {
    let ttl = Duration::from_secs(60);
    let app = spawn_app_with_clock(|s| {
        s.presence.heartbeat_ttl = ttl;
        // The sweeper will not run during the test: reads alone must see the expiry.
        s.presence.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    register(&app, 51, json!({"placeId": 99})).await;
    app.advance(ttl - Duration::from_millis(1));
    assert_eq!(app.presence_of(51).await["userPresenceType"], "InGame");
    app.advance(Duration::from_millis(1));
    let p = app.presence_of(51).await;
    assert_eq!(p["userPresenceType"], "Offline");
    assert_eq!(p["lastLocation"], "Playing");
    assert_eq!(p["placeId"], Value::Null);
    assert_eq!(p["rootPlaceId"], Value::Null);
    assert!(app.metrics().await.contains("presence_expired_total 0\n"));
}

#[tokio::test]
async fn the_lookup_needs_no_credential_by_default_even_with_a_bad_one() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(USERS))
        .bearer_auth("garbage")
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(presences_of(res).await, vec![never_seen(1)]);
}

#[tokio::test]
async fn with_auth_required_a_lookup_without_a_credential_is_401() {
    let app = spawn_app_with(|s| s.api.require_auth_for_lookup = true).await;
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert_eq!(
        error_of(res).await,
        (
            401,
            0,
            "Authorization has been denied for this request.".to_owned()
        )
    );
    let res = app
        .client
        .post(app.url(USERS))
        .bearer_auth("not.a.jwt")
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(res).await,
        (
            401,
            0,
            "Authorization has been denied for this request.".to_owned()
        )
    );
}

#[tokio::test]
async fn with_auth_required_a_bearer_token_is_enough() {
    let app = spawn_app_with(|s| s.api.require_auth_for_lookup = true).await;
    let res = app
        .client
        .post(app.url(USERS))
        .bearer_auth(app.token(9))
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(presences_of(res).await, vec![never_seen(1)]);
}

#[tokio::test]
async fn with_auth_required_a_session_cookie_is_enough_without_a_csrf_token() {
    let app = spawn_app_with(|s| s.api.require_auth_for_lookup = true).await;
    let res = app
        .client
        .post(app.url(USERS))
        .header("cookie", format!(".ROBLOSECURITY={}", app.token(9)))
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(presences_of(res).await, vec![never_seen(1)]);
}
