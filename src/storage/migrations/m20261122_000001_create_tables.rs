//! The base schema. Constraints live here, not only in code: unique
//! (site, uid), unique (site, provider, sub_provider, provider_uid), unique
//! (site, login_id), unique api_key and vhost, foreign keys.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sites {
    Table,
    Id,
    ApiKey,
    Vhost,
    Name,
    UnlinkActionEnabled,
    AllowedRedirectOrigins,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    SiteId,
    Uid,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum LoginIds {
    Table,
    Id,
    SiteId,
    AccountId,
    LoginId,
    HasPassword,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Identities {
    Table,
    Id,
    SiteId,
    AccountId,
    Provider,
    SubProvider,
    ProviderUid,
    LoginId,
    State,
    Session,
    LinkedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    Position,
    EventId,
    OccurredAt,
    ApiKey,
    Provider,
    Source,
    Payload,
}

#[derive(DeriveIden)]
enum EventSequence {
    Table,
    Id,
    LastPosition,
    PrunedThrough,
}

#[derive(DeriveIden)]
enum Consumers {
    Table,
    Name,
    Position,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ContextIds {
    Table,
    SiteId,
    Cid,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Scope,
    RequestId,
    Fingerprint,
    Response,
    CreatedAt,
}

fn fk(
    from_table: impl IntoIden,
    from_col: impl IntoIden,
    to_table: impl IntoIden,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from_table, from_col)
        .to(to_table, Alias::new("id"))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sites::Table)
                    .col(big_pk_auto(Sites::Id))
                    .col(string_uniq(Sites::ApiKey))
                    .col(big_integer_uniq(Sites::Vhost))
                    .col(string(Sites::Name))
                    .col(boolean(Sites::UnlinkActionEnabled).default(false))
                    .col(text(Sites::AllowedRedirectOrigins))
                    .col(timestamp_with_time_zone(Sites::CreatedAt))
                    .col(timestamp_with_time_zone(Sites::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(big_pk_auto(Accounts::Id))
                    .col(big_integer(Accounts::SiteId))
                    .col(string(Accounts::Uid))
                    .col(timestamp_with_time_zone(Accounts::CreatedAt))
                    .col(timestamp_with_time_zone(Accounts::UpdatedAt))
                    .foreign_key(&mut fk(Accounts::Table, Accounts::SiteId, Sites::Table))
                    .index(
                        Index::create()
                            .unique()
                            .col(Accounts::SiteId)
                            .col(Accounts::Uid),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginIds::Table)
                    .col(big_pk_auto(LoginIds::Id))
                    .col(big_integer(LoginIds::SiteId))
                    .col(big_integer(LoginIds::AccountId))
                    .col(string(LoginIds::LoginId))
                    .col(boolean(LoginIds::HasPassword))
                    .col(timestamp_with_time_zone(LoginIds::CreatedAt))
                    .foreign_key(&mut fk(LoginIds::Table, LoginIds::SiteId, Sites::Table))
                    .foreign_key(&mut fk(
                        LoginIds::Table,
                        LoginIds::AccountId,
                        Accounts::Table,
                    ))
                    .index(
                        Index::create()
                            .unique()
                            .col(LoginIds::SiteId)
                            .col(LoginIds::LoginId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_login_ids_account")
                    .table(LoginIds::Table)
                    .col(LoginIds::AccountId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Identities::Table)
                    .col(big_pk_auto(Identities::Id))
                    .col(big_integer(Identities::SiteId))
                    .col(big_integer(Identities::AccountId))
                    .col(string(Identities::Provider))
                    .col(string(Identities::SubProvider))
                    .col(string(Identities::ProviderUid))
                    .col(string_null(Identities::LoginId))
                    .col(string(Identities::State))
                    .col(blob_null(Identities::Session))
                    .col(timestamp_with_time_zone(Identities::LinkedAt))
                    .col(timestamp_with_time_zone(Identities::UpdatedAt))
                    .foreign_key(&mut fk(Identities::Table, Identities::SiteId, Sites::Table))
                    .foreign_key(&mut fk(
                        Identities::Table,
                        Identities::AccountId,
                        Accounts::Table,
                    ))
                    .index(
                        Index::create()
                            .unique()
                            .col(Identities::SiteId)
                            .col(Identities::Provider)
                            .col(Identities::SubProvider)
                            .col(Identities::ProviderUid),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_identities_account")
                    .table(Identities::Table)
                    .col(Identities::AccountId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Id))
                    .col(big_integer_null(Events::Position).unique_key())
                    .col(string_uniq(Events::EventId))
                    .col(timestamp_with_time_zone(Events::OccurredAt))
                    .col(string(Events::ApiKey))
                    .col(string(Events::Provider))
                    .col(string(Events::Source))
                    .col(text(Events::Payload))
                    .to_owned(),
            )
            .await?;
        // The sequencer looks for unsequenced rows; retention for old ones.
        manager
            .create_index(
                Index::create()
                    .name("idx_events_occurred_at")
                    .table(Events::Table)
                    .col(Events::OccurredAt)
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_events_unsequenced ON events (id) WHERE position IS NULL",
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventSequence::Table)
                    .col(integer(EventSequence::Id).primary_key())
                    .col(big_integer(EventSequence::LastPosition))
                    .col(big_integer(EventSequence::PrunedThrough))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(EventSequence::Table)
                    .columns([
                        EventSequence::Id,
                        EventSequence::LastPosition,
                        EventSequence::PrunedThrough,
                    ])
                    .values_panic([1.into(), 0i64.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Consumers::Table)
                    .col(string(Consumers::Name).primary_key())
                    .col(big_integer(Consumers::Position))
                    .col(timestamp_with_time_zone(Consumers::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ContextIds::Table)
                    .col(big_integer(ContextIds::SiteId))
                    .col(string(ContextIds::Cid))
                    .col(timestamp_with_time_zone(ContextIds::CreatedAt))
                    .primary_key(Index::create().col(ContextIds::SiteId).col(ContextIds::Cid))
                    .foreign_key(&mut fk(ContextIds::Table, ContextIds::SiteId, Sites::Table))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(string(IdempotencyKeys::Scope))
                    .col(string(IdempotencyKeys::RequestId))
                    .col(string(IdempotencyKeys::Fingerprint))
                    .col(text(IdempotencyKeys::Response))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::Scope)
                            .col(IdempotencyKeys::RequestId),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "idempotency_keys",
            "context_ids",
            "consumers",
            "event_sequence",
            "events",
            "identities",
            "login_ids",
            "accounts",
            "sites",
        ] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}
