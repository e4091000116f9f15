//! Prometheus metrics: requests by route and status, their latency, requests in flight,
//! present users by type, tracked users, heartbeats, expiries and the sweeper's run time,
//! snapshot failures and the time of the last good one, and restarts of background tasks.
//!
//! Recording is a lock-free increment or a read-locked lookup of an existing series; the
//! gauges about the store are read only when `/metrics` is scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::presence::memory::store::SweepReport;
use crate::presence::Counts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

/// The background tasks whose restarts are counted.
pub const BACKGROUND_TASKS: [&str; 3] = ["sweeper", "snapshot", "housekeeping"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// Every metric the server exports, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    users: Family<TypeLabels, Gauge>,
    tracked: Gauge,
    game_servers: Gauge,
    heartbeats: Counter,
    expired: Counter,
    sweeps: Histogram,
    snapshot_failures: Counter,
    snapshot_last_success: Gauge<f64, AtomicU64>,
    restarts: Family<TaskLabels, Counter>,
    streams: Gauge,
    watched: Gauge,
    deliveries: Counter,
    /// The hub's delivery count at the last scrape (the counter moves by the difference).
    deliveries_seen: parking_lot::Mutex<u64>,
    resume_users: Gauge,
    /// Handles for the hot series, made once: a 200 of a hot route skips the family maps.
    hot: Vec<HotRoute>,
}

#[derive(Debug)]
struct HotRoute {
    route: &'static str,
    ok: Counter,
    duration: Histogram,
}

