//! Game servers and combined sessions on Redis (CONTRACT section 10), through `Presence`
//! directly: reports, joins and leaves, moves between servers, expiry exact at read time and
//! flipped by a sweep, the bounds, the cost of a report, convergence after a report cut
//! short, what watchers are sent, and the counts.
//!
//! Runs with `PRESENCE_TEST_BACKEND=redis` or `redis-cluster` (see `bash .ci/redis start`);
//! says it is skipped on memory. Every test has a key prefix of its own and a mock clock,
//! which the backend takes as Redis time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis as r;
use common::{crossroads, encoder, test_settings};
use presence_server::presence::model::AppReport;
use presence_server::presence::service::GameServerError;
use presence_server::presence::sessions::GamePlace;
use presence_server::presence::{
    Clock, Heartbeat, MockClock, PlaceCatalog, Presence, PresenceType, PresenceView, Subscription,
    UserId,
};
use presence_server::Settings;
use serde_json::Value;
use uuid::Uuid;

const DELIVERY: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_secs(60);

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn users(ns: &[u64]) -> Vec<UserId> {
    ns.iter().map(|&n| user(n)).collect()
}

fn game(n: u128) -> Uuid {
    Uuid::from_u128(0x3f2504e0_4f89_11d3_9a0c_0305e82c0000 + n)
}

fn settings(change: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings();
    settings.places = vec![crossroads()];
    r::apply(&mut settings);
    settings.presence.game_server_ttl = TTL;
    change(&mut settings);
    settings.validate().unwrap();
    settings
}

fn node(settings: &Settings) -> (Presence, MockClock) {
    let (clock, mock) = Clock::mock();
    let presence = Presence::from_settings(settings, clock, encoder(settings)).unwrap();
    (presence, mock)
}

fn crossroads_place() -> GamePlace {
    GamePlace::new(1818, None, &PlaceCatalog::new(&[crossroads()])).unwrap()
}

fn other_place() -> GamePlace {
    GamePlace::new(77, Some(9), &PlaceCatalog::new(&[])).unwrap()
}

fn online(location: &str) -> Heartbeat<'_> {
    Heartbeat::from_report(
        AppReport {
            location: Some(location),
            ..Default::default()
        },
        &PlaceCatalog::new(&[]),
    )
}

async fn one(p: &Presence, n: u64) -> PresenceView<'static> {
    p.get_many(&[user(n)]).await.unwrap().remove(0)
}

/// Type, location and game id of `n` now.
async fn shown(p: &Presence, n: u64) -> (PresenceType, String, Option<Uuid>) {
    let v = one(p, n).await;
    (v.kind, v.last_location.into_owned(), v.game_id)
}

async fn next(sub: &Subscription) -> Vec<Value> {
    let batch = tokio::time::timeout(DELIVERY, sub.next_batch())
        .await
        .expect("a change within the delivery time")
        .expect("the hub is open");
    batch
        .entries
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect()
}

async fn quiet(sub: &Subscription) {
    if let Ok(batch) = tokio::time::timeout(QUIET, sub.next_batch()).await {
        let entries: Vec<String> = batch
            .map(|b| b.entries)
            .unwrap_or_default()
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect();
        panic!("nothing expected, got {entries:?}");
    }
}

fn in_game(game: Uuid, location: &str) -> (PresenceType, String, Option<Uuid>) {
    (PresenceType::InGame, location.to_owned(), Some(game))
}

fn state(kind: PresenceType, location: &str) -> (PresenceType, String, Option<Uuid>) {
    (kind, location.to_owned(), None)
}

