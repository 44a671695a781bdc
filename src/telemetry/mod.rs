//! Telemetry: logs, traces and metrics.
//!
//! - [`init`] installs the global `tracing` subscriber: human-readable or
//!   JSON logs (level from `RUST_LOG`), plus an OpenTelemetry layer. Traces
//!   go out over OTLP/gRPC when an endpoint is configured
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
//!   [`TelemetryConfig::otlp_endpoint`]); without one, an SDK tracer provider
//!   with no exporter still gives every call a real trace context, so an
//!   incoming `traceparent` is continued into the events.
//! - [`layer`]: the per-call tower layer (call id, `rpc` span, outcome, latency).
//! - [`metrics`]: process-wide counters, gauges and histograms, exported over
//!   OTLP when configured and served as Prometheus text by the HTTP door's
//!   `/metrics` endpoint.

pub mod metrics;
pub mod trace_context;

use std::{io::IsTerminal, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    filter::Targets,
    fmt::{self, FormatFields, format::Writer},
    prelude::*,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Service name when `OTEL_SERVICE_NAME` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "connections";

/// How to set telemetry up. The standard `OTEL_*` variables are read by
/// [`init`] and the OpenTelemetry SDK.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces and metrics, overriding the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables (tests use this).
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    pub fn new(log_format: LogFormat) -> Self {
        Self {
            log_format,
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The installed providers. Call [`Telemetry::shutdown`] before exiting so
/// that buffered spans and the last metrics are sent.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
    exporting_traces: bool,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting_traces(&self) -> bool {
        self.exporting_traces
    }

    /// Whether metrics are exported over OTLP.
    pub fn exporting_metrics(&self) -> bool {
        self.meter_provider.is_some()
    }

    /// Exports everything buffered now. Blocks: call it from a blocking
    /// context (`spawn_blocking`), as the exporter needs the runtime.
    pub fn force_flush(&self) {
        if let Err(err) = self.tracer_provider.force_flush() {
            tracing::warn!(error = %err, "flushing spans failed");
        }
        if let Some(meter_provider) = &self.meter_provider
            && let Err(err) = meter_provider.force_flush()
        {
            tracing::warn!(error = %err, "flushing metrics failed");
        }
    }

    /// Flushes and stops the providers, waiting at most a few seconds for a
    /// collector that does not answer.
    pub async fn shutdown(self) {
        let joined = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            if let Err(err) = self.tracer_provider.shutdown_with_timeout(timeout) {
                eprintln!("connections: shutting down tracing: {err}");
            }
            if let Some(meter_provider) = self.meter_provider
                && let Err(err) = meter_provider.shutdown_with_timeout(timeout)
            {
                eprintln!("connections: shutting down metrics: {err}");
            }
        })
        .await;
        if let Err(err) = joined {
            eprintln!("connections: telemetry shutdown: {err}");
        }
    }
}

/// Puts the cause of a failed call into the call's span (its `error`
/// field), so that the call's one log line carries it. Returns false where
/// there is no such span (outside a call, or the span filtered out): the
/// caller logs the cause itself then, so that it is never lost.
pub fn record_cause(cause: &dyn std::fmt::Display) -> bool {
    let span = tracing::Span::current();
    let has_field = span
        .metadata()
        .is_some_and(|m| m.fields().field("error").is_some());
    if has_field {
        span.record("error", tracing::field::display(cause));
    }
    has_field
}

/// Installs the global subscriber and the OpenTelemetry providers. Must run
/// inside the Tokio runtime (the OTLP exporter's channel lives on it). Call
/// once per process; a second call keeps the first subscriber.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let resource = resource();
    let export_traces = otlp_enabled(config, "TRACES");
    let export_metrics = otlp_enabled(config, "METRICS");

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if export_traces {
        let mut exporter = SpanExporter::builder().with_tonic();
        if let Some(endpoint) = &config.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        tracer_builder = tracer_builder.with_batch_exporter(exporter.build()?);
    }
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer(DEFAULT_SERVICE_NAME);
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let meter_provider = if export_metrics {
        let mut exporter = MetricExporter::builder().with_tonic();
        if let Some(endpoint) = &config.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(exporter.build()?)
            .build();
        metrics::register_otel(&opentelemetry::metrics::MeterProvider::meter(
            &provider,
            DEFAULT_SERVICE_NAME,
        ));
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    // Each layer has its own filter: RUST_LOG picks what is logged, while
    // the trace keeps this crate's spans whatever the log level, so a quiet
    // log never breaks trace continuation.
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_layer = match config.log_format {
        LogFormat::Text => fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            // `otel.name` / `otel.kind` only steer the exported span and
            // repeat `rpc`: keep them out of the text log.
            .fmt_fields(TextFields)
            .boxed(),
        LogFormat::Json => fmt::layer().json().boxed(),
    }
    .with_filter(log_filter);
    // Only when spans are exported: without an exporter the layer would
    // still build an OpenTelemetry span for every span of every call, to
    // drop it at the end. Traceparents do not need it (see `start_trace`).
    let otel_layer = export_traces.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO))
    });
    if let Err(err) = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
    {
        eprintln!("tracing already initialised: {err}");
    }
    if export_traces || export_metrics {
        tracing::info!(
            traces = export_traces,
            metrics = export_metrics,
            "exporting telemetry over OTLP"
        );
    }
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
        exporting_traces: export_traces,
    })
}

/// `service.name` from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
/// (read by the SDK's default detectors), else "connections".
fn resource() -> Resource {
    let named_by_env = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = Resource::builder();
    if named_by_env {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// Export a signal (`TRACES` / `METRICS`) only when an endpoint is given,
/// so that nothing is sent (and nothing costs) by default, and not when
/// `OTEL_SDK_DISABLED=true` or `OTEL_<SIGNAL>_EXPORTER=none`.
fn otlp_enabled(config: &TelemetryConfig, signal: &str) -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var(format!("OTEL_{signal}_EXPORTER"))
            .is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    let configured = config
        .otlp_endpoint
        .as_deref()
        .is_some_and(|e| !e.is_empty())
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"));
    configured && !disabled
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Text log fields as `name=value`, without the `otel.*` fields.
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value:?}")
        } else {
            write!(self.writer, "{separator}{field}={value:?}")
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_show_call_fields_but_not_otel_ones() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_target(false)
            .fmt_fields(TextFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                otel.name = "svc/M",
                otel.kind = "server",
                rpc = "svc/M",
                site = tracing::field::Empty
            );
            let _entered = span.enter();
            span.record("site", "3_a");
            tracing::info!(latency_ms = 1.5, "rpc finished");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(r#"rpc{rpc="svc/M" site="3_a"}: rpc finished latency_ms=1.5"#),
            "{text}"
        );
        assert!(!text.contains("otel."), "{text}");
    }

    #[test]
    fn otlp_export_needs_an_endpoint() {
        let mut config = TelemetryConfig::new(LogFormat::Text);
        // The CI environment sets no OTEL_EXPORTER_OTLP_* variables.
        if !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        {
            assert!(!otlp_enabled(&config, "TRACES"));
        }
        config.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        if !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true") {
            assert!(otlp_enabled(&config, "TRACES"));
        }
    }
}
