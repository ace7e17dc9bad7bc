//! Prometheus metrics of the agent (`--metrics-listen`).
//!
//! Counters (task starts and finishes, executor errors) are bumped where
//! those happen. Gauges are read at scrape time from what the agent already
//! keeps: running attempts from the attempt registry, machine and GPU usage
//! from the heartbeat's latest sample, so they cannot drift from it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use drover_api::pb::GpuInfo;
use drover_metrics::{encode_gauges, Labels};

use crate::core::ExecutorKind;
use crate::shell::heartbeat::Sample;
use crate::shell::registry::Registry as Attempts;

type ExecutorLabel = [(&'static str, &'static str); 1];
type FinishLabels = [(&'static str, &'static str); 2];

/// How an attempt ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskOutcome {
    fn label(self) -> &'static str {
        match self {
            TaskOutcome::Succeeded => "succeeded",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Cancelled => "cancelled",
        }
    }
}

/// Cheap-to-clone handle on the agent's counters and latest sample.
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    starts: Family<ExecutorLabel, Counter>,
    finishes: Family<FinishLabels, Counter>,
    executor_errors: Family<ExecutorLabel, Counter>,
    sample: Arc<Mutex<Option<Sample>>>,
}

impl AgentMetrics {
    /// The metrics and the registry `/metrics` serves them from; every
    /// series carries `agent="<id>"`. Series for each enabled executor
    /// exist from the start, at zero.
    pub fn new(agent_id: &str, executors: &[ExecutorKind], attempts: Attempts) -> (Self, Registry) {
        let m = Self::default();
        for kind in executors {
            let exec = [("executor", kind.name())];
            m.starts.get_or_create_owned(&exec);
            m.executor_errors.get_or_create_owned(&exec);
            for outcome in [
                TaskOutcome::Succeeded,
                TaskOutcome::Failed,
                TaskOutcome::Cancelled,
            ] {
                m.finishes.get_or_create_owned(&[
                    ("executor", kind.name()),
                    ("outcome", outcome.label()),
                ]);
            }
        }
        let labels = [(Cow::Borrowed("agent"), Cow::Owned(agent_id.to_owned()))];
        let mut r = Registry::with_prefix_and_labels("drover_agent", labels.into_iter());
        r.register(
            "task_starts",
            "Attempts started on this agent, by executor",
            m.starts.clone(),
        );
        r.register(
            "task_finishes",
            "Attempts that ended on this agent, by executor and outcome",
            m.finishes.clone(),
        );
        r.register(
            "executor_errors",
            "Failures of the executor itself (spawn, image pull, container start, lost track of a task), by executor",
            m.executor_errors.clone(),
        );
        r.register_collector(Box::new(StateCollector {
            attempts,
            sample: Arc::clone(&m.sample),
        }));
        (m, r)
    }

    pub fn started(&self, executor: ExecutorKind) {
        self.starts
            .get_or_create(&[("executor", executor.name())])
            .inc();
    }

    pub fn finished(&self, executor: ExecutorKind, outcome: TaskOutcome) {
        self.finishes
            .get_or_create(&[("executor", executor.name()), ("outcome", outcome.label())])
            .inc();
    }

    pub fn executor_error(&self, executor: ExecutorKind) {
        self.executor_errors
            .get_or_create(&[("executor", executor.name())])
            .inc();
    }

    /// The heartbeat's latest reading of the machine and its GPUs.
    pub fn set_sample(&self, sample: &Sample) {
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = Some(sample.clone());
    }
}

#[derive(Debug)]
struct StateCollector {
    attempts: Attempts,
    sample: Arc<Mutex<Option<Sample>>>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let running = self.attempts.running().len();
        let sample = self
            .sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        encode_state(&mut encoder, running, sample.as_ref())
    }
}

fn gpu_labels(g: &GpuInfo) -> Labels {
    vec![
        ("gpu", g.index.to_string()),
        ("uuid", g.uuid.clone()),
        ("model", g.name.clone()),
        ("simulated", g.simulated.to_string()),
    ]
}

