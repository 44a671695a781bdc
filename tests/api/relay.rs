//! The JetStream relay against a real NATS server: stream sequence ==
//! position for every event, subjects escaped, NATS restarted or down at
//! start-up, the relay leader killed, retention held back, and a durable
//! pull consumer that reads exactly the database's events in order.
//!
//! Tests that share a server use `CONNECTIONS_TEST_NATS_URL` (each with its
//! own stream and subject prefix); tests that stop or start a broker run
//! their own `nats-server -js` on a free port. Without the URL every test
//! here is skipped (loudly); `.ci/run` sets `CONNECTIONS_TEST_REQUIRE_NATS`
//! so that a missing URL fails instead.

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use connections::{
    config::{RelayFormat, RelaySettings},
    domain::{ConnectionRemoved, EventFilter, EventSource},
    proto::v1 as pb,
    relay::{message::POSITION_HEADER, subject},
    storage::{Repository, SessionSealer, db, outbox},
};
use futures::StreamExt;
use prost::Message as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    events::removed,
    helpers::{Backend, TestApp},
    on_both_backends,
};

pub const NATS_URL_VAR: &str = "CONNECTIONS_TEST_NATS_URL";
/// Set by `.ci/run`: a missing NATS URL is then a failure, not a skip.
pub const REQUIRE_NATS_VAR: &str = "CONNECTIONS_TEST_REQUIRE_NATS";

/// Longest wait for the relay to catch up.
const PATIENCE: Duration = Duration::from_secs(90);

on_both_backends!(
    every_position_reaches_the_stream_once_in_order,
    subjects_escape_dots_wildcards_and_spaces,
    nats_restarted_under_load_loses_and_repeats_nothing,
    the_relay_leader_killed_under_load_loses_and_repeats_nothing,
    nats_down_at_start_up_stops_nothing_and_holds_pruning_back,
    a_new_stream_starts_at_the_earliest_position_in_the_table,
);

/// The shared NATS server, or None (test skipped) when not configured.
fn nats_url() -> Option<String> {
    match std::env::var(NATS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_NATS_VAR).is_err(),
                "{REQUIRE_NATS_VAR} is set but {NATS_URL_VAR} is not"
            );
            eprintln!("skipped: {NATS_URL_VAR} is not set");
            None
        }
    }
}

/// Relay settings with a stream and subject prefix of the test's own, and
/// quick retries.
fn relay_settings(url: &str) -> RelaySettings {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = tag.get(..12).unwrap_or("x");
    RelaySettings {
        stream: format!("TEST_{tag}"),
        subject_prefix: format!("test.{tag}.connections.v1.removed"),
        timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
        leader_retry: Duration::from_millis(200),
        ..RelaySettings::new(url)
    }
}

/// A `nats-server -js` of the test's own on a free loopback port.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Self {
        Self::start_on(free_port(), tempfile::tempdir().expect("temp dir"))
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Self {
        let mut broker = Self {
            child: None,
            port,
            dir,
        };
        broker.restart();
        broker
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and storage directory,
    /// and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be on PATH for the relay tests");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on (right now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .expect("connect to NATS");
    jetstream::new(client)
}

/// Commits `events` in one transaction, the way a removal does.
async fn write(repo: &Repository, events: &[ConnectionRemoved]) {
    let txn = repo.begin_write().await.expect("begin");
    outbox::append(&*txn, events).await.expect("append");
    txn.commit().await.expect("commit");
    repo.outbox_committed();
}

