//! Process-wide metrics: plain atomics that are always there (no exporter
//! needed, a few nanoseconds per update), rendered as Prometheus text by the
//! metrics endpoint and, when OTLP is configured, exported through
//! OpenTelemetry instruments that read the same numbers.
//!
//! The events machinery reports through [`events()`]:
//!
//! ```
//! use connections::telemetry::metrics;
//!
//! let events = metrics::events();
//! events.set_unsequenced(3);
//! events.set_head_position(42);
//! events.record_sequencing_lag(0.004);
//! let subscriber = events.subscriber_opened(); // counted until dropped
//! events.events_delivered(2);
//! drop(subscriber);
//! ```

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Meter};
use tonic::Code;

/// Bucket upper bounds (seconds) of the RPC latency histogram.
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket upper bounds (seconds) of the sequencing lag histogram.
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Distinct `rpc` label values kept; further ones share `other`. Paths come
/// from clients, so without a cap a caller could grow the registry forever.
const MAX_RPCS: usize = 64;
const OTHER_RPC: &str = "other";

/// A histogram of atomics with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus the +Inf bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    /// f64 bits of the sum of observations.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // A CAS loop on the bits: there is no atomic f64 add.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    /// Writes `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// Calls and latency of one RPC.
#[derive(Debug)]
struct RpcStats {
    /// The `rpc` label: the RPC, or `other` past the cap.
    label: String,
    /// Calls by gRPC code (index = the code's number, 0..=16).
    calls: [AtomicU64; 17],
    duration: Histogram,
}

impl RpcStats {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::new(RPC_BUCKETS),
        }
    }
}

/// Metrics of the gRPC layer, recorded by the telemetry layer.
#[derive(Debug, Default)]
struct RpcMetrics {
    by_rpc: RwLock<HashMap<String, Arc<RpcStats>>>,
}

