//! Privacy on Redis (CONTRACT section 11), through the `Presence` API and the real server:
//! settings outlive a record's retention, a friends-only user is hidden from anonymous
//! lookups and shown to its friends, the bound on friends and the pairs skipped agree with
//! the memory backend's table, a change through one node reaches a watcher on another,
//! and a lookup by a signed-in viewer is one `MGET` and one `SMISMEMBER`.
//!
//! Runs with `PRESENCE_TEST_BACKEND=redis` or `redis-cluster` (see `bash .ci/redis start`);
//! on the memory backend every test here says it is skipped, except the one that counts
//! commands, which starts a server of its own when `redis-server` is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::live::Sse;
use common::redis::{self as r, OwnServer};
use common::*;
use futures_util::StreamExt as _;
use presence_server::config::Backend;
use presence_server::presence::memory::friends::Friendships;
use presence_server::presence::model::AppReport;
use presence_server::presence::privacy::{
    CheckedPatch, FriendListBody, FriendPair, FriendshipsBody, Settings, SettingsPatch, Sight,
    Viewer, Visibility,
};
use presence_server::presence::{
    Clock, Heartbeat, PlaceCatalog, Presence, PresenceType, PresenceView, UserId,
};
use serde_json::{json, Value};

fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn present(location: &str) -> Heartbeat<'_> {
    let catalog = PlaceCatalog::new(&[]);
    Heartbeat::from_report(
        AppReport {
            location: Some(location),
            ..Default::default()
        },
        &catalog,
    )
}

/// A presence on `settings`' backend (a node of the deployment those settings name).
fn node(settings: &presence_server::Settings, clock: Clock) -> Presence {
    Presence::from_settings(settings, clock, encoder(settings)).unwrap()
}

/// The patch of a body like `{"visibility": "friends", "invisible": true}`.
fn patch(visibility: Option<&str>, invisible: Option<bool>) -> CheckedPatch {
    SettingsPatch {
        visibility: visibility.map(str::to_owned),
        invisible,
        invisible_until: None,
    }
    .check(presence_server::presence::time::WallMillis(0))
    .unwrap()
}

/// The pairs of `[[a, b], ...]`.
fn pairs(list: &[(u64, u64)]) -> Vec<[Option<UserId>; 2]> {
    list.iter()
        .map(|&(a, b)| [UserId::new(a), UserId::new(b)])
        .collect()
}

fn body(add: &[(u64, u64)], remove: &[(u64, u64)]) -> FriendshipsBody {
    FriendshipsBody {
        add: pairs(add),
        remove: pairs(remove),
    }
}

fn ids_of(pairs: &[FriendPair]) -> Vec<(u64, u64)> {
    pairs
        .iter()
        .map(|p| {
            let (a, b) = p.users();
            (a.get(), b.get())
        })
        .collect()
}

async fn friends(presence: &Presence, n: u64) -> Vec<u64> {
    presence
        .friends(user(n))
        .await
        .unwrap()
        .into_iter()
        .map(UserId::get)
        .collect()
}

/// What `viewer` is shown of each of `ids`, by one read.
async fn seen_by(
    presence: &Presence,
    viewer: Viewer,
    ids: &[u64],
) -> Vec<(PresenceView<'static>, Sight)> {
    let ids: Vec<UserId> = ids.iter().map(|&n| user(n)).collect();
    let mut out = Vec::new();
    presence
        .visit_seen(viewer, &ids, |seen| {
            let sight = seen.sight(viewer, true);
            out.push((sight.entry(seen.view.clone()).into_owned(), sight));
        })
        .await
        .unwrap();
    out
}

/// `redis-cli` on the suite's Redis, following cluster redirections.
fn cli(args: &[&str]) -> String {
    let (_, port) = r::host_port(&r::url());
    let mut all = vec!["-c"];
    all.extend_from_slice(args);
    r::cli(port, &all)
}

