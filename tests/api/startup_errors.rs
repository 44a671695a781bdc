//! A database that cannot be opened stops `serve` and `migrate` within
//! seconds, with one line on stderr naming what was tried and why.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::helpers::{Backend, POSTGRES_URL_VAR};

/// Runs the binary with `args`; returns its output and how long it took.
fn run(args: &[&str]) -> (Output, Duration) {
    run_with_env(args, &[])
}

/// [`run`] with environment variables set.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_connections"))
        .args(args)
        .env_remove("CONNECTIONS_DATABASE_URL")
        .env_remove("CONNECTIONS_LISTEN")
        .env_remove("CONNECTIONS_CONFIG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run connections");
    (output, started.elapsed())
}

/// The one line on stderr, after checking it is printed once in all.
fn the_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    let line = stderr.trim_end().to_owned();
    assert!(
        !stdout.contains("cannot open the database"),
        "printed twice: {stdout}"
    );
    assert!(!line.contains("at line"), "{line}");
    assert!(!line.contains("Some("), "{line}");
    line
}

#[test]
fn serve_fails_within_seconds_when_postgres_refuses_the_connection() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/orders");
    let (output, took) = run(&["serve", "--listen", "127.0.0.1:0", "--database-url", &url]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let line = the_error_line(&output);
    assert_eq!(
        line,
        format!(
            "connections: cannot open the database: PostgreSQL at 127.0.0.1:{port}, \
             database \"orders\", user app: connection refused \
             (is PostgreSQL running and listening on that address?)"
        )
    );
    assert!(!line.contains("hunter2"), "no password: {line}");
}

#[test]
fn migrate_names_a_sqlite_path_it_cannot_create_and_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("not-there");
    let url = format!("sqlite://{}/c.db?mode=rwc", missing.display());
    let (output, _) = run(&["migrate", "--database-url", &url]);
    assert_eq!(
        the_error_line(&output),
        format!(
            "connections: cannot open the database: SQLite file {}/c.db: directory {} does not exist",
            missing.display(),
            missing.display()
        )
    );
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn serve_names_a_postgres_database_that_does_not_exist() {
    let Backend::Postgres(base) = Backend::postgres() else {
        unreachable!("Backend::postgres is PostgreSQL")
    };
    let mut url = url::Url::parse(&base).expect(POSTGRES_URL_VAR);
    url.set_path("ct_missing_database");
    let (host, port) = (
        url.host_str().unwrap_or_default().to_owned(),
        url.port().unwrap_or(5432),
    );
    let (output, took) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url.as_str(),
    ]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let line = the_error_line(&output);
    assert!(
        line.starts_with(&format!(
            "connections: cannot open the database: PostgreSQL at {host}:{port}, \
             database \"ct_missing_database\", user "
        )),
        "{line}"
    );
    assert!(
        line.contains("database \"ct_missing_database\" does not exist (create it, e.g. `createdb"),
        "{line}"
    );
}

/// A SQLite URL in a fresh directory, and the file it would create.
fn sqlite_in(dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let file = dir.path().join("c.db");
    (format!("sqlite://{}?mode=rwc", file.display()), file)
}

#[test]
fn serve_refuses_a_port_in_use_before_it_touches_the_database() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, file) = sqlite_in(&dir);
    for (args, what) in [
        (
            vec!["--listen", addr.as_str(), "--http-listen", "off"],
            "gRPC",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--http-listen", addr.as_str()],
            "REST",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--metrics-listen",
                addr.as_str(),
            ],
            "metrics",
        ),
    ] {
        let (output, took) = run(&[&["serve", "--database-url", &url][..], &args].concat());
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(
            the_error_line(&output),
            format!(
                "connections: cannot listen for {what} on {addr}: address already in use \
                 (is another server running?)"
            )
        );
        assert!(!file.exists(), "{what}: the database was created");
    }
}

#[test]
fn token_commands_name_the_database_they_cannot_reach() {
    let port = crate::process::free_port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/orders");
    for args in [
        &["token", "list", "--database-url", &url][..],
        &["app-key", "list", "--database-url", &url],
    ] {
        let (output, took) = run(args);
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(
            the_error_line(&output),
            format!(
                "connections: cannot open the database: PostgreSQL at 127.0.0.1:{port}, \
                 database \"orders\", user app: connection refused \
                 (is PostgreSQL running and listening on that address?)"
            ),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn serve_says_stopped_and_why_when_signalled() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, _) = sqlite_in(&dir);
        let server = crate::process::ServerProcess::start_logging(&url, &[], "info").await;
        let (status, log) = server.signal_and_wait(signal).await;
        assert!(status.success(), "{status}: {log}");
        let stopped: Vec<&str> = log.lines().filter(|l| l.contains("stopped")).collect();
        assert_eq!(stopped.len(), 1, "{log}");
        assert!(
            stopped[0].contains(&format!("signal SIG{signal}")),
            "{}",
            stopped[0]
        );
    }
}

/// The precedence of a setting, seen through the address `serve` fails to
/// bind: each source names a port already in use, and the error names the
/// one that won. Flag > environment > file.
#[test]
fn flags_override_the_environment_which_overrides_the_config_file() {
    let taken: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let [file_addr, env_addr, flag_addr] =
        [0, 1, 2].map(|i| taken[i].local_addr().expect("address").to_string());
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, db_file) = sqlite_in(&dir);
    let config = dir.path().join("connections.toml");
    std::fs::write(
        &config,
        format!("listen = \"{file_addr}\"\nhttp_listen = \"off\"\ndatabase_url = \"{url}\"\n"),
    )
    .expect("write the config file");
    let config = config.display().to_string();
    let refused_on = |output: &Output| {
        let line = the_error_line(output);
        let prefix = "connections: cannot listen for gRPC on ";
        assert!(line.starts_with(prefix), "{line}");
        line[prefix.len()..]
            .split(':')
            .take(2)
            .collect::<Vec<_>>()
            .join(":")
    };
    let (from_file, _) = run(&["--config", &config, "serve"]);
    assert_eq!(refused_on(&from_file), file_addr);
    let (from_env, _) = run_with_env(
        &["serve"],
        &[
            ("CONNECTIONS_CONFIG", &config),
            ("CONNECTIONS_LISTEN", &env_addr),
        ],
    );
    assert_eq!(refused_on(&from_env), env_addr);
    let (from_flag, _) = run_with_env(
        &["serve", "--config", &config, "--listen", &flag_addr],
        &[("CONNECTIONS_LISTEN", &env_addr)],
    );
    assert_eq!(refused_on(&from_flag), flag_addr);
    assert!(!db_file.exists(), "the database was created");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        "listen = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n",
    )
    .expect("write");
    let (output, _) = run(&["--config", &unknown.display().to_string(), "serve"]);
    let line = the_error_line(&output);
    assert!(
        line.starts_with(&format!(
            "connections: config file {}: unknown key `listen_adress`",
            unknown.display()
        )),
        "{line}"
    );
    let (output, _) = run(&["--config", "/nonexistent/c.toml", "serve"]);
    assert_eq!(
        the_error_line(&output),
        "connections: cannot read the config file /nonexistent/c.toml: no such file"
    );
}
