//! SQL of the JetStream relay: its leader lease, how far it got
//! (`event_sequence.relayed_through`) and what its lag is. The events it
//! publishes are read with [`Repository::events_after`].

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::{
    Repository,
    entities::event,
    error::{StorageError, StorageResult},
    events::{LeaseCandidate, statement, to_i64, to_u64},
};

/// Session advisory lock key held by the relay leader ("connrly"); not the
/// sequencer's, so the two roles are elected independently.
const RELAY_LOCK_KEY: i64 = 0x0063_6f6e_6e72_6c79;

/// The counter row as the relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayProgress {
    /// Highest position ever stamped.
    pub last_position: u64,
    /// Every position up to this one has been pruned: the earliest event
    /// still in the table is `pruned_through + 1`.
    pub pruned_through: u64,
    /// The last position JetStream acknowledged; None until a relay ran.
    pub relayed_through: Option<u64>,
}

impl Repository {
    /// Head, pruning horizon and relay progress, read together.
    pub async fn relay_progress(&self) -> StorageResult<RelayProgress> {
        let backend = self.connection().get_database_backend();
        let row = self
            .connection()
            .query_one_raw(statement(
                backend,
                "SELECT last_position, pruned_through, relayed_through
                 FROM event_sequence WHERE id = 1",
                vec![],
            ))
            .await?
            .ok_or_else(|| StorageError::Corrupt("event_sequence row is missing".into()))?;
        Ok(RelayProgress {
            last_position: to_u64(row.try_get("", "last_position")?),
            pruned_through: to_u64(row.try_get("", "pruned_through")?),
            relayed_through: row
                .try_get::<Option<i64>>("", "relayed_through")?
                .map(to_u64),
        })
    }

    /// Records that JetStream holds every position up to `position`. Never
    /// moves back (a deposed leader's late write cannot undo a newer one).
    pub async fn set_relayed_through(&self, position: u64) -> StorageResult<()> {
        let backend = self.connection().get_database_backend();
        self.write_one(statement(
            backend,
            "UPDATE event_sequence SET relayed_through = $1
             WHERE id = 1 AND (relayed_through IS NULL OR relayed_through < $1)",
            vec![to_i64(position).into()],
        ))
        .await?;
        Ok(())
    }

    /// When the event at `position` occurred, if it is still in the table:
    /// the age of the oldest unrelayed event gives the relay's lag in time.
    pub async fn event_occurred_at(&self, position: u64) -> StorageResult<Option<DateTime<Utc>>> {
        let at = event::Entity::find()
            .select_only()
            .column(event::Column::OccurredAt)
            .filter(event::Column::Position.eq(to_i64(position)))
            .into_tuple::<DateTime<Utc>>()
            .one(self.connection())
            .await?;
        Ok(at)
    }

    /// The event id at `position`, if it is still in the table (to check that
    /// an existing stream was filled from this database).
    pub async fn event_id_at(&self, position: u64) -> StorageResult<Option<String>> {
        let id = event::Entity::find()
            .select_only()
            .column(event::Column::EventId)
            .filter(event::Column::Position.eq(to_i64(position)))
            .into_tuple::<String>()
            .one(self.connection())
            .await?;
        Ok(id)
    }

    /// A candidate for the database's JetStream relay (PostgreSQL only).
    pub fn relay_candidate(&self) -> LeaseCandidate {
        LeaseCandidate::new(self.clone(), RELAY_LOCK_KEY)
    }
}
