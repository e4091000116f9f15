//! The presence domain: who is online and where. No HTTP in here.

pub mod memory;
pub mod model;
pub mod places;
pub mod privacy;
pub mod redis;
pub mod service;
pub mod sessions;
pub mod sweeper;
pub mod time;
pub mod watch;

pub use memory::location::{Location, Locations};
pub use memory::store::Store;
pub use model::{AppReport, Heartbeat, LocationName, Now, PresenceType, PresenceView, UserId};
pub use places::PlaceCatalog;
pub use service::{Counts, Presence, PresenceError};
pub use time::{Clock, MockClock};
pub use watch::{Changes, Hub, Subscription};