impl RpcMetrics {
    fn stats(&self, rpc: &str) -> Arc<RpcStats> {
        // A poisoned lock only means a panic elsewhere mid-update of a map
        // of atomics: the data is still usable.
        if let Some(stats) = self
            .by_rpc
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(rpc)
        {
            return stats.clone();
        }
        let mut map = self
            .by_rpc
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if map.len() >= MAX_RPCS && !map.contains_key(rpc) {
            OTHER_RPC
        } else {
            rpc
        };
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(RpcStats::new(key)))
            .clone()
    }

    fn snapshot(&self) -> Vec<(String, Arc<RpcStats>)> {
        let mut all: Vec<_> = self
            .by_rpc
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(rpc, stats)| (rpc.clone(), stats.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Series of the HTTP door kept; further ones are not counted. Routes come
/// from the door's own table, so this is only a backstop.
const MAX_HTTP_SERIES: usize = 1024;

/// Metrics of the HTTP door, recorded by its per-call layer: requests by
/// route, HTTP status and Gigya errorCode (0 on success), and latency by route.
#[derive(Debug, Default)]
struct HttpMetrics {
    requests: RwLock<HashMap<(String, u16, u32), Arc<AtomicU64>>>,
    durations: RwLock<HashMap<String, Arc<Histogram>>>,
}

impl HttpMetrics {
    fn counter(&self, key: (String, u16, u32)) -> Option<Arc<AtomicU64>> {
        if let Some(counter) = self
            .requests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Some(counter.clone());
        }
        let mut map = self
            .requests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_HTTP_SERIES && !map.contains_key(&key) {
            return None;
        }
        Some(map.entry(key).or_default().clone())
    }

    fn histogram(&self, route: &str) -> Option<Arc<Histogram>> {
        if let Some(histogram) = self
            .durations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(route)
        {
            return Some(histogram.clone());
        }
        let mut map = self
            .durations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_HTTP_SERIES && !map.contains_key(route) {
            return None;
        }
        Some(
            map.entry(route.to_owned())
                .or_insert_with(|| Arc::new(Histogram::new(RPC_BUCKETS)))
                .clone(),
        )
    }
}

/// Metrics of the outbox sequencer and the event fan-out. Get it with
/// [`events()`]; every method is a few atomic operations.
#[derive(Debug)]
pub struct EventMetrics {
    unsequenced: AtomicU64,
    head_position: AtomicU64,
    sequencing_lag: Histogram,
    subscribers: AtomicI64,
    delivered: AtomicU64,
}

impl EventMetrics {
    /// Metrics of their own, outside the global registry (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self::new()
    }

    fn new() -> Self {
        Self {
            unsequenced: AtomicU64::new(0),
            head_position: AtomicU64::new(0),
            sequencing_lag: Histogram::new(LAG_BUCKETS),
            subscribers: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    /// Outbox rows committed but not yet given a position.
    pub fn set_unsequenced(&self, rows: u64) {
        self.unsequenced.store(rows, Ordering::Relaxed);
    }

    /// The newest assigned position.
    pub fn set_head_position(&self, position: u64) {
        self.head_position.store(position, Ordering::Relaxed);
    }

    /// Time between an outbox row's commit and its sequencing, in seconds.
    pub fn record_sequencing_lag(&self, seconds: f64) {
        self.sequencing_lag.observe(seconds);
        if let Some(otel) = OTEL.get() {
            otel.sequencing_lag.record(seconds, &[]);
        }
    }

    /// Counts a live subscriber until the returned guard is dropped, so a
    /// stream that ends any way (error, disconnect, panic) is uncounted.
    #[must_use = "the subscriber is counted only while the guard lives"]
    pub fn subscriber_opened(&self) -> SubscriberGuard {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        SubscriberGuard { _private: () }
    }

    /// Events sent to subscribers (replayed or live).
    pub fn events_delivered(&self, count: u64) {
        self.delivered.fetch_add(count, Ordering::Relaxed);
    }

    pub fn unsequenced(&self) -> u64 {
        self.unsequenced.load(Ordering::Relaxed)
    }

    pub fn head_position(&self) -> u64 {
        self.head_position.load(Ordering::Relaxed)
    }

    pub fn subscribers(&self) -> i64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// SQLite group commit: shared transactions and the writes they carried;
/// PostgreSQL: writes read without a lock that found their account changed.
#[derive(Debug, Default)]
pub struct StorageMetrics {
    group_commits: AtomicU64,
    group_commit_writes: AtomicU64,
    group_commit_rollbacks: AtomicU64,
    write_conflicts: AtomicU64,
}

impl StorageMetrics {
    /// One shared transaction committed with `writes` writes in it.
    pub fn group_committed(&self, writes: u64) {
        self.group_commits.fetch_add(1, Ordering::Relaxed);
        self.group_commit_writes
            .fetch_add(writes, Ordering::Relaxed);
    }

    /// One write rolled back to its savepoint inside a shared transaction.
    pub fn group_commit_rolled_back(&self) {
        self.group_commit_rollbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn group_commits(&self) -> u64 {
        self.group_commits.load(Ordering::Relaxed)
    }

    pub fn group_commit_writes(&self) -> u64 {
        self.group_commit_writes.load(Ordering::Relaxed)
    }

    pub fn group_commit_rollbacks(&self) -> u64 {
        self.group_commit_rollbacks.load(Ordering::Relaxed)
    }

    /// One write read without a lock found its account changed (or held)
    /// at its write, and runs again under the lock.
    pub fn write_conflict(&self) {
        self.write_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn write_conflicts(&self) -> u64 {
        self.write_conflicts.load(Ordering::Relaxed)
    }
}

/// Metrics of the JetStream relay. The relay task is handed a reference (see
/// [`relay()`]); every method is one atomic operation.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    lag_positions: AtomicU64,
    /// f64 bits.
    lag_seconds: AtomicU64,
    relayed_position: AtomicU64,
    published: AtomicU64,
    leader: AtomicU64,
    connected: AtomicU64,
}

impl RelayMetrics {
    /// Positions stamped but not yet acknowledged by JetStream, and the age
    /// of the oldest of them in seconds (0 when none).
    pub fn set_lag(&self, positions: u64, seconds: f64) {
        self.lag_positions.store(positions, Ordering::Relaxed);
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        self.lag_seconds.store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// The last position JetStream acknowledged.
    pub fn set_relayed_position(&self, position: u64) {
        self.relayed_position.store(position, Ordering::Relaxed);
    }

    /// Events published and acknowledged by this replica.
    pub fn published(&self, count: u64) {
        self.published.fetch_add(count, Ordering::Relaxed);
    }

    /// Whether this replica is the relay leader.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(u64::from(leader), Ordering::Relaxed);
    }

    /// Whether this replica's relay has a working JetStream session.
    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(u64::from(connected), Ordering::Relaxed);
    }

    pub fn lag_positions(&self) -> u64 {
        self.lag_positions.load(Ordering::Relaxed)
    }

    pub fn lag_seconds(&self) -> f64 {
        f64::from_bits(self.lag_seconds.load(Ordering::Relaxed))
    }

    pub fn relayed_position(&self) -> u64 {
        self.relayed_position.load(Ordering::Relaxed)
    }

    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed) == 1
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == 1
    }
}

/// One live subscriber; see [`EventMetrics::subscriber_opened`].
#[derive(Debug)]
pub struct SubscriberGuard {
    _private: (),
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        events().subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Registry {
    rpc: RpcMetrics,
    http: HttpMetrics,
    events: EventMetrics,
    relay: RelayMetrics,
    storage: StorageMetrics,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        rpc: RpcMetrics::default(),
        http: HttpMetrics::default(),
        events: EventMetrics::new(),
        relay: RelayMetrics::default(),
        storage: StorageMetrics::default(),
    })
}

