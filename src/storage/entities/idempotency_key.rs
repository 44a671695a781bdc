use sea_orm::entity::prelude::*;

/// First responses of requests that carried a `request_id`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// RPC and site, e.g. `RemoveConnection/<api_key>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// SHA-256 of the request, to tell a retry from a reuse.
    pub fingerprint: String,
    /// The first response, as JSON.
    pub response: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