/// `writers` tasks commit `per_writer` transactions of 1 to 3 events each,
/// spread over `repos`; returns how many events were written.
async fn write_concurrently(repos: &[Repository], writers: usize, per_writer: usize) -> usize {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let repo = repos[w % repos.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            for n in 0..per_writer {
                let batch = one_to_three_events(w + n);
                write(&repo, &batch).await;
                written += batch.len();
            }
            written
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    total
}

/// 1 to 3 events, by `turn`.
fn one_to_three_events(turn: usize) -> Vec<ConnectionRemoved> {
    (0..=(turn % 3))
        .map(|_| removed("3_relay", "facebook", EventSource::RemoveConnection))
        .collect()
}

/// `writers` tasks commit transactions of 1 to 3 events each until `stop`;
/// returns how many events were written.
async fn write_until(repo: &Repository, writers: usize, stop: &Arc<AtomicBool>) -> usize {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (repo, stop) = (repo.clone(), stop.clone());
            tokio::spawn(async move {
                let mut written = 0;
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch = one_to_three_events(w + n);
                    write(&repo, &batch).await;
                    written += batch.len();
                }
                written
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    total
}

/// Waits until every committed event is stamped, the stream's last
/// sequence is the head and `relayed_through` says so; returns the head.
async fn all_relayed(repo: &Repository, js: &jetstream::Context, stream: &str) -> u64 {
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            // Count first: once nothing is unsequenced, a progress read after
            // it sees every event written so far (read the other way round,
            // an event stamped between the reads would be missed).
            let unsequenced = repo.count_unsequenced_events().await.expect("count");
            let progress = repo.relay_progress().await.expect("progress");
            let last = match js.get_stream(stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).ok(),
                Err(_) => None,
            };
            if unsequenced == 0
                && last == Some(progress.last_position)
                && progress.relayed_through == Some(progress.last_position)
            {
                return progress.last_position;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match waited {
        Ok(head) => head,
        Err(_) => panic!(
            "the relay did not catch up: {:?}",
            repo.relay_progress().await
        ),
    }
}

/// Reads the whole stream with a durable pull consumer (optionally
/// filtered), acknowledging each message; expects `count` messages and then
/// nothing pending.
async fn read_with_durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    count: usize,
) -> Vec<jetstream::Message> {
    let stream = js.get_stream(stream).await.expect("stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            filter_subject: filter.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("durable consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let message = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", out.len()))
            .expect("the consumer ended")
            .expect("message");
        message.ack().await.expect("ack");
        out.push(message);
    }
    let mut consumer = consumer;
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.num_pending, 0, "more messages than events");
    out
}

/// The stream holds exactly the table's events from `first` on, each at
/// sequence == position, with the headers and payload of SPEC section 13.
async fn assert_stream_is_the_table(
    repo: &Repository,
    settings: &RelaySettings,
    messages: &[jetstream::Message],
    first: u64,
) {
    let table = repo
        .events_after(first - 1, &EventFilter::default(), 1_000_000)
        .await
        .expect("events");
    assert_eq!(
        messages.len(),
        table.len(),
        "stream and table differ in size"
    );
    for (message, event) in messages.iter().zip(&table) {
        let info = message.info().expect("message info");
        assert_eq!(info.stream_sequence, event.position, "sequence != position");
        let headers = message.headers.as_ref().expect("headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            header("Nats-Msg-Id").as_deref(),
            Some(event.event.event_id.as_str())
        );
        assert_eq!(header(POSITION_HEADER), Some(event.position.to_string()));
        assert_eq!(
            message.subject.as_str(),
            subject::subject(
                &settings.subject_prefix,
                &event.event.api_key,
                &event.event.provider
            )
        );
        if settings.format == RelayFormat::Protobuf {
            assert_eq!(
                header("Content-Type").as_deref(),
                Some("application/protobuf")
            );
            let decoded =
                pb::ConnectionRemoved::decode(message.payload.clone()).expect("protobuf payload");
            assert_eq!(decoded.position, event.position);
            assert_eq!(decoded.event_id, event.event.event_id);
        }
    }
}

async fn delete_stream(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}

