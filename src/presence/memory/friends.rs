//! The memory backend's friendships (CONTRACT section 11, "Friends"): who is whose friend,
//! symmetric, with at most `privacy.max_friends` friends a user. Held by the store, which
//! tells watchers of the pairs a write changed (see [`Applied::changed`]).
//!
//! A sharded map from a user to its friends: the ids, ascending, in one allocation of
//! exactly their size (a `Box<[UserId]>`: 8 bytes a friend, a 16-byte pointer and length
//! in the map slot beside the 8-byte key). A user without friends has no entry. Every
//! friendship is kept on both sides, so a pair costs 16 bytes of lists plus its share of
//! its two users' slots.
//!
//! Writes (pushed by the platform, rare) take one writer mutex for the whole call: the
//! bound is checked against lists no other write is changing, and both sides of every pair
//! change in the same call. A call works on copies of the lists it changes and publishes
//! them only at its end, each list replaced whole under its shard's write lock, so a reader
//! sees every list either before or after a call's change of it, never half-edited.
//! Reads never take the writer mutex: a lookup holds one shard's read lock for one binary
//! search. While a write is being published, a reader may find a pair on one side and not
//! yet on the other; once the call returns, both sides agree.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::presence::model::UserId;
use crate::presence::privacy::{FriendList, FriendPair, FriendshipChanges};

type Hasher = foldhash::fast::RandomState;

/// One user's friends, ascending, each once; never empty in the map.
type Friends = Box<[UserId]>;

/// Pairs added under one hold of the writer mutex by [`Friendships::restore`].
const RESTORE_BATCH: usize = 4096;

/// Pairs copied before [`Friendships::for_each_pair`] hands them out (one user's list may
/// take a batch past it).
const VISIT_BATCH: usize = 4096;

/// What one write did: the pairs it skipped for the bound, and the friendships it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pairs not added because either user would pass `max_friends`, as the write returns
    /// them.
    pub skipped: Vec<FriendPair>,
    /// Every friendship whose state differs after the write from before it, with that new
    /// state (`true`: now friends), in the order the write first touched them: a removal
    /// of a pair that existed, an addition of a pair that did not. A pair removed and added
    /// again in one call is not changed.
    pub changed: Vec<(FriendPair, bool)>,
}

/// One user's friends, read in place: holds its shard's read lock while it lives (writes
/// of lists in that shard wait for it), so keep it for one short read.
pub struct FriendsRef<'a>(Ref<'a, UserId, Friends>);

impl FriendsRef<'_> {
    /// Whether `user` is among these friends: one binary search.
    pub fn contains(&self, user: UserId) -> bool {
        self.0.binary_search(&user).is_ok()
    }

    /// The friends, ascending.
    pub fn ids(&self) -> &[UserId] {
        self.0.value()
    }
}

/// Every friendship, both sides. Shared behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Friendships {
    lists: DashMap<UserId, Friends, Hasher>,
    /// Held for the whole of every write; never by a read.
    writer: Mutex<()>,
    max_friends: usize,
    /// Friendships (each pair once), kept beside the map; changed under `writer`.
    pairs: AtomicUsize,
    /// Users with at least one friend (`lists.len()`, which would lock every shard);
    /// changed under `writer`.
    users: AtomicUsize,
}

impl Friendships {
    /// An empty table whose users hold at most `max_friends` friends each.
    pub fn new(max_friends: usize) -> Self {
        Self {
            lists: DashMap::with_hasher(Hasher::default()),
            writer: Mutex::new(()),
            max_friends,
            pairs: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
        }
    }

    /// The bound on a user's friends.
    pub fn max_friends(&self) -> usize {
        self.max_friends
    }

    /// Whether `a` and `b` are friends (never for a user and itself). One shard read lock,
    /// one binary search, no allocation.
    pub fn are_friends(&self, a: UserId, b: UserId) -> bool {
        self.lists
            .get(&a)
            .is_some_and(|friends| friends.binary_search(&b).is_ok())
    }

