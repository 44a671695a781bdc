//! The repository's one error enum. Rule refusals found inside a
//! transaction travel as `Rule`; database failures are sorted here, where
//! SeaORM's and sqlx's errors are understood: the database unavailable
//! (nothing was committed: worth one retry), a lost connection during COMMIT
//! (outcome unknown: never retried), a full disk, and everything else.
//! Callers never see a `DbErr`.

use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, TransactionError, sqlx};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// No connection could be had, or it was lost before anything was
    /// committed: retrying on a fresh connection is safe.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    /// The connection was lost while committing: the change may or may not
    /// be durable, so it must not be retried blindly.
    #[error("database connection lost during commit: {0}")]
    CommitOutcomeUnknown(DbErr),
    /// The database has no space left for the write.
    #[error("database storage is full: {0}")]
    Full(DbErr),
    /// SQLite stayed locked past its busy timeout (or could not wait).
    #[error("database is busy: {0}")]
    Busy(DbErr),
    /// Every pooled connection stayed in use past the acquire timeout while
    /// the database itself answers: the service is overloaded, not the
    /// database down (so the health breaker stays closed).
    #[error("every database connection is in use: {0}")]
    Overloaded(DbErr),
    /// A concurrent transaction won: serialization failure or deadlock
    /// (PostgreSQL 40001 / 40P01). Nothing was changed; the caller may retry.
    #[error("concurrent update: {0}")]
    Conflict(DbErr),
    #[error("database error: {0}")]
    Database(DbErr),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// What kind of failure a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection or the server is gone (or refusing connections).
    ConnectionLost,
    /// No space left (SQLite SQLITE_FULL, PostgreSQL 53100 disk_full).
    Full,
    /// SQLite SQLITE_BUSY / SQLITE_LOCKED.
    Busy,
    /// PostgreSQL serialization failure or deadlock.
    Conflict,
    Other,
}

/// Sorts a database error: SQLSTATE class 08 (connection exception),
/// 57P01/57P02/57P03 (administrator or crash shutdown, cannot connect now)
/// and I/O, TLS, protocol and pool failures mean the connection is lost.
pub(crate) fn classify(err: &DbErr) -> Failure {
    if matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) {
        return Failure::ConnectionLost;
    }
    let Some(sqlx_err) = statement_error(err) else {
        return Failure::Other;
    };
    match sqlx_err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::ConnectionLost,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            classify_code(&code)
        }
        _ => Failure::Other,
    }
}

/// sqlx's error behind a failed statement, if it came from sqlx.
fn statement_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

fn classify_code(code: &str) -> Failure {
    // PostgreSQL's SQLSTATEs have five characters; SQLite reports its
    // (extended) result codes as numbers of at most four digits, the primary
    // code in the low byte.
    if code.len() < 5
        && let Ok(sqlite) = code.parse::<u32>()
    {
        return match sqlite & 0xff {
            13 => Failure::Full,
            5 | 6 => Failure::Busy,
            _ => Failure::Other,
        };
    }
    match code {
        "53100" => Failure::Full,
        "40001" | "40P01" => Failure::Conflict,
        "57P01" | "57P02" | "57P03" => Failure::ConnectionLost,
        _ if code.starts_with("08") => Failure::ConnectionLost,
        _ => Failure::Other,
    }
}

/// No connection could be had from the pool (none was used).
fn is_acquire_failure(err: &DbErr) -> bool {
    matches!(err, DbErr::ConnectionAcquire(_))
        || matches!(
            statement_error(err),
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        )
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            Failure::ConnectionLost => {
                // A connection that died says the pool's other idle ones may
                // be gone too; none to be had in time says nothing of them.
                if !is_acquire_failure(&err) {
                    super::idle_check::connection_lost();
                }
                Self::Unavailable(err)
            }
            Failure::Full => Self::Full(err),
            Failure::Busy => Self::Busy(err),
            Failure::Conflict => Self::Conflict(err),
            Failure::Other => Self::Database(err),
        }
    }
}

