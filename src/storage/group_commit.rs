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
//! On PostgreSQL every write is a transaction of its own: row locks let
//! writers run side by side and the database groups their commits itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, QueryResult,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::error::{StorageError, StorageResult};
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
}

#[derive(Debug, Default)]
struct Slot {
    open: Option<Batch>,
}

#[derive(Debug)]
struct Batch {
    txn: DatabaseTransaction,
    /// Members whose work the batch holds (released savepoints).
    kept: usize,
    opened: Instant,
    outcome: watch::Sender<Option<Result<(), DbErr>>>,
}

impl GroupCommit {
    pub(crate) fn new(db: DatabaseConnection, max_age: Duration) -> Self {
        Self {
            db,
            turn: Arc::new(Mutex::new(Slot::default())),
            shared: Arc::new(Shared {
                max_age,
                ..Shared::default()
            }),
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            members: self.shared.members.load(Ordering::Relaxed),
            rolled_back: self.shared.rolled_back.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Waits for the write turn, then joins the open batch or opens one.
    pub(crate) async fn join(&self, writes: Writes) -> Result<WriteTxn, DbErr> {
        let guard = {
            let queued = Queued::new(self.shared.clone(), self.turn.clone());
            let guard = self.turn.clone().lock_owned().await;
            queued.admitted();
            guard
        };
        let mut turn = Turn {
            guard: Some(guard),
            shared: self.shared.clone(),
        };
        // The batch stays in the slot across every await below: a caller
        // cancelled there leaves it to the turn's drop, never drops it.
        let savepoint = match turn.slot().open.as_ref() {
            // Only a neighbour's kept work needs a savepoint to protect it
            // (a batch waits in the slot only with kept work), and only from
            // writes that could fail half-done.
            Some(batch) if writes == Writes::Several => Some(batch.txn.begin().await?),
            Some(_) => None,
            None => {
                let txn = self
                    .db
                    .begin_with_options(TransactionOptions {
                        isolation_level: None,
                        access_mode: None,
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    })
                    .await?;
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
        Ok(WriteTxn(Inner::Member(Member {
            turn: Some(turn),
            batch,
            savepoint,
            alone,
        })))
    }
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
    /// after it; in a spawned task, so the caller's cancellation cannot cut
    /// it short. Returns the commit's outcome.
    async fn commit_now(mut self, batch: Batch) -> Result<(), DbErr> {
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
        if let Some(batch) = guard.open.take() {
            spawn(commit_batch(batch, Some(guard), self.shared.clone()));
        }
    }
}

async fn commit_batch(batch: Batch, guard: Option<OwnedMutexGuard<Slot>>, shared: Arc<Shared>) {
    let Batch {
        txn, kept, outcome, ..
    } = batch;
    let result = if kept == 0 {
        txn.rollback().await
    } else {
        txn.commit().await
    };
    if result.is_ok() && kept > 0 {
        let kept = u64::try_from(kept).unwrap_or(u64::MAX);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.members.fetch_add(kept, Ordering::Relaxed);
        metrics::storage().group_committed(kept);
    }
    let _ = outcome.send(Some(result));
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

/// A write transaction: on SQLite a member of the open batch (it holds the
/// write turn until it commits or rolls back), on PostgreSQL its own.
pub struct WriteTxn(Inner);

enum Inner {
    Own(DatabaseTransaction),
    Member(Member),
}

struct Member {
    /// All three are Some until `finish` takes them (or `drop` settles them).
    turn: Option<Turn>,
    batch: Option<Batch>,
    /// The member's savepoint; None when it runs on the transaction itself.
    savepoint: Option<DatabaseTransaction>,
    /// No neighbour's work in the transaction: it is this member's alone.
    alone: bool,
}

impl WriteTxn {
    pub(crate) fn own(txn: DatabaseTransaction) -> Self {
        Self(Inner::Own(txn))
    }

    /// Keeps this write. Returns once it is committed (with its batch, on
    /// SQLite), or the commit's error.
    pub async fn commit(self) -> Result<(), DbErr> {
        match self.0 {
            Inner::Own(txn) => txn.commit().await,
            Inner::Member(member) => member.finish(true).await,
        }
    }

    /// Discards this write (only this one: its batch goes on). Returns once
    /// the batch it saw is settled, since what it read may be that batch's
    /// work.
    pub async fn rollback(self) -> Result<(), DbErr> {
        match self.0 {
            Inner::Own(txn) => txn.rollback().await,
            Inner::Member(member) => member.finish(false).await,
        }
    }
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
                let result = batch.txn.rollback().await;
                drop(turn);
                return result;
            }
            Some(savepoint) => {
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
    /// the batch's next statement; the batch, with whatever neighbours' work
    /// it holds, goes back to the slot for the next writer, or is committed
    /// by the turn's drop.
    fn drop(&mut self) {
        let savepoint = self.savepoint.take();
        let (Some(mut turn), Some(batch)) = (self.turn.take(), self.batch.take()) else {
            return;
        };
        if savepoint.is_some() {
            turn.shared.rolled_back.fetch_add(1, Ordering::Relaxed);
            metrics::storage().group_commit_rolled_back();
        }
        drop(savepoint);
        if batch.kept > 0 {
            turn.slot().open = Some(batch);
            return;
        }
        // Only this member's work: rolled back before the turn passes on, so
        // the next writer does not find SQLite's write lock still taken.
        spawn(async move {
            let _ = batch.txn.rollback().await;
            drop(turn);
        });
    }
}

/// One write statement as a write of its own, returning its rows: on SQLite
/// in the write turn (in the open batch, as one atomic step), since a
/// statement in autocommit beside the turn's open transaction would find the
/// database locked and sleep in SQLite's busy handler, up to 100 ms at a
/// time; on PostgreSQL (no `group`) its own implicit transaction.
pub(crate) async fn write_one(
    db: &DatabaseConnection,
    group: Option<&GroupCommit>,
    statement: Statement,
) -> StorageResult<Vec<QueryResult>> {
    let Some(group) = group else {
        return Ok(db.query_all_raw(statement).await?);
    };
    let txn = group.join(Writes::Atomic).await?;
    match txn.query_all_raw(statement).await {
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
                (Some(savepoint), _) => savepoint,
                (None, Some(batch)) => &batch.txn,
                // `batch` is only taken by `finish`, which consumes the member.
                (None, None) => unreachable!(),
            },
        }
    }
}
