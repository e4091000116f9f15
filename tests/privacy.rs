#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privacy, black-box (CONTRACT section 11, "Privacy: who sees whom"): the settings routes,
//! friendships, who the viewer is, what each viewer is shown of each user by lookups,
//! event streams and WebSockets, what streams send when sight changes, and what they must
//! never send. Each test names the sentences it checks; it runs on whichever backend the
//! suite runs on (`PRESENCE_TEST_BACKEND`, see tests/common/redis.rs).
mod common;

use std::time::Duration;

use common::game::{self as g, rfc3339, GAME_KEY, READ_KEY, SERVER_A};
use common::privacy::*;
use common::*;
use presence_server::config::PresenceTypeFormat;
use presence_server::Settings;
use serde_json::{json, Value};

/// A quiet spell long enough for an event that is not owed to show up if it were sent
/// (the sweeper, which ends invisibility, runs every 100 ms in these tests).
const QUIET: Duration = Duration::from_millis(700);

/// The real server with the privacy keys ([`privacy_settings`]), once ready (on Redis,
/// once it hears of changes), on the system clock.
async fn live(change: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(|s| {
        privacy_settings(s);
        s.presence.sweep_interval = Duration::from_millis(100);
        change(s);
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// The same on a mock clock that moves only by [`TestApp::advance`], with heartbeats that
/// last an hour so that users stay present while the clock moves.
async fn clocked(change: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with_clock(|s| {
        privacy_settings(s);
        s.presence.heartbeat_ttl = Duration::from_secs(3600);
        s.presence.sweep_interval = Duration::from_millis(100);
        change(s);
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// Milliseconds since the epoch of an RFC 3339 text.
fn instant(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a time is a string"))
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// Checks a settings answer: exactly the three keys, with these values (`until` compared
/// as an instant).
fn assert_settings(answer: &Value, visibility: &str, invisible: bool, until: Option<i64>) {
    assert_eq!(
        answer.as_object().map(|o| o.len()),
        Some(3),
        "exactly visibility, invisible, invisibleUntil: {answer}"
    );
    assert_eq!(answer["visibility"], visibility, "{answer}");
    assert_eq!(answer["invisible"], invisible, "{answer}");
    match until {
        None => assert_eq!(answer["invisibleUntil"], Value::Null, "{answer}"),
        Some(ms) => assert_eq!(instant(&answer["invisibleUntil"]), ms, "{answer}"),
    }
}

// =======================================================================================
// Settings, per user
// =======================================================================================

/// "`GET /v1/presence/settings` (the user's own credential) answers
/// `{"visibility":"everyone","invisible":false,"invisibleUntil":null}`" for a user who set
/// nothing, seen or not; and "`visibility`: `everyone` (default)".
#[tokio::test]
async fn settings_default_to_everyone_and_not_invisible() {
    let app = live(|_| {}).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    for user in [1, 2] {
        let res = app.get_settings_raw(user).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], JSON_UTF8);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, default_settings());
        assert_settings(&body, "everyone", false, None);
    }
    // Everyone sees a user who set nothing.
    let entry = app.seen_as(&Who::Anonymous, 1).await;
    assert_eq!(entry["userPresenceType"], "Online");
    assert_eq!(entry["lastLocation"], "Home");
}

/// The settings routes take "the user's own credential": without one, or with a forged
/// one, 401 code 0; a cookie `GET` needs no CSRF token; "cookie calls need the CSRF token
/// as in section 4" for `PATCH`: 403 with `x-csrf-token`, nothing changed, and the repeat
/// with it succeeds.
#[tokio::test]
async fn the_settings_routes_need_the_users_own_credential_and_cookie_patches_a_csrf_token() {
    let app = live(|_| {}).await;
    let body = json!({"visibility": "nobody"});
    let no_credential = [
        app.client.get(app.url(SETTINGS)),
        app.client.patch(app.url(SETTINGS)).json(&body),
        app.client
            .get(app.url(SETTINGS))
            .bearer_auth("not-a-credential"),
        app.client
            .patch(app.url(SETTINGS))
            .bearer_auth(expired_token(&app, 3, Duration::from_secs(60)))
            .json(&body),
    ];
    for req in no_credential {
        let res = req.send().await.unwrap();
        assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()));
    }
    assert_eq!(app.get_settings(3).await, default_settings());

    // A cookie GET: no CSRF token needed.
    let cookie = format!(".ROBLOSECURITY={}", app.token(3));
    let res = app
        .client
        .get(app.url(SETTINGS))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(res, "cookie GET").await, default_settings());

    // A cookie PATCH without the token: 403 with one, nothing changed.
    let res = app
        .client
        .patch(app.url(SETTINGS))
        .header("cookie", &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    let token = res
        .headers()
        .get("x-csrf-token")
        .expect("a 403 carries x-csrf-token")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        error_of(res).await,
        (403, 0, "Token Validation Failed".to_owned())
    );
    assert_eq!(app.get_settings(3).await, default_settings());

    let res = app
        .client
        .patch(app.url(SETTINGS))
        .header("cookie", &cookie)
        .header("x-csrf-token", &token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_settings(&ok_json(res, "cookie PATCH").await, "nobody", false, None);
    assert_settings(&app.get_settings(3).await, "nobody", false, None);
}

/// "`PATCH /v1/presence/settings` ... with any of those fields answers the new settings";
/// `visibility` is `everyone`, `friends` or `nobody`; `invisible` is kept by a body that
/// does not name it, and `{}` changes nothing. One user's settings are its own.
#[tokio::test]
async fn patch_answers_the_new_settings() {
    let app = live(|_| {}).await;
    let later = app.now_ms() + 3_600_000 + 123;

    let steps: [(Value, &str, bool, Option<i64>); 9] = [
        (json!({"visibility": "friends"}), "friends", false, None),
        (json!({"invisible": true}), "friends", true, None),
        (json!({}), "friends", true, None),
        (json!({"visibility": "nobody"}), "nobody", true, None),
        (
            json!({"invisible": true, "invisibleUntil": rfc3339(later)}),
            "nobody",
            true,
            Some(later),
        ),
        (
            json!({"visibility": "everyone"}),
            "everyone",
            true,
            Some(later),
        ),
        (json!({"invisible": false}), "everyone", false, None),
        (
            json!({"visibility": "friends", "invisible": true, "invisibleUntil": rfc3339(later)}),
            "friends",
            true,
            Some(later),
        ),
        (
            json!({"visibility": "everyone", "invisible": false}),
            "everyone",
            false,
            None,
        ),
    ];
    for (body, visibility, invisible, until) in steps {
        let answer = app.set_settings(5, body.clone()).await;
        assert_settings(&answer, visibility, invisible, until);
        assert_eq!(app.get_settings(5).await, answer, "GET after PATCH {body}");
        assert_eq!(app.get_settings(6).await, default_settings());
    }

    // invisibleUntil with an offset names an instant like any other RFC 3339 text.
    let answer = app
        .set_settings(
            5,
            json!({"invisible": true, "invisibleUntil": "2999-01-01T02:00:00+02:00"}),
        )
        .await;
    assert_settings(
        &answer,
        "everyone",
        true,
        Some(instant(&json!("2999-01-01T00:00:00Z"))),
    );
}

/// "`PUT /v1/users/{userId}/presence-settings` (service key with scope `privacy`): the
/// same body and answer as `PATCH`, for any user"; the user's own `GET` shows them.
#[tokio::test]
async fn put_presence_settings_is_patch_for_any_user_with_a_privacy_key() {
    let app = live(|_| {}).await;
    let later = app.now_ms() + 7_200_000;
    let answer = app
        .put_settings(
            11,
            json!({"visibility": "friends", "invisible": true, "invisibleUntil": rfc3339(later)}),
        )
        .await;
    assert_settings(&answer, "friends", true, Some(later));
    assert_eq!(app.get_settings(11).await, answer);
    // A user never seen, and one body after another, as PATCH.
    assert_settings(
        &app.put_settings(12, json!({"visibility": "nobody"})).await,
        "nobody",
        false,
        None,
    );
    assert_settings(
        &app.put_settings(12, json!({})).await,
        "nobody",
        false,
        None,
    );
    assert_settings(
        &app.put_settings(11, json!({"invisible": true})).await,
        "friends",
        true,
        None,
    );
    assert_settings(&app.get_settings(11).await, "friends", true, None);
    // The same body through PATCH answers the same.
    assert_eq!(
        app.set_settings(13, json!({"visibility": "nobody", "invisible": true}))
            .await,
        app.put_settings(14, json!({"visibility": "nobody", "invisible": true}))
            .await,
    );
}

/// "An unknown visibility, an `invisibleUntil` in the past or without `invisible: true`:
/// 400 code 0, nothing changed" (also a field of the wrong type or a body that is not JSON,
/// section 3), through `PATCH` and through `PUT`; "`invisibleUntil` is accepted only with
/// `invisible: true` in the same body", even from a user already invisible.
#[tokio::test]
async fn each_refused_settings_body_is_400_code_0_and_changes_nothing() {
    let app = live(|_| {}).await;
    let now = app.now_ms();
    let later = rfc3339(now + 3_600_000);
    let past = rfc3339(now - 60_000);
    let refused = [
        json!({"visibility": "friendz"}),
        json!({"visibility": ""}),
        json!({"visibility": "nobody", "invisibleUntil": later}),
        json!({"invisibleUntil": later}),
        json!({"invisible": false, "invisibleUntil": later}),
        json!({"invisible": true, "invisibleUntil": past}),
        json!({"visibility": "nobody", "invisible": true, "invisibleUntil": past}),
        json!({"visibility": "nobody", "invisible": true, "invisibleUntil": "tomorrow"}),
        json!({"invisible": "yes"}),
        json!({"visibility": 2}),
        json!({"visibility": "friends", "invisible": true, "invisibleUntil": 4_102_444_800_000_i64}),
    ];
    // Users 21 (through PATCH) and 22 (through PUT): friends-only, invisible until later.
    let start = json!({"visibility": "friends", "invisible": true, "invisibleUntil": later});
    for user in [21, 22] {
        app.heartbeat(user, json!({"location": "Home"})).await;
    }
    let before_21 = app.set_settings(21, start.clone()).await;
    let before_22 = app.put_settings(22, start.clone()).await;
    let seen_before = app.lookup_as(&Who::User(23), &[21, 22]).await;
    for body in &refused {
        let res = app.patch_settings(21, body).await;
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "PATCH {body}"
        );
        let res = app.put_settings_raw(22, body).await;
        assert_eq!(
            error_of(res).await,
            (400, 0, "BadRequest".to_owned()),
            "PUT {body}"
        );
        assert_eq!(app.get_settings(21).await, before_21, "after PATCH {body}");
        assert_eq!(app.get_settings(22).await, before_22, "after PUT {body}");
    }
    // Not JSON at all.
    for req in [
        app.client
            .patch(app.url(SETTINGS))
            .bearer_auth(app.token(21)),
        app.privileged(reqwest::Method::PUT, &settings_path(22)),
    ] {
        let res = req
            .header("content-type", "application/json")
            .body("{\"visibility\":")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(res).await, (400, 0, "BadRequest".to_owned()));
    }
    assert_eq!(app.get_settings(21).await, before_21);
    assert_eq!(app.get_settings(22).await, before_22);
    assert_eq!(app.lookup_as(&Who::User(23), &[21, 22]).await, seen_before);
}

