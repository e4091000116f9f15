//! Snapshots through the real binary: restarts, crashes, deadlines that pass while the
//! server is down, and files that must be refused and left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::process::*;
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use serde_json::{json, Value};

const SECRET: &str = "durability-secret";

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
    stop(server);
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
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "snapshot_interval = \"100ms\"");
    let mut server = start(command(cfg.path()));
    let written_after = SystemTime::now();
    heartbeat(&server.addr, 8, json!({"location": "Crashed"})).await;
    let before = presences(&server.addr, &[8]).await;
    // Wait for a snapshot written after the heartbeat (one interval, polled).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let modified = std::fs::metadata(&dir.snapshot).and_then(|m| m.modified());
        if modified.is_ok_and(|m| m > written_after + Duration::from_millis(50)) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot was written");
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
    let dir = snapshot_dir();
    let ttl = Duration::from_millis(800);
    let cfg = config(&dir.snapshot, "");
    let cfg_text = std::fs::read_to_string(cfg.path()).unwrap();
    let cfg_text = format!("{cfg_text}\n[presence]\nheartbeat_ttl = \"800ms\"\n");
    let cfg = config_file(&cfg_text);
    let server = start(command(cfg.path()));
    let sent = Instant::now();
    heartbeat(&server.addr, 9, json!({"placeId": 1818})).await;
    let before = presences(&server.addr, &[9]).await;
    stop(server);
    assert_eq!(before["userPresences"][0]["userPresenceType"], "InGame");
    // The deadline has to pass in real time while nothing runs.
    if let Some(left) = ttl.checked_sub(sent.elapsed()) {
        std::thread::sleep(left + Duration::from_millis(50));
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
    let dir = snapshot_dir();
    let cfg = config(&dir.snapshot, "");
    let mut bytes = valid_snapshot(&dir, cfg.path()).await;
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&dir.snapshot, &bytes).unwrap();
    let stderr = refused(cfg.path());
    assert!(stderr.contains("version 2"), "{stderr}");
    assert_eq!(std::fs::read(&dir.snapshot).unwrap(), bytes);
}

#[test]
fn an_unwritable_snapshot_path_is_a_clear_start_up_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let cfg = config(&file.path().join("presence.snapshot"), "");
    let stderr = refused(cfg.path());
    assert!(stderr.contains("persistence.path"), "{stderr}");
    assert!(
        stderr.contains(&file.path().display().to_string()),
        "{stderr}"
    );
}
