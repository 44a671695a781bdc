//! `connections-bench`: the load generator and the SQLite ceiling program
//! behind `bench/run.sh`. It speaks gRPC to a server started with
//! `connections serve` (authentication on), exactly as a client would, and
//! prints one JSON object per measurement for the script to tabulate.

mod events;
mod load;
mod ping;
mod reference;
mod relay;
mod stats;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

#[derive(Debug, Parser)]
#[command(name = "connections-bench", about = "Load generator for bench/run.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the server under test.
#[derive(Debug, clap::Args, Clone)]
struct Target {
    /// gRPC address of the server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    grpc: String,
    /// Bearer token with connections.write, connections.read, events.subscribe and admin.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: String,
    /// HTTP/2 channels the calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
}

/// The accounts the workloads run on (created by `seed`).
#[derive(Debug, clap::Args, Clone)]
struct Accounts {
    #[arg(long, default_value = "3_bench")]
    api_key: String,
    #[arg(long, default_value_t = 7001)]
    vhost: i64,
    /// How many accounts; uids are FIRST_UID.. FIRST_UID + accounts - 1.
    #[arg(long, default_value_t = 2000)]
    accounts: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Waits until the server's gRPC health check answers SERVING.
    Ready {
        #[arg(long)]
        grpc: String,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Appends already-sequenced events (copies of the newest real one) for
    /// the replay figure. Run it while no server is running on the database.
    Backlog {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        events: u64,
    },
    /// Creates the site and the accounts, each with a password and one identity per provider.
    Seed {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        accounts: Accounts,
    },
    /// Runs one workload at one concurrency and prints its figures.
    Load {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        accounts: Accounts,
        #[arg(long, value_enum)]
        workload: load::Workload,
        #[arg(long)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Calls per second to aim for across all workers (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// The server's process ids, for CPU seconds and peak RSS.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        /// A label printed with the figures.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Empty calls (the gRPC health check: no database, no token) back to
    /// back: the floor of a call's latency on this server.
    Ping {
        /// gRPC address of the server.
        #[arg(long)]
        grpc: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Commit-to-subscriber latency: live subscribers on `--read` while
    /// writers on `--grpc` run at `--rate` removals per second.
    Events {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        accounts: Accounts,
        /// gRPC address the subscribers use (another replica, or the same).
        #[arg(long)]
        read: String,
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
        /// Subscribers that open their stream and never read it. With
        /// `--rate 0` the run also writes without any stream just before and
        /// just after, and reports the writers' rate with them against that
        /// (`writer_ratio`, once their windows have filled).
        #[arg(long, default_value_t = 0)]
        idle_subscribers: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Reads the whole stream from BEGINNING and reports events per second.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Stop after this many events.
        #[arg(long)]
        events: u64,
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Commit-to-JetStream latency: writers at `--rate` while a NATS
    /// subscription of the stream's subjects times each event's arrival.
    RelayLatency {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        accounts: Accounts,
        #[arg(long)]
        nats: String,
        #[arg(long, default_value = "connections.v1.removed")]
        subject_prefix: String,
        /// Delete this stream afterwards.
        #[arg(long)]
        delete_stream: Option<String>,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The relay's sustained rate: time until the stream holds `--head`.
    RelayCatchUp {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        head: u64,
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Prints the database's last sequenced position.
    Head {
        #[arg(long)]
        database_url: String,
    },
    /// The SQLite ceiling: the minimum statements of a removal (and of the
    /// re-link that restores it), on the same file, with the service's pragmas.
    SqliteReference {
        /// The SQLite file, migrated and seeded by the service (server stopped).
        #[arg(long)]
        db: String,
        #[command(flatten)]
        accounts: Accounts,
        #[arg(long)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value = "")]
        label: String,
        /// Through SQLite's C API on the calling thread instead of sqlx.
        #[arg(long)]
        direct: bool,
    },
}

/// The first uid of the seeded accounts: numeric, as UnlinkAccount needs.
pub const FIRST_UID: u64 = 1_000_000;
/// Providers every seeded account is linked to; the single-provider
/// workloads remove and re-link the first.
pub const PROVIDERS: [&str; 3] = ["facebook", "twitter", "linkedin"];
/// The external-id identity every seeded account also has, for UnlinkAccount.
pub const EXTERNAL_ID_PROVIDER: &str = "gigya";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ready { grpc, seconds } => ready(&grpc, Duration::from_secs_f64(seconds)).await,
        Command::Backlog {
            database_url,
            events,
        } => reference::backlog(&database_url, events).await,
        Command::Seed { target, accounts } => load::seed(&target, &accounts).await,
        Command::Ping {
            grpc,
            concurrency,
            seconds,
            server_pid,
            label,
        } => {
            ping::run(ping::Ping {
                address: grpc,
                concurrency,
                duration: Duration::from_secs_f64(seconds),
                server_pids: server_pid,
                label,
            })
            .await
        }
        Command::Load {
            target,
            accounts,
            workload,
            concurrency,
            seconds,
            rate,
            server_pid,
            label,
        } => {
            load::run(
                &target,
                &accounts,
                load::Run {
                    workload,
                    concurrency,
                    duration: Duration::from_secs_f64(seconds),
                    rate,
                    server_pids: server_pid,
                    label,
                },
            )
            .await
        }
        Command::Events {
            target,
            accounts,
            read,
            subscribers,
            idle_subscribers,
            rate,
            concurrency,
            seconds,
            server_pid,
            label,
        } => {
            events::latency(
                &target,
                &accounts,
                events::LatencyRun {
                    read,
                    subscribers,
                    idle_subscribers,
                    rate,
                    concurrency,
                    duration: Duration::from_secs_f64(seconds),
                    server_pids: server_pid,
                    label,
                },
            )
            .await
        }
        Command::Replay {
            target,
            events,
            server_pid,
            label,
        } => events::replay(&target, events, &server_pid, &label).await,
        Command::RelayLatency {
            target,
            accounts,
            nats,
            subject_prefix,
            delete_stream,
            rate,
            seconds,
            server_pid,
            label,
        } => {
            relay::latency(
                &target,
                &accounts,
                relay::LatencyRun {
                    nats,
                    subject_prefix,
                    rate,
                    duration: Duration::from_secs_f64(seconds),
                    server_pids: server_pid,
                    label,
                    delete_stream,
                },
            )
            .await
        }
        Command::RelayCatchUp {
            nats,
            stream,
            head,
            server_pid,
            label,
        } => relay::catch_up(&nats, &stream, head, &server_pid, &label).await,
        Command::Head { database_url } => reference::head(&database_url).await,
        Command::SqliteReference {
            db,
            accounts,
            concurrency,
            seconds,
            label,
            direct,
        } => {
            let duration = Duration::from_secs_f64(seconds);
            reference::sqlite(&db, &accounts, concurrency, duration, &label, direct).await
        }
    };
    if let Err(err) = result {
        eprintln!("connections-bench: {err}");
        std::process::exit(1);
    }
}

async fn ready(address: &str, within: Duration) -> Result<(), Error> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = std::time::Instant::now() + within;
    loop {
        let answer = async {
            let channel = Endpoint::from_shared(address.to_owned())?.connect().await?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await?
                .into_inner()
                .status;
            Ok::<_, Error>(status == ServingStatus::Serving as i32)
        }
        .await;
        if matches!(answer, Ok(true)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{address} not SERVING within {within:?}: {answer:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Channels to one server, each its own HTTP/2 connection.
async fn channels(address: &str, count: usize) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let channel = Endpoint::from_shared(address.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Adds the bearer token to every call of a client.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    fn new(token: &str) -> Result<Self, Error> {
        Ok(Self(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
