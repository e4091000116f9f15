//! The key layout. Every key carries the hash tag of one shard, `{<shard>}`, so that all
//! the keys a heartbeat's script touches hash to one Redis Cluster slot:
//!
//! - `<prefix>{<shard>}<user id>`: the user's record (see `record`);
//! - `<prefix>{<shard>}e`: the shard's expiry set, user id → deadline (ms), present users
//!   only;
//! - `<prefix>{<shard>}n`: the shard's counters, a hash of presence type (`1`, `2`, `3`) →
//!   users holding such a session, and `t` → records (see `scripts`).
//!
//! A user's shard is its id modulo [`SHARDS`]; 1024 shards spread over the 16384 slots
//! and keep a sweep down to 1024 small commands.

use crate::presence::model::UserId;

/// Shards of the key space.
pub const SHARDS: u16 = 1024;

/// The shard of a user.
pub fn shard_of(user: UserId) -> u16 {
    (user.get() % u64::from(SHARDS)) as u16
}

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn tagged(&self, shard: u16, extra: usize) -> String {
        let mut itoa = itoa::Buffer::new();
        let mut key = String::with_capacity(self.prefix.len() + 8 + extra);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(itoa.format(shard));
        key.push('}');
        key
    }

    /// The record of `user`.
    pub fn user(&self, user: UserId) -> String {
        let mut key = self.tagged(shard_of(user), 20);
        key.push_str(itoa::Buffer::new().format(user.get()));
        key
    }

    /// The expiry set of `shard`.
    pub fn expiry(&self, shard: u16) -> String {
        let mut key = self.tagged(shard, 1);
        key.push('e');
        key
    }

    /// The counters of `shard`.
    pub fn counters(&self, shard: u16) -> String {
        let mut key = self.tagged(shard, 1);
        key.push('n');
        key
    }

    /// The channel of changes of a standalone server.
    pub fn channel(&self) -> String {
        format!("{}c", self.prefix)
    }

    /// The shard channel of changes of `shard`, on a cluster.
    pub fn shard_channel(&self, shard: u16) -> String {
        let mut key = self.tagged(shard, 1);
        key.push('c');
        key
    }

    /// The shard whose channel is `channel` (see [`Self::shard_channel`]).
    pub fn shard_of_channel(&self, channel: &[u8]) -> Option<u16> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(b"{")?.strip_suffix(b"}c")?;
        let shard: u16 = std::str::from_utf8(rest).ok()?.parse().ok()?;
        (shard < SHARDS).then_some(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the text between the first `{` and the next
    /// `}`, when that is not empty.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_users_record_shares_its_shards_hash_tag() {
        let keys = Keys::new("presence:");
        let user = UserId::new(1_000_000_007).unwrap();
        let shard = shard_of(user);
        assert_eq!(keys.user(user), format!("presence:{{{shard}}}1000000007"));
        assert_eq!(keys.expiry(shard), format!("presence:{{{shard}}}e"));
        assert_eq!(keys.counters(shard), format!("presence:{{{shard}}}n"));
        assert_eq!(keys.shard_channel(shard), format!("presence:{{{shard}}}c"));
        assert_eq!(
            keys.shard_of_channel(keys.shard_channel(shard).as_bytes()),
            Some(shard)
        );
        assert_eq!(keys.shard_of_channel(b"presence:{1024}c"), None);
        assert_eq!(keys.shard_of_channel(b"other:{1}c"), None);
        assert_eq!(keys.channel(), "presence:c");
        for key in [
            keys.user(user),
            keys.expiry(shard),
            keys.counters(shard),
            keys.shard_channel(shard),
        ] {
            assert_eq!(hash_tag(&key), shard.to_string());
        }
    }

    #[test]
    fn users_spread_over_every_shard() {
        let mut seen = vec![false; usize::from(SHARDS)];
        for id in 1..=u64::from(SHARDS) {
            seen[usize::from(shard_of(UserId::new(id).unwrap()))] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
