use sea_orm::entity::prelude::*;

/// A caller's API token, stored as its SHA-256 only.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_tokens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub caller: String,
    /// Hex SHA-256 of the token; the token itself is never stored.
    #[sea_orm(unique)]
    pub token_hash: String,
    /// `*` or comma-separated api_keys.
    pub sites: String,
    /// Comma-separated permission names.
    pub permissions: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    /// After this instant the token is refused; NULL: never expires.
    pub expires_at: Option<DateTimeUtc>,
    /// A user token's uid (its one site is `sites`); NULL for other tokens.
    pub uid: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