/// The storage metrics (global, always available).
pub fn storage() -> &'static StorageMetrics {
    &registry().storage
}

/// The relay metrics the process exports; `app` hands them to the relay.
pub fn relay() -> &'static RelayMetrics {
    &registry().relay
}

/// The event metrics (global, always available).
pub fn events() -> &'static EventMetrics {
    &registry().events
}

/// Records one finished call. `rpc` is `package.Service/Method`.
pub fn record_rpc(rpc: &str, code: Code, elapsed: Duration) {
    let stats = registry().rpc.stats(rpc);
    if let Some(calls) = stats.calls.get(code as usize) {
        calls.fetch_add(1, Ordering::Relaxed);
    }
    let seconds = elapsed.as_secs_f64();
    stats.duration.observe(seconds);
    if let Some(otel) = OTEL.get() {
        otel.rpc_duration.record(
            seconds,
            &[
                KeyValue::new("rpc", stats.label.clone()),
                KeyValue::new("code", code_name(code)),
            ],
        );
    }
}

/// Records one finished HTTP request: its route (from the door's table),
/// HTTP status, Gigya errorCode (0 on success) and latency.
pub fn record_http(route: &str, status: u16, error_code: u32, elapsed: Duration) {
    let http = &registry().http;
    if let Some(counter) = http.counter((route.to_owned(), status, error_code)) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(histogram) = http.histogram(route) {
        histogram.observe(elapsed.as_secs_f64());
    }
}

/// HTTP requests of `route` that ended with `status` and `error_code` so far.
pub fn http_requests(route: &str, status: u16, error_code: u32) -> u64 {
    registry()
        .http
        .requests
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&(route.to_owned(), status, error_code))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Calls of `rpc` that ended with `code` so far (for tests and checks).
pub fn rpc_calls(rpc: &str, code: Code) -> u64 {
    registry()
        .rpc
        .snapshot()
        .into_iter()
        .find(|(name, _)| name == rpc)
        .and_then(|(_, stats)| {
            stats
                .calls
                .get(code as usize)
                .map(|c| c.load(Ordering::Relaxed))
        })
        .unwrap_or(0)
}

