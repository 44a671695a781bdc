use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "login_ids")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Denormalised so that a login ID is unique per site in the schema.
    pub site_id: i64,
    pub account_id: i64,
    pub login_id: String,
    pub has_password: bool,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "account_id", to = "id")]
    pub account: HasOne<super::account::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
