//! `drover trigger ...`: pipelines that run on a schedule, when new objects
//! land under a prefix, on an Alertmanager alert, or when CI fires them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use drover_api::pb;
use drover_api::pb::trigger_settings::Source;
use drover_api::pb::triggers_client::TriggersClient;

use crate::connect::{self, ConnectArgs, Svc};
use crate::output::{duration, timestamp};
use crate::{code, parse_params, queue, Format};

#[derive(Subcommand)]
pub enum TriggerCommand {
    /// Register a pipeline with what starts it: exactly one of --cron,
    /// --on-new-objects and --on-alert.
    #[command(group(ArgGroup::new("source").required(true).args(["cron", "on_new_objects", "on_alert"])))]
    Create {
        name: String,
        #[command(flatten)]
        pipeline: Pipeline,
        /// A cron schedule: 5 fields (minute first) or 6 (second first).
        #[arg(long, value_name = "EXPR")]
        cron: Option<String>,
        /// The schedule's IANA timezone (default UTC).
        #[arg(long, value_name = "TZ", requires = "cron")]
        timezone: Option<String>,
        /// Times due while no scheduler ran: none, the latest, or all (at most 100).
        #[arg(long, value_enum, default_value_t = CatchUpArg::Last)]
        catch_up: CatchUpArg,
        /// A run for each batch of new objects under this prefix
        /// (file:///dir/ or s3://bucket/prefix/); objects there now do not fire.
        #[arg(long, value_name = "URL")]
        on_new_objects: Option<String>,
        /// Only keys (relative to the prefix) matching this glob.
        #[arg(long, value_name = "GLOB", requires = "on_new_objects")]
        glob: Option<String>,
        /// Wait this long after a new object for more before firing.
        #[arg(long, value_name = "DURATION", value_parser = drover_api::duration::parse_ms, requires = "on_new_objects")]
        batch_window: Option<u64>,
        /// Most objects per run (1 to 100); more start more runs.
        #[arg(long, value_name = "N", requires = "on_new_objects")]
        max_per_run: Option<u32>,
        /// How often the prefix is listed (default 30s).
        #[arg(long, value_name = "DURATION", value_parser = drover_api::duration::parse_ms, requires = "on_new_objects")]
        poll_interval: Option<u64>,
        /// Fired by Alertmanager's webhook at /hooks/alertmanager/NAME.
        #[arg(long)]
        on_alert: bool,
        /// What a firing does while the previous run still runs.
        #[arg(long, value_enum, default_value_t = ConcurrencyArg::Allow)]
        concurrency: ConcurrencyArg,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Replace a trigger's pipeline (and its params, queue or priority when given).
    Update {
        name: String,
        #[command(flatten)]
        pipeline: Pipeline,
    },
    /// Triggers with their source and next or last firing.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// A trigger: next firing, last firings with their runs, objects seen.
    Show {
        name: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Stop firing (schedules, objects and alerts); `fire` still works.
    Pause {
        name: String,
    },
    /// Fire again; times that passed while paused are not caught up.
    Resume {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Fire now (CI): prints the run id; --watch follows it and exits 0
    /// only if it succeeds.
    Fire {
        name: String,
        /// Over the trigger's params for this run (repeatable).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

#[derive(Args)]
pub struct Pipeline {
    /// The pipeline spec (YAML); `code:` is packed and uploaded as by submit.
    #[arg(long, value_name = "FILE")]
    pipeline: PathBuf,
    /// A declared param for every run (repeatable).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[arg(long, value_name = "QUEUE", value_parser = queue::queue_name)]
    queue: Option<String>,
    #[arg(long, value_name = "N", value_parser = queue::priority, allow_negative_numbers = true)]
    priority: Option<i64>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CatchUpArg {
    None,
    Last,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConcurrencyArg {
    Allow,
    Forbid,
    Replace,
}

/// The pipeline file read, its code snapshot uploaded.
struct Loaded {
    spec_yaml: String,
    params: std::collections::BTreeMap<String, String>,
    code_sha256: String,
}

async fn load(conn: &ConnectArgs, p: &Pipeline) -> Result<Loaded> {
    let spec_yaml = std::fs::read_to_string(&p.pipeline)
        .with_context(|| format!("reading {}", p.pipeline.display()))?;
    let params = parse_params(&p.params)?;
    let code_sha256 = upload_code(conn, &p.pipeline, &spec_yaml, &params).await?;
    Ok(Loaded {
        spec_yaml,
        params,
        code_sha256,
    })
}

/// A spec that does not parse here is left for the scheduler to refuse.
async fn upload_code(
    conn: &ConnectArgs,
    file: &Path,
    yaml: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    let Ok(spec) = drover_api::spec::parse_spec(yaml, params) else {
        return Ok(String::new());
    };
    match code::pack(file, &spec, u64::MAX)? {
        Some(packed) => code::upload(&mut connect::scheduler(conn).await?, packed).await,
        None => Ok(String::new()),
    }
}

async fn client(conn: &ConnectArgs) -> Result<TriggersClient<Svc>> {
    let (channel, auth) = connect::service(conn).await?;
    Ok(TriggersClient::with_interceptor(channel, auth))
}

pub async fn run(conn: &ConnectArgs, cmd: TriggerCommand) -> Result<ExitCode> {
    match cmd {
        TriggerCommand::Create {
            name,
            pipeline,
            cron,
            timezone,
            catch_up,
            on_new_objects,
            glob,
            batch_window,
            max_per_run,
            poll_interval,
            on_alert,
            concurrency,
            output,
        } => {
            let loaded = load(conn, &pipeline).await?;
            let source = match (cron, on_new_objects, on_alert) {
                (Some(expression), _, _) => Source::Cron(pb::CronSource {
                    expression,
                    timezone: timezone.unwrap_or_default(),
                    catch_up: match catch_up {
                        CatchUpArg::None => pb::CatchUp::None,
                        CatchUpArg::Last => pb::CatchUp::Last,
                        CatchUpArg::All => pb::CatchUp::All,
                    } as i32,
                }),
                (None, Some(url), _) => Source::Objects(pb::ObjectsSource {
                    url,
                    glob: glob.unwrap_or_default(),
                    batch_window_ms: batch_window.unwrap_or(0),
                    max_per_run: max_per_run.unwrap_or(0),
                    poll_interval_ms: poll_interval.unwrap_or(0),
                }),
                (None, None, _) => Source::Alert(pb::AlertSource {}),
            };
            let detail = client(conn)
                .await?
                .create_trigger(pb::TriggerSettings {
                    name,
                    spec_yaml: loaded.spec_yaml,
                    params: loaded.params,
                    queue: pipeline.queue.unwrap_or_default(),
                    priority: pipeline.priority,
                    code_sha256: loaded.code_sha256,
                    concurrency: match concurrency {
                        ConcurrencyArg::Allow => pb::Concurrency::Allow,
                        ConcurrencyArg::Forbid => pb::Concurrency::Forbid,
                        ConcurrencyArg::Replace => pb::Concurrency::Replace,
                    } as i32,
                    source: Some(source),
                })
                .await?
                .into_inner();
            print_detail(&detail, output)?;
        }
        TriggerCommand::Update { name, pipeline } => {
            let loaded = load(conn, &pipeline).await?;
            let detail = client(conn)
                .await?
                .update_trigger(pb::UpdateTriggerRequest {
                    name,
                    spec_yaml: loaded.spec_yaml,
                    replace_params: !pipeline.params.is_empty(),
                    params: loaded.params,
                    queue: pipeline.queue.unwrap_or_default(),
                    priority: pipeline.priority,
                    code_sha256: loaded.code_sha256,
                })
                .await?
                .into_inner();
            print_detail(&detail, Format::Table)?;
        }
        TriggerCommand::List { output } => {
            let triggers = client(conn)
                .await?
                .list_triggers(pb::ListTriggersRequest {})
                .await?
                .into_inner()
                .triggers;
            match output {
                Format::Table => print!("{}", list_table(&triggers)),
                Format::Json => {
                    let v: Vec<Value> = triggers.iter().map(detail_json).collect();
                    println!("{:#}", Value::Array(v));
                }
            }
        }
        TriggerCommand::Show { name, output } => {
            let detail = client(conn)
                .await?
                .get_trigger(pb::TriggerRef { name })
                .await?
                .into_inner();
            print_detail(&detail, output)?;
        }
        TriggerCommand::Pause { name } => {
            client(conn)
                .await?
                .pause_trigger(pb::TriggerRef { name: name.clone() })
                .await?;
            println!("{name} paused");
        }
        TriggerCommand::Resume { name } => {
            client(conn)
                .await?
                .resume_trigger(pb::TriggerRef { name: name.clone() })
                .await?;
            println!("{name} resumed");
        }
        TriggerCommand::Delete { name } => {
            client(conn)
                .await?
                .delete_trigger(pb::TriggerRef { name: name.clone() })
                .await?;
            println!("{name} deleted");
        }
        TriggerCommand::Fire {
            name,
            params,
            watch,
        } => {
            let firing = client(conn)
                .await?
                .fire_trigger(pb::FireTriggerRequest {
                    name,
                    params: parse_params(&params)?,
                })
                .await?
                .into_inner()
                .firing
                .unwrap_or_default();
            if firing.run_id.is_empty() {
                println!("{}: {}", outcome(firing.outcome()), firing.message);
                // Nothing ran: a CI job waiting for the run must not pass.
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", firing.run_id);
            if watch {
                let mut scheduler = connect::scheduler(conn).await?;
                return crate::follow(conn, &mut scheduler, firing.run_id, Format::Table).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_detail(detail: &pb::TriggerDetail, output: Format) -> Result<()> {
    match output {
        Format::Table => print!("{}", detail_table(detail)),
        Format::Json => println!("{:#}", detail_json(detail)),
    }
    Ok(())
}

fn source_text(settings: &pb::TriggerSettings) -> String {
    match &settings.source {
        Some(Source::Cron(c)) => {
            let tz = if c.timezone.is_empty() {
                "UTC"
            } else {
                &c.timezone
            };
            format!("cron \"{}\" {tz}", c.expression)
        }
        Some(Source::Objects(o)) => {
            let glob = if o.glob.is_empty() {
                String::new()
            } else {
                format!(" {}", o.glob)
            };
            format!("new objects {}{glob}", o.url)
        }
        Some(Source::Alert(_)) => format!("alert /hooks/alertmanager/{}", settings.name),
        None => "-".into(),
    }
}

fn outcome(o: pb::FiringOutcome) -> &'static str {
    match o {
        pb::FiringOutcome::Started => "started",
        pb::FiringOutcome::Skipped => "skipped",
        pb::FiringOutcome::Missed => "missed",
        pb::FiringOutcome::Failed => "failed",
        pb::FiringOutcome::Unspecified => "-",
    }
}

fn list_table(triggers: &[pb::TriggerDetail]) -> String {
    let mut out = String::new();
    if triggers.is_empty() {
        out.push_str("no triggers\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<24} {:<24} SOURCE",
        "NAME", "STATE", "NEXT", "LAST RUN"
    );
    for d in triggers {
        let Some(t) = &d.trigger else { continue };
        let settings = t.settings.clone().unwrap_or_default();
        let state = if t.paused { "paused" } else { "active" };
        let next = if d.next_due_ms > 0 {
            timestamp(d.next_due_ms)
        } else {
            "-".into()
        };
        let last = if t.last_run_id.is_empty() {
            "-"
        } else {
            &t.last_run_id
        };
        let _ = writeln!(
            out,
            "{:<24} {state:<8} {next:<24} {last:<24} {}",
            settings.name,
            source_text(&settings)
        );
    }
    out
}

fn detail_table(d: &pb::TriggerDetail) -> String {
    let mut out = String::new();
    let Some(t) = &d.trigger else { return out };
    let s = t.settings.clone().unwrap_or_default();
    let _ = writeln!(out, "trigger      {}", s.name);
    let _ = writeln!(out, "source       {}", source_text(&s));
    let _ = writeln!(
        out,
        "state        {}",
        if t.paused { "paused" } else { "active" }
    );
    let concurrency = match s.concurrency() {
        pb::Concurrency::Forbid => "forbid",
        pb::Concurrency::Replace => "replace",
        _ => "allow",
    };
    let _ = writeln!(out, "concurrency  {concurrency}");
    if let Some(Source::Cron(c)) = &s.source {
        let catch_up = match c.catch_up() {
            pb::CatchUp::None => "none",
            pb::CatchUp::All => "all",
            _ => "last",
        };
        let _ = writeln!(out, "catch-up     {catch_up}");
        let next = if d.next_due_ms > 0 {
            timestamp(d.next_due_ms)
        } else {
            "-".into()
        };
        let _ = writeln!(out, "next         {next}");
    }
    if let Some(Source::Objects(o)) = &s.source {
        let _ = writeln!(out, "objects seen {}", t.objects_seen);
        let _ = writeln!(
            out,
            "batching     window {}, at most {} per run, listed every {}",
            duration(o.batch_window_ms),
            o.max_per_run,
            duration(o.poll_interval_ms)
        );
    }
    if t.firings.is_empty() {
        out.push_str("firings      none yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<5} {:<24} {:<9} {:<8} {:<24} MESSAGE",
        "#", "DUE", "CAUSE", "OUTCOME", "RUN"
    );
    for f in t.firings.iter().rev() {
        let run = if f.run_id.is_empty() { "-" } else { &f.run_id };
        let message = if f.objects > 0 {
            format!("{} objects {}", f.objects, f.message)
        } else {
            f.message.clone()
        };
        let _ = writeln!(
            out,
            "{:<5} {:<24} {:<9} {:<8} {run:<24} {}",
            f.number,
            timestamp(f.due_ms),
            f.cause,
            outcome(f.outcome()),
            message.trim()
        );
    }
    out
}

fn detail_json(d: &pb::TriggerDetail) -> Value {
    let Some(t) = &d.trigger else {
        return Value::Null;
    };
    let s = t.settings.clone().unwrap_or_default();
    let firings: Vec<Value> = t
        .firings
        .iter()
        .map(|f| {
            json!({
                "number": f.number,
                "cause": f.cause,
                "outcome": outcome(f.outcome()),
                "due_ms": f.due_ms,
                "fired_at_ms": f.fired_at_ms,
                "run_id": f.run_id,
                "objects": f.objects,
                "message": f.message,
            })
        })
        .collect();
    json!({
        "name": s.name,
        "source": source_text(&s),
        "paused": t.paused,
        "next_due_ms": d.next_due_ms,
        "last_run_id": t.last_run_id,
        "objects_seen": t.objects_seen,
        "params": s.params,
        "queue": s.queue,
        "firings": firings,
    })
}
