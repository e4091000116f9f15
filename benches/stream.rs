//! Live presence (CONTRACT section 8): Server-Sent Event streams, or WebSockets, under load.
//!
//! The server runs as a child process, the release binary `presence-server serve` that
//! cargo builds next to this bench, with `server.workers = 1`, persistence off, rate limits
//! off, no per-address connection limit, `presence.heartbeat_ttl = 1h` (so that nothing
//! expires during a run), `server.keep_alive = 1h` (so that idle connections stay) and room
//! for every subscriber in `stream.max_connections`. A child
//! process is what lets the bench read the server's own memory and CPU time from
//! `/proc/<pid>`, apart from the clients'. A fresh server is started for each subscriber
//! count N, and it is driven in this order:
//!
//! 0. (on a server of its own) N plain keep-alive connections each make one lookup of the
//!    same 50 users as a subscriber and then stay idle: the server RSS they add is what any
//!    idle HTTP/1.1 connection costs, the baseline of the stream's own cost;
//! 1. every user of the pool heartbeats once (so every watched user has an entry);
//! 2. **memory**: the server's RSS before and after N subscribers open their stream and
//!    receive their first event (each watches 50 distinct users drawn from the pool, so a
//!    user has about `N * 50 / pool` watchers), divided by N;
//! 3. **latency**: a paced driver sends `BENCH_CHANGES_PER_SEC` heartbeats a second, each
//!    moving a random pool user to the location `t<µs since the bench started>`; every
//!    subscriber parses each entry it receives and records now minus that time;
//! 4. **deliveries**: the driver heartbeats as fast as its keep-alive connections allow
//!    (every heartbeat a change); entries received by all subscribers per second, and per
//!    second of server CPU time. The entries the server's hub hands to watchers are computed
//!    from the watch lists (the sum of each changed user's watchers: what
//!    `Hub::deliveries()` counts, which a child process does not expose); received can be
//!    lower, because a watcher's pending changes to one user are coalesced;
//!
//!    Then (4b) **deliveries with some users friends-only** (this package's binary only,
//!    when `BENCH_FRIENDS_ONLY_PERCENT` is above 0, default 10): that share of the pool is
//!    made visible to friends only (`PUT /v1/users/{id}/presence-settings` with a
//!    `privacy` service key the bench configures), and phase 4 runs again: the
//!    subscribers are anonymous, so those users' changes are decided per watcher and send
//!    nothing. The received per server CPU-second is compared with phase 4's, in the same
//!    run;
//! 5. **heartbeats with N idle subscribers against none**: 64 keep-alive connections send
//!    refresh heartbeats (the same location every time) of 4096 users, in two variants:
//!    users nobody watches, and watched users that only refresh. Each variant is measured
//!    with no subscriber (A) and with N idle ones (B), alternately A/B `BENCH_AB_ROUNDS`
//!    times; the ratio is the median over rounds of B / A (each round's A and B are a few
//!    seconds apart), next to the medians of all A and all B runs.
//!
//! Subscribers all live on `BENCH_SUBSCRIBER_THREADS` tokio worker thread(s) (default 1), the
//! driver on one more; with the server's worker that is more busy threads than the machine
//! may have cores: the bench reports the CPU time of the server, of the subscriber
//! thread(s), of the driver and of the whole machine (`/proc/stat`, every process) so that a
//! saturated side, or a machine busy with something else, shows.
//!
//! Run: `cargo bench --bench stream`. Results are printed as a table and written as JSON to
//! `target/bench-stream.json`. Environment:
//!
//! - `BENCH_SUBSCRIBERS`: comma-separated subscriber counts (default `1000,10000`);
//! - `BENCH_POOL`: users the subscribers watch and the driver changes (default 10000);
//! - `BENCH_CHANGES_PER_SEC`: the latency phase's change rate (default 1000);
//! - `BENCH_SECONDS`: measured seconds of the latency and the deliveries phases (default
//!   10), each after `BENCH_WARMUP_SECONDS` of warm-up (default 1);
//! - `BENCH_DRIVER_CONNECTIONS`: keep-alive connections of the change driver (default 16);
//! - `BENCH_AB_SECONDS`: measured seconds of each A or B heartbeat run (default 3);
//! - `BENCH_AB_ROUNDS`: A/B pairs per variant (default 3);
//! - `BENCH_SUBSCRIBER_THREADS`: client threads for all subscribers (default 1);
//! - `BENCH_FRIENDS_ONLY_PERCENT`: the share of the pool made friends-only in phase 4b
//!   (default 10; 0 skips it);
//! - `BENCH_SERVER_BIN`: the server binary (default: the one cargo built for this bench);
//! - `BENCH_SERVER_CONFIG`: the config file to start it with (default: this package's
//!   `config.toml`; give an older build its own);
//! - `BENCH_STREAM_KIND`: `sse` (default) or `ws`: the subscribers are WebSockets, each of
//!   which upgrades `GET /v1/presence/ws`, sends `{"subscribe":[its 50 users]}` once the
//!   `101` has come and counts as open once the answer (the 50 entries) has arrived; every
//!   phase then runs with them as it does with event streams.
//!
//! The bench raises its soft open-files limit to the hard one; N subscribers need N client
//! sockets here and N server sockets in the child.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use memchr::memmem;
use parking_lot::Mutex;
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use support::{env_number, exchange, invalid, json_path, write_json};

const SECRET: &str = "stream-bench-secret";
/// The service key (scope `privacy`) phase 4b pushes settings with.
const PRIVACY_KEY: &str = "stream-bench-privacy-key-0123456789abcdef";
const REGISTER: &str = "/v1/presence/register-app-presence";
const STREAM: &str = "/v1/presence/stream";
const WS: &str = "/v1/presence/ws";
const WATCHED_PER_SUBSCRIBER: usize = 50;
/// Users of the "not watched" refresh load: far above any pool.
const UNWATCHED_BASE: u64 = 1_000_000_000;
/// Users of each refresh load.
const REFRESH_USERS: u64 = 4096;
/// Keep-alive connections of each refresh load.
const REFRESH_CONNECTIONS: usize = 64;
const REFRESH_LOCATION: &str = "Website";
/// Streams being opened at once (each until its first event).
const OPENING_AT_ONCE: usize = 256;
/// How long N subscribers may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// A heartbeat not answered within this is an error, and its connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency samples kept per phase; later ones are still counted.
const MAX_SAMPLES: usize = 20_000_000;
/// What every entry starts with, as `/v1/presence/users` writes it.
const ENTRY_START: &[u8] = b"{\"userPresenceType\"";
/// Where a driver-stamped location starts.
const STAMP_START: &[u8] = b"\"lastLocation\":\"t";
/// The name of the subscribers' runtime threads.
const SUBSCRIBER_THREAD: &str = "bench-subs";
/// The name of the driver's runtime thread.
const DRIVER_THREAD: &str = "bench-driver";

