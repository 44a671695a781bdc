//! Consumer checkpoints belong to the caller that created them, so that a
//! caller of another tenant cannot move them. Rows from before this
//! migration have no owner (`''`) and are claimed by the next committer.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Consumers {
    Table,
    Owner,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Consumers::Table)
                    .add_column(string(Consumers::Owner).default(""))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Consumers::Table)
                    .drop_column(Consumers::Owner)
                    .to_owned(),
            )
            .await
    }
}
