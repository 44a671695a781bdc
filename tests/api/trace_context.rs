//! The call id and the W3C trace context of a call, as a caller sees them.
//! This binary installs no global subscriber, so these run the layer's
//! fallback path (ids made without an OpenTelemetry tracer); the
//! `telemetry` test binary covers the exported spans.

use connections::proto::v1 as pb;
use tonic::{Code, Request};

use crate::{
    helpers::{Backend, TestApp, assert_refused},
    on_both_backends,
};

on_both_backends!(
    a_traceparent_is_continued_and_returned_with_the_call_id,
    calls_without_a_traceparent_get_a_fresh_trace,
    statuses_made_before_any_handler_carry_a_call_id,
);

pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// `message` sent with `traceparent: 00-TRACE_ID-PARENT_SPAN_ID-01`.
pub fn with_traceparent<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .expect("ascii"),
    );
    request
}

/// (version, trace id, span id, flags) of a traceparent.
pub fn traceparent_parts(traceparent: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

async fn a_traceparent_is_continued_and_returned_with_the_call_id(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;

    let response = app
        .connections()
        .link_connection(with_traceparent(pb::LinkConnectionRequest {
            api_key: "3_a".into(),
            uid: "u1".into(),
            provider: "facebook".into(),
            sub_provider: String::new(),
            provider_uid: "fb-1".into(),
            login_id: None,
            session: None,
        }))
        .await
        .unwrap();
    let header_call_id = response.metadata().get("x-call-id").unwrap().clone();
    let traceparent = response.metadata().get("traceparent").unwrap().clone();
    let (version, trace_id, span_id, flags) = traceparent_parts(traceparent.to_str().unwrap());
    assert_eq!(
        (version.as_str(), trace_id.as_str(), flags.as_str()),
        ("00", TRACE_ID, "01")
    );
    assert_ne!(span_id, PARENT_SPAN_ID, "the call has its own span");
    assert_eq!(
        response.into_inner().call_id,
        header_call_id.to_str().unwrap()
    );
    // That the events of a removal carry this traceparent is checked in
    // end_to_end.rs, through a live subscriber.

    let refused = app
        .connections()
        .get_account(with_traceparent(pb::GetAccountRequest {
            api_key: "3_a".into(),
            uid: "nobody".into(),
        }))
        .await;
    let status = assert_refused(refused, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let (_, trace_id, _, _) = traceparent_parts(
        status
            .metadata()
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap(),
    );
    assert_eq!(trace_id, TRACE_ID);
}

async fn calls_without_a_traceparent_get_a_fresh_trace(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let status = app
            .connections()
            .get_account(pb::GetAccountRequest {
                api_key: "3_none".into(),
                uid: "u1".into(),
            })
            .await
            .unwrap_err();
        let (version, trace_id, span_id, _) = traceparent_parts(
            status
                .metadata()
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap(),
        );
        assert_eq!(version, "00");
        assert_eq!((trace_id.len(), span_id.len()), (32, 16));
        assert_ne!(trace_id, "0".repeat(32));
        seen.push(trace_id);
    }
    assert_ne!(seen[0], seen[1], "each call starts its own trace");
}

async fn statuses_made_before_any_handler_carry_a_call_id(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            Request::new(pb::GetAccountRequest::default()),
            http::uri::PathAndQuery::from_static("/connections.v1.ConnectionService/NoSuchMethod"),
            tonic_prost::ProstCodec::<pb::GetAccountRequest, pb::GetAccountResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let call_id = status.metadata().get("x-call-id").unwrap();
    assert_eq!(call_id.len(), 32);
}