impl StorageError {
    /// Whether the database refused a write because of a unique constraint.
    pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
        matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
        ) || super::direct::is_unique_violation(err)
    }

    /// Whether PostgreSQL gave up waiting for a lock (`lock_timeout`,
    /// SQLSTATE 55P03): the statement was rolled back.
    pub(crate) fn is_lock_timeout(err: &DbErr) -> bool {
        matches!(
            statement_error(err),
            Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03")
        )
    }

    /// Sorts an error of COMMIT: a lost connection leaves the outcome unknown.
    pub(crate) fn from_commit(err: DbErr) -> Self {
        match Self::from(err) {
            Self::Unavailable(err) => Self::CommitOutcomeUnknown(err),
            other => other,
        }
    }

    /// Whether a retry on another connection may succeed: a connection that
    /// was working died before anything was committed, or SQLite was busy.
    /// Not when no connection could be had (a retry would only wait again),
    /// nor while the breaker is open.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(err) => !matches!(
                err,
                DbErr::Conn(_) | DbErr::ConnectionAcquire(_) | DbErr::Custom(_)
            ),
            // SQLite answers "locked" at once while a pooled connection is
            // still releasing a failed transaction (e.g. after a full
            // disk); another connection gets through.
            Self::Busy(_) => true,
            _ => false,
        }
    }

    /// Whether no pooled connection came free in time. Every connection
    /// busy (e.g. calls queued behind one hot row) and a database gone both
    /// end this way: only a connection of its own tells them apart.
    pub fn is_pool_timeout(&self) -> bool {
        let Self::Unavailable(err) = self else {
            return false;
        };
        matches!(err, DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
            || matches!(statement_error(err), Some(sqlx::Error::PoolTimedOut))
    }

    /// A pool timeout taken for what it is when every pooled connection is
    /// checked out: calls queued behind busy connections, not a database
    /// that stopped answering.
    pub(crate) fn pool_exhausted(self) -> Self {
        match self {
            Self::Unavailable(err) => Self::Overloaded(err),
            other => other,
        }
    }

    /// Whether the database answers but is saturated: the service is
    /// overloaded, retrying later may succeed.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy(_) | Self::Overloaded(_))
    }

    /// Whether the database looks unreachable (feeds the health breaker).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::CommitOutcomeUnknown(_))
    }
}

impl From<TransactionError<StorageError>> for StorageError {
    fn from(err: TransactionError<StorageError>) -> Self {
        match err {
            TransactionError::Connection(db) => db.into(),
            TransactionError::Transaction(inner) => inner,
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_sorted() {
        for lost in ["57P01", "57P02", "57P03", "08006", "08003", "08000"] {
            assert_eq!(classify_code(lost), Failure::ConnectionLost, "{lost}");
        }
        assert_eq!(classify_code("53100"), Failure::Full);
        assert_eq!(classify_code("13"), Failure::Full);
        assert_eq!(classify_code("5"), Failure::Busy);
        assert_eq!(classify_code("517"), Failure::Busy, "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(classify_code("2067"), Failure::Other, "SQLite unique");
        assert_eq!(classify_code("23505"), Failure::Other);
        assert_eq!(classify_code("40001"), Failure::Conflict);
        assert_eq!(classify_code("40P01"), Failure::Conflict);
    }

    #[test]
    fn only_a_connection_that_was_used_counts_as_lost() {
        let sqlx_err = |e: sqlx::Error| DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(e)));
        assert!(is_acquire_failure(&DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout
        )));
        assert!(is_acquire_failure(&sqlx_err(sqlx::Error::PoolTimedOut)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!is_acquire_failure(&sqlx_err(sqlx::Error::Io(reset))));
        assert!(!is_acquire_failure(&DbErr::Conn(RuntimeErr::Internal(
            "connection refused".into()
        ))));
    }
}
