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
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            heartbeat_ttl: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            offline_retention: None,
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
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            presence_type: PresenceTypeFormat::String,
            max_user_ids: 50,
            require_auth_for_lookup: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    #[serde(deserialize_with = "string_or_scalar")]
    pub jwt_secret: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: DEVELOPMENT_JWT_SECRET.to_owned(),
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
    /// Take the client address from the first `X-Forwarded-For` entry (behind a proxy).
    pub trust_forwarded_for: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            register_per_second: 2,
            register_burst: 20,
            lookup_per_second: 50,
            lookup_burst: 200,
            trust_forwarded_for: false,
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
        let settings: Settings = Figment::new()
            .merge(Toml::file(path))
            .merge(env)
            .extract()
            .map_err(|e| invalid(describe_figment_errors(e)))?;
        settings.validate().map_err(invalid)?;
        Ok(settings)
    }

    /// Checks what types alone cannot say; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.server.max_body_bytes == 0 {
            return Err("server.max_body_bytes must be at least 1".into());
        }
        if self.server.request_head_timeout.is_zero() || self.server.request_body_timeout.is_zero()
        {
            return Err("server.request_head_timeout and server.request_body_timeout must be longer than 0s".into());
        }
        if self.server.max_connections_per_worker == 0 {
            return Err("server.max_connections_per_worker must be at least 1".into());
        }
        let limits = &self.rate_limit;
        if (limits.register_per_second > 0 && limits.register_burst == 0)
            || (limits.lookup_per_second > 0 && limits.lookup_burst == 0)
        {
            return Err("rate_limit: a burst must be at least 1 when its rate is on".into());
        }
        if self.presence.heartbeat_ttl.is_zero() {
            return Err("presence.heartbeat_ttl must be longer than 0s".into());
        }
        if self.presence.sweep_interval < Duration::from_millis(1) {
            return Err("presence.sweep_interval must be at least 1ms".into());
        }
        if self.presence.offline_retention.is_some_and(|d| d.is_zero()) {
            return Err("presence.offline_retention must be longer than 0s, or \"forever\"".into());
        }
        if self.api.max_user_ids == 0 {
            return Err("api.max_user_ids must be at least 1".into());
        }
        if self.persistence.enabled && self.persistence.snapshot_interval.is_zero() {
            return Err("persistence.snapshot_interval must be longer than 0s".into());
        }
        if self.persistence.enabled && self.persistence.path.as_os_str().is_empty() {
            return Err("persistence.path must not be empty".into());
        }
        if self.auth.jwt_secret.is_empty() {
            return Err("auth.jwt_secret must not be empty".into());
        }
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
    fn a_zero_ttl_is_refused() {
        let f = write_config("[presence]\nheartbeat_ttl = \"0s\"\n");
        let err = Settings::load_with_env(f.path(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("presence.heartbeat_ttl"), "{err}");
    }
}
