//! Builds the running service from settings (presence on its backend, the memory store
//! loaded from its snapshot, the HTTP server, the sweeper and the snapshot writer) and shuts
//! it down. `main` and the tests go
//! through the same [`Application::build`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_http::{HttpService, Protocol};
use actix_service::{fn_service, map_config, ServiceFactoryExt as _};
use actix_web::dev::{AppConfig, Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use anyhow::Context as _;

use crate::api::limits::RateLimits;
use crate::api::{self, AppState};
use crate::auth::{Authenticator, ServiceKeys};
use crate::config::{PersistenceSettings, Settings};
use crate::connections::{AddressLimiter, Connection, Deadlines};
use crate::metrics::Metrics;
use crate::periodic::Periodic;
use crate::presence::memory::snapshot as persistence;
use crate::presence::sweeper::Sweeper;
use crate::presence::{Clock, PlaceCatalog, Presence, Store};

/// A bound server with its sweeper and snapshot writer, ready to run.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    sweeper: Sweeper,
    /// Forgets idle rate-limit buckets and unwatched users every [`HOUSEKEEPING_EVERY`],
    /// whatever the sweeps do (a Redis outage stops them, not this).
    housekeeping: Periodic,
    snapshotter: Option<Periodic>,
    /// With persistence on: the exclusive hold on `persistence.path`, shared with the
    /// snapshot thread and released only after the last snapshot is written (or, for an
    /// application dropped unrun, once that thread has ended too).
    snapshot_lock: Option<Arc<persistence::SnapshotLock>>,
    state: web::Data<AppState>,
}

impl Application {
    /// Loads the snapshot (if persistence is on), binds `server.bind` (port 0 picks a free
    /// port) and starts the sweeper and the snapshot writer. Must be called inside a Tokio
    /// runtime; nothing is served until [`Application::run_until_stopped`]. The server
    /// ignores signals: the caller decides when to stop (see [`Self::handle`]).
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Clock::system())
    }

    /// [`Self::build`] on `clock`, which every part of the server reads: the store's
    /// times, the sweeper, credential `exp`/`nbf`, CSRF windows and rate limits. Tests pass
    /// a [`Clock::mock`] to move time by hand. The sweeper and snapshot threads still run
    /// every `sweep_interval` and `snapshot_interval` of real time.
    pub fn build_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Self> {
        let presence = Presence::from_settings(
            &settings,
            clock.clone(),
            api::json::entry_encoder(settings.api.presence_type),
        )?;
        let snapshot_lock = match presence.memory_store() {
            Some(store) if settings.persistence.enabled => {
                Some(load_snapshot(store, &settings.persistence, &clock)?)
            }
            None if settings.persistence.enabled => {
                tracing::info!(
                    "persistence.* is not used with store.backend = \"redis\": Redis's own \
                     RDB/AOF persistence applies"
                );
                None
            }
            _ => None,
        };
        let state = web::Data::new(AppState {
            catalog: PlaceCatalog::new(&settings.places),
            auth: Authenticator::with_clock(&settings.auth.jwt_secret, clock.clone()),
            service_keys: Arc::new(
                ServiceKeys::new(&settings.auth.service_keys).map_err(anyhow::Error::msg)?,
            ),
            presence,
            clock: clock.clone(),
            limits: RateLimits::with_clock(&settings.rate_limit, clock.clone()),
            metrics: Metrics::new(&api::routes::ROUTES),
            ready: AtomicBool::new(true),
            openapi: api::openapi::document(&settings).to_string(),
            live_tasks: crate::tasks::Tasks::default(),
            settings,
        });
        // Until the first write, the file on disk is the one just loaded (or none at all):
        // start-up counts as the last success, so that an alert on its age starts calm.
        state
            .metrics
            .snapshot_written(clock.now().wall.0 as f64 / 1000.0);
        let server = serve(&state)?;
        let sweeper = {
            let swept = state.clone();
            Sweeper::start(
                &state.presence,
                state.settings.presence.sweep_interval,
                move |report, took| {
                    swept.metrics.swept(report, took.as_secs_f64());
                    if report.expired + report.dropped > 0 {
                        tracing::debug!(
                            expired = report.expired,
                            rescheduled = report.rescheduled,
                            dropped = report.dropped,
                            "sweep"
                        );
                    }
                },
                restarted(&state, "sweeper"),
            )
            .context("cannot start the sweeper")?
        };
        let housekeeping = start_housekeeping(&state)?;
        let snapshotter = match &snapshot_lock {
            Some(lock) => Some(start_snapshots(&state, lock)?),
            None => None,
        };
        Ok(Self {
            addr: server.addr,
            server: server.server,
            sweeper,
            housekeeping,
            snapshotter,
            snapshot_lock,
            state,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: `handle.stop(true)` lets in-flight requests finish within
    /// `server.shutdown_timeout`. Prefer [`Self::shutdown`], which also drains.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// What begins a graceful shutdown from outside (a signal handler, a test).
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            server: self.server.handle(),
            state: self.state.clone(),
        }
    }

    /// Serves until stopped; then stops and joins the background threads and, with
    /// persistence on, writes a last snapshot and only then releases the snapshot path.
    /// Fails if that snapshot cannot be written.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        let (sweeper, snapshotter, state) = (self.sweeper, self.snapshotter, self.state);
        let (housekeeping, snapshot_lock) = (self.housekeeping, self.snapshot_lock);
        sweeper.stop().await;
        tokio::task::spawn_blocking(move || {
            housekeeping.stop();
            if let Some(snapshotter) = snapshotter {
                snapshotter.stop();
                let path = &state.settings.persistence.path;
                write_snapshot(&state, true).with_context(|| {
                    format!("cannot write the last snapshot to {}", path.display())
                })?;
            }
            drop(snapshot_lock);
            anyhow::Ok(())
        })
        .await
        .context("joining the background threads")??;
        served.context("the HTTP server failed")
    }
}

