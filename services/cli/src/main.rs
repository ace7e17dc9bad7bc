//! `drover`: submit, watch, inspect and cancel pipeline runs over gRPC,
//! administer priority queues, and `drover dev`, a whole local cluster in one
//! command.

mod cache;
mod code;
mod connect;
mod dev;
mod dev_secure;
mod enroll;
mod logs;
mod output;
mod queue;
mod status;
mod token;
mod trigger;
mod waterfall;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget};
use tracing::Instrument;

use drover_api::pb;

use connect::Client;
use output::progress;
use queue::{QueueCommand, RunCommand};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Drover: ML pipelines on your GPU machines"
)]
struct Cli {
    #[command(flatten)]
    conn: connect::ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Default, ValueEnum)]
enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a pipeline spec (YAML); prints the run id.
    Submit {
        file: PathBuf,
        /// Override a declared param (repeatable).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Follow the run; exit 0 only if it succeeds.
        #[arg(long, short = 'w')]
        watch: bool,
        /// Queue to wait in (overrides the spec's `queue:`).
        #[arg(long, value_name = "QUEUE", value_parser = queue::queue_name)]
        queue: Option<String>,
        /// Order inside the queue, 0 to 1000000, higher first (overrides the
        /// spec's `priority:`).
        #[arg(long, value_name = "N", value_parser = queue::priority, allow_negative_numbers = true)]
        priority: Option<i64>,
        /// Validate here and print the expanded DAG (matrix instances,
        /// resolved commands) without contacting a scheduler.
        #[arg(long)]
        dry_run: bool,
        /// Run every task: take no result from the step cache (the run's
        /// results are still recorded for later runs).
        #[arg(long)]
        no_cache: bool,
    },
    /// Print the CLI's version and, when one answers, the scheduler's.
    Version,
    /// Print the JSON Schema of the pipeline spec (for editors: see README).
    Schema,
    /// Print a shell completion script (see README for where it goes).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show a run and its tasks.
    Get {
        run: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// List runs, newest first.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// The run as a waterfall: every task attempt on one timeline, queue wait
    /// and run time apart, the critical path marked (from the scheduler's
    /// records; no tracing backend needed). `drover get` shows the trace id
    /// to open the same run in Jaeger or Tempo.
    Trace {
        run: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
        /// Columns of the timeline.
        #[arg(long, default_value_t = 60)]
        width: usize,
    },
    /// Follow a run until it ends; exit 0 only if it succeeds.
    Watch {
        run: String,
        /// JSON: one snapshot of the run per line.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Cancel a run: waiting tasks never start, running ones are stopped.
    Cancel { run: String },
    /// Run a Failed or Cancelled run again from where it failed: tasks that
    /// did not succeed get new attempts; succeeded ones keep their outputs.
    Retry {
        run: String,
        /// Also run this succeeded task again, and everything downstream of
        /// it (repeatable; a task with a matrix names all its instances).
        #[arg(long = "task", value_name = "NAME")]
        tasks: Vec<String>,
        /// Then follow the run until it ends, as `watch` does.
        #[arg(long)]
        watch: bool,
    },
    /// Print a task's captured stdout/stderr; `-f` follows it live.
    Logs {
        run: String,
        /// The task (with `-f`, leave it out to follow every task of the
        /// run, each line prefixed with its task).
        #[arg(required_unless_present = "follow")]
        task: Option<String>,
        /// Attempt number (default: the latest with a log).
        #[arg(long, default_value_t = 0, conflicts_with = "follow")]
        attempt: u32,
        /// Follow the log while the task runs, and its later attempts, until
        /// the task (or, without TASK, the run) ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The tree behind an artifact: the attempt that produced it (command,
    /// image and digest, code, params, matrix values, agent, GPUs, times)
    /// and, recursively, the producers of its inputs.
    Lineage {
        /// The run (leave out with --sha256).
        #[arg(required_unless_present = "sha256")]
        run: Option<String>,
        /// The producing task; a task with a matrix or for_each as written
        /// stands for all its instances.
        #[arg(required_unless_present = "sha256")]
        task: Option<String>,
        /// One of the task's outputs (default: all of them).
        #[arg(value_name = "OUTPUT")]
        artifact: Option<String>,
        /// Instead of RUN TASK: the output with this sha256 (the newest
        /// run's; scans stored runs, newest first).
        #[arg(long, value_name = "DIGEST", conflicts_with_all = ["run", "task", "artifact"])]
        sha256: Option<String>,
        /// Levels of inputs to follow (0: the scheduler's default, 32).
        #[arg(long, default_value_t = 0)]
        depth: u32,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Change a run after submitting it.
    #[command(subcommand)]
    Run(RunCommand),
    /// Administer priority queues: quotas, weights, preemption, pause.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Inspect and operate the fleet of agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The step cache: list entries, forget them.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Pipelines that start on a cron schedule, on new objects under a
    /// prefix, on an Alertmanager alert, or when fired (CI).
    #[command(subcommand)]
    Trigger(trigger::TriggerCommand),
    /// API tokens: create (shown once), list, revoke (admin token needed).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The schedulers sharing one etcd prefix: which leads, and since when
    /// (any of them answers, standbys too).
    Status {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Start a local cluster: etcd, nats-server, the scheduler and one agent.
    Dev(dev::DevArgs),
    /// Print nats-server's `authorization` block for the scheduler and every
    /// enrolled agent (admin).
    NatsConfig,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Agents with state, capacity, allocation and their GPUs.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Give an agent no new work; what runs there finishes.
    Drain { id: String },
    /// Let a drained agent take new work again.
    Undrain { id: String },
    /// Give an agent its own NATS identity (admin): prints its credentials
    /// file and its nats-server entry, or writes them under --out DIR.
    Enroll {
        id: String,
        /// Write `<ID>.nkey` (mode 0600) and `<ID>.nats-user.conf` here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace the identity of an agent enrolled before.
        #[arg(long)]
        replace: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = drover_telemetry::init(
        "drover",
        if matches!(cli.command, Command::Dev(_)) {
            "info,etcd_client=warn"
        } else {
            "warn"
        },
    );
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// A gRPC status reads as its message with the code in a word or two.
fn describe(e: &anyhow::Error) -> String {
    use tonic::Code;
    let Some(s) = e.downcast_ref::<tonic::Status>() else {
        return causes(e);
    };
    let code = match s.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted, retry",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        _ => "internal error",
    };
    format!("{} ({code})", s.message())
}

/// `1` of `1.2.3`: what must match between CLI and scheduler.
fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// The error and its causes, outermost first, each said once: transport
/// errors repeat their cause in their own message, or wrap an error that
/// says the same (`tcp connect error: tcp connect error: …`).
fn causes(e: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

pub(crate) fn parse_params(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--param `{p}`: expected KEY=VALUE"))
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn succeeded(run: &pb::Run) -> ExitCode {
    if run.state() == pb::RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let conn = cli.conn;
    let server = conn.server.clone();
    match cli.command {
        Command::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Token(cmd) => {
            token::run(connect::tokens(&conn).await?, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(cmd) => {
            let mut client = connect::agents(&conn).await?;
            match cmd {
                AgentCommand::List { output } => {
                    let agents = client
                        .list_agents(pb::ListAgentsRequest {})
                        .await?
                        .into_inner()
                        .agents;
                    match output {
                        Format::Table => print!("{}", output::agents_table(&agents, now_ms())),
                        Format::Json => {
                            let v: Vec<_> = agents.iter().map(output::agent_json).collect();
                            println!("{:#}", serde_json::Value::Array(v));
                        }
                    }
                }
                AgentCommand::Drain { id } => {
                    let a = client
                        .drain_agent(pb::DrainAgentRequest { agent_id: id })
                        .await?
                        .into_inner();
                    println!("{} {}", a.id, output::agent_state(a.state()));
                }
                AgentCommand::Undrain { id } => {
                    let a = client
                        .undrain_agent(pb::DrainAgentRequest { agent_id: id })
                        .await?
                        .into_inner();
                    println!("{} {}", a.id, output::agent_state(a.state()));
                }
                AgentCommand::Enroll { id, out, replace } => {
                    enroll::enroll(&mut client, id, replace, out).await?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { output } => {
            status::run(&mut connect::cluster(&conn).await?, output).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::NatsConfig => {
            enroll::nats_config(&mut connect::agents(&conn).await?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(cmd) => {
            cmd.check()?;
            let client = connect::queues(&conn).await?;
            queue::run_queue(client, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(cmd) => {
            cache::run(connect::scheduler(&conn).await?, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger(cmd) => trigger::run(&conn, cmd).await,
        Command::Run(cmd) => {
            queue::run_run(connect::scheduler(&conn).await?, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit {
            file,
            params,
            watch,
            queue,
            priority,
            dry_run,
            no_cache,
        } => {
            let spec_yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let params = parse_params(&params)?;
            if dry_run {
                let mut spec = drover_api::spec::parse_spec(&spec_yaml, &params)
                    .with_context(|| format!("{} is not a valid pipeline", file.display()))?;
                if let Some(queue) = queue {
                    spec.queue = queue;
                }
                spec.priority = priority.unwrap_or(spec.priority);
                // Offline: checked against the scheduler's default limit.
                let packed = code::pack(
                    &file,
                    &spec,
                    drover_scheduler::options::DEFAULT_MAX_CODE_BYTES,
                )?;
                print!("{}", output::dry_run_table(&spec));
                if let Some(packed) = packed {
                    println!("{} (not uploaded)", code::describe(&packed));
                }
                return Ok(ExitCode::SUCCESS);
            }
            // A spec that does not parse here is left for the scheduler to
            // refuse, with the same message; one that does may have `code:`.
            let packed = match drover_api::spec::parse_spec(&spec_yaml, &params) {
                Ok(spec) => code::pack(&file, &spec, u64::MAX)?,
                Err(_) => None,
            };
            let mut client = connect::scheduler(&conn).await?;
            let code_sha256 = match packed {
                Some(packed) => code::upload(&mut client, packed).await?,
                None => String::new(),
            };
            let span = tracing::info_span!("drover submit", file = %file.display());
            let id = client
                .submit_run(pb::SubmitRunRequest {
                    spec_yaml,
                    params,
                    queue: queue.unwrap_or_default(),
                    priority,
                    code_sha256,
                    no_cache,
                })
                .instrument(span)
                .await?
                .into_inner()
                .run_id;
            println!("{id}");
            if watch {
                return follow(&conn, &mut client, id, Format::Table).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage {
            run,
            task,
            artifact,
            sha256,
            depth,
            output,
        } => {
            let lineage = connect::scheduler(&conn)
                .await?
                .get_lineage(pb::GetLineageRequest {
                    run_id: run.unwrap_or_default(),
                    task: task.unwrap_or_default(),
                    output: artifact.unwrap_or_default(),
                    sha256: sha256.unwrap_or_default(),
                    max_depth: depth,
                })
                .await?
                .into_inner();
            match output {
                Format::Table => print!("{}", output::lineage_table(&lineage)),
                Format::Json => println!("{:#}", output::lineage_json(&lineage)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            let ours = drover_api::version();
            println!("drover {} ({})", ours.version, ours.commit);
            let theirs = match connect::scheduler(&conn).await {
                Ok(mut client) => client.get_version(pb::GetVersionRequest {}).await,
                Err(e) => {
                    eprintln!("scheduler: {}", causes(&e));
                    return Ok(ExitCode::SUCCESS);
                }
            };
            match theirs {
                Ok(v) => {
                    let v = v.into_inner();
                    println!("scheduler {} ({}) at {server}", v.version, v.commit);
                    if major(&v.version) != major(&ours.version) {
                        eprintln!(
                            "warning: the scheduler's major version differs from this CLI's ({} vs {})",
                            v.version, ours.version
                        );
                    }
                }
                Err(status) => eprintln!("scheduler at {server}: {}", status.message()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "drover", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            let schema = format!("{:#}\n", drover_api::spec::json_schema());
            // A reader that stops early (`| head`) is not an error.
            match std::io::stdout().write_all(schema.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Get { run, output } => {
            let mut client = connect::scheduler(&conn).await?;
            let r = client
                .get_run(pb::GetRunRequest { run_id: run })
                .await?
                .into_inner();
            match output {
                Format::Table => print!("{}", output::run_table(&r, now_ms())),
                Format::Json => println!("{:#}", output::run_json(&r)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { output } => {
            let mut client = connect::scheduler(&conn).await?;
            let runs = client
                .list_runs(pb::ListRunsRequest {})
                .await?
                .into_inner()
                .runs;
            match output {
                Format::Table => print!("{}", output::list_table(&runs, now_ms())),
                Format::Json => {
                    let v: Vec<_> = runs.iter().map(output::summary_json).collect();
                    println!("{:#}", serde_json::Value::Array(v));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { run, output, width } => {
            let mut client = connect::scheduler(&conn).await?;
            let r = client
                .get_run(pb::GetRunRequest { run_id: run })
                .await?
                .into_inner();
            let w = waterfall::build(&r, now_ms());
            match output {
                Format::Table => print!("{}", waterfall::render(&w, width)),
                Format::Json => println!("{:#}", waterfall::to_json(&w)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { run, output } => {
            let mut client = connect::scheduler(&conn).await?;
            follow(&conn, &mut client, run, output).await
        }
        Command::Cancel { run } => {
            let mut client = connect::scheduler(&conn).await?;
            let r = client
                .cancel_run(pb::CancelRunRequest { run_id: run })
                .await?
                .into_inner();
            println!("{} {}", r.id, output::run_state(r.state()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { run, tasks, watch } => {
            let mut client = connect::scheduler(&conn).await?;
            let r = client
                .retry_run(pb::RetryRunRequest { run_id: run, tasks })
                .await?
                .into_inner();
            if watch {
                return follow(&conn, &mut client, r.id, Format::default()).await;
            }
            println!("{} {}", r.id, output::run_state(r.state()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run,
            task,
            attempt,
            follow,
        } => {
            let mut client = connect::scheduler(&conn).await?;
            let mut printer = logs::FollowPrinter::new(task.is_none());
            let mut stream = client
                .get_logs(pb::GetLogsRequest {
                    run_id: run,
                    task: task.unwrap_or_default(),
                    attempt,
                    follow,
                })
                .await?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if follow {
                    stdout.write_all(&printer.chunk(&chunk))?;
                    // Read as it comes, also through a pipe.
                    stdout.flush()?;
                } else {
                    stdout.write_all(&chunk.data)?;
                }
            }
            stdout.write_all(&printer.finish())?;
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints task changes until the run ends; the exit code says whether it succeeded.
async fn watch(client: &mut Client, run_id: &str) -> Result<tonic::Streaming<pb::Run>> {
    let request = pb::WatchRunRequest {
        run_id: run_id.to_owned(),
    };
    Ok(client.watch_run(request).await?.into_inner())
}

/// How long `watch` keeps trying to reach a leader again after its stream
/// broke (a failover) before it gives up.
const REWATCH_FOR: Duration = Duration::from_secs(60);

/// Prints task changes until the run ends; the exit code says whether it
/// succeeded. A stream that breaks while the run goes on (its scheduler
/// died or stepped down) is opened again at the leader.
pub(crate) async fn follow(
    conn: &connect::ConnectArgs,
    client: &mut Client,
    run_id: String,
    format: Format,
) -> Result<ExitCode> {
    let mut stream = watch(client, &run_id).await?;
    let mut broken_since: Option<std::time::Instant> = None;
    let mut last: Option<pb::Run> = None;
    // On a terminal: a live summary line, with lines only for what went
    // wrong; on a pipe, a line per change as before.
    let live = matches!(format, Format::Table) && std::io::stdout().is_terminal();
    let bar = live.then(|| {
        // A spinner's style: `{spinner} {msg}`, the message being the summary.
        let bar = ProgressBar::new_spinner();
        bar.set_draw_target(ProgressDrawTarget::stdout());
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    });
    // The summary's elapsed time moves on between snapshots too.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = refresh.tick(), if bar.is_some() => {
                if let (Some(bar), Some(run)) = (&bar, &last) {
                    bar.set_message(progress::summary_line(run, now_ms()));
                }
                continue;
            }
        };
        let ongoing = last.as_ref().is_some_and(|r| !run_ended(r));
        let run = match next {
            Some(Ok(run)) => run,
            None if !ongoing => break,
            Some(Err(status)) if !ongoing || !broken_watch(&status) => return Err(status.into()),
            // Broken, or closed while the run goes on: follow the leader.
            broken => {
                let since = *broken_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > REWATCH_FOR {
                    let why = match broken {
                        Some(Err(status)) => status.message().to_owned(),
                        _ => "the stream ended".to_owned(),
                    };
                    bail!(
                        "lost the watch of {run_id} and found no leader for {REWATCH_FOR:?}: {why}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(c) = connect::scheduler(conn).await {
                    *client = c;
                    if let Ok(s) = watch(client, &run_id).await {
                        stream = s;
                    }
                }
                continue;
            }
        };
        broken_since = None;
        match (format, &bar) {
            (Format::Json, _) => println!("{}", output::run_json(&run)),
            (Format::Table, None) => {
                for (_, line) in output::changes(last.as_ref(), &run) {
                    println!("{}  {line}", output::clock(now_ms()));
                }
            }
            (Format::Table, Some(bar)) => {
                for (state, line) in output::changes(last.as_ref(), &run) {
                    if progress::notable(state) {
                        bar.println(format!("{}  {line}", output::clock(now_ms())));
                    }
                }
                bar.set_message(progress::summary_line(&run, now_ms()));
            }
        }
        last = Some(run);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let run = last.ok_or_else(|| anyhow!("the scheduler closed the watch without a run"))?;
    if let Format::Table = format {
        let took = run.finished_at_ms.saturating_sub(run.created_at_ms);
        let mut line = format!(
            "run {} {} in {}",
            run.id,
            output::run_state(run.state()),
            output::duration(took)
        );
        if !run.message.is_empty() {
            line.push_str(&format!(": {}", run.message));
        }
        println!("{line}");
    }
    Ok(succeeded(&run))
}

fn run_ended(run: &pb::Run) -> bool {
    !matches!(
        run.state(),
        pb::RunState::Running | pb::RunState::Cancelling
    )
}

/// A watch error that a failover explains: the scheduler went away or
/// stepped down (UNAVAILABLE), or the connection broke under the stream.
fn broken_watch(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn params_need_key_and_equals() -> TestResult {
        let ok = parse_params(&["lr=0.1".into(), "x=a=b".into()])?;
        assert_eq!(ok["lr"], "0.1");
        assert_eq!(ok["x"], "a=b");
        let e = parse_params(&["lr".into()]).unwrap_err().to_string();
        assert_eq!(e, "--param `lr`: expected KEY=VALUE");
        assert!(parse_params(&["=v".into()]).is_err());
        Ok(())
    }
}