#[tokio::test]
async fn settings_outlive_the_records_retention() {
    if r::skip_unless_redis("settings on Redis") {
        return;
    }
    let mut settings = test_settings();
    settings.presence.offline_retention = Some(Duration::from_millis(300));
    let presence = node(&settings, Clock::system());
    presence.heartbeat(user(1), present("Home")).await.unwrap();
    let (changed, _) = presence
        .change_settings(user(1), &patch(Some("friends"), Some(true)))
        .await
        .unwrap();
    assert_eq!(changed.visibility(), Visibility::Friends);
    let frozen = changed.invisibility().unwrap().last_online;
    assert!(
        frozen.is_some(),
        "invisibility froze the lastOnline it began with"
    );
    presence
        .heartbeat(user(1), Heartbeat::Disconnect)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        let view = presence.get_many(&[user(1)]).await.unwrap().remove(0);
        (view.last_online.is_none()).then_some(())
    })
    .await;
    let (kept, _) = presence.settings(user(1)).await.unwrap();
    assert_eq!(kept, changed);
    let prefix = &settings.redis.key_prefix;
    // User 1 is in shard 1.
    let key = format!("{prefix}{{1}}p1");
    assert_eq!(cli(&["PTTL", &key]).trim(), "-1", "no expiry on {key}");
    // A user with settings and no record reads as never seen.
    let seen = seen_by(&presence, Viewer::User(user(1)), &[1]).await;
    assert_eq!(seen[0].0, PresenceView::never_seen(user(1)));

    // Back to the default: nothing stored.
    let (back, _) = presence
        .change_settings(user(1), &patch(Some("everyone"), Some(false)))
        .await
        .unwrap();
    assert_eq!(back, Settings::default());
    assert_eq!(cli(&["EXISTS", &key]).trim(), "0");
}

#[tokio::test]
async fn an_invisibility_freezes_the_last_online_it_began_with() {
    if r::skip_unless_redis("settings on Redis") {
        return;
    }
    let settings = test_settings();
    let (clock, mock) = Clock::mock();
    let presence = node(&settings, clock);
    presence.heartbeat(user(7), present("Lobby")).await.unwrap();
    mock.increment(Duration::from_secs(3));
    presence.heartbeat(user(7), present("Lobby")).await.unwrap();
    let before = presence.get_many(&[user(7)]).await.unwrap().remove(0);
    presence
        .change_settings(user(7), &patch(None, Some(true)))
        .await
        .unwrap();
    mock.increment(Duration::from_secs(3));
    presence.heartbeat(user(7), present("Away")).await.unwrap();

    let (shown, sight) = seen_by(&presence, Viewer::Anonymous, &[7]).await.remove(0);
    assert_eq!(
        sight,
        Sight::Invisible {
            last_online: before.last_online
        }
    );
    assert_eq!(
        (shown.kind, shown.last_location.as_ref(), shown.last_online),
        (PresenceType::Offline, "", before.last_online)
    );
    let (own, sight) = seen_by(&presence, Viewer::User(user(7)), &[7])
        .await
        .remove(0);
    assert_eq!(sight, Sight::Own { invisible: true });
    assert_eq!(
        (own.kind, own.last_location.as_ref()),
        (PresenceType::Online, "Away")
    );
    assert!(own.last_online > before.last_online);
    let (real, sight) = seen_by(&presence, Viewer::Reader, &[7]).await.remove(0);
    assert_eq!(
        sight,
        Sight::Real {
            show_last_online: true
        }
    );
    assert_eq!(real, own);
}

