use sea_orm::entity::prelude::*;

/// An application key of the REST door: public `user_key`, sealed secret.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "app_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub user_key: String,
    pub caller: String,
    /// The secret, sealed by `storage::secrets` with the user key as
    /// associated data; never leaves the key store unsealed except to verify.
    pub secret_sealed: Vec<u8>,
    /// `*` or comma-separated api_keys.
    pub sites: String,
    /// Comma-separated permission names.
    pub permissions: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
