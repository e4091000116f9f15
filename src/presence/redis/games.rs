//! Game servers and their players' sessions on Redis (CONTRACT section 10).

use uuid::Uuid;

use super::RedisBackend;
use crate::presence::model::UserId;
use crate::presence::service::GameServerError;
use crate::presence::sessions::GamePlace;

impl RedisBackend {
    /// The whole state of game server `game`: live until now + `presence.game_server_ttl`,
    /// every player of `players` (distinct) in it, everyone of its previous report not
    /// listed gone.
    pub async fn report_game_server(
        &self,
        game: Uuid,
        place: &GamePlace,
        players: &[UserId],
    ) -> Result<(), GameServerError> {
        let _ = (game, place, players);
        Err(GameServerError::Unavailable)
    }

    /// Players who joined or left live server `game` since its last report.
    pub async fn game_server_players(
        &self,
        game: Uuid,
        joined: &[UserId],
        left: &[UserId],
    ) -> Result<(), GameServerError> {
        let _ = (game, joined, left);
        Err(GameServerError::Unavailable)
    }

    /// Server `game` stopped: every player in it leaves now.
    pub async fn end_game_server(&self, game: Uuid) -> Result<(), GameServerError> {
        let _ = game;
        Err(GameServerError::Unavailable)
    }
}
