//! The command line: `connections serve`, `connections migrate`,
//! `connections token` (API tokens), `connections app-key` (application
//! keys of the REST API), `connections user-token` (browser SDK tokens) and
//! `connections action-link` (signed unlink action links).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, RelayFormat, RelaySettings, Secret, SecuritySettings, Settings, TlsSettings},
    storage::db::DEFAULT_DATABASE_URL,
};

#[derive(Debug, Parser)]
#[command(
    name = "connections",
    version,
    about = "Removes links between accounts and their external logins, and streams the events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// TOML file of settings, keys named as the flags with `_` for `-`
    /// (e.g. `database_url`); flags and environment variables override it.
    #[arg(long, global = true, env = "CONNECTIONS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "CONNECTIONS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

pub use crate::telemetry::LogFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC and REST server (migrates the database first).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage API tokens (callers, their sites and permissions).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage application keys of the REST API (userKey + secret).
    #[command(subcommand)]
    AppKey(AppKeyCommand),
    /// Mint and revoke user tokens for the browser SDK (one site, one uid).
    #[command(subcommand)]
    UserToken(UserTokenCommand),
    /// Print a signed unlink action link (GET /action/v2/unlinkaccount)
    /// for a site's page: acts once, within its lifetime (at most 15 minutes).
    ActionLink(Box<ActionLinkArgs>),
}

