//! The removal rules of RemoveConnection (socialize.removeConnection) and
//! UnlinkAccount (/action/v2/unlinkaccount), as pure functions.
//!
//! A planner takes the locked account snapshot and a validated request and
//! returns a [`RemovalPlan`] (what to hard-delete, what to soft-remove, which
//! login IDs go, how many ways to log in remain) or the refusal. The
//! repository applies the plan in the same transaction that read the snapshot,
//! so the check and the change cannot be separated by another writer.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Account, AccountView, ApiKey, CallOrigin, ConnectionRemoved, ContextId, DomainError,
    EventSource, Identity, IdentityState, ProviderFamily, ProviderRegistry, RedirectTarget,
    RemovalMode, RequestId, Site, Uid, Vhost,
};

/// How RemoveConnection treats a request that removes the last ways to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastIdentityHandling {
    /// Wipe session data, keep the mapping (state `SOFT_REMOVED`).
    Soft,
    /// Remove completely, login IDs included.
    Remove,
    /// Refuse with `LAST_LOGIN_IDENTITY`.
    Fail,
}

/// RemoveConnection's input, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoveConnectionCommand {
    pub api_key: ApiKey,
    pub uid: Uid,
    /// Canonical social provider name; `None` means every social identity.
    pub provider: Option<String>,
    pub cid: Option<ContextId>,
    pub remove_login_id: bool,
    pub last_identity_handling: LastIdentityHandling,
    /// Returned unchanged.
    pub context: Option<serde_json::Value>,
    pub request_id: Option<RequestId>,
    pub dry_run: bool,
    /// The JS seed's logout parameter (default true): when false, no removal
    /// of this call asks for a provider logout.
    pub force_providers_logout: bool,
}

/// Which external-id identities UnlinkAccount deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExternalTarget {
    /// No provider named (`sub_provider_name` was `none`): every external-id identity.
    Every,
    /// Every identity of one provider (`none` for non-Janrain, `all` for Janrain).
    Provider { provider: String },
    /// Janrain identities with one sub-provider.
    SubProvider {
        provider: String,
        sub_provider: String,
    },
}

impl ExternalTarget {
    fn named_provider(&self) -> Option<&str> {
        match self {
            Self::Every => None,
            Self::Provider { provider } | Self::SubProvider { provider, .. } => Some(provider),
        }
    }

    fn matches(&self, identity: &Identity) -> bool {
        match self {
            Self::Every => true,
            Self::Provider { provider } => identity.provider == *provider,
            Self::SubProvider {
                provider,
                sub_provider,
            } => identity.provider == *provider && identity.sub_provider == *sub_provider,
        }
    }
}

/// UnlinkAccount's input, validated. `redirect_url` is only length-checked
/// here: whether it is allowed depends on the site, checked once it is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlinkAccountCommand {
    pub vhost: Vhost,
    pub uid: Uid,
    pub redirect_url: String,
    pub target: ExternalTarget,
    pub request_id: Option<RequestId>,
    pub dry_run: bool,
}

/// Either front door; the repository runs one transaction for both.
#[derive(Debug, Clone, PartialEq)]
pub enum RemovalRequest {
    RemoveConnection(RemoveConnectionCommand),
    UnlinkAccount(UnlinkAccountCommand),
}