    /// `user`'s friends read in place, without a copy; `None` for a user without any. See
    /// [`FriendsRef`] for the lock it holds.
    pub fn list(&self, user: UserId) -> Option<FriendsRef<'_>> {
        self.lists.get(&user).map(FriendsRef)
    }

    /// `user`'s friends, ascending; empty for a user without any.
    pub fn friends_of(&self, user: UserId) -> Vec<UserId> {
        self.lists
            .get(&user)
            .map_or_else(Vec::new, |friends| friends.to_vec())
    }

    /// Friendships, each counted once.
    pub fn pairs(&self) -> usize {
        self.pairs.load(Ordering::Relaxed)
    }

    /// Users with at least one friend.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Applies a checked `POST /v1/friendships`: every removal first, then the additions in
    /// order. An addition that would give either of its users more than `max_friends`
    /// friends is not made; those pairs are returned, in the order given. A pair already
    /// present is neither added again nor skipped; removing a pair that is not present
    /// does nothing.
    pub fn apply(&self, changes: &FriendshipChanges) -> Vec<FriendPair> {
        self.apply_reported(changes).skipped
    }

    /// [`Friendships::apply`], also saying which friendships it changed.
    pub fn apply_reported(&self, changes: &FriendshipChanges) -> Applied {
        let _writer = self.writer.lock();
        let mut draft = Draft::new(&self.lists, self.max_friends);
        for &pair in changes.remove() {
            draft.remove(pair);
        }
        let skipped = changes
            .add()
            .iter()
            .copied()
            .filter(|&pair| !draft.add(pair))
            .collect();
        let changed = self.publish(draft);
        Applied { skipped, changed }
    }

    /// Makes `user`'s friends exactly `list` (`PUT /v1/users/{userId}/friends`): every
    /// friendship of `user` not in `list` ends, on both sides; then each id of `list` not
    /// yet a friend is added, ascending, unless that would give `user` or the other user
    /// more than `max_friends` friends. Returns the pairs not added, as `(user, other)`,
    /// ascending. `user`'s own id in `list`, were one there, is ignored.
    pub fn replace(&self, user: UserId, list: &FriendList) -> Vec<FriendPair> {
        self.replace_reported(user, list).skipped
    }

    /// [`Friendships::replace`], also saying which friendships it changed (each as
    /// `(user, other)`).
    pub fn replace_reported(&self, user: UserId, list: &FriendList) -> Applied {
        // A checked list is ascending and distinct already; sorting it again costs one pass
        // and keeps the merge below right whatever the list.
        let mut wanted = list.ids().to_vec();
        wanted.sort_unstable();
        wanted.dedup();

        let _writer = self.writer.lock();
        let mut draft = Draft::new(&self.lists, self.max_friends);
        for other in self.friends_of(user) {
            if wanted.binary_search(&other).is_err() {
                if let Some(pair) = FriendPair::new(user, other) {
                    draft.remove(pair);
                }
            }
        }
        let skipped = wanted
            .iter()
            .filter_map(|&other| FriendPair::new(user, other))
            .filter(|&pair| !draft.add(pair))
            .collect();
        let changed = self.publish(draft);
        Applied { skipped, changed }
    }

    /// Adds `pairs` as [`Friendships::apply`] adds them (a snapshot read back at start-up):
    /// in order, the bound applied, the pairs not added returned in order. Takes the
    /// writer mutex for a batch of pairs at a time.
    pub fn restore(&self, pairs: impl IntoIterator<Item = FriendPair>) -> Vec<FriendPair> {
        let mut skipped = Vec::new();
        let mut pairs = pairs.into_iter().peekable();
        while pairs.peek().is_some() {
            let _writer = self.writer.lock();
            let mut draft = Draft::new(&self.lists, self.max_friends);
            for pair in pairs.by_ref().take(RESTORE_BATCH) {
                if !draft.add(pair) {
                    skipped.push(pair);
                }
            }
            self.publish(draft);
        }
        skipped
    }

    /// Calls `f(a, b)` once for every friendship, with `a < b` (for snapshots).
    ///
    /// The users are copied first (one shard's read lock at a time, as the iteration takes
    /// them), then the lists of a batch of users (each under its shard's read lock for just
    /// that copy), and `f` runs on the copied batch with no lock held: it may write to disk
    /// or even change this table. A pair no write touches meanwhile is seen exactly once;
    /// one changed meanwhile may or may not be seen, and never twice.
    ///
    /// (A true shard-at-a-time copy needs `dashmap`'s `raw-api` feature, which this crate
    /// does not enable; the ids take 8 bytes a user while they are visited.)
    pub fn for_each_pair(&self, mut f: impl FnMut(UserId, UserId)) {
        let users: Vec<UserId> = self.lists.iter().map(|entry| *entry.key()).collect();
        let mut batch: Vec<(UserId, UserId)> = Vec::new();
        let mut users = users.into_iter().peekable();
        while users.peek().is_some() {
            batch.clear();
            for a in users.by_ref() {
                if let Some(friends) = self.lists.get(&a) {
                    let later = friends.partition_point(|&b| b <= a);
                    batch.extend(friends[later..].iter().map(|&b| (a, b)));
                }
                if batch.len() >= VISIT_BATCH {
                    break;
                }
            }
            for &(a, b) in &batch {
                f(a, b);
            }
        }
    }

    /// Publishes a write's lists, one at a time, each under its shard's write lock for
    /// just that store; an emptied list takes its entry away. Called with `writer` held.
    /// Returns the friendships the write changed (see [`Applied::changed`]).
    fn publish(&self, draft: Draft<'_>) -> Vec<(FriendPair, bool)> {
        let changed = draft.changed();
        let Draft {
            edited,
            added,
            removed,
            ..
        } = draft;
        for (user, friends) in edited {
            if friends.is_empty() {
                if self.lists.remove(&user).is_some() {
                    self.users.fetch_sub(1, Ordering::Relaxed);
                }
            } else if self
                .lists
                .insert(user, friends.into_boxed_slice())
                .is_none()
            {
                self.users.fetch_add(1, Ordering::Relaxed);
            }
        }
        let pairs = self
            .pairs
            .load(Ordering::Relaxed)
            .saturating_add(added)
            .saturating_sub(removed);
        self.pairs.store(pairs, Ordering::Relaxed);
        changed
    }
}

/// One write's view of the table: the map as it is, but for the lists this write changed,
/// which are copies not yet published. Only one draft exists at a time (under `writer`),
/// so the map does not change under it.
struct Draft<'a> {
    lists: &'a DashMap<UserId, Friends, Hasher>,
    max_friends: usize,
    /// Every list this write changed (possibly back to what it was), as it now is.
    edited: HashMap<UserId, Vec<UserId>, Hasher>,
    added: usize,
    removed: usize,
    /// Every friendship this write added or removed, once, as first touched, with whether
    /// it existed before the write.
    touched: Vec<(FriendPair, bool)>,
    /// The keys of `touched`.
    touched_keys: HashSet<(UserId, UserId), Hasher>,
}

