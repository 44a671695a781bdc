//! Connecting to SQLite or PostgreSQL and running migrations.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

use super::{health::PoolSettings, migrations::Migrator};

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://connections.db?mode=rwc";

/// Connects with the default pool settings (the command line's tools).
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, &PoolSettings::default()).await
}

/// Connects with settings that suit each backend: SQLite in WAL mode with a
/// busy timeout (concurrent writers wait instead of failing) and foreign keys.
pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.acquire_timeout);
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer; SeaORM defaults SQLite to
        // a single connection, which would make readers queue behind writes.
        options.max_connections(8).min_connections(1);
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
        options.max_connections(32).min_connections(1);
    }
    Database::connect(options).await
}

/// Applies pending migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

pub fn is_postgres(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}
