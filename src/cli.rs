//! The command line: `connections serve` and `connections migrate`.

use std::{net::SocketAddr, sync::Arc};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, Secret, Settings},
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
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "CONNECTIONS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (migrates the database first).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
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
    /// How long sequenced events are kept: `7d`, `24h`, `30m`, `90s`.
    #[arg(long, env = "CONNECTIONS_EVENT_RETENTION", default_value = "7d", value_parser = config::parse_duration)]
    pub event_retention: std::time::Duration,
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
            events: config::EventSettings {
                retention: self.event_retention,
                ..config::EventSettings::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from([&["connections", "serve"], args].concat())
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(serve) => serve.settings(),
            Command::Migrate(_) => unreachable!("parsed serve"),
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
}