impl<'a> Draft<'a> {
    fn new(lists: &'a DashMap<UserId, Friends, Hasher>, max_friends: usize) -> Self {
        Self {
            lists,
            max_friends,
            edited: HashMap::with_hasher(Hasher::default()),
            added: 0,
            removed: 0,
            touched: Vec::new(),
            touched_keys: HashSet::with_hasher(Hasher::default()),
        }
    }

    /// Notes that `pair`, which existed before this change (`was`) or not, is changed now;
    /// only its first change in a write is kept, with the state before the write.
    fn touch(&mut self, pair: FriendPair, was: bool) {
        if self.touched_keys.insert(pair.key()) {
            self.touched.push((pair, was));
        }
    }

    /// The friendships whose state now differs from before the write, with their state.
    fn changed(&self) -> Vec<(FriendPair, bool)> {
        self.touched
            .iter()
            .filter_map(|&(pair, was)| {
                let (a, b) = pair.users();
                let now = self.contains(a, b);
                (now != was).then_some((pair, now))
            })
            .collect()
    }

    /// `f` of `user`'s friends as this write sees them.
    fn with<R>(&self, user: UserId, f: impl FnOnce(&[UserId]) -> R) -> R {
        match self.edited.get(&user) {
            Some(friends) => f(friends),
            None => match self.lists.get(&user) {
                Some(friends) => f(&friends),
                None => f(&[]),
            },
        }
    }

    fn count(&self, user: UserId) -> usize {
        self.with(user, <[UserId]>::len)
    }

    fn contains(&self, user: UserId, friend: UserId) -> bool {
        self.with(user, |friends| friends.binary_search(&friend).is_ok())
    }

    /// `user`'s list, copied from the map the first time this write changes it.
    fn edit(&mut self, user: UserId) -> &mut Vec<UserId> {
        let lists = self.lists;
        self.edited.entry(user).or_insert_with(|| {
            lists
                .get(&user)
                .map_or_else(Vec::new, |friends| friends.to_vec())
        })
    }

    /// Makes `pair` friends unless that would take either user past the bound; `false`
    /// when skipped for that (a pair already present is not skipped).
    fn add(&mut self, pair: FriendPair) -> bool {
        let (a, b) = pair.users();
        if self.contains(a, b) {
            return true;
        }
        if self.count(a) >= self.max_friends || self.count(b) >= self.max_friends {
            return false;
        }
        self.touch(pair, false);
        for (user, friend) in [(a, b), (b, a)] {
            let friends = self.edit(user);
            if let Err(at) = friends.binary_search(&friend) {
                friends.insert(at, friend);
            }
        }
        self.added += 1;
        true
    }

    /// Ends `pair`'s friendship, if there is one.
    fn remove(&mut self, pair: FriendPair) {
        let (a, b) = pair.users();
        if !self.contains(a, b) {
            return;
        }
        self.touch(pair, true);
        for (user, friend) in [(a, b), (b, a)] {
            let friends = self.edit(user);
            if let Ok(at) = friends.binary_search(&friend) {
                friends.remove(at);
            }
        }
        self.removed += 1;
    }
}

#[cfg(test)]
mod tests {
    use crate::test_rng::{seed_from_env, XorShift};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::presence::privacy::{FriendListBody, FriendshipsBody};

    fn id(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn ids(list: &[UserId]) -> Vec<u64> {
        list.iter().map(|u| u.get()).collect()
    }

    fn pair(a: u64, b: u64) -> FriendPair {
        FriendPair::new(id(a), id(b)).unwrap()
    }

    /// A `POST /v1/friendships` body, checked as the route will check it.
    fn changes(remove: &[(u64, u64)], add: &[(u64, u64)]) -> FriendshipChanges {
        let raw = |pairs: &[(u64, u64)]| {
            pairs
                .iter()
                .map(|&(a, b)| [UserId::new(a), UserId::new(b)])
                .collect()
        };
        FriendshipsBody {
            add: raw(add),
            remove: raw(remove),
        }
        .check()
        .unwrap()
    }

    fn adds(add: &[(u64, u64)]) -> FriendshipChanges {
        changes(&[], add)
    }

    /// A `PUT /v1/users/{owner}/friends` body, checked as the route will check it.
    fn list(owner: u64, list: &[u64]) -> FriendList {
        FriendListBody {
            user_ids: Some(list.iter().map(|&n| UserId::new(n)).collect()),
        }
        .check(id(owner), usize::MAX)
        .unwrap()
    }

    fn written(pairs: &[FriendPair]) -> Vec<(u64, u64)> {
        pairs
            .iter()
            .map(|p| (p.users().0.get(), p.users().1.get()))
            .collect()
    }

    fn friends(t: &Friendships, user: u64) -> Vec<u64> {
        ids(&t.friends_of(id(user)))
    }

    /// Every pair through `for_each_pair`, each as (lower, higher), sorted.
    fn all_pairs(t: &Friendships) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        t.for_each_pair(|a, b| pairs.push((a.get(), b.get())));
        pairs.sort_unstable();
        pairs
    }

