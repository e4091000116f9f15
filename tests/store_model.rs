//! The store against a plain model, under random sequences of heartbeats, disconnects,
//! sweeps and passing time: every read must agree with the model, whatever the sweeper
//! has or has not reached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use presence_server::presence::model::Session;
use presence_server::presence::time::{Mono, WallMillis};
use presence_server::presence::{Heartbeat, LocationName, Now, PresenceType, Store, UserId};
use proptest::prelude::*;

const TTL_MS: u64 = 1_000;
const USERS: u64 = 6;
const LOCATIONS: [&str; 3] = ["Website", "Xbox", "Phone"];

#[derive(Debug, Clone)]
enum Op {
    Heartbeat {
        user: u64,
        location: usize,
        after: u64,
    },
    Disconnect {
        user: u64,
        after: u64,
    },
    Sweep {
        after: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=USERS, 0..LOCATIONS.len(), 0..700u64)
            .prop_map(|(user, location, after)| Op::Heartbeat { user, location, after }),
        1 => (1..=USERS, 0..700u64).prop_map(|(user, after)| Op::Disconnect { user, after }),
        2 => (0..1_500u64).prop_map(|after| Op::Sweep { after }),
    ]
}

/// What the contract says a user looks like.
#[derive(Debug, Clone)]
struct Expected {
    last_online: i64,
    location: &'static str,
    /// Present while `now < deadline`.
    deadline: Option<u64>,
}

fn at(ms: u64) -> Now {
    Now {
        mono: Mono(ms),
        wall: WallMillis(1_700_000_000_000 + ms as i64),
    }
}

fn check(store: &Store, model: &HashMap<u64, Expected>, now: u64) {
    let ids: Vec<UserId> = (1..=USERS).map(|n| UserId::new(n).unwrap()).collect();
    for view in store.get_many(&ids, Mono(now)) {
        let n = view.user_id.get();
        match model.get(&n) {
            None => {
                assert_eq!(view.kind, PresenceType::Offline, "user {n}");
                assert_eq!(view.last_online, None, "user {n}");
                assert_eq!(view.last_location, "", "user {n}");
            }
            Some(e) => {
                let present = e.deadline.is_some_and(|d| now < d);
                let kind = if present {
                    PresenceType::Online
                } else {
                    PresenceType::Offline
                };
                assert_eq!(view.kind, kind, "user {n} at {now}: {e:?}");
                assert_eq!(
                    view.last_online,
                    Some(WallMillis(e.last_online)),
                    "user {n}"
                );
                assert_eq!(view.last_location, e.location, "user {n}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_read_agrees_with_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let store = Store::new(
            Duration::from_millis(TTL_MS),
            Duration::from_millis(100),
            None,
        );
        let mut model: HashMap<u64, Expected> = HashMap::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Heartbeat { user, location, after } => {
                    now += after;
                    let heartbeat = Heartbeat::Present {
                        location: LocationName::Given(LOCATIONS[location]),
                        session: Session { kind: PresenceType::Online, place: None, game_id: None },
                    };
                    store.heartbeat(UserId::new(user).unwrap(), heartbeat, at(now));
                    model.insert(user, Expected {
                        last_online: at(now).wall.0,
                        location: LOCATIONS[location],
                        deadline: Some(now + TTL_MS),
                    });
                }
                Op::Disconnect { user, after } => {
                    now += after;
                    store.heartbeat(UserId::new(user).unwrap(), Heartbeat::Disconnect, at(now));
                    let location = model.get(&user).map_or("", |e| e.location);
                    model.insert(user, Expected {
                        last_online: at(now).wall.0,
                        location,
                        deadline: None,
                    });
                }
                Op::Sweep { after } => {
                    now += after;
                    store.sweep(at(now));
                }
            }
            check(&store, &model, now);
            // However users connect and disconnect, each holds at most one expiry slot.
            prop_assert!(store.scheduled() <= store.len());
        }
        // Once every deadline has passed and a sweep ran, nobody is left in the index.
        now += TTL_MS + 200;
        store.sweep(at(now));
        check(&store, &model, now);
        prop_assert_eq!(store.scheduled(), 0);
        prop_assert_eq!(store.len(), model.len());
    }
}

const RETENTION_MS: u64 = 3_000;
/// The retention index's resolution with a 100ms sweep and a 3s retention.
const RETENTION_BUCKET_MS: u64 = 100;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With `presence.offline_retention` on: reads agree with the model for every user the
    /// store still holds; a user is forgotten only once it has been Offline for the whole
    /// retention, and surely by the first sweep a bucket after that; and the retention
    /// index never holds more slots than there are users, whatever the sequence.
    #[test]
    fn retention_forgets_on_time_and_keeps_one_slot_per_user(
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let store = Store::new(
            Duration::from_millis(TTL_MS),
            Duration::from_millis(100),
            Some(Duration::from_millis(RETENTION_MS)),
        );
        let mut model: HashMap<u64, Expected> = HashMap::new();
        let mut now = 0u64;
        let offline_for = |e: &Expected, now: u64| match e.deadline {
            Some(d) if now < d => None,
            _ => Some(now - (e.last_online - at(0).wall.0) as u64),
        };
        for op in ops {
            let swept = matches!(op, Op::Sweep { .. });
            match op {
                Op::Heartbeat { user, location, after } => {
                    now += after;
                    let heartbeat = Heartbeat::Present {
                        location: LocationName::Given(LOCATIONS[location]),
                        session: Session { kind: PresenceType::Online, place: None, game_id: None },
                    };
                    store.heartbeat(UserId::new(user).unwrap(), heartbeat, at(now));
                    model.insert(user, Expected {
                        last_online: at(now).wall.0,
                        location: LOCATIONS[location],
                        deadline: Some(now + TTL_MS),
                    });
                }
                Op::Disconnect { user, after } => {
                    now += after;
                    store.heartbeat(UserId::new(user).unwrap(), Heartbeat::Disconnect, at(now));
                    let location = model.get(&user).map_or("", |e| e.location);
                    model.insert(user, Expected {
                        last_online: at(now).wall.0,
                        location,
                        deadline: None,
                    });
                }
                Op::Sweep { after } => {
                    now += after;
                    store.sweep(at(now));
                }
            }
            // Users the store has forgotten: each must have been Offline for the retention.
            let ids: Vec<UserId> = (1..=USERS).map(|n| UserId::new(n).unwrap()).collect();
            for view in store.get_many(&ids, Mono(now)) {
                let n = view.user_id.get();
                if view.last_online.is_none() {
                    if let Some(e) = model.remove(&n) {
                        let off = offline_for(&e, now);
                        prop_assert!(
                            off.is_some_and(|ms| ms >= RETENTION_MS),
                            "user {} forgotten at {} too early: {:?}", n, now, e
                        );
                    }
                }
            }
            if swept {
                for (n, e) in &model {
                    let off = offline_for(e, now).unwrap_or(0);
                    prop_assert!(
                        off < RETENTION_MS + RETENTION_BUCKET_MS,
                        "user {} still held at {}: {:?}", n, now, e
                    );
                }
            }
            check(&store, &model, now);
            prop_assert!(store.retention_scheduled() <= store.len());
        }
        now += TTL_MS + RETENTION_MS + 500;
        store.sweep(at(now));
        prop_assert_eq!(store.len(), 0);
        prop_assert_eq!(store.retention_scheduled(), 0);
        prop_assert_eq!(store.scheduled(), 0);
    }
}
