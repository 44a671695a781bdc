//! The real `connections` binary as a child process, for the proofs that
//! need a process of its own: killed with SIGKILL and restarted on the same
//! database and port, run as two replicas, or measured (its RSS).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use connections::proto::v1::{self as pb, subscribe_response::Message};
use tonic::{
    Streaming,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Longest wait for a (re)started server to answer SERVING: it migrates
/// first, on a machine that may be busy.
const START_PATIENCE: Duration = Duration::from_secs(60);

pub const BINARY: &str = env!("CARGO_BIN_EXE_connections");

/// A running `connections serve`, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub port: u16,
    database_url: String,
    extra_args: Vec<String>,
    /// RUST_LOG of the child.
    log_level: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// A free loopback port (the listener is closed again before the server
/// binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl ServerProcess {
    /// Starts the server on a free port over `database_url` with
    /// `extra_args` (after `serve --listen --database-url`), and waits until
    /// it answers SERVING.
    pub async fn start(database_url: &str, extra_args: &[&str]) -> Self {
        Self::start_logging(database_url, extra_args, "warn").await
    }

    /// [`ServerProcess::start`] logging at `log_level` (RUST_LOG).
    pub async fn start_logging(database_url: &str, extra_args: &[&str], log_level: &str) -> Self {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log = log_dir.path().join("server.log");
        let port = free_port();
        let mut server = Self {
            child: spawn(port, database_url, extra_args, log_level, &log),
            port,
            database_url: database_url.to_owned(),
            extra_args: extra_args.iter().map(|&a| a.to_owned()).collect(),
            log_level: log_level.to_owned(),
            log,
            _log_dir: log_dir,
        };
        server.wait_ready().await;
        server
    }

    fn spawn_again(&mut self) {
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        self.child = spawn(
            self.port,
            &self.database_url,
            &args,
            &self.log_level,
            &self.log,
        );
    }

    /// SIGKILL: no shutdown, no flush, no goodbye. Reaps the process.
    pub fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same database and port, and waits
    /// until it answers SERVING.
    pub async fn restart(&mut self) {
        self.spawn_again();
        self.wait_ready().await;
    }

    /// Sends `signal` (e.g. `TERM`) and waits (bounded) for the process to
    /// exit; returns its status and everything it logged.
    pub async fn signal_and_wait(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, self.log());
            }
            assert!(
                started.elapsed() < START_PATIENCE,
                "the server did not stop after SIG{signal}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A channel that connects when first used and reconnects after a
    /// restart.
    pub fn channel(&self) -> Channel {
        self.endpoint().connect_lazy()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
    }

    /// (peak, current) resident set size in KiB, from `/proc/<pid>/status`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Polls health (bounded) until the server answers SERVING; panics with
    /// the end of its log if it exits or never does.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("server exited with {status}:\n{}", self.log_tail());
            }
            if serving(&self.endpoint()).await {
                return;
            }
            assert!(
                started.elapsed() < START_PATIENCE,
                "server not SERVING after {START_PATIENCE:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines the server logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server said.
        if std::thread::panicking() {
            eprintln!(
                "--- end of the log of the server on port {} ---\n{}",
                self.port,
                self.log_tail()
            );
        }
    }
}

fn spawn(
    port: u16,
    database_url: &str,
    extra_args: &[&str],
    log_level: &str,
    log: &PathBuf,
) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("server log");
    // The REST door is off unless the test asks for it (the default port
    // would collide between tests).
    let http_off: &[&str] = if extra_args.contains(&"--http-listen") {
        &[]
    } else {
        &["--http-listen", "off"]
    };
    Command::new(BINARY)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(http_off)
        .args(["--database-url", database_url])
        .args(extra_args)
        // Warnings and errors only, unless a test reads the log: the proofs
        // put thousands of calls through, and a busy CI machine should
        // spend its time on them.
        .env("RUST_LOG", log_level)
        .env_remove("CONNECTIONS_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start the connections binary")
}

async fn serving(endpoint: &Endpoint) -> bool {
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}

/// Runs `connections <args>` to completion and returns its stdout.
pub fn run_binary(args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the connections binary");
    assert!(
        output.status.success(),
        "connections {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Reads events from `stream` until `CaughtUp`, skipping heartbeats, within
/// `patience`; returns the events and the head position.
pub async fn until_caught_up(
    stream: &mut Streaming<pb::SubscribeResponse>,
    patience: Duration,
) -> (Vec<pb::ConnectionRemoved>, u64) {
    let mut events = Vec::new();
    tokio::time::timeout(patience, async {
        loop {
            let message = stream
                .message()
                .await
                .expect("stream failed")
                .expect("stream ended")
                .message
                .expect("empty message");
            match message {
                Message::Event(event) => events.push(event),
                Message::CaughtUp(c) => return c.head_position,
                Message::Heartbeat(_) => {}
            }
        }
    })
    .await
    .map(|head| (events, head))
    .expect("no CaughtUp in time")
}

/// Every retained event, by a stream from the beginning read until
/// `CaughtUp` (within `patience`); returns them and the head position.
pub async fn replay_all(
    client: &mut pb::event_service_client::EventServiceClient<Channel>,
    patience: Duration,
) -> (Vec<pb::ConnectionRemoved>, u64) {
    let mut replay = client
        .subscribe(pb::SubscribeRequest {
            start_from: pb::StartFrom::Beginning.into(),
            ..Default::default()
        })
        .await
        .expect("replay from the beginning")
        .into_inner();
    until_caught_up(&mut replay, patience).await
}