    /// The table's invariants, checked from outside: every list ascending, distinct, within
    /// the bound, not naming its owner; every pair on both sides; the counts agree.
    fn check_invariants(t: &Friendships) {
        let mut sides = 0;
        let mut users = 0;
        for entry in t.lists.iter() {
            let (&user, friends) = entry.pair();
            assert!(!friends.is_empty(), "{user} has an empty entry");
            assert!(friends.len() <= t.max_friends(), "{user} past the bound");
            assert!(friends.windows(2).all(|w| w[0] < w[1]), "{user} unsorted");
            assert!(!friends.contains(&user), "{user} is its own friend");
            for &friend in friends.iter() {
                assert!(t.are_friends(friend, user), "{user}-{friend} one-sided");
            }
            sides += friends.len();
            users += 1;
        }
        assert_eq!(sides % 2, 0);
        assert_eq!(t.pairs(), sides / 2);
        assert_eq!(t.users(), users);
        let visited = all_pairs(t);
        assert_eq!(visited.len(), t.pairs());
        assert!(visited.iter().all(|&(a, b)| a < b));
        assert!(
            visited.windows(2).all(|w| w[0] < w[1]),
            "a pair visited twice"
        );
    }

    #[test]
    fn the_list_slot_stays_as_small_as_the_memory_figures_assume() {
        // A pointer and a length in the map slot; the ids alone in the allocation.
        assert_eq!(std::mem::size_of::<Friends>(), 16);
    }

    #[test]
    fn a_friendship_is_on_both_sides() {
        let t = Friendships::new(10);
        assert!(t.apply(&adds(&[(2, 1), (1, 3)])).is_empty());
        for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            assert!(t.are_friends(id(a), id(b)), "{a}-{b}");
        }
        assert!(!t.are_friends(id(2), id(3)));
        assert!(!t.are_friends(id(1), id(1)));
        assert_eq!(friends(&t, 1), vec![2, 3]);
        assert_eq!(friends(&t, 2), vec![1]);
        assert_eq!(friends(&t, 4), Vec::<u64>::new());
        assert_eq!((t.pairs(), t.users()), (2, 3));
        check_invariants(&t);

