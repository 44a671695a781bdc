use std::process::ExitCode;

use clap::Parser;
use connections::{
    app::App,
    cli::{Cli, Command},
    storage::db,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
        }
        Command::UserToken(command) => {
            connections::token_admin::run_user(
                command,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
        Command::AppKey(command) => {
            connections::app_key_admin::run(command, &mut std::io::stdout(), &mut std::io::stderr())
                .await
        }
        Command::ActionLink(args) => {
            connections::action_link_admin::run(
                *args,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
    };
    // Sends the spans and metrics still buffered.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Once, on stderr, whatever the log format: the log (stdout) may
            // not be set up, and a line in both would print twice.
            eprintln!("connections: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(database_url: &str) -> Result<(), String> {
    let connection = db::connect(database_url)
        .await
        .map_err(|e| db::describe(&e))?;
    db::migrate(&connection)
        .await
        .map_err(|e| db::describe(&e))?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(args: connections::cli::ServeArgs) -> Result<(), String> {
    let settings = args.settings()?;
    let app = App::build(&settings).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let http_listener = match settings.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for REST on {addr}: {e}"))?,
        ),
        None => None,
    };
    app.run_with(listener, http_listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
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
        () = ctrl_c => {},
        () = terminate => {},
    }
}
