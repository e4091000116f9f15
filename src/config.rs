//! Typed settings: the TOML file, then `PRESENCE__SECTION__KEY` environment overrides,
//! then validation. Every key has a default here and is documented in `config.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The secret shipped in `config.toml`; the server warns while it is in use.
pub const DEVELOPMENT_JWT_SECRET: &str = "development-secret-change-me-before-deploying";

/// Prefix of environment overrides: `PRESENCE__SERVER__BIND` sets `server.bind`.
pub const ENV_PREFIX: &str = "PRESENCE__";

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub presence: PresenceSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub persistence: PersistenceSettings,
    pub rate_limit: RateLimitSettings,
    pub logging: LoggingSettings,
    pub store: StoreSettings,
    pub redis: RedisSettings,
    pub stream: StreamSettings,
    pub privacy: PrivacySettings,
    pub places: Vec<PlaceSettings>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub workers: usize,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/ready` answers 503 while requests are still served.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Time allowed to receive a request's head; a slower client gets 408 and is closed.
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Time allowed to receive a request's body once its head arrived.
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Open connections allowed per worker; more wait in the listen queue.
    pub max_connections_per_worker: usize,
    /// Open connections allowed from one peer IP address; more are closed at once. 0 = no
    /// limit (behind a load balancer every client shares its address).
    pub max_connections_per_address: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_body_bytes: 16 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            request_head_timeout: Duration::from_secs(5),
            request_body_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            max_connections_per_worker: 25_000,
            max_connections_per_address: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Offline users whose `lastOnline` is older than this are forgotten; `None` (written
    /// `"forever"`) keeps them.
    #[serde(deserialize_with = "duration_or_forever")]
    pub offline_retention: Option<Duration>,
    /// A game server is live until this long after its last report (CONTRACT section 10).
    #[serde(with = "humantime_serde")]
    pub game_server_ttl: Duration,
    /// Game-server sessions one user may hold at once; a join beyond ends the oldest.
    pub max_game_sessions: usize,
    /// Whether a heartbeat's `placeId` makes an InGame session; with `false` only game
    /// servers do.
    pub client_reported_games: bool,
    /// Live game servers per deployment; a new one beyond is 503.
    pub max_game_servers: usize,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            heartbeat_ttl: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            offline_retention: None,
            game_server_ttl: Duration::from_secs(60),
            max_game_sessions: 4,
            client_reported_games: true,
            max_game_servers: 100_000,
        }
    }
}

/// `"forever"`, or a duration such as `"30d"`.
fn duration_or_forever<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("expected \"forever\" or a duration: {e}")))
}

/// How `userPresenceType` is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PresenceTypeFormat {
    /// `"Offline"`, `"Online"`, `"InGame"`, `"InStudio"`.
    #[default]
    String,
    /// `0`, `1`, `2`, `3`.
    Integer,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub presence_type: PresenceTypeFormat,
    pub max_user_ids: usize,
    pub require_auth_for_lookup: bool,
    /// Longest `location` a heartbeat may carry, in characters; longer is 400.
    pub max_location_length: usize,
    /// Origins whose pages may call this server (CORS); `["*"]` is any origin, without
    /// credentials; empty sends no CORS header at all.
    pub cors_origins: Vec<String>,
    /// Players one game-server report may list (counted before de-duplication).
    pub max_players_per_server: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            presence_type: PresenceTypeFormat::String,
            max_user_ids: 50,
            require_auth_for_lookup: false,
            max_location_length: 100,
            cors_origins: Vec::new(),
            max_players_per_server: 700,
        }
    }
}

/// Live presence: `/v1/presence/stream` and `/v1/presence/ws`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Users one stream or WebSocket may watch in all; more is 400 code 2.
    pub max_user_ids: usize,
    /// Open streams and WebSockets per node; more is 503.
    pub max_connections: usize,
    /// How often an idle stream is sent a comment (`: ping`) or a WebSocket a ping.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Open streams and WebSockets from one client address; 0 = no limit.
    pub max_connections_per_address: usize,
    /// Open streams and WebSockets of one signed-in user; 0 = no limit.
    pub max_connections_per_user: usize,
    /// How long a closed stream can be resumed with `Last-Event-ID` and sent only what
    /// changed; 0s keeps nothing (a reconnecting client gets the full state).
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
    /// Users held, over all closed streams, for resuming them.
    pub max_resume_users: usize,
    /// Of which the closed streams of one client address may hold at most this many.
    pub max_resume_users_per_address: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_user_ids: 200,
            max_connections: 10_000,
            keep_alive: Duration::from_secs(15),
            max_connections_per_address: 100,
            max_connections_per_user: 16,
            resume_window: Duration::from_secs(60),
            max_resume_users: 500_000,
            max_resume_users_per_address: 20_000,
        }
    }
}

/// Who sees whom (CONTRACT section 11).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Friends one user may hold; pairs beyond are skipped (listed in the answer).
    pub max_friends: usize,
    /// Whether other viewers are shown a user's real `lastOnline`; `false` shows them the
    /// `lastOnline` of a user never seen (the user itself and `read` keys still see it).
    pub show_last_online: bool,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            max_friends: 2000,
            show_last_online: true,
        }
    }
}

/// Most friends a user may be allowed (`privacy.max_friends`).
pub const MAX_FRIENDS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    #[serde(deserialize_with = "string_or_scalar")]
    pub jwt_secret: String,
    /// Keys of trusted callers (game servers, the platform's back end), sent as
    /// `x-api-key` (CONTRACT section 10).
    pub service_keys: Vec<ServiceKeySettings>,
}

/// One service key: its name (for logs), the SHA-256 of the key in hex, and its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKeySettings {
    pub name: String,
    pub sha256: String,
    /// `game-servers`, `privacy`, `read`.
    pub scopes: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: DEVELOPMENT_JWT_SECRET.to_owned(),
            service_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceSettings {
    pub enabled: bool,
    /// Relative paths are taken from the working directory.
    pub path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("data/presence.snapshot"),
            snapshot_interval: Duration::from_secs(30),
        }
    }
}

/// Token buckets: per user on `register-app-presence`, per client address on lookups.
/// A rate of 0 turns that limit off.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub register_per_second: u32,
    pub register_burst: u32,
    pub lookup_per_second: u32,
    pub lookup_burst: u32,
    /// Take the client address from `X-Forwarded-For` (behind a proxy) rather than the
    /// socket's peer.
    pub trust_forwarded_for: bool,
    /// With `trust_forwarded_for`, which `X-Forwarded-For` entry is the client: counted
    /// from the right, 1 being the rightmost (written by the nearest proxy). 1..=32.
    pub trusted_hops: u32,
}

/// The largest `rate_limit.trusted_hops`.
pub const MAX_TRUSTED_HOPS: u32 = 32;

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            register_per_second: 2,
            register_burst: 20,
            lookup_per_second: 50,
            lookup_burst: 200,
            trust_forwarded_for: false,
            trusted_hops: 1,
        }
    }
}

/// Where presence lives (CONTRACT section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded sharded map of this process, with its snapshots.
    #[default]
    Memory,
    /// A Redis server or Redis Cluster shared by any number of nodes.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// The server, or with `cluster` any one node of the cluster; `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster: discover the nodes from `url` and route by slot.
    pub cluster: bool,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// Longest wait for Redis within one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            key_prefix: "presence:".into(),
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    pub format: LogFormat,
}

