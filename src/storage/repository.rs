//! The repository: every SQL statement and transaction of the service lives
//! under `storage`. Methods take validated domain types and return domain
//! types; SeaORM models never leave this module tree.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use chrono::{SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, IdenStatic, Iterable, QueryFilter,
    QuerySelect, RuntimeErr, TransactionTrait,
};
use tokio::sync::Notify;

use super::{
    action_secrets::{self, ActionSecret},
    direct_reads::DirectReads,
    entities::{account, idempotency_key, login_id, site},
    error::{StorageError, StorageResult},
    group_commit::{self, FastTxn, GroupCommit, GroupCommitStats, Raw, Rows, WriteTxn, Writes},
    health::DbHealth,
    link_write::{LinkTarget, LinkWrite, apply_link},
    removal::Applied,
    secrets::SessionSealer,
    sql::{ReadRow, Sql},
    write_batch::{Guarded, WriteBatches},
};
use crate::domain::{
    Account, AccountView, ApiKey, DomainError, Identity, IdentityState, IdentityView, LoginId,
    NewIdentity, NewLoginId, Site, SiteSettings, Uid, Vhost,
    account::{check_dropped_login_ids, distinct_login_ids},
    link::{self, ExistingMapping, LinkAction, LinkOutcome},
};

/// A write of raw statements (see [`Repository::begin_raw_write`]).
pub struct RawWrite(FastTxn);

impl RawWrite {
    /// Runs statements that take no values.
    pub async fn execute(&mut self, sql: &str) -> Result<(), DbErr> {
        self.0.raw().execute_unprepared(sql).await
    }

    /// Keeps the write; returns once it is committed (with its batch).
    pub async fn commit(self) -> Result<(), DbErr> {
        self.0.commit().await
    }

    /// Discards the write (only this one: its batch goes on).
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.0.rollback().await
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Repository {
    db: DatabaseConnection,
    sealer: SessionSealer,
    /// Shared by every clone: whether the database answers.
    health: Arc<DbHealth>,
    /// Woken after a transaction that wrote outbox rows commits.
    outbox_wake: Arc<super::outbox::OutboxWake>,
    /// SQLite: the write turn (one writer at a time in this process, taken
    /// in arrival order) and group commit. SQLite allows one writer; without
    /// this, writers that find the lock taken sleep in its busy handler (1
    /// ms, 2 ms, ... up to 100 ms at a time) and wake late, long after the
    /// lock was free. None on PostgreSQL.
    group: Option<Arc<GroupCommit>>,
    /// PostgreSQL: the queue that lets concurrent unlocked removals and
    /// links share their guarded write statement (see `write_batch`). None
    /// on SQLite.
    guarded_writes: Option<Arc<WriteBatches>>,
    /// SQLite: event pages read off the runtime's threads (see
    /// `direct_reads`). None on PostgreSQL.
    direct_reads: Option<DirectReads>,
}

// Database spans (`db.*`, children of the call's span) use `skip_all`:
// arguments can carry provider session tokens, which are never logged.
impl Repository {
    pub fn new(db: DatabaseConnection, sealer: SessionSealer) -> Self {
        Self::with_group_commit_max_age(db, sealer, group_commit::MAX_AGE)
    }

