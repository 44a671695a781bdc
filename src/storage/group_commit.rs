//! Write transactions, and SQLite group commit.
//!
//! SQLite allows one writer at a time. Instead of one transaction per write,
//! the writers that queue for the write turn while another holds it join one
//! open transaction, each in its own SAVEPOINT: a write that fails or is a
//! dry run rolls back to its savepoint alone, and its neighbours' work stays.
//! The transaction commits when nobody is waiting (or the batch is full or
//! old), and every member is answered only after that shared commit: a
//! member's `commit` returns the batch's outcome, so no call is acknowledged
//! before its change is as durable as the database's settings make it.
//!
//! The first member of a batch runs on the transaction itself (no savepoint
//! to pay for when there is no neighbour to protect), so a lone writer costs
//! exactly BEGIN ... COMMIT, as before.
//!
//! Liveness: whoever releases the turn with an open batch and nobody queued
//! commits it; a commit runs in a task of its own, so a caller that goes
//! away (a cancelled request) never strands its neighbours' work. A queued
//! writer that is cancelled, leaving nobody queued, flushes the batch too.
//!
//! A batch runs on one of two connections: a pooled sqlx connection (any
//! write, through SeaORM), or the direct connection (`direct`: the hot
//! writes, on the calling thread, without a hand-off to sqlx's thread per
//! statement). A writer that finds the other kind's batch open commits it
//! first; on the direct connection a commit, a savepoint's release and a
//! rollback run inline, with nothing to cancel half-way.
//!
//! On PostgreSQL every write is a transaction of its own: row locks let
//! writers run side by side and the database groups their commits itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{
    direct::{BUSY_TIMEOUT, DirectConn, DirectRow, NotBegun, database_file},
    error::{StorageError, StorageResult},
    sql::ReadRow,
};
use crate::telemetry::metrics;

/// A batch commits once it has this many members, even with more queued.
const MAX_MEMBERS: usize = 64;
/// ... or once it has been open this long (the default of
/// `PoolSettings::group_commit_max_age`): the first member waits for the
/// commit, so its latency is bounded too.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(5);

/// The SQLite write turn and the batch that its holders share.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    db: DatabaseConnection,
    turn: Arc<Mutex<Slot>>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// A batch commits once it has been open this long.
    max_age: Duration,
    /// The pool, for checkpoints of the write-ahead log (None: none run).
    pool: Option<DatabaseConnection>,
    /// A checkpoint is running.
    checkpointing: Arc<AtomicBool>,
    checkpoints: Arc<AtomicU64>,
    /// Writers waiting for the turn.
    queued: AtomicUsize,
    batches: AtomicU64,
    members: AtomicU64,
    rolled_back: AtomicU64,
}

/// How many batches committed, how many writes they carried, and how many
/// writes rolled back to their savepoint inside a batch with neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    pub batches: u64,
    pub members: u64,
    pub rolled_back: u64,
    /// Checkpoints of the write-ahead log run for the direct connection.
    pub checkpoints: u64,
}

#[derive(Debug, Default)]
struct Slot {
    open: Option<Batch>,
    direct: Direct,
}

/// The direct connection, opened by the first writer that asks for it.
#[derive(Debug, Default)]
enum Direct {
    #[default]
    Unopened,
    Open(DirectConn),
    /// An in-memory database (another connection would be another
    /// database), or one that could not be opened: every write goes through
    /// the pool.
    Unavailable,
}

#[derive(Debug)]
struct Batch {
    txn: BatchTxn,
    /// Members whose work the batch holds (released savepoints).
    kept: usize,
    opened: Instant,
    outcome: watch::Sender<Option<Result<(), DbErr>>>,
}

