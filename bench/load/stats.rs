//! Latency percentiles, the server process's CPU time and peak RSS from
//! /proc, and the JSON line each measurement prints.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Map, Value, json};

/// Latencies of one kind of call.
#[derive(Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// p50, p99, p99.9 and max in milliseconds, under `prefix_`.
    pub fn summary(&mut self, prefix: &str, out: &mut Map<String, Value>) {
        self.0.sort_unstable();
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let at = |q: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            let rank = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            ms(self.0[rank])
        };
        out.insert(format!("{prefix}_p50_ms"), json!(at(0.50)));
        out.insert(format!("{prefix}_p99_ms"), json!(at(0.99)));
        out.insert(format!("{prefix}_p999_ms"), json!(at(0.999)));
        out.insert(format!("{prefix}_max_ms"), json!(at(1.0)));
    }
}

/// Error counts by gRPC code name.
#[derive(Default)]
pub struct Errors(BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, status: &tonic::Status) {
        *self.0.entry(format!("{:?}", status.code())).or_default() += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (code, n) in other.0 {
            *self.0.entry(code).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// CPU seconds (user + system) and peak RSS of the server processes.
pub struct ProcessSample {
    cpu_seconds: f64,
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc times in USER_HZ, which is 100 on every
    // architecture it ships for.
    100.0
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// Peak resident set size in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl ProcessSample {
    pub fn take(pids: &[u32]) -> Self {
        Self {
            cpu_seconds: pids.iter().filter_map(|p| cpu_seconds(*p)).sum(),
        }
    }

    /// CPU seconds used since `self` and the largest peak RSS.
    pub fn since(&self, pids: &[u32], out: &mut Map<String, Value>) -> f64 {
        let now = Self::take(pids);
        let used = now.cpu_seconds - self.cpu_seconds;
        if !pids.is_empty() {
            out.insert("server_cpu_s".into(), json!(round3(used)));
            let peak = pids
                .iter()
                .filter_map(|p| peak_rss_mib(*p))
                .fold(0.0, f64::max);
            out.insert("server_peak_rss_mib".into(), json!(round3(peak)));
        }
        used
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints one measurement as a JSON line on stdout.
pub fn emit(kind: &str, label: &str, mut fields: Map<String, Value>) {
    fields.insert("kind".into(), json!(kind));
    fields.insert("label".into(), json!(label));
    println!("{}", Value::Object(fields));
}
