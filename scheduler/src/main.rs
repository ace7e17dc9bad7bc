use anyhow::Context;

/// drover-scheduler: stores runs in etcd and assigns ready tasks to agents over NATS.
#[derive(clap::Parser)]
#[command(
    name = "drover-scheduler",
    version,
    after_help = "Set-up tools that need no running scheduler, before any flag: \
                  `drover-scheduler bootstrap-token --help`, `nats-identity --help`, \
                  `nats-config --help`."
)]
struct Cli {
    /// YAML file of flag values (keys are flag names); the environment and
    /// flags override it.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

/// How the set-up tools reach etcd: the scheduler's own flags.
#[derive(clap::Args)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated (the scheduler's --etcd).
    #[arg(
        long,
        env = "DROVER_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// The scheduler's etcd key prefix.
    #[arg(long, env = "DROVER_PREFIX", default_value = "/drover")]
    prefix: String,
    #[command(flatten)]
    etcd_security: drover_scheduler::options::EtcdSecurityOptions,
}

impl EtcdArgs {
    async fn store(&self) -> anyhow::Result<drover_scheduler::store::Store> {
        let options = self
            .etcd_security
            .connect_options(&self.etcd)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(drover_scheduler::store::Store::connect_with(&self.etcd, &self.prefix, options).await?)
    }
}

/// Set-up tools, parsed apart from the server's flags (which require an
/// artifact store).
#[derive(clap::Parser)]
#[command(name = "drover-scheduler", version)]
enum Tool {
    /// Creates an admin API token straight in etcd (no scheduler needs to
    /// run) and prints it, or writes it to --out.
    BootstrapToken {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The token's name [default: admin-<8 hex>].
        #[arg(long)]
        name: Option<String>,
        /// Write the token to FILE (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Creates the scheduler's NATS identity: writes its NKey seed to FILE
    /// (mode 0600; an existing file is kept) and prints its public key.
    NatsIdentity {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Prints nats-server's `authorization` block for the scheduler
    /// (--nats-creds) and every agent enrolled in etcd, without NATS.
    NatsConfig {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Prefix of every NATS subject.
        #[arg(long, env = "DROVER_NATS_PREFIX", default_value = drover_api::naming::DEFAULT_NATS_PREFIX)]
        nats_prefix: String,
        #[command(flatten)]
        security: drover_scheduler::options::NatsSecurityOptions,
    },
}

const TOOLS: [&str; 3] = ["bootstrap-token", "nats-identity", "nats-config"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = drover_telemetry::init("drover-scheduler", "info");
    if std::env::args()
        .nth(1)
        .is_some_and(|a| TOOLS.contains(&a.as_str()))
    {
        return tool(clap::Parser::parse()).await;
    }
    let cli: Cli = drover_config::parse();
    if let Err(e) = cli.opts.validate() {
        // One line, like a bad flag: no backtrace, whatever RUST_BACKTRACE says.
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let listener = tokio::net::TcpListener::bind(cli.opts.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.opts.listen))?;
    drover_scheduler::serve(cli.opts, listener, drover_telemetry::shutdown_signal()).await?;
    Ok(())
}

async fn tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::BootstrapToken { etcd, name, out } => {
            let token = drover_scheduler::auth::create_token(
                &etcd.store().await?,
                drover_scheduler::auth::NewToken::admin(name),
            )
            .await?;
            match out {
                Some(path) => {
                    drover_scheduler::auth::write_token_file(&path, &token)
                        .with_context(|| format!("--out {}", path.display()))?;
                    eprintln!("admin token written to {}", path.display());
                }
                None => println!("{token}"),
            }
        }
        Tool::NatsIdentity { out } => {
            let key = drover_scheduler::enroll::create_identity(&out)?;
            println!("{key}");
        }
        Tool::NatsConfig {
            etcd,
            nats_prefix,
            security,
        } => {
            let store = etcd.store().await?;
            let block =
                drover_scheduler::enroll::offline_config(&store, &nats_prefix, &security).await?;
            print!("{block}");
        }
    }
    Ok(())
}
