//! The sharded map of users; the only file that touches `dashmap`.
//!
//! Every entry carries its own deadline and every read compares it with `now`, so presence
//! is exact at read time whether or not the sweeper has reached the entry yet.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use super::expiry::ExpiryIndex;
use super::model::{locations, Heartbeat, Now, PresenceType, PresenceView, Session, UserId};
use super::time::{Mono, WallMillis};

/// Users re-checked per shard lock during a sweep; bounds how long a lookup can wait.
const SWEEP_BATCH: usize = 256;

/// What one user looks like in memory. Offline users keep only what a lookup returns.
#[derive(Debug)]
struct Entry {
    last_online: WallMillis,
    last_location: Arc<str>,
    /// Whether the user's id sits in the expiry index (at most once).
    indexed: bool,
    /// Present until its deadline; `None` once Offline.
    live: Option<Box<Live>>,
}

#[derive(Debug)]
struct Live {
    deadline: Mono,
    session: Session,
}

impl Entry {
    fn view(&self, user_id: UserId, now: Mono) -> PresenceView {
        let session = self
            .live
            .as_deref()
            .filter(|live| now < live.deadline)
            .map(|live| &live.session);
        PresenceView {
            user_id,
            kind: session.map_or(PresenceType::Offline, |s| s.kind),
            last_location: self.last_location.clone(),
            place: session.and_then(|s| s.place),
            game_id: session.and_then(|s| s.game_id),
            last_online: Some(self.last_online),
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Users flipped Offline.
    pub expired: usize,
    /// Users found fresh (they heartbeated since) and moved to their new deadline's bucket.
    pub rescheduled: usize,
}

/// All users' presence. Shared behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    users: DashMap<UserId, Entry>,
    expiry: ExpiryIndex,
    ttl: Duration,
}

impl Store {
    /// `bucket_width` is the expiry index's resolution, normally the sweep interval.
    pub fn new(ttl: Duration, bucket_width: Duration) -> Self {
        Self {
            users: DashMap::new(),
            expiry: ExpiryIndex::new(bucket_width),
            ttl,
        }
    }

    /// Records one heartbeat of `user` at `now`.
    pub fn heartbeat(&self, user: UserId, heartbeat: Heartbeat, now: Now) {
        let deadline = now.mono.saturating_add(self.ttl);
        // The shard lock is held for this statement only; the index is updated after it is
        // released, which is safe because only this call may set `indexed` from false.
        let needs_index = match self.users.entry(user) {
            MapEntry::Occupied(mut occupied) => apply(occupied.get_mut(), heartbeat, now, deadline),
            MapEntry::Vacant(vacant) => {
                let mut entry = Entry {
                    last_online: now.wall,
                    last_location: locations::NEVER_SEEN.clone(),
                    indexed: false,
                    live: None,
                };
                let needs_index = apply(&mut entry, heartbeat, now, deadline);
                vacant.insert(entry);
                needs_index
            }
        };
        if needs_index {
            self.expiry.schedule(user, deadline);
        }
    }

    /// The presence of each id, in the given order. Never creates or changes an entry.
    pub fn get_many(&self, ids: &[UserId], now: Mono) -> Vec<PresenceView> {
        ids.iter()
            .map(|&id| match self.users.get(&id) {
                Some(entry) => entry.view(id, now),
                None => PresenceView::never_seen(id),
            })
            .collect()
    }

    /// Flips Offline every user whose deadline is `<= now`, working only on the buckets that
    /// came due. Holds one shard lock at a time, for one user, and yields between batches.
    pub fn sweep(&self, now: Now) -> SweepReport {
        let mut report = SweepReport::default();
        while let Some(due) = self.expiry.take_due(now.mono) {
            for batch in due.chunks(SWEEP_BATCH) {
                let mut fresh = Vec::new();
                for &user in batch {
                    // Re-checked under the entry's lock: a heartbeat that landed first wins.
                    let Some(mut entry) = self.users.get_mut(&user) else {
                        continue;
                    };
                    match entry.live.as_deref() {
                        Some(live) if now.mono < live.deadline => {
                            fresh.push((user, live.deadline));
                        }
                        live => {
                            report.expired += usize::from(live.is_some());
                            entry.live = None;
                            entry.indexed = false;
                        }
                    }
                }
                report.rescheduled += fresh.len();
                self.expiry.schedule_many(fresh);
                std::thread::yield_now();
            }
        }
        report
    }

