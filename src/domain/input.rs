//! What a door hands over: the request's raw values, in plain Rust types.
//! Each `parse` applies every rule and limit of one request once, so that
//! every door (gRPC, REST, the action link) validates exactly alike and the
//! rest of the service only sees validated commands.

use chrono::{DateTime, Utc};

use super::{
    ApiKey, ContextId, DomainError, LoginIdValue, NewIdentity, NewLoginId, ProviderFamily,
    ProviderRegistry, ProviderSession, ProviderUid, SiteSettings, Uid, Vhost,
    ids::{numeric_uid, optional_request_id},
    providers::{MAX_SUB_PROVIDER_CHARS, sub_provider_for, sub_provider_name},
    redirect::{MAX_REDIRECT_CHARS, normalize_origin_of},
    removal::{
        ExternalTarget, LastIdentityHandling, RemoveConnectionCommand, UnlinkAccountCommand,
    },
};

/// Longest site name.
pub const MAX_SITE_NAME_CHARS: usize = 200;
/// Most redirect origins per site.
pub const MAX_REDIRECT_ORIGINS: usize = 100;
/// Most login IDs per account.
pub const MAX_LOGIN_IDS: usize = 100;
/// Longest provider token (access or refresh), in bytes.
pub const MAX_SESSION_TOKEN_BYTES: usize = 8192;

/// Deepest nesting of arrays and objects accepted in `context`. Well below
/// the protobuf decoder's recursion limit (about 33 levels of objects), so
/// that this check, naming the field, is what a caller meets.
pub const MAX_CONTEXT_DEPTH: usize = 16;
/// Largest `context`, as compact JSON.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// Checks the caller's `context`: any JSON value, bounded in depth and size.
pub fn check_context(context: &serde_json::Value) -> Result<(), DomainError> {
    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth(context) > MAX_CONTEXT_DEPTH {
        return Err(DomainError::invalid(
            "context",
            format!("must not nest arrays and objects deeper than {MAX_CONTEXT_DEPTH} levels"),
        ));
    }
    let size = serde_json::to_vec(context).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_CONTEXT_BYTES {
        return Err(DomainError::invalid(
            "context",
            format!("must be at most {MAX_CONTEXT_BYTES} bytes as JSON"),
        ));
    }
    Ok(())
}

/// A present-but-empty optional string is a mistake, not "absent": for
/// `provider` it would otherwise silently mean "every provider".
fn present_not_empty(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, DomainError> {
    match value {
        Some(v) if v.is_empty() => Err(DomainError::invalid(
            field,
            "must not be empty; omit the field instead",
        )),
        other => Ok(other),
    }
}

/// RemoveConnection as a door received it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoveConnectionInput {
    pub api_key: String,
    pub uid: String,
    pub provider: Option<String>,
    pub cid: Option<String>,
    pub remove_login_id: bool,
    /// `None`: the default (SOFT).
    pub last_identity_handling: Option<LastIdentityHandling>,
    pub context: Option<serde_json::Value>,
    /// Empty: no idempotency key.
    pub request_id: String,
    pub dry_run: bool,
    /// `None`: the default (true).
    pub force_providers_logout: Option<bool>,
}

impl RemoveConnectionInput {
    pub fn parse(
        self,
        registry: &ProviderRegistry,
    ) -> Result<RemoveConnectionCommand, DomainError> {
        let Self {
            api_key,
            uid,
            provider,
            cid,
            remove_login_id,
            last_identity_handling,
            context,
            request_id,
            dry_run,
            force_providers_logout,
        } = self;
        let api_key = ApiKey::parse_key("api_key", &api_key)?;
        let uid = Uid::parse("uid", &uid)?;
        let provider = present_not_empty("provider", provider)?
            .map(|p| registry.resolve("provider", &p, Some(ProviderFamily::Social)))
            .transpose()?
            .map(|p| p.name);
        let cid = present_not_empty("cid", cid)?
            .map(|c| ContextId::parse("cid", &c))
            .transpose()?;
        if let Some(context) = &context {
            check_context(context)?;
        }
        Ok(RemoveConnectionCommand {
            api_key,
            uid,
            provider,
            cid,
            remove_login_id,
            last_identity_handling: last_identity_handling.unwrap_or(LastIdentityHandling::Soft),
            context,
            request_id: optional_request_id(&request_id)?,
            dry_run,
            force_providers_logout: force_providers_logout.unwrap_or(true),
        })
    }
}

/// UnlinkAccount as a door received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnlinkAccountInput {
    pub vhost: i64,
    pub uid: i64,
    pub redirect_url: String,
    pub external_id_provider_name: Option<String>,
    pub sub_provider_name: String,
    /// Empty: no idempotency key.
    pub request_id: String,
    pub dry_run: bool,
}

