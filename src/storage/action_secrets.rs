//! SQL for the sites' action secrets (the HMAC keys of signed unlink action
//! links). A secret is sealed here (AES-256-GCM with the server's secret
//! key, bound to its site id) before it reaches the database, and unsealed
//! only to sign or verify a link.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

use super::{
    SessionSealer,
    entities::{action_secret, idempotency_key},
    error::{StorageError, StorageResult},
    repository::Repository,
};

/// The idempotency keys followed links act under start with this (the
/// rest is a hash of the link's signature).
pub const USED_LINK_PREFIX: &str = "action-link/";

/// The raw bytes of a site's action secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ActionSecret(pub Vec<u8>);

impl std::fmt::Debug for ActionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActionSecret(<redacted>)")
    }
}

/// What the secret of site `site_id` is bound to when sealed, so a sealed
/// secret copied to another site's row does not open.
fn associated_data(site_id: i64) -> Vec<u8> {
    format!("action-secret/{site_id}").into_bytes()
}

/// Stores `secret` for the site: `replace` overwrites an existing one
/// (rotation), otherwise an existing one is kept. Returns whether a row was
/// written.
pub(crate) async fn store(
    txn: &DatabaseTransaction,
    sealer: &SessionSealer,
    site_id: i64,
    secret: &ActionSecret,
    replace: bool,
) -> StorageResult<bool> {
    let sealed = sealer
        .seal_bytes(&secret.0, &associated_data(site_id))
        .map_err(StorageError::Corrupt)?;
    let row = action_secret::ActiveModel {
        site_id: Set(site_id),
        secret_sealed: Set(sealed),
        created_at: Set(Utc::now()),
    };
    let mut conflict = OnConflict::column(action_secret::Column::SiteId);
    if replace {
        conflict.update_columns([
            action_secret::Column::SecretSealed,
            action_secret::Column::CreatedAt,
        ]);
    } else {
        conflict.do_nothing();
    }
    let written = action_secret::Entity::insert(row)
        .on_conflict(conflict)
        .exec_without_returning(txn)
        .await?;
    Ok(written > 0)
}

impl Repository {
    /// Whether secrets sealed now open after a restart and on every replica
    /// (a configured `--session-key`).
    pub fn seals_durably(&self) -> bool {
        self.sealer().is_persistent()
    }

    /// Replaces the site's action secret with `secret`.
    #[tracing::instrument(skip_all, name = "db.rotate_action_secret")]
    pub async fn rotate_action_secret(
        &self,
        site_id: i64,
        secret: &ActionSecret,
    ) -> StorageResult<()> {
        let txn = self.begin_write().await?;
        store(&txn, self.sealer(), site_id, secret, true).await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok(())
    }

    /// Deletes the records of links followed before `before` (their links
    /// have expired, so no click can reach them again); returns how many.
    #[tracing::instrument(skip_all, name = "db.prune_used_links")]
    pub async fn prune_used_links(&self, before: DateTime<Utc>) -> StorageResult<u64> {
        let txn = self.begin_write().await?;
        let conn: &DatabaseTransaction = &txn;
        let deleted = idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::RequestId.starts_with(USED_LINK_PREFIX))
            .filter(idempotency_key::Column::CreatedAt.lt(before))
            .exec(conn)
            .await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok(deleted.rows_affected)
    }

    /// The site's action secret; None when it has none. A secret sealed
    /// with another server key (the key changed) does not open: that is a
    /// configuration error, reported as such.
    #[tracing::instrument(skip_all, name = "db.action_secret")]
    pub async fn action_secret(&self, site_id: i64) -> StorageResult<Option<ActionSecret>> {
        let Some(row) = action_secret::Entity::find_by_id(site_id)
            .one(self.connection())
            .await?
        else {
            return Ok(None);
        };
        self.sealer()
            .open_bytes(&row.secret_sealed, &associated_data(site_id))
            .map(|bytes| Some(ActionSecret(bytes)))
            .map_err(|_| {
                StorageError::Corrupt(format!(
                    "the action secret of site {site_id} does not open with this server's \
                     --session-key: rotate it (RotateActionSecret)"
                ))
            })
    }
}