#[tokio::test]
async fn a_friends_only_user_is_hidden_from_anonymous_lookups_and_shown_to_friends() {
    if r::skip_unless_redis("privacy on Redis") {
        return;
    }
    let app = spawn_app().await;
    let other = node(&app.settings, Clock::system());
    app.heartbeat(1, json!({"location": "Website"})).await;
    other
        .change_settings(user(1), &patch(Some("friends"), None))
        .await
        .unwrap();
    let changes = body(&[(1, 2)], &[]).check().unwrap();
    assert!(other.change_friendships(&changes).await.unwrap().is_empty());

    let lookup = |viewer: Option<u64>| {
        let app = &app;
        async move {
            let mut req = app
                .client
                .post(app.url(USERS))
                .json(&json!({"userIds": [1]}));
            if let Some(v) = viewer {
                req = req.bearer_auth(app.token(v));
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            body["userPresences"][0].clone()
        }
    };
    let hidden = lookup(None).await;
    assert_eq!(hidden["lastOnline"], NEVER_SEEN, "{hidden}");
    assert_eq!(hidden["userPresenceType"], "Offline");
    assert_eq!(lookup(Some(3)).await, hidden, "not a friend");
    let friend = lookup(Some(2)).await;
    assert_eq!(friend["userPresenceType"], "Online", "{friend}");
    assert_eq!(friend["lastLocation"], "Website");
    assert_eq!(lookup(Some(1)).await, friend, "the user itself");

    other
        .change_settings(user(1), &patch(Some("nobody"), None))
        .await
        .unwrap();
    assert_eq!(lookup(Some(2)).await, hidden);
    assert_eq!(lookup(Some(1)).await, friend);
}

#[tokio::test]
async fn the_bound_on_friends_skips_pairs_in_order_and_both_sides_agree() {
    if r::skip_unless_redis("friendships on Redis") {
        return;
    }
    let mut settings = test_settings();
    settings.privacy.max_friends = 2;
    let presence = node(&settings, Clock::system());
    let skipped = presence
        .change_friendships(
            &body(&[(1, 2), (1, 3), (1, 4), (2, 3), (5, 2), (2, 1)], &[])
                .check()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&skipped), [(1, 4), (5, 2)]);
    assert_eq!(friends(&presence, 1).await, [2, 3]);
    assert_eq!(friends(&presence, 2).await, [1, 3]);
    assert_eq!(friends(&presence, 3).await, [1, 2]);
    assert!(friends(&presence, 4).await.is_empty());
    assert!(friends(&presence, 5).await.is_empty());

    // Removals first: the place they free is taken in the same call.
    let skipped = presence
        .change_friendships(&body(&[(5, 2), (4, 2)], &[(2, 1)]).check().unwrap())
        .await
        .unwrap();
    assert_eq!(ids_of(&skipped), [(4, 2)]);
    assert_eq!(friends(&presence, 2).await, [3, 5]);
    assert_eq!(friends(&presence, 1).await, [3]);

    // A whole list: both sides change, the ids beyond either bound skipped as [user, id].
    let list = FriendListBody {
        user_ids: Some(vec![UserId::new(6), UserId::new(4), UserId::new(2)]),
    }
    .check(user(1), 3)
    .unwrap();
    let skipped = presence.replace_friends(user(1), &list).await.unwrap();
    assert_eq!(ids_of(&skipped), [(1, 2)]);
    assert_eq!(friends(&presence, 1).await, [4, 6]);
    assert_eq!(friends(&presence, 3).await, [2]);
    assert_eq!(friends(&presence, 4).await, [1]);
    assert_eq!(friends(&presence, 6).await, [1]);
}

/// Random calls on a few users with a small bound, on Redis and on the memory backend's
/// table: the same pairs skipped, the same friends.
#[tokio::test]
async fn friendships_agree_with_the_memory_backends_table() {
    if r::skip_unless_redis("friendships on Redis") {
        return;
    }
    const USERS: u64 = 9;
    const MAX: usize = 3;
    run_seeds("PRIVACY", &[1, 2, 3], 40, |seed, ops| async move {
        let mut settings = test_settings();
        settings.privacy.max_friends = MAX;
        let presence = node(&settings, Clock::system());
        let model = Friendships::new(MAX);
        let mut rng = Rng(seed);
        for step in 0..ops {
            let (got, want) = if step % 5 == 4 {
                let owner = 1 + rng.below(USERS);
                let ids: Vec<Option<UserId>> = (0..rng.below(5))
                    .map(|_| UserId::new(1 + rng.below(USERS)))
                    .filter(|&id| id != UserId::new(owner))
                    .collect();
                let list = FriendListBody {
                    user_ids: Some(ids),
                }
                .check(user(owner), MAX * 2)
                .unwrap();
                (
                    presence.replace_friends(user(owner), &list).await.unwrap(),
                    model.replace(user(owner), &list),
                )
            } else {
                let (adds, removes) = (rng.below(6) as usize, rng.below(3) as usize);
                let (add, remove) = (pick(&mut rng, adds, USERS), pick(&mut rng, removes, USERS));
                let changes = body(&add, &remove).check().unwrap();
                (
                    presence.change_friendships(&changes).await.unwrap(),
                    model.apply(&changes),
                )
            };
            if ids_of(&got) != ids_of(&want) {
                return Err(format!(
                    "step {step}: skipped {:?}, the table skipped {:?}",
                    ids_of(&got),
                    ids_of(&want)
                ));
            }
            for n in 1..=USERS {
                let want: Vec<u64> = model
                    .friends_of(user(n))
                    .into_iter()
                    .map(UserId::get)
                    .collect();
                let got = friends(&presence, n).await;
                if got != want {
                    return Err(format!(
                        "step {step}: friends of {n} {got:?}, in the table {want:?}"
                    ));
                }
            }
        }
        Ok(())
    })
    .await;
}

