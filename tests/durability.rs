//! Snapshots through the real binary: restarts, crashes, deadlines that pass while the
//! server is down, and files that must be refused and left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::process::*;
use common::redis::skip_unless_memory;
use presence_server::auth::Authenticator;
use presence_server::presence::memory::snapshot as persistence;
use presence_server::presence::time::{Mono, WallMillis};
use presence_server::presence::{Heartbeat, Now, Store, UserId};
use serde_json::{json, Value};

const SECRET: &str = "durability-secret";
/// Why this file is skipped on the Redis backends.
const MEMORY_ONLY: &str =
    "snapshots belong to the memory backend; on Redis, presence lives in Redis and persistence.* does not apply (CONTRACT section 7)";

/// A server config whose snapshot lives at `snapshot`.
fn config(snapshot: &Path, extra: &str) -> tempfile::NamedTempFile {
    config_file(&format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"2s\"\n\
         [auth]\njwt_secret = \"{SECRET}\"\n\
         [persistence]\npath = \"{}\"\n{extra}\n\
         [[places]]\nid = 1818\nuniverse_id = 13058\nroot_place_id = 1818\nname = \"Crossroads\"\n",
        snapshot.display()
    ))
}

struct Dir {
    _dir: tempfile::TempDir,
    snapshot: PathBuf,
}

fn snapshot_dir() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state/presence.snapshot");
    Dir {
        _dir: dir,
        snapshot,
    }
}