    /// [`Repository::new`], where a SQLite group-commit batch commits once it
    /// has been open `max_age` (see `PoolSettings::group_commit_max_age`).
    pub fn with_group_commit_max_age(
        db: DatabaseConnection,
        sealer: SessionSealer,
        max_age: Duration,
    ) -> Self {
        let postgres = super::db::is_postgres(&db);
        let group = (!postgres).then(|| Arc::new(GroupCommit::new(db.clone(), max_age)));
        let guarded_writes = postgres.then(|| Arc::new(WriteBatches::new(db.clone())));
        let direct_reads = (!postgres).then(|| DirectReads::new(db.clone()));
        Self {
            health: DbHealth::new(db.clone()),
            outbox_wake: Arc::new(super::outbox::OutboxWake::new(&db)),
            db,
            sealer,
            group,
            guarded_writes,
            direct_reads,
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
        self.outbox_wake.committed();
    }

    /// What the sequencer waits on for in-process wake-ups.
    pub fn outbox_notifier(&self) -> Arc<Notify> {
        self.outbox_wake.local()
    }

    /// Whether this replica's sequencer leads. While it does, commits here
    /// wake it in-process only; while it does not, they also `NOTIFY` the
    /// leader (see `outbox::OutboxWake`).
    pub fn set_sequencer_leading(&self, leading: bool) {
        self.outbox_wake.set_leading(leading);
    }

    /// SQLite's readers off the runtime's threads; None on PostgreSQL.
    pub(super) fn direct_reads(&self) -> Option<&DirectReads> {
        self.direct_reads.as_ref()
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
        super::AppKeyStore::new(self.db.clone(), self.sealer.clone()).with_group(self.group.clone())
    }

    /// Closes the connection pool (at shutdown).
    pub async fn close(&self) {
        if let Some(writes) = &self.guarded_writes {
            writes.close().await;
        }
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

    /// Starts a write transaction. On SQLite it joins the open batch of
    /// the group commit (see `group_commit`), whose transaction is `BEGIN
    /// IMMEDIATE`: a deferred transaction that upgrades to a write can fail
    /// with SQLITE_BUSY even with a busy timeout.
    #[tracing::instrument(skip_all, name = "db.begin_write")]
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        self.begin_write_of(Writes::Several).await
    }

    /// [`Self::begin_write`] for a caller whose writes are one atomic step
    /// (see [`Writes::Atomic`]): on SQLite it joins a batch without a
    /// savepoint of its own.
    pub(crate) async fn begin_write_of(&self, writes: Writes) -> Result<WriteTxn, DbErr> {
        match &self.group {
            Some(group) => group.join(writes).await,
            // A call that must open a connection just as the database goes
            // away would wait out the pool's timeout (sqlx retries refused
            // connections until then); once the breaker opens it is refused
            // like the calls after it. Nothing was written yet.
            None => Ok(WriteTxn::own(
                self.unless_unavailable(self.db.begin()).await?,
            )),
        }
    }

    /// [`Self::begin_write_of`] for a write whose statements all go through
    /// [`FastTxn::raw`]: on SQLite on the direct connection (see `direct`).
    pub(crate) async fn begin_write_fast(&self, writes: Writes) -> Result<FastTxn, DbErr> {
        match &self.group {
            Some(group) => group.join_direct(writes).await,
            None => self.begin_write_of(writes).await.map(FastTxn::from),
        }
    }

    /// A write transaction of raw statements on the path the hot writes
    /// take (on SQLite the direct connection, in the write turn's batch):
    /// for tools and tests that must hold that path's write turn.
    pub async fn begin_raw_write(&self) -> Result<RawWrite, DbErr> {
        self.begin_write_fast(Writes::Several).await.map(RawWrite)
    }

    /// `work` (which has written nothing yet when dropped: a BEGIN, a read),
    /// refused as soon as the breaker opens.
    async fn unless_unavailable<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, DbErr>>,
    ) -> Result<T, DbErr> {
        tokio::select! {
            biased;
            done = work => done,
            () = self.health.opened() => Err(DbErr::Conn(RuntimeErr::Internal(
                "the database stopped answering".into(),
            ))),
        }
    }

    /// One write statement as a write of its own, returning its rows (see
    /// [`group_commit::write_one`]).
    pub(crate) async fn write_one(&self, statement: sea_orm::Statement) -> StorageResult<Rows> {
        group_commit::write_one(&self.db, self.group.as_deref(), statement).await
    }

    /// SQLite group commit: batches committed and the writes they carried
    /// (None on PostgreSQL).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(|g| g.stats())
    }

    /// The queue an unlocked (guarded) write goes through. Only PostgreSQL
    /// reads unlocked, and only PostgreSQL has one.
    pub(super) fn shared_writes(&self) -> StorageResult<&WriteBatches> {
        self.guarded_writes
            .as_deref()
            .ok_or_else(|| StorageError::Corrupt("an unlocked write without shared writes".into()))
    }

    /// PostgreSQL: shared guarded write statements run, the removals and
    /// links they carried, and those sent back under the lock (None on
    /// SQLite).
    pub fn write_batch_stats(&self) -> Option<super::WriteBatchStats> {
        self.guarded_writes.as_ref().map(|b| b.stats())
    }