/// One place of the catalog: `placeId -> (universe, root place, name)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceSettings {
    pub id: i64,
    pub universe_id: i64,
    pub root_place_id: i64,
    pub name: String,
}

/// A start-up configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error(
        "invalid configuration (file {path}, then PRESENCE__* environment variables): {message}"
    )]
    Invalid { path: PathBuf, message: String },
}

impl Settings {
    /// Reads `path`, applies the process environment's `PRESENCE__*` overrides, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut settings: Settings = Figment::new()
            .merge(Toml::file(path))
            .merge(env)
            .extract()
            .map_err(|e| invalid(describe_figment_errors(e)))?;
        settings.validate().map_err(invalid)?;
        // Digests are accepted in either case and kept in one.
        for key in &mut settings.auth.service_keys {
            key.sha256.make_ascii_lowercase();
        }
        Ok(settings)
    }

    /// Checks what types alone cannot say: every number and duration against its range
    /// (documented in `config.toml`), and the rules between keys. The message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let server = &self.server;
        count("server.workers", server.workers, 0, MAX_WORKERS)?;
        count(
            "server.max_body_bytes",
            server.max_body_bytes,
            1,
            MAX_BODY_BYTES,
        )?;
        span(
            "server.shutdown_timeout",
            server.shutdown_timeout,
            SECOND,
            HOUR,
        )?;
        span(
            "server.drain_delay",
            server.drain_delay,
            Duration::ZERO,
            10 * MINUTE,
        )?;
        // The HTTP layer checks its own head and keep-alive deadlines on a clock it refreshes
        // every half second: shorter values would fire early.
        span(
            "server.request_head_timeout",
            server.request_head_timeout,
            SECOND,
            10 * MINUTE,
        )?;
        span(
            "server.request_body_timeout",
            server.request_body_timeout,
            MILLI,
            10 * MINUTE,
        )?;
        if !server.keep_alive.is_zero() {
            span(
                "server.keep_alive (when not 0s)",
                server.keep_alive,
                SECOND,
                HOUR,
            )?;
        }
        count(
            "server.max_connections_per_worker",
            server.max_connections_per_worker,
            1,
            MAX_CONNECTIONS,
        )?;
        count(
            "server.max_connections_per_address",
            server.max_connections_per_address,
            0,
            MAX_CONNECTIONS,
        )?;
        let presence = &self.presence;
        span(
            "presence.heartbeat_ttl",
            presence.heartbeat_ttl,
            MILLI,
            7 * DAY,
        )?;
        span(
            "presence.sweep_interval",
            presence.sweep_interval,
            MILLI,
            HOUR,
        )?;
        if let Some(retention) = presence.offline_retention {
            span(
                "presence.offline_retention",
                retention,
                MILLI,
                MAX_RETENTION,
            )?;
        }
        span(
            "presence.game_server_ttl",
            presence.game_server_ttl,
            SECOND,
            DAY,
        )?;
        count(
            "presence.max_game_sessions",
            presence.max_game_sessions,
            1,
            MAX_GAME_SESSIONS,
        )?;
        count(
            "presence.max_game_servers",
            presence.max_game_servers,
            1,
            MAX_GAME_SERVERS,
        )?;
        count("api.max_user_ids", self.api.max_user_ids, 1, MAX_USER_IDS)?;
        count(
            "privacy.max_friends",
            self.privacy.max_friends,
            1,
            MAX_FRIENDS,
        )?;
        count(
            "api.max_players_per_server",
            self.api.max_players_per_server,
            1,
            MAX_PLAYERS_PER_SERVER,
        )?;
        count(
            "api.max_location_length",
            self.api.max_location_length,
            1,
            MAX_LOCATION_LENGTH,
        )?;
        for origin in &self.api.cors_origins {
            check_origin(origin, self.api.cors_origins.len())?;
        }
        let stream = &self.stream;
        count("stream.max_user_ids", stream.max_user_ids, 1, MAX_USER_IDS)?;
        count(
            "stream.max_connections",
            stream.max_connections,
            1,
            MAX_CONNECTIONS,
        )?;
        span("stream.keep_alive", stream.keep_alive, SECOND, HOUR)?;
        count(
            "stream.max_connections_per_address",
            stream.max_connections_per_address,
            0,
            MAX_CONNECTIONS,
        )?;
        count(
            "stream.max_connections_per_user",
            stream.max_connections_per_user,
            0,
            MAX_CONNECTIONS,
        )?;
        span(
            "stream.resume_window",
            stream.resume_window,
            Duration::ZERO,
            HOUR,
        )?;
        count(
            "stream.max_resume_users",
            stream.max_resume_users,
            0,
            MAX_RESUME_USERS,
        )?;
        count(
            "stream.max_resume_users_per_address",
            stream.max_resume_users_per_address,
            0,
            stream.max_resume_users,
        )?;
        let limits = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.register_per_second", limits.register_per_second),
            ("rate_limit.register_burst", limits.register_burst),
            ("rate_limit.lookup_per_second", limits.lookup_per_second),
            ("rate_limit.lookup_burst", limits.lookup_burst),
        ] {
            count(key, value, 0, MAX_RATE)?;
        }
        if (limits.register_per_second > 0 && limits.register_burst == 0)
            || (limits.lookup_per_second > 0 && limits.lookup_burst == 0)
        {
            return Err("rate_limit: a burst must be at least 1 when its rate is on".into());
        }
        count(
            "rate_limit.trusted_hops",
            limits.trusted_hops,
            1,
            MAX_TRUSTED_HOPS,
        )?;
        if self.persistence.enabled {
            span(
                "persistence.snapshot_interval",
                self.persistence.snapshot_interval,
                MILLI,
                DAY,
            )?;
            if self.persistence.path.as_os_str().is_empty() {
                return Err("persistence.path must not be empty".into());
            }
        }
        if self.store.backend == Backend::Redis {
            span(
                "presence.sweep_interval (with store.backend = \"redis\")",
                presence.sweep_interval,
                MIN_REDIS_SWEEP_INTERVAL,
                HOUR,
            )?;
            span("redis.timeout", self.redis.timeout, MILLI, MINUTE)?;
            if self.redis.url.is_empty() {
                return Err("redis.url must not be empty".into());
            }
            if self.redis.key_prefix.len() > 64 {
                return Err("redis.key_prefix must be at most 64 bytes".into());
            }
            if self.redis.key_prefix.contains(['{', '}']) {
                return Err(
                    "redis.key_prefix must not contain { or } (keys carry a hash tag of their own)"
                        .into(),
                );
            }
        }
        if self.auth.jwt_secret.is_empty() {
            return Err("auth.jwt_secret must not be empty".into());
        }
        check_service_keys(&self.auth.service_keys)?;
        let mut seen = std::collections::HashSet::new();
        for place in &self.places {
            if place.id <= 0 || place.universe_id <= 0 || place.root_place_id <= 0 {
                return Err(format!(
                    "places: place {} must have positive id, universe_id and root_place_id",
                    place.id
                ));
            }
            if !seen.insert(place.id) {
                return Err(format!("places: place {} is listed twice", place.id));
            }
        }
        Ok(())
    }

    /// Whether the JWT secret is still the one shipped for development.
    pub fn uses_development_secret(&self) -> bool {
        self.auth.jwt_secret == DEVELOPMENT_JWT_SECRET
    }
}

