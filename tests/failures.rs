#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Faults of the environment are visible: a snapshot that cannot be written is counted and
//! the time of the last good one stops moving, through the real server's `/metrics`.
mod common;

use std::time::Duration;

use common::*;

/// The value of an unlabelled (or fully labelled) series in the `/metrics` text.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

const FAILURES: &str = "presence_snapshot_failures_total";
const LAST_SUCCESS: &str = "presence_snapshot_last_success_timestamp_seconds";

#[tokio::test]
async fn a_failing_snapshot_is_counted_and_its_last_success_stops_moving() {
    if common::redis::skip_unless_memory(
        "snapshots belong to the memory backend; persistence.* does not apply on Redis",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data");
    let app = spawn_app_with(|s| {
        s.persistence.enabled = true;
        s.persistence.path = folder.join("presence.snapshot");
        s.persistence.snapshot_interval = Duration::from_millis(20);
    })
    .await;
    app.heartbeat(1, serde_json::json!({})).await;

    // Healthy: writes succeed and the last success keeps moving.
    assert_eq!(metric(&app, FAILURES).await, 0.0);
    let started = metric(&app, LAST_SUCCESS).await;
    assert!(started > 1.6e9, "start-up counts as a success: {started}");
    eventually(Duration::from_secs(10), || async {
        (metric(&app, LAST_SUCCESS).await > started).then_some(())
    })
    .await;

    // The folder disappears (an unmounted volume, a cleanup gone wrong): every write fails.
    std::fs::remove_dir_all(&folder).unwrap();
    eventually(Duration::from_secs(10), || async {
        (metric(&app, FAILURES).await >= 2.0).then_some(())
    })
    .await;
    let stuck = metric(&app, LAST_SUCCESS).await;
    let failures = metric(&app, FAILURES).await;
    eventually(Duration::from_secs(10), || async {
        (metric(&app, FAILURES).await > failures).then_some(())
    })
    .await;
    assert_eq!(metric(&app, LAST_SUCCESS).await, stuck);
    // Requests are still served meanwhile.
    assert_eq!(app.presence_of(1).await["userPresenceType"], "Online");

    // The folder comes back: writes succeed again, with no restart.
    std::fs::create_dir_all(&folder).unwrap();
    eventually(Duration::from_secs(10), || async {
        (metric(&app, LAST_SUCCESS).await > stuck).then_some(())
    })
    .await;
    assert!(folder.join("presence.snapshot").is_file());
    app.stop().await;
}

#[tokio::test]
async fn background_restarts_are_exported_for_every_task() {
    let app = spawn_app().await;
    for task in ["sweeper", "snapshot", "housekeeping"] {
        let series = format!("presence_background_restarts_total{{task=\"{task}\"}}");
        assert_eq!(metric(&app, &series).await, 0.0);
    }
}
