//! The signed unlink action link (SPEC section 12): a site's action secret
//! (created with the site, rotated on request), minting a link for a site's
//! backend, and following a link a browser brought. Following runs the
//! same UnlinkAccount use case as the gRPC door, under an idempotency key
//! derived from the link's signature, so a link acts at most once on any
//! replica and every later click gets the first outcome.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{
    ServiceError, ServiceResult, Services, check_scope, check_scope_of_lookup, record_site,
};
use crate::{
    access::{
        AccessError, CallContext, Caller, SiteScope,
        action_link::{
            self, EXPIRES_PARAMETER, MAX_LIFETIME_SECONDS, SIG_PARAMETER, canonical_query,
        },
    },
    domain::{
        ApiKey, DomainError, RedirectTarget, Site, Vhost,
        input::UnlinkAccountInput,
        removal::{RemovalOutcome, RemovalRequest},
    },
};

/// The path of the action link on the HTTP listener.
pub const UNLINK_ACCOUNT_PATH: &str = "/action/v2/unlinkaccount";

/// The actor named in the events of a followed link.
pub const LINK_ACTOR: &str = "action-link";

/// Who may mint links needs the admin permission; the server must be able
/// to open the secret later, on every replica.
const NEEDS_SESSION_KEY: &str = "action links need a server secret key: start the server with \
                                 --session-key (CONNECTIONS_SESSION_KEY), then rotate the \
                                 site's action secret (RotateActionSecret)";

/// SignUnlinkLink's request: the link's parameters as UnlinkAccount takes
/// them (`request_id` and `dry_run` must be left empty), its lifetime, and
/// the base URL to put in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignLinkRequest {
    pub unlink: UnlinkAccountInput,
    /// Seconds, 1 to 900; None: 900.
    pub ttl_seconds: Option<i64>,
    /// `scheme://host[:port][/prefix]`; None: the server's
    /// `--public-base-url`, else the link is relative.
    pub base_url: Option<String>,
}

impl SignLinkRequest {
    /// A link for these UnlinkAccount parameters, living 15 minutes, with
    /// the server's base URL.
    pub fn new(
        vhost: i64,
        uid: i64,
        redirect_url: String,
        external_id_provider_name: Option<String>,
        sub_provider_name: String,
    ) -> Self {
        Self {
            unlink: UnlinkAccountInput {
                vhost,
                uid,
                redirect_url,
                external_id_provider_name,
                sub_provider_name,
                request_id: String::new(),
                dry_run: false,
            },
            ttl_seconds: None,
            base_url: None,
        }
    }
}

/// A minted link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLink {
    /// The whole link: the base URL, the path and the signed query (only
    /// path and query when no base URL is known).
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// A link as a browser brought it. `canonical` is the canonical query of
/// every parameter it carried but `sig`; the other fields are the single
/// values of the parameters the link uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowLink {
    pub vhost: Vhost,
    pub canonical: String,
    pub sig: Option<String>,
    pub expires: Option<String>,
    pub uid: Option<String>,
    pub redirect_url: Option<String>,
    pub external_id_provider_name: Option<String>,
    pub sub_provider_name: Option<String>,
    pub call_id: String,
    pub traceparent: Option<String>,
}

/// A followed link that unlinked (or had unlinked before, for a repeated
/// click): where to send the browser, and what happened.
#[derive(Debug, Clone)]
pub struct LinkFollowed {
    pub redirect: RedirectTarget,
    pub outcome: RemovalOutcome,
}

/// A refused link: why, and the redirect when it was already known to be
/// safe (signed, and allowed for the site).
#[derive(Debug)]
pub struct LinkRefused {
    pub error: ServiceError,
    pub redirect: Option<RedirectTarget>,
}

impl LinkRefused {
    fn without_redirect(error: impl Into<ServiceError>) -> Self {
        Self {
            error: error.into(),
            redirect: None,
        }
    }
}

impl Services {
    /// Replaces the site's action secret with a new one and returns it
    /// (base64url): the only time it is shown. Links signed with the old
    /// secret stop working.
    pub async fn rotate_action_secret(
        &self,
        call: &CallContext,
        api_key: &ApiKey,
    ) -> ServiceResult<String> {
        check_scope(call, api_key.as_str())?;
        if !self.repo.seals_durably() {
            return Err(ServiceError::NotConfigured(NEEDS_SESSION_KEY));
        }
        let site = self.storage(|| self.repo.site_by_api_key(api_key)).await?;
        let secret = action_link::generate_secret();
        self.storage(|| self.repo.rotate_action_secret(site.id, &secret))
            .await?;
        tracing::info!(site = api_key.as_str(), "action secret rotated");
        Ok(action_link::encode_secret(&secret))
    }

