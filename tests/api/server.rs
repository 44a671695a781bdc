use connections::proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    helpers::{Backend, TestApp},
    on_both_backends,
};

on_both_backends!(
    health_reports_serving_after_migrations,
    reflection_v1_and_v1alpha_list_every_service,
    successful_responses_carry_the_call_id,
    stop_ends_the_server,
);

async fn health_reports_serving_after_migrations(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    for service in [
        "",
        "connections.v1.ConnectionService",
        "connections.v1.EventService",
        "connections.v1.AdminService",
    ] {
        let response = HealthClient::new(app.channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service}");
    }
}

async fn reflection_v1_and_v1alpha_list_every_service(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "connections.v1.ConnectionService",
        "connections.v1.EventService",
        "connections.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    // v1alpha (grpcurl 1.8) resolves the error detail types.
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "google.rpc.ErrorInfo".into(),
            ),
        ),
    };
    let mut stream =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
    let response = stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    assert!(
        matches!(
            response,
            v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
        ),
        "{response:?}"
    );
}

async fn successful_responses_carry_the_call_id(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let response = app
        .admin()
        .upsert_site(pb::UpsertSiteRequest {
            api_key: "3_a".into(),
            vhost: 1,
            name: String::new(),
            unlink_action_enabled: false,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await
        .unwrap();
    let header = response
        .metadata()
        .get("x-call-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(header, response.into_inner().call_id);
}

async fn stop_ends_the_server(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let addr = app.addr;
    app.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
