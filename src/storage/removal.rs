//! The one removal transaction behind both RemoveConnection and UnlinkAccount:
//! site checks, account lock, idempotency, plan (pure domain rules), cid
//! accounting, apply, outbox rows, idempotency record, then commit, or roll
//! back for a dry run or a refusal. On PostgreSQL a removal with no cid
//! first tries the same steps without a transaction: an unlocked read (with
//! the request id's record, if any), then one autocommit write (with the
//! record) guarded by the account row's version (`remove_unlocked`), which
//! concurrent calls share (`write_batch`).
//! Nothing here knows which RPC is calling beyond what `RemovalRequest`
//! answers.

use chrono::{SubsecRound, Utc};

use super::{
    entities::{idempotency_key, site},
    error::{StorageError, StorageResult},
    group_commit::{Raw, Rows, Writes},
    link_write::GUARD_ANSWER,
    outbox,
    repository::{
        Loaded, RecordKey, Repository, SiteKey, StoredRecord, find_record, site_from_model,
    },
    sql::{ReadRow, Sql, WriteSteps, answered},
    write_batch::Guarded,
};
use crate::domain::{
    CallOrigin, DomainError, IdentityState, ProviderRegistry, RemovalMode,
    removal::{RemovalOutcome, RemovalPlan, RemovalRequest},
};
use crate::telemetry::metrics;

/// A site may use at most this many distinct cids.
pub const MAX_CONTEXT_IDS: usize = 100;

/// How the transaction ended, decided inside it.
enum Step {
    /// Committed work: the outcome, and whether outbox rows were written.
    Done(RemovalOutcome, bool),
    /// Nothing to keep: a dry run or a retry answered from the stored record.
    RollBack(RemovalOutcome),
    /// A concurrent request stored the same request id first; answer from its
    /// record once this transaction is rolled back.
    KeyTaken,
}

