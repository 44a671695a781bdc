//! Storage: SeaORM entities, migrations and the repository that owns every
//! SQL statement and transaction.

pub mod db;
pub mod entities;
pub mod error;
pub mod events;
pub mod migrations;
pub mod outbox;
pub mod relay;
pub mod removal;
pub mod repository;
pub mod secrets;
pub mod tokens;

pub use error::{StorageError, StorageResult};
pub use repository::{LinkOutcome, Repository};
pub use secrets::SessionSealer;
pub use tokens::{StoredToken, TokenStore};
