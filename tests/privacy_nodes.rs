#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privacy beyond one process (CONTRACT section 11, "Backends": "Settings and friendships
//! live in the presence backend (snapshots on `memory`, Redis on `redis`), shared by every
//! node; a change through one node reaches watchers on every node").
//!
//! - Across a restart: the real binary on the memory backend with snapshots keeps every
//!   setting (an invisibility's end and frozen `lastOnline` included) and every friendship,
//!   and goes on deciding from them (skipped on Redis, where snapshots do not apply).
//! - Across two nodes on one Redis: settings and friendships changed through either node
//!   are what lookups and watchers on the other see, the end of an `invisibleUntil` reaches
//!   watchers on both, and a hidden user's activity reaches no blind watcher on either
//!   (skipped on memory).
mod common;

use std::path::Path;
use std::time::Duration;

use common::game::{rfc3339, sha256_hex, READ_KEY};
use common::live::Sse;
use common::privacy::*;
use common::process::{command, config_file, start, Running};
use common::redis::{skip_unless_memory, skip_unless_redis};
use common::*;
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use serde_json::{json, Value};

const NODE_SECRET: &str = "privacy-nodes-secret";

/// A config for the binary with the privacy and read keys, snapshots at `snapshot`, and
/// heartbeats that last an hour (so that a restart changes nobody's presence).
fn config(snapshot: &Path) -> tempfile::NamedTempFile {
    config_file(&format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"2s\"\n\
         [auth]\njwt_secret = \"{NODE_SECRET}\"\n\
         [[auth.service_keys]]\nname = \"platform\"\nsha256 = \"{}\"\nscopes = [\"privacy\"]\n\
         [[auth.service_keys]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
         [presence]\nheartbeat_ttl = \"1h\"\n\
         [persistence]\npath = \"{}\"\n\
         [[places]]\nid = 1818\nuniverse_id = 13058\nroot_place_id = 1818\nname = \"Crossroads\"\n",
        sha256_hex(PRIVACY_KEY),
        sha256_hex(READ_KEY),
        snapshot.display()
    ))
}

/// The binary, called as the suite's helpers call an in-process app.
struct Node {
    addr: String,
    client: reqwest::Client,
}

