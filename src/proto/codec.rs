//! Domain events and times in their protobuf form. Shared by every door
//! that sends events as protobuf (the gRPC stream and the JetStream relay),
//! so that both carry exactly the same bytes for the same event.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::v1 as pb;
use crate::domain;

pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn removal_mode(mode: domain::RemovalMode) -> pb::RemovalMode {
    match mode {
        domain::RemovalMode::Hard => pb::RemovalMode::Hard,
        domain::RemovalMode::Soft => pb::RemovalMode::Soft,
    }
}

pub fn event_source(source: domain::EventSource) -> pb::EventSource {
    match source {
        domain::EventSource::RemoveConnection => pb::EventSource::RemoveConnection,
        domain::EventSource::UnlinkAccount => pb::EventSource::UnlinkAccount,
    }
}

pub fn event(sequenced: domain::SequencedEvent) -> pb::ConnectionRemoved {
    let domain::SequencedEvent { position, event } = sequenced;
    let domain::ConnectionRemoved {
        event_id,
        occurred_at,
        api_key,
        vhost,
        uid,
        provider,
        sub_provider,
        provider_uid,
        mode,
        removed_login_ids,
        provider_logout_requested,
        source,
        cid,
        call_id,
        actor,
        remaining_login_methods,
        traceparent,
    } = event;
    pb::ConnectionRemoved {
        position,
        event_id,
        occurred_at: Some(timestamp(occurred_at)),
        api_key,
        vhost,
        uid,
        provider,
        sub_provider,
        provider_uid,
        mode: removal_mode(mode).into(),
        removed_login_ids,
        provider_logout_requested,
        source: event_source(source).into(),
        cid: cid.unwrap_or_default(),
        call_id,
        actor,
        remaining_login_methods,
        traceparent: traceparent.unwrap_or_default(),
    }
}
