use sea_orm::entity::prelude::*;

/// The outbox. Rows are written with no position in the removal's
/// transaction; the sequencer stamps positions after they commit.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// Insertion order only; never used as a cursor (ids commit out of order).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Dense, in commit order; NULL until sequenced.
    #[sea_orm(unique)]
    pub position: Option<i64>,
    #[sea_orm(unique)]
    pub event_id: String,
    pub occurred_at: DateTimeUtc,
    pub api_key: String,
    pub provider: String,
    /// `REMOVE_CONNECTION` or `UNLINK_ACCOUNT`.
    pub source: String,
    /// The whole event as JSON (`events::EventRecord`), without its position.
    pub payload: String,
}

impl ActiveModelBehavior for ActiveModel {}