impl GroupCommit {
    pub(crate) fn new(db: DatabaseConnection, max_age: Duration) -> Self {
        Self {
            turn: Arc::new(Mutex::new(Slot::default())),
            shared: Arc::new(Shared {
                max_age,
                pool: Some(db.clone()),
                ..Shared::default()
            }),
            db,
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            members: self.shared.members.load(Ordering::Relaxed),
            rolled_back: self.shared.rolled_back.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Waits for the write turn, then joins the open batch or opens one,
    /// on the pool's connection.
    pub(crate) async fn join(&self, writes: Writes) -> Result<WriteTxn, DbErr> {
        Ok(WriteTxn(Inner::Member(self.join_as(writes, false).await?)))
    }

    /// [`Self::join`] on the direct connection, where it can be opened: for
    /// writes whose statements all go through [`FastTxn::raw`].
    pub(crate) async fn join_direct(&self, writes: Writes) -> Result<FastTxn, DbErr> {
        Ok(FastTxn(Inner::Member(self.join_as(writes, true).await?)))
    }

    async fn take_turn(&self) -> Turn {
        let queued = Queued::new(self.shared.clone(), self.turn.clone());
        let guard = self.turn.clone().lock_owned().await;
        queued.admitted();
        Turn {
            guard: Some(guard),
            shared: self.shared.clone(),
        }
    }

    async fn join_as(&self, writes: Writes, direct: bool) -> Result<Member, DbErr> {
        let mut turn = loop {
            let mut turn = self.take_turn().await;
            let direct = direct && self.direct_ready(&mut turn).await;
            match turn.slot().open.as_ref() {
                Some(batch) if batch.txn.is_direct() != direct => {}
                _ => break turn,
            }
            // The other connection's batch is open: it commits first (a
            // batch waits in the slot only with kept work, and only one
            // connection can hold SQLite's write lock).
            let Some(batch) = turn.slot().open.take() else {
                break turn;
            };
            if batch.txn.is_direct() {
                let shared = turn.shared.clone();
                let _ = end_direct(turn.slot(), batch, &shared);
                break turn;
            }
            // Committed in a task of its own holding the turn, as any
            // pooled commit; then this writer queues again.
            let mut outcome = batch.outcome.subscribe();
            let guard = turn.guard.take();
            tokio::spawn(commit_batch(batch, guard, turn.shared.clone()));
            let _ = wait_for(&mut outcome).await;
        };
        // The batch stays in the slot across every await below: a caller
        // cancelled there leaves it to the turn's drop, never drops it.
        let savepoint = match turn.slot().open.as_ref().map(|b| &b.txn) {
            // Only a neighbour's kept work needs a savepoint to protect it
            // (a batch waits in the slot only with kept work), and only from
            // writes that could fail half-done.
            Some(BatchTxn::Orm(txn)) if writes == Writes::Several => {
                Some(Savepoint::Orm(txn.begin().await?))
            }
            Some(BatchTxn::Direct) if writes == Writes::Several => {
                direct_conn(turn.slot())?.exec(MEMBER_SAVEPOINT_SQL)?;
                Some(Savepoint::Direct)
            }
            Some(_) => None,
            None => {
                let txn = if direct {
                    self.begin_direct(&mut turn).await?;
                    BatchTxn::Direct
                } else {
                    BatchTxn::Orm(
                        self.db
                            .begin_with_options(TransactionOptions {
                                isolation_level: None,
                                access_mode: None,
                                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                            })
                            .await?,
                    )
                };
                turn.slot().open = Some(Batch {
                    txn,
                    kept: 0,
                    opened: Instant::now(),
                    outcome: watch::channel(None).0,
                });
                None
            }
        };
        let batch = turn.slot().open.take();
        let alone = batch.as_ref().is_some_and(|b| b.kept == 0);
        Ok(Member {
            turn: Some(turn),
            batch,
            savepoint,
            alone,
        })
    }

    /// Whether the direct connection is open, opening it on first use.
    async fn direct_ready(&self, turn: &mut Turn) -> bool {
        if matches!(turn.slot().direct, Direct::Unopened) {
            turn.slot().direct = match database_file(&self.db).await {
                Ok(Some(path)) => match DirectConn::open(&path) {
                    Ok(conn) => Direct::Open(conn),
                    Err(err) => {
                        tracing::warn!(error = %err, "SQLite: no direct write connection; writes go through the pool");
                        Direct::Unavailable
                    }
                },
                Ok(None) => Direct::Unavailable,
                // Asked again by the next writer.
                Err(_) => Direct::Unopened,
            };
        }
        matches!(turn.slot().direct, Direct::Open(_))
    }

    /// `BEGIN IMMEDIATE` on the direct connection; while another process's
    /// writer holds SQLite's lock, waited for off the runtime's threads.
    async fn begin_direct(&self, turn: &mut Turn) -> Result<(), DbErr> {
        match direct_conn(turn.slot())?.begin_immediate() {
            Ok(()) => return Ok(()),
            Err(NotBegun::Failed(err)) => return Err(err),
            Err(NotBegun::Busy) => {}
        }
        let Direct::Open(mut conn) = std::mem::replace(&mut turn.slot().direct, Direct::Unopened)
        else {
            return Err(not_open());
        };
        // The connection is out of the slot meanwhile; the next writer
        // cannot come before this one gives the turn back.
        let waited = tokio::task::spawn_blocking(move || {
            let begun = conn.begin_waiting(BUSY_TIMEOUT);
            (conn, begun)
        })
        .await;
        match waited {
            Ok((conn, begun)) => {
                turn.slot().direct = Direct::Open(conn);
                begun
            }
            Err(err) => Err(DbErr::Custom(format!("waiting for SQLite's lock: {err}"))),
        }
    }
}

/// A direct member's savepoint, when it shares the batch with neighbours.
const MEMBER_SAVEPOINT_SQL: &str = "SAVEPOINT member";
const MEMBER_RELEASE_SQL: &str = "RELEASE member";
const MEMBER_UNDO_SQL: &str = "ROLLBACK TO member; RELEASE member";

/// The batch's transaction: on a pooled connection, or on the direct
/// connection (which lives in the slot, with the turn).
#[derive(Debug)]
enum BatchTxn {
    Orm(DatabaseTransaction),
    Direct,
}

impl BatchTxn {
    fn is_direct(&self) -> bool {
        matches!(self, BatchTxn::Direct)
    }
}

/// A member's savepoint, when it has one.
enum Savepoint {
    Orm(DatabaseTransaction),
    /// `SAVEPOINT member` on the direct connection.
    Direct,
}

fn direct_conn(slot: &mut Slot) -> Result<&mut DirectConn, DbErr> {
    match &mut slot.direct {
        Direct::Open(conn) => Ok(conn),
        _ => Err(not_open()),
    }
}

fn not_open() -> DbErr {
    DbErr::Custom("the direct SQLite connection is not open".into())
}

/// Ends a direct batch, here and now: COMMIT if it holds kept work, else
/// ROLLBACK, and answers its members. A failed COMMIT can leave SQLite's
/// transaction open: it is rolled back, so the next batch begins afresh.
/// Returns the outcome.
fn end_direct(slot: &mut Slot, batch: Batch, shared: &Shared) -> Result<(), DbErr> {
    let ended = direct_conn(slot).and_then(|conn| {
        let ended = conn.exec(if batch.kept == 0 {
            "ROLLBACK"
        } else {
            "COMMIT"
        });
        if ended.is_err() && conn.in_transaction() {
            let _ = conn.exec("ROLLBACK");
        }
        if conn.wal_pages() >= CHECKPOINT_PAGES {
            shared.checkpoint();
        }
        ended
    });
    settle(&batch.outcome, batch.kept, ended.clone(), shared);
    ended
}

/// The write-ahead log's size (pages) past which a commit on the direct
/// connection has it checkpointed: SQLite's own default.
const CHECKPOINT_PAGES: i32 = 1000;

impl Shared {
    /// Checkpoints the write-ahead log on a pooled connection, in a task of
    /// its own (one at a time): SQLite would do it inside the commit that
    /// crossed the threshold, which on the direct connection would hold a
    /// runtime thread for the copy and the file syncs. PASSIVE: it waits
    /// for no reader or writer.
    fn checkpoint(&self) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = self.checkpointing.clone();
        let done = self.checkpoints.clone();
        spawn(async move {
            match pool
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                Ok(_) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "SQLite: checkpoint of the write-ahead log failed");
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}

/// Counts a committed batch and answers its members.
fn settle(
    outcome: &watch::Sender<Option<Result<(), DbErr>>>,
    kept: usize,
    result: Result<(), DbErr>,
    shared: &Shared,
) {
    if result.is_ok() && kept > 0 {
        let kept = u64::try_from(kept).unwrap_or(u64::MAX);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.members.fetch_add(kept, Ordering::Relaxed);
        metrics::storage().group_committed(kept);
    }
    let _ = outcome.send(Some(result));
}

/// What a write transaction's caller promises about its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Any number of statements: in a batch with neighbours, a savepoint
    /// undoes them if the write fails or rolls back.
    Several,
    /// Reads, then at most one write step that is atomic by itself and
    /// undoes itself if it fails (one statement, or statements wrapped in a
    /// savepoint of the caller's): no savepoint of its own is needed, which
    /// saves two round trips per write. A rollback after that step is not
    /// possible: the caller must not roll back once the step succeeded.
    Atomic,
}

/// Counts a writer as queued until it gets the turn; one cancelled while
/// queued, leaving nobody queued, flushes the batch it would have joined.
struct Queued {
    shared: Arc<Shared>,
    turn: Arc<Mutex<Slot>>,
    admitted: bool,
}

impl Queued {
    fn new(shared: Arc<Shared>, turn: Arc<Mutex<Slot>>) -> Self {
        shared.queued.fetch_add(1, Ordering::AcqRel);
        Self {
            shared,
            turn,
            admitted: false,
        }
    }

    fn admitted(mut self) {
        self.admitted = true;
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let left = self.shared.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        if !self.admitted && left == 0 {
            let turn = self.turn.clone();
            let shared = self.shared.clone();
            spawn(async move {
                let guard = turn.lock_owned().await;
                drop(Turn {
                    guard: Some(guard),
                    shared,
                });
            });
        }
    }
}

/// The write turn, held. Released with an open batch and nobody queued, it
/// commits the batch (in a task of its own).
struct Turn {
    guard: Option<OwnedMutexGuard<Slot>>,
    shared: Arc<Shared>,
}

impl Turn {
    fn slot(&mut self) -> &mut Slot {
        // The guard is only taken out by `drop` and `commit_now`, which
        // consume the turn.
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }

    /// Commits `batch` while holding the turn, so the next batch begins
    /// after it. A pooled batch commits in a spawned task, so the caller's
    /// cancellation cannot cut it short; a direct one here, at once.
    /// Returns the commit's outcome.
    async fn commit_now(mut self, batch: Batch) -> Result<(), DbErr> {
        if batch.txn.is_direct() {
            let shared = self.shared.clone();
            return end_direct(self.slot(), batch, &shared);
        }
        let guard = self.guard.take();
        let shared = self.shared.clone();
        let mut outcome = batch.outcome.subscribe();
        tokio::spawn(commit_batch(batch, guard, shared));
        wait_for(&mut outcome).await
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if self.shared.queued.load(Ordering::Acquire) > 0 {
            // The next writer in line takes the batch over.
            return;
        }
        match guard.open.take() {
            Some(batch) if batch.txn.is_direct() => {
                let _ = end_direct(&mut guard, batch, &self.shared);
            }
            Some(batch) => spawn(commit_batch(batch, Some(guard), self.shared.clone())),
            None => {}
        }
    }
}

/// Ends a batch and answers its members, then gives the turn back. A
/// pooled batch awaits its COMMIT here (in a task of its own, so no caller's
/// cancellation cuts it short); the callers end a direct one inline
/// (`end_direct`), and it ends the same way here.
async fn commit_batch(batch: Batch, mut guard: Option<OwnedMutexGuard<Slot>>, shared: Arc<Shared>) {
    match batch.txn {
        BatchTxn::Orm(txn) => {
            let result = if batch.kept == 0 {
                txn.rollback().await
            } else {
                txn.commit().await
            };
            settle(&batch.outcome, batch.kept, result, &shared);
        }
        BatchTxn::Direct => match guard.as_deref_mut() {
            Some(slot) => {
                let _ = end_direct(slot, batch, &shared);
            }
            None => settle(&batch.outcome, batch.kept, Err(not_open()), &shared),
        },
    }
    drop(guard);
}

async fn wait_for(outcome: &mut watch::Receiver<Option<Result<(), DbErr>>>) -> Result<(), DbErr> {
    match outcome.wait_for(Option::is_some).await {
        Ok(result) => result.clone().unwrap_or_else(|| unreachable!()),
        // The batch was dropped without an outcome: a panic mid-commit.
        Err(_) => Err(DbErr::Custom(
            "the shared transaction ended without an outcome".into(),
        )),
    }
}

/// A write transaction: on SQLite a member of the open batch on a pooled
/// connection (it holds the write turn until it commits or rolls back), on
/// PostgreSQL its own.
pub struct WriteTxn(Inner);

/// A write transaction whose statements all go through [`FastTxn::raw`]: on
/// SQLite a member of a batch on the direct connection (where it could be
/// opened), on PostgreSQL its own.
pub(crate) struct FastTxn(Inner);

enum Inner {
    Own(DatabaseTransaction),
    Member(Member),
}

struct Member {
    /// All three are Some until `finish` takes them (or `drop` settles them).
    turn: Option<Turn>,
    batch: Option<Batch>,
    /// The member's savepoint; None when it runs on the transaction itself.
    savepoint: Option<Savepoint>,
    /// No neighbour's work in the transaction: it is this member's alone.
    alone: bool,
}

impl Inner {
    async fn finish(self, keep: bool) -> Result<(), DbErr> {
        match self {
            Inner::Own(txn) if keep => txn.commit().await,
            Inner::Own(txn) => txn.rollback().await,
            Inner::Member(member) => member.finish(keep).await,
        }
    }
}

impl WriteTxn {
    pub(crate) fn own(txn: DatabaseTransaction) -> Self {
        Self(Inner::Own(txn))
    }

    /// Keeps this write. Returns once it is committed (with its batch, on
    /// SQLite), or the commit's error.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.0.finish(true).await
    }

    /// Discards this write (only this one: its batch goes on). Returns once
    /// the batch it saw is settled, since what it read may be that batch's
    /// work.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.0.finish(false).await
    }
}