#[tokio::test]
async fn a_report_shows_its_players_in_game_with_the_places_fields() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    p.report_game_server(game(1), &place, &users(&[1, 2]))
        .await
        .unwrap();
    let v = one(&p, 1).await;
    assert_eq!(v.kind, PresenceType::InGame);
    assert_eq!(v.last_location, "Classic: Crossroads");
    assert_eq!(v.game_id, Some(game(1)));
    let info = v.place.unwrap();
    assert_eq!(
        (
            info.place_id,
            info.root_place_id,
            info.universe_id.map(|u| u.get())
        ),
        (1818, 1818, Some(13058))
    );
    assert_eq!(v.last_online, Some(p.clock().wall()));
    assert_eq!(one(&p, 2).await.game_id, Some(game(1)));
    assert_eq!(one(&p, 3).await.last_online, None);

    // An unknown place with a universe given: `Playing`, root = place.
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(2), &other_place(), &users(&[3]))
        .await
        .unwrap();
    let v = one(&p, 3).await;
    assert_eq!(
        (v.kind, v.last_location.as_ref()),
        (PresenceType::InGame, "Playing")
    );
    let info = v.place.unwrap();
    assert_eq!(
        (
            info.place_id,
            info.root_place_id,
            info.universe_id.map(|u| u.get())
        ),
        (77, 77, Some(9))
    );
}

#[tokio::test]
async fn leaving_by_omission_post_or_delete_falls_back_to_the_app_session() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    for n in [1, 2, 3, 4] {
        p.heartbeat(user(n), online("Website")).await.unwrap();
    }
    p.report_game_server(game(1), &place, &users(&[1, 2, 3]))
        .await
        .unwrap();
    for n in [1, 2, 3] {
        assert_eq!(shown(&p, n).await, in_game(game(1), "Classic: Crossroads"));
    }
    // A heartbeat while in game changes nothing shown; a disconnect ends only the app.
    p.heartbeat(user(3), online("Xbox")).await.unwrap();
    assert_eq!(shown(&p, 3).await, in_game(game(1), "Classic: Crossroads"));

    // Omitted from the next report: left, now.
    mock.increment(Duration::from_secs(5));
    p.report_game_server(game(1), &place, &users(&[2, 3]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 1).await, state(PresenceType::Online, "Website"));
    assert_eq!(one(&p, 1).await.last_online, Some(p.clock().wall()));

    // Left by POST; joined by POST (with the server's deadline).
    mock.increment(Duration::from_secs(5));
    p.game_server_players(game(1), &users(&[4]), &users(&[2]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 2).await, state(PresenceType::Online, "Website"));
    assert_eq!(shown(&p, 4).await, in_game(game(1), "Classic: Crossroads"));
    // The POST did not extend the server: 4's session ends with the last report's deadline
    // (its app session has ended by then too).
    mock.increment(Duration::from_secs(54));
    assert_eq!(shown(&p, 4).await.0, PresenceType::InGame);
    mock.increment(Duration::from_secs(1));
    assert_eq!(shown(&p, 4).await.0, PresenceType::Offline);

    // A disconnect during the game ends only the app session; a DELETE ends the game.
    let (p, mock) = node(&settings);
    p.heartbeat(user(5), online("Website")).await.unwrap();
    p.report_game_server(game(5), &place, &users(&[5, 6]))
        .await
        .unwrap();
    p.heartbeat(user(5), Heartbeat::Disconnect).await.unwrap();
    assert_eq!(shown(&p, 5).await, in_game(game(5), "Classic: Crossroads"));
    mock.increment(Duration::from_secs(1));
    p.end_game_server(game(5)).await.unwrap();
    let v = one(&p, 5).await;
    assert_eq!(
        (v.kind, v.last_location.as_ref()),
        (PresenceType::Offline, "Classic: Crossroads")
    );
    assert_eq!(v.last_online, Some(p.clock().wall()));
    assert_eq!(shown(&p, 6).await.0, PresenceType::Offline);
    // Ending a server that is not live is fine; players of it cannot change any more.
    p.end_game_server(game(5)).await.unwrap();
    p.end_game_server(game(99)).await.unwrap();
    assert_eq!(
        p.game_server_players(game(5), &users(&[7]), &[]).await,
        Err(GameServerError::Unknown)
    );
}