        // Removed in the other order than it was added: the same friendship.
        assert!(t.apply(&changes(&[(1, 2)], &[])).is_empty());
        assert!(!t.are_friends(id(2), id(1)) && !t.are_friends(id(1), id(2)));
        assert_eq!(friends(&t, 1), vec![3]);
        assert_eq!((t.pairs(), t.users()), (1, 2));
        check_invariants(&t);
    }

    #[test]
    fn a_write_reports_exactly_the_friendships_it_changed() {
        let t = Friendships::new(2);
        let applied = t.apply_reported(&adds(&[(1, 2), (3, 1), (2, 1)]));
        assert_eq!(
            applied.changed,
            vec![(pair(1, 2), true), (pair(3, 1), true)]
        );
        // Already there: no change. Past the bound: skipped, no change. Removed, and
        // removed then added again: only the removal that stays is a change.
        let applied = t.apply_reported(&changes(&[(2, 1), (1, 3), (5, 6)], &[(1, 2), (1, 4)]));
        assert_eq!(written(&applied.skipped), Vec::<(u64, u64)>::new());
        assert_eq!(
            applied.changed,
            vec![(pair(1, 3), false), (pair(1, 4), true)]
        );
        let applied = t.apply_reported(&adds(&[(1, 5)]));
        assert_eq!(written(&applied.skipped), vec![(1, 5)]);
        assert!(applied.changed.is_empty());
        // A list: the friendships it ends and makes, as (user, other).
        let applied = t.replace_reported(id(1), &list(1, &[4, 6]));
        assert_eq!(
            applied.changed,
            vec![(pair(1, 2), false), (pair(1, 6), true)]
        );
        assert!(t
            .replace_reported(id(1), &list(1, &[4, 6]))
            .changed
            .is_empty());
        check_invariants(&t);
    }

    #[test]
    fn a_list_read_in_place_answers_as_friends_of_does() {
        let t = Friendships::new(10);
        t.apply(&adds(&[(1, 5), (1, 3), (2, 3)]));
        let list = t.list(id(1)).unwrap();
        assert_eq!(ids(list.ids()), vec![3, 5]);
        assert!(list.contains(id(3)) && list.contains(id(5)));
        assert!(!list.contains(id(2)) && !list.contains(id(1)));
        drop(list);
        assert!(t.list(id(4)).is_none());
    }

    #[test]
    fn removals_apply_before_additions() {
        let t = Friendships::new(1);
        t.apply(&adds(&[(1, 2)]));
        // In both lists: removed, then added again.
        assert!(t.apply(&changes(&[(2, 1)], &[(1, 2)])).is_empty());
        assert!(t.are_friends(id(1), id(2)));
        assert_eq!(t.pairs(), 1);
        // The removal, listed after in the body's text, still frees room for the addition.
        let body: FriendshipsBody =
            serde_json::from_str(r#"{"add":[[1,3]],"remove":[[1,2]]}"#).unwrap();
        assert!(t.apply(&body.check().unwrap()).is_empty());
        assert_eq!(friends(&t, 1), vec![3]);
        assert_eq!(friends(&t, 2), Vec::<u64>::new());
        assert_eq!((t.pairs(), t.users()), (1, 2));
        check_invariants(&t);
    }

    #[test]
    fn a_pair_past_either_users_bound_is_skipped_in_the_order_given() {
        let t = Friendships::new(2);
        assert!(t.apply(&adds(&[(1, 2), (1, 3)])).is_empty());
        // 1 is full: as the first or the second of a pair. 6-7 goes in; 6 then has room
        // for 1 friend more.
        let skipped = t.apply(&adds(&[(4, 1), (6, 7), (1, 5), (6, 8), (6, 9)]));
        assert_eq!(written(&skipped), vec![(4, 1), (1, 5), (6, 9)]);
        assert_eq!(friends(&t, 6), vec![7, 8]);
        // 6 is full now: the other side's bound counts as much.
        let skipped = t.apply(&adds(&[(10, 6), (10, 11)]));
        assert_eq!(written(&skipped), vec![(10, 6)]);
        assert!(t.are_friends(id(10), id(11)));
        // A pair already present is not skipped, nor counted twice, even at the bound.
        assert!(t.apply(&adds(&[(2, 1), (6, 8)])).is_empty());
        assert_eq!(t.pairs(), 5);
        for skipped in [4, 5] {
            assert!(!t.are_friends(id(1), id(skipped)));
            assert!(friends(&t, skipped).is_empty());
        }
        check_invariants(&t);
    }

    #[test]
    fn additions_count_against_the_bound_as_they_go() {
        let t = Friendships::new(3);
        let skipped = t.apply(&adds(&[(1, 2), (1, 3), (1, 4), (1, 5), (2, 3)]));
        assert_eq!(written(&skipped), vec![(1, 5)]);
        assert_eq!(friends(&t, 1), vec![2, 3, 4]);
        assert!(t.are_friends(id(2), id(3)));
        // A bound of 0: nobody has friends.
        let none = Friendships::new(0);
        assert_eq!(written(&none.apply(&adds(&[(1, 2)]))), vec![(1, 2)]);
        assert_eq!((none.pairs(), none.users()), (0, 0));
        check_invariants(&t);
    }

    #[test]
    fn applying_the_same_changes_again_changes_nothing() {
        let t = Friendships::new(3);
        let c = changes(&[(7, 8)], &[(1, 2), (2, 1), (1, 3), (1, 2), (4, 5)]);
        // The body names 1-2 once: both orders are one friendship.
        assert_eq!(c.add().len(), 3);
        assert!(t.apply(&c).is_empty());
        let before: Vec<_> = (1..=8).map(|u| friends(&t, u)).collect();
        let counts = (t.pairs(), t.users());
        for _ in 0..3 {
            assert!(t.apply(&c).is_empty());
            assert_eq!((1..=8).map(|u| friends(&t, u)).collect::<Vec<_>>(), before);
            assert_eq!((t.pairs(), t.users()), counts);
        }
        // Removing what is not there does nothing either.
        assert!(t.apply(&changes(&[(1, 4), (9, 10)], &[])).is_empty());
        assert_eq!((t.pairs(), t.users()), counts);
        check_invariants(&t);
    }

    #[test]
    fn replacing_a_list_changes_both_sides() {
        let t = Friendships::new(3);
        t.apply(&adds(&[(1, 2), (1, 3), (2, 3)]));
        assert!(t.replace(id(1), &list(1, &[4, 3])).is_empty());
        assert_eq!(friends(&t, 1), vec![3, 4]);
        assert_eq!(friends(&t, 2), vec![3]);
        assert_eq!(friends(&t, 3), vec![1, 2]);
        assert_eq!(friends(&t, 4), vec![1]);
        assert_eq!((t.pairs(), t.users()), (3, 4));
        check_invariants(&t);

        // The other side's bound: 5 is full, so 1-5 is skipped, as (user, other); the rest
        // of the list still applies, and 1's unlisted friends still go.
        t.apply(&adds(&[(5, 6), (5, 7), (5, 8)]));
        let skipped = t.replace(id(1), &list(1, &[5, 6]));
        assert_eq!(written(&skipped), vec![(1, 5)]);
        assert_eq!(friends(&t, 1), vec![6]);
        assert_eq!(friends(&t, 3), vec![2]);
        assert!(friends(&t, 4).is_empty());
        check_invariants(&t);

        // The user's own bound: friends kept count first, then the new ids come in
        // ascending until the bound.
        let skipped = t.replace(id(1), &list(1, &[12, 11, 10, 6, 13]));
        assert_eq!(written(&skipped), vec![(1, 12), (1, 13)]);
        assert_eq!(friends(&t, 1), vec![6, 10, 11]);
        check_invariants(&t);

        // The same list again: nothing changes, nothing skipped.
        let counts = (t.pairs(), t.users());
        assert!(t.replace(id(1), &list(1, &[6, 10, 11])).is_empty());
        assert_eq!(friends(&t, 1), vec![6, 10, 11]);
        assert_eq!((t.pairs(), t.users()), counts);
    }

    #[test]
    fn an_emptied_list_takes_its_entry_away() {
        let t = Friendships::new(5);
        t.apply(&adds(&[(1, 2), (1, 3), (3, 4)]));
        assert_eq!(t.users(), 4);
        assert!(t.replace(id(1), &list(1, &[])).is_empty());
        // 1 and 2 had no friend left: no entry; 3 keeps 4.
        for user in [1, 2] {
            assert!(!t.lists.contains_key(&id(user)), "{user}");
        }
        assert_eq!((t.pairs(), t.users()), (1, 2));
        t.apply(&changes(&[(4, 3)], &[]));
        assert!(t.lists.is_empty());
        assert_eq!((t.pairs(), t.users()), (0, 0));
        // Added and removed in one call: no entry either.
        t.apply(&adds(&[(5, 6)]));
        t.apply(&changes(&[(5, 6)], &[(6, 7)]));
        assert!(!t.lists.contains_key(&id(5)));
        check_invariants(&t);
        // A user never seen: replacing its list with nothing leaves nothing.
        assert!(t.replace(id(99), &list(99, &[])).is_empty());
        assert!(!t.lists.contains_key(&id(99)));
        check_invariants(&t);
    }

    #[test]
    fn restoring_applies_the_bound_as_additions_do() {
        let t = Friendships::new(2);
        let pairs: Vec<FriendPair> = (2..=5)
            .map(|n| pair(1, n))
            .chain([pair(3, 2), pair(2, 1)])
            .collect();
        let skipped = t.restore(pairs);
        assert_eq!(written(&skipped), vec![(1, 4), (1, 5)]);
        assert_eq!(friends(&t, 1), vec![2, 3]);
        assert_eq!(friends(&t, 2), vec![1, 3]);
        check_invariants(&t);
        // More pairs than one batch: all of them, in order.
        let t = Friendships::new(usize::MAX);
        let many = (2..=RESTORE_BATCH as u64 * 2 + 7).map(|n| pair(n, 1));
        assert!(t.restore(many).is_empty());
        assert_eq!(t.pairs(), RESTORE_BATCH * 2 + 6);
        assert!(t.restore(std::iter::empty()).is_empty());
        check_invariants(&t);
    }

    #[test]
    fn every_pair_is_visited_once_lower_id_first() {
        let t = Friendships::new(usize::MAX);
        // Enough users and pairs for several batches, in every shard.
        let pairs: Vec<FriendPair> = (1..=3_000u64)
            .flat_map(|a| [pair(a, a % 3_000 + 1), pair(a, (a * 7) % 3_000 + 1)])
            .filter(|p| p.users().0 != p.users().1)
            .collect();
        t.restore(pairs.iter().copied());
        let want: BTreeSet<(u64, u64)> = pairs
            .iter()
            .map(|p| (p.key().0.get(), p.key().1.get()))
            .collect();
        let got = all_pairs(&t);
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        check_invariants(&t);
    }

    #[test]
    fn the_pair_visitor_runs_with_no_lock_held() {
        let t = Friendships::new(100);
        let pairs: Vec<FriendPair> = (1..=500).map(|a| pair(a, a + 1_000)).collect();
        t.restore(pairs);
        let mut seen = 0;
        t.for_each_pair(|a, b| {
            for user in [a, b] {
                assert!(!t.lists.try_get_mut(&user).is_locked(), "{user}");
            }
            // A write from inside the visitor (a snapshot writer never does this, but it
            // must not deadlock): ends this pair, whose list was already copied.
            assert!(t.apply(&changes(&[(a.get(), b.get())], &[])).is_empty());
            seen += 1;
        });
        assert_eq!(seen, 500);
        assert_eq!((t.pairs(), t.users()), (0, 0));
    }

    #[test]
    fn extreme_ids_and_bounds_neither_panic_nor_change_what_they_cannot() {
        let top = i64::MAX as u64;
        for max in [0, 1, usize::MAX] {
            let t = Friendships::new(max);
            t.apply(&adds(&[(1, top), (top, top - 1), (1, 2)]));
            t.apply(&changes(&[(top, 1), (5, 6)], &[(top - 1, top)]));
            t.replace(id(top), &list(top, &[1, 2, top - 1]));
            t.replace(id(1), &list(1, &[]));
            t.restore([pair(top, 1), pair(1, top)]);
            assert!(!t.are_friends(id(top), id(top)));
            check_invariants(&t);
        }
        let t = Friendships::new(0);
        t.replace(id(1), &list(1, &[2, 3]));
        t.restore([pair(1, 2)]);
        assert!(t.lists.is_empty());
        assert_eq!((t.pairs(), t.users()), (0, 0));
    }

    // --- Model-based test ---------------------------------------------------------------

    /// Users drawn by the shared generator.
    trait Users {
        fn user(&mut self, users: u64) -> u64;
        fn pair(&mut self, users: u64) -> (u64, u64);
    }

    impl Users for XorShift {
        /// A user id from 1 to `users`.
        fn user(&mut self, users: u64) -> u64 {
            1 + self.below(users)
        }

        /// Two different users from 1 to `users`, in random order.
        fn pair(&mut self, users: u64) -> (u64, u64) {
            let a = self.user(users);
            let b = 1 + (a + self.below(users - 1)) % users;
            (a, b)
        }
    }

    /// `FRIENDS_MODEL_SEED` (decimal or `0x` hex), else a fixed seed.
    fn model_seed() -> u64 {
        seed_from_env("FRIENDS_MODEL_SEED", 0x5EED_F00D_2026_0011)
    }

    /// The contract's rules, read literally, over a set of (lower, higher) pairs.
    struct Reference {
        pairs: BTreeSet<(u64, u64)>,
        max: usize,
    }

    impl Reference {
        fn key(a: u64, b: u64) -> (u64, u64) {
            (a.min(b), a.max(b))
        }

        fn count(&self, user: u64) -> usize {
            self.pairs
                .iter()
                .filter(|&&(a, b)| a == user || b == user)
                .count()
        }

        /// "A user holds at most max_friends friends: pairs that would exceed it are not
        /// added and are listed in the answer." A pair already there exceeds nothing.
        fn add(&mut self, a: u64, b: u64) -> bool {
            let key = Self::key(a, b);
            if self.pairs.contains(&key) {
                return true;
            }
            if self.count(a) + 1 > self.max || self.count(b) + 1 > self.max {
                return false;
            }
            self.pairs.insert(key);
            true
        }

        /// "removes apply first", then the adds in the order given; a friendship named
        /// twice in a list counts once (where it first appears).
        fn apply(&mut self, remove: &[(u64, u64)], add: &[(u64, u64)]) -> Vec<(u64, u64)> {
            for &(a, b) in remove {
                self.pairs.remove(&Self::key(a, b));
            }
            let mut named = BTreeSet::new();
            let mut skipped = Vec::new();
            for &(a, b) in add {
                if named.insert(Self::key(a, b)) && !self.add(a, b) {
                    skipped.push((a, b));
                }
            }
            skipped
        }

        /// "replaces that user's list (both sides of every pair change)": friends not
        /// listed go, then the listed ids come in ascending order, under the same bound.
        fn replace(&mut self, user: u64, list: &[u64]) -> Vec<(u64, u64)> {
            let wanted: BTreeSet<u64> = list.iter().copied().collect();
            self.pairs.retain(|&(a, b)| {
                let other = if a == user {
                    b
                } else if b == user {
                    a
                } else {
                    return true;
                };
                wanted.contains(&other)
            });
            let mut skipped = Vec::new();
            for &other in &wanted {
                if !self.add(user, other) {
                    skipped.push((user, other));
                }
            }
            skipped
        }

        fn friends_of(&self, user: u64) -> Vec<u64> {
            let mut friends: Vec<u64> = self
                .pairs
                .iter()
                .filter_map(|&(a, b)| {
                    if a == user {
                        Some(b)
                    } else if b == user {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            friends.sort_unstable();
            friends
        }
    }

    const MODEL_USERS: u64 = 50;
    const MODEL_MAX: usize = 5;
    const MODEL_STEPS: usize = 4_000;

    fn random_pairs(rng: &mut XorShift, most: u64) -> Vec<(u64, u64)> {
        let mut pairs: Vec<(u64, u64)> = (0..rng.below(most + 1))
            .map(|_| rng.pair(MODEL_USERS))
            .collect();
        // Now and then a pair named again, in either order.
        if !pairs.is_empty() && rng.below(4) == 0 {
            let (a, b) = pairs[rng.below(pairs.len() as u64) as usize];
            pairs.push(if rng.below(2) == 0 { (a, b) } else { (b, a) });
        }
        pairs
    }

    #[test]
    fn model_random_changes_agree_with_the_contracts_rules() {
        let seed = model_seed();
        let mut rng = XorShift::new(seed);
        let t = Friendships::new(MODEL_MAX);
        let mut reference = Reference {
            pairs: BTreeSet::new(),
            max: MODEL_MAX,
        };
        for step in 0..MODEL_STEPS {
            let before = reference.pairs.clone();
            // `None` for a write that does not report its changes (a restore).
            let (what, got, want, changed) = match rng.below(10) {
                // Mostly additions and removals, some of them many at once.
                0..=5 => {
                    let remove = random_pairs(&mut rng, 6);
                    let add = random_pairs(&mut rng, 10);
                    let got = t.apply_reported(&changes(&remove, &add));
                    let want = reference.apply(&remove, &add);
                    let what = format!("apply remove {remove:?} add {add:?}");
                    (what, got.skipped, want, Some(got.changed))
                }
                // Whole lists, some longer than the bound, some with repeats.
                6..=8 => {
                    let user = rng.user(MODEL_USERS);
                    let ids: Vec<u64> = (0..rng.below(9))
                        .map(|_| rng.user(MODEL_USERS))
                        .filter(|&other| other != user)
                        .collect();
                    let got = t.replace_reported(id(user), &list(user, &ids));
                    let want = reference.replace(user, &ids);
                    assert!(
                        got.changed.iter().all(|(p, _)| p.users().0 == id(user)),
                        "{:?}",
                        got.changed
                    );
                    let what = format!("replace {user} with {ids:?}");
                    (what, got.skipped, want, Some(got.changed))
                }
                // A snapshot read back: additions without a body's de-duplication.
                _ => {
                    let pairs: Vec<(u64, u64)> =
                        (0..rng.below(8)).map(|_| rng.pair(MODEL_USERS)).collect();
                    let got = t.restore(pairs.iter().map(|&(a, b)| pair(a, b)));
                    let want = pairs
                        .iter()
                        .copied()
                        .filter(|&(a, b)| !reference.add(a, b))
                        .collect();
                    (format!("restore {pairs:?}"), got, want, None)
                }
            };
            if let Some(changed) = changed {
                // Exactly the pairs whose state differs, each once, with its new state.
                let mut got: Vec<((u64, u64), bool)> = changed
                    .iter()
                    .map(|&(p, now)| ((p.key().0.get(), p.key().1.get()), now))
                    .collect();
                got.sort_unstable();
                let want: Vec<((u64, u64), bool)> = before
                    .symmetric_difference(&reference.pairs)
                    .map(|&key| (key, reference.pairs.contains(&key)))
                    .collect();
                assert_eq!(got, want, "changed, seed {seed:#x} step {step}: {what}");
            }
            let context = format!(
                "seed {seed:#x} step {step}: {what} (replay: FRIENDS_MODEL_SEED={seed:#x})"
            );
            assert_eq!(written(&got), want, "skipped, {context}");
            assert_eq!(t.pairs(), reference.pairs.len(), "pairs, {context}");
            let mut users = 0;
            for a in 1..=MODEL_USERS {
                let friends_of = reference.friends_of(a);
                users += usize::from(!friends_of.is_empty());
                assert_eq!(friends(&t, a), friends_of, "friends of {a}, {context}");
                for b in 1..=MODEL_USERS {
                    let want = reference.pairs.contains(&Reference::key(a, b)) && a != b;
                    assert_eq!(t.are_friends(id(a), id(b)), want, "{a}-{b}, {context}");
                }
            }
            assert_eq!(t.users(), users, "users, {context}");
            if step % 100 == 0 {
                let visited = all_pairs(&t);
                assert_eq!(
                    visited,
                    reference.pairs.iter().copied().collect::<Vec<_>>(),
                    "for_each_pair, {context}"
                );
            }
        }
        check_invariants(&t);
    }

    // --- Concurrency ----------------------------------------------------------------------

    #[test]
    fn concurrent_writers_keep_the_bound_and_readers_see_symmetry_between_calls() {
        const USERS: u64 = 30;
        const MAX: usize = 4;
        const WRITERS: u64 = 2;
        const READERS: u64 = 2;
        const CALLS: usize = 400;
        let t = Friendships::new(MAX);
        // A seqlock around every write call, kept by the test: `busy` counts writers inside
        // a call, `epoch` counts calls finished. A reader whose reads fall entirely between
        // two loads that saw no writer busy and the same epoch overlapped no call, so the
        // table it read was the one a finished call left: symmetric.
        let busy = AtomicUsize::new(0);
        let epoch = AtomicU64::new(0);
        let writing = AtomicUsize::new(WRITERS as usize);
        let quiet_checks = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (t, busy, epoch, writing) = (&t, &busy, &epoch, &writing);
                s.spawn(move || {
                    let mut rng = XorShift::new(model_seed() ^ (w + 1).wrapping_mul(0xABCD));
                    for _ in 0..CALLS {
                        busy.fetch_add(1, Ordering::SeqCst);
                        if rng.below(4) == 0 {
                            let user = rng.user(USERS);
                            let ids: Vec<u64> = (0..rng.below(7))
                                .map(|_| rng.user(USERS))
                                .filter(|&other| other != user)
                                .collect();
                            let skipped = t.replace(id(user), &list(user, &ids));
                            assert!(skipped.iter().all(|p| p.users().0 == id(user)));
                        } else {
                            let remove: Vec<_> =
                                (0..rng.below(4)).map(|_| rng.pair(USERS)).collect();
                            let add: Vec<_> = (0..rng.below(8)).map(|_| rng.pair(USERS)).collect();
                            t.apply(&changes(&remove, &add));
                        }
                        epoch.fetch_add(1, Ordering::SeqCst);
                        busy.fetch_sub(1, Ordering::SeqCst);
                        // Room for quiet moments between calls.
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                    writing.fetch_sub(1, Ordering::SeqCst);
                });
            }
            for r in 0..READERS {
                let (t, busy, epoch, writing, quiet_checks) =
                    (&t, &busy, &epoch, &writing, &quiet_checks);
                s.spawn(move || {
                    let mut rng = XorShift::new(model_seed() ^ (r + 1).wrapping_mul(0x1234_5678));
                    // Until every writer is done, then once more with none left.
                    let mut last_round = false;
                    loop {
                        let done = writing.load(Ordering::SeqCst) == 0;
                        let before = epoch.load(Ordering::SeqCst);
                        let quiet_before = busy.load(Ordering::SeqCst) == 0;
                        let (a, b) = rng.pair(USERS);
                        let ab = t.are_friends(id(a), id(b));
                        let ba = t.are_friends(id(b), id(a));
                        let of_a = t.friends_of(id(a));
                        let of_b = t.friends_of(id(b));
                        // The bound holds at every instant: a list is only ever replaced
                        // whole, by one within it.
                        assert!(of_a.len() <= MAX && of_b.len() <= MAX);
                        let quiet = quiet_before
                            && busy.load(Ordering::SeqCst) == 0
                            && epoch.load(Ordering::SeqCst) == before;
                        if quiet {
                            assert_eq!(ab, ba, "{a}-{b} one-sided between calls");
                            assert_eq!(of_a.contains(&id(b)), ab, "{a}-{b}");
                            assert_eq!(of_b.contains(&id(a)), ab, "{b}-{a}");
                            quiet_checks.fetch_add(1, Ordering::Relaxed);
                        }
                        if last_round {
                            break;
                        }
                        last_round = done;
                    }
                });
            }
        });
        assert!(quiet_checks.load(Ordering::Relaxed) >= READERS as usize);
        check_invariants(&t);
        // Every list as the pairs say.
        let mut by_user: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (a, b) in all_pairs(&t) {
            by_user.entry(a).or_default().push(b);
            by_user.entry(b).or_default().push(a);
        }
        for user in 1..=USERS {
            let mut want = by_user.remove(&user).unwrap_or_default();
            want.sort_unstable();
            assert_eq!(friends(&t, user), want, "{user}");
        }
    }
}