/// The upper-snake name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus() -> String {
    let registry = registry();
    let rpcs = registry.rpc.snapshot();
    let mut out = String::with_capacity(4096);

    out.push_str(
        "# HELP connections_rpc_calls_total gRPC calls handled, by RPC and status code.\n",
    );
    out.push_str("# TYPE connections_rpc_calls_total counter\n");
    for (rpc, stats) in &rpcs {
        for (index, calls) in stats.calls.iter().enumerate() {
            let calls = calls.load(Ordering::Relaxed);
            if calls > 0 {
                let code = code_name(Code::from_i32(i32::try_from(index).unwrap_or(2)));
                let _ = writeln!(
                    out,
                    "connections_rpc_calls_total{{rpc=\"{}\",code=\"{code}\"}} {calls}",
                    label(rpc)
                );
            }
        }
    }

    out.push_str("# HELP connections_rpc_duration_seconds Time from a gRPC call's start to its end (a stream's whole life).\n");
    out.push_str("# TYPE connections_rpc_duration_seconds histogram\n");
    for (rpc, stats) in &rpcs {
        stats.duration.render(
            &mut out,
            "connections_rpc_duration_seconds",
            &format!("rpc=\"{}\",", label(rpc)),
        );
    }

    render_http(&mut out, &registry.http);

    let events = &registry.events;
    let gauges: [(&str, &str, &str, String); 4] = [
        (
            "connections_outbox_unsequenced",
            "gauge",
            "Outbox rows committed but not yet given a position.",
            events.unsequenced().to_string(),
        ),
        (
            "connections_events_head_position",
            "gauge",
            "The newest event position.",
            events.head_position().to_string(),
        ),
        (
            "connections_subscribers",
            "gauge",
            "Live Subscribe streams.",
            events.subscribers().to_string(),
        ),
        (
            "connections_events_delivered_total",
            "counter",
            "Events sent to subscribers.",
            events.delivered().to_string(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }

    let relay = &registry.relay;
    let relay_gauges: [(&str, &str, &str, String); 6] = [
        (
            "connections_relay_lag_positions",
            "gauge",
            "Positions stamped but not yet acknowledged by JetStream.",
            relay.lag_positions().to_string(),
        ),
        (
            "connections_relay_lag_seconds",
            "gauge",
            "Age of the oldest event not yet acknowledged by JetStream (0 when none).",
            relay.lag_seconds().to_string(),
        ),
        (
            "connections_relay_position",
            "gauge",
            "The last position JetStream acknowledged.",
            relay.relayed_position().to_string(),
        ),
        (
            "connections_relay_published_total",
            "counter",
            "Events this replica published to JetStream.",
            relay.published_total().to_string(),
        ),
        (
            "connections_relay_leader",
            "gauge",
            "1 when this replica is the relay leader.",
            u64::from(relay.is_leader()).to_string(),
        ),
        (
            "connections_relay_connected",
            "gauge",
            "1 when this replica's relay has a working JetStream session.",
            u64::from(relay.is_connected()).to_string(),
        ),
    ];
    for (name, kind, help, value) in relay_gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }

    let storage = storage();
    let group_commit = [
        (
            "connections_sqlite_group_commits_total",
            "SQLite shared write transactions committed (group commit).",
            storage.group_commits(),
        ),
        (
            "connections_sqlite_group_commit_writes_total",
            "Writes those shared transactions carried.",
            storage.group_commit_writes(),
        ),
        (
            "connections_sqlite_group_commit_rollbacks_total",
            "Writes rolled back to their savepoint inside a shared transaction.",
            storage.group_commit_rollbacks(),
        ),
        (
            "connections_postgres_write_conflicts_total",
            "Removals and links read without a lock whose account changed or was held at their write (run again under the lock).",
            storage.write_conflicts(),
        ),
    ];
    for (name, help, value) in group_commit {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }

    out.push_str("# HELP connections_events_sequencing_lag_seconds Time from an outbox row's commit to its position.\n");
    out.push_str("# TYPE connections_events_sequencing_lag_seconds histogram\n");
    events
        .sequencing_lag
        .render(&mut out, "connections_events_sequencing_lag_seconds", "");
    out
}

