//! HTTP only: routes, the body extractor, credentials, the error type and JSON shapes.

pub mod body;
pub mod error;
pub mod extract;
pub mod json;
pub mod middleware;
pub mod routes;

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::presence::{Clock, PlaceCatalog, Store};

pub use error::ApiError;
pub use routes::configure;

/// What every handler shares; built once, outside `HttpServer::new`.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub catalog: PlaceCatalog,
    pub auth: Authenticator,
    pub clock: Clock,
}
