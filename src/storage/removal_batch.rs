//! PostgreSQL: the guarded removal writes of concurrent calls share one
//! statement, and so one commit.
//!
//! A removal on the unlocked path ends in one guarded autocommit statement
//! (`removal::apply`). Each such statement costs the database its own
//! executor start-up, commit and wake-up, which outweigh the rows it writes
//! (`bench/experiments/batched_writes.sh`: 0.39-0.56 ms of machine CPU per
//! removal and re-link one account per statement, 0.14-0.21 ms eight per
//! statement). So at most [`RUNNING`] such statements run at once; a write
//! that arrives while they do waits for the next one, which carries every
//! write waiting by then (up to [`MAX_MEMBERS`]): each member its own CTEs
//! and its own guard, so a member whose account changed writes nothing and
//! its neighbours are unaffected. A lone write still costs one statement,
//! as before.
//!
//! Statements run in tasks of their own: a caller that goes away (a
//! cancelled request) never cuts its neighbours' statement short. A member
//! whose caller went away before its statement was built is left out, as
//! a cancelled call that never reached the database. A failure of a shared
//! statement reaches every member (a lost connection leaves all of them
//! with an unknown outcome, as it would leave one).
//!
//! What members share besides the commit is the statement's time, so only
//! writes that never wait share: a guard never waits (`FOR UPDATE SKIP
//! LOCKED`), nor does anything after it on a guarded account's rows. A
//! write with a request id runs alone, as before: its record's insert
//! waits on the key's unique index while another transaction inserts the
//! same id, and a neighbour held there could commit after its own call's
//! deadline had answered (the server promises a call past its deadline is
//! rolled back before it is answered).

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use tokio::sync::oneshot;

use super::{
    error::{StorageError, StorageResult},
    removal::{Applied, Write, apply, check_written, push_write},
    sql::WriteSteps,
};

/// Statements in flight at once before writes wait to share the next one.
const RUNNING: usize = 2;
/// Most writes in one statement.
const MAX_MEMBERS: usize = 8;

/// The queue of guarded removal writes (see the module's doc).
#[derive(Debug)]
pub(crate) struct RemovalBatches {
    db: DatabaseConnection,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    statements: AtomicU64,
    writes: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    running: usize,
    queue: Vec<Queued>,
}

#[derive(Debug)]
struct Queued {
    write: Write,
    version: String,
    reply: oneshot::Sender<StorageResult<Applied>>,
}

/// Guarded removal statements sent for writes without a request id, and
/// the writes they carried (a write sent again alone counts once); writes
/// waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalBatchStats {
    pub statements: u64,
    pub writes: u64,
    pub queued: usize,
}

impl RemovalBatches {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            shared: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> RemovalBatchStats {
        RemovalBatchStats {
            statements: self.shared.statements.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            queued: lock(&self.shared).queue.len(),
        }
    }

    /// `write`, guarded by the account row's `version`, in the next
    /// statement (alone if it stores a request id's record): the outcome
    /// of `removal::apply` for it.
    pub(crate) async fn apply(&self, write: Write, version: String) -> StorageResult<Applied> {
        if write.stores_record() {
            return apply(&self.db, &write, Some(&version)).await;
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&self.shared);
            pending.queue.push(Queued {
                write,
                version,
                reply,
            });
            if pending.running < RUNNING {
                pending.running += 1;
                tokio::spawn(run(Runner {
                    shared: self.shared.clone(),
                    db: self.db.clone(),
                }));
            }
        }
        answer.await.unwrap_or_else(|_| {
            // The statement's task ended without an answer: it panicked,
            // possibly after the commit.
            Err(StorageError::CommitOutcomeUnknown(DbErr::Custom(
                "the shared removal statement ended without an answer".into(),
            )))
        })
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Pending> {
    // A panic while holding this lock leaves the queue intact.
    shared.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// One statement slot, taken by `apply`; given back when its task ends,
/// when one more is started if writes are waiting (so a task that panics
/// strands nobody).
struct Runner {
    shared: Arc<Shared>,
    db: DatabaseConnection,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared);
        pending.running -= 1;
        // Members whose callers left are dropped by the next run.
        if pending.queue.is_empty() {
            return;
        }
        // Outside a runtime (shutdown) the waiting calls' answers are
        // dropped, and they fail as their own tasks end.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        pending.running += 1;
        runtime.spawn(run(Runner {
            shared: self.shared.clone(),
            db: self.db.clone(),
        }));
    }
}

