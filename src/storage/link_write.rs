//! LinkConnection's one write, as its plan decided it: the identity's
//! insert or refresh and the account's touch, in one round trip, under the
//! account lock or guarded by the account row's version (then concurrent
//! calls' guarded writes may share a statement, `write_batch`).

use chrono::{DateTime, Utc};

use super::{
    error::{StorageError, StorageResult},
    group_commit::{Raw, Rows},
    removal::Applied,
    sql::{ReadRow, WriteSteps, answered},
};
use crate::domain::{DomainError, IdentityState};

/// One link's write: owned, so that a shared statement can carry it.
#[derive(Debug)]
pub(crate) struct LinkWrite {
    pub site_id: i64,
    pub account_id: i64,
    pub now: DateTime<Utc>,
    pub target: LinkTarget,
    /// The login ID the identity names, if any.
    pub login: Option<String>,
    /// The provider session, sealed.
    pub sealed: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) enum LinkTarget {
    /// A new active identity.
    Create {
        provider: String,
        sub_provider: String,
        provider_uid: String,
    },
    /// The account's own identity, made active with the new data.
    Refresh { identity_id: i64 },
}

impl LinkWrite {
    /// What makes its statement's text differ from another link's.
    pub(crate) fn shape(&self) -> [usize; 5] {
        [
            usize::from(matches!(self.target, LinkTarget::Refresh { .. })),
            usize::from(self.login.is_some()),
            usize::from(self.sealed.is_some()),
            0,
            0,
        ]
    }
}

/// `write`'s steps (after [`WriteSteps::member`], as one member of
/// several): the guard if `version` is given (PostgreSQL), then the
/// identity's write, which answers its id.
pub(crate) fn push_link(steps: &mut WriteSteps, write: &LinkWrite, version: Option<&str>) {
    if let Some(version) = version {
        steps.guard_account(write.account_id, version, write.now, Some(GUARD_ANSWER));
    }
    let guarded = steps.only_if_guarded();
    let sql = steps.open("linked");
    match &write.target {
        LinkTarget::Create {
            provider,
            sub_provider,
            provider_uid,
        } => {
            sql.push(
                "INSERT INTO identities (site_id, account_id, provider, sub_provider, \
                 provider_uid, login_id, state, session, linked_at, updated_at) ",
            )
            // A SELECT, not VALUES, to take the guard's condition.
            .push(if guarded.is_empty() {
                "VALUES ("
            } else {
                "SELECT "
            })
            .bind(write.site_id)
            .push(", ")
            .bind(write.account_id)
            .push(", ")
            .bind(provider.as_str())
            .push(", ")
            .bind(sub_provider.as_str())
            .push(", ")
            .bind(provider_uid.as_str())
            .push(", ")
            .bind(write.login.clone())
            .push(", ")
            .bind(IdentityState::Active.as_str())
            .push(", ")
            .bind(write.sealed.clone())
            .push(", ")
            .bind(write.now)
            .push(", ")
            .bind(write.now)
            .push(if guarded.is_empty() {
                ")"
            } else {
                " WHERE TRUE"
            })
            .push(&guarded);
        }
        LinkTarget::Refresh { identity_id } => {
            sql.push("UPDATE identities SET state = ")
                .bind(IdentityState::Active.as_str());
            if let Some(login) = &write.login {
                sql.push(", login_id = ").bind(login.as_str());
            }
            if let Some(sealed) = &write.sealed {
                sql.push(", session = ").bind(sealed.clone());
            }
            sql.push(", updated_at = ")
                .bind(write.now)
                .push(" WHERE id = ")
                .bind(*identity_id)
                .push(" AND account_id = ")
                .bind(write.account_id)
                .push(&guarded);
        }
    }
    steps.close("linked", Some(LINKED_ANSWER));
    if guarded.is_empty() {
        steps
            .open("touched")
            .push("UPDATE accounts SET updated_at = ")
            .bind(write.now)
            .push(" WHERE id = ")
            .bind(write.account_id);
        steps.close("touched", None);
    }
}

/// The guard's answer row; a removal's guard answers the same.
pub(crate) const GUARD_ANSWER: &str = "'guard' AS kind, id";
const LINKED_ANSWER: &str = "'linked' AS kind, id";

/// What `write`'s statement answered (the rows of `member`, when it was
/// one of several): [`Applied::Conflict`] if its guard did not match, else
/// [`Applied::Linked`] with the identity's id.
pub(crate) fn check_linked<R: ReadRow>(
    rows: &[R],
    member: Option<i32>,
    guarded: bool,
) -> StorageResult<Applied> {
    let mut guards = 0;
    let mut linked = Vec::new();
    for row in answered(rows, member)? {
        match row.kind.as_str() {
            "guard" => guards += 1,
            _ => linked.push(row.id),
        }
    }
    if guarded && guards == 0 {
        return Ok(Applied::Conflict);
    }
    match linked.as_slice() {
        [id] => Ok(Applied::Linked(*id)),
        _ => Err(StorageError::Corrupt(format!(
            "identity write changed {} rows",
            linked.len()
        ))),
    }
}

/// Writes `write` in one round trip, under the account lock. An identity
/// another account linked meanwhile is [`DomainError::IdentityLinkedElsewhere`].
/// (Outside a transaction, guarded by the account row's version, a link's
/// write is a member of a shared statement: `write_batch`.)
pub(crate) async fn apply_link(conn: &mut Raw<'_>, write: &LinkWrite) -> StorageResult<Applied> {
    let mut steps = WriteSteps::new(conn.backend());
    push_link(&mut steps, write, None);
    let failed = steps.failure();
    let rows = conn
        .query_all(steps.into_statement())
        .await
        .map_err(|err| {
            if StorageError::is_unique_violation(&err) {
                StorageError::Rule(DomainError::IdentityLinkedElsewhere)
            } else {
                failed(err)
            }
        })?;
    match rows {
        Rows::Orm(rows) => check_linked(&rows, None, false),
        Rows::Direct(rows) => check_linked(&rows, None, false),
    }
}