/// "`invisible: true` without `invisibleUntil` means until turned off (it replaces an
/// earlier end time)": the user stays invisible past the earlier end, until
/// `invisible: false`.
#[tokio::test]
async fn invisible_without_an_end_lasts_until_turned_off_and_replaces_an_earlier_end() {
    let app = clocked(|_| {}).await;
    app.heartbeat(31, json!({"location": "Home"})).await;
    let began = app.stamp();
    let end = app.now_ms() + 10_000;
    let answer = app
        .set_settings(
            31,
            json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
        )
        .await;
    assert_settings(&answer, "everyone", true, Some(end));
    let answer = app.set_settings(31, json!({"invisible": true})).await;
    assert_settings(&answer, "everyone", true, None);

    // Long past the earlier end: still invisible.
    app.advance(Duration::from_secs(20));
    assert_settings(&app.get_settings(31).await, "everyone", true, None);
    assert_eq!(
        app.seen_as(&Who::Anonymous, 31).await,
        invisible_to_others(31, &began)
    );
    // The same through PUT: an end, then `invisible: true` alone replaces it.
    let end = app.now_ms() + 10_000;
    app.put_settings(
        31,
        json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
    )
    .await;
    assert_settings(
        &app.put_settings(31, json!({"invisible": true})).await,
        "everyone",
        true,
        None,
    );
    app.advance(Duration::from_secs(20));
    assert_settings(&app.get_settings(31).await, "everyone", true, None);

    // Turned off: visible again, the real entry.
    assert_settings(
        &app.set_settings(31, json!({"invisible": false})).await,
        "everyone",
        false,
        None,
    );
    let entry = app.seen_as(&Who::Anonymous, 31).await;
    assert_eq!(g::fields(&entry), g::online(31, "Home"));
    assert_eq!(entry["lastOnline"], began);
}

/// "`invisible`: the user appears Offline to everyone else, until `invisibleUntil`" —
/// exactly at that instant, by the one clock: a millisecond before, every answer still
/// shows the invisibility; at it, none does; and "the end of `invisibleUntil` sends each
/// watcher U's entry as that watcher now sees it, if it differs from the last one sent".
#[tokio::test]
async fn invisible_until_ends_by_itself_exactly_at_that_instant() {
    let app = clocked(|_| {}).await;
    let (u, hidden_u) = (41, 42);
    app.heartbeat(u, json!({"location": "Home"})).await;
    app.heartbeat(hidden_u, json!({"location": "Home"})).await;
    let seen_at = app.stamp();
    app.advance(Duration::from_secs(1));
    // Not on a whole second, so that rounding anywhere would show.
    let end = app.now_ms() + 5_250;
    let body = json!({"invisible": true, "invisibleUntil": rfc3339(end)});
    assert_settings(
        &app.set_settings(u, body.clone()).await,
        "everyone",
        true,
        Some(end),
    );
    // The other user is hidden from anonymous viewers, invisible or not.
    app.put_settings(
        hidden_u,
        json!({"visibility": "nobody", "invisible": true, "invisibleUntil": rfc3339(end)}),
    )
    .await;

    let (mut anonymous, first) = Watch::open(&app, &Who::Anonymous, &[u], false).await;
    assert_eq!(first, vec![invisible_to_others(u, &seen_at)]);
    let (mut own, first) = Watch::open(&app, &Who::User(u), &[u], true).await;
    assert_eq!(first[0]["userPresenceType"], "Invisible");
    let (mut reader, first) = Watch::open(&app, &Who::Key(READ_KEY), &[u], false).await;
    assert_eq!(first[0]["userPresenceType"], "Online");
    let (mut not_shown, first) = Watch::open(&app, &Who::Anonymous, &[hidden_u], true).await;
    assert_eq!(first, vec![never_seen(hidden_u)]);

    // A millisecond before the end.
    app.advance(Duration::from_millis(5_249));
    assert_eq!(app.now_ms(), end - 1);
    assert_settings(&app.get_settings(u).await, "everyone", true, Some(end));
    assert_eq!(
        app.seen_as(&Who::Anonymous, u).await,
        invisible_to_others(u, &seen_at)
    );
    assert_eq!(
        app.seen_as(&Who::User(u), u).await["userPresenceType"],
        "Invisible"
    );
    anonymous
        .silent(QUIET, "a millisecond before the end")
        .await;

    // At the end.
    app.advance(Duration::from_millis(1));
    assert_eq!(app.get_settings(u).await, default_settings());
    let real = app.seen_as(&Who::Anonymous, u).await;
    assert_eq!(g::fields(&real), g::online(u, "Home"));
    assert_eq!(real["lastOnline"], seen_at);
    assert_eq!(app.seen_as(&Who::User(u), u).await, real);
    assert_eq!(app.seen_as(&Who::Key(READ_KEY), u).await, real);
    assert_settings(&app.get_settings(hidden_u).await, "nobody", false, None);

    // Each watcher is sent what it now sees, if it differs.
    assert_eq!(
        anonymous.expect("the end of invisibility").await,
        vec![real.clone()]
    );
    assert_eq!(
        own.expect("the end of invisibility").await,
        vec![real.clone()]
    );
    reader
        .silent(QUIET, "the reader saw the real entry all along")
        .await;
    not_shown.silent(QUIET, "hidden before and after").await;
    anonymous.silent(QUIET, "nothing more").await;
}

// =======================================================================================
// Friends
// =======================================================================================

/// "Friends (symmetric, pushed by the platform; scope `privacy`)": `POST /v1/friendships`
/// adds and removes pairs, answering `{"skipped": []}`; `GET /v1/users/{userId}/friends`
/// lists each side. Adding a friendship again, or removing one that is not, changes
/// nothing.
#[tokio::test]
async fn friendships_are_added_and_removed_on_both_sides() {
    let app = live(|_| {}).await;
    let res = app
        .post_friendships(&json!({"add": [[1, 2], [1, 3]]}))
        .await;
    assert_eq!(ok_json(res, "add").await, json!({"skipped": []}));
    assert_eq!(app.friends_of(1).await, vec![2, 3]);
    assert_eq!(app.friends_of(2).await, vec![1]);
    assert_eq!(app.friends_of(3).await, vec![1]);

    app.unfriend(&[(2, 1)]).await;
    assert_eq!(app.friends_of(1).await, vec![3]);
    assert_eq!(app.friends_of(2).await, Vec::<u64>::new());

    app.befriend(&[(3, 1)]).await;
    app.unfriend(&[(4, 5)]).await;
    assert_eq!(app.friends_of(1).await, vec![3]);
    assert_eq!(app.friends_of(3).await, vec![1]);
    assert_eq!(app.friends_of(4).await, Vec::<u64>::new());
    // A user nobody befriended.
    let res = app.get_friends_raw(99).await;
    assert_eq!(ok_json(res, "GET").await, json!({"userIds": []}));
}

