use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub site_id: i64,
    pub uid: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "site_id", to = "id")]
    pub site: HasOne<super::site::Entity>,
    #[sea_orm(has_many)]
    pub login_ids: HasMany<super::login_id::Entity>,
    #[sea_orm(has_many)]
    pub identities: HasMany<super::identity::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