    /// Users held in memory, present or not.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users whose id sits in the expiry index.
    pub fn scheduled(&self) -> usize {
        self.expiry.len()
    }
}

/// Applies a heartbeat to an entry; returns whether the user must now be put in the index.
fn apply(entry: &mut Entry, heartbeat: Heartbeat, now: Now, deadline: Mono) -> bool {
    entry.last_online = now.wall;
    match heartbeat {
        Heartbeat::Disconnect => {
            entry.live = None;
            false
        }
        Heartbeat::Present { location, session } => {
            entry.last_location = location;
            match entry.live.as_deref_mut() {
                Some(live) => {
                    live.deadline = deadline;
                    live.session = session;
                }
                None => entry.live = Some(Box::new(Live { deadline, session })),
            }
            let needs_index = !entry.indexed;
            entry.indexed = true;
            needs_index
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::model::PlaceInfo;
    use uuid::Uuid;

    const TTL: Duration = Duration::from_millis(1000);

    fn store() -> Store {
        Store::new(TTL, Duration::from_millis(100))
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn at(ms: u64) -> Now {
        Now {
            mono: Mono(ms),
            wall: WallMillis(1_700_000_000_000 + ms as i64),
        }
    }

    fn online(location: &str) -> Heartbeat {
        Heartbeat::Present {
            location: Arc::from(location),
            session: Session {
                kind: PresenceType::Online,
                place: None,
                game_id: None,
            },
        }
    }

    fn in_game(place_id: i64) -> Heartbeat {
        Heartbeat::Present {
            location: Arc::from("Playing"),
            session: Session {
                kind: PresenceType::InGame,
                place: Some(PlaceInfo {
                    place_id,
                    root_place_id: place_id,
                    universe_id: None,
                }),
                game_id: Some(Uuid::nil()),
            },
        }
    }

    fn one(store: &Store, n: u64, now: u64) -> PresenceView {
        store.get_many(&[user(n)], Mono(now)).remove(0)
    }

    #[test]
    fn a_user_never_seen_is_offline_with_no_last_online() {
        let s = store();
        assert_eq!(one(&s, 1, 0), PresenceView::never_seen(user(1)));
    }

    #[test]
    fn a_lookup_never_creates_an_entry() {
        let s = store();
        let ids: Vec<_> = (1..=1000).map(user).collect();
        let views = s.get_many(&ids, Mono(0));
        assert_eq!(views.len(), 1000);
        assert!(s.is_empty());
    }

    #[test]
    fn a_heartbeat_makes_the_user_present_until_its_deadline_exactly() {
        let s = store();
        s.heartbeat(user(1), in_game(5), at(10));
        let v = one(&s, 1, 10 + 999);
        assert_eq!(v.kind, PresenceType::InGame);
        assert_eq!(v.place.map(|p| p.place_id), Some(5));
        assert_eq!(v.game_id, Some(Uuid::nil()));
        assert_eq!(v.last_online, Some(at(10).wall));

        // From the deadline on, without any sweep, every read says Offline.
        let v = one(&s, 1, 10 + 1000);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.place, None);
        assert_eq!(v.game_id, None);
        assert_eq!(&*v.last_location, "Playing");
        assert_eq!(v.last_online, Some(at(10).wall));
    }

    #[test]
    fn the_sweeper_flips_expired_users_offline_keeping_last_online_and_location() {
        let s = store();
        s.heartbeat(user(1), online("Website"), at(0));
        s.heartbeat(user(2), online("Xbox"), at(500));
        assert_eq!(s.sweep(at(999)), SweepReport::default());

        let report = s.sweep(at(1100));
        assert_eq!(report.expired, 1);
        let v = one(&s, 1, 1100);
        assert_eq!(
            (v.kind, &*v.last_location, v.last_online),
            (PresenceType::Offline, "Website", Some(at(0).wall))
        );
        assert_eq!(one(&s, 2, 1100).kind, PresenceType::Online);

        assert_eq!(s.sweep(at(1600)).expired, 1);
        assert_eq!(s.scheduled(), 0);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_user_who_heartbeated_since_is_rescheduled_not_expired() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), online("b"), at(900));
        let report = s.sweep(at(1000));
        assert_eq!(
            report,
            SweepReport {
                expired: 0,
                rescheduled: 1
            }
        );
        assert_eq!(one(&s, 1, 1800).kind, PresenceType::Online);
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.sweep(at(2000)).expired, 1);
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn a_present_user_sits_in_the_index_once_however_often_it_heartbeats() {
        let s = store();
        for t in 0..50 {
            s.heartbeat(user(1), online("a"), at(t * 10));
        }
        assert_eq!(s.scheduled(), 1);
    }

    #[test]
    fn a_heartbeat_after_expiry_brings_the_user_back_online() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.sweep(at(5000));
        assert_eq!(one(&s, 1, 5000).kind, PresenceType::Offline);
        s.heartbeat(user(1), in_game(9), at(5000));
        assert_eq!(one(&s, 1, 5001).kind, PresenceType::InGame);
        assert_eq!(s.scheduled(), 1);
    }

