//! Schema migrations, run at start-up and by `connections migrate`.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tables;
mod m20261122_000002_create_api_tokens;
mod m20261127_000003_relay_progress;
mod m20261127_000010_consumer_owner;
mod m20261127_000011_token_expiry;
mod m20261127_000020_app_keys;
mod m20261128_000030_browser_sdk;
mod m20261128_000031_action_secrets;
mod m20261128_000040_stamp_function;
mod m20261128_000050_lock_and_load_function;
mod m20261128_000060_drop_events_occurred_at_index;
mod m20261129_000070_functions_by_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tables::Migration),
            Box::new(m20261122_000002_create_api_tokens::Migration),
            Box::new(m20261127_000003_relay_progress::Migration),
            Box::new(m20261127_000010_consumer_owner::Migration),
            Box::new(m20261127_000011_token_expiry::Migration),
            Box::new(m20261127_000020_app_keys::Migration),
            Box::new(m20261128_000030_browser_sdk::Migration),
            Box::new(m20261128_000031_action_secrets::Migration),
            Box::new(m20261128_000040_stamp_function::Migration),
            Box::new(m20261128_000050_lock_and_load_function::Migration),
            Box::new(m20261128_000060_drop_events_occurred_at_index::Migration),
            Box::new(m20261129_000070_functions_by_index::Migration),
        ]
    }
}

/// Runs `sql` on PostgreSQL only: for the server-side functions that spare
/// PostgreSQL round trips (SQLite runs in-process and has no such trips).
async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}