    /// SQLite: writers waiting for the write turn (0 on PostgreSQL).
    pub fn writers_queued(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.queued())
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
        site_from_model(find_site(&self.db, SiteKey::ApiKey(api_key)).await?)
    }

    #[tracing::instrument(skip_all, name = "db.site_by_vhost")]
    pub async fn site_by_vhost(&self, vhost: Vhost) -> StorageResult<Site> {
        site_from_model(find_site(&self.db, SiteKey::Vhost(vhost)).await?)
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
        let site = find_site(&*txn, SiteKey::ApiKey(api_key)).await?;
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
            insert_login_id(
                &mut Raw::Orm(&txn),
                site.id,
                row.id,
                new.value.as_str(),
                new.has_password,
            )
            .await?;
        }
        let mut active: account::ActiveModel = row.into();
        active.updated_at = Set(now);
        let row = active.update(&*txn).await?;
        let account = load_account(&*txn, &site, row).await?;
        txn.commit().await.map_err(StorageError::from_commit)?;
        Ok((account, created))
    }

    /// The site, the account and its rows in one statement, so one round
    /// trip and one snapshot (a second one only to tell a missing site from
    /// a missing account).
    #[tracing::instrument(skip_all, name = "db.account")]
    pub async fn account(&self, api_key: &ApiKey, uid: &Uid) -> StorageResult<Account> {
        let site_key = SiteKey::ApiKey(api_key);
        let mut sql = Sql::new(self.db.get_database_backend());
        push_load(&mut sql, site_key, uid, None, None, ReadAs::default());
        let rows = self.db.query_all_raw(sql.into_statement()).await?;
        let Loaded { account, .. } =
            collect_loaded(&self.db, site_key, &rows, ReadAs::default()).await?;
        account
            .map(|(account, _)| account)
            .ok_or(StorageError::Rule(DomainError::AccountNotFound))
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
        let login = new.login_id.as_ref().map(|l| l.as_str());
        let site_key = SiteKey::ApiKey(api_key);
        if self.is_postgres() {
            // Two round trips instead of four (BEGIN, lock and read, write,
            // COMMIT), as removals; after a conflict, the locked transaction.
            let loaded = self
                .load_unlocked(site_key, uid, Some(&new), login, None)
                .await?;
            if let Some(outcome) = self.link_in(None, loaded, &new, sealed.as_ref()).await? {
                return Ok(outcome);
            }
        }
        let mut txn = self.begin_write_fast(Writes::Several).await?;
        let linked = async {
            let mut raw = txn.raw();
            let loaded = self
                .lock_and_load(&mut raw, site_key, uid, Some(&new), login, None)
                .await?;
            self.link_in(Some(&mut raw), loaded, &new, sealed.as_ref())
                .await?
                .ok_or_else(|| StorageError::Corrupt("a link under the lock did not write".into()))
        }
        .await;
        match linked {
            Ok(outcome) => {
                txn.commit().await.map_err(StorageError::from_commit)?;
                Ok(outcome)
            }
            Err(err) => {
                // A refusal changes nothing; its rollback error matters less.
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }

    /// LinkConnection's plan and write, on what `loaded` read: under the
    /// account lock (`lock_and_load`, in the caller's transaction), or
    /// outside a transaction, guarded by the account row's version that
    /// `load_unlocked` read (see `WriteSteps::guard_account`). `None`: not
    /// written, for the caller to run again under the lock: the account
    /// changed or was held, or the link adds a login ID (a write of its
    /// own, which needs the lock).
    async fn link_in(
        &self,
        mut conn: Option<&mut Raw<'_>>,
        loaded: Loaded,
        new: &NewIdentity,
        sealed: Option<&Vec<u8>>,
    ) -> StorageResult<Option<LinkOutcome>> {
        let login = new.login_id.as_ref().map(|l| l.as_str());
        let Loaded {
            site,
            account,
            version,
            ..
        } = loaded;
        let (mut account, found) =
            account.ok_or(StorageError::Rule(DomainError::AccountNotFound))?;
        // Microseconds: what both databases store, so the answer built here
        // equals what a later read returns.
        let now = Utc::now().trunc_subsecs(6);

        if let Some(login) = login
            && link::login_id_needs_adding(account.id, login, found.login_owner)?
        {
            if version.is_some() {
                return Ok(None);
            }
            let raw = conn
                .as_deref_mut()
                .ok_or_else(|| StorageError::Corrupt("a locked link without its write".into()))?;
            insert_login_id(raw, site.id, account.id, login, false).await?;
            account.login_ids.push(LoginId {
                value: login.to_owned(),
                has_password: false,
            });
        }

        // The identity's write and the account's touch, in one round trip.
        let action = link::plan_link(account.id, found.mapping)?;
        let target = match &action {
            LinkAction::Create => LinkTarget::Create {
                provider: new.provider.clone(),
                sub_provider: new.sub_provider.clone(),
                provider_uid: new.provider_uid.as_str().to_owned(),
            },
            LinkAction::Refresh { identity_id, .. } => LinkTarget::Refresh {
                identity_id: *identity_id,
            },
        };
        let write = LinkWrite {
            site_id: site.id,
            account_id: account.id,
            now,
            target,
            login: login.map(str::to_owned),
            sealed: sealed.cloned(),
        };
        let applied = match version {
            Some(version) => {
                self.shared_writes()?
                    .apply(Guarded::Link(write), version)
                    .await?
            }
            None => {
                let raw = conn.ok_or_else(|| {
                    StorageError::Corrupt("a locked link without its write".into())
                })?;
                apply_link(raw, &write).await?
            }
        };
        let identity_id = match applied {
            Applied::Linked(id) => id,
            // The guard did not match: nothing was written.
            Applied::Conflict => {
                crate::telemetry::metrics::storage().write_conflict();
                return Ok(None);
            }
            other => {
                return Err(StorageError::Corrupt(format!(
                    "a link's write answered {other:?}"
                )));
            }
        };

        // The answer comes from what this transaction wrote, not a re-read.
        account.updated_at = now;
        let (identity, reactivated) = match action {
            LinkAction::Create => {
                let identity = Identity {
                    id: identity_id,
                    provider: new.provider.clone(),
                    sub_provider: new.sub_provider.clone(),
                    provider_uid: new.provider_uid.as_str().to_owned(),
                    login_id: login.map(str::to_owned),
                    state: IdentityState::Active,
                    has_session: sealed.is_some(),
                    linked_at: now,
                    updated_at: now,
                };
                account.identities.push(identity.clone());
                (identity, false)
            }
            LinkAction::Refresh { reactivated, .. } => {
                let stored = account
                    .identities
                    .iter_mut()
                    .find(|i| i.id == identity_id)
                    .ok_or_else(|| {
                        StorageError::Corrupt(format!(
                            "identity {identity_id} is not the account's own"
                        ))
                    })?;
                stored.state = IdentityState::Active;
                if let Some(login) = login {
                    stored.login_id = Some(login.to_owned());
                }
                stored.has_session |= sealed.is_some();
                stored.updated_at = now;
                (stored.clone(), reactivated)
            }
        };
        Ok(Some(LinkOutcome {
            identity: IdentityView::of(&identity),
            reactivated,
            account: AccountView::of(&account),
        }))
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
}

/// What [`Repository::lock_and_load`] or [`Repository::load_unlocked`] found.
pub(crate) struct Loaded {
    pub site: site::Model,
    pub account: Option<(Account, LinkLookups)>,
    /// The account row's version (`xmin`), read only by
    /// [`Repository::load_unlocked`] (and only when the account exists).
    pub version: Option<String>,
    /// The request id's record, if the load was asked for it and it exists
    /// (read only when the account exists).
    pub record: Option<StoredRecord>,
}

impl Loaded {
    fn without_account(site: site::Model) -> Self {
        Self {
            site,
            account: None,
            version: None,
            record: None,
        }
    }
}

/// A request id's record, named by its scope and id.
#[derive(Clone, Copy)]
pub(crate) struct RecordKey<'a> {
    pub scope: &'a str,
    pub request_id: &'a str,
}

/// What a request id's record holds for a later call with the same id.
pub(crate) struct StoredRecord {
    pub fingerprint: String,
    pub response: String,
}

/// What a load reads besides the site, the account and its rows: the
/// account row's version (PostgreSQL, unlocked) and a request id's record,
/// in the same statement.
#[derive(Clone, Copy, Default)]
struct ReadAs<'a> {
    version: bool,
    record: Option<RecordKey<'a>>,
}