    #[test]
    fn disconnect_makes_the_user_offline_at_once_and_keeps_the_location() {
        let s = store();
        s.heartbeat(user(1), in_game(9), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(300));
        let v = one(&s, 1, 301);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(&*v.last_location, "Playing");
        assert_eq!(v.last_online, Some(at(300).wall));
        assert_eq!(v.place, None);
        // Its index slot is released by the next due sweep, without counting an expiry.
        assert_eq!(s.sweep(at(2000)), SweepReport::default());
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn disconnect_of_a_user_never_seen_records_last_online() {
        let s = store();
        s.heartbeat(user(7), Heartbeat::Disconnect, at(42));
        let v = one(&s, 7, 50);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(&*v.last_location, "");
        assert_eq!(v.last_online, Some(at(42).wall));
        assert_eq!(s.scheduled(), 0);
    }

    #[test]
    fn reconnecting_after_disconnect_before_the_sweep_keeps_one_index_slot() {
        let s = store();
        s.heartbeat(user(1), online("a"), at(0));
        s.heartbeat(user(1), Heartbeat::Disconnect, at(100));
        s.heartbeat(user(1), online("b"), at(200));
        assert_eq!(s.scheduled(), 1);
        assert_eq!(
            s.sweep(at(1100)),
            SweepReport {
                expired: 0,
                rescheduled: 1
            }
        );
        assert_eq!(s.sweep(at(1200)).expired, 1);
    }

    #[test]
    fn heartbeats_racing_the_sweeper_are_never_lost() {
        let s = Arc::new(store());
        let users: Vec<_> = (1..=2000).map(user).collect();
        for &u in &users {
            s.heartbeat(u, online("a"), at(0));
        }
        // Half the users heartbeat again at t=900 while the sweeper expires at t=1000.
        let writer = {
            let s = Arc::clone(&s);
            let users = users.clone();
            std::thread::spawn(move || {
                for &u in users.iter().step_by(2) {
                    s.heartbeat(u, online("b"), at(900));
                }
            })
        };
        let mut expired = s.sweep(at(1000)).expired;
        writer.join().unwrap();
        expired += s.sweep(at(1000)).expired;
        // Odd users surely expired; an even one may have expired before its heartbeat landed.
        assert!(expired >= 1000, "{expired}");
        for (i, v) in s.get_many(&users, Mono(1000)).iter().enumerate() {
            let expected = if i % 2 == 0 {
                PresenceType::Online
            } else {
                PresenceType::Offline
            };
            assert_eq!(v.kind, expected, "user {}", v.user_id);
        }
        assert_eq!(s.scheduled(), 1000);
    }
}
