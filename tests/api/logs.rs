//! The log at the default level (INFO): exactly one line per call, naming
//! its call id, RPC (or route), site and outcome; a refused call is logged
//! once; health checks and reflection stay out of it. Read from a real
//! server process.

use std::time::{Duration, Instant};

use connections::proto::v1 as pb;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    helpers::bearer,
    process::{ServerProcess, free_port, run_binary},
};

/// The call id a response or a refusal carries.
fn call_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-call-id")
        .to_owned()
}

/// The log's lines that name `call_id`, once all of them are there.
async fn lines_of(server: &ServerProcess, call_ids: &[&str]) -> Vec<Vec<String>> {
    let started = Instant::now();
    loop {
        let log = server.log();
        let lines: Vec<Vec<String>> = call_ids
            .iter()
            .map(|id| {
                log.lines()
                    .filter(|line| line.contains(id))
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        if lines.iter().all(|l| !l.is_empty()) {
            return lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not every call was logged within 10 s: {call_ids:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_info_line_and_health_and_reflection_stay_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    // A token, so that a call without one is refused.
    let token = run_binary(&[
        "token",
        "create",
        "--caller",
        "ops",
        "--sites",
        "*",
        "--permissions",
        "admin,connections.read",
        "--database-url",
        &url,
    ])
    .trim()
    .to_owned();
    let http = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_logging(&url, &["--http-listen", &http], "info").await;
    let channel = server.channel();
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(channel.clone());

    let ok = admin
        .upsert_site(bearer(
            pb::UpsertSiteRequest {
                api_key: "3_a".into(),
                vhost: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("UpsertSite");
    let ok = call_id(ok.metadata());
    let get = pb::GetAccountRequest {
        api_key: "3_a".into(),
        uid: "nobody".into(),
    };
    let refused = connections
        .get_account(get.clone())
        .await
        .expect_err("no token");
    let refused = call_id(refused.metadata());
    let not_found = connections
        .get_account(bearer(get, &token))
        .await
        .expect_err("no such account");
    let not_found = call_id(not_found.metadata());
    for _ in 0..3 {
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health");
    }
    // What grpcurl does before a call: list the services by reflection.
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        answers
            .message()
            .await
            .expect("reflection answer")
            .expect("a reflection answer");
    }
    let rest = Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .request(
            http::Request::post(format!("http://{http}/socialize.removeConnection"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from_static(b"apiKey=3_a&UID=u1")))
                .expect("request"),
        )
        .await
        .expect("REST request");
    let rest = rest
        .headers()
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-call-id")
        .to_owned();

    let lines = lines_of(&server, &[&ok, &refused, &not_found, &rest]).await;
    let expected = [
        ("AdminService/UpsertSite", "code=OK", "site=3_a"),
        (
            "ConnectionService/GetAccount",
            "code=UNAUTHENTICATED",
            "reason=UNAUTHENTICATED",
        ),
        ("ConnectionService/GetAccount", "code=NOT_FOUND", "site=3_a"),
        ("socialize.removeConnection", "reason=UNAUTHENTICATED", ""),
    ];
    for (lines, (what, outcome, more)) in lines.iter().zip(expected) {
        assert_eq!(lines.len(), 1, "one line for the call: {lines:#?}");
        let line = &lines[0];
        for part in [" INFO ", what, outcome, more] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
    }
    let log = server.log();
    assert!(!log.contains("grpc.health"), "health at INFO:\n{log}");
    assert!(
        !log.contains("grpc.reflection"),
        "reflection at INFO:\n{log}"
    );
    assert!(!log.contains("call refused"), "refused twice:\n{log}");
    eprintln!(
        "{} log lines in all; the calls':\n{}",
        log.lines().count(),
        lines.concat().join("\n")
    );
}
