//! Each site's action secret: the HMAC key of its signed unlink action
//! links (SPEC section 12), sealed with the server's secret key like
//! application keys' secrets. One row per site; rotation replaces it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ActionSecrets {
    Table,
    SiteId,
    SecretSealed,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sites {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ActionSecrets::Table)
                    .col(big_integer(ActionSecrets::SiteId).primary_key())
                    .col(blob(ActionSecrets::SecretSealed))
                    .col(timestamp_with_time_zone(ActionSecrets::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_action_secrets_site")
                            .from(ActionSecrets::Table, ActionSecrets::SiteId)
                            .to(Sites::Table, Sites::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ActionSecrets::Table).to_owned())
            .await
    }
}
