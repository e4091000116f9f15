//! The embedded backend (`store.backend = "memory"`): the sharded map of users (with their
//! privacy settings), its expiry index, the shared location texts, the friendship table,
//! and the snapshots that carry all of it across a restart.

pub mod expiry;
pub mod friends;
pub mod location;
pub mod snapshot;
pub mod store;