/// Begins a graceful shutdown: `/ready` turns 503 at once, requests are still served for
/// `server.drain_delay`, then the listener closes and in-flight requests get
/// `server.shutdown_timeout` to finish.
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    state: web::Data<AppState>,
}

impl Shutdown {
    pub async fn begin(self) {
        self.state.ready.store(false, Ordering::Release);
        let drain = self.state.settings.server.drain_delay;
        if !drain.is_zero() {
            tokio::time::sleep(drain).await;
        }
        // Live streams never end by themselves: end them, so that their clients reconnect
        // (to another node) and the connections can close within the shutdown timeout.
        self.state.presence.hub().close();
        // Each WebSocket's task sends its close frame, and each event stream's the end of
        // its body, and ends; then the connections close.
        let within = self.state.settings.server.shutdown_timeout;
        if !self.state.live_tasks.ended(within).await {
            tracing::warn!(
                running = self.state.live_tasks.running(),
                "live streams still open at the shutdown timeout"
            );
        }
        self.server.stop(true).await;
    }
}

/// Locks `persistence.path` and loads its snapshot into `store`. The lock is taken first of
/// all: nothing may touch the snapshot's files while another process owns them.
fn load_snapshot(
    store: &Store,
    persist: &PersistenceSettings,
    clock: &Clock,
) -> anyhow::Result<Arc<persistence::SnapshotLock>> {
    let lock = persistence::lock(&persist.path)?;
    tracing::debug!(lock = %lock.path().display(), "snapshot path locked");
    persistence::prepare(&persist.path).with_context(|| {
        format!(
            "persistence.path {} is not writable",
            persist.path.display()
        )
    })?;
    match persistence::load(store, &persist.path, clock.now())? {
        Some(loaded) => tracing::info!(
            path = %persist.path.display(),
            users = loaded.users,
            forgotten = loaded.forgotten,
            settings = loaded.settings,
            friendships = loaded.friendships,
            friendships_skipped = loaded.friendships_skipped,
            bytes = loaded.bytes,
            seconds = loaded.seconds,
            "snapshot loaded"
        ),
        None => tracing::info!(
            path = %persist.path.display(),
            "no snapshot yet: starting empty"
        ),
    }
    Ok(Arc::new(lock))
}

/// How often idle rate-limit buckets and users nobody watches any more are forgotten.
pub const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the thread that forgets, every [`HOUSEKEEPING_EVERY`], the rate-limit buckets
/// that have refilled and the users nobody has watched for a while: on its own tick, so
/// that neither waits for a sweep (on Redis, sweeps stop while Redis is unreachable).
fn start_housekeeping(state: &web::Data<AppState>) -> anyhow::Result<Periodic> {
    let on_restart = restarted(state, "housekeeping");
    let state = state.clone();
    Periodic::spawn(
        "presence-housekeeping",
        HOUSEKEEPING_EVERY,
        move || {
            state.limits.forget_idle();
            state.presence.hub().reap();
        },
        on_restart,
    )
    .context("cannot start the housekeeping thread")
}