impl From<WriteTxn> for FastTxn {
    fn from(txn: WriteTxn) -> Self {
        Self(txn.0)
    }
}

impl FastTxn {
    /// See [`WriteTxn::commit`].
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        self.0.finish(true).await
    }

    /// See [`WriteTxn::rollback`].
    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        self.0.finish(false).await
    }

    /// The connection its statements go to.
    pub(crate) fn raw(&mut self) -> Raw<'_> {
        match &mut self.0 {
            Inner::Own(txn) => Raw::Orm(txn),
            Inner::Member(member) => match (&member.savepoint, &member.batch, &mut member.turn) {
                (Some(Savepoint::Orm(savepoint)), _, _) => Raw::Orm(savepoint),
                (
                    _,
                    Some(Batch {
                        txn: BatchTxn::Orm(txn),
                        ..
                    }),
                    _,
                ) => Raw::Orm(txn),
                (_, Some(_), Some(turn)) => match direct_conn(turn.slot()) {
                    Ok(conn) => Raw::Direct(conn),
                    Err(_) => Raw::Gone,
                },
                // Only `finish` takes them, consuming the member.
                _ => Raw::Gone,
            },
        }
    }
}

/// Where a write's statements go: a SeaORM transaction (or savepoint), or
/// the direct SQLite connection.
pub(crate) enum Raw<'a> {
    Orm(&'a DatabaseTransaction),
    Direct(&'a mut DirectConn),
    /// The transaction already ended (never while its owner holds it).
    Gone,
}

impl Raw<'_> {
    pub(crate) fn backend(&self) -> DbBackend {
        match self {
            Raw::Orm(txn) => txn.get_database_backend(),
            Raw::Direct(_) | Raw::Gone => DbBackend::Sqlite,
        }
    }

    /// The SeaORM transaction, if the write runs on one.
    pub(crate) fn orm(&self) -> Option<&DatabaseTransaction> {
        match self {
            Raw::Orm(txn) => Some(txn),
            _ => None,
        }
    }

    /// Runs `statement`, returning its rows.
    pub(crate) async fn query_all(&mut self, statement: Statement) -> Result<Rows, DbErr> {
        match self {
            Raw::Orm(txn) => txn.query_all_raw(statement).await.map(Rows::Orm),
            Raw::Direct(conn) => conn.query_statement(&statement).map(Rows::Direct),
            Raw::Gone => Err(ended()),
        }
    }

    pub(crate) async fn execute_unprepared(&mut self, sql: &str) -> Result<(), DbErr> {
        match self {
            Raw::Orm(txn) => txn.execute_unprepared(sql).await.map(|_| ()),
            Raw::Direct(conn) => conn.exec(sql),
            Raw::Gone => Err(ended()),
        }
    }
}