const MILLI: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// The shortest `presence.sweep_interval` on Redis. Each sweep reads every shard's expiry
/// set (1024 `ZRANGEBYSCORE`, spread over the Redis nodes) from every presence node, due
/// users or not: at 100 ms that is about 10,000 reads a second per presence node, some 10%
/// of what one Redis core serves; shorter intervals would let a few idle nodes saturate
/// Redis, for expiries shown at most 100 ms sooner.
const MIN_REDIS_SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Ten years: a longer retention is written `"forever"`.
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);
const MAX_WORKERS: usize = 1024;
const MAX_BODY_BYTES: usize = 4 << 20;
const MAX_CONNECTIONS: usize = 1_000_000;
/// Most users the records of closed streams may hold (about 24 bytes each).
const MAX_RESUME_USERS: usize = 10_000_000;
const MAX_USER_IDS: usize = 10_000;
const MAX_PLAYERS_PER_SERVER: usize = 10_000;
const MAX_GAME_SESSIONS: usize = 16;
const MAX_GAME_SERVERS: usize = 10_000_000;
const MAX_LOCATION_LENGTH: usize = 4096;
const MAX_RATE: u32 = 10_000_000;

/// The longest name of a service key, in characters.
pub const MAX_SERVICE_KEY_NAME: usize = 64;