/// "adds and removes together ...; removes apply first": a pair removed and added in one
/// call ends as friends, whether or not it was before.
#[tokio::test]
async fn removes_apply_before_adds() {
    let app = live(|_| {}).await;
    let skipped = app.friendships(&[(1, 4)], &[(4, 1)]).await;
    assert_eq!(skipped, vec![]);
    assert_eq!(app.friends_of(1).await, vec![4]);
    let skipped = app.friendships(&[(4, 1)], &[(1, 4)]).await;
    assert_eq!(skipped, vec![]);
    assert_eq!(app.friends_of(1).await, vec![4]);
    assert_eq!(app.friends_of(4).await, vec![1]);
}

/// "at most 1000 pairs per call, adds and removes together (400 code 2 beyond)", nothing
/// applied; 1000 is allowed.
#[tokio::test]
async fn more_than_1000_pairs_is_400_code_2_and_nothing_is_applied() {
    let app = live(|_| {}).await;
    app.befriend(&[(1, 2)]).await;
    let adds = |n: u64| -> Vec<Value> { (0..n).map(|i| json!([1000 + i, 5000 + i])).collect() };
    let removes = |n: u64| -> Vec<Value> {
        let mut v = vec![json!([1, 2])];
        v.extend((1..n).map(|i| json!([7000 + i, 9000 + i])));
        v
    };
    for (a, r) in [(600, 401), (1001, 0), (0, 1001)] {
        let body = json!({"add": adds(a), "remove": removes(r)});
        let res = app.post_friendships(&body).await;
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (400, 2), "{a} adds and {r} removes");
        assert_eq!(app.friends_of(1).await, vec![2], "nothing removed");
        assert_eq!(
            app.friends_of(1000).await,
            Vec::<u64>::new(),
            "nothing added"
        );
    }
    let body = json!({"add": adds(500), "remove": removes(500)});
    let res = app.post_friendships(&body).await;
    assert_eq!(ok_json(res, "1000 pairs").await, json!({"skipped": []}));
    assert_eq!(app.friends_of(1).await, Vec::<u64>::new());
    assert_eq!(app.friends_of(1000).await, vec![5000]);
    assert_eq!(app.friends_of(5499).await, vec![1499]);
}

/// "pairs of a user with itself or with a bad id: 400 code 1, nothing applied" — in the
/// adds or in the removes, beside good pairs.
#[tokio::test]
async fn a_self_pair_or_a_bad_id_is_400_code_1_and_nothing_is_applied() {
    let app = live(|_| {}).await;
    app.befriend(&[(1, 2)]).await;
    let refused = [
        json!({"remove": [[1, 2]], "add": [[3, 4], [5, 5]]}),
        json!({"remove": [[1, 2], [6, 6]], "add": [[3, 4]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], [0, 6]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], [-6, 6]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], ["six", 6]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], [6, null]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], [6, 1.5]]}),
        json!({"remove": [[1, 2]], "add": [[3, 4], [6, 9_223_372_036_854_775_808_u64]]}),
        json!({"remove": [[1, "x"]], "add": [[3, 4]]}),
    ];
    for body in refused {
        let res = app.post_friendships(&body).await;
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (400, 1), "{body}");
        assert_eq!(app.friends_of(1).await, vec![2], "nothing removed: {body}");
        assert_eq!(
            app.friends_of(3).await,
            Vec::<u64>::new(),
            "nothing added: {body}"
        );
    }
}

/// "A user holds at most `privacy.max_friends` friends: pairs that would exceed it are not
/// added and are listed in the answer `{"skipped": [[1, 3]]}` (`{"skipped": []}` when
/// none)" — on either side of the pair; removes, applied first, make room; a friendship
/// already held exceeds nothing. The same bound on `PUT .../friends`.
#[tokio::test]
async fn pairs_beyond_max_friends_are_skipped_and_listed() {
    let app = live(|s| s.privacy.max_friends = 3).await;
    app.befriend(&[(1, 2), (1, 3), (1, 4)]).await;
    app.befriend(&[(10, 11), (10, 12), (10, 13)]).await;

    let skipped = app.friendships(&[(1, 5), (6, 7), (8, 1)], &[]).await;
    assert_eq!(skipped, vec![(1, 5), (8, 1)]);
    assert_eq!(app.friends_of(1).await, vec![2, 3, 4]);
    assert_eq!(app.friends_of(5).await, Vec::<u64>::new());
    assert_eq!(app.friends_of(8).await, Vec::<u64>::new());
    assert_eq!(app.friends_of(6).await, vec![7]);

    // The full side is the second of the pair.
    let skipped = app.friendships(&[(14, 10)], &[]).await;
    assert_eq!(skipped, vec![(14, 10)]);
    assert_eq!(app.friends_of(14).await, Vec::<u64>::new());
    assert_eq!(app.friends_of(10).await, vec![11, 12, 13]);

    // A friendship already held is not beyond the bound.
    assert_eq!(app.friendships(&[(3, 1)], &[]).await, vec![]);
    // Removes first: they make room for the adds of the same call.
    assert_eq!(app.friendships(&[(1, 5)], &[(2, 1)]).await, vec![]);
    assert_eq!(app.friends_of(1).await, vec![3, 4, 5]);
    assert_eq!(app.friends_of(2).await, Vec::<u64>::new());

    // PUT: a friend already full is skipped, the rest is the new list.
    let skipped = app.replace_friends(20, &[10, 21]).await;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let (a, b) = skipped[0];
    assert!((a, b) == (20, 10) || (a, b) == (10, 20), "{skipped:?}");
    assert_eq!(app.friends_of(20).await, vec![21]);
    assert_eq!(app.friends_of(10).await, vec![11, 12, 13]);
}

/// "`PUT /v1/users/{userId}/friends` with `{"userIds": [...]}` replaces that user's list
/// (both sides of every pair change) and answers `{"skipped": [...]}`"; "`GET
/// /v1/users/{userId}/friends` answers `{"userIds": [...]}` in ascending order". A list
/// naming the user itself or a bad id is 400 code 1, nothing changed.
#[tokio::test]
async fn put_friends_replaces_the_list_on_both_sides_and_get_lists_ascending() {
    let app = live(|_| {}).await;
    app.befriend(&[(1, 2), (1, 3), (4, 1)]).await;
    let res = app.put_friends_raw(1, &json!({"userIds": [9, 3, 5]})).await;
    assert_eq!(ok_json(res, "PUT").await, json!({"skipped": []}));
    assert_eq!(app.friends_of(1).await, vec![3, 5, 9]);
    for (user, friends) in [
        (2, vec![]),
        (4, vec![]),
        (3, vec![1]),
        (5, vec![1]),
        (9, vec![1]),
    ] {
        assert_eq!(app.friends_of(user).await, friends, "friends of {user}");
    }

    for body in [
        json!({"userIds": [3, 1]}),
        json!({"userIds": [3, 0]}),
        json!({"userIds": [3, "x"]}),
        json!({"userIds": [3, -2]}),
    ] {
        let res = app.put_friends_raw(1, &body).await;
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (400, 1), "{body}");
        assert_eq!(app.friends_of(1).await, vec![3, 5, 9], "{body}");
    }

    // [] ends every friendship of the user.
    assert_eq!(app.replace_friends(1, &[]).await, vec![]);
    assert_eq!(app.friends_of(1).await, Vec::<u64>::new());
    assert_eq!(app.friends_of(9).await, Vec::<u64>::new());

    // Ascending, however the pairs were written and pushed.
    app.befriend(&[(50, 900), (50, 7), (123, 50)]).await;
    app.befriend(&[(42, 50), (50, 8_000_000_000)]).await;
    assert_eq!(
        app.friends_of(50).await,
        vec![7, 42, 123, 900, 8_000_000_000]
    );
    app.replace_friends(60, &[600, 6, 60_000, 66]).await;
    assert_eq!(app.friends_of(60).await, vec![6, 66, 600, 60_000]);
}