static BASE: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench started: the stamps of the driver and the subscribers'
/// clock, in one process.
fn micros() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn main() {
    // Cargo passes `--bench` (and maybe a filter); there is nothing to choose.
    micros();
    let config = Config::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = config.subscribers.iter().max().copied().unwrap_or(0) as u64 + 512;
            if limit < needed {
                eprintln!(
                    "warning: the open-files limit is {limit}, but {needed} sockets are needed \
                     (raise the hard limit: ulimit -Hn)"
                );
            }
        }
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
    let bin = server_binary();
    println!(
        "Live presence {}: {cores} cores, server `{}` (1 worker, child process), \
         subscribers {:?} watching {WATCHED_PER_SUBSCRIBER} of {} users each, \
         {} subscriber thread(s), {} driver connections",
        config.kind.name(),
        bin.display(),
        config.subscribers,
        config.pool,
        config.subscriber_threads,
        config.driver_connections,
    );

    let auth = Authenticator::new(SECRET);
    let pool_tokens: Arc<Vec<String>> =
        Arc::new((1..=config.pool).map(|n| mint(&auth, n)).collect());
    let refresh_unwatched: Arc<Vec<Vec<u8>>> = Arc::new(
        (1..=REFRESH_USERS)
            .map(|n| heartbeat(&mint(&auth, UNWATCHED_BASE + n), REFRESH_LOCATION))
            .collect(),
    );
    let refresh_watched: Arc<Vec<Vec<u8>>> = Arc::new(
        pool_tokens
            .iter()
            .take(REFRESH_USERS as usize)
            .map(|token| heartbeat(token, REFRESH_LOCATION))
            .collect(),
    );

    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(DRIVER_THREAD)
        .enable_all()
        .build()
        .expect("the driver's runtime");
    let mut results = Vec::new();
    for &n in &config.subscribers {
        let lists = watch_lists(n, config.pool);
        let mut watchers = vec![0u32; config.pool as usize + 1];
        for list in &lists {
            for &user in list {
                watchers[user as usize] += 1;
            }
        }
        let watchers = Arc::new(watchers);
        // What each subscriber sends: its event stream's request, or its WebSocket's
        // subscribe frame.
        let requests: Arc<Vec<Vec<u8>>> = Arc::new(
            lists
                .iter()
                .map(|l| match config.kind {
                    Kind::Ws => subscribe_frame(l),
                    _ => stream_request(l),
                })
                .collect(),
        );

        // 0. The same number of plain keep-alive connections, each after a lookup of the
        //    same 50 users, on a server of their own: what any idle HTTP/1.1 connection costs.
        let keepalive_rss = {
            let lookups: Arc<Vec<Vec<u8>>> =
                Arc::new(lists.iter().map(|l| lookup_request(l)).collect());
            let server = Server::start(n + 64, &bin);
            let mut idle = Subscribers::new(config.subscriber_threads, Kind::KeepAlive);
            std::thread::sleep(Duration::from_millis(500));
            let before = server.rss_kib();
            idle.open(server.addr, &lookups);
            std::thread::sleep(Duration::from_secs(1));
            let after = server.rss_kib();
            eprintln!("N = {n}: {n} idle keep-alive connections: RSS {before} KiB -> {after} KiB");
            idle.close();
            server.stop();
            (before, after)
        };

        let server = Server::start(n + 64, &bin);
        eprintln!("N = {n}: server pid {} on {}", server.pid(), server.addr);
        let addr = server.addr;
        let mut subs = Subscribers::new(config.subscriber_threads, config.kind);
        let mut result = RunResult::new(n, &watchers, config.pool);
        (
            result.keepalive_rss_before_kib,
            result.keepalive_rss_after_kib,
        ) = keepalive_rss;

        // 1. Every pool user present.
        let populate: Arc<Vec<Vec<u8>>> = Arc::new(
            pool_tokens
                .iter()
                .map(|token| heartbeat(token, REFRESH_LOCATION))
                .collect(),
        );
        let sent = driver.block_on(send_each(addr, populate, config.driver_connections));
        assert_eq!(sent, config.pool, "every pool user heartbeats once");

        // 2. Memory per idle subscriber.
        std::thread::sleep(Duration::from_millis(500));
        let before = server.rss_kib();
        let took = subs.open(addr, &requests);
        std::thread::sleep(Duration::from_secs(1));
        let after = server.rss_kib();
        result.open_seconds = took.as_secs_f64();
        result.rss_before_kib = before;
        result.rss_after_kib = after;
        eprintln!(
            "  {n} streams open in {:.2} s; RSS {before} KiB -> {after} KiB",
            took.as_secs_f64()
        );

        // 3. Latency at a steady change rate.
        eprintln!("  latency at {} changes/s ...", config.changes_per_sec);
        result.latency = Some(measure_changes(
            &driver,
            &server,
            &subs,
            addr,
            &pool_tokens,
            &watchers,
            Some(config.changes_per_sec),
            &config,
        ));

        // 4. Deliveries at the highest change rate.
        eprintln!("  deliveries at the driver's highest rate ...");
        result.deliveries = Some(measure_changes(
            &driver,
            &server,
            &subs,
            addr,
            &pool_tokens,
            &watchers,
            None,
            &config,
        ));
        // 4b. The same with a share of the users friends-only.
        if config.friends_only_percent > 0 && std::env::var_os("BENCH_SERVER_BIN").is_none() {
            eprintln!(
                "  deliveries with {}% of the users friends-only ...",
                config.friends_only_percent
            );
            server.make_friends_only(&driver, config.pool, config.friends_only_percent);
            result.private_deliveries = Some(measure_changes(
                &driver,
                &server,
                &subs,
                addr,
                &pool_tokens,
                &watchers,
                None,
                &config,
            ));
        }
        result.stream_errors = subs.stats.errors.load(Ordering::Relaxed);
        result.first_stream_error = subs.stats.first_error.lock().clone();

        // 5. Refresh heartbeats with N idle subscribers (B) against none (A).
        for round in 0..config.ab_rounds {
            for with in [false, true] {
                if with {
                    subs.open(addr, &requests);
                } else {
                    subs.close();
                }
                let mut order = [
                    (Variant::Unwatched, &refresh_unwatched),
                    (Variant::WatchedRefresh, &refresh_watched),
                ];
                // Which variant runs first after the subscribers open or close alternates
                // between rounds, so that neither always meets the aftermath.
                if round % 2 == 1 {
                    order.reverse();
                }
                for (variant, requests) in order {
                    let outcome = driver.block_on(refresh_load(
                        addr,
                        Arc::clone(requests),
                        config.warmup,
                        config.ab_measure,
                    ));
                    let per_sec = outcome.ok as f64 / config.ab_measure.as_secs_f64();
                    eprintln!(
                        "  round {} {} subscribers, {}: {per_sec:.0} heartbeats/s{}",
                        round + 1,
                        if with { n } else { 0 },
                        variant.name(),
                        if outcome.errors > 0 {
                            format!(" ({} errors)", outcome.errors)
                        } else {
                            String::new()
                        }
                    );
                    result.ab.push(AbRun {
                        round,
                        variant,
                        with_subscribers: with,
                        per_sec,
                        errors: outcome.errors,
                    });
                }
            }
        }
        result.stream_errors = subs.stats.errors.load(Ordering::Relaxed);
        if result.first_stream_error.is_none() {
            result.first_stream_error = subs.stats.first_error.lock().clone();
        }
        subs.close();
        server.stop();
        results.push(result);
    }

    print_table(&results, &config);
    let json = to_json(&results, cores, &config);
    let path = json_path("bench-stream.json");
    match write_json(&path, &json) {
        Ok(()) => println!("\nresults written to {}", path.display()),
        Err(e) => eprintln!("\ncannot write {}: {e}", path.display()),
    }
}

