//! SQL of the event machinery: stamping positions, reading sequenced events,
//! consumer checkpoints, pruning, the sequencer's leader lease and the
//! PostgreSQL notification channels.
//!
//! Positions are stamped by one sequencer at a time in its own short
//! transaction, serialised by the `event_sequence` row lock (PostgreSQL) or
//! SQLite's single writer, so the positions visible in the table always form
//! a gap-free prefix: a reader of `position > cursor` can never skip one.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, Value,
    sqlx::{Connection as _, PgConnection, Row as _, postgres::PgListener},
};

use super::{
    Repository,
    entities::event,
    error::{StorageError, StorageResult},
    outbox,
    sql::ReadRow,
};
use crate::domain::{DomainError, EventFilter, SequencedEvent};

/// PostgreSQL channel writers notify after appending outbox rows.
pub const OUTBOX_CHANNEL: &str = "connections_outbox";
/// PostgreSQL channel the sequencer notifies (payload: the new head).
pub const EVENTS_CHANNEL: &str = "connections_events";
/// Session advisory lock key held by the sequencer leader ("connseq").
const SEQUENCER_LOCK_KEY: i64 = 0x0063_6f6e_6e73_6571;

/// The counter row: head and pruning horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequenceState {
    /// Highest position ever stamped (survives pruning).
    pub last_position: u64,
    /// Every position up to this one has been pruned.
    pub pruned_through: u64,
}

/// Writes `$n` placeholders as the backend wants them.
pub(super) fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

pub(super) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

async fn read_sequence<C: ConnectionTrait>(conn: &C) -> StorageResult<SequenceState> {
    let backend = conn.get_database_backend();
    let sql = "SELECT last_position, pruned_through FROM event_sequence WHERE id = 1";
    let row = conn
        .query_one_raw(statement(backend, sql, vec![]))
        .await?
        .ok_or_else(|| StorageError::Corrupt("event_sequence row is missing".into()))?;
    Ok(SequenceState {
        last_position: to_u64(row.try_get("", "last_position")?),
        pruned_through: to_u64(row.try_get("", "pruned_through")?),
    })
}

/// Keeps the longest prefix (in position order) of `(position, occurred_at)`
/// whose events are all older than `cutoff`; returns its last position.
/// Pruning a prefix keeps "everything up to `pruned_through` is gone" true
/// even though `occurred_at` is not monotonic in position.
pub fn prunable_prefix(rows: &[(u64, DateTime<Utc>)], cutoff: DateTime<Utc>) -> Option<u64> {
    rows.iter()
        .take_while(|(_, at)| *at < cutoff)
        .last()
        .map(|(p, _)| *p)
}

impl Repository {
    /// Head and pruning horizon.
    pub async fn sequence_state(&self) -> StorageResult<SequenceState> {
        read_sequence(self.connection()).await
    }

    /// Outbox rows committed but not yet given a position (partial index).
    pub async fn count_unsequenced_events(&self) -> StorageResult<u64> {
        let count = event::Entity::find()
            .filter(event::Column::Position.is_null())
            .count(self.connection())
            .await?;
        Ok(count)
    }

    /// SQLite: stamps up to `batch` committed, unstamped events (left by an
    /// older version; writers stamp their own) in id order with the next
    /// positions, in a write transaction. Returns the new head when it
    /// stamped anything. On PostgreSQL only the sequencer's leader stamps,
    /// with [`LeaderLease::stamp_events`].
    pub async fn stamp_pending_events(&self, batch: u64) -> StorageResult<Option<u64>> {
        // A cheap read first (partial index), so that an idle poll takes no
        // write lock.
        let pending = event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .filter(event::Column::Position.is_null())
            .limit(1)
            .into_tuple::<i64>()
            .one(self.connection())
            .await?;
        if pending.is_none() {
            return Ok(None);
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        let state = read_sequence(&*txn).await?;
        let stamped = txn
            .execute_raw(statement(
                backend,
                "WITH pending AS (
                     SELECT id, row_number() OVER (ORDER BY id) AS rn
                     FROM events WHERE position IS NULL ORDER BY id LIMIT $1)
                 UPDATE events SET position = $2 + pending.rn
                 FROM pending WHERE events.id = pending.id",
                vec![to_i64(batch).into(), to_i64(state.last_position).into()],
            ))
            .await?
            .rows_affected();
        if stamped == 0 {
            return Ok(None);
        }
        let head = state.last_position + stamped;
        txn.execute_raw(statement(
            backend,
            "UPDATE event_sequence SET last_position = $1 WHERE id = 1",
            vec![to_i64(head).into()],
        ))
        .await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok(Some(head))
    }

