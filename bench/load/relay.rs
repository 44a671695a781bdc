//! Relay figures (when bench/run.sh is given a NATS URL): commit-to-JetStream
//! latency under a write load, and the relay's sustained rate catching up
//! with a backlog.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use connections::proto::v1 as pb;
use futures::StreamExt;
use prost::Message;
use serde_json::{Map, json};

use crate::{
    Accounts, Error, Target,
    load::{self, Workload},
    stats::{self, Latencies, ProcessSample},
};

/// Writers of a relay latency run (as the events figures use).
const WRITERS: usize = 8;

/// What a relay latency run does.
pub struct LatencyRun {
    pub nats: String,
    pub subject_prefix: String,
    pub rate: f64,
    pub duration: Duration,
    pub server_pids: Vec<u32>,
    pub label: String,
    /// The stream to delete afterwards (the bench's own).
    pub delete_stream: Option<String>,
}

/// Writers at `rate` removals/s for `duration`; each acknowledged call is
/// timed to its message reaching a plain NATS subscription of the stream's
/// subjects (the server delivers it there when the stream stores it).
pub async fn latency(target: &Target, accounts: &Accounts, run: LatencyRun) -> Result<(), Error> {
    load::warm_up(target, accounts, WRITERS, run.rate).await?;
    let client = async_nats::connect(&run.nats).await?;
    let mut messages = client
        .subscribe(format!("{}.>", run.subject_prefix))
        .await?;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let recorder = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                // Protobuf by default (`--nats-format protobuf`).
                if let Ok(event) = pb::ConnectionRemoved::decode(message.payload) {
                    let now = Instant::now();
                    arrived
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(event.call_id)
                        .or_insert(now);
                }
            }
        })
    };
    let clients = load::clients(target, WRITERS).await?;
    let before = ProcessSample::take(&run.server_pids);
    let (written, elapsed) = load::drive(
        clients,
        accounts,
        Workload::RemoveOne,
        run.duration,
        run.rate,
        true,
    )
    .await?;
    let all_arrived = || {
        let arrived = arrived.lock().unwrap_or_else(|e| e.into_inner());
        written
            .acknowledged
            .iter()
            .all(|(id, _)| arrived.contains_key(id))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_arrived() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder.abort();
    if let Some(stream) = &run.delete_stream {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(stream)
            .await;
    }
    let arrived = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut latencies = Latencies::default();
    let mut missing = 0usize;
    for (call_id, acknowledged) in &written.acknowledged {
        match arrived.get(call_id) {
            Some(at) => latencies.push(at.saturating_duration_since(*acknowledged)),
            None => missing += 1,
        }
    }
    let mut out = Map::new();
    before.since(&run.server_pids, &mut out);
    out.insert("removes".into(), json!(written.acknowledged.len()));
    out.insert(
        "removes_per_s".into(),
        json!(stats::round3(written.acknowledged.len() as f64 / elapsed)),
    );
    out.insert("deliveries".into(), json!(latencies.len()));
    out.insert("missing".into(), json!(missing));
    latencies.summary("event", &mut out);
    out.insert("errors".into(), written.errors.to_json());
    out.insert("error_count".into(), json!(written.errors.total()));
    stats::emit("relay-latency", &run.label, out);
    Ok(())
}

/// Polls the stream until its last sequence reaches `head` (the relay
/// publishes position p as sequence p) and reports events/s since the call.
pub async fn catch_up(
    nats: &str,
    stream: &str,
    head: u64,
    pids: &[u32],
    label: &str,
) -> Result<(), Error> {
    let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
    let before = ProcessSample::take(pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    loop {
        let last = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
            Err(_) => 0,
        };
        if last >= head {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("relay reached {last} of {head} in 600 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = Map::new();
    before.since(pids, &mut out);
    out.insert("events".into(), json!(head));
    out.insert("seconds".into(), json!(stats::round3(elapsed)));
    out.insert(
        "events_per_s".into(),
        json!(stats::round3(head as f64 / elapsed)),
    );
    stats::emit("relay-catch-up", label, out);
    Ok(())
}
