//! Event figures: commit-to-subscriber latency under a write load, and replay
//! speed from BEGINNING.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use connections::proto::v1::{
    self as pb, event_service_client::EventServiceClient, subscribe_response::Message,
};
use serde_json::{Map, json};
use tokio::sync::watch;
use tonic::{Streaming, codegen::InterceptedService, transport::Channel};

use crate::{
    Accounts, Bearer, Error, Target, channels,
    load::{self, Workload},
    stats::{self, Latencies, ProcessSample},
};

type Events = EventServiceClient<InterceptedService<Channel, Bearer>>;

pub struct LatencyRun {
    pub read: String,
    pub subscribers: usize,
    pub idle_subscribers: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub duration: Duration,
    pub server_pids: Vec<u32>,
    pub label: String,
}

async fn subscribe(
    client: &mut Events,
    request: pb::SubscribeRequest,
) -> Result<Streaming<pb::SubscribeResponse>, Error> {
    Ok(client.subscribe(request).await?.into_inner())
}

/// Opens a stream from NOW and waits for its first heartbeat or caught-up
/// marker, so that it is live before the writers start.
async fn live_stream(
    client: &mut Events,
    api_key: &str,
) -> Result<Streaming<pb::SubscribeResponse>, Error> {
    let mut stream = subscribe(
        client,
        pb::SubscribeRequest {
            start_from: pb::StartFrom::Now.into(),
            api_keys: vec![api_key.to_owned()],
            heartbeat_seconds: 1,
            ..Default::default()
        },
    )
    .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(pb::SubscribeResponse {
                message: Some(Message::CaughtUp(_) | Message::Heartbeat(_)),
            }))) => return Ok(stream),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Err("stream ended before it was live".into()),
            Ok(Err(status)) => return Err(status.into()),
            Err(_) => return Err("no heartbeat within 10 s".into()),
        }
    }
}

/// Opens `count` live streams (see [`live_stream`]) over `channels` in turn.
async fn live_streams(
    channels: &[Channel],
    count: usize,
    bearer: &Bearer,
    api_key: &str,
) -> Result<Vec<Streaming<pb::SubscribeResponse>>, Error> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut client = EventServiceClient::with_interceptor(
            channels[i % channels.len()].clone(),
            bearer.clone(),
        );
        streams.push(live_stream(&mut client, api_key).await?);
    }
    Ok(streams)
}

/// Reads events until `stop` turns true and every expected call id has
/// arrived (or the grace period ends); returns arrival times by call id.
async fn read_events(
    mut stream: Streaming<pb::SubscribeResponse>,
    mut stop: watch::Receiver<usize>,
) -> Result<HashMap<String, Instant>, Error> {
    let mut arrived = HashMap::new();
    let mut seen = 0usize;
    loop {
        let expected = *stop.borrow();
        if expected != usize::MAX && seen >= expected {
            return Ok(arrived);
        }
        tokio::select! {
            message = stream.message() => match message? {
                Some(pb::SubscribeResponse { message: Some(Message::Event(event)) }) => {
                    arrived.entry(event.call_id).or_insert_with(Instant::now);
                    seen = arrived.len();
                }
                Some(_) => {}
                None => return Err("stream ended".into()),
            },
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(arrived);
                }
            }
        }
    }
}

