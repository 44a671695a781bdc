//! Seeding and the write workloads. Every removal does real work: the worker
//! re-links what it removed before it touches the account again, and each
//! worker has its own slice of the accounts, so no row is hot.

use std::time::{Duration, Instant};

use connections::proto::v1::{
    self as pb, admin_service_client::AdminServiceClient,
    connection_service_client::ConnectionServiceClient,
};
use futures::{StreamExt, stream};
use serde_json::{Map, json};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{
    Accounts, Bearer, EXTERNAL_ID_PROVIDER, Error, FIRST_UID, PROVIDERS, Target, channels,
    stats::{self, Errors, Latencies, ProcessSample},
};

pub type Client = ConnectionServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Workload {
    /// RemoveConnection of one provider (the headline).
    RemoveOne,
    /// The headline with a fresh `request_id` per call, as a client that
    /// retries safely sends it (the service stores each first answer).
    RemoveOneRequestId,
    /// RemoveConnection of every provider of the account.
    RemoveAll,
    /// UnlinkAccount of one external-id provider.
    Unlink,
    /// The three above in turn.
    Mixed,
}

pub struct Run {
    pub workload: Workload,
    pub concurrency: usize,
    pub duration: Duration,
    pub rate: f64,
    pub server_pids: Vec<u32>,
    pub label: String,
}

pub async fn clients(target: &Target, count: usize) -> Result<Vec<Client>, Error> {
    let bearer = Bearer::new(&target.token)?;
    let channels = channels(&target.grpc, target.channels).await?;
    Ok((0..count)
        .map(|i| {
            ConnectionServiceClient::with_interceptor(
                channels[i % channels.len()].clone(),
                bearer.clone(),
            )
        })
        .collect())
}

