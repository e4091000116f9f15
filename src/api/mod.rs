//! HTTP only: routes, the body extractor, credentials, the error type and JSON shapes.

pub mod body;
pub mod cors;
pub mod error;
pub mod extract;
pub mod game_servers;
pub mod json;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod page;
pub mod privacy;
pub mod routes;
pub mod stream;
pub mod ws;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::{Authenticator, ServiceKeys};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::presence::{Clock, PlaceCatalog, Presence};

pub use error::ApiError;
pub use routes::configure;

/// What every handler shares; built once, outside `HttpServer::new`.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub presence: Presence,
    pub catalog: PlaceCatalog,
    pub auth: Authenticator,
    /// The keys of trusted callers, `auth.service_keys` (CONTRACT section 10).
    pub service_keys: Arc<ServiceKeys>,
    pub clock: Clock,
    pub limits: limits::RateLimits,
    pub metrics: Metrics,
    /// True from start-up (the store is loaded before the state exists) until shutdown
    /// begins; `/ready` answers from it.
    pub ready: AtomicBool,
    /// The OpenAPI document for these settings, rendered once.
    pub openapi: String,
    /// The live streams' connection tasks (each WebSocket's and each event stream's, which
    /// own their sockets once handed over), which shutdown waits for.
    pub live_tasks: crate::tasks::Tasks,
}
