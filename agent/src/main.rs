//! `drover-agent`: see the crate docs of `drover_agent`.

use anyhow::Result;
use drover_agent::{Agent, AgentOptions};

/// Runs the tasks the Drover scheduler assigns to this machine.
#[derive(clap::Parser, Debug)]
#[command(name = "drover-agent", version, about)]
struct Cli {
    /// YAML file of flag values (keys are flag names); the environment and
    /// flags override it.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    agent: AgentOptions,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli: Cli = drover_config::parse();
    let _telemetry = drover_telemetry::init("drover-agent", "info");
    // On a worker thread, not the main one `block_on` polls: the service
    // loop wakes for every assignment and every finished attempt, and each
    // hand-off between the main thread and the workers is a context switch.
    tokio::spawn(Agent::run(cli.agent, shutdown_signal())).await??;
    Ok(())
}

/// Ctrl-C or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