#[tokio::test]
async fn a_player_moving_between_servers_is_untouched_by_the_old_one() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let (a, b) = (crossroads_place(), other_place());
    p.report_game_server(game(1), &a, &users(&[1, 2]))
        .await
        .unwrap();
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(2), &b, &users(&[1]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 1).await, in_game(game(2), "Playing"));
    // The old server's report without it, then its end: the new session stays.
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(1), &a, &users(&[2]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 1).await, in_game(game(2), "Playing"));
    p.end_game_server(game(1)).await.unwrap();
    assert_eq!(shown(&p, 1).await, in_game(game(2), "Playing"));
    // Its old server's expiry does not end it either; its own does.
    mock.increment(TTL - Duration::from_secs(2));
    assert_eq!(shown(&p, 1).await, in_game(game(2), "Playing"));
    mock.increment(Duration::from_secs(1));
    let v = one(&p, 1).await;
    assert_eq!(
        (v.kind, v.last_location.as_ref()),
        (PresenceType::Offline, "Playing")
    );

    // Still listed by the old server while it joined the new one: the later join shows, and
    // the old one shows again when the new one ends.
    let (p, mock) = node(&settings);
    p.report_game_server(game(1), &a, &users(&[3]))
        .await
        .unwrap();
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(2), &b, &users(&[3]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 3).await, in_game(game(2), "Playing"));
    p.report_game_server(game(1), &a, &users(&[3]))
        .await
        .unwrap();
    assert_eq!(
        shown(&p, 3).await,
        in_game(game(2), "Playing"),
        "a refresh keeps the order"
    );
    p.end_game_server(game(2)).await.unwrap();
    assert_eq!(shown(&p, 3).await, in_game(game(1), "Classic: Crossroads"));
}

#[tokio::test]
async fn expiry_is_exact_at_read_time_and_a_sweep_flips_and_publishes_it() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|s| s.presence.heartbeat_ttl = Duration::from_secs(100));
    let (p, mock) = node(&settings);
    // Users of one shard, so that one shard channel serves them on a cluster.
    let (one_, two) = (5, 1029);
    r::wait_subscribed(&p, &p, 2053).await;
    let start = p.clock().wall();
    // Watching before the heartbeat, and its change received: its publish comes back
    // through Redis, and would otherwise reach the watcher after the report's changes
    // were asked for, in the middle of them.
    let mut sub = p.hub().subscribe();
    sub.add(&[user(one_), user(two)]);
    p.heartbeat(user(one_), online("Website")).await.unwrap();
    assert_eq!(next(&sub).await[0]["userPresenceType"], "Online");
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(1), &crossroads_place(), &users(&[one_, two]))
        .await
        .unwrap();
    let mut got = next(&sub).await;
    while got.len() < 2 {
        got.extend(next(&sub).await);
    }
    assert!(
        got.iter().all(|e| e["userPresenceType"] == "InGame"),
        "{got:?}"
    );

    // One millisecond before the deadline: still in game; at it: not, before any sweep.
    mock.increment(TTL - Duration::from_millis(1));
    assert_eq!(shown(&p, one_).await.0, PresenceType::InGame);
    mock.increment(Duration::from_millis(1));
    assert_eq!(
        shown(&p, one_).await,
        state(PresenceType::Online, "Website")
    );
    let v = one(&p, two).await;
    assert_eq!(
        (v.kind, v.last_location.as_ref()),
        (PresenceType::Offline, "Classic: Crossroads")
    );
    // lastOnline is the last report's.
    assert_eq!(v.last_online.unwrap().0, start.0 + 1000);
    quiet(&sub).await;

    // The sweep: one flipped Offline, the other back to its app session; both published.
    let swept = p.sweep().await.unwrap();
    assert_eq!(swept.expired, 1);
    let mut got = next(&sub).await;
    while got.len() < 2 {
        got.extend(next(&sub).await);
    }
    got.sort_by_key(|e| e["userId"].as_u64());
    assert_eq!(got[0]["userPresenceType"], "Online");
    assert_eq!(got[0]["lastLocation"], "Website");
    assert_eq!(got[1]["userPresenceType"], "Offline");
    assert_eq!(got[1]["lastLocation"], "Classic: Crossroads");
    // Claimed once: a second sweep has nothing to do, and sends nothing.
    assert_eq!(p.sweep().await.unwrap().expired, 0);
    quiet(&sub).await;
    // The app session's own expiry later (with the warm-up user's).
    mock.increment(Duration::from_secs(40));
    assert_eq!(p.sweep().await.unwrap().expired, 2);
    let got = next(&sub).await;
    assert_eq!(got[0]["userPresenceType"], "Offline");
    assert_eq!(got[0]["lastLocation"], "Website");
}

