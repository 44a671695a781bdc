//! PostgreSQL: the guarded writes of concurrent calls (removals and links)
//! share one statement (`batch`), and so one commit.
//!
//! A removal or a link on the unlocked path ends in one guarded autocommit
//! statement (`removal::apply`, `link_write::apply_link`), whose executor
//! start-up, commit and wake-up outweigh the rows it writes
//! (`bench/experiments/batched_writes.sh`: 0.39-0.56 ms of machine CPU per
//! removal and re-link one account per statement, 0.14-0.21 ms eight per
//! statement). In a shared statement each member has its own CTEs and its
//! own guard, so a member whose account changed writes nothing and its
//! neighbours are unaffected. A failure of a shared statement reaches
//! every member. A lost connection would leave each with an unknown
//! outcome; but a member whose account row is still at its version wrote
//! nothing (its guard touches the row first, and every step after acts only
//! if it did), so it runs again under the lock. The row is read `FOR
//! UPDATE`, which waits out a statement PostgreSQL is still running (or
//! aborting) and sees what it left.
//!
//! These connections are tested before use only when they may have died
//! while idle (`idle_check`), as the main pool's are: a dead one found by
//! the statement itself costs a retry under the lock, not an unknown
//! outcome.
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
//! is answered as a guard that did not match: its call runs again under
//! the account lock, in a transaction of its own, where waiting is safe
//! (the deadline rolls it back; a connection lost there is retried). No
//! autocommit write of the service ever waits on a lock.
//!
//! (Running such members alone, as autocommit statements, let one start
//! while PostgreSQL was still aborting the shared statement, which it
//! reports before it releases its locks: the member's guard then skipped
//! the account still held by the dying statement.)

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqlxPostgresConnector, Statement,
    sqlx::postgres::PgPoolOptions,
};

use super::{
    batch::{Batch, Batcher, share},
    error::{StorageError, StorageResult},
    idle_check,
    link_write::{LinkWrite, check_linked, push_link},
    removal::{Applied, Write, check_written, push_write},
    sql::WriteSteps,
};

/// The longest a shared statement waits for a lock before it is rolled
/// back and its members run again under the lock. Only a race on a unique
/// key, or a foreign transaction holding a guarded account's rows, makes
/// one wait at all.
const LOCK_TIMEOUT: &str = "10ms";
/// The shared statements' connections' `application_name`, as
/// `pg_stat_activity` shows them.
pub const SHARED_WRITES_APPLICATION: &str = "connections-shared-writes";
/// How long a member of a statement whose connection was lost waits for
/// its account row (held by the dying statement, or by another call) to
/// learn whether the statement wrote it; past this its outcome is unknown.
const SETTLE_PATIENCE: Duration = Duration::from_secs(1);
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

    fn account_id(&self) -> i64 {
        match self {
            Self::Removal(write) => write.account_id(),
            Self::Link(write) => write.account_id,
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
    batcher: Batcher<SharedWrites>,
}

#[derive(Debug)]
struct SharedWrites {
    /// The shared statements' own connections (see [`LOCK_TIMEOUT`]),
    /// opened on first use (inside the runtime).
    statements_db: OnceLock<DatabaseConnection>,
    main: DatabaseConnection,
    statements: AtomicU64,
    writes: AtomicU64,
    rolled_back: AtomicU64,
}

/// Shared statements sent and the writes they carried; writes whose
/// statement was rolled back (a lock wait or a unique key) or lost its
/// connection without writing them, sent to run again under the lock;
/// writes waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBatchStats {
    pub statements: u64,
    pub writes: u64,
    pub rolled_back: u64,
    pub queued: usize,
}

impl WriteBatches {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            batcher: Batcher::new(SharedWrites {
                statements_db: OnceLock::new(),
                main: db.clone(),
                statements: AtomicU64::default(),
                writes: AtomicU64::default(),
                rolled_back: AtomicU64::default(),
            }),
        }
    }

    pub(crate) fn stats(&self) -> WriteBatchStats {
        let shared = self.batcher.batch();
        WriteBatchStats {
            statements: shared.statements.load(Ordering::Relaxed),
            writes: shared.writes.load(Ordering::Relaxed),
            rolled_back: shared.rolled_back.load(Ordering::Relaxed),
            queued: self.batcher.queued(),
        }
    }

    /// Closes the shared statements' connections (at shutdown).
    pub(crate) async fn close(&self) {
        if let Some(db) = self.batcher.batch().statements_db.get() {
            let _ = db.clone().close().await;
        }
    }

    /// `write`, guarded by the account row's `version`, in the next shared
    /// statement: the outcome of `removal::apply` or `link_write::apply_link`
    /// for it, [`Applied::Conflict`] if its statement was rolled back.
    pub(crate) async fn apply(&self, write: Guarded, version: String) -> StorageResult<Applied> {
        self.batcher
            .submit((write, version))
            .await
            .unwrap_or_else(|| {
                // The statement's task ended without an answer: it
                // panicked, possibly after the commit.
                Err(StorageError::CommitOutcomeUnknown(DbErr::Custom(
                    "the shared write statement ended without an answer".into(),
                )))
            })
    }
}