async fn every_position_reaches_the_stream_once_in_order(backend: Backend) {
    let Some(url) = nats_url() else { return };
    let settings = relay_settings(&url);
    let a = TestApp::spawn_with(&backend, |s| s.relay = Some(settings.clone())).await;
    // On PostgreSQL a second replica competes for the sequencer and the
    // relay, and writes too.
    let b = match backend {
        Backend::Postgres(_) => {
            Some(TestApp::spawn_on(&a.database_url, |s| s.relay = Some(settings.clone())).await)
        }
        Backend::Sqlite => None,
    };
    let mut repos = vec![a.repo.clone()];
    repos.extend(b.iter().map(|b| b.repo.clone()));
    let written = write_concurrently(&repos, 8, 120).await;
    assert!(written >= 1900, "{written}");

    let js = jetstream(&url).await;
    let head = all_relayed(&a.repo, &js, &settings.stream).await;
    assert_eq!(head, written as u64);
    let mut stream = js.get_stream(&settings.stream).await.expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!((state.first_sequence, state.last_sequence), (1, head));
    assert_eq!(state.messages, head, "a gap or a duplicate in the stream");

    let messages = read_with_durable_consumer(&js, &settings.stream, "", written).await;
    assert_stream_is_the_table(&a.repo, &settings, &messages, 1).await;

    // Later events follow at once (the head watch wakes the relay).
    write(
        &a.repo,
        &[removed("3_relay", "google", EventSource::UnlinkAccount)],
    )
    .await;
    assert_eq!(all_relayed(&a.repo, &js, &settings.stream).await, head + 1);

    // Caught up: the relay's health entry says so, and the lag is exported.
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            let answer = HealthClient::new(a.channel.clone())
                .check(HealthCheckRequest {
                    service: connections::relay::HEALTH_SERVICE.into(),
                })
                .await;
            if let Ok(answer) = answer {
                return answer.into_inner().status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no relay health entry");
    assert_eq!(status, ServingStatus::Serving as i32);
    let text = connections::telemetry::metrics::render_prometheus();
    for name in [
        "connections_relay_lag_positions ",
        "connections_relay_lag_seconds ",
        "connections_relay_position ",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    if let Some(b) = b {
        b.stop().await;
    }
    a.stop().await;
    delete_stream(&js, &settings.stream).await;
}

async fn subjects_escape_dots_wildcards_and_spaces(backend: Backend) {
    let Some(url) = nats_url() else { return };
    let settings = RelaySettings {
        format: RelayFormat::Json,
        ..relay_settings(&url)
    };
    let app = TestApp::spawn_with(&backend, |s| s.relay = Some(settings.clone())).await;
    // Written at the storage level: an api_key and a provider name no
    // validator would let in, to show that no value can bend the subject.
    let api_key = "3_a.b*c>d e";
    let provider = "saml-x.y*z> w";
    let odd = removed(api_key, provider, EventSource::RemoveConnection);
    let plain = removed("3_a", "b", EventSource::RemoveConnection);
    write(&app.repo, std::slice::from_ref(&plain)).await;
    write(&app.repo, std::slice::from_ref(&odd)).await;

    let js = jetstream(&url).await;
    assert_eq!(all_relayed(&app.repo, &js, &settings.stream).await, 2);
    let expected = format!(
        "{}.3_a%2Eb%2Ac%3Ed%20e.saml-x%2Ey%2Az%3E%20w",
        settings.subject_prefix
    );
    // A consumer of the escaped api_key's subtree gets that event only: the
    // dot in "3_a.b" did not make it a sibling of "3_a".
    let filter = format!(
        "{}.{}.>",
        settings.subject_prefix,
        subject::escape_token(api_key)
    );
    let messages = read_with_durable_consumer(&js, &settings.stream, &filter, 1).await;
    let message = &messages[0];
    assert_eq!(message.subject.as_str(), expected);
    let tokens: Vec<&str> = message.subject.as_str().split('.').collect();
    assert_eq!(
        tokens.len(),
        7,
        "prefix (5 tokens here) + api_key + provider"
    );
    assert_eq!(subject::unescape_token(tokens[5]).as_deref(), Some(api_key));
    assert_eq!(
        subject::unescape_token(tokens[6]).as_deref(),
        Some(provider)
    );

    // --nats-format json: canonical protobuf JSON.
    let headers = message.headers.as_ref().expect("headers");
    assert_eq!(
        headers.get("Content-Type").map(|v| v.as_str()),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&message.payload).expect("json");
    assert_eq!(json["position"], "2");
    assert_eq!(json["eventId"], odd.event_id.as_str());
    assert_eq!(json["apiKey"], api_key);
    assert_eq!(json["provider"], provider);
    assert_eq!(json["source"], "EVENT_SOURCE_REMOVE_CONNECTION");
    app.stop().await;
    delete_stream(&js, &settings.stream).await;
}

async fn nats_restarted_under_load_loses_and_repeats_nothing(backend: Backend) {
    if nats_url().is_none() {
        return;
    }
    let mut broker = Broker::start();
    let settings = relay_settings(&broker.url());
    let app = TestApp::spawn_with(&backend, |s| s.relay = Some(settings.clone())).await;
    let js = jetstream(&broker.url()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (repo, stop) = (app.repo.clone(), stop.clone());
        tokio::spawn(async move { write_until(&repo, 4, &stop).await })
    };
    // Kill the broker once some events went through, keep writing while it
    // is down, then bring it back on the same port and storage, and write
    // on a little longer.
    wait_for_relayed(&app.repo, 200).await;
    broker.kill();
    let down_at = app
        .repo
        .relay_progress()
        .await
        .expect("progress")
        .last_position;
    wait_for_head(&app.repo, down_at + 300).await;
    broker.restart();
    wait_for_head(&app.repo, down_at + 600).await;
    stop.store(true, Ordering::Relaxed);

    let written = writer.await.expect("writer");
    let head = all_relayed(&app.repo, &js, &settings.stream).await;
    assert_eq!(head, written as u64);
    let messages = read_with_durable_consumer(&js, &settings.stream, "", written).await;
    assert_stream_is_the_table(&app.repo, &settings, &messages, 1).await;
    app.stop().await;
}

/// Waits until the relay recorded at least `position`.
async fn wait_for_relayed(repo: &Repository, position: u64) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let progress = repo.relay_progress().await.expect("progress");
            if progress.relayed_through.unwrap_or(0) >= position {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay did not get that far");
}

/// Waits until the sequencer stamped at least `position`.
async fn wait_for_head(repo: &Repository, position: u64) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let progress = repo.relay_progress().await.expect("progress");
            if progress.last_position >= position {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the head did not get that far");
}

/// `connections serve` as a child process, relaying to `settings`.
struct Server(Child);

impl Server {
    fn start(database_url: &str, settings: &RelaySettings) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_connections"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--database-url",
            ])
            .arg(database_url)
            .args(["--nats-url", settings.url.expose()])
            .args(["--nats-stream", &settings.stream])
            .args(["--nats-subject-prefix", &settings.subject_prefix])
            .env("RUST_LOG", "error")
            .env_remove("CONNECTIONS_METRICS_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start connections serve");
        Self(child)
    }

    /// SIGKILL: no shutdown, no lock released by the process itself.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn repository(database_url: &str) -> Repository {
    let connection = db::connect(database_url).await.expect("connect");
    db::migrate(&connection).await.expect("migrate");
    Repository::new(connection, SessionSealer::ephemeral())
}