impl Repository {
    /// Runs one removal (either RPC) in one transaction.
    pub async fn remove(
        &self,
        registry: &ProviderRegistry,
        ctx: &CallOrigin,
        request: RemovalRequest,
    ) -> StorageResult<RemovalOutcome> {
        // A removal writes in one atomic step (`apply`, the request id's
        // record included); with a cid it also counts it, before that step.
        let writes = if request.cid().is_none() {
            Writes::Atomic
        } else {
            Writes::Several
        };
        let scope = request.idempotency_scope();
        if request.cid().is_none() && self.is_postgres() {
            // Two round trips instead of four (BEGIN, lock and read, write,
            // COMMIT), two instead of six with a request id; after a
            // conflict, the locked transaction below.
            if let Some(outcome) = self
                .remove_unlocked(registry, ctx, &request, &scope)
                .await?
            {
                return Ok(outcome);
            }
        }
        let mut txn = self.begin_write_fast(writes).await?;
        let step = self
            .remove_in(&mut txn.raw(), registry, ctx, &request, &scope)
            .await;
        match step {
            Ok(Step::Done(outcome, wrote_events)) => {
                txn.commit().await.map_err(StorageError::from_commit)?;
                if wrote_events {
                    self.outbox_committed();
                }
                Ok(outcome)
            }
            Ok(Step::RollBack(outcome)) => {
                txn.rollback().await?;
                Ok(outcome)
            }
            Ok(Step::KeyTaken) => {
                txn.rollback().await?;
                let record = match record_key(&request, &scope) {
                    Some(key) => find_record(self.connection(), key).await?,
                    None => None,
                };
                let record = record.ok_or_else(|| {
                    StorageError::Corrupt("idempotency record vanished after a conflict".into())
                })?;
                stored_answer(&request, &record)
            }
            Err(err) => {
                // A refusal or failure changes nothing; the rollback error,
                // if any, matters less than the original one.
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }

    async fn remove_in(
        &self,
        txn: &mut Raw<'_>,
        registry: &ProviderRegistry,
        ctx: &CallOrigin,
        request: &RemovalRequest,
        scope: &str,
    ) -> StorageResult<Step> {
        // The account lock serialises every removal of this account, so the
        // plan below sees the state the change is applied to, and concurrent
        // retries of one request id wait here for the first to commit.
        let Loaded {
            site: site_row,
            account,
            record,
            ..
        } = self
            .lock_and_load(
                txn,
                site_key(request),
                request.uid(),
                None,
                None,
                record_key(request, scope),
            )
            .await?;
        let site = site_from_model(site_row.clone())?;
        let redirect = request.check_site(&site)?;
        let (account, _) = account.ok_or(StorageError::Rule(DomainError::AccountNotFound))?;
        if let Some(record) = record {
            return Ok(Step::RollBack(stored_answer(request, &record)?));
        }
        let plan = request.plan(&account, registry)?;
        self.count_context_id(txn, &site_row, request).await?;
        let time = event_time();

        if request.dry_run() {
            return Ok(Step::RollBack(answer(
                request, ctx, time, &plan, redirect, None,
            )));
        }

        let (outcome, write) =
            answer_and_write(request, ctx, time, &plan, &site, redirect, account.id)?;
        let wrote_events = write.appends_events();
        match apply(txn, &write).await? {
            Applied::Written => Ok(Step::Done(outcome, wrote_events)),
            Applied::KeyTaken => Ok(Step::KeyTaken),
            Applied::Conflict | Applied::Linked(_) => Err(StorageError::Corrupt(
                "a removal under the lock was guarded".into(),
            )),
        }
    }

    /// PostgreSQL, a removal with no cid: reads the account without a lock,
    /// plans, and writes in one autocommit statement (with the request id's
    /// record, if any) only if the account row's version is still the one
    /// read (`apply`'s guard). `None`: the account changed in between, or
    /// another request stored the same request id first, and nothing was
    /// written.
    async fn remove_unlocked(
        &self,
        registry: &ProviderRegistry,
        ctx: &CallOrigin,
        request: &RemovalRequest,
        scope: &str,
    ) -> StorageResult<Option<RemovalOutcome>> {
        let Loaded {
            site,
            account,
            version,
            record,
        } = self
            .load_unlocked(
                site_key(request),
                request.uid(),
                None,
                None,
                record_key(request, scope),
            )
            .await?;
        let site = site_from_model(site)?;
        let redirect = request.check_site(&site)?;
        let (account, _) = account.ok_or(StorageError::Rule(DomainError::AccountNotFound))?;
        let version = version
            .ok_or_else(|| StorageError::Corrupt("account read without its version".into()))?;
        // Read with the account: a first call that committed before that
        // read is found here; one that committed after it moved the
        // version, and the guard sends this call under the lock.
        if let Some(record) = record {
            return stored_answer(request, &record).map(Some);
        }
        let plan = request.plan(&account, registry)?;
        let time = event_time();
        if request.dry_run() {
            return Ok(Some(answer(request, ctx, time, &plan, redirect, None)));
        }
        let (outcome, write) =
            answer_and_write(request, ctx, time, &plan, &site, redirect, account.id)?;
        let wrote_events = write.appends_events();
        let applied = self
            .shared_writes()?
            .apply(Guarded::Removal(write), version)
            .await?;
        if applied != Applied::Written {
            metrics::storage().write_conflict();
            return Ok(None);
        }
        if wrote_events {
            self.outbox_committed();
        }
        Ok(Some(outcome))
    }

    /// Counts the request's cid against the site's limit of distinct cids.
    /// Runs after the plan succeeded and inside its transaction, so only a
    /// request that succeeds counts it; a dry run checks but does not count.
    async fn count_context_id(
        &self,
        txn: &mut Raw<'_>,
        site_row: &site::Model,
        request: &RemovalRequest,
    ) -> StorageResult<()> {
        let Some(cid) = request.cid() else {
            return Ok(());
        };
        let mut counted = context_ids_known(txn, site_row.id, cid.as_str()).await?;
        if !counted.known && self.is_postgres() {
            // Two transactions adding different new cids at 99 would both
            // count 99 without this: the site row lock serialises them. It is
            // taken after the account lock, as everywhere, so no cycle forms.
            let mut lock = Sql::new(txn.backend());
            lock.push("SELECT id FROM sites WHERE id = ")
                .bind(site_row.id)
                .push(" FOR UPDATE");
            txn.query_all(lock.into_statement()).await?;
            // Another transaction may have added this very cid meanwhile.
            counted = context_ids_known(txn, site_row.id, cid.as_str()).await?;
        }
        if counted.known {
            return Ok(());
        }
        if usize::try_from(counted.used).unwrap_or(usize::MAX) >= MAX_CONTEXT_IDS {
            return Err(DomainError::TooManyContextIds {
                limit: MAX_CONTEXT_IDS,
            }
            .into());
        }
        if !request.dry_run() {
            let mut insert = Sql::new(txn.backend());
            insert
                .push("INSERT INTO context_ids (site_id, cid, created_at) VALUES (")
                .bind(site_row.id)
                .push(", ")
                .bind(cid.as_str())
                .push(", ")
                .bind(Utc::now())
                .push(")");
            txn.query_all(insert.into_statement()).await?;
        }
        Ok(())
    }
}

/// The time a removal's rows and events carry, taken once the plan is
/// made, just before the write: the sequencing-lag metric measures from it to
/// the event's position, so it must not include the read or a lock wait.
/// Microseconds: what both databases store, so the answer built from the
/// plan equals what a later read returns.
fn event_time() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Whether a site already uses a cid, and how many distinct cids it uses.
struct ContextIds {
    known: bool,
    used: i64,
}

/// [`ContextIds`] in one statement.
async fn context_ids_known(
    txn: &mut Raw<'_>,
    site_id: i64,
    cid: &str,
) -> StorageResult<ContextIds> {
    let mut sql = Sql::new(txn.backend());
    sql.push("SELECT EXISTS (SELECT 1 FROM context_ids WHERE site_id = ")
        .bind(site_id)
        .push(" AND cid = ")
        .bind(cid)
        .push(") AS known, (SELECT COUNT(*) FROM context_ids WHERE site_id = ")
        .bind(site_id)
        .push(") AS used");
    let rows = txn.query_all(sql.into_statement()).await?;
    let read = |known: Option<bool>, used: Option<i64>| match (known, used) {
        (Some(known), Some(used)) => Ok(ContextIds { known, used }),
        _ => Err(StorageError::Corrupt(
            "the cid count answered no row".into(),
        )),
    };
    read(rows.first("known")?, rows.first("used")?)
}

/// How the request names its site.
fn site_key(request: &RemovalRequest) -> SiteKey<'_> {
    match request {
        RemovalRequest::RemoveConnection(c) => SiteKey::ApiKey(&c.api_key),
        RemovalRequest::UnlinkAccount(c) => SiteKey::Vhost(c.vhost),
    }
}

/// The key of the request's record, if it has a request id (`scope` is its
/// `idempotency_scope`).
fn record_key<'a>(request: &'a RemovalRequest, scope: &'a str) -> Option<RecordKey<'a>> {
    request.request_id().map(|request_id| RecordKey {
        scope,
        request_id: request_id.as_str(),
    })
}

/// The first answer a request id's record holds, for `request`: its own
/// if the request is the same, `IDEMPOTENCY_KEY_REUSED` when it differs.
fn stored_answer(request: &RemovalRequest, record: &StoredRecord) -> StorageResult<RemovalOutcome> {
    if record.fingerprint != request.fingerprint() {
        return Err(DomainError::IdempotencyKeyReused.into());
    }
    serde_json::from_str(&record.response)
        .map_err(|e| StorageError::Corrupt(format!("idempotency record: {e}")))
}

/// What a removal that writes answers, and the writes that answer stands
/// for: its events, and the request id's record holding that answer.
fn answer_and_write(
    request: &RemovalRequest,
    ctx: &CallOrigin,
    time: chrono::DateTime<Utc>,
    plan: &RemovalPlan,
    site: &crate::domain::Site,
    redirect: Option<crate::domain::RedirectTarget>,
    account_id: i64,
) -> StorageResult<(RemovalOutcome, Write)> {
    let events = plan.events(request, site, ctx, time);
    let outcome = answer(request, ctx, time, plan, redirect, Some(&events));
    let key = key_record(request, &outcome, time)?;
    Ok((outcome, Write::new(plan, account_id, time, events, key)))
}

/// The record that answers later calls with the same request id, if the
/// request has one: written with the removal, never without it.
fn key_record(
    request: &RemovalRequest,
    outcome: &RemovalOutcome,
    time: chrono::DateTime<Utc>,
) -> StorageResult<Option<idempotency_key::Model>> {
    let Some(request_id) = request.request_id() else {
        return Ok(None);
    };
    let response = serde_json::to_string(outcome)
        .map_err(|e| StorageError::Corrupt(format!("outcome: {e}")))?;
    Ok(Some(idempotency_key::Model {
        scope: request.idempotency_scope(),
        request_id: request_id.as_str().to_owned(),
        fingerprint: request.fingerprint(),
        response,
        created_at: time,
    }))
}

/// What [`apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Written,
    /// The guard did not match (the account changed or was held): nothing
    /// written.
    Conflict,
    /// Another call stored the same request id first (the statement
    /// waited for it on the key's index): nothing written.
    KeyTaken,
    /// A link wrote its identity, whose id this is (`link_write`).
    Linked(i64),
}

