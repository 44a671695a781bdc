use std::process::ExitCode;

use connections::{
    app::{self, App},
    cli::{Cli, CliError, Command},
    storage::db,
    telemetry,
};

/// mimalloc instead of the system allocator: a replay or a removal allocates
/// and frees many small strings, and glibc's malloc was a fifth of the
/// server's CPU on a replay.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::parse_with_config() {
        Ok(cli) => cli,
        Err(CliError::Usage(err)) => err.exit(),
        Err(CliError::Config(message)) => {
            eprintln!("connections: {message}");
            return ExitCode::FAILURE;
        }
    };
    // Token, app-key and action-link commands print a secret or a link on
    // stdout: keep log lines out of it.
    let telemetry = if matches!(
        cli.command,
        Command::Token(_) | Command::AppKey(_) | Command::UserToken(_) | Command::ActionLink(_)
    ) {
        None
    } else {
        match telemetry::init(&telemetry::TelemetryConfig::new(cli.log_format)) {
            Ok(telemetry) => Some(telemetry),
            Err(err) => {
                eprintln!("connections: telemetry: {err}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = match cli.command {
        Command::Migrate(args) => migrate(&args.database_url).await,
        Command::Serve(args) => serve(*args).await,
        Command::Token(command) => {
            connections::token_admin::run(command, &mut std::io::stdout(), &mut std::io::stderr())
                .await
                .map_err(Failure::from)
        }
        Command::UserToken(command) => connections::token_admin::run_user(
            command,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
        .await
        .map_err(Failure::from),
        Command::AppKey(command) => {
            connections::app_key_admin::run(command, &mut std::io::stdout(), &mut std::io::stderr())
                .await
                .map_err(Failure::from)
        }
        Command::ActionLink(args) => connections::action_link_admin::run(
            *args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
        .await
        .map_err(Failure::from),
    };
    // Sends the spans and metrics still buffered.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Logged) => ExitCode::FAILURE,
        Err(Failure::Unreported(message)) => {
            // Once, on stderr, whatever the log format: the log (stdout) may
            // not be set up, and a line in both would print twice.
            eprintln!("connections: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed.
enum Failure {
    /// Not said yet: printed once, on stderr.
    Unreported(String),
    /// Already in the log (a server that stopped on an error says so there).
    Logged,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Unreported(message)
    }
}

async fn migrate(database_url: &str) -> Result<(), Failure> {
    db::open_migrated(database_url).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(args: connections::cli::ServeArgs) -> Result<(), Failure> {
    let settings = args.settings()?;
    // Every listener is bound before the database is touched: a port in use
    // fails at once, with the database neither created nor migrated.
    let listener = app::bind(settings.listen, "gRPC")
        .await
        .map_err(|e| e.to_string())?;
    let http_listener = match settings.http_listen {
        Some(addr) => Some(app::bind(addr, "REST").await.map_err(|e| e.to_string())?),
        None => None,
    };
    // `App::build` binds the metrics listener before it connects.
    let app = App::build(&settings).await.map_err(|e| e.to_string())?;
    let (reason_tx, reason_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let signal = shutdown_signal().await;
        let _ = reason_tx.send(signal);
    };
    let result = app.run_with(listener, http_listener, shutdown).await;
    match (result, reason_rx.await) {
        (Ok(()), Ok(signal)) => {
            tracing::info!(reason = %format!("signal {signal}"), "stopped");
            Ok(())
        }
        (Ok(()), Err(_)) => {
            tracing::info!(reason = "the server ended", "stopped");
            Ok(())
        }
        // Refused before serving (e.g. open mode on a public address): a
        // start-up error like any other, said once on stderr.
        (Err(err @ app::AppError::Config(_)), _) => Err(Failure::Unreported(err.to_string())),
        (Err(err), _) => {
            // Once: in the log, where the lines before it are.
            tracing::error!(reason = %err, "stopped");
            Err(Failure::Logged)
        }
    }
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM, with the signal's name.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = terminate => "SIGTERM",
    }
}