async fn heartbeat(addr: &str, user: u64, body: Value) {
    let jwt = Authenticator::new(SECRET)
        .mint(UserId::new(user).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/presence/register-app-presence"))
        .bearer_auth(jwt)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn presences(addr: &str, ids: &[u64]) -> Value {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/presence/users"))
        .json(&json!({ "userIds": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn stop(mut server: Running) {
    server.signal("TERM");
    assert!(
        server.wait_exit(),
        "exit status 0 after SIGTERM: {:?}",
        server.logs
    );
}

/// Starting must fail; returns what it printed.
fn refused(cfg: &Path) -> String {
    let (ok, stderr) = run_to_end(command(cfg));
    assert!(!ok, "start-up should have failed: {stderr}");
    stderr
}

#[tokio::test]
async fn a_graceful_restart_keeps_every_user_exactly() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let server = start(command(cfg.path()));
    let addr = server.addr.clone();
    heartbeat(&addr, 1, json!({"location": "Xbox"})).await;
    heartbeat(
        &addr,
        2,
        json!({"placeId": 1818, "gameId": "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11"}),
    )
    .await;
    heartbeat(&addr, 3, json!({"location": "Studio", "placeId": 1818})).await;
    heartbeat(
        &addr,
        4,
        json!({"placeId": 77, "universeId": 5, "location": "Obby"}),
    )
    .await;
    heartbeat(&addr, 5, json!({"location": "Phone"})).await;
    heartbeat(&addr, 5, json!({"disconnect": true})).await;
    let ids = [1, 2, 3, 4, 5, 6];
    let before = presences(&addr, &ids).await;
    let mut server = server;
    server.signal("TERM");
    // The last snapshot is logged at info (periodic ones only at debug), with its path and
    // how many users it holds.
    server.wait_for_log("last snapshot written");
    let line = server.logs.last().unwrap().clone();
    assert!(line.contains("users=5"), "{line}");
    assert!(line.contains(&dir.snapshot.display().to_string()), "{line}");
    assert!(
        server.wait_exit(),
        "exit status 0 after SIGTERM: {:?}",
        server.logs
    );
    assert!(dir.snapshot.is_file());

    let server = start(command(cfg.path()));
    let after = presences(&server.addr, &ids).await;
    assert_eq!(before, after);
    let types: Vec<_> = after["userPresences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userPresenceType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["Online", "InGame", "InStudio", "InGame", "Offline", "Offline"]
    );
    assert!(server
        .logs
        .iter()
        .any(|l| l.contains("snapshot loaded") && l.contains("users=5")));
    stop(server);
}

#[tokio::test]
async fn after_sigkill_the_last_snapshot_is_kept() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "snapshot_interval = \"100ms\"");
    let mut server = start(command(cfg.path()));
    heartbeat(&server.addr, 8, json!({"location": "Crashed"})).await;
    let before = presences(&server.addr, &[8]).await;
    // Wait until a periodic snapshot holds the heartbeat: read the file back as a restart
    // would, until user 8 is in it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !snapshot_holds(&dir.snapshot, 8, "Crashed") {
        assert!(Instant::now() < deadline, "no snapshot holds the heartbeat");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal("KILL");
    assert!(!server.wait_exit(), "SIGKILL is not a clean exit");

    let server = start(command(cfg.path()));
    assert_eq!(presences(&server.addr, &[8]).await, before);
    stop(server);
}

#[tokio::test]
async fn a_user_whose_deadline_passes_while_the_server_is_down_comes_back_offline() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let ttl = Duration::from_millis(800);
    let cfg = config(&dir.snapshot, "");
    let cfg_text = std::fs::read_to_string(cfg.path()).unwrap();
    let cfg_text = format!("{cfg_text}\n[presence]\nheartbeat_ttl = \"800ms\"\n");
    let cfg = config_file(&cfg_text);
    let server = start(command(cfg.path()));
    heartbeat(&server.addr, 9, json!({"placeId": 1818})).await;
    let before = presences(&server.addr, &[9]).await;
    stop(server);
    assert_eq!(before["userPresences"][0]["userPresenceType"], "InGame");
    // The deadline is a wall-clock time written in the snapshot, and it has to pass while
    // no server runs: nothing but the clock can move it, so this waits for the clock, until
    // lastOnline + heartbeat_ttl is behind it.
    let last_online = before["userPresences"][0]["lastOnline"].as_str().unwrap();
    let last_online = chrono::DateTime::parse_from_rfc3339(last_online).unwrap();
    let deadline = SystemTime::from(last_online) + ttl;
    while SystemTime::now() <= deadline {
        std::thread::sleep(Duration::from_millis(10));
    }

    let server = start(command(cfg.path()));
    let after = presences(&server.addr, &[9]).await;
    let p = &after["userPresences"][0];
    assert_eq!(p["userPresenceType"], "Offline");
    assert_eq!(p["lastLocation"], "Crossroads");
    assert_eq!(p["lastOnline"], before["userPresences"][0]["lastOnline"]);
    assert_eq!(p["placeId"], Value::Null);
    stop(server);
}

#[tokio::test]
async fn a_user_still_present_after_a_quick_restart_stays_present() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let server = start(command(cfg.path()));
    heartbeat(&server.addr, 10, json!({"location": "Web"})).await;
    stop(server);
    let server = start(command(cfg.path()));
    let after = presences(&server.addr, &[10]).await;
    assert_eq!(after["userPresences"][0]["userPresenceType"], "Online");
    stop(server);
}

/// A valid snapshot file with one user in it.
async fn valid_snapshot(dir: &Dir, cfg: &Path) -> Vec<u8> {
    let server = start(command(cfg));
    heartbeat(&server.addr, 11, json!({})).await;
    stop(server);
    std::fs::read(&dir.snapshot).unwrap()
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_start_up_and_is_left_in_place() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let mut bytes = valid_snapshot(&dir, cfg.path()).await;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&dir.snapshot, &bytes).unwrap();
    let stderr = refused(cfg.path());
    assert!(
        stderr.contains(&dir.snapshot.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("checksum"), "{stderr}");
    assert_eq!(std::fs::read(&dir.snapshot).unwrap(), bytes);

    std::fs::write(&dir.snapshot, b"not a snapshot at all").unwrap();
    let stderr = refused(cfg.path());
    assert!(stderr.contains("not a presence snapshot"), "{stderr}");
    assert_eq!(
        std::fs::read(&dir.snapshot).unwrap(),
        b"not a snapshot at all"
    );
}

#[tokio::test]
async fn a_truncated_snapshot_stops_start_up_and_is_left_in_place() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let bytes = valid_snapshot(&dir, cfg.path()).await;
    let truncated = &bytes[..bytes.len() - 10];
    std::fs::write(&dir.snapshot, truncated).unwrap();
    let stderr = refused(cfg.path());
    assert!(
        stderr.contains(&dir.snapshot.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(std::fs::read(&dir.snapshot).unwrap(), truncated);
}

#[tokio::test]
async fn a_snapshot_of_another_version_stops_start_up_and_is_left_in_place() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let mut bytes = valid_snapshot(&dir, cfg.path()).await;
    let other = persistence::VERSION + 1;
    bytes[8..12].copy_from_slice(&other.to_le_bytes());
    std::fs::write(&dir.snapshot, &bytes).unwrap();
    let stderr = refused(cfg.path());
    assert!(stderr.contains(&format!("version {other}")), "{stderr}");
    assert_eq!(std::fs::read(&dir.snapshot).unwrap(), bytes);
}

#[test]
fn an_unwritable_snapshot_path_is_a_clear_start_up_error() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let cfg = config(&file.path().join("presence.snapshot"), "");
    let stderr = refused(cfg.path());
    assert!(stderr.contains("persistence.path"), "{stderr}");
    assert!(
        stderr.contains(&file.path().display().to_string()),
        "{stderr}"
    );
}

/// Whether the snapshot at `path`, read as a restart reads it, has `user` at `location`.
fn snapshot_holds(path: &Path, user: u64, location: &str) -> bool {
    let store = Store::new(Duration::from_secs(60), Duration::from_secs(1), None);
    if persistence::load(&store, path, wall_now(0)).is_err() {
        return false;
    }
    let view = store
        .get_many(&[UserId::new(user).unwrap()], Mono(0))
        .remove(0);
    view.last_online.is_some() && view.last_location == location
}