/// The answer, from what the removal decided, not a re-read: `events` are
/// those it wrote, `None` for a dry run (which writes nothing).
fn answer(
    request: &RemovalRequest,
    ctx: &CallOrigin,
    time: chrono::DateTime<Utc>,
    plan: &RemovalPlan,
    redirect: Option<crate::domain::RedirectTarget>,
    events: Option<&[crate::domain::ConnectionRemoved]>,
) -> RemovalOutcome {
    let (removed, account) = match events {
        Some(events) => {
            let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
            let after = plan.after_at(time);
            (plan.removed(Some(&ids)), request.account_snapshot(&after))
        }
        None => (plan.removed(None), request.account_snapshot(&plan.after)),
    };
    RemovalOutcome {
        call_id: ctx.call_id.clone(),
        time,
        removed,
        account,
        context: request.context(),
        redirect_url: redirect.map(|r| r.into_string()),
        dry_run: request.dry_run(),
    }
}

/// One removal's writes, as its plan decided them: owned, so that a batch
/// of several calls' writes can carry it (`write_batch`).
#[derive(Debug)]
pub(crate) struct Write {
    account_id: i64,
    now: chrono::DateTime<Utc>,
    hard: Vec<i64>,
    soft: Vec<i64>,
    logins: Vec<String>,
    events: Vec<crate::domain::ConnectionRemoved>,
    key: Option<idempotency_key::Model>,
    /// Whether the plan changes the account (then its row is touched).
    changes: bool,
}

