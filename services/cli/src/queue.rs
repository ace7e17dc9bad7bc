//! `drover queue ...` and `drover run priority`: priority queues with quotas,
//! and reordering a run inside its queue.
//!
//! Every flag value is checked here, by clap's value parsers, so a typo is
//! refused before anything is sent; the scheduler checks again.

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand, ValueEnum};

use drover_api::pb;
use drover_api::pb::queues_client::QueuesClient;
use drover_api::pb::scheduler_client::SchedulerClient;
use drover_api::spec::{
    is_queue_name, parse_cpu, parse_memory, parse_priority, MAX_PRIORITY, QUEUE_NAME_RULE,
};

use crate::connect::Svc;
use crate::output;
use crate::Format;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Create a queue; unset quotas and max-running mean unlimited.
    Create {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
        #[command(flatten)]
        settings: QueueFlags,
    },
    /// Change only the settings given; `none` removes a quota or max-running.
    Update {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
        #[command(flatten)]
        settings: QueueFlags,
    },
    /// Delete a queue that holds no active runs.
    Delete {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
    },
    /// Admit nothing new from the queue; what runs keeps running.
    Pause {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
    },
    /// Let a paused queue admit work again.
    Resume {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
    },
    /// Queues with their settings, usage against quota and task counts.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// A queue's settings and usage, then its pending tasks in admission order.
    Show {
        /// Queue name.
        #[arg(value_parser = queue_name)]
        name: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum RunCommand {
    /// Reorder a run inside its queue (0 to 1000000, higher first); applies
    /// to its tasks not started yet.
    Priority {
        /// Run id.
        run: String,
        /// New priority.
        #[arg(value_parser = priority, allow_negative_numbers = true)]
        priority: i64,
    },
}

/// The settings `queue create` and `queue update` share. Each is `None` when
/// the flag was not given.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct QueueFlags {
    /// Order among queues, 0 to 1000000: higher is admitted first.
    #[arg(long, value_name = "N", value_parser = priority, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Share among queues of equal priority (at least 1; default 1).
    #[arg(long, value_name = "W", value_parser = weight, allow_negative_numbers = true)]
    pub weight: Option<u32>,
    /// CPU quota in cores: 8, 0.5, 500m; `none` for unlimited.
    #[arg(long, value_name = "CORES", value_parser = cpu_limit, allow_hyphen_values = true)]
    pub quota_cpu: Option<Limit<u32>>,
    /// Memory quota: 64Gi, 512Mi, 1G; `none` for unlimited.
    #[arg(long, value_name = "QUANTITY", value_parser = memory_limit, allow_hyphen_values = true)]
    pub quota_memory: Option<Limit<u64>>,
    /// GPU quota, a whole number; `none` for unlimited.
    #[arg(long, value_name = "N", value_parser = gpu_limit, allow_hyphen_values = true)]
    pub quota_gpus: Option<Limit<u32>>,
    /// Most tasks running at once (at least 1); `none` for unlimited.
    #[arg(long, value_name = "N", value_parser = max_running_limit, allow_hyphen_values = true)]
    pub max_running: Option<Limit<u32>>,
    /// Whether the queue's blocked head may evict lower-priority or borrowed work.
    #[arg(long, value_enum)]
    pub preemption: Option<PreemptionArg>,
    /// Use idle capacity beyond the quota that no other queue asks for.
    #[arg(long, overrides_with = "no_borrow")]
    pub borrow: bool,
    /// Stay within the quota (the default).
    #[arg(long, overrides_with = "borrow")]
    pub no_borrow: bool,
}

/// A quota or limit as given on the command line: a value, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit<T> {
    Unlimited,
    At(T),
}

impl<T> Limit<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Limit::Unlimited => None,
            Limit::At(v) => Some(v),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PreemptionArg {
    /// Wait for capacity; never stop other work.
    Never,
    /// Evict lower-priority or borrowed work when blocked.
    LowerPriority,
}

impl From<PreemptionArg> for pb::Preemption {
    fn from(p: PreemptionArg) -> Self {
        match p {
            PreemptionArg::Never => pb::Preemption::Never,
            PreemptionArg::LowerPriority => pb::Preemption::LowerPriority,
        }
    }
}

impl QueueFlags {
    /// Whether no setting was given.
    pub fn is_empty(&self) -> bool {
        *self == QueueFlags::default()
    }

