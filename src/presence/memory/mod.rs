//! The embedded backend (`store.backend = "memory"`): the sharded map of users, its expiry
//! index, the shared location texts, the snapshots that carry it across a restart, and
//! the friendship table (not wired in yet).

pub mod expiry;
pub mod friends;
pub mod location;
pub mod snapshot;
pub mod store;
