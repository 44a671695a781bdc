//! PostgreSQL: the unlocked reads of concurrent calls share one statement
//! (`batch`).
//!
//! A removal or a link on the unlocked path first reads the site, the
//! account, its rows and the account row's version in one plain statement
//! (`Repository::load_unlocked`). Concurrent reads go as one:
//! `SELECT 0 AS m, q.* FROM (<read>) q UNION ALL SELECT 1 AS m, ...`, each
//! member's rows told apart by `m`. One snapshot serves them all, which
//! makes each member's rows exactly as consistent as its own statement's,
//! and each write's guard still checks the version its read saw. A plain
//! read never waits on a row lock, so a member holds up no neighbour.

use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult};

use super::{
    batch::{Batch, Batcher, share_db_err},
    sql::Sql,
};

/// The queue of unlocked reads (see the module's doc).
#[derive(Debug)]
pub(crate) struct ReadBatches {
    batcher: Batcher<SharedReads>,
}

#[derive(Debug)]
struct SharedReads {
    db: DatabaseConnection,
    statements: AtomicU64,
    reads: AtomicU64,
}

/// Read statements sent and the reads they carried; reads waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBatchStats {
    pub statements: u64,
    pub reads: u64,
    pub queued: usize,
}

impl ReadBatches {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            batcher: Batcher::new(SharedReads {
                db,
                statements: AtomicU64::default(),
                reads: AtomicU64::default(),
            }),
        }
    }

    pub(crate) fn stats(&self) -> ReadBatchStats {
        let shared = self.batcher.batch();
        ReadBatchStats {
            statements: shared.statements.load(Ordering::Relaxed),
            reads: shared.reads.load(Ordering::Relaxed),
            queued: self.batcher.queued(),
        }
    }

    /// The rows of `read` (one SELECT whose rows have `kind` and `id`
    /// columns, the same columns for every read), from the next statement.
    pub(crate) async fn read(&self, read: Sql) -> Result<Vec<QueryResult>, DbErr> {
        self.batcher.submit(read).await.unwrap_or_else(|| {
            Err(DbErr::Custom(
                "the shared read statement ended without an answer".into(),
            ))
        })
    }
}

impl Batch for SharedReads {
    type Member = Sql;
    type Reply = Result<Vec<QueryResult>, DbErr>;
    const RUNNING: usize = 2;
    const MAX_MEMBERS: usize = 8;

    async fn run(&self, mut members: Vec<Sql>) -> Vec<Self::Reply> {
        let count = members.len();
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.reads
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
        if count == 1
            && let Some(read) = members.pop()
        {
            return vec![self.db.query_all_raw(read.into_statement()).await];
        }
        // In order of their text, so that the statement's text repeats for
        // the same mix of reads; `label[i]`: member i's `m`.
        let mut ordered: Vec<(usize, Sql)> = members.into_iter().enumerate().collect();
        ordered.sort_by(|(_, a), (_, b)| a.text().cmp(b.text()));
        let mut label = vec![0; count];
        let mut sql = Sql::new(DbBackend::Postgres);
        for (n, (i, read)) in ordered.into_iter().enumerate() {
            label[i] = n;
            if n > 0 {
                sql.push(" UNION ALL ");
            }
            sql.push(&format!("SELECT {n} AS m, q.* FROM ("));
            sql.append(read);
            sql.push(") q");
        }
        sql.push(" ORDER BY m, kind, id");
        let answered = match self.db.query_all_raw(sql.into_statement()).await {
            Ok(rows) => split(rows, count),
            Err(err) => Err(err),
        };
        match answered {
            Ok(mut by_label) => label
                .into_iter()
                .map(|n| Ok(std::mem::take(&mut by_label[n])))
                .collect(),
            Err(err) => (0..count).map(|_| Err(share_db_err(&err))).collect(),
        }
    }
}

/// The rows of each of `count` members, by their `m` column.
fn split(rows: Vec<QueryResult>, count: usize) -> Result<Vec<Vec<QueryResult>>, DbErr> {
    let mut by_member: Vec<Vec<QueryResult>> = (0..count).map(|_| Vec::new()).collect();
    for row in rows {
        let m: i32 = row.try_get("", "m")?;
        let member = usize::try_from(m)
            .ok()
            .and_then(|m| by_member.get_mut(m))
            .ok_or_else(|| DbErr::Custom(format!("a shared read answered member {m}")))?;
        member.push(row);
    }
    Ok(by_member)
}