/// What the environment asks for.
struct Config {
    /// Share of the pool phase 4b makes friends-only.
    friends_only_percent: u64,
    subscribers: Vec<usize>,
    pool: u64,
    changes_per_sec: f64,
    warmup: Duration,
    measure: Duration,
    driver_connections: usize,
    ab_measure: Duration,
    ab_rounds: usize,
    subscriber_threads: usize,
    /// What the subscribers open: [`Kind::Stream`] or [`Kind::Ws`].
    kind: Kind,
}

impl Config {
    fn from_env() -> Self {
        let subscribers = std::env::var("BENCH_SUBSCRIBERS")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("BENCH_SUBSCRIBERS: {s:?} is not a count"))
            })
            .collect();
        let pool = env_number("BENCH_POOL", 10_000.0).max(WATCHED_PER_SUBSCRIBER as f64) as u64;
        Self {
            subscribers,
            pool,
            changes_per_sec: env_number("BENCH_CHANGES_PER_SEC", 1000.0).max(1.0),
            warmup: Duration::from_secs_f64(env_number("BENCH_WARMUP_SECONDS", 1.0).max(0.0)),
            measure: Duration::from_secs_f64(env_number("BENCH_SECONDS", 10.0).max(0.1)),
            driver_connections: env_number("BENCH_DRIVER_CONNECTIONS", 16.0).max(1.0) as usize,
            ab_measure: Duration::from_secs_f64(env_number("BENCH_AB_SECONDS", 3.0).max(0.1)),
            ab_rounds: env_number("BENCH_AB_ROUNDS", 3.0).max(1.0) as usize,
            subscriber_threads: env_number("BENCH_SUBSCRIBER_THREADS", 1.0).max(1.0) as usize,
            kind: match std::env::var("BENCH_STREAM_KIND").as_deref() {
                Err(_) | Ok("sse") => Kind::Stream,
                Ok("ws") => Kind::Ws,
                Ok(other) => panic!("BENCH_STREAM_KIND is sse or ws, not {other:?}"),
            },
            friends_only_percent: env_number("BENCH_FRIENDS_ONLY_PERCENT", 10.0).clamp(0.0, 100.0)
                as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server, as a child process
// ---------------------------------------------------------------------------------------

/// This package's `config.toml` with the bench's `privacy` service key, written under
/// `target/` (service keys are set in the file only).
fn own_config() -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let text = std::fs::read_to_string(&shipped).expect("config.toml is readable");
    let key = format!(
        "service_keys = [{{ name = \"bench\", sha256 = \"{}\", scopes = [\"privacy\"] }}]",
        presence_server::auth::sha256_hex(PRIVACY_KEY)
    );
    assert!(
        text.contains("service_keys = []"),
        "config.toml names no service keys"
    );
    let path = json_path("bench-stream-config.toml");
    std::fs::write(&path, text.replacen("service_keys = []", &key, 1))
        .expect("the bench's config file is written");
    path
}

