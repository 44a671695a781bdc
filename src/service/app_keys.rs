//! Application keys of the REST door: create (the secret is returned once),
//! list and revoke. A caller manages only keys within its own site scope,
//! so an admin of some sites cannot mint a key for others.

use std::collections::BTreeSet;

use super::{ServiceError, ServiceResult, Services, StoredAppKey};
use crate::{
    access::{
        AccessError, CallContext, Permission, SiteScope,
        app_keys::{generate_secret, generate_user_key},
        format_permissions, format_sites, parse_caller_name, parse_permissions, parse_sites,
        scope_contains,
    },
    domain::DomainError,
    storage::{AppKeyStore, StorageResult},
};

/// CreateAppKey as a door received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppKeyInput {
    pub caller: String,
    /// api_keys, or `["*"]` for every site.
    pub sites: Vec<String>,
    pub permissions: Vec<String>,
}

/// CreateAppKey's request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAppKey {
    pub caller: String,
    pub sites: SiteScope,
    pub permissions: BTreeSet<Permission>,
}

impl NewAppKey {
    /// Generates the key and its secret and stores it (sealed); returns the
    /// stored key and the secret, base64, to show once.
    pub async fn mint(&self, store: &AppKeyStore) -> StorageResult<(StoredAppKey, String)> {
        let (secret, encoded) = generate_secret();
        let key = store
            .create(
                &generate_user_key(),
                &self.caller,
                &secret,
                &format_sites(&self.sites),
                &format_permissions(&self.permissions),
            )
            .await?;
        Ok((key, encoded))
    }
}

impl AppKeyInput {
    pub fn parse(self) -> Result<NewAppKey, DomainError> {
        let Self {
            caller,
            sites,
            permissions,
        } = self;
        if caller.trim().is_empty() {
            return Err(DomainError::MissingParameter { field: "caller" });
        }
        if sites.is_empty() {
            return Err(DomainError::MissingParameter { field: "sites" });
        }
        if permissions.is_empty() {
            return Err(DomainError::MissingParameter {
                field: "permissions",
            });
        }
        Ok(NewAppKey {
            caller: parse_caller_name(&caller).map_err(|e| DomainError::invalid("caller", e))?,
            sites: parse_sites(&sites.join(",")).map_err(|e| DomainError::invalid("sites", e))?,
            permissions: parse_permissions(&permissions.join(","))
                .map_err(|e| DomainError::invalid("permissions", e))?,
        })
    }
}

/// A key just created, with its secret (base64): shown this once.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedAppKey {
    pub key: StoredAppKey,
    pub secret: String,
}

impl std::fmt::Debug for CreatedAppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedAppKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Services {
    /// Creates a key scoped to sites within the caller's own scope.
    pub async fn create_app_key(
        &self,
        call: &CallContext,
        request: NewAppKey,
    ) -> ServiceResult<CreatedAppKey> {
        if !scope_contains(call.scope(), &request.sites) {
            return Err(AccessError::ForbiddenSite.into());
        }
        let store = self.repo.app_keys();
        if !store.seals_durably() {
            return Err(ServiceError::NotConfigured(
                "application keys need a server secret key: start the server with \
                 --session-key (CONNECTIONS_SESSION_KEY)",
            ));
        }
        let (key, encoded) = request.mint(&store).await?;
        tracing::info!(
            user_key = key.user_key,
            caller = key.caller,
            "application key created"
        );
        Ok(CreatedAppKey {
            key,
            secret: encoded,
        })
    }

    /// Every key within the caller's scope, active or revoked, oldest first.
    pub async fn list_app_keys(&self, call: &CallContext) -> ServiceResult<Vec<StoredAppKey>> {
        let keys = self.repo.app_keys().list().await?;
        Ok(keys
            .into_iter()
            .filter(|key| in_scope(call.scope(), key))
            .collect())
    }

    /// Revokes an active key within the caller's scope; a key outside it is
    /// as unknown as a key that does not exist.
    pub async fn revoke_app_key(
        &self,
        call: &CallContext,
        user_key: &str,
    ) -> ServiceResult<StoredAppKey> {
        if user_key.is_empty() {
            return Err(DomainError::MissingParameter { field: "user_key" }.into());
        }
        let store = self.repo.app_keys();
        match store.find(user_key).await? {
            Some(key) if key.revoked_at.is_none() && in_scope(call.scope(), &key) => {}
            _ => return Err(DomainError::AppKeyNotFound.into()),
        }
        let key = store
            .revoke(user_key)
            .await?
            .ok_or(DomainError::AppKeyNotFound)?;
        tracing::info!(user_key = key.user_key, "application key revoked");
        Ok(key)
    }
}

fn in_scope(scope: &SiteScope, key: &StoredAppKey) -> bool {
    parse_sites(&key.sites).is_ok_and(|sites| scope_contains(scope, &sites))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_key_requests_parse_like_tokens() {
        let parsed = AppKeyInput {
            caller: " billing ".into(),
            sites: vec!["3_b".into(), "3_a".into()],
            permissions: vec!["connections.write".into()],
        }
        .parse()
        .unwrap();
        assert_eq!(parsed.caller, "billing");
        assert_eq!(format_sites(&parsed.sites), "3_a,3_b");
        for (input, field) in [
            (
                AppKeyInput {
                    caller: String::new(),
                    ..AppKeyInput::default()
                },
                "caller",
            ),
            (
                AppKeyInput {
                    caller: "c".into(),
                    sites: vec!["*".into(), "3_a".into()],
                    permissions: vec!["admin".into()],
                },
                "sites",
            ),
            (
                AppKeyInput {
                    caller: "c".into(),
                    sites: vec!["*".into()],
                    permissions: vec!["delete".into()],
                },
                "permissions",
            ),
        ] {
            assert_eq!(input.parse().unwrap_err().field(), Some(field));
        }
    }

    #[test]
    fn a_restricted_caller_only_reaches_keys_within_its_sites() {
        let scope = SiteScope::Only(["3_a".to_owned()].into());
        let key = |sites: &str| StoredAppKey {
            user_key: "k".into(),
            caller: "c".into(),
            sites: sites.into(),
            permissions: "connections.write".into(),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        };
        assert!(in_scope(&scope, &key("3_a")));
        assert!(!in_scope(&scope, &key("3_a,3_b")));
        assert!(!in_scope(&scope, &key("*")));
        assert!(in_scope(&SiteScope::All, &key("*")));
    }
}