/// Now by the wall clock, less `ago_ms`, on a monotonic clock that starts at zero.
fn wall_now(ago_ms: i64) -> Now {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Now {
        mono: Mono(0),
        wall: WallMillis(ms - ago_ms),
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_snapshot_path_is_refused_until_the_first_stops() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let mut first = start(command(cfg.path()));
    let lock = dir.snapshot.with_file_name("presence.snapshot.lock");
    let pid = first.child.id().to_string();
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), pid);
    heartbeat(&first.addr, 12, json!({"location": "First"})).await;

    let stderr = try_start(command(cfg.path()))
        .err()
        .expect("a second server on the same path must not start");
    assert!(
        stderr.contains(&dir.snapshot.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert!(stderr.contains(&lock.display().to_string()), "{stderr}");

    // While the first shuts down, a second is refused for as long as the lock is held; the
    // lock is let go only after the last snapshot is written, so the second, once it
    // starts, sees the first's user (the periodic snapshot is 30s away: only the last
    // snapshot can hold it).
    first.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        match try_start(command(cfg.path())) {
            Ok(second) => break second,
            Err(stderr) => assert!(stderr.contains("in use by another"), "{stderr}"),
        }
        assert!(Instant::now() < deadline, "the lock was never released");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(first.wait_exit(), "{:?}", first.logs);
    let after = presences(&second.addr, &[12]).await;
    assert_eq!(after["userPresences"][0]["userPresenceType"], "Online");
    assert_eq!(after["userPresences"][0]["lastLocation"], "First");
    let pid = second.child.id().to_string();
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), pid);
    stop(second);
}

#[cfg(unix)]
#[test]
fn a_snapshot_path_that_is_not_a_regular_file_is_refused_without_reading_it() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    std::fs::create_dir_all(dir.snapshot.parent().unwrap()).unwrap();
    let cfg = config(&dir.snapshot, "");

    // A FIFO with no writer: opening it to read would wait for one forever.
    let made = std::process::Command::new("mkfifo")
        .arg(&dir.snapshot)
        .status()
        .unwrap();
    assert!(made.success());
    let stderr = try_start(command(cfg.path())).err().expect("refused");
    assert!(
        stderr.contains(&dir.snapshot.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("a FIFO, not a regular file"), "{stderr}");
    use std::os::unix::fs::FileTypeExt as _;
    let left = std::fs::symlink_metadata(&dir.snapshot).unwrap();
    assert!(left.file_type().is_fifo(), "the FIFO is left in place");

    // A device that never ends: it must not be read at all.
    std::fs::remove_file(&dir.snapshot).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &dir.snapshot).unwrap();
    let stderr = try_start(command(cfg.path())).err().expect("refused");
    assert!(
        stderr.contains(&dir.snapshot.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("a character device"), "{stderr}");

    // A directory.
    std::fs::remove_file(&dir.snapshot).unwrap();
    std::fs::create_dir(&dir.snapshot).unwrap();
    let stderr = try_start(command(cfg.path())).err().expect("refused");
    assert!(stderr.contains("a directory"), "{stderr}");
}

#[tokio::test]
async fn after_a_restart_users_past_retention_are_gone_and_the_others_go_on_time() {
    if skip_unless_memory(MEMORY_ONLY) {
        return;
    }
    let dir = snapshot_dir();
    std::fs::create_dir_all(dir.snapshot.parent().unwrap()).unwrap();
    // A snapshot written by a server that kept Offline users forever: user 21 left an hour
    // ago, user 22 nine seconds ago.
    let store = Store::new(Duration::from_secs(60), Duration::from_secs(1), None);
    let user = |n| UserId::new(n).unwrap();
    store.heartbeat(user(21), Heartbeat::Disconnect, wall_now(3_600_000));
    store.heartbeat(user(22), Heartbeat::Disconnect, wall_now(9_000));
    persistence::write(&store, &dir.snapshot, wall_now(0)).unwrap();

    let cfg = config(
        &dir.snapshot,
        "[presence]\noffline_retention = \"10s\"\nsweep_interval = \"100ms\"",
    );
    let started = Instant::now();
    let server = start(command(cfg.path()));
    assert!(
        server.logs.iter().any(|l| l.contains("snapshot loaded")
            && l.contains("users=1")
            && l.contains("forgotten=1")),
        "{:?}",
        server.logs
    );
    // Past retention already: never restored.
    let gone = lookup(&server.addr, 21).await;
    assert_eq!(gone["lastOnline"], "0001-01-01T00:00:00.000Z");
    assert_eq!(
        lookup(&server.addr, 22).await["userPresenceType"],
        "Offline"
    );
    // Due one second after the restart; it used to be kept a whole retention (10s) more.
    loop {
        let p = lookup(&server.addr, 22).await;
        if p["lastOnline"] == "0001-01-01T00:00:00.000Z" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "user 22 is still held: {p}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(server);
}
