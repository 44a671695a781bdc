//! Accounts as the rules see them: login IDs, identities and the
//! "way to log in" count that every removal rule is about.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::DomainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IdentityState {
    Active,
    SoftRemoved,
}

impl IdentityState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::SoftRemoved => "SOFT_REMOVED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ACTIVE" => Some(Self::Active),
            "SOFT_REMOVED" => Some(Self::SoftRemoved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginId {
    pub value: String,
    pub has_password: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Storage id, so the repository can apply a plan to the right rows.
    pub id: i64,
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub login_id: Option<String>,
    pub state: IdentityState,
    pub has_session: bool,
    pub linked_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Identity {
    pub fn is_active(&self) -> bool {
        self.state == IdentityState::Active
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub id: i64,
    pub api_key: String,
    pub vhost: i64,
    pub name: String,
    pub unlink_action_enabled: bool,
    pub allowed_redirect_origins: Vec<String>,
    /// Origins whose pages may call the REST endpoint (CORS).
    pub allowed_browser_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub api_key: String,
    pub vhost: i64,
    pub uid: String,
    pub login_ids: Vec<LoginId>,
    pub identities: Vec<Identity>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Account {
    /// Ways to log in: active identities plus login IDs with a password.
    pub fn login_methods(&self) -> u32 {
        let identities = self.identities.iter().filter(|i| i.is_active()).count();
        let passwords = self.login_ids.iter().filter(|l| l.has_password).count();
        u32::try_from(identities + passwords).unwrap_or(u32::MAX)
    }
}

/// UpsertSite's input, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    pub api_key: super::ApiKey,
    pub vhost: super::Vhost,
    pub name: String,
    pub unlink_action_enabled: bool,
    /// Normalised by `redirect::normalize_origin`.
    pub allowed_redirect_origins: Vec<String>,
    /// Normalised the same way.
    pub allowed_browser_origins: Vec<String>,
}

/// Provider session data. Secret: its Debug output is redacted so that it
/// cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderSession {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ProviderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSession(<redacted>)")
    }
}

/// LinkConnection's input, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdentity {
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: super::ProviderUid,
    pub login_id: Option<super::LoginIdValue>,
    pub session: Option<ProviderSession>,
}

/// A login ID to set on an account, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLoginId {
    pub value: super::LoginIdValue,
    pub has_password: bool,
}

/// Checks UpsertAccount's list of login IDs: no duplicates.
pub fn distinct_login_ids(login_ids: &[NewLoginId]) -> Result<(), DomainError> {
    let mut seen = std::collections::HashSet::new();
    for login_id in login_ids {
        if !seen.insert(login_id.value.as_str()) {
            return Err(DomainError::invalid(
                "login_ids",
                format!(
                    "login ID {} is listed twice",
                    super::error::shown(login_id.value.as_str())
                ),
            ));
        }
    }
    Ok(())
}

/// UpsertAccount may not drop a login ID that an identity of the account
/// still brings: the identity would point at nothing.
pub fn check_dropped_login_ids(account: &Account, kept: &[NewLoginId]) -> Result<(), DomainError> {
    for identity in &account.identities {
        if let Some(login_id) = &identity.login_id
            && !kept.iter().any(|k| k.value.as_str() == login_id)
        {
            return Err(DomainError::LoginIdInUse {
                login_id: login_id.clone(),
            });
        }
    }
    Ok(())
}

/// An account as callers see it (GetAccount, the removal and link
/// responses, the stored idempotent answer): [`Account`] without storage
/// ids and never with secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub api_key: String,
    pub uid: String,
    pub login_ids: Vec<(String, bool)>,
    pub identities: Vec<IdentityView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An identity as callers see it: [`Identity`] without its storage id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub login_id: Option<String>,
    pub state: IdentityState,
    pub has_session: bool,
    pub linked_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AccountView {
    pub fn of(account: &Account) -> Self {
        Self {
            api_key: account.api_key.clone(),
            uid: account.uid.clone(),
            login_ids: account
                .login_ids
                .iter()
                .map(|l| (l.value.clone(), l.has_password))
                .collect(),
            identities: account.identities.iter().map(IdentityView::of).collect(),
            created_at: account.created_at,
            updated_at: account.updated_at,
        }
    }

    /// Ways to log in: active identities plus login IDs with a password.
    pub fn login_methods(&self) -> u32 {
        let identities = self
            .identities
            .iter()
            .filter(|i| i.state == IdentityState::Active)
            .count();
        let passwords = self.login_ids.iter().filter(|(_, p)| *p).count();
        u32::try_from(identities + passwords).unwrap_or(u32::MAX)
    }
}

impl IdentityView {
    pub fn of(identity: &Identity) -> Self {
        Self {
            provider: identity.provider.clone(),
            sub_provider: identity.sub_provider.clone(),
            provider_uid: identity.provider_uid.clone(),
            login_id: identity.login_id.clone(),
            state: identity.state,
            has_session: identity.has_session,
            linked_at: identity.linked_at,
            updated_at: identity.updated_at,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn identity(id: i64, provider: &str, state: IdentityState) -> Identity {
        Identity {
            id,
            provider: provider.into(),
            sub_provider: String::new(),
            provider_uid: format!("{provider}-{id}"),
            login_id: None,
            state,
            has_session: false,
            linked_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    pub fn account(login_ids: &[(&str, bool)], identities: Vec<Identity>) -> Account {
        Account {
            id: 1,
            api_key: "key".into(),
            vhost: 1,
            uid: "u".into(),
            login_ids: login_ids
                .iter()
                .map(|(v, p)| LoginId {
                    value: (*v).into(),
                    has_password: *p,
                })
                .collect(),
            identities,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn login_methods_count_active_identities_and_passwords_only() {
        let account = account(
            &[("a@x", true), ("b@x", false)],
            vec![
                identity(1, "facebook", IdentityState::Active),
                identity(2, "twitter", IdentityState::SoftRemoved),
            ],
        );
        assert_eq!(account.login_methods(), 2);
    }

    #[test]
    fn upsert_may_not_drop_a_login_id_an_identity_brought() {
        let mut fb = identity(1, "facebook", IdentityState::Active);
        fb.login_id = Some("a@x".into());
        let account = account(&[("a@x", false)], vec![fb]);
        assert_eq!(
            check_dropped_login_ids(&account, &[]),
            Err(DomainError::LoginIdInUse {
                login_id: "a@x".into()
            })
        );
    }
}