/// Calls at once through two nodes, each adding pairs among a few users with a small
/// bound: no user holds more than the bound, both sides of every pair agree, and the
/// friendships are exactly the pairs some call did not skip (there are no removals).
#[tokio::test]
async fn concurrent_calls_keep_the_bound_and_both_sides() {
    if r::skip_unless_redis("friendships on Redis") {
        return;
    }
    const USERS: u64 = 8;
    const MAX: usize = 3;
    let mut settings = test_settings();
    settings.privacy.max_friends = MAX;
    let nodes = [
        node(&settings, Clock::system()),
        node(&settings, Clock::system()),
    ];
    let mut rng = Rng(0x5eed);
    let calls: Vec<Vec<(u64, u64)>> = (0..12).map(|_| pick(&mut rng, 5, USERS)).collect();
    let results = futures_util::future::join_all(calls.iter().enumerate().map(|(i, add)| {
        let presence = &nodes[i % 2];
        async move {
            let changes = body(add, &[]).check().unwrap();
            presence.change_friendships(&changes).await.unwrap()
        }
    }))
    .await;
    let mut kept = std::collections::BTreeSet::new();
    for (add, skipped) in calls.iter().zip(&results) {
        let skipped = ids_of(skipped);
        for &(a, b) in add {
            if !skipped.contains(&(a, b)) {
                kept.insert((a.min(b), a.max(b)));
            }
        }
    }
    let mut found = std::collections::BTreeSet::new();
    for n in 1..=USERS {
        let list = friends(&nodes[0], n).await;
        assert!(list.len() <= MAX, "user {n} holds {list:?}");
        for m in list {
            assert!(friends(&nodes[1], m).await.contains(&n), "{n} and {m}");
            found.insert((n.min(m), n.max(m)));
        }
    }
    assert_eq!(found, kept);
}

/// `n` random pairs of two different users of `1..=users`.
fn pick(rng: &mut Rng, n: usize, users: u64) -> Vec<(u64, u64)> {
    (0..n)
        .map(|_| {
            let a = 1 + rng.below(users);
            let b = 1 + (a + rng.below(users - 1)) % users;
            (a, b)
        })
        .collect()
}

/// The first event of `sse` after the one read already, its entries by user id.
async fn entries(sse: &mut Sse) -> BTreeMap<u64, Value> {
    sse.event()
        .await
        .entries()
        .into_iter()
        .map(|e| (e["userId"].as_u64().unwrap(), e))
        .collect()
}

#[tokio::test]
async fn changes_through_one_node_reach_the_watchers_of_another() {
    if r::skip_unless_redis("two nodes sharing one Redis") {
        return;
    }
    let b = spawn_app().await;
    b.until_ready(Duration::from_secs(10)).await;
    let a = node(&b.settings, Clock::system());
    // 1025 shares user 1's shard, and so its channel: its changes come in order with 1's.
    a.heartbeat(user(1), present("Website")).await.unwrap();
    a.heartbeat(user(1025), present("Website")).await.unwrap();
    let bearer = format!("Bearer {}", b.token(2));
    let mut friend = Sse::open(b.addr, "userIds=1", &[("Authorization", &bearer)], None).await;
    assert_eq!(friend.status, 200, "{}", friend.body);
    let mut anonymous = Sse::open(b.addr, "userIds=1,1025", &[], None).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(entries(&mut friend).await[&1]["userPresenceType"], "Online");
    assert_eq!(entries(&mut anonymous).await.len(), 2);

    // Friends only, not friends yet: both are sent 1 as never seen.
    a.change_settings(user(1), &patch(Some("friends"), None))
        .await
        .unwrap();
    for sse in [&mut friend, &mut anonymous] {
        let seen = entries(sse).await;
        assert_eq!(seen[&1]["lastOnline"], NEVER_SEEN, "{seen:?}");
    }

    // Friends: the friend's stream is sent 1's real entry; the anonymous one nothing.
    let add = body(&[(2, 1)], &[]).check().unwrap();
    assert!(a.change_friendships(&add).await.unwrap().is_empty());
    let seen = entries(&mut friend).await;
    assert_eq!(seen[&1]["userPresenceType"], "Online", "{seen:?}");
    assert_eq!(seen[&1]["lastLocation"], "Website");

    // 1's activity reaches its friend, and not the anonymous watcher: the next thing it is
    // sent is 1025's change, published after 1's on the same channel.
    a.heartbeat(user(1), present("Studio")).await.unwrap();
    a.heartbeat(user(1025), present("Phone")).await.unwrap();
    let seen = entries(&mut friend).await;
    assert_eq!(seen[&1]["lastLocation"], "Studio", "{seen:?}");
    let seen = entries(&mut anonymous).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [1025], "{seen:?}");
    assert_eq!(seen[&1025]["lastLocation"], "Phone");

    // No longer friends: never seen again; friends again: the real entry.
    let remove = body(&[], &[(1, 2)]).check().unwrap();
    a.change_friendships(&remove).await.unwrap();
    let seen = entries(&mut friend).await;
    assert_eq!(seen[&1]["lastOnline"], NEVER_SEEN, "{seen:?}");
    assert!(a.change_friendships(&add).await.unwrap().is_empty());
    let seen = entries(&mut friend).await;
    assert_eq!(seen[&1]["lastLocation"], "Studio", "{seen:?}");

    // Invisible: the friend is sent 1 Offline, nowhere.
    a.change_settings(user(1), &patch(None, Some(true)))
        .await
        .unwrap();
    let seen = entries(&mut friend).await;
    assert_eq!(seen[&1]["userPresenceType"], "Offline", "{seen:?}");
    assert_eq!(seen[&1]["lastLocation"], "");
    assert_ne!(seen[&1]["lastOnline"], NEVER_SEEN);
    b.stop().await;
}

