//! A rolling upgrade on Redis: records written exactly as the previous version writes them
//! (byte strings of `record::encode_present` and of the Offline packing, under the key
//! layout of `keys.rs`) are read, heartbeated, swept and reported on by this version, and
//! a user without game sessions is written back in exactly that format, so that nodes of
//! the previous version still read it.
//!
//! Runs with `PRESENCE_TEST_BACKEND=redis` or `redis-cluster` (see `bash .ci/redis start`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis as r;
use common::{crossroads, encoder, test_settings};
use presence_server::presence::model::AppReport;
use presence_server::presence::sessions::GamePlace;
use presence_server::presence::{Clock, Heartbeat, PlaceCatalog, Presence, PresenceType, UserId};
use presence_server::Settings;
use uuid::Uuid;

const GAME_HEX: &str = "3f2504e04f8911d39a0c0305e82c3301";

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

/// Runs one command on the suite's Redis (following the cluster's slots).
fn run(cmd: &redis::Cmd) -> redis::Value {
    if r::backend() == r::TestBackend::Cluster {
        let client = redis::cluster::ClusterClient::new(vec![r::url()]).unwrap();
        cmd.query(&mut client.get_connection().unwrap()).unwrap()
    } else {
        let client = redis::Client::open(r::url()).unwrap();
        cmd.query(&mut client.get_connection().unwrap()).unwrap()
    }
}

fn get(key: &str) -> Option<String> {
    match run(redis::cmd("GET").arg(key)) {
        redis::Value::Nil => None,
        v => Some(redis::from_redis_value::<String>(v).unwrap()),
    }
}

/// The previous version's keys of `n` (see `src/presence/redis/keys.rs`).
struct Layout<'a>(&'a str);

impl Layout<'_> {
    fn record(&self, n: u64) -> String {
        format!("{}{{{}}}{n}", self.0, n % 1024)
    }
    fn expiry(&self, n: u64) -> String {
        format!("{}{{{}}}e", self.0, n % 1024)
    }
    fn counters(&self, n: u64) -> String {
        format!("{}{{{}}}n", self.0, n % 1024)
    }

    /// A present record as the previous version's heartbeat leaves it: the record, its
    /// expiry entry, its counters.
    fn present(&self, n: u64, record: &str, kind: u8, deadline: i64) {
        run(redis::cmd("SET").arg(self.record(n)).arg(record));
        run(redis::cmd("ZADD").arg(self.expiry(n)).arg(deadline).arg(n));
        run(redis::cmd("HINCRBY").arg(self.counters(n)).arg(kind).arg(1));
        run(redis::cmd("HINCRBY").arg(self.counters(n)).arg("t").arg(1));
    }

    fn offline(&self, n: u64, record: &str) {
        run(redis::cmd("SET").arg(self.record(n)).arg(record));
        run(redis::cmd("HINCRBY").arg(self.counters(n)).arg("t").arg(1));
    }
}

fn settings() -> Settings {
    let mut settings = test_settings();
    settings.places = vec![crossroads()];
    r::apply(&mut settings);
    settings.presence.heartbeat_ttl = Duration::from_secs(60);
    settings.presence.game_server_ttl = Duration::from_secs(60);
    settings.validate().unwrap();
    settings
}

