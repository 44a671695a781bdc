//! Pins the server-side functions to their indexes. plpgsql caches each
//! statement's plan for the life of the session, and the sessions live long:
//! the sequencer's as long as its leadership, the pool's as long as the
//! server. A plan made while the tables were known to be empty or small (a
//! fresh database) is a sequential scan, and it stays one until statistics
//! change again, which with autovacuum off is never: every stamp, even the
//! idle check, then reads the whole event history, and every locked write
//! the whole accounts table. With sequential scans priced out inside the
//! functions, their statements use the partial index of unstamped rows and
//! the keys, whatever the statistics say (measured at 32 writers on a
//! database analyzed before its first event: the stamp's scan was 3% of the
//! machine's CPU after six seconds, and growing).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const FUNCTIONS: [&str; 2] = [
    "connections_stamp_events(bigint, text)",
    "connections_lock_and_load(text, bigint, text, text, text, text, text)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for function in FUNCTIONS {
            let sql = format!("ALTER FUNCTION {function} SET enable_seqscan = off");
            super::on_postgres(manager, &sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for function in FUNCTIONS {
            let sql = format!("ALTER FUNCTION {function} RESET enable_seqscan");
            super::on_postgres(manager, &sql).await?;
        }
        Ok(())
    }
}
