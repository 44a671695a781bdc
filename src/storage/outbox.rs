//! Writing the outbox: one row per `ConnectionRemoved`, inside the caller's
//! transaction, with no position (the sequencer stamps positions after commit).
//! On PostgreSQL the append also queues a `NOTIFY connections_outbox`, which
//! the database delivers only if and when the transaction commits.

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};

use super::{
    entities::event,
    error::{StorageError, StorageResult},
};
use crate::domain::ConnectionRemoved;

/// Appends events in the caller's transaction. After that transaction
/// commits, call `Repository::outbox_committed` so the sequencer wakes at once.
#[tracing::instrument(skip_all, name = "db.outbox_append", fields(events = events.len()))]
pub async fn append<C: ConnectionTrait>(
    conn: &C,
    events: &[ConnectionRemoved],
) -> StorageResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = events
        .iter()
        .map(|e| {
            Ok(event::ActiveModel {
                position: Set(None),
                event_id: Set(e.event_id.clone()),
                occurred_at: Set(e.occurred_at),
                api_key: Set(e.api_key.clone()),
                provider: Set(e.provider.clone()),
                source: Set(e.source.as_str().to_owned()),
                payload: Set(serde_json::to_string(e)
                    .map_err(|err| StorageError::Corrupt(err.to_string()))?),
                ..Default::default()
            })
        })
        .collect::<StorageResult<Vec<_>>>()?;
    event::Entity::insert_many(rows).exec(conn).await?;
    // Wakes the sequencer of every replica when the transaction commits.
    super::events::notify_outbox(conn).await?;
    Ok(())
}

/// Decodes a stored event's payload.
pub fn decode(row: &event::Model) -> StorageResult<ConnectionRemoved> {
    serde_json::from_str(&row.payload)
        .map_err(|err| StorageError::Corrupt(format!("event {}: {err}", row.id)))
}
