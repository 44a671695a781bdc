//! Who the caller is and which sites they may touch. The authentication
//! layer puts a `Caller` into request extensions; without one (open mode, no
//! tokens configured) every site is in scope.

use std::collections::BTreeSet;

use tonic::Request;

use super::status::ApiError;
use crate::domain::DomainError;

/// Sites a caller may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteScope {
    All,
    /// API keys.
    Only(BTreeSet<String>),
}

impl SiteScope {
    pub fn allows(&self, api_key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(keys) => keys.contains(api_key),
        }
    }

    /// Refuses a site outside the scope. Called before the site is looked up,
    /// so an unknown site and a forbidden one look the same.
    pub fn check(&self, api_key: &str) -> Result<(), ApiError> {
        if self.allows(api_key) {
            Ok(())
        } else {
            Err(forbidden_site())
        }
    }

    /// For requests that name the site by something other than its api_key
    /// (UnlinkAccount's vhost): `lookup` is the site's api_key or the lookup's
    /// error. A restricted caller gets PERMISSION_DENIED both for a forbidden
    /// and for an unknown site.
    pub fn check_lookup<T>(
        &self,
        lookup: Result<T, ApiError>,
        api_key_of: impl Fn(&T) -> &str,
    ) -> Result<T, ApiError> {
        match (self, lookup) {
            (Self::All, lookup) => lookup,
            (Self::Only(_), Ok(site)) => self.check(api_key_of(&site)).map(|()| site),
            (Self::Only(_), Err(ApiError::Rule(DomainError::SiteNotFound))) => {
                Err(forbidden_site())
            }
            (Self::Only(_), Err(other)) => Err(other),
        }
    }
}

fn forbidden_site() -> ApiError {
    ApiError::PermissionDenied("the caller may not act on this site".into())
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub sites: SiteScope,
}

/// The caller's site scope (everything in open mode).
pub fn site_scope<T>(request: &Request<T>) -> SiteScope {
    request
        .extensions()
        .get::<Caller>()
        .map_or(SiteScope::All, |c| c.sites.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_callers_cannot_tell_unknown_from_forbidden_sites() {
        let scope = SiteScope::Only(["3_a".to_owned()].into());
        let unknown: Result<String, ApiError> = Err(DomainError::SiteNotFound.into());
        let forbidden: Result<String, ApiError> = Ok("3_b".into());
        let a = scope.check_lookup(unknown, |s| s.as_str()).unwrap_err();
        let b = scope.check_lookup(forbidden, |s| s.as_str()).unwrap_err();
        assert_eq!(a.code_and_reason(), b.code_and_reason());
        assert!(scope.check("3_a").is_ok());
        assert!(SiteScope::All.check("anything").is_ok());
    }
}
