//! Application keys for the REST door (SPEC section 11): a public `user_key`
//! and a secret sealed with the server's secret key (AES-256-GCM, the same
//! key as provider sessions), scoped to sites and permissions like a token.
//! And the nonces of signed requests, shared by every replica: the unique
//! key refuses a replay whichever replica saw the nonce first.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AppKeys {
    Table,
    Id,
    UserKey,
    Caller,
    SecretSealed,
    Sites,
    Permissions,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum RequestNonces {
    Table,
    UserKey,
    Nonce,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AppKeys::Table)
                    .col(big_pk_auto(AppKeys::Id))
                    .col(string_uniq(AppKeys::UserKey))
                    .col(string(AppKeys::Caller))
                    .col(blob(AppKeys::SecretSealed))
                    .col(text(AppKeys::Sites))
                    .col(text(AppKeys::Permissions))
                    .col(timestamp_with_time_zone(AppKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(AppKeys::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RequestNonces::Table)
                    .col(string(RequestNonces::UserKey))
                    .col(string(RequestNonces::Nonce))
                    .col(timestamp_with_time_zone(RequestNonces::ExpiresAt))
                    .primary_key(
                        Index::create()
                            .col(RequestNonces::UserKey)
                            .col(RequestNonces::Nonce),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_request_nonces_expires_at")
                    .table(RequestNonces::Table)
                    .col(RequestNonces::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RequestNonces::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AppKeys::Table).to_owned())
            .await
    }
}
