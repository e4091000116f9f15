#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Game servers and sessions, black-box (CONTRACT section 10): the three routes and their
//! errors, service keys, expiry, how sessions combine into the entry shown, the bounds,
//! metrics, live streams and snapshots, through the real server on whichever backend the
//! suite runs on.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::game::*;
use common::live::*;
use common::redis::skip_unless_memory;
use common::*;
use presence_server::config::PlaceSettings;
use presence_server::Settings;
use serde_json::{json, Value};

/// A quiet spell long enough for an event that is not owed to show up if it were sent.
const QUIET: Duration = Duration::from_millis(700);
const TTL: Duration = Duration::from_secs(2);
const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HALF: Duration = Duration::from_millis(500);

/// The real server on a mock clock, with the game-servers key, the catalog place 1818, a
/// `game_server_ttl` of 2 s and a sweeper every 100 ms of real time; once ready.
async fn spawn(change: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with_clock(|s| {
        game_settings(s);
        s.presence.game_server_ttl = TTL;
        s.presence.sweep_interval = Duration::from_millis(100);
        change(s);
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// `user`'s entry is `want` with `lastOnline` `at`.
async fn expect(app: &TestApp, user: u64, want: &Value, at: &str) {
    let (got, last) = app.shown(user).await;
    assert_eq!(&got, want, "entry of user {user}");
    assert_eq!(last, at, "lastOnline of user {user} ({got})");
}

/// `user` was never seen.
async fn unseen(app: &TestApp, user: u64) {
    let entry = app.presence_of(user).await;
    assert_eq!(entry["lastOnline"], NEVER_SEEN, "{entry}");
    assert_eq!(fields(&entry), offline(user, ""), "{entry}");
}

async fn ok_empty(res: reqwest::Response, what: &str) {
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.text().await.unwrap();
    assert_eq!((status, body.as_str()), (200, "{}"), "{what}");
    assert_eq!(content_type.as_deref(), Some(JSON_UTF8), "{what}");
}

// ---- PUT /v1/game-servers/{gameId} ----

#[tokio::test]
async fn a_report_puts_every_listed_player_in_game_at_the_servers_place() {
    let app = spawn(|s| {
        s.places.push(PlaceSettings {
            id: 1819,
            universe_id: 13058,
            root_place_id: 1818,
            name: "Crossroads: Arena".into(),
        });
    })
    .await;
    let res = app
        .put_server(
            SERVER_A,
            &json!({"placeId": 1818, "universeId": 13058, "players": [1, 2, 3]}),
        )
        .await;
    ok_empty(res, "the first report").await;
    let t0 = app.stamp();
    for u in [1, 2, 3] {
        expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t0).await;
    }
    unseen(&app, 4).await;

    // universeId overrides the catalog's.
    app.report_body(
        SERVER_B,
        &json!({"placeId": 1818, "universeId": 99, "players": [4]}),
    )
    .await;
    expect(&app, 4, &in_game(4, SERVER_B, 1818, Some(99)), &t0).await;
    // A place not in the catalog: Playing, rootPlaceId = placeId, universeId null or given.
    app.report(SERVER_C, UNKNOWN_PLACE, &[5]).await;
    let (entry, _) = app.shown(5).await;
    assert_eq!(entry["lastLocation"], "Playing");
    assert_eq!(entry["rootPlaceId"], 555);
    assert_eq!(entry["universeId"], Value::Null);
    expect(&app, 5, &in_game(5, SERVER_C, UNKNOWN_PLACE, None), &t0).await;
    // Players as numeric strings, as lookups take them.
    app.report_body(
        SERVERS[3],
        &json!({"placeId": 555, "universeId": 7, "players": ["6", 8]}),
    )
    .await;
    expect(&app, 6, &in_game(6, SERVERS[3], 555, Some(7)), &t0).await;
    expect(&app, 8, &in_game(8, SERVERS[3], 555, Some(7)), &t0).await;
    // Whole numbers written as floats, however many digits they have (a client that
    // holds ids as floats writes `2171142742765205.0`), and numeric text with leading zeros.
    let big = 2_171_142_742_765_205_u64;
    app.report_body(
        SERVERS[3],
        &json!({"placeId": 555.0, "universeId": 7, "players": ["6", 8, big as f64, "009"]}),
    )
    .await;
    for u in [6, 8, big, 9] {
        expect(&app, u, &in_game(u, SERVERS[3], 555, Some(7)), &t0).await;
    }
    // A catalog place of another root; the path's UUID in capitals is written lowercase.
    app.report(&SERVERS[4].to_uppercase(), 1819, &[7]).await;
    let arena = json!({
        "userId": 7,
        "userPresenceType": "InGame",
        "lastLocation": "Crossroads: Arena",
        "placeId": 1819,
        "rootPlaceId": 1818,
        "universeId": 13058,
        "gameId": SERVERS[4],
    });
    expect(&app, 7, &arena, &t0).await;

    // The same report again changes nothing but lastOnline.
    app.advance(SECOND);
    app.report_body(
        SERVER_A,
        &json!({"placeId": 1818, "universeId": 13058, "players": [1, 2, 3]}),
    )
    .await;
    let t1 = app.stamp();
    for u in [1, 2, 3] {
        expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t1).await;
    }
    // A new place in a later report moves every listed player there.
    app.report(SERVER_A, UNKNOWN_PLACE, &[1, 2, 3]).await;
    for u in [1, 2, 3] {
        expect(&app, u, &in_game(u, SERVER_A, UNKNOWN_PLACE, None), &t1).await;
    }
}

#[tokio::test]
async fn a_player_left_out_of_the_next_report_has_left_at_that_report() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1, 2, 3]).await;
    app.advance(SECOND);
    app.report(SERVER_A, 1818, &[1, 3, 4]).await;
    let t1 = app.stamp();
    expect(&app, 2, &offline(2, "Classic: Crossroads"), &t1).await;
    for u in [1, 3, 4] {
        expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t1).await;
    }
    app.advance(SECOND);
    app.report(SERVER_A, 1818, &[]).await;
    let t2 = app.stamp();
    for u in [1, 3, 4] {
        expect(&app, u, &offline(u, "Classic: Crossroads"), &t2).await;
    }
    expect(&app, 2, &offline(2, "Classic: Crossroads"), &t1).await;
}