fn render_http(out: &mut String, http: &HttpMetrics) {
    let mut requests: Vec<_> = http
        .requests
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(key, count)| (key.clone(), count.load(Ordering::Relaxed)))
        .collect();
    requests.sort();
    out.push_str("# HELP connections_http_requests_total HTTP requests handled, by route, HTTP status and Gigya errorCode.\n");
    out.push_str("# TYPE connections_http_requests_total counter\n");
    for ((route, status, error_code), count) in requests {
        let _ = writeln!(
            out,
            "connections_http_requests_total{{route=\"{}\",status=\"{status}\",error_code=\"{error_code}\"}} {count}",
            label(&route)
        );
    }
    let mut durations: Vec<_> = http
        .durations
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(route, histogram)| (route.clone(), histogram.clone()))
        .collect();
    durations.sort_by(|a, b| a.0.cmp(&b.0));
    out.push_str(
        "# HELP connections_http_request_duration_seconds Time to handle an HTTP request.\n",
    );
    out.push_str("# TYPE connections_http_request_duration_seconds histogram\n");
    for (route, histogram) in durations {
        histogram.render(
            out,
            "connections_http_request_duration_seconds",
            &format!("route=\"{}\",", label(&route)),
        );
    }
}

/// OpenTelemetry instruments, present once an OTLP meter provider exists.
struct Otel {
    rpc_duration: opentelemetry::metrics::Histogram<f64>,
    sequencing_lag: opentelemetry::metrics::Histogram<f64>,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// Registers the OpenTelemetry instruments on `meter`: histograms recorded
/// alongside the atomics from now on, and observable instruments whose
/// callbacks read the atomics at each export. Only the first call counts.
pub(crate) fn register_otel(meter: &Meter) {
    if OTEL.get().is_some() {
        return;
    }
    let otel = Otel {
        rpc_duration: meter
            .f64_histogram("connections.rpc.duration")
            .with_unit("s")
            .with_description("Time to handle a gRPC call")
            .with_boundaries(RPC_BUCKETS.to_vec())
            .build(),
        sequencing_lag: meter
            .f64_histogram("connections.events.sequencing_lag")
            .with_unit("s")
            .with_description("Time from an outbox row's commit to its position")
            .with_boundaries(LAG_BUCKETS.to_vec())
            .build(),
    };
    if OTEL.set(otel).is_err() {
        return;
    }
    // The SDK keeps the callbacks registered for the provider's lifetime.
    meter
        .u64_observable_counter("connections.rpc.calls")
        .with_description("gRPC calls handled, by RPC and status code")
        .with_callback(|observer| {
            for (rpc, stats) in registry().rpc.snapshot() {
                for (index, calls) in stats.calls.iter().enumerate() {
                    let calls = calls.load(Ordering::Relaxed);
                    if calls > 0 {
                        let code = Code::from_i32(i32::try_from(index).unwrap_or(2));
                        observer.observe(
                            calls,
                            &[
                                KeyValue::new("rpc", rpc.clone()),
                                KeyValue::new("code", code_name(code)),
                            ],
                        );
                    }
                }
            }
        })
        .build();
    meter
        .u64_observable_gauge("connections.outbox.unsequenced")
        .with_description("Outbox rows committed but not yet given a position")
        .with_callback(|observer| observer.observe(events().unsequenced(), &[]))
        .build();
    meter
        .u64_observable_gauge("connections.events.head_position")
        .with_description("The newest event position")
        .with_callback(|observer| observer.observe(events().head_position(), &[]))
        .build();
    meter
        .i64_observable_up_down_counter("connections.subscribers")
        .with_description("Live Subscribe streams")
        .with_callback(|observer| observer.observe(events().subscribers(), &[]))
        .build();
    meter
        .u64_observable_counter("connections.events.delivered")
        .with_description("Events sent to subscribers")
        .with_callback(|observer| observer.observe(events().delivered(), &[]))
        .build();
    meter
        .u64_observable_gauge("connections.relay.lag_positions")
        .with_description("Positions stamped but not yet acknowledged by JetStream")
        .with_callback(|observer| observer.observe(relay().lag_positions(), &[]))
        .build();
    meter
        .f64_observable_gauge("connections.relay.lag")
        .with_unit("s")
        .with_description("Age of the oldest event not yet acknowledged by JetStream")
        .with_callback(|observer| observer.observe(relay().lag_seconds(), &[]))
        .build();
    meter
        .u64_observable_counter("connections.relay.published")
        .with_description("Events this replica published to JetStream")
        .with_callback(|observer| observer.observe(relay().published_total(), &[]))
        .build();
    meter
        .u64_observable_counter("connections.sqlite.group_commits")
        .with_description("SQLite shared write transactions committed (group commit)")
        .with_callback(|observer| observer.observe(storage().group_commits(), &[]))
        .build();
    meter
        .u64_observable_counter("connections.sqlite.group_commit_writes")
        .with_description("Writes those shared transactions carried")
        .with_callback(|observer| observer.observe(storage().group_commit_writes(), &[]))
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.1);
        histogram.observe(0.5);
        histogram.observe(7.0);
        histogram.observe(f64::NAN);
        let mut out = String::new();
        histogram.render(&mut out, "h", "a=\"b\",");
        assert!(out.contains("h_bucket{a=\"b\",le=\"0.1\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{a=\"b\",le=\"1\"} 4\n"), "{out}");
        assert!(out.contains("h_bucket{a=\"b\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("h_sum{a=\"b\"} 7.65\n"), "{out}");
        assert!(out.contains("h_count{a=\"b\"} 5\n"), "{out}");
    }