impl RemovalRequest {
    pub fn uid(&self) -> &Uid {
        match self {
            Self::RemoveConnection(c) => &c.uid,
            Self::UnlinkAccount(c) => &c.uid,
        }
    }

    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::RemoveConnection(c) => c.request_id.as_ref(),
            Self::UnlinkAccount(c) => c.request_id.as_ref(),
        }
    }

    pub fn dry_run(&self) -> bool {
        match self {
            Self::RemoveConnection(c) => c.dry_run,
            Self::UnlinkAccount(c) => c.dry_run,
        }
    }

    pub fn cid(&self) -> Option<&ContextId> {
        match self {
            Self::RemoveConnection(c) => c.cid.as_ref(),
            Self::UnlinkAccount(_) => None,
        }
    }

    pub fn source(&self) -> EventSource {
        match self {
            Self::RemoveConnection(_) => EventSource::RemoveConnection,
            Self::UnlinkAccount(_) => EventSource::UnlinkAccount,
        }
    }

    /// Idempotency scope: request ids are unique per RPC and per site, in the
    /// name the caller used for the site.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Self::RemoveConnection(c) => format!("RemoveConnection/{}", c.api_key),
            Self::UnlinkAccount(c) => format!("UnlinkAccount/{}", c.vhost.get()),
        }
    }

    /// SHA-256 (hex) of a canonical encoding of the whole validated request,
    /// so a retry can be told from a reuse of the key for something else.
    /// serde_json objects keep their keys sorted, so the encoding is stable.
    pub fn fingerprint(&self) -> String {
        let canonical = match self {
            Self::RemoveConnection(c) => {
                let mut canonical = serde_json::json!({
                "rpc": "RemoveConnection",
                "api_key": c.api_key.as_str(),
                "uid": c.uid.as_str(),
                "provider": c.provider,
                "cid": c.cid.as_ref().map(ContextId::as_str),
                "remove_login_id": c.remove_login_id,
                "last_identity_handling": c.last_identity_handling,
                "context": c.context,
                "dry_run": c.dry_run,
                });
                // Only when off, so records stored before the field existed
                // still match their retries.
                if !c.force_providers_logout
                    && let Some(fields) = canonical.as_object_mut()
                {
                    fields.insert("force_providers_logout".into(), false.into());
                }
                canonical
            }
            Self::UnlinkAccount(c) => serde_json::json!({
                "rpc": "UnlinkAccount",
                "vhost": c.vhost.get(),
                "uid": c.uid.as_str(),
                "redirect_url": c.redirect_url,
                "target": c.target,
                "dry_run": c.dry_run,
            }),
        };
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// Checks that depend on the site but not on the account: UnlinkAccount
    /// must be enabled and its redirect allowed. Returns the redirect target.
    pub fn check_site(&self, site: &Site) -> Result<Option<RedirectTarget>, DomainError> {
        match self {
            Self::RemoveConnection(_) => Ok(None),
            Self::UnlinkAccount(c) => {
                if !site.unlink_action_enabled {
                    return Err(DomainError::ActionDisabled);
                }
                RedirectTarget::parse(&c.redirect_url, &site.allowed_redirect_origins).map(Some)
            }
        }
    }

    /// RemoveConnection reports the account after the change; UnlinkAccount does not.
    pub fn account_snapshot(&self, account: &Account) -> Option<AccountView> {
        match self {
            Self::RemoveConnection(_) => Some(AccountView::of(account)),
            Self::UnlinkAccount(_) => None,
        }
    }

    /// The caller's context, echoed back (RemoveConnection only).
    pub fn context(&self) -> Option<serde_json::Value> {
        match self {
            Self::RemoveConnection(c) => c.context.clone(),
            Self::UnlinkAccount(_) => None,
        }
    }

    /// Plans the removal on the locked account snapshot.
    pub fn plan(
        &self,
        account: &Account,
        registry: &ProviderRegistry,
    ) -> Result<RemovalPlan, DomainError> {
        match self {
            Self::RemoveConnection(c) => plan_remove_connection(account, registry, c),
            Self::UnlinkAccount(c) => plan_unlink_account(account, registry, &c.target),
        }
    }
}

/// One identity the plan removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRemoval {
    pub identity: Identity,
    pub mode: RemovalMode,
    /// Login IDs deleted because this identity brought them.
    pub removed_login_ids: Vec<String>,
    pub provider_logout_requested: bool,
}

/// What a request will change, computed before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalPlan {
    pub removals: Vec<PlannedRemoval>,
    /// Login IDs to delete from the account.
    pub login_ids_to_delete: Vec<String>,
    /// Ways to log in the account has after the change.
    pub remaining_login_methods: u32,
    /// The account as it will be after the change (what a dry run reports).
    pub after: Account,
}

