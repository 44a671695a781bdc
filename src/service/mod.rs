//! The application services: one function per use case, shared by every
//! door. Each takes a plain, validated request and the [`CallContext`], checks
//! the caller's site scope, runs the use case over storage and the domain
//! rules, and returns a plain result or a [`ServiceError`]. Doors only
//! convert their protocol to and from these types.

mod action_link;
mod admin;
mod app_keys;
mod connections;
mod error;
mod events;
mod user_tokens;

use std::sync::Arc;

/// An application key as the services report it (never its secret).
pub use crate::storage::StoredAppKey;
pub use action_link::{
    FollowLink, LinkFollowed, LinkRefused, SignLinkRequest, UNLINK_ACCOUNT_PATH,
};
pub use app_keys::AppKeyInput;
pub use connections::LinkRequest;
pub use error::{ServiceError, ServiceResult};
pub use events::{MAX_HEARTBEAT_SECONDS, SubscribeRequest, SubscribeStart};
pub use user_tokens::UserTokenRequest;

use crate::{
    access::{AccessError, CallContext, SiteScope},
    domain::{DomainError, ProviderRegistry},
    events::EventHub,
    storage::{Repository, StorageResult},
};

/// Everything the use cases need; cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    repo: Repository,
    registry: Arc<ProviderRegistry>,
    events: EventHub,
    /// `scheme://host[:port][/prefix]` of the HTTP listener as clients
    /// reach it, for minted action links; None: links are relative.
    public_base_url: Option<String>,
}

impl Services {
    pub fn new(repo: Repository, registry: Arc<ProviderRegistry>, events: EventHub) -> Self {
        Self {
            repo,
            registry,
            events,
            public_base_url: None,
        }
    }

    /// Where clients reach the HTTP listener (`--public-base-url`), put in
    /// front of minted action links.
    #[must_use]
    pub fn with_public_base_url(mut self, public_base_url: Option<String>) -> Self {
        self.public_base_url = public_base_url;
        self
    }

    /// The newest sequenced position this replica has published (for the
    /// relay, which follows it to wake up).
    pub(crate) fn event_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.head.clone()
    }

    /// The provider registry requests are parsed against.
    pub fn registry(&self) -> &ProviderRegistry {
        &self.registry
    }
}

impl Services {
    /// Runs one storage step of a use case through the database breaker
    /// (fail fast while down, one retry after a lost connection).
    async fn storage<T, F, Fut>(&self, step: F) -> ServiceResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        self.repo.guarded(step).await.map_err(ServiceError::from)
    }
}

/// Names the call's site (api_key, or vhost) in the call's span. Cheap;
/// does nothing outside a call.
fn record_site(site: impl std::fmt::Display) {
    tracing::Span::current().record("site", tracing::field::display(site));
}

/// Refuses a site outside the caller's scope (and user tokens, which act
/// only through [`check_account_scope`]); called before the site is looked
/// up, so an unknown site and a forbidden one look the same.
fn check_scope(call: &CallContext, api_key: &str) -> ServiceResult<()> {
    record_site(api_key);
    call.caller.check_site(api_key).map_err(ServiceError::from)
}

/// For use cases about one account: refuses a site outside the caller's
/// scope, and for a user token any account but its own.
fn check_account_scope(call: &CallContext, api_key: &str, uid: &str) -> ServiceResult<()> {
    record_site(api_key);
    call.caller
        .check_account(api_key, uid)
        .map_err(ServiceError::from)
}

/// For requests that name the site by something other than its api_key
/// (UnlinkAccount's vhost): `lookup` is the site or the lookup's error. A
/// restricted caller gets the same refusal for a forbidden and for an
/// unknown site.
fn check_scope_of_lookup<T>(
    scope: &SiteScope,
    lookup: ServiceResult<T>,
    api_key_of: impl Fn(&T) -> &str,
) -> ServiceResult<T> {
    match (scope, lookup) {
        (SiteScope::All, lookup) => lookup,
        (SiteScope::Only(_), Ok(site)) => scope
            .check(api_key_of(&site))
            .map(|()| site)
            .map_err(Into::into),
        (SiteScope::Only(_), Err(ServiceError::Rule(DomainError::SiteNotFound))) => {
            Err(AccessError::ForbiddenSite.into())
        }
        (SiteScope::Only(_), Err(other)) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_callers_cannot_tell_unknown_from_forbidden_sites() {
        let scope = SiteScope::Only(["3_a".to_owned()].into());
        let unknown: ServiceResult<String> = Err(DomainError::SiteNotFound.into());
        let forbidden: ServiceResult<String> = Ok("3_b".into());
        let a = check_scope_of_lookup(&scope, unknown, |s| s.as_str()).unwrap_err();
        let b = check_scope_of_lookup(&scope, forbidden, |s| s.as_str()).unwrap_err();
        assert!(matches!(
            a,
            ServiceError::Access(AccessError::ForbiddenSite)
        ));
        assert!(matches!(
            b,
            ServiceError::Access(AccessError::ForbiddenSite)
        ));
        assert!(scope.check("3_a").is_ok());
        assert!(SiteScope::All.check("anything").is_ok());
    }
}
