//! Conversions between proto messages and domain types. Requests are
//! destructured completely, so a new proto field cannot be silently ignored.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

pub use crate::proto::codec::{event, event_source, removal_mode, timestamp};
use crate::{
    domain::{
        self, ApiKey, ContextId, DomainError, LoginIdValue, NewIdentity, NewLoginId,
        ProviderFamily, ProviderRegistry, ProviderSession, ProviderUid, SiteSettings, Uid, Vhost,
        ids::{numeric_uid, optional_request_id},
        providers::{MAX_SUB_PROVIDER_CHARS, sub_provider_for, sub_provider_name},
        redirect::{MAX_REDIRECT_CHARS, normalize_origin},
        removal::{
            AccountSnapshot, ExternalTarget, LastIdentityHandling, RemovalOutcome,
            RemoveConnectionCommand, RemovedIdentity, UnlinkAccountCommand,
        },
    },
    proto::v1 as pb,
};

fn from_timestamp(field: &'static str, ts: Timestamp) -> Result<DateTime<Utc>, DomainError> {
    let nanos = u32::try_from(ts.nanos)
        .map_err(|_| DomainError::invalid(field, "nanos must not be negative"))?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| DomainError::invalid(field, "out of range"))
}

pub fn site(site: domain::Site) -> pb::Site {
    let domain::Site {
        id: _,
        api_key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
        created_at,
        updated_at,
    } = site;
    pb::Site {
        api_key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(updated_at)),
    }
}

pub fn identity_state(state: domain::IdentityState) -> pb::IdentityState {
    match state {
        domain::IdentityState::Active => pb::IdentityState::Active,
        domain::IdentityState::SoftRemoved => pb::IdentityState::SoftRemoved,
    }
}

pub fn identity(identity: &domain::Identity) -> pb::Identity {
    pb::Identity {
        provider: identity.provider.clone(),
        sub_provider: identity.sub_provider.clone(),
        provider_uid: identity.provider_uid.clone(),
        login_id: identity.login_id.clone(),
        state: identity_state(identity.state).into(),
        has_session: identity.has_session,
        linked_at: Some(timestamp(identity.linked_at)),
        updated_at: Some(timestamp(identity.updated_at)),
    }
}

pub fn account(account: &domain::Account) -> pb::Account {
    pb::Account {
        api_key: account.api_key.clone(),
        uid: account.uid.clone(),
        login_ids: account
            .login_ids
            .iter()
            .map(|l| pb::LoginId {
                login_id: l.value.clone(),
                has_password: l.has_password,
            })
            .collect(),
        identities: account.identities.iter().map(identity).collect(),
        login_methods: account.login_methods(),
        created_at: Some(timestamp(account.created_at)),
        updated_at: Some(timestamp(account.updated_at)),
    }
}

pub fn api_key(value: &str) -> Result<ApiKey, DomainError> {
    ApiKey::parse_key("api_key", value)
}

pub fn upsert_site(request: pb::UpsertSiteRequest) -> Result<SiteSettings, DomainError> {
    let pb::UpsertSiteRequest {
        api_key: key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
    } = request;
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "name",
            "must be at most 200 characters without control characters",
        ));
    }
    if allowed_redirect_origins.len() > 100 {
        return Err(DomainError::invalid(
            "allowed_redirect_origins",
            "at most 100 origins",
        ));
    }
    let mut origins = allowed_redirect_origins
        .iter()
        .map(|o| normalize_origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    origins.sort();
    origins.dedup();
    Ok(SiteSettings {
        api_key: api_key(&key)?,
        vhost: Vhost::parse("vhost", vhost)?,
        name,
        unlink_action_enabled,
        allowed_redirect_origins: origins,
    })
}

