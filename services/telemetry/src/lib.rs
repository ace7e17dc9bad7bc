//! Logs and traces for every Drover binary, and the shutdown trigger they share.
//!
//! * **Logs**: `RUST_LOG` filters (default per binary); `DROVER_LOG_FORMAT=json`
//!   switches to one JSON object per line for log shippers.
//! * **Traces**: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_SERVICE_NAME` is set (the default
//!   endpoint is `http://localhost:4317`); with none of them set, or
//!   `OTEL_SDK_DISABLED=true`, no exporter or OpenTelemetry layer is installed
//!   at all. Only spans of Drover's own crates are exported. Spans are batched
//!   (`OTEL_BSP_*` tune the batches) and flushed when the [`Guard`] is dropped.
//! * **Context propagation** ([`propagation`]): W3C `traceparent` in gRPC
//!   metadata (CLI → scheduler) and NATS headers (scheduler ↔ agent).
//!
//! # One run, one trace
//!
//! A run outlives any one scheduler process, so its spans cannot all be open
//! `tracing` spans in memory. Instead:
//!
//! 1. At submit the scheduler picks the run's trace id and root span id (the
//!    trace id of the caller's `traceparent` when there is one, so `drover
//!    submit` is the root's parent) and stores them in the run record.
//! 2. Each task attempt's span id is *derived* from the trace id and the
//!    attempt's name ([`record::attempt_span_id`]), so every scheduler
//!    process, before or after a restart, names the same parent without
//!    storing anything more.
//! 3. The scheduler sends the attempt's context with the assignment (NATS
//!    headers); the agent's spans (fetch inputs, pull image, execute, upload
//!    outputs; fetch and upload only where there is any) are its children, and the task gets `TRACEPARENT` for the
//!    execute span.
//! 4. The scheduler emits the attempt span when the attempt ends, and the
//!    run's root span when the run ends, with their recorded ids and
//!    timestamps (ready → placed → running → done), through
//!    [`record::emit`]. Nothing is emitted twice and nothing depends on the
//!    scheduler process that started the run still being alive.
//!
//! A scheduler that crashes between committing an end and exporting its span
//! loses that one span; its children keep their ids and stay in the trace.

pub mod propagation;
pub mod record;

pub use opentelemetry::{Context, KeyValue};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Standard OpenTelemetry variables read by [`Options::from_env`].
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// Where OTLP/gRPC goes when only the service name is given (the spec's default).
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4317";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP trace exporter for `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// What to set up. Binaries use [`Options::from_env`]; tests build it directly
/// rather than changing the process environment.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Default log filter when `RUST_LOG` is unset.
    pub default_filter: String,
    pub json_logs: bool,
    /// OTLP/gRPC endpoint for traces; None = no exporter.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans.
    pub service_name: String,
}

impl Options {
    /// From `DROVER_LOG_FORMAT` and the standard `OTEL_*` variables;
    /// `service` names the binary unless `OTEL_SERVICE_NAME` does.
    pub fn from_env(service: &str, default_filter: &str) -> Self {
        Self::from_lookup(service, default_filter, |k| std::env::var(k).ok())
    }

