//! User tokens for the browser SDK: a site's backend mints a short-lived
//! token bound to one site and one uid (AdminService or the CLI) and hands
//! it to its page; the page sends it with each call. The token is an
//! ordinary API token (stored hashed, cached and revoked like the others)
//! with a uid scope and only the [`USER_TOKEN_PERMISSIONS`], so it can remove
//! that user's connections and read that user's account, nothing else.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{ServiceError, ServiceResult, Services, check_scope};
use crate::{
    access::{CallContext, USER_TOKEN_PERMISSIONS, format_permissions, generate_token, hash_token},
    domain::{ApiKey, DomainError, Uid, redirect::normalize_origin_of},
    storage::{StorageResult, TokenStore},
};

/// A user token's lifetime when the request names none.
pub const DEFAULT_USER_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest a user token may live: it sits in a web page.
pub const MAX_USER_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// CreateUserToken's request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTokenRequest {
    pub api_key: ApiKey,
    pub uid: Uid,
    pub ttl: Duration,
}

impl UserTokenRequest {
    /// `ttl_seconds` 0 means the default; otherwise 1 s to the maximum.
    pub fn parse(api_key: &str, uid: &str, ttl_seconds: i64) -> Result<Self, DomainError> {
        let ttl = match ttl_seconds {
            0 => DEFAULT_USER_TOKEN_TTL,
            s if s > 0 && s.unsigned_abs() <= MAX_USER_TOKEN_TTL.as_secs() => {
                Duration::from_secs(s.unsigned_abs())
            }
            _ => {
                return Err(DomainError::invalid(
                    "ttl_seconds",
                    format!(
                        "must be 0 (the default, {} s) or 1 to {} seconds",
                        DEFAULT_USER_TOKEN_TTL.as_secs(),
                        MAX_USER_TOKEN_TTL.as_secs()
                    ),
                ));
            }
        };
        Ok(Self {
            api_key: ApiKey::parse_key("api_key", api_key)?,
            uid: Uid::parse("uid", uid)?,
            ttl,
        })
    }

    /// Generates the token and stores its hash; shared by the RPC and the
    /// CLI.
    pub async fn mint(&self, store: &TokenStore) -> StorageResult<CreatedUserToken> {
        let token = generate_token();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::minutes(15));
        let token_id = store
            .create_user_token(
                &format!("user:{}", self.uid),
                &hash_token(&token),
                self.api_key.as_str(),
                self.uid.as_str(),
                &format_permissions(&USER_TOKEN_PERMISSIONS.into_iter().collect()),
                expires_at,
            )
            .await?;
        Ok(CreatedUserToken {
            token,
            token_id,
            expires_at,
        })
    }
}

/// A user token just minted: the token is shown this once.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedUserToken {
    pub token: String,
    pub token_id: i64,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for CreatedUserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedUserToken")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Services {
    /// Mints a user token for an existing site within the caller's scope.
    pub async fn create_user_token(
        &self,
        call: &CallContext,
        request: UserTokenRequest,
    ) -> ServiceResult<CreatedUserToken> {
        check_scope(call, request.api_key.as_str())?;
        self.storage(|| self.repo.site_by_api_key(&request.api_key))
            .await?;
        let created = request.mint(&self.repo.tokens()).await?;
        tracing::info!(
            token_id = created.token_id,
            expires_at = %created.expires_at,
            "user token created"
        );
        Ok(created)
    }

    /// Whether the site `api_key` lets pages of `origin` (a browser's
    /// `Origin` header) call it: the origin, normalised, is in the site's
    /// `allowed_browser_origins`. Unknown sites and unreadable origins are
    /// a no; so is a database that cannot answer (logged).
    pub async fn allows_browser_origin(&self, api_key: &str, origin: &str) -> bool {
        let (Ok(api_key), Ok(origin)) = (
            ApiKey::parse_key("apiKey", api_key),
            normalize_origin_of("Origin", origin),
        ) else {
            return false;
        };
        match self.storage(|| self.repo.site_by_api_key(&api_key)).await {
            Ok(site) => site.allowed_browser_origins.contains(&origin),
            Err(ServiceError::Rule(DomainError::SiteNotFound)) => false,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a site's browser origins: CORS refused");
                false
            }
        }
    }

    /// Revokes every active user token of one uid of a site within the
    /// caller's scope; returns how many.
    pub async fn revoke_user_tokens(
        &self,
        call: &CallContext,
        api_key: &ApiKey,
        uid: &Uid,
    ) -> ServiceResult<u64> {
        check_scope(call, api_key.as_str())?;
        let tokens = self.repo.tokens();
        let revoked = self
            .storage(|| tokens.revoke_user(api_key.as_str(), uid.as_str()))
            .await?;
        tracing::info!(revoked, "user tokens revoked");
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_token_lifetimes_default_to_15_minutes_and_are_bounded() {
        let parse = |ttl| UserTokenRequest::parse("3_a", "u1", ttl);
        assert_eq!(parse(0).unwrap().ttl, DEFAULT_USER_TOKEN_TTL);
        assert_eq!(parse(60).unwrap().ttl, Duration::from_secs(60));
        assert_eq!(parse(3600).unwrap().ttl, MAX_USER_TOKEN_TTL);
        for bad in [-1, 3601, i64::MIN, i64::MAX] {
            assert_eq!(
                parse(bad).unwrap_err().field(),
                Some("ttl_seconds"),
                "{bad}"
            );
        }
        assert_eq!(
            UserTokenRequest::parse("3_a", "", 0).unwrap_err(),
            DomainError::MissingParameter { field: "uid" }
        );
    }
}
