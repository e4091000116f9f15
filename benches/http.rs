//! HTTP load: the real presence server against a bare actix-web server that only parses the
//! same request bodies, under the same keep-alive load, in one process.
//!
//! Both servers get one worker thread. A load generator on its own thread(s) drives C
//! keep-alive connections, each writing a pre-built HTTP/1.1 request and reading the whole
//! response before the next one, and records every request's latency. Two scenarios run
//! against each server, back to back: Bearer heartbeats of a few thousand distinct users
//! (`POST /v1/presence/register-app-presence`), and lookups of 50 ids, about half of them
//! online (`POST /v1/presence/users`). The bare server gets the very same request bytes on
//! the same paths; it deserializes the body into the same request type and answers: `{}`
//! to a heartbeat, and to a lookup the answer the presence server writes, from templates
//! (see `bare_lookup`), so that the lookup ratio measures the presence server's own work.
//! What matters is the presence/bare ratio of one run: the load generator shares the cores
//! with the servers.
//!
//! A third server, "bare + store", is the floor between them: the bare server's framework
//! with what a request cannot skip, the Bearer credential verified and the heartbeat
//! recorded in a memory store of its own; the ids checked, de-duplicated, read from the
//! store and written by the API's own writer (see [`Floor`]). Its throughput over the bare
//! server's is the most a server with this store and this writer can reach; the presence
//! server's over the floor's is what the rest costs (middleware, extractors, rate limits,
//! metrics, request logging). With `BENCH_REDIS_URL`, a "bare + redis" server is the same on
//! the Redis backend (keys of its own): its CPU per request against the memory floor's is
//! what the backend itself costs, with nothing of the presence server's HTTP layer around it.
//!
//! A third scenario follows (CONTRACT section 11): every user of the lookups is made
//! visible to friends only (`PUT /v1/users/{id}/presence-settings` with a `privacy` key),
//! each lookup body gets a signed-in viewer of its own who is a friend of every other id
//! in it (`POST /v1/friendships`), and the same lookups are sent with that viewer's
//! credential: every id then needs the friendship test. Its throughput is compared with
//! the anonymous lookups of the same server in the same run (`signed-in / anonymous`).
//!
//! Each server runs in an actix system of its own, on a thread of its own, started one after
//! the other: the threads that appear while a server starts are its threads (its system's,
//! which runs the tasks it spawns on its runtime, the Redis connection's included; its
//! worker's; its acceptor's; its background threads'). Every row gets the server's own CPU
//! time per request answered, the sum of its threads' (`/proc/self/task/<tid>/schedstat`)
//! over the measured seconds ("node CPU"), and with `BENCH_REDIS_URL` the Redis-backed
//! server's is compared with the memory-backed one's, scenario by scenario.
//!
//! Run: `cargo bench --bench http`. Results are printed as a table and written as JSON to
//! `target/bench-http.json`. Environment:
//!
//! - `BENCH_CONNECTIONS`: keep-alive connections (default 64);
//! - `BENCH_SECONDS`: measured seconds per scenario and server (default 5), after
//!   `BENCH_WARMUP_SECONDS` of warm-up (default 1);
//! - `BENCH_USERS`: distinct heartbeating users (default 4096);
//! - `BENCH_CLIENT_THREADS`: load generator threads (default 1);
//! - `BENCH_ROUNDS`: rounds of the heartbeat and lookup scenarios (default 1), each
//!   running every server in turn; every ratio is taken within a round, and with more than
//!   one round their medians over the rounds are printed too (`medians_over_rounds` in
//!   the JSON);
//! - `BENCH_REDIS_URL`: also run a third server, the presence server on the Redis backend
//!   at that URL (standalone), in the same run. For its rows the bench reads Redis's own
//!   CPU time (`INFO cpu`) over the measured seconds, per request; and it runs
//!   `redis-benchmark` (which must be on the PATH) with the equivalent raw commands against
//!   the same Redis: the heartbeat script by `EVALSHA`, and an `MGET` of 50 records with
//!   their settings keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use presence_server::api::json::{
    entry_encoder, IdItem, LookupRequest, PresencesWriter, RegisterAppPresenceRequest,
};
use presence_server::auth::{sha256_hex, Authenticator};
use presence_server::config::ServiceKeySettings;
use presence_server::presence::privacy::Viewer;
use presence_server::presence::{Clock, Heartbeat, PlaceCatalog, Presence, UserId};
use presence_server::{Application, Settings};
use tokio::net::TcpStream;

use support::{env_number, exchange, json_path, write_json};

const SECRET: &str = "http-bench-secret";
const REGISTER: &str = "/v1/presence/register-app-presence";
const USERS: &str = "/v1/presence/users";
const HEARTBEAT_BODY: &str = r#"{"location":"Website","placeId":0}"#;
const IDS_PER_LOOKUP: usize = 50;
/// Distinct lookup bodies; connections cycle through them.
const LOOKUP_BODIES: usize = 512;
/// A request not answered within this is an error, and its connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Latencies kept per connection; requests beyond are still counted.
const MAX_SAMPLES_PER_CONNECTION: usize = 1 << 20;

const PRESENCE: &str = "presence-server";
const PRESENCE_REDIS: &str = "presence on redis";
const REDIS_BENCHMARK: &str = "redis-benchmark";
const BARE: &str = "bare actix";
const FLOOR: &str = "bare + store";
const FLOOR_REDIS: &str = "bare + redis";
/// The key prefix the bench's Redis server writes under.
const BENCH_PREFIX: &str = "bench-http:";
/// The keys of the "bare + redis" server, apart from the node's.
const BARE_REDIS_PREFIX: &str = "bench-http-bare:";
/// The service key (scope `privacy`) the bench pushes settings and friendships with.
const PRIVACY_KEY: &str = "http-bench-privacy-key-0123456789abcdef";
/// Signed-in viewers of the friends-only scenario: ids far above the heartbeating users.
const VIEWER_BASE: u64 = 1_000_000_000;
const FRIENDS_ONLY: &str = "friends-only";
const REDIS_RS_ALONE: &str = "redis-rs alone";
const RAW_RESP: &str = "raw RESP";
/// The key prefix of the client floor's heartbeats.
const FLOOR_PREFIX: &str = "bench-floor:";
/// Commands in flight at once in the client floor's runs.
const FLOOR_IN_FLIGHT: usize = 64;

