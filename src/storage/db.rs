//! Connecting to SQLite or PostgreSQL and running migrations.
//!
//! A database that cannot be opened is reported in one line that names what
//! was tried (host, port, database and user; or the SQLite file) and why it
//! failed, within a few seconds: PostgreSQL is probed with one direct
//! connection under [`POSTGRES_PROBE_TIMEOUT`] before the pool is built, so a
//! refused connection, a failed login or a missing database is not reported
//! as "pool timed out" ten seconds later.

use std::{borrow::Cow, io, path::Path, str::FromStr, time::Duration};

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    sqlx::{
        self, Connection,
        postgres::{PgConnectOptions, PgConnection},
        sqlite::SqliteConnectOptions,
    },
};
use sea_orm_migration::MigratorTrait;

use super::{StorageError, health::PoolSettings, idle_check, migrations::Migrator};

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://connections.db?mode=rwc";

/// How long the start-up probe waits for PostgreSQL to accept a login.
pub const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with the default pool settings (the command line's tools).
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, &PoolSettings::default()).await
}

/// Connects with settings that suit each backend: SQLite in WAL mode with a
/// busy timeout (concurrent writers wait instead of failing) and foreign keys.
///
/// A failure to open the database is a `DbErr::Conn` whose message is the
/// one line of [`describe`].
pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let is_postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
    if is_postgres {
        probe_postgres(url).await.map_err(cannot_open)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.acquire_timeout);
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer; SeaORM defaults SQLite to
        // a single connection, which would make readers queue behind writes.
        // A file has no connection to lose: pinging it on every checkout
        // would cost each transaction a round trip to sqlx's worker thread.
        options
            .max_connections(pool.max_connections.unwrap_or(8))
            .min_connections(1)
            .test_before_acquire(false);
        // The bundled SQLite is built with its query planner stability
        // guarantee on (`.cargo/config.toml`): a plan that looked at a bound
        // value (a `LIMIT ?`) would otherwise be compiled again on every
        // execution.
        options.map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
        });
        // A connection that comes back still inside a transaction (a COMMIT
        // that failed, e.g. on a full disk, leaves sqlx's transaction depth
        // behind SQLite's real state) would run the next "transaction" as a
        // savepoint: close it instead of reusing it.
        options.map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_release(|conn, _meta| {
                use sea_orm::sqlx::Connection;
                let reusable = !conn.is_in_transaction();
                Box::pin(async move { Ok(reusable) })
            })
        });
    } else {
        // Not every checkout is pinged (sqlx's default), only connections
        // that may have died while idle (see `idle_check`): a ping is a round
        // trip and a backend wake-up before each statement.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        options
            .max_connections(
                pool.max_connections
                    .unwrap_or_else(|| default_postgres_pool(cores)),
            )
            .min_connections(1)
            .test_before_acquire(false)
            .map_sqlx_postgres_before_acquire(idle_check::test_if_suspect);
    }
    match Database::connect(options).await {
        Ok(connection) => Ok(connection),
        Err(err) if url.starts_with("sqlite:") => Err(cannot_open(sqlite_failure(url, &err))),
        Err(err) if is_postgres => Err(cannot_open(format!(
            "{}: {}",
            postgres_target(url),
            cause(&err)
        ))),
        Err(err) => Err(err),
    }
}

/// Connects with the default pool settings and applies pending migrations,
/// for the command line's tools: a failure is the one line of [`describe`].
pub async fn open_migrated(url: &str) -> Result<DatabaseConnection, String> {
    let connection = connect(url).await.map_err(|e| describe(&e))?;
    migrate(&connection).await.map_err(|e| describe(&e))?;
    Ok(connection)
}

/// Applies pending migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