    /// Up to `limit` sequenced events with `position > after` that match
    /// `filter`, in position order.
    pub async fn events_after(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: u64,
    ) -> StorageResult<Vec<SequencedEvent>> {
        let mut query = event::Entity::find().filter(event::Column::Position.gt(to_i64(after)));
        if let Some(keys) = &filter.api_keys {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            query = query.filter(event::Column::ApiKey.is_in(keys.iter().cloned()));
        }
        if let Some(providers) = &filter.providers {
            query = query.filter(event::Column::Provider.is_in(providers.iter().cloned()));
        }
        if let Some(sources) = &filter.sources {
            query = query.filter(event::Column::Source.is_in(sources.iter().map(|s| s.as_str())));
        }
        // The payload is the whole event: the other columns only serve the
        // filter, and decoding them per row cost replay a third of its time.
        let query = query
            .select_only()
            .column(event::Column::Position)
            .column(event::Column::Payload)
            .order_by_asc(event::Column::Position)
            .limit(limit);
        if let Some(reads) = self.direct_reads() {
            let statement = query.build(DbBackend::Sqlite);
            let page = reads.read(move |conn| {
                conn.query_statement(&statement)?
                    .iter()
                    .map(|row| sequenced(row.read("position")?, &row.read::<String>("payload")?))
                    .collect()
            });
            if let Some(page) = page.await {
                return page;
            }
        }
        let rows: Vec<(i64, String)> = query.into_tuple().all(self.connection()).await?;
        rows.into_iter()
            .map(|(position, payload)| sequenced(position, &payload))
            .collect()
    }

    /// A consumer's checkpoint (owner, committed position), if it has one.
    pub async fn consumer_checkpoint(&self, name: &str) -> StorageResult<Option<(String, u64)>> {
        let backend = self.connection().get_database_backend();
        let row = self
            .connection()
            .query_one_raw(statement(
                backend,
                "SELECT owner, position FROM consumers WHERE name = $1",
                vec![name.into()],
            ))
            .await?;
        row.map(|r| {
            Ok::<_, DbErr>((
                r.try_get::<String>("", "owner")?,
                to_u64(r.try_get::<i64>("", "position")?),
            ))
        })
        .transpose()
        .map_err(Into::into)
    }

    /// Stores `position` as `owner`'s checkpoint `name` unless it already
    /// has a higher one; returns the stored position, or None when the
    /// checkpoint belongs to another owner (nothing changes then). A
    /// checkpoint without an owner is claimed. A position beyond the head is
    /// refused.
    pub async fn commit_consumer_position(
        &self,
        owner: &str,
        name: &str,
        position: u64,
    ) -> StorageResult<Option<u64>> {
        let head = self.sequence_state().await?.last_position;
        if position > head {
            return Err(DomainError::invalid(
                "position",
                format!("{position} is beyond the head position {head}"),
            )
            .into());
        }
        let backend = self.connection().get_database_backend();
        let greatest = match backend {
            DbBackend::Postgres => "GREATEST",
            _ => "MAX",
        };
        // The WHERE makes the conflict branch a no-op (no row returned) for
        // another owner's checkpoint, atomically with the check.
        let sql = format!(
            "INSERT INTO consumers (name, position, updated_at, owner) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET
                 position = {greatest}(consumers.position, excluded.position),
                 updated_at = excluded.updated_at,
                 owner = excluded.owner
             WHERE consumers.owner = excluded.owner OR consumers.owner = ''
             RETURNING position"
        );
        let rows = self
            .write_one(statement(
                backend,
                &sql,
                vec![
                    name.into(),
                    to_i64(position).into(),
                    Utc::now().into(),
                    owner.into(),
                ],
            ))
            .await?;
        Ok(rows.first::<i64>("position")?.map(to_u64))
    }