async fn the_relay_leader_killed_under_load_loses_and_repeats_nothing(backend: Backend) {
    let Some(url) = nats_url() else { return };
    let settings = relay_settings(&url);
    let (database_url, _dir) = backend.fresh_database().await;
    // Writes come from this process, straight into the table, while the
    // server processes sequence and relay them.
    let repo = repository(&database_url).await;
    let mut first = Server::start(&database_url, &settings);
    let writer = {
        let repo = repo.clone();
        tokio::spawn(async move { write_concurrently(&[repo], 4, 500).await })
    };
    wait_for_relayed(&repo, 300).await;
    // On PostgreSQL a second replica waits for the relay lock already; on
    // SQLite (one process per file) it starts after the kill.
    let second = match backend {
        Backend::Postgres(_) => Some(Server::start(&database_url, &settings)),
        Backend::Sqlite => None,
    };
    first.kill();
    let second = second.unwrap_or_else(|| Server::start(&database_url, &settings));

    let written = writer.await.expect("writer");
    let js = jetstream(&url).await;
    let head = all_relayed(&repo, &js, &settings.stream).await;
    assert_eq!(head, written as u64);
    let messages = read_with_durable_consumer(&js, &settings.stream, "", written).await;
    assert_stream_is_the_table(&repo, &settings, &messages, 1).await;
    drop(second);
    delete_stream(&js, &settings.stream).await;
}

