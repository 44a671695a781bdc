//! Crash proof (issue 18, proof 8): the real server binary under a steady
//! write load, with a live subscriber that checkpoints its position, is
//! killed with SIGKILL at random moments and restarted on the same database
//! and port. Afterwards:
//!
//! - every acknowledged RemoveConnection / UnlinkAccount has exactly the
//!   events its response named (call id, event ids, every identity);
//! - a call the server refused has no event;
//! - a call cut by the kill (its outcome unknown to the client) has either
//!   no event or all of them, never some;
//! - positions are dense (1..=N), each once, and every row is sequenced;
//! - the live subscriber saw every position, each session contiguous from
//!   its checkpoint, and a subscriber resuming from the committed checkpoint
//!   receives every later event exactly once, in order.
//!
//! Each removal acts on an account of its own (linked just before), so the
//! events of a call are found by the account's uid even when the client
//! never learnt the call's id.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use connections::{
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
        event_service_client::EventServiceClient, subscribe_response::Message,
    },
    storage::entities::{consumer, event},
};
use rand::Rng;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tonic::{Code, Status, transport::Channel};

use crate::{
    helpers::{Backend, reason},
    on_both_backends,
    process::{ServerProcess, replay_all, until_caught_up},
};

on_both_backends!(sigkill_under_load_loses_no_acknowledged_removal_and_no_event);

const KILLS: usize = 8;
const WORKERS: i64 = 8;
const SITE: &str = "3_crash";
const VHOST: i64 = 4242;
const CONSUMER: &str = "crash-reader";
/// Longest wait for anything the test waits on (a restarted server's
/// progress, the sequencer, a subscriber catching up).
const PATIENCE: Duration = Duration::from_secs(60);

/// What one operation removes, and with which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Two facebook identities, RemoveConnection(facebook): two events.
    Remove,
    /// Two janrain identities, UnlinkAccount(janrain, all): two events.
    Unlink,
    /// The only way to log in, RemoveConnection with FAIL: refused.
    Refused,
}

#[derive(Debug)]
enum Outcome {
    /// The account or its identities could not be set up (server down):
    /// no removal was sent.
    NotAttempted,
    Acknowledged {
        call_id: String,
        /// (event_id, provider_uid) of each removed identity.
        removed: Vec<(String, String)>,
    },
    /// The server answered with a refusal: nothing may have changed.
    Refused { call_id: String },
    /// Cut by the kill (transport error or UNAVAILABLE): committed or not.
    Unknown,
}

#[derive(Debug)]
struct Op {
    uid: i64,
    kind: Kind,
    provider_uids: BTreeSet<String>,
    outcome: Outcome,
}

/// What the live subscriber saw: one list of positions per stream, and its
/// checkpoint (acknowledged and attempted) when each stream started.
#[derive(Debug, Default, Clone)]
struct SubscriberLog {
    sessions: Vec<(u64, u64, Vec<u64>)>,
    acked: u64,
    attempted: u64,
}