impl Batch for SharedWrites {
    type Member = (Guarded, String);
    type Reply = StorageResult<Applied>;
    const RUNNING: usize = 2;
    const MAX_MEMBERS: usize = 8;

    async fn run(&self, members: Vec<(Guarded, String)>) -> Vec<Self::Reply> {
        let count = u64::try_from(members.len()).unwrap_or(u64::MAX);
        self.writes.fetch_add(count, Ordering::Relaxed);
        self.statements.fetch_add(1, Ordering::Relaxed);
        match write_members(self.statements_db(), &members, &self.rolled_back).await {
            Some(outcomes) => outcomes,
            None => {
                self.rolled_back.fetch_add(count, Ordering::Relaxed);
                members.iter().map(|_| Ok(Applied::Conflict)).collect()
            }
        }
    }
}

impl SharedWrites {
    fn statements_db(&self) -> &DatabaseConnection {
        self.statements_db.get_or_init(|| {
            let main = self.main.get_postgres_connection_pool();
            let options = (*main.connect_options())
                .clone()
                .options([("lock_timeout", LOCK_TIMEOUT)])
                .application_name(SHARED_WRITES_APPLICATION)
                .statement_cache_capacity(STATEMENT_CACHE);
            let pool = PgPoolOptions::new()
                .max_connections(u32::try_from(Self::RUNNING).unwrap_or(u32::MAX))
                .min_connections(0)
                .acquire_timeout(main.options().get_acquire_timeout())
                .test_before_acquire(false)
                .before_acquire(idle_check::test_if_suspect)
                .connect_lazy_with(options);
            SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
        })
    }
}

/// Every member's outcome, in order, from one statement; `None` if it
/// was rolled back for a reason one member may have caused (a lock wait
/// past [`LOCK_TIMEOUT`], a unique key, an event that cannot be encoded):
/// then each runs again under the lock. Members are written in order of their shape, so
/// that the statement's text repeats for the same mix of writes.
async fn write_members(
    db: &DatabaseConnection,
    members: &[(Guarded, String)],
    rolled_back: &AtomicU64,
) -> Option<Vec<StorageResult<Applied>>> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| members[i].0.shape());
    let mut label = vec![0; members.len()];
    let mut steps = WriteSteps::new(DbBackend::Postgres);
    for (n, &i) in order.iter().enumerate() {
        label[i] = i32::try_from(n).unwrap_or(i32::MAX);
        steps.member(n);
        let (write, version) = &members[i];
        write.push(&mut steps, version).ok()?;
    }
    let failed = steps.failure();
    match db.query_all_raw(steps.into_statement()).await {
        Ok(rows) => Some(
            members
                .iter()
                .zip(label)
                .map(|((write, _), n)| write.check(&rows, n))
                .collect(),
        ),
        Err(err)
            if StorageError::is_unique_violation(&err) || StorageError::is_lock_timeout(&err) =>
        {
            None
        }
        Err(err) => {
            let err = failed(err);
            if !matches!(err, StorageError::CommitOutcomeUnknown(_)) {
                return Some(members.iter().map(|_| Err(share(&err))).collect());
            }
            let mut outcomes = Vec::with_capacity(members.len());
            for (write, version) in members {
                outcomes.push(match unchanged(db, write.account_id(), version).await {
                    Ok(true) => {
                        rolled_back.fetch_add(1, Ordering::Relaxed);
                        Ok(Applied::Conflict)
                    }
                    Ok(false) | Err(_) => Err(share(&err)),
                });
            }
            Some(outcomes)
        }
    }
}

/// Whether the account row is still at `version`, once no transaction
/// holds it: then nothing of a guarded write made from that version was
/// kept. On these connections a lock wait gives up after [`LOCK_TIMEOUT`];
/// it is tried again for [`SETTLE_PATIENCE`]. (It assumes the lost
/// statement, if PostgreSQL received it at all, has started by the time
/// this read has a connection: its guard is its first step and takes the
/// row at once. A backend left unscheduled that long is the window where
/// it could still commit after this read.)
async fn unchanged(db: &DatabaseConnection, account_id: i64, version: &str) -> Result<bool, DbErr> {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        let read = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT xmin::text AS version FROM accounts WHERE id = $1 FOR UPDATE",
                [account_id.into()],
            ))
            .await;
        match read {
            Ok(Some(row)) => return Ok(row.try_get::<String>("", "version")? == version),
            Ok(None) => return Ok(false),
            Err(err) if StorageError::is_lock_timeout(&err) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
