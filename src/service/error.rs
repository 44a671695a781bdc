//! The application services' one error enum: a rule refusal, an access
//! refusal, or a failure underneath. Each door maps it in one place
//! (`grpc::status`, and later the HTTP door's error-code table).

use crate::{access::AccessError, domain::DomainError, storage::StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Rule(#[from] DomainError),
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The database cannot be reached right now; retrying may succeed. The
    /// cause is for the log, never for the caller.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database answers but is saturated (every pooled connection in
    /// use, or SQLite locked past its busy timeout); retrying later may
    /// succeed. The cause is for the log, never for the caller.
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The database has no space left; writes fail until space is freed.
    #[error("the database storage is full: {0}")]
    StorageFull(String),
    /// A concurrent update conflicted with this one; nothing changed and a
    /// retry may succeed.
    #[error("concurrent update: {0}")]
    Conflict(String),
    /// The server lacks a setting the call needs (e.g. a `--session-key` to
    /// seal application keys with); the message says which.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Anything unexpected underneath. The cause is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StorageError> for ServiceError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Rule(rule) => Self::Rule(rule),
            StorageError::Unavailable(cause) => Self::Unavailable(cause.to_string()),
            StorageError::CommitOutcomeUnknown(cause) => {
                Self::Unavailable(format!("connection lost during commit: {cause}"))
            }
            StorageError::Full(cause) => Self::StorageFull(cause.to_string()),
            StorageError::Busy(cause) | StorageError::Overloaded(cause) => {
                Self::Busy(cause.to_string())
            }
            StorageError::Conflict(cause) => Self::Conflict(cause.to_string()),
            StorageError::Database(cause) => Self::Internal(cause.to_string()),
            StorageError::Corrupt(cause) => Self::Internal(format!("inconsistent data: {cause}")),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