impl Node {
    fn of(server: &Running) -> Self {
        Self {
            addr: server.addr.clone(),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn token(user: u64) -> String {
        Authenticator::new(NODE_SECRET)
            .mint(UserId::new(user).unwrap(), Duration::from_secs(3600))
            .unwrap()
    }

    fn headers(who: &Who) -> Vec<(String, String)> {
        who.headers_by(&Self::token)
    }

    async fn heartbeat(&self, user: u64, body: Value) {
        let res = self
            .client
            .post(self.url(REGISTER))
            .bearer_auth(Self::token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "heartbeat of {user} {body}");
    }

    async fn patch_settings(&self, user: u64, body: Value) -> Value {
        let res = self
            .client
            .patch(self.url(SETTINGS))
            .bearer_auth(Self::token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        ok_json(res, &format!("PATCH {user} {body}")).await
    }

    async fn get_settings(&self, user: u64) -> Value {
        let res = self
            .client
            .get(self.url(SETTINGS))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .unwrap();
        ok_json(res, "GET settings").await
    }

    async fn keyed(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .client
            .request(method.clone(), self.url(path))
            .header("x-api-key", PRIVACY_KEY);
        if let Some(body) = &body {
            req = req.json(body);
        }
        ok_json(req.send().await.unwrap(), &format!("{method} {path}")).await
    }

    async fn lookup_as(&self, who: &Who, ids: &[u64]) -> Vec<Value> {
        let mut req = self.client.post(self.url(USERS));
        for (name, value) in Self::headers(who) {
            req = req.header(name, value);
        }
        let res = req.json(&json!({ "userIds": ids })).send().await.unwrap();
        ok_json(res, "lookup").await["userPresences"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn sse_as(&self, who: &Who, ids: &[u64]) -> Sse {
        let headers = Self::headers(who);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let sse = Sse::open(
            self.addr.parse().unwrap(),
            &format!("userIds={}", list.join(",")),
            &headers,
            None,
        )
        .await;
        assert_eq!(sse.status, 200, "{}", sse.body);
        sse
    }
}

/// Everything the restart must keep, as the API answers it.
async fn state_of(node: &Node) -> Vec<(String, Value)> {
    let ids = [1, 2, 3, 4, 5, 6];
    let mut out = Vec::new();
    for u in ids {
        out.push((format!("settings of {u}"), node.get_settings(u).await));
    }
    for u in [1, 3, 7, 8, 9, 10] {
        let friends = node
            .keyed(reqwest::Method::GET, &friends_path(u), None)
            .await;
        out.push((format!("friends of {u}"), friends));
    }
    let viewers = [
        Who::Anonymous,
        Who::User(7),
        Who::User(10),
        Who::User(11),
        Who::Key(READ_KEY),
        Who::User(2),
        Who::User(4),
    ];
    for who in viewers {
        out.push((
            format!("lookup as {who:?}"),
            Value::Array(node.lookup_as(&who, &ids).await),
        ));
    }
    out
}

fn stop(mut server: Running) {
    server.signal("TERM");
    server.wait_for_log("last snapshot written");
    assert!(
        server.wait_exit(),
        "exit 0 after SIGTERM: {:?}",
        server.logs
    );
}

/// Settings (visibility, an invisibility with and without an end, its frozen `lastOnline`)
/// and friendships (pushed in pairs and as a replaced list) are in the snapshot: after a
/// graceful restart every settings answer, friend list and viewer's lookup is the same,
/// watchers are shown the same, and later changes apply to the restored state.
#[tokio::test]
async fn settings_and_friendships_survive_a_restart() {
    if skip_unless_memory("snapshots belong to the memory backend (CONTRACT section 7)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("presence.snapshot");
    let cfg = config(&snapshot);
    let server = start(command(cfg.path()));
    let node = Node::of(&server);

    for u in 1..=5 {
        node.heartbeat(u, json!({"location": format!("Place {u}")}))
            .await;
    }
    node.heartbeat(2, json!({"placeId": 1818, "gameId": GAME}))
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    let until = rfc3339(now + 3_600_000 + 321);
    node.patch_settings(1, json!({"visibility": "friends"}))
        .await;
    node.keyed(
        reqwest::Method::PUT,
        &settings_path(2),
        Some(json!({"visibility": "nobody", "invisible": true})),
    )
    .await;
    node.patch_settings(3, json!({"invisible": true, "invisibleUntil": until}))
        .await;
    node.patch_settings(4, json!({"invisible": true})).await;
    node.patch_settings(6, json!({"visibility": "friends"}))
        .await;
    // Active after the invisibility began: what others see stays frozen.
    tokio::time::sleep(Duration::from_millis(20)).await;
    node.heartbeat(4, json!({"location": "Moved"})).await;
    node.keyed(
        reqwest::Method::POST,
        FRIENDSHIPS,
        Some(json!({"add": [[1, 7], [8, 1], [3, 7]]})),
    )
    .await;
    node.keyed(
        reqwest::Method::PUT,
        &friends_path(9),
        Some(json!({"userIds": [1, 10]})),
    )
    .await;

    let before = state_of(&node).await;
    // The state is what was set (a restart of nothing would keep nothing).
    let find = |name: &str| before.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(find("friends of 1"), json!({"userIds": [7, 8, 9]}));
    assert_eq!(find("friends of 10"), json!({"userIds": [9]}));
    assert_eq!(find("settings of 1")["visibility"], "friends");
    assert_eq!(find("settings of 3")["invisible"], true);
    let anonymous = find("lookup as Anonymous");
    assert_eq!(anonymous[0], never_seen(1));
    let frozen = &anonymous[3];
    assert_eq!(frozen["lastLocation"], "", "{frozen}");
    let reader = find(&format!("lookup as {:?}", Who::Key(READ_KEY)));
    assert_ne!(frozen["lastOnline"], reader[3]["lastOnline"]);

    stop(server);
    assert!(snapshot.is_file());
    let server = start(command(cfg.path()));
    let node = Node::of(&server);
    let after = state_of(&node).await;
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(is, was, "{name} after the restart");
    }

    // Watchers are shown the restored decisions, and changes apply to the restored state.
    let mut friend = node.sse_as(&Who::User(7), &[1]).await;
    let as_friend = find("lookup as User(7)").as_array().unwrap()[..1].to_vec();
    assert_eq!(friend.event().await.entries(), as_friend);
    let mut stranger = node.sse_as(&Who::User(11), &[1]).await;
    assert_eq!(stranger.event().await.entries(), vec![never_seen(1)]);
    node.keyed(
        reqwest::Method::POST,
        FRIENDSHIPS,
        Some(json!({"remove": [[7, 1]], "add": [[1, 11]]})),
    )
    .await;
    assert_eq!(friend.event().await.entries(), vec![never_seen(1)]);
    assert_eq!(
        stranger.event().await.entries(),
        node.lookup_as(&Who::User(11), &[1]).await
    );
    assert_eq!(
        node.keyed(reqwest::Method::GET, &friends_path(1), None)
            .await,
        json!({"userIds": [8, 9, 11]})
    );
    stop(server);
}

/// A second app on the same Redis and key prefix as `first`: another node of one
/// deployment.
async fn another_node(first: &TestApp) -> TestApp {
    let prefix = first.settings.redis.key_prefix.clone();
    let app = spawn_app_with(|s| {
        privacy_settings(s);
        s.presence.sweep_interval = Duration::from_millis(100);
        s.redis.key_prefix = prefix;
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// On Redis, "a change through one node reaches watchers on every node": settings through
/// `PATCH` and `PUT`, friendships through `POST` and `PUT`, made on either node, are what
/// lookups and watchers on the other are shown; the end of an `invisibleUntil` reaches
/// watchers on both; a hidden user's activity reaches no blind watcher on either node.
#[tokio::test]
async fn a_change_through_one_node_is_seen_on_the_other() {
    if skip_unless_redis("two nodes sharing one Redis") {
        return;
    }
    let a = spawn_app_with(|s| {
        privacy_settings(s);
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    a.until_ready(Duration::from_secs(10)).await;
    let b = another_node(&a).await;
    let (u, v, w) = (1, 2, 3);
    a.heartbeat(u, json!({"location": "Home"})).await;
    let real = b.seen_as(&Who::Key(READ_KEY), u).await;
    assert_eq!(a.seen_as(&Who::Anonymous, u).await, real);

    // Watchers on b, and one on a.
    let (mut anon_b, first) = Watch::open(&b, &Who::Anonymous, &[u], false).await;
    assert_eq!(first, vec![real.clone()]);
    let (mut v_b, _) = Watch::open(&b, &Who::User(v), &[u], true).await;
    let (mut w_b, _) = Watch::open(&b, &Who::User(w), &[u], false).await;
    let (mut reader_b, _) = Watch::open(&b, &Who::Key(READ_KEY), &[u], true).await;
    let (mut w_a, _) = Watch::open(&a, &Who::User(w), &[u], true).await;

    // PATCH through a: friends-only, nobody a friend yet.
    let answer = a.set_settings(u, json!({"visibility": "friends"})).await;
    assert_eq!(b.get_settings(u).await, answer);
    for who in [Who::Anonymous, Who::User(v), Who::User(w)] {
        assert_eq!(b.seen_as(&who, u).await, never_seen(u), "on b as {who:?}");
    }
    for (name, watch) in [
        ("anonymous on b", &mut anon_b),
        ("v on b", &mut v_b),
        ("w on b", &mut w_b),
        ("w on a", &mut w_a),
    ] {
        assert_eq!(watch.expect(name).await, vec![never_seen(u)], "{name}");
    }
    reader_b
        .silent(Duration::from_millis(500), "a reader sees no change")
        .await;

    // Friends through a, seen on b.
    a.befriend(&[(u, v)]).await;
    assert_eq!(b.friends_of(u).await, vec![v]);
    assert_eq!(b.seen_as(&Who::User(v), u).await, real);
    assert_eq!(v_b.expect("befriended through a").await, vec![real.clone()]);

    // A list replaced through b, seen on a and by watchers on both.
    assert_eq!(b.replace_friends(u, &[w]).await, vec![]);
    assert_eq!(a.friends_of(v).await, Vec::<u64>::new());
    assert_eq!(a.friends_of(w).await, vec![u]);
    assert_eq!(v_b.expect("dropped through b").await, vec![never_seen(u)]);
    assert_eq!(w_b.expect("listed through b").await, vec![real.clone()]);
    assert_eq!(w_a.expect("listed through b").await, vec![real.clone()]);
    assert_eq!(a.seen_as(&Who::User(w), u).await, real);

    // Activity while hidden from some: only the ones who see it are told, on both nodes.
    a.heartbeat(u, json!({"location": "Moved"})).await;
    let moved = a.seen_as(&Who::Key(READ_KEY), u).await;
    assert_eq!(w_b.expect("moved").await, vec![moved.clone()]);
    assert_eq!(w_a.expect("moved").await, vec![moved.clone()]);
    assert_eq!(reader_b.expect("moved").await, vec![moved.clone()]);
    anon_b
        .silent(Duration::from_millis(700), "hidden activity")
        .await;
    v_b.silent(Duration::ZERO, "hidden activity").await;

    // Invisible for a while, through PUT on b: the friend on both nodes is shown it, and
    // then the end of it.
    let end = b.now_ms() + 2_500;
    let answer = b
        .put_settings(
            u,
            json!({"invisible": true, "invisibleUntil": rfc3339(end)}),
        )
        .await;
    assert_eq!(a.get_settings(u).await, answer);
    let invisible = invisible_to_others(u, moved["lastOnline"].as_str().unwrap());
    assert_eq!(a.seen_as(&Who::User(w), u).await, invisible);
    assert_eq!(w_b.expect("invisible").await, vec![invisible.clone()]);
    assert_eq!(w_a.expect("invisible").await, vec![invisible.clone()]);
    assert_eq!(
        w_b.expect("the end of invisibility").await,
        vec![moved.clone()]
    );
    assert_eq!(
        w_a.expect("the end of invisibility").await,
        vec![moved.clone()]
    );
    assert!(b.now_ms() >= end);
    assert_eq!(b.get_settings(u).await["invisible"], false);
    assert_eq!(b.seen_as(&Who::User(w), u).await, moved);
    anon_b
        .silent(Duration::from_millis(500), "hidden throughout")
        .await;
    reader_b
        .silent(Duration::ZERO, "the reader saw the real entry throughout")
        .await;
}