    /// `queue` with the given settings changed and every other one kept.
    pub fn apply(&self, queue: &mut pb::Queue) {
        if let Some(p) = self.priority {
            queue.priority = p;
        }
        if let Some(w) = self.weight {
            queue.weight = w;
        }
        if self.quota_cpu.is_some() || self.quota_memory.is_some() || self.quota_gpus.is_some() {
            let quota = queue.quota.get_or_insert_with(Default::default);
            if let Some(cpu) = self.quota_cpu {
                quota.cpu_millis = cpu.into_option();
            }
            if let Some(memory) = self.quota_memory {
                quota.memory_bytes = memory.into_option();
            }
            if let Some(gpus) = self.quota_gpus {
                quota.gpus = gpus.into_option();
            }
        }
        if let Some(max) = self.max_running {
            queue.max_running = max.into_option();
        }
        if let Some(p) = self.preemption {
            queue.set_preemption(p.into());
        }
        if self.borrow {
            queue.borrow = true;
        }
        if self.no_borrow {
            queue.borrow = false;
        }
    }
}

impl QueueCommand {
    /// What can be refused before connecting.
    pub fn check(&self) -> Result<()> {
        if let QueueCommand::Update { name, settings } = self {
            if settings.is_empty() {
                bail!("queue update `{name}`: nothing to change (give at least one setting; see --help)");
            }
        }
        Ok(())
    }
}

pub async fn run_queue(mut client: QueuesClient<Svc>, cmd: QueueCommand) -> Result<()> {
    let queue_ref = |name: String| pb::QueueRef { name };
    match cmd {
        QueueCommand::Create { name, settings } => {
            let mut q = pb::Queue {
                name,
                ..Default::default()
            };
            settings.apply(&mut q);
            let q = client.create_queue(q).await?.into_inner();
            print!("{}", output::queue_settings(&q));
        }
        QueueCommand::Update { name, settings } => {
            // Update replaces every setting: start from the stored ones.
            let detail = client
                .show_queue(queue_ref(name.clone()))
                .await?
                .into_inner();
            let mut q = detail
                .status
                .and_then(|s| s.queue)
                .ok_or_else(|| anyhow!("the scheduler sent queue `{name}` without its settings"))?;
            settings.apply(&mut q);
            let q = client.update_queue(q).await?.into_inner();
            print!("{}", output::queue_settings(&q));
        }
        QueueCommand::Delete { name } => {
            client.delete_queue(queue_ref(name.clone())).await?;
            println!("{name} deleted");
        }
        QueueCommand::Pause { name } => {
            let q = client.pause_queue(queue_ref(name)).await?.into_inner();
            println!("{} {}", q.name, output::queue_state(&q));
        }
        QueueCommand::Resume { name } => {
            let q = client.resume_queue(queue_ref(name)).await?.into_inner();
            println!("{} {}", q.name, output::queue_state(&q));
        }
        QueueCommand::List { output } => {
            let queues = client
                .list_queues(pb::ListQueuesRequest {})
                .await?
                .into_inner()
                .queues;
            match output {
                Format::Table => print!("{}", output::queues_table(&queues)),
                Format::Json => {
                    let v: Vec<_> = queues.iter().map(output::queue_status_json).collect();
                    println!("{:#}", serde_json::Value::Array(v));
                }
            }
        }
        QueueCommand::Show { name, output } => {
            let detail = client.show_queue(queue_ref(name)).await?.into_inner();
            match output {
                Format::Table => print!("{}", output::queue_detail_table(&detail)),
                Format::Json => println!("{:#}", output::queue_detail_json(&detail)),
            }
        }
    }
    Ok(())
}

pub async fn run_run(mut client: SchedulerClient<Svc>, cmd: RunCommand) -> Result<()> {
    match cmd {
        RunCommand::Priority { run, priority } => {
            let r = client
                .set_run_priority(pb::SetRunPriorityRequest {
                    run_id: run,
                    priority,
                })
                .await?
                .into_inner();
            println!("{} priority {}", r.id, r.priority);
        }
    }
    Ok(())
}

// --- value parsers: each message names the value; clap adds the flag. -------

pub fn queue_name(s: &str) -> Result<String, String> {
    if is_queue_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("invalid queue name `{s}` ({QUEUE_NAME_RULE})"))
    }
}