    /// Mints a signed link for the site that `request.unlink.vhost` names,
    /// after the checks UnlinkAccount would make (parameters, the action
    /// being enabled, the redirect allowed).
    pub async fn sign_unlink_link(
        &self,
        call: &CallContext,
        request: SignLinkRequest,
    ) -> ServiceResult<SignedLink> {
        let SignLinkRequest {
            unlink,
            ttl_seconds,
            base_url,
        } = request;
        record_site(unlink.vhost);
        if !unlink.request_id.is_empty() || unlink.dry_run {
            return Err(DomainError::invalid(
                "request_id",
                "a link carries no request_id or dry_run: each link acts at most once",
            )
            .into());
        }
        let ttl = match ttl_seconds {
            None => MAX_LIFETIME_SECONDS,
            Some(ttl) if (1..=MAX_LIFETIME_SECONDS).contains(&ttl) => ttl,
            Some(_) => {
                return Err(DomainError::invalid(
                    "ttl_seconds",
                    format!("must be between 1 and {MAX_LIFETIME_SECONDS}"),
                )
                .into());
            }
        };
        let base_url = match base_url.or_else(|| self.public_base_url.clone()) {
            None => String::new(),
            Some(base) => crate::config::parse_public_base_url(&base)
                .map_err(|_| {
                    DomainError::invalid(
                        "base_url",
                        "must be an http(s) URL with a host and no query or fragment",
                    )
                })?
                .trim_end_matches('/')
                .to_owned(),
        };
        let command = unlink.clone().parse(&self.registry)?;
        let lookup = self
            .storage(|| self.repo.site_by_vhost(command.vhost))
            .await;
        let site = check_scope_of_lookup(call.scope(), lookup, |s| s.api_key.as_str())?;
        RemovalRequest::UnlinkAccount(command).check_site(&site)?;
        if !self.repo.seals_durably() {
            return Err(ServiceError::NotConfigured(NEEDS_SESSION_KEY));
        }
        let secret = self
            .storage(|| self.repo.action_secret(site.id))
            .await?
            .ok_or(ServiceError::NotConfigured(
                "the site has no action secret yet: create one with RotateActionSecret",
            ))?;
        let expires_at = Utc::now() + chrono::Duration::seconds(ttl);
        let mut parameters = vec![
            ("vhost".to_owned(), unlink.vhost.to_string()),
            ("uid".to_owned(), unlink.uid.to_string()),
            ("redirectUrl".to_owned(), unlink.redirect_url),
            ("sub_provider_name".to_owned(), unlink.sub_provider_name),
            (
                EXPIRES_PARAMETER.to_owned(),
                expires_at.timestamp().to_string(),
            ),
        ];
        if let Some(provider) = unlink.external_id_provider_name {
            parameters.push(("external_id_provider_name".to_owned(), provider));
        }
        let canonical = canonical_query(&parameters);
        let sig = action_link::sign(&secret, &canonical);
        Ok(SignedLink {
            url: format!("{base_url}{UNLINK_ACCOUNT_PATH}?{canonical}&{SIG_PARAMETER}={sig}"),
            expires_at,
        })
    }

    /// Follows a link: checks its signature against the site's secret,
    /// its redirect, its lifetime, then runs UnlinkAccount once per link.
    pub async fn follow_unlink_link(&self, link: FollowLink) -> Result<LinkFollowed, LinkRefused> {
        record_site(link.vhost.get());
        let site = match self.storage(|| self.repo.site_by_vhost(link.vhost)).await {
            Ok(site) => site,
            // No site, no secret: the link cannot have been signed.
            Err(ServiceError::Rule(DomainError::SiteNotFound)) => {
                return Err(LinkRefused::without_redirect(
                    AccessError::LinkSignatureInvalid,
                ));
            }
            Err(other) => return Err(LinkRefused::without_redirect(other)),
        };
        let secret = self
            .storage(|| self.repo.action_secret(site.id))
            .await
            .map_err(LinkRefused::without_redirect)?;
        let signed = match (&secret, &link.sig) {
            (Some(secret), Some(sig)) => action_link::verify(secret, &link.canonical, sig),
            _ => false,
        };
        let Some(sig) = link.sig.clone().filter(|_| signed) else {
            return Err(LinkRefused::without_redirect(
                AccessError::LinkSignatureInvalid,
            ));
        };
        let redirect = RedirectTarget::parse(
            link.redirect_url.as_deref().unwrap_or_default(),
            &site.allowed_redirect_origins,
        )
        .map_err(LinkRefused::without_redirect)?;
        match self.act_on_link(&site, link, &sig).await {
            Ok(outcome) => Ok(LinkFollowed { redirect, outcome }),
            Err(error) => Err(LinkRefused {
                error,
                redirect: Some(redirect),
            }),
        }
    }

    /// The part of following a link after its signature and redirect were
    /// checked: lifetime, parameters, then UnlinkAccount under the link's
    /// idempotency key.
    async fn act_on_link(
        &self,
        site: &Site,
        link: FollowLink,
        sig: &str,
    ) -> ServiceResult<RemovalOutcome> {
        let FollowLink {
            vhost,
            canonical: _,
            sig: _,
            expires,
            uid,
            redirect_url,
            external_id_provider_name,
            sub_provider_name,
            call_id,
            traceparent,
        } = link;
        let expires = match expires.as_deref() {
            None | Some("") => {
                return Err(DomainError::MissingParameter {
                    field: EXPIRES_PARAMETER,
                }
                .into());
            }
            Some(expires) => expires
                .parse::<i64>()
                .map_err(|_| DomainError::invalid(EXPIRES_PARAMETER, "must be Unix seconds"))?,
        };
        action_link::check_expiry(expires, Utc::now().timestamp())?;
        let uid = match uid.as_deref() {
            None | Some("") => return Err(DomainError::MissingParameter { field: "uid" }.into()),
            Some(uid) => uid.parse::<i64>().map_err(|_| {
                DomainError::invalid("uid", "must be an integer of at most 11 digits")
            })?,
        };
        let command = UnlinkAccountInput {
            vhost: vhost.get(),
            uid,
            redirect_url: redirect_url.unwrap_or_default(),
            external_id_provider_name,
            sub_provider_name: sub_provider_name.unwrap_or_default(),
            request_id: action_link::used_link_key(sig),
            dry_run: false,
        }
        .parse(&self.registry)?;
        // The link is the credential: it may act on its own site only.
        let mut call = CallContext::new(Caller {
            name: LINK_ACTOR.to_owned(),
            sites: SiteScope::Only(BTreeSet::from([site.api_key.clone()])),
            uid: None,
        });
        call.call_id = call_id;
        call.traceparent = traceparent;
        self.unlink_account(&call, command).await
    }
}