impl UnlinkAccountInput {
    pub fn parse(self, registry: &ProviderRegistry) -> Result<UnlinkAccountCommand, DomainError> {
        let Self {
            vhost,
            uid,
            redirect_url,
            external_id_provider_name,
            sub_provider_name: sub,
            request_id,
            dry_run,
        } = self;
        let vhost = Vhost::parse("vhost", vhost)?;
        let uid = numeric_uid("uid", uid)?;
        if redirect_url.is_empty() {
            return Err(DomainError::MissingParameter {
                field: "redirect_url",
            });
        }
        if redirect_url.chars().count() > MAX_REDIRECT_CHARS {
            return Err(DomainError::invalid(
                "redirect_url",
                format!("must be at most {MAX_REDIRECT_CHARS} characters"),
            ));
        }
        let target = unlink_target(registry, external_id_provider_name, &sub)?;
        Ok(UnlinkAccountCommand {
            vhost,
            uid,
            redirect_url,
            target,
            request_id: optional_request_id(&request_id)?,
            dry_run,
        })
    }
}

/// The unlinkaccount seed's provider and sub-provider rules (SPEC section 5
/// rule 2): which external-id identities a request targets.
pub fn unlink_target(
    registry: &ProviderRegistry,
    provider: Option<String>,
    sub_provider: &str,
) -> Result<ExternalTarget, DomainError> {
    const PROVIDER: &str = "external_id_provider_name";
    const SUB_PROVIDER: &str = "sub_provider_name";
    let provider = present_not_empty(PROVIDER, provider)?
        .map(|p| {
            if p.chars().count() > MAX_SUB_PROVIDER_CHARS {
                return Err(DomainError::invalid(
                    PROVIDER,
                    format!("must be at most {MAX_SUB_PROVIDER_CHARS} characters"),
                ));
            }
            registry.resolve(PROVIDER, &p, Some(ProviderFamily::ExternalId))
        })
        .transpose()?;
    // The seed asks for lower case; accept any case and compare in lower case.
    let sub = sub_provider.to_lowercase();
    if sub.is_empty() {
        return Err(DomainError::MissingParameter {
            field: SUB_PROVIDER,
        });
    }
    if sub.chars().count() > MAX_SUB_PROVIDER_CHARS {
        return Err(DomainError::invalid(
            SUB_PROVIDER,
            format!("must be at most {MAX_SUB_PROVIDER_CHARS} characters"),
        ));
    }
    match provider {
        None if sub == "none" => Ok(ExternalTarget::Every),
        None => Err(DomainError::invalid(
            SUB_PROVIDER,
            "must be `none` when no external_id_provider_name is given",
        )),
        Some(p) if p.has_sub_providers && sub == "all" => {
            Ok(ExternalTarget::Provider { provider: p.name })
        }
        Some(p) if p.has_sub_providers => Ok(ExternalTarget::SubProvider {
            sub_provider: sub_provider_name(SUB_PROVIDER, &sub)?,
            provider: p.name,
        }),
        Some(p) if sub == "none" => Ok(ExternalTarget::Provider { provider: p.name }),
        Some(p) => Err(DomainError::invalid(
            SUB_PROVIDER,
            format!("must be `none` for {}", p.name),
        )),
    }
}

/// UpsertSite as a door received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteInput {
    pub api_key: String,
    pub vhost: i64,
    pub name: String,
    pub unlink_action_enabled: bool,
    pub allowed_redirect_origins: Vec<String>,
    pub allowed_browser_origins: Vec<String>,
}

impl SiteInput {
    pub fn parse(self) -> Result<SiteSettings, DomainError> {
        let Self {
            api_key,
            vhost,
            name,
            unlink_action_enabled,
            allowed_redirect_origins,
            allowed_browser_origins,
        } = self;
        if name.chars().count() > MAX_SITE_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "name",
                format!(
                    "must be at most {MAX_SITE_NAME_CHARS} characters without control characters"
                ),
            ));
        }
        let origins = origin_list("allowed_redirect_origins", &allowed_redirect_origins)?;
        let browser_origins = origin_list("allowed_browser_origins", &allowed_browser_origins)?;
        Ok(SiteSettings {
            api_key: ApiKey::parse_key("api_key", &api_key)?,
            vhost: Vhost::parse("vhost", vhost)?,
            name,
            unlink_action_enabled,
            allowed_redirect_origins: origins,
            allowed_browser_origins: browser_origins,
        })
    }
}