/// `BENCH_SERVER_BIN`, else the binary cargo builds for benches of this package.
fn server_binary() -> PathBuf {
    let bin = std::env::var_os("BENCH_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_presence-server")));
    if !bin.is_file() {
        panic!(
            "the server binary {} is missing: build it with `cargo build --release` (or run \
             `cargo bench --bench stream`, which builds it), or set BENCH_SERVER_BIN",
            bin.display()
        );
    }
    bin
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(max_streams: usize, bin: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Another build (`BENCH_SERVER_BIN`) is given its own config file and only the keys
        // every version knows; this package's binary also lifts the per-address stream limit
        // (every subscriber comes from 127.0.0.1).
        let own = std::env::var_os("BENCH_SERVER_BIN").is_none();
        let config = std::env::var_os("BENCH_SERVER_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(own_config);
        let mut command = Command::new(bin);
        if own {
            command.env("PRESENCE__STREAM__MAX_CONNECTIONS_PER_ADDRESS", "0");
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("PRESENCE__SERVER__BIND", addr.to_string())
            .env("PRESENCE__SERVER__WORKERS", "1")
            .env("PRESENCE__SERVER__MAX_CONNECTIONS_PER_ADDRESS", "0")
            // Idle keep-alive connections stay open for the memory baseline.
            .env("PRESENCE__SERVER__KEEP_ALIVE", "1h")
            .env("PRESENCE__PERSISTENCE__ENABLED", "false")
            .env("PRESENCE__RATE_LIMIT__REGISTER_PER_SECOND", "0")
            .env("PRESENCE__RATE_LIMIT__LOOKUP_PER_SECOND", "0")
            .env("PRESENCE__PRESENCE__HEARTBEAT_TTL", "1h")
            .env("PRESENCE__STREAM__MAX_CONNECTIONS", max_streams.to_string())
            .env("PRESENCE__AUTH__JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited at start-up: {status}");
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Makes every `100 / percent`-th user of `1..=pool` visible to friends only; stops the
    /// bench on any answer but 200.
    fn make_friends_only(&self, driver: &Runtime, pool: u64, percent: u64) {
        let every = (100 / percent.max(1)).max(1);
        let addr = self.addr;
        driver.block_on(async move {
            let mut conn = connect(addr).await.expect("the server accepts");
            let mut buf = Vec::new();
            let body = r#"{"visibility":"friends"}"#;
            for id in (every..=pool).step_by(every as usize) {
                let request = format!(
                    "PUT /v1/users/{id}/presence-settings HTTP/1.1\r\nHost: localhost\r\n\
                     x-api-key: {PRIVACY_KEY}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let status = exchange(&mut conn, request.as_bytes(), &mut buf)
                    .await
                    .expect("an answer");
                assert_eq!(status, 200, "settings: {}", String::from_utf8_lossy(&buf));
            }
        });
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(&format!("/proc/{}/status", self.pid()))
    }

    /// CPU time of all the server's threads so far.
    fn cpu_seconds(&self) -> f64 {
        threads_cpu(&format!("/proc/{}/task", self.pid()))
            .iter()
            .map(|(_, s)| s)
            .sum()
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmRSS` of a `/proc/<pid>/status`, in KiB.
fn rss_kib(status: &str) -> u64 {
    let text = std::fs::read_to_string(status).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Each thread's name and CPU time (seconds on a CPU, from `schedstat`) under a
/// `/proc/<pid>/task` directory.
fn threads_cpu(tasks: &str) -> Vec<(String, f64)> {
    let Ok(dir) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|task| {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), ns / 1e9))
        })
        .collect()
}

/// CPU time of this process's threads whose name starts with `prefix`, so far.
fn own_cpu_seconds(prefix: &str) -> f64 {
    threads_cpu("/proc/self/task")
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, s)| s)
        .sum()
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, in ticks).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

fn mint(auth: &Authenticator, n: u64) -> String {
    let user = UserId::new(n).expect("user ids start at 1");
    auth.mint(user, Duration::from_secs(24 * 3600))
        .expect("a credential is minted")
}

fn heartbeat(token: &str, location: &str) -> Vec<u8> {
    let body = format!(r#"{{"location":"{location}"}}"#);
    format!(
        "POST {REGISTER} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn stream_request(users: &[u64]) -> Vec<u8> {
    let ids: Vec<String> = users.iter().map(u64::to_string).collect();
    format!(
        "GET {STREAM}?userIds={} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        ids.join(",")
    )
    .into_bytes()
}

/// A WebSocket's `{"subscribe":[users]}` as a client sends it: one masked text frame.
fn subscribe_frame(users: &[u64]) -> Vec<u8> {
    let ids: Vec<String> = users.iter().map(u64::to_string).collect();
    let payload = format!(r#"{{"subscribe":[{}]}}"#, ids.join(","));
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask = [0x5a, 0x17, 0xc3, 0x2e];
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// `POST /v1/presence/users` of `users`: an answer about as large as a stream's first event.
fn lookup_request(users: &[u64]) -> Vec<u8> {
    let ids: Vec<String> = users.iter().map(u64::to_string).collect();
    let body = format!(r#"{{"userIds":[{}]}}"#, ids.join(","));
    format!(
        "POST /v1/presence/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// xorshift64: a fixed, cheap sequence.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// For each of `n` subscribers, 50 distinct users of `1..=pool`.
fn watch_lists(n: usize, pool: u64) -> Vec<Vec<u64>> {
    let mut next = rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            let mut list: Vec<u64> = Vec::with_capacity(WATCHED_PER_SUBSCRIBER);
            while list.len() < WATCHED_PER_SUBSCRIBER {
                let user = next() % pool + 1;
                if !list.contains(&user) {
                    list.push(user);
                }
            }
            list
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------

/// What all subscribers saw.
#[derive(Default)]
struct Stats {
    /// Streams that received their first event.
    opened: AtomicU64,
    /// Entries in events after the first.
    entries: AtomicU64,
    /// Events after the first.
    events: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Whether stamped entries are timed.
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
}

impl Stats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().get_or_insert(what);
    }
}

/// N streams (or idle connections) of one kind on their own runtime.
struct Subscribers {
    rt: Runtime,
    kind: Kind,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Subscribers {
    fn new(threads: usize, kind: Kind) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(SUBSCRIBER_THREAD)
            .enable_all()
            .build()
            .expect("the subscribers' runtime");
        Self {
            rt,
            kind,
            tasks: Vec::new(),
            stats: Arc::new(Stats::default()),
        }
    }

    /// Opens one stream (or connection) per request and waits until each received its
    /// first event (or answer).
    fn open(&mut self, addr: SocketAddr, requests: &Arc<Vec<Vec<u8>>>) -> Duration {
        assert!(self.tasks.is_empty(), "open after close");
        let kind = self.kind;
        let start = Instant::now();
        let opened = self.stats.opened.load(Ordering::Relaxed);
        let errors = self.stats.errors.load(Ordering::Relaxed);
        let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        for i in 0..requests.len() {
            let requests = Arc::clone(requests);
            let stats = Arc::clone(&self.stats);
            let gate = Arc::clone(&gate);
            self.tasks.push(self.rt.spawn(async move {
                let done = match kind {
                    Kind::Stream => watch(addr, &requests[i], &stats, gate).await,
                    Kind::Ws => watch_ws(addr, &requests[i], &stats, gate).await,
                    Kind::KeepAlive => hold(addr, &requests[i], &stats, gate).await,
                };
                if let Err(e) = done {
                    stats.error(format!("stream {i}: {e}"));
                }
            }));
        }
        let want = opened + requests.len() as u64;
        loop {
            let now = self.stats.opened.load(Ordering::Relaxed);
            let failed = self.stats.errors.load(Ordering::Relaxed) - errors;
            if now + failed >= want {
                if failed > 0 {
                    eprintln!(
                        "  {failed} streams failed to open: {:?}",
                        self.stats.first_error.lock()
                    );
                }
                break;
            }
            assert!(
                start.elapsed() < OPEN_TIMEOUT,
                "only {} of {} streams opened within {OPEN_TIMEOUT:?}",
                now - opened,
                requests.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// Drops every stream (their sockets reset, so no port is left in TIME_WAIT).
    fn close(&mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        self.rt.block_on(async {
            for task in tasks {
                let _ = task.await;
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// An event stream, read until dropped.
    Stream,
    /// A WebSocket subscribed to its users, read until dropped.
    Ws,
    /// A keep-alive connection that made one request and then idles.
    KeepAlive,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "event streams",
            Kind::Ws => "WebSockets",
            Kind::KeepAlive => "keep-alive connections",
        }
    }
}

/// One keep-alive connection: one request, its whole answer, then idle until dropped.
async fn hold(
    addr: SocketAddr,
    request: &[u8],
    stats: &Stats,
    gate: Arc<Semaphore>,
) -> io::Result<()> {
    let opening = gate.acquire_owned().await.expect("the gate stays open");
    let mut conn = connect(addr).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let status = exchange(&mut conn, request, &mut buf).await?;
    if status != 200 {
        return Err(invalid(&format!("status {status}")));
    }
    drop(buf);
    drop(opening);
    stats.opened.fetch_add(1, Ordering::Relaxed);
    // The server answers nothing more; a read that ends means it closed the connection.
    let mut byte = [0u8; 1];
    let _ = conn.read(&mut byte).await?;
    Err(invalid("the server closed an idle keep-alive connection"))
}

/// One stream: sends its request, checks the answer's head, then reads events until the
/// task is dropped. Lines other than `data: ` (ids, event names, pings, and the chunk
/// sizes of the chunked body) are skipped.
async fn watch(
    addr: SocketAddr,
    request: &[u8],
    stats: &Stats,
    gate: Arc<Semaphore>,
) -> io::Result<()> {
    let mut opening = Some(gate.acquire_owned().await.expect("the gate stays open"));
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    let mut reader = BufReader::with_capacity(4096, stream);
    reader.get_mut().write_all(request).await?;
    let mut line = Vec::with_capacity(1024);
    reader.read_until(b'\n', &mut line).await?;
    if !line.starts_with(b"HTTP/1.1 200") {
        let mut rest = vec![0; 512];
        let n = reader.read(&mut rest).await.unwrap_or(0);
        line.extend_from_slice(&rest[..n]);
        return Err(invalid(&format!(
            "answered {}",
            String::from_utf8_lossy(&line).trim()
        )));
    }
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == b"\r\n" {
            break;
        }
    }
    let mut samples = Vec::new();
    // The body is chunked; an event may span chunks (the server hands large ones over in
    // pieces), so lines are cut from the decoded text.
    let mut text = Vec::with_capacity(8192);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(invalid("the stream ended"));
        }
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| usize::from_str_radix(l.trim(), 16).ok())
            .ok_or_else(|| invalid("a chunk without its size"))?;
        if size == 0 {
            return Err(invalid("the stream ended"));
        }
        let start = text.len();
        text.resize(start + size + 2, 0);
        reader.read_exact(&mut text[start..]).await?;
        text.truncate(start + size);
        let Some(last) = memchr::memrchr(b'\n', &text) else {
            continue;
        };
        for line in text[..=last].split_inclusive(|&b| b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data: ") {
                received(data, &mut opening, stats, &mut samples)?;
            }
        }
        text.drain(..=last);
    }
}

/// Accounts for one `{"userPresences":[...]}` received: the first one (while `opening`)
/// must hold every watched user's entry and opens the stream; the others are counted, and
/// timed while the stats are recording.
fn received(
    data: &[u8],
    opening: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    stats: &Stats,
    samples: &mut Vec<u32>,
) -> io::Result<()> {
    let entries = memmem::find_iter(data, ENTRY_START).count();
    if opening.take().is_some() {
        if entries != WATCHED_PER_SUBSCRIBER {
            return Err(invalid(&format!("the first event holds {entries} entries")));
        }
        stats.opened.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    stats.events.fetch_add(1, Ordering::Relaxed);
    stats.entries.fetch_add(entries as u64, Ordering::Relaxed);
    if stats.recording.load(Ordering::Relaxed) {
        let now = micros();
        samples.clear();
        for at in memmem::find_iter(data, STAMP_START) {
            let digits = &data[at + STAMP_START.len()..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Some(sent) = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                samples.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            }
        }
        let mut kept = stats.latencies_us.lock();
        if kept.len() < MAX_SAMPLES {
            kept.extend_from_slice(samples);
        }
    }
    Ok(())
}

/// One WebSocket: upgrades, sends `subscribe` (a masked frame) once the `101` has come,
/// then reads frames until the task is dropped. The answer to the subscribe is the first
/// `{"userPresences":[...]}`; pings are left unanswered (the server does not ask for pongs).
async fn watch_ws(
    addr: SocketAddr,
    subscribe: &[u8],
    stats: &Stats,
    gate: Arc<Semaphore>,
) -> io::Result<()> {
    let mut opening = Some(gate.acquire_owned().await.expect("the gate stays open"));
    let mut conn = connect(addr).await?;
    let request = format!(
        "GET {WS} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        if let Some(at) = memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_some(&mut conn, &mut buf).await?;
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(invalid(&format!(
            "answered {}",
            String::from_utf8_lossy(&buf[..head]).trim()
        )));
    }
    buf.drain(..head);
    conn.write_all(subscribe).await?;
    let mut samples = Vec::new();
    loop {
        // A whole frame at the front of `buf`: its opcode, where its payload starts and ends.
        let frame = match *buf.as_slice() {
            [first, second, ref rest @ ..] => {
                let (len, at) = match second & 0x7F {
                    126 => match rest {
                        [a, b, ..] => (usize::from(u16::from_be_bytes([*a, *b])), 4),
                        _ => (usize::MAX, 0),
                    },
                    127 => match rest.get(..8) {
                        Some(bytes) => (u64::from_be_bytes(bytes.try_into().unwrap()) as usize, 10),
                        None => (usize::MAX, 0),
                    },
                    n => (usize::from(n), 2),
                };
                (len != usize::MAX && buf.len() >= at + len).then_some((first & 0x0F, at, at + len))
            }
            _ => None,
        };
        let Some((opcode, start, end)) = frame else {
            read_some(&mut conn, &mut buf).await?;
            continue;
        };
        match opcode {
            0x1 => received(&buf[start..end], &mut opening, stats, &mut samples)?,
            0x8 => return Err(invalid("the server closed the WebSocket")),
            _ => {}
        }
        buf.drain(..end);
    }
}

/// Reads what has come into `buf`; an end of file is an error.
async fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(8 * 1024);
    if conn.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Heartbeat driver
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct DriveOutcome {
    /// Heartbeats answered 200 within the measured window.
    ok: u64,
    /// Entries the hub hands to watchers for those heartbeats.
    handed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl DriveOutcome {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn merge(&mut self, other: DriveOutcome) {
        self.ok += other.ok;
        self.handed += other.handed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let conn = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    conn.set_nodelay(true)?;
    socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
    Ok(conn)
}

/// Sends each request once over `connections` connections; the number answered 200.
async fn send_each(addr: SocketAddr, requests: Arc<Vec<Vec<u8>>>, connections: usize) -> u64 {
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut conn = connect(addr).await.expect("a driver connection");
                let mut buf = Vec::with_capacity(4096);
                let mut ok = 0;
                for request in requests.iter().skip(c).step_by(connections) {
                    let status = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        exchange(&mut conn, request, &mut buf),
                    )
                    .await
                    .expect("an answer in time")
                    .expect("an answer");
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&buf));
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.expect("a driver task panicked");
    }
    ok
}

/// Heartbeats of random pool users, each to a new location stamped with its send time,
/// at `rate` a second in all (`None`: as fast as the connections go), from `began` to
/// `end`. Only heartbeats answered within `[start, end)` are counted.
async fn change_load(
    addr: SocketAddr,
    tokens: Arc<Vec<String>>,
    watchers: Arc<Vec<u32>>,
    rate: Option<f64>,
    connections: usize,
    (began, start, end): (Instant, Instant, Instant),
) -> DriveOutcome {
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let tokens = Arc::clone(&tokens);
            let watchers = Arc::clone(&watchers);
            // Each connection sends every `period`, offset so that they interleave.
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            tokio::spawn(async move {
                let mut next_user = rng(0xD1B5_4A32_D192_ED03 ^ ((c as u64 + 1) * 0x9E37));
                let mut outcome = DriveOutcome::default();
                let mut conn: Option<TcpStream> = None;
                let mut buf = Vec::with_capacity(4096);
                let mut due = period.map(|p| began + p.mul_f64(c as f64 / connections as f64));
                loop {
                    if let (Some(at), Some(p)) = (due.as_mut(), period) {
                        tokio::time::sleep_until((*at).into()).await;
                        *at += p;
                    }
                    if Instant::now() >= end {
                        break;
                    }
                    let index = (next_user() % tokens.len() as u64) as usize;
                    let request = heartbeat(&tokens[index], &format!("t{}", micros()));
                    let ok = send_one(addr, &mut conn, &request, &mut buf, &mut outcome).await;
                    let done = Instant::now();
                    if ok && done >= start && done < end {
                        outcome.ok += 1;
                        outcome.handed += u64::from(watchers[index + 1]);
                    }
                }
                outcome
            })
        })
        .collect();
    let mut outcome = DriveOutcome::default();
    for task in tasks {
        outcome.merge(task.await.expect("a driver task panicked"));
    }
    outcome
}

/// Sends `request` on `conn` (connecting first when there is none) and reads its answer;
/// true for a 200. A failure is counted in `outcome`, and a connection that failed is
/// dropped, to be made again on the next call.
async fn send_one(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    request: &[u8],
    buf: &mut Vec<u8>,
    outcome: &mut DriveOutcome,
) -> bool {
    let stream = match conn {
        Some(stream) => stream,
        None => match connect(addr).await {
            Ok(stream) => conn.insert(stream),
            Err(e) => {
                outcome.error(|| format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                return false;
            }
        },
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(stream, request, buf)).await {
        Ok(Ok(200)) => true,
        Ok(Ok(status)) => {
            outcome.error(|| format!("status {status}: {}", String::from_utf8_lossy(buf)));
            false
        }
        Ok(Err(e)) => {
            outcome.error(|| format!("i/o: {e}"));
            *conn = None;
            false
        }
        Err(_) => {
            outcome.error(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
            *conn = None;
            false
        }
    }
}

/// The same pre-built refresh heartbeats over 64 keep-alive connections, as fast as they
/// go, for `warmup` then `measure`; heartbeats answered during `measure` are counted.
async fn refresh_load(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    warmup: Duration,
    measure: Duration,
) -> DriveOutcome {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let tasks: Vec<_> = (0..REFRESH_CONNECTIONS)
        .map(|c| {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut outcome = DriveOutcome::default();
                let mut conn: Option<TcpStream> = None;
                let mut buf = Vec::with_capacity(4096);
                let mut i = c;
                while Instant::now() < end {
                    let request = &requests[i % requests.len()];
                    i += REFRESH_CONNECTIONS;
                    let ok = send_one(addr, &mut conn, request, &mut buf, &mut outcome).await;
                    let done = Instant::now();
                    if ok && done >= start && done < end {
                        outcome.ok += 1;
                    }
                }
                outcome
            })
        })
        .collect();
    let mut outcome = DriveOutcome::default();
    for task in tasks {
        outcome.merge(task.await.expect("a driver task panicked"));
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------

/// What one change phase (latency or deliveries) measured.
struct ChangePhase {
    /// The asked rate, `None` for as fast as possible.
    rate: Option<f64>,
    seconds: f64,
    heartbeats: u64,
    handed: u64,
    received: u64,
    events: u64,
    server_cpu_seconds: f64,
    subscriber_cpu_seconds: f64,
    /// Sorted latencies, in µs.
    latencies_us: Vec<u32>,
    driver_cpu_seconds: f64,
    /// Busy cores of the whole machine (all processes), on average.
    machine_busy_cores: f64,
    driver_errors: u64,
    first_driver_error: Option<String>,
}

impl ChangePhase {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.seconds
    }

    fn server_cores(&self) -> f64 {
        self.server_cpu_seconds / self.seconds
    }

    fn subscriber_cores(&self) -> f64 {
        self.subscriber_cpu_seconds / self.seconds
    }

    /// Entries received per second of server CPU time.
    fn received_per_server_cpu_second(&self) -> f64 {
        self.received as f64 / self.server_cpu_seconds
    }

    fn percentile_us(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p)
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    f64::from(sorted[rank.min(sorted.len()) - 1])
}

#[allow(clippy::too_many_arguments)]
fn measure_changes(
    driver: &Runtime,
    server: &Server,
    subs: &Subscribers,
    addr: SocketAddr,
    tokens: &Arc<Vec<String>>,
    watchers: &Arc<Vec<u32>>,
    rate: Option<f64>,
    config: &Config,
) -> ChangePhase {
    let stats = &subs.stats;
    let start = Instant::now() + config.warmup;
    let end = start + config.measure;
    let load = driver.spawn(change_load(
        addr,
        Arc::clone(tokens),
        Arc::clone(watchers),
        rate,
        config.driver_connections,
        (Instant::now(), start, end),
    ));
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    stats.latencies_us.lock().clear();
    stats.recording.store(rate.is_some(), Ordering::Relaxed);
    let entries0 = stats.entries.load(Ordering::Relaxed);
    let events0 = stats.events.load(Ordering::Relaxed);
    let server0 = server.cpu_seconds();
    let subs0 = own_cpu_seconds(SUBSCRIBER_THREAD);
    let driver0 = own_cpu_seconds(DRIVER_THREAD);
    let machine0 = machine_ticks();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let received = stats.entries.load(Ordering::Relaxed) - entries0;
    let events = stats.events.load(Ordering::Relaxed) - events0;
    let server_cpu = server.cpu_seconds() - server0;
    let subs_cpu = own_cpu_seconds(SUBSCRIBER_THREAD) - subs0;
    let driver_cpu = own_cpu_seconds(DRIVER_THREAD) - driver0;
    let machine1 = machine_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine_busy =
        (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64 * cores;
    stats.recording.store(false, Ordering::Relaxed);
    let outcome = driver.block_on(load).expect("the driver panicked");
    let mut latencies = std::mem::take(&mut *stats.latencies_us.lock());
    latencies.sort_unstable();
    // Let what is still in flight arrive before the next phase.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(e) = &outcome.first_error {
        eprintln!("  driver: {} errors, first: {e}", outcome.errors);
    }
    ChangePhase {
        rate,
        seconds: config.measure.as_secs_f64(),
        heartbeats: outcome.ok,
        handed: outcome.handed,
        received,
        events,
        server_cpu_seconds: server_cpu,
        subscriber_cpu_seconds: subs_cpu,
        driver_cpu_seconds: driver_cpu,
        machine_busy_cores: machine_busy,
        latencies_us: latencies,
        driver_errors: outcome.errors,
        first_driver_error: outcome.first_error,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Unwatched,
    WatchedRefresh,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Unwatched => "refreshes of unwatched users",
            Variant::WatchedRefresh => "refreshes of watched users",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::Unwatched => "unwatched",
            Variant::WatchedRefresh => "watched_refresh",
        }
    }
}

struct AbRun {
    round: usize,
    variant: Variant,
    with_subscribers: bool,
    per_sec: f64,
    errors: u64,
}

/// Everything measured for one subscriber count.
struct RunResult {
    subscribers: usize,
    /// Mean and least watchers of a pool user.
    mean_watchers: f64,
    min_watchers: u32,
    open_seconds: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// RSS of a server of its own around N plain idle keep-alive connections.
    keepalive_rss_before_kib: u64,
    keepalive_rss_after_kib: u64,
    latency: Option<ChangePhase>,
    deliveries: Option<ChangePhase>,
    /// Phase 4b: deliveries with a share of the users friends-only.
    private_deliveries: Option<ChangePhase>,
    ab: Vec<AbRun>,
    stream_errors: u64,
    first_stream_error: Option<String>,
}

impl RunResult {
    fn new(subscribers: usize, watchers: &[u32], pool: u64) -> Self {
        let counts = &watchers[1..];
        Self {
            subscribers,
            mean_watchers: counts.iter().map(|&w| f64::from(w)).sum::<f64>() / pool as f64,
            min_watchers: counts.iter().copied().min().unwrap_or(0),
            open_seconds: 0.0,
            rss_before_kib: 0,
            rss_after_kib: 0,
            keepalive_rss_before_kib: 0,
            keepalive_rss_after_kib: 0,
            latency: None,
            deliveries: None,
            private_deliveries: None,
            ab: Vec::new(),
            stream_errors: 0,
            first_stream_error: None,
        }
    }

    /// Server RSS added per idle subscriber, in KB (1000 bytes).
    fn kb_per_subscriber(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) * 1024.0
            / 1000.0
            / self.subscribers as f64
    }

    /// Server RSS added per idle keep-alive connection (no stream), in KB.
    fn kb_per_keepalive(&self) -> f64 {
        (self.keepalive_rss_after_kib as f64 - self.keepalive_rss_before_kib as f64) * 1024.0
            / 1000.0
            / self.subscribers as f64
    }

    /// Median heartbeats/s of `variant` without and with subscribers, and the median of
    /// each round's with/without ratio (a round's two runs are a few seconds apart, so the
    /// ratio of a round is spared the machine's slower drifts).
    fn ab_medians(&self, variant: Variant) -> (f64, f64, f64) {
        let median_of = |with: bool| {
            let mut values: Vec<f64> = self
                .ab
                .iter()
                .filter(|r| r.variant == variant && r.with_subscribers == with)
                .map(|r| r.per_sec)
                .collect();
            median(&mut values)
        };
        let (none, with) = (median_of(false), median_of(true));
        let runs = |with: bool| {
            self.ab
                .iter()
                .filter(move |r| r.variant == variant && r.with_subscribers == with)
        };
        let mut ratios: Vec<f64> = runs(true)
            .filter_map(|b| {
                runs(false)
                    .find(|a| a.round == b.round)
                    .map(|a| b.per_sec / a.per_sec)
            })
            .collect();
        (none, with, median(&mut ratios))
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn print_table(results: &[RunResult], config: &Config) {
    println!();
    println!(
        "{:<58} {}",
        "measure (server: 1 worker, child process)",
        results
            .iter()
            .map(|r| format!("{:>24}", format!("N = {}", r.subscribers)))
            .collect::<String>()
    );
    println!("{}", "-".repeat(58 + 25 * results.len()));
    let row = |name: &str, cell: &dyn Fn(&RunResult) -> String| {
        println!(
            "{name:<58} {}",
            results
                .iter()
                .map(|r| format!("{:>24}", cell(r)))
                .collect::<String>()
        );
    };
    let na = || "-".to_owned();
    row("watchers per pool user (mean / least)", &|r| {
        format!("{:.1} / {}", r.mean_watchers, r.min_watchers)
    });
    row("streams opened in (s)", &|r| {
        format!("{:.2}", r.open_seconds)
    });
    row("server RSS before / after streams (MiB)", &|r| {
        format!(
            "{:.1} / {:.1}",
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0
        )
    });
    row("server RSS per idle subscriber (KB)  [< 16]", &|r| {
        format!("{:.2}", r.kb_per_subscriber())
    });
    row("  of which any idle keep-alive connection (KB)", &|r| {
        format!("{:.2}", r.kb_per_keepalive())
    });
    row(
        &format!(
            "latency phase: heartbeats/s (asked {})",
            config.changes_per_sec
        ),
        &|r| {
            r.latency
                .as_ref()
                .map_or_else(na, |p| format!("{:.0}", p.per_sec(p.heartbeats)))
        },
    );
    row("latency phase: entries received/s", &|r| {
        r.latency
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.per_sec(p.received)))
    });
    row("heartbeat-to-delivery p50 (µs)", &|r| {
        r.latency
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.percentile_us(50.0)))
    });
    row("heartbeat-to-delivery p99 (µs)", &|r| {
        r.latency
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.percentile_us(99.0)))
    });
    row("latency phase: CPU server/subs/driver/machine", &|r| {
        r.latency.as_ref().map_or_else(na, cpu_cell)
    });
    row("max rate: heartbeats (changes)/s", &|r| {
        r.deliveries
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.per_sec(p.heartbeats)))
    });
    row("max rate: entries handed to watchers/s (computed)", &|r| {
        r.deliveries
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.per_sec(p.handed)))
    });
    row("max rate: entries received/s  [>= 500k]", &|r| {
        r.deliveries
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.per_sec(p.received)))
    });
    row("max rate: entries per event", &|r| {
        r.deliveries.as_ref().map_or_else(na, |p| {
            format!("{:.2}", p.received as f64 / p.events.max(1) as f64)
        })
    });
    row("max rate: CPU server/subs/driver/machine", &|r| {
        r.deliveries.as_ref().map_or_else(na, cpu_cell)
    });
    row("max rate: received per server CPU-second", &|r| {
        r.deliveries
            .as_ref()
            .map_or_else(na, |p| format!("{:.0}", p.received_per_server_cpu_second()))
    });
    row(
        &format!(
            "{}% friends-only: received per server CPU-second",
            config.friends_only_percent
        ),
        &|r| {
            r.private_deliveries
                .as_ref()
                .map_or_else(na, |p| format!("{:.0}", p.received_per_server_cpu_second()))
        },
    );
    row(
        "  ... over all visible  [>= 0.8]",
        &|r| match (&r.private_deliveries, &r.deliveries) {
            (Some(private), Some(all)) => format!(
                "{:.2}",
                private.received_per_server_cpu_second() / all.received_per_server_cpu_second()
            ),
            _ => na(),
        },
    );
    for variant in [Variant::Unwatched, Variant::WatchedRefresh] {
        row(&format!("{}: none / N idle (hb/s)", variant.name()), &|r| {
            let (none, with, _) = r.ab_medians(variant);
            format!("{none:.0} / {with:.0}")
        });
        row(
            &format!("{}: B/A per round, median  [>= 0.95]", variant.name()),
            &|r| format!("{:.3}", r.ab_medians(variant).2),
        );
    }
    row("stream errors", &|r| r.stream_errors.to_string());
    for r in results {
        if let Some(e) = &r.first_stream_error {
            println!(
                "N = {}: first stream error: {}",
                r.subscribers,
                e.escape_debug()
            );
        }
        for p in [&r.latency, &r.deliveries, &r.private_deliveries]
            .into_iter()
            .flatten()
        {
            if let Some(e) = &p.first_driver_error {
                println!(
                    "N = {}: {} driver errors, first: {}",
                    r.subscribers,
                    p.driver_errors,
                    e.escape_debug()
                );
            }
        }
    }
}

/// Cores used by the server, the subscriber thread(s), the driver and the whole machine.
fn cpu_cell(p: &ChangePhase) -> String {
    format!(
        "{:.2}/{:.2}/{:.2}/{:.2}",
        p.server_cores(),
        p.subscriber_cores(),
        p.driver_cpu_seconds / p.seconds,
        p.machine_busy_cores
    )
}

fn phase_json(p: &ChangePhase) -> serde_json::Value {
    let finite = |x: f64| if x.is_finite() { Some(x) } else { None };
    serde_json::json!({
        "asked_changes_per_sec": p.rate,
        "seconds": p.seconds,
        "heartbeats": p.heartbeats,
        "heartbeats_per_sec": p.per_sec(p.heartbeats),
        "handed": p.handed,
        "handed_per_sec": p.per_sec(p.handed),
        "received": p.received,
        "received_per_sec": p.per_sec(p.received),
        "events": p.events,
        "server_cpu_cores": p.server_cores(),
        "subscriber_cpu_cores": p.subscriber_cores(),
        "driver_cpu_cores": p.driver_cpu_seconds / p.seconds,
        "machine_busy_cores": p.machine_busy_cores,
        "received_per_server_cpu_second": finite(p.received_per_server_cpu_second()),
        "latency_samples": p.latencies_us.len(),
        "latency_p50_us": finite(p.percentile_us(50.0)),
        "latency_p99_us": finite(p.percentile_us(99.0)),
        "latency_max_us": p.latencies_us.last(),
        "driver_errors": p.driver_errors,
        "first_driver_error": p.first_driver_error,
    })
}

fn ab_json(r: &RunResult) -> Vec<serde_json::Value> {
    let finite = |x: f64| if x.is_finite() { Some(x) } else { None };
    [Variant::Unwatched, Variant::WatchedRefresh]
        .into_iter()
        .map(|v| {
            let (none, with, ratio) = r.ab_medians(v);
            let runs: Vec<serde_json::Value> =
                r.ab.iter()
                    .filter(|a| a.variant == v)
                    .map(|a| {
                        serde_json::json!({
                            "round": a.round + 1,
                        "with_subscribers": a.with_subscribers,
                            "per_sec": a.per_sec,
                            "errors": a.errors,
                        })
                    })
                    .collect();
            serde_json::json!({
                "variant": v.key(),
                "median_none_per_sec": finite(none),
                "median_with_per_sec": finite(with),
                "ratio_median_per_round": finite(ratio),
                "runs": runs,
            })
        })
        .collect()
}

fn to_json(results: &[RunResult], cores: usize, config: &Config) -> serde_json::Value {
    let finite = |x: f64| if x.is_finite() { Some(x) } else { None };
    serde_json::json!({
        "cores": cores,
        "server_workers": 1,
        "server": "child process",
        "pool": config.pool,
        "watched_per_subscriber": WATCHED_PER_SUBSCRIBER,
        "changes_per_sec": config.changes_per_sec,
        "warmup_seconds": config.warmup.as_secs_f64(),
        "seconds": config.measure.as_secs_f64(),
        "driver_connections": config.driver_connections,
        "ab_seconds": config.ab_measure.as_secs_f64(),
        "ab_rounds": config.ab_rounds,
        "refresh_connections": REFRESH_CONNECTIONS,
        "refresh_users": REFRESH_USERS,
        "subscriber_threads": config.subscriber_threads,
        "kind": config.kind.name(),
        "results": results.iter().map(|r| serde_json::json!({
            "subscribers": r.subscribers,
            "mean_watchers_per_user": r.mean_watchers,
            "least_watchers_per_user": r.min_watchers,
            "open_seconds": r.open_seconds,
            "rss_before_kib": r.rss_before_kib,
            "rss_after_kib": r.rss_after_kib,
            "kb_per_idle_subscriber": finite(r.kb_per_subscriber()),
            "keepalive_rss_before_kib": r.keepalive_rss_before_kib,
            "keepalive_rss_after_kib": r.keepalive_rss_after_kib,
            "kb_per_idle_keepalive_connection": finite(r.kb_per_keepalive()),
            "latency": r.latency.as_ref().map(phase_json),
            "friends_only_deliveries": r.private_deliveries.as_ref().map(phase_json),
            "deliveries": r.deliveries.as_ref().map(phase_json),
            "heartbeats_with_idle_subscribers": ab_json(r),
            "stream_errors": r.stream_errors,
            "first_stream_error": r.first_stream_error,
        })).collect::<Vec<_>>(),
    })
}
