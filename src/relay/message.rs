//! One event as a JetStream message: subject, headers and payload.

use async_nats::{HeaderMap, header};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use prost::Message as _;
use serde_json::{Value, json};

use super::subject;
use crate::{
    config::RelayFormat,
    domain::SequencedEvent,
    proto::{codec, v1 as pb},
};

/// Header carrying the event's position (== the stream sequence).
pub const POSITION_HEADER: &str = "Connections-Position";
/// Header carrying the W3C trace context of the call that caused the event.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Standard content type header.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub position: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Builds the message of `event`, with `Nats-Expected-Last-Sequence =
/// expected_last` (`position - 1`, so that it can only be stored as stream
/// sequence `position`; see `publisher::Publisher::sequence_offset` for the
/// one case where the server counts differently).
pub fn outgoing(
    event: SequencedEvent,
    prefix: &str,
    format: RelayFormat,
    expected_last: u64,
) -> Outgoing {
    let position = event.position;
    let subject = subject::subject(prefix, &event.event.api_key, &event.event.provider);
    let message = codec::event(event);
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, message.event_id.as_str());
    headers.insert(
        header::NATS_EXPECTED_LAST_SEQUENCE,
        expected_last.to_string(),
    );
    headers.insert(POSITION_HEADER, position.to_string());
    // A header value must not break the protocol's line framing.
    if !message.traceparent.is_empty() && message.traceparent.bytes().all(|b| b.is_ascii_graphic())
    {
        headers.insert(TRACEPARENT_HEADER, message.traceparent.as_str());
    }
    let payload = match format {
        RelayFormat::Protobuf => {
            headers.insert(CONTENT_TYPE_HEADER, "application/protobuf");
            Bytes::from(message.encode_to_vec())
        }
        RelayFormat::Json => {
            headers.insert(CONTENT_TYPE_HEADER, "application/json");
            Bytes::from(json(&message).to_string())
        }
    };
    Outgoing {
        position,
        subject,
        headers,
        payload,
    }
}

/// The canonical proto3 JSON of `ConnectionRemoved`: lowerCamelCase names,
/// 64-bit integers as strings, enums by name, the timestamp in RFC 3339 (UTC,
/// `Z`, 0, 3, 6 or 9 fraction digits). Fields with default values are
/// printed too (the "always print fields" option), so a consumer never has
/// to know the defaults.
pub fn json(message: &pb::ConnectionRemoved) -> Value {
    let pb::ConnectionRemoved {
        position,
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
    } = message;
    let occurred_at = occurred_at.as_ref().map_or(Value::Null, |t| {
        let nanos = u32::try_from(t.nanos).unwrap_or(0);
        DateTime::<Utc>::from_timestamp(t.seconds, nanos).map_or(Value::Null, |at| {
            Value::String(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        })
    });
    let mode =
        pb::RemovalMode::try_from(*mode).map_or_else(|_| json!(mode), |m| json!(m.as_str_name()));
    let source = pb::EventSource::try_from(*source)
        .map_or_else(|_| json!(source), |s| json!(s.as_str_name()));
    json!({
        "position": position.to_string(),
        "eventId": event_id,
        "occurredAt": occurred_at,
        "apiKey": api_key,
        "vhost": vhost.to_string(),
        "uid": uid,
        "provider": provider,
        "subProvider": sub_provider,
        "providerUid": provider_uid,
        "mode": mode,
        "removedLoginIds": removed_login_ids,
        "providerLogoutRequested": provider_logout_requested,
        "source": source,
        "cid": cid,
        "callId": call_id,
        "actor": actor,
        "remainingLoginMethods": remaining_login_methods,
        "traceparent": traceparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConnectionRemoved, EventSource, RemovalMode};

    fn event() -> SequencedEvent {
        SequencedEvent {
            position: 42,
            event: ConnectionRemoved {
                event_id: "0b8f6f1e-4a57-4a53-9c43-1d3e2a3b4c5d".into(),
                occurred_at: DateTime::from_timestamp(1_764_000_000, 120_000_000)
                    .unwrap_or_default(),
                api_key: "3_a.b".into(),
                vhost: 1001,
                uid: "u1".into(),
                provider: "facebook".into(),
                sub_provider: String::new(),
                provider_uid: "fb-1".into(),
                mode: RemovalMode::Soft,
                removed_login_ids: vec!["a@example.com".into()],
                provider_logout_requested: true,
                source: EventSource::UnlinkAccount,
                cid: None,
                call_id: "call-1".into(),
                actor: "admin".into(),
                remaining_login_methods: 2,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            },
        }
    }

    #[test]
    fn protobuf_messages_carry_the_headers_of_section_13() {
        let out = outgoing(event(), "connections.v1.removed", RelayFormat::Protobuf, 41);
        assert_eq!(out.position, 42);
        assert_eq!(out.subject, "connections.v1.removed.3_a%2Eb.facebook");
        let get = |name: &str| out.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("0b8f6f1e-4a57-4a53-9c43-1d3e2a3b4c5d")
        );
        assert_eq!(get("Nats-Expected-Last-Sequence").as_deref(), Some("41"));
        assert_eq!(get(POSITION_HEADER).as_deref(), Some("42"));
        assert_eq!(
            get(CONTENT_TYPE_HEADER).as_deref(),
            Some("application/protobuf")
        );
        assert_eq!(
            get(TRACEPARENT_HEADER).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let decoded = pb::ConnectionRemoved::decode(out.payload).unwrap();
        assert_eq!(decoded, codec::event(event()));
    }

    #[test]
    fn json_is_canonical_proto3_json() {
        let out = outgoing(event(), "connections.v1.removed", RelayFormat::Json, 41);
        assert_eq!(
            out.headers.get(CONTENT_TYPE_HEADER).map(|v| v.as_str()),
            Some("application/json")
        );
        let value: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(
            value,
            json!({
                "position": "42",
                "eventId": "0b8f6f1e-4a57-4a53-9c43-1d3e2a3b4c5d",
                "occurredAt": "2025-11-24T16:00:00.120Z",
                "apiKey": "3_a.b",
                "vhost": "1001",
                "uid": "u1",
                "provider": "facebook",
                "subProvider": "",
                "providerUid": "fb-1",
                "mode": "REMOVAL_MODE_SOFT",
                "removedLoginIds": ["a@example.com"],
                "providerLogoutRequested": true,
                "source": "EVENT_SOURCE_UNLINK_ACCOUNT",
                "cid": "",
                "callId": "call-1",
                "actor": "admin",
                "remainingLoginMethods": 2,
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            })
        );
    }

    #[test]
    fn a_malformed_traceparent_is_left_out() {
        let mut bad = event();
        bad.event.traceparent = Some("00-abc\r\nX-Injected: 1".into());
        let out = outgoing(bad, "p", RelayFormat::Protobuf, 41);
        assert!(out.headers.get(TRACEPARENT_HEADER).is_none());
        assert_eq!(out.position, 42);
    }
}