/// Runs statements while writes wait, then gives its slot back.
async fn run(runner: Runner) {
    let shared = runner.shared.clone();
    loop {
        let members: Vec<Queued> = {
            let mut pending = lock(&shared);
            pending.queue.retain(|q| !q.reply.is_closed());
            let take = pending.queue.len().min(MAX_MEMBERS);
            pending.queue.drain(..take).collect()
        };
        if members.is_empty() {
            return;
        }
        shared.writes.fetch_add(
            u64::try_from(members.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let outcomes = write_members(&runner.db, &shared.statements, &members).await;
        for (member, outcome) in members.into_iter().zip(outcomes) {
            let _ = member.reply.send(outcome);
        }
    }
}

/// Every member's outcome, in order: alone as `removal::apply` writes it,
/// several in one statement. `statements` counts the statements sent.
async fn write_members(
    db: &DatabaseConnection,
    statements: &AtomicU64,
    members: &[Queued],
) -> Vec<StorageResult<Applied>> {
    if members.len() == 1 {
        return each_alone(db, statements, members).await;
    }
    let mut steps = WriteSteps::new(DbBackend::Postgres);
    for (n, member) in members.iter().enumerate() {
        steps.member(n);
        if push_write(&mut steps, &member.write, Some(&member.version)).is_err() {
            // Only an event that cannot be encoded fails here: alone, that
            // member fails the same way and the others go on.
            return each_alone(db, statements, members).await;
        }
    }
    let failed = steps.failure();
    statements.fetch_add(1, Ordering::Relaxed);
    match db.query_all_raw(steps.into_statement()).await {
        Ok(rows) => members
            .iter()
            .enumerate()
            .map(|(n, member)| {
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                check_written(&rows, Some(n), &member.write, true)
            })
            .collect(),
        Err(err) => {
            let err = failed(err);
            members.iter().map(|_| Err(share(&err))).collect()
        }
    }
}

/// Every member written alone, in order.
async fn each_alone(
    db: &DatabaseConnection,
    statements: &AtomicU64,
    members: &[Queued],
) -> Vec<StorageResult<Applied>> {
    let mut outcomes = Vec::with_capacity(members.len());
    for member in members {
        statements.fetch_add(1, Ordering::Relaxed);
        outcomes.push(apply(db, &member.write, Some(&member.version)).await);
    }
    outcomes
}

/// The same failure for another member: the same kind, so each member's
/// call is answered as a lone one would be, with the message as its cause.
fn share(err: &StorageError) -> StorageError {
    let cause = || DbErr::Conn(RuntimeErr::Internal(err.to_string()));
    match err {
        StorageError::Rule(rule) => StorageError::Rule(rule.clone()),
        StorageError::Unavailable(_) => StorageError::Unavailable(cause()),
        StorageError::CommitOutcomeUnknown(_) => StorageError::CommitOutcomeUnknown(cause()),
        StorageError::Full(_) => StorageError::Full(cause()),
        StorageError::Busy(_) => StorageError::Busy(cause()),
        StorageError::Overloaded(_) => StorageError::Overloaded(cause()),
        StorageError::Conflict(_) => StorageError::Conflict(cause()),
        StorageError::Database(_) => StorageError::Database(cause()),
        StorageError::Corrupt(message) => StorageError::Corrupt(message.clone()),
    }
}