pub async fn seed(target: &Target, accounts: &Accounts) -> Result<(), Error> {
    let bearer = Bearer::new(&target.token)?;
    let channels = channels(&target.grpc, target.channels).await?;
    let mut admin = AdminServiceClient::with_interceptor(channels[0].clone(), bearer.clone());
    admin
        .upsert_site(pb::UpsertSiteRequest {
            api_key: accounts.api_key.clone(),
            vhost: accounts.vhost,
            name: "bench".into(),
            unlink_action_enabled: true,
            allowed_redirect_origins: vec![],
            allowed_browser_origins: vec![],
        })
        .await?;
    let started = Instant::now();
    let results: Vec<Result<(), Error>> = stream::iter(0..accounts.accounts)
        .map(|n| {
            let channel = channels[n as usize % channels.len()].clone();
            let bearer = bearer.clone();
            let api_key = accounts.api_key.clone();
            async move {
                let uid = (FIRST_UID + n).to_string();
                AdminServiceClient::with_interceptor(channel.clone(), bearer.clone())
                    .upsert_account(pb::UpsertAccountRequest {
                        api_key: api_key.clone(),
                        uid: uid.clone(),
                        login_ids: vec![pb::LoginId {
                            login_id: format!("{uid}@bench.example"),
                            has_password: true,
                        }],
                    })
                    .await?;
                let mut client = ConnectionServiceClient::with_interceptor(channel, bearer);
                for provider in PROVIDERS.into_iter().chain([EXTERNAL_ID_PROVIDER]) {
                    link(&mut client, &api_key, &uid, provider).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    eprintln!(
        "seeded {} accounts in {:.1} s",
        accounts.accounts,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn link(
    client: &mut Client,
    api_key: &str,
    uid: &str,
    provider: &str,
) -> Result<(), tonic::Status> {
    client
        .link_connection(pb::LinkConnectionRequest {
            api_key: api_key.into(),
            uid: uid.into(),
            provider: provider.into(),
            sub_provider: String::new(),
            provider_uid: format!("{provider}-{uid}"),
            login_id: None,
            session: Some(pb::ProviderSession {
                access_token: "bench-access".into(),
                refresh_token: String::new(),
                expires_at: None,
            }),
        })
        .await
        .map(|_| ())
}

/// One removal of the workload, and the providers it removed.
async fn remove(
    client: &mut Client,
    accounts: &Accounts,
    workload: Workload,
    n: u64,
    turn: u64,
) -> Result<(String, Vec<&'static str>), tonic::Status> {
    let uid = FIRST_UID + n;
    let kind = match workload {
        Workload::Mixed => {
            [Workload::RemoveOne, Workload::RemoveAll, Workload::Unlink][(turn % 3) as usize]
        }
        other => other,
    };
    let request_id = match kind {
        Workload::RemoveOneRequestId => uuid::Uuid::new_v4().simple().to_string(),
        _ => String::new(),
    };
    let remove_request = |provider: Option<&str>| pb::RemoveConnectionRequest {
        api_key: accounts.api_key.clone(),
        uid: uid.to_string(),
        provider: provider.map(str::to_owned),
        cid: None,
        remove_login_id: false,
        last_identity_handling: pb::LastIdentityHandling::Fail.into(),
        context: None,
        request_id: request_id.clone(),
        dry_run: false,
        force_providers_logout: None,
    };
    match kind {
        Workload::RemoveOne | Workload::RemoveOneRequestId | Workload::Mixed => {
            let answer = client
                .remove_connection(remove_request(Some(PROVIDERS[0])))
                .await?;
            Ok((answer.into_inner().call_id, vec![PROVIDERS[0]]))
        }
        Workload::RemoveAll => {
            let answer = client.remove_connection(remove_request(None)).await?;
            Ok((answer.into_inner().call_id, PROVIDERS.to_vec()))
        }
        Workload::Unlink => {
            let answer = client
                .unlink_account(pb::UnlinkAccountRequest {
                    vhost: accounts.vhost,
                    uid: uid as i64,
                    redirect_url: "/profile".into(),
                    external_id_provider_name: Some(EXTERNAL_ID_PROVIDER.into()),
                    sub_provider_name: "none".into(),
                    request_id: String::new(),
                    dry_run: false,
                })
                .await?;
            Ok((answer.into_inner().call_id, vec![EXTERNAL_ID_PROVIDER]))
        }
    }
}

/// What one worker measured.
#[derive(Default)]
pub struct WorkerFigures {
    pub removes: Latencies,
    pub links: Latencies,
    pub errors: Errors,
    /// When each acknowledged removal's answer arrived, by call id.
    pub acknowledged: Vec<(String, Instant)>,
}

/// What one worker does: its slice of the accounts, until `deadline`, at
/// `interval` between removals (zero: back to back).
#[derive(Clone)]
pub struct WorkerPlan {
    pub accounts: Accounts,
    pub workload: Workload,
    pub worker: usize,
    pub workers: usize,
    pub deadline: Instant,
    pub interval: Duration,
    /// Keep each acknowledged call id and when its answer arrived.
    pub keep_call_ids: bool,
}

/// Removes and re-links on the worker's own accounts.
pub async fn worker(mut client: Client, plan: WorkerPlan) -> WorkerFigures {
    let WorkerPlan {
        accounts,
        workload,
        worker,
        workers,
        deadline,
        interval,
        keep_call_ids,
    } = plan;
    let mut figures = WorkerFigures::default();
    let mine: Vec<u64> = (0..accounts.accounts)
        .filter(|n| (*n as usize) % workers == worker)
        .collect();
    if mine.is_empty() {
        return figures;
    }
    // Workers start a fraction of the interval apart, so that a paced run
    // is a steady stream of calls, not bursts of all workers at once.
    let mut next = Instant::now() + interval.mul_f64(worker as f64 / workers as f64);
    let mut turn = 0u64;
    while Instant::now() < deadline {
        if !interval.is_zero() {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
        }
        let n = mine[(turn as usize) % mine.len()];
        let call = Instant::now();
        let (call_id, removed) = match remove(&mut client, &accounts, workload, n, turn).await {
            Ok(removed) => removed,
            Err(status) => {
                figures.errors.add(&status);
                turn += 1;
                continue;
            }
        };
        let answered = Instant::now();
        figures.removes.push(answered - call);
        if keep_call_ids {
            figures.acknowledged.push((call_id, answered));
        }
        let uid = (FIRST_UID + n).to_string();
        for provider in removed {
            let call = Instant::now();
            match link(&mut client, &accounts.api_key, &uid, provider).await {
                Ok(()) => figures.links.push(call.elapsed()),
                Err(status) => figures.errors.add(&status),
            }
        }
        turn += 1;
    }
    figures
}

/// How long a run writes, unmeasured, before it starts timing.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// Writes at `rate` for [`WARM_UP`] with `concurrency` workers and discards
/// the figures. A freshly started replica grows its database pool under the
/// first load (each new PostgreSQL connection: TLS, authentication and an
/// empty statement cache), which is start-up, not a rate or a latency. Any error
/// fails the run, as it would in the measured part.
pub async fn warm_up(
    target: &Target,
    accounts: &Accounts,
    concurrency: usize,
    rate: f64,
) -> Result<(), Error> {
    let clients = clients(target, concurrency).await?;
    let (figures, _) = drive(clients, accounts, Workload::RemoveOne, WARM_UP, rate, false).await?;
    match figures.errors.total() {
        0 => Ok(()),
        n => Err(format!("{n} errors while warming up: {}", figures.errors.to_json()).into()),
    }
}

/// Runs one worker per client for `duration`, all together at `rate`
/// removals per second (0: as fast as they can), and sums their figures;
/// with the seconds they took.
pub async fn drive(
    clients: Vec<Client>,
    accounts: &Accounts,
    workload: Workload,
    duration: Duration,
    rate: f64,
    keep_call_ids: bool,
) -> Result<(WorkerFigures, f64), Error> {
    let started = Instant::now();
    let deadline = started + duration;
    let workers = clients.len();
    let interval = if rate > 0.0 {
        Duration::from_secs_f64(workers as f64 / rate)
    } else {
        Duration::ZERO
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            tokio::spawn(worker(
                client,
                WorkerPlan {
                    accounts: accounts.clone(),
                    workload,
                    worker: w,
                    workers,
                    deadline,
                    interval,
                    keep_call_ids,
                },
            ))
        })
        .collect();
    let mut total = WorkerFigures::default();
    for task in tasks {
        let figures = task.await?;
        total.removes.extend(figures.removes);
        total.links.extend(figures.links);
        total.errors.merge(figures.errors);
        total.acknowledged.extend(figures.acknowledged);
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

pub async fn run(target: &Target, accounts: &Accounts, run: Run) -> Result<(), Error> {
    // bench/run.sh restarts the server after each ceiling: its pools grow
    // here, not in the measured run.
    warm_up(target, accounts, run.concurrency, 0.0).await?;
    let clients = clients(target, run.concurrency).await?;
    let before = ProcessSample::take(&run.server_pids);
    let (mut total, elapsed) = drive(
        clients,
        &accounts.clone(),
        run.workload,
        run.duration,
        run.rate,
        false,
    )
    .await?;
    let mut out = Map::new();
    let cpu = before.since(&run.server_pids, &mut out);
    let removes = total.removes.len();
    out.insert("workload".into(), json!(format!("{:?}", run.workload)));
    out.insert("concurrency".into(), json!(run.concurrency));
    out.insert("seconds".into(), json!(stats::round3(elapsed)));
    out.insert("removes".into(), json!(removes));
    out.insert("links".into(), json!(total.links.len()));
    out.insert(
        "removes_per_s".into(),
        json!(stats::round3(removes as f64 / elapsed)),
    );
    out.insert(
        "links_per_s".into(),
        json!(stats::round3(total.links.len() as f64 / elapsed)),
    );
    if !run.server_pids.is_empty() && removes > 0 {
        out.insert(
            "cpu_s_per_1000_removes".into(),
            json!(stats::round3(cpu * 1000.0 / removes as f64)),
        );
    }
    total.removes.summary("remove", &mut out);
    total.links.summary("link", &mut out);
    out.insert("errors".into(), total.errors.to_json());
    out.insert("error_count".into(), json!(total.errors.total()));
    stats::emit("load", &run.label, out);
    Ok(())
}