    fn from_lookup(
        service: &str,
        default_filter: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let disabled = set(OTEL_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let service_name = set(OTEL_SERVICE_NAME);
        let endpoint = set(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
            .or_else(|| set(OTEL_EXPORTER_OTLP_ENDPOINT))
            .or_else(|| service_name.as_ref().map(|_| DEFAULT_OTLP_ENDPOINT.into()));
        Self {
            default_filter: default_filter.into(),
            json_logs: set("DROVER_LOG_FORMAT").is_some_and(|v| v == "json"),
            otlp_endpoint: endpoint.filter(|_| !disabled),
            service_name: service_name.unwrap_or_else(|| service.into()),
        }
    }
}

/// Flushes and shuts down trace export when dropped; keep it alive for the
/// program's lifetime.
#[must_use = "traces are flushed when the guard is dropped"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans ended so far, waiting for the export.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = blocking(|| p.force_flush()) {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        EXPORTING.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = blocking(move || provider.shutdown()) {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Runs a call that waits for an export. The exporter's gRPC channel is
/// driven by the tokio runtime: on a multi-thread runtime the other workers
/// keep it going while this one waits.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Installs logging, and trace export when the environment asks for it
/// ([`Options::from_env`]). Must run inside a tokio runtime when exporting.
pub fn init(service: &str, default_filter: &str) -> Guard {
    init_with(Options::from_env(service, default_filter))
}

/// Installs the global subscriber from `opts`. Calling it twice (tests) keeps
/// the first subscriber. An exporter that cannot be built is reported on
/// stderr and tracing goes on without it: telemetry never stops a service.
pub fn init_with(opts: Options) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&opts.default_filter));
    let fmt_layer = fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = if opts.json_logs {
        fmt_layer.json().boxed()
    } else {
        fmt_layer.boxed()
    };
    let provider = match opts.otlp_endpoint.as_deref().map(|e| provider(e, &opts)) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("tracing export disabled: {e}");
            None
        }
        None => None,
    };
    let otel_layer = provider.as_ref().map(|p| {
        // Drover's spans only: dependencies' spans would be noise (and cost).
        // Inside them, only warnings and errors become span events: every
        // info line turned into one (fields formatted, attributes allocated)
        // cost the agents ~40% more CPU per short task with export on
        // (drover-bench --scenario tracing, CPU per task by process).
        let spans_and_warnings = tracing_subscriber::filter::filter_fn(|meta| {
            let wanted = if meta.is_span() {
                Level::INFO
            } else {
                Level::WARN
            };
            meta.target().starts_with("drover") && *meta.level() <= wanted
        });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("drover"))
            // Our async spans are entered on every poll: no busy/idle clock
            // reads and no OpenTelemetry context switch each time (Drover
            // reads a span's context explicitly where it propagates it), and
            // no thread attributes (a task's spans hop threads anyway).
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_filter(spans_and_warnings)
    });
    let installed = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .is_ok();
    match provider {
        Some(p) if installed => {
            opentelemetry::global::set_tracer_provider(p.clone());
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            Guard { provider: Some(p) }
        }
        Some(p) => {
            // Another subscriber was already installed (tests): keep that one.
            let _ = p.shutdown();
            Guard { provider: None }
        }
        None => Guard { provider: None },
    }
}

/// Set while a trace exporter is installed: recorded spans (see [`record`])
/// are only worth building then.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans: callers skip building spans that
/// [`record::emit`] would hand to a no-op tracer otherwise.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Spans buffered for export before new ones are dropped.
const SPAN_QUEUE: usize = 65_536;

fn provider(endpoint: &str, opts: &Options) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.into(),
            reason: e.to_string(),
        })?;
    // The SDK's default queue (2,048 spans) drops spans when a scheduler
    // finishes thousands of attempts a second; a bigger one unless the
    // operator chose (OTEL_BSP_MAX_QUEUE_SIZE is read by the default config).
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(SPAN_QUEUE);
    }
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config.build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_id_generator(record::RecordedIds::default())
        .with_resource(
            Resource::builder()
                .with_service_name(opts.service_name.clone())
                .build(),
        )
        .build())
}

/// Resolves on Ctrl-C or SIGTERM: every binary's shutdown trigger.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(vars: &[(&str, &str)]) -> Options {
        Options::from_lookup("drover-x", "info", |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_without_otel_variables() {
        let o = opts(&[]);
        assert_eq!(o.otlp_endpoint, None);
        assert_eq!(o.service_name, "drover-x");
    }

    #[test]
    fn traces_endpoint_wins_over_the_general_one() {
        let o = opts(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4317"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://b:4317"),
        ]);
        assert_eq!(o.otlp_endpoint.as_deref(), Some("http://b:4317"));
        let o = opts(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4317")]);
        assert_eq!(o.otlp_endpoint.as_deref(), Some("http://a:4317"));
    }

    #[test]
    fn service_name_alone_uses_the_default_endpoint() {
        let o = opts(&[(OTEL_SERVICE_NAME, "sched-eu")]);
        assert_eq!(o.otlp_endpoint.as_deref(), Some(DEFAULT_OTLP_ENDPOINT));
        assert_eq!(o.service_name, "sched-eu");
    }

    #[test]
    fn sdk_disabled_and_empty_values_turn_export_off() {
        let o = opts(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4317"),
            (OTEL_SDK_DISABLED, "true"),
        ]);
        assert_eq!(o.otlp_endpoint, None);
        assert_eq!(
            opts(&[(OTEL_EXPORTER_OTLP_ENDPOINT, " ")]).otlp_endpoint,
            None
        );
    }

    #[test]
    fn json_logs_from_drover_log_format() {
        assert!(opts(&[("DROVER_LOG_FORMAT", "json")]).json_logs);
        assert!(!opts(&[("DROVER_LOG_FORMAT", "text")]).json_logs);
    }
}
