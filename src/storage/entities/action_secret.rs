use sea_orm::entity::prelude::*;

/// A site's action secret (the HMAC key of its signed action links).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "action_secrets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub site_id: i64,
    /// Sealed by `storage::secrets`, bound to the site id.
    pub secret_sealed: Vec<u8>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