/// The rows of [`Raw::query_all`], as the connection returned them (both
/// are [`ReadRow`]s).
pub(crate) enum Rows {
    Orm(Vec<QueryResult>),
    Direct(Vec<DirectRow>),
}

impl Rows {
    /// `column` of the first row, if there is a row.
    pub(crate) fn first<T: sea_orm::TryGetable + sea_orm::sea_query::ValueType>(
        &self,
        column: &str,
    ) -> Result<Option<T>, DbErr> {
        match self {
            Rows::Orm(rows) => rows.first().map(|r| r.read(column)).transpose(),
            Rows::Direct(rows) => rows.first().map(|r| r.read(column)).transpose(),
        }
    }
}

fn ended() -> DbErr {
    DbErr::Custom("the write transaction already ended".into())
}

impl Member {
    async fn finish(mut self, keep: bool) -> Result<(), DbErr> {
        let (Some(mut turn), Some(mut batch)) = (self.turn.take(), self.batch.take()) else {
            return Ok(());
        };
        match self.savepoint.take() {
            // On the transaction itself: alone, or an atomic write whose
            // step either happened whole or not at all.
            None if keep => batch.kept += 1,
            None if !self.alone => {}
            None => {
                // Rolled back before the turn passes on, so the next writer
                // does not find SQLite's write lock still taken.
                let result = match batch.txn {
                    BatchTxn::Orm(txn) => txn.rollback().await,
                    BatchTxn::Direct => direct_conn(turn.slot()).and_then(|c| c.exec("ROLLBACK")),
                };
                drop(turn);
                return result;
            }
            Some(Savepoint::Direct) => {
                // Inline: nothing here can be cancelled half-way.
                let conn = direct_conn(turn.slot());
                let ended = conn.and_then(|c| {
                    c.exec(if keep {
                        MEMBER_RELEASE_SQL
                    } else {
                        MEMBER_UNDO_SQL
                    })
                });
                if let Err(err) = ended {
                    // This member's work could not be kept or undone on its
                    // own: the batch ends with it, and nobody is told it
                    // committed.
                    if let Ok(conn) = direct_conn(turn.slot())
                        && conn.in_transaction()
                    {
                        let _ = conn.exec("ROLLBACK");
                    }
                    settle(&batch.outcome, batch.kept, Err(err.clone()), &turn.shared);
                    return Err(err);
                }
                if keep {
                    batch.kept += 1;
                } else {
                    turn.shared.rolled_back.fetch_add(1, Ordering::Relaxed);
                    metrics::storage().group_commit_rolled_back();
                }
            }
            Some(Savepoint::Orm(savepoint)) => {
                // Back in the slot while the savepoint ends: if this caller
                // is cancelled or the savepoint fails, the turn's drop
                // settles the neighbours' work.
                turn.slot().open = Some(batch);
                if keep {
                    savepoint.commit().await?;
                } else {
                    savepoint.rollback().await?;
                    turn.shared.rolled_back.fetch_add(1, Ordering::Relaxed);
                    metrics::storage().group_commit_rolled_back();
                }
                let Some(back) = turn.slot().open.take() else {
                    return Ok(());
                };
                batch = back;
                if keep {
                    batch.kept += 1;
                }
            }
        }
        let full = batch.kept >= MAX_MEMBERS || batch.opened.elapsed() >= turn.shared.max_age;
        if full || turn.shared.queued.load(Ordering::Acquire) == 0 {
            return turn.commit_now(batch).await;
        }
        // Someone is queued: they join, and the last of the batch commits.
        let mut outcome = batch.outcome.subscribe();
        turn.slot().open = Some(batch);
        drop(turn);
        wait_for(&mut outcome).await
    }
}

