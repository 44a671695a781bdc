//! Writing the outbox: one row per `ConnectionRemoved`, inside the caller's
//! transaction.
//!
//! On PostgreSQL the rows get no position (the sequencer stamps positions
//! after commit, in commit order, without a global lock). The writing
//! transaction does not `NOTIFY`: PostgreSQL serialises the commits of
//! notifying transactions, their WAL flush included, under one database-wide
//! lock, which halved pgbench's reference removal at 32 clients. The
//! sequencer hears of a commit instead from [`OutboxWake`]: in-process when
//! it runs in the writing replica, else by a `NOTIFY` sent after the commit.
//!
//! On SQLite there is one writer at a time, so commit order is the order in
//! which writers take the write lock: the rows get their positions here, in
//! the writing transaction (one `UPDATE ... RETURNING` of the head), which
//! saves a stamping transaction per write and commits nothing undelivered.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU8, Ordering},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use tokio::sync::Notify;

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
    push_append(&mut steps, events, "")?;
    conn.execute_raw(steps.into_statement()).await?;
    Ok(())
}

/// Appends `events` as the next writes of `steps`.
pub(crate) fn push_append(
    steps: &mut WriteSteps,
    events: &[ConnectionRemoved],
    only_if: &str,
) -> StorageResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    if !steps.postgres() {
        push_claim(steps.open("claimed"), events.len());
        steps.close("claimed", None);
    }
    push_insert(steps.open("appended"), events, only_if)?;
    steps.close("appended", None);
    Ok(())
}

/// Wakes the sequencer after a commit that appended outbox rows: this
/// replica's own at once, in-process; on PostgreSQL, while this replica's
/// sequencer does not lead, the leading replica's by a `NOTIFY` on
/// `connections_outbox`, sent after the commit in a statement of its own
/// (no transaction id, so no WAL flush under the notify lock). A commit
/// whose wake-up is lost (a crash right after it) is stamped by the
/// leader's poll.
#[derive(Debug)]
pub(crate) struct OutboxWake {
    local: Arc<Notify>,
    /// PostgreSQL only: the pool the `NOTIFY` is sent on.
    remote: Option<Remote>,
}

#[derive(Debug)]
struct Remote {
    db: DatabaseConnection,
    /// Set while this replica's sequencer leads: its in-process wake-up is
    /// enough.
    leading: AtomicBool,
    /// `IDLE`, `SENDING`, or `AGAIN` (a commit came while sending).
    state: Arc<AtomicU8>,
}

const IDLE: u8 = 0;
const SENDING: u8 = 1;
const AGAIN: u8 = 2;
const NOTIFY_OUTBOX: &str = "SELECT pg_notify('connections_outbox', '')";

impl OutboxWake {
    pub(crate) fn new(db: &DatabaseConnection) -> Self {
        let remote = (db.get_database_backend() == DbBackend::Postgres).then(|| Remote {
            db: db.clone(),
            leading: AtomicBool::new(false),
            state: Arc::new(AtomicU8::new(IDLE)),
        });
        Self {
            local: Arc::new(Notify::new()),
            remote,
        }
    }

    pub(crate) fn local(&self) -> Arc<Notify> {
        self.local.clone()
    }

    pub(crate) fn set_leading(&self, leading: bool) {
        if let Some(remote) = &self.remote {
            remote.leading.store(leading, Ordering::Release);
        }
    }

    pub(crate) fn committed(&self) {
        self.local.notify_one();
        let Some(remote) = &self.remote else {
            return;
        };
        if remote.leading.load(Ordering::Acquire) {
            return;
        }
        // One sender at a time; commits during a send get one more send
        // after it, so every commit is followed by a NOTIFY.
        let previous = remote
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(if s == IDLE { SENDING } else { AGAIN })
            })
            .unwrap_or(AGAIN);
        if previous != IDLE {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remote.state.store(IDLE, Ordering::Release);
            return;
        };
        let (db, state) = (remote.db.clone(), remote.state.clone());
        runtime.spawn(async move {
            loop {
                if let Err(err) = db.execute_unprepared(NOTIFY_OUTBOX).await {
                    // The leader's poll stamps what this wake-up missed.
                    tracing::debug!(error = %err, "cannot notify the sequencer");
                }
                if state
                    .compare_exchange(SENDING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                state.store(SENDING, Ordering::Release);
            }
        });
    }
}

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
/// sequencer stamps them after commit, in commit order). `only_if`
/// (PostgreSQL): a condition (`" AND ..."`, or nothing) the rows are
/// inserted under.
pub(crate) fn push_insert(
    sql: &mut Sql,
    events: &[ConnectionRemoved],
    only_if: &str,
) -> StorageResult<()> {
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    sql.push(
        "INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, \
         payload) ",
    );
    // VALUES as a sub-select, to filter: the position's type is then its own.
    let null_position = if !only_if.is_empty() {
        sql.push("SELECT * FROM (VALUES ");
        "NULL::bigint"
    } else {
        sql.push("VALUES ");
        "NULL"
    };
    for (i, e) in (0_i64..).zip(events) {
        let payload =
            serde_json::to_string(e).map_err(|err| StorageError::Corrupt(err.to_string()))?;
        sql.push(if i == 0 { "(" } else { ", (" });
        match sql.backend() {
            DbBackend::Sqlite => sql
                .push("(SELECT last_position FROM event_sequence WHERE id = 1) - ")
                .bind(count - 1 - i),
            _ => sql.push(null_position),
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
    if !only_if.is_empty() {
        sql.push(") AS new_rows WHERE TRUE").push(only_if);
    }
    Ok(())
}

/// Decodes the payload of the event at `position`.
pub(crate) fn decode_payload(position: u64, payload: &str) -> StorageResult<ConnectionRemoved> {
    serde_json::from_str(payload)
        .map_err(|err| StorageError::Corrupt(format!("event at position {position}: {err}")))
}