/// A site's origin list, normalised, sorted and without duplicates.
fn origin_list(field: &'static str, origins: &[String]) -> Result<Vec<String>, DomainError> {
    if origins.len() > MAX_REDIRECT_ORIGINS {
        return Err(DomainError::invalid(
            field,
            format!("at most {MAX_REDIRECT_ORIGINS} origins"),
        ));
    }
    let mut origins = origins
        .iter()
        .map(|o| normalize_origin_of(field, o))
        .collect::<Result<Vec<_>, _>>()?;
    origins.sort();
    origins.dedup();
    Ok(origins)
}

/// One login ID of UpsertAccount as a door received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginIdInput {
    pub login_id: String,
    pub has_password: bool,
}

/// UpsertAccount's login ID list, validated.
pub fn parse_login_ids(login_ids: Vec<LoginIdInput>) -> Result<Vec<NewLoginId>, DomainError> {
    if login_ids.len() > MAX_LOGIN_IDS {
        return Err(DomainError::invalid(
            "login_ids",
            format!("at most {MAX_LOGIN_IDS} login IDs"),
        ));
    }
    login_ids
        .into_iter()
        .map(
            |LoginIdInput {
                 login_id,
                 has_password,
             }| {
                Ok(NewLoginId {
                    value: LoginIdValue::parse("login_ids", &login_id)?,
                    has_password,
                })
            },
        )
        .collect()
}

/// Provider session data as a door received it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionInput {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SessionInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionInput(<redacted>)")
    }
}

/// LinkConnection's identity as a door received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInput {
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub login_id: Option<String>,
    pub session: Option<SessionInput>,
}