/// The site's and the account's columns for the `acc` CTE of
/// [`Repository::lock_and_load`], aliased `s_<column>` / `a_<column>` for
/// `FromQueryResult`'s prefixes; taken from the entities, so they follow the
/// schema.
static LOCKED_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    let site = site::Column::iter().map(|c| format!("s.{0} AS s_{0}", c.as_str()));
    let account = account::Column::iter().map(|c| format!("a.{0} AS a_{0}", c.as_str()));
    site.chain(account).collect::<Vec<_>>().join(", ")
});

impl Repository {
    /// The site, and the account (if it exists) with what a write needs of
    /// it, under the write's lock, in one round trip. On SQLite, whose
    /// write transaction already holds the database's one write lock, that
    /// is one statement. On PostgreSQL it is one call of
    /// `connections_lock_and_load` (see its migration): a statement that
    /// waited for the row lock reads the other tables in its snapshot from
    /// before the wait, so the lock and the read are two statements there,
    /// in one function. `record`: also that request id's record (SQLite: in
    /// the same statement; PostgreSQL: in one more, after the lock).
    pub(crate) async fn lock_and_load(
        &self,
        txn: &mut Raw<'_>,
        site_key: SiteKey<'_>,
        uid: &Uid,
        identity: Option<&NewIdentity>,
        login: Option<&str>,
        record: Option<RecordKey<'_>>,
    ) -> StorageResult<Loaded> {
        let mut sql = Sql::new(txn.backend());
        let postgres = self.is_postgres();
        // SQLite's one statement reads the record too; the function does not.
        let read = ReadAs {
            version: false,
            record: record.filter(|_| !postgres),
        };
        if postgres {
            let (api_key, vhost) = match site_key {
                SiteKey::ApiKey(key) => (Some(key.as_str()), None),
                SiteKey::Vhost(vhost) => (None, Some(vhost.get())),
            };
            sql.push("SELECT * FROM connections_lock_and_load(")
                .bind(api_key)
                .push(", ")
                .bind(vhost)
                .push(", ")
                .bind(uid.as_str())
                .push(", ")
                .bind(identity.map(|new| new.provider.as_str()))
                .push(", ")
                .bind(identity.map(|new| new.sub_provider.as_str()))
                .push(", ")
                .bind(identity.map(|new| new.provider_uid.as_str()))
                .push(", ")
                .bind(login)
                .push(")");
        } else {
            push_load(&mut sql, site_key, uid, identity, login, read);
        }
        // A missing site is told apart in the transaction, or on the pool
        // beside the direct connection (sites are written through SeaORM,
        // whose batches commit before a direct one begins).
        let mut loaded = match txn.query_all(sql.into_statement()).await? {
            Rows::Orm(rows) => {
                let orm = txn
                    .orm()
                    .ok_or_else(|| StorageError::Corrupt("SeaORM rows off SeaORM".into()))?;
                collect_loaded(orm, site_key, &rows, read).await?
            }
            Rows::Direct(rows) => collect_loaded(&self.db, site_key, &rows, read).await?,
        };
        if postgres && let (Some(key), Some(_)) = (record, &loaded.account) {
            // A statement after the lock, so it sees any first call that
            // committed before the lock was granted.
            let orm = txn
                .orm()
                .ok_or_else(|| StorageError::Corrupt("PostgreSQL off SeaORM".into()))?;
            loaded.record = find_record(orm, key).await?;
        }
        Ok(loaded)
    }

