//! Resource bounds proof (issue 18, proof 12): a server process with 200
//! Subscribe streams, half of which never read (small HTTP/2 windows, so
//! the server cannot push their events into the network either), under a
//! write load, with authentication on.
//!
//! - every reading subscriber receives every event, complete and in order,
//!   and so does every idle one once it finally reads (the server fell back
//!   to the table for them rather than buffering or dropping);
//! - the server's peak RSS (`VmHWM`) stays under a generous bound (printed);
//! - the writers' rate with and without the 100 idle streams is printed
//!   with its ratio, not asserted (timings belong to benchmarks);
//! - stream 201 of the caller is refused RESOURCE_EXHAUSTED, reason
//!   RESOURCE_EXHAUSTED, with the limit in the message.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use connections::proto::v1::{
    self as pb, admin_service_client::AdminServiceClient,
    connection_service_client::ConnectionServiceClient, event_service_client::EventServiceClient,
    subscribe_response::Message,
};
use futures::{StreamExt, stream};
use tonic::{
    Code, Request, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{
    helpers::{Backend, reason},
    on_both_backends,
    process::{ServerProcess, run_binary},
};

on_both_backends!(two_hundred_subscribers_half_idle_keep_memory_bounded_and_lose_nothing);

const READERS: usize = 100;
const IDLE: usize = 100;
const STREAM_LIMIT: usize = READERS + IDLE;
const WRITERS: usize = 8;
/// Removals (one event each) per phase: without, then with the idle streams.
const PER_PHASE: usize = 300;
const EVENTS: usize = 2 * PER_PHASE;
const SITE: &str = "3_bounds";
/// Generous: the run stayed under 60 MB.
const RSS_LIMIT_KIB: u64 = 300 * 1024;
const PATIENCE: Duration = Duration::from_secs(60);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn two_hundred_subscribers_half_idle_keep_memory_bounded_and_lose_nothing(backend: Backend) {
    let started = Instant::now();
    let (url, _dir) = backend.fresh_database().await;
    // Authentication on, as an operator turns it on: a token first.
    let token = run_binary(&[
        "token",
        "create",
        "--caller",
        "load",
        "--sites",
        "*",
        "--permissions",
        "connections.write,connections.read,events.subscribe,admin",
        "--database-url",
        &url,
    ]);
    let bearer = Bearer(
        format!("Bearer {}", token.trim())
            .parse()
            .expect("header value"),
    );
    let limit = STREAM_LIMIT.to_string();
    let server = ServerProcess::start(
        &url,
        &["--rate-limit", "0", "--max-streams-per-caller", &limit],
    )
    .await;
    let channel = server.channel();
    let unauthenticated = ConnectionServiceClient::new(channel.clone())
        .get_account(pb::GetAccountRequest {
            api_key: SITE.into(),
            uid: "0".into(),
        })
        .await
        .expect_err("authentication is on");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    AdminServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .upsert_site(pb::UpsertSiteRequest {
            api_key: SITE.into(),
            vhost: 31,
            name: "bounds".into(),
            unlink_action_enabled: false,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await
        .expect("upsert site");
    for writer in 0..WRITERS {
        AdminServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .upsert_account(pb::UpsertAccountRequest {
                api_key: SITE.into(),
                uid: writer.to_string(),
                login_ids: vec![pb::LoginId {
                    login_id: format!("{writer}@example.com"),
                    has_password: true,
                }],
            })
            .await
            .expect("upsert account");
    }

    // The server's memory, sampled through the run.
    let done = Arc::new(AtomicBool::new(false));
    let peak_sampled = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak_sampled.clone());
        let pid = server.pid();
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // 100 readers, each on a connection of its own, from the beginning.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let channel = server.endpoint().connect().await.expect("connect");
        let mut stream = subscribe(channel, &bearer).await.expect("subscribe");
        readers.push(tokio::spawn(async move {
            read_events(&mut stream, EVENTS).await
        }));
    }

    let writer = ConnectionServiceClient::with_interceptor(
        server.endpoint().connect().await.expect("connect"),
        bearer.clone(),
    );
    let (without_idle, mut event_ids) = write_phase(&writer, 0).await;

    // 100 subscribers that never read, with 4 KiB stream windows.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let channel = server
            .endpoint()
            .initial_stream_window_size(Some(4096))
            .connect()
            .await
            .expect("connect");
        idle.push(subscribe(channel, &bearer).await.expect("subscribe"));
    }
    // Stream 201 of the caller.
    let channel = server.endpoint().connect().await.expect("connect");
    let refused = subscribe(channel, &bearer)
        .await
        .expect_err("the caller is at its stream limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "RESOURCE_EXHAUSTED");
    assert!(
        refused.message().contains(&STREAM_LIMIT.to_string()),
        "the limit is not in {:?}",
        refused.message()
    );

    let (with_idle, more_ids) = write_phase(&writer, PER_PHASE).await;
    event_ids.extend(more_ids);

    // Every reader got every event, in position order.
    for reader in readers {
        let received = reader.await.expect("reader task");
        check_complete(&received, &event_ids);
    }
    let readers_done = started.elapsed();
    // The idle streams lost nothing either: they read now.
    let idle_read: Vec<_> = stream::iter(idle)
        .map(|mut stream| async move { read_events(&mut stream, EVENTS).await })
        .buffer_unordered(16)
        .collect()
        .await;
    for received in &idle_read {
        check_complete(received, &event_ids);
    }
    let idle_done = started.elapsed();
    done.store(true, Ordering::Release);
    sampler.await.expect("sampler");
    let (peak_kib, rss_kib_now) = server.memory_kib();

    let rate = |elapsed: Duration| {
        #[allow(clippy::cast_precision_loss)]
        let ops = PER_PHASE as f64;
        ops / elapsed.as_secs_f64()
    };
    let (rate_without, rate_with) = (rate(without_idle), rate(with_idle));
    eprintln!(
        "resource bounds ({}): {READERS} reading + {IDLE} idle subscribers, {EVENTS} events, \
         every stream complete and in order; server RSS peak {} MiB (VmHWM; sampled peak {} \
         MiB, {} MiB at the end); writers {rate_without:.0} removals/s without the idle \
         streams, {rate_with:.0}/s with them (ratio {:.2}); stream {} refused: {:?}; readers \
         complete at {readers_done:.1?}, idle streams read at {idle_done:.1?}, total {:.1?}",
        match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        },
        peak_kib / 1024,
        peak_sampled.load(Ordering::Acquire) / 1024,
        rss_kib_now / 1024,
        rate_with / rate_without,
        STREAM_LIMIT + 1,
        refused.message(),
        started.elapsed(),
    );
    assert!(
        peak_kib < RSS_LIMIT_KIB,
        "server peak RSS {peak_kib} KiB over {RSS_LIMIT_KIB} KiB"
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn subscribe(
    channel: Channel,
    bearer: &Bearer,
) -> Result<Streaming<pb::SubscribeResponse>, Status> {
    EventServiceClient::with_interceptor(channel, bearer.clone())
        .subscribe(pb::SubscribeRequest {
            start_from: pb::StartFrom::Beginning.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Reads `n` events (bounded in time); returns (position, event_id) pairs.
async fn read_events(
    stream: &mut Streaming<pb::SubscribeResponse>,
    n: usize,
) -> Vec<(u64, String)> {
    let mut received = Vec::with_capacity(n);
    tokio::time::timeout(PATIENCE, async {
        while received.len() < n {
            let message = stream
                .message()
                .await
                .expect("stream failed")
                .expect("stream ended");
            if let Some(Message::Event(event)) = message.message {
                received.push((event.position, event.event_id));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} events received in time", received.len()));
    received
}

/// Positions 1..=N in order, and exactly the events the writers were told.
fn check_complete(received: &[(u64, String)], event_ids: &[String]) {
    let n = u64::try_from(event_ids.len()).expect("count");
    assert!(
        received.iter().map(|(p, _)| *p).eq(1..=n),
        "positions are not 1..={n} in order"
    );
    let mut got: Vec<&str> = received.iter().map(|(_, id)| id.as_str()).collect();
    let mut expected: Vec<&str> = event_ids.iter().map(String::as_str).collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "not the events the removals answered");
}

/// `PER_PHASE` link-then-remove operations by `WRITERS` concurrent writers;
/// returns the time taken and the removals' event ids.
async fn write_phase(
    writer: &ConnectionServiceClient<Authed>,
    first: usize,
) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let per_writer = PER_PHASE / WRITERS;
    let remainder = PER_PHASE % WRITERS;
    let ids: Vec<Vec<String>> = stream::iter(0..WRITERS)
        .map(|w| {
            let mut client = writer.clone();
            let count = per_writer + usize::from(w < remainder);
            async move {
                let mut ids = Vec::with_capacity(count);
                for n in 0..count {
                    let provider_uid = format!("fb-{w}-{}", first + n);
                    client
                        .link_connection(pb::LinkConnectionRequest {
                            api_key: SITE.into(),
                            uid: w.to_string(),
                            provider: "facebook".into(),
                            sub_provider: String::new(),
                            provider_uid,
                            login_id: None,
                            session: None,
                        })
                        .await
                        .expect("link");
                    let removed = client
                        .remove_connection(pb::RemoveConnectionRequest {
                            api_key: SITE.into(),
                            uid: w.to_string(),
                            provider: Some("facebook".into()),
                            ..Default::default()
                        })
                        .await
                        .expect("remove")
                        .into_inner()
                        .removed;
                    assert_eq!(removed.len(), 1);
                    ids.push(removed[0].event_id.clone());
                }
                ids
            }
        })
        .buffer_unordered(WRITERS)
        .collect()
        .await;
    (started.elapsed(), ids.into_iter().flatten().collect())
}