fn main() {
    // Cargo passes `--bench` (and maybe a filter); there is nothing to choose, so all
    // arguments are ignored.
    let config = Config::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let redis_url = std::env::var("BENCH_REDIS_URL").ok();
    let servers = Servers::start(redis_url.as_deref(), config.users);
    let auth = Authenticator::new(SECRET);
    let heartbeats = Arc::new(heartbeat_requests(&auth, config.users));
    let lookup_ids = lookup_id_lists(config.users);
    let lookups = Arc::new(lookup_requests(&lookup_ids, None));
    let signed_in = Arc::new(lookup_requests(&lookup_ids, Some(&auth)));

    println!(
        "HTTP load: {cores} cores, {} connections, {} client thread(s), {} users, \
         {:.1} s warm-up + {:.1} s per run; each server 1 worker",
        config.connections,
        config.client_threads,
        config.users,
        config.warmup.as_secs_f64(),
        config.measure.as_secs_f64(),
    );
    println!(
        "{PRESENCE} on {}, {BARE} on {}",
        servers.presence.addr, servers.bare.addr
    );

    let targets = servers.targets();
    let groups: Vec<NodeThreads> = targets.iter().map(|(_, s)| s.threads.clone()).collect();
    let mut results = Vec::new();
    // Round after round, every server in turn: a ratio is taken within a round, between
    // runs minutes apart at most, and the rounds' medians are reported.
    for round in 0..config.rounds {
        for (scenario, requests) in [("heartbeats", &heartbeats), ("lookups", &lookups)] {
            if scenario == "lookups" && round == 0 {
                check_fair_baseline(servers.presence.addr, servers.bare.addr, &lookups[0]);
            }
            for &(server, served) in &targets {
                eprintln!("round {round}: running {scenario} against {server} ...");
                let redis = redis_url
                    .as_deref()
                    .filter(|_| [PRESENCE_REDIS, FLOOR_REDIS].contains(&server));
                let window = Window::after(config.warmup, config.measure);
                let cpu = CpuDuring::start(window, &served.threads, &groups, redis);
                let outcome = run_load(served.addr, requests, &config, window);
                let mut row = Row::new(scenario, server, outcome, config.measure);
                row.round = round;
                row.cpu(cpu.finish());
                results.push(row);
            }
        }
    }

    for &(server, served) in targets
        .iter()
        .filter(|(server, _)| ![BARE, FLOOR, FLOOR_REDIS].contains(server))
    {
        eprintln!("making the lookups' users friends-only on {server} ...");
        make_friends_only(served.addr, config.users, &lookup_ids);
        eprintln!("running {FRIENDS_ONLY} lookups against {server} ...");
        let window = Window::after(config.warmup, config.measure);
        let cpu = CpuDuring::start(window, &served.threads, &groups, None);
        let outcome = run_load(served.addr, &signed_in, &config, window);
        let mut row = Row::new(FRIENDS_ONLY, server, outcome, config.measure);
        // Compared with the anonymous lookups of the last round, the closest in time.
        row.round = config.rounds - 1;
        row.cpu(cpu.finish());
        results.push(row);
    }
    for (server, served) in &targets {
        let names: Vec<String> = served
            .threads
            .0
            .iter()
            .map(|&t| format!("{} ({t})", thread_name(t)))
            .collect();
        eprintln!("threads of {server}: {}", names.join(", "));
    }

    servers.stop();
    if let Some(url) = &redis_url {
        results.extend(redis_benchmark_rows(url, &config));
        results.extend(client_floor_rows(url, &config, &lookup_ids));
    }

    print_table(&results, config.rounds);
    let json = to_json(&results, cores, &config);
    let path = json_path("bench-http.json");
    match write_json(&path, &json) {
        Ok(()) => println!("\nresults written to {}", path.display()),
        Err(e) => eprintln!("\ncannot write {}: {e}", path.display()),
    }
}

/// What the environment asks for.
struct Config {
    connections: usize,
    client_threads: usize,
    users: u64,
    warmup: Duration,
    measure: Duration,
    /// Rounds of the heartbeat and lookup scenarios, each running every server in turn.
    rounds: usize,
}

