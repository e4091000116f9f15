//! Is a game server's bulk report worth it? One `PUT /v1/game-servers/{gameId}` listing 700
//! players against the 700 `register-app-presence` heartbeats those players would send
//! with their own Bearer credentials, over HTTP, alternated in one run.
//!
//! The presence server (`Application::build`, 1 worker, in this process, memory backend)
//! is driven from one client thread. Each round times:
//!
//! - **heartbeats**: 700 heartbeats of 700 distinct users, each with its own credential,
//!   over C keep-alive connections (64 by default, as in `benches/http.rs`), each connection
//!   sending its share one after the other; from the first write to the last answer;
//! - **report**: one `PUT` of the same server listing the same 700 other users (what a game
//!   server sends every few seconds: every player renewed), over one keep-alive connection;
//! - **new server**: one `PUT` of a server never seen, listing 700 users never seen (every
//!   player joins), over the same connection.
//!
//! The order of the three changes every round. Medians of the rounds are compared: the
//! ratio report/heartbeats is the cost of one bulk report against the heartbeats it
//! replaces (the load generator shares the cores with the server in both).
//!
//! Run: `cargo bench --bench game_servers`. Prints a table and writes it as JSON to
//! `target/bench-game-servers.json`. Environment:
//!
//! - `BENCH_CONNECTIONS`: keep-alive connections for the heartbeats (default 64);
//! - `BENCH_PLAYERS`: players per report and heartbeats per round (default 700);
//! - `BENCH_ROUNDS`: measured rounds (default 200), after `BENCH_WARMUP_ROUNDS` (20);
//! - `BENCH_REDIS_URL`: also run the rounds against the presence server on the Redis
//!   backend at that URL (key prefix `bench-games:`), alternated with the memory backend.
//!   For its rows the bench also reads Redis's own CPU time and the commands it processed
//!   (`INFO`) around every measured step, and gives them per step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use presence_server::auth::{sha256_hex, Authenticator};
use presence_server::config::{Backend, ServiceKeySettings};
use presence_server::presence::UserId;
use presence_server::{Application, Settings};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use support::{env_number, exchange, json_path, write_json};

const SECRET: &str = "game-servers-bench-secret";
const SERVICE_KEY: &str = "game-servers-bench-key-0123456789abcdef";
const REGISTER: &str = "/v1/presence/register-app-presence";
const HEARTBEAT_BODY: &str = r#"{"location":"Website","placeId":0}"#;
const PLACE_ID: i64 = 1818;
const BENCH_PREFIX: &str = "bench-games:";

/// Heartbeating users are `1..=players`; the renewed server's players start here, and the
/// new servers' players after them.
const REPORTED_BASE: u64 = 1_000_000;
const NEW_BASE: u64 = 2_000_000;

const HEARTBEATS: &str = "heartbeats";
const REPORT: &str = "report";
const NEW_SERVER: &str = "new server";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let config = Config::from_env();
    let redis_url = std::env::var("BENCH_REDIS_URL").ok();
    let servers = Servers::start(redis_url.as_deref());
    let auth = Authenticator::new(SECRET);

    println!(
        "game servers: {} players per report, {} connections for heartbeats, {} rounds \
         after {} warm-up rounds; server 1 worker",
        config.players, config.connections, config.rounds, config.warmup_rounds
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime");
    let mut results = Vec::new();
    rt.block_on(async {
        let mut targets = Vec::new();
        for &(backend, addr) in &servers.addrs {
            let mut target = Target::connect(backend, addr, &auth, &config).await;
            if backend == "redis" {
                target.redis = redis_url.as_deref().and_then(RedisStats::connect);
            }
            targets.push(target);
        }
        let total = config.warmup_rounds + config.rounds;
        for round in 0..total {
            for target in &mut targets {
                target.round(round, round >= config.warmup_rounds).await;
            }
        }
        for target in targets {
            results.push(target.summary());
        }
    });
    servers.stop();

    print_table(&results, &config);
    let json = to_json(&results, &config);
    let path = json_path("bench-game-servers.json");
    match write_json(&path, &json) {
        Ok(()) => println!("\nresults written to {}", path.display()),
        Err(e) => eprintln!("\ncannot write {}: {e}", path.display()),
    }
}

