//! Drops `idx_events_occurred_at`: no query reads events by time (retention
//! walks them in position order and checks each one's time), and every
//! outbox row paid for it twice on PostgreSQL, at its insert and again at
//! the sequencer's stamp (an UPDATE of an indexed column writes a new entry
//! in every index).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    OccurredAt,
}

const INDEX: &str = "idx_events_occurred_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(Events::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Events::Table)
                    .col(Events::OccurredAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
