//! `drover dev`: etcd, nats-server, the scheduler and one process agent on
//! this machine, all on loopback, with state under one directory so a restart
//! picks up where it stopped. Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use drover_devcluster::Server;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where etcd, NATS, artifacts and task work directories live.
    #[arg(long, env = "DROVER_DEV_DIR", default_value = ".drover")]
    data_dir: PathBuf,
    /// Scheduler gRPC address; port 0 picks a free one.
    #[arg(long, env = "DROVER_DEV_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Agent id (default: this machine's hostname).
    #[arg(long, env = "DROVER_AGENT_ID")]
    agent_id: Option<String>,
    /// The agent's executors, comma-separated: `process`, `docker` (needs a
    /// running Docker engine; containers get network mode `none`).
    #[arg(
        long,
        env = "DROVER_EXECUTORS",
        value_delimiter = ',',
        default_value = "process"
    )]
    executors: Vec<String>,
    /// Advertise this many simulated GPUs, to try GPU scheduling on a laptop.
    #[arg(long, env = "DROVER_SIMULATE_GPUS", default_value_t = 0)]
    simulate_gpus: u32,
    /// Serve Prometheus metrics: the scheduler's on 127.0.0.1:7071, the
    /// agent's on 127.0.0.1:7072 (what ops/prometheus/prometheus.yml scrapes).
    #[arg(long, env = "DROVER_DEV_METRICS")]
    metrics: bool,
    /// Largest code snapshot the scheduler accepts (e.g. 256Mi).
    #[arg(long, env = "DROVER_MAX_CODE_BYTES", default_value_t = drover_scheduler::options::DEFAULT_MAX_CODE_BYTES, value_parser = drover_api::spec::parse_memory)]
    max_code_bytes: u64,
    /// Everything on, as on a real network: TLS with a CA made under the
    /// data dir for etcd, NATS and the API; etcd authentication; one NATS
    /// identity per component with subject permissions; API tokens (an
    /// admin token written under the data dir). See README, "Running on a
    /// real network".
    #[arg(long, env = "DROVER_DEV_SECURE")]
    secure: bool,
    /// How many schedulers: one leads, the others stand by and take over
    /// when it stops (try `drover status`, then Ctrl-Z one... see README,
    /// "Standby schedulers").
    #[arg(long, env = "DROVER_DEV_SCHEDULERS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    schedulers: u8,
}

/// `--metrics` addresses: the targets of ops/prometheus/prometheus.yml.
const SCHEDULER_METRICS: &str = "127.0.0.1:7071";
const AGENT_METRICS: &str = "127.0.0.1:7072";