impl Write {
    pub(crate) fn account_id(&self) -> i64 {
        self.account_id
    }

    fn new(
        plan: &RemovalPlan,
        account_id: i64,
        now: chrono::DateTime<Utc>,
        events: Vec<crate::domain::ConnectionRemoved>,
        key: Option<idempotency_key::Model>,
    ) -> Self {
        let ids = |mode: RemovalMode| -> Vec<i64> {
            plan.removals
                .iter()
                .filter(|r| r.mode == mode)
                .map(|r| r.identity.id)
                .collect()
        };
        Self {
            account_id,
            now,
            hard: ids(RemovalMode::Hard),
            soft: ids(RemovalMode::Soft),
            logins: plan.login_ids_to_delete.clone(),
            events,
            key,
            changes: !plan.is_empty(),
        }
    }

    /// Whether it appends events (whose commit wakes the sequencer).
    pub(crate) fn appends_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// What makes its statement's text differ from another removal's.
    pub(crate) fn shape(&self) -> [usize; 5] {
        [
            self.hard.len(),
            self.soft.len(),
            self.logins.len(),
            self.events.len(),
            usize::from(self.key.is_some()),
        ]
    }

    /// Nothing to write: no change, no event, no record.
    fn is_empty(&self) -> bool {
        !self.changes && self.events.is_empty() && self.key.is_none()
    }
}

/// Writes the plan, touches the account, appends its events and stores the
/// request id's record (`key`), in one round trip: on SQLite one string of
/// statements, on PostgreSQL one statement of data-modifying CTEs (they
/// touch different rows, so one snapshot serves them all). Every write is a
/// row of the answer, counted by kind: under the account lock every row the
/// plan names exists, so a count that does not match means the data changed
/// under the lock. Nothing is written unless [`Applied::Written`]. (Outside
/// a transaction, guarded by the account row's version, a removal's write
/// is a member of a shared statement: `write_batch`.)
pub(crate) async fn apply(conn: &mut Raw<'_>, write: &Write) -> StorageResult<Applied> {
    if write.is_empty() {
        return Ok(Applied::Written);
    }
    let mut steps = WriteSteps::new(conn.backend());
    let postgres = steps.postgres();
    if !postgres {
        // Several statements: atomic only inside a savepoint, rolled back
        // below if any of them fails (PostgreSQL's one statement is atomic).
        steps.open("savepoint").push(APPLY_SAVEPOINT_SQL);
        steps.close("savepoint", None);
    }
    push_write(&mut steps, write, None)?;
    let failed = steps.failure();
    let checked = match conn.query_all(steps.into_statement()).await {
        Err(err) if write.key.is_some() && StorageError::is_unique_violation(&err) => {
            Ok(Applied::KeyTaken)
        }
        Err(err) => Err(failed(err)),
        Ok(Rows::Orm(rows)) => check_written(&rows, None, write, false),
        Ok(Rows::Direct(rows)) => check_written(&rows, None, write, false),
    };
    if !postgres && !matches!(checked, Ok(Applied::Written)) {
        // Undo whatever part of the step ran. ROLLBACK TO fails only with
        // the connection itself (or after SQLite rolled the whole
        // transaction back), and then the shared commit fails too.
        let _ = conn.execute_unprepared(UNDO_APPLY_SQL).await;
    }
    checked
}

