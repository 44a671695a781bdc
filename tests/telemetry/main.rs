//! Telemetry end to end, in its own process because it installs the global
//! subscriber and OpenTelemetry providers: a small OTLP collector runs
//! in-process, the server exports to it, and the metrics endpoint is read.
//!
//! One runtime, collector and server serve every test here (the exporter's
//! channel lives on the runtime that built it); tests `block_on` it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use connections::{
    app::App,
    cli::LogFormat,
    config::Settings,
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
        event_service_client::EventServiceClient, subscribe_response::Message,
    },
    telemetry::{self, Telemetry, TelemetryConfig},
};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::any_value,
    trace::v1::{Span, span::SpanKind},
};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, runtime::Runtime, sync::Notify};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, transport::Channel};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(20);

/// What the collector received.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// `service.name` of each exported batch of spans.
    service_names: Vec<String>,
    metric_names: Vec<String>,
}

/// An OTLP/gRPC collector for traces and metrics that keeps everything.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.received.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| format!("{v:?}"));
            received.service_names.extend(service_name);
            let spans = resource_spans.scope_spans.into_iter().flat_map(|s| s.spans);
            received.spans.extend(spans);
        }
        drop(received);
        self.arrived.notify_one();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let names = request
            .into_inner()
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|m| m.name);
        self.received.lock().unwrap().metric_names.extend(names);
        self.arrived.notify_one();
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

struct Env {
    runtime: Runtime,
    collector: Collector,
    telemetry: Telemetry,
    server: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (collector, telemetry, server, metrics, dir) = runtime.block_on(async {
            let collector = Collector::default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let collector_addr = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(collector.clone()))
                    .add_service(MetricsServiceServer::new(collector.clone()))
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            let telemetry = telemetry::init(&TelemetryConfig {
                log_format: LogFormat::Text,
                otlp_endpoint: Some(format!("http://{collector_addr}")),
            })
            .unwrap();
            assert!(telemetry.exporting_traces() && telemetry.exporting_metrics());

            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
            let mut settings = Settings::for_database(url);
            settings.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            let app = App::build(&settings).await.unwrap();
            let metrics = app.metrics_addr().unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = listener.local_addr().unwrap();
            tokio::spawn(app.run(listener, std::future::pending()));
            (collector, telemetry, server, metrics, dir)
        });
        Env {
            runtime,
            collector,
            telemetry,
            server,
            metrics,
            _dir: dir,
        }
    })
}

impl Env {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.server))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Flushes the providers until `found` sees what it looks for.
    async fn wait_for<T>(&'static self, found: impl Fn(&Received) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(value) = found(&self.collector.received.lock().unwrap()) {
                    return value;
                }
                tokio::task::spawn_blocking(|| self.telemetry.force_flush())
                    .await
                    .unwrap();
                if let Some(value) = found(&self.collector.received.lock().unwrap()) {
                    return value;
                }
                // Woken by the next export; flushed again after a while in
                // case the span ended after this flush.
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    self.collector.arrived.notified(),
                )
                .await;
            }
        })
        .await
        .expect("the collector did not receive it in time")
    }
}