    #[test]
    fn rpc_calls_are_counted_by_rpc_and_code() {
        let rpc = "test.v1.Unit/CountsCalls";
        record_rpc(rpc, Code::Ok, Duration::from_millis(2));
        record_rpc(rpc, Code::Ok, Duration::from_millis(3));
        record_rpc(rpc, Code::NotFound, Duration::from_millis(1));
        assert_eq!(rpc_calls(rpc, Code::Ok), 2);
        assert_eq!(rpc_calls(rpc, Code::NotFound), 1);
        let text = render_prometheus();
        assert!(text.contains(&format!(
            "connections_rpc_calls_total{{rpc=\"{rpc}\",code=\"NOT_FOUND\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "connections_rpc_duration_seconds_count{{rpc=\"{rpc}\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "connections_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"0.0025\"}} 2\n"
        )));
    }

    #[test]
    fn group_commit_metrics_are_rendered() {
        let before = storage().group_commit_writes();
        storage().group_committed(3);
        storage().group_commit_rolled_back();
        let text = render_prometheus();
        assert!(text.contains("# TYPE connections_sqlite_group_commits_total counter\n"));
        assert!(text.contains("connections_sqlite_group_commit_writes_total "));
        assert!(storage().group_commit_writes() >= before + 3);
        assert!(text.contains("connections_sqlite_group_commit_rollbacks_total "));
    }

    #[test]
    fn event_metrics_are_rendered() {
        // The registry is global: this is the only test touching events.
        let events = events();
        events.set_unsequenced(4);
        events.set_head_position(99);
        events.record_sequencing_lag(0.02);
        events.events_delivered(5);
        let first = events.subscriber_opened();
        let second = events.subscriber_opened();
        drop(first);
        let text = render_prometheus();
        for line in [
            "connections_outbox_unsequenced 4\n",
            "connections_events_head_position 99\n",
            "connections_subscribers 1\n",
            "connections_events_delivered_total 5\n",
            "connections_events_sequencing_lag_seconds_bucket{le=\"0.05\"} 1\n",
            "connections_events_sequencing_lag_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(second);
        assert_eq!(events.subscribers(), 0);
    }

    #[test]
    fn label_values_are_escaped_and_rpcs_are_capped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let metrics = RpcMetrics::default();
        for n in 0..(MAX_RPCS + 10) {
            metrics.stats(&format!("x/{n}"));
        }
        let names: Vec<_> = metrics.snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), MAX_RPCS + 1);
        assert!(names.iter().any(|n| n == OTHER_RPC));
    }
}
