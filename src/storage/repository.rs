//! The repository: every SQL statement and transaction of the service lives
//! under `storage`. Methods take validated domain types and return domain
//! types; SeaORM models never leave this module tree.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::Notify;

use super::{
    action_secrets::{self, ActionSecret},
    entities::{account, identity, login_id, site},
    error::{StorageError, StorageResult},
    health::DbHealth,
    secrets::SessionSealer,
};
use crate::domain::{
    Account, AccountView, ApiKey, DomainError, Identity, IdentityState, IdentityView, LoginId,
    NewIdentity, NewLoginId, Site, SiteSettings, Uid, Vhost,
    account::{check_dropped_login_ids, distinct_login_ids},
    link::{self, ExistingMapping, LinkAction, LinkOutcome},
};

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Repository {
    db: DatabaseConnection,
    sealer: SessionSealer,
    /// Shared by every clone: whether the database answers.
    health: Arc<DbHealth>,
    /// Woken after a transaction that wrote outbox rows commits.
    outbox_written: Arc<Notify>,
    /// SQLite: one write transaction at a time in this process, taken in
    /// arrival order. SQLite allows one writer; without this, writers that
    /// find the lock taken sleep in its busy handler (1 ms, 2 ms, ... up to
    /// 100 ms at a time) and wake late, long after the lock was free.
    write_turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// A write transaction that holds this process's SQLite write turn (if
/// any) until it commits, rolls back or is dropped.
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

// Database spans (`db.*`, children of the call's span) use `skip_all`:
// arguments can carry provider session tokens, which are never logged.
impl Repository {
    pub fn new(db: DatabaseConnection, sealer: SessionSealer) -> Self {
        let write_turn =
            (!super::db::is_postgres(&db)).then(|| Arc::new(tokio::sync::Mutex::new(())));
        Self {
            health: DbHealth::new(db.clone()),
            db,
            sealer,
            outbox_written: Arc::new(Notify::new()),
            write_turn,
        }
    }

    /// The database breaker shared by this repository's clones.
    pub fn health(&self) -> &Arc<DbHealth> {
        &self.health
    }

    /// Refuses at once while the database is known to be unavailable.
    pub fn check_available(&self) -> StorageResult<()> {
        self.health.check()
    }

    /// Call after committing a transaction that appended outbox rows.
    pub fn outbox_committed(&self) {
        self.outbox_written.notify_one();
    }

    /// What the sequencer waits on for in-process wake-ups.
    pub fn outbox_notifier(&self) -> Arc<Notify> {
        self.outbox_written.clone()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) fn sealer(&self) -> &SessionSealer {
        &self.sealer
    }

    /// The API token table, on the same connection pool and breaker.
    pub fn tokens(&self) -> super::TokenStore {
        super::TokenStore::with_health(self.db.clone(), self.health.clone())
    }

    /// The application key and nonce tables, on the same pool, sealing
    /// with the server's secret key.
    pub fn app_keys(&self) -> super::AppKeyStore {
        super::AppKeyStore::new(self.db.clone(), self.sealer.clone())
    }

    /// Closes the connection pool (at shutdown).
    pub async fn close(&self) {
        let _ = self.db.clone().close().await;
    }

    pub fn is_postgres(&self) -> bool {
        super::db::is_postgres(&self.db)
    }

    /// Whether outbox rows get their positions when they are written (SQLite,
    /// see `outbox`), so that a commit is already a delivery of sequenced events.
    pub fn sequences_on_write(&self) -> bool {
        !self.is_postgres()
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: a
    /// deferred transaction that upgrades to a write can fail with SQLITE_BUSY
    /// even with a busy timeout.
    #[tracing::instrument(skip_all, name = "db.begin_write")]
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let turn = match &self.write_turn {
            Some(turn) => Some(turn.clone().lock_owned().await),
            None => None,
        };
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await?;
        Ok(WriteTxn { txn, _turn: turn })
    }

    /// Cheap query used by the health check.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    /// Creates or updates a site. `action_secret`, when given, becomes the
    /// site's action secret if it has none yet (in the same transaction).
    #[tracing::instrument(skip_all, name = "db.upsert_site")]
    pub async fn upsert_site(
        &self,
        settings: SiteSettings,
        action_secret: Option<&ActionSecret>,
    ) -> StorageResult<(Site, bool)> {
        let txn = self.begin_write().await?;
        let now = Utc::now();
        let origins = serde_json::to_string(&settings.allowed_redirect_origins)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let browser_origins = serde_json::to_string(&settings.allowed_browser_origins)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let vhost_owner = site::Entity::find()
            .filter(site::Column::Vhost.eq(settings.vhost.get()))
            .one(&*txn)
            .await?;
        if let Some(owner) = &vhost_owner
            && owner.api_key != settings.api_key.as_str()
        {
            return Err(DomainError::VhostInUse {
                vhost: settings.vhost.get(),
            }
            .into());
        }
        let existing = site::Entity::find()
            .filter(site::Column::ApiKey.eq(settings.api_key.as_str()))
            .one(&*txn)
            .await?;
        let created = existing.is_none();
        let model = match existing {
            Some(found) => {
                let mut active: site::ActiveModel = found.into();
                active.vhost = Set(settings.vhost.get());
                active.name = Set(settings.name);
                active.unlink_action_enabled = Set(settings.unlink_action_enabled);
                active.allowed_redirect_origins = Set(origins);
                active.allowed_browser_origins = Set(browser_origins);
                active.updated_at = Set(now);
                active.update(&*txn).await
            }
            None => {
                site::ActiveModel {
                    api_key: Set(settings.api_key.into_string()),
                    vhost: Set(settings.vhost.get()),
                    name: Set(settings.name),
                    unlink_action_enabled: Set(settings.unlink_action_enabled),
                    allowed_redirect_origins: Set(origins),
                    allowed_browser_origins: Set(browser_origins),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&*txn)
                .await
            }
        };
        // A concurrent upsert may have taken the vhost between check and write.
        let model = model.map_err(|err| {
            if StorageError::is_unique_violation(&err) {
                StorageError::Rule(DomainError::VhostInUse {
                    vhost: settings.vhost.get(),
                })
            } else {
                err.into()
            }
        })?;
        if let Some(secret) = action_secret {
            action_secrets::store(&txn, &self.sealer, model.id, secret, false).await?;
        }
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok((site_from_model(model)?, created))
    }

    #[tracing::instrument(skip_all, name = "db.site_by_api_key")]
    pub async fn site_by_api_key(&self, api_key: &ApiKey) -> StorageResult<Site> {
        site_from_model(find_site_by_api_key(&self.db, api_key).await?)
    }

    #[tracing::instrument(skip_all, name = "db.site_by_vhost")]
    pub async fn site_by_vhost(&self, vhost: Vhost) -> StorageResult<Site> {
        site_from_model(find_site_by_vhost(&self.db, vhost).await?)
    }

    #[tracing::instrument(skip_all, name = "db.upsert_account")]
    pub async fn upsert_account(
        &self,
        api_key: &ApiKey,
        uid: &Uid,
        login_ids: Vec<NewLoginId>,
    ) -> StorageResult<(Account, bool)> {
        distinct_login_ids(&login_ids)?;
        let txn = self.begin_write().await?;
        let site = find_site_by_api_key(&*txn, api_key).await?;
        let now = Utc::now();
        let existing = self.lock_account_row(&txn, &site, uid).await;
        let (row, created) = match existing {
            Ok(row) => (row, false),
            Err(StorageError::Rule(DomainError::AccountNotFound)) => {
                let row = account::ActiveModel {
                    site_id: Set(site.id),
                    uid: Set(uid.as_str().to_owned()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&*txn)
                .await?;
                (row, true)
            }
            Err(other) => return Err(other),
        };
        let current = load_account(&*txn, &site, row.clone()).await?;
        check_dropped_login_ids(&current, &login_ids)?;
        login_id::Entity::delete_many()
            .filter(login_id::Column::AccountId.eq(row.id))
            .exec(&*txn)
            .await?;
        for new in &login_ids {
            insert_login_id(&*txn, site.id, row.id, new.value.as_str(), new.has_password).await?;
        }
        let mut active: account::ActiveModel = row.into();
        active.updated_at = Set(now);
        let row = active.update(&*txn).await?;
        let account = load_account(&*txn, &site, row).await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok((account, created))
    }

    #[tracing::instrument(skip_all, name = "db.account")]
    pub async fn account(&self, api_key: &ApiKey, uid: &Uid) -> StorageResult<Account> {
        let site = find_site_by_api_key(&self.db, api_key).await?;
        let row = find_account(&self.db, &site, uid).await?;
        load_account(&self.db, &site, row).await
    }

    #[tracing::instrument(skip_all, name = "db.link_connection")]
    pub async fn link_connection(
        &self,
        api_key: &ApiKey,
        uid: &Uid,
        new: NewIdentity,
    ) -> StorageResult<LinkOutcome> {
        let sealed = new
            .session
            .as_ref()
            .map(|s| self.sealer.seal(s))
            .transpose()
            .map_err(StorageError::Corrupt)?;
        let txn = self.begin_write().await?;
        let (site, account_row) = self
            .lock_site_account(&txn, SiteKey::ApiKey(api_key), uid)
            .await?;
        let account_row = account_row.ok_or(StorageError::Rule(DomainError::AccountNotFound))?;
        let now = Utc::now();

        if let Some(login) = &new.login_id {
            let owner = login_id::Entity::find()
                .filter(login_id::Column::SiteId.eq(site.id))
                .filter(login_id::Column::LoginId.eq(login.as_str()))
                .one(&*txn)
                .await?
                .map(|row| row.account_id);
            if link::login_id_needs_adding(account_row.id, login.as_str(), owner)? {
                insert_login_id(&*txn, site.id, account_row.id, login.as_str(), false).await?;
            }
        }

        let existing = identity::Entity::find()
            .filter(identity::Column::SiteId.eq(site.id))
            .filter(identity::Column::Provider.eq(new.provider.as_str()))
            .filter(identity::Column::SubProvider.eq(new.sub_provider.as_str()))
            .filter(identity::Column::ProviderUid.eq(new.provider_uid.as_str()))
            .one(&*txn)
            .await?;
        let mapping = existing
            .as_ref()
            .map(|row| {
                let state = IdentityState::parse(&row.state).ok_or_else(|| {
                    StorageError::Corrupt(format!("identity {} has state {:?}", row.id, row.state))
                })?;
                Ok::<_, StorageError>(ExistingMapping {
                    identity_id: row.id,
                    account_id: row.account_id,
                    state,
                })
            })
            .transpose()?;
        let (row, reactivated) = match (link::plan_link(account_row.id, mapping)?, existing) {
            (LinkAction::Refresh { reactivated, .. }, Some(row)) => {
                let mut active: identity::ActiveModel = row.into();
                active.state = Set(IdentityState::Active.as_str().to_owned());
                if new.login_id.is_some() {
                    active.login_id = Set(new.login_id.as_ref().map(|l| l.as_str().to_owned()));
                }
                if sealed.is_some() {
                    active.session = Set(sealed);
                }
                active.updated_at = Set(now);
                (active.update(&*txn).await?, reactivated)
            }
            (LinkAction::Refresh { identity_id, .. }, None) => {
                return Err(StorageError::Corrupt(format!(
                    "identity {identity_id} vanished under the account lock"
                )));
            }
            (LinkAction::Create, _) => {
                let inserted = identity::ActiveModel {
                    site_id: Set(site.id),
                    account_id: Set(account_row.id),
                    provider: Set(new.provider.clone()),
                    sub_provider: Set(new.sub_provider.clone()),
                    provider_uid: Set(new.provider_uid.as_str().to_owned()),
                    login_id: Set(new.login_id.as_ref().map(|l| l.as_str().to_owned())),
                    state: Set(IdentityState::Active.as_str().to_owned()),
                    session: Set(sealed),
                    linked_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&*txn)
                .await
                .map_err(|err| {
                    // Another account linked it concurrently.
                    if StorageError::is_unique_violation(&err) {
                        StorageError::Rule(DomainError::IdentityLinkedElsewhere)
                    } else {
                        err.into()
                    }
                })?;
                (inserted, false)
            }
        };
        let account_row = touch_account(&*txn, account_row, now).await?;
        let identity = IdentityView::of(&identity_from_model(&row)?);
        let account = AccountView::of(&load_account(&*txn, &site, account_row).await?);
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok(LinkOutcome {
            identity,
            reactivated,
            account,
        })
    }

    /// Finds the account and, on PostgreSQL, locks its row until the
    /// transaction ends. On SQLite the IMMEDIATE transaction already holds the
    /// database's single write lock.
    pub(crate) async fn lock_account_row(
        &self,
        txn: &DatabaseTransaction,
        site: &site::Model,
        uid: &Uid,
    ) -> StorageResult<account::Model> {
        let mut query = account::Entity::find()
            .filter(account::Column::SiteId.eq(site.id))
            .filter(account::Column::Uid.eq(uid.as_str()));
        if self.is_postgres() {
            query = query.lock_exclusive();
        }
        query
            .one(txn)
            .await?
            .ok_or(StorageError::Rule(DomainError::AccountNotFound))
    }

    /// The site and, when it exists, the account, in one round trip; on
    /// PostgreSQL the account row (only) is locked until the transaction
    /// ends. A missing account costs a second read that tells a missing site
    /// apart, so the caller can apply the site's rules before refusing.
    pub(crate) async fn lock_site_account(
        &self,
        txn: &DatabaseTransaction,
        site_key: SiteKey<'_>,
        uid: &Uid,
    ) -> StorageResult<(site::Model, Option<account::Model>)> {
        let mut query = account::Entity::find()
            .find_also_related(site::Entity)
            .filter(account::Column::Uid.eq(uid.as_str()))
            .filter(site_key.condition());
        if self.is_postgres() {
            // `FOR UPDATE OF accounts`: locking the site row too would make
            // every removal on a site wait for the one before it.
            sea_orm::QueryTrait::query(&mut query)
                .lock_with_tables(sea_orm::sea_query::LockType::Update, [account::Entity]);
        }
        if let Some((account, Some(site))) = query.one(txn).await? {
            return Ok((site, Some(account)));
        }
        let site = site::Entity::find()
            .filter(site_key.condition())
            .one(txn)
            .await?
            .ok_or(StorageError::Rule(DomainError::SiteNotFound))?;
        Ok((site, None))
    }
}

/// How a request names its site.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SiteKey<'a> {
    ApiKey(&'a ApiKey),
    Vhost(Vhost),
}

impl SiteKey<'_> {
    fn condition(self) -> sea_orm::Condition {
        let condition = sea_orm::Condition::all();
        match self {
            SiteKey::ApiKey(key) => condition.add(site::Column::ApiKey.eq(key.as_str())),
            SiteKey::Vhost(vhost) => condition.add(site::Column::Vhost.eq(vhost.get())),
        }
    }
}

pub(crate) async fn find_site_by_api_key<C: ConnectionTrait>(
    conn: &C,
    api_key: &ApiKey,
) -> StorageResult<site::Model> {
    site::Entity::find()
        .filter(site::Column::ApiKey.eq(api_key.as_str()))
        .one(conn)
        .await?
        .ok_or(StorageError::Rule(DomainError::SiteNotFound))
}

pub(crate) async fn find_site_by_vhost<C: ConnectionTrait>(
    conn: &C,
    vhost: Vhost,
) -> StorageResult<site::Model> {
    site::Entity::find()
        .filter(site::Column::Vhost.eq(vhost.get()))
        .one(conn)
        .await?
        .ok_or(StorageError::Rule(DomainError::SiteNotFound))
}

pub(crate) async fn find_account<C: ConnectionTrait>(
    conn: &C,
    site: &site::Model,
    uid: &Uid,
) -> StorageResult<account::Model> {
    account::Entity::find()
        .filter(account::Column::SiteId.eq(site.id))
        .filter(account::Column::Uid.eq(uid.as_str()))
        .one(conn)
        .await?
        .ok_or(StorageError::Rule(DomainError::AccountNotFound))
}

/// Reads an account's login IDs and identities.
pub(crate) async fn load_account<C: ConnectionTrait>(
    conn: &C,
    site: &site::Model,
    row: account::Model,
) -> StorageResult<Account> {
    let login_ids = login_id::Entity::find()
        .filter(login_id::Column::AccountId.eq(row.id))
        .order_by_asc(login_id::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(|l| LoginId {
            value: l.login_id,
            has_password: l.has_password,
        })
        .collect();
    let identities = identity::Entity::find()
        .filter(identity::Column::AccountId.eq(row.id))
        .order_by_asc(identity::Column::Id)
        .all(conn)
        .await?
        .iter()
        .map(identity_from_model)
        .collect::<StorageResult<Vec<_>>>()?;
    Ok(Account {
        id: row.id,
        api_key: site.api_key.clone(),
        vhost: site.vhost,
        uid: row.uid,
        login_ids,
        identities,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub(crate) async fn touch_account<C: ConnectionTrait>(
    conn: &C,
    row: account::Model,
    now: chrono::DateTime<Utc>,
) -> StorageResult<account::Model> {
    let mut active: account::ActiveModel = row.into();
    active.updated_at = Set(now);
    Ok(active.update(conn).await?)
}

async fn insert_login_id<C: ConnectionTrait>(
    conn: &C,
    site_id: i64,
    account_id: i64,
    value: &str,
    has_password: bool,
) -> StorageResult<()> {
    login_id::ActiveModel {
        site_id: Set(site_id),
        account_id: Set(account_id),
        login_id: Set(value.to_owned()),
        has_password: Set(has_password),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(conn)
    .await
    .map_err(|err| {
        if StorageError::is_unique_violation(&err) {
            StorageError::Rule(DomainError::LoginIdTaken {
                login_id: value.to_owned(),
            })
        } else {
            err.into()
        }
    })?;
    Ok(())
}

pub(crate) fn site_from_model(model: site::Model) -> StorageResult<Site> {
    let allowed_redirect_origins = serde_json::from_str(&model.allowed_redirect_origins)
        .map_err(|e| StorageError::Corrupt(format!("site {} origins: {e}", model.id)))?;
    let allowed_browser_origins = serde_json::from_str(&model.allowed_browser_origins)
        .map_err(|e| StorageError::Corrupt(format!("site {} browser origins: {e}", model.id)))?;
    Ok(Site {
        id: model.id,
        api_key: model.api_key,
        vhost: model.vhost,
        name: model.name,
        unlink_action_enabled: model.unlink_action_enabled,
        allowed_redirect_origins,
        allowed_browser_origins,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

pub(crate) fn identity_from_model(model: &identity::Model) -> StorageResult<Identity> {
    let state = IdentityState::parse(&model.state).ok_or_else(|| {
        StorageError::Corrupt(format!("identity {} state {:?}", model.id, model.state))
    })?;
    Ok(Identity {
        id: model.id,
        provider: model.provider.clone(),
        sub_provider: model.sub_provider.clone(),
        provider_uid: model.provider_uid.clone(),
        login_id: model.login_id.clone(),
        state,
        has_session: model.session.is_some(),
        linked_at: model.linked_at,
        updated_at: model.updated_at,
    })
}
