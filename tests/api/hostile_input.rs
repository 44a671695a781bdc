//! Bodies and values no honest client sends: raw malformed protobuf over
//! HTTP/2, values far over every limit, deep `context` values. Every one is
//! the client's fault (INVALID_ARGUMENT with the field named, the value
//! truncated) and changes nothing.

use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::codegen::Bytes;
use tonic::{Code, body::Body};
use tower::ServiceExt;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields, reason},
    on_both_backends,
};
use connections::proto::v1 as pb;

on_both_backends!(
    malformed_protobuf_bodies_are_malformed_request,
    context_nested_past_the_service_limit_names_the_field,
    errors_echo_only_a_short_prefix_of_huge_values,
    wildcard_redirect_origins_are_refused,
);

const REMOVE: &str = "/connections.v1.ConnectionService/RemoveConnection";

/// Sends `payload` as the one message of a unary gRPC call; returns the
/// status code and the ErrorInfo-bearing status.
async fn raw_call(app: &TestApp, path: &str, payload: &[u8]) -> tonic::Status {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(Full::new(Bytes::from(frame))))
        .unwrap();
    let response = app
        .channel
        .clone()
        .oneshot(request)
        .await
        .expect("http/2 call");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status")
}

/// A `google.protobuf.Value` nested `levels` objects deep.
fn nested_value(levels: usize) -> prost_types::Value {
    use prost_types::value::Kind;
    (0..levels).fold(
        prost_types::Value {
            kind: Some(Kind::NumberValue(1.0)),
        },
        |inner, _| prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct {
                fields: [("a".to_owned(), inner)].into(),
            })),
        },
    )
}

fn remove(context: Option<prost_types::Value>) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: "3_a".into(),
        uid: "u1".into(),
        provider: Some("facebook".into()),
        context,
        ..Default::default()
    }
}

async fn app_with_a_connection(backend: &Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    app.link("3_a", "u1", "facebook", "", "fb-1", None).await;
    app
}

async fn still_connected(app: &TestApp) {
    let account = app.account("3_a", "u1").await;
    assert_eq!(account.identities.len(), 1, "nothing may change");
}

async fn malformed_protobuf_bodies_are_malformed_request(backend: Backend) {
    let app = app_with_a_connection(&backend).await;
    let valid = remove(None).encode_to_vec();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("truncated", valid[..valid.len() - 3].to_vec(), None),
        // Field 1 (api_key, a string) sent as a varint.
        ("wrong wire type", vec![0x08, 0x01], Some("api_key")),
        // Field 2 (uid) holding bytes that are not UTF-8.
        ("invalid utf-8", vec![0x12, 0x02, 0xff, 0xfe], Some("uid")),
        // A context nested past the decoder's own recursion limit.
        (
            "too deep for the decoder",
            remove(Some(nested_value(60))).encode_to_vec(),
            Some("context"),
        ),
    ];
    for (case, payload, field) in cases {
        let status = raw_call(&app, REMOVE, &payload).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(reason(&status), "MALFORMED_REQUEST", "{case}");
        assert!(
            status.metadata().get("x-call-id").is_some(),
            "{case}: the call id"
        );
        if let Some(field) = field {
            assert_eq!(
                bad_fields(&status),
                vec![field.to_owned()],
                "{case}: {}",
                status.message()
            );
        }
    }
    still_connected(&app).await;
}

async fn context_nested_past_the_service_limit_names_the_field(backend: Backend) {
    let app = app_with_a_connection(&backend).await;
    // Deeper than the service allows (16), well within the decoder's limit:
    // the service's own check answers, naming the field.
    let result = app
        .connections()
        .remove_connection(remove(Some(nested_value(20))))
        .await;
    let status = assert_refused(result, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(bad_fields(&status), vec!["context".to_owned()]);
    still_connected(&app).await;
    let ok = app
        .connections()
        .remove_connection(remove(Some(nested_value(16))))
        .await
        .expect("16 levels are fine")
        .into_inner();
    assert_eq!(ok.context, Some(nested_value(16)));
}

async fn errors_echo_only_a_short_prefix_of_huge_values(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let huge = format!("https://{}.example.com", "a".repeat(5000));
    let result = app
        .admin()
        .upsert_site(pb::UpsertSiteRequest {
            api_key: "3_a".into(),
            vhost: 1,
            name: "a".into(),
            unlink_action_enabled: true,
            allowed_redirect_origins: vec![huge],
            allowed_browser_origins: vec![],
        })
        .await;
    // A default client (16 KiB metadata limit) sees the real error.
    let status = assert_refused(result, Code::InvalidArgument, "INVALID_PARAMETER");
    assert!(status.message().len() < 400, "{}", status.message());
    assert!(
        status.message().contains("truncated"),
        "{}",
        status.message()
    );
    let provider = "p".repeat(5000);
    let result = app
        .connections()
        .remove_connection(pb::RemoveConnectionRequest {
            provider: Some(provider),
            ..remove(None)
        })
        .await;
    let status = assert_refused(result, Code::InvalidArgument, "UNKNOWN_PROVIDER");
    assert!(status.message().len() < 400, "{}", status.message());
}

async fn wildcard_redirect_origins_are_refused(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    for origin in ["*", "https://*", "https://*.example.com"] {
        let result = app
            .admin()
            .upsert_site(pb::UpsertSiteRequest {
                api_key: "3_a".into(),
                vhost: 1,
                name: "a".into(),
                unlink_action_enabled: true,
                allowed_redirect_origins: vec![origin.into()],
                allowed_browser_origins: vec![],
            })
            .await;
        let status = assert_refused(result, Code::InvalidArgument, "INVALID_PARAMETER");
        assert_eq!(
            bad_fields(&status),
            vec!["allowed_redirect_origins".to_owned()],
            "{origin}"
        );
    }
    let site = app
        .admin()
        .get_site(pb::GetSiteRequest {
            api_key: "3_a".into(),
        })
        .await;
    assert_refused(site, Code::NotFound, "SITE_NOT_FOUND");
}