#[tokio::test]
async fn a_join_beyond_max_game_sessions_ends_the_oldest() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|s| s.presence.max_game_sessions = 2);
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    for g in 1..=3 {
        p.report_game_server(game(g), &place, &users(&[1]))
            .await
            .unwrap();
        mock.increment(Duration::from_secs(1));
    }
    assert_eq!(shown(&p, 1).await.2, Some(game(3)));
    p.end_game_server(game(3)).await.unwrap();
    assert_eq!(shown(&p, 1).await.2, Some(game(2)));
    // The session of the first server was ended by the third join.
    p.end_game_server(game(2)).await.unwrap();
    assert_eq!(shown(&p, 1).await.0, PresenceType::Offline);
    // Listed again by the first: a new join.
    p.report_game_server(game(1), &place, &users(&[1]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 1).await.2, Some(game(1)));
}

#[tokio::test]
async fn servers_beyond_the_bound_are_refused_and_players_beyond_theirs_too() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|s| {
        s.presence.max_game_servers = 2;
        s.api.max_players_per_server = 3;
    });
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    p.report_game_server(game(1), &place, &users(&[1]))
        .await
        .unwrap();
    p.report_game_server(game(2), &place, &users(&[2]))
        .await
        .unwrap();
    assert_eq!(
        p.report_game_server(game(3), &place, &users(&[3])).await,
        Err(GameServerError::Full)
    );
    assert_eq!(
        shown(&p, 3).await.0,
        PresenceType::Offline,
        "nothing applied"
    );
    // A live one may report again; once one ends, a new one fits.
    p.report_game_server(game(2), &place, &users(&[2, 4]))
        .await
        .unwrap();
    p.end_game_server(game(1)).await.unwrap();
    p.report_game_server(game(3), &place, &users(&[3]))
        .await
        .unwrap();
    assert_eq!(p.counts().await.unwrap().game_servers, 2);
    // Expired servers free their place without a sweep.
    mock.increment(TTL);
    assert_eq!(p.counts().await.unwrap().game_servers, 0);
    p.report_game_server(game(4), &place, &users(&[]))
        .await
        .unwrap();
    p.report_game_server(game(5), &place, &users(&[]))
        .await
        .unwrap();

    // Players: unknown or expired servers, and the bound after the change.
    assert_eq!(
        p.game_server_players(game(1), &users(&[9]), &[]).await,
        Err(GameServerError::Unknown)
    );
    assert_eq!(
        p.game_server_players(game(2), &users(&[9]), &[]).await,
        Err(GameServerError::Unknown),
        "expired"
    );
    p.report_game_server(game(4), &place, &users(&[1, 2]))
        .await
        .unwrap();
    assert_eq!(
        p.game_server_players(game(4), &users(&[3, 5]), &[]).await,
        Err(GameServerError::TooManyPlayers)
    );
    assert_eq!(
        shown(&p, 3).await.0,
        PresenceType::Offline,
        "nothing applied"
    );
    p.game_server_players(game(4), &users(&[3, 5]), &users(&[1]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 5).await.2, Some(game(4)));
    assert_eq!(shown(&p, 1).await.0, PresenceType::Offline);
    assert_eq!(
        p.report_game_server(game(4), &place, &users(&[1, 2, 3, 5]))
            .await,
        Err(GameServerError::TooManyPlayers)
    );
}