struct Config {
    connections: usize,
    players: u64,
    rounds: usize,
    warmup_rounds: usize,
}

impl Config {
    fn from_env() -> Self {
        Self {
            connections: env_number("BENCH_CONNECTIONS", 64.0).max(1.0) as usize,
            players: env_number("BENCH_PLAYERS", 700.0).clamp(1.0, 700.0) as u64,
            rounds: env_number("BENCH_ROUNDS", 200.0).max(1.0) as usize,
            warmup_rounds: env_number("BENCH_WARMUP_ROUNDS", 20.0).max(0.0) as usize,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// The presence server on the memory backend, and on Redis when asked, served by one actix
/// system on a thread of its own.
struct Servers {
    addrs: Vec<(&'static str, SocketAddr)>,
    handles: Vec<ServerHandle>,
    thread: JoinHandle<()>,
}

impl Servers {
    fn start(redis_url: Option<&str>) -> Self {
        let mut all = vec![("memory", settings())];
        if let Some(url) = redis_url {
            let mut on_redis = settings();
            on_redis.store.backend = Backend::Redis;
            on_redis.redis.url = url.to_owned();
            on_redis.redis.key_prefix = BENCH_PREFIX.into();
            on_redis.validate().expect("bench settings must be valid");
            all.push(("redis", on_redis));
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-servers".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let mut running = Vec::new();
                    let mut started = Vec::new();
                    for (backend, settings) in all {
                        let app = Application::build(settings).expect("the server builds");
                        started.push((backend, app.local_addr(), app.handle()));
                        running.push(actix_web::rt::spawn(app.run_until_stopped()));
                    }
                    tx.send(started).expect("main waits for the servers");
                    for run in running {
                        run.await
                            .expect("a server task panicked")
                            .expect("a server failed");
                    }
                });
            })
            .expect("cannot start the server thread");
        let started = rx.recv().expect("the servers did not start");
        Self {
            addrs: started.iter().map(|&(b, addr, _)| (b, addr)).collect(),
            handles: started.into_iter().map(|(_, _, h)| h).collect(),
            thread,
        }
    }

    fn stop(self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to stop the servers");
        rt.block_on(async {
            for handle in self.handles {
                handle.stop(true).await;
            }
        });
        self.thread.join().expect("the server thread panicked");
    }
}

fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.server.workers = 1;
    settings.server.shutdown_timeout = Duration::from_secs(2);
    settings.auth.jwt_secret = SECRET.into();
    settings.auth.service_keys.push(ServiceKeySettings {
        name: "bench".into(),
        sha256: sha256_hex(SERVICE_KEY),
        scopes: vec!["game-servers".into()],
    });
    settings.persistence.enabled = false;
    // As in `benches/http.rs`: limits on, far above the load.
    settings.rate_limit.register_per_second = 1_000_000;
    settings.rate_limit.register_burst = 1_000_000;
    settings.rate_limit.lookup_per_second = 1_000_000;
    settings.rate_limit.lookup_burst = 1_000_000;
    settings.validate().expect("bench settings must be valid");
    settings
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

fn request(method: &str, path: &str, header: Option<String>, body: &str) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(header) = header {
        request.push_str(&header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    request.into_bytes()
}

fn report(game: uuid::Uuid, first: u64, players: u64) -> Vec<u8> {
    let ids: Vec<String> = (first..first + players).map(|n| n.to_string()).collect();
    let body = format!(r#"{{"placeId":{PLACE_ID},"players":[{}]}}"#, ids.join(","));
    request(
        "PUT",
        &format!("/v1/game-servers/{game}"),
        Some(format!("x-api-key: {SERVICE_KEY}")),
        &body,
    )
}

/// One game id per (backend, round): a fixed pattern, so that reruns send the same bytes.
fn game_id(backend: usize, n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(
        0x6a3e_0000_0000_4000_8000_0000_0000_0000 | (backend as u128) << 64 | u128::from(n),
    )
}

// ---------------------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------------------

/// One server under test: its connections, its requests and the times measured.
struct Target {
    backend: &'static str,
    index: usize,
    players: u64,
    heartbeats: Arc<Vec<Vec<u8>>>,
    connections: Vec<TcpStream>,
    reporter: TcpStream,
    renewed: Vec<u8>,
    times: Vec<(&'static str, Vec<Duration>)>,
    /// Redis CPU seconds and commands of each measure, summed over the measured rounds.
    redis: Option<RedisStats>,
    redis_spent: [(f64, f64); 3],
    buf: Vec<u8>,
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).await.expect("connects");
    conn.set_nodelay(true).ok();
    conn
}

impl Target {
    async fn connect(
        backend: &'static str,
        addr: SocketAddr,
        auth: &Authenticator,
        config: &Config,
    ) -> Self {
        let heartbeats = (1..=config.players)
            .map(|n| {
                let user = UserId::new(n).expect("user ids start at 1");
                let token = auth
                    .mint(user, Duration::from_secs(3600))
                    .expect("a credential is minted");
                request(
                    "POST",
                    REGISTER,
                    Some(format!("Authorization: Bearer {token}")),
                    HEARTBEAT_BODY,
                )
            })
            .collect();
        let mut connections = Vec::new();
        for _ in 0..config.connections {
            connections.push(connect(addr).await);
        }
        let index = usize::from(backend != "memory");
        Self {
            backend,
            index,
            players: config.players,
            heartbeats: Arc::new(heartbeats),
            connections,
            reporter: connect(addr).await,
            renewed: report(game_id(index, 0), REPORTED_BASE, config.players),
            times: [HEARTBEATS, REPORT, NEW_SERVER]
                .into_iter()
                .map(|what| (what, Vec::new()))
                .collect(),
            redis: None,
            redis_spent: [(0.0, 0.0); 3],
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// The three measures, in an order that turns every round.
    async fn round(&mut self, round: usize, measured: bool) {
        for k in 0..3 {
            let which = (round + k) % 3;
            let before = self.redis.as_mut().and_then(RedisStats::read);
            let took = match which {
                0 => self.heartbeats().await,
                1 => {
                    let renewed = std::mem::take(&mut self.renewed);
                    let took = self.put(&renewed).await;
                    self.renewed = renewed;
                    took
                }
                _ => {
                    let first = NEW_BASE + round as u64 * self.players;
                    let fresh = report(game_id(self.index, 1 + round as u64), first, self.players);
                    self.put(&fresh).await
                }
            };
            let after = self.redis.as_mut().and_then(RedisStats::read);
            if measured {
                self.times[which].1.push(took);
                if let (Some(b), Some(a)) = (before, after) {
                    // Less the `INFO` call itself.
                    self.redis_spent[which].0 += a.0 - b.0;
                    self.redis_spent[which].1 += a.1 - b.1 - 1.0;
                }
            }
        }
    }

    /// One request on the reporter's connection.
    async fn put(&mut self, request: &[u8]) -> Duration {
        let start = Instant::now();
        let status = exchange(&mut self.reporter, request, &mut self.buf)
            .await
            .expect("the report is answered");
        let took = start.elapsed();
        assert_eq!(
            status,
            200,
            "{} report: {}",
            self.backend,
            String::from_utf8_lossy(&self.buf)
        );
        took
    }

    /// The heartbeats of every player, spread over the connections.
    async fn heartbeats(&mut self) -> Duration {
        let connections = self.connections.len();
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for (c, mut conn) in self.connections.drain(..).enumerate() {
            let requests = Arc::clone(&self.heartbeats);
            tasks.spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                for i in (c..requests.len()).step_by(connections) {
                    let status = exchange(&mut conn, &requests[i], &mut buf)
                        .await
                        .expect("a heartbeat is answered");
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&buf));
                }
                conn
            });
        }
        while let Some(conn) = tasks.join_next().await {
            self.connections
                .push(conn.expect("a heartbeat connection panicked"));
        }
        start.elapsed()
    }

    fn summary(self) -> Summary {
        let rounds = self.times[0].1.len().max(1) as f64;
        let redis = self.redis.is_some().then(|| {
            self.redis_spent
                .map(|(cpu, commands)| (cpu * 1e6 / rounds, commands / rounds))
        });
        let medians = self
            .times
            .into_iter()
            .map(|(what, mut times)| {
                times.sort_unstable();
                let median = times.get(times.len() / 2).copied().unwrap_or_default();
                let p90 = times.get(times.len() * 9 / 10).copied().unwrap_or_default();
                (what, median, p90)
            })
            .collect();
        Summary {
            backend: self.backend,
            medians,
            redis,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

struct Summary {
    backend: &'static str,
    /// (measure, median, p90) of the measured rounds.
    medians: Vec<(&'static str, Duration, Duration)>,
    /// Redis CPU µs and commands per measure, in the order of `medians`.
    redis: Option<[(f64, f64); 3]>,
}

impl Summary {
    fn median(&self, what: &str) -> Duration {
        self.medians
            .iter()
            .find(|m| m.0 == what)
            .map_or(Duration::ZERO, |m| m.1)
    }

    fn ratio(&self, what: &str) -> f64 {
        self.median(what).as_secs_f64() / self.median(HEARTBEATS).as_secs_f64()
    }
}

fn print_table(results: &[Summary], config: &Config) {
    println!();
    println!(
        "{:<8} {:<28} {:>12} {:>12} {:>14} {:>14} {:>10}",
        "backend", "measure", "median µs", "p90 µs", "/ heartbeats", "Redis CPU µs", "commands"
    );
    println!("{}", "-".repeat(104));
    for summary in results {
        for (i, &(what, median, p90)) in summary.medians.iter().enumerate() {
            let (cpu, commands) = summary.redis.map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |r| (format!("{:.0}", r[i].0), format!("{:.0}", r[i].1)),
            );
            let label = match what {
                HEARTBEATS => format!("{} heartbeats", config.players),
                REPORT => format!("report of {} (renewed)", config.players),
                _ => format!("report of {} (new server)", config.players),
            };
            println!(
                "{:<8} {:<28} {:>12.1} {:>12.1} {:>14.4} {cpu:>14} {commands:>10}",
                summary.backend,
                label,
                median.as_secs_f64() * 1e6,
                p90.as_secs_f64() * 1e6,
                summary.ratio(what),
            );
        }
    }
    println!();
    for summary in results {
        println!(
            "{}: report/heartbeats {:.4} (1/{:.0}), new server/heartbeats {:.4} (1/{:.0})",
            summary.backend,
            summary.ratio(REPORT),
            1.0 / summary.ratio(REPORT),
            summary.ratio(NEW_SERVER),
            1.0 / summary.ratio(NEW_SERVER),
        );
    }
}

fn to_json(results: &[Summary], config: &Config) -> serde_json::Value {
    serde_json::json!({
        "players": config.players,
        "connections": config.connections,
        "rounds": config.rounds,
        "warmup_rounds": config.warmup_rounds,
        "server_workers": 1,
        "results": results.iter().map(|s| serde_json::json!({
            "backend": s.backend,
            "measures": s.medians.iter().enumerate().map(|(i, &(what, median, p90))| serde_json::json!({
                "measure": what,
                "median_us": median.as_secs_f64() * 1e6,
                "p90_us": p90.as_secs_f64() * 1e6,
                "over_heartbeats": s.ratio(what),
                "redis_cpu_us": s.redis.map(|r| r[i].0),
                "redis_commands": s.redis.map(|r| r[i].1),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A connection of its own to the Redis server under test, for `INFO`.
struct RedisStats(redis::Connection);

impl RedisStats {
    fn connect(url: &str) -> Option<Self> {
        let client = redis::Client::open(url).ok()?;
        client.get_connection().ok().map(Self)
    }

    /// Redis's CPU seconds (user + system) and commands processed so far.
    fn read(&mut self) -> Option<(f64, f64)> {
        let info: String = redis::cmd("INFO").arg("all").query(&mut self.0).ok()?;
        let field = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
                .trim()
                .parse()
                .ok()
        };
        Some((
            field("used_cpu_user")? + field("used_cpu_sys")?,
            field("total_commands_processed")?,
        ))
    }
}
