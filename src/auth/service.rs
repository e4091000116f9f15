//! Service keys: the credentials of trusted callers (game servers, the platform's own back
//! end), sent as `x-api-key` (CONTRACT section 10).
//!
//! Only the SHA-256 of each key is configured. A presented key is hashed and compared with
//! every configured digest in constant time, all of them whatever matches, so the time an
//! answer takes says neither which key matched nor how much of one did.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::config::{check_service_keys, ServiceKeySettings};

/// What a service key may do; each route that takes service keys needs one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The `/v1/game-servers` routes.
    GameServers,
    /// Other users' privacy settings (CONTRACT section 11).
    Privacy,
    /// Reading presence as a trusted caller (CONTRACT section 11).
    Read,
}

impl Scope {
    /// Every scope, in the order of the documentation.
    pub const ALL: [Scope; 3] = [Scope::GameServers, Scope::Privacy, Scope::Read];

    /// The scope as written in the configuration: `game-servers`, `privacy`, `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GameServers => "game-servers",
            Self::Privacy => "privacy",
            Self::Read => "read",
        }
    }

    /// The scope written `text` in the configuration, exactly (lower case).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == text)
    }

    fn bit(self) -> u8 {
        match self {
            Self::GameServers => 1,
            Self::Privacy => 2,
            Self::Read => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is not one of \"game-servers\", \"privacy\", \"read\"")]
pub struct UnknownScope(pub String);

impl std::str::FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(text: &str) -> Result<Self, UnknownScope> {
        Self::parse(text).ok_or_else(|| UnknownScope(text.to_owned()))
    }
}

/// The lowercase hex SHA-256 of `key`'s bytes: what `auth.service_keys[].sha256` holds.
pub fn sha256_hex(key: &str) -> String {
    use fmt::Write as _;
    Sha256::digest(key.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The 32 bytes written as 64 hex digits, in either case.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *out = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// One configured service key: its digest, its name (for logs) and its scopes.
#[derive(Clone)]
pub struct ServiceKey {
    digest: [u8; 32],
    name: Arc<str>,
    scopes: u8,
}

impl ServiceKey {
    /// The key's configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether the key was given `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// The key's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        Scope::ALL.into_iter().filter(|scope| self.allows(*scope))
    }
}

/// Names and scopes only: a digest has no place in logs.
impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The configured service keys, checked against presented ones.
#[derive(Debug, Clone, Default)]
pub struct ServiceKeys {
    keys: Vec<ServiceKey>,
}

impl ServiceKeys {
    /// The keys of `auth.service_keys`, checked by the rules of the configuration (so an
    /// error names the entry, as start-up would).
    pub fn new(settings: &[ServiceKeySettings]) -> Result<Self, String> {
        check_service_keys(settings)?;
        let keys = settings
            .iter()
            .map(|entry| {
                let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                    format!(
                        "auth.service_keys: key {:?}: sha256 is not 64 hex digits",
                        entry.name
                    )
                })?;
                let mut scopes = 0;
                for text in &entry.scopes {
                    scopes |= text.parse::<Scope>().map_err(|e| e.to_string())?.bit();
                }
                Ok(ServiceKey {
                    digest,
                    name: Arc::from(entry.name.as_str()),
                    scopes,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { keys })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured (every `x-api-key` is then refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured key whose SHA-256 is that of `presented`, if any. Every digest is
    /// compared in full, in constant time, whether or not one matched before.
    pub fn verify(&self, presented: &[u8]) -> Option<&ServiceKey> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // The index of the match, or u64::MAX; digests are unique, so at most one matches.
        let mut found = u64::MAX;
        for (index, key) in self.keys.iter().enumerate() {
            let hit = key.digest.ct_eq(&digest);
            found.conditional_assign(&(index as u64), hit);
        }
        self.keys.get(usize::try_from(found).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, key: &str, scopes: &[&str]) -> ServiceKeySettings {
        ServiceKeySettings {
            name: name.into(),
            sha256: sha256_hex(key),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn sha256_hex_is_64_lowercase_hex_digits() {
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn scopes_parse_and_print_as_configured() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(scope.to_string().parse::<Scope>(), Ok(scope));
        }
        assert_eq!(Scope::parse("Read"), None);
        assert_eq!(Scope::parse("game_servers"), None);
        let err = "admin".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("\"admin\""), "{err}");
    }

    #[test]
    fn a_presented_key_finds_its_entry_and_nothing_else_does() {
        let keys = ServiceKeys::new(&[
            entry("eu", "key-one", &["game-servers"]),
            entry("us", "key-two", &["read", "privacy"]),
        ])
        .unwrap();
        assert_eq!(keys.len(), 2);
        let eu = keys.verify(b"key-one").unwrap();
        assert_eq!(&**eu.name(), "eu");
        assert!(eu.allows(Scope::GameServers));
        assert!(!eu.allows(Scope::Read));
        let us = keys.verify(b"key-two").unwrap();
        assert_eq!(&**us.name(), "us");
        assert_eq!(
            us.scopes().collect::<Vec<_>>(),
            [Scope::Privacy, Scope::Read]
        );
        assert!(!us.allows(Scope::GameServers));
        for other in [&b"key-three"[..], b"", b"key-one ", b"KEY-ONE"] {
            assert!(keys.verify(other).is_none());
        }
        // A digest is never a key.
        assert!(keys.verify(sha256_hex("key-one").as_bytes()).is_none());
    }

    #[test]
    fn digests_are_read_in_either_case() {
        let mut upper = entry("eu", "key-one", &["read"]);
        upper.sha256 = upper.sha256.to_uppercase();
        let keys = ServiceKeys::new(&[upper]).unwrap();
        assert!(keys.verify(b"key-one").is_some());
    }

    #[test]
    fn no_keys_refuse_everything() {
        let keys = ServiceKeys::new(&[]).unwrap();
        assert!(keys.is_empty());
        assert!(keys.verify(b"").is_none());
        assert!(keys.verify(b"anything").is_none());
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let err = ServiceKeys::new(&[entry("eu", "k", &["admin"])]).unwrap_err();
        assert!(err.contains("auth.service_keys"), "{err}");
        assert!(err.contains("admin"), "{err}");
    }

    #[test]
    fn debug_shows_names_and_scopes_but_no_digest() {
        let keys = ServiceKeys::new(&[entry("eu", "key-one", &["game-servers"])]).unwrap();
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("eu") && shown.contains("GameServers"),
            "{shown}"
        );
        assert!(!shown.contains("digest"), "{shown}");
    }
}
