//! presence-server: the Presence API v1 — who is online, and where.
//!
//! # Layout
//!
//! - [`config`]: typed settings: file → `PRESENCE__*` environment → validation.
//! - [`app`]: builds the HTTP server and the sweeper from settings, and shuts them down.
//! - [`connections`]: per-address connection limit, and head and idle deadlines on every
//!   request of a connection.
//! - [`auth`]: JWT credentials and CSRF tokens; service keys ([`auth::service`]).
//! - [`presence`]: the domain, no HTTP: the one interface the API calls
//!   ([`presence::service`]), ids and views ([`presence::model`]), the change feed
//!   ([`presence::watch`]), the memory backend ([`presence::memory`]: its sharded map,
//!   expiry index, shared locations and snapshots), the Redis backend
//!   ([`presence::redis`]), the sweeper and its owner ([`presence::sweeper`]), the place
//!   catalog ([`presence::places`]) and the two clocks ([`presence::time`]).
//! - [`api`]: HTTP only: routes, the body extractor, credential extractors, the error type
//!   and the JSON shapes.
//! - [`periodic`]: the background threads (memory sweeper, snapshot writer) and their
//!   shutdown.
//! - [`metrics`]: the Prometheus metrics.
//! - [`telemetry`]: log set-up.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod connections;
pub mod metrics;
pub mod periodic;
pub mod presence;
pub mod tasks;
pub mod telemetry;
#[cfg(test)]
mod test_rng;

pub use app::Application;
pub use config::Settings;