pub fn upsert_account(
    request: pb::UpsertAccountRequest,
) -> Result<(ApiKey, Uid, Vec<NewLoginId>), DomainError> {
    let pb::UpsertAccountRequest {
        api_key: key,
        uid,
        login_ids,
    } = request;
    if login_ids.len() > 100 {
        return Err(DomainError::invalid("login_ids", "at most 100 login IDs"));
    }
    let login_ids = login_ids
        .into_iter()
        .map(
            |pb::LoginId {
                 login_id,
                 has_password,
             }| {
                Ok(NewLoginId {
                    value: LoginIdValue::parse("login_ids", &login_id)?,
                    has_password,
                })
            },
        )
        .collect::<Result<Vec<_>, DomainError>>()?;
    Ok((api_key(&key)?, Uid::parse("uid", &uid)?, login_ids))
}

pub fn link_connection(
    registry: &ProviderRegistry,
    request: pb::LinkConnectionRequest,
) -> Result<(ApiKey, Uid, NewIdentity), DomainError> {
    let pb::LinkConnectionRequest {
        api_key: key,
        uid,
        provider,
        sub_provider,
        provider_uid,
        login_id,
        session,
    } = request;
    let key = api_key(&key)?;
    let uid = Uid::parse("uid", &uid)?;
    let provider = registry.resolve("provider", &provider, None::<ProviderFamily>)?;
    let sub_provider = sub_provider_for("sub_provider", &provider, &sub_provider)?;
    let provider_uid = ProviderUid::parse("provider_uid", &provider_uid)?;
    let login_id = login_id
        .map(|l| LoginIdValue::parse("login_id", &l))
        .transpose()?;
    let session = session
        .map(
            |pb::ProviderSession {
                 access_token,
                 refresh_token,
                 expires_at,
             }| {
                if access_token.len() > 8192 || refresh_token.len() > 8192 {
                    return Err(DomainError::invalid(
                        "session",
                        "tokens must be at most 8192 bytes",
                    ));
                }
                Ok(ProviderSession {
                    access_token,
                    refresh_token,
                    expires_at: expires_at
                        .map(|t| from_timestamp("session.expires_at", t))
                        .transpose()?,
                })
            },
        )
        .transpose()?;
    Ok((
        key,
        uid,
        NewIdentity {
            provider: provider.name,
            sub_provider,
            provider_uid,
            login_id,
            session,
        },
    ))
}

pub fn get_account(request: pb::GetAccountRequest) -> Result<(ApiKey, Uid), DomainError> {
    let pb::GetAccountRequest { api_key: key, uid } = request;
    Ok((api_key(&key)?, Uid::parse("uid", &uid)?))
}

/// `google.protobuf.Value` to JSON. Protobuf numbers are doubles; JSON has
/// no NaN or infinity, so those are refused.
pub fn json_from_value(
    field: &'static str,
    value: prost_types::Value,
) -> Result<serde_json::Value, DomainError> {
    use prost_types::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| DomainError::invalid(field, "numbers must be finite"))?,
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .into_iter()
                .map(|v| json_from_value(field, v))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => serde_json::Value::Object(
            object
                .fields
                .into_iter()
                .map(|(k, v)| Ok((k, json_from_value(field, v)?)))
                .collect::<Result<_, DomainError>>()?,
        ),
    })
}