#[tokio::test]
async fn records_of_the_previous_version_are_read_swept_and_written_back_as_they_were() {
    if r::skip_unless_redis("an upgrade on Redis") {
        return;
    }
    let settings = settings();
    let (clock, mock) = Clock::mock();
    let p = Presence::from_settings(&settings, clock, encoder(&settings)).unwrap();
    let t = p.clock().wall().0;
    let old = Layout(&settings.redis.key_prefix);
    // Written as the previous version writes them.
    old.present(
        1,
        &format!("1|{}|{}|||||Website", t - 5_000, t + 55_000),
        1,
        t + 55_000,
    );
    old.present(
        2,
        &format!(
            "2|{}|{}|1818|1818|13058|{GAME_HEX}|Classic: Crossroads",
            t - 1_000,
            t + 59_000
        ),
        2,
        t + 59_000,
    );
    // Present, past its deadline, not claimed yet.
    old.present(
        3,
        &format!("3|{}|{}|||||Studio", t - 70_000, t - 10_000),
        3,
        t - 10_000,
    );
    // Offline, packed (Website is code 1) and as text.
    old.offline(4, &((t - 100_000) * 4 + 1).to_string());
    old.offline(5, &format!("0|{}|Somewhere | else", t - 200_000));

    // Lookups.
    let views = p
        .get_many(&[user(1), user(2), user(3), user(4), user(5)])
        .await
        .unwrap();
    let brief: Vec<(PresenceType, &str)> = views
        .iter()
        .map(|v| (v.kind, v.last_location.as_ref()))
        .collect();
    assert_eq!(
        brief,
        vec![
            (PresenceType::Online, "Website"),
            (PresenceType::InGame, "Classic: Crossroads"),
            (PresenceType::Offline, "Studio"),
            (PresenceType::Offline, "Website"),
            (PresenceType::Offline, "Somewhere | else"),
        ]
    );
    assert_eq!(views[1].game_id, Some(Uuid::parse_str(GAME_HEX).unwrap()));
    assert_eq!(views[3].last_online.unwrap().0, t - 100_000);

    // A sweep claims the one past its deadline, in the previous version's Offline format.
    assert_eq!(p.sweep().await.unwrap().expired, 1);
    assert_eq!(
        get(&old.record(3)),
        Some(((t - 70_000) * 4 + 3).to_string())
    );
    let counts = p.counts().await.unwrap();
    assert_eq!(
        counts.sessions.map(|(_, n)| n),
        [1, 1, 0],
        "Online, InGame, InStudio"
    );

    // A heartbeat writes the previous version's format, byte for byte.
    mock.increment(Duration::from_secs(1));
    let now = t + 1_000;
    let catalog = PlaceCatalog::new(&[]);
    let xbox = Heartbeat::from_report(
        AppReport {
            location: Some("Xbox"),
            ..Default::default()
        },
        &catalog,
    );
    p.heartbeat(user(1), xbox.clone()).await.unwrap();
    assert_eq!(
        get(&old.record(1)).unwrap(),
        format!("1|{now}|{}|||||Xbox", now + 60_000)
    );
    p.heartbeat(user(4), xbox.clone()).await.unwrap();
    assert_eq!(
        get(&old.record(4)).unwrap(),
        format!("1|{now}|{}|||||Xbox", now + 60_000)
    );
    p.heartbeat(user(5), Heartbeat::Disconnect).await.unwrap();
    assert_eq!(
        get(&old.record(5)).unwrap(),
        format!("0|{now}|Somewhere | else")
    );

    // A game report on them: a record of the new format while in game; after leaving,
    // the previous version's format again.
    let place = GamePlace::new(1818, None, &PlaceCatalog::new(&[crossroads()])).unwrap();
    let game = Uuid::from_u128(7);
    p.report_game_server(game, &place, &[user(1), user(2), user(4), user(5)])
        .await
        .unwrap();
    assert!(get(&old.record(1)).unwrap().starts_with("g|"));
    for n in [1, 2, 4, 5] {
        let v = p.get_many(&[user(n)]).await.unwrap().remove(0);
        assert_eq!(
            (v.kind, v.game_id),
            (PresenceType::InGame, Some(game)),
            "{n}"
        );
    }
    mock.increment(Duration::from_secs(1));
    let later = now + 1_000;
    p.end_game_server(game).await.unwrap();
    // 1 keeps its app session (lastOnline: the leave); 2's app session, from the previous
    // version, too; 4 likewise; 5 had none: Offline at the game's place.
    assert_eq!(
        get(&old.record(1)).unwrap(),
        format!("1|{later}|{}|||||Xbox", now + 60_000)
    );
    assert_eq!(
        get(&old.record(2)).unwrap(),
        format!(
            "2|{later}|{}|1818|1818|13058|{GAME_HEX}|Classic: Crossroads",
            t + 59_000
        )
    );
    assert_eq!(
        get(&old.record(5)).unwrap(),
        format!("0|{later}|Classic: Crossroads")
    );
    let counts = p.counts().await.unwrap();
    assert_eq!(counts.sessions.map(|(_, n)| n), [2, 1, 0]);
    // The previous version's app sessions end in its own Offline format, by a sweep.
    mock.increment(Duration::from_secs(60));
    p.sweep().await.unwrap();
    assert_eq!(get(&old.record(1)).unwrap(), format!("0|{later}|Xbox"));
    assert_eq!(
        get(&old.record(2)).unwrap(),
        format!("0|{later}|Classic: Crossroads")
    );
    assert_eq!(
        p.counts().await.unwrap().sessions.map(|(_, n)| n),
        [0, 0, 0]
    );
}
