use anyhow::Context;

/// drover-scheduler: stores runs in etcd and assigns ready tasks to agents over NATS.
///
/// Offline tools, before the first argument: `drover-scheduler nats-identity
/// --help`, `drover-scheduler nats-config --help`.
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

/// Set-up tools that need no running scheduler (parsed apart from the
/// server's flags, which require an artifact store).
#[derive(clap::Parser)]
#[command(name = "drover-scheduler", version)]
enum Tool {
    /// Creates the scheduler's NATS identity: writes its NKey seed to FILE
    /// (mode 0600; an existing file is kept) and prints its public key.
    NatsIdentity {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Prints nats-server's `authorization` block for the scheduler
    /// (--nats-creds) and every agent enrolled in etcd, without NATS.
    NatsConfig {
        /// etcd endpoints, comma-separated.
        #[arg(long, env = "DROVER_ETCD", default_value = "http://127.0.0.1:2379")]
        etcd: String,
        /// etcd key prefix of the scheduler's state.
        #[arg(long, env = "DROVER_PREFIX", default_value = "/drover")]
        prefix: String,
        /// Prefix of every NATS subject.
        #[arg(long, env = "DROVER_NATS_PREFIX", default_value = drover_api::naming::DEFAULT_NATS_PREFIX)]
        nats_prefix: String,
        #[command(flatten)]
        security: drover_scheduler::options::NatsSecurityOptions,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = drover_telemetry::init("drover-scheduler", "info");
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a.starts_with("nats-"))
    {
        return tool(clap::Parser::parse()).await;
    }
    let cli: Cli = drover_config::parse();
    let listener = tokio::net::TcpListener::bind(cli.opts.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.opts.listen))?;
    drover_scheduler::serve(cli.opts, listener, drover_telemetry::shutdown_signal()).await?;
    Ok(())
}

async fn tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::NatsIdentity { out } => {
            let key = drover_scheduler::enroll::create_identity(&out)?;
            println!("{key}");
        }
        Tool::NatsConfig {
            etcd,
            prefix,
            nats_prefix,
            security,
        } => {
            let etcd: Vec<String> = etcd.split(',').map(str::to_owned).collect();
            let block =
                drover_scheduler::enroll::offline_config(&etcd, &prefix, &nats_prefix, &security)
                    .await?;
            print!("{block}");
        }
    }
    Ok(())
}