pub fn is_postgres(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// The PostgreSQL pool's default size: 8 connections per core, between 8
/// and 32. Every connection is a backend process competing for the same
/// cores; past a few per core they only add context switches (measured on
/// 2 cores at 32 writers: 12 or 16 connections gave 1,134-1,183 removals/s
/// and p99 21-24 ms, 32 gave 1,020-1,109 and 31-33 ms; at 8 writers after
/// a 32-writer run, 1,035-1,092 against 893-908; 4 or 6 left the cores
/// idle). Queueing for a connection in the server costs less than queueing
/// for a core in the database. (Those measurements predate the pool's idle
/// stack, when calls also rotated over every idle connection, each one's
/// caches cold; the vendored sqlx-core now hands out the connection
/// released last.)
pub fn default_postgres_pool(cores: usize) -> u32 {
    u32::try_from(cores.saturating_mul(8)).map_or(32, |n| n.clamp(8, 32))
}

/// Whether every connection the pool may open is checked out: none idle and
/// none left to open. A pool timeout then means calls queued behind busy
/// connections, not a database that stopped answering.
pub fn pool_exhausted(db: &DatabaseConnection) -> bool {
    fn exhausted<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> bool {
        pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections()
    }
    match db.get_database_backend() {
        DbBackend::Postgres => exhausted(db.get_postgres_connection_pool()),
        DbBackend::Sqlite => exhausted(db.get_sqlite_connection_pool()),
        _ => false,
    }
}

/// Whether a connection of its own, outside the pool, opens and closes:
/// the database answers even when every pooled connection is busy.
pub async fn fresh_connection_answers(db: &DatabaseConnection) -> bool {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let options = db.get_postgres_connection_pool().connect_options();
            match PgConnection::connect_with(&options).await {
                Ok(connection) => connection.close().await.is_ok(),
                Err(_) => false,
            }
        }
        DbBackend::Sqlite => {
            let options = db.get_sqlite_connection_pool().connect_options();
            match sqlx::SqliteConnection::connect_with(&options).await {
                Ok(connection) => connection.close().await.is_ok(),
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// One line for a database error, for the command line: the message of
/// [`connect`] as it is, anything else prefixed with "database: " and without
/// SeaORM's variant names.
pub fn describe(err: &DbErr) -> String {
    match err {
        DbErr::Conn(RuntimeErr::Internal(line)) => line.clone(),
        other => format!("database: {}", cause(other)),
    }
}

/// One line for a repository error, for the command line: a rule refusal
/// as it is, a database failure as [`describe`] words it.
pub fn describe_storage(err: &StorageError) -> String {
    match err {
        StorageError::Rule(rule) => rule.to_string(),
        StorageError::Corrupt(what) => format!("stored data is inconsistent: {what}"),
        StorageError::Unavailable(e)
        | StorageError::CommitOutcomeUnknown(e)
        | StorageError::Full(e)
        | StorageError::Busy(e)
        | StorageError::Overloaded(e)
        | StorageError::Conflict(e)
        | StorageError::Database(e) => describe(e),
    }
}

fn cannot_open(line: String) -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(format!(
        "cannot open the database: {line}"
    )))
}

/// The cause of a SeaORM error without its variant prefix ("Connection
/// Error: ...") or the server's source positions ("at line 948").
fn cause(err: &DbErr) -> String {
    let runtime = match err {
        DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e) => e,
        DbErr::ConnectionAcquire(_) => return "no connection became free in time".into(),
        other => return other.to_string(),
    };
    match runtime {
        RuntimeErr::SqlxError(e) => sqlx_cause(e),
        RuntimeErr::Internal(message) => message.clone(),
    }
}

fn sqlx_cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(e) => e.message().to_owned(),
        sqlx::Error::Io(e) => io_cause(e),
        sqlx::Error::PoolTimedOut => "no connection could be made in time".into(),
        sqlx::Error::Protocol(message) => format!(
            "the server did not answer as PostgreSQL does: {}",
            without_source_position(message)
        ),
        other => without_source_position(&other.to_string()).to_owned(),
    }
}

/// Drops sqlx's "(sqlx_postgres::connection::tls:95)" tail from a message.
fn without_source_position(message: &str) -> &str {
    match message.rfind(" (sqlx_") {
        Some(at) if message.ends_with(')') => &message[..at],
        _ => message,
    }
}