#[tokio::test]
async fn a_refused_report_is_400_and_applies_nothing() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1, 2]).await;
    let t0 = app.stamp();
    app.advance(SECOND);
    let too_many = vec![3; 701];
    let cases: Vec<(&str, Value, i64)> = vec![
        ("not-a-uuid", json!({"placeId": 555, "players": [3]}), 0),
        ("12345", json!({"placeId": 555, "players": [3]}), 0),
        (
            "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a1",
            json!({"placeId": 555, "players": [3]}),
            0,
        ),
        (
            "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11x",
            json!({"placeId": 555, "players": [3]}),
            0,
        ),
        (
            "zfbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11",
            json!({"placeId": 555, "players": [3]}),
            0,
        ),
        (SERVER_A, json!({"placeId": 555}), 0),
        (SERVER_A, json!({"players": [3]}), 0),
        (SERVER_A, json!({"placeId": 0, "players": [3]}), 0),
        (SERVER_A, json!({"placeId": -4, "players": [3]}), 0),
        (SERVER_A, json!({"placeId": null, "players": [3]}), 0),
        (SERVER_A, json!({"placeId": "abc", "players": [3]}), 0),
        (SERVER_A, json!({"placeId": 555, "players": "3"}), 0),
        (SERVER_A, json!({"placeId": 555, "players": {"3": true}}), 0),
        (SERVER_A, json!({"placeId": 555, "players": null}), 0),
        (
            SERVER_A,
            json!({"placeId": 555, "universeId": "many", "players": [3]}),
            0,
        ),
        (SERVER_A, json!([3]), 0),
        (SERVER_A, json!({"placeId": 555, "players": [3, 0]}), 1),
        (SERVER_A, json!({"placeId": 555, "players": [1, -3]}), 1),
        (SERVER_A, json!({"placeId": 555, "players": [3, "abc"]}), 1),
        (
            SERVER_A,
            json!({"placeId": 555, "players": [3, 9_223_372_036_854_775_808_u64]}),
            1,
        ),
        (
            SERVER_A,
            json!({"placeId": 555, "players": [3, "9223372036854775808"]}),
            1,
        ),
        (SERVER_A, json!({"placeId": 555, "players": too_many}), 2),
    ];
    for (game, body, code) in cases {
        let text: String = body.to_string().chars().take(80).collect();
        let what = format!("PUT {game} {text}");
        let (status, got, message) = error_of(app.put_server(game, &body).await).await;
        assert_eq!((status, got), (400, code), "{what}: {message}");
        match code {
            1 => assert_eq!(message, "Invalid user id.", "{what}"),
            2 => assert_eq!(
                message, "Too many User Ids being sent in the request.",
                "{what}"
            ),
            _ => {}
        }
        for u in [1, 2] {
            expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t0).await;
        }
        unseen(&app, 3).await;
    }
    // A body that is not JSON at all.
    let res = app
        .keyed(reqwest::Method::PUT, &server_path(SERVER_A))
        .header("content-type", "application/json")
        .body("{\"placeId\": 555, \"players\": [3")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400);
    unseen(&app, 3).await;
}

#[tokio::test]
async fn the_player_bound_of_a_report_counts_entries_before_deduplication() {
    let app = spawn(|_| {}).await;
    // The default bound, 700: exactly that many is accepted.
    let full: Vec<u64> = (1..=700).collect();
    app.report(SERVER_A, 1818, &full).await;
    let entries = app.lookup(&[1, 350, 700]).await;
    for e in &entries {
        assert_eq!(e["userPresenceType"], "InGame", "{e}");
    }
    // 701 entries of 700 distinct players is one too many, and nothing changes.
    let mut over = full.clone();
    over.push(1);
    let res = app
        .put_server(SERVER_B, &json!({"placeId": 555, "players": over}))
        .await;
    assert_eq!(
        error_of(res).await,
        (
            400,
            2,
            "Too many User Ids being sent in the request.".to_owned()
        )
    );
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &app.stamp()).await;

    let small = spawn(|s| s.api.max_players_per_server = 3).await;
    for players in [json!([1, 2, 3, 4]), json!([1, 1, 1, 1])] {
        let res = small
            .put_server(SERVER_A, &json!({"placeId": 1818, "players": players}))
            .await;
        assert_eq!(error_of(res).await.1, 2, "{players}");
        unseen(&small, 1).await;
    }
    small.report(SERVER_A, 1818, &[1, 2, 3]).await;
}

// ---- POST /v1/game-servers/{gameId}/players ----

