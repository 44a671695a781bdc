use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sites")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub api_key: String,
    #[sea_orm(unique)]
    pub vhost: i64,
    pub name: String,
    pub unlink_action_enabled: bool,
    /// JSON array of origins.
    pub allowed_redirect_origins: String,
    /// JSON array of origins allowed to call from a browser (CORS).
    pub allowed_browser_origins: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub accounts: HasMany<super::account::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
