//! The key layout. Every key carries the hash tag of one shard, `{<shard>}`, so that all
//! the keys a heartbeat's script touches hash to one Redis Cluster slot:
//!
//! - `<prefix>{<shard>}<user id>`: the user's record (see `record`);
//! - `<prefix>{<shard>}e`: the shard's expiry set, user id → deadline (ms), present users
//!   only;
//! - `<prefix>{<shard>}n`: the shard's counters, a hash of presence type (`1`, `2`, `3`) →
//!   users holding such a session, and `t` → records (see `scripts`);
//! - `<prefix>{<shard>}p<user id>`: the user's privacy settings (see `record`), absent for
//!   the default ones. No key expiry: the settings outlive the record's retention (a user
//!   with settings and no record reads as never seen);
//! - `<prefix>{<shard>}f<user id>`: the user's friends, a set of user ids in decimal, absent
//!   when empty. Every friendship is in both users' sets (each in its own shard);
//! - `<prefix>{<shard>}r<user id>`: friendships being added to the user (see `privacy`), a
//!   sorted set of user id → until when the place is held (ms), counted against the bound
//!   on friends; with a key expiry a little after the last hold ends.
//!
//! Game servers (CONTRACT section 10) live under one hash tag of their own, `{gs}`, so that
//! the bound on live servers is one atomic count:
//!
//! - `<prefix>{gs}s<game id, 32 hex digits>`: a server's record (see `scripts`), with a key
//!   expiry at its deadline (Redis forgets a server that stopped reporting);
//! - `<prefix>{gs}e`: the live servers, game id → deadline (ms), trimmed by reports and
//!   sweeps.
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

/// The Redis Cluster slot of every key of `shard`: CRC16 (XMODEM) of its hash tag, the
/// shard's number in decimal, modulo 16384.
pub fn slot_of_shard(shard: u16) -> u16 {
    crc16(itoa::Buffer::new().format(shard).as_bytes()) % 16384
}

/// CRC16-CCITT (XMODEM), the hash Redis Cluster uses for slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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

    /// The privacy settings of `user`.
    pub fn settings(&self, user: UserId) -> String {
        self.user_keyed(user, 'p')
    }

    /// The friends of `user`.
    pub fn friends(&self, user: UserId) -> String {
        self.user_keyed(user, 'f')
    }

    /// The friendships being added to `user`, with when each hold ends.
    pub fn reserved(&self, user: UserId) -> String {
        self.user_keyed(user, 'r')
    }

    /// Appends the key of `user`'s record to `out`: [`Self::user`] with no allocation of its
    /// own, for commands that name many keys.
    pub fn push_user(&self, user: UserId, out: &mut Vec<u8>) {
        self.push_user_keyed(user, None, out);
    }

    /// Appends the key of `user`'s settings to `out` (see [`Self::push_user`]).
    pub fn push_settings(&self, user: UserId, out: &mut Vec<u8>) {
        self.push_user_keyed(user, Some(b'p'), out);
    }

    /// Appends the key of `shard`'s expiry set to `out` (see [`Self::push_user`]).
    pub fn push_expiry(&self, shard: u16, out: &mut Vec<u8>) {
        self.push_tagged(shard, out);
        out.push(b'e');
    }

    /// Appends the key of `shard`'s counters to `out` (see [`Self::push_user`]).
    pub fn push_counters(&self, shard: u16, out: &mut Vec<u8>) {
        self.push_tagged(shard, out);
        out.push(b'n');
    }

    fn push_tagged(&self, shard: u16, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'{');
        out.extend_from_slice(itoa::Buffer::new().format(shard).as_bytes());
        out.push(b'}');
    }

    fn push_user_keyed(&self, user: UserId, kind: Option<u8>, out: &mut Vec<u8>) {
        self.push_tagged(shard_of(user), out);
        out.extend(kind);
        out.extend_from_slice(itoa::Buffer::new().format(user.get()).as_bytes());
    }

    /// `<prefix>{<shard>}<kind><user id>`.
    fn user_keyed(&self, user: UserId, kind: char) -> String {
        let mut key = self.tagged(shard_of(user), 21);
        key.push(kind);
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

    /// The record of game server `game`.
    pub fn game_server(&self, game: uuid::Uuid) -> String {
        let mut hex = uuid::Uuid::encode_buffer();
        format!(
            "{}{{gs}}s{}",
            self.prefix,
            game.simple().encode_lower(&mut hex)
        )
    }

    /// The set of live game servers, by deadline.
    pub fn game_servers(&self) -> String {
        format!("{}{{gs}}e", self.prefix)
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
    fn keys_appended_to_a_buffer_are_the_keys() {
        let keys = Keys::new("p:");
        let mut out = b"x".to_vec();
        for id in [1, 1023, 1024, 1_000_000_007, u64::MAX >> 1] {
            let user = UserId::new(id).unwrap();
            out.truncate(1);
            keys.push_user(user, &mut out);
            assert_eq!(&out[1..], keys.user(user).as_bytes());
            out.truncate(1);
            keys.push_settings(user, &mut out);
            assert_eq!(&out[1..], keys.settings(user).as_bytes());
            let shard = shard_of(user);
            out.truncate(1);
            keys.push_expiry(shard, &mut out);
            assert_eq!(&out[1..], keys.expiry(shard).as_bytes());
            out.truncate(1);
            keys.push_counters(shard, &mut out);
            assert_eq!(&out[1..], keys.counters(shard).as_bytes());
        }
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
            keys.settings(user),
            format!("presence:{{{shard}}}p1000000007")
        );
        assert_eq!(
            keys.friends(user),
            format!("presence:{{{shard}}}f1000000007")
        );
        assert_eq!(
            keys.reserved(user),
            format!("presence:{{{shard}}}r1000000007")
        );
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
            keys.settings(user),
            keys.friends(user),
            keys.reserved(user),
        ] {
            assert_eq!(hash_tag(&key), shard.to_string());
        }
    }

    #[test]
    fn slots_are_those_redis_cluster_computes() {
        // CRC16/XMODEM's check value, and `CLUSTER KEYSLOT` of `{0}x` and `{1023}x`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of_shard(0), 13907);
        assert_eq!(slot_of_shard(1023), 14911);
    }

    #[test]
    fn game_servers_share_one_hash_tag() {
        let keys = Keys::new("p:");
        let game = uuid::Uuid::from_u128(0x3f2504e0_4f89_11d3_9a0c_0305e82c3301);
        assert_eq!(
            keys.game_server(game),
            "p:{gs}s3f2504e04f8911d39a0c0305e82c3301"
        );
        assert_eq!(keys.game_servers(), "p:{gs}e");
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
