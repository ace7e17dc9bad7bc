//! Logging/tracing set-up shared by every Drover binary.
//!
//! Also the shutdown trigger every binary shares ([`shutdown_signal`]).
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
