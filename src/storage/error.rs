//! The repository's one error enum. Rule refusals found inside a
//! transaction travel as `Rule`; database failures are sorted here, where
//! SeaORM's errors are understood, into "the database is unavailable" (worth
//! retrying) and everything else. Callers never see a `DbErr`.

use sea_orm::{DbErr, RuntimeErr, TransactionError};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// The connection failed or none could be had: retryable.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    /// A concurrent transaction won: serialization failure or deadlock
    /// (PostgreSQL 40001 / 40P01), or a database still busy after the busy
    /// timeout (SQLite). Nothing was changed; the caller may retry.
    #[error("concurrent update: {0}")]
    Conflict(DbErr),
    #[error("database error: {0}")]
    Database(DbErr),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        match err {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => Self::Unavailable(err),
            other if is_conflict(&other) => Self::Conflict(other),
            other => Self::Database(other),
        }
    }
}

/// Whether the database refused a statement because a concurrent
/// transaction conflicted with it.
fn is_conflict(err: &DbErr) -> bool {
    let (DbErr::Query(RuntimeErr::SqlxError(sqlx)) | DbErr::Exec(RuntimeErr::SqlxError(sqlx))) =
        err
    else {
        return false;
    };
    let Some(database) = sqlx.as_database_error() else {
        return false;
    };
    // PostgreSQL SQLSTATEs; SQLite (extended) result codes of BUSY and LOCKED.
    matches!(
        database.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
    )
}

impl StorageError {
    /// Whether the database refused a write because of a unique constraint.
    pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
        matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
        )
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
