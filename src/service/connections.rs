//! Connection use cases: RemoveConnection, UnlinkAccount, LinkConnection,
//! GetAccount.

use super::{
    ServiceResult, Services, check_account_scope, check_scope, check_scope_of_lookup, record_site,
};
use crate::{
    access::CallContext,
    domain::{
        AccountView, ApiKey, NewIdentity, Uid,
        link::LinkOutcome,
        removal::{RemovalOutcome, RemovalRequest, RemoveConnectionCommand, UnlinkAccountCommand},
    },
};

/// LinkConnection's request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    pub api_key: ApiKey,
    pub uid: Uid,
    pub identity: NewIdentity,
}

impl Services {
    /// socialize.removeConnection (SPEC section 4).
    pub async fn remove_connection(
        &self,
        call: &CallContext,
        command: RemoveConnectionCommand,
    ) -> ServiceResult<RemovalOutcome> {
        check_account_scope(call, command.api_key.as_str(), command.uid.as_str())?;
        let request = RemovalRequest::RemoveConnection(command);
        let origin = call.origin();
        self.storage(|| self.repo.remove(&self.registry, &origin, request.clone()))
            .await
    }

    /// The unlinkaccount action (SPEC section 5).
    pub async fn unlink_account(
        &self,
        call: &CallContext,
        command: UnlinkAccountCommand,
    ) -> ServiceResult<RemovalOutcome> {
        record_site(command.vhost.get());
        // A user token names an account by api_key, never by vhost.
        if call.caller.uid.is_some() {
            return Err(crate::access::AccessError::ForbiddenAccount.into());
        }
        // The request names the site by vhost: find it to check the scope.
        let lookup = self
            .storage(|| self.repo.site_by_vhost(command.vhost))
            .await;
        check_scope_of_lookup(call.scope(), lookup, |s| s.api_key.as_str())?;
        let request = RemovalRequest::UnlinkAccount(command);
        let origin = call.origin();
        self.storage(|| self.repo.remove(&self.registry, &origin, request.clone()))
            .await
    }

    /// LinkConnection (SPEC section 6).
    pub async fn link_connection(
        &self,
        call: &CallContext,
        request: LinkRequest,
    ) -> ServiceResult<LinkOutcome> {
        let LinkRequest {
            api_key,
            uid,
            identity,
        } = request;
        check_scope(call, api_key.as_str())?;
        self.storage(|| self.repo.link_connection(&api_key, &uid, identity.clone()))
            .await
    }

    /// GetAccount: the account with its login IDs and identities, no secrets.
    pub async fn get_account(
        &self,
        call: &CallContext,
        api_key: &ApiKey,
        uid: &Uid,
    ) -> ServiceResult<AccountView> {
        check_account_scope(call, api_key.as_str(), uid.as_str())?;
        let account = self.storage(|| self.repo.account(api_key, uid)).await?;
        Ok(AccountView::of(&account))
    }
}
