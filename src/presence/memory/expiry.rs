//! The expiry index that the sweeper drains (see `Store::sweep`).
//!
//! With one TTL for everyone, deadlines only move forward, so a present user needs one slot
//! in a coarse time bucket (one sweep interval wide) and a heartbeat never touches the index
//! again while the user stays present. When a bucket comes due the store re-checks each of
//! its users under the map's lock: still fresh → rescheduled at its current deadline;
//! stale → flipped Offline. Work is proportional to the users whose bucket came due.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::presence::model::UserId;
use crate::presence::time::{duration_millis, Mono};

/// Buckets keyed by `ceil(deadline / width)`: every deadline in bucket `k` is at most
/// `k * width`, so a bucket is due, whole, once `now >= k * width`.
///
/// Keyed by user by default; generic so that other keys can have one.
#[derive(Debug)]
pub struct ExpiryIndex<K = UserId> {
    width_ms: u64,
    // Held only to push or pop a bucket, never while a map shard is locked.
    buckets: Mutex<BTreeMap<u64, Vec<K>>>,
}

impl<K> ExpiryIndex<K> {
    pub fn new(bucket_width: Duration) -> Self {
        Self {
            width_ms: duration_millis(bucket_width).max(1),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// The bucket a deadline is filed under.
    pub fn bucket_of(&self, deadline: Mono) -> u64 {
        deadline.0.div_ceil(self.width_ms)
    }

    pub fn schedule(&self, user: K, deadline: Mono) {
        let key = self.bucket_of(deadline);
        self.buckets.lock().entry(key).or_default().push(user);
    }

    pub fn schedule_many(&self, users: impl IntoIterator<Item = (K, Mono)>) {
        let mut buckets = self.buckets.lock();
        for (user, deadline) in users {
            buckets
                .entry(self.bucket_of(deadline))
                .or_default()
                .push(user);
        }
    }

    /// Removes and returns the earliest bucket, with its key, if some of its deadlines may be
    /// `<= now` (its span has begun): the caller re-checks each user, and refiles those not
    /// due yet only after it has taken every such bucket.
    pub fn take_started(&self, now: Mono) -> Option<(u64, Vec<K>)> {
        let mut buckets = self.buckets.lock();
        let (&key, _) = buckets.first_key_value()?;
        if key.saturating_sub(1).saturating_mul(self.width_ms) >= now.0 {
            return None;
        }
        buckets.pop_first()
    }

    /// Removes and returns the earliest bucket, with its key, if all of its deadlines are
    /// `<= now`.
    pub fn take_due(&self, now: Mono) -> Option<(u64, Vec<K>)> {
        let mut buckets = self.buckets.lock();
        let (&key, _) = buckets.first_key_value()?;
        if key.saturating_mul(self.width_ms) > now.0 {
            return None;
        }
        buckets.pop_first()
    }

    /// How many user slots the index holds (one per present or not-yet-swept user).
    pub fn len(&self) -> usize {
        self.buckets.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    #[test]
    fn a_bucket_comes_due_only_when_all_its_deadlines_have_passed() {
        let index = ExpiryIndex::new(Duration::from_millis(100));
        index.schedule(user(1), Mono(101));
        index.schedule(user(2), Mono(200));
        assert_eq!(index.take_due(Mono(199)), None);
        assert_eq!(index.take_due(Mono(200)), Some((2, vec![user(1), user(2)])));
        assert!(index.is_empty());
    }

    #[test]
    fn a_bucket_is_started_once_its_span_has_begun() {
        let index = ExpiryIndex::new(Duration::from_millis(100));
        index.schedule(user(1), Mono(150));
        assert_eq!(index.take_started(Mono(100)), None);
        assert_eq!(index.take_started(Mono(101)), Some((2, vec![user(1)])));
        assert!(index.is_empty());
    }

    #[test]
    fn buckets_come_due_in_deadline_order() {
        let index = ExpiryIndex::new(Duration::from_millis(10));
        index.schedule_many([(user(3), Mono(35)), (user(1), Mono(5)), (user(2), Mono(15))]);
        assert_eq!(index.len(), 3);
        assert_eq!(index.take_due(Mono(100)), Some((1, vec![user(1)])));
        assert_eq!(index.take_due(Mono(100)), Some((2, vec![user(2)])));
        assert_eq!(index.take_due(Mono(100)), Some((4, vec![user(3)])));
        assert_eq!(index.take_due(Mono(100)), None);
    }
}