/// Starts the thread that writes a snapshot every `persistence.snapshot_interval`, holding
/// `lock` (no snapshot is ever written without it).
fn start_snapshots(
    state: &web::Data<AppState>,
    lock: &Arc<persistence::SnapshotLock>,
) -> anyhow::Result<Periodic> {
    let on_restart = restarted(state, "snapshot");
    let held = Arc::clone(lock);
    let state = state.clone();
    let interval = state.settings.persistence.snapshot_interval;
    Periodic::spawn(
        "presence-snapshot",
        interval,
        move || {
            let _held = &held;
            // A failed periodic write is counted and retried at the next interval; the
            // previous snapshot stays in place meanwhile.
            let _ = write_snapshot(&state, false);
        },
        on_restart,
    )
    .context("cannot start the snapshot thread")
}

/// A bound, not yet running HTTP server.
struct Bound {
    addr: SocketAddr,
    server: Server,
}

/// The HTTP server: actix-server accepts connections; each one passes the per-address limit,
/// is wrapped in a [`Connection`] that keeps the head and idle deadlines on every request
/// (actix-http keeps them on the first only), and is served by actix-http with the
/// application. This is what `actix_web::HttpServer` assembles, plus those two steps.
fn serve(state: &web::Data<AppState>) -> anyhow::Result<Bound> {
    let settings = &state.settings.server;
    let listener =
        listen(settings.bind).with_context(|| format!("cannot listen on {}", settings.bind))?;
    let addr = listener
        .local_addr()
        .context("the server is bound to no address")?;
    let mut builder = Server::build()
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
        .max_concurrent_connections(settings.max_connections_per_worker)
        .backlog(BACKLOG);
    if settings.workers > 0 {
        builder = builder.workers(settings.workers);
    }
    let draining = builder.graceful_shutdown_signal();
    let limiter = AddressLimiter::new(settings.max_connections_per_address);
    let deadlines = Deadlines::from_settings(settings, &state.settings.stream);
    let (head_timeout, keep_alive) = (settings.request_head_timeout, settings.keep_alive);
    let shared = state.clone();
    let builder = builder
        .listen("presence-http", listener, move || {
            let shared = shared.clone();
            // Each worker its own copy: nothing shared between workers per request.
            let cors = api::cors::Cors::new(&shared.settings.api.cors_origins);
            // CORS inside the logging: preflights are counted and logged like any request.
            // Without origins (the default) it is not in the path at all. The refusal of
            // unknown service keys inside CORS: a page can read its 401 too.
            let cors_on = cors.is_on();
            // Without CORS the logging layer refuses unknown keys itself: one layer less.
            let app = App::new()
                .app_data(shared)
                .wrap(Condition::new(
                    cors_on,
                    from_fn(api::middleware::refuse_unknown_keys),
                ))
                .wrap(Condition::new(
                    cors_on,
                    from_fn(move |req, next| cors.handle(req, next)),
                ))
                .wrap(from_fn(move |req, next| {
                    api::middleware::negotiate_and_log(req, next, !cors_on)
                }))
                .configure(api::configure)
                .default_service(web::to(api::routes::not_found));
            let draining = draining.clone();
            let http = HttpService::build()
                .keep_alive(keep_alive)
                .client_request_timeout(head_timeout)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .h1_write_buffer_size(WRITE_THRESHOLD)
                .local_addr(addr)
                .on_connect_ext(|io: &Connection, data| {
                    data.insert(io.mark());
                })
                .graceful_shutdown_signal(move || {
                    let draining = draining.clone();
                    async move { draining.notified().await }
                })
                // The application reads nothing from `AppConfig` (host and address
                // come from the request).
                .finish(map_config(app, |()| AppConfig::default()));
            let limiter = limiter.clone();
            fn_service(move |stream: TcpStream| {
                let admitted = accept(&limiter, stream, deadlines);
                async move { admitted }
            })
            .and_then(http)
        })
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    Ok(Bound {
        addr,
        server: builder.run(),
    })
}

