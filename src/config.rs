//! Typed settings. Secrets sit in a type whose Debug and Display never print them.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use base64::Engine;

pub use crate::storage::PoolSettings;
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
    pub session_key: Option<SessionKey>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when None.
    pub metrics_listen: Option<SocketAddr>,
    /// Where `serve` listens for REST (`socialize.removeConnection`); off when None.
    pub http_listen: Option<SocketAddr>,
    /// The REST door's settings.
    pub http: HttpSettings,
    /// Authentication, TLS and abuse limits.
    pub security: SecuritySettings,
    pub events: EventSettings,
    /// Connection pool and database probe.
    pub pool: PoolSettings,
    /// The NATS JetStream relay; off when None.
    pub relay: Option<RelaySettings>,
}

/// Where and how the relay publishes events to NATS JetStream.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `nats://[user:password@]host:port`: may hold credentials, never printed.
    pub url: Secret,
    /// The JetStream stream, created (file storage) when missing.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<api_key>.<provider>`.
    pub subject_prefix: String,
    pub format: RelayFormat,
    /// Replicas of a stream the service creates (clustered JetStream).
    pub replicas: usize,
    /// Max age of a stream the service creates; zero keeps messages forever.
    pub max_age: Duration,
    /// How long the relay waits for a JetStream answer before it reconnects.
    pub timeout: Duration,
    /// Slowest wake-up when nothing pushed one (a safety net).
    pub poll_interval: Duration,
    /// How often a replica that is not the relay tries to become it.
    pub leader_retry: Duration,
}

/// Payload encoding of the relayed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayFormat {
    /// The `ConnectionRemoved` protobuf bytes (`application/protobuf`).
    #[default]
    Protobuf,
    /// Canonical protobuf JSON of `ConnectionRemoved` (`application/json`).
    Json,
}

/// The stream name the relay uses unless told otherwise.
pub const DEFAULT_NATS_STREAM: &str = "CONNECTIONS";
/// The subject prefix of relayed events (SPEC section 13).
pub const DEFAULT_NATS_SUBJECT_PREFIX: &str = "connections.v1.removed";

impl RelaySettings {
    /// Defaults for the given server URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            stream: DEFAULT_NATS_STREAM.to_owned(),
            subject_prefix: DEFAULT_NATS_SUBJECT_PREFIX.to_owned(),
            format: RelayFormat::Protobuf,
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            leader_retry: Duration::from_secs(2),
        }
    }
}

/// TLS, token cache and abuse limits (see `access::Gate`).
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    pub tls: Option<TlsSettings>,
    /// Requests per second per caller (token bucket); 0 turns the limit off.
    pub rate_limit_per_second: f64,
    /// Requests a caller may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Largest accepted request message, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent Subscribe streams per caller; 0 turns the bound off.
    pub max_streams_per_caller: usize,
    /// How long a token lookup (and "do tokens exist") is cached: the delay
    /// before a revocation or a first token takes effect.
    pub token_cache_ttl: Duration,
    /// Longest a gRPC call may take to answer: past it the server drops the
    /// call's work (its transaction rolls back) and answers CANCELLED. A
    /// client's shorter `grpc-timeout` applies first. Streams are bounded
    /// until their first answer only.
    pub call_timeout: Duration,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            tls: None,
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400,
            max_message_bytes: 64 * 1024,
            max_streams_per_caller: 16,
            token_cache_ttl: Duration::from_secs(2),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// The REST door: how clients reach it, and its protection.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `scheme://host[:port][/prefix]` clients call, used for signed
    /// requests' base string; None: from `X-Forwarded-Proto` and `Host`.
    pub public_base_url: Option<String>,
    /// Requests handled at once; more wait a second, then are refused.
    pub max_in_flight: usize,
    /// How long a client may take to send a request's headers, and its body.
    pub read_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            public_base_url: None,
            max_in_flight: 256,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Checks a public base URL: absolute http(s), no query or fragment.
pub fn parse_public_base_url(value: &str) -> Result<String, String> {
    let url =
        url::Url::parse(value.trim()).map_err(|e| format!("--public-base-url {value:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "--public-base-url {value:?}: must be an http(s) URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "--public-base-url {value:?}: no query, fragment or credentials"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Parses a listen address, or `off`.
pub fn parse_optional_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    match value.trim() {
        "off" | "none" | "" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|e| format!("{other:?}: expected ADDR:PORT or `off`: {e}")),
    }
}

/// Tuning of the event machinery (sequencer, fan-out, retention, streams).
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Sequenced events older than this are pruned.
    pub retention: Duration,
    /// How often the pruner runs.
    pub prune_interval: Duration,
    /// Safety-net poll of the sequencer and fan-out; wake-ups are pushed.
    pub poll_interval: Duration,
    /// How often a replica that is not the sequencer tries to become it.
    pub leader_retry: Duration,
    /// Heartbeat interval when a subscriber asks for the server default.
    pub default_heartbeat: Duration,
    /// How long shutdown waits for open streams and calls to finish.
    pub drain_timeout: Duration,
    /// Set when the JetStream relay is on: pruning stops at the last
    /// position the relay has published, so no event is lost to retention.
    pub keep_unrelayed: bool,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            leader_retry: Duration::from_secs(2),
            default_heartbeat: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            keep_unrelayed: false,
        }
    }
}

/// PEM files for TLS; with `client_ca`, clients must present a certificate
/// signed by it (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Parses a duration such as `7d`, `24h`, `30m` or `90s` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?}: expected a number followed by d, h, m, s or ms"))?;
    let millis_per_unit = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        "ms" => 1,
        _ => return Err(format!("{value:?}: the unit must be d, h, m, s or ms")),
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("{value:?} is too long"))?;
    if millis == 0 {
        return Err(format!("{value:?} must be positive"));
    }
    Ok(Duration::from_millis(millis))
}

impl Settings {
    /// Defaults for the given database: what tests and `serve` without flags use.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: Secret::new(database_url),
            registry: Arc::new(ProviderRegistry::default()),
            session_key: None,
            security: SecuritySettings::default(),
            metrics_listen: None,
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            http: HttpSettings::default(),
            events: EventSettings::default(),
            pool: PoolSettings::default(),
            relay: None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::for_database(DEFAULT_DATABASE_URL)
    }
}

/// The AES-256 key sealing provider sessions; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub [u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Parses a base64-encoded 32-byte key.
pub fn parse_session_key(value: &str) -> Result<SessionKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| "the session key must be base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(SessionKey)
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
        let settings = Settings {
            session_key: Some(SessionKey([42; 32])),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("42"));
    }

    #[test]
    fn session_keys_must_be_32_bytes_of_base64() {
        assert!(
            parse_session_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_ok()
        );
        assert!(parse_session_key("c2hvcnQ=").is_err());
        assert!(parse_session_key("not base64!").is_err());
    }

    #[test]
    fn public_base_urls_are_absolute_http_urls() {
        assert_eq!(
            parse_public_base_url("HTTPS://Api.Example.com/gigya/").as_deref(),
            Ok("https://api.example.com/gigya")
        );
        assert_eq!(
            parse_public_base_url("http://h:8080").as_deref(),
            Ok("http://h:8080")
        );
        for bad in ["ftp://h", "h:80", "https://h/?q=1", "https://u:p@h"] {
            assert!(parse_public_base_url(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_optional_listen("off"), Ok(None));
        assert!(parse_optional_listen("127.0.0.1:8080").unwrap().is_some());
        assert!(parse_optional_listen("nope").is_err());
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "d", "7w", "-1d", "0s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