pub async fn latency(target: &Target, accounts: &Accounts, run: LatencyRun) -> Result<(), Error> {
    // Before the subscribers: they count only the measured part's events.
    load::warm_up(target, accounts, run.concurrency, run.rate).await?;
    // The writer ratio's baseline: the same writers, unpaced, with no
    // subscriber, just before any stream opens and just after the idle
    // ones close. This machine's speed drifts 20-40% within an hour, so a
    // baseline taken minutes earlier (the c=8 headline) would measure the
    // drift as much as the subscribers.
    let baseline = run.rate == 0.0 && run.idle_subscribers > 0;
    let baseline_before = if baseline {
        Some(writers_rate(target, accounts, &run).await?)
    } else {
        None
    };
    let bearer = Bearer::new(&target.token)?;
    // Streams nobody reads: the server must neither buffer without bound
    // nor slow the writers for them.
    // On connections of their own: streams nobody reads fill their
    // connection's HTTP/2 window, which would stall the readers beside
    // them (in the client, not the server).
    let idle_channels = channels(&run.read, target.channels).await?;
    let idle = live_streams(
        &idle_channels,
        run.idle_subscribers,
        &bearer,
        &accounts.api_key,
    )
    .await?;
    // Until their connections' HTTP/2 windows are full (hyper's client
    // takes 5 MiB per connection), streams nobody reads still receive
    // every event, as reading ones do; the writer ratio is about the time
    // after, when they have stopped reading. The filling takes a few
    // hundred events per stream: a run's length of writing covers it.
    let filling = if baseline {
        Some(writers_rate(target, accounts, &run).await?)
    } else {
        None
    };
    // After the filling: the readers count only the measured part's events.
    let read_channels = channels(&run.read, target.channels).await?;
    // usize::MAX: still writing; afterwards the number of acknowledged calls.
    let (expected_tx, expected_rx) = watch::channel(usize::MAX);
    let readers: Vec<_> = live_streams(&read_channels, run.subscribers, &bearer, &accounts.api_key)
        .await?
        .into_iter()
        .map(|stream| tokio::spawn(read_events(stream, expected_rx.clone())))
        .collect();

    let clients = load::clients(target, run.concurrency).await?;
    let before = ProcessSample::take(&run.server_pids);
    let (mut written, elapsed) = load::drive(
        clients,
        accounts,
        Workload::RemoveOne,
        run.duration,
        run.rate,
        true,
    )
    .await?;
    let _ = expected_tx.send(written.acknowledged.len());

    let mut latencies = Latencies::default();
    let mut missing = 0usize;
    for reader in readers {
        let arrived = match tokio::time::timeout(Duration::from_secs(30), reader).await {
            Ok(joined) => joined??,
            Err(_) => return Err("a subscriber did not receive every event within 30 s".into()),
        };
        for (call_id, acknowledged) in &written.acknowledged {
            match arrived.get(call_id) {
                // An event can overtake its call's answer: count it as 0.
                Some(at) => latencies.push(at.saturating_duration_since(*acknowledged)),
                None => missing += 1,
            }
        }
    }
    drop(idle);
    let removes_per_s = written.acknowledged.len() as f64 / elapsed;

    let mut out = Map::new();
    before.since(&run.server_pids, &mut out);
    if let (Some(before_rate), Some(filling)) = (baseline_before, filling) {
        // Closing the idle streams' connections ends their server tasks:
        // that happens in an unmeasured second, not in the baseline.
        drop(idle_channels);
        load::warm_up(target, accounts, run.concurrency, 0.0).await?;
        let after_rate = writers_rate(target, accounts, &run).await?;
        let alone = (before_rate + after_rate) / 2.0;
        out.insert(
            "alone_removes_per_s".into(),
            json!([stats::round3(before_rate), stats::round3(after_rate)]),
        );
        out.insert(
            "writer_ratio".into(),
            json!(stats::round3(removes_per_s / alone)),
        );
        out.insert(
            "filling_writer_ratio".into(),
            json!(stats::round3(filling / alone)),
        );
    }
    out.insert("subscribers".into(), json!(run.subscribers));
    out.insert("idle_subscribers".into(), json!(run.idle_subscribers));
    out.insert("removes".into(), json!(written.acknowledged.len()));
    out.insert("removes_per_s".into(), json!(stats::round3(removes_per_s)));
    out.insert("deliveries".into(), json!(latencies.len()));
    out.insert("missing".into(), json!(missing));
    latencies.summary("event", &mut out);
    written.removes.summary("remove", &mut out);
    out.insert("errors".into(), written.errors.to_json());
    out.insert("error_count".into(), json!(written.errors.total()));
    stats::emit("events", &run.label, out);
    Ok(())
}

/// Removals per second of the run's writers, unpaced, for its duration.
async fn writers_rate(
    target: &Target,
    accounts: &Accounts,
    run: &LatencyRun,
) -> Result<f64, Error> {
    let clients = load::clients(target, run.concurrency).await?;
    let (written, elapsed) = load::drive(
        clients,
        accounts,
        Workload::RemoveOne,
        run.duration,
        0.0,
        false,
    )
    .await?;
    match written.errors.total() {
        0 => Ok(written.removes.len() as f64 / elapsed),
        n => Err(format!("{n} errors: {}", written.errors.to_json()).into()),
    }
}

pub async fn replay(target: &Target, events: u64, pids: &[u32], label: &str) -> Result<(), Error> {
    let bearer = Bearer::new(&target.token)?;
    let channel = channels(&target.grpc, 1).await?.remove(0);
    let mut client = EventServiceClient::with_interceptor(channel, bearer);
    let before = ProcessSample::take(pids);
    let started = Instant::now();
    let mut stream = subscribe(
        &mut client,
        pb::SubscribeRequest {
            start_from: pb::StartFrom::Beginning.into(),
            ..Default::default()
        },
    )
    .await?;
    let mut received = 0u64;
    let mut last_position = 0u64;
    let mut first_at = None;
    while received < events {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(pb::SubscribeResponse {
                message: Some(Message::Event(event)),
            }))) => {
                first_at.get_or_insert_with(Instant::now);
                if event.position <= last_position {
                    return Err(format!(
                        "position {} after {last_position}: out of order",
                        event.position
                    )
                    .into());
                }
                last_position = event.position;
                received += 1;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("stream ended".into()),
            Ok(Err(status)) => return Err(status.into()),
            Err(_) => return Err(format!("stalled after {received} events").into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = Map::new();
    before.since(pids, &mut out);
    out.insert("events".into(), json!(received));
    out.insert("seconds".into(), json!(stats::round3(elapsed)));
    out.insert(
        "events_per_s".into(),
        json!(stats::round3(received as f64 / elapsed)),
    );
    out.insert(
        "first_event_ms".into(),
        json!(stats::round3(
            first_at.map_or(0.0, |t| (t - started).as_secs_f64() * 1000.0)
        )),
    );
    stats::emit("replay", label, out);
    Ok(())
}
