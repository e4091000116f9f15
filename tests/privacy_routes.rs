//! The privacy routes of CONTRACT section 11 as the HTTP surface: who may call them, the
//! answers' shapes, the refusals of bad input (400 in the contract's shape, nothing
//! changed), 405s, and an unknown `x-api-key` refused on every API route. What the stored
//! settings and friendships then do to what others see is tested elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::game::{add_key, game_settings, rfc3339, sha256_hex, GAME_KEY, READ_KEY};
use common::{error_of, spawn_app_with, spawn_app_with_clock, TestApp, DENIED, JSON_UTF8};
use presence_server::Settings;
use reqwest::Method;
use serde_json::{json, Value};

/// A key with the `privacy` scope only.
const PRIVACY_KEY: &str = "test-privacy-key-0123456789abcdef0123456789abcdef0123";
const SETTINGS: &str = "/v1/presence/settings";
const FRIENDSHIPS: &str = "/v1/friendships";
const DEFAULTS: &str = r#"{"visibility":"everyone","invisible":false,"invisibleUntil":null}"#;
const CSRF_FAILED: &str = "Token Validation Failed";

fn user_settings(id: &str) -> String {
    format!("/v1/users/{id}/presence-settings")
}

fn user_friends(id: &str) -> String {
    format!("/v1/users/{id}/friends")
}

/// The privacy key, and the game-servers and read-only keys of [`game_settings`].
fn keys(settings: &mut Settings) {
    game_settings(settings);
    add_key(settings, "platform", PRIVACY_KEY, &["privacy"]);
}

async fn spawn() -> TestApp {
    spawn_app_with(keys).await
}

fn keyed(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("x-api-key", PRIVACY_KEY)
}

fn as_user(app: &TestApp, method: Method, path: &str, user: u64) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .bearer_auth(app.token(user))
}

fn with_cookie(app: &TestApp, method: Method, path: &str, user: u64) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("cookie", format!(".ROBLOSECURITY={}", app.token(user)))
}

/// A 200's JSON body, checking its content type.
async fn ok_json(res: reqwest::Response, what: &str) -> Value {
    let status = res.status();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let text = res.text().await.unwrap();
    assert_eq!(status, 200, "{what}: {text}");
    assert_eq!(content_type, JSON_UTF8, "{what}");
    serde_json::from_str(&text).unwrap()
}