/// JSON back to `google.protobuf.Value`.
pub fn value_from_json(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // Every number came from a double, so as_f64 does not lose anything.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(prost_types::Struct {
            fields: object
                .into_iter()
                .map(|(k, v)| (k, value_from_json(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
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

pub fn remove_connection(
    registry: &ProviderRegistry,
    request: pb::RemoveConnectionRequest,
) -> Result<RemoveConnectionCommand, DomainError> {
    let pb::RemoveConnectionRequest {
        api_key: key,
        uid,
        provider,
        cid,
        remove_login_id,
        last_identity_handling,
        context,
        request_id,
        dry_run,
    } = request;
    let api_key = api_key(&key)?;
    let uid = Uid::parse("uid", &uid)?;
    let provider = present_not_empty("provider", provider)?
        .map(|p| registry.resolve("provider", &p, Some(ProviderFamily::Social)))
        .transpose()?
        .map(|p| p.name);
    let cid = present_not_empty("cid", cid)?
        .map(|c| ContextId::parse("cid", &c))
        .transpose()?;
    let last_identity_handling = match pb::LastIdentityHandling::try_from(last_identity_handling) {
        Ok(pb::LastIdentityHandling::Unspecified | pb::LastIdentityHandling::Soft) => {
            LastIdentityHandling::Soft
        }
        Ok(pb::LastIdentityHandling::Remove) => LastIdentityHandling::Remove,
        Ok(pb::LastIdentityHandling::Fail) => LastIdentityHandling::Fail,
        Err(_) => {
            return Err(DomainError::invalid(
                "last_identity_handling",
                "unknown value",
            ));
        }
    };
    let context = context.map(|c| json_from_value("context", c)).transpose()?;
    Ok(RemoveConnectionCommand {
        api_key,
        uid,
        provider,
        cid,
        remove_login_id,
        last_identity_handling,
        context,
        request_id: optional_request_id(&request_id)?,
        dry_run,
    })
}

pub fn unlink_account(
    registry: &ProviderRegistry,
    request: pb::UnlinkAccountRequest,
) -> Result<UnlinkAccountCommand, DomainError> {
    const PROVIDER: &str = "external_id_provider_name";
    const SUB_PROVIDER: &str = "sub_provider_name";
    let pb::UnlinkAccountRequest {
        vhost,
        uid,
        redirect_url,
        external_id_provider_name,
        sub_provider_name: sub,
        request_id,
        dry_run,
    } = request;
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
    let provider = present_not_empty(PROVIDER, external_id_provider_name)?
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
    let sub = sub.to_lowercase();
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
    let target = match provider {
        None if sub == "none" => ExternalTarget::Every,
        None => {
            return Err(DomainError::invalid(
                SUB_PROVIDER,
                "must be `none` when no external_id_provider_name is given",
            ));
        }
        Some(p) if p.has_sub_providers && sub == "all" => {
            ExternalTarget::Provider { provider: p.name }
        }
        Some(p) if p.has_sub_providers => ExternalTarget::SubProvider {
            sub_provider: sub_provider_name(SUB_PROVIDER, &sub)?,
            provider: p.name,
        },
        Some(p) if sub == "none" => ExternalTarget::Provider { provider: p.name },
        Some(p) => {
            return Err(DomainError::invalid(
                SUB_PROVIDER,
                format!("must be `none` for {}", p.name),
            ));
        }
    };
    Ok(UnlinkAccountCommand {
        vhost,
        uid,
        redirect_url,
        target,
        request_id: optional_request_id(&request_id)?,
        dry_run,
    })
}

fn removed_identity(removed: RemovedIdentity) -> pb::RemovedIdentity {
    let RemovedIdentity {
        provider,
        sub_provider,
        provider_uid,
        mode,
        removed_login_ids,
        provider_logout_requested,
        event_id,
    } = removed;
    pb::RemovedIdentity {
        provider,
        sub_provider,
        provider_uid,
        mode: removal_mode(mode).into(),
        removed_login_ids,
        provider_logout_requested,
        event_id,
    }
}

fn account_snapshot(snapshot: AccountSnapshot) -> pb::Account {
    let login_methods = snapshot.login_methods();
    let AccountSnapshot {
        api_key,
        uid,
        login_ids,
        identities,
        created_at,
        updated_at,
    } = snapshot;
    pb::Account {
        api_key,
        uid,
        login_ids: login_ids
            .into_iter()
            .map(|(login_id, has_password)| pb::LoginId {
                login_id,
                has_password,
            })
            .collect(),
        identities: identities
            .into_iter()
            .map(|i| pb::Identity {
                provider: i.provider,
                sub_provider: i.sub_provider,
                provider_uid: i.provider_uid,
                login_id: i.login_id,
                state: identity_state(i.state).into(),
                has_session: i.has_session,
                linked_at: Some(timestamp(i.linked_at)),
                updated_at: Some(timestamp(i.updated_at)),
            })
            .collect(),
        login_methods,
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(updated_at)),
    }
}

pub fn remove_connection_response(outcome: RemovalOutcome) -> pb::RemoveConnectionResponse {
    let RemovalOutcome {
        call_id,
        time,
        removed,
        account,
        context,
        redirect_url: _,
        dry_run,
    } = outcome;
    pb::RemoveConnectionResponse {
        call_id,
        time: Some(timestamp(time)),
        removed: removed.into_iter().map(removed_identity).collect(),
        account: account.map(account_snapshot),
        context: context.map(value_from_json),
        dry_run,
    }
}

pub fn unlink_account_response(outcome: RemovalOutcome) -> pb::UnlinkAccountResponse {
    let RemovalOutcome {
        call_id,
        time,
        removed,
        account: _,
        context: _,
        redirect_url,
        dry_run,
    } = outcome;
    pb::UnlinkAccountResponse {
        call_id,
        time: Some(timestamp(time)),
        removed: removed.into_iter().map(removed_identity).collect(),
        redirect_url: redirect_url.unwrap_or_default(),
        dry_run,
    }
}

/// A Subscribe request, parsed: where to start, what to receive, how often
/// to send heartbeats (None: the server default).
#[derive(Debug, Clone)]
pub struct SubscribeParams {
    pub start: SubscribeStart,
    pub filter: domain::EventFilter,
    pub heartbeat: Option<std::time::Duration>,
}

/// The start before the consumer's checkpoint is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeStart {
    Beginning,
    Now,
    AfterPosition(u64),
    Consumer(domain::ConsumerName),
}

/// Largest accepted `heartbeat_seconds`.
pub const MAX_HEARTBEAT_SECONDS: u32 = 3600;

pub fn subscribe(
    request: pb::SubscribeRequest,
    registry: &ProviderRegistry,
) -> Result<SubscribeParams, DomainError> {
    let pb::SubscribeRequest {
        start_from,
        after_position,
        consumer,
        api_keys,
        providers,
        sources,
        heartbeat_seconds,
    } = request;
    let consumer = if consumer.is_empty() {
        None
    } else {
        Some(domain::ConsumerName::parse("consumer", &consumer)?)
    };
    let start_from = pb::StartFrom::try_from(start_from)
        .map_err(|_| DomainError::invalid("start_from", "unknown value"))?;
    if after_position != 0 && start_from != pb::StartFrom::AfterPosition {
        return Err(DomainError::invalid(
            "after_position",
            "only allowed with START_FROM_AFTER_POSITION",
        ));
    }
    let start = match (start_from, consumer) {
        (pb::StartFrom::Beginning, _) => SubscribeStart::Beginning,
        (pb::StartFrom::Now, _) | (pb::StartFrom::Unspecified, None) => SubscribeStart::Now,
        (pb::StartFrom::AfterPosition, _) => SubscribeStart::AfterPosition(after_position),
        (pb::StartFrom::Unspecified, Some(name)) => SubscribeStart::Consumer(name),
    };
    let api_keys = api_keys
        .iter()
        .map(|k| ApiKey::parse_key("api_keys", k).map(ApiKey::into_string))
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    let providers = providers
        .iter()
        .map(|p| registry.resolve("providers", p, None).map(|p| p.name))
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    let sources = sources
        .into_iter()
        .map(|s| match pb::EventSource::try_from(s) {
            Ok(pb::EventSource::RemoveConnection) => Ok(domain::EventSource::RemoveConnection),
            Ok(pb::EventSource::UnlinkAccount) => Ok(domain::EventSource::UnlinkAccount),
            Ok(pb::EventSource::Unspecified) | Err(_) => Err(DomainError::invalid(
                "sources",
                format!("unknown event source {s}"),
            )),
        })
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    let heartbeat = match heartbeat_seconds {
        0 => None,
        s if s <= MAX_HEARTBEAT_SECONDS => Some(std::time::Duration::from_secs(u64::from(s))),
        _ => {
            return Err(DomainError::invalid(
                "heartbeat_seconds",
                format!("must be between 1 and {MAX_HEARTBEAT_SECONDS} (0: server default)"),
            ));
        }
    };
    Ok(SubscribeParams {
        start,
        filter: domain::EventFilter {
            api_keys: (!api_keys.is_empty()).then_some(api_keys),
            providers: (!providers.is_empty()).then_some(providers),
            sources: (!sources.is_empty()).then_some(sources),
        },
        heartbeat,
    })
}

pub fn stream_item(item: domain::StreamItem) -> pb::SubscribeResponse {
    use pb::subscribe_response::Message;
    let message = match item {
        domain::StreamItem::Event(sequenced) => Message::Event(event(*sequenced)),
        domain::StreamItem::Heartbeat {
            head_position,
            time,
        } => Message::Heartbeat(pb::Heartbeat {
            head_position,
            time: Some(timestamp(time)),
        }),
        domain::StreamItem::CaughtUp { head_position } => {
            Message::CaughtUp(pb::CaughtUp { head_position })
        }
    };
    pb::SubscribeResponse {
        message: Some(message),
    }
}

pub fn commit_position(
    request: pb::CommitPositionRequest,
) -> Result<(domain::ConsumerName, u64), DomainError> {
    let pb::CommitPositionRequest { consumer, position } = request;
    Ok((
        domain::ConsumerName::parse("consumer", &consumer)?,
        position,
    ))
}

#[cfg(test)]
mod subscribe_tests {
    use super::*;

    fn parse(request: pb::SubscribeRequest) -> Result<SubscribeParams, DomainError> {
        subscribe(request, &ProviderRegistry::default())
    }

    #[test]
    fn an_unspecified_start_follows_the_consumer() {
        let now = parse(pb::SubscribeRequest::default()).unwrap();
        assert_eq!(now.start, SubscribeStart::Now);
        assert_eq!(now.filter, domain::EventFilter::default());
        let consumer = parse(pb::SubscribeRequest {
            consumer: "billing".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            matches!(consumer.start, SubscribeStart::Consumer(ref n) if n.as_str() == "billing")
        );
    }

    #[test]
    fn filters_are_canonical() {
        let params = parse(pb::SubscribeRequest {
            providers: vec!["Messenger".into(), "FACEBOOK".into()],
            sources: vec![pb::EventSource::UnlinkAccount.into()],
            api_keys: vec!["3_a".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            params.filter.providers,
            Some(["facebook".to_owned(), "microsoft".to_owned()].into())
        );
        assert_eq!(
            params.filter.sources,
            Some([domain::EventSource::UnlinkAccount].into())
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |request| parse(request).unwrap_err().field();
        assert_eq!(
            field(pb::SubscribeRequest {
                heartbeat_seconds: 3601,
                ..Default::default()
            }),
            Some("heartbeat_seconds")
        );
        assert_eq!(
            field(pb::SubscribeRequest {
                sources: vec![0],
                ..Default::default()
            }),
            Some("sources")
        );
        assert_eq!(
            field(pb::SubscribeRequest {
                providers: vec!["nope".into()],
                ..Default::default()
            }),
            Some("providers")
        );
        assert_eq!(
            field(pb::SubscribeRequest {
                after_position: 3,
                ..Default::default()
            }),
            Some("after_position")
        );
        assert_eq!(
            field(pb::SubscribeRequest {
                start_from: 42,
                ..Default::default()
            }),
            Some("start_from")
        );
    }
}