#[tokio::test]
async fn joins_and_leaves_apply_at_once() {
    let app = spawn(|_| {}).await;
    app.heartbeat(9, json!({"location": "Home"})).await;
    let t9 = app.stamp();
    app.report(SERVER_A, 1818, &[1, 2]).await;
    app.advance(SECOND);
    let res = app
        .post_players(SERVER_A, &json!({"joined": [4], "left": [2]}))
        .await;
    ok_empty(res, "joined 4, left 2").await;
    let t1 = app.stamp();
    expect(&app, 4, &in_game(4, SERVER_A, 1818, None), &t1).await;
    expect(&app, 2, &offline(2, "Classic: Crossroads"), &t1).await;
    // Either list may be absent; ids as numeric strings.
    app.advance(MS);
    ok_empty(
        app.post_players(SERVER_A, &json!({"joined": ["5"]})).await,
        "joined only",
    )
    .await;
    expect(&app, 5, &in_game(5, SERVER_A, 1818, None), &app.stamp()).await;
    app.advance(MS);
    ok_empty(
        app.post_players(SERVER_A, &json!({"left": ["5"]})).await,
        "left only",
    )
    .await;
    expect(&app, 5, &offline(5, "Classic: Crossroads"), &app.stamp()).await;
    ok_empty(app.post_players(SERVER_A, &json!({})).await, "neither").await;
    // Leaving a player who is not in the server changes nothing.
    app.advance(MS);
    app.join_leave(SERVER_A, &[], &[9, 77]).await;
    expect(&app, 9, &online(9, "Home"), &t9).await;
    unseen(&app, 77).await;
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &t9).await;
}

#[tokio::test]
async fn joined_players_expire_with_the_server_at_the_deadline_of_its_last_report() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1]).await;
    let t0 = app.stamp();
    app.advance(Duration::from_millis(1500));
    app.join_leave(SERVER_A, &[2], &[]).await;
    let t1 = app.stamp();
    // The join did not move the deadline: t0 + 2 s.
    app.advance(Duration::from_millis(499));
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &t0).await;
    expect(&app, 2, &in_game(2, SERVER_A, 1818, None), &t1).await;
    app.advance(MS);
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &t0).await;
    expect(&app, 2, &offline(2, "Classic: Crossroads"), &t1).await;
    let res = app.post_players(SERVER_A, &json!({"joined": [3]})).await;
    assert_eq!(
        error_of(res).await,
        (404, 0, "Unknown game server.".to_owned())
    );
    unseen(&app, 3).await;
}

#[tokio::test]
async fn players_to_a_server_that_is_not_live_are_404() {
    let app = spawn(|_| {}).await;
    let unknown = |res: reqwest::Response| async move {
        assert_eq!(
            error_of(res).await,
            (404, 0, "Unknown game server.".to_owned())
        );
    };
    // Never reported.
    unknown(app.post_players(SERVER_A, &json!({"joined": [1]})).await).await;
    unknown(app.post_players(SERVER_A, &json!({"left": [1]})).await).await;
    unseen(&app, 1).await;
    // Deleted.
    app.report(SERVER_B, 1818, &[2]).await;
    app.stop_server(SERVER_B).await;
    unknown(app.post_players(SERVER_B, &json!({"joined": [1]})).await).await;
    unseen(&app, 1).await;
    // Past its deadline.
    app.report(SERVER_C, 1818, &[3]).await;
    app.advance(TTL);
    unknown(app.post_players(SERVER_C, &json!({"joined": [1]})).await).await;
    unseen(&app, 1).await;
    // Reported again, it is live again.
    app.report(SERVER_C, 1818, &[3]).await;
    app.join_leave(SERVER_C, &[1], &[]).await;
    expect(&app, 1, &in_game(1, SERVER_C, 1818, None), &app.stamp()).await;
}

#[tokio::test]
async fn a_refused_change_of_players_is_400_and_applies_nothing() {
    let app = spawn(|s| s.api.max_players_per_server = 3).await;
    app.report(SERVER_A, 1818, &[1, 2]).await;
    let t0 = app.stamp();
    app.advance(SECOND);
    let cases = [
        (json!({"joined": [5, 6], "left": [1, 5]}), 0),
        (json!({"joined": "5"}), 0),
        (json!({"joined": [5], "left": {"1": true}}), 0),
        (json!([5]), 0),
        (json!({"joined": [5, 0]}), 1),
        (json!({"joined": [5], "left": [1, -2]}), 1),
        (json!({"joined": [5, "x"]}), 1),
        (json!({"joined": [5, 9_223_372_036_854_775_808_u64]}), 1),
        // 2 players, 2 join: 4 > 3.
        (json!({"joined": [5, 6]}), 2),
    ];
    for (body, code) in cases {
        let (status, got, message) = error_of(app.post_players(SERVER_A, &body).await).await;
        assert_eq!((status, got), (400, code), "{body}: {message}");
        for u in [1, 2] {
            expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t0).await;
        }
        unseen(&app, 5).await;
        unseen(&app, 6).await;
    }
    // Within the bound once the leave is counted.
    app.join_leave(SERVER_A, &[5, 6], &[1]).await;
    let t1 = app.stamp();
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &t1).await;
    for u in [5, 6] {
        expect(&app, u, &in_game(u, SERVER_A, 1818, None), &t1).await;
    }
    let res = app.post_players(SERVER_A, &json!({"joined": [7]})).await;
    assert_eq!(error_of(res).await.1, 2);
    unseen(&app, 7).await;
}

