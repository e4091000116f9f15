#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile input, black-box: bodies built to hurt a parser (deep nesting, huge numbers,
//! invalid UTF-8, duplicate keys, bodies at and past the size limit) and clients built to
//! hold a connection (bodies that stop half-way, heads and bodies sent a byte at a time, a
//! flood of idle connections). Whatever arrives, the answer is a 4xx in the contract's
//! shape (CONTRACT section 3) or a closed connection, never a 5xx, a hang or a crash, and
//! the server goes on serving everyone else.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const BAD_REQUEST: (u16, i64, &str) = (400, 0, "BadRequest");
const INVALID_ID: (u16, i64, &str) = (400, 1, "Invalid user id.");
const TOO_MANY: (u16, i64, &str) = (400, 2, "Too many User Ids being sent in the request.");

/// How long any raw client waits for the server before calling it a hang. Generous: the
/// machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(10);

/// `POST path` with a raw body and content type; register calls carry a Bearer credential
/// of `user`.
async fn post(
    app: &TestApp,
    path: &str,
    user: u64,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(path))
        .header("content-type", content_type);
    if path == REGISTER {
        req = req.bearer_auth(app.token(user));
    }
    req.body(body).send().await.unwrap()
}

/// An expected error as `error_of` returns it.
fn expect(error: (u16, i64, &str)) -> (u16, i64, String) {
    (error.0, error.1, error.2.to_owned())
}

/// The first characters of a body, for assertion messages.
fn head_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(60).collect()
}

/// Asserts the server still answers an ordinary lookup and heartbeat.
async fn assert_still_serving(app: &TestApp) {
    app.heartbeat(77, json!({"location": "Xbox"})).await;
    let presence = app.presence_of(77).await;
    assert_eq!(presence["userPresenceType"], "Online");
    assert_eq!(presence["lastLocation"], "Xbox");
}

/// Asserts `user` was never changed by what was sent for it.
async fn assert_untouched(app: &TestApp, user: u64) {
    let presence = app.presence_of(user).await;
    assert_eq!(presence["userPresenceType"], "Offline", "{presence}");
    assert_eq!(presence["lastOnline"], NEVER_SEEN, "{presence}");
}

// ---------------------------------------------------------------------------------------
// Raw TCP clients, for what reqwest will not do.

/// What a raw client saw before it gave up.
#[derive(Debug)]
enum Seen {
    /// The server answered (the bytes of the answer, possibly followed by a close).
    Answer(Vec<u8>),
    /// The server closed (or reset) the connection without an answer.
    Closed,
}

/// Reads whatever the server sends until it closes, or panics after `PATIENCE` of silence.
fn read_until_close(stream: &mut TcpStream) -> Seen {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // One whole answer is enough: the server need not close after it.
                if complete(&answer) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the server neither answered nor closed within {PATIENCE:?}; read so far: {:?}",
                    String::from_utf8_lossy(&answer)
                )
            }
            // A reset is a close; what arrived before it is the answer.
            Err(_) => break,
        }
    }
    if answer.is_empty() {
        Seen::Closed
    } else {
        Seen::Answer(answer)
    }
}

