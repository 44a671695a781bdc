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

use sea_orm::{ConnectionTrait, DbBackend};

use super::{
    error::{StorageError, StorageResult},
    sql::{Sql, WriteSteps},
};
use crate::domain::ConnectionRemoved;

/// Appends events in the caller's transaction, in one round trip. After
/// that transaction commits, call `Repository::outbox_committed` so the
/// sequencer wakes at once.
#[tracing::instrument(skip_all, name = "db.outbox_append", fields(events = events.len()))]
pub async fn append<C: ConnectionTrait>(
    conn: &C,
    events: &[ConnectionRemoved],
) -> StorageResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut steps = WriteSteps::new(conn.get_database_backend());
    push_append(&mut steps, events, "1")?;
    conn.execute_raw(steps.into_statement()).await?;
    Ok(())
}

/// Appends `events` as the next writes of `steps`. On PostgreSQL the
/// `NOTIFY` answers one row, `notified` (in the columns of the other
/// writes' answers).
pub(crate) fn push_append(
    steps: &mut WriteSteps,
    events: &[ConnectionRemoved],
    notified: &str,
) -> StorageResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    if !steps.postgres() {
        push_claim(steps.open("claimed"), events.len());
        steps.close("claimed", None);
    }
    push_insert(steps.open("appended"), events)?;
    steps.close("appended", None);
    if steps.postgres() {
        steps.also_select(notified, NOTIFY);
    }
    Ok(())
}

/// PostgreSQL: wakes the sequencer of every replica, and only if and when
/// the transaction commits.
const NOTIFY: &str = "pg_notify('connections_outbox', '')";

/// SQLite: moves the head by `count`, claiming the positions that
/// [`push_insert`] (next in the same string) gives its rows. One writer at a
/// time: the write lock orders these claims as the commits, so positions are
/// dense and follow commit order.
pub(crate) fn push_claim(sql: &mut Sql, count: usize) {
    sql.push("UPDATE event_sequence SET last_position = last_position + ")
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .push(" WHERE id = 1");
}

/// `INSERT INTO events ...` for `events`: on SQLite at the positions
/// [`push_claim`] claimed just before, on PostgreSQL unsequenced (the
/// sequencer stamps them after commit, in commit order).
pub(crate) fn push_insert(sql: &mut Sql, events: &[ConnectionRemoved]) -> StorageResult<()> {
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    sql.push(
        "INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, \
         payload) VALUES ",
    );
    for (i, e) in (0_i64..).zip(events) {
        let payload =
            serde_json::to_string(e).map_err(|err| StorageError::Corrupt(err.to_string()))?;
        sql.push(if i == 0 { "(" } else { ", (" });
        match sql.backend() {
            DbBackend::Sqlite => sql
                .push("(SELECT last_position FROM event_sequence WHERE id = 1) - ")
                .bind(count - 1 - i),
            _ => sql.push("NULL"),
        };
        sql.push(", ")
            .bind(e.event_id.clone())
            .push(", ")
            .bind(e.occurred_at)
            .push(", ")
            .bind(e.api_key.clone())
            .push(", ")
            .bind(e.provider.clone())
            .push(", ")
            .bind(e.source.as_str())
            .push(", ")
            .bind(payload)
            .push(")");
    }
    Ok(())
}

/// Decodes the payload of the event at `position`.
pub(crate) fn decode_payload(position: u64, payload: &str) -> StorageResult<ConnectionRemoved> {
    serde_json::from_str(payload)
        .map_err(|err| StorageError::Corrupt(format!("event at position {position}: {err}")))
}