// ---- DELETE and expiry ----

#[tokio::test]
async fn delete_ends_every_session_in_the_server_now_and_is_200_for_any_server() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1, 2]).await;
    app.advance(HALF);
    app.join_leave(SERVER_A, &[3], &[]).await;
    app.advance(HALF);
    ok_empty(app.delete_server(SERVER_A).await, "DELETE a live server").await;
    let t = app.stamp();
    for u in [1, 2, 3] {
        expect(&app, u, &offline(u, "Classic: Crossroads"), &t).await;
    }
    let res = app.post_players(SERVER_A, &json!({"joined": [4]})).await;
    assert_eq!(error_of(res).await.0, 404);
    ok_empty(app.delete_server(SERVER_A).await, "DELETE again").await;
    ok_empty(app.delete_server(SERVER_B).await, "DELETE one never seen").await;
    // One past its deadline: its players keep the time of its last report.
    app.report(SERVER_C, 1818, &[5]).await;
    let t5 = app.stamp();
    app.advance(TTL);
    ok_empty(app.delete_server(SERVER_C).await, "DELETE an expired one").await;
    expect(&app, 5, &offline(5, "Classic: Crossroads"), &t5).await;
    let res = app.delete_server("not-a-uuid").await;
    assert_eq!(error_of(res).await.0, 400);
}

#[tokio::test]
async fn a_server_not_reported_again_ends_its_sessions_at_its_deadline_before_any_sweep() {
    // No sweep within this test.
    let app = spawn(|s| s.presence.sweep_interval = Duration::from_secs(3600)).await;
    app.heartbeat(5, json!({"location": "Home"})).await;
    app.report(SERVER_A, 1818, &[1, 2, 5]).await;
    app.advance(SECOND);
    app.report(SERVER_A, 1818, &[1, 5]).await;
    let t1 = app.stamp();
    app.advance(Duration::from_millis(500));
    app.join_leave(SERVER_A, &[3], &[]).await;
    let t2 = app.stamp();
    // The deadline is t1 + 2 s.
    app.advance(Duration::from_millis(1499));
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &t1).await;
    expect(&app, 3, &in_game(3, SERVER_A, 1818, None), &t2).await;
    expect(&app, 5, &in_game(5, SERVER_A, 1818, None), &t1).await;
    app.advance(MS);
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &t1).await;
    expect(&app, 2, &offline(2, "Classic: Crossroads"), &t1).await;
    expect(&app, 3, &offline(3, "Classic: Crossroads"), &t2).await;
    // The app session is still live: shown again, with the last report's time.
    expect(&app, 5, &online(5, "Home"), &t1).await;
    let res = app.post_players(SERVER_A, &json!({"joined": [4]})).await;
    assert_eq!(error_of(res).await.0, 404);
    unseen(&app, 4).await;
}

