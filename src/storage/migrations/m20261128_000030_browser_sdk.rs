//! The browser SDK: a site's `allowed_browser_origins` (JSON array, like
//! `allowed_redirect_origins`; `[]` for sites from before) and the uid a
//! user token is bound to (`api_tokens.uid`, NULL for ordinary tokens).
//! SQLite alters one column per statement, hence two.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sites {
    Table,
    AllowedBrowserOrigins,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Uid,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sites::Table)
                    .add_column(text(Sites::AllowedBrowserOrigins).default("[]"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .add_column(text_null(ApiTokens::Uid))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .drop_column(ApiTokens::Uid)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sites::Table)
                    .drop_column(Sites::AllowedBrowserOrigins)
                    .to_owned(),
            )
            .await
    }
}
