//! The embedded backend (`store.backend = "memory"`): the sharded map of users (the only
//! place that touches `dashmap`), its expiry index, the shared location texts and the
//! snapshots that carry it across a restart.

pub mod expiry;
pub mod location;
pub mod snapshot;
pub mod store;
