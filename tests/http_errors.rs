#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP-level behaviour, black-box: routes, methods, sizes, content types, negotiation,
//! the `Host` header and missing credentials (CONTRACT section 3).
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use serde_json::{json, Value};

const TEXT_JSON_UTF8: &str = "text/json; charset=utf-8";

fn content_type(res: &reqwest::Response) -> String {
    res.headers()["content-type"].to_str().unwrap().to_owned()
}

/// Sends `request` as is on a fresh connection and returns the whole answer as text.
/// For what reqwest will not send: a chosen `Host`, a chunked body of known bytes.
async fn raw_http(addr: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        // The server may close as soon as it has answered; what was read is the answer.
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

/// Status code, lower-cased header block and body of a raw HTTP/1.1 answer.
fn parse_raw(answer: &str) -> (u16, String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split(' ')
        .nth(1)
        .expect("a status line")
        .parse()
        .unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A chunked body's payload (the server may answer in chunks too).
fn dechunk(head: &str, body: &str) -> String {
    if !head.contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `text` in HTTP/1.1 chunks of at most `size` bytes, with the final empty chunk.
fn chunked(text: &str, size: usize) -> String {
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(size) {
        out.push_str(&format!("{:x}\r\n", chunk.len()));
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out.push_str("0\r\n\r\n");
    out
}

#[tokio::test]
async fn an_unknown_route_is_404_in_the_json_error_shape() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1"),
        (reqwest::Method::GET, "/v1/presence/nope"),
        (reqwest::Method::POST, "/v2/presence/users"),
        (reqwest::Method::POST, "/v1/presence/user"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(content_type(&res), JSON_UTF8, "{method} {path}");
        let (status, code, message) = error_of(res).await;
        assert_eq!((status, code), (404, 0), "{method} {path}");
        assert!(!message.is_empty());
    }
}

#[tokio::test]
async fn other_methods_on_both_routes_are_405_allowing_post() {
    let app = spawn_app().await;
    for path in [REGISTER, USERS] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
        ] {
            let res = app
                .client
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(res.headers()["allow"], "POST", "{method} {path}");
            assert_eq!(content_type(&res), JSON_UTF8, "{method} {path}");
            let (status, code, message) = error_of(res).await;
            assert_eq!((status, code), (405, 0), "{method} {path}");
            assert!(!message.is_empty());
        }
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 64).await;
    let big = format!(r#"{{"userIds":[{}]}}"#, vec!["1"; 40].join(","));
    assert!(big.len() > 64);
    let res = app
        .client
        .post(app.url(USERS))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&res), JSON_UTF8);
    let (status, code, message) = error_of(res).await;
    assert_eq!((status, code), (413, 0));
    assert!(!message.is_empty());

    let location = "x".repeat(100);
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(1))
        .json(&json!({ "location": location }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 413);
    // Nothing of the refused heartbeat was applied.
    assert_eq!(
        app.presence_of(1).await["lastOnline"],
        "0001-01-01T00:00:00.000Z"
    );
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_accepted() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 64).await;
    let mut body = r#"{"userIds":[1,2,3]}"#.to_owned();
    body.push_str(&" ".repeat(64 - body.len()));
    assert_eq!(body.len(), 64);
    let res = app
        .client
        .post(app.url(USERS))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["userPresences"].as_array().unwrap().len(), 3);

    body.push(' ');
    let res = app
        .client
        .post(app.url(USERS))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn a_chunked_body_without_content_length_is_held_to_the_limit_too() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 64).await;
    let head = "POST /v1/presence/users HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";

    // Under the limit, in several chunks: read whole.
    let small = r#"{"userIds":[7,8]}"#;
    let answer = raw_http(app.addr, format!("{head}{}", chunked(small, 5))).await;
    let (status, headers, body) = parse_raw(&answer);
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&dechunk(&headers, &body)).unwrap();
    let ids: Vec<u64> = v["userPresences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![7, 8]);

    // Over the limit, with no length announced: refused once the limit is passed.
    let big = format!(r#"{{"userIds":[{}]}}"#, vec!["1"; 40].join(","));
    let answer = raw_http(app.addr, format!("{head}{}", chunked(&big, 16))).await;
    let (status, headers, body) = parse_raw(&answer);
    assert_eq!(status, 413, "{answer}");
    assert!(
        headers.contains("content-type: application/json; charset=utf-8"),
        "{headers}"
    );
    let v: Value = serde_json::from_str(&dechunk(&headers, &body)).unwrap();
    assert_eq!(v["errors"][0]["code"], 0);
}

#[tokio::test]
async fn a_text_plain_body_is_415() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(USERS))
        .header("content-type", "text/plain")
        .body(r#"{"userIds":[1]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&res), JSON_UTF8);
    let (status, code, message) = error_of(res).await;
    assert_eq!((status, code), (415, 0));
    assert!(!message.is_empty());

    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(1))
        .header("content-type", "text/plain; charset=utf-8")
        .body(r#"{"location":"Xbox"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 415);
    assert_eq!(app.presence_of(1).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn other_body_types_are_415() {
    let app = spawn_app().await;
    for content_type in [
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ] {
        let res = app
            .client
            .post(app.url(USERS))
            .header("content-type", content_type)
            .body(r#"{"userIds":[1]}"#)
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (415, 0), "{content_type}");
    }
}

#[tokio::test]
async fn a_non_empty_body_without_a_content_type_is_415() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(USERS))
        .body(r#"{"userIds":[1]}"#)
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(res).await;
    assert_eq!((status, code), (415, 0));
    assert!(!message.is_empty());

    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(2))
        .body(r#"{"location":"Xbox"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 415);
    assert_eq!(app.presence_of(2).await["userPresenceType"], "Offline");
}

#[tokio::test]
async fn a_body_of_blanks_is_not_an_empty_body() {
    // An empty body counts as `{}`; blanks alone are not JSON (400), and with no content
    // type they are a body no one said how to read (415). Nothing is recorded either way.
    let app = spawn_app().await;
    for (body, content_type, status) in [
        (" ", Some("application/json"), 400),
        ("\r\n\t ", Some("text/json"), 400),
        (" ", None, 415),
    ] {
        for (path, user) in [(REGISTER, Some(3)), (USERS, None)] {
            let mut req = app.client.post(app.url(path)).body(body);
            if let Some(content_type) = content_type {
                req = req.header("content-type", content_type);
            }
            if let Some(user) = user {
                req = req.bearer_auth(app.token(user));
            }
            let (got, code, message) = error_of(req.send().await.unwrap()).await;
            assert_eq!((got, code), (status, 0), "{path} {body:?} {content_type:?}");
            assert!(!message.is_empty());
        }
    }
    assert_eq!(app.presence_of(3).await["userPresenceType"], "Offline");
    // A body with nothing in it at all is still `{}`.
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(3))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.presence_of(3).await["userPresenceType"], "Online");
}