#[tokio::test]
async fn the_sweeper_reclaims_an_expired_server() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1]).await;
    app.report(SERVER_B, 1818, &[2]).await;
    eventually(Duration::from_secs(10), || async {
        (app.gauge("presence_game_servers").await == 2.0).then_some(())
    })
    .await;
    app.advance(SECOND);
    app.report(SERVER_B, 1818, &[2]).await;
    app.advance(SECOND);
    eventually(Duration::from_secs(10), || async {
        let text = app.metrics().await;
        (gauge(&text, "presence_game_servers") == 1.0
            && gauge(&text, r#"presence_users{type="InGame"}"#) == 1.0)
            .then_some(())
    })
    .await;
    let res = app.post_players(SERVER_A, &json!({"joined": [3]})).await;
    assert_eq!(error_of(res).await.0, 404);
    app.join_leave(SERVER_B, &[3], &[]).await;
    expect(&app, 3, &in_game(3, SERVER_B, 1818, None), &app.stamp()).await;
}

// ---- service keys ----

#[tokio::test]
async fn every_route_needs_a_key_with_the_game_servers_scope() {
    let app = spawn(|_| {}).await;
    let body = json!({"placeId": 1818, "players": [1], "joined": [1]});
    let routes = [
        (reqwest::Method::PUT, server_path(SERVER_A)),
        (reqwest::Method::POST, players_path(SERVER_A)),
        (reqwest::Method::DELETE, server_path(SERVER_A)),
    ];
    for (method, path) in &routes {
        let plain = || {
            app.client
                .request(method.clone(), app.url(path))
                .json(&body)
        };
        let denied = [
            ("no key", plain()),
            ("an unknown key", plain().header("x-api-key", "not-a-key")),
            ("an empty key", plain().header("x-api-key", "")),
            (
                "the hash of the key as the key",
                plain().header("x-api-key", sha256_hex(GAME_KEY)),
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
        let res = plain().header("x-api-key", READ_KEY).send().await.unwrap();
        assert_eq!(
            error_of(res).await,
            (403, 0, "Forbidden".to_owned()),
            "{method} {path} with a key of the read scope"
        );
        unseen(&app, 1).await;
    }
    // The key alone, with no CSRF token, is enough.
    app.report(SERVER_A, 1818, &[1]).await;
    app.join_leave(SERVER_A, &[2], &[]).await;
    expect(&app, 2, &in_game(2, SERVER_A, 1818, None), &app.stamp()).await;
    app.stop_server(SERVER_A).await;
}

// ---- sessions combined ----

#[tokio::test]
async fn a_game_shows_over_the_app_and_the_app_again_once_the_game_ends() {
    let app = spawn(|_| {}).await;
    // App only.
    app.heartbeat(1, json!({})).await;
    expect(&app, 1, &online(1, "Website"), &app.stamp()).await;
    // Game only.
    app.report(SERVER_A, 1818, &[2]).await;
    expect(&app, 2, &in_game(2, SERVER_A, 1818, None), &app.stamp()).await;
    // Both, whichever came first.
    app.heartbeat(3, json!({"location": "Home"})).await;
    app.heartbeat(
        4,
        json!({"placeId": 555, "location": "Obby", "gameId": GAME}),
    )
    .await;
    app.heartbeat(5, json!({"location": "Studio", "placeId": 1818}))
        .await;
    app.advance(HALF);
    app.report(SERVER_A, 1818, &[2, 3, 4, 5, 6]).await;
    app.advance(HALF);
    app.heartbeat(6, json!({})).await;
    let t1 = app.stamp();
    for u in [3, 4, 5, 6] {
        let (entry, _) = app.shown(u).await;
        assert_eq!(entry, in_game(u, SERVER_A, 1818, None), "user {u}");
    }
    expect(&app, 6, &in_game(6, SERVER_A, 1818, None), &t1).await;
    // The game ends: the app session shows again, lastOnline at the leave.
    app.advance(HALF);
    app.report(SERVER_A, 1818, &[2]).await;
    let t2 = app.stamp();
    expect(&app, 3, &online(3, "Home"), &t2).await;
    let obby = json!({
        "userId": 4,
        "userPresenceType": "InGame",
        "lastLocation": "Obby",
        "placeId": 555,
        "rootPlaceId": 555,
        "universeId": null,
        "gameId": GAME,
    });
    expect(&app, 4, &obby, &t2).await;
    let studio = json!({
        "userId": 5,
        "userPresenceType": "InStudio",
        "lastLocation": "Studio - Classic: Crossroads",
        "placeId": 1818,
        "rootPlaceId": 1818,
        "universeId": 13058,
        "gameId": null,
    });
    expect(&app, 5, &studio, &t2).await;
    expect(&app, 6, &online(6, "Website"), &t2).await;
}

#[tokio::test]
async fn disconnect_in_a_game_ends_only_the_app_session() {
    let app = spawn(|_| {}).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.report(SERVER_A, 1818, &[1]).await;
    app.advance(SECOND);
    app.heartbeat(1, json!({"disconnect": true})).await;
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &app.stamp()).await;
    // Within A's deadline (t0 + 2 s), the app session again, and again a disconnect.
    app.advance(HALF);
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.advance(MS);
    app.heartbeat(1, json!({"disconnect": true})).await;
    let t = app.stamp();
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &t).await;
    // The game ends: Offline, keeping the game's location.
    app.advance(MS);
    app.report(SERVER_A, 1818, &[]).await;
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &app.stamp()).await;

    // The other way round: the game ends first, then the app.
    app.heartbeat(2, json!({"location": "Home"})).await;
    app.report(SERVER_B, 555, &[2]).await;
    app.advance(MS);
    app.stop_server(SERVER_B).await;
    expect(&app, 2, &online(2, "Home"), &app.stamp()).await;
    app.advance(MS);
    app.heartbeat(2, json!({"disconnect": true})).await;
    expect(&app, 2, &offline(2, "Home"), &app.stamp()).await;
}

#[tokio::test]
async fn offline_keeps_the_location_shown_last_when_sessions_end_in_the_same_millisecond() {
    let app = spawn(|_| {}).await;
    for (user, game_first) in [(1, true), (2, false)] {
        app.heartbeat(user, json!({"location": "Home"})).await;
        app.report(SERVER_A, 1818, &[user]).await;
        app.advance(MS);
        // Both end at this instant, one after the other; a read between them shows the
        // session left.
        if game_first {
            app.join_leave(SERVER_A, &[], &[user]).await;
            expect(&app, user, &online(user, "Home"), &app.stamp()).await;
            app.heartbeat(user, json!({"disconnect": true})).await;
            expect(&app, user, &offline(user, "Home"), &app.stamp()).await;
        } else {
            app.heartbeat(user, json!({"disconnect": true})).await;
            let shown = in_game(user, SERVER_A, 1818, None);
            expect(&app, user, &shown, &app.stamp()).await;
            app.join_leave(SERVER_A, &[], &[user]).await;
            let last = offline(user, "Classic: Crossroads");
            expect(&app, user, &last, &app.stamp()).await;
        }
    }
}

