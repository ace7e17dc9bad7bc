//! `cargo run --release -p drover-bench -- [--quick] [--scenario ...] [--json FILE]`
//!
//! Builds the scheduler and agent binaries (same profile), then runs each
//! scenario on its own fresh cluster and prints a table and one JSON object
//! per scenario. See `benches/README.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use drover_bench::cluster::Bins;
use drover_bench::floors::{self, FloorSizes};
use drover_bench::report::{self, Outcome};
use drover_bench::scenarios::{self, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Floors,
    Hop,
    Real,
    Sim,
    /// A `for_each` over a list, on simulated agents.
    Map,
    /// A run served wholly from the step cache, on simulated agents.
    Cached,
    /// Real throughput with every task keyed and its cache entry written.
    RealKeyed,
    Scale,
    Fleet,
    /// Throughput with OTLP trace export off and on.
    Tracing,
    /// Real throughput and hop latency with TLS, tokens, NATS permissions
    /// and etcd auth on and off.
    Security,
    /// The leader killed (-9) mid-run, several times: until the next task
    /// is assigned by the new leader.
    Failover,
    /// etcd commits with and without the leader's fence compare.
    Fence,
    /// A run while the scheduler, nats-server, etcd and agents are killed
    /// and restarted at seeded random moments: tasks lost, tasks done twice.
    Chaos,
}

