//! Commit-to-subscriber latency of the event pipeline.
//!
//! Starts a real server (SQLite in a temporary file; PostgreSQL as well when
//! `CONNECTIONS_TEST_POSTGRES_URL` is set, also across two replicas),
//! subscribes, then commits events one at a time the way a removal does
//! (append in the transaction, commit, `outbox_committed`) and measures the
//! time from the commit returning to the event arriving on the stream.
//!
//! `cargo bench --bench event_latency` (`EVENT_LATENCY_N` events, default 500).

use std::time::{Duration, Instant};

use chrono::Utc;
use connections::{
    app::App,
    config::Settings,
    domain::{ConnectionRemoved, EventSource, RemovalMode},
    proto::v1::{self as pb, event_service_client::EventServiceClient},
    storage::{Repository, outbox},
};
use sea_orm::ConnectionTrait;
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Server {
    repo: Repository,
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(database_url: &str) -> Server {
    let app = App::build(&Settings::for_database(database_url))
        .await
        .expect("build app");
    let repo = app.repo().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("server");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    Server {
        repo,
        channel,
        stop,
        task,
    }
}

impl Server {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn event() -> ConnectionRemoved {
    let id = uuid::Uuid::new_v4().to_string();
    ConnectionRemoved {
        event_id: id.clone(),
        occurred_at: Utc::now(),
        api_key: "3_bench".into(),
        vhost: 1,
        uid: id.clone(),
        provider: "facebook".into(),
        sub_provider: String::new(),
        provider_uid: id,
        mode: RemovalMode::Hard,
        removed_login_ids: vec![],
        provider_logout_requested: true,
        source: EventSource::RemoveConnection,
        cid: None,
        call_id: "bench".into(),
        actor: "bench".into(),
        remaining_login_methods: 1,
        traceparent: None,
    }
}

/// Commits `n` events on `writer` and measures their arrival on `reader`.
async fn measure(label: &str, writer: &Repository, reader: &Channel, n: usize) {
    let mut stream = EventServiceClient::new(reader.clone())
        .subscribe(pb::SubscribeRequest {
            start_from: pb::StartFrom::Now.into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let written = event();
        let txn = writer.begin_write().await.expect("begin");
        outbox::append(&txn, std::slice::from_ref(&written))
            .await
            .expect("append");
        txn.commit().await.expect("commit");
        writer.outbox_committed();
        let committed = Instant::now();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("event did not arrive in 10 s")
                .expect("stream")
                .expect("stream ended");
            if let Some(pb::subscribe_response::Message::Event(e)) = message.message
                && e.event_id == written.event_id
            {
                break;
            }
        }
        latencies.push(committed.elapsed());
    }
    report(label, &mut latencies);
}

fn report(label: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    println!(
        "{label:<32} n={:<5} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        latencies.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        latencies[latencies.len() - 1],
    );
}

async fn fresh_postgres_database(base: &str) -> String {
    let admin = sea_orm::Database::connect(base).await.expect("connect");
    let name = format!("bench_{}", std::process::id());
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create");
    let _ = admin.close().await;
    let mut url = url::Url::parse(base).expect("url");
    url.set_path(&name);
    url.to_string()
}

async fn drop_postgres_database(base: &str, url: &str) {
    let name = url::Url::parse(url)
        .expect("url")
        .path()
        .trim_start_matches('/')
        .to_owned();
    if let Ok(admin) = sea_orm::Database::connect(base).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = std::env::var("EVENT_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    println!("commit -> subscriber latency (one event per transaction)");

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let server = start(&url).await;
    measure("sqlite, same replica", &server.repo, &server.channel, n).await;
    server.shutdown().await;

    match std::env::var("CONNECTIONS_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let url = fresh_postgres_database(&base).await;
            let a = start(&url).await;
            let b = start(&url).await;
            measure("postgres, same replica", &a.repo, &a.channel, n).await;
            measure("postgres, writer A -> reader B", &a.repo, &b.channel, n).await;
            a.shutdown().await;
            b.shutdown().await;
            drop_postgres_database(&base, &url).await;
        }
        _ => println!("postgres: skipped (CONNECTIONS_TEST_POSTGRES_URL is not set)"),
    }
}