/// The gauges for `running` attempts and the latest sample (none before
/// the first one: then only the running count).
fn encode_state(
    e: &mut DescriptorEncoder,
    running: usize,
    sample: Option<&Sample>,
) -> Result<(), std::fmt::Error> {
    encode_gauges(
        e,
        "running_tasks",
        "Attempts running on this agent.",
        [(Labels::new(), running as u64)],
    )?;
    let Some(sample) = sample else {
        return Ok(());
    };
    encode_gauges(
        e,
        "cpu_usage_ratio",
        "CPU use of the whole machine, 0 to 1.",
        [(
            Labels::new(),
            f64::from(sample.usage.cpu_usage_percent) / 100.0,
        )],
    )?;
    encode_gauges(
        e,
        "memory_used_bytes",
        "Memory in use on the whole machine.",
        [(Labels::new(), sample.usage.memory_used_bytes)],
    )?;
    let gpus = &sample.gpus.gpus;
    let per_gpu = |f: fn(&GpuInfo) -> f64| gpus.iter().map(move |g| (gpu_labels(g), f(g)));
    encode_gauges(
        e,
        "gpu_utilization_ratio",
        "Share of time the GPU was busy over NVML's last sample period, 0 to 1 (simulated GPUs: 0).",
        per_gpu(|g| f64::from(g.utilization_percent) / 100.0),
    )?;
    encode_gauges(
        e,
        "gpu_memory_used_bytes",
        "GPU memory in use.",
        per_gpu(|g| g.memory_used_bytes as f64),
    )?;
    encode_gauges(
        e,
        "gpu_memory_total_bytes",
        "GPU memory in all.",
        per_gpu(|g| g.memory_total_bytes as f64),
    )?;
    encode_gauges(
        e,
        "gpu_temperature_celsius",
        "GPU temperature (simulated GPUs: 0).",
        per_gpu(|g| f64::from(g.temperature_c)),
    )?;
    encode_gauges(
        e,
        "gpu_power_watts",
        "GPU power draw (simulated GPUs: 0).",
        per_gpu(|g| f64::from(g.power_mw) / 1000.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::gpu::simulated_gpus;
    use crate::core::AttemptKey;
    use crate::shell::gpu::GpuSnapshot;
    use crate::shell::host::Usage;

    fn render(r: &Registry) -> String {
        drover_metrics::text(r).expect("our collectors encode")
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn counters_exist_at_zero_and_count_by_executor_and_outcome() {
        let (m, r) = AgentMetrics::new("a1", &[ExecutorKind::Process], Attempts::default());
        let text = render(&r);
        for line in [
            "drover_agent_task_starts_total{agent=\"a1\",executor=\"process\"} 0",
            "drover_agent_task_finishes_total{agent=\"a1\",executor=\"process\",outcome=\"succeeded\"} 0",
            "drover_agent_executor_errors_total{agent=\"a1\",executor=\"process\"} 0",
            "drover_agent_running_tasks{agent=\"a1\"} 0",
        ] {
            assert!(has(&text, line), "missing `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("gpu_"),
            "no GPU series before a sample:\n{text}"
        );
        m.started(ExecutorKind::Process);
        m.finished(ExecutorKind::Process, TaskOutcome::Cancelled);
        m.executor_error(ExecutorKind::Docker);
        let text = render(&r);
        for line in [
            "drover_agent_task_starts_total{agent=\"a1\",executor=\"process\"} 1",
            "drover_agent_task_finishes_total{agent=\"a1\",executor=\"process\",outcome=\"cancelled\"} 1",
            "drover_agent_executor_errors_total{agent=\"a1\",executor=\"docker\"} 1",
        ] {
            assert!(has(&text, line), "missing `{line}` in:\n{text}");
        }
    }

    #[test]
    fn gauges_follow_the_attempt_table_and_the_latest_sample() {
        let attempts = Attempts::default();
        let (m, r) = AgentMetrics::new("a1", &[], attempts.clone());
        let key = AttemptKey {
            run_id: "r".into(),
            task: "t".into(),
            attempt: 1,
        };
        let _stop = attempts.start(key.clone());
        let mut gpus = simulated_gpus("a1", 2, "Sim X", 80 << 30);
        gpus[1].utilization_percent = 50;
        gpus[1].memory_used_bytes = 1 << 30;
        m.set_sample(&Sample {
            usage: Usage {
                cpu_usage_percent: 25.0,
                memory_used_bytes: 42,
            },
            gpus: GpuSnapshot {
                gpus,
                ..Default::default()
            },
        });
        let text = render(&r);
        let uuid1 = simulated_gpus("a1", 2, "Sim X", 80 << 30)[1].uuid.clone();
        for line in [
            "drover_agent_running_tasks{agent=\"a1\"} 1".to_string(),
            "drover_agent_cpu_usage_ratio{agent=\"a1\"} 0.25".to_string(),
            "drover_agent_memory_used_bytes{agent=\"a1\"} 42".to_string(),
            format!("drover_agent_gpu_utilization_ratio{{agent=\"a1\",gpu=\"1\",uuid=\"{uuid1}\",model=\"Sim X\",simulated=\"true\"}} 0.5"),
            format!("drover_agent_gpu_memory_used_bytes{{agent=\"a1\",gpu=\"1\",uuid=\"{uuid1}\",model=\"Sim X\",simulated=\"true\"}} 1073741824.0"),
            format!("drover_agent_gpu_memory_total_bytes{{agent=\"a1\",gpu=\"1\",uuid=\"{uuid1}\",model=\"Sim X\",simulated=\"true\"}} 85899345920.0"),
        ] {
            assert!(has(&text, &line), "missing `{line}` in:\n{text}");
        }
        attempts.finish(&key);
        assert!(has(
            &render(&r),
            "drover_agent_running_tasks{agent=\"a1\"} 0"
        ));
    }
}