/// The platform's routes need "scope `privacy`": no key, an unknown key or a user's
/// credential is 401 code 0, a known key without the scope 403 code 0 `Forbidden`
/// (section 10), and nothing is applied.
#[tokio::test]
async fn the_platform_routes_need_a_key_with_the_privacy_scope() {
    let app = live(|_| {}).await;
    let calls: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::PUT,
            settings_path(1),
            Some(json!({"visibility": "nobody"})),
        ),
        (
            reqwest::Method::POST,
            FRIENDSHIPS.into(),
            Some(json!({"add": [[1, 2]]})),
        ),
        (
            reqwest::Method::PUT,
            friends_path(1),
            Some(json!({"userIds": [2]})),
        ),
        (reqwest::Method::GET, friends_path(1), None),
    ];
    for (method, path, body) in &calls {
        let request = |key: Option<&str>, bearer: bool| {
            let mut req = app.client.request(method.clone(), app.url(path));
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            if bearer {
                req = req.bearer_auth(app.token(1));
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            req
        };
        for (key, bearer, want) in [
            (None, false, (401, 0, DENIED.to_owned())),
            (None, true, (401, 0, DENIED.to_owned())),
            (Some(UNKNOWN_KEY), false, (401, 0, DENIED.to_owned())),
            (Some(GAME_KEY), false, (403, 0, "Forbidden".to_owned())),
            (Some(READ_KEY), false, (403, 0, "Forbidden".to_owned())),
        ] {
            let res = request(key, bearer).send().await.unwrap();
            assert_eq!(
                error_of(res).await,
                want,
                "{method} {path} key {key:?} bearer {bearer}"
            );
        }
    }
    assert_eq!(app.get_settings(1).await, default_settings());
    assert_eq!(app.friends_of(1).await, Vec::<u64>::new());
    // A path id that is not a positive int64 is a bad id (section 3).
    for path in [settings_path(0), "/v1/users/abc/presence-settings".into()] {
        let res = put_with_privacy_key(&app, &path, &json!({})).await;
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (400, 1), "{path}");
    }
    for path in ["/v1/users/0/friends", "/v1/users/-3/friends"] {
        let res = app
            .privileged(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_of(res).await;
        assert_eq!((status, code), (400, 1), "{path}");
    }
}

/// `PUT path` with [`PRIVACY_KEY`] and `body`.
async fn put_with_privacy_key(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.privileged(reqwest::Method::PUT, path)
        .json(body)
        .send()
        .await
        .unwrap()
}

// =======================================================================================
// The viewer
// =======================================================================================

/// "Lookups, SSE streams and WebSockets read the caller's credential when one is sent
/// (bearer or cookie, no CSRF token needed). No credential, or one that is invalid or
/// expired: an anonymous viewer."
#[tokio::test]
async fn a_missing_invalid_or_expired_credential_views_as_anonymous() {
    let app = live(|_| {}).await;
    let (u, friend, stranger) = (1, 2, 3);
    app.heartbeat(u, json!({"location": "Home"})).await;
    app.set_settings(u, json!({"visibility": "friends"})).await;
    app.befriend(&[(u, friend)]).await;
    let real = app.seen_as(&Who::Key(READ_KEY), u).await;
    assert_eq!(g::fields(&real), g::online(u, "Home"));

    let other_secret = presence_server::auth::Authenticator::new("some-other-secret")
        .mint(
            presence_server::presence::UserId::new(friend).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let cases = [
        (Who::Anonymous, false),
        (Who::Bearer("not-a-credential".into()), false),
        (
            Who::Bearer(expired_token(&app, friend, Duration::from_secs(60))),
            false,
        ),
        (Who::Bearer(other_secret), false),
        (Who::User(stranger), false),
        (Who::User(friend), true),
        (Who::Cookie(friend), true),
    ];
    for (who, sees) in cases {
        let want = if sees { real.clone() } else { never_seen(u) };
        assert_eq!(app.seen_as(&who, u).await, want, "lookup as {who:?}");
        for ws in [false, true] {
            let (_watch, first) = Watch::open(&app, &who, &[u], ws).await;
            assert_eq!(
                first,
                vec![want.clone()],
                "first entries as {who:?} (ws {ws})"
            );
        }
    }
}

/// "(with `api.require_auth_for_lookup`, 401 as before)": anonymous, invalid and expired
/// credentials are refused on lookups and streams; a valid one is the viewer.
#[tokio::test]
async fn with_auth_required_a_viewer_without_a_valid_credential_is_401() {
    let app = live(|s| s.api.require_auth_for_lookup = true).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.set_settings(1, json!({"visibility": "friends"})).await;
    app.befriend(&[(1, 2)]).await;
    for who in [
        Who::Anonymous,
        Who::Bearer("not-a-credential".into()),
        Who::Bearer(expired_token(&app, 2, Duration::from_secs(60))),
    ] {
        let res = app.lookup_raw_as(&who, &[1]).await;
        assert_eq!(error_of(res).await, (401, 0, DENIED.to_owned()), "{who:?}");
        let sse = app.sse_raw_as(&who, &[1]).await;
        assert_eq!(sse.status, 401, "stream as {who:?}");
        assert_eq!(sse.error()["errors"][0]["message"], DENIED);
        let refused = app.ws_raw_as(&who).await.err().map(|(status, _)| status);
        assert_eq!(refused, Some(401), "WebSocket as {who:?}");
    }
    assert_eq!(
        g::fields(&app.seen_as(&Who::User(2), 1).await),
        g::online(1, "Home")
    );
    assert_eq!(app.seen_as(&Who::User(3), 1).await, never_seen(1));
}

/// "An unknown `x-api-key` is 401 on every route" — also beside a valid credential.
#[tokio::test]
async fn an_unknown_api_key_is_401_on_every_route() {
    let app = live(|_| {}).await;
    let denied = (401, 0, DENIED.to_owned());
    let ids = json!({"userIds": [1]});
    let requests = [
        ("lookup", app.client.post(app.url(USERS)).json(&ids)),
        (
            "GET settings",
            app.client.get(app.url(SETTINGS)).bearer_auth(app.token(1)),
        ),
        (
            "PATCH settings",
            app.client
                .patch(app.url(SETTINGS))
                .bearer_auth(app.token(1))
                .json(&json!({"invisible": true})),
        ),
        (
            "heartbeat",
            app.client
                .post(app.url(REGISTER))
                .bearer_auth(app.token(1))
                .json(&json!({})),
        ),
        (
            "PUT settings",
            app.client
                .put(app.url(&settings_path(1)))
                .json(&json!({"invisible": true})),
        ),
        (
            "POST friendships",
            app.client
                .post(app.url(FRIENDSHIPS))
                .json(&json!({"add": [[1, 2]]})),
        ),
        (
            "PUT friends",
            app.client
                .put(app.url(&friends_path(1)))
                .json(&json!({"userIds": [2]})),
        ),
        ("GET friends", app.client.get(app.url(&friends_path(1)))),
        (
            "game server",
            app.client
                .put(app.url(&g::server_path(SERVER_A)))
                .json(&json!({"placeId": 1818, "players": [1]})),
        ),
    ];
    for (what, req) in requests {
        let res = req.header("x-api-key", UNKNOWN_KEY).send().await.unwrap();
        assert_eq!(error_of(res).await, denied, "{what}");
    }
    // A lookup with a valid credential too.
    let res = app
        .client
        .post(app.url(USERS))
        .bearer_auth(app.token(2))
        .header("x-api-key", UNKNOWN_KEY)
        .json(&ids)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, denied, "lookup with a credential");
    let key = Who::Key(UNKNOWN_KEY);
    let sse = app.sse_raw_as(&key, &[1]).await;
    assert_eq!(sse.status, 401, "stream");
    assert_eq!(sse.error()["errors"][0]["message"], DENIED);
    let refused = app.ws_raw_as(&key).await.err().map(|(status, _)| status);
    assert_eq!(refused, Some(401), "WebSocket");
    // Nothing was applied.
    assert_eq!(app.get_settings(1).await, default_settings());
    assert_eq!(app.friends_of(1).await, Vec::<u64>::new());
    assert_eq!(app.presence_of(1).await, never_seen(1));
}

/// "a known key without `read` views as anonymous" on lookups, streams and WebSockets.
#[tokio::test]
async fn a_known_key_without_read_views_as_anonymous() {
    let app = live(|_| {}).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    app.heartbeat(3, json!({"location": "Home"})).await;
    app.set_settings(2, json!({"visibility": "friends"})).await;
    app.set_settings(3, json!({"invisible": true})).await;
    let ids = [1, 2, 3];
    let anonymous = app.lookup_as(&Who::Anonymous, &ids).await;
    assert_eq!(g::fields(&anonymous[0]), g::online(1, "Home"));
    assert_eq!(anonymous[1], never_seen(2));
    assert_eq!(g::fields(&anonymous[2]), g::fields(&never_seen(3)));
    for key in [GAME_KEY, PRIVACY_KEY] {
        let who = Who::Key(key);
        assert_eq!(
            app.lookup_as(&who, &ids).await,
            anonymous,
            "lookup with {key}"
        );
        for ws in [false, true] {
            let (_watch, first) = Watch::open(&app, &who, &ids, ws).await;
            assert_eq!(first, anonymous, "first entries with {key} (ws {ws})");
        }
    }
}

