use anyhow::Context;

/// drover-scheduler: stores runs in etcd and assigns ready tasks to agents over NATS.
#[derive(clap::Parser)]
#[command(name = "drover-scheduler", version)]
struct Cli {
    /// YAML file of flag values (keys are flag names); the environment and
    /// flags override it.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = drover_telemetry::init("drover-scheduler", "info");
    let cli: Cli = drover_config::parse();
    let listener = tokio::net::TcpListener::bind(cli.opts.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.opts.listen))?;
    drover_scheduler::serve(cli.opts, listener, drover_telemetry::shutdown_signal()).await?;
    Ok(())
}
