//! Empty calls: the gRPC health check, which reads no database and needs no
//! token, back to back at a concurrency. Their latency is the floor of any
//! call on this server and machine (HTTP/2 both ways, protobuf, the runtime's
//! wake-ups), against which a removal's time beyond the database's is read.

use std::time::{Duration, Instant};

use serde_json::{Map, json};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Error, channels,
    stats::{self, Errors, Latencies, ProcessSample},
};

pub struct Ping {
    pub address: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub server_pids: Vec<u32>,
    pub label: String,
}

pub async fn run(ping: Ping) -> Result<(), Error> {
    let channels = channels(&ping.address, ping.concurrency.min(4)).await?;
    let clients: Vec<_> = (0..ping.concurrency.max(1))
        .map(|n| HealthClient::new(channels[n % channels.len()].clone()))
        .collect();
    // One unmeasured second, as the write workloads have.
    calls(clients.clone(), Instant::now() + Duration::from_secs(1)).await?;
    let before = ProcessSample::take(&ping.server_pids);
    let started = Instant::now();
    let (mut latencies, errors) = calls(clients, started + ping.duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = Map::new();
    let cpu = before.since(&ping.server_pids, &mut out);
    let count = latencies.len();
    out.insert("concurrency".into(), json!(ping.concurrency));
    out.insert("calls".into(), json!(count));
    out.insert(
        "calls_per_s".into(),
        json!(stats::round3(count as f64 / elapsed)),
    );
    if !ping.server_pids.is_empty() && count > 0 {
        out.insert(
            "cpu_s_per_1000_calls".into(),
            json!(stats::round3(cpu * 1000.0 / count as f64)),
        );
    }
    latencies.summary("call", &mut out);
    out.insert("errors".into(), errors.to_json());
    out.insert("error_count".into(), json!(errors.total()));
    stats::emit("ping", &ping.label, out);
    Ok(())
}

/// Each client calls back to back until `deadline`.
async fn calls(
    clients: Vec<HealthClient<tonic::transport::Channel>>,
    deadline: Instant,
) -> Result<(Latencies, Errors), Error> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let mut errors = Errors::default();
                while Instant::now() < deadline {
                    let call = Instant::now();
                    match client.check(HealthCheckRequest::default()).await {
                        Ok(_) => latencies.push(call.elapsed()),
                        Err(status) => errors.add(&status),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    let mut errors = Errors::default();
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors.merge(e);
    }
    Ok((latencies, errors))
}
