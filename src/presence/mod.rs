//! The presence domain: who is online and where. No HTTP in here.

pub mod expiry;
pub mod location;
pub mod model;
pub mod places;
pub mod redis;
pub mod service;
pub mod store;
pub mod sweeper;
pub mod time;
pub mod watch;

pub use location::{Location, Locations};
pub use model::{AppReport, Heartbeat, LocationName, Now, PresenceType, PresenceView, UserId};
pub use places::PlaceCatalog;
pub use service::{Counts, Presence, PresenceError};
pub use store::Store;
pub use time::{Clock, MockClock};
pub use watch::{Changes, Hub, Subscription};