pub async fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = std::fs::canonicalize(&args.data_dir)?;
    let prefix = "/drover";
    let nats_prefix = drover_api::naming::DEFAULT_NATS_PREFIX;
    // The agent's id is needed before NATS starts: its identity is enrolled.
    let artifacts = format!("file://{}", dir.join("artifacts").display());
    let mut agent_opts = drover_agent::AgentOptions::new(String::new(), artifacts.clone());
    agent_opts.id = args.agent_id.clone();
    let agent_id = agent_opts.validate()?.id;
    let secure = match args.secure {
        true => Some(crate::dev_secure::Secure::prepare(&dir)?),
        false => None,
    };
    let (etcd, etcd_security) = match &secure {
        Some(secure) => {
            let (etcd, user) = secure.etcd(&dir.join("etcd"), prefix).await?;
            let options = secure.etcd_options(&user);
            (etcd, options)
        }
        None => (
            Server::etcd(Some(&dir.join("etcd"))).await?,
            Default::default(),
        ),
    };
    // An acknowledged event is on disk, not only in the page cache, where
    // the server can do so (nats-server 2.9 cannot).
    let sync_always = drover_devcluster::nats_supports_sync_always();
    let (nats, scheduler_nats, agent_nats) = match &secure {
        Some(secure) => {
            let etcd = (&etcd, &etcd_security);
            secure
                .nats(
                    &dir.join("nats"),
                    etcd,
                    (prefix, nats_prefix),
                    &agent_id,
                    sync_always,
                )
                .await?
        }
        None => (
            Server::nats_with(
                Some(&dir.join("nats")),
                &drover_devcluster::NatsSettings {
                    sync_always,
                    ..Default::default()
                },
            )
            .await?,
            Default::default(),
            Default::default(),
        ),
    };
    let api_security = secure.as_ref().map(|s| s.api_options()).unwrap_or_default();
    let scheme = if secure.is_some() { "https" } else { "http" };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics_addr = |addr: &str| -> Result<Option<SocketAddr>> {
        let parsed = args.metrics.then(|| addr.parse::<SocketAddr>());
        parsed.transpose().context("metrics address")
    };
    let scheduler_metrics = metrics_addr(SCHEDULER_METRICS)?;
    let agent_metrics = metrics_addr(AGENT_METRICS)?;
    let mut servers = Vec::new();
    let mut schedulers = Vec::new();
    for n in 1..=args.schedulers {
        // The first on --listen; the standbys on free ports beside it.
        let listen = match n {
            1 => args.listen,
            _ => SocketAddr::new(args.listen.ip(), 0),
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        servers.push(format!("{scheme}://{addr}"));
        let mut opts = drover_scheduler::SchedulerOptions::embedded(
            addr,
            &etcd.url,
            &nats.url,
            prefix,
            artifacts.clone(),
        );
        opts.nats_prefix = nats_prefix.into();
        opts.max_code_bytes = args.max_code_bytes;
        opts.id = Some(format!("dev-{n}"));
        opts.metrics_listen = scheduler_metrics.filter(|_| n == 1);
        opts.api_security = api_security.clone();
        opts.nats_security = scheduler_nats.clone();
        opts.etcd_security = etcd_security.clone();
        schedulers.push(tokio::spawn(drover_scheduler::serve(
            opts,
            listener,
            stopped(stop_rx.clone()),
        )));
    }
    let server = servers.join(",");

    agent_opts.nats = nats.url.clone();
    agent_opts.artifacts = artifacts.clone();
    agent_opts.id = Some(agent_id);
    agent_opts.work_dir = dir.join("work");
    // Process by default: a laptop may have no Docker engine set up for us.
    agent_opts.executors = args.executors;
    agent_opts.docker_network = "none".into();
    agent_opts.simulate_gpus = args.simulate_gpus;
    agent_opts.metrics_listen = agent_metrics;
    agent_opts.nats_creds = agent_nats.nats_creds;
    agent_opts.nats_ca = agent_nats.nats_ca;
    let mut agent = tokio::spawn(drover_agent::Agent::run(agent_opts, stopped(stop_rx)));

    // The token the printed variables point at is written by the leader
    // as it starts: wait for it, so the variables work at once.
    if let Some(secure) = &secure {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !secure.admin_token().exists() {
            if let Some(done) = schedulers.iter_mut().find(|s| s.is_finished()) {
                let r = done.await;
                anyhow::bail!("scheduler stopped: {}", joined(r));
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "no admin token at {} after 30 s",
                    secure.admin_token().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let env_file = dir.join("dev.env");
    let mut env = format!("DROVER_SERVER={server}\n");
    if let Some(secure) = &secure {
        env.push_str(&secure.client_env());
    }
    std::fs::write(&env_file, &env)?;
    println!("Drover dev cluster is up (state in {}).", dir.display());
    println!("  etcd       {}", etcd.url);
    println!("  nats       {}", nats.url);
    if !sync_always {
        println!(
            "             (this nats-server cannot fsync each event: it predates `sync_interval: always`;\n              \
             an OS crash may lose the last events it acknowledged — see README, Durability)"
        );
    }
    if !sync_always {
        println!(
            "             (this nats-server cannot fsync each event: it predates `sync_interval: always`;\n              \
             an OS crash may lose the last events it acknowledged — see README, Durability)"
        );
    }
    println!("  artifacts  {artifacts}");
    println!("  scheduler  {server}");
    if let (Some(s), Some(a)) = (scheduler_metrics, agent_metrics) {
        println!("  metrics    http://{s}/metrics (scheduler), http://{a}/metrics (agent)");
    }
    if let Some(secure) = &secure {
        println!(
            "  secured    TLS (CA {}), API tokens (admin token in {}), etcd auth, NATS permissions",
            secure.pki.ca().display(),
            secure.admin_token().display()
        );
    }
    println!("Use it from another shell:");
    for line in env.lines() {
        println!("  export {line}");
    }
    println!(
        "(also written to {}). Ctrl-C stops everything.",
        env_file.display()
    );

    let any_scheduler = futures::future::select_all(schedulers.iter_mut());
    let outcome: Result<()> = tokio::select! {
        _ = drover_telemetry::shutdown_signal() => Ok(()),
        (r, _, _) = any_scheduler => Err(anyhow::anyhow!("scheduler stopped: {}", joined(r))),
        r = &mut agent => Err(anyhow::anyhow!("agent stopped: {}", joined(r))),
    };
    eprintln!("stopping the dev cluster...");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(15);
    let _ = tokio::time::timeout(grace, async {
        for scheduler in schedulers.iter_mut().filter(|s| !s.is_finished()) {
            let _ = scheduler.await;
        }
        if !agent.is_finished() {
            let _ = (&mut agent).await;
        }
    })
    .await;
    let _ = std::fs::remove_file(&env_file);
    let _ = nats.stop().await;
    let _ = etcd.stop().await;
    outcome
}

fn joined<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "exited".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