#[tokio::test]
async fn answers_are_application_json_utf8_by_default() {
    let app = spawn_app().await;
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), JSON_UTF8);
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(app.token(1))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), JSON_UTF8);
    let res = app.post_json(USERS, &json!({"userIds": [0]})).await;
    assert_eq!(res.status(), 400);
    assert_eq!(content_type(&res), JSON_UTF8);
}

#[tokio::test]
async fn accept_text_json_gets_text_json_answers_and_errors() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url(USERS))
        .header("accept", "text/json")
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), TEXT_JSON_UTF8);
    let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(v["userPresences"][0]["userId"], 1);

    let res = app
        .client
        .post(app.url(REGISTER))
        .header("accept", "text/json")
        .bearer_auth(app.token(1))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&res), TEXT_JSON_UTF8);
    assert_eq!(res.text().await.unwrap(), "{}");

    let res = app
        .client
        .post(app.url(USERS))
        .header("accept", "text/json")
        .json(&json!({"userIds": ["abc"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&res), TEXT_JSON_UTF8);
    assert_eq!(error_of(res).await, (400, 1, "Invalid user id.".to_owned()));

    let res = app
        .client
        .get(app.url(USERS))
        .header("accept", "text/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(content_type(&res), TEXT_JSON_UTF8);
}

#[tokio::test]
async fn accept_listing_application_json_as_well_gets_application_json() {
    let app = spawn_app().await;
    for accept in [
        "text/json, application/json",
        "application/json, text/json",
        "text/json;q=0.9, application/json;q=0.5",
    ] {
        let res = app
            .client
            .post(app.url(USERS))
            .header("accept", accept)
            .json(&json!({"userIds": [1]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(content_type(&res), JSON_UTF8, "{accept}");
    }
    for accept in ["*/*", "application/*", "text/html"] {
        let res = app
            .client
            .post(app.url(USERS))
            .header("accept", accept)
            .json(&json!({"userIds": [1]}))
            .send()
            .await
            .unwrap();
        assert_eq!(content_type(&res), JSON_UTF8, "{accept}");
    }
}

#[tokio::test]
async fn the_host_header_is_not_checked() {
    let app = spawn_app().await;
    let body = r#"{"location":"Xbox"}"#;
    let request = format!(
        "POST /v1/presence/register-app-presence HTTP/1.1\r\nHost: presence.roblox.com\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.token(60),
        body.len()
    );
    let answer = raw_http(app.addr, request).await;
    let (status, _, response_body) = parse_raw(&answer);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(response_body, "{}");

    let body = r#"{"userIds":[60]}"#;
    let request = format!(
        "POST /v1/presence/users HTTP/1.1\r\nHost: presence.roblox.com\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_http(app.addr, request).await;
    let (status, headers, response_body) = parse_raw(&answer);
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&dechunk(&headers, &response_body)).unwrap();
    assert_eq!(v["userPresences"][0]["userPresenceType"], "Online");
    assert_eq!(v["userPresences"][0]["lastLocation"], "Xbox");

    // And through an ordinary client setting the header.
    let res = app
        .client
        .post(app.url(USERS))
        .header("host", "presence.roblox.com")
        .json(&json!({"userIds": [60]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn register_without_a_credential_is_401() {
    let app = spawn_app().await;
    let res = app.post_json(REGISTER, &json!({"location": "Xbox"})).await;
    assert_eq!(content_type(&res), JSON_UTF8);
    assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()));
}

#[tokio::test]
async fn register_with_a_garbage_bearer_is_401() {
    let app = spawn_app().await;
    for auth in [
        "Bearer garbage",
        "Bearer not.a.jwt",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "garbage",
    ] {
        let res = app
            .client
            .post(app.url(REGISTER))
            .header("authorization", auth)
            .json(&json!({"location": "Xbox"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()), "{auth}");
    }
}

#[tokio::test]
async fn register_with_a_token_signed_by_another_secret_is_401() {
    let app = spawn_app().await;
    let forged = Authenticator::new("another-secret")
        .mint(UserId::new(5).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let res = app
        .client
        .post(app.url(REGISTER))
        .bearer_auth(forged)
        .json(&json!({"location": "Xbox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()));
    assert_eq!(app.presence_of(5).await["userPresenceType"], "Offline");
}