pub fn priority(s: &str) -> Result<i64, String> {
    parse_priority(s)
}

/// A whole number of at least 1.
fn positive_count(s: &str, what: &str) -> Result<u32, String> {
    let text = s.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid {what} `{s}` (use a whole number of at least 1)"
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(format!("invalid {what} `{s}` (must be at least 1)")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{what} `{s}` is too large")),
    }
}

fn weight(s: &str) -> Result<u32, String> {
    positive_count(s, "weight")
}

/// `none` (any case) or what `value` accepts.
fn limit<T>(s: &str, value: impl FnOnce(&str) -> Result<T, String>) -> Result<Limit<T>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(Limit::Unlimited)
    } else {
        value(s).map(Limit::At)
    }
}

fn cpu_limit(s: &str) -> Result<Limit<u32>, String> {
    limit(s, parse_cpu)
}

fn memory_limit(s: &str) -> Result<Limit<u64>, String> {
    limit(s, parse_memory)
}

fn gpu_limit(s: &str) -> Result<Limit<u32>, String> {
    limit(s, |s| {
        let text = s.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid count `{s}` (use a whole number, e.g. 0, 1, 2, or none)"
            ));
        }
        text.parse()
            .map_err(|_| format!("count `{s}` is too large"))
    })
}

fn max_running_limit(s: &str) -> Result<Limit<u32>, String> {
    limit(s, |s| {
        if s.trim() == "0" {
            // The scheduler refuses it too.
            return Err("`0` would admit nothing (pause the queue instead)".to_owned());
        }
        positive_count(s, "count")
    })
}