/// drover-bench: end-to-end latency and throughput of Drover, next to the
/// etcd, NATS and process-spawn floors of the same machine.
#[derive(Parser, Debug)]
#[command(name = "drover-bench")]
struct Cli {
    /// Small sizes (a minute or two): for checking the harness, not for numbers.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma-separated (default: all). The floors are
    /// always measured: the ratios need them.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Also append the JSON objects (one per line) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where drover-scheduler and drover-agent are (default: next to this
    /// binary, built first with cargo in the same profile).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Longest a scenario may take to finish its tasks, in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Tasks of the chaos run (default 2000; quick 300).
    #[arg(long)]
    chaos_tasks: Option<usize>,
    /// Seed of the chaos run's faults (the same seed, the same faults at the same moments).
    #[arg(long, default_value_t = 1)]
    chaos_seed: u64,
    /// Tasks in the hop-latency chain (default 200; quick 50).
    #[arg(long)]
    hop_tasks: Option<usize>,
    /// Tasks for real throughput (default 10000; quick 1000).
    #[arg(long)]
    real_tasks: Option<usize>,
    /// Task counts for scheduler throughput, comma-separated (default 10000,100000; quick 2000).
    #[arg(long, value_delimiter = ',')]
    sim_tasks: Vec<usize>,
    /// Tasks in the fan-out/fan-in DAG (default 100000; quick 10000).
    #[arg(long)]
    scale_tasks: Option<usize>,
    /// Width of each fan-out in the DAG.
    #[arg(long, default_value_t = 1000)]
    fan_width: usize,
    /// Simulated agents heartbeating in the fleet scenario (default 5000; quick 1000).
    #[arg(long)]
    fleet_agents: Option<usize>,
    /// Seconds the fleet scenario measures (default 30; quick 10).
    #[arg(long)]
    fleet_seconds: Option<u64>,
    /// Tasks per run of the tracing overhead on simulated agents (default 10000; quick 2000).
    #[arg(long)]
    tracing_sim_tasks: Option<usize>,
    /// Tasks per run of the tracing overhead on real agents (default 2000; quick 500).
    #[arg(long)]
    tracing_real_tasks: Option<usize>,
    /// Real agents for real throughput.
    #[arg(long, default_value_t = 2)]
    real_agents: usize,
    /// CPUs each real agent offers (`--cpus`); each no-op task asks 250m.
    #[arg(long, default_value_t = 2)]
    real_cpus: u32,
    /// Simulated agents for scheduler throughput and the DAG.
    #[arg(long, default_value_t = 20)]
    sim_agents: usize,
    /// CPUs each of those offers.
    #[arg(long, default_value_t = 64)]
    sim_cpus: u32,
    /// How nats-server syncs JetStream to disk for the hop and real
    /// scenarios, comma-separated to run them once for each: `interval`
    /// (its default) or `always` (fsync before each ack; needs a
    /// nats-server that knows `sync_interval: always`, newer than 2.9).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "interval")]
    nats_sync: Vec<NatsSync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NatsSync {
    Interval,
    Always,
}

fn pick<T>(set: Option<T>, full: T, quick: T, q: bool) -> T {
    set.unwrap_or(if q { quick } else { full })
}

/// Builds the binaries under test in this binary's profile, unless a
/// directory was given.
fn binaries(cli: &Cli) -> Result<Bins> {
    if let Some(dir) = &cli.bin_dir {
        return Bins::in_dir(dir);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for this binary")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = std::process::Command::new(cargo);
    // `cargo run` hands this binary its package's CARGO_PKG_* and friends;
    // build scripts that track those (ring's) would otherwise be rebuilt on
    // every alternation between this build and a plain one.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.args(["build", "--manifest-path", manifest]);
    cmd.args(["-p", "drover-scheduler", "-p", "drover-agent"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("building the scheduler and agent: {cmd:?}");
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("building drover-scheduler and drover-agent failed: {status}");
    }
    Bins::in_dir(dir)
}

fn machine() -> Outcome {
    let mut o = Outcome::new("machine", false);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    o.param("date", date.clone())
        .param("cpu", model.clone())
        .param("cores", cores)
        .param("loadavg_at_start", load.trim().to_string())
        .param(
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        );
    o.summary = format!("{date}, {cores} cores ({model}), load {}", load.trim());
    o
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let q = cli.quick;
    let all = cli.scenario.is_empty();
    let wants = |s: Scenario| all || cli.scenario.contains(&s);
    let bins = binaries(&cli)?;
    let settings = Settings {
        bins,
        timeout: Duration::from_secs(pick(cli.timeout, 600, 120, q)),
        real_agents: cli.real_agents,
        real_cpus: cli.real_cpus,
        sim_agents: cli.sim_agents,
        sim_cpus: cli.sim_cpus,
        env: Vec::new(),
        secure: false,
        nats_sync_always: false,
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimised code; use `cargo run --release`");
    }

    let mut outcomes = vec![machine()];
    let show = |o: &Outcome| {
        eprintln!(
            "{}",
            report::table(std::slice::from_ref(o))
                .lines()
                .nth(2)
                .unwrap_or_default()
        )
    };

    drover_bench::cluster::defer_dir_removal();
    eprintln!("measuring floors");
    let concurrency = settings.real_concurrency();
    let f = measure_floors(q, concurrency).await;
    let floors_row = scenarios::floors_outcome(&f, concurrency);
    show(&floors_row);
    outcomes.push(floors_row);
    let floors = f.ok();

    for sync in &cli.nats_sync {
        let always = *sync == NatsSync::Always;
        let settings = Settings {
            nats_sync_always: always,
            ..settings.clone()
        };
        // Rows with fsync on are told apart by name and parameter.
        let named = |mut o: drover_bench::report::Outcome| {
            if always {
                o.scenario.push_str(" sync-always");
            }
            o.param("nats_sync", if always { "always" } else { "interval" });
            o
        };
        if wants(Scenario::Hop) {
            let n = pick(cli.hop_tasks, 200, 50, q);
            eprintln!("hop latency: chain of {n} (nats sync {sync:?})");
            outcomes.push(named(scenarios::hop(&settings, n, floors.as_ref()).await));
            show(outcomes.last().unwrap_or(&machine()));
        }
        if wants(Scenario::Real) {
            let n = pick(cli.real_tasks, 10_000, 1_000, q);
            eprintln!("throughput on real agents: {n} tasks (nats sync {sync:?})");
            let o = scenarios::real_throughput(&settings, n, floors.as_ref()).await;
            outcomes.push(named(o));
            show(outcomes.last().unwrap_or(&machine()));
        }
    }
    if wants(Scenario::RealKeyed) {
        let n = pick(cli.real_tasks, 10_000, 1_000, q);
        eprintln!("throughput on real agents, every task keyed: {n} tasks");
        outcomes.push(scenarios::real_throughput_keyed(&settings, n, floors.as_ref()).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Sim) {
        let sizes = if cli.sim_tasks.is_empty() {
            if q {
                vec![2_000]
            } else {
                vec![10_000, 100_000]
            }
        } else {
            cli.sim_tasks.clone()
        };
        for n in sizes {
            eprintln!("scheduler throughput, SIMULATED agents: {n} tasks");
            outcomes.push(scenarios::sim_throughput(&settings, n).await);
            show(outcomes.last().unwrap_or(&machine()));
        }
    }
    if wants(Scenario::Map) {
        // One size: 10,000 items, as the static run it is compared with.
        let n = cli
            .sim_tasks
            .first()
            .copied()
            .unwrap_or(if q { 2_000 } else { 10_000 });
        eprintln!("for_each map, SIMULATED agents: {n} items");
        outcomes.push(scenarios::map_throughput(&settings, n).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Cached) {
        let n = cli
            .sim_tasks
            .first()
            .copied()
            .unwrap_or(if q { 2_000 } else { 10_000 });
        eprintln!("fully cached run, SIMULATED agents: {n} tasks");
        outcomes.push(scenarios::cached_throughput(&settings, n).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Scale) {
        let n = pick(cli.scale_tasks, 100_000, 10_000, q);
        eprintln!("DAG of about {n} tasks, SIMULATED agents");
        outcomes.push(scenarios::scale(&settings, n, cli.fan_width).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Fleet) {
        let n = pick(cli.fleet_agents, 5_000, 1_000, q);
        let secs = pick(cli.fleet_seconds, 30, 10, q);
        eprintln!("fleet: {n} SIMULATED agents for {secs} s");
        outcomes.push(scenarios::fleet(&settings, n, Duration::from_secs(secs)).await);
        show(outcomes.last().unwrap_or(&machine()));
    }

    if wants(Scenario::Security) {
        let real = pick(cli.real_tasks, 10_000, 1_000, q);
        let hop = pick(cli.hop_tasks, 200, 50, q);
        eprintln!(
            "security overhead: real {real} tasks and hop {hop} tasks, secured and not, 2 rounds"
        );
        outcomes.push(scenarios::security_overhead(&settings, real, hop, 2).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Failover) {
        let kills = if q { 2 } else { 5 };
        eprintln!("failover: the leader of 3 schedulers killed {kills} times mid-run");
        outcomes.push(drover_bench::failover::failover(&settings, kills).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Chaos) {
        let n = pick(cli.chaos_tasks, 2_000, 300, q);
        eprintln!(
            "chaos: {n} tasks without faults, then with seeded kills (seed {})",
            cli.chaos_seed
        );
        outcomes.push(drover_bench::chaos::chaos(&settings, n, cli.chaos_seed).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Fence) {
        eprintln!("fence cost: etcd commits with and without the leader's fence, 4 rounds");
        outcomes.push(drover_bench::failover::fence_cost(4).await);
        show(outcomes.last().unwrap_or(&machine()));
    }
    if wants(Scenario::Tracing) {
        let sim = pick(cli.tracing_sim_tasks, 10_000, 2_000, q);
        let real = pick(cli.tracing_real_tasks, 2_000, 500, q);
        eprintln!("tracing overhead: {sim} tasks on SIMULATED agents, export off and on");
        let o = scenarios::tracing_overhead(&settings, scenarios::Path::Simulated, sim, 2).await;
        show(&o);
        outcomes.push(o);
        eprintln!("tracing overhead: {real} tasks on real agents, export off and on");
        // Four rounds: a real run's throughput moves more from run to run
        // (file-system state) than the overhead being measured.
        let o = scenarios::tracing_overhead(&settings, scenarios::Path::Real, real, 4).await;
        show(&o);
        outcomes.push(o);
    }

    drover_bench::cluster::remove_scenario_dirs();
    println!();
    print!("{}", report::table(&outcomes));
    if q {
        println!("(--quick: reduced sizes; targets are stated for the full sizes)");
    }
    println!();
    let lines: Vec<String> = outcomes.iter().map(Outcome::json).collect();
    for l in &lines {
        println!("{l}");
    }
    if let Some(path) = &cli.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        for l in &lines {
            writeln!(f, "{l}")?;
        }
    }
    Ok(())
}

async fn measure_floors(q: bool, concurrency: usize) -> Result<floors::Floors> {
    let etcd = drover_devcluster::Server::etcd(None).await?;
    let nats = drover_devcluster::Server::nats(None).await?;
    let sizes = if q {
        FloorSizes {
            etcd_puts: 200,
            etcd_txn_keys: 5_000,
            nats_requests: 1_000,
            js_publishes: 1_000,
            spawns: 500,
        }
    } else {
        FloorSizes {
            etcd_puts: 1_000,
            etcd_txn_keys: 50_000,
            nats_requests: 5_000,
            js_publishes: 5_000,
            spawns: 2_000,
        }
    };
    floors::measure(&etcd.url, &nats.url, sizes, concurrency).await
}