/// "A service key with scope `read` sees every user as that user sees itself (with the
/// real type, never `Invisible`)" — whatever the user's visibility, invisible or not.
#[tokio::test]
async fn a_read_key_sees_every_real_entry_and_never_invisible() {
    let app = live(|s| s.places = vec![crossroads()]).await;
    app.heartbeat(1, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    app.heartbeat(3, json!({"location": "Studio"})).await;
    app.heartbeat(4, json!({"location": "Phone"})).await;
    app.heartbeat(4, json!({"disconnect": true})).await;
    let ids = [1, 2, 3, 4, 5];
    // Before anyone restricts anything, everyone sees the real entries.
    let real = app.lookup_as(&Who::Anonymous, &ids).await;
    assert_eq!(app.lookup_as(&Who::Key(READ_KEY), &ids).await, real);

    app.set_settings(1, json!({"visibility": "nobody"})).await;
    app.set_settings(2, json!({"visibility": "friends", "invisible": true}))
        .await;
    app.put_settings(3, json!({"invisible": true})).await;
    app.put_settings(4, json!({"visibility": "nobody", "invisible": true}))
        .await;
    app.put_settings(5, json!({"invisible": true})).await;
    let reader = Who::Key(READ_KEY);
    assert_eq!(app.lookup_as(&reader, &ids).await, real);
    for ws in [false, true] {
        let (_watch, first) = Watch::open(&app, &reader, &ids, ws).await;
        assert_eq!(first, real, "first entries (ws {ws})");
    }
    // What the users see of themselves, but for the Invisible type.
    for (i, &u) in ids.iter().enumerate() {
        let mut own = app.seen_as(&Who::User(u), u).await;
        if own["userPresenceType"] == "Invisible" {
            own["userPresenceType"] = real[i]["userPresenceType"].clone();
        }
        assert_eq!(own, real[i], "user {u}");
    }
}

// =======================================================================================
// What viewer V is shown of user U
// =======================================================================================

/// "V is U: the real entry; while invisible and present, `userPresenceType` is
/// `Invisible` (integer `4`)" — first in the order, so visibility `nobody` changes nothing
/// for the user itself; an invisible user who is Offline sees its real Offline entry.
#[tokio::test]
async fn the_user_itself_sees_its_real_entry_typed_invisible_while_invisible_and_present() {
    for integer in [false, true] {
        let app = live(|s| {
            s.places = vec![crossroads()];
            if integer {
                s.api.presence_type = PresenceTypeFormat::Integer;
            }
        })
        .await;
        let (invisible_type, offline_type, in_game) = if integer {
            (json!(4), json!(0), json!(2))
        } else {
            (json!("Invisible"), json!("Offline"), json!("InGame"))
        };
        let me = Who::User(7);
        app.heartbeat(7, json!({"placeId": 1818, "gameId": GAME}))
            .await;
        let real = app.seen_as(&Who::Anonymous, 7).await;
        assert_eq!(real["userPresenceType"], in_game);
        assert_eq!(app.seen_as(&me, 7).await, real);

        app.set_settings(7, json!({"visibility": "nobody", "invisible": true}))
            .await;
        let mut want = real.clone();
        want["userPresenceType"] = invisible_type.clone();
        assert_eq!(app.seen_as(&me, 7).await, want, "integer types: {integer}");
        assert_eq!(app.seen_as(&Who::Cookie(7), 7).await, want);
        for ws in [false, true] {
            let (_watch, first) = Watch::open(&app, &me, &[7], ws).await;
            assert_eq!(first, vec![want.clone()], "first entries (ws {ws})");
        }
        // The real entry changes: the user sees each change, still typed Invisible.
        app.heartbeat(7, json!({"location": "Website"})).await;
        let own = app.seen_as(&me, 7).await;
        assert_eq!(own["userPresenceType"], invisible_type);
        assert_eq!(own["lastLocation"], "Website");
        assert_eq!(own["placeId"], Value::Null);

        // Offline: its own real Offline entry.
        app.heartbeat(7, json!({"disconnect": true})).await;
        let own = app.seen_as(&me, 7).await;
        assert_eq!(own["userPresenceType"], offline_type);
        assert_eq!(own["lastLocation"], "Website");
        assert_ne!(own["lastOnline"], NEVER_SEEN);
        assert_eq!(app.seen_as(&Who::Key(READ_KEY), 7).await, own);
    }
}

/// Everything of `text` with `"userId":from` written as `"userId":to`.
fn renamed(text: &str, from: u64, to: u64) -> String {
    let from = format!("\"userId\":{from}");
    assert_eq!(text.matches(&from).count(), 1, "{text}");
    text.replace(&from, &format!("\"userId\":{to}"))
}

/// "U's visibility is `nobody`, or `friends` and V is not a signed-in friend of U: U is
/// hidden from V, exactly the entry of a user never seen (section 2), so that nothing tells
/// whether U exists (invisibility included)": the answer for U is byte for byte the answer
/// for an id never seen (but for the id), with either type format.
#[tokio::test]
async fn a_hidden_user_is_byte_for_byte_a_user_never_seen() {
    for integer in [false, true] {
        let app = live(|s| {
            s.places = vec![crossroads()];
            if integer {
                s.api.presence_type = PresenceTypeFormat::Integer;
            }
        })
        .await;
        // Six digits each, so that only the ids differ.
        let (nobody, friends_only, both, never) = (424_241, 424_242, 424_243, 424_249);
        let (friend, stranger) = (500_001, 500_002);
        for u in [nobody, friends_only, both] {
            app.heartbeat(u, json!({"placeId": 1818, "gameId": GAME}))
                .await;
            app.heartbeat(u, json!({"location": "Somewhere", "placeId": 1818}))
                .await;
        }
        app.set_settings(nobody, json!({"visibility": "nobody"}))
            .await;
        app.set_settings(friends_only, json!({"visibility": "friends"}))
            .await;
        app.set_settings(both, json!({"visibility": "friends", "invisible": true}))
            .await;
        app.befriend(&[(nobody, friend), (friends_only, friend), (both, friend)])
            .await;

        let cases = [
            (Who::Anonymous, nobody),
            (Who::User(friend), nobody),
            (Who::User(stranger), nobody),
            (Who::Anonymous, friends_only),
            (Who::User(stranger), friends_only),
            (Who::Key(GAME_KEY), friends_only),
            (Who::Anonymous, both),
            (Who::User(stranger), both),
        ];
        for (who, u) in cases {
            let hidden = app.lookup_text_as(&who, &[u]).await;
            let unknown = app.lookup_text_as(&who, &[never]).await;
            assert_eq!(
                renamed(&hidden, u, never),
                unknown,
                "{u} as {who:?} (integer: {integer})"
            );
            // Beside others in one answer too.
            let mixed = app.lookup_as(&who, &[never, u, never + 1]).await;
            let mut want = mixed[0].clone();
            want["userId"] = json!(u);
            assert_eq!(mixed[1], want, "{u} as {who:?} among others");
            // And as a stream's first entry.
            let (_watch, first) = Watch::open(&app, &who, &[u], false).await;
            let mut want = app.seen_as(&who, never).await;
            want["userId"] = json!(u);
            assert_eq!(first, vec![want], "{u} as {who:?} on a stream");
        }
        // The friend sees the friends-only user as it is, and the invisible one as
        // invisible (not hidden).
        let seen = app.seen_as(&Who::User(friend), friends_only).await;
        assert_eq!(seen["lastLocation"], "Classic: Crossroads");
        let seen = app.seen_as(&Who::User(friend), both).await;
        assert_eq!(seen["lastLocation"], "");
        assert_ne!(seen["lastOnline"], NEVER_SEEN);
    }
}

/// "U invisible: Offline, `lastLocation` `""`, place and game fields `null`, `lastOnline`
/// as it was when invisibility began" — for anyone U is not hidden from; heartbeats,
/// changes and a disconnect while invisible change nothing of it, nor does turning
/// `invisible: true` on again; a new invisibility begins from the `lastOnline` of then.
#[tokio::test]
async fn an_invisible_user_is_offline_with_the_last_online_of_when_invisibility_began() {
    let app = clocked(|s| s.places = vec![crossroads()]).await;
    let (u, friend) = (51, 52);
    app.heartbeat(u, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let began = app.stamp();
    app.advance(Duration::from_secs(2));
    app.set_settings(u, json!({"invisible": true})).await;
    let want = invisible_to_others(u, &began);
    let viewers = [
        Who::Anonymous,
        Who::User(friend),
        Who::User(53),
        Who::Key(GAME_KEY),
    ];
    for who in &viewers {
        assert_eq!(app.seen_as(who, u).await, want, "as {who:?}");
    }
    let (mut watch, first) = Watch::open(&app, &Who::Anonymous, &[u], false).await;
    assert_eq!(first, vec![want.clone()]);

    // Active while invisible: nothing of it shows.
    app.advance(Duration::from_secs(2));
    app.heartbeat(u, json!({"location": "Elsewhere"})).await;
    let now = app.stamp();
    app.set_settings(u, json!({"invisible": true})).await;
    for who in &viewers {
        assert_eq!(
            app.seen_as(who, u).await,
            want,
            "as {who:?} after a heartbeat"
        );
    }
    let own = app.seen_as(&Who::User(u), u).await;
    assert_eq!(own["lastLocation"], "Elsewhere");
    assert_eq!(own["lastOnline"], now);
    app.advance(Duration::from_secs(1));
    app.heartbeat(u, json!({"disconnect": true})).await;
    let gone = app.stamp();
    assert_eq!(app.seen_as(&Who::Anonymous, u).await, want);
    watch.silent(QUIET, "activity of an invisible user").await;

    // Friends-only: the friend still sees it invisible.
    app.set_settings(u, json!({"visibility": "friends"})).await;
    assert_eq!(watch.expect("hidden now").await, vec![never_seen(u)]);
    app.befriend(&[(u, friend)]).await;
    assert_eq!(app.seen_as(&Who::User(friend), u).await, want);

    // Visible again: the real Offline entry.
    app.set_settings(u, json!({"invisible": false, "visibility": "everyone"}))
        .await;
    let real = app.seen_as(&Who::Anonymous, u).await;
    assert_eq!(g::fields(&real), g::offline(u, "Elsewhere"));
    assert_eq!(real["lastOnline"], gone);
    assert_eq!(watch.expect("visible again").await, vec![real]);

    // A new invisibility freezes the lastOnline of its own beginning.
    app.advance(Duration::from_secs(3));
    app.set_settings(u, json!({"invisible": true})).await;
    app.advance(Duration::from_secs(1));
    app.heartbeat(u, json!({"location": "Back"})).await;
    assert_eq!(
        app.seen_as(&Who::Anonymous, u).await,
        invisible_to_others(u, &gone)
    );

    // A user never seen when its invisibility began shows the never-seen lastOnline.
    app.set_settings(54, json!({"invisible": true})).await;
    app.heartbeat(54, json!({"location": "Home"})).await;
    assert_eq!(app.seen_as(&Who::Anonymous, 54).await, never_seen(54));
}

/// "`privacy.show_last_online` (default `true`): `false` sends the never-seen `lastOnline`
/// to every viewer but U itself and `read` keys."
#[tokio::test]
async fn without_show_last_online_only_the_user_and_read_keys_get_last_online() {
    let app = live(|s| s.privacy.show_last_online = false).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    app.heartbeat(3, json!({"location": "Phone"})).await;
    app.heartbeat(3, json!({"disconnect": true})).await;
    app.set_settings(2, json!({"visibility": "friends"})).await;
    app.befriend(&[(2, 9)]).await;
    app.heartbeat(4, json!({"location": "Home"})).await;
    app.set_settings(4, json!({"invisible": true})).await;
    let ids = [1, 2, 3, 4];
    let real = app.lookup_as(&Who::Key(READ_KEY), &ids).await;
    for entry in &real {
        assert_ne!(entry["lastOnline"], NEVER_SEEN, "read key: {entry}");
    }
    for (i, &u) in ids.iter().enumerate() {
        let mut own = app.seen_as(&Who::User(u), u).await;
        if own["userPresenceType"] == "Invisible" {
            own["userPresenceType"] = real[i]["userPresenceType"].clone();
        }
        assert_eq!(own, real[i], "user {u} sees its own lastOnline");
    }
    let blanked = |i: usize| {
        let mut e = real[i].clone();
        e["lastOnline"] = json!(NEVER_SEEN);
        e
    };
    for who in [Who::Anonymous, Who::User(9), Who::Key(GAME_KEY)] {
        let seen = app.lookup_as(&who, &ids).await;
        assert_eq!(seen[0], blanked(0), "{who:?}");
        assert_eq!(seen[2], blanked(2), "{who:?}");
        assert_eq!(seen[3], never_seen(4), "{who:?}");
        let want_2 = if who == Who::User(9) {
            blanked(1)
        } else {
            never_seen(2)
        };
        assert_eq!(seen[1], want_2, "{who:?}");
        for ws in [false, true] {
            let (_watch, first) = Watch::open(&app, &who, &ids, ws).await;
            assert_eq!(first, seen, "first entries as {who:?} (ws {ws})");
        }
    }
}

// =======================================================================================
// Streams
// =======================================================================================

/// The viewers the stream tests use, with what the reference calls them.
fn viewers() -> Vec<(Who, Looker)> {
    vec![
        (Who::Anonymous, Looker::Anonymous),
        (Who::Bearer("not-a-credential".into()), Looker::Anonymous),
        (Who::Key(GAME_KEY), Looker::Anonymous),
        (Who::Key(READ_KEY), Looker::Reader),
        (Who::User(9), Looker::User(9)),
        (Who::Cookie(9), Looker::User(9)),
        (Who::User(8), Looker::User(8)),
        (Who::User(4), Looker::User(4)),
        (Who::User(6), Looker::User(6)),
    ]
}

/// "one function decides it, for lookups and streams alike": for every viewer, a stream's
/// first event and a WebSocket's subscribe answer are the lookup by that viewer, and both
/// follow the contract's order (checked against a reference written from it).
#[tokio::test]
async fn first_events_and_subscribe_answers_decide_like_lookups_for_every_viewer() {
    let app = clocked(|s| s.places = vec![crossroads()]).await;
    // 1 everyone; 2 friends-only (friend 9); 3 nobody; 4 invisible; 5 never seen;
    // 6 friends-only and invisible (friend 9); 7 nobody and invisible.
    for u in [1, 2, 3, 4, 6, 7] {
        app.heartbeat(u, json!({"location": format!("Place {u}")}))
            .await;
    }
    app.heartbeat(2, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let froze = app.now_ms();
    app.advance(Duration::from_secs(1));
    let mut privacy = std::collections::HashMap::new();
    for (u, body) in [
        (2, json!({"visibility": "friends"})),
        (3, json!({"visibility": "nobody"})),
        (4, json!({"invisible": true})),
        (6, json!({"visibility": "friends", "invisible": true})),
        (7, json!({"visibility": "nobody", "invisible": true})),
    ] {
        app.set_settings(u, body).await;
    }
    let invisible = Some(Invisibility {
        until: None,
        frozen: Some(froze),
    });
    privacy.insert(
        2,
        Privacy {
            visibility: Visibility::Friends,
            invisible: None,
        },
    );
    privacy.insert(
        3,
        Privacy {
            visibility: Visibility::Nobody,
            invisible: None,
        },
    );
    privacy.insert(
        4,
        Privacy {
            visibility: Visibility::Everyone,
            invisible,
        },
    );
    privacy.insert(
        6,
        Privacy {
            visibility: Visibility::Friends,
            invisible,
        },
    );
    privacy.insert(
        7,
        Privacy {
            visibility: Visibility::Nobody,
            invisible,
        },
    );
    app.befriend(&[(2, 9), (6, 9)]).await;
    // Heartbeats after the invisibility began change nothing others see.
    app.heartbeat(4, json!({"location": "Moved"})).await;

    let ids = [1, 2, 3, 4, 5, 6, 7];
    let real = app.lookup_as(&Who::Key(READ_KEY), &ids).await;
    let now = app.now_ms();
    for (who, looker) in viewers() {
        let want: Vec<Value> = ids
            .iter()
            .zip(&real)
            .map(|(&u, real)| {
                let p = privacy.get(&u).copied().unwrap_or_default();
                let friend = matches!(looker, Looker::User(9)) && [2, 6].contains(&u);
                reference_sight(looker, u, &p, friend, real, now, true)
            })
            .collect();
        let seen = app.lookup_as(&who, &ids).await;
        assert_eq!(seen, want, "lookup as {who:?}");
        for ws in [false, true] {
            let (_watch, first) = Watch::open(&app, &who, &ids, ws).await;
            assert_eq!(first, want, "first entries as {who:?} (ws {ws})");
        }
    }
}

/// "A watcher is sent what its viewer may see": each change of a user's entry reaches the
/// viewers who see it, as they see it, and no one else (section 8's events, decided per
/// viewer).
#[tokio::test]
async fn later_events_reach_only_the_viewers_who_see_the_change() {
    let app = live(|s| s.places = vec![crossroads()]).await;
    for u in [1, 2, 4] {
        app.heartbeat(u, json!({"location": "Start"})).await;
    }
    app.set_settings(2, json!({"visibility": "friends"})).await;
    app.set_settings(4, json!({"invisible": true})).await;
    app.befriend(&[(2, 9)]).await;
    let ids = [1, 2, 4];
    let mut watches = Vec::new();
    for (i, (who, _)) in viewers().into_iter().enumerate() {
        let (watch, first) = Watch::open(&app, &who, &ids, i % 2 == 1).await;
        assert_eq!(first, app.lookup_as(&who, &ids).await, "{who:?}");
        watches.push((who, watch));
    }
    // (user, body, the viewers who must be sent the change)
    let steps: [(u64, Value, &[Who]); 3] = [
        (
            1,
            json!({"placeId": 1818, "gameId": GAME}),
            &[
                Who::Anonymous,
                Who::Bearer("not-a-credential".into()),
                Who::Key(GAME_KEY),
                Who::Key(READ_KEY),
                Who::User(9),
                Who::Cookie(9),
                Who::User(8),
                Who::User(4),
                Who::User(6),
            ],
        ),
        (
            2,
            json!({"location": "Moved"}),
            &[Who::Key(READ_KEY), Who::User(9), Who::Cookie(9)],
        ),
        (
            4,
            json!({"location": "Moved"}),
            &[Who::Key(READ_KEY), Who::User(4)],
        ),
    ];
    for (u, body, told) in steps {
        app.heartbeat(u, body.clone()).await;
        for (who, watch) in &mut watches {
            if told.contains(who) {
                let entries = watch.expect(&format!("{u} {body} as {who:?}")).await;
                assert_eq!(
                    entries,
                    app.lookup_as(who, &[u]).await,
                    "{u} {body} as {who:?}"
                );
            }
        }
        for (who, watch) in &mut watches {
            if !told.contains(who) {
                watch.silent(QUIET, &format!("{u} {body} as {who:?}")).await;
            }
        }
    }
}

/// "A change of U's settings ... sends each watcher U's entry as that watcher now sees it,
/// if it differs from the last one sent" — through `PATCH` and through `PUT`; what each
/// viewer should now see comes from a reference of the decision written from the contract.
#[tokio::test]
async fn a_change_of_settings_sends_each_watcher_what_it_now_sees_if_it_differs() {
    let app = live(|_| {}).await;
    let (u, friend, stranger) = (1, 2, 3);
    app.heartbeat(u, json!({"location": "Home"})).await;
    app.befriend(&[(u, friend)]).await;
    let real = app.seen_as(&Who::Key(READ_KEY), u).await;
    assert_eq!(g::fields(&real), g::online(u, "Home"));
    let last_online = instant(&real["lastOnline"]);
    let viewers = [
        (Who::Anonymous, Looker::Anonymous),
        (Who::User(friend), Looker::User(friend)),
        (Who::User(stranger), Looker::User(stranger)),
        (Who::Key(READ_KEY), Looker::Reader),
        (Who::User(u), Looker::User(u)),
    ];
    let mut privacy = Privacy::default();
    let mut watches = Vec::new();
    let mut last = Vec::new();
    for (i, (who, _)) in viewers.iter().enumerate() {
        let (watch, first) = Watch::open(&app, who, &[u], i % 2 == 0).await;
        assert_eq!(first, vec![real.clone()], "{who:?}");
        watches.push(watch);
        last.push(real.clone());
    }
    let changes = [
        (false, json!({"visibility": "friends"})),
        (false, json!({"invisible": true})),
        (true, json!({"visibility": "everyone"})),
        (false, json!({"visibility": "everyone"})),
        (true, json!({"invisible": false})),
        (true, json!({"visibility": "nobody"})),
        (false, json!({"visibility": "nobody", "invisible": true})),
        (true, json!({"visibility": "friends", "invisible": false})),
        (false, json!({})),
        (true, json!({"invisible": true, "visibility": "everyone"})),
    ];
    let mut told_anyone = 0;
    for (by_platform, body) in changes {
        if by_platform {
            app.put_settings(u, body.clone()).await;
        } else {
            app.set_settings(u, body.clone()).await;
        }
        privacy.apply(&body, app.now_ms(), Some(last_online));
        let mut told = Vec::new();
        for (i, (who, looker)) in viewers.iter().enumerate() {
            let friend = *looker == Looker::User(friend);
            let want = reference_sight(*looker, u, &privacy, friend, &real, app.now_ms(), true);
            assert_eq!(
                app.seen_as(who, u).await,
                want,
                "lookup after {body} as {who:?}"
            );
            if want != last[i] {
                let entries = watches[i].expect(&format!("{body} as {who:?}")).await;
                assert_eq!(entries, vec![want.clone()], "{body} as {who:?}");
                last[i] = want;
                told.push(i);
            }
        }
        told_anyone += told.len();
        for (i, (who, _)) in viewers.iter().enumerate() {
            if !told.contains(&i) {
                watches[i]
                    .silent(QUIET, &format!("{body} changed nothing {who:?} sees"))
                    .await;
            }
        }
    }
    assert!(told_anyone >= 10, "the changes were seen: {told_anyone}");
}

/// "A change ... of a friendship ... sends each watcher U's entry as that watcher now sees
/// it, if it differs" — through `POST /v1/friendships` and `PUT .../friends`, on either
/// side of the pair.
#[tokio::test]
async fn a_change_of_friendship_sends_each_watcher_what_it_now_sees_if_it_differs() {
    let app = live(|_| {}).await;
    let (u, v, w, open_user, invisible_u) = (1, 2, 3, 4, 5);
    for user in [u, open_user, invisible_u] {
        app.heartbeat(user, json!({"location": "Home"})).await;
    }
    app.set_settings(u, json!({"visibility": "friends"})).await;
    app.set_settings(
        invisible_u,
        json!({"visibility": "friends", "invisible": true}),
    )
    .await;
    let ids = [u, open_user, invisible_u];
    let (mut as_v, first) = Watch::open(&app, &Who::User(v), &ids, false).await;
    assert_eq!(first[0], never_seen(u));
    let (mut as_w, first) = Watch::open(&app, &Who::User(w), &ids, true).await;
    assert_eq!(first[0], never_seen(u));
    let (mut anonymous, _) = Watch::open(&app, &Who::Anonymous, &ids, false).await;

    let real = app.seen_as(&Who::Key(READ_KEY), u).await;
    app.befriend(&[(u, v)]).await;
    assert_eq!(as_v.expect("befriended").await, vec![real.clone()]);
    as_w.silent(QUIET, "not its friendship").await;
    anonymous.silent(Duration::ZERO, "anonymous").await;

    app.unfriend(&[(v, u)]).await;
    assert_eq!(as_v.expect("unfriended").await, vec![never_seen(u)]);

    app.replace_friends(u, &[v, w]).await;
    assert_eq!(as_v.expect("listed").await, vec![real.clone()]);
    assert_eq!(as_w.expect("listed").await, vec![real.clone()]);

    // The other side's list: w's new list no longer holds u.
    app.replace_friends(w, &[v]).await;
    assert_eq!(
        as_w.expect("dropped by the other side").await,
        vec![never_seen(u)]
    );
    as_v.silent(QUIET, "v and u are still friends").await;

    // A friend of an everyone-visible user sees nothing new.
    app.befriend(&[(open_user, v)]).await;
    as_v.silent(QUIET, "an everyone-visible user").await;

    // A friend of an invisible friends-only user is sent the invisible entry.
    app.befriend(&[(invisible_u, w)]).await;
    let entries = as_w.expect("befriended an invisible user").await;
    assert_eq!(entries, app.lookup_as(&Who::User(w), &[invisible_u]).await);
    assert_eq!(entries[0]["userPresenceType"], "Offline");
    assert_eq!(entries[0]["lastLocation"], "");
    assert_ne!(entries[0]["lastOnline"], NEVER_SEEN);
    anonymous
        .silent(QUIET, "anonymous viewers see no friendship")
        .await;
}

/// The leak test. "while U is hidden from a watcher, U's activity sends that watcher
/// nothing at all (not even an unchanged entry: the timing would tell)": watchers who
/// cannot see U, and watchers who see U only as invisible, get no event, frame or byte but
/// keep-alive pings while U heartbeats, moves, joins and leaves games, disconnects and
/// expires, and while its settings and friendships change in ways they cannot see. A
/// reader watching beside them shows the activity did happen.
#[tokio::test]
async fn a_watcher_who_cannot_see_a_user_observes_nothing_while_it_is_active() {
    use g::{SERVER_B, UNKNOWN_PLACE};
    let app = live(|s| {
        s.stream.keep_alive = Duration::from_secs(1);
        s.presence.heartbeat_ttl = Duration::from_secs(3);
    })
    .await;
    // 1 nobody; 2 friends-only (its friend 9 does not watch); 3 invisible to everyone.
    let (nobody, friends_only, invisible) = (1, 2, 3);
    let ids = [nobody, friends_only, invisible];
    for u in ids {
        app.heartbeat(u, json!({"location": "Before"})).await;
    }
    app.set_settings(nobody, json!({"visibility": "nobody"}))
        .await;
    app.set_settings(friends_only, json!({"visibility": "friends"}))
        .await;
    app.befriend(&[(friends_only, 9)]).await;
    app.set_settings(invisible, json!({"invisible": true}))
        .await;

    let mut blind = Vec::new();
    for (who, ws) in [
        (Who::Anonymous, false),
        (Who::Anonymous, true),
        (Who::User(8), false),
        (Who::User(8), true),
        (Who::Key(GAME_KEY), false),
    ] {
        let (watch, first) = Watch::open(&app, &who, &ids, ws).await;
        assert_eq!(first[0], never_seen(nobody));
        assert_eq!(first[1], never_seen(friends_only));
        assert_eq!(g::fields(&first[2]), g::fields(&never_seen(invisible)));
        blind.push((format!("{who:?} ws {ws}"), watch));
    }
    let (mut reader, _) = Watch::open(&app, &Who::Key(READ_KEY), &ids, false).await;

    for u in ids {
        app.heartbeat(u, json!({"location": "Home"})).await;
        app.heartbeat(u, json!({"location": "Home"})).await;
        app.heartbeat(u, json!({"location": "Website"})).await;
        app.heartbeat(u, json!({"placeId": 1818, "gameId": GAME}))
            .await;
        app.heartbeat(u, json!({"location": "Studio"})).await;
    }
    app.report(SERVER_A, 1818, &ids).await;
    app.report(SERVER_B, UNKNOWN_PLACE, &ids).await;
    app.join_leave(SERVER_A, &[], &[nobody]).await;
    app.stop_server(SERVER_B).await;
    app.stop_server(SERVER_A).await;
    // Changes they cannot see: settings and friendships that keep the users from them.
    app.set_settings(nobody, json!({"invisible": true})).await;
    app.set_settings(nobody, json!({"invisible": false, "visibility": "friends"}))
        .await;
    app.set_settings(nobody, json!({"visibility": "nobody"}))
        .await;
    app.befriend(&[(nobody, 9), (friends_only, 7)]).await;
    app.unfriend(&[(friends_only, 9)]).await;
    app.set_settings(invisible, json!({"invisible": true}))
        .await;
    for u in ids {
        app.heartbeat(u, json!({"location": "Last"})).await;
    }
    app.heartbeat(nobody, json!({"disconnect": true})).await;
    // The others expire (heartbeat_ttl 3 s); the reader is told of each.
    let mut offline = std::collections::HashMap::new();
    while ids
        .iter()
        .any(|u| offline.get(u) != Some(&json!("Offline")))
    {
        for entry in reader.expect("the activity, as a reader sees it").await {
            offline.insert(
                entry["userId"].as_u64().unwrap(),
                entry["userPresenceType"].clone(),
            );
        }
    }
    assert_eq!(
        app.lookup_as(&Who::Key(READ_KEY), &ids).await[1]["lastLocation"],
        "Last"
    );
    // Long enough for several keep-alives: they, and nothing else, came.
    for (name, watch) in &mut blind {
        watch.silent(Duration::from_millis(2500), name).await;
    }
    if let Some((_, Watch::Sse(sse))) = blind.first_mut() {
        let item = sse.next_item(Duration::from_secs(5)).await;
        assert_eq!(item, Some(common::live::Item::Comment("ping".into())));
    }
}

/// "Counts (`/metrics`, the page) stay totals": users hidden or invisible are counted as
/// what they really are.
#[tokio::test]
async fn counts_in_metrics_stay_totals() {
    let app = live(|s| s.places = vec![crossroads()]).await;
    app.heartbeat(1, json!({"location": "Home"})).await;
    app.heartbeat(2, json!({"location": "Home"})).await;
    app.heartbeat(3, json!({"location": "Home"})).await;
    app.heartbeat(4, json!({"placeId": 1818})).await;
    app.heartbeat(5, json!({"location": "Studio"})).await;
    app.set_settings(2, json!({"visibility": "nobody"})).await;
    app.set_settings(3, json!({"invisible": true})).await;
    app.put_settings(4, json!({"visibility": "friends"})).await;
    app.put_settings(5, json!({"visibility": "nobody", "invisible": true}))
        .await;
    eventually(Duration::from_secs(10), || async {
        let text = app.metrics().await;
        (g::gauge(&text, r#"presence_users{type="Online"}"#) == 3.0
            && g::gauge(&text, r#"presence_users{type="InGame"}"#) == 1.0
            && g::gauge(&text, r#"presence_users{type="InStudio"}"#) == 1.0)
            .then_some(())
    })
    .await;
}

/// "the end of `invisibleUntil` sends each watcher U's entry as that watcher now sees it":
/// also when U's real entry changed while it was invisible (what the watcher is sent then is
/// the entry of that moment), whether the clock lands on the end or passes it.
#[tokio::test]
async fn the_end_of_invisibility_sends_what_changed_while_invisible() {
    for past_the_end in [0, 1, 1500] {
        let app = clocked(|_| {}).await;
        let u = 61;
        app.heartbeat(u, json!({"location": "Home"})).await;
        let (mut anonymous, _) = Watch::open(&app, &Who::Anonymous, &[u], false).await;
        let (mut friendly, _) = Watch::open(&app, &Who::User(62), &[u], true).await;
        app.advance(Duration::from_secs(1));
        let end = app.now_ms() + 3_000;
        app.set_settings(
            u,
            json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
        )
        .await;
        assert_eq!(anonymous.expect("invisible").await[0]["lastLocation"], "");
        assert_eq!(friendly.expect("invisible").await[0]["lastLocation"], "");
        app.advance(Duration::from_secs(1));
        app.heartbeat(u, json!({"location": "Elsewhere"})).await;
        anonymous.silent(QUIET, "a change while invisible").await;
        app.advance(Duration::from_millis(2_000 + past_the_end));
        let real = app.seen_as(&Who::Key(READ_KEY), u).await;
        assert_eq!(g::fields(&real), g::online(u, "Elsewhere"));
        assert_eq!(app.seen_as(&Who::Anonymous, u).await, real);
        let what = format!("the end, {past_the_end} ms past it");
        assert_eq!(anonymous.expect(&what).await, vec![real.clone()], "{what}");
        assert_eq!(friendly.expect(&what).await, vec![real.clone()], "{what}");
    }
}

/// The same for a user never seen when its invisibility began: others are shown the
/// never-seen entry while it lasts (its `lastOnline` was that of a user never seen), so
/// neither the settings change nor the activity sends them anything ("if it differs from
/// the last one sent"), and "the end of `invisibleUntil` sends each watcher U's entry as
/// that watcher now sees it".
#[tokio::test]
async fn the_end_of_invisibility_of_a_user_never_seen_before_it_is_sent() {
    for exact in [true, false] {
        let app = clocked(|_| {}).await;
        let u = 71;
        let (mut anonymous, first) = Watch::open(&app, &Who::Anonymous, &[u], true).await;
        assert_eq!(first, vec![never_seen(u)]);
        let (mut keyed, _) = Watch::open(&app, &Who::Key(GAME_KEY), &[u], false).await;
        let end = app.now_ms() + 615;
        app.put_settings(
            u,
            json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
        )
        .await;
        // What they are shown has not changed: nothing is sent, neither for the settings
        // nor for the activity.
        anonymous.silent(QUIET, "invisible from the start").await;
        keyed
            .silent(Duration::ZERO, "invisible from the start")
            .await;
        app.heartbeat(u, json!({"placeId": 1818})).await;
        assert_eq!(app.seen_as(&Who::Anonymous, u).await, never_seen(u));
        anonymous.silent(QUIET, "active while invisible").await;
        keyed.silent(Duration::ZERO, "active while invisible").await;
        app.advance(Duration::from_millis(if exact { 615 } else { 1_000 }));
        let real = app.seen_as(&Who::Key(READ_KEY), u).await;
        assert_eq!(real["userPresenceType"], "InGame");
        assert_eq!(app.seen_as(&Who::Anonymous, u).await, real);
        let what = format!("the end (exactly on it: {exact})");
        assert_eq!(anonymous.expect(&what).await, vec![real.clone()], "{what}");
        assert_eq!(keyed.expect(&what).await, vec![real.clone()], "{what}");
    }
}

/// "the end of `invisibleUntil` sends each watcher U's entry as that watcher now sees it":
/// every watcher, also when another starts watching U after the end and before the sweeper
/// (here every 1 s) has sent it.
#[tokio::test]
async fn a_watcher_opened_after_the_end_does_not_take_the_end_from_the_others() {
    for seen_before in [true, false] {
        let app = clocked(|s| s.presence.sweep_interval = Duration::from_secs(1)).await;
        let u = 81;
        if seen_before {
            app.heartbeat(u, json!({"location": "Home"})).await;
        }
        let (mut first_watcher, _) = Watch::open(&app, &Who::Anonymous, &[u], true).await;
        let end = app.now_ms() + 615;
        app.put_settings(
            u,
            json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
        )
        .await;
        app.heartbeat(u, json!({"placeId": 1818})).await;
        app.advance(Duration::from_millis(1_000));
        let real = app.seen_as(&Who::Key(READ_KEY), u).await;
        assert_eq!(real["userPresenceType"], "InGame");
        let (_later, first) = Watch::open(&app, &Who::Anonymous, &[u], false).await;
        assert_eq!(first, vec![real.clone()]);
        let mut last = None;
        while let Some(entries) = first_watcher.next(Duration::from_secs(3)).await {
            last = Some(entries);
        }
        assert_eq!(
            last,
            Some(vec![real.clone()]),
            "the first watcher ends on the real entry (seen before: {seen_before})"
        );
    }
}
