use sea_orm::entity::prelude::*;

/// One row (id 1): the sequencer's counter, so positions are never reused,
/// even after every event has been pruned.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "event_sequence")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub last_position: i64,
    /// Every position up to this one has been pruned.
    pub pruned_through: i64,
    /// The last position the JetStream relay published (NULL: never).
    pub relayed_through: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}