impl Drop for Member {
    /// Dropped without `commit` or `rollback` (an early return with `?`, a
    /// cancelled request): the savepoint's drop queues its rollback ahead of
    /// the batch's next statement (on the direct connection it rolls back
    /// here); the batch, with whatever neighbours' work it holds, goes back
    /// to the slot for the next writer, or is committed by the turn's drop.
    fn drop(&mut self) {
        let savepoint = self.savepoint.take();
        let (Some(mut turn), Some(batch)) = (self.turn.take(), self.batch.take()) else {
            return;
        };
        if let Some(savepoint) = savepoint {
            turn.shared.rolled_back.fetch_add(1, Ordering::Relaxed);
            metrics::storage().group_commit_rolled_back();
            if let Savepoint::Direct = savepoint
                && let Ok(conn) = direct_conn(turn.slot())
                && conn.exec(MEMBER_UNDO_SQL).is_err()
            {
                // The member's work could not be undone: nothing of the
                // batch may be committed with it.
                let _ = conn.exec("ROLLBACK");
                settle(&batch.outcome, batch.kept, Err(undo_failed()), &turn.shared);
                return;
            }
        }
        if batch.kept > 0 {
            turn.slot().open = Some(batch);
            return;
        }
        // Only this member's work: rolled back before the turn passes on, so
        // the next writer does not find SQLite's write lock still taken.
        match batch.txn {
            BatchTxn::Orm(txn) => spawn(async move {
                let _ = txn.rollback().await;
                drop(turn);
            }),
            BatchTxn::Direct => {
                if let Ok(conn) = direct_conn(turn.slot()) {
                    let _ = conn.exec("ROLLBACK");
                }
            }
        }
    }
}