/// How much of a response body the HTTP layer gathers in a connection's write buffer
/// before it writes (actix-http's `h1_write_buffer_size`, 32 KiB by default). The buffer
/// starts at 8 KiB and keeps the largest size it ever reached for the connection's life: an
/// event stream whose socket cannot be handed over, which hands its events over at most
/// `api::stream::PIECE` bytes at a time, never has it hold more than this plus one piece,
/// and so never grows it.
pub(crate) const WRITE_THRESHOLD: usize = 4096;

/// The listen queue, as `actix_web::HttpServer` sets it.
const BACKLOG: u32 = 1024;
/// How long a connection being closed may take to flush its last answer (the
/// `actix_web::HttpServer` default).
const CLIENT_DISCONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A listening socket on `addr`, with the options `actix_web::HttpServer` uses.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(IpProtocol::TCP),
    )?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG as i32)?;
    Ok(socket.into())
}

/// Admits a new connection under the per-address limit, or closes it (by dropping it).
fn accept(
    limiter: &std::sync::Arc<AddressLimiter>,
    stream: TcpStream,
    deadlines: Deadlines,
) -> Result<(Connection, Protocol, Option<SocketAddr>), actix_http::error::DispatchError> {
    let peer = stream.peer_addr().ok();
    let slot = match peer.map(|p| limiter.admit(p.ip())) {
        Some(Ok(slot)) => slot,
        Some(Err(_)) => {
            tracing::debug!(peer = ?peer, "connection refused: too many from this address");
            return Err(actix_http::error::DispatchError::Io(std::io::Error::other(
                "too many connections from this address",
            )));
        }
        None => None,
    };
    Ok((
        Connection::new(stream, deadlines, slot),
        Protocol::Http1,
        peer,
    ))
}

/// Counts a restart of background task `task` (a name of
/// [`crate::metrics::BACKGROUND_TASKS`]).
fn restarted(state: &web::Data<AppState>, task: &'static str) -> impl Fn() + Send + Sync + 'static {
    let state = state.clone();
    move || state.metrics.background_restart(task)
}

/// Writes a snapshot, logs and counts the outcome. `last` is the one written at shutdown,
/// logged at info; the periodic ones are logged at debug when they succeed.
fn write_snapshot(state: &AppState, last: bool) -> std::io::Result<()> {
    let path = &state.settings.persistence.path;
    let now = state.clock.now();
    let Some(store) = state.presence.memory_store() else {
        return Ok(());
    };
    match persistence::write(store, path, now) {
        Ok(stats) => {
            state.metrics.snapshot_written(now.wall.0 as f64 / 1000.0);
            if last {
                tracing::info!(
                    path = %path.display(),
                    users = stats.users,
                    bytes = stats.bytes,
                    seconds = stats.seconds,
                    "last snapshot written"
                );
            } else {
                tracing::debug!(
                    path = %path.display(),
                    users = stats.users,
                    bytes = stats.bytes,
                    seconds = stats.seconds,
                    "snapshot written"
                );
            }
            Ok(())
        }
        Err(e) => {
            state.metrics.snapshot_failed();
            tracing::error!(path = %path.display(), error = %e, "cannot write the snapshot");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;
    use crate::presence::UserId;
    use std::time::{Duration, Instant};

    /// Rate-limit buckets are forgotten on their own tick, even while every sweep fails
    /// (here: Redis never reachable).
    #[tokio::test]
    async fn idle_buckets_are_forgotten_while_sweeps_fail() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut settings = Settings::default();
        settings.server.bind = "127.0.0.1:0".parse().unwrap();
        settings.server.workers = 1;
        settings.persistence.enabled = false;
        settings.store.backend = Backend::Redis;
        settings.redis.url = format!("redis://127.0.0.1:{closed}");
        settings.redis.timeout = Duration::from_millis(100);
        settings.presence.sweep_interval = Duration::from_millis(100);
        settings.rate_limit.register_per_second = 1;
        settings.rate_limit.register_burst = 1;
        let (clock, mock) = Clock::mock();
        let app = Application::build_with_clock(settings, clock).unwrap();
        let limits = &app.state.limits;
        for n in 1..=5 {
            assert!(limits.register(UserId::new(n).unwrap()).is_ok());
        }
        assert_eq!(limits.remembered(), 5);
        mock.increment(Duration::from_secs(60));
        let deadline = Instant::now() + HOUSEKEEPING_EVERY * 5;
        while limits.remembered() > 0 {
            assert!(Instant::now() < deadline, "buckets still remembered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