#[tokio::test]
async fn the_most_recently_joined_live_game_session_is_shown() {
    let app = spawn(|_| {}).await;
    app.report(SERVER_A, 1818, &[1]).await;
    app.advance(MS);
    app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
    app.advance(MS);
    app.report(SERVER_C, 1818, &[1]).await;
    expect(&app, 1, &in_game(1, SERVER_C, 1818, None), &app.stamp()).await;
    // Re-listing in a later report of the same server is no new join.
    app.advance(MS);
    app.report(SERVER_A, 1818, &[1]).await;
    app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
    expect(&app, 1, &in_game(1, SERVER_C, 1818, None), &app.stamp()).await;
    app.advance(MS);
    app.stop_server(SERVER_C).await;
    expect(
        &app,
        1,
        &in_game(1, SERVER_B, UNKNOWN_PLACE, None),
        &app.stamp(),
    )
    .await;
    app.advance(MS);
    app.join_leave(SERVER_B, &[], &[1]).await;
    expect(&app, 1, &in_game(1, SERVER_A, 1818, None), &app.stamp()).await;
    // A join through the players route counts as one.
    app.advance(MS);
    app.report(SERVER_B, UNKNOWN_PLACE, &[]).await;
    app.join_leave(SERVER_B, &[1], &[]).await;
    expect(
        &app,
        1,
        &in_game(1, SERVER_B, UNKNOWN_PLACE, None),
        &app.stamp(),
    )
    .await;
    app.advance(MS);
    app.report(SERVER_B, UNKNOWN_PLACE, &[]).await;
    app.advance(MS);
    app.report(SERVER_A, 1818, &[]).await;
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &app.stamp()).await;
}

#[derive(Debug, Clone, Copy)]
enum OldServer {
    Leaves,
    ReportsWithout,
    Deleted,
    Expires,
}

#[tokio::test]
async fn a_player_who_moved_keeps_the_new_server_whatever_the_old_one_does() {
    for ending in [
        OldServer::Leaves,
        OldServer::ReportsWithout,
        OldServer::Deleted,
        OldServer::Expires,
    ] {
        let app = spawn(|_| {}).await;
        let at_b = in_game(1, SERVER_B, UNKNOWN_PLACE, None);
        app.report(SERVER_A, 1818, &[1]).await;
        app.advance(Duration::from_millis(500));
        app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
        expect(&app, 1, &at_b, &app.stamp()).await;
        app.advance(Duration::from_millis(500));
        app.report(SERVER_A, 1818, &[1]).await;
        let t2 = app.stamp();
        expect(&app, 1, &at_b, &t2).await;
        app.advance(Duration::from_millis(500));
        let t3 = app.stamp();
        match ending {
            OldServer::Leaves => app.join_leave(SERVER_A, &[], &[1]).await,
            OldServer::ReportsWithout => app.report(SERVER_A, 1818, &[]).await,
            OldServer::Deleted => app.stop_server(SERVER_A).await,
            OldServer::Expires => {
                app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
                // A's deadline, t2 + 2 s, exactly.
                app.advance(Duration::from_millis(1500));
                let res = app.post_players(SERVER_A, &json!({"left": [1]})).await;
                assert_eq!(error_of(res).await.0, 404, "A expired");
            }
        }
        expect(&app, 1, &at_b, &t3).await;
        app.advance(MS);
        app.stop_server(SERVER_B).await;
        expect(&app, 1, &offline(1, "Playing"), &app.stamp()).await;
        eprintln!("{ending:?}: passed");
    }
}

#[tokio::test]
async fn a_join_beyond_max_game_sessions_ends_the_oldest() {
    // The default bound, 4.
    let app = spawn(|_| {}).await;
    assert_eq!(app.settings.presence.max_game_sessions, 4);
    for server in SERVERS {
        app.advance(MS);
        app.report(server, 1818, &[1]).await;
    }
    for i in (1..SERVERS.len()).rev() {
        expect(&app, 1, &in_game(1, SERVERS[i], 1818, None), &app.stamp()).await;
        app.advance(MS);
        app.stop_server(SERVERS[i]).await;
    }
    // The first server's session ended at the fifth join.
    expect(&app, 1, &offline(1, "Classic: Crossroads"), &app.stamp()).await;

    // A bound of 2, the third join through the players route.
    let app = spawn(|s| s.presence.max_game_sessions = 2).await;
    app.report(SERVER_A, 1818, &[2]).await;
    app.advance(MS);
    app.report(SERVER_B, UNKNOWN_PLACE, &[2]).await;
    app.report(SERVER_C, UNKNOWN_PLACE, &[]).await;
    app.advance(MS);
    app.join_leave(SERVER_C, &[2], &[]).await;
    expect(
        &app,
        2,
        &in_game(2, SERVER_C, UNKNOWN_PLACE, None),
        &app.stamp(),
    )
    .await;
    app.advance(MS);
    app.stop_server(SERVER_C).await;
    expect(
        &app,
        2,
        &in_game(2, SERVER_B, UNKNOWN_PLACE, None),
        &app.stamp(),
    )
    .await;
    app.advance(MS);
    app.stop_server(SERVER_B).await;
    // A, still live, no longer holds 2.
    expect(&app, 2, &offline(2, "Playing"), &app.stamp()).await;
}

// ---- configuration ----

#[tokio::test]
async fn with_client_reported_games_off_only_game_servers_make_in_game() {
    let app = spawn(|s| s.presence.client_reported_games = false).await;
    app.heartbeat(
        1,
        json!({"placeId": 1818, "gameId": GAME, "universeId": 5, "location": "Home"}),
    )
    .await;
    expect(&app, 1, &online(1, "Home"), &app.stamp()).await;
    app.heartbeat(2, json!({"placeId": 555, "gameId": GAME}))
        .await;
    expect(&app, 2, &online(2, "Website"), &app.stamp()).await;
    app.heartbeat(3, json!({"location": "Studio", "placeId": 1818}))
        .await;
    let studio = json!({
        "userId": 3,
        "userPresenceType": "InStudio",
        "lastLocation": "Studio - Classic: Crossroads",
        "placeId": 1818,
        "rootPlaceId": 1818,
        "universeId": 13058,
        "gameId": null,
    });
    expect(&app, 3, &studio, &app.stamp()).await;
    app.report(SERVER_A, 1818, &[1, 2, 3]).await;
    for u in [1, 2, 3] {
        expect(&app, u, &in_game(u, SERVER_A, 1818, None), &app.stamp()).await;
    }
    app.advance(MS);
    app.stop_server(SERVER_A).await;
    expect(&app, 1, &online(1, "Home"), &app.stamp()).await;
    expect(&app, 3, &studio, &app.stamp()).await;
}

