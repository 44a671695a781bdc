//! The JetStream relay: sustained publishing rate and commit-to-JetStream
//! latency.
//!
//! Needs a NATS server with JetStream (`CONNECTIONS_TEST_NATS_URL`, e.g.
//! `nats://127.0.0.1:4222`); prints "skipped" without it. Runs on SQLite,
//! and on PostgreSQL as well when `CONNECTIONS_TEST_POSTGRES_URL` is set.
//!
//! - **Sustained rate**: `RELAY_BENCH_BACKLOG` events (default 20000) are
//!   committed with the relay off; a server with the relay on then starts,
//!   and the time until the stream's last sequence reaches the head gives
//!   events/s (reading the table, publishing, awaiting acks in a window,
//!   recording progress).
//! - **Latency**: `RELAY_BENCH_N` events (default 500) committed one per
//!   transaction; each is timed from its commit returning to its message
//!   arriving on a plain NATS subscription of the stream's subjects (the
//!   server delivers it there when it stores it).
//!
//! `cargo bench --bench relay`

use std::time::{Duration, Instant};

use chrono::Utc;
use connections::{
    app::App,
    config::{RelaySettings, Settings},
    domain::{ConnectionRemoved, EventSource, RemovalMode},
    storage::{Repository, outbox},
};
use futures::StreamExt;
use sea_orm::ConnectionTrait;
use tokio::sync::oneshot;

struct Server {
    repo: Repository,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(database_url: &str, relay: Option<RelaySettings>) -> Server {
    let mut settings = Settings::for_database(database_url);
    settings.relay = relay;
    let app = App::build(&settings).await.expect("build app");
    let repo = app.repo().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("server");
    });
    Server { repo, stop, task }
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

async fn commit(repo: &Repository, events: &[ConnectionRemoved]) {
    let txn = repo.begin_write().await.expect("begin");
    outbox::append(&*txn, events).await.expect("append");
    txn.commit().await.expect("commit");
    repo.outbox_committed();
}

fn relay_settings(nats: &str) -> RelaySettings {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = tag.get(..12).unwrap_or("x");
    RelaySettings {
        stream: format!("BENCH_{tag}"),
        subject_prefix: format!("bench.{tag}.connections.v1.removed"),
        ..RelaySettings::new(nats)
    }
}

async fn stream_last(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Backlog catch-up: events/s from the relay's start to the stream's head.
async fn sustained(label: &str, database_url: &str, nats: &str, backlog: usize) {
    let writer = start(database_url, None).await;
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(500) {
        let events: Vec<_> = chunk.iter().map(|_| event()).collect();
        commit(&writer.repo, &events).await;
    }
    while writer.repo.count_unsequenced_events().await.expect("count") > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head = writer
        .repo
        .sequence_state()
        .await
        .expect("head")
        .last_position;
    writer.shutdown().await;

    let settings = relay_settings(nats);
    let js = async_nats::jetstream::new(async_nats::connect(nats).await.expect("nats"));
    let started = Instant::now();
    let relay = start(database_url, Some(settings.clone())).await;
    while stream_last(&js, &settings.stream).await < head {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "{label:<34} backlog={head:<6} {:>8.0} events/s ({elapsed:.2?})",
        head as f64 / elapsed.as_secs_f64()
    );
    relay.shutdown().await;
    let _ = js.delete_stream(&settings.stream).await;
}

/// Commit-to-JetStream latency, one event per transaction.
async fn latency(label: &str, database_url: &str, nats: &str, n: usize) {
    let settings = relay_settings(nats);
    let client = async_nats::connect(nats).await.expect("nats");
    let mut arrivals = client
        .subscribe(format!("{}.>", settings.subject_prefix))
        .await
        .expect("subscribe");
    let server = start(database_url, Some(settings.clone())).await;
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let written = event();
        commit(&server.repo, std::slice::from_ref(&written)).await;
        let committed = Instant::now();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), arrivals.next())
                .await
                .expect("message did not arrive in 10 s")
                .expect("subscription ended");
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned());
            if id.as_deref() == Some(written.event_id.as_str()) {
                break;
            }
        }
        latencies.push(committed.elapsed());
    }
    report(label, &mut latencies);
    server.shutdown().await;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&settings.stream)
        .await;
}

fn report(label: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    println!(
        "{label:<34} n={:<5} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        latencies.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        latencies[latencies.len() - 1],
    );
}

async fn fresh_postgres_database(base: &str, suffix: &str) -> String {
    let admin = sea_orm::Database::connect(base).await.expect("connect");
    let name = format!("bench_relay_{}_{suffix}", std::process::id());
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

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(nats) = std::env::var("CONNECTIONS_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("relay: skipped (CONNECTIONS_TEST_NATS_URL is not set)");
        return;
    };
    let backlog = env_number("RELAY_BENCH_BACKLOG", 20_000);
    let n = env_number("RELAY_BENCH_N", 500);
    println!("JetStream relay: sustained rate (backlog catch-up) and commit -> JetStream latency");

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    sustained("sqlite, sustained", &sqlite("rate.db"), &nats, backlog).await;
    latency(
        "sqlite, commit -> JetStream",
        &sqlite("latency.db"),
        &nats,
        n,
    )
    .await;

    match std::env::var("CONNECTIONS_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let url = fresh_postgres_database(&base, "rate").await;
            sustained("postgres, sustained", &url, &nats, backlog).await;
            drop_postgres_database(&base, &url).await;
            let url = fresh_postgres_database(&base, "latency").await;
            latency("postgres, commit -> JetStream", &url, &nats, n).await;
            drop_postgres_database(&base, &url).await;
        }
        _ => println!("postgres: skipped (CONNECTIONS_TEST_POSTGRES_URL is not set)"),
    }
}
