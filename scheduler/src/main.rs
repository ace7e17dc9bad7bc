use anyhow::Context;
use clap::Parser;

/// drover-scheduler: stores runs in etcd and assigns ready tasks to agents over NATS.
#[derive(Parser)]
#[command(name = "drover-scheduler", version)]
struct Cli {
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = drover_telemetry::init("drover-scheduler", "info");
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.opts.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.opts.listen))?;
    drover_scheduler::serve(cli.opts, listener, drover_telemetry::shutdown_signal()).await?;
    Ok(())
}
