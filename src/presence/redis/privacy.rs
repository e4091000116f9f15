//! Privacy on Redis (CONTRACT section 11): placeholders, replaced by the real storage.

use super::RedisBackend;
use crate::presence::model::UserId;
use crate::presence::privacy::{
    CheckedPatch, FriendList, FriendPair, FriendshipChanges, Seen, Settings, Viewer,
};
use crate::presence::service::PresenceError;
use crate::presence::time::WallMillis;

impl RedisBackend {
    /// This backend, bounding friends per user by `max_friends`.
    pub fn with_max_friends(self, _max_friends: usize) -> Self {
        self
    }

    /// Redis's time now, as this backend estimates it.
    pub async fn wall_now(&self) -> WallMillis {
        WallMillis(self.feed_now().await)
    }

    /// See [`crate::presence::Presence::visit_seen`].
    pub async fn visit_seen(
        &self,
        _viewer: Viewer,
        ids: &[UserId],
        mut visit: impl FnMut(&Seen<'_, '_>),
    ) -> Result<(), PresenceError> {
        let now = self.wall_now().await;
        self.visit_many(ids, |view| {
            visit(&Seen {
                view,
                settings: Settings::default(),
                friend: false,
                now,
            });
        })
        .await
    }

    /// See [`crate::presence::Presence::settings`].
    pub async fn settings(&self, _user: UserId) -> Result<(Settings, WallMillis), PresenceError> {
        Ok((Settings::default(), self.wall_now().await))
    }

    /// See [`crate::presence::Presence::change_settings`].
    pub async fn change_settings(
        &self,
        _user: UserId,
        _patch: &CheckedPatch,
    ) -> Result<(Settings, WallMillis), PresenceError> {
        Ok((Settings::default(), self.wall_now().await))
    }

    /// See [`crate::presence::Presence::change_friendships`].
    pub async fn change_friendships(
        &self,
        _changes: &FriendshipChanges,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        Ok(Vec::new())
    }

    /// See [`crate::presence::Presence::replace_friends`].
    pub async fn replace_friends(
        &self,
        _user: UserId,
        _list: &FriendList,
    ) -> Result<Vec<FriendPair>, PresenceError> {
        Ok(Vec::new())
    }

    /// See [`crate::presence::Presence::friends`].
    pub async fn friends_of(&self, _user: UserId) -> Result<Vec<UserId>, PresenceError> {
        Ok(Vec::new())
    }
}