fn io_cause(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::ReadOnlyFilesystem => "read-only file system".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => {
            // Drop the "(os error N)" tail: the words say it already.
            let text = err.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

// --- PostgreSQL ---------------------------------------------------------

/// "PostgreSQL at HOST:PORT, database "DB", user USER" (never the password).
fn postgres_target(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => describe_postgres(&options),
        Err(_) => "PostgreSQL".into(),
    }
}

fn describe_postgres(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!(
        "PostgreSQL at {place}, database \"{}\", user {}",
        options.get_database().unwrap_or(options.get_username()),
        options.get_username()
    )
}

/// Logs in once, directly, so that the reason for a failure is known.
async fn probe_postgres(url: &str) -> Result<(), String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| format!("invalid PostgreSQL URL: {}", sqlx_cause(&e)))?;
    let target = describe_postgres(&options);
    match tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(err)) => Err(format!("{target}: {}", postgres_cause(&err, &options))),
        Err(_) => Err(format!(
            "{target}: no answer within {} s (is the host reachable, and the port right?)",
            POSTGRES_PROBE_TIMEOUT.as_secs()
        )),
    }
}

fn postgres_cause(err: &sqlx::Error, options: &PgConnectOptions) -> String {
    match err {
        sqlx::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused (is PostgreSQL running and listening on that address?)".into()
        }
        sqlx::Error::Io(e) if e.to_string().contains("lookup") => {
            format!("unknown host {}", options.get_host())
        }
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or(Cow::Borrowed(""));
            match code.as_ref() {
                // invalid_password
                "28P01" => format!(
                    "authentication failed: {} (check the user and password in the URL)",
                    e.message()
                ),
                // invalid_authorization_specification: unknown role, pg_hba.conf
                "28000" => format!("authentication failed: {}", e.message()),
                // invalid_catalog_name
                "3D000" => format!(
                    "{} (create it, e.g. `createdb -h {} -p {} -U {} {}`)",
                    e.message(),
                    options.get_host(),
                    options.get_port(),
                    options.get_username(),
                    options.get_database().unwrap_or(options.get_username()),
                ),
                _ => e.message().to_owned(),
            }
        }
        other => sqlx_cause(other),
    }
}

// --- SQLite -------------------------------------------------------------

/// Explains why SQLite could not open `url`'s file: SQLite itself only says
/// "unable to open database file", so look at the file and its directory.
fn sqlite_failure(url: &str, err: &DbErr) -> String {
    let Ok(options) = SqliteConnectOptions::from_str(url) else {
        return format!("SQLite: {}", cause(err));
    };
    let path = options.get_filename();
    let target = format!("SQLite file {}", path.display());
    match sqlite_path_problem(path, sqlite_may_create(url)) {
        Some(problem) => format!("{target}: {problem}"),
        None => format!("{target}: {}", cause(err)),
    }
}

/// Whether the URL lets SQLite create a missing file (`mode=rwc`).
fn sqlite_may_create(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair == "mode=rwc" || pair == "mode=memory")
    })
}

