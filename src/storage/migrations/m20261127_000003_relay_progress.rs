//! How far the JetStream relay got: `event_sequence.relayed_through`, the
//! last position the relay has seen acknowledged by JetStream. NULL until a
//! relay first publishes; retention (when the relay is on) never prunes past
//! it, so an event is never deleted before it reached the broker.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventSequence {
    Table,
    RelayedThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EventSequence::Table)
                    .add_column(big_integer_null(EventSequence::RelayedThrough))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EventSequence::Table)
                    .drop_column(EventSequence::RelayedThrough)
                    .to_owned(),
            )
            .await
    }
}
