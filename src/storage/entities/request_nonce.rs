use sea_orm::entity::prelude::*;

/// A nonce of a signed request, kept until its timestamp leaves the window.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "request_nonces")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_key: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub nonce: String,
    pub expires_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