    /// PostgreSQL: what [`Self::lock_and_load`] reads, without a lock, in one
    /// statement (one snapshot), with the account row's version (`xmin`,
    /// which every write that changes the account's identities or login IDs
    /// moves, by touching the row under its lock). A write made only if the
    /// version is still the same (see `removal::apply`) acts on exactly
    /// what was read here; `record` reads that request id's record in the
    /// same snapshot, so a first call that committed before it is seen
    /// with its record, and one that commits after it moves the version.
    pub(crate) async fn load_unlocked(
        &self,
        site_key: SiteKey<'_>,
        uid: &Uid,
        identity: Option<&NewIdentity>,
        login: Option<&str>,
        record: Option<RecordKey<'_>>,
    ) -> StorageResult<Loaded> {
        let read = ReadAs {
            version: true,
            record,
        };
        let mut sql = Sql::new(self.db.get_database_backend());
        push_load(&mut sql, site_key, uid, identity, login, read);
        // The first touch of the database, as BEGIN is for a locked write.
        let rows = self
            .unless_unavailable(self.db.query_all_raw(sql.into_statement()))
            .await?;
        collect_loaded(&self.db, site_key, &rows, read).await
    }
}

/// One statement reading the site, the account and its rows (see
/// [`push_account_rows`]); as `read` asks, also the account row's `xmin` as
/// `row_version` (PostgreSQL only) and the record's `k_fingerprint` and
/// `k_response` (null without one). Unordered: [`collect_account`] orders
/// the rows (a sort in the statement costs PostgreSQL more than in Rust).
/// PostgreSQL reads the account's rows through a lateral join: one nested
/// loop over the account's row and two index scans, about a tenth cheaper
/// to run than the CTE that SQLite (which has no LATERAL) reads them with,
/// whose plan adds a materialised scan and a sub-plan per branch.
fn push_load(
    sql: &mut Sql,
    site_key: SiteKey<'_>,
    uid: &Uid,
    identity: Option<&NewIdentity>,
    login: Option<&str>,
    read: ReadAs<'_>,
) {
    let lateral = sql.backend() == DbBackend::Postgres;
    sql.push(if lateral {
        "SELECT "
    } else {
        "WITH acc AS (SELECT "
    })
    .push(&LOCKED_COLUMNS);
    if read.version {
        sql.push(", a.xmin::text AS row_version");
    }
    let record = read.record;
    if record.is_some() {
        sql.push(", k.fingerprint AS k_fingerprint, k.response AS k_response");
    }
    if lateral {
        sql.push(", x.*");
    }
    sql.push(" FROM accounts a JOIN sites s ON s.id = a.site_id");
    if let Some(key) = record {
        // The primary key: one row at most.
        sql.push(" LEFT JOIN idempotency_keys k ON k.scope = ")
            .bind(key.scope)
            .push(" AND k.request_id = ")
            .bind(key.request_id);
    }
    if lateral {
        sql.push(" LEFT JOIN LATERAL (");
        push_account_rows(sql, Anchor::Joined, identity, login);
        sql.push(") x ON TRUE");
    }
    sql.push(" WHERE a.uid = ").bind(uid.as_str());
    match site_key {
        SiteKey::ApiKey(key) => sql.push(" AND s.api_key = ").bind(key.as_str()),
        SiteKey::Vhost(vhost) => sql.push(" AND s.vhost = ").bind(vhost.get()),
    };
    if !lateral {
        sql.push(") SELECT acc.*, x.* FROM acc LEFT JOIN (");
        push_account_rows(sql, Anchor::Found, identity, login);
        sql.push(") x ON TRUE");
    }
}