#[tokio::test]
async fn a_report_cut_short_after_its_server_script_converges_when_repeated() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    p.report_game_server(game(1), &place, &users(&[1, 2, 3]))
        .await
        .unwrap();
    mock.increment(Duration::from_secs(2));
    // The next report's first step alone, as if Redis went away right after it.
    let prefix = &settings.redis.key_prefix;
    let server_key = format!("{prefix}{{gs}}s{}", game(1).simple());
    let servers_key = format!("{prefix}{{gs}}e");
    let now = p.clock().wall().0;
    let session = String::from_utf8(
        presence_server::presence::redis::record::encode_game_session(game(1), &place),
    )
    .unwrap();
    let mut eval = redis::cmd("EVAL");
    eval.arg(presence_server::presence::redis::scripts::server_report())
        .arg(2)
        .arg(&server_key)
        .arg(&servers_key)
        .arg(now)
        .arg(TTL.as_millis() as i64)
        .arg(100)
        .arg(game(1).simple().to_string())
        .arg(&session)
        .arg("1");
    if r::backend() == r::TestBackend::Cluster {
        let client = redis::cluster::ClusterClient::new(vec![r::url()]).unwrap();
        let _: redis::Value = eval.query(&mut client.get_connection().unwrap()).unwrap();
    } else {
        let client = redis::Client::open(r::url()).unwrap();
        let _: redis::Value = eval.query(&mut client.get_connection().unwrap()).unwrap();
    }
    // Nothing of the users applied yet.
    assert_eq!(shown(&p, 2).await.0, PresenceType::InGame);
    // Repeated whole: everyone who left leaves, and a further repeat changes nothing.
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(1), &place, &users(&[1]))
        .await
        .unwrap();
    for n in [2, 3] {
        let v = one(&p, n).await;
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.last_online, Some(p.clock().wall()));
    }
    assert_eq!(shown(&p, 1).await.0, PresenceType::InGame);
    mock.increment(Duration::from_secs(1));
    let before = one(&p, 2).await;
    p.report_game_server(game(1), &place, &users(&[1]))
        .await
        .unwrap();
    assert_eq!(one(&p, 2).await, before, "a leave repeated changes nothing");
    // A user who left, then joined by POST, is not ended by a leave sent again.
    p.game_server_players(game(1), &users(&[2]), &[])
        .await
        .unwrap();
    p.report_game_server(game(1), &place, &users(&[1, 2]))
        .await
        .unwrap();
    assert_eq!(shown(&p, 2).await.0, PresenceType::InGame);
}

#[tokio::test]
async fn watchers_are_sent_changes_of_the_shown_entry_only() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    let (a, b) = (7, 1031);
    r::wait_subscribed(&p, &p, 2055).await;
    let mut sub = p.hub().subscribe();
    sub.add(&[user(a), user(b)]);
    p.heartbeat(user(a), online("Website")).await.unwrap();
    assert_eq!(next(&sub).await[0]["userPresenceType"], "Online");

    p.report_game_server(game(1), &place, &users(&[a]))
        .await
        .unwrap();
    let got = next(&sub).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["userPresenceType"], "InGame");
    assert_eq!(got[0]["gameId"], game(1).to_string());
    // The same report again, a heartbeat under the game: nothing shown changes.
    mock.increment(Duration::from_secs(1));
    p.report_game_server(game(1), &place, &users(&[a]))
        .await
        .unwrap();
    p.heartbeat(user(a), online("Website")).await.unwrap();
    quiet(&sub).await;
    // A join of the other user: only it.
    p.game_server_players(game(1), &users(&[b]), &[])
        .await
        .unwrap();
    let got = next(&sub).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["userId"], b);
    // A second server joined later shows; leaving the first then changes nothing shown.
    p.report_game_server(game(2), &other_place(), &users(&[a]))
        .await
        .unwrap();
    let got = next(&sub).await;
    assert_eq!(got[0]["gameId"], game(2).to_string());
    p.report_game_server(game(1), &place, &users(&[b]))
        .await
        .unwrap();
    quiet(&sub).await;
    // Leaving the second: back to the app session.
    p.end_game_server(game(2)).await.unwrap();
    let got = next(&sub).await;
    assert_eq!(got[0]["userPresenceType"], "Online");
    assert_eq!(got[0]["lastLocation"], "Website");
}

