//! RemoveConnection under load: latency percentiles and throughput at several
//! concurrency levels, against a real server on loopback (SQLite temp file, and
//! PostgreSQL when CONNECTIONS_TEST_POSTGRES_URL is set).
//!
//! `cargo bench --bench remove_connection` (add `-- --accounts N` to change size).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use connections::{
    app::App,
    config::Settings,
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
    },
};
use sea_orm::ConnectionTrait;
use tokio::sync::Mutex;
use tonic::transport::Channel;

const API_KEY: &str = "3_bench";
/// Concurrency levels, each removing a different provider from every account.
const LEVELS: [(usize, &str); 3] = [(1, "facebook"), (8, "twitter"), (32, "linkedin")];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn start(database_url: &str) -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let mut settings = Settings::for_database(database_url);
    // Measure the service, not the per-caller rate limit.
    settings.security.rate_limit_per_second = 0.0;
    let app = App::build(&settings).await.expect("build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = app
            .run(listener, async {
                let _ = rx.await;
            })
            .await;
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, tx)
}

/// Accounts `b<n>` each with a password and one identity per benchmarked level.
async fn seed(channel: &Channel, accounts: usize) {
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut connections = ConnectionServiceClient::new(channel.clone());
    admin
        .upsert_site(pb::UpsertSiteRequest {
            api_key: API_KEY.into(),
            vhost: 1,
            name: "bench".into(),
            unlink_action_enabled: true,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await
        .expect("site");
    for n in 0..accounts {
        let uid = format!("b{n}");
        admin
            .upsert_account(pb::UpsertAccountRequest {
                api_key: API_KEY.into(),
                uid: uid.clone(),
                login_ids: vec![pb::LoginId {
                    login_id: format!("{uid}@example.com"),
                    has_password: true,
                }],
            })
            .await
            .expect("account");
        for (_, provider) in LEVELS {
            connections
                .link_connection(pb::LinkConnectionRequest {
                    api_key: API_KEY.into(),
                    uid: uid.clone(),
                    provider: provider.into(),
                    sub_provider: String::new(),
                    provider_uid: format!("{provider}-{uid}"),
                    login_id: None,
                    session: Some(pb::ProviderSession {
                        access_token: "token".into(),
                        refresh_token: String::new(),
                        expires_at: None,
                    }),
                })
                .await
                .expect("link");
        }
    }
}

/// Removes `provider` from every account in `accounts`, `concurrency` calls at a time.
async fn run(
    channel: &Channel,
    accounts: std::ops::Range<usize>,
    provider: &str,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let queue: Queue = Arc::new(Mutex::new(accounts.rev().collect()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let mut client = ConnectionServiceClient::new(channel.clone());
        let provider = provider.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(n) = queue.lock().await.pop() else {
                    break;
                };
                let call = Instant::now();
                client
                    .remove_connection(pb::RemoveConnectionRequest {
                        api_key: API_KEY.into(),
                        uid: format!("b{n}"),
                        provider: Some(provider.clone()),
                        cid: Some("bench".into()),
                        remove_login_id: false,
                        last_identity_handling: pb::LastIdentityHandling::Fail.into(),
                        context: None,
                        request_id: String::new(),
                        dry_run: false,
                        force_providers_logout: None,
                    })
                    .await
                    .expect("remove");
                latencies.push(call.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    all.sort();
    (all, elapsed)
}

/// Account numbers still to do, shared by the workers.
type Queue = Arc<Mutex<Vec<usize>>>;

async fn bench_backend(name: &str, database_url: &str, accounts: usize) {
    let (channel, stop) = start(database_url).await;
    seed(&channel, accounts).await;
    println!("\n{name}: RemoveConnection (HARD, one event each), {accounts} accounts per run");
    println!(
        "{:>11} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "concurrency", "p50 ms", "p90 ms", "p99 ms", "max ms", "calls/s"
    );
    let mut base = None;
    for (concurrency, provider) in LEVELS {
        let (latencies, elapsed) = run(&channel, 0..accounts, provider, concurrency).await;
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>11} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.0}",
            concurrency,
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
            rate
        );
        match base {
            None => base = Some(rate),
            Some(b) => println!(
                "{:>11} throughput ratio vs concurrency 1: {:.2}x",
                "",
                rate / b
            ),
        }
    }
    let _ = stop.send(());
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let accounts = args
        .iter()
        .position(|a| a == "--accounts")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    bench_backend("SQLite", &sqlite, accounts).await;

    if let Ok(base) = std::env::var("CONNECTIONS_TEST_POSTGRES_URL") {
        let admin = sea_orm::Database::connect(&base).await.expect("postgres");
        let name = format!("bench_{}", std::process::id());
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let mut url = url::Url::parse(&base).expect("url");
        url.set_path(&name);
        bench_backend("PostgreSQL", url.as_str(), accounts).await;
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}