/// The site and account from the rows of [`push_load`] or
/// `connections_lock_and_load`, with what [`push_load`] read as `read`.
async fn collect_loaded<C: ConnectionTrait, R: ReadRow>(
    conn: &C,
    site_key: SiteKey<'_>,
    rows: &[R],
    read: ReadAs<'_>,
) -> StorageResult<Loaded> {
    let Some(first) = rows.first() else {
        // No such account (one statement) or site (the function): tell a
        // missing site apart (its rules come before the account's absence).
        let site = find_site(conn, site_key).await?;
        return Ok(Loaded::without_account(site));
    };
    let site = site::Model {
        id: first.read("s_id")?,
        api_key: first.read("s_api_key")?,
        vhost: first.read("s_vhost")?,
        name: first.read("s_name")?,
        unlink_action_enabled: first.read("s_unlink_action_enabled")?,
        allowed_redirect_origins: first.read("s_allowed_redirect_origins")?,
        allowed_browser_origins: first.read("s_allowed_browser_origins")?,
        created_at: first.read("s_created_at")?,
        updated_at: first.read("s_updated_at")?,
    };
    let account_id: Option<i64> = first.read("a_id")?;
    let Some(account_id) = account_id else {
        return Ok(Loaded::without_account(site));
    };
    let version = match read.version {
        true => Some(first.read("row_version")?),
        false => None,
    };
    let fingerprint: Option<String> = match read.record {
        Some(_) => first.read("k_fingerprint")?,
        None => None,
    };
    let record = fingerprint
        .map(|fingerprint| {
            first.read("k_response").map(|response| StoredRecord {
                fingerprint,
                response,
            })
        })
        .transpose()?;
    let row = account::Model {
        id: account_id,
        site_id: first.read("a_site_id")?,
        uid: first.read("a_uid")?,
        created_at: first.read("a_created_at")?,
        updated_at: first.read("a_updated_at")?,
    };
    let account = collect_account(rows, &site, row)?;
    Ok(Loaded {
        site,
        account: Some(account),
        version,
        record,
    })
}