impl LinkInput {
    pub fn parse(self, registry: &ProviderRegistry) -> Result<NewIdentity, DomainError> {
        let Self {
            provider,
            sub_provider,
            provider_uid,
            login_id,
            session,
        } = self;
        let provider = registry.resolve("provider", &provider, None::<ProviderFamily>)?;
        let sub_provider = sub_provider_for("sub_provider", &provider, &sub_provider)?;
        let provider_uid = ProviderUid::parse("provider_uid", &provider_uid)?;
        let login_id = login_id
            .map(|l| LoginIdValue::parse("login_id", &l))
            .transpose()?;
        let session = session
            .map(|s| {
                if s.access_token.len() > MAX_SESSION_TOKEN_BYTES
                    || s.refresh_token.len() > MAX_SESSION_TOKEN_BYTES
                {
                    return Err(DomainError::invalid(
                        "session",
                        format!("tokens must be at most {MAX_SESSION_TOKEN_BYTES} bytes"),
                    ));
                }
                Ok(ProviderSession {
                    access_token: s.access_token,
                    refresh_token: s.refresh_token,
                    expires_at: s.expires_at,
                })
            })
            .transpose()?;
        Ok(NewIdentity {
            provider: provider.name,
            sub_provider,
            provider_uid,
            login_id,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(
            serde_json::json!(1),
            |inner, _| serde_json::json!({ "a": inner }),
        )
    }

    #[test]
    fn context_depth_and_size_are_bounded_and_named() {
        assert!(check_context(&nested(MAX_CONTEXT_DEPTH)).is_ok());
        let deep = check_context(&nested(MAX_CONTEXT_DEPTH + 1)).unwrap_err();
        assert_eq!(deep.field(), Some("context"));
        let big = serde_json::json!("x".repeat(MAX_CONTEXT_BYTES));
        assert_eq!(check_context(&big).unwrap_err().field(), Some("context"));
        assert!(check_context(&serde_json::json!({"page": "profile", "n": [1, 2]})).is_ok());
    }

    #[test]
    fn unlink_sub_providers_follow_the_seed() {
        let registry = ProviderRegistry::default();
        let target = |provider: Option<&str>, sub: &str| {
            unlink_target(&registry, provider.map(str::to_owned), sub)
        };
        assert_eq!(target(None, "none"), Ok(ExternalTarget::Every));
        assert_eq!(
            target(Some("janrain"), "ALL"),
            Ok(ExternalTarget::Provider {
                provider: "janrain".into()
            })
        );
        assert_eq!(
            target(Some("janrain"), "facebook"),
            Ok(ExternalTarget::SubProvider {
                provider: "janrain".into(),
                sub_provider: "facebook".into()
            })
        );
        assert_eq!(
            target(Some("gigya"), "none"),
            Ok(ExternalTarget::Provider {
                provider: "gigya".into()
            })
        );
        for (provider, sub) in [(None, "all"), (Some("gigya"), "all"), (Some("gigya"), "x")] {
            assert_eq!(
                target(provider, sub).unwrap_err().field(),
                Some("sub_provider_name"),
                "{provider:?} {sub}"
            );
        }
        assert_eq!(
            target(Some("janrain"), "").unwrap_err(),
            DomainError::MissingParameter {
                field: "sub_provider_name"
            }
        );
        assert_eq!(
            target(Some(""), "none").unwrap_err().field(),
            Some("external_id_provider_name")
        );
    }
}

/// Hostile input, generated: any unicode (control characters, very long
/// values, SQL and URL tricks) in every field of every request a door hands
/// over. Parsing never panics, and every refusal names a field and repeats
/// at most a short prefix of the value. `PROPTEST_CASES=100000 cargo test
/// --lib hostile` runs a longer search; CI runs proptest's default (256).
#[cfg(test)]
mod hostile {
    use proptest::prelude::*;

    use super::*;

    /// Strings an attacker would try: arbitrary unicode of any length up to
    /// 5,000 characters, plus known tricks.
    fn nasty() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,40}",
            "\\PC{0,300}",
            "[\\x00-\\x1f\\x7f]{0,20}",
            (0usize..5000).prop_map(|n| "a".repeat(n)),
            Just("' OR 1=1; DROP TABLE accounts; --".to_owned()),
            Just("//evil.example/%2e%2e/".to_owned()),
            Just("javascript:alert(1)".to_owned()),
            Just("/\\\\evil.example".to_owned()),
            Just("https://*.example.com".to_owned()),
            Just("\r\nSet-Cookie: x=1".to_owned()),
        ]
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            nasty().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(24, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A refusal a door can report: a field, and a bounded message.
    fn well_formed(err: &DomainError) -> Result<(), TestCaseError> {
        prop_assert!(err.field().is_some(), "no field named: {err:?}");
        let message = err.to_string();
        prop_assert!(
            message.chars().count() <= 400,
            "message too long: {message}"
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn hostile_remove_connection_requests_are_refused_cleanly(
            api_key in nasty(), uid in nasty(), provider in prop::option::of(nasty()),
            cid in prop::option::of(nasty()), request_id in nasty(),
            context in prop::option::of(json()), remove_login_id in any::<bool>(),
        ) {
            let input = RemoveConnectionInput {
                api_key, uid, provider, cid, remove_login_id, context, request_id,
                ..RemoveConnectionInput::default()
            };
            if let Err(err) = input.parse(&ProviderRegistry::default()) {
                well_formed(&err)?;
            }
        }

        #[test]
        fn hostile_unlink_requests_are_refused_cleanly(
            vhost in any::<i64>(), uid in any::<i64>(), redirect_url in nasty(),
            provider in prop::option::of(nasty()), sub in nasty(), request_id in nasty(),
        ) {
            let input = UnlinkAccountInput {
                vhost, uid, redirect_url, external_id_provider_name: provider,
                sub_provider_name: sub, request_id, dry_run: false,
            };
            if let Err(err) = input.parse(&ProviderRegistry::default()) {
                well_formed(&err)?;
            }
        }

        #[test]
        fn hostile_sites_are_refused_cleanly(
            api_key in nasty(), vhost in any::<i64>(), name in nasty(),
            origins in prop::collection::vec(nasty(), 0..4),
        ) {
            let input = SiteInput {
                api_key, vhost, name, unlink_action_enabled: true,
                allowed_redirect_origins: origins,
                allowed_browser_origins: vec![],
            };
            if let Err(err) = input.parse() {
                well_formed(&err)?;
            }
        }

        #[test]
        fn hostile_links_are_refused_cleanly(
            provider in nasty(), sub_provider in nasty(), provider_uid in nasty(),
            login_id in prop::option::of(nasty()), token in nasty(),
        ) {
            let input = LinkInput {
                provider, sub_provider, provider_uid, login_id,
                session: Some(SessionInput {
                    access_token: token, refresh_token: String::new(), expires_at: None,
                }),
            };
            if let Err(err) = input.parse(&ProviderRegistry::default()) {
                well_formed(&err)?;
            }
        }

        #[test]
        fn accepted_redirects_never_leave_the_site(value in nasty()) {
            let allowed = vec!["https://www.example.com".to_owned()];
            if let Ok(target) = crate::domain::RedirectTarget::parse(&value, &allowed) {
                let target = target.into_string();
                let local = target.starts_with('/')
                    && !target.starts_with("//")
                    && !target.starts_with("/\\\\");
                prop_assert!(
                    local || target.to_lowercase().starts_with("https://www.example.com"),
                    "{target}"
                );
            }
        }
    }
}