/// `auth.service_keys`: each entry by [`check_service_key`], and no name or digest twice.
/// The message names the key and the entry.
pub fn check_service_keys(keys: &[ServiceKeySettings]) -> Result<(), String> {
    let mut names = std::collections::HashMap::new();
    let mut digests = std::collections::HashMap::new();
    for (index, key) in keys.iter().enumerate() {
        let at = || {
            format!(
                "auth.service_keys: entry {} (name {:?})",
                index + 1,
                key.name
            )
        };
        check_service_key(key).map_err(|problem| format!("{}: {problem}", at()))?;
        if let Some(first) = names.insert(key.name.as_str(), index + 1) {
            return Err(format!("{}: the name of entry {first} too", at()));
        }
        if let Some(first) = digests.insert(key.sha256.to_ascii_lowercase(), index + 1) {
            return Err(format!("{}: the same sha256 as entry {first}", at()));
        }
    }
    Ok(())
}

/// One service key, alone: a name of 1 to 64 characters, not blank and without control
/// characters; `sha256` exactly 64 hex digits (either case); at least one scope, each of
/// `game-servers`, `privacy`, `read`. The message names the field, not the key (the
/// caller says which entry, or which command-line option).
pub fn check_service_key(key: &ServiceKeySettings) -> Result<(), String> {
    let name = &key.name;
    if name.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    if name.chars().count() > MAX_SERVICE_KEY_NAME {
        return Err(format!(
            "name must be at most {MAX_SERVICE_KEY_NAME} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "sha256 must be exactly 64 hex digits (the SHA-256 of the key, as \
             `presence-server service-key` prints it)"
                .into(),
        );
    }
    if key.scopes.is_empty() {
        return Err(
            "scopes must name at least one of \"game-servers\", \"privacy\", \"read\"".into(),
        );
    }
    for scope in &key.scopes {
        scope
            .parse::<crate::auth::Scope>()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// An entry of `api.cors_origins`: `*` alone, or an origin as browsers send it in `Origin`
/// (`scheme://host` or `scheme://host:port`, no path, no trailing slash).
fn check_origin(origin: &str, entries: usize) -> Result<(), String> {
    if origin == "*" {
        if entries > 1 {
            return Err("api.cors_origins: \"*\" must be the only entry".into());
        }
        return Ok(());
    }
    let bad = || {
        format!(
            "api.cors_origins: {origin:?} is not an origin such as \"https://www.example.com\" \
             (scheme and host, optional port, no path or trailing slash)"
        )
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b));
    if !scheme_ok || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// `value` of `key` must lie in `min..=max`.
fn count<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{key} must be between {min} and {max}, not {value}"
        ));
    }
    Ok(())
}