// Keep the documented range and the parser's in step.
const _: () = assert!(MAX_PRIORITY == 1_000_000);

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("drover").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    fn flags(args: &[&str]) -> QueueFlags {
        let mut all = vec!["queue", "update", "q"];
        all.extend(args);
        match parse(&all) {
            Ok(Cli {
                command: Command::Queue(QueueCommand::Update { settings, .. }),
                ..
            }) => settings,
            Ok(_) => panic!("not a queue update: {args:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    /// The first line of clap's error for `args`.
    fn refusal(args: &[&str]) -> String {
        match parse(args) {
            Ok(_) => panic!("accepted: {args:?}"),
            Err(e) => e.lines().next().unwrap_or_default().to_owned(),
        }
    }

    #[test]
    fn good_values() {
        let f = flags(&[
            "--priority",
            "10",
            "--weight",
            "3",
            "--quota-cpu",
            "8",
            "--quota-memory",
            "64Gi",
            "--quota-gpus",
            "2",
            "--max-running",
            "4",
            "--preemption",
            "lower-priority",
            "--borrow",
        ]);
        assert_eq!(
            f,
            QueueFlags {
                priority: Some(10),
                weight: Some(3),
                quota_cpu: Some(Limit::At(8_000)),
                quota_memory: Some(Limit::At(64 << 30)),
                quota_gpus: Some(Limit::At(2)),
                max_running: Some(Limit::At(4)),
                preemption: Some(PreemptionArg::LowerPriority),
                borrow: true,
                no_borrow: false,
            }
        );
        assert_eq!(
            flags(&["--quota-cpu", "0.5"]).quota_cpu,
            Some(Limit::At(500))
        );
        assert_eq!(
            flags(&["--quota-cpu", "500m"]).quota_cpu,
            Some(Limit::At(500))
        );
        assert_eq!(flags(&["--quota-cpu=250m"]).quota_cpu, Some(Limit::At(250)));
        assert_eq!(flags(&["--quota-gpus", "0"]).quota_gpus, Some(Limit::At(0)));
        assert_eq!(flags(&["--priority", "0"]).priority, Some(0));
        assert_eq!(flags(&["--priority", "1000000"]).priority, Some(1_000_000));
        assert_eq!(
            flags(&["--preemption", "never"]).preemption,
            Some(PreemptionArg::Never)
        );
        // The last of --borrow / --no-borrow wins.
        let f = flags(&["--borrow", "--no-borrow"]);
        assert!(!f.borrow && f.no_borrow);
        let f = flags(&["--no-borrow", "--borrow"]);
        assert!(f.borrow && !f.no_borrow);
    }

    #[test]
    fn none_removes_a_limit() {
        let f = flags(&[
            "--quota-cpu",
            "none",
            "--quota-memory",
            "none",
            "--quota-gpus",
            "None",
            "--max-running",
            "none",
        ]);
        assert_eq!(f.quota_cpu, Some(Limit::Unlimited));
        assert_eq!(f.quota_memory, Some(Limit::Unlimited));
        assert_eq!(f.quota_gpus, Some(Limit::Unlimited));
        assert_eq!(f.max_running, Some(Limit::Unlimited));
    }

    #[test]
    fn negative_values_are_refused_naming_flag_and_value() {
        for (flag, value, message) in [
            ("--priority", "-1", "`-1` must be between 0 and 1000000"),
            (
                "--weight",
                "-2",
                "invalid weight `-2` (use a whole number of at least 1)",
            ),
            (
                "--quota-cpu",
                "-1",
                "invalid quantity `-1` (use e.g. 500m, 0.5, 2)",
            ),
            (
                "--quota-cpu",
                "-500m",
                "invalid quantity `-500m` (use e.g. 500m, 0.5, 2)",
            ),
            (
                "--quota-memory",
                "-4Gi",
                "invalid quantity `-4Gi` (use e.g. 512Mi, 4Gi, 1G)",
            ),
            (
                "--quota-gpus",
                "-1",
                "invalid count `-1` (use a whole number, e.g. 0, 1, 2, or none)",
            ),
            (
                "--max-running",
                "-3",
                "invalid count `-3` (use a whole number of at least 1)",
            ),
        ] {
            let got = refusal(&["queue", "create", "q", flag, value]);
            assert!(
                got.contains(&format!("'{value}'")) && got.contains(flag) && got.ends_with(message),
                "{flag} {value}: {got}"
            );
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        for (flag, value, message) in [
            (
                "--priority",
                "high",
                "invalid priority `high` (use a whole number from 0 to 1000000)",
            ),
            (
                "--priority",
                "1000001",
                "`1000001` must be between 0 and 1000000",
            ),
            (
                "--priority",
                "1.5",
                "invalid priority `1.5` (use a whole number from 0 to 1000000)",
            ),
            ("--weight", "0", "invalid weight `0` (must be at least 1)"),
            (
                "--weight",
                "1.5",
                "invalid weight `1.5` (use a whole number of at least 1)",
            ),
            (
                "--quota-cpu",
                "8cores",
                "invalid quantity `8cores` (use e.g. 500m, 0.5, 2)",
            ),
            (
                "--quota-cpu",
                "0.0001",
                "invalid quantity `0.0001` (the smallest unit is 1m, a thousandth of a cpu)",
            ),
            (
                "--quota-memory",
                "64GB",
                "invalid quantity `64GB` (use e.g. 512Mi, 4Gi, 1G)",
            ),
            (
                "--quota-gpus",
                "1.5",
                "invalid count `1.5` (use a whole number, e.g. 0, 1, 2, or none)",
            ),
            (
                "--quota-gpus",
                "unlimited",
                "invalid count `unlimited` (use a whole number, e.g. 0, 1, 2, or none)",
            ),
            (
                "--max-running",
                "0",
                "`0` would admit nothing (pause the queue instead)",
            ),
            (
                "--quota-gpus",
                "99999999999",
                "count `99999999999` is too large",
            ),
        ] {
            let got = refusal(&["queue", "update", "q", flag, value]);
            assert!(
                got.contains(&format!("'{value}'")) && got.contains(flag) && got.ends_with(message),
                "{flag} {value}: {got}"
            );
        }
        let got = refusal(&["queue", "create", "q", "--preemption", "always"]);
        assert!(
            got.contains("'always'") && got.contains("--preemption"),
            "{got}"
        );
    }

    #[test]
    fn queue_names_and_run_priorities() {
        let got = refusal(&["queue", "create", "Bad_Q"]);
        assert!(
            got.ends_with("invalid queue name `Bad_Q` (use lowercase letters, digits and `-`)"),
            "{got}"
        );
        let got = refusal(&["submit", "p.yaml", "--queue", "Bad_Q"]);
        assert!(
            got.contains("--queue") && got.contains("invalid queue name `Bad_Q`"),
            "{got}"
        );
        let got = refusal(&["submit", "p.yaml", "--priority", "-1"]);
        assert!(
            got.contains("--priority") && got.ends_with("`-1` must be between 0 and 1000000"),
            "{got}"
        );
        match parse(&["submit", "p.yaml", "--queue", "train", "--priority", "10"]) {
            Ok(Cli {
                command: Command::Submit {
                    queue, priority, ..
                },
                ..
            }) => assert_eq!((queue.as_deref(), priority), (Some("train"), Some(10))),
            _ => panic!("submit with --queue and --priority"),
        }
        match parse(&["run", "priority", "r-1", "7"]) {
            Ok(Cli {
                command: Command::Run(RunCommand::Priority { run, priority }),
                ..
            }) => assert_eq!((run.as_str(), priority), ("r-1", 7)),
            _ => panic!("run priority"),
        }
        let got = refusal(&["run", "priority", "r-1", "-5"]);
        assert!(got.ends_with("`-5` must be between 0 and 1000000"), "{got}");
    }

    #[test]
    fn update_without_settings_is_refused_before_connecting() {
        let Ok(Cli {
            command: Command::Queue(cmd),
            ..
        }) = parse(&["queue", "update", "train"])
        else {
            panic!("queue update");
        };
        assert_eq!(
            cmd.check().unwrap_err().to_string(),
            "queue update `train`: nothing to change (give at least one setting; see --help)"
        );
        let Ok(Cli {
            command: Command::Queue(cmd),
            ..
        }) = parse(&["queue", "create", "train"])
        else {
            panic!("queue create");
        };
        assert!(cmd.check().is_ok(), "create needs no settings");
    }

    #[test]
    fn update_changes_only_what_was_given() -> TestResult {
        let stored = pb::Queue {
            name: "train".into(),
            priority: 5,
            weight: 2,
            quota: Some(pb::Quota {
                cpu_millis: Some(8_000),
                memory_bytes: Some(64 << 30),
                gpus: Some(2),
            }),
            max_running: Some(4),
            paused: true,
            preemption: pb::Preemption::LowerPriority as i32,
            borrow: true,
        };

        let mut q = stored.clone();
        flags(&["--priority", "9"]).apply(&mut q);
        assert_eq!(
            q,
            pb::Queue {
                priority: 9,
                ..stored.clone()
            }
        );

        let mut q = stored.clone();
        flags(&[
            "--quota-gpus",
            "none",
            "--max-running",
            "none",
            "--no-borrow",
        ])
        .apply(&mut q);
        assert_eq!(
            q,
            pb::Queue {
                quota: Some(pb::Quota {
                    gpus: None,
                    ..stored.quota.ok_or("no quota")?
                }),
                max_running: None,
                borrow: false,
                ..stored.clone()
            }
        );

        let mut q = stored.clone();
        flags(&[
            "--quota-cpu",
            "500m",
            "--preemption",
            "never",
            "--weight",
            "1",
        ])
        .apply(&mut q);
        assert_eq!(
            q,
            pb::Queue {
                quota: Some(pb::Quota {
                    cpu_millis: Some(500),
                    ..stored.quota.ok_or("no quota")?
                }),
                preemption: pb::Preemption::Never as i32,
                weight: 1,
                ..stored.clone()
            }
        );

        // A queue stored without a quota gets one with only that resource set.
        let mut q = pb::Queue {
            name: "x".into(),
            ..Default::default()
        };
        flags(&["--quota-memory", "1Gi"]).apply(&mut q);
        assert_eq!(
            q.quota,
            Some(pb::Quota {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            })
        );
        // Settings that were not given leave no quota behind.
        let mut q = pb::Queue::default();
        flags(&["--priority", "1"]).apply(&mut q);
        assert_eq!(q.quota, None);
        Ok(())
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let Ok(Cli {
            command: Command::Queue(QueueCommand::Create { name, settings }),
            ..
        }) = parse(&[
            "queue",
            "create",
            "prod",
            "--priority",
            "10",
            "--quota-gpus",
            "4",
        ])
        else {
            panic!("queue create");
        };
        let mut q = pb::Queue {
            name,
            ..Default::default()
        };
        settings.apply(&mut q);
        assert_eq!(
            q,
            pb::Queue {
                name: "prod".into(),
                priority: 10,
                quota: Some(pb::Quota {
                    gpus: Some(4),
                    ..Default::default()
                }),
                ..Default::default()
            }
        );
    }
}
