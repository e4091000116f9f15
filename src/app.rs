//! Builds the running service from settings (the HTTP server and the sweeper) and shuts it
//! down. `main` and the tests go through the same [`Application::build`].

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::api::{self, AppState};
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::presence::{Clock, PlaceCatalog, Store, Sweeper};

/// A bound server and its sweeper, ready to run.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    sweeper: Sweeper,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds `server.bind` (port 0 picks a free port) and starts the sweeper. Must be called
    /// inside a Tokio runtime; nothing is served until [`Application::run_until_stopped`].
    /// The server ignores signals: the caller decides when to stop (see [`Self::handle`]).
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let clock = Clock::new();
        let store = Arc::new(Store::new(
            settings.presence.heartbeat_ttl,
            settings.presence.sweep_interval,
            settings.presence.offline_retention,
        ));
        let state = web::Data::new(AppState {
            catalog: PlaceCatalog::new(&settings.places),
            auth: Authenticator::new(&settings.auth.jwt_secret),
            store: Arc::clone(&store),
            clock,
            settings,
        });
        let server_settings = &state.settings.server;
        let shared = state.clone();
        let mut http = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .wrap(from_fn(api::middleware::negotiate_and_log))
                .configure(api::configure)
                .default_service(web::to(api::routes::not_found))
        })
        .disable_signals()
        .shutdown_timeout(server_settings.shutdown_timeout.as_secs().max(1));
        if server_settings.workers > 0 {
            http = http.workers(server_settings.workers);
        }
        let http = http
            .bind(server_settings.bind)
            .with_context(|| format!("cannot listen on {}", server_settings.bind))?;
        let addr = http
            .addrs()
            .first()
            .copied()
            .context("the server is bound to no address")?;
        let server = http.run();
        let sweeper = Sweeper::spawn(store, clock, state.settings.presence.sweep_interval)
            .context("cannot start the sweeper thread")?;
        Ok(Self {
            addr,
            server,
            sweeper,
            state,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: `handle.stop(true)` lets in-flight requests finish within
    /// `server.shutdown_timeout`.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The shared state, for callers that inspect the store (tests, benches).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until stopped, then stops and joins the sweeper.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        let sweeper = self.sweeper;
        tokio::task::spawn_blocking(move || sweeper.stop())
            .await
            .context("joining the sweeper")?;
        served.context("the HTTP server failed")
    }
}