#[tokio::test]
async fn counts_are_by_shown_type_with_the_live_servers() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|s| s.presence.heartbeat_ttl = Duration::from_secs(100));
    let (p, mock) = node(&settings);
    let place = crossroads_place();
    for n in [1, 2, 3] {
        p.heartbeat(user(n), online("Website")).await.unwrap();
    }
    p.report_game_server(game(1), &place, &users(&[2, 3, 4]))
        .await
        .unwrap();
    p.report_game_server(game(2), &place, &users(&[3]))
        .await
        .unwrap();
    let counts = p.counts().await.unwrap();
    let by = |t| counts.sessions.iter().find(|(k, _)| *k == t).unwrap().1;
    assert_eq!(by(PresenceType::Online), 1);
    assert_eq!(by(PresenceType::InGame), 3);
    assert_eq!(counts.game_servers, 2);
    assert_eq!(counts.tracked, 4);
    // After the servers expire and a sweep: 2 and 3 Online again, 4 Offline.
    mock.increment(TTL);
    p.sweep().await.unwrap();
    let counts = p.counts().await.unwrap();
    let by = |t| counts.sessions.iter().find(|(k, _)| *k == t).unwrap().1;
    assert_eq!(by(PresenceType::Online), 3);
    assert_eq!(by(PresenceType::InGame), 0);
    assert_eq!(counts.game_servers, 0);
}

/// `cmdstat_evalsha` calls on each master.
fn evalsha_calls() -> Vec<(u16, u64)> {
    let (_, port) = r::host_port(&r::url());
    let cluster = r::backend() == r::TestBackend::Cluster;
    r::master_ports(port, cluster)
        .into_iter()
        .map(|p| {
            let stats = r::cli(p, &["info", "commandstats"]);
            let calls = stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (p, calls)
        })
        .collect()
}

#[tokio::test]
async fn a_report_of_700_players_costs_one_pipeline_per_node() {
    if r::skip_unless_redis("game servers on Redis") {
        return;
    }
    let settings = settings(|_| {});
    let (p, mock) = node(&settings);
    let backend = p.redis_backend().unwrap();
    let place = crossroads_place();
    let players: Vec<UserId> = (1..=700).map(|n| user(n * 7919)).collect();
    let shards: std::collections::HashSet<u64> = players.iter().map(|u| u.get() % 1024).collect();
    let (_, port) = r::host_port(&r::url());
    let masters = r::master_ports(port, r::backend() == r::TestBackend::Cluster).len() as u64;
    // A first report loads the script where needed and reads the slot map.
    p.report_game_server(game(1), &place, &players[..10])
        .await
        .unwrap();

    mock.increment(Duration::from_secs(1));
    let trips = backend.player_round_trips();
    let calls = evalsha_calls();
    p.report_game_server(game(1), &place, &players)
        .await
        .unwrap();
    let trips = backend.player_round_trips() - trips;
    let after = evalsha_calls();
    let scripts: u64 = after.iter().zip(&calls).map(|(a, b)| a.1 - b.1).sum();
    eprintln!(
        "700 players in {} shards: {trips} pipelines to {masters} masters; {scripts} EVALSHA \
         calls counted (other tests may add some)",
        shards.len()
    );
    assert_eq!(trips, masters, "one pipeline per node");
    assert!(
        scripts > shards.len() as u64,
        "one script per shard, and the server's"
    );
    for n in [1, 350, 700] {
        assert_eq!(shown(&p, n * 7919).await.2, Some(game(1)));
    }
    // Everyone leaves at once: as cheap.
    let trips = backend.player_round_trips();
    p.report_game_server(game(1), &place, &[]).await.unwrap();
    assert_eq!(backend.player_round_trips() - trips, masters);
    assert_eq!(shown(&p, 7919).await.0, PresenceType::Offline);
}