    /// Deletes up to `batch` of the oldest sequenced events, as long as each
    /// occurred before `cutoff`, and moves `pruned_through`. With
    /// `keep_unrelayed` (the JetStream relay is on), nothing after the
    /// relay's `relayed_through` is deleted. Returns how many events were
    /// deleted.
    pub async fn prune_events(
        &self,
        cutoff: DateTime<Utc>,
        batch: u64,
        keep_unrelayed: bool,
    ) -> StorageResult<u64> {
        // Read before the rows: it only grows, so an older value is safe.
        let ceiling = if keep_unrelayed {
            self.relay_progress().await?.relayed_through.unwrap_or(0)
        } else {
            u64::MAX
        };
        let rows = event::Entity::find()
            .select_only()
            .column(event::Column::Position)
            .column(event::Column::OccurredAt)
            .filter(event::Column::Position.is_not_null())
            .order_by_asc(event::Column::Position)
            .limit(batch)
            .into_tuple::<(Option<i64>, DateTime<Utc>)>()
            .all(self.connection())
            .await?;
        let rows: Vec<(u64, DateTime<Utc>)> = rows
            .into_iter()
            .filter_map(|(p, at)| p.map(|p| (to_u64(p), at)))
            .filter(|(p, _)| *p <= ceiling)
            .collect();
        let Some(through) = prunable_prefix(&rows, cutoff) else {
            return Ok(0);
        };
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        let deleted = txn
            .execute_raw(statement(
                backend,
                "DELETE FROM events WHERE position IS NOT NULL AND position <= $1",
                vec![to_i64(through).into()],
            ))
            .await?
            .rows_affected();
        txn.execute_raw(statement(
            backend,
            "UPDATE event_sequence SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
            vec![to_i64(through).into()],
        ))
        .await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok(deleted)
    }

    /// Opens a LISTEN connection on `channel` (PostgreSQL only).
    async fn listen(&self, channel: &str) -> Result<PgListener, DbErr> {
        let pool = self.connection().get_postgres_connection_pool();
        let mut listener = PgListener::connect_with(pool).await.map_err(sqlx_err)?;
        listener.listen(channel).await.map_err(sqlx_err)?;
        Ok(listener)
    }

    /// A candidate for the database's sequencer (PostgreSQL only).
    pub fn sequencer_candidate(&self) -> LeaseCandidate {
        LeaseCandidate::new(self.clone(), SEQUENCER_LOCK_KEY)
    }
}

/// A replica that tries, now and then, to take the session advisory lock
/// `key` (PostgreSQL only). It keeps one connection of its own between
/// attempts: taking one from the pool each time would make the pool open a
/// replacement on some request's path, and opening a connection costs tens
/// of milliseconds (sqlx 0.9 leaves Nagle's algorithm on during the
/// handshake).
pub struct LeaseCandidate {
    repo: Repository,
    key: i64,
    conn: Option<PgConnection>,
}

impl LeaseCandidate {
    pub(super) fn new(repo: Repository, key: i64) -> Self {
        Self {
            repo,
            key,
            conn: None,
        }
    }

    /// Takes the lock if nobody holds it. The lease owns the connection the
    /// lock lives on; the next attempt after it ends opens a new one.
    pub async fn try_lead(&mut self) -> Result<Option<LeaderLease>, DbErr> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let options = self
                    .repo
                    .connection()
                    .get_postgres_connection_pool()
                    .connect_options();
                PgConnection::connect_with(&options)
                    .await
                    .map_err(sqlx_err)?
            }
        };
        // On an error the connection is dropped: the next attempt reconnects.
        let locked: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut conn)
            .await
            .map_err(sqlx_err)?;
        if locked {
            Ok(Some(LeaderLease { conn }))
        } else {
            self.conn = Some(conn);
            Ok(None)
        }
    }
}

/// Leadership on PostgreSQL (of the sequencer, or of the JetStream relay):
/// holds a session advisory lock for as long as its connection lives.
#[derive(Debug)]
pub struct LeaderLease {
    conn: PgConnection,
}

/// The sequencer's lease.
pub type SequencerLease = LeaderLease;

