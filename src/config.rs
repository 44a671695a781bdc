//! Typed settings. Secrets sit in a type whose Debug and Display never print them.

use std::{net::SocketAddr, sync::Arc};

use base64::Engine;

use crate::{domain::ProviderRegistry, storage::db::DEFAULT_DATABASE_URL};

/// A configuration value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// May hold a password: redacted when printed.
    pub database_url: Secret,
    pub registry: Arc<ProviderRegistry>,
    /// AES-256 key for provider session data; random per process when absent.
    pub session_key: Option<[u8; 32]>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when None.
    pub metrics_listen: Option<SocketAddr>,
}

impl Settings {
    /// Defaults for the given database: what tests and `serve` without flags use.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: Secret::new(database_url),
            registry: Arc::new(ProviderRegistry::default()),
            session_key: None,
            metrics_listen: None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::for_database(DEFAULT_DATABASE_URL)
    }
}

/// Parses a base64-encoded 32-byte key.
pub fn parse_session_key(value: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| "the session key must be base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the session key must be 32 bytes, got {}", bytes.len()))
}

/// Builds the provider registry: built-in defaults plus configured extras.
pub fn provider_registry(extra: Option<&str>) -> Result<ProviderRegistry, String> {
    let mut registry = ProviderRegistry::default();
    if let Some(spec) = extra {
        registry.extend_from_spec(spec)?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("postgres://u:hunter2@h/db");
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn session_keys_must_be_32_bytes_of_base64() {
        assert!(
            parse_session_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_ok()
        );
        assert!(parse_session_key("c2hvcnQ=").is_err());
        assert!(parse_session_key("not base64!").is_err());
    }
}