/// `INFO commandstats` of a server of the test's own, as `command → calls`.
fn command_calls(port: u16) -> BTreeMap<String, u64> {
    r::cli(port, &["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && !name.starts_with("config"))
        .collect()
}

#[tokio::test]
async fn a_lookup_is_one_mget_and_for_a_signed_in_viewer_one_smismember() {
    let dir = tempfile::tempdir().unwrap();
    if !r::installed_or_skip(std::path::Path::new("redis-server")) {
        return;
    }
    let server = OwnServer::standalone(dir.path());
    let mut settings = test_settings();
    settings.store.backend = Backend::Redis;
    settings.redis.url = server.url();
    settings.redis.cluster = false;
    settings.redis.key_prefix = "p:".into();
    // A mock clock: the backend then asks Redis for no `TIME`.
    let (clock, _mock) = Clock::mock();
    let presence = node(&settings, clock);
    let ids: Vec<u64> = (1..=50).collect();
    for &n in ids.iter().step_by(2) {
        presence
            .heartbeat(user(n), present("Website"))
            .await
            .unwrap();
    }
    presence
        .change_friendships(&body(&[(100, 1), (100, 2)], &[]).check().unwrap())
        .await
        .unwrap();
    presence
        .change_settings(user(1), &patch(Some("friends"), None))
        .await
        .unwrap();

    r::cli(server.port, &["CONFIG", "RESETSTAT"]);
    let seen = seen_by(&presence, Viewer::Anonymous, &ids).await;
    assert_eq!(seen[0].1, Sight::Hidden);
    assert_eq!(
        command_calls(server.port),
        BTreeMap::from([("mget".into(), 1)])
    );

    r::cli(server.port, &["CONFIG", "RESETSTAT"]);
    let seen = seen_by(&presence, Viewer::User(user(100)), &ids).await;
    assert_eq!(
        seen[0].1,
        Sight::Real {
            show_last_online: true
        }
    );
    assert_eq!(seen[0].0.kind, PresenceType::Online);
    assert_eq!(
        command_calls(server.port),
        BTreeMap::from([("mget".into(), 1), ("smismember".into(), 1)])
    );
}

/// The next message published, as text; fails after 10 s.
async fn next(messages: &mut (impl futures_util::Stream<Item = ::redis::Msg> + Unpin)) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a message within 10 s")
        .expect("subscribed");
    String::from_utf8(message.get_payload_bytes().to_vec()).unwrap()
}

/// A change of a user with the default settings is published as before settings existed
/// (`<id>|<record>`, which nodes of the previous version read); one of a user with settings
/// carries them; a friendship change names both users.
#[tokio::test]
async fn changes_are_published_with_the_settings_only_when_there_are_some() {
    let dir = tempfile::tempdir().unwrap();
    if !r::installed_or_skip(std::path::Path::new("redis-server")) {
        return;
    }
    let server = OwnServer::standalone(dir.path());
    let mut settings = test_settings();
    settings.store.backend = Backend::Redis;
    settings.redis.url = server.url();
    settings.redis.cluster = false;
    settings.redis.key_prefix = "p:".into();
    let (clock, _mock) = Clock::mock();
    let now = clock.now().wall.0;
    let presence = node(&settings, clock);
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("p:c").await.unwrap();
    let mut messages = Box::pin(pubsub.into_on_message());

    presence
        .heartbeat(user(3), present("Website"))
        .await
        .unwrap();
    let deadline = now + 60_000;
    assert_eq!(
        next(&mut messages).await,
        format!("3|1|{now}|{deadline}|||||Website")
    );
    presence
        .change_settings(user(3), &patch(Some("friends"), None))
        .await
        .unwrap();
    assert_eq!(
        next(&mut messages).await,
        format!("3|s1|1|{now}|{deadline}|||||Website")
    );
    presence
        .heartbeat(user(3), Heartbeat::Disconnect)
        .await
        .unwrap();
    // Offline at a built-in location: one integer.
    assert_eq!(next(&mut messages).await, format!("3|s1|{}", now * 4 + 1));
    presence
        .change_settings(user(3), &patch(Some("everyone"), None))
        .await
        .unwrap();
    assert_eq!(next(&mut messages).await, format!("3|{}", now * 4 + 1));
    presence
        .change_friendships(&body(&[(3, 4)], &[]).check().unwrap())
        .await
        .unwrap();
    let mut told = [next(&mut messages).await, next(&mut messages).await];
    told.sort();
    assert_eq!(told, ["f3|4|1", "f4|3|1"]);
}

/// How long the largest calls take on the suite's Redis, and Redis memory per friendship
/// (both sides). Run with `cargo test --test redis_privacy -- --ignored --nocapture` and a
/// Redis backend.
#[tokio::test]
#[ignore = "a measurement, not a check: prints times and Redis memory"]
async fn friendship_costs() {
    if r::skip_unless_redis("friendships on Redis") {
        return;
    }
    let mut settings = test_settings();
    settings.privacy.max_friends = 2000;
    let presence = node(&settings, Clock::system());
    let used = || -> i64 {
        let (_, port) = r::host_port(&r::url());
        r::master_ports(port, r::backend() == r::TestBackend::Cluster)
            .into_iter()
            .map(|p| {
                r::cli(p, &["INFO", "memory"])
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .unwrap()
                    .trim()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    };
    let base = used();
    // 1000 pairs in one call, 50 calls: 1,000 users with 100 friends each.
    let started = std::time::Instant::now();
    for call in 0..50u64 {
        let add: Vec<(u64, u64)> = (0..1000)
            .map(|i| {
                let a = 1_000_000 + (call * 1000 + i) % 1000;
                let b = 1_000_000 + (a - 1_000_000 + 1 + call * 10 + i % 10) % 1000;
                (a, b)
            })
            .filter(|(a, b)| a != b)
            .collect();
        presence
            .change_friendships(&body(&add, &[]).check().unwrap())
            .await
            .unwrap();
    }
    let per_call = started.elapsed() / 50;
    let mut pairs = 0;
    for n in 1_000_000..1_001_000 {
        pairs += friends(&presence, n).await.len();
    }
    let pairs = pairs / 2;
    println!(
        "1000-pair calls: {per_call:?} each; Redis memory per friendship: {:.1} bytes ({pairs} pairs)",
        (used() - base) as f64 / pairs as f64
    );
    let list = FriendListBody {
        user_ids: Some((2_000_001..=2_002_000).map(UserId::new).collect()),
    }
    .check(user(2_000_000), 2000)
    .unwrap();
    let started = std::time::Instant::now();
    let skipped = presence
        .replace_friends(user(2_000_000), &list)
        .await
        .unwrap();
    assert!(skipped.is_empty());
    println!("replacing a list of 2000: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let viewer = Viewer::User(user(2_000_000));
    let ids: Vec<u64> = (2_000_001..=2_000_050).collect();
    for _ in 0..100 {
        seen_by(&presence, viewer, &ids).await;
    }
    println!(
        "lookup of 50 friends by a viewer with 2000: {:?}",
        started.elapsed() / 100
    );
}