/// What stops the file from being opened for writing, if the file system
/// says so.
fn sqlite_path_problem(path: &Path, may_create: bool) -> Option<String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !path.exists() {
        if !dir.is_dir() {
            return Some(format!("directory {} does not exist", dir.display()));
        }
        if !may_create {
            return Some(
                "the file does not exist (add ?mode=rwc to the URL to create it)".to_owned(),
            );
        }
        // Creating it ourselves shows why SQLite could not.
        return match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(path);
                None
            }
            Err(e) => Some(format!(
                "cannot create it in {}: {}",
                dir.display(),
                io_cause(&e)
            )),
        };
    }
    if path.is_dir() {
        return Some("it is a directory".to_owned());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        return Some(format!("cannot open it for writing: {}", io_cause(&e)));
    }
    None
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    #[test]
    fn the_postgres_pool_follows_the_cores_within_bounds() {
        assert_eq!(default_postgres_pool(1), 8);
        assert_eq!(default_postgres_pool(2), 16);
        assert_eq!(default_postgres_pool(3), 24);
        assert_eq!(default_postgres_pool(4), 32);
        assert_eq!(default_postgres_pool(64), 32);
        assert_eq!(default_postgres_pool(usize::MAX), 32);
    }

    #[tokio::test]
    async fn sqlite_is_built_with_its_query_planner_stability_guarantee() {
        // `.cargo/config.toml` sets it for the bundled SQLite; without it a
        // statement whose plan looked at a bound value is compiled again on
        // every execution.
        let db = connect("sqlite::memory:").await.expect("in-memory SQLite");
        let options = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA compile_options",
            ))
            .await
            .expect("compile options");
        let options: Vec<String> = options
            .iter()
            .map(|row| row.try_get_by_index(0).expect("an option"))
            .collect();
        assert!(
            options.iter().any(|option| option == "ENABLE_QPSG"),
            "{options:?}"
        );
    }

    fn message(result: Result<DatabaseConnection, DbErr>) -> String {
        describe(&result.expect_err("the database should not open"))
    }

    #[tokio::test]
    async fn a_refused_postgres_connection_names_host_port_database_and_cause() {
        // Bind and drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let started = std::time::Instant::now();
        let line =
            message(connect(&format!("postgres://app:secret@127.0.0.1:{port}/orders")).await);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            line,
            format!(
                "cannot open the database: PostgreSQL at 127.0.0.1:{port}, database \"orders\", \
                 user app: connection refused (is PostgreSQL running and listening on that address?)"
            )
        );
        assert!(!line.contains("secret"), "the password never prints");
    }

    #[tokio::test]
    async fn a_bad_postgres_url_says_so() {
        let line = message(connect("postgres://[::1/x").await);
        assert!(
            line.starts_with("cannot open the database: invalid PostgreSQL URL"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_sqlite_file_in_a_missing_directory_names_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("no/such/dir/c.db");
        let line = message(connect(&format!("sqlite://{}?mode=rwc", file.display())).await);
        assert_eq!(
            line,
            format!(
                "cannot open the database: SQLite file {}: directory {} does not exist",
                file.display(),
                dir.path().join("no/such/dir").display()
            )
        );
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_without_create_mode_says_how_to_create_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("c.db");
        let line = message(connect(&format!("sqlite://{}", file.display())).await);
        assert_eq!(
            line,
            format!(
                "cannot open the database: SQLite file {}: the file does not exist \
                 (add ?mode=rwc to the URL to create it)",
                file.display()
            )
        );
    }

    #[tokio::test]
    async fn a_sqlite_path_that_is_a_directory_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let line = message(connect(&format!("sqlite://{}?mode=rwc", dir.path().display())).await);
        assert!(line.ends_with(": it is a directory"), "{line}");
    }

    #[test]
    fn sqlite_problems_name_the_reason_the_file_system_gives() {
        // /proc refuses new files whoever runs the test (root included).
        let problem = sqlite_path_problem(Path::new("/proc/connections-test.db"), true);
        let problem = problem.expect("a problem");
        assert!(
            problem.starts_with("cannot create it in /proc: "),
            "{problem}"
        );
        assert!(!problem.contains("os error"), "{problem}");
    }

    #[test]
    fn other_database_errors_lose_seaorm_prefixes() {
        let err = DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(
            describe(&err),
            "database: no connection could be made in time"
        );
        assert_eq!(
            describe(&DbErr::Migration("m1 failed".into())),
            "database: Migration Error: m1 failed"
        );
    }

    #[test]
    fn sqlx_source_positions_are_not_shown() {
        let err = sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x48 (sqlx_postgres::connection::tls:95)".into(),
        );
        assert_eq!(
            sqlx_cause(&err),
            "the server did not answer as PostgreSQL does: unexpected response from SSLRequest: 0x48"
        );
    }

    #[test]
    fn create_mode_is_read_from_the_url() {
        assert!(sqlite_may_create("sqlite://a.db?mode=rwc"));
        assert!(sqlite_may_create("sqlite://a.db?cache=shared&mode=rwc"));
        assert!(!sqlite_may_create("sqlite://a.db"));
        assert!(!sqlite_may_create("sqlite://a.db?mode=ro"));
    }
}
