//! PostgreSQL: the guarded writes of concurrent calls (removals and links)
//! share one statement, and so one commit.
//!
//! A removal or a link on the unlocked path ends in one guarded autocommit
//! statement (`removal::apply`, `link_write::apply_link`). Each such
//! statement costs the database its own executor start-up, commit and
//! wake-up, which outweigh the rows it writes
//! (`bench/experiments/batched_writes.sh`: 0.39-0.56 ms of machine CPU per
//! removal and re-link one account per statement, 0.14-0.21 ms eight per
//! statement). So at most [`RUNNING`] such statements run at once; a write
//! that arrives while they do waits for the next one, which carries every
//! write waiting by then (up to [`MAX_MEMBERS`]): each member its own CTEs
//! and its own guard, so a member whose account changed writes nothing and
//! its neighbours are unaffected.
//!
//! Statements run in tasks of their own: a caller that goes away (a
//! cancelled request) never cuts its neighbours' statement short. A member
//! whose caller went away before its statement was built is left out, as
//! a cancelled call that never reached the database. A failure of a shared
//! statement reaches every member (a lost connection leaves all of them
//! with an unknown outcome, as it would leave one).
//!
//! What members share besides the commit is the statement's time, so a
//! shared statement never waits on a lock for long. A guard never waits
//! (`FOR UPDATE SKIP LOCKED`), nor does anything after it on a guarded
//! account's rows; but an insert waits on a unique index while another
//! transaction inserts the same key (a request id's record, an identity
//! another account is linking), and a neighbour held there could commit
//! after its own call's deadline had answered (the server promises a call
//! past its deadline is rolled back before it is answered). So shared
//! statements run on connections of their own whose `lock_timeout` is
//! [`LOCK_TIMEOUT`]: a statement that would wait longer, or that one member
//! fails on a unique index, is rolled back whole, and each of its members
//! runs alone, in its caller's task, on the main pool, as before batching
//! (where the deadline drops it with its call).

use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, SqlxPostgresConnector,
    sqlx::postgres::PgPoolOptions,
};
use tokio::sync::oneshot;

use super::{
    error::{StorageError, StorageResult},
    link_write::{LinkWrite, apply_link, check_linked, push_link},
    removal::{Applied, Write, apply, check_written, push_write},
    sql::WriteSteps,
};

/// Statements in flight at once before writes wait to share the next one.
const RUNNING: u32 = 2;
/// Most writes in one statement.
const MAX_MEMBERS: usize = 8;
/// The longest a shared statement waits for a lock before it is rolled
/// back and its members run alone. Only a race on a unique key makes one
/// wait at all.
const LOCK_TIMEOUT: &str = "10ms";
/// Prepared statements kept per shared connection: one per mix of member
/// shapes (members are ordered by shape, so mixes, not orders, count).
const STATEMENT_CACHE: usize = 256;

/// A guarded write that may share a statement.
#[derive(Debug)]
pub(crate) enum Guarded {
    Removal(Write),
    Link(LinkWrite),
}

impl Guarded {
    fn push(&self, steps: &mut WriteSteps, version: &str) -> StorageResult<()> {
        match self {
            Self::Removal(write) => push_write(steps, write, Some(version)),
            Self::Link(write) => {
                push_link(steps, write, Some(version));
                Ok(())
            }
        }
    }

    fn check(&self, rows: &[sea_orm::QueryResult], member: i32) -> StorageResult<Applied> {
        match self {
            Self::Removal(write) => check_written(rows, Some(member), write, true),
            Self::Link(_) => check_linked(rows, Some(member), true),
        }
    }

    async fn apply_alone(&self, db: &DatabaseConnection, version: &str) -> StorageResult<Applied> {
        match self {
            Self::Removal(write) => apply(db, write, Some(version)).await,
            Self::Link(write) => apply_link(db, write, Some(version)).await,
        }
    }

    /// What makes the statement's text differ between writes.
    fn shape(&self) -> (bool, [usize; 5]) {
        match self {
            Self::Removal(write) => (false, write.shape()),
            Self::Link(write) => (true, write.shape()),
        }
    }
}

/// The queue of guarded writes (see the module's doc).
#[derive(Debug)]
pub(crate) struct WriteBatches {
    /// The main pool: writes run alone there.
    db: DatabaseConnection,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The shared statements' own connections (see [`LOCK_TIMEOUT`]),
    /// opened on first use (inside the runtime).
    statements_db: OnceLock<DatabaseConnection>,
    main: DatabaseConnection,
    pending: Mutex<Pending>,
    statements: AtomicU64,
    writes: AtomicU64,
    alone: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    running: u32,
    queue: Vec<Queued>,
}

#[derive(Debug)]
struct Queued {
    write: Guarded,
    version: String,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug)]