/// `write`'s steps (after [`WriteSteps::member`], as one member of
/// several): the guard if `version` is given (PostgreSQL), then each write,
/// every identity or login ID it changes answering one row of its kind.
pub(crate) fn push_write(
    steps: &mut WriteSteps,
    write: &Write,
    version: Option<&str>,
) -> StorageResult<()> {
    let account_id = write.account_id;
    let now = write.now;
    if let Some(version) = version {
        steps.guard_account(account_id, version, now, Some(GUARD_ANSWER));
    }
    let guarded = steps.only_if_guarded();
    if !write.hard.is_empty() {
        steps
            .open("hard")
            .push("DELETE FROM identities WHERE account_id = ")
            .bind(account_id)
            .push(" AND id IN ")
            .bind_list(write.hard.iter().copied())
            .push(&guarded);
        steps.close("hard", Some("'hard' AS kind, id"));
    }
    if !write.soft.is_empty() {
        steps
            .open("soft")
            .push("UPDATE identities SET state = ")
            .bind(IdentityState::SoftRemoved.as_str())
            .push(", session = NULL, updated_at = ")
            .bind(now)
            .push(" WHERE account_id = ")
            .bind(account_id)
            .push(" AND id IN ")
            .bind_list(write.soft.iter().copied())
            .push(&guarded);
        steps.close("soft", Some("'soft' AS kind, id"));
    }
    if !write.logins.is_empty() {
        steps
            .open("logins")
            .push("DELETE FROM login_ids WHERE account_id = ")
            .bind(account_id)
            .push(" AND login_id IN ")
            .bind_list(write.logins.iter().cloned())
            .push(&guarded);
        steps.close("logins", Some("'logins' AS kind, id"));
    }
    if write.changes && guarded.is_empty() {
        steps
            .open("touched")
            .push("UPDATE accounts SET updated_at = ")
            .bind(now)
            .push(" WHERE id = ")
            .bind(account_id);
        steps.close("touched", None);
    }
    outbox::push_append(steps, &write.events, &guarded)?;
    if let Some(key) = &write.key {
        steps
            .open("key")
            .push(
                "INSERT INTO idempotency_keys \
                 (scope, request_id, fingerprint, response, created_at) SELECT ",
            )
            .bind(key.scope.as_str())
            .push(", ")
            .bind(key.request_id.as_str())
            .push(", ")
            .bind(key.fingerprint.as_str())
            .push(", ")
            .bind(key.response.as_str())
            .push(", ")
            .bind(key.created_at)
            .push(" WHERE TRUE")
            .push(&guarded);
        steps.close("key", None);
    }
    Ok(())
}

/// What `write`'s statement answered (the rows of `member`, when it was
/// one of several): [`Applied::Conflict`] if its guard did not match,
/// else every write the plan names happened exactly once.
pub(crate) fn check_written<R: ReadRow>(
    rows: &[R],
    member: Option<i32>,
    write: &Write,
    guarded: bool,
) -> StorageResult<Applied> {
    let mut counts = std::collections::HashMap::<String, u64>::new();
    for row in answered(rows, member)? {
        *counts.entry(row.kind).or_default() += 1;
    }
    let count = |kind: &str| counts.get(kind).copied().unwrap_or(0);
    if guarded && count("guard") == 0 {
        return Ok(Applied::Conflict);
    }
    expect_rows("identities deleted", write.hard.len(), count("hard"))?;
    expect_rows("identities soft-removed", write.soft.len(), count("soft"))?;
    expect_rows("login IDs deleted", write.logins.len(), count("logins"))?;
    Ok(Applied::Written)
}

/// Opens the savepoint that makes `apply`'s statements one step on SQLite.
/// Left open on success: the enclosing transaction's commit (or savepoint
/// release) takes it along.
const APPLY_SAVEPOINT_SQL: &str = "SAVEPOINT removal_apply";
const UNDO_APPLY_SQL: &str = "ROLLBACK TO removal_apply; RELEASE removal_apply";

fn expect_rows(what: &str, expected: usize, actual: u64) -> StorageResult<()> {
    if u64::try_from(expected).ok() == Some(actual) {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "{what}: expected {expected}, got {actual}"
        )))
    }
}