fn undo_failed() -> DbErr {
    DbErr::Custom("a cancelled write could not be undone; its batch was rolled back".into())
}

/// One write statement as a write of its own, returning its rows: on SQLite
/// in the write turn (in the open batch, on the direct connection, as one
/// atomic step), since a statement in autocommit beside the turn's open
/// transaction would find the database locked and wait in SQLite's busy
/// handler; on PostgreSQL (no `group`) its own implicit transaction.
pub(crate) async fn write_one(
    db: &DatabaseConnection,
    group: Option<&GroupCommit>,
    statement: Statement,
) -> StorageResult<Rows> {
    let Some(group) = group else {
        return Ok(Rows::Orm(db.query_all_raw(statement).await?));
    };
    let mut txn = group.join_direct(Writes::Atomic).await?;
    match txn.raw().query_all(statement).await {
        Ok(rows) => {
            txn.commit().await.map_err(StorageError::from_commit)?;
            Ok(rows)
        }
        Err(err) => {
            let _ = txn.rollback().await;
            Err(err.into())
        }
    }
}

/// Spawns on the current runtime; outside one (a drop at shutdown) the
/// future is dropped, which rolls back what it holds.
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        match &self.0 {
            Inner::Own(txn) => txn,
            Inner::Member(member) => match (&member.savepoint, &member.batch) {
                (Some(Savepoint::Orm(savepoint)), _) => savepoint,
                (
                    _,
                    Some(Batch {
                        txn: BatchTxn::Orm(txn),
                        ..
                    }),
                ) => txn,
                // `batch` is only taken by `finish`, which consumes the
                // member, and `join` (the only maker of a `WriteTxn`)
                // opens pooled batches only.
                _ => unreachable!(),
            },
        }
    }
}
