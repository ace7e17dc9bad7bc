use anyhow::Context;

/// drover-scheduler: stores runs in etcd and assigns ready tasks to agents over NATS.
#[derive(clap::Parser)]
#[command(
    name = "drover-scheduler",
    version,
    after_help = "The first admin API token: `drover-scheduler bootstrap-token --help`."
)]
struct Cli {
    /// YAML file of flag values (keys are flag names); the environment and
    /// flags override it.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

/// drover-scheduler bootstrap-token: creates an admin API token straight in
/// etcd (no scheduler needs to run) and prints it, or writes it to --out.
#[derive(clap::Parser)]
#[command(
    name = "drover-scheduler bootstrap-token",
    bin_name = "drover-scheduler bootstrap-token",
    version
)]
struct BootstrapCli {
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
    /// The token's name [default: admin-<8 hex>].
    #[arg(long)]
    name: Option<String>,
    /// Write the token to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

const BOOTSTRAP: &str = "bootstrap-token";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = drover_telemetry::init("drover-scheduler", "info");
    // A subcommand of its own parser: it needs none of serving's required flags.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == BOOTSTRAP) {
        args.remove(1);
        return bootstrap_token(clap::Parser::parse_from(args)).await;
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

async fn bootstrap_token(cli: BootstrapCli) -> anyhow::Result<()> {
    let etcd_options = cli
        .etcd_security
        .connect_options(&cli.etcd)
        .map_err(|e| anyhow::anyhow!(e))?;
    let store =
        drover_scheduler::store::Store::connect_with(&cli.etcd, &cli.prefix, etcd_options).await?;
    let token = drover_scheduler::auth::create_token(
        &store,
        drover_scheduler::auth::NewToken::admin(cli.name),
    )
    .await?;
    match cli.out {
        Some(path) => {
            drover_scheduler::auth::write_token_file(&path, &token)
                .with_context(|| format!("--out {}", path.display()))?;
            eprintln!("admin token written to {}", path.display());
        }
        None => println!("{token}"),
    }
    Ok(())
}