/// The answer of `GET /v1/presence/settings` for `user`, as text.
async fn own_settings(app: &TestApp, user: u64) -> String {
    let res = as_user(app, Method::GET, SETTINGS, user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// The answer of `GET /v1/users/{user}/friends`.
async fn friends_of(app: &TestApp, user: u64) -> Value {
    let res = keyed(app, Method::GET, &user_friends(&user.to_string()))
        .send()
        .await
        .unwrap();
    ok_json(res, "friends").await
}

/// A settings answer: exactly the three keys, of their types.
fn assert_settings_shape(v: &Value) {
    let map = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["invisible", "invisibleUntil", "visibility"], "{v}");
    assert!(
        ["everyone", "friends", "nobody"].contains(&v["visibility"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["invisible"].is_boolean(), "{v}");
    assert!(
        v["invisibleUntil"].is_null() || v["invisibleUntil"].is_string(),
        "{v}"
    );
}

/// `{"skipped":[...]}` with pairs of two positive ids.
fn assert_skipped_shape(v: &Value) {
    let map = v.as_object().unwrap();
    assert_eq!(map.len(), 1, "{v}");
    for pair in v["skipped"].as_array().unwrap() {
        let pair = pair.as_array().unwrap();
        assert_eq!(pair.len(), 2, "{v}");
        assert!(
            pair.iter().all(|id| id.as_u64().is_some_and(|n| n > 0)),
            "{v}"
        );
    }
}

// ---- GET and PATCH /v1/presence/settings ----

#[tokio::test]
async fn a_user_who_set_nothing_gets_the_default_settings_with_a_bearer_or_a_cookie() {
    let app = spawn().await;
    let res = as_user(&app, Method::GET, SETTINGS, 7)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], JSON_UTF8);
    assert_eq!(res.text().await.unwrap(), DEFAULTS);
    // A read needs no CSRF token, even with a cookie.
    let res = with_cookie(&app, Method::GET, SETTINGS, 8)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(res.text().await.unwrap(), DEFAULTS);
}

#[tokio::test]
async fn the_own_settings_routes_need_the_users_own_valid_credential() {
    let app = spawn().await;
    let other_secret = presence_server::auth::Authenticator::new("another-secret")
        .mint(
            presence_server::presence::UserId::new(7).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    for method in [Method::GET, Method::PATCH] {
        let plain = || {
            app.client
                .request(method.clone(), app.url(SETTINGS))
                .json(&json!({"visibility": "nobody"}))
        };
        let denied = [
            ("no credential", plain()),
            ("a garbage bearer", plain().bearer_auth("not-a-jwt")),
            ("another secret's token", plain().bearer_auth(&other_secret)),
            (
                "a garbage cookie, without a CSRF token",
                plain().header("cookie", ".ROBLOSECURITY=not-a-jwt"),
            ),
            (
                "a privacy key alone",
                plain().header("x-api-key", PRIVACY_KEY),
            ),
            ("a read key alone", plain().header("x-api-key", READ_KEY)),
        ];
        for (what, req) in denied {
            let res = req.send().await.unwrap();
            assert_eq!(
                error_of(res).await,
                (401, 0, DENIED.to_owned()),
                "{method} with {what}"
            );
        }
    }
}

#[tokio::test]
async fn a_cookie_patch_needs_the_csrf_token_a_bearer_patch_does_not() {
    // On a clock that stands still: each request mints its credential, a CSRF token is
    // bound to the credential, and the test compares the tokens of several answers.
    let app = spawn_app_with_clock(keys).await;
    let patch =
        || with_cookie(&app, Method::PATCH, SETTINGS, 7).json(&json!({"visibility": "friends"}));
    let res = patch().send().await.unwrap();
    let token = res
        .headers()
        .get("x-csrf-token")
        .expect("a 403 carries x-csrf-token")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!token.is_empty());
    assert_eq!(error_of(res).await, (403, 0, CSRF_FAILED.to_owned()));
    for wrong in ["", "wrong-token"] {
        let res = patch().header("x-csrf-token", wrong).send().await.unwrap();
        assert_eq!(res.headers()["x-csrf-token"].to_str().unwrap(), token);
        assert_eq!(error_of(res).await, (403, 0, CSRF_FAILED.to_owned()));
    }
    // Another user's token does not do.
    let theirs = with_cookie(&app, Method::PATCH, SETTINGS, 8)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let theirs = theirs.headers()["x-csrf-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let res = patch().header("x-csrf-token", theirs).send().await.unwrap();
    assert_eq!(error_of(res).await, (403, 0, CSRF_FAILED.to_owned()));
    // A service key does not stand in for the token on a user's own route.
    let res = patch()
        .header("x-api-key", PRIVACY_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (403, 0, CSRF_FAILED.to_owned()));

    let res = patch().header("x-csrf-token", &token).send().await.unwrap();
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_settings_shape(&ok_json(res, "cookie with its token").await);
    let res = as_user(&app, Method::PATCH, SETTINGS, 9)
        .json(&json!({"visibility": "nobody"}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_settings_shape(&ok_json(res, "bearer").await);
}

/// Bodies every settings route refuses with 400 code 0, `now_ms` the server's time.
fn bad_settings_bodies(now_ms: i64) -> Vec<(&'static str, Value)> {
    let future = rfc3339(now_ms + 3_600_000);
    vec![
        ("an unknown visibility", json!({"visibility": "all"})),
        (
            "a visibility in another case",
            json!({"visibility": "Everyone"}),
        ),
        ("an empty visibility", json!({"visibility": ""})),
        ("a visibility that is a number", json!({"visibility": 1})),
        (
            "invisibleUntil long past",
            json!({"invisible": true, "invisibleUntil": "2001-01-01T00:00:00Z"}),
        ),
        (
            "invisibleUntil a second ago",
            json!({"invisible": true, "invisibleUntil": rfc3339(now_ms - 1000)}),
        ),
        (
            "invisibleUntil without invisible",
            json!({"invisibleUntil": future}),
        ),
        (
            "invisibleUntil with invisible false",
            json!({"invisible": false, "invisibleUntil": future}),
        ),
        (
            "invisibleUntil with invisible null",
            json!({"invisible": null, "invisibleUntil": future}),
        ),
        (
            "invisibleUntil that is no time",
            json!({"invisible": true, "invisibleUntil": "tomorrow"}),
        ),
        (
            "invisibleUntil that is a number",
            json!({"invisible": true, "invisibleUntil": now_ms + 3_600_000}),
        ),
        ("invisible as text", json!({"invisible": "true"})),
        (
            "a good visibility beside a bad end",
            json!({"visibility": "nobody", "invisible": true, "invisibleUntil": "2001-01-01T00:00:00Z"}),
        ),
        ("an array", json!([{"visibility": "nobody"}])),
        ("a string", json!("nobody")),
    ]
}

#[tokio::test]
async fn a_bad_settings_body_is_400_code_0_and_changes_nothing() {
    let app = spawn().await;
    let now_ms = app.clock.now().wall.0;
    for (what, body) in bad_settings_bodies(now_ms) {
        let res = as_user(&app, Method::PATCH, SETTINGS, 7)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "PATCH with {what}"
        );
        let res = keyed(&app, Method::PUT, &user_settings("8"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "PUT with {what}"
        );
    }
    for form in [
        "visibility=all",
        "invisible=yes",
        "invisibleUntil=2099-01-01T00%3A00%3A00Z",
        "invisible=true&invisibleUntil=2001-01-01T00%3A00%3A00Z",
    ] {
        let res = as_user(&app, Method::PATCH, SETTINGS, 7)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "form {form}"
        );
    }
    assert_eq!(own_settings(&app, 7).await, DEFAULTS);
    assert_eq!(own_settings(&app, 8).await, DEFAULTS);
}

#[tokio::test]
async fn good_settings_bodies_answer_settings_in_json_and_forms() {
    let app = spawn().await;
    let future = rfc3339(app.clock.now().wall.0 + 3_600_000);
    let bodies = [
        json!({}),
        json!({"visibility": "friends"}),
        json!({"visibility": null, "invisible": null, "invisibleUntil": null}),
        json!({"invisible": true}),
        json!({"invisible": true, "invisibleUntil": future}),
        json!({"invisible": false, "visibility": "everyone", "unknown": [1]}),
    ];
    for body in &bodies {
        let res = as_user(&app, Method::PATCH, SETTINGS, 7)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_settings_shape(&ok_json(res, &format!("PATCH {body}")).await);
        let res = keyed(&app, Method::PUT, &user_settings("8"))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_settings_shape(&ok_json(res, &format!("PUT {body}")).await);
    }
    let until = future.replace(':', "%3A");
    for (content_type, body) in [
        (
            "application/x-www-form-urlencoded",
            "visibility=nobody".to_owned(),
        ),
        (
            "application/x-www-form-urlencoded; charset=utf-8",
            format!("invisible=true&invisibleUntil={until}&visibility="),
        ),
        ("text/json", r#"{"invisible":false}"#.to_owned()),
        ("application/json", String::new()),
    ] {
        let res = as_user(&app, Method::PATCH, SETTINGS, 7)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_settings_shape(&ok_json(res, &format!("{content_type}: {body}")).await);
    }
    // No content type with an empty body is an empty body; with a body, 415.
    let res = as_user(&app, Method::PATCH, SETTINGS, 7)
        .send()
        .await
        .unwrap();
    assert_settings_shape(&ok_json(res, "no body").await);
    for (content_type, body) in [
        (None, "{}"),
        (Some("text/plain"), "{}"),
        (Some("multipart/form-data; boundary=x"), "{}"),
    ] {
        let mut req = keyed(&app, Method::PUT, &user_settings("8")).body(body);
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        let res = req.send().await.unwrap();
        assert_eq!(error_of(res).await.0, 415, "{content_type:?}");
    }
}

/// What a settings change answers, and what the user then reads: needs the settings to be
/// stored (CONTRACT section 11), which this branch's backends do not do yet.
#[tokio::test]
async fn a_change_answers_the_new_settings_and_the_user_reads_them() {
    let app = spawn().await;
    let res = as_user(&app, Method::PATCH, SETTINGS, 7)
        .json(&json!({"visibility": "friends"}))
        .send()
        .await
        .unwrap();
    let expected = r#"{"visibility":"friends","invisible":false,"invisibleUntil":null}"#;
    assert_eq!(res.text().await.unwrap(), expected);
    assert_eq!(own_settings(&app, 7).await, expected);
    let until = app.clock.now().wall.0 + 3_600_000;
    let res = keyed(&app, Method::PUT, &user_settings("8"))
        .json(&json!({"invisible": true, "invisibleUntil": rfc3339(until), "visibility": "nobody"}))
        .send()
        .await
        .unwrap();
    let expected =
        json!({"visibility": "nobody", "invisible": true, "invisibleUntil": rfc3339(until)});
    assert_eq!(ok_json(res, "PUT").await, expected);
    let mine: Value = serde_json::from_str(&own_settings(&app, 8).await).unwrap();
    assert_eq!(mine, expected);
}

// ---- the service-key routes ----

#[tokio::test]
async fn the_platforms_routes_need_a_key_with_the_privacy_scope() {
    let app = spawn().await;
    let routes = [
        (
            Method::PUT,
            user_settings("1"),
            json!({"visibility": "nobody"}),
        ),
        (
            Method::POST,
            FRIENDSHIPS.to_owned(),
            json!({"add": [[1, 2]]}),
        ),
        (Method::PUT, user_friends("1"), json!({"userIds": [2]})),
        (Method::GET, user_friends("1"), json!({})),
    ];
    for (method, path, body) in &routes {
        let plain = || app.client.request(method.clone(), app.url(path)).json(body);
        let denied = [
            ("no key", plain()),
            ("an unknown key", plain().header("x-api-key", "not-a-key")),
            ("an empty key", plain().header("x-api-key", "")),
            (
                "the hash of the key as the key",
                plain().header("x-api-key", sha256_hex(PRIVACY_KEY)),
            ),
            (
                "the key twice",
                plain()
                    .header("x-api-key", PRIVACY_KEY)
                    .header("x-api-key", PRIVACY_KEY),
            ),
            (
                "a user's bearer credential",
                plain().bearer_auth(app.token(1)),
            ),
            (
                "a user's cookie credential",
                plain().header("cookie", format!(".ROBLOSECURITY={}", app.token(1))),
            ),
        ];
        for (what, req) in denied {
            let res = req.send().await.unwrap();
            assert_eq!(
                error_of(res).await,
                (401, 0, DENIED.to_owned()),
                "{method} {path} with {what}"
            );
        }
        for (what, key) in [("game-servers", GAME_KEY), ("read", READ_KEY)] {
            let res = plain().header("x-api-key", key).send().await.unwrap();
            assert_eq!(
                error_of(res).await,
                (403, 0, "Forbidden".to_owned()),
                "{method} {path} with a key of the {what} scope"
            );
        }
        // The key is checked before the path: a bad id without a key is still 401.
        let bad_path = path.replace("/1/", "/0/");
        let res = app
            .client
            .request(method.clone(), app.url(&bad_path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(res).await.0, 401, "{method} {bad_path}");
    }
    // Nothing was applied by any refused call.
    assert_eq!(friends_of(&app, 1).await, json!({"userIds": []}));
}

#[tokio::test]
async fn a_bad_user_id_in_the_path_is_400_code_1() {
    let app = spawn().await;
    for id in [
        "0",
        "-1",
        "+1",
        "abc",
        "1.5",
        "1e3",
        "9223372036854775808",
        "18446744073709551616",
        "%20",
        "1%20",
    ] {
        for (method, path, body) in [
            (Method::PUT, user_settings(id), json!({})),
            (Method::PUT, user_friends(id), json!({"userIds": []})),
            (Method::GET, user_friends(id), json!({})),
        ] {
            let res = keyed(&app, method.clone(), &path)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_of(res).await,
                (400, 1, "Invalid user id.".to_owned()),
                "{method} {path}"
            );
        }
    }
    // The largest id, and one with leading zeros, are ids.
    for id in ["9223372036854775807", "0042"] {
        let res = keyed(&app, Method::GET, &user_friends(id))
            .send()
            .await
            .unwrap();
        assert_eq!(ok_json(res, id).await, json!({"userIds": []}));
    }
}

#[tokio::test]
async fn friendship_bodies_are_checked_whole_before_anything_is_applied() {
    let app = spawn().await;
    let post = |body: Value| keyed(&app, Method::POST, FRIENDSHIPS).json(&body).send();
    let code_1 = [
        ("a user with itself", json!({"add": [[3, 3]]})),
        ("a user with itself, removed", json!({"remove": [[3, 3]]})),
        ("a zero id", json!({"add": [[0, 1]]})),
        ("a negative id", json!({"add": [[-1, 2]]})),
        (
            "an id past int64",
            json!({"add": [[1, 9_223_372_036_854_775_808_u64]]}),
        ),
        ("a fraction", json!({"add": [[1.5, 2]]})),
        ("text", json!({"add": [["x", 2]]})),
        ("a signed text", json!({"add": [["+1", 2]]})),
        ("a boolean", json!({"add": [[true, 2]]})),
        ("null", json!({"add": [[null, 2]]})),
        ("an array", json!({"add": [[[1], 2]]})),
        (
            "a bad pair after good ones",
            json!({"add": [[1, 2], [1, 3]], "remove": [[4, 5], [6, 0]]}),
        ),
        (
            "a self pair after good ones",
            json!({"remove": [[4, 5]], "add": [[1, 2], [9, 9]]}),
        ),
    ];
    for (what, body) in code_1 {
        assert_eq!(
            error_of(post(body).await.unwrap()).await,
            (400, 1, "Invalid user id.".to_owned()),
            "{what}"
        );
    }
    let code_0 = [
        ("a pair of one", json!({"add": [[1]]})),
        ("a pair of three", json!({"add": [[1, 2, 3]]})),
        ("a pair as text", json!({"add": ["1,2"]})),
        ("a pair as a number", json!({"add": [5]})),
        ("a list that is a number", json!({"add": 5})),
        ("a list that is an object", json!({"remove": {"a": 1}})),
        ("an array body", json!([[1, 2]])),
    ];
    for (what, body) in code_0 {
        assert_eq!(
            error_of(post(body).await.unwrap()).await,
            (400, 0, "BadRequest".to_owned()),
            "{what}"
        );
    }
    let pairs = |n: u64, from: u64| -> Vec<[u64; 2]> {
        (0..n).map(|i| [from + i, from + 5000 + i]).collect()
    };
    let too_many = "Too many User Ids being sent in the request.".to_owned();
    for (what, body) in [
        ("1001 adds", json!({"add": pairs(1001, 1000)})),
        (
            "600 adds and 401 removes",
            json!({"add": pairs(600, 1000), "remove": pairs(401, 2000)}),
        ),
        (
            "1001 copies of one pair",
            json!({"add": vec![[1, 2]; 1001]}),
        ),
        (
            "1001 pairs, one of them bad",
            json!({"add": [[0, 0]], "remove": pairs(1000, 1000)}),
        ),
    ] {
        assert_eq!(
            error_of(post(body).await.unwrap()).await,
            (400, 2, too_many.clone()),
            "{what}"
        );
    }
    // Nothing of any refused call was applied.
    for user in [1, 2, 4, 1000, 6000] {
        assert_eq!(
            friends_of(&app, user).await,
            json!({"userIds": []}),
            "{user}"
        );
    }
    // 1000 pairs in all is within the bound; absent and null lists are none.
    for body in [
        json!({"add": pairs(600, 1000), "remove": pairs(400, 2000)}),
        json!({"add": [[1, 2], ["3", 4], [2, 1]], "remove": null}),
        json!({}),
        json!({"add": null, "remove": []}),
    ] {
        let answer = ok_json(post(body.clone()).await.unwrap(), "friendships").await;
        assert_eq!(answer, json!({"skipped": []}), "{body}");
    }
    // Forms: one field per pair, its two ids separated by a comma.
    let form = |body: &'static str| {
        keyed(&app, Method::POST, FRIENDSHIPS)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let answer = ok_json(
        form("add=11,12&add[]=11,13&remove=14,15").await.unwrap(),
        "form",
    )
    .await;
    assert_skipped_shape(&answer);
    assert_eq!(error_of(form("add=11").await.unwrap()).await.1, 0);
    assert_eq!(error_of(form("add=11,12,13").await.unwrap()).await.1, 0);
    assert_eq!(error_of(form("add=11,11").await.unwrap()).await.1, 1);
    assert_eq!(error_of(form("remove=11,x").await.unwrap()).await.1, 1);
}

#[tokio::test]
async fn a_friend_list_is_checked_whole_against_privacy_max_friends() {
    let app = spawn_app_with(|s| {
        keys(s);
        s.privacy.max_friends = 5;
    })
    .await;
    let put = |body: Value| {
        keyed(&app, Method::PUT, &user_friends("1"))
            .json(&body)
            .send()
    };
    for (what, body) in [
        ("the user itself", json!({"userIds": [2, 1]})),
        ("a zero id", json!({"userIds": [0]})),
        ("text", json!({"userIds": ["x"]})),
        ("a boolean", json!({"userIds": [false]})),
        ("null inside", json!({"userIds": [2, null]})),
    ] {
        assert_eq!(
            error_of(put(body).await.unwrap()).await,
            (400, 1, "Invalid user id.".to_owned()),
            "{what}"
        );
    }
    for (what, body) in [
        ("no userIds", json!({})),
        ("null userIds", json!({"userIds": null})),
        ("userIds a number", json!({"userIds": 2})),
        ("an array body", json!([2, 3])),
    ] {
        assert_eq!(
            error_of(put(body).await.unwrap()).await,
            (400, 0, "BadRequest".to_owned()),
            "{what}"
        );
    }
    let res = keyed(&app, Method::PUT, &user_friends("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.1, 0, "an empty body has no userIds");
    for (what, body) in [
        ("six ids", json!({"userIds": [2, 3, 4, 5, 6, 7]})),
        (
            "six copies of one id",
            json!({"userIds": [2, 2, 2, 2, 2, 2]}),
        ),
        ("six ids, one bad", json!({"userIds": [2, 3, 4, 5, 6, 1]})),
    ] {
        assert_eq!(
            error_of(put(body).await.unwrap()).await,
            (
                400,
                2,
                "Too many User Ids being sent in the request.".to_owned()
            ),
            "{what}"
        );
    }
    for user in 1..=7 {
        assert_eq!(friends_of(&app, user).await, json!({"userIds": []}));
    }
    for body in [
        json!({"userIds": [5, "4", 3, 2, 2]}),
        json!({"userIds": []}),
    ] {
        let answer = ok_json(put(body.clone()).await.unwrap(), "friend list").await;
        assert_eq!(answer, json!({"skipped": []}), "{body}");
    }
    // A form: one field per id; `userIds=` alone is no friends.
    for form in ["userIds=3&userIds=2", "userIds="] {
        let res = keyed(&app, Method::PUT, &user_friends("1"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_skipped_shape(&ok_json(res, form).await);
    }
    let answer = friends_of(&app, 1).await;
    let ids = answer["userIds"].as_array().unwrap();
    assert!(
        ids.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
        "ascending: {answer}"
    );
}

// ---- methods, keys on every route, bodies, rate limits, browsers ----

#[tokio::test]
async fn other_methods_are_405_with_the_routes_methods() {
    let app = spawn().await;
    let cases = [
        (
            SETTINGS.to_owned(),
            "GET, PATCH",
            [Method::POST, Method::PUT, Method::DELETE],
        ),
        (
            user_settings("1"),
            "PUT",
            [Method::GET, Method::PATCH, Method::POST],
        ),
        (
            FRIENDSHIPS.to_owned(),
            "POST",
            [Method::GET, Method::PUT, Method::DELETE],
        ),
        (
            user_friends("1"),
            "GET, PUT",
            [Method::POST, Method::PATCH, Method::DELETE],
        ),
    ];
    for (path, allow, methods) in cases {
        for method in methods {
            let res = keyed(&app, method.clone(), &path)
                .bearer_auth(app.token(1))
                .send()
                .await
                .unwrap();
            assert_eq!(res.headers()["allow"], allow, "{method} {path}");
            assert_eq!(error_of(res).await.0, 405, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn an_unknown_api_key_is_401_on_every_api_route_even_beside_a_valid_credential() {
    let app = spawn().await;
    let routes: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            common::REGISTER.into(),
            json!({"location": "Home"}),
        ),
        (Method::POST, common::USERS.into(), json!({"userIds": [1]})),
        (
            Method::GET,
            "/v1/presence/stream?userIds=1".into(),
            json!({}),
        ),
        (Method::GET, "/v1/presence/ws".into(), json!({})),
        (Method::GET, SETTINGS.into(), json!({})),
        (
            Method::PATCH,
            SETTINGS.into(),
            json!({"visibility": "nobody"}),
        ),
        (Method::PUT, user_settings("1"), json!({})),
        (Method::POST, FRIENDSHIPS.into(), json!({})),
        (Method::PUT, user_friends("1"), json!({"userIds": []})),
        (Method::GET, user_friends("1"), json!({})),
        (
            Method::PUT,
            format!("/v1/game-servers/{}", common::GAME),
            json!({"placeId": 1818, "players": [1]}),
        ),
        (
            Method::POST,
            format!("/v1/game-servers/{}/players", common::GAME),
            json!({"joined": [1]}),
        ),
        (
            Method::DELETE,
            format!("/v1/game-servers/{}", common::GAME),
            json!({}),
        ),
        // A wrong method on an API route is refused for its key first.
        (Method::DELETE, common::USERS.into(), json!({})),
    ];
    for (method, path, body) in &routes {
        for key in ["not-a-key", "", "key with spaces", &sha256_hex(PRIVACY_KEY)] {
            let res = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(app.token(1))
                .header("x-api-key", key)
                .json(body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_of(res).await,
                (401, 0, DENIED.to_owned()),
                "{method} {path} with x-api-key {key:?}"
            );
        }
    }
    // Nothing was written by the refused calls.
    assert_eq!(app.presence_of(1).await["userPresenceType"], "Offline");
    // A known key without the route's use is not read on a user's own routes, and views
    // as anonymous on lookups.
    for key in [GAME_KEY, READ_KEY, PRIVACY_KEY] {
        let res = as_user(&app, Method::POST, common::REGISTER, 2)
            .header("x-api-key", key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "heartbeat beside {key}");
        let res = as_user(&app, Method::GET, SETTINGS, 2)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.text().await.unwrap(), DEFAULTS);
        let res = as_user(&app, Method::PATCH, SETTINGS, 2)
            .header("x-api-key", key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_settings_shape(&ok_json(res, "PATCH beside a key").await);
        let res = app
            .client
            .post(app.url(common::USERS))
            .header("x-api-key", key)
            .json(&json!({"userIds": [2]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "lookup with {key}");
    }
    // The operators' routes and the page read no credential: they answer as always. A path
    // that is no route stays 404.
    for path in ["/health", "/ready", "/metrics", "/openapi.json", "/"] {
        let res = app
            .client
            .get(app.url(path))
            .header("x-api-key", "not-a-key")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let res = app
        .client
        .get(app.url("/v1/nothing-here"))
        .header("x-api-key", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 404);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_before_it_is_read_whole() {
    let app = spawn_app_with(|s| {
        keys(s);
        s.server.max_body_bytes = 1024;
    })
    .await;
    let big = json!({"add": vec![[1_000_000_u64, 2_000_000_u64]; 200]});
    let res = keyed(&app, Method::POST, FRIENDSHIPS)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 413);
    let big = json!({"userIds": vec![1_000_000_u64; 200]});
    let res = keyed(&app, Method::PUT, &user_friends("1"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 413);
    let big = json!({"visibility": "x".repeat(2000)});
    let res = as_user(&app, Method::PATCH, SETTINGS, 1)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 413);
}

#[tokio::test]
async fn a_settings_change_shares_the_heartbeats_bucket_and_reading_them_the_lookups() {
    // A mock clock that stands still: no token comes back during the test.
    let app = spawn_app_with_clock(|s| {
        keys(s);
        s.rate_limit.register_per_second = 1;
        s.rate_limit.register_burst = 2;
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
    })
    .await;
    app.heartbeat(1, json!({})).await;
    app.heartbeat(1, json!({})).await;
    let res = as_user(&app, Method::PATCH, SETTINGS, 1)
        .json(&json!({"visibility": "friends"}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res).await, (429, 0, "TooManyRequests".to_owned()));
    // Another user's bucket is its own.
    let res = as_user(&app, Method::PATCH, SETTINGS, 2)
        .json(&json!({"visibility": "friends"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = as_user(&app, Method::GET, SETTINGS, 3)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = as_user(&app, Method::GET, SETTINGS, 4)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(res).await.0,
        429,
        "the address's read bucket is empty"
    );
    // Service-key calls have no rate limit.
    for _ in 0..5 {
        let res = keyed(&app, Method::GET, &user_friends("1"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let res = keyed(&app, Method::PUT, &user_settings("1"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn browsers_are_told_the_routes_methods_and_can_read_a_refused_key() {
    const ORIGIN: &str = "https://app.example";
    let app = spawn_app_with(|s| {
        keys(s);
        s.api.cors_origins = vec![ORIGIN.into()];
    })
    .await;
    for (path, methods, asked) in [
        (SETTINGS.to_owned(), "GET, PATCH", "PATCH"),
        (user_friends("1"), "GET, PUT", "PUT"),
        (user_settings("1"), "PUT", "PUT"),
        (FRIENDSHIPS.to_owned(), "POST", "POST"),
    ] {
        let res = app
            .client
            .request(Method::OPTIONS, app.url(&path))
            .header("origin", ORIGIN)
            .header("access-control-request-method", asked)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(res.headers()["access-control-allow-methods"], methods);
    }
    let res = app
        .client
        .get(app.url(SETTINGS))
        .header("origin", ORIGIN)
        .bearer_auth(app.token(1))
        .header("x-api-key", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(error_of(res).await.0, 401);
}

/// Every privacy route answers 503 with `Retry-After` while the backend cannot be reached.
#[tokio::test]
async fn every_privacy_route_is_503_while_redis_cannot_be_reached() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = spawn_app_with(|s| {
        keys(s);
        s.store.backend = presence_server::config::Backend::Redis;
        s.redis.url = format!("redis://127.0.0.1:{closed}");
        s.redis.cluster = false;
        s.redis.timeout = Duration::from_millis(200);
    })
    .await;
    let calls = [
        as_user(&app, Method::GET, SETTINGS, 1),
        as_user(&app, Method::PATCH, SETTINGS, 1).json(&json!({"visibility": "friends"})),
        keyed(&app, Method::PUT, &user_settings("1")).json(&json!({"invisible": true})),
        keyed(&app, Method::POST, FRIENDSHIPS).json(&json!({"add": [[1, 2]]})),
        keyed(&app, Method::PUT, &user_friends("1")).json(&json!({"userIds": [2]})),
        keyed(&app, Method::GET, &user_friends("1")),
    ];
    for call in calls {
        let res = call.send().await.unwrap();
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(
            error_of(res).await,
            (503, 0, "ServiceUnavailable".to_owned())
        );
    }
}

#[tokio::test]
async fn a_read_key_needs_no_user_credential_and_no_rate_limit() {
    // A `read` key is a trusted caller (CONTRACT sections 10 and 11): lookups that require
    // a credential accept it, and the lookup bucket of its address does not apply.
    let app = spawn_app_with(|s| {
        keys(s);
        s.api.require_auth_for_lookup = true;
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
    })
    .await;
    for _ in 0..5 {
        let res = app
            .client
            .post(app.url("/v1/presence/users"))
            .header("x-api-key", READ_KEY)
            .json(&json!({"userIds": [1]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Without it, the same lookup needs a credential.
    let res = app
        .client
        .post(app.url("/v1/presence/users"))
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