impl Config {
    fn from_env() -> Self {
        Self {
            connections: env_number("BENCH_CONNECTIONS", 64.0).max(1.0) as usize,
            client_threads: env_number("BENCH_CLIENT_THREADS", 1.0).max(1.0) as usize,
            users: env_number("BENCH_USERS", 4096.0).max(1.0) as u64,
            warmup: Duration::from_secs_f64(env_number("BENCH_WARMUP_SECONDS", 1.0).max(0.0)),
            measure: Duration::from_secs_f64(env_number("BENCH_SECONDS", 5.0).max(0.1)),
            rounds: env_number("BENCH_ROUNDS", 1.0).max(1.0) as usize,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// The servers, each served by an actix system of its own on a thread of its own, so that
/// the CPU time of each is that of its own threads (see [`NodeThreads`]).
struct Servers {
    presence: Served,
    redis: Option<Served>,
    bare: Served,
    floor: Served,
    /// The floor on the Redis backend, with `BENCH_REDIS_URL`.
    floor_redis: Option<Served>,
}

/// One server on its own thread.
struct Served {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: JoinHandle<()>,
    /// The threads it started with (see [`serve_on_thread`]).
    threads: NodeThreads,
}

impl Servers {
    fn start(redis_url: Option<&str>, users: u64) -> Self {
        let presence = serve_on_thread("bench-presence", || {
            let app = Application::build(presence_settings()).expect("the presence server builds");
            let (addr, handle) = (app.local_addr(), app.handle());
            let run = async move {
                app.run_until_stopped()
                    .await
                    .expect("the presence server failed")
            };
            (addr, handle, run)
        });
        let redis = redis_url.map(|url| {
            let settings = on_redis(url, BENCH_PREFIX);
            serve_on_thread("bench-redis-node", move || {
                let app = Application::build(settings).expect("the Redis-backed server builds");
                let (addr, handle) = (app.local_addr(), app.handle());
                let run = async move {
                    app.run_until_stopped()
                        .await
                        .expect("the Redis-backed server failed")
                };
                (addr, handle, run)
            })
        });
        let bare = serve_on_thread("bench-bare", move || {
            let bare = HttpServer::new(move || {
                App::new()
                    .route(REGISTER, web::post().to(bare_heartbeat))
                    .app_data(web::Data::new(users))
                    .route(USERS, web::post().to(bare_lookup))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .bind(("127.0.0.1", 0))
            .expect("the bare server binds");
            let addr = bare.addrs()[0];
            let bare = bare.run();
            let handle = bare.handle();
            let run = async move { bare.await.expect("the bare server failed") };
            (addr, handle, run)
        });
        let floor = start_floor("bench-floor", presence_settings());
        let floor_redis =
            redis_url.map(|url| start_floor("bench-floor-redis", on_redis(url, BARE_REDIS_PREFIX)));
        Self {
            presence,
            redis,
            bare,
            floor,
            floor_redis,
        }
    }

    /// The servers that are measured, by name.
    fn targets(&self) -> Vec<(&'static str, &Served)> {
        let mut targets = vec![(PRESENCE, &self.presence)];
        if let Some(redis) = &self.redis {
            targets.push((PRESENCE_REDIS, redis));
        }
        targets.push((FLOOR, &self.floor));
        if let Some(floor_redis) = &self.floor_redis {
            targets.push((FLOOR_REDIS, floor_redis));
        }
        targets.push((BARE, &self.bare));
        targets
    }

    /// Stops every server gracefully and waits for their threads.
    fn stop(self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to stop the servers");
        let mut all = vec![self.presence, self.bare, self.floor];
        all.extend(self.redis);
        all.extend(self.floor_redis);
        rt.block_on(futures_util::future::join_all(
            all.iter().map(|served| served.handle.stop(true)),
        ));
        for served in all {
            served.thread.join().expect("a server thread panicked");
        }
    }
}

/// Starts a floor server ([`Floor`]) on `settings`' backend, on a thread of its own. On
/// Redis, the backend's estimate of Redis's clock is refreshed every second, as the
/// server's sweeper does, so that no heartbeat waits for a `TIME` call.
fn start_floor(name: &str, settings: Settings) -> Served {
    serve_on_thread(name, move || {
        let presence = Presence::from_settings(
            &settings,
            Clock::system(),
            entry_encoder(settings.api.presence_type),
        )
        .expect("the floor's backend builds");
        if let Some(redis) = presence.redis_backend().cloned() {
            actix_web::rt::spawn(async move {
                loop {
                    let _ = redis.refresh_clock().await;
                    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        let state = web::Data::new(Floor {
            presence,
            auth: Authenticator::new(SECRET),
            catalog: PlaceCatalog::new(&settings.places),
            settings,
        });
        let floor = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route(REGISTER, web::post().to(floor_heartbeat))
                .route(USERS, web::post().to(floor_lookup))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .expect("the floor server binds");
        let addr = floor.addrs()[0];
        let floor = floor.run();
        let handle = floor.handle();
        let run = async move { floor.await.expect("the floor server failed") };
        (addr, handle, run)
    })
}

/// Starts a server with `start` (which builds it and returns its address, its handle and
/// the future that runs it) inside a new actix system on a thread of its own, and waits
/// until it answers. Servers are started one after the other: the threads of this process
/// that appeared while this one started are its threads (the system's, which also runs
/// every task the server spawns on its runtime, the Redis connection's included, its
/// worker's, its acceptor's, its background threads').
fn serve_on_thread<F, Fut>(name: &str, start: F) -> Served
where
    F: FnOnce() -> (SocketAddr, ServerHandle, Fut) + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let before = NodeThreads::all();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let (addr, handle, run) = start();
                tx.send((addr, handle)).expect("main waits for the server");
                run.await;
            });
        })
        .expect("cannot start a server thread");
    let (addr, handle) = rx.recv().expect("the server did not start");
    wait_until_serving(addr);
    // Let a worker that answered finish starting its own helpers, if any.
    std::thread::sleep(Duration::from_millis(200));
    let threads = NodeThreads::all().without(&before);
    Served {
        addr,
        handle,
        thread,
        threads,
    }
}

/// Waits until `addr` answers an HTTP request (any status).
fn wait_until_serving(addr: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the check");
    rt.block_on(async {
        let request = b"GET /nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n";
        for _ in 0..500 {
            if let Ok(mut conn) = TcpStream::connect(addr).await {
                let mut buf = Vec::new();
                if exchange(&mut conn, request, &mut buf).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server on {addr} does not answer");
    });
}

fn presence_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.server.workers = 1;
    settings.server.shutdown_timeout = Duration::from_secs(2);
    settings.auth.jwt_secret = SECRET.into();
    // A snapshot file has no place in a throughput run.
    settings.persistence.enabled = false;
    // Limits stay on, so their cost is measured, but far above what the load reaches.
    settings.rate_limit.register_per_second = 1_000_000;
    settings.rate_limit.register_burst = 1_000_000;
    settings.rate_limit.lookup_per_second = 1_000_000;
    settings.rate_limit.lookup_burst = 1_000_000;
    settings.auth.service_keys = vec![ServiceKeySettings {
        name: "bench".into(),
        sha256: sha256_hex(PRIVACY_KEY),
        scopes: vec!["privacy".into()],
    }];
    settings.validate().expect("bench settings must be valid");
    settings
}

/// [`presence_settings`] on the Redis backend at `url`, with keys under `prefix`.
fn on_redis(url: &str, prefix: &str) -> Settings {
    let mut settings = presence_settings();
    settings.store.backend = presence_server::config::Backend::Redis;
    settings.redis.url = url.to_owned();
    settings.redis.key_prefix = prefix.into();
    settings.validate().expect("bench settings must be valid");
    settings
}

/// Makes every id the lookups ask for (`1..=2 * users`) visible to friends only, and the
/// viewer of each lookup body a friend of every other id in it, through the API, on one
/// connection. Stops the bench on any answer but 200.
fn make_friends_only(addr: SocketAddr, users: u64, bodies: &[Vec<u64>]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the set-up");
    rt.block_on(async {
        let mut conn = TcpStream::connect(addr).await.expect("the server accepts");
        let mut buf = Vec::new();
        let key = format!("x-api-key: {PRIVACY_KEY}\r\n");
        for id in 1..=users * 2 {
            let request = http_request(
                "PUT",
                &format!("/v1/users/{id}/presence-settings"),
                &key,
                r#"{"visibility":"friends"}"#,
            );
            let status = exchange(&mut conn, &request, &mut buf)
                .await
                .expect("an answer");
            assert_eq!(status, 200, "settings: {}", String::from_utf8_lossy(&buf));
        }
        let pairs: Vec<String> = bodies
            .iter()
            .enumerate()
            .flat_map(|(k, ids)| {
                let viewer = VIEWER_BASE + k as u64;
                ids.iter()
                    .step_by(2)
                    .map(move |id| format!("[{viewer},{id}]"))
            })
            .collect();
        // 500 pairs of 10-digit ids stay under `server.max_body_bytes` (16 KiB).
        for chunk in pairs.chunks(500) {
            let body = format!(r#"{{"add":[{}]}}"#, chunk.join(","));
            let request = http_request("POST", "/v1/friendships", &key, &body);
            let status = exchange(&mut conn, &request, &mut buf)
                .await
                .expect("an answer");
            assert_eq!(
                status,
                200,
                "friendships: {}",
                String::from_utf8_lossy(&buf)
            );
        }
    });
}

fn json_ok() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
        .body("{}")
}

/// The baseline heartbeat: parse the same body, answer `{}`.
async fn bare_heartbeat(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<RegisterAppPresenceRequest>(&body) {
        Ok(request) => {
            std::hint::black_box(&request);
            json_ok()
        }
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

/// The baseline lookup: parse the same 50-id body and write an answer of the same bytes as
/// the presence server's, from two templates and no store: ids up to `users` (those the
/// heartbeat scenario made present) as Online at `Website`, the others as never seen. Only
/// `lastOnline` differs from the real answer, in its digits, never in its length (checked
/// before the lookups run, see `check_fair_baseline`).
async fn bare_lookup(body: web::Bytes, users: web::Data<u64>) -> HttpResponse {
    const ONLINE: &[u8] = br#"{"userPresenceType":"Online","lastLocation":"Website","placeId":null,"rootPlaceId":null,"universeId":null,"gameId":null,"userId":"#;
    const NEVER_SEEN: &[u8] = br#"{"userPresenceType":"Offline","lastLocation":"","placeId":null,"rootPlaceId":null,"universeId":null,"gameId":null,"userId":"#;
    const ONLINE_AT: &[u8] = br#","lastOnline":"2026-12-06T03:00:00.000Z"}"#;
    const NEVER_AT: &[u8] = br#","lastOnline":"0001-01-01T00:00:00.000Z"}"#;
    let Ok(request) = serde_json::from_slice::<LookupRequest>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut ids: Vec<UserId> = request
        .user_ids
        .iter()
        .filter_map(|item| match item {
            IdItem::Valid(id) => Some(*id),
            IdItem::Invalid => None,
        })
        .collect();
    // The answer lists each id once, in the order first asked.
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.retain(|id| seen.insert(*id));
    let mut out = Vec::with_capacity(24 + ids.len() * 240);
    out.extend_from_slice(br#"{"userPresences":["#);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let online = id.get() <= **users;
        out.extend_from_slice(if online { ONLINE } else { NEVER_SEEN });
        out.extend_from_slice(itoa::Buffer::new().format(id.get()).as_bytes());
        out.extend_from_slice(if online { ONLINE_AT } else { NEVER_AT });
    }
    out.extend_from_slice(b"]}");
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
        .body(out)
}

/// The floor: what a heartbeat or a lookup cannot skip, on the bare server's framework
/// (no middleware, no extractor of ours, no rate limit, no metrics): the credential checked
/// and the store written; the ids checked and de-duplicated, read from the store and
/// written by the API's own writer. Its throughput against the bare server's is the most a
/// server with this store and this writer can reach; the presence server's against it is
/// what everything else costs.
struct Floor {
    presence: Presence,
    auth: Authenticator,
    catalog: PlaceCatalog,
    settings: Settings,
}

/// The floor's heartbeat: the Bearer credential verified (with its cache, as the server
/// does), the body parsed, the heartbeat recorded, `{}`.
async fn floor_heartbeat(
    request: HttpRequest,
    body: web::Bytes,
    floor: web::Data<Floor>,
) -> HttpResponse {
    let user = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| floor.auth.verify(token).ok());
    let Some(user) = user else {
        return HttpResponse::Unauthorized().finish();
    };
    let Ok(request) = serde_json::from_slice::<RegisterAppPresenceRequest>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let heartbeat = Heartbeat::from_report(request.report(), &floor.catalog);
    match floor.presence.heartbeat(user, heartbeat).await {
        Ok(()) => json_ok(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// The floor's lookup: the ids checked and de-duplicated, each read from the store as an
/// anonymous caller sees it and written by the API's writer.
async fn floor_lookup(body: web::Bytes, floor: web::Data<Floor>) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<LookupRequest>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let Ok(ids) = request.into_user_ids(floor.settings.api.max_user_ids) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut answer = PresencesWriter::new(floor.settings.api.presence_type, ids.len());
    let show_last_online = floor.settings.privacy.show_last_online;
    let read = floor
        .presence
        .visit_seen(Viewer::Anonymous, &ids, |seen| {
            answer.push_seen(seen, Viewer::Anonymous, show_last_online);
        })
        .await;
    match read {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
            .body(answer.finish()),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// Both servers' answers to the same lookup, once the users are present: the bare one must
/// be as long as the presence server's, or the lookup ratio would not compare like with
/// like.
fn check_fair_baseline(presence: SocketAddr, bare: SocketAddr, request: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the check");
    let body = |addr: SocketAddr| {
        rt.block_on(async {
            let mut conn = TcpStream::connect(addr).await.expect("the server accepts");
            let mut buf = Vec::new();
            let status = exchange(&mut conn, request, &mut buf)
                .await
                .expect("the server answers");
            assert_eq!(status, 200, "a lookup is answered 200");
            let head = memchr::memmem::find(&buf, b"\r\n\r\n").map_or(0, |i| i + 4);
            buf.len() - head
        })
    };
    let (ours, theirs) = (body(presence), body(bare));
    println!("lookup answer: presence {ours} bytes, bare {theirs} bytes");
    assert_eq!(
        ours, theirs,
        "the bare lookup must write an answer of the presence server's size"
    );
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// A request with JSON `body` and extra header lines `headers` (each ending in CRLF).
fn http_request(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http_post(path: &str, authorization: Option<&str>, body: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = authorization {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request.into_bytes()
}

/// One heartbeat request per user `1..=users`, each with its own credential.
fn heartbeat_requests(auth: &Authenticator, users: u64) -> Vec<Vec<u8>> {
    (1..=users)
        .map(|n| {
            let user = UserId::new(n).expect("user ids start at 1");
            let token = auth
                .mint(user, Duration::from_secs(3600))
                .expect("a credential is minted");
            http_post(REGISTER, Some(&token), HEARTBEAT_BODY)
        })
        .collect()
}

/// The ids of each lookup body: 50 distinct ids drawn from `1..=2 * users` (about half of
/// them heartbeating users, the rest never seen).
fn lookup_id_lists(users: u64) -> Vec<Vec<u64>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let range = users * 2;
    let distinct = IDS_PER_LOOKUP.min(range as usize);
    (0..LOOKUP_BODIES)
        .map(|_| {
            let mut ids: Vec<u64> = Vec::with_capacity(IDS_PER_LOOKUP);
            while ids.len() < distinct {
                let id = next() % range + 1;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            while ids.len() < IDS_PER_LOOKUP {
                ids.push(ids[ids.len() % distinct]);
            }
            ids
        })
        .collect()
}

/// One lookup request per body; with `auth`, body `k` is sent by the signed-in viewer
/// `VIEWER_BASE + k`.
fn lookup_requests(bodies: &[Vec<u64>], auth: Option<&Authenticator>) -> Vec<Vec<u8>> {
    bodies
        .iter()
        .enumerate()
        .map(|(k, ids)| {
            let token = auth.map(|auth| {
                let viewer = UserId::new(VIEWER_BASE + k as u64).expect("a valid id");
                auth.mint(viewer, Duration::from_secs(3600))
                    .expect("a credential is minted")
            });
            let list: Vec<String> = ids.iter().map(u64::to_string).collect();
            http_post(
                USERS,
                token.as_deref(),
                &format!(r#"{{"userIds":[{}]}}"#, list.join(",")),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------

/// What one connection (or all of them) saw while measuring.
#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    latencies_ns: Vec<u64>,
    first_error: Option<String>,
}

impl Outcome {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_ns.extend(other.latencies_ns);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The measured seconds of one run: from the end of its warm-up to its end.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    /// A run that starts now.
    fn after(warmup: Duration, measure: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + measure,
        }
    }
}

/// Drives `config.connections` connections at `addr` until `window` ends, counting what
/// completes inside it.
/// Connection `c` sends requests `c`, `c + C`, `c + 2C`, ... of `requests`, cyclically.
fn run_load(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    config: &Config,
    window: Window,
) -> Outcome {
    let Window { start, end } = window;
    let connections = config.connections;
    let threads = config.client_threads.min(connections);
    let workers: Vec<JoinHandle<Outcome>> = (0..threads)
        .map(|t| {
            let requests = Arc::clone(requests);
            std::thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a client runtime");
                    rt.block_on(async move {
                        let tasks: Vec<_> = (t..connections)
                            .step_by(threads)
                            .map(|c| {
                                let mine = own_slice(c, connections, requests.len());
                                let requests = Arc::clone(&requests);
                                tokio::spawn(drive(addr, requests, mine, start, end))
                            })
                            .collect();
                        let mut outcome = Outcome::default();
                        for task in tasks {
                            outcome.merge(task.await.expect("a connection task panicked"));
                        }
                        outcome
                    })
                })
                .expect("cannot start a client thread")
        })
        .collect();
    let mut outcome = Outcome::default();
    for worker in workers {
        outcome.merge(worker.join().expect("a client thread panicked"));
    }
    outcome
}

/// The request indices connection `c` of `connections` cycles through.
fn own_slice(c: usize, connections: usize, len: usize) -> Vec<usize> {
    if len <= connections {
        vec![c % len]
    } else {
        (c..len).step_by(connections).collect()
    }
}

/// One keep-alive connection: request, whole response, next request, until `end`. Only
/// requests that complete in `[start, end)` are counted.
async fn drive(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    mine: Vec<usize>,
    start: Instant,
    end: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut stream: Option<TcpStream> = None;
    let mut next = 0;
    while Instant::now() < end {
        let conn = match stream.as_mut() {
            Some(conn) => conn,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(conn)) => {
                    conn.set_nodelay(true).ok();
                    stream.insert(conn)
                }
                failed => {
                    if Instant::now() >= start {
                        outcome.error(|| format!("connect: {failed:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let request = &requests[mine[next % mine.len()]];
        next += 1;
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange(conn, request, &mut buf)).await;
        let done = Instant::now();
        let counted = done >= start && done < end;
        match answer {
            Ok(Ok(200)) => {
                if counted {
                    outcome.ok += 1;
                    if outcome.latencies_ns.len() < MAX_SAMPLES_PER_CONNECTION {
                        outcome
                            .latencies_ns
                            .push(done.duration_since(sent).as_nanos() as u64);
                    }
                }
            }
            Ok(Ok(status)) => {
                if counted {
                    outcome.error(|| format!("status {status}: {}", String::from_utf8_lossy(&buf)));
                }
            }
            Ok(Err(e)) => {
                if counted {
                    outcome.error(|| format!("i/o: {e}"));
                }
                stream = None;
            }
            Err(_) => {
                if counted {
                    outcome.error(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
                }
                stream = None;
            }
        }
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Row {
    /// The round of the heartbeat and lookup scenarios (see `BENCH_ROUNDS`); 0 for the
    /// rows of a single run.
    round: usize,
    scenario: &'static str,
    server: &'static str,
    requests: u64,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    first_error: Option<String>,
    /// Redis's own CPU time per request, for rows served by Redis.
    redis_cpu_us: Option<f64>,
    /// The server's CPU time per request: that of its threads (see [`serve_on_thread`]).
    node_cpu_us: Option<f64>,
    /// Of which, per thread (by name), largest first.
    node_threads_us: Vec<(String, f64)>,
    /// CPU time per request of this process's threads that belong to no server and are not
    /// the load generator's (threads started after the servers, e.g. a runtime's blocking
    /// pool): not counted above, shown so that nothing is hidden.
    unattributed_cpu_us: Option<f64>,
}

impl Row {
    fn new(
        scenario: &'static str,
        server: &'static str,
        mut outcome: Outcome,
        measured: Duration,
    ) -> Self {
        outcome.latencies_ns.sort_unstable();
        let percentile = |p: f64| -> f64 {
            let sorted = &outcome.latencies_ns;
            if sorted.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
            sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
        };
        Self {
            round: 0,
            scenario,
            server,
            requests: outcome.ok,
            per_sec: outcome.ok as f64 / measured.as_secs_f64(),
            p50_us: percentile(50.0),
            p99_us: percentile(99.0),
            errors: outcome.errors,
            first_error: outcome.first_error,
            redis_cpu_us: None,
            node_cpu_us: None,
            node_threads_us: Vec::new(),
            unattributed_cpu_us: None,
        }
    }

    /// Sets the CPU figures per request from what was measured during the run.
    fn cpu(&mut self, cpu: CpuSpent) {
        let requests = self.requests as f64;
        let per = |ns: u64| (requests > 0.0).then(|| ns as f64 / 1e3 / requests);
        self.node_cpu_us = cpu.node_ns.and_then(per);
        self.node_threads_us = cpu
            .by_thread
            .into_iter()
            .filter_map(|(name, ns)| Some((name, per(ns)?)))
            .collect();
        self.unattributed_cpu_us = per(cpu.unattributed_ns);
        self.redis_cpu_us = cpu
            .redis_seconds
            .and_then(|s| (requests > 0.0).then(|| s * 1e6 / requests));
    }
}

/// Per scenario, the node CPU per request of the memory-backed and the Redis-backed
/// servers, and Redis's over memory's.
fn node_cpu_ratios(rows: &[Row]) -> Vec<(&'static str, f64, f64, f64)> {
    cpu_ratios(rows, PRESENCE, PRESENCE_REDIS)
}

/// Per scenario, the node CPU of server `on_redis` against that of `on_memory`.
fn cpu_ratios(rows: &[Row], on_memory: &str, on_redis: &str) -> Vec<(&'static str, f64, f64, f64)> {
    rows.iter()
        .filter(|r| r.server == on_memory)
        .filter_map(|memory| {
            let redis = rows
                .iter()
                .find(|r| r.server == on_redis && r.scenario == memory.scenario)?;
            let (m, r) = (memory.node_cpu_us?, redis.node_cpu_us?);
            Some((memory.scenario, m, r, r / m))
        })
        .collect()
}

/// presence/bare throughput and p50 ratios of each scenario.
fn ratios(rows: &[Row]) -> Vec<(&'static str, f64, f64)> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.server == PRESENCE) {
        if let Some(bare) = rows
            .iter()
            .find(|r| r.server == BARE && r.scenario == row.scenario)
        {
            out.push((
                row.scenario,
                row.per_sec / bare.per_sec,
                row.p50_us / bare.p50_us,
            ));
        }
    }
    out
}

/// Per scenario, the floor's throughput over the bare server's (the most this store and
/// writer allow) and the presence server's over the floor's (what the rest costs).
fn floor_ratios(rows: &[Row]) -> Vec<(&'static str, f64, f64)> {
    let per_sec = |server: &str, scenario: &str| {
        rows.iter()
            .find(|r| r.server == server && r.scenario == scenario)
            .map(|r| r.per_sec)
    };
    rows.iter()
        .filter(|r| r.server == FLOOR)
        .filter_map(|floor| {
            let bare = per_sec(BARE, floor.scenario)?;
            let presence = per_sec(PRESENCE, floor.scenario)?;
            Some((
                floor.scenario,
                floor.per_sec / bare,
                presence / floor.per_sec,
            ))
        })
        .collect()
}

/// Per server, the throughput of signed-in lookups of friends-only users over that of
/// anonymous lookups of the same ids (everyone-visible then), in the same run.
fn privacy_ratios(rows: &[Row]) -> Vec<(&'static str, f64)> {
    rows.iter()
        .filter(|r| r.scenario == FRIENDS_ONLY)
        .filter_map(|signed_in| {
            rows.iter()
                .find(|r| r.scenario == "lookups" && r.server == signed_in.server)
                .map(|anonymous| (signed_in.server, signed_in.per_sec / anonymous.per_sec))
        })
        .collect()
}

fn print_table(rows: &[Row], rounds: usize) {
    println!();
    println!(
        "{}{:<11} {:<18} {:>11} {:>8} {:>8} {:>7} {:>12} {:>12}",
        if rounds > 1 { "round " } else { "" },
        "scenario",
        "server",
        "requests/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "node CPU µs",
        "Redis CPU µs"
    );
    println!("{}", "-".repeat(if rounds > 1 { 100 } else { 94 }));
    let us = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |us| format!("{us:.2}"));
    for row in rows {
        println!(
            "{}{:<11} {:<18} {:>11.0} {:>8.0} {:>8.0} {:>7} {:>12} {:>12}",
            if rounds > 1 {
                format!("{:<6}", row.round)
            } else {
                String::new()
            },
            row.scenario,
            row.server,
            row.per_sec,
            row.p50_us,
            row.p99_us,
            row.errors,
            us(row.node_cpu_us),
            us(row.redis_cpu_us)
        );
    }
    println!("(CPU per request answered; node = the server's own threads)");
    for row in rows.iter().filter(|r| r.server == PRESENCE_REDIS) {
        let threads: Vec<String> = row
            .node_threads_us
            .iter()
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        println!(
            "{:<11} {PRESENCE_REDIS} node CPU by thread, µs/request: {}; unattributed {}",
            row.scenario,
            threads.join(", "),
            us(row.unattributed_cpu_us)
        );
    }
    for (round, rows) in by_round(rows, rounds).iter().enumerate() {
        println!();
        if rounds > 1 {
            println!("round {round}:");
        }
        print_ratios(rows);
    }
    if rounds > 1 {
        print_medians(rows, rounds);
    }
    for row in rows.iter().filter(|r| r.first_error.is_some()) {
        let mut error = row.first_error.clone().unwrap_or_default();
        error.truncate(300);
        println!(
            "first error, {} on {}: {}",
            row.scenario,
            row.server,
            error.escape_debug()
        );
    }
}

/// The ratios of one round's rows (or of a single run's).
fn print_ratios(rows: &[Row]) {
    let node = node_cpu_ratios(rows);
    let floor = cpu_ratios(rows, FLOOR, FLOOR_REDIS);
    for &(scenario, memory, redis, ratio) in &node {
        println!(
            "{scenario:<11} node CPU per request: memory {memory:.2} µs, Redis {redis:.2} µs, \
             Redis/memory {ratio:.2}x"
        );
    }
    for &(scenario, memory, redis, ratio) in &floor {
        println!(
            "{scenario:<11} the floor's CPU per request: memory {memory:.2} µs, Redis \
             {redis:.2} µs, Redis/memory {ratio:.2}x"
        );
    }
    if !node.is_empty() || !floor.is_empty() {
        println!();
    }
    for (scenario, throughput, p50) in ratios(rows) {
        println!(
            "{scenario:<11} presence/bare: throughput {throughput:.2}x, p50 latency {p50:.2}x"
        );
    }
    for (scenario, floor, presence) in floor_ratios(rows) {
        println!(
            "{scenario:<11} {FLOOR}/bare: throughput {floor:.2}x; presence/({FLOOR}): {presence:.2}x"
        );
    }
    for (server, ratio) in privacy_ratios(rows) {
        println!("{FRIENDS_ONLY} signed-in / anonymous lookups on {server}: {ratio:.2}x");
    }
}

/// The rows of each round, in order of rounds.
fn by_round(rows: &[Row], rounds: usize) -> Vec<Vec<Row>> {
    (0..rounds)
        .map(|round| rows.iter().filter(|r| r.round == round).cloned().collect())
        .collect()
}

/// Each ratio's median over the rounds (each ratio taken within its round).
fn print_medians(rows: &[Row], rounds: usize) {
    println!("\nmedians of {rounds} rounds (ratios within each round):");
    for (name, scenario, median, of) in round_medians(rows, rounds) {
        println!("{scenario:<11} {name}: {median:.2}x (of {of})");
    }
}

/// The median over the rounds of each ratio printed per round: (ratio, scenario, median,
/// rounds that had it).
fn round_medians(rows: &[Row], rounds: usize) -> Vec<(&'static str, &'static str, f64, usize)> {
    let mut values: Vec<(&'static str, &'static str, Vec<f64>)> = Vec::new();
    let mut add = |name: &'static str, scenario: &'static str, value: f64| match values
        .iter_mut()
        .find(|(n, s, _)| *n == name && *s == scenario)
    {
        Some((_, _, v)) => v.push(value),
        None => values.push((name, scenario, vec![value])),
    };
    for rows in &by_round(rows, rounds) {
        for (scenario, throughput, _) in ratios(rows) {
            add("presence/bare throughput", scenario, throughput);
        }
        for (scenario, floor, presence) in floor_ratios(rows) {
            add("bare + store/bare throughput", scenario, floor);
            add("presence/(bare + store) throughput", scenario, presence);
        }
        for (scenario, _, _, ratio) in node_cpu_ratios(rows) {
            add("node CPU Redis/memory", scenario, ratio);
        }
        for (scenario, _, _, ratio) in cpu_ratios(rows, FLOOR, FLOOR_REDIS) {
            add("the floor's CPU Redis/memory", scenario, ratio);
        }
    }
    values
        .into_iter()
        .map(|(name, scenario, mut v)| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let median = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            (name, scenario, median, n)
        })
        .collect()
}

fn to_json(rows: &[Row], cores: usize, config: &Config) -> serde_json::Value {
    let finite = |x: f64| if x.is_finite() { Some(x) } else { None };
    // Every ratio is taken within a round, and says which.
    let by_round = by_round(rows, config.rounds);
    let each = |f: &dyn Fn(&[Row]) -> Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        by_round
            .iter()
            .enumerate()
            .flat_map(|(round, rows)| {
                f(rows).into_iter().map(move |mut entry| {
                    entry["round"] = round.into();
                    entry
                })
            })
            .collect()
    };
    let cpu = |(scenario, memory, redis, ratio): (&str, f64, f64, f64)| {
        serde_json::json!({
            "scenario": scenario,
            "memory_us_per_request": finite(memory),
            "redis_us_per_request": finite(redis),
            "redis_over_memory": finite(ratio),
        })
    };
    serde_json::json!({
        "cores": cores,
        "connections": config.connections,
        "client_threads": config.client_threads,
        "users": config.users,
        "warmup_seconds": config.warmup.as_secs_f64(),
        "seconds": config.measure.as_secs_f64(),
        "rounds": config.rounds,
        "server_workers": 1,
        "results": rows.iter().map(|r| serde_json::json!({
            "round": r.round,
            "scenario": r.scenario,
            "server": r.server,
            "requests": r.requests,
            "requests_per_sec": finite(r.per_sec),
            "p50_us": finite(r.p50_us),
            "p99_us": finite(r.p99_us),
            "errors": r.errors,
            "first_error": r.first_error,
            "redis_cpu_us_per_request": r.redis_cpu_us.and_then(finite),
            "node_cpu_us_per_request": r.node_cpu_us.and_then(finite),
            "node_cpu_us_per_request_by_thread": r.node_threads_us.iter()
                .map(|(name, us)| serde_json::json!({"thread": name, "us": finite(*us)}))
                .collect::<Vec<_>>(),
            "unattributed_cpu_us_per_request": r.unattributed_cpu_us.and_then(finite),
        })).collect::<Vec<_>>(),
        "node_cpu_redis_over_memory": each(&|rows| {
            node_cpu_ratios(rows).into_iter().map(cpu).collect()
        }),
        "floor_cpu_redis_over_memory": each(&|rows| {
            cpu_ratios(rows, FLOOR, FLOOR_REDIS).into_iter().map(cpu).collect()
        }),
        "ratios": each(&|rows| ratios(rows).into_iter().map(|(scenario, throughput, p50)| serde_json::json!({
            "scenario": scenario,
            "throughput_presence_over_bare": finite(throughput),
            "p50_presence_over_bare": finite(p50),
        })).collect()),
        "floor": each(&|rows| floor_ratios(rows).into_iter().map(|(scenario, floor, presence)| serde_json::json!({
            "scenario": scenario,
            "throughput_floor_over_bare": finite(floor),
            "throughput_presence_over_floor": finite(presence),
        })).collect()),
        "friends_only_over_anonymous": each(&|rows| privacy_ratios(rows).into_iter().map(|(server, ratio)| serde_json::json!({
            "server": server,
            "throughput_signed_in_over_anonymous": finite(ratio),
        })).collect()),
        "medians_over_rounds": round_medians(rows, config.rounds).into_iter()
            .map(|(ratio, scenario, median, of)| serde_json::json!({
                "ratio": ratio,
                "scenario": scenario,
                "median": finite(median),
                "rounds": of,
            })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// Redis's CPU time (user + system, seconds) as `INFO cpu` reports it.
fn redis_cpu_seconds(url: &str) -> Option<f64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn).ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Thread ids of this process.
#[derive(Clone, Default)]
struct NodeThreads(Vec<u32>);

impl NodeThreads {
    /// Every thread of this process now.
    fn all() -> Self {
        let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort_unstable();
        Self(tids)
    }

    fn without(&self, other: &Self) -> Self {
        Self(
            self.0
                .iter()
                .copied()
                .filter(|t| !other.0.contains(t))
                .collect(),
        )
    }

    /// Each thread's CPU time so far, in nanoseconds (none for a thread that ended).
    fn cpu_ns(&self) -> Vec<(u32, Option<u64>)> {
        self.0.iter().map(|&t| (t, thread_cpu_ns(t))).collect()
    }
}

/// The time thread `tid` of this process has spent on a CPU, in nanoseconds, from
/// `/proc/self/task/<tid>/schedstat` (its first field: user and system time together, at
/// the scheduler's resolution rather than `stat`'s clock ticks).
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The name of thread `tid` of this process (at most 15 bytes, as the kernel keeps it).
fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|name| name.trim_end().to_owned())
        .unwrap_or_else(|_| format!("thread {tid}"))
}

/// What one run cost, over its measured seconds.
struct CpuSpent {
    /// The server's threads together; none if one of them ended during the run.
    node_ns: Option<u64>,
    by_thread: Vec<(String, u64)>,
    /// Threads of no server that are not the load generator's.
    unattributed_ns: u64,
    /// Redis's own CPU time (user + system, seconds), for a Redis-backed server.
    redis_seconds: Option<f64>,
}

/// The CPU time of a server's threads (and of Redis, if given) over the measured seconds of
/// one run, read at the start and the end of `window` on a thread of its own.
struct CpuDuring(JoinHandle<CpuSpent>);

impl CpuDuring {
    fn start(
        window: Window,
        node: &NodeThreads,
        servers: &[NodeThreads],
        redis_url: Option<&str>,
    ) -> Self {
        let node = node.clone();
        let servers: Vec<u32> = servers.iter().flat_map(|s| s.0.iter().copied()).collect();
        let url = redis_url.map(str::to_owned);
        let thread = std::thread::Builder::new()
            .name("bench-cpu".into())
            .spawn(move || {
                std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
                // Every thread but the servers', the load generator's, main and this one.
                let me = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok());
                let main = std::process::id();
                let others = NodeThreads(
                    NodeThreads::all()
                        .0
                        .into_iter()
                        .filter(|t| !servers.contains(t) && Some(*t) != me && *t != main)
                        .filter(|&t| !thread_name(t).starts_with("bench-client"))
                        .collect(),
                );
                let redis_before = url.as_deref().and_then(redis_cpu_seconds);
                let (node_before, others_before) = (node.cpu_ns(), others.cpu_ns());
                std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
                let (node_after, others_after) = (node.cpu_ns(), others.cpu_ns());
                let redis_after = url.as_deref().and_then(redis_cpu_seconds);
                let spent = |before: &[(u32, Option<u64>)], after: &[(u32, Option<u64>)]| {
                    before
                        .iter()
                        .zip(after)
                        .map(|(&(tid, b), &(_, a))| (tid, a.zip(b).map(|(a, b)| a - b)))
                        .collect::<Vec<_>>()
                };
                let node_spent = spent(&node_before, &node_after);
                let mut by_thread: Vec<(String, u64)> = node_spent
                    .iter()
                    .filter_map(|&(tid, ns)| Some((thread_name(tid), ns?)))
                    .collect();
                by_thread.sort_by_key(|b| std::cmp::Reverse(b.1));
                CpuSpent {
                    node_ns: node_spent.iter().map(|&(_, ns)| ns).sum(),
                    by_thread,
                    unattributed_ns: spent(&others_before, &others_after)
                        .iter()
                        .filter_map(|&(_, ns)| ns)
                        .sum(),
                    redis_seconds: redis_before.zip(redis_after).map(|(b, a)| a - b),
                }
            })
            .expect("cannot start the CPU sampler");
        Self(thread)
    }

    fn finish(self) -> CpuSpent {
        self.0.join().expect("the CPU sampler panicked")
    }
}

/// `redis-benchmark` with the commands a node sends for each scenario, against the same
/// Redis: the heartbeat script by `EVALSHA` (on keys of the same layout, with the record
/// the node writes), and one `MGET` of 50 records and their settings. Redis CPU per
/// request is read around each run.
fn redis_benchmark_rows(url: &str, config: &Config) -> Vec<Row> {
    let Ok(client) = redis::Client::open(url) else {
        eprintln!("redis-benchmark skipped: {url} is not a Redis URL");
        return Vec::new();
    };
    let info = client.get_connection_info();
    let (host, port) = match &info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        _ => {
            eprintln!("redis-benchmark skipped: only plain TCP URLs are supported here");
            return Vec::new();
        }
    };
    let (sha, now, deadline, record) = heartbeat_script_and_record(&client);
    let record = String::from_utf8_lossy(&record).into_owned();
    let keys = presence_server::presence::redis::keys::Keys::new("bench-raw:");
    let user = |id: u64| keys.user(presence_server::presence::UserId::new(id).expect("an id"));
    let shard0 = |key: String| key;
    // `__rand_int__` picks among `-r` ids in shard 0's slot, like 4096 users of one shard.
    let user_key = user(1024).replace("1024", "__rand_int__");
    let settings_key = keys
        .settings(presence_server::presence::UserId::new(1024).expect("an id"))
        .replace("1024", "__rand_int__");
    // The arguments of `RedisBackend::heartbeat`, on a standalone Redis.
    let mut heartbeat: Vec<String> = vec!["EVALSHA".into(), sha, "4".into(), user_key];
    heartbeat.push(shard0(keys.expiry(0)));
    heartbeat.push(shard0(keys.counters(0)));
    heartbeat.push(settings_key);
    heartbeat.extend([
        "__rand_int__".into(),
        now.to_string(),
        "p".into(),
        record,
        deadline.to_string(),
        "-1".into(),
        "PUBLISH".into(),
        keys.channel(),
    ]);
    // The node's own records, written by its heartbeats scenario, each with its settings
    // key, as a node reads them: 50 users per MGET.
    let mut lookup: Vec<String> = vec!["MGET".into()];
    let own = presence_server::presence::redis::keys::Keys::new(BENCH_PREFIX);
    for i in 0..IDS_PER_LOOKUP as u64 {
        let id = 1 + (i * 163) % config.users.max(1);
        let id = presence_server::presence::UserId::new(id).expect("an id");
        lookup.push(own.user(id));
        lookup.push(own.settings(id));
    }
    let requests = (config.measure.as_secs_f64() * 60_000.0).max(10_000.0) as u64;
    let mut rows = Vec::new();
    for (scenario, command) in [("heartbeats", heartbeat), ("lookups", lookup)] {
        eprintln!("running {scenario} with {REDIS_BENCHMARK} ...");
        let before = redis_cpu_seconds(url);
        let out = std::process::Command::new("redis-benchmark")
            .args(["-h", &host, "-p", &port.to_string()])
            .args(["-c", &config.connections.to_string()])
            .args(["-n", &requests.to_string(), "-r", &config.users.to_string()])
            .args(["--threads", "1", "--csv"])
            .args(&command)
            .output();
        let after = redis_cpu_seconds(url);
        let out = match out {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                eprintln!(
                    "redis-benchmark failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            Err(e) => {
                eprintln!("redis-benchmark could not run: {e}");
                continue;
            }
        };
        // --csv: a header line, then "test","rps","avg_latency_ms","min","p50","p95","p99","max".
        let Some(fields) = out.lines().nth(1).map(|l| {
            l.split(',')
                .map(|f| f.trim_matches('"').parse::<f64>().unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        }) else {
            eprintln!("redis-benchmark said nothing readable: {out}");
            continue;
        };
        let per_sec = fields.get(1).copied().unwrap_or(f64::NAN);
        rows.push(Row {
            round: 0,
            scenario,
            server: REDIS_BENCHMARK,
            requests,
            per_sec,
            p50_us: fields.get(4).copied().unwrap_or(f64::NAN) * 1000.0,
            p99_us: fields.get(6).copied().unwrap_or(f64::NAN) * 1000.0,
            errors: 0,
            first_error: None,
            redis_cpu_us: before
                .zip(after)
                .map(|(b, a)| (a - b) * 1e6 / requests as f64),
            node_cpu_us: None,
            node_threads_us: Vec::new(),
            unattributed_cpu_us: None,
        });
    }
    if let Ok(mut conn) = client.get_connection() {
        // The raw run's keys are throwaway; the node's own are left for inspection.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("bench-raw:*")
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------
// The client's floor
// ---------------------------------------------------------------------------------------

/// The node's heartbeat script (loaded again, in case no heartbeat loaded it yet) and its
/// hash, the time now and a deadline a minute on (ms since the epoch), and a present
/// user's record as the node writes it, for `Website`.
fn heartbeat_script_and_record(client: &redis::Client) -> (String, i64, i64, Vec<u8>) {
    let script = presence_server::presence::redis::scripts::heartbeat();
    if let Ok(mut conn) = client.get_connection() {
        let _: Result<String, _> = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&script)
            .query(&mut conn);
    }
    let sha = redis::Script::new(&script).get_hash().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let deadline = now + 60_000;
    let mut record = Vec::new();
    presence_server::presence::redis::record::encode_present(
        &presence_server::presence::model::Session {
            kind: presence_server::presence::PresenceType::Online,
            place: None,
            game_id: None,
        },
        "Website",
        now,
        deadline,
        &mut record,
    );
    (sha, now, deadline, record)
}

/// What the Redis client side of a node costs with no HTTP at all: the commands a node sends
/// (built once beforehand), [`FLOOR_IN_FLIGHT`] at a time, on one thread, whose CPU time
/// per answer is the row's node CPU. Two clients: redis-rs's multiplexed connection (what
/// the node uses: its task and the callers' on one current-thread runtime), and a raw
/// pipelined connection (blocking socket, the batch written at once, the answers only
/// scanned for their ends), the least a client can cost. Heartbeats are the node's
/// heartbeat script on keys of their own (`FLOOR_PREFIX`); lookups the node's `MGET` of
/// the lookups' records and settings, as the node wrote them.
fn client_floor_rows(url: &str, config: &Config, lookup_ids: &[Vec<u64>]) -> Vec<Row> {
    let Ok(client) = redis::Client::open(url) else {
        return Vec::new();
    };
    let (sha, now, deadline, record) = heartbeat_script_and_record(&client);
    let floor = presence_server::presence::redis::keys::Keys::new(FLOOR_PREFIX);
    let heartbeats: Vec<redis::Cmd> = (1..=config.users)
        .map(|n| {
            let user = UserId::new(n).expect("an id");
            let shard = presence_server::presence::redis::keys::shard_of(user);
            let mut call = redis::cmd("EVALSHA");
            call.arg(&sha)
                .arg(4)
                .arg(floor.user(user))
                .arg(floor.expiry(shard))
                .arg(floor.counters(shard))
                .arg(floor.settings(user))
                .arg(n)
                .arg(now)
                .arg("p")
                .arg(record.as_slice())
                .arg(deadline)
                .arg(-1)
                .arg("PUBLISH")
                .arg(floor.channel());
            call
        })
        .collect();
    let own = presence_server::presence::redis::keys::Keys::new(BENCH_PREFIX);
    let lookups: Vec<redis::Cmd> = lookup_ids
        .iter()
        .map(|ids| {
            let mut mget = redis::cmd("MGET");
            for &id in ids {
                let id = UserId::new(id).expect("an id");
                mget.arg(own.user(id)).arg(own.settings(id));
            }
            mget
        })
        .collect();
    let mut rows = Vec::new();
    for (scenario, commands) in [("heartbeats", heartbeats), ("lookups", lookups)] {
        let commands = Arc::new(commands);
        for (server, run) in [
            (REDIS_RS_ALONE, floor_redis_rs as FloorRun),
            (RAW_RESP, floor_raw as FloorRun),
        ] {
            eprintln!("running {scenario} with {server} ...");
            let window = Window::after(config.warmup, config.measure);
            let (answered, cpu_ns) = run(&client, Arc::clone(&commands), window);
            let mut row = Row::new(scenario, server, Outcome::default(), config.measure);
            row.requests = answered;
            row.per_sec = answered as f64 / config.measure.as_secs_f64();
            row.node_cpu_us = (answered > 0).then(|| cpu_ns as f64 / 1e3 / answered as f64);
            rows.push(row);
        }
    }
    if let Ok(mut conn) = client.get_connection() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{FLOOR_PREFIX}*"))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
    rows
}

/// One client floor run: answers within `window` and the CPU time of its thread over it.
type FloorRun = fn(&redis::Client, Arc<Vec<redis::Cmd>>, Window) -> (u64, u64);

/// The CPU time of the calling thread so far, in nanoseconds.
fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn floor_redis_rs(
    client: &redis::Client,
    commands: Arc<Vec<redis::Cmd>>,
    window: Window,
) -> (u64, u64) {
    let client = client.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("a connection to Redis");
            let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tasks: Vec<_> = (0..FLOOR_IN_FLIGHT)
                .map(|t| {
                    let (mut conn, commands) = (conn.clone(), Arc::clone(&commands));
                    let answered = Arc::clone(&answered);
                    tokio::spawn(async move {
                        use redis::aio::ConnectionLike as _;
                        let mut i = t;
                        while Instant::now() < window.end {
                            let answer = conn.req_packed_command(&commands[i % commands.len()]).await;
                            let done = Instant::now();
                            assert!(
                                matches!(answer, Ok(ref v) if !matches!(v, redis::Value::ServerError(_))),
                                "Redis failed: {answer:?}"
                            );
                            if done >= window.start && done < window.end {
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            i += FLOOR_IN_FLIGHT;
                        }
                    })
                })
                .collect();
            tokio::time::sleep_until(window.start.into()).await;
            let before = own_cpu_ns();
            tokio::time::sleep_until(window.end.into()).await;
            let spent = own_cpu_ns() - before;
            for task in tasks {
                task.await.expect("a floor task panicked");
            }
            (answered.load(std::sync::atomic::Ordering::Relaxed), spent)
        })
    })
    .join()
    .expect("the floor thread panicked")
}

fn floor_raw(client: &redis::Client, commands: Arc<Vec<redis::Cmd>>, window: Window) -> (u64, u64) {
    use std::io::{Read as _, Write as _};
    let addr = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("a raw connection needs a TCP address, not {other:?}"),
    };
    let packed: Vec<Vec<u8>> = commands
        .iter()
        .map(redis::Cmd::get_packed_command)
        .collect();
    std::thread::spawn(move || {
        let mut conn = std::net::TcpStream::connect(addr).expect("a connection to Redis");
        conn.set_nodelay(true).ok();
        let (mut batch, mut buf) = (Vec::new(), Vec::with_capacity(1 << 20));
        let (mut answered, mut next) = (0u64, 0usize);
        let (mut before, mut last) = (None, 0);
        loop {
            let now = Instant::now();
            if now >= window.end {
                break;
            }
            if now >= window.start && before.is_none() {
                before = Some(own_cpu_ns());
            }
            batch.clear();
            for _ in 0..FLOOR_IN_FLIGHT {
                batch.extend_from_slice(&packed[next % packed.len()]);
                next += 1;
            }
            conn.write_all(&batch).expect("a write to Redis");
            buf.clear();
            let (mut at, mut replies) = (0, 0);
            while replies < FLOOR_IN_FLIGHT {
                match resp_end(&buf, at) {
                    Some(end) => {
                        assert_ne!(
                            buf[at],
                            b'-',
                            "Redis failed: {}",
                            String::from_utf8_lossy(&buf[at..end])
                        );
                        at = end;
                        replies += 1;
                    }
                    None => {
                        let len = buf.len();
                        buf.resize(len + 64 * 1024, 0);
                        let n = conn.read(&mut buf[len..]).expect("a read from Redis");
                        assert!(n > 0, "Redis closed the connection");
                        buf.truncate(len + n);
                    }
                }
            }
            if before.is_some() && Instant::now() < window.end {
                answered += FLOOR_IN_FLIGHT as u64;
                last = own_cpu_ns();
            }
        }
        // CPU time up to the end of the last batch answered within the window.
        (
            answered,
            before.map_or(0, |before| last.saturating_sub(before)),
        )
    })
    .join()
    .expect("the floor thread panicked")
}

/// Where the RESP reply starting at `at` ends, if `buf` holds all of it.
fn resp_end(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + memchr::memmem::find(buf.get(at..)?, b"\r\n")?;
    let after = line_end + 2;
    let number = || -> i64 {
        std::str::from_utf8(&buf[at + 1..line_end])
            .ok()
            .and_then(|n| n.parse().ok())
            .expect("a RESP length")
    };
    match buf[at] {
        b'$' => match number() {
            n if n < 0 => Some(after),
            n => {
                let end = after + n as usize + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let mut at = after;
            for _ in 0..number().max(0) {
                at = resp_end(buf, at)?;
            }
            Some(at)
        }
        _ => Some(after),
    }
}
