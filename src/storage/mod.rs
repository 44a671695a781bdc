//! Storage: SeaORM entities, migrations and the repository that owns every
//! SQL statement and transaction.

pub mod action_secrets;
pub mod app_keys;
mod batch;
pub mod db;
mod direct;
mod direct_reads;
pub mod entities;
pub mod error;
pub mod events;
pub mod group_commit;
pub mod health;
mod idle_check;
pub(crate) mod link_write;
pub(crate) mod migrations;
pub mod outbox;
pub mod relay;
pub(crate) mod removal;
pub mod repository;
pub(crate) mod secrets;
mod sql;
pub mod tokens;
pub(crate) mod write_batch;

pub use action_secrets::ActionSecret;
pub use app_keys::{AppKeySecret, AppKeyStore, StoredAppKey};
pub use error::{StorageError, StorageResult};
pub use group_commit::{GroupCommitStats, WriteTxn};
pub use health::{DbHealth, PoolSettings};
pub use repository::{RawWrite, Repository};
pub use secrets::SessionSealer;
pub use tokens::{StoredToken, TokenStore};
pub use write_batch::{SHARED_WRITES_APPLICATION, WriteBatchStats};