impl LeaderLease {
    /// Stamps up to `batch` committed, unstamped events on the lock's own
    /// connection, in one round trip (`connections_stamp_events`, see its
    /// migration), and returns them in position order, so that this
    /// replica's fan-out can publish them without reading them back. Only
    /// the lock's holder can stamp this way, and a lost connection stamps
    /// nothing.
    pub async fn stamp_events(&mut self, batch: u64) -> StorageResult<Vec<SequencedEvent>> {
        let rows = sea_orm::sqlx::query(
            "SELECT stamped_position, stamped_payload FROM connections_stamp_events($1, $2)",
        )
        .bind(to_i64(batch))
        .bind(EVENTS_CHANNEL)
        .fetch_all(&mut self.conn)
        .await
        .map_err(sqlx_err)?;
        let mut events = rows
            .iter()
            .map(|row| {
                let position = to_u64(row.try_get(0).map_err(sqlx_err)?);
                let payload: String = row.try_get(1).map_err(sqlx_err)?;
                Ok(SequencedEvent {
                    position,
                    event: outbox::decode_payload(position, &payload)?,
                })
            })
            .collect::<StorageResult<Vec<_>>>()?;
        events.sort_by_key(|e| e.position);
        Ok(events)
    }

    /// Whether the lock's connection still answers (else leadership is lost).
    pub async fn is_alive(&mut self) -> bool {
        let ping = tokio::time::timeout(std::time::Duration::from_secs(5), self.conn.ping());
        matches!(ping.await, Ok(Ok(())))
    }

    pub async fn release(self) {
        self.conn.close().await.ok();
    }
}

/// A PostgreSQL LISTEN on one channel that reconnects after failures. On
/// SQLite it never fires (in-process wake-ups are enough there).
pub struct NotificationListener {
    repo: Repository,
    channel: &'static str,
    inner: Option<PgListener>,
}

impl NotificationListener {
    pub fn new(repo: Repository, channel: &'static str) -> Self {
        Self {
            repo,
            channel,
            inner: None,
        }
    }

    /// Resolves on a notification, with the highest number any waiting
    /// notification carried (the sequencer's carry the new head), or with
    /// None when notifications may have been missed and the caller must
    /// re-read the table: after a lost connection or an error, and as soon
    /// as the `LISTEN` is in place (at the first call and after each
    /// reconnection). A commit announced before the `LISTEN` was heard by
    /// nobody, so a table read made before it could have missed that
    /// commit with nothing left to say so; the read made after it cannot.
    pub async fn wait(&mut self) -> Option<u64> {
        if !self.repo.is_postgres() {
            return std::future::pending().await;
        }
        let Some(listener) = &mut self.inner else {
            match self.repo.listen(self.channel).await {
                Ok(listener) => self.inner = Some(listener),
                Err(err) => {
                    tracing::warn!(channel = self.channel, error = %err, "LISTEN failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            return None;
        };
        match listener.try_recv().await.map_err(sqlx_err) {
            Ok(Some(first)) => {
                let mut highest = first.payload().parse::<u64>().ok();
                while let Some(next) = listener.next_buffered() {
                    let carried = next.payload().parse::<u64>().ok();
                    highest = highest.zip(carried).map(|(a, b)| a.max(b));
                }
                highest
            }
            Ok(None) => {
                tracing::warn!(channel = self.channel, "LISTEN connection lost");
                None
            }
            Err(err) => {
                tracing::warn!(channel = self.channel, error = %err, "LISTEN failed; reconnecting");
                self.inner = None;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                None
            }
        }
    }
}

/// A stored event at `position`.
fn sequenced(position: i64, payload: &str) -> StorageResult<SequencedEvent> {
    let position = to_u64(position);
    Ok(SequencedEvent {
        position,
        event: outbox::decode_payload(position, payload)?,
    })
}

fn sqlx_err(err: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_stops_at_the_first_event_that_is_too_young() {
        let old = Utc::now() - chrono::Duration::days(10);
        let cutoff = Utc::now() - chrono::Duration::days(7);
        let young = Utc::now();
        assert_eq!(
            prunable_prefix(&[(1, old), (2, old), (3, young), (4, old)], cutoff),
            Some(2)
        );
        assert_eq!(prunable_prefix(&[(1, young), (2, old)], cutoff), None);
        assert_eq!(prunable_prefix(&[], cutoff), None);
    }

    #[test]
    fn placeholders_follow_the_backend() {
        let s = statement(DbBackend::Sqlite, "SELECT $1, $2", vec![1.into(), 2.into()]);
        assert_eq!(s.sql, "SELECT ?1, ?2");
        let p = statement(DbBackend::Postgres, "SELECT $1", vec![1.into()]);
        assert_eq!(p.sql, "SELECT $1");
    }
}
