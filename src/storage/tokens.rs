//! SQL for API tokens. Tokens arrive here already hashed: the token itself
//! never reaches the database. Sites and permissions are stored as text and
//! parsed by `access`.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, sea_query::Expr,
};

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use super::{
    entities::api_token,
    error::{StorageError, StorageResult},
    health::DbHealth,
};

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: i64,
    pub caller: String,
    /// `*` or comma-separated api_keys.
    pub sites: String,
    /// Comma-separated permission names.
    pub permissions: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// A user token's uid; None for other tokens.
    pub uid: Option<String>,
}

impl From<api_token::Model> for StoredToken {
    fn from(model: api_token::Model) -> Self {
        let api_token::Model {
            id,
            caller,
            token_hash: _,
            sites,
            permissions,
            created_at,
            revoked_at,
            expires_at,
            uid,
        } = model;
        Self {
            id,
            caller,
            sites,
            permissions,
            created_at,
            revoked_at,
            expires_at,
            uid,
        }
    }
}

/// An active token found by its hash, with the stored hash for a
/// constant-time comparison by the caller.
#[derive(Debug, Clone)]
pub struct TokenMatch {
    pub token: StoredToken,
    pub token_hash: String,
}

/// Handle to the `api_tokens` table; cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenStore {
    db: DatabaseConnection,
    /// The server's breaker; `None` for the command line.
    health: Option<Arc<DbHealth>>,
}

impl TokenStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, health: None }
    }

    /// A store that fails at once while the server's breaker is open.
    pub fn with_health(db: DatabaseConnection, health: Arc<DbHealth>) -> Self {
        Self {
            db,
            health: Some(health),
        }
    }

    /// Runs a lookup through the server's breaker, if any.
    async fn guarded<T, F, Fut>(&self, step: F) -> StorageResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        match &self.health {
            Some(health) => health.guarded(step).await,
            None => step().await,
        }
    }

    /// Stores a new token's hash, valid until revoked; returns its id.
    pub async fn create(
        &self,
        caller: &str,
        token_hash: &str,
        sites: &str,
        permissions: &str,
    ) -> StorageResult<i64> {
        self.create_expiring(caller, token_hash, sites, permissions, None)
            .await
    }

    /// Stores a new user token's hash: bound to one site and one uid, with
    /// the user-token permissions, until `expires_at`; returns its id.
    pub async fn create_user_token(
        &self,
        caller: &str,
        token_hash: &str,
        api_key: &str,
        uid: &str,
        permissions: &str,
        expires_at: DateTime<Utc>,
    ) -> StorageResult<i64> {
        self.prune_expired_user_tokens().await;
        self.insert(
            caller,
            token_hash,
            api_key,
            permissions,
            Some(expires_at),
            Some(uid),
        )
        .await
    }

    /// Deletes user tokens that expired over a day ago (until then a late
    /// call is told TOKEN_EXPIRED rather than "invalid"), at most once a
    /// minute per process: a site mints one per page view, so they would
    /// pile up. A failure only delays the clean-up.
    async fn prune_expired_user_tokens(&self) {
        /// Unix seconds of this process's last clean-up.
        static PRUNED_AT: AtomicI64 = AtomicI64::new(0);
        let now = Utc::now();
        let last = PRUNED_AT.load(Ordering::Relaxed);
        if now.timestamp() - last < 60
            || PRUNED_AT
                .compare_exchange(last, now.timestamp(), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let deleted = api_token::Entity::delete_many()
            .filter(api_token::Column::Uid.is_not_null())
            .filter(api_token::Column::ExpiresAt.lt(now - chrono::Duration::days(1)))
            .exec(&self.db)
            .await;
        match deleted {
            Ok(result) if result.rows_affected > 0 => {
                tracing::debug!(
                    deleted = result.rows_affected,
                    "expired user tokens deleted"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot delete expired user tokens"),
        }
    }

    /// Stores a new token's hash that stops working at `expires_at`;
    /// returns its id.
    pub async fn create_expiring(
        &self,
        caller: &str,
        token_hash: &str,
        sites: &str,
        permissions: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> StorageResult<i64> {
        self.insert(caller, token_hash, sites, permissions, expires_at, None)
            .await
    }

    async fn insert(
        &self,
        caller: &str,
        token_hash: &str,
        sites: &str,
        permissions: &str,
        expires_at: Option<DateTime<Utc>>,
        uid: Option<&str>,
    ) -> StorageResult<i64> {
        let model = api_token::ActiveModel {
            caller: Set(caller.to_owned()),
            token_hash: Set(token_hash.to_owned()),
            sites: Set(sites.to_owned()),
            permissions: Set(permissions.to_owned()),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
            expires_at: Set(expires_at),
            uid: Set(uid.map(str::to_owned)),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        Ok(model.id)
    }

    /// Every token, active or revoked, oldest first.
    pub async fn list(&self) -> StorageResult<Vec<StoredToken>> {
        Ok(api_token::Entity::find()
            .order_by_asc(api_token::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(StoredToken::from)
            .collect())
    }

    /// The active token with this hash, if any.
    pub async fn active_by_hash(&self, token_hash: &str) -> StorageResult<Option<TokenMatch>> {
        let found = self
            .guarded(|| async {
                Ok(api_token::Entity::find()
                    .filter(api_token::Column::TokenHash.eq(token_hash))
                    .filter(api_token::Column::RevokedAt.is_null())
                    .one(&self.db)
                    .await?)
            })
            .await?;
        Ok(found.map(|model| TokenMatch {
            token_hash: model.token_hash.clone(),
            token: model.into(),
        }))
    }

    /// Whether any token is active: decides between open and authenticated
    /// mode. User tokens do not count: they can administer nothing, so
    /// minting one (e.g. on a development server) must not lock everyone
    /// else out; the gate honours them in open mode too.
    pub async fn any_active(&self) -> StorageResult<bool> {
        let count = self
            .guarded(|| async {
                Ok(api_token::Entity::find()
                    .filter(api_token::Column::RevokedAt.is_null())
                    .filter(api_token::Column::Uid.is_null())
                    .count(&self.db)
                    .await?)
            })
            .await?;
        Ok(count > 0)
    }

    /// Revokes every active token of `caller`; returns how many.
    pub async fn revoke_caller(&self, caller: &str) -> StorageResult<u64> {
        self.revoke(api_token::Column::Caller.eq(caller)).await
    }

    /// Revokes every active user token of `uid` on the site `api_key`;
    /// returns how many.
    pub async fn revoke_user(&self, api_key: &str, uid: &str) -> StorageResult<u64> {
        let condition = sea_orm::Condition::all()
            .add(api_token::Column::Uid.eq(uid))
            .add(api_token::Column::Sites.eq(api_key));
        self.revoke(condition).await
    }

    /// Revokes the token with this id if it is active; returns 0 or 1.
    pub async fn revoke_id(&self, id: i64) -> StorageResult<u64> {
        self.revoke(api_token::Column::Id.eq(id)).await
    }

    async fn revoke(&self, condition: impl Into<sea_orm::Condition>) -> StorageResult<u64> {
        let result = api_token::Entity::update_many()
            .col_expr(api_token::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(condition)
            .filter(api_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(StorageError::from)?;
        Ok(result.rows_affected)
    }
}
