//! The repository's one error enum. Rule refusals found inside a
//! transaction travel as `Rule`; everything else is a database failure whose
//! cause is logged, never shown to callers.

use sea_orm::{DbErr, TransactionError};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Rule(#[from] DomainError),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the database refused a write because of a unique constraint.
    pub fn is_unique_violation(err: &DbErr) -> bool {
        matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
        )
    }
}

impl From<TransactionError<StorageError>> for StorageError {
    fn from(err: TransactionError<StorageError>) -> Self {
        match err {
            TransactionError::Connection(db) => Self::Database(db),
            TransactionError::Transaction(inner) => inner,
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;