#[tokio::test]
async fn max_game_servers_refuses_a_new_server_beyond_it_with_503() {
    let app = spawn(|s| s.presence.max_game_servers = 2).await;
    app.report(SERVER_A, 1818, &[1]).await;
    app.report(SERVER_B, 1818, &[2]).await;
    let res = app
        .put_server(SERVER_C, &json!({"placeId": 1818, "players": [3]}))
        .await;
    assert!(
        res.headers().get("retry-after").is_some(),
        "a Retry-After: {:?}",
        res.headers()
    );
    assert_eq!(
        error_of(res).await,
        (503, 0, "ServiceUnavailable".to_owned())
    );
    unseen(&app, 3).await;
    // One already live is still reported.
    app.report(SERVER_A, 1818, &[1, 4]).await;
    expect(&app, 4, &in_game(4, SERVER_A, 1818, None), &app.stamp()).await;
    app.stop_server(SERVER_B).await;
    app.report(SERVER_C, 1818, &[3]).await;
    expect(&app, 3, &in_game(3, SERVER_C, 1818, None), &app.stamp()).await;
}

// ---- metrics ----

/// Waits until /metrics counts these shown entries and live servers.
async fn counts(app: &TestApp, in_game: f64, online: f64, studio: f64, servers: f64) {
    let want = (in_game, online, studio, servers);
    eventually(Duration::from_secs(10), || async {
        let text = app.metrics().await;
        let got = (
            gauge(&text, r#"presence_users{type="InGame"}"#),
            gauge(&text, r#"presence_users{type="Online"}"#),
            gauge(&text, r#"presence_users{type="InStudio"}"#),
            gauge(&text, "presence_game_servers"),
        );
        (got == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_count_the_entries_shown_and_the_live_servers() {
    let app = spawn(|_| {}).await;
    app.heartbeat(1, json!({})).await;
    app.heartbeat(3, json!({"location": "Home"})).await;
    app.heartbeat(4, json!({"location": "Studio"})).await;
    app.report(SERVER_A, 1818, &[2, 3]).await;
    app.report(SERVER_B, UNKNOWN_PLACE, &[5]).await;
    counts(&app, 3.0, 1.0, 1.0, 2.0).await;
    app.stop_server(SERVER_B).await;
    counts(&app, 2.0, 1.0, 1.0, 1.0).await;
    // A expires: 2 Offline, 3 back Online.
    app.advance(TTL);
    counts(&app, 0.0, 2.0, 1.0, 0.0).await;
}

// ---- live streams ----

/// Reads `sse` until its latest entry of each of `ids` is a lookup's (all but
/// `lastOnline`), which must differ from what it had before, and then nothing more for
/// [`QUIET`].
async fn sees_change(
    app: &TestApp,
    sse: &mut Sse,
    known: &mut HashMap<u64, Value>,
    ids: &[u64],
    what: &str,
) {
    let want: Vec<Value> = app.lookup(ids).await.iter().map(fields).collect();
    let holds = |known: &HashMap<u64, Value>| {
        ids.iter()
            .zip(&want)
            .all(|(u, w)| known.get(u).map(fields).as_ref() == Some(w))
    };
    assert!(!holds(known), "{what}: the test expected a change");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds(known) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = sse
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("{what}: the watcher holds {known:?}, a lookup {want:?}"));
        for e in event.entries() {
            known.insert(e["userId"].as_u64().unwrap(), e);
        }
    }
    assert_eq!(sse.next_event(QUIET).await, None, "{what}: more events");
}

#[tokio::test]
async fn a_watcher_sees_every_change_of_the_entry_shown_and_nothing_for_a_repeated_report() {
    let app = spawn(|s| s.presence.heartbeat_ttl = Duration::from_secs(30)).await;
    let ids = [1, 2, 3];
    let mut sse = Sse::open(app.addr, "userIds=1,2,3", &[], None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    let mut known = HashMap::new();
    for e in sse.event().await.entries() {
        known.insert(e["userId"].as_u64().unwrap(), e);
    }

    app.report(SERVER_A, 1818, &[1, 2]).await;
    sees_change(&app, &mut sse, &mut known, &ids, "report").await;
    app.advance(Duration::from_millis(100));
    app.report(SERVER_A, 1818, &[1, 2]).await;
    assert_eq!(sse.next_event(QUIET).await, None, "the same report again");
    assert_eq!(app.presence_of(1).await["lastOnline"], app.stamp());
    app.join_leave(SERVER_A, &[3], &[2]).await;
    sees_change(&app, &mut sse, &mut known, &ids, "join and leave").await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    sees_change(&app, &mut sse, &mut known, &ids, "heartbeat").await;
    app.report(SERVER_B, UNKNOWN_PLACE, &[2]).await;
    sees_change(&app, &mut sse, &mut known, &ids, "game over app").await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    assert_eq!(
        sse.next_event(QUIET).await,
        None,
        "a heartbeat under a game"
    );
    app.report(SERVER_A, 1818, &[3]).await;
    sees_change(&app, &mut sse, &mut known, &ids, "left out of a report").await;
    app.stop_server(SERVER_B).await;
    sees_change(&app, &mut sse, &mut known, &ids, "delete").await;
    app.advance(TTL);
    sees_change(&app, &mut sse, &mut known, &ids, "expiry").await;
    assert_eq!(known[&3]["userPresenceType"], "Offline");
    assert_eq!(known[&2]["lastLocation"], "Home");
}

/// A change by expiry is owed to watchers even when, before the sweeper reaches it, a
/// write lands that leaves what a read shows as it was (the read already showed the
/// expiry). `disconnect`: an app session expires, then a disconnect; else game server A
/// expires, falling back to B, then B reports again.
async fn expiry_then_a_write_before_the_sweep(disconnect: bool) {
    // A sweeper slow enough for the write to land first.
    let app = spawn(|s| {
        s.presence.heartbeat_ttl = TTL;
        s.presence.sweep_interval = Duration::from_millis(500);
    })
    .await;
    if disconnect {
        app.heartbeat(1, json!({"location": "Home"})).await;
    } else {
        app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
        app.advance(MS);
        app.report(SERVER_A, 1818, &[1]).await;
        app.advance(SECOND);
        app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
        app.advance(SECOND - MS);
    }
    let mut sse = Sse::open(app.addr, "userIds=1", &[], None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    let mut known = HashMap::new();
    for e in sse.event().await.entries() {
        known.insert(e["userId"].as_u64().unwrap(), e);
    }
    // Onto the app session's deadline, or A's; then the write.
    if disconnect {
        app.advance(TTL);
        app.heartbeat(1, json!({"disconnect": true})).await;
    } else {
        app.advance(MS);
        app.report(SERVER_B, UNKNOWN_PLACE, &[1]).await;
    }
    let what = if disconnect {
        "expired app session, then a disconnect"
    } else {
        "A expired (B shown), then B reported again"
    };
    sees_change(&app, &mut sse, &mut known, &[1], what).await;
}

#[tokio::test]
async fn an_app_expiry_reaches_watchers_when_a_disconnect_comes_before_the_sweep() {
    expiry_then_a_write_before_the_sweep(true).await;
}

#[tokio::test]
async fn a_server_expiry_reaches_watchers_when_a_report_comes_before_the_sweep() {
    expiry_then_a_write_before_the_sweep(false).await;
}

// ---- snapshots ----

#[tokio::test]
async fn game_sessions_and_live_servers_survive_a_restart() {
    use common::process::*;
    if skip_unless_memory("snapshots belong to the memory backend (CONTRACT section 7)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("presence.snapshot");
    let cfg = config_file(&format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"2s\"\n\
         [auth]\njwt_secret = \"{SECRET}\"\n\
         [[auth.service_keys]]\nname = \"gs\"\nsha256 = \"{}\"\nscopes = [\"game-servers\"]\n\
         [persistence]\npath = \"{}\"\n\
         [[places]]\nid = 1818\nuniverse_id = 13058\nroot_place_id = 1818\nname = \"Classic: Crossroads\"\n",
        sha256_hex(GAME_KEY),
        snapshot.display()
    ));
    let client = reqwest::Client::new();
    let send = |addr: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, format!("http://{addr}{path}"))
            .header("x-api-key", GAME_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let lookup = |addr: &str| {
        let req = client
            .post(format!("http://{addr}{USERS}"))
            .json(&json!({"userIds": [1, 2, 3, 4]}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    let mut server = start(command(cfg.path()));
    let addr = server.addr.clone();
    let put = reqwest::Method::PUT;
    let a = json!({"placeId": 1818, "players": [1, 2]});
    assert_eq!(
        send(&addr, put.clone(), &server_path(SERVER_A), Some(a)).await,
        200
    );
    let b = json!({"placeId": 555, "players": [2]});
    assert_eq!(
        send(&addr, put.clone(), &server_path(SERVER_B), Some(b)).await,
        200
    );
    let before = lookup(&addr).await;
    assert_eq!(before["userPresences"][1]["gameId"], SERVER_B, "{before}");
    server.signal("TERM");
    assert!(
        server.wait_exit(),
        "exit 0 after SIGTERM: {:?}",
        server.logs
    );

    let server = start(command(cfg.path()));
    let addr = server.addr.clone();
    let after = lookup(&addr).await;
    assert_eq!(after, before);
    // Still live: players may join, and the join order is kept.
    let joined = Some(json!({"joined": [4]}));
    assert_eq!(
        send(
            &addr,
            reqwest::Method::POST,
            &players_path(SERVER_A),
            joined
        )
        .await,
        200
    );
    assert_eq!(
        send(&addr, reqwest::Method::DELETE, &server_path(SERVER_B), None).await,
        200
    );
    let now = lookup(&addr).await;
    for i in [1, 3] {
        let e = &now["userPresences"][i];
        assert_eq!(e["userPresenceType"], "InGame", "{e}");
        assert_eq!(e["gameId"], SERVER_A, "{e}");
    }
    stop(server);
}

fn stop(mut server: common::process::Running) {
    server.signal("TERM");
    assert!(
        server.wait_exit(),
        "exit 0 after SIGTERM: {:?}",
        server.logs
    );
}
