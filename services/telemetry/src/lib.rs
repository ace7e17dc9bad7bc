//! Logging/tracing set-up shared by every Drover binary.
//!
//! `RUST_LOG` filters (default `info`); `DROVER_LOG_FORMAT=json` switches to
//! one JSON object per line for log shippers. OTLP export comes with the
//! tracing issue and will hang off the returned guard.

use tracing_subscriber::{fmt, EnvFilter};

/// Flushes telemetry when dropped; keep it alive for the program's lifetime.
#[must_use = "telemetry is flushed when the guard is dropped"]
pub struct Guard(());

/// Installs the global subscriber. Calling it twice (tests) is harmless.
pub fn init(default_filter: &str) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("DROVER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already set: keep that one.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Guard(())
}
