//! SQL for application keys and the nonces of signed requests. A key's
//! secret is sealed here (AES-256-GCM with the server's secret key, bound to
//! its user key) before it reaches the database, and unsealed only for
//! `access` to verify a request. Sites and permissions are stored as text
//! and parsed by `access`, as for tokens.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QueryTrait, sea_query::Expr,
};

use super::{
    SessionSealer,
    entities::{app_key, request_nonce},
    error::{StorageError, StorageResult},
    group_commit::{self, GroupCommit},
};

/// A stored application key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAppKey {
    pub user_key: String,
    pub caller: String,
    /// `*` or comma-separated api_keys.
    pub sites: String,
    /// Comma-separated permission names.
    pub permissions: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<app_key::Model> for StoredAppKey {
    fn from(model: app_key::Model) -> Self {
        let app_key::Model {
            id: _,
            user_key,
            caller,
            secret_sealed: _,
            sites,
            permissions,
            created_at,
            revoked_at,
        } = model;
        Self {
            user_key,
            caller,
            sites,
            permissions,
            created_at,
            revoked_at,
        }
    }
}

/// The raw bytes of a key's secret (the HMAC key of signed requests). Never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AppKeySecret(pub Vec<u8>);

impl std::fmt::Debug for AppKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKeySecret(<redacted>)")
    }
}

/// Handle to the `app_keys` and `request_nonces` tables; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppKeyStore {
    db: DatabaseConnection,
    sealer: SessionSealer,
    /// SQLite: the server's write turn, which nonce writes take (see
    /// `group_commit::write_one`). None on PostgreSQL and in admin commands.
    group: Option<Arc<GroupCommit>>,
}

impl AppKeyStore {
    pub fn new(db: DatabaseConnection, sealer: SessionSealer) -> Self {
        Self {
            db,
            sealer,
            group: None,
        }
    }

    pub(crate) fn with_group(mut self, group: Option<Arc<GroupCommit>>) -> Self {
        self.group = group;
        self
    }

    /// Whether secrets sealed now can be opened after a restart (a
    /// configured `--session-key`, not a random per-process one).
    pub fn seals_durably(&self) -> bool {
        self.sealer.is_persistent()
    }

    /// Stores a new key with its secret sealed.
    pub async fn create(
        &self,
        user_key: &str,
        caller: &str,
        secret: &AppKeySecret,
        sites: &str,
        permissions: &str,
    ) -> StorageResult<StoredAppKey> {
        let sealed = self
            .sealer
            .seal_bytes(&secret.0, user_key.as_bytes())
            .map_err(StorageError::Corrupt)?;
        let model = app_key::ActiveModel {
            user_key: Set(user_key.to_owned()),
            caller: Set(caller.to_owned()),
            secret_sealed: Set(sealed),
            sites: Set(sites.to_owned()),
            permissions: Set(permissions.to_owned()),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
            ..Default::default()
        };
        let model = sea_orm::ActiveModelTrait::insert(model, &self.db).await?;
        Ok(model.into())
    }

    /// Every key, active or revoked, oldest first.
    pub async fn list(&self) -> StorageResult<Vec<StoredAppKey>> {
        Ok(app_key::Entity::find()
            .order_by_asc(app_key::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(StoredAppKey::from)
            .collect())
    }

    /// The key with this user key, active or revoked, without its secret.
    pub async fn find(&self, user_key: &str) -> StorageResult<Option<StoredAppKey>> {
        Ok(app_key::Entity::find()
            .filter(app_key::Column::UserKey.eq(user_key))
            .one(&self.db)
            .await?
            .map(StoredAppKey::from))
    }

    /// The active key with this user key and its unsealed secret. A secret
    /// that does not open (another server key) is `Corrupt`.
    pub async fn active_with_secret(
        &self,
        user_key: &str,
    ) -> StorageResult<Option<(StoredAppKey, AppKeySecret)>> {
        let Some(model) = app_key::Entity::find()
            .filter(app_key::Column::UserKey.eq(user_key))
            .filter(app_key::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let secret = self
            .sealer
            .open_bytes(&model.secret_sealed, model.user_key.as_bytes())
            .map_err(|_| {
                StorageError::Corrupt(format!(
                    "the secret of application key {} does not open with this server's \
                     --session-key",
                    model.user_key
                ))
            })?;
        Ok(Some((model.into(), AppKeySecret(secret))))
    }

    /// Whether any key is active: like tokens, ends open mode.
    pub async fn any_active(&self) -> StorageResult<bool> {
        Ok(app_key::Entity::find()
            .filter(app_key::Column::RevokedAt.is_null())
            .count(&self.db)
            .await?
            > 0)
    }

    /// Revokes the key if it is active; returns it as now stored, or None
    /// when no active key has this user key.
    pub async fn revoke(&self, user_key: &str) -> StorageResult<Option<StoredAppKey>> {
        let result = app_key::Entity::update_many()
            .col_expr(app_key::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(app_key::Column::UserKey.eq(user_key))
            .filter(app_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            return Ok(None);
        }
        self.find(user_key).await
    }

    /// Records a nonce of `user_key` until `expires_at`. False when it was
    /// already recorded (by any replica): a replay.
    pub async fn remember_nonce(
        &self,
        user_key: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> StorageResult<bool> {
        let row = request_nonce::ActiveModel {
            user_key: Set(user_key.to_owned()),
            nonce: Set(nonce.to_owned()),
            expires_at: Set(expires_at),
        };
        let insert = request_nonce::Entity::insert(row).build(self.db.get_database_backend());
        match group_commit::write_one(&self.db, self.group.as_deref(), insert).await {
            Ok(_) => Ok(true),
            Err(StorageError::Database(err)) if StorageError::is_unique_violation(&err) => {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Forgets nonces whose timestamps are out of the window for good.
    pub async fn prune_nonces(&self, now: DateTime<Utc>) -> StorageResult<u64> {
        Ok(request_nonce::Entity::delete_many()
            .filter(request_nonce::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