async fn nats_down_at_start_up_stops_nothing_and_holds_pruning_back(backend: Backend) {
    if nats_url().is_none() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = relay_settings(&format!("nats://127.0.0.1:{port}"));
    // Nothing listens on the port: start-up must not wait for it.
    let started = std::time::Instant::now();
    let app = TestApp::spawn_with(&backend, |s| {
        s.relay = Some(settings.clone());
        s.events.retention = Duration::from_millis(300);
        s.events.prune_interval = Duration::from_millis(50);
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "start-up waited for NATS"
    );

    // Writes and the gRPC stream go on.
    let events: Vec<_> = (0..5)
        .map(|_| removed("3_down", "facebook", EventSource::RemoveConnection))
        .collect();
    write(&app.repo, &events).await;
    let mut stream = app
        .events()
        .subscribe(pb::SubscribeRequest {
            start_from: pb::StartFrom::Beginning.into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut received = Vec::new();
    while received.len() < 5 {
        let response = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("no event")
            .expect("stream")
            .expect("message");
        if let Some(pb::subscribe_response::Message::Event(event)) = response.message {
            received.push(event.position);
        }
    }
    assert_eq!(received, [1, 2, 3, 4, 5]);

    // The events are older than the retention, and the pruner ran many
    // times over (every 50 ms), yet they stay: none was relayed.
    wait_for_head(&app.repo, 5).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let progress = app.repo.relay_progress().await.expect("progress");
    assert_eq!(progress.pruned_through, 0, "pruned unrelayed events");
    assert_eq!(progress.relayed_through.unwrap_or(0), 0);
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        app.repo
            .prune_events(far_future, 1000, true)
            .await
            .expect("prune"),
        0
    );

    // NATS comes up: the relay catches up by itself, then pruning proceeds.
    let broker = Broker::start_on(port, dir);
    let js = jetstream(&broker.url()).await;
    assert_eq!(all_relayed(&app.repo, &js, &settings.stream).await, 5);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let progress = app.repo.relay_progress().await.expect("progress");
            if progress.pruned_through == 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("relayed events were not pruned");
    app.stop().await;
}

async fn a_new_stream_starts_at_the_earliest_position_in_the_table(backend: Backend) {
    if nats_url().is_none() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = relay_settings(&format!("nats://127.0.0.1:{port}"));
    let app = TestApp::spawn_with(&backend, |s| s.relay = Some(settings.clone())).await;
    // Ten events pruned before the stream exists (as when the relay is
    // turned on for an old database), then five more.
    let old: Vec<_> = (0..10)
        .map(|_| removed("3_old", "facebook", EventSource::RemoveConnection))
        .collect();
    write(&app.repo, &old).await;
    wait_for_head(&app.repo, 10).await;
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        app.repo
            .prune_events(far_future, 1000, false)
            .await
            .expect("prune"),
        10
    );
    let new: Vec<_> = (0..5)
        .map(|_| removed("3_new", "google", EventSource::UnlinkAccount))
        .collect();
    write(&app.repo, &new).await;

    let broker = Broker::start_on(port, dir);
    let js = jetstream(&broker.url()).await;
    assert_eq!(all_relayed(&app.repo, &js, &settings.stream).await, 15);
    let mut stream = js.get_stream(&settings.stream).await.expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!((state.first_sequence, state.last_sequence), (11, 15));
    let messages = read_with_durable_consumer(&js, &settings.stream, "", 5).await;
    assert_stream_is_the_table(&app.repo, &settings, &messages, 11).await;
    app.stop().await;
}
