use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "identities")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Denormalised so that a provider identity is unique per site in the schema.
    pub site_id: i64,
    pub account_id: i64,
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub login_id: Option<String>,
    /// `ACTIVE` or `SOFT_REMOVED`.
    pub state: String,
    /// Provider session data, sealed by `storage::secrets`; never leaves the repository.
    pub session: Option<Vec<u8>>,
    pub linked_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "account_id", to = "id")]
    pub account: HasOne<super::account::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