impl RemovalPlan {
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty()
    }

    /// The account after the plan was applied at `time`: what the response
    /// reports, without reading the account again. Applying touches the
    /// account and every soft-removed identity at `time`.
    pub fn after_at(&self, time: DateTime<Utc>) -> Account {
        let mut after = self.after.clone();
        if self.is_empty() {
            return after;
        }
        after.updated_at = time;
        for removal in self.removals.iter().filter(|r| r.mode == RemovalMode::Soft) {
            if let Some(identity) = after
                .identities
                .iter_mut()
                .find(|i| i.id == removal.identity.id)
            {
                identity.updated_at = time;
            }
        }
        after
    }

    /// One `ConnectionRemoved` per removed identity, as the outbox stores it.
    pub fn events(
        &self,
        request: &RemovalRequest,
        site: &Site,
        ctx: &CallOrigin,
        time: DateTime<Utc>,
    ) -> Vec<ConnectionRemoved> {
        self.removals
            .iter()
            .map(|r| ConnectionRemoved {
                event_id: uuid::Uuid::new_v4().to_string(),
                occurred_at: time,
                api_key: site.api_key.clone(),
                vhost: site.vhost,
                uid: request.uid().as_str().to_owned(),
                provider: r.identity.provider.clone(),
                sub_provider: r.identity.sub_provider.clone(),
                provider_uid: r.identity.provider_uid.clone(),
                mode: r.mode,
                removed_login_ids: r.removed_login_ids.clone(),
                provider_logout_requested: r.provider_logout_requested,
                source: request.source(),
                cid: request.cid().map(|c| c.as_str().to_owned()),
                call_id: ctx.call_id.clone(),
                actor: ctx.actor.clone(),
                remaining_login_methods: self.remaining_login_methods,
                traceparent: ctx.traceparent.clone(),
            })
            .collect()
    }

    /// The response entries; `event_ids` is `None` on a dry run (no events).
    pub fn removed(&self, event_ids: Option<&[String]>) -> Vec<RemovedIdentity> {
        self.removals
            .iter()
            .enumerate()
            .map(|(n, r)| RemovedIdentity {
                provider: r.identity.provider.clone(),
                sub_provider: r.identity.sub_provider.clone(),
                provider_uid: r.identity.provider_uid.clone(),
                mode: r.mode,
                removed_login_ids: r.removed_login_ids.clone(),
                provider_logout_requested: r.provider_logout_requested,
                event_id: event_ids
                    .and_then(|ids| ids.get(n))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// `logout_allowed` false (forceProvidersLogout=false) turns every
    /// provider logout of the call off.
    fn build(
        account: &Account,
        registry: &ProviderRegistry,
        targets: Vec<&Identity>,
        mode: RemovalMode,
        login_ids_to_delete: BTreeSet<String>,
        logout_allowed: bool,
    ) -> Self {
        let target_ids: BTreeSet<i64> = targets.iter().map(|i| i.id).collect();
        let removals = targets
            .into_iter()
            .map(|identity| PlannedRemoval {
                removed_login_ids: identity
                    .login_id
                    .iter()
                    .filter(|l| login_ids_to_delete.contains(*l))
                    .cloned()
                    .collect(),
                provider_logout_requested: logout_allowed
                    && registry.logout_requested(&identity.provider),
                identity: identity.clone(),
                mode,
            })
            .collect();
        let mut after = account.clone();
        after
            .login_ids
            .retain(|l| !login_ids_to_delete.contains(&l.value));
        match mode {
            RemovalMode::Hard => after.identities.retain(|i| !target_ids.contains(&i.id)),
            RemovalMode::Soft => {
                for identity in &mut after.identities {
                    if target_ids.contains(&identity.id) {
                        identity.state = IdentityState::SoftRemoved;
                        identity.has_session = false;
                    }
                }
            }
        }
        Self {
            removals,
            login_ids_to_delete: login_ids_to_delete.into_iter().collect(),
            remaining_login_methods: after.login_methods(),
            after,
        }
    }
}

/// socialize.removeConnection's rules (SPEC section 4) on a locked snapshot.
pub fn plan_remove_connection(
    account: &Account,
    registry: &ProviderRegistry,
    command: &RemoveConnectionCommand,
) -> Result<RemovalPlan, DomainError> {
    // T: the active social identities the request targets. Soft-removed ones
    // are not ways to log in and stay as they are.
    let targets: Vec<&Identity> = account
        .identities
        .iter()
        .filter(|i| i.is_active())
        .filter(|i| registry.family_of(&i.provider) == ProviderFamily::Social)
        .filter(|i| command.provider.as_ref().is_none_or(|p| i.provider == *p))
        .collect();
    if targets.is_empty() {
        return match &command.provider {
            Some(provider) => Err(DomainError::NotConnected {
                provider: provider.clone(),
            }),
            None => Ok(RemovalPlan::build(
                account,
                registry,
                Vec::new(),
                RemovalMode::Hard,
                BTreeSet::new(),
                command.force_providers_logout,
            )),
        };
    }
    let target_ids: BTreeSet<i64> = targets.iter().map(|i| i.id).collect();
    let others: Vec<&Identity> = account
        .identities
        .iter()
        .filter(|i| !target_ids.contains(&i.id))
        .collect();
    let other_active = others.iter().filter(|i| i.is_active()).count();
    let passwords = account.login_ids.iter().filter(|l| l.has_password).count();
    let is_last = other_active + passwords == 0;

    let mode = match (is_last, command.last_identity_handling) {
        (false, _) | (true, LastIdentityHandling::Remove) => RemovalMode::Hard,
        (true, LastIdentityHandling::Soft) => RemovalMode::Soft,
        (true, LastIdentityHandling::Fail) => return Err(DomainError::LastLoginIdentity),
    };
    let removing_last_completely =
        is_last && command.last_identity_handling == LastIdentityHandling::Remove;

    // Login IDs: asked for with remove_login_id (strict: any failed condition
    // refuses the request), or implied by REMOVE of the last identity (lenient:
    // a login ID another identity still references is simply kept).
    let mut to_delete = BTreeSet::new();
    if command.remove_login_id || removing_last_completely {
        let brought: BTreeSet<&String> =
            targets.iter().filter_map(|i| i.login_id.as_ref()).collect();
        for login_id in brought {
            if !account.login_ids.iter().any(|l| l.value == *login_id) {
                continue;
            }
            let in_use = others.iter().any(|i| i.login_id.as_ref() == Some(login_id));
            match (in_use, command.remove_login_id) {
                (true, true) => {
                    return Err(DomainError::LoginIdInUse {
                        login_id: login_id.clone(),
                    });
                }
                (true, false) => {}
                (false, _) => {
                    to_delete.insert(login_id.clone());
                }
            }
        }
    }
    let plan = RemovalPlan::build(
        account,
        registry,
        targets,
        mode,
        to_delete,
        command.force_providers_logout,
    );
    if command.remove_login_id
        && !plan.login_ids_to_delete.is_empty()
        && plan.remaining_login_methods == 0
        && command.last_identity_handling != LastIdentityHandling::Remove
    {
        return Err(DomainError::NoLoginMethodLeft);
    }
    Ok(plan)
}

/// The unlinkaccount action's rules (SPEC section 5): every matching
/// external-id identity is deleted, in whatever state; no last-identity rule.
pub fn plan_unlink_account(
    account: &Account,
    registry: &ProviderRegistry,
    target: &ExternalTarget,
) -> Result<RemovalPlan, DomainError> {
    let targets: Vec<&Identity> = account
        .identities
        .iter()
        .filter(|i| registry.family_of(&i.provider) == ProviderFamily::ExternalId)
        .filter(|i| target.matches(i))
        .collect();
    if let (true, Some(provider)) = (targets.is_empty(), target.named_provider()) {
        return Err(DomainError::NotConnected {
            provider: provider.to_owned(),
        });
    }
    // The unlinkaccount action has no logout parameter: the registry decides.
    Ok(RemovalPlan::build(
        account,
        registry,
        targets,
        RemovalMode::Hard,
        BTreeSet::new(),
        true,
    ))
}

/// One removed identity as the response reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedIdentity {
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub mode: RemovalMode,
    pub removed_login_ids: Vec<String>,
    pub provider_logout_requested: bool,
    /// Empty on a dry run.
    pub event_id: String,
}

/// What a removal answered. Stored as JSON with the request id, so that a
/// retry gets exactly the first answer (same call id and event ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalOutcome {
    pub call_id: String,
    pub time: DateTime<Utc>,
    pub removed: Vec<RemovedIdentity>,
    /// RemoveConnection: the account after the change.
    pub account: Option<AccountView>,
    /// RemoveConnection: the caller's context, unchanged.
    pub context: Option<serde_json::Value>,
    /// UnlinkAccount: where to send the user.
    pub redirect_url: Option<String>,
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::tests::{account, identity};

    fn registry() -> ProviderRegistry {
        ProviderRegistry::default()
    }

    fn command(provider: Option<&str>, handling: LastIdentityHandling) -> RemoveConnectionCommand {
        RemoveConnectionCommand {
            api_key: ApiKey::parse("api_key", "3_a").unwrap(),
            uid: Uid::parse("uid", "u").unwrap(),
            provider: provider.map(Into::into),
            cid: None,
            remove_login_id: false,
            last_identity_handling: handling,
            context: None,
            request_id: None,
            dry_run: false,
            force_providers_logout: true,
        }
    }

    fn with_login(mut identity: Identity, login_id: &str) -> Identity {
        identity.login_id = Some(login_id.into());
        identity
    }

    fn with_sub(mut identity: Identity, sub: &str) -> Identity {
        identity.sub_provider = sub.into();
        identity
    }

    fn removed(plan: &RemovalPlan) -> Vec<(&str, RemovalMode)> {
        plan.removals
            .iter()
            .map(|r| (r.identity.provider.as_str(), r.mode))
            .collect()
    }

    use IdentityState::{Active, SoftRemoved};
    use LastIdentityHandling::{Fail, Remove, Soft};
    use RemovalMode::{Hard, Soft as SoftMode};

    #[test]
    fn a_named_provider_not_connected_is_refused() {
        let acc = account(&[("a@x", true)], vec![identity(1, "twitter", Active)]);
        assert_eq!(
            plan_remove_connection(&acc, &registry(), &command(Some("facebook"), Soft)),
            Err(DomainError::NotConnected {
                provider: "facebook".into()
            })
        );
    }

    #[test]
    fn a_soft_removed_identity_is_not_connected() {
        let acc = account(&[("a@x", true)], vec![identity(1, "facebook", SoftRemoved)]);
        assert!(matches!(
            plan_remove_connection(&acc, &registry(), &command(Some("facebook"), Soft)),
            Err(DomainError::NotConnected { .. })
        ));
    }

    #[test]
    fn all_with_nothing_connected_removes_nothing() {
        let acc = account(&[("a@x", true)], vec![identity(1, "janrain", Active)]);
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Fail)).unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.remaining_login_methods, 2);
    }

    #[test]
    fn removal_that_leaves_a_way_to_log_in_is_hard() {
        let acc = account(
            &[("a@x", true)],
            vec![
                identity(1, "facebook", Active),
                identity(2, "twitter", Active),
            ],
        );
        let plan =
            plan_remove_connection(&acc, &registry(), &command(Some("facebook"), Fail)).unwrap();
        assert_eq!(removed(&plan), [("facebook", Hard)]);
        assert_eq!(plan.remaining_login_methods, 2);
        assert_eq!(plan.after.identities.len(), 1);
        assert!(plan.removals[0].provider_logout_requested);
    }

    #[test]
    fn saml_removals_request_a_provider_logout_unless_the_caller_turns_it_off() {
        let acc = account(
            &[("a@x", true)],
            vec![
                identity(1, "facebook", Active),
                identity(2, "saml-okta", Active),
                identity(3, "twitter", Active),
            ],
        );
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Fail)).unwrap();
        let logout: Vec<_> = plan
            .removals
            .iter()
            .map(|r| (r.identity.provider.as_str(), r.provider_logout_requested))
            .collect();
        assert_eq!(
            logout,
            [("facebook", true), ("saml-okta", true), ("twitter", false)]
        );
        let mut quiet = command(None, Fail);
        quiet.force_providers_logout = false;
        let plan = plan_remove_connection(&acc, &registry(), &quiet).unwrap();
        assert_eq!(plan.removals.len(), 3);
        assert!(plan.removals.iter().all(|r| !r.provider_logout_requested));
        assert!(
            plan.removed(None)
                .iter()
                .all(|r| !r.provider_logout_requested)
        );
    }

    #[test]
    fn the_logout_flag_is_part_of_the_idempotency_fingerprint() {
        let on = RemovalRequest::RemoveConnection(command(None, Fail));
        let mut off = command(None, Fail);
        off.force_providers_logout = false;
        let off = RemovalRequest::RemoveConnection(off);
        assert_ne!(on.fingerprint(), off.fingerprint());
        assert_eq!(
            on.fingerprint(),
            RemovalRequest::RemoveConnection(command(None, Fail)).fingerprint()
        );
    }

    #[test]
    fn all_targets_only_active_social_identities() {
        let acc = account(
            &[],
            vec![
                identity(1, "facebook", Active),
                identity(2, "saml-okta", Active),
                identity(3, "twitter", SoftRemoved),
                identity(4, "gigya", Active),
            ],
        );
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Fail)).unwrap();
        assert_eq!(removed(&plan), [("facebook", Hard), ("saml-okta", Hard)]);
        assert_eq!(plan.remaining_login_methods, 1);
    }

    #[test]
    fn the_last_identity_with_fail_is_refused() {
        let acc = account(&[("a@x", false)], vec![identity(1, "facebook", Active)]);
        assert_eq!(
            plan_remove_connection(&acc, &registry(), &command(Some("facebook"), Fail)),
            Err(DomainError::LastLoginIdentity)
        );
    }

    #[test]
    fn the_last_identities_with_soft_are_soft_removed_and_lose_their_session() {
        let mut fb = identity(1, "facebook", Active);
        fb.has_session = true;
        let acc = account(&[], vec![fb, identity(2, "twitter", Active)]);
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Soft)).unwrap();
        assert_eq!(
            removed(&plan),
            [("facebook", SoftMode), ("twitter", SoftMode)]
        );
        assert_eq!(plan.remaining_login_methods, 0);
        assert!(
            plan.after
                .identities
                .iter()
                .all(|i| i.state == SoftRemoved && !i.has_session)
        );
    }

    #[test]
    fn the_last_identity_with_remove_goes_with_its_login_id() {
        let acc = account(
            &[("fb@x", false)],
            vec![with_login(identity(1, "facebook", Active), "fb@x")],
        );
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Remove)).unwrap();
        assert_eq!(removed(&plan), [("facebook", Hard)]);
        assert_eq!(plan.login_ids_to_delete, ["fb@x"]);
        assert_eq!(plan.removals[0].removed_login_ids, ["fb@x"]);
        assert!(plan.after.login_ids.is_empty());
    }

    #[test]
    fn remove_keeps_a_login_id_another_identity_still_references() {
        let acc = account(
            &[("fb@x", false)],
            vec![
                with_login(identity(1, "facebook", Active), "fb@x"),
                with_login(identity(2, "twitter", SoftRemoved), "fb@x"),
            ],
        );
        let plan = plan_remove_connection(&acc, &registry(), &command(None, Remove)).unwrap();
        assert!(plan.login_ids_to_delete.is_empty());
        assert!(plan.removals[0].removed_login_ids.is_empty());
    }

    #[test]
    fn remove_login_id_deletes_the_login_id_the_identity_brought() {
        let acc = account(
            &[("a@x", true), ("fb@x", false)],
            vec![with_login(identity(1, "facebook", Active), "fb@x")],
        );
        let mut cmd = command(Some("facebook"), Fail);
        cmd.remove_login_id = true;
        let plan = plan_remove_connection(&acc, &registry(), &cmd).unwrap();
        assert_eq!(plan.login_ids_to_delete, ["fb@x"]);
        assert_eq!(plan.remaining_login_methods, 1);
    }

    #[test]
    fn remove_login_id_refuses_a_login_id_another_identity_uses() {
        let acc = account(
            &[("a@x", true), ("fb@x", false)],
            vec![
                with_login(identity(1, "facebook", Active), "fb@x"),
                with_login(identity(2, "twitter", Active), "fb@x"),
            ],
        );
        let mut cmd = command(Some("facebook"), Fail);
        cmd.remove_login_id = true;
        assert_eq!(
            plan_remove_connection(&acc, &registry(), &cmd),
            Err(DomainError::LoginIdInUse {
                login_id: "fb@x".into()
            })
        );
    }

    #[test]
    fn remove_login_id_refuses_to_remove_the_last_password() {
        // The login ID with the password is the only other way to log in.
        let acc = account(
            &[("fb@x", true)],
            vec![with_login(identity(1, "facebook", Active), "fb@x")],
        );
        let mut cmd = command(Some("facebook"), Fail);
        cmd.remove_login_id = true;
        assert_eq!(
            plan_remove_connection(&acc, &registry(), &cmd),
            Err(DomainError::NoLoginMethodLeft)
        );
        cmd.last_identity_handling = Remove;
        let plan = plan_remove_connection(&acc, &registry(), &cmd).unwrap();
        assert_eq!(plan.remaining_login_methods, 0);
    }

    #[test]
    fn soft_removal_with_remove_login_id_leaves_no_way_to_log_in() {
        let acc = account(
            &[("fb@x", false)],
            vec![with_login(identity(1, "facebook", Active), "fb@x")],
        );
        let mut cmd = command(Some("facebook"), Soft);
        cmd.remove_login_id = true;
        assert_eq!(
            plan_remove_connection(&acc, &registry(), &cmd),
            Err(DomainError::NoLoginMethodLeft)
        );
    }

    #[test]
    fn unlink_deletes_every_external_identity_whatever_its_state() {
        let acc = account(
            &[],
            vec![
                identity(1, "janrain", Active),
                identity(2, "gigya", SoftRemoved),
                identity(3, "facebook", Active),
            ],
        );
        let plan = plan_unlink_account(&acc, &registry(), &ExternalTarget::Every).unwrap();
        assert_eq!(removed(&plan), [("janrain", Hard), ("gigya", Hard)]);
        assert_eq!(plan.remaining_login_methods, 1);
    }

    #[test]
    fn unlink_of_one_janrain_sub_provider_keeps_the_others() {
        let acc = account(
            &[],
            vec![
                with_sub(identity(1, "janrain", Active), "yahoo"),
                with_sub(identity(2, "janrain", Active), "gigya"),
            ],
        );
        let target = ExternalTarget::SubProvider {
            provider: "janrain".into(),
            sub_provider: "gigya".into(),
        };
        let plan = plan_unlink_account(&acc, &registry(), &target).unwrap();
        assert_eq!(plan.removals.len(), 1);
        assert_eq!(plan.removals[0].identity.sub_provider, "gigya");
        let all = ExternalTarget::Provider {
            provider: "janrain".into(),
        };
        assert_eq!(
            plan_unlink_account(&acc, &registry(), &all)
                .unwrap()
                .removals
                .len(),
            2
        );
    }

    #[test]
    fn unlink_of_a_named_provider_matching_nothing_is_not_connected() {
        let acc = account(&[], vec![identity(1, "janrain", Active)]);
        let target = ExternalTarget::Provider {
            provider: "sheridan".into(),
        };
        assert!(matches!(
            plan_unlink_account(&acc, &registry(), &target),
            Err(DomainError::NotConnected { .. })
        ));
        let empty = account(&[], vec![]);
        assert!(
            plan_unlink_account(&empty, &registry(), &ExternalTarget::Every)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_named_provider_targets_all_its_active_identities() {
        let mut second = identity(2, "facebook", Active);
        second.provider_uid = "other".into();
        let acc = account(
            &[("a@x", true)],
            vec![
                identity(1, "facebook", Active),
                second,
                identity(3, "twitter", Active),
            ],
        );
        let plan =
            plan_remove_connection(&acc, &registry(), &command(Some("facebook"), Fail)).unwrap();
        assert_eq!(removed(&plan), [("facebook", Hard), ("facebook", Hard)]);
    }

    fn site(enabled: bool) -> Site {
        Site {
            id: 1,
            api_key: "3_a".into(),
            vhost: 1,
            name: "s".into(),
            unlink_action_enabled: enabled,
            allowed_redirect_origins: vec!["https://www.example.com".into()],
            allowed_browser_origins: vec![],
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    fn unlink(redirect_url: &str) -> RemovalRequest {
        RemovalRequest::UnlinkAccount(UnlinkAccountCommand {
            vhost: Vhost::parse("vhost", 1).unwrap(),
            uid: Uid::parse("uid", "42").unwrap(),
            redirect_url: redirect_url.into(),
            target: ExternalTarget::Every,
            request_id: None,
            dry_run: false,
        })
    }

    #[test]
    fn unlink_needs_the_action_enabled_before_looking_at_the_redirect() {
        assert_eq!(
            unlink("//evil.com").check_site(&site(false)),
            Err(DomainError::ActionDisabled)
        );
        assert!(matches!(
            unlink("//evil.com").check_site(&site(true)),
            Err(DomainError::RedirectNotAllowed { .. })
        ));
        assert_eq!(
            unlink("https://www.example.com/x")
                .check_site(&site(true))
                .map(|r| r.map(RedirectTarget::into_string)),
            Ok(Some("https://www.example.com/x".into()))
        );
    }

    #[test]
    fn fingerprints_differ_when_any_field_differs() {
        let a = RemovalRequest::RemoveConnection(command(Some("facebook"), Soft));
        let mut other = command(Some("facebook"), Soft);
        other.context = Some(serde_json::json!({"k": 1}));
        let b = RemovalRequest::RemoveConnection(other);
        let mut dry = command(Some("facebook"), Soft);
        dry.dry_run = true;
        let c = RemovalRequest::RemoveConnection(dry);
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