/// The duration `value` of `key` must lie in `min..=max`.
fn span(key: &str, value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if value < min || value > max {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        return Err(format!(
            "{key} must be between {} and {}, not {}",
            show(min),
            show(max),
            show(value)
        ));
    }
    Ok(())
}

/// Figment reports every problem with the key it concerns; keep all of them, one per line.
fn describe_figment_errors(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match e.metadata.as_ref() {
                Some(m) if m.name.contains("environment") => {
                    format!(
                        " (from environment variable {ENV_PREFIX}{})",
                        e.path.join("__").to_uppercase()
                    )
                }
                Some(m) => match &m.source {
                    Some(source) => format!(" (from {} {source})", m.name),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("key `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Environment values are typed by their look (`12345` is an integer), so a secret made of
/// digits must still be read as a string.
fn string_or_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i128),
        U(u128),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file with `text`, removed when dropped.
    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Env {
        Env::prefixed("PRESENCE_CONFIG_TEST_NEVER_SET__").split("__")
    }

    #[test]
    fn the_shipped_config_file_states_exactly_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let loaded = Settings::load_with_env(&path, no_env()).unwrap();
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let f = write_config("");
        assert_eq!(
            Settings::load_with_env(f.path(), no_env()).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = Settings::load_with_env(Path::new("/nonexistent/presence.toml"), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/presence.toml"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let f = write_config("[server]\nbindd = \"127.0.0.1:1\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bindd"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_an_error_naming_it() {
        let f = write_config("[serve]\nbind = \"127.0.0.1:1\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve"), "{err}");
    }

    #[test]
    fn a_bad_duration_is_an_error_naming_the_key() {
        let f = write_config("[presence]\nheartbeat_ttl = \"soon\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("presence.heartbeat_ttl"), "{err}");
    }

    #[test]
    fn a_bad_presence_type_is_an_error_naming_the_key() {
        let f = write_config("[api]\npresence_type = \"roman\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.presence_type"), "{err}");
    }

    #[test]
    fn durations_and_places_are_read() {
        let f = write_config(
            "[presence]\nheartbeat_ttl = \"250ms\"\nsweep_interval = \"2s\"\n\
             [[places]]\nid = 5\nuniverse_id = 6\nroot_place_id = 5\nname = \"Five\"\n",
        );
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(s.presence.heartbeat_ttl, Duration::from_millis(250));
        assert_eq!(s.presence.sweep_interval, Duration::from_secs(2));
        assert_eq!(s.places.len(), 1);
        assert_eq!(s.places[0].name, "Five");
    }

    #[test]
    fn offline_retention_is_forever_or_a_duration() {
        let f = write_config("[presence]\noffline_retention = \"30d\"\n");
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(
            s.presence.offline_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        let f = write_config("[presence]\noffline_retention = \"Forever\"\n");
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(s.presence.offline_retention, None);
        let f = write_config("[presence]\noffline_retention = \"later\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("presence.offline_retention"), "{err}");
    }

    #[test]
    fn a_place_listed_twice_is_refused() {
        let f = write_config(
            "[[places]]\nid = 5\nuniverse_id = 6\nroot_place_id = 5\nname = \"A\"\n\
             [[places]]\nid = 5\nuniverse_id = 6\nroot_place_id = 5\nname = \"B\"\n",
        );
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("place 5"), "{err}");
    }

    #[test]
    fn trusted_hops_out_of_range_is_refused_naming_the_key() {
        for hops in ["0", "33"] {
            let f = write_config(&format!("[rate_limit]\ntrusted_hops = {hops}\n"));
            let err = Settings::load_with_env(f.path(), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains("rate_limit.trusted_hops"), "{err}");
        }
        let f = write_config("[rate_limit]\ntrusted_hops = 32\n");
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(s.rate_limit.trusted_hops, 32);
    }

    #[test]
    fn a_zero_ttl_is_refused() {
        let f = write_config("[presence]\nheartbeat_ttl = \"0s\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("presence.heartbeat_ttl"), "{err}");
    }

    #[test]
    fn every_number_and_duration_out_of_its_range_is_refused_naming_the_key() {
        for (text, key) in [
            ("[server]\nworkers = 100000\n", "server.workers"),
            ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
            (
                "[server]\nshutdown_timeout = \"500ms\"\n",
                "server.shutdown_timeout",
            ),
            ("[server]\ndrain_delay = \"1d\"\n", "server.drain_delay"),
            (
                "[server]\nrequest_head_timeout = \"0s\"\n",
                "server.request_head_timeout",
            ),
            (
                "[server]\nrequest_body_timeout = \"1d\"\n",
                "server.request_body_timeout",
            ),
            ("[server]\nkeep_alive = \"2h\"\n", "server.keep_alive"),
            ("[server]\nkeep_alive = \"300ms\"\n", "server.keep_alive"),
            (
                "[server]\nrequest_head_timeout = \"500ms\"\n",
                "server.request_head_timeout",
            ),
            (
                "[server]\nmax_connections_per_address = 2000000\n",
                "server.max_connections_per_address",
            ),
            (
                "[server]\nmax_connections_per_worker = 0\n",
                "server.max_connections_per_worker",
            ),
            (
                "[presence]\nheartbeat_ttl = \"1000000000000d\"\n",
                "presence.heartbeat_ttl",
            ),
            (
                "[presence]\nsweep_interval = \"0s\"\n",
                "presence.sweep_interval",
            ),
            (
                "[store]\nbackend = \"redis\"\n[presence]\nsweep_interval = \"99ms\"\n",
                "presence.sweep_interval",
            ),
            (
                "[presence]\noffline_retention = \"1000000000000d\"\n",
                "presence.offline_retention",
            ),
            ("[api]\nmax_user_ids = 0\n", "api.max_user_ids"),
            (
                "[api]\nmax_location_length = 0\n",
                "api.max_location_length",
            ),
            (
                "[api]\nmax_location_length = 100000\n",
                "api.max_location_length",
            ),
            (
                "[rate_limit]\nlookup_burst = 4000000000\n",
                "rate_limit.lookup_burst",
            ),
            (
                "[persistence]\nsnapshot_interval = \"2d\"\n",
                "persistence.snapshot_interval",
            ),
        ] {
            let f = write_config(text);
            let err = Settings::load_with_env(f.path(), no_env())
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn sweeps_on_redis_are_at_least_100ms_apart() {
        let on = |backend: &str, interval: &str| {
            let f = write_config(&format!(
                "[store]\nbackend = \"{backend}\"\n[presence]\nsweep_interval = \"{interval}\"\n"
            ));
            Settings::load_with_env(f.path(), no_env()).map_err(|e| e.to_string())
        };
        assert!(on("redis", "100ms").is_ok());
        assert!(on("memory", "1ms").is_ok());
        let err = on("redis", "20ms").unwrap_err();
        assert!(err.contains("presence.sweep_interval"), "{err}");
        assert!(err.contains("redis"), "{err}");
    }

    #[test]
    fn the_ends_of_each_range_are_accepted() {
        let f = write_config(
            "[server]\nworkers = 1024\nkeep_alive = \"0s\"\nshutdown_timeout = \"1s\"\n\
             [presence]\nheartbeat_ttl = \"7d\"\noffline_retention = \"3650d\"\n\
             [api]\nmax_location_length = 1\n",
        );
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(s.server.workers, 1024);
        assert_eq!(s.api.max_location_length, 1);
    }

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn service_key(name: &str, sha256: &str, scopes: &str) -> String {
        format!("[[auth.service_keys]]\nname = {name:?}\nsha256 = {sha256:?}\nscopes = {scopes}\n")
    }

    #[test]
    fn service_keys_are_read_with_their_digest_in_lower_case() {
        let other = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let f = write_config(&format!(
            "{}{}",
            service_key("eu", &DIGEST.to_uppercase(), "[\"game-servers\"]"),
            service_key("back-end", other, "[\"privacy\", \"read\"]"),
        ));
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        let keys = &s.auth.service_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "eu");
        assert_eq!(keys[0].sha256, DIGEST);
        assert_eq!(keys[0].scopes, ["game-servers"]);
        assert_eq!(keys[1].scopes, ["privacy", "read"]);
    }

    #[test]
    fn a_bad_service_key_is_refused_naming_the_key_and_the_entry() {
        let good = service_key("good", DIGEST, "[\"read\"]");
        let other = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let long = "n".repeat(65);
        for (entry, says) in [
            (service_key("", other, "[\"read\"]"), "name"),
            (service_key("  ", other, "[\"read\"]"), "name"),
            (service_key(&long, other, "[\"read\"]"), "64"),
            (service_key("tab\there", other, "[\"read\"]"), "control"),
            (service_key("good", other, "[\"read\"]"), "name of entry 1"),
            (service_key("short", &other[1..], "[\"read\"]"), "64 hex"),
            (
                service_key("long", &format!("{other}0"), "[\"read\"]"),
                "64 hex",
            ),
            (
                service_key("not-hex", &format!("{}g", &other[1..]), "[\"read\"]"),
                "64 hex",
            ),
            (
                service_key("same", &DIGEST.to_uppercase(), "[\"read\"]"),
                "sha256 as entry 1",
            ),
            (service_key("none", other, "[]"), "at least one"),
            (service_key("admin", other, "[\"admin\"]"), "\"admin\""),
            (service_key("case", other, "[\"Read\"]"), "\"Read\""),
        ] {
            let f = write_config(&format!("{good}{entry}"));
            let err = Settings::load_with_env(f.path(), no_env())
                .expect_err(&entry)
                .to_string();
            assert!(err.contains("auth.service_keys"), "{entry}: {err}");
            assert!(err.contains("entry 2"), "{entry}: {err}");
            assert!(err.contains(says), "{entry}: {err}");
        }
    }

    #[test]
    fn a_service_key_name_may_be_64_characters_of_any_script() {
        let name = "é".repeat(64);
        let f = write_config(&service_key(&name, DIGEST, "[\"game-servers\"]"));
        let s = Settings::load_with_env(f.path(), no_env()).unwrap();
        assert_eq!(s.auth.service_keys[0].name, name);
    }

    #[test]
    fn a_service_key_entry_needs_every_field() {
        let f = write_config(&format!(
            "[[auth.service_keys]]\nname = \"eu\"\nsha256 = {DIGEST:?}\n"
        ));
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.service_keys"), "{err}");
        assert!(err.contains("scopes"), "{err}");
    }
}