async fn sigkill_under_load_loses_no_acknowledged_removal_and_no_event(backend: Backend) {
    let started = Instant::now();
    let (database_url, _dir) = backend.fresh_database().await;
    let mut server = ServerProcess::start(&database_url, &["--rate-limit", "0"]).await;
    let channel = server.channel();
    AdminServiceClient::new(channel.clone())
        .upsert_site(pb::UpsertSiteRequest {
            api_key: SITE.into(),
            vhost: VHOST,
            name: "crash".into(),
            unlink_action_enabled: true,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await
        .expect("upsert site");

    let stop_writers = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (1..=WORKERS)
        .map(|worker| {
            let channel = server.channel();
            let stop = stop_writers.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let mut ops = Vec::new();
                for seq in 0.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let kind = match seq % 5 {
                        0 => Kind::Refused,
                        1 | 3 => Kind::Remove,
                        _ => Kind::Unlink,
                    };
                    let op = run_op(&channel, worker * 1_000_000 + seq, kind).await;
                    match &op.outcome {
                        Outcome::Acknowledged { .. } => {
                            acknowledged.fetch_add(1, Ordering::AcqRel);
                        }
                        // Pacing while the server is down, not a wait for a result.
                        Outcome::NotAttempted | Outcome::Unknown => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Outcome::Refused { .. } => {}
                    }
                    ops.push(op);
                }
                ops
            })
        })
        .collect();

    let stop_subscriber = Arc::new(AtomicBool::new(false));
    let subscriber_log = Arc::new(Mutex::new(SubscriberLog::default()));
    let subscriber = tokio::spawn(live_subscriber(
        server.channel(),
        stop_subscriber.clone(),
        subscriber_log.clone(),
    ));

    // Kill at a random moment once the restarted server is doing work.
    let mut rng = rand::rng();
    for _ in 0..KILLS {
        progress(&acknowledged, 3).await;
        let pause = rng.random_range(50..1000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server.restart().await;
    }
    progress(&acknowledged, 3).await;

    // The subscriber stops where it is; the writers go on a little, so
    // that events exist after its checkpoint.
    stop_subscriber.store(true, Ordering::Release);
    subscriber.await.expect("subscriber task");
    progress(&acknowledged, 10).await;
    stop_writers.store(true, Ordering::Release);
    let mut ops = Vec::new();
    for worker in workers {
        ops.extend(worker.await.expect("worker task"));
    }

    // Every committed row gets its position from the last server's sequencer.
    let db = sea_orm::Database::connect(database_url.as_str())
        .await
        .expect("connect to the test database");
    let deadline = Instant::now() + PATIENCE;
    let rows = loop {
        let unsequenced = event::Entity::find()
            .filter(event::Column::Position.is_null())
            .count(&db)
            .await
            .expect("count unsequenced events");
        if unsequenced == 0 {
            break event::Entity::find()
                .count(&db)
                .await
                .expect("count events");
        }
        assert!(
            Instant::now() < deadline,
            "{unsequenced} events left unsequenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Dense positions, each once, every event reachable by a replay.
    let mut events_client = EventServiceClient::new(channel.clone());
    let (events, head) = replay_all(&mut events_client, PATIENCE).await;
    let n = u64::try_from(events.len()).expect("count");
    assert_eq!(rows, n, "rows vs replayed");
    assert_eq!(head, n, "head position vs events");
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert!(
        positions.iter().copied().eq(1..=n),
        "positions are not dense 1..={n}: {positions:?}"
    );
    let event_ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(event_ids.len(), events.len(), "an event_id appears twice");

    let counts = check_ops(&ops, &events);

    // The live subscriber: each stream contiguous from its checkpoint, and
    // together every position up to the last it saw.
    let log = subscriber_log.lock().expect("log").clone();
    let mut seen = BTreeSet::new();
    for (acked, attempted, session) in &log.sessions {
        if let Some(&first) = session.first() {
            assert!(
                (acked + 1..=attempted + 1).contains(&first),
                "a stream resumed at {first} with its checkpoint in {acked}..={attempted}"
            );
        }
        assert!(
            session.windows(2).all(|w| w[1] == w[0] + 1),
            "a stream skipped or repeated a position: {session:?}"
        );
        seen.extend(session.iter().copied());
    }
    let live_max = seen.last().copied().unwrap_or(0);
    assert!(live_max > 0, "the live subscriber received nothing");
    assert!(
        seen.iter().copied().eq(1..=live_max),
        "the live subscriber missed positions below {live_max}"
    );

    // Resuming from the committed checkpoint: every later event once, in order.
    let checkpoint = consumer::Entity::find_by_id(CONSUMER.to_owned())
        .one(&db)
        .await
        .expect("read checkpoint")
        .expect("the subscriber committed a checkpoint");
    let checkpoint = u64::try_from(checkpoint.position).expect("position");
    assert!(
        (log.acked..=log.attempted).contains(&checkpoint),
        "checkpoint {checkpoint} outside {}..={}",
        log.acked,
        log.attempted
    );
    assert!(
        checkpoint < n,
        "no event after the checkpoint to resume with"
    );
    let mut resumed = events_client
        .subscribe(pb::SubscribeRequest {
            consumer: CONSUMER.into(),
            ..Default::default()
        })
        .await
        .expect("resume from the checkpoint")
        .into_inner();
    let (after, head) = until_caught_up(&mut resumed, PATIENCE).await;
    assert_eq!(head, n);
    let resumed_ids: Vec<&str> = after.iter().map(|e| e.event_id.as_str()).collect();
    let expected_ids: Vec<&str> = events
        .iter()
        .skip(usize::try_from(checkpoint).expect("checkpoint"))
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(
        resumed_ids,
        expected_ids,
        "resuming after {checkpoint} must give positions {}..={n} once each, in order",
        checkpoint + 1
    );
    drop(db);

    eprintln!(
        "crash ({}): {KILLS} SIGKILLs; removal calls: {} acknowledged, {} refused, {} cut by a \
         kill ({} of them committed), {} not sent; {n} events = positions 1..={n}, no \
         duplicate; live subscriber: {} streams, {} deliveries, up to {live_max}; resumed \
         from checkpoint {checkpoint}: {} events; {:.1?}",
        backend_name(&backend),
        counts.acknowledged,
        counts.refused,
        counts.unknown,
        counts.unknown_committed,
        counts.not_attempted,
        log.sessions.len(),
        log.sessions.iter().map(|s| s.2.len()).sum::<usize>(),
        after.len(),
        started.elapsed(),
    );
    assert!(counts.acknowledged > 0 && counts.refused > 0);
}

#[derive(Debug, Default)]
struct Counts {
    acknowledged: usize,
    refused: usize,
    unknown: usize,
    unknown_committed: usize,
    not_attempted: usize,
}

/// Checks each operation's events (found by its account's uid) against
/// what the client knows of its outcome.
fn check_ops(ops: &[Op], events: &[pb::ConnectionRemoved]) -> Counts {
    let mut by_uid: HashMap<i64, Vec<&pb::ConnectionRemoved>> = HashMap::new();
    for event in events {
        let uid = event.uid.parse().expect("numeric uid");
        by_uid.entry(uid).or_default().push(event);
    }
    let mut counts = Counts::default();
    for op in ops {
        let found = by_uid.remove(&op.uid).unwrap_or_default();
        let provider_uids: BTreeSet<String> =
            found.iter().map(|e| e.provider_uid.clone()).collect();
        let call_ids: HashSet<&str> = found.iter().map(|e| e.call_id.as_str()).collect();
        match &op.outcome {
            Outcome::NotAttempted => {
                counts.not_attempted += 1;
                assert!(found.is_empty(), "{op:?} sent no removal: {found:?}");
            }
            Outcome::Refused { call_id } => {
                counts.refused += 1;
                assert!(found.is_empty(), "refused call {call_id} has {found:?}");
            }
            Outcome::Acknowledged { call_id, removed } => {
                counts.acknowledged += 1;
                let answered: HashSet<&str> = removed.iter().map(|(id, _)| id.as_str()).collect();
                let stored: HashSet<&str> = found.iter().map(|e| e.event_id.as_str()).collect();
                assert_eq!(stored, answered, "events of acknowledged {op:?}");
                assert_eq!(found.len(), removed.len(), "{op:?}: {found:?}");
                assert_eq!(call_ids, HashSet::from([call_id.as_str()]), "{op:?}");
                assert_eq!(provider_uids, op.provider_uids, "{op:?}");
            }
            Outcome::Unknown => {
                counts.unknown += 1;
                // A refusal cannot commit, cut or not.
                assert!(
                    op.kind != Kind::Refused || found.is_empty(),
                    "{op:?}: {found:?}"
                );
                if !found.is_empty() {
                    counts.unknown_committed += 1;
                    assert_eq!(call_ids.len(), 1, "{op:?} has events of calls {call_ids:?}");
                    assert_eq!(found.len(), op.provider_uids.len(), "partial: {found:?}");
                    assert_eq!(provider_uids, op.provider_uids, "partial: {found:?}");
                }
            }
        }
    }
    assert!(by_uid.is_empty(), "events of no operation: {by_uid:?}");
    counts
}

fn backend_name(backend: &Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres(_) => "PostgreSQL",
    }
}

/// Waits (bounded) until `more` further removals are acknowledged.
async fn progress(acknowledged: &AtomicUsize, more: usize) {
    let target = acknowledged.load(Ordering::Acquire) + more;
    let deadline = Instant::now() + PATIENCE;
    while acknowledged.load(Ordering::Acquire) < target {
        assert!(
            Instant::now() < deadline,
            "no progress: {more} removals not acknowledged within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A status that did not come from the service's answer (no call id), or
/// UNAVAILABLE: the call may or may not have been carried out.
fn outcome_unknown(status: &Status) -> bool {
    status.code() == Code::Unavailable || status.metadata().get("x-call-id").is_none()
}

/// Sets up a fresh account `uid` with its identities, then removes them.
async fn run_op(channel: &Channel, uid: i64, kind: Kind) -> Op {
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut connections = ConnectionServiceClient::new(channel.clone());
    let (links, has_password): (Vec<(&str, &str)>, bool) = match kind {
        Kind::Remove => (vec![("facebook", ""), ("facebook", "")], true),
        Kind::Unlink => (vec![("janrain", "google"), ("janrain", "yahoo")], false),
        Kind::Refused => (vec![("facebook", "")], false),
    };
    let provider_uids: Vec<String> = (0..links.len()).map(|i| format!("p{uid}-{i}")).collect();
    let mut op = Op {
        uid,
        kind,
        provider_uids: provider_uids.iter().cloned().collect(),
        outcome: Outcome::NotAttempted,
    };
    let setup = admin
        .upsert_account(pb::UpsertAccountRequest {
            api_key: SITE.into(),
            uid: uid.to_string(),
            login_ids: vec![pb::LoginId {
                login_id: format!("{uid}@example.com"),
                has_password,
            }],
        })
        .await;
    if let Err(status) = setup {
        assert!(outcome_unknown(&status), "set-up refused: {status:?}");
        return op;
    }
    for ((provider, sub), provider_uid) in links.iter().zip(&provider_uids) {
        let linked = connections
            .link_connection(pb::LinkConnectionRequest {
                api_key: SITE.into(),
                uid: uid.to_string(),
                provider: (*provider).into(),
                sub_provider: (*sub).into(),
                provider_uid: provider_uid.clone(),
                login_id: None,
                session: Some(pb::ProviderSession {
                    access_token: format!("token-{provider_uid}"),
                    ..Default::default()
                }),
            })
            .await;
        if let Err(status) = linked {
            assert!(outcome_unknown(&status), "link refused: {status:?}");
            return op;
        }
    }
    let answer = match kind {
        Kind::Remove | Kind::Refused => connections
            .remove_connection(pb::RemoveConnectionRequest {
                api_key: SITE.into(),
                uid: uid.to_string(),
                provider: Some("facebook".into()),
                last_identity_handling: if kind == Kind::Refused {
                    pb::LastIdentityHandling::Fail.into()
                } else {
                    pb::LastIdentityHandling::Soft.into()
                },
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.call_id, r.removed)
            }),
        Kind::Unlink => connections
            .unlink_account(pb::UnlinkAccountRequest {
                vhost: VHOST,
                uid,
                redirect_url: "/done".into(),
                external_id_provider_name: Some("janrain".into()),
                sub_provider_name: "all".into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.call_id, r.removed)
            }),
    };
    op.outcome = match answer {
        Ok((call_id, removed)) => {
            assert_ne!(kind, Kind::Refused, "the last way in was removed with FAIL");
            Outcome::Acknowledged {
                call_id,
                removed: removed
                    .into_iter()
                    .map(|r| (r.event_id, r.provider_uid))
                    .collect(),
            }
        }
        Err(status) if outcome_unknown(&status) => Outcome::Unknown,
        Err(status) => {
            assert_eq!(kind, Kind::Refused, "{status:?}");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(reason(&status), "LAST_LOGIN_IDENTITY");
            let call_id = status
                .metadata()
                .get("x-call-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Outcome::Refused { call_id }
        }
    };
    op
}

/// A consumer that follows the stream live, checkpointing every few events
/// and whenever it is caught up, and reconnects after every kill.
async fn live_subscriber(channel: Channel, stop: Arc<AtomicBool>, log: Arc<Mutex<SubscriberLog>>) {
    let mut events = EventServiceClient::new(channel);
    while !stop.load(Ordering::Acquire) {
        let checkpoint = {
            let log = log.lock().expect("log");
            (log.acked, log.attempted)
        };
        let stream = events
            .subscribe(pb::SubscribeRequest {
                consumer: CONSUMER.into(),
                heartbeat_seconds: 1,
                ..Default::default()
            })
            .await;
        let Ok(stream) = stream else {
            // The server is down: try again shortly (pacing, not a wait).
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let session = {
            let mut log = log.lock().expect("log");
            log.sessions.push((checkpoint.0, checkpoint.1, Vec::new()));
            log.sessions.len() - 1
        };
        let mut last = None;
        let mut since_commit = 0;
        while !stop.load(Ordering::Acquire) {
            let message =
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(message))) => message.message,
                    Ok(_) => break,
                };
            let commit = match message {
                Some(Message::Event(event)) => {
                    log.lock().expect("log").sessions[session]
                        .2
                        .push(event.position);
                    last = Some(event.position);
                    since_commit += 1;
                    since_commit >= 5
                }
                Some(Message::CaughtUp(_) | Message::Heartbeat(_)) => since_commit > 0,
                None => false,
            };
            if let (true, Some(position)) = (commit, last) {
                {
                    let mut log = log.lock().expect("log");
                    log.attempted = log.attempted.max(position);
                }
                let committed = events
                    .commit_position(pb::CommitPositionRequest {
                        consumer: CONSUMER.into(),
                        position,
                    })
                    .await;
                match committed {
                    Ok(answer) => {
                        let mut log = log.lock().expect("log");
                        log.acked = log.acked.max(answer.into_inner().position);
                        since_commit = 0;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
