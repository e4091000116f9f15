//! Game servers and sessions for tests (CONTRACT section 10): a service key, the three
//! routes, and the entries a game-server session shows.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use presence_server::config::ServiceKeySettings;
use presence_server::Settings;
use serde_json::{json, Value};

/// Lowercase hex SHA-256 of a key, as `auth.service_keys[].sha256` holds it.
pub use presence_server::auth::sha256_hex;

use super::TestApp;

/// The key game servers send in the tests.
pub const GAME_KEY: &str = "test-game-servers-key-0123456789abcdef0123456789abcdef";
/// A key with the `read` scope only.
pub const READ_KEY: &str = "test-read-only-key-0123456789abcdef0123456789abcdef01";

/// Three game-server instances.
pub const SERVER_A: &str = "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11";
pub const SERVER_B: &str = "0d4a8e5c-1b2f-4c3d-8e9f-a0b1c2d3e4f5";
pub const SERVER_C: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
pub const SERVERS: [&str; 5] = [
    SERVER_A,
    SERVER_B,
    SERVER_C,
    "11111111-2222-4333-8444-555555555555",
    "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
];

/// A place that is not in the catalog.
pub const UNKNOWN_PLACE: i64 = 555;

/// Adds a service key with `scopes` to `settings`.
pub fn add_key(settings: &mut Settings, name: &str, key: &str, scopes: &[&str]) {
    settings.auth.service_keys.push(ServiceKeySettings {
        name: name.into(),
        sha256: sha256_hex(key),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    });
}

/// The game-servers key [`GAME_KEY`] and the read-only key [`READ_KEY`], and the catalog
/// of [`super::crossroads`].
pub fn game_settings(settings: &mut Settings) {
    add_key(settings, "game-servers", GAME_KEY, &["game-servers"]);
    add_key(settings, "reader", READ_KEY, &["read"]);
    settings.places = vec![super::crossroads()];
}

pub fn server_path(game: &str) -> String {
    format!("/v1/game-servers/{game}")
}

pub fn players_path(game: &str) -> String {
    format!("/v1/game-servers/{game}/players")
}

/// `lastOnline` as the contract writes it, for a wall time in ms.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The value of a series in a `/metrics` text (0 when absent).
pub fn gauge(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The entry of a player in a game server at `place` (CONTRACT sections 1 and 10), all
/// but `lastOnline`.
pub fn in_game(user: u64, game: &str, place: i64, universe: Option<i64>) -> Value {
    let catalog = place == 1818;
    let universe = match (universe, catalog) {
        (Some(u), _) => json!(u),
        (None, true) => json!(13058),
        (None, false) => Value::Null,
    };
    json!({
        "userId": user,
        "userPresenceType": "InGame",
        "lastLocation": if catalog { "Classic: Crossroads" } else { "Playing" },
        "placeId": place,
        "rootPlaceId": place,
        "universeId": universe,
        "gameId": game,
    })
}

/// An Online entry at `location`, all but `lastOnline`.
pub fn online(user: u64, location: &str) -> Value {
    json!({
        "userId": user,
        "userPresenceType": "Online",
        "lastLocation": location,
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
    })
}

/// An Offline entry keeping `location`, all but `lastOnline`.
pub fn offline(user: u64, location: &str) -> Value {
    json!({
        "userId": user,
        "userPresenceType": "Offline",
        "lastLocation": location,
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
    })
}

/// An entry without its `lastOnline`.
pub fn fields(entry: &Value) -> Value {
    let mut entry = entry.clone();
    entry.as_object_mut().unwrap().remove("lastOnline");
    entry
}

impl TestApp {
    /// The server clock's wall time in ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().wall.0
    }

    /// `lastOnline` for the server clock's time now.
    pub fn stamp(&self) -> String {
        rfc3339(self.now_ms())
    }

    /// A request with [`GAME_KEY`].
    pub fn keyed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("x-api-key", GAME_KEY)
    }

    /// `PUT /v1/game-servers/{game}` with `body`, keyed.
    pub async fn put_server(&self, game: &str, body: &Value) -> reqwest::Response {
        self.keyed(reqwest::Method::PUT, &server_path(game))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A report of `players` at `place`; asserts the contract's `200 {}`.
    pub async fn report(&self, game: &str, place: i64, players: &[u64]) {
        self.report_body(game, &json!({"placeId": place, "players": players}))
            .await;
    }

    /// A report with any body; asserts the contract's `200 {}`.
    pub async fn report_body(&self, game: &str, body: &Value) {
        let res = self.put_server(game, body).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "{}"),
            "PUT {game} {body}"
        );
    }

    /// `POST /v1/game-servers/{game}/players` with `body`, keyed.
    pub async fn post_players(&self, game: &str, body: &Value) -> reqwest::Response {
        self.keyed(reqwest::Method::POST, &players_path(game))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Players joining and leaving; asserts the contract's `200 {}`.
    pub async fn join_leave(&self, game: &str, joined: &[u64], left: &[u64]) {
        let body = json!({"joined": joined, "left": left});
        let res = self.post_players(game, &body).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "{}"),
            "POST players of {game} {body}"
        );
    }

    /// `DELETE /v1/game-servers/{game}`, keyed.
    pub async fn delete_server(&self, game: &str) -> reqwest::Response {
        self.keyed(reqwest::Method::DELETE, &server_path(game))
            .send()
            .await
            .unwrap()
    }

    /// A DELETE; asserts the contract's `200 {}`.
    pub async fn stop_server(&self, game: &str) {
        let res = self.delete_server(game).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "{}"),
            "DELETE {game}"
        );
    }

    /// The presence of `user` without its `lastOnline`, and its `lastOnline`.
    pub async fn shown(&self, user: u64) -> (Value, String) {
        let entry = self.presence_of(user).await;
        let at = entry["lastOnline"].as_str().unwrap().to_owned();
        (fields(&entry), at)
    }

    /// The value of one `/metrics` series.
    pub async fn gauge(&self, series: &str) -> f64 {
        gauge(&self.metrics().await, series)
    }
}