#[derive(Debug, Args)]
pub struct ActionLinkArgs {
    /// The site's vhost.
    #[arg(long)]
    pub vhost: i64,
    /// The account's integer uid.
    #[arg(long)]
    pub uid: i64,
    /// Where the browser goes afterwards: a path, or a URL of an allowed origin.
    #[arg(long)]
    pub redirect_url: String,
    /// sheridan, sheridan staff, janrain or gigya; absent: every external-id identity.
    #[arg(long)]
    pub external_id_provider_name: Option<String>,
    /// `all` or one sub-provider for janrain, `none` otherwise.
    #[arg(long, default_value = "none")]
    pub sub_provider_name: String,
    /// Seconds the link lives, 1 to 900.
    #[arg(long, default_value_t = 900)]
    pub ttl_seconds: i64,
    /// `scheme://host[:port][/prefix]` browsers reach the HTTP listener at;
    /// absent: the link is relative (`/action/v2/unlinkaccount?...`).
    #[arg(long, env = "CONNECTIONS_PUBLIC_BASE_URL")]
    pub base_url: Option<String>,
    /// The server's base64 32-byte secret key (as `serve --session-key`):
    /// opens the site's action secret.
    #[arg(long, env = "CONNECTIONS_SESSION_KEY", hide_env_values = true)]
    pub session_key: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum UserTokenCommand {
    /// Create a user token and print it once: hand it to that user's page.
    Create(UserTokenCreateArgs),
    /// Revoke every active user token of one uid of a site.
    Revoke(UserTokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct UserTokenCreateArgs {
    /// The site the token acts on.
    #[arg(long)]
    pub api_key: String,
    /// The one account the token acts on.
    #[arg(long)]
    pub uid: String,
    /// Lifetime, e.g. `15m` (the default), at most `1h`.
    #[arg(long)]
    pub ttl: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct UserTokenRevokeArgs {
    /// The site of the tokens.
    #[arg(long)]
    pub api_key: String,
    /// The uid whose tokens end.
    #[arg(long)]
    pub uid: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum AppKeyCommand {
    /// Create a key and print `<userKey> <secret>` once (the secret is stored sealed).
    Create(AppKeyCreateArgs),
    /// List keys: userKey, caller, sites, permissions, created, revoked. Never secrets.
    List(DatabaseArgs),
    /// Revoke a key by its userKey.
    Revoke(AppKeyRevokeArgs),
}

#[derive(Debug, Args)]
pub struct AppKeyCreateArgs {
    /// Name of the caller; becomes the `actor` of the events its calls cause.
    #[arg(long)]
    pub caller: String,
    /// Comma-separated api_keys the key may act on, or `*` for all sites.
    #[arg(long)]
    pub sites: String,
    /// Comma-separated permissions; REST removeConnection needs connections.write.
    #[arg(long, default_value = "connections.write")]
    pub permissions: String,
    /// The server's base64 32-byte secret key (as `serve --session-key`): seals the secret.
    #[arg(long, env = "CONNECTIONS_SESSION_KEY", hide_env_values = true)]
    pub session_key: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct AppKeyRevokeArgs {
    /// The key's userKey (see `app-key list`).
    #[arg(long)]
    pub user_key: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create(TokenCreateArgs),
    /// List tokens: id, caller, sites, permissions, created, revoked.
    List(DatabaseArgs),
    /// Revoke every active token of a caller, or one token by id.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Name of the caller; becomes the `actor` of its events.
    #[arg(long)]
    pub caller: String,
    /// Comma-separated api_keys the token may act on, or `*` for all sites.
    #[arg(long)]
    pub sites: String,
    /// Comma-separated: connections.write, connections.read, events.subscribe, admin.
    #[arg(long)]
    pub permissions: String,
    /// Lifetime, e.g. `90d`, `12h`, `30m`; the token never expires without it.
    #[arg(long)]
    pub expires_in: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "which")]
pub struct TokenRevokeArgs {
    /// Revoke every active token of this caller.
    #[arg(long, group = "which")]
    pub caller: Option<String>,
    /// Revoke the token with this id (see `token list`).
    #[arg(long, group = "which")]
    pub id: Option<i64>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// TLS and abuse limits of `serve`.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, env = "CONNECTIONS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "CONNECTIONS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "CONNECTIONS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Requests per second per caller (0 = no limit).
    #[arg(long, env = "CONNECTIONS_RATE_LIMIT", default_value_t = SecuritySettings::default().rate_limit_per_second)]
    pub rate_limit: f64,
    /// Requests a caller may send in a burst before --rate-limit applies.
    #[arg(long, env = "CONNECTIONS_RATE_BURST", default_value_t = SecuritySettings::default().rate_limit_burst)]
    pub rate_burst: u32,
    /// Largest accepted request message in bytes.
    #[arg(long, env = "CONNECTIONS_MAX_MESSAGE_BYTES", default_value_t = SecuritySettings::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Concurrent Subscribe streams per caller (0 = no bound).
    #[arg(long, env = "CONNECTIONS_MAX_STREAMS_PER_CALLER", default_value_t = SecuritySettings::default().max_streams_per_caller)]
    pub max_streams_per_caller: usize,
    /// Seconds a token lookup is cached: how soon new and revoked tokens take effect.
    #[arg(long, env = "CONNECTIONS_TOKEN_CACHE_SECONDS", default_value_t = 2)]
    pub token_cache_seconds: u64,
    /// Longest a gRPC call may take before the server gives up on it and rolls its work back (`30s`, `500ms`).
    #[arg(long, env = "CONNECTIONS_CALL_TIMEOUT", default_value = "30s", value_parser = config::parse_duration)]
    pub call_timeout: Duration,
}

impl SecurityArgs {
    pub fn settings(&self) -> Result<SecuritySettings, String> {
        if !(self.rate_limit.is_finite() && self.rate_limit >= 0.0) {
            return Err("--rate-limit must be a number >= 0".into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        Ok(SecuritySettings {
            tls,
            rate_limit_per_second: self.rate_limit,
            rate_limit_burst: self.rate_burst,
            max_message_bytes: self.max_message_bytes,
            max_streams_per_caller: self.max_streams_per_caller,
            token_cache_ttl: Duration::from_secs(self.token_cache_seconds),
            call_timeout: self.call_timeout,
        })
    }
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://FILE?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "CONNECTIONS_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONNECTIONS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Extra providers: comma-separated `name[:social|external][:logout]`.
    #[arg(long, env = "CONNECTIONS_EXTRA_PROVIDERS")]
    pub extra_providers: Option<String>,
    /// Base64 32-byte AES key for provider session data at rest.
    #[arg(long, env = "CONNECTIONS_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    #[arg(long, env = "CONNECTIONS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the REST listener (socialize.removeConnection), or `off`.
    #[arg(long, env = "CONNECTIONS_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_parser = config::parse_optional_listen)]
    // Spelled out so that clap does not treat it as an optional flag:
    // `off` parses to None.
    pub http_listen: ::std::option::Option<SocketAddr>,
    /// The URL clients use to reach the REST listener (`https://api.example.com[/prefix]`),
    /// for signed requests behind a proxy; without it X-Forwarded-Proto and Host are trusted.
    #[arg(long, env = "CONNECTIONS_PUBLIC_BASE_URL", value_parser = config::parse_public_base_url)]
    pub public_base_url: Option<String>,
    /// REST requests handled at once; more wait up to a second, then are refused.
    #[arg(long, env = "CONNECTIONS_HTTP_MAX_IN_FLIGHT", default_value_t = config::HttpSettings::default().max_in_flight)]
    pub http_max_in_flight: usize,
    /// How long sequenced events are kept: `7d`, `24h`, `30m`, `90s`.
    #[arg(long, env = "CONNECTIONS_EVENT_RETENTION", default_value = "7d", value_parser = config::parse_duration)]
    pub event_retention: std::time::Duration,
    /// Longest wait for a database connection before a call fails (`5s`, `500ms`).
    #[arg(long, env = "CONNECTIONS_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = config::parse_duration)]
    pub db_acquire_timeout: std::time::Duration,
    /// How often the database is probed while it answers (`1s`, `250ms`).
    #[arg(long, env = "CONNECTIONS_DB_PROBE_INTERVAL", default_value = "1s", value_parser = config::parse_duration)]
    pub db_probe_interval: std::time::Duration,
    /// Most database connections the pool opens (default 8 on SQLite; on PostgreSQL 8 per core, between 8 and 32).
    #[arg(long, env = "CONNECTIONS_DB_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: Option<u32>,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// The JetStream relay of `serve` (off unless --nats-url is given).
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// Publish every event to NATS JetStream at this server, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "CONNECTIONS_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// JetStream stream the events go to (created with file storage when missing).
    #[arg(long, env = "CONNECTIONS_NATS_STREAM", default_value = config::DEFAULT_NATS_STREAM)]
    pub nats_stream: String,
    /// First subject tokens: subjects are `<prefix>.<api_key>.<provider>`.
    #[arg(long, env = "CONNECTIONS_NATS_SUBJECT_PREFIX", default_value = config::DEFAULT_NATS_SUBJECT_PREFIX)]
    pub nats_subject_prefix: String,
    /// Payload: the protobuf `ConnectionRemoved`, or its canonical protobuf JSON.
    #[arg(long, env = "CONNECTIONS_NATS_FORMAT", default_value = "protobuf")]
    pub nats_format: NatsFormat,
    /// Replicas of the stream when the service creates it.
    #[arg(long, env = "CONNECTIONS_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Max age of messages in a stream the service creates (`7d`, `24h`, ...).
    #[arg(long, env = "CONNECTIONS_NATS_MAX_AGE", default_value = "7d", value_parser = config::parse_duration)]
    pub nats_max_age: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NatsFormat {
    Protobuf,
    Json,
}

impl NatsArgs {
    pub fn settings(&self) -> Result<Option<RelaySettings>, String> {
        let Some(url) = self.nats_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let stream = self.nats_stream.trim();
        if stream.is_empty()
            || stream.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        {
            return Err("--nats-stream must be a name without '.', '*', '>' or spaces".into());
        }
        let prefix = self.nats_subject_prefix.trim();
        if prefix.is_empty()
            || prefix.split('.').any(|token| {
                token.is_empty()
                    || token.contains(|c: char| c == '*' || c == '>' || c.is_whitespace())
            })
        {
            return Err(
                "--nats-subject-prefix must be dot-separated tokens without wildcards or spaces"
                    .into(),
            );
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err("--nats-replicas must be between 1 and 5".into());
        }
        Ok(Some(RelaySettings {
            stream: stream.to_owned(),
            subject_prefix: prefix.to_owned(),
            format: match self.nats_format {
                NatsFormat::Protobuf => RelayFormat::Protobuf,
                NatsFormat::Json => RelayFormat::Json,
            },
            replicas: self.nats_replicas,
            max_age: self.nats_max_age,
            ..RelaySettings::new(url.trim())
        }))
    }
}

impl ServeArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        Ok(Settings {
            listen: self.listen,
            database_url: Secret::new(self.database.database_url.clone()),
            registry: Arc::new(config::provider_registry(self.extra_providers.as_deref())?),
            session_key: self
                .session_key
                .as_deref()
                .map(config::parse_session_key)
                .transpose()?,
            security: self.security.settings()?,
            metrics_listen: self.metrics_listen,
            http_listen: self.http_listen,
            http: config::HttpSettings {
                public_base_url: self.public_base_url.clone(),
                max_in_flight: self.http_max_in_flight,
                ..config::HttpSettings::default()
            },
            events: config::EventSettings {
                retention: self.event_retention,
                ..config::EventSettings::default()
            },
            pool: config::PoolSettings {
                acquire_timeout: self.db_acquire_timeout,
                probe_interval: self.db_probe_interval,
                max_connections: self.db_max_connections,
                ..config::PoolSettings::default()
            },
            relay: self.nats.settings()?,
        })
    }
}

/// Why the command line could not be read.
#[derive(Debug)]
pub enum CliError {
    /// clap's own error (usage, `--help`, `--version`): it prints and exits.
    Usage(clap::Error),
    /// The configuration file: missing, malformed, an unknown key or a bad
    /// value, in one line naming the file (and the key).
    Config(String),
}

impl Cli {
    /// Parses the process's arguments, with the settings of `--config` (or
    /// `CONNECTIONS_CONFIG`) between the environment and the defaults:
    /// flag > environment > file > default.
    pub fn parse_with_config() -> Result<Self, CliError> {
        Self::parse_from_with_config(std::env::args_os())
    }

    /// [`Cli::parse_with_config`] on the given arguments.
    pub fn parse_from_with_config<I, T>(args: I) -> Result<Self, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Self::command();
        // A first, lenient pass finds the file; every other mistake is
        // reported by the real pass below.
        let lenient = command
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&args)
            .ok();
        let path = lenient.as_ref().and_then(|m| {
            m.get_one::<PathBuf>("config").cloned().or_else(|| {
                m.subcommand()
                    .and_then(|(_, sub)| sub.get_one::<PathBuf>("config").cloned())
            })
        });
        if let Some(path) = path {
            for (key, value) in config_file::read(&path, &command).map_err(CliError::Config)? {
                command = config_file::default_everywhere(command, &key, value);
            }
        }
        let matches = command
            .try_get_matches_from(&args)
            .map_err(CliError::Usage)?;
        Self::from_arg_matches(&matches).map_err(CliError::Usage)
    }
}

/// The `--config` file: a flat TOML table whose keys are `serve`'s settings.
mod config_file {
    use std::{ffi::OsStr, path::Path};

    use clap::{Arg, Command};

    /// Arguments that are not settings.
    const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

    /// The settings `serve` has (and the global ones), by key.
    fn setting<'a>(command: &'a Command, key: &str) -> Option<&'a Arg> {
        if NOT_SETTINGS.contains(&key) {
            return None;
        }
        let serve = command.find_subcommand("serve")?;
        [serve, command].into_iter().find_map(|owner| {
            owner
                .get_arguments()
                .find(|arg| arg.get_id() == key && !arg.is_positional())
        })
    }

    /// Reads and checks the file: every key a setting, every value one its
    /// flag accepts. Returns `(key, value as the flag would take it)`.
    pub(super) fn read(path: &Path, command: &Command) -> Result<Vec<(String, String)>, String> {
        let file = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {file}: {}", io_cause(&e)))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            match line {
                Some(line) => format!("config file {file}, line {line}: {}", e.message().trim()),
                None => format!("config file {file}: {}", e.message().trim()),
            }
        })?;
        let mut settings = Vec::new();
        for (key, value) in table {
            let Some(arg) = setting(command, &key) else {
                return Err(format!(
                    "config file {file}: unknown key `{key}` (the keys are serve's flags \
                     with `_` for `-`, e.g. `database_url`)"
                ));
            };
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "config file {file}: `{key}` must be a string or a number"
                    ));
                }
            };
            if let Err(e) = check_value(arg, &value) {
                return Err(format!("config file {file}: `{key}`: {}", clap_reason(&e)));
            }
            settings.push((key, value));
        }
        Ok(settings)
    }

    /// Makes `value` the default of the argument `key` wherever it appears
    /// (serve, and e.g. `--database-url` of the token commands): below flags
    /// and environment variables, above the built-in default. Not shown in
    /// `--help`, as the file may hold secrets.
    pub(super) fn default_everywhere(mut command: Command, key: &str, value: String) -> Command {
        if command.get_arguments().any(|arg| arg.get_id() == key) {
            // clap keeps defaults for the life of the program; once per key.
            let value: &'static str = Box::leak(value.clone().into_boxed_str());
            command = command.mut_arg(key, |arg| arg.default_value(value).hide_default_value(true));
        }
        let names: Vec<String> = command
            .get_subcommands()
            .map(|sub| sub.get_name().to_owned())
            .collect();
        for name in names {
            let value = value.clone();
            command = command.mut_subcommand(name, |sub| default_everywhere(sub, key, value));
        }
        command
    }

    /// Runs the flag's own parser on `value`, alone (no environment, no
    /// other flag required).
    fn check_value(arg: &Arg, value: &str) -> Result<(), clap::Error> {
        Command::new("connections")
            .no_binary_name(true)
            .arg(
                Arg::new("value")
                    .long("value")
                    .value_parser(arg.get_value_parser().clone()),
            )
            .try_get_matches_from([OsStr::new("--value"), OsStr::new(value)])
            .map(drop)
    }

    /// What clap says is wrong with a value, without its "error:" and usage.
    fn clap_reason(err: &clap::Error) -> String {
        let rendered = err.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        // "invalid value 'x' for '--flag <FLAG>': why" -> "invalid value 'x': why"
        match (first.split_once(" for '--"), first.split_once("': ")) {
            (Some((what, _)), Some((_, why))) => format!("{what}: {why}"),
            _ => first.to_owned(),
        }
    }

    fn io_cause(err: &std::io::Error) -> String {
        match err.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from([&["connections", "serve"], args].concat())
            .map_err(|e| e.to_string())?;
        serve_settings(cli)
    }

    /// The settings of a command line parsed as `serve`.
    fn serve_settings(cli: Cli) -> Result<Settings, String> {
        match cli.command {
            Command::Serve(serve) => serve.settings(),
            Command::Migrate(_)
            | Command::Token(_)
            | Command::AppKey(_)
            | Command::UserToken(_)
            | Command::ActionLink(_) => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn event_retention_defaults_to_a_week_and_takes_units() {
        let default = serve(&[]).unwrap();
        assert_eq!(
            default.events.retention,
            std::time::Duration::from_secs(7 * 86_400)
        );
        let short = serve(&["--event-retention", "36h"]).unwrap();
        assert_eq!(
            short.events.retention,
            std::time::Duration::from_secs(36 * 3600)
        );
        assert!(serve(&["--event-retention", "soon"]).is_err());
    }

    #[test]
    fn the_rest_listener_defaults_to_port_8080_and_can_be_turned_off() {
        let default = serve(&[]).unwrap();
        assert_eq!(
            default.http_listen,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(default.http.public_base_url, None);
        let off = serve(&["--http-listen", "off"]).unwrap();
        assert_eq!(off.http_listen, None);
        let proxied = serve(&["--public-base-url", "https://api.example.com/"]).unwrap();
        assert_eq!(
            proxied.http.public_base_url.as_deref(),
            Some("https://api.example.com")
        );
        assert!(serve(&["--public-base-url", "api.example.com"]).is_err());
    }

    #[test]
    fn the_relay_is_off_without_a_nats_url_and_takes_its_options() {
        assert!(serve(&[]).unwrap().relay.is_none());
        let relay = serve(&[
            "--nats-url",
            "nats://u:secret@127.0.0.1:4222",
            "--nats-format",
            "json",
            "--nats-stream",
            "EVENTS",
            "--nats-max-age",
            "2d",
        ])
        .unwrap()
        .relay
        .unwrap();
        assert_eq!(relay.stream, "EVENTS");
        assert_eq!(relay.subject_prefix, "connections.v1.removed");
        assert_eq!(relay.format, RelayFormat::Json);
        assert_eq!(relay.replicas, 1);
        assert_eq!(relay.max_age, std::time::Duration::from_secs(2 * 86_400));
        assert!(!format!("{relay:?}").contains("secret"));
        for bad in [
            &["--nats-url", "nats://h", "--nats-stream", "A.B"][..],
            &["--nats-url", "nats://h", "--nats-subject-prefix", "a.*"],
            &["--nats-url", "nats://h", "--nats-subject-prefix", "a..b"],
            &["--nats-url", "nats://h", "--nats-replicas", "0"],
            &["--nats-url", "nats://h", "--nats-format", "xml"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }

    /// Parses `connections [--config FILE] serve ARGS` with `toml` as the file.
    fn serve_with_file(toml: &str, args: &[&str]) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.display().to_string();
        let cli = Cli::parse_from_with_config(
            [&["connections", "--config", &path, "serve"], args].concat(),
        )
        .map_err(|e| match e {
            CliError::Usage(e) => e.to_string(),
            CliError::Config(message) => message.replace(&path, "FILE"),
        })?;
        serve_settings(cli)
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let file = r#"
            listen = "127.0.0.1:6000"
            database_url = "sqlite://from-file.db?mode=rwc"
            http_listen = "off"
            event_retention = "36h"
            db_acquire_timeout = "750ms"
            db_max_connections = 3
            rate_limit = 12.5
            max_streams_per_caller = 4
            call_timeout = "2s"
            nats_url = "nats://127.0.0.1:4222"
            nats_format = "json"
        "#;
        let settings = serve_with_file(file, &[]).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(
            settings.database_url.expose(),
            "sqlite://from-file.db?mode=rwc"
        );
        assert_eq!(settings.http_listen, None);
        assert_eq!(settings.events.retention, Duration::from_secs(36 * 3600));
        assert_eq!(settings.pool.acquire_timeout, Duration::from_millis(750));
        assert_eq!(settings.pool.max_connections, Some(3));
        assert!((settings.security.rate_limit_per_second - 12.5).abs() < f64::EPSILON);
        assert_eq!(settings.security.max_streams_per_caller, 4);
        assert_eq!(settings.security.call_timeout, Duration::from_secs(2));
        assert_eq!(settings.relay.unwrap().format, RelayFormat::Json);
        // A flag wins over the file; what the file does not set keeps its default.
        let flagged = serve_with_file(file, &["--listen", "127.0.0.1:7000"]).unwrap();
        assert_eq!(flagged.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(flagged.pool.probe_interval, Duration::from_secs(1));
    }

    #[test]
    fn file_mistakes_name_the_file_and_the_key() {
        assert_eq!(
            serve_with_file("listen = \"127.0.0.1:1\"\nlisten_port = 5\n", &[]).unwrap_err(),
            "config file FILE: unknown key `listen_port` (the keys are serve's flags with `_` \
             for `-`, e.g. `database_url`)"
        );
        let bad = serve_with_file("event_retention = \"soon\"", &[]).unwrap_err();
        assert!(
            bad.starts_with("config file FILE: `event_retention`: invalid value 'soon': "),
            "{bad}"
        );
        let bad = serve_with_file("nats_format = \"xml\"", &[]).unwrap_err();
        assert!(
            bad.starts_with("config file FILE: `nats_format`: invalid value 'xml'"),
            "{bad}"
        );
        let bad = serve_with_file("listen = [1]", &[]).unwrap_err();
        assert_eq!(
            bad,
            "config file FILE: `listen` must be a string or a number"
        );
        let bad = serve_with_file("listen = \"127.0.0.1:1\"\nbroken", &[]).unwrap_err();
        assert!(bad.starts_with("config file FILE, line 2: "), "{bad}");
        assert!(serve_with_file("config = \"other.toml\"", &[]).is_err());
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let err = Cli::parse_from_with_config([
            "connections",
            "serve",
            "--config",
            "/nonexistent/connections.toml",
        ])
        .map(drop)
        .unwrap_err();
        match err {
            CliError::Config(message) => assert_eq!(
                message,
                "cannot read the config file /nonexistent/connections.toml: no such file"
            ),
            CliError::Usage(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_readme_table_names_every_setting_with_its_flag_variable_and_key() {
        let readme = include_str!("../README.md");
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments().chain(command.get_arguments()) {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "config") {
                continue;
            }
            let long = arg.get_long().unwrap();
            let env = arg.get_env().unwrap().to_str().unwrap();
            let row = readme
                .lines()
                .find(|line| line.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("no README row for --{long}"));
            assert!(row.contains(&format!("`{env}`")), "{row}");
            assert!(row.contains(&format!("`{id}`")), "{row}");
        }
    }
}