enum Reply {
    Done(StorageResult<Applied>),
    /// Run it alone: the shared statement was rolled back.
    Alone(Guarded, String),
}

/// Shared statements sent and the writes they carried; writes sent back
/// to run alone after their statement was rolled back (a lock wait or a
/// unique key); writes waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBatchStats {
    pub statements: u64,
    pub writes: u64,
    pub alone: u64,
    pub queued: usize,
}

impl WriteBatches {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            shared: Arc::new(Shared {
                statements_db: OnceLock::new(),
                main: db.clone(),
                pending: Mutex::default(),
                statements: AtomicU64::default(),
                writes: AtomicU64::default(),
                alone: AtomicU64::default(),
            }),
            db,
        }
    }

    pub(crate) fn stats(&self) -> WriteBatchStats {
        WriteBatchStats {
            statements: self.shared.statements.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            alone: self.shared.alone.load(Ordering::Relaxed),
            queued: lock(&self.shared).queue.len(),
        }
    }

    /// Closes the shared statements' connections (at shutdown).
    pub(crate) async fn close(&self) {
        if let Some(db) = self.shared.statements_db.get() {
            let _ = db.clone().close().await;
        }
    }

    /// `write`, guarded by the account row's `version`, in the next shared
    /// statement, or alone if that one is rolled back: the outcome of
    /// `removal::apply` or `link_write::apply_link` for it.
    pub(crate) async fn apply(&self, write: Guarded, version: String) -> StorageResult<Applied> {
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
                }));
            }
        }
        match answer.await {
            Ok(Reply::Done(outcome)) => outcome,
            Ok(Reply::Alone(write, version)) => write.apply_alone(&self.db, &version).await,
            // The statement's task ended without an answer: it panicked,
            // possibly after the commit.
            Err(_) => Err(StorageError::CommitOutcomeUnknown(DbErr::Custom(
                "the shared write statement ended without an answer".into(),
            ))),
        }
    }
}

impl Shared {
    fn statements_db(&self) -> &DatabaseConnection {
        self.statements_db.get_or_init(|| {
            let main = self.main.get_postgres_connection_pool();
            let options = (*main.connect_options())
                .clone()
                .options([("lock_timeout", LOCK_TIMEOUT)])
                .statement_cache_capacity(STATEMENT_CACHE);
            let pool = PgPoolOptions::new()
                .max_connections(RUNNING)
                .min_connections(0)
                .acquire_timeout(main.options().get_acquire_timeout())
                .connect_lazy_with(options);
            SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
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
        }));
    }
}

/// Runs statements while writes wait, then gives its slot back.
async fn run(runner: Runner) {
    let shared = runner.shared.clone();
    loop {
        let mut members: Vec<Queued> = {
            let mut pending = lock(&shared);
            pending.queue.retain(|q| !q.reply.is_closed());
            let take = pending.queue.len().min(MAX_MEMBERS);
            pending.queue.drain(..take).collect()
        };
        if members.is_empty() {
            return;
        }
        members.sort_by_key(|m| m.write.shape());
        let count = u64::try_from(members.len()).unwrap_or(u64::MAX);
        shared.writes.fetch_add(count, Ordering::Relaxed);
        shared.statements.fetch_add(1, Ordering::Relaxed);
        match write_members(shared.statements_db(), &members).await {
            Some(outcomes) => {
                for (member, outcome) in members.into_iter().zip(outcomes) {
                    let _ = member.reply.send(Reply::Done(outcome));
                }
            }
            None => {
                shared.alone.fetch_add(count, Ordering::Relaxed);
                for member in members {
                    let _ = member
                        .reply
                        .send(Reply::Alone(member.write, member.version));
                }
            }
        }
    }
}

/// Every member's outcome, in order, from one statement; `None` if it
/// was rolled back for a reason one member may have caused (a lock wait
/// past [`LOCK_TIMEOUT`], a unique key, an event that cannot be encoded):
/// then each runs alone.
async fn write_members(
    db: &DatabaseConnection,
    members: &[Queued],
) -> Option<Vec<StorageResult<Applied>>> {
    let mut steps = WriteSteps::new(DbBackend::Postgres);
    for (n, member) in members.iter().enumerate() {
        steps.member(n);
        member.write.push(&mut steps, &member.version).ok()?;
    }
    let failed = steps.failure();
    match db.query_all_raw(steps.into_statement()).await {
        Ok(rows) => Some(
            members
                .iter()
                .enumerate()
                .map(|(n, member)| {
                    let n = i32::try_from(n).unwrap_or(i32::MAX);
                    member.write.check(&rows, n)
                })
                .collect(),
        ),
        Err(err)
            if StorageError::is_unique_violation(&err) || StorageError::is_lock_timeout(&err) =>
        {
            None
        }
        Err(err) => {
            let err = failed(err);
            Some(members.iter().map(|_| Err(share(&err))).collect())
        }
    }
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