impl Metrics {
    /// `hot_routes` are the routes whose 200s are counted without a map lookup.
    pub fn new(hot_routes: &[&'static str]) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            durations.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests whose head has been read and whose answer is not yet made",
            in_flight.clone(),
        );
        let users = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "presence_users",
            "Users holding a session, by presence type, as of the last sweep",
            users.clone(),
        );
        let tracked = Gauge::default();
        registry.register(
            "presence_tracked_users",
            "Users held, present or Offline (on Redis: keys in its database, see the README)",
            tracked.clone(),
        );
        let game_servers = Gauge::default();
        registry.register(
            "presence_game_servers",
            "Live game servers, as of the last sweep",
            game_servers.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "presence_heartbeats",
            "Heartbeats recorded (register-app-presence calls that succeeded)",
            heartbeats.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "presence_expired",
            "Users the sweeper flipped Offline after their heartbeat TTL",
            expired.clone(),
        );
        let sweeps = Histogram::new(exponential_buckets(0.000_001, 4.0, 14));
        registry.register(
            "presence_sweep_duration_seconds",
            "Time taken by each run of the sweeper",
            sweeps.clone(),
        );
        let snapshot_failures = Counter::default();
        registry.register(
            "presence_snapshot_failures",
            "Snapshot writes that failed (the previous snapshot stays in place)",
            snapshot_failures.clone(),
        );
        let snapshot_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "presence_snapshot_last_success_timestamp_seconds",
            "Unix time of the last snapshot written, or of start-up before the first one",
            snapshot_last_success.clone(),
        );
        let restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "presence_background_restarts",
            "Background tasks restarted after a panic, by task",
            restarts.clone(),
        );
        for task in BACKGROUND_TASKS {
            let _created = restarts.get_or_create(&TaskLabels { task });
        }
        let streams = Gauge::default();
        registry.register(
            "presence_streams_open",
            "Live streams and WebSockets open on this node",
            streams.clone(),
        );
        let watched = Gauge::default();
        registry.register(
            "presence_watched_users",
            "Users watched by this node's streams",
            watched.clone(),
        );
        let resume_users = Gauge::default();
        registry.register(
            "presence_stream_resume_users",
            "Users held in the records of closed streams, for resuming them (bounded by stream.max_resume_users)",
            resume_users.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "presence_stream_deliveries",
            "Changed entries handed to this node's streams (one per stream per change, before coalescing)",
            deliveries.clone(),
        );
        let hot = hot_routes
            .iter()
            .map(|&route| HotRoute {
                route,
                ok: requests
                    .get_or_create(&RequestLabels { route, status: 200 })
                    .clone(),
                duration: durations.get_or_create(&RouteLabels { route }).clone(),
            })
            .collect();
        Self {
            hot,
            registry,
            requests,
            durations,
            in_flight,
            users,
            tracked,
            game_servers,
            heartbeats,
            expired,
            sweeps,
            snapshot_failures,
            snapshot_last_success,
            restarts,
            streams,
            watched,
            deliveries,
            deliveries_seen: parking_lot::Mutex::new(0),
            resume_users,
        }
    }

    /// The live streams' state, from the node's hub: streams open, users watched, users
    /// held for resuming closed streams, and the hub's running count of deliveries.
    pub fn live(&self, streams: usize, watched: usize, resume_users: usize, deliveries: u64) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.streams.set(gauge(streams));
        self.watched.set(gauge(watched));
        self.resume_users.set(gauge(resume_users));
        let mut seen = self.deliveries_seen.lock();
        self.deliveries.inc_by(deliveries.saturating_sub(*seen));
        *seen = (*seen).max(deliveries);
    }

    /// One answered request. `route` is a fixed name, so the series stay few.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        if let Some(hot) = self.hot.iter().find(|h| h.route == route) {
            if status == 200 {
                hot.ok.inc();
            } else {
                self.requests
                    .get_or_create(&RequestLabels { route, status })
                    .inc();
            }
            hot.duration.observe(seconds);
            return;
        }
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.durations
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub fn swept(&self, report: &SweepReport, seconds: f64) {
        self.expired.inc_by(report.expired as u64);
        self.sweeps.observe(seconds);
    }

    /// A snapshot was written (or, at start-up, loaded) at `unix_seconds`.
    pub fn snapshot_written(&self, unix_seconds: f64) {
        self.snapshot_last_success.set(unix_seconds);
    }

    pub fn snapshot_failed(&self) {
        self.snapshot_failures.inc();
    }

    /// A background task panicked and is being restarted; `task` is one of
    /// [`BACKGROUND_TASKS`].
    pub fn background_restart(&self, task: &'static str) {
        self.restarts.get_or_create(&TaskLabels { task }).inc();
    }

    /// The text exposition, with the presence gauges set from `counts` (kept as they were
    /// when `None`).
    pub fn render(&self, counts: Option<&Counts>) -> String {
        if let Some(counts) = counts {
            for (kind, count) in counts.sessions {
                self.users
                    .get_or_create(&TypeLabels {
                        r#type: kind.as_str(),
                    })
                    .set(count);
            }
            self.tracked.set(counts.tracked);
            self.game_servers.set(counts.game_servers);
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A request counted in `http_requests_in_flight`; dropping it ends the count, also when
/// the request is abandoned.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Store;
    use std::time::Duration;

    #[test]
    fn the_exposition_names_every_metric() {
        let metrics = Metrics::new(&["/v1/presence/users"]);
        metrics.request("/v1/presence/users", 200, 0.001);
        metrics.request("/v1/presence/users", 400, 0.001);
        metrics.request("/elsewhere", 200, 0.001);
        metrics.heartbeat();
        let held = metrics.in_flight();
        drop(metrics.in_flight());
        metrics.swept(
            &SweepReport {
                expired: 3,
                ..Default::default()
            },
            0.0001,
        );
        metrics.snapshot_failed();
        metrics.snapshot_written(1_800_000_000.5);
        metrics.background_restart("sweeper");
        let store = Store::new(Duration::from_secs(60), Duration::from_secs(1), None);
        metrics.live(2, 5, 3, 4);
        metrics.live(2, 5, 3, 7);
        let text = metrics.render(Some(&Counts::of_store(&store)));
        for expected in [
            r#"http_requests_total{route="/v1/presence/users",status="200"} 1"#,
            r#"http_requests_total{route="/v1/presence/users",status="400"} 1"#,
            r#"http_requests_total{route="/elsewhere",status="200"} 1"#,
            r#"http_request_duration_seconds_count{route="/v1/presence/users"} 2"#,
            "http_request_duration_seconds_bucket",
            r#"presence_users{type="Online"} 0"#,
            r#"presence_users{type="InGame"} 0"#,
            r#"presence_users{type="InStudio"} 0"#,
            "presence_tracked_users 0",
            "presence_heartbeats_total 1",
            "presence_expired_total 3",
            "presence_sweep_duration_seconds_count 1",
            "presence_snapshot_failures_total 1",
            "presence_snapshot_last_success_timestamp_seconds 1800000000.5",
            r#"presence_background_restarts_total{task="sweeper"} 1"#,
            r#"presence_background_restarts_total{task="snapshot"} 0"#,
            "http_requests_in_flight 1",
            "presence_streams_open 2",
            "presence_watched_users 5",
            "presence_stream_deliveries_total 7",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        drop(held);
        assert!(metrics.render(None).contains("http_requests_in_flight 0"));
    }
}