/// Whether `answer` holds a whole HTTP/1.1 answer with a `content-length` body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.to_ascii_lowercase()
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Status, lower-cased head and body of a raw answer.
fn parse(answer: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an incomplete answer: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Asserts a raw answer is `error` in the contract's shape.
fn assert_raw_error(answer: &[u8], error: (u16, i64, &str)) {
    let (status, head, body) = parse(answer);
    assert_eq!(status, error.0, "{}", String::from_utf8_lossy(answer));
    assert!(
        head.contains("content-type: application/json"),
        "{}",
        String::from_utf8_lossy(answer)
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(
        v,
        json!({"errors": [{"code": error.1, "message": error.2}]}),
        "{body}"
    );
}

/// A request head for `path` announcing a JSON body of `length` bytes.
fn request_head(app: &TestApp, path: &str, length: usize) -> String {
    let auth = if path == REGISTER {
        format!("Authorization: Bearer {}\r\n", app.token(5))
    } else {
        String::new()
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// How a trickling client ended.
#[derive(Debug)]
struct Trickled {
    /// What the server did; `None` when it neither answered nor closed while the client
    /// sent everything or for `PATIENCE`.
    seen: Option<Seen>,
    /// Bytes sent one at a time before that.
    sent: usize,
    elapsed: Duration,
}

/// Sends `prefix` at once, then `slow` one byte every `every`, watching for an answer or a
/// close between bytes. Stops at the first sign of either.
fn trickle(addr: SocketAddr, prefix: Vec<u8>, slow: Vec<u8>, every: Duration) -> Trickled {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&prefix).unwrap();
    stream.set_read_timeout(Some(every)).unwrap();
    let mut buf = [0u8; 4096];
    for (sent, byte) in slow.iter().enumerate() {
        if start.elapsed() > PATIENCE {
            return Trickled {
                seen: None,
                sent,
                elapsed: start.elapsed(),
            };
        }
        if stream.write_all(&[*byte]).is_err() {
            // The server has closed: the write hit a reset. An answer may still be queued.
            let seen = read_until_close(&mut stream);
            return Trickled {
                seen: Some(seen),
                sent,
                elapsed: start.elapsed(),
            };
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Trickled {
                    seen: Some(Seen::Closed),
                    sent: sent + 1,
                    elapsed: start.elapsed(),
                }
            }
            Ok(n) => {
                let mut answer = buf[..n].to_vec();
                if !complete(&answer) {
                    if let Seen::Answer(rest) = read_until_close(&mut stream) {
                        answer.extend_from_slice(&rest);
                    }
                }
                return Trickled {
                    seen: Some(Seen::Answer(answer)),
                    sent: sent + 1,
                    elapsed: start.elapsed(),
                };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                return Trickled {
                    seen: Some(Seen::Closed),
                    sent: sent + 1,
                    elapsed: start.elapsed(),
                }
            }
        }
    }
    Trickled {
        seen: None,
        sent: slow.len(),
        elapsed: start.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Deep nesting.

#[tokio::test]
async fn deeply_nested_json_that_never_closes_is_a_bad_request_on_both_routes() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1 << 20).await;
    let depth = 100_000;
    let bodies = [
        "[".repeat(depth),
        "{\"a\":".repeat(depth),
        format!(r#"{{"userIds":{}"#, "[".repeat(depth)),
        format!(
            r#"{{"location":"x","other":{}"#,
            "{\"a\":[".repeat(depth / 2)
        ),
    ];
    for path in [USERS, REGISTER] {
        for body in &bodies {
            assert!(body.len() < 1 << 20);
            let res = post(&app, path, 1, JSON, body.clone()).await;
            assert_eq!(
                error_of(res).await,
                expect(BAD_REQUEST),
                "{path} {}",
                head_of(body.as_bytes())
            );
        }
    }
    assert_untouched(&app, 1).await;
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn deeply_nested_json_that_closes_is_judged_by_where_it_stands_without_a_crash() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1 << 20).await;
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    // As an id: an array is not a positive int64.
    let body = format!(r#"{{"userIds":[{nested}]}}"#);
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(error_of(res).await, expect(INVALID_ID));

    // As the id list itself: a list of arrays, none of them an id.
    let body = format!(r#"{{"userIds":{nested}}}"#);
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(error_of(res).await, expect(INVALID_ID));

    // As a location or a place: the wrong type.
    for body in [
        format!(r#"{{"location":{nested}}}"#),
        format!(r#"{{"placeId":{nested}}}"#),
    ] {
        let res = post(&app, REGISTER, 2, JSON, body.clone()).await;
        assert_eq!(
            error_of(res).await,
            expect(BAD_REQUEST),
            "{}",
            head_of(body.as_bytes())
        );
    }
    assert_untouched(&app, 2).await;

    // As an unknown field: ignored, as every unknown field is (CONTRACT section 1).
    let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let body = format!(r#"{{"location":"Deep","x":{objects},"y":{nested}}}"#);
    let res = post(&app, REGISTER, 3, JSON, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
    assert_eq!(app.presence_of(3).await["lastLocation"], "Deep");
    let body = format!(r#"{{"userIds":[3],"x":{nested}}}"#);
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(res.status(), 200);

    assert_still_serving(&app).await;
}

// ---------------------------------------------------------------------------------------
// 2. Long bodies.

#[tokio::test]
async fn a_body_filling_the_limit_is_decoded_exactly() {
    // The longest location the settings allow, in a body padded with an unknown field up to
    // one byte under the body limit.
    let app = spawn_app_with(|s| s.api.max_location_length = 4096).await;
    let limit = app.settings.server.max_body_bytes;
    assert_eq!(limit, 16_384, "the shipped default");
    // Escapes and multi-byte characters too, then plain filler up to the location limit.
    let prefix = "Über \"quoted\" \\ back\\slash ✓ \n\t 🎮 ";
    let filler: String = ('a'..='z')
        .cycle()
        .take(4096 - prefix.chars().count())
        .collect();
    let location = format!("{prefix}{filler}");
    let overhead = json!({ "location": location, "padding": "" })
        .to_string()
        .len();
    let padding = "p".repeat(limit - 1 - overhead);
    let body = json!({ "location": location, "padding": padding }).to_string();
    assert_eq!(body.len(), limit - 1);

    let res = post(&app, REGISTER, 10, JSON, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
    let presence = app.presence_of(10).await;
    assert_eq!(presence["userPresenceType"], "Online");
    assert_eq!(presence["lastLocation"].as_str().unwrap(), location);

    // And the same through a form body.
    let form_location: String = ('a'..='z').cycle().take(4096).collect();
    let mut form = format!("location={form_location}&padding=");
    form.push_str(&"p".repeat(limit - 1 - form.len()));
    assert_eq!(form.len(), limit - 1);
    let res = post(&app, REGISTER, 11, FORM, form.clone()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.presence_of(11).await["lastLocation"].as_str().unwrap(),
        form_location
    );
}

#[tokio::test]
async fn a_user_ids_list_filling_the_body_limit_is_too_many_ids() {
    let app = spawn_app().await;
    let limit = app.settings.server.max_body_bytes;
    let mut ids = vec!["1"; (limit - 20) / 2];
    ids[0] = "12";
    let mut body = format!(r#"{{"userIds":[{}]}}"#, ids.join(","));
    body.push_str(&" ".repeat(limit - 1 - body.len()));
    assert_eq!(body.len(), limit - 1);
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(error_of(res).await, expect(TOO_MANY));

    // As a form, too.
    let mut form = vec!["userIds=1"; (limit - 1) / 10].join("&");
    form.push_str(&"&".repeat(limit - 1 - form.len()));
    assert_eq!(form.len(), limit - 1);
    let res = post(&app, USERS, 0, FORM, form).await;
    assert_eq!(error_of(res).await, expect(TOO_MANY));

    // Even when the ids are invalid: the count comes first.
    let body = format!(r#"{{"userIds":[{}]}}"#, vec!["0"; 5000].join(","));
    assert!(body.len() < limit);
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(error_of(res).await, expect(TOO_MANY));
}

#[tokio::test]
async fn a_body_one_byte_over_the_limit_is_413_and_changes_nothing() {
    let app = spawn_app().await;
    let limit = app.settings.server.max_body_bytes;
    let overhead = json!({ "location": "" }).to_string().len();
    let location = "x".repeat(limit + 1 - overhead);
    let body = json!({ "location": location }).to_string();
    assert_eq!(body.len(), limit + 1);
    let res = post(&app, REGISTER, 12, JSON, body).await;
    let (status, code, message) = error_of(res).await;
    assert_eq!((status, code), (413, 0));
    assert!(!message.is_empty());
    assert_untouched(&app, 12).await;

    let mut body = r#"{"userIds":[12]}"#.to_owned();
    body.push_str(&" ".repeat(limit + 1 - body.len()));
    let res = post(&app, USERS, 0, JSON, body).await;
    assert_eq!(error_of(res).await.0, 413);

    // Far over: a megabyte is refused the same way.
    let res = post(&app, USERS, 0, JSON, vec![b' '; 1 << 20]).await;
    assert_eq!(error_of(res).await.0, 413);
    assert_still_serving(&app).await;
}

// ---------------------------------------------------------------------------------------
// 3. Huge numbers.

#[tokio::test]
async fn numbers_that_are_not_positive_int64_ids_are_invalid_ids() {
    let app = spawn_app().await;
    for id in [
        "99999999999999999999999999",
        "9223372036854775808",
        "18446744073709551616",
        "-9223372036854775809",
        "-0",
        "0",
        "0.5",
        "1.5e0",
        "1E-400",
        "-1e3",
        "\"9223372036854775808\"",
        "\"99999999999999999999999999\"",
        "\"1e400\"",
        "\"-0\"",
        "\"1.0\"",
        "\" 1\"",
        "\"0x10\"",
    ] {
        let body = format!(r#"{{"userIds":[1,{id}]}}"#);
        let res = post(&app, USERS, 0, JSON, body.clone()).await;
        assert_eq!(error_of(res).await, expect(INVALID_ID), "{body}");
    }
    // The largest int64 is an id like any other.
    let ps = app.lookup(&[i64::MAX as u64]).await;
    assert_eq!(ps[0]["userId"], i64::MAX);
    assert_eq!(ps[0]["lastOnline"], NEVER_SEEN);
}

#[tokio::test]
async fn numbers_json_cannot_hold_are_bad_requests() {
    let app = spawn_app().await;
    for body in [
        r#"{"userIds":[1e400]}"#.to_owned(),
        r#"{"userIds":[-1e400]}"#.to_owned(),
        r#"{"userIds":[1,2,1e309]}"#.to_owned(),
        format!(r#"{{"userIds":[{}]}}"#, "9".repeat(400)),
        format!(r#"{{"userIds":[{}]}}"#, "9".repeat(16_000)),
    ] {
        let res = post(&app, USERS, 0, JSON, body.clone()).await;
        assert_eq!(
            error_of(res).await,
            expect(BAD_REQUEST),
            "{}",
            head_of(body.as_bytes())
        );
    }
}

#[tokio::test]
async fn a_place_or_universe_id_out_of_int64_range_is_a_bad_request_and_changes_nothing() {
    let app = spawn_app().await;
    for field in ["placeId", "universeId"] {
        for number in [
            "99999999999999999999999999",
            "9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "-1e400",
            "1.5",
            "9.3e18",
        ] {
            let body = format!(r#"{{"location":"Xbox","{field}":{number}}}"#);
            let res = post(&app, REGISTER, 13, JSON, body.clone()).await;
            assert_eq!(error_of(res).await, expect(BAD_REQUEST), "{body}");
        }
    }
    let form = "location=Xbox&placeId=99999999999999999999999999";
    let res = post(&app, REGISTER, 13, FORM, form).await;
    assert_eq!(error_of(res).await, expect(BAD_REQUEST), "{form}");
    assert_untouched(&app, 13).await;

    // The largest int64 place is a place like any other.
    app.heartbeat(14, json!({ "placeId": i64::MAX })).await;
    let presence = app.presence_of(14).await;
    assert_eq!(presence["userPresenceType"], "InGame");
    assert_eq!(presence["placeId"], i64::MAX);
}

#[tokio::test]
async fn a_place_id_of_minus_zero_is_place_zero_which_means_no_place() {
    // `-0` is a JSON integer (RFC 8259: int = zero, with an optional minus) whose value, 0,
    // is an int64; the contract reads placeId 0 as "none".
    let app = spawn_app().await;
    let body = r#"{"location":"Xbox","placeId":-0}"#;
    let res = post(&app, REGISTER, 15, JSON, body).await;
    assert_eq!(res.status(), 200, "{body}");
    let presence = app.presence_of(15).await;
    assert_eq!(presence["userPresenceType"], "Online");
    assert_eq!(presence["lastLocation"], "Xbox");
    assert_eq!(presence["placeId"], Value::Null);
}

// ---------------------------------------------------------------------------------------
// 4. Invalid UTF-8.

#[tokio::test]
async fn invalid_utf8_in_a_json_body_is_a_bad_request() {
    let app = spawn_app().await;
    let bodies: [(&str, &[u8]); 7] = [
        (USERS, b"{\"userIds\":[\"\xff\"]}"),
        (USERS, b"{\"userIds\":[1]}\xff"),
        (USERS, b"{\"user\xffIds\":[1]}"),
        (USERS, b"\xef\xbb\xbf\xfe{\"userIds\":[1]}"),
        (REGISTER, b"{\"location\":\"\xff\xfe\"}"),
        // An encoded surrogate, which UTF-8 forbids, raw and escaped.
        (REGISTER, b"{\"location\":\"\xed\xa0\x80\"}"),
        (REGISTER, b"{\"location\":\"\\ud800\"}"),
    ];
    for (path, body) in bodies {
        let res = post(&app, path, 16, JSON, body.to_vec()).await;
        assert_eq!(
            error_of(res).await,
            expect(BAD_REQUEST),
            "{path} {}",
            head_of(body)
        );
    }
    assert_untouched(&app, 16).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_form_body_is_a_bad_request_and_changes_nothing() {
    let app = spawn_app().await;
    let bodies: [(&str, &[u8]); 5] = [
        (REGISTER, b"location=\xff\xfe"),
        (REGISTER, b"location=%FF%FE"),
        (REGISTER, b"location=Xbox&\xff=1"),
        (USERS, b"userIds=1&userIds=\xff"),
        (USERS, b"userIds=1&\xff=2"),
    ];
    // Every case is tried before judging, so that a failure lists them all.
    let mut wrong = Vec::new();
    for (path, body) in bodies {
        let res = post(&app, path, 17, FORM, body.to_vec()).await;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let expected = r#"{"errors":[{"code":0,"message":"BadRequest"}]}"#;
        if status != 400 || text != expected {
            wrong.push(format!("{path} {}: {status} {text}", body.escape_ascii()));
        }
    }
    let presence = app.presence_of(17).await;
    if presence["lastOnline"] != NEVER_SEEN {
        wrong.push(format!("user 17 was changed: {presence}"));
    }
    assert!(
        wrong.is_empty(),
        "expected 400 BadRequest for each:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 5. Duplicate keys and bodies of the wrong shape.

#[tokio::test]
async fn a_duplicate_key_is_a_bad_request_and_changes_nothing() {
    let app = spawn_app().await;
    for (path, content_type, body) in [
        (USERS, JSON, r#"{"userIds":[1],"userIds":[2]}"#),
        (USERS, JSON, r#"{"userIds":[1],"userIds":null}"#),
        (REGISTER, JSON, r#"{"location":"a","location":"b"}"#),
        (REGISTER, JSON, r#"{"placeId":1,"placeId":2}"#),
        (REGISTER, JSON, r#"{"disconnect":false,"disconnect":true}"#),
        (REGISTER, FORM, "location=a&location=b"),
        (REGISTER, FORM, "placeId=1&placeId=2"),
    ] {
        let res = post(&app, path, 18, content_type, body).await;
        assert_eq!(
            error_of(res).await,
            expect(BAD_REQUEST),
            "{path} {content_type} {body}"
        );
    }
    assert_untouched(&app, 18).await;
    // A repeated userIds key in a form is how forms send a list (CONTRACT section 2).
    let res = post(&app, USERS, 0, FORM, "userIds=1&userIds=2").await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_a_bad_request() {
    let app = spawn_app().await;
    let mut wrong = Vec::new();
    for (path, body) in [
        (USERS, r#"[[1]]"#),
        (USERS, r#"[[7,8]]"#),
        (USERS, r#"[null]"#),
        (USERS, r#"[]"#),
        (USERS, r#""userIds""#),
        (USERS, "1"),
        (USERS, "null"),
        (REGISTER, r#"["Xbox"]"#),
        (REGISTER, r#"["Xbox",1818,false,null,null]"#),
        (REGISTER, r#""Xbox""#),
        (REGISTER, "null"),
    ] {
        let res = post(&app, path, 19, JSON, body).await;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        if status != 400 || text != r#"{"errors":[{"code":0,"message":"BadRequest"}]}"# {
            wrong.push(format!("{path} {body}: {status} {text}"));
        }
    }
    let presence = app.presence_of(19).await;
    if presence["lastOnline"] != NEVER_SEEN {
        wrong.push(format!("user 19 was changed: {presence}"));
    }
    assert!(
        wrong.is_empty(),
        "expected 400 BadRequest for each:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 6. A body that stops half-way.

#[tokio::test]
async fn a_body_cut_short_by_the_client_is_a_bad_request_or_a_close_never_a_hang() {
    let app = spawn_app().await;
    for path in [USERS, REGISTER] {
        let head = request_head(&app, path, 100);
        let addr = app.addr;
        let (seen, elapsed) = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(br#"{"userIds""#).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let start = Instant::now();
            (read_until_close(&mut stream), start.elapsed())
        })
        .await
        .unwrap();
        assert!(elapsed < PATIENCE, "{path}: {elapsed:?}");
        if let Seen::Answer(answer) = &seen {
            assert_raw_error(answer, BAD_REQUEST);
        }
    }
    assert_untouched(&app, 5).await;
    assert_still_serving(&app).await;
}

// ---------------------------------------------------------------------------------------
// 7. Slow clients.

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = Duration::from_secs(1);
    })
    .await;
    // Long enough that, at this pace, it would take a minute to arrive whole.
    let head = format!(
        "POST {USERS} HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        "p".repeat(200)
    );
    let addr = app.addr;
    let slow = tokio::task::spawn_blocking(move || {
        trickle(
            addr,
            Vec::new(),
            head.into_bytes(),
            Duration::from_millis(300),
        )
    });
    // Meanwhile others are served.
    assert_still_serving(&app).await;
    let trickled = slow.await.unwrap();
    let Some(seen) = &trickled.seen else {
        panic!(
            "not cut off after {} bytes in {:?}",
            trickled.sent, trickled.elapsed
        );
    };
    assert!(trickled.elapsed < PATIENCE, "{trickled:?}");
    if let Seen::Answer(answer) = seen {
        let (status, _, _) = parse(answer);
        assert_eq!(status, 408, "{}", String::from_utf8_lossy(answer));
    }
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn a_request_body_sent_a_byte_at_a_time_is_408_request_timeout() {
    let app = spawn_app_with(|s| {
        s.server.request_body_timeout = Duration::from_secs(1);
    })
    .await;
    for path in [USERS, REGISTER] {
        let body = format!(
            r#"{{"location":"Slow","userIds":[5],"pad":"{}"}}"#,
            "p".repeat(150)
        );
        let head = request_head(&app, path, body.len());
        let addr = app.addr;
        let trickled = tokio::task::spawn_blocking(move || {
            trickle(
                addr,
                head.into_bytes(),
                body.into_bytes(),
                Duration::from_millis(300),
            )
        })
        .await
        .unwrap();
        let Some(seen) = &trickled.seen else {
            panic!(
                "{path}: not cut off after {} bytes in {:?}",
                trickled.sent, trickled.elapsed
            );
        };
        assert!(trickled.elapsed < PATIENCE, "{path}: {trickled:?}");
        if let Seen::Answer(answer) = seen {
            assert_raw_error(answer, (408, 0, "RequestTimeout"));
        }
    }
    assert_untouched(&app, 5).await;
    assert_still_serving(&app).await;
}

// ---------------------------------------------------------------------------------------
// 8. A flood of idle connections.

#[tokio::test]
async fn five_hundred_idle_connections_do_not_lock_others_out() {
    // Idle connections are kept for the whole test rather than reaped by the head timeout.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = app.addr;
    let idle = tokio::task::spawn_blocking(move || {
        (0..500)
            .map(|_| TcpStream::connect_timeout(&addr, PATIENCE).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(idle.len(), 500);

    // A fresh client, on a fresh connection, is served.
    let presence = eventually(PATIENCE, || async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let res = client
            .post(app.url(USERS))
            .json(&json!({"userIds": [20]}))
            .send()
            .await
            .ok()?;
        (res.status() == 200).then_some(())?;
        let body: Value = res.json().await.ok()?;
        Some(body["userPresences"][0].clone())
    })
    .await;
    assert_eq!(presence["userId"], 20);
    assert_eq!(presence["lastOnline"], NEVER_SEEN);
    assert_still_serving(&app).await;

    // The last of the idle connections was accepted too: it is served when it speaks.
    let mut idle = idle;
    let mut last = idle.pop().unwrap();
    let head = request_head(&app, USERS, r#"{"userIds":[21]}"#.len());
    let seen = tokio::task::spawn_blocking(move || {
        last.write_all(head.as_bytes()).unwrap();
        last.write_all(br#"{"userIds":[21]}"#).unwrap();
        read_until_close(&mut last)
    })
    .await
    .unwrap();
    let Seen::Answer(answer) = seen else {
        panic!("an idle connection was closed instead of served");
    };
    let (status, _, body) = parse(&answer);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(body.contains(r#""userId":21"#), "{body}");

    for stream in &idle {
        let _ = stream.shutdown(Shutdown::Both);
    }
    drop(idle);
    assert_still_serving(&app).await;
}