/// A request id's record, by its primary key.
pub(crate) async fn find_record<C: ConnectionTrait>(
    conn: &C,
    key: RecordKey<'_>,
) -> StorageResult<Option<StoredRecord>> {
    let found =
        idempotency_key::Entity::find_by_id((key.scope.to_owned(), key.request_id.to_owned()))
            .one(conn)
            .await?;
    Ok(found.map(|record| StoredRecord {
        fingerprint: record.fingerprint,
        response: record.response,
    }))
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

pub(crate) async fn find_site<C: ConnectionTrait>(
    conn: &C,
    site_key: SiteKey<'_>,
) -> StorageResult<site::Model> {
    site::Entity::find()
        .filter(site_key.condition())
        .one(conn)
        .await?
        .ok_or(StorageError::Rule(DomainError::SiteNotFound))
}

/// Reads an account's login IDs and identities in one round trip.
pub(crate) async fn load_account<C: ConnectionTrait>(
    conn: &C,
    site: &site::Model,
    row: account::Model,
) -> StorageResult<Account> {
    let mut sql = Sql::new(conn.get_database_backend());
    push_account_rows(
        &mut sql,
        Anchor::Bound {
            site_id: site.id,
            account_id: row.id,
        },
        None,
        None,
    );
    let rows = conn.query_all_raw(sql.into_statement()).await?;
    Ok(collect_account(&rows, site, row)?.0)
}

/// What LinkConnection needs besides the account, read in the same round
/// trip: who holds the provider identity and the login ID it brings.
#[derive(Debug, Default)]
pub(crate) struct LinkLookups {
    pub mapping: Option<ExistingMapping>,
    pub login_owner: Option<i64>,
}

/// What the rows of [`push_account_rows`] belong to.
#[derive(Clone, Copy)]
enum Anchor {
    /// A site and account already read.
    Bound { site_id: i64, account_id: i64 },
    /// The `acc` CTE of the same statement (its `s_id` and `a_id`).
    Found,
    /// The site `s` and account `a` joined in the same statement.
    Joined,
}

impl Anchor {
    fn push_site_id(self, sql: &mut Sql) {
        match self {
            Anchor::Bound { site_id, .. } => sql.bind(site_id),
            Anchor::Found => sql.push("(SELECT s_id FROM acc)"),
            Anchor::Joined => sql.push("s.id"),
        };
    }

    fn push_account_id(self, sql: &mut Sql) {
        match self {
            Anchor::Bound { account_id, .. } => sql.bind(account_id),
            Anchor::Found => sql.push("(SELECT a_id FROM acc)"),
            Anchor::Joined => sql.push("a.id"),
        };
    }
}

/// One result for an account's identities (kind 0) and login IDs (1), then
/// the site's mapping of `identity` (2) and the owner of `login` (3).
fn push_account_rows(
    sql: &mut Sql,
    anchor: Anchor,
    identity: Option<&NewIdentity>,
    login: Option<&str>,
) {
    const IDENTITY_COLUMNS: &str = "id, account_id AS owner, provider, sub_provider, \
         provider_uid, login_id, state, session IS NOT NULL AS has_session, \
         FALSE AS has_password, linked_at, updated_at FROM identities WHERE ";
    const LOGIN_COLUMNS: &str = "id, account_id, NULL, NULL, NULL, login_id, NULL, FALSE, \
         has_password, created_at, created_at FROM login_ids WHERE ";
    sql.push("SELECT 0 AS kind, ")
        .push(IDENTITY_COLUMNS)
        .push("account_id = ");
    anchor.push_account_id(sql);
    sql.push(" UNION ALL SELECT 1, ")
        .push(LOGIN_COLUMNS)
        .push("account_id = ");
    anchor.push_account_id(sql);
    if let Some(new) = identity {
        sql.push(" UNION ALL SELECT 2, ")
            .push(IDENTITY_COLUMNS)
            .push("site_id = ");
        anchor.push_site_id(sql);
        sql.push(" AND provider = ")
            .bind(new.provider.as_str())
            .push(" AND sub_provider = ")
            .bind(new.sub_provider.as_str())
            .push(" AND provider_uid = ")
            .bind(new.provider_uid.as_str());
    }
    if let Some(login) = login {
        sql.push(" UNION ALL SELECT 3, ")
            .push(LOGIN_COLUMNS)
            .push("site_id = ");
        anchor.push_site_id(sql);
        sql.push(" AND login_id = ").bind(login);
    }
}

/// Builds the account and the lookups from the rows of [`push_account_rows`]
/// in any order (rows with no kind, from an outer join that found none, are
/// skipped): identities and login IDs come out in the order they were
/// created (by id), whatever order the statement returned them in.
fn collect_account<R: ReadRow>(
    rows: &[R],
    site: &site::Model,
    row: account::Model,
) -> StorageResult<(Account, LinkLookups)> {
    let mut ordered = Vec::with_capacity(rows.len());
    for found in rows {
        if let Some(kind) = found.read::<Option<i32>>("kind")? {
            ordered.push((kind, found.read::<i64>("id")?, found));
        }
    }
    ordered.sort_unstable_by_key(|&(kind, id, _)| (kind, id));
    let mut login_ids = Vec::new();
    let mut identities = Vec::new();
    let mut lookups = LinkLookups::default();
    for (kind, id, found) in ordered {
        let owner: i64 = found.read("owner")?;
        match kind {
            1 => login_ids.push(LoginId {
                value: found.read("login_id")?,
                has_password: found.read("has_password")?,
            }),
            3 => lookups.login_owner = Some(owner),
            _ => {
                let state: String = found.read("state")?;
                let state = IdentityState::parse(&state).ok_or_else(|| {
                    StorageError::Corrupt(format!("identity {id} state {state:?}"))
                })?;
                if kind == 2 {
                    lookups.mapping = Some(ExistingMapping {
                        identity_id: id,
                        account_id: owner,
                        state,
                    });
                    continue;
                }
                identities.push(Identity {
                    id,
                    provider: found.read("provider")?,
                    sub_provider: found.read("sub_provider")?,
                    provider_uid: found.read("provider_uid")?,
                    login_id: found.read("login_id")?,
                    state,
                    has_session: found.read("has_session")?,
                    linked_at: found.read("linked_at")?,
                    updated_at: found.read("updated_at")?,
                });
            }
        }
    }
    let account = Account {
        id: row.id,
        api_key: site.api_key.clone(),
        vhost: site.vhost,
        uid: row.uid,
        login_ids,
        identities,
        created_at: row.created_at,
        updated_at: row.updated_at,
    };
    Ok((account, lookups))
}

async fn insert_login_id(
    conn: &mut Raw<'_>,
    site_id: i64,
    account_id: i64,
    value: &str,
    has_password: bool,
) -> StorageResult<()> {
    let mut sql = Sql::new(conn.backend());
    sql.push(
        "INSERT INTO login_ids (site_id, account_id, login_id, has_password, created_at) \
         VALUES (",
    )
    .bind(site_id)
    .push(", ")
    .bind(account_id)
    .push(", ")
    .bind(value)
    .push(", ")
    .bind(has_password)
    .push(", ")
    .bind(Utc::now())
    .push(")");
    conn.query_all(sql.into_statement()).await.map_err(|err| {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::{DateTime, Utc};
    use sea_orm::{DbErr, Value, sea_query::ValueType};

    use super::*;

    /// A row of [`push_account_rows`] as a map of column to value.
    struct FakeRow(HashMap<&'static str, Value>);

    impl ReadRow for FakeRow {
        fn read<T: sea_orm::TryGetable + ValueType>(&self, column: &str) -> Result<T, DbErr> {
            let value = self
                .0
                .get(column)
                .ok_or_else(|| DbErr::Custom(format!("no column {column}")))?;
            T::try_from(value.clone()).map_err(|err| DbErr::Type(format!("{column}: {err}")))
        }
    }

    fn identity(id: i64, provider: &str, at: DateTime<Utc>) -> FakeRow {
        FakeRow(HashMap::from([
            ("kind", Value::from(0i32)),
            ("id", id.into()),
            ("owner", 7i64.into()),
            ("provider", provider.into()),
            ("sub_provider", "".into()),
            ("provider_uid", format!("{provider}-1").into()),
            ("login_id", Option::<String>::None.into()),
            ("state", "ACTIVE".into()),
            ("has_session", false.into()),
            ("linked_at", at.into()),
            ("updated_at", at.into()),
        ]))
    }

    fn login_id(id: i64, value: &str) -> FakeRow {
        FakeRow(HashMap::from([
            ("kind", Value::from(1i32)),
            ("id", id.into()),
            ("owner", 7i64.into()),
            ("login_id", value.into()),
            ("has_password", true.into()),
        ]))
    }

    /// The outer join's row for an account with no rows of its own.
    fn nothing() -> FakeRow {
        FakeRow(HashMap::from([("kind", Option::<i32>::None.into())]))
    }

    /// bench/run.sh's second PostgreSQL ceiling runs this statement as the
    /// read before each write; it must stay the service's.
    #[test]
    fn the_bench_reads_as_the_service_does_on_postgres() {
        let file = include_str!("../../bench/reference/read_account.sql");
        let bench: String = file
            .lines()
            .filter(|line| !line.starts_with("--"))
            .collect();
        let api_key = ApiKey::parse("api_key", "3_bench").expect("an API key");
        let uid = Uid::parse("uid", "1000000").expect("a uid");
        let mut sql = Sql::new(DbBackend::Postgres);
        let read = ReadAs {
            version: true,
            record: None,
        };
        push_load(&mut sql, SiteKey::ApiKey(&api_key), &uid, None, None, read);
        let service = sql
            .into_statement()
            .sql
            .replace("$1", "(:uid)::text")
            .replace("$2", "'3_bench'");
        assert_eq!(bench.trim_end().trim_end_matches(';'), service);
    }

    #[test]
    fn an_account_reads_its_rows_in_creation_order_whatever_order_they_come_in() {
        let at = Utc::now();
        let site = site::Model {
            id: 1,
            api_key: "3_key".into(),
            vhost: 7,
            name: "site".into(),
            unlink_action_enabled: true,
            allowed_redirect_origins: "[]".into(),
            allowed_browser_origins: "[]".into(),
            created_at: at,
            updated_at: at,
        };
        let row = account::Model {
            id: 7,
            site_id: 1,
            uid: "u1".into(),
            created_at: at,
            updated_at: at,
        };
        let rows = [
            login_id(9, "b@example.com"),
            identity(30, "twitter", at),
            nothing(),
            login_id(4, "a@example.com"),
            identity(12, "facebook", at),
            identity(21, "google", at),
        ];
        let (account, lookups) = collect_account(&rows, &site, row).expect("rows read");
        let providers: Vec<_> = account
            .identities
            .iter()
            .map(|i| i.provider.as_str())
            .collect();
        assert_eq!(providers, ["facebook", "google", "twitter"]);
        let ids: Vec<_> = account.identities.iter().map(|i| i.id).collect();
        assert_eq!(ids, [12, 21, 30]);
        let logins: Vec<_> = account.login_ids.iter().map(|l| l.value.as_str()).collect();
        assert_eq!(logins, ["a@example.com", "b@example.com"]);
        assert!(lookups.mapping.is_none() && lookups.login_owner.is_none());
    }
}
