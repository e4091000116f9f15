#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn register_with_bearer(app: &TestApp, jwt: &str) -> reqwest::Response {
    app.client
        .post(app.url(REGISTER))
        .header("authorization", format!("Bearer {jwt}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

async fn register_with_cookie(app: &TestApp, jwt: &str, csrf: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(REGISTER))
        .header("cookie", format!(".ROBLOSECURITY={jwt}"))
        .json(&json!({"location": "Cookie land"}));
    if let Some(token) = csrf {
        req = req.header("x-csrf-token", token);
    }
    req.send().await.unwrap()
}

async fn assert_denied(res: reqwest::Response) {
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()));
}

#[tokio::test]
async fn a_bearer_credential_needs_no_csrf_token() {
    let app = spawn_app().await;
    let res = register_with_bearer(&app, &app.token(5)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(app.presence_of(5).await["userPresenceType"], "Online");
}

#[tokio::test]
async fn a_cookie_call_without_csrf_token_gets_403_with_a_token_and_succeeds_when_repeated_with_it()
{
    let app = spawn_app().await;
    let jwt = app.token(6);
    let res = register_with_cookie(&app, &jwt, None).await;
    let token = res
        .headers()
        .get("x-csrf-token")
        .expect("a 403 carries x-csrf-token")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!token.is_empty());
    assert_eq!(
        error_of(res).await,
        (403, 0, "Token Validation Failed".to_owned())
    );
    assert_eq!(app.presence_of(6).await["userPresenceType"], "Offline");

    let res = register_with_cookie(&app, &jwt, Some(&token)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-csrf-token").is_none());
    assert_eq!(res.text().await.unwrap(), "{}");
    let p = app.presence_of(6).await;
    assert_eq!(p["userPresenceType"], "Online");
    assert_eq!(p["lastLocation"], "Cookie land");
}

#[tokio::test]
async fn a_wrong_or_empty_csrf_token_is_refused_with_the_right_one() {
    let app = spawn_app().await;
    let jwt = app.token(7);
    let first = register_with_cookie(&app, &jwt, None).await;
    let right = first.headers()["x-csrf-token"].to_str().unwrap().to_owned();
    for wrong in ["", "AAAAAAAAAAAAAAAAAAAAAA", "not-a-token"] {
        let res = register_with_cookie(&app, &jwt, Some(wrong)).await;
        assert_eq!(res.headers()["x-csrf-token"].to_str().unwrap(), right);
        assert_eq!(
            error_of(res).await,
            (403, 0, "Token Validation Failed".to_owned())
        );
    }
}

#[tokio::test]
async fn a_csrf_token_issued_for_another_users_credential_is_refused() {
    let app = spawn_app().await;
    let alice = app.token(10);
    let bob = app.token(11);
    let res = register_with_cookie(&app, &alice, None).await;
    let alices_token = res.headers()["x-csrf-token"].to_str().unwrap().to_owned();
    let res = register_with_cookie(&app, &bob, Some(&alices_token)).await;
    assert_eq!(res.status(), 403);
    assert_ne!(
        res.headers()["x-csrf-token"].to_str().unwrap(),
        alices_token
    );
    assert_eq!(app.presence_of(11).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_bad_credential_is_401_before_any_csrf_check() {
    let app = spawn_app().await;
    let forged = sign(
        json!({"sub": "12", "exp": now_secs() + 3600}),
        Algorithm::HS256,
        "someone-elses-secret",
    );
    assert_denied(register_with_cookie(&app, &forged, None).await).await;
    assert_denied(register_with_cookie(&app, "garbage", Some("x")).await).await;
}

#[tokio::test]
async fn missing_malformed_forged_expired_and_unsigned_credentials_are_401() {
    let app = spawn_app().await;
    let res = app.post_json(REGISTER, &json!({})).await;
    assert_denied(res).await;

    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token abc"] {
        let res = app
            .client
            .post(app.url(REGISTER))
            .header("authorization", header)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_denied(res).await;
    }

    let forged = sign(
        json!({"sub": "12", "exp": now_secs() + 3600}),
        Algorithm::HS256,
        "someone-elses-secret",
    );
    let expired = sign(
        json!({"sub": "12", "exp": now_secs() - 5}),
        Algorithm::HS256,
        SECRET,
    );
    let no_exp = sign(json!({"sub": "12"}), Algorithm::HS256, SECRET);
    let other_alg = sign(
        json!({"sub": "12", "exp": now_secs() + 3600}),
        Algorithm::HS384,
        SECRET,
    );
    let bad_sub = sign(
        json!({"sub": "twelve", "exp": now_secs() + 3600}),
        Algorithm::HS256,
        SECRET,
    );
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"12","exp":{}}}"#, now_secs() + 3600));
    let alg_none = format!("{header}.{payload}.");
    for jwt in [forged, expired, no_exp, other_alg, bad_sub, alg_none] {
        assert_denied(register_with_bearer(&app, &jwt).await).await;
    }
    assert_eq!(app.presence_of(12).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn sub_may_be_a_number_and_the_user_comes_from_it_not_the_body() {
    let app = spawn_app().await;
    let jwt = sign(
        json!({"sub": 31, "exp": now_secs() + 3600}),
        Algorithm::HS256,
        SECRET,
    );
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(&jwt)
        .json(&json!({"userId": 32, "location": "Here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ps = app.lookup(&[31, 32]).await;
    assert_eq!(ps[0]["userPresenceType"], "Online");
    assert_eq!(ps[1]["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_lookup_needs_no_credential_and_no_csrf_token_by_default() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(USERS))
        .header("cookie", format!(".ROBLOSECURITY={}", app.token(1)))
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

// Credential times on the server's clock. JWT times are whole seconds; the server's clock
// counts milliseconds. A credential is valid from the first millisecond of its `nbf`
// second up to, not including, the first millisecond of its `exp` second. The mock clock
// starts on a whole second `t`, so `t * 1000 + offset` is exact.

#[tokio::test]
async fn a_credential_is_refused_from_the_first_millisecond_of_its_exp_second() {
    let app = spawn_app_with_clock(|_| {}).await;
    let t = app.now_secs();
    let jwt = sign(json!({"sub": "60", "exp": t + 2}), Algorithm::HS256, SECRET);
    assert_eq!(register_with_bearer(&app, &jwt).await.status(), 200);
    // The last millisecond before `exp`, with the credential already remembered as valid.
    app.advance(Duration::from_millis(1999));
    assert_eq!(register_with_bearer(&app, &jwt).await.status(), 200);
    app.advance(Duration::from_millis(1));
    assert_denied(register_with_bearer(&app, &jwt).await).await;
    // A credential whose `exp` is now was never accepted.
    let at_now = sign(json!({"sub": "61", "exp": t + 2}), Algorithm::HS256, SECRET);
    assert_denied(register_with_bearer(&app, &at_now).await).await;
    assert_eq!(app.presence_of(61).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_credential_is_refused_before_its_nbf_second_and_accepted_from_it() {
    let app = spawn_app_with_clock(|_| {}).await;
    let t = app.now_secs();
    let jwt = sign(
        json!({"sub": "62", "nbf": t + 1, "exp": t + 3600}),
        Algorithm::HS256,
        SECRET,
    );
    assert_denied(register_with_bearer(&app, &jwt).await).await;
    app.advance(Duration::from_millis(999));
    assert_denied(register_with_bearer(&app, &jwt).await).await;
    // A cookie call is refused for the credential too, before any CSRF check.
    assert_denied(register_with_cookie(&app, &jwt, None).await).await;
    assert_eq!(app.presence_of(62).await["userPresenceType"], "Offline");
    app.advance(Duration::from_millis(1));
    assert_eq!(register_with_bearer(&app, &jwt).await.status(), 200);
    assert_eq!(app.presence_of(62).await["userPresenceType"], "Online");
}

#[tokio::test]
async fn a_csrf_token_lasts_thirty_minutes_at_least_and_an_hour_at_most_by_the_servers_clock() {
    let app = spawn_app_with_clock(|_| {}).await;
    let jwt = app
        .auth
        .mint(
            presence_server::presence::UserId::new(63).unwrap(),
            Duration::from_secs(4 * 3600),
        )
        .unwrap();
    let res = register_with_cookie(&app, &jwt, None).await;
    assert_eq!(res.status(), 403);
    let token = res.headers()["x-csrf-token"].to_str().unwrap().to_owned();
    app.advance(Duration::from_secs(30 * 60));
    assert_eq!(
        register_with_cookie(&app, &jwt, Some(&token))
            .await
            .status(),
        200
    );
    app.advance(Duration::from_secs(30 * 60));
    let res = register_with_cookie(&app, &jwt, Some(&token)).await;
    assert_eq!(res.status(), 403);
    let renewed = res.headers()["x-csrf-token"].to_str().unwrap().to_owned();
    assert_ne!(renewed, token);
    assert_eq!(
        register_with_cookie(&app, &jwt, Some(&renewed))
            .await
            .status(),
        200
    );
}