async fn create_site_and_account(channel: &Channel, api_key: &str, vhost: i64) {
    AdminServiceClient::new(channel.clone())
        .upsert_site(pb::UpsertSiteRequest {
            api_key: api_key.into(),
            vhost,
            name: "telemetry".into(),
            unlink_action_enabled: false,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await
        .unwrap();
    AdminServiceClient::new(channel.clone())
        .upsert_account(pb::UpsertAccountRequest {
            api_key: api_key.into(),
            uid: "u1".into(),
            login_ids: vec![pb::LoginId {
                login_id: "a@example.com".into(),
                has_password: true,
            }],
        })
        .await
        .unwrap();
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

#[test]
fn an_incoming_traceparent_is_continued_and_exported() {
    let env = env();
    env.runtime.block_on(async {
        let channel = env.channel().await;
        create_site_and_account(&channel, "3_trace", 7001).await;

        let mut request = Request::new(pb::LinkConnectionRequest {
            api_key: "3_trace".into(),
            uid: "u1".into(),
            provider: "facebook".into(),
            sub_provider: String::new(),
            provider_uid: "fb-1".into(),
            login_id: None,
            session: None,
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
                .parse()
                .unwrap(),
        );
        let response = ConnectionServiceClient::new(channel.clone())
            .link_connection(request)
            .await
            .unwrap();
        // The traceparent the handler got (and events carry) comes back.
        let traceparent = response.metadata().get("traceparent").unwrap();
        let parts: Vec<String> = traceparent
            .to_str()
            .unwrap()
            .split('-')
            .map(str::to_owned)
            .collect();
        assert_eq!(parts[1], TRACE_ID);
        let call_id = response.into_inner().call_id;

        let rpc_span = env
            .wait_for(|received| {
                received
                    .spans
                    .iter()
                    .find(|s| hex(&s.trace_id) == TRACE_ID && s.kind == SpanKind::Server as i32)
                    .cloned()
            })
            .await;
        assert_eq!(
            rpc_span.name,
            "connections.v1.ConnectionService/LinkConnection"
        );
        assert_eq!(hex(&rpc_span.parent_span_id), PARENT_SPAN_ID);
        assert_eq!(
            hex(&rpc_span.span_id),
            parts[2],
            "the handler's traceparent names the RPC span"
        );
        assert_eq!(
            attribute(&rpc_span, "call_id").as_deref(),
            Some(call_id.as_str())
        );
        assert_eq!(attribute(&rpc_span, "site").as_deref(), Some("3_trace"));
        assert_eq!(attribute(&rpc_span, "code").as_deref(), Some("OK"));

        let db_span = env
            .wait_for(|received| {
                received
                    .spans
                    .iter()
                    .find(|s| s.name == "db.link_connection" && hex(&s.trace_id) == TRACE_ID)
                    .cloned()
            })
            .await;
        assert_eq!(db_span.parent_span_id, rpc_span.span_id);
        let service_names = env.collector.received.lock().unwrap().service_names.clone();
        assert!(
            !service_names.is_empty()
                && service_names.iter().all(|n| n.contains("\"connections\"")),
            "{service_names:?}"
        );
    });
}

#[test]
fn refusals_record_their_code_and_reason_in_the_span() {
    let env = env();
    env.runtime.block_on(async {
        let channel = env.channel().await;
        let mut request = Request::new(pb::GetAccountRequest {
            api_key: "3_nowhere".into(),
            uid: "u1".into(),
        });
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-b7ad6b7169203331-01")
                .parse()
                .unwrap(),
        );
        let status = ConnectionServiceClient::new(channel)
            .get_account(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let span = env
            .wait_for(|received| {
                received
                    .spans
                    .iter()
                    .find(|s| hex(&s.trace_id) == trace_id && s.kind == SpanKind::Server as i32)
                    .cloned()
            })
            .await;
        assert_eq!(attribute(&span, "code").as_deref(), Some("NOT_FOUND"));
        assert_eq!(
            attribute(&span, "reason").as_deref(),
            Some("SITE_NOT_FOUND")
        );
    });
}

#[test]
fn metrics_are_served_as_prometheus_text_and_exported() {
    let env = env();
    env.runtime.block_on(async {
        let channel = env.channel().await;
        create_site_and_account(&channel, "3_metrics", 7002).await;
        let mut client = ConnectionServiceClient::new(channel);
        for _ in 0..2 {
            client
                .get_account(pb::GetAccountRequest {
                    api_key: "3_metrics".into(),
                    uid: "u1".into(),
                })
                .await
                .unwrap();
        }
        let refused = client
            .get_account(pb::GetAccountRequest {
                api_key: "3_metrics".into(),
                uid: "nobody".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);

        let (head, body) = http_get(env.metrics, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let rpc = "connections.v1.ConnectionService/GetAccount";
        let count = |code: &str| -> u64 {
            let prefix = format!("connections_rpc_calls_total{{rpc=\"{rpc}\",code=\"{code}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(count("OK") >= 2, "{body}");
        assert!(count("NOT_FOUND") >= 1, "{body}");
        assert!(body.contains(&format!(
            "connections_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"+Inf\"}}"
        )));
        for name in [
            "connections_outbox_unsequenced ",
            "connections_events_head_position ",
            "connections_subscribers ",
            "connections_events_delivered_total ",
            "connections_events_sequencing_lag_seconds_count ",
        ] {
            assert!(body.contains(name), "no {name} in\n{body}");
        }
        let (head, _) = http_get(env.metrics, "/other").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        env.wait_for(|received| {
            ["connections.rpc.calls", "connections.rpc.duration"]
                .iter()
                .all(|name| received.metric_names.iter().any(|n| n == name))
                .then_some(())
        })
        .await;
    });
}

#[test]
fn event_metrics_follow_removals_and_subscribers() {
    let env = env();
    env.runtime.block_on(async {
        let channel = env.channel().await;
        create_site_and_account(&channel, "3_events", 7003).await;
        let mut connections = ConnectionServiceClient::new(channel.clone());
        connections
            .link_connection(pb::LinkConnectionRequest {
                api_key: "3_events".into(),
                uid: "u1".into(),
                provider: "facebook".into(),
                sub_provider: String::new(),
                provider_uid: "fb-metrics".into(),
                login_id: None,
                session: None,
            })
            .await
            .unwrap();
        let mut stream = EventServiceClient::new(channel)
            .subscribe(pb::SubscribeRequest {
                start_from: pb::StartFrom::Now.into(),
                api_keys: vec!["3_events".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(next(&mut stream).await, Message::CaughtUp(_)));
        let gauge = |body: &str, name: &str| -> f64 {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1.0)
        };
        let (_, body) = http_get(env.metrics, "/metrics").await;
        assert!(gauge(&body, "connections_subscribers") >= 1.0, "{body}");

        connections
            .remove_connection(pb::RemoveConnectionRequest {
                api_key: "3_events".into(),
                uid: "u1".into(),
                provider: Some("facebook".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let Message::Event(event) = next(&mut stream).await else {
            panic!("expected the removal's event");
        };
        let (_, body) = http_get(env.metrics, "/metrics").await;
        assert!(
            gauge(&body, "connections_events_head_position") >= event.position as f64,
            "{body}"
        );
        assert!(
            gauge(&body, "connections_events_delivered_total") >= 1.0,
            "{body}"
        );
        assert!(
            gauge(&body, "connections_events_sequencing_lag_seconds_count") >= 1.0,
            "{body}"
        );
        assert_eq!(
            gauge(&body, "connections_outbox_unsequenced"),
            0.0,
            "{body}"
        );
    });
}

async fn next(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> Message {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("no message in time")
        .unwrap()
        .unwrap()
        .message
        .unwrap()
}

/// A bare HTTP/1.1 GET: (status line and headers, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
