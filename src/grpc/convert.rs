//! Conversions between proto messages and domain types. Requests are
//! destructured completely, so a new proto field cannot be silently ignored.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

pub use crate::proto::codec::{event, removal_mode, timestamp};
use crate::{
    domain::{
        self, AccountView, ApiKey, DomainError, IdentityView, ProviderRegistry, Uid,
        input::{
            LinkInput, LoginIdInput, RemoveConnectionInput, SessionInput, SiteInput,
            UnlinkAccountInput, parse_login_ids,
        },
        removal::{LastIdentityHandling, RemovalOutcome, RemovedIdentity},
    },
    proto::v1 as pb,
    service::{
        LinkRequest, MAX_HEARTBEAT_SECONDS, SignLinkRequest, StoredAppKey, SubscribeRequest,
        SubscribeStart,
    },
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
        allowed_browser_origins,
        created_at,
        updated_at,
    } = site;
    pb::Site {
        api_key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
        allowed_browser_origins,
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

pub fn identity(identity: IdentityView) -> pb::Identity {
    let IdentityView {
        provider,
        sub_provider,
        provider_uid,
        login_id,
        state,
        has_session,
        linked_at,
        updated_at,
    } = identity;
    pb::Identity {
        provider,
        sub_provider,
        provider_uid,
        login_id,
        state: identity_state(state).into(),
        has_session,
        linked_at: Some(timestamp(linked_at)),
        updated_at: Some(timestamp(updated_at)),
    }
}

pub fn account(account: AccountView) -> pb::Account {
    let login_methods = account.login_methods();
    let AccountView {
        api_key,
        uid,
        login_ids,
        identities,
        created_at,
        updated_at,
    } = account;
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
        identities: identities.into_iter().map(identity).collect(),
        login_methods,
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(updated_at)),
    }
}

pub fn api_key(value: &str) -> Result<ApiKey, DomainError> {
    ApiKey::parse_key("api_key", value)
}

pub fn upsert_site(request: pb::UpsertSiteRequest) -> SiteInput {
    let pb::UpsertSiteRequest {
        api_key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
        allowed_browser_origins,
    } = request;
    SiteInput {
        api_key,
        vhost,
        name,
        unlink_action_enabled,
        allowed_redirect_origins,
        allowed_browser_origins,
    }
}

pub fn upsert_account(
    request: pb::UpsertAccountRequest,
) -> Result<(ApiKey, Uid, Vec<domain::NewLoginId>), DomainError> {
    let pb::UpsertAccountRequest {
        api_key: key,
        uid,
        login_ids,
    } = request;
    let login_ids = parse_login_ids(
        login_ids
            .into_iter()
            .map(
                |pb::LoginId {
                     login_id,
                     has_password,
                 }| LoginIdInput {
                    login_id,
                    has_password,
                },
            )
            .collect(),
    )?;
    Ok((api_key(&key)?, Uid::parse("uid", &uid)?, login_ids))
}

pub fn link_connection(
    registry: &ProviderRegistry,
    request: pb::LinkConnectionRequest,
) -> Result<LinkRequest, DomainError> {
    let pb::LinkConnectionRequest {
        api_key: key,
        uid,
        provider,
        sub_provider,
        provider_uid,
        login_id,
        session,
    } = request;
    let api_key = api_key(&key)?;
    let uid = Uid::parse("uid", &uid)?;
    let session = session
        .map(
            |pb::ProviderSession {
                 access_token,
                 refresh_token,
                 expires_at,
             }| {
                Ok::<_, DomainError>(SessionInput {
                    access_token,
                    refresh_token,
                    expires_at: expires_at
                        .map(|t| from_timestamp("session.expires_at", t))
                        .transpose()?,
                })
            },
        )
        .transpose()?;
    let identity = LinkInput {
        provider,
        sub_provider,
        provider_uid,
        login_id,
        session,
    }
    .parse(registry)?;
    Ok(LinkRequest {
        api_key,
        uid,
        identity,
    })
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

/// An application key as AdminService reports it: never its secret.
pub fn app_key(key: StoredAppKey) -> pb::AppKey {
    let StoredAppKey {
        user_key,
        caller,
        sites,
        permissions,
        created_at,
        revoked_at,
    } = key;
    let list = |spec: String| -> Vec<String> {
        spec.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    pb::AppKey {
        user_key,
        caller,
        sites: list(sites),
        permissions: list(permissions),
        created_at: Some(timestamp(created_at)),
        revoked_at: revoked_at.map(timestamp),
    }
}

pub fn remove_connection(
    request: pb::RemoveConnectionRequest,
) -> Result<RemoveConnectionInput, DomainError> {
    let pb::RemoveConnectionRequest {
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
    } = request;
    let last_identity_handling = match pb::LastIdentityHandling::try_from(last_identity_handling) {
        Ok(pb::LastIdentityHandling::Unspecified) => None,
        Ok(pb::LastIdentityHandling::Soft) => Some(LastIdentityHandling::Soft),
        Ok(pb::LastIdentityHandling::Remove) => Some(LastIdentityHandling::Remove),
        Ok(pb::LastIdentityHandling::Fail) => Some(LastIdentityHandling::Fail),
        Err(_) => {
            return Err(DomainError::invalid(
                "last_identity_handling",
                "unknown value",
            ));
        }
    };
    Ok(RemoveConnectionInput {
        api_key,
        uid,
        provider,
        cid,
        remove_login_id,
        last_identity_handling,
        context: context.map(|c| json_from_value("context", c)).transpose()?,
        request_id,
        dry_run,
        force_providers_logout,
    })
}

pub fn unlink_account(request: pb::UnlinkAccountRequest) -> UnlinkAccountInput {
    let pb::UnlinkAccountRequest {
        vhost,
        uid,
        redirect_url,
        external_id_provider_name,
        sub_provider_name,
        request_id,
        dry_run,
    } = request;
    UnlinkAccountInput {
        vhost,
        uid,
        redirect_url,
        external_id_provider_name,
        sub_provider_name,
        request_id,
        dry_run,
    }
}

pub fn sign_unlink_link(request: pb::SignUnlinkLinkRequest) -> SignLinkRequest {
    let pb::SignUnlinkLinkRequest {
        vhost,
        uid,
        redirect_url,
        external_id_provider_name,
        sub_provider_name,
        ttl_seconds,
        base_url,
    } = request;
    SignLinkRequest {
        ttl_seconds: (ttl_seconds != 0).then_some(ttl_seconds),
        base_url: (!base_url.is_empty()).then_some(base_url),
        ..SignLinkRequest::new(
            vhost,
            uid,
            redirect_url,
            external_id_provider_name,
            sub_provider_name,
        )
    }
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
        account: account.map(self::account),
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

pub fn subscribe(
    request: pb::SubscribeRequest,
    registry: &ProviderRegistry,
) -> Result<SubscribeRequest, DomainError> {
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
    Ok(SubscribeRequest {
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

    fn parse(request: pb::SubscribeRequest) -> Result<SubscribeRequest, DomainError> {
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
