#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live presence, black-box (CONTRACT section 8): the event stream and the WebSocket,
//! through the real server on whichever backend the suite runs on.
mod common;

use std::time::Duration;

use common::live::*;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A quiet spell long enough for an event that is not owed to show up if it were sent.
const QUIET: Duration = Duration::from_millis(700);

/// The real server, once ready: on Redis, once it hears of other nodes' changes.
async fn spawn_live(change: impl FnOnce(&mut presence_server::Settings)) -> TestApp {
    let app = spawn_app_with(change).await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// Opens a stream of `ids` and checks it answers as a stream.
async fn watch(app: &TestApp, ids: &str) -> Sse {
    let sse = Sse::open(app.addr, &format!("userIds={ids}"), &[], None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    sse
}

/// Waits for the next event and checks it holds exactly the current lookup entries of
/// `ids`, in that order.
async fn expect_entries(app: &TestApp, sse: &mut Sse, ids: &[u64]) -> Event {
    let event = sse.event().await;
    assert_eq!(event.name, "presence");
    assert!(!event.id.is_empty());
    assert_eq!(
        event.entries(),
        app.lookup(ids).await,
        "event {}",
        event.data
    );
    event
}

#[tokio::test]
async fn the_first_event_is_what_a_lookup_answers_in_request_order() {
    let app = spawn_live(|s| s.places = vec![crossroads()]).await;
    app.heartbeat(1, json!({"location": "Lobby"})).await;
    app.heartbeat(2, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    app.heartbeat(3, json!({"location": "Studio"})).await;
    app.heartbeat(3, json!({"disconnect": true})).await;

    let mut sse = watch(&app, "4,2,1,2,3").await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    let first = expect_entries(&app, &mut sse, &[4, 2, 1, 3]).await;
    assert_eq!(first.entries()[1]["userPresenceType"], "InGame");
    assert_eq!(first.entries()[0]["lastOnline"], NEVER_SEEN);
    // Nothing changed since: nothing more.
    assert_eq!(sse.next_event(QUIET).await, None);

    // Repeated keys, and integer presence types when so configured.
    let ints =
        spawn_live(|s| s.api.presence_type = presence_server::config::PresenceTypeFormat::Integer)
            .await;
    ints.heartbeat(5, json!({"location": "Home"})).await;
    let mut sse = Sse::open(ints.addr, "userIds=6&userIds=5", &[], None).await;
    let first = expect_entries(&ints, &mut sse, &[6, 5]).await;
    assert_eq!(first.entries()[1]["userPresenceType"], 1);
}

#[tokio::test]
async fn every_kind_of_change_is_sent_as_the_new_entry_and_a_refresh_sends_nothing() {
    let app = spawn_live(|s| s.places = vec![crossroads()]).await;
    let mut sse = watch(&app, "7,8").await;
    expect_entries(&app, &mut sse, &[7, 8]).await;

    let changes = [
        json!({"location": "Website"}),
        json!({"location": "Mobile"}),
        json!({"placeId": 1818}),
        json!({"placeId": 1818, "gameId": GAME}),
        json!({"placeId": 1818, "gameId": GAME, "universeId": 99}),
        json!({"location": "Studio", "placeId": 1818}),
        json!({"disconnect": true}),
        json!({"placeId": 555, "location": "Somewhere"}),
    ];
    let mut ids = Vec::new();
    for change in changes {
        app.heartbeat(7, change.clone()).await;
        let event = expect_entries(&app, &mut sse, &[7]).await;
        ids.push(event.id);
        // The same again refreshes the deadline and lastOnline only.
        if change != json!({"disconnect": true}) {
            app.heartbeat(7, change.clone()).await;
        } else {
            // A disconnect of someone Offline changes nothing either.
            app.heartbeat(7, change.clone()).await;
        }
        assert_eq!(
            sse.next_event(QUIET).await,
            None,
            "no event after repeating {change}"
        );
    }
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "each event has an id of its own");
    // A user that is not watched sends nothing to this stream.
    app.heartbeat(9, json!({"location": "Elsewhere"})).await;
    assert_eq!(sse.next_event(QUIET).await, None);
}

#[tokio::test]
async fn expiry_is_sent_within_a_sweep_interval_keeping_the_location() {
    let app = spawn_live(|s| {
        s.presence.heartbeat_ttl = Duration::from_millis(800);
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    app.heartbeat(11, json!({"location": "Lobby"})).await;
    let mut sse = watch(&app, "11").await;
    let first = sse.event().await;
    assert_eq!(first.entries()[0]["userPresenceType"], "Online");
    let expired = sse.event().await;
    let entry = &expired.entries()[0];
    assert_eq!(entry["userPresenceType"], "Offline", "{entry}");
    assert_eq!(entry["lastLocation"], "Lobby");
    assert_eq!(expired.entries(), app.lookup(&[11]).await);
}

#[tokio::test]
async fn keep_alive_comments_come_and_a_stream_outlives_the_idle_deadline() {
    let app = spawn_live(|s| {
        s.stream.keep_alive = Duration::from_secs(1);
        s.server.keep_alive = Duration::from_secs(1);
        s.server.request_head_timeout = Duration::from_secs(1);
    })
    .await;
    let mut sse = watch(&app, "12").await;
    sse.event().await;
    let item = sse.next_item(Duration::from_secs(5)).await;
    assert_eq!(item, Some(Item::Comment("ping".into())));
    // Three idle deadlines later the stream is still open and still delivers.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    app.heartbeat(12, json!({"location": "Late"})).await;
    let event = sse.event().await;
    assert_eq!(event.entries()[0]["lastLocation"], "Late");
}

#[tokio::test]
async fn resuming_sends_what_changed_since_the_last_event_or_else_everything() {
    let app = spawn_live(|_| {}).await;
    app.heartbeat(21, json!({"location": "A"})).await;
    let mut sse = watch(&app, "21,22,23").await;
    let first = sse.event().await;
    app.heartbeat(22, json!({"location": "B"})).await;
    let seen = expect_entries(&app, &mut sse, &[22]).await;
    drop(sse);

    // Missed while away: 23 changed; 21 changed and changed back... still sent, as changed.
    app.heartbeat(23, json!({"location": "C"})).await;
    let headers = [("Last-Event-ID", seen.id.as_str())];
    let mut again = Sse::open(app.addr, "userIds=21,22,23", &headers, None).await;
    assert_eq!(again.status, 200);
    expect_entries(&app, &mut again, &[23]).await;
    assert_eq!(again.next_event(QUIET).await, None);
    // It goes on as any stream.
    app.heartbeat(21, json!({"location": "D"})).await;
    let latest = expect_entries(&app, &mut again, &[21]).await;
    drop(again);

    // Nothing missed: nothing sent, until a change.
    let headers = [("Last-Event-ID", latest.id.as_str())];
    let mut quiet = Sse::open(app.addr, "userIds=21,22,23", &headers, None).await;
    assert_eq!(quiet.next_event(QUIET).await, None);
    app.heartbeat(22, json!({"location": "E"})).await;
    expect_entries(&app, &mut quiet, &[22]).await;

    // A list that grew: the new user's entry comes too.
    let headers = [("Last-Event-ID", first.id.as_str())];
    let mut grown = Sse::open(app.addr, "userIds=21,22,23,24", &headers, None).await;
    let resumed = grown.event().await;
    let mut ids: Vec<u64> = resumed
        .entries()
        .iter()
        .map(|e| e["userId"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![21, 22, 23, 24]);

    // An id the server cannot read, or from another run: the full state.
    for unknown in [
        "junk",
        "0000000000000001-5",
        "",
        "ffffffffffffffff-99999999",
    ] {
        let headers = [("Last-Event-ID", unknown)];
        let mut full = Sse::open(app.addr, "userIds=23,21", &headers, None).await;
        expect_entries(&app, &mut full, &[23, 21]).await;
    }
}

#[tokio::test]
async fn bad_ids_and_limits_are_refused_in_the_contract_shape() {
    let app = spawn_live(|s| {
        s.stream.max_user_ids = 3;
        s.stream.max_connections = 2;
    })
    .await;
    for (query, code) in [
        ("userIds=1,abc", 1),
        ("userIds=0", 1),
        ("userIds=-5", 1),
        ("userIds=1,,2", 1),
        ("userIds=9223372036854775808", 1),
        ("userIds=1,2,3,4", 2),
        ("userIds=1,1,1,1", 2),
    ] {
        let sse = Sse::open(app.addr, query, &[], None).await;
        assert_eq!(sse.status, 400, "{query}");
        assert_eq!(sse.error()["errors"][0]["code"], code, "{query}");
    }
    // A POST is 405 with Allow.
    let res = app.client.post(app.url(STREAM)).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET");

    // Two streams at most on this node.
    let _one = watch(&app, "1").await;
    let _two = watch(&app, "2").await;
    let three = Sse::open(app.addr, "userIds=3", &[], None).await;
    assert_eq!(three.status, 503);
    assert_eq!(
        three.error(),
        json!({"errors":[{"code":0,"message":"ServiceUnavailable"}]})
    );
    drop(_one);
    // The slot is given back once the first stream's connection is gone.
    eventually(Duration::from_secs(5), || async {
        let sse = Sse::open(app.addr, "userIds=3", &[], None).await;
        (sse.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_auth_required_a_stream_needs_a_credential() {
    let app = spawn_live(|s| s.api.require_auth_for_lookup = true).await;
    let anonymous = Sse::open(app.addr, "userIds=1", &[], None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error()["errors"][0]["message"], DENIED);
    let bearer = format!("Bearer {}", app.token(1));
    let sse = Sse::open(app.addr, "userIds=1", &[("Authorization", &bearer)], None).await;
    assert_eq!(sse.status, 200);
}

#[tokio::test]
async fn a_reader_that_stops_reading_gets_the_latest_entries_and_holds_little() {
    let app = spawn_live(|_| {}).await;
    let users: Vec<u64> = (31..=40).collect();
    let list = users
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // A small receive buffer: the server's writes stall after a few kilobytes.
    let mut sse = Sse::open(app.addr, &format!("userIds={list}"), &[], Some(4096)).await;
    assert_eq!(sse.status, 200);
    sse.event().await;

    // Thousands of changes while the reader reads nothing.
    let changes = 3000;
    let client = app.client.clone();
    let tokens: Vec<String> = users.iter().map(|&u| app.token(u)).collect();
    change_many(&client, app.addr, &tokens, changes).await;

    // Catching up: every user's latest entry arrives, and far fewer entries than changes.
    let expected = app.lookup(&users).await;
    let mut latest = std::collections::HashMap::new();
    let mut received = 0;
    while latest.len() < users.len()
        || users
            .iter()
            .zip(&expected)
            .any(|(u, e)| latest.get(u) != Some(e))
    {
        let event = sse
            .next_event(Duration::from_secs(10))
            .await
            .expect("the latest entries arrive");
        for entry in event.entries() {
            received += 1;
            latest.insert(entry["userId"].as_u64().unwrap(), entry);
        }
    }
    assert!(
        received < changes / 3,
        "{received} entries for {changes} changes: changes were not coalesced"
    );
}

#[tokio::test]
async fn shutdown_ends_the_streams() {
    let app = spawn_live(|_| {}).await;
    let mut sse = watch(&app, "1").await;
    sse.event().await;
    let (ended, ()) = tokio::join!(sse.ended_within(Duration::from_secs(5)), app.stop());
    assert!(ended, "the stream ends at shutdown");
}

#[tokio::test]
async fn a_stream_whose_client_goes_gives_its_place_back() {
    let app = spawn_live(|s| s.stream.max_connections = 1).await;
    let mut sse = watch(&app, "3").await;
    sse.event().await;
    let refused = Sse::open(app.addr, "userIds=3", &[], None).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    drop(sse);
    eventually(Duration::from_secs(10), || async {
        let again = Sse::open(app.addr, "userIds=3", &[], None).await;
        (again.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_request_pipelined_behind_a_stream_is_not_served() {
    // The stream's socket goes to the stream once the head is written; whatever the client
    // sent behind the stream's request is never answered, so it is not carried out either.
    let app = spawn_live(|_| {}).await;
    let body = r#"{"location":"Website"}"#;
    let heartbeat = format!(
        "POST /v1/presence/register-app-presence HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        app.addr,
        app.token(41),
        body.len()
    );
    let mut sse = Sse::open_then(app.addr, "userIds=41", &[], None, &heartbeat).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    let first = sse.event().await;
    assert_eq!(
        first.data["userPresences"][0]["userPresenceType"],
        "Offline"
    );
    assert_eq!(
        sse.next_event(QUIET).await,
        None,
        "the pipelined heartbeat changed user 41"
    );
    assert_eq!(
        app.lookup(&[41]).await,
        vec![first.data["userPresences"][0].clone()]
    );
    // The same heartbeat on a connection of its own is served, and the stream sees it.
    app.heartbeat(41, json!({"location": "Website"})).await;
    let change = sse.event().await;
    assert_eq!(
        change.data["userPresences"][0]["userPresenceType"],
        "Online"
    );
}

// ---- WebSocket ----

fn ids_of(frame: &Value) -> Vec<u64> {
    frame["userPresences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["userId"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_websocket_subscribes_receives_changes_and_unsubscribes() {
    let app = spawn_live(|s| s.places = vec![crossroads()]).await;
    app.heartbeat(51, json!({"location": "Lobby"})).await;
    let mut ws = ws_connect(app.addr).await;

    ws_send(&mut ws, r#"{"subscribe":[51,52,51]}"#).await;
    let answer = ws_frame(&mut ws).await;
    assert_eq!(answer["userPresences"], json!(app.lookup(&[51, 52]).await));

    // Subscribing again to one already watched adds only the new one.
    ws_send(&mut ws, r#"{"subscribe":[52,53]}"#).await;
    assert_eq!(ids_of(&ws_frame(&mut ws).await), vec![53]);

    app.heartbeat(52, json!({"placeId": 1818})).await;
    let change = ws_frame(&mut ws).await;
    assert_eq!(change["userPresences"], json!(app.lookup(&[52]).await));

    app.heartbeat(52, json!({"placeId": 1818})).await;
    assert_eq!(
        ws_next(&mut ws, QUIET).await,
        None,
        "a refresh sends nothing"
    );

    ws_send(&mut ws, r#"{"unsubscribe":[52]}"#).await;
    // The unsubscribe has no answer; a later subscribe's answer shows it was applied.
    ws_send(&mut ws, r#"{"subscribe":[]}"#).await;
    assert_eq!(ws_frame(&mut ws).await, json!({"userPresences": []}));
    app.heartbeat(52, json!({"disconnect": true})).await;
    app.heartbeat(51, json!({"disconnect": true})).await;
    let next = ws_frame(&mut ws).await;
    assert_eq!(ids_of(&next), vec![51], "52 is no longer watched: {next}");
}

#[tokio::test]
async fn websocket_errors_are_frames_and_the_connection_stays_open() {
    let app = spawn_live(|s| s.stream.max_user_ids = 3).await;
    let mut ws = ws_connect(app.addr).await;
    for (frame, code) in [
        ("not json", 0),
        ("{}", 0),
        (r#"{"subscribe":[1],"unsubscribe":[2]}"#, 0),
        (r#"{"subscribe":"1"}"#, 0),
        (r#"{"watch":[1]}"#, 0),
        (r#"{"subscribe":[1,"x"]}"#, 1),
        (r#"{"subscribe":[0]}"#, 1),
        (r#"{"unsubscribe":[-1]}"#, 1),
        (r#"{"subscribe":[1,2,3,4]}"#, 2),
    ] {
        ws_send(&mut ws, frame).await;
        let answer = ws_frame(&mut ws).await;
        assert_eq!(answer["errors"][0]["code"], code, "{frame}: {answer}");
        assert!(answer["errors"][0]["message"].is_string());
    }
    // At most 3 users in all, across subscribes.
    ws_send(&mut ws, r#"{"subscribe":[1,2]}"#).await;
    assert_eq!(ids_of(&ws_frame(&mut ws).await), vec![1, 2]);
    ws_send(&mut ws, r#"{"subscribe":[3,4]}"#).await;
    assert_eq!(ws_frame(&mut ws).await["errors"][0]["code"], 2);
    ws_send(&mut ws, r#"{"subscribe":[2,3]}"#).await;
    assert_eq!(ids_of(&ws_frame(&mut ws).await), vec![3]);

    // A binary frame closes the connection with 1003.
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.unwrap().code, CloseCode::Unsupported);
}

#[tokio::test]
async fn a_websocket_outlives_the_idle_and_head_deadlines() {
    let app = spawn_live(|s| {
        s.server.keep_alive = Duration::from_secs(1);
        s.server.request_head_timeout = Duration::from_secs(1);
    })
    .await;
    let mut ws = ws_connect(app.addr).await;
    ws_send(&mut ws, r#"{"subscribe":[61]}"#).await;
    ws_frame(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A frame sent after the deadlines would have passed is still served.
    ws_send(&mut ws, r#"{"subscribe":[62]}"#).await;
    assert_eq!(ids_of(&ws_frame(&mut ws).await), vec![62]);
    app.heartbeat(61, json!({"location": "Here"})).await;
    assert_eq!(ids_of(&ws_frame(&mut ws).await), vec![61]);
}

#[tokio::test]
async fn websockets_count_against_the_stream_limit() {
    let app = spawn_live(|s| s.stream.max_connections = 1).await;
    let _ws = ws_connect(app.addr).await;
    let res = app.client.get(app.url(STREAM)).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let (status, code, _) = error_of(
        app.client
            .get(app.url(WS))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code), (503, 0));
}

#[tokio::test]
async fn a_plain_get_of_the_websocket_route_is_a_bad_request() {
    let app = spawn_live(|_| {}).await;
    let (status, code, _) = error_of(app.client.get(app.url(WS)).send().await.unwrap()).await;
    assert_eq!((status, code), (400, 0));
}

// ---- Many nodes ----

#[tokio::test]
async fn on_redis_a_change_through_any_node_reaches_the_watchers_of_every_node() {
    if common::redis::skip_unless_redis("live presence across nodes") {
        return;
    }
    let quick = |s: &mut presence_server::Settings| {
        s.presence.heartbeat_ttl = Duration::from_millis(1500);
        s.presence.sweep_interval = Duration::from_millis(100);
    };
    let a = spawn_live(quick).await;
    let prefix = a.settings.redis.key_prefix.clone();
    let b = spawn_live(|s| {
        quick(s);
        s.redis.key_prefix = prefix;
    })
    .await;
    let mut on_b = watch(&b, "71,72").await;
    expect_entries(&b, &mut on_b, &[71, 72]).await;
    let mut ws_on_a = ws_connect(a.addr).await;
    ws_send(&mut ws_on_a, r#"{"subscribe":[71]}"#).await;
    ws_frame(&mut ws_on_a).await;

    // Through node A: B's stream hears of it, and so does A's own WebSocket.
    a.heartbeat(71, json!({"location": "On A"})).await;
    let event = expect_entries(&b, &mut on_b, &[71]).await;
    assert_eq!(event.entries()[0]["lastLocation"], "On A");
    assert_eq!(
        ws_frame(&mut ws_on_a).await["userPresences"],
        json!(a.lookup(&[71]).await)
    );
    // Through node B, a refresh: nothing anywhere.
    b.heartbeat(71, json!({"location": "On A"})).await;
    assert_eq!(on_b.next_event(QUIET).await, None);
    assert_eq!(ws_next(&mut ws_on_a, QUIET).await, None);
    // A disconnect through B.
    b.heartbeat(71, json!({"disconnect": true})).await;
    let event = expect_entries(&b, &mut on_b, &[71]).await;
    assert_eq!(event.entries()[0]["userPresenceType"], "Offline");
    assert_eq!(
        ws_frame(&mut ws_on_a).await["userPresences"][0]["userPresenceType"],
        "Offline"
    );
    // An expiry, claimed by whichever node sweeps first, reaches both.
    a.heartbeat(72, json!({"location": "Short"})).await;
    expect_entries(&b, &mut on_b, &[72]).await;
    let expired = on_b.event().await;
    assert_eq!(expired.entries()[0]["userPresenceType"], "Offline");
    assert_eq!(expired.entries()[0]["lastLocation"], "Short");
    assert_eq!(expired.entries(), b.lookup(&[72]).await);
}

// ---- Browsers ----

#[tokio::test]
async fn a_cookie_from_a_foreign_page_is_refused_and_a_listed_or_own_origin_is_served() {
    let app = spawn_live(|s| {
        s.api.cors_origins = vec!["https://friends.example.com".into()];
    })
    .await;
    let cookie = format!(".ROBLOSECURITY={}", app.token(5));
    let own = format!("http://{}", app.addr);
    let stream_with = |origin: &'static str, cookie: Option<String>| {
        let addr = app.addr;
        async move {
            let mut headers = vec![("Origin", origin.to_owned())];
            if let Some(cookie) = cookie {
                headers.push(("Cookie", cookie));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            Sse::open(addr, "userIds=1", &headers, None).await
        }
    };
    // A foreign page with the visitor's cookie: 403 code 0.
    let foreign = stream_with("https://evil.example.com", Some(cookie.clone())).await;
    assert_eq!(foreign.status, 403);
    assert_eq!(
        foreign.error(),
        json!({"errors":[{"code":0,"message":"Forbidden"}]})
    );
    // The same page without a cookie, a listed origin with one, and no Origin at all.
    assert_eq!(
        stream_with("https://evil.example.com", None).await.status,
        200
    );
    assert_eq!(
        stream_with("https://friends.example.com", Some(cookie.clone()))
            .await
            .status,
        200
    );
    let plain = Sse::open(app.addr, "userIds=1", &[("Cookie", &cookie)], None).await;
    assert_eq!(plain.status, 200);
    // This server's own origin.
    let mine = Sse::open(
        app.addr,
        "userIds=1",
        &[("Cookie", &cookie), ("Origin", &own)],
        None,
    )
    .await;
    assert_eq!(mine.status, 200);

    // The WebSocket upgrade likewise.
    let upgrade = |origin: &str| {
        app.client
            .get(app.url(WS))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("cookie", cookie.clone())
            .header("origin", origin.to_owned())
            .send()
    };
    let (status, code, _) = error_of(upgrade("https://evil.example.com").await.unwrap()).await;
    assert_eq!((status, code), (403, 0));
    assert_eq!(
        upgrade("https://friends.example.com")
            .await
            .unwrap()
            .status(),
        101
    );
}
