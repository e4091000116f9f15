//! Helpers shared by the store benches: a driven clock and ready-made heartbeats.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use presence_server::presence::model::Session;
use presence_server::presence::time::{Mono, WallMillis};
use presence_server::presence::{
    Heartbeat, Location, LocationName, Now, PresenceType, Store, UserId,
};

pub const TTL: Duration = Duration::from_secs(60);
pub const TICK: Duration = Duration::from_secs(1);

pub fn at(ms: u64) -> Now {
    Now {
        mono: Mono(ms),
        wall: WallMillis(1_700_000_000_000 + ms as i64),
    }
}

pub fn online() -> Heartbeat<'static> {
    Heartbeat::Present {
        location: LocationName::Shared(Location::website()),
        session: Session {
            kind: PresenceType::Online,
            place: None,
            game_id: None,
        },
    }
}

pub fn user(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

pub fn new_store() -> Store {
    Store::new(TTL, TICK, None)
}

/// A store of `users` users (ids `1..=users`), all present from one heartbeat at `t`.
pub fn present_users(users: u64, t: u64) -> Store {
    let store = new_store();
    for n in 1..=users {
        store.heartbeat(user(n), online(), at(t));
    }
    store
}

/// A store of `users` users, all Offline (present once, then expired and swept).
pub fn offline_users(users: u64) -> Store {
    let store = present_users(users, 0);
    store.sweep(at(ms(TTL)));
    store
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A fixed pseudo-random sequence (xorshift), so every run asks for the same ids.
pub struct Ids(u64);

impl Ids {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// An id in `1..=max`.
    pub fn next_in(&mut self, max: u64) -> UserId {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        user(self.0 % max + 1)
    }
}
