//! Writing the outbox: one row per `ConnectionRemoved`, inside the caller's
//! transaction.
//!
//! On PostgreSQL the rows get no position (the sequencer stamps positions
//! after commit, in commit order, without a global lock), and the append
//! queues a `NOTIFY connections_outbox`, which the database delivers only if
//! and when the transaction commits.
//!
//! On SQLite there is one writer at a time, so commit order is the order in
//! which writers take the write lock: the rows get their positions here, in
//! the writing transaction (one `UPDATE ... RETURNING` of the head), which
//! saves a stamping transaction per write and commits nothing undelivered.

use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait};

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
    let first_position = match conn.get_database_backend() {
        DbBackend::Sqlite => Some(claim_positions(conn, events.len()).await?),
        _ => None,
    };
    let rows = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(event::ActiveModel {
                position: Set(first_position.map(|first| first + i as i64)),
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

/// Moves the head by `count` and returns the first of the claimed
/// positions. Only for SQLite, inside a write transaction: the write lock
/// orders the claims as the commits.
async fn claim_positions<C: ConnectionTrait>(conn: &C, count: usize) -> StorageResult<i64> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let row = conn
        .query_one_raw(super::events::statement(
            DbBackend::Sqlite,
            "UPDATE event_sequence SET last_position = last_position + $1 WHERE id = 1 \
             RETURNING last_position",
            vec![count.into()],
        ))
        .await?
        .ok_or_else(|| StorageError::Corrupt("event_sequence row is missing".into()))?;
    let head: i64 = row.try_get("", "last_position")?;
    Ok(head - count + 1)
}

/// Decodes a stored event's payload.
pub fn decode(row: &event::Model) -> StorageResult<ConnectionRemoved> {
    serde_json::from_str(&row.payload)
        .map_err(|err| StorageError::Corrupt(format!("event {}: {err}", row.id)))
}
