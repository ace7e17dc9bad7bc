//! Prometheus metrics of the scheduler (`--metrics-listen`).
//!
//! Two kinds, so that nothing is counted up and down by hand:
//! - **State gauges** (runs and tasks by state, queue pending/running,
//!   usage vs quota, agents by state) are a [`Snapshot`] the engine derives
//!   from its own state after a turn and hands over whole; the collector
//!   renders the latest one at scrape time. After a restart the engine
//!   derives them again from what it loads from etcd, so they stay right.
//! - **Events** (latencies, etcd and NATS errors) are counters and
//!   histograms observed where they happen; they restart from zero with
//!   the process, as Prometheus expects of counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use drover_api::pb;
use drover_metrics::{encode_gauges, Labels};

/// Latency buckets in seconds: sub-second assignment on an idle cluster up
/// to an hour's wait for a busy GPU.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// etcd calls counted in `drover_scheduler_etcd_errors_total{op}`.
pub const ETCD_OPS: [&str; 10] = [
    "commit",
    "delete_spec",
    "list_agents",
    "list_queues",
    "list_runs",
    "list_specs",
    "load_run",
    "load_spec",
    "load_tasks",
    "put_spec",
];
/// NATS calls counted in `drover_scheduler_nats_errors_total{op}`.
pub const NATS_OPS: [&str; 6] = [
    "ack",
    "ask_heartbeats",
    "assign",
    "cancel",
    "events",
    "heartbeats",
];

/// Why an agent's message was dropped, in `drover_scheduler_events_rejected_total{reason}`:
/// an event for an attempt assigned to another agent than the one whose
/// subject carried it; an event naming another agent than its subject; a
/// heartbeat naming another agent than its subject.
pub const REJECT_REASONS: [&str; 3] = ["not_assigned", "agent_mismatch", "heartbeat_mismatch"];

type OpLabel = [(&'static str, &'static str); 1];
type QueueLabel = [(&'static str, String); 1];

/// Failed calls to one backend, by operation.
#[derive(Clone, Debug, Default)]
pub struct OpErrors(Family<OpLabel, Counter>);

impl OpErrors {
    /// With a zero series for each of `ops`, so `rate()` works before the first error.
    fn with_ops(ops: &[&'static str]) -> Self {
        let errors = Self::default();
        for op in ops {
            errors.0.get_or_create_owned(&[("op", op)]);
        }
        errors
    }

    pub fn inc(&self, op: &'static str) {
        self.0.get_or_create(&[("op", op)]).inc();
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Cheap-to-clone handle on the scheduler's metrics.
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    pub etcd_errors: OpErrors,
    /// Commits that lost a compare-and-swap (another writer, or stale state).
    pub etcd_conflicts: Counter,
    pub nats_errors: OpErrors,
    /// API calls refused (no, bad or expired token; role; queue limit).
    pub api_refused: crate::auth::Refusals,
    /// Agents' messages dropped for coming from the wrong agent, by reason.
    events_rejected: Family<OpLabel, Counter>,
    admission_latency: Family<QueueLabel, Histogram>,
    assign_to_start_latency: Family<QueueLabel, Histogram>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self {
            etcd_errors: OpErrors::with_ops(&ETCD_OPS),
            etcd_conflicts: Counter::default(),
            nats_errors: OpErrors::with_ops(&NATS_OPS),
            api_refused: Default::default(),
            events_rejected: {
                let family = Family::<OpLabel, Counter>::default();
                for reason in REJECT_REASONS {
                    family.get_or_create_owned(&[("reason", reason)]);
                }
                family
            },
            admission_latency: Family::new_with_constructor(latency_histogram),
            assign_to_start_latency: Family::new_with_constructor(latency_histogram),
            snapshot: Arc::default(),
        }
    }
}

impl SchedulerMetrics {
    /// The metrics and the registry `/metrics` serves them from.
    pub fn new() -> (Self, Registry) {
        let m = Self::default();
        let mut r = Registry::with_prefix("drover_scheduler");
        r.register_with_unit(
            "admission_latency",
            "From a task becoming ready to its assignment to an agent, by queue",
            Unit::Seconds,
            m.admission_latency.clone(),
        );
        r.register_with_unit(
            "assign_to_start_latency",
            "From a task's assignment to its agent reporting it started, by queue",
            Unit::Seconds,
            m.assign_to_start_latency.clone(),
        );
        r.register(
            "etcd_errors",
            "Failed etcd calls, by operation",
            m.etcd_errors.0.clone(),
        );
        r.register(
            "etcd_conflicts",
            "etcd commits that lost a compare-and-swap; the scheduler reloads its state after one",
            m.etcd_conflicts.clone(),
        );
        r.register(
            "nats_errors",
            "Failed NATS calls, by operation (an agent refusing work is not one)",
            m.nats_errors.0.clone(),
        );
        r.register(
            "api_refused",
            "gRPC calls refused by reason (missing_token, malformed_token, invalid_token, expired_token, role, queue) and method",
            m.api_refused.0.clone(),
        );
        r.register(
            "events_rejected",
            "Agent events and heartbeats dropped because they came from another agent than the one they concern, by reason",
            m.events_rejected.clone(),
        );
        r.register_collector(Box::new(SnapshotCollector(Arc::clone(&m.snapshot))));
        (m, r)
    }

    pub fn observe_admission(&self, queue: &str, ms: u64) {
        self.admission_latency
            .get_or_create(&[("queue", queue.to_string())])
            .observe(ms as f64 / 1000.0);
    }

    pub fn observe_assign_to_start(&self, queue: &str, ms: u64) {
        self.assign_to_start_latency
            .get_or_create(&[("queue", queue.to_string())])
            .observe(ms as f64 / 1000.0);
    }

    /// Counts a message dropped for `reason` (one of [`REJECT_REASONS`]).
    pub fn reject(&self, reason: &'static str) {
        self.events_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Replaces the state gauges with `snapshot`.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

/// The state gauges at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every run state; the terminal ones count every run etcd holds.
    pub runs: BTreeMap<pb::RunState, u64>,
    /// Tasks of active runs, every state.
    pub tasks: BTreeMap<pb::TaskState, u64>,
    pub agents: BTreeMap<pb::AgentState, u64>,
    pub queues: Vec<pb::QueueStatus>,
}

const RUN_STATES: [pb::RunState; 5] = [
    pb::RunState::Running,
    pb::RunState::Cancelling,
    pb::RunState::Succeeded,
    pb::RunState::Failed,
    pb::RunState::Cancelled,
];
const TASK_STATES: [pb::TaskState; 9] = [
    pb::TaskState::Pending,
    pb::TaskState::Ready,
    pb::TaskState::Assigned,
    pb::TaskState::Running,
    pb::TaskState::RetryWait,
    pb::TaskState::Succeeded,
    pb::TaskState::Failed,
    pb::TaskState::Cancelled,
    pb::TaskState::Skipped,
];
const AGENT_STATES: [pb::AgentState; 3] = [
    pb::AgentState::Ready,
    pb::AgentState::Draining,
    pb::AgentState::Lost,
];

impl Snapshot {
    /// Counts by state, with a zero for every state nothing is in, so a
    /// series exists from the start and moves from 0 rather than appearing.
    pub fn new(
        runs: impl IntoIterator<Item = pb::RunState>,
        finished: &BTreeMap<pb::RunState, u64>,
        tasks: impl IntoIterator<Item = pb::TaskState>,
        agents: impl IntoIterator<Item = pb::AgentState>,
        queues: Vec<pb::QueueStatus>,
    ) -> Self {
        let mut s = Snapshot {
            runs: RUN_STATES.iter().map(|&k| (k, 0)).collect(),
            tasks: TASK_STATES.iter().map(|&k| (k, 0)).collect(),
            agents: AGENT_STATES.iter().map(|&k| (k, 0)).collect(),
            queues,
        };
        for r in runs {
            *s.runs.entry(r).or_default() += 1;
        }
        for (&state, &n) in finished {
            *s.runs.entry(state).or_default() += n;
        }
        for t in tasks {
            *s.tasks.entry(t).or_default() += 1;
        }
        for a in agents {
            *s.agents.entry(a).or_default() += 1;
        }
        s
    }

    /// One series per queue for which `f` has a value.
    fn per_queue<V: 'static>(
        &self,
        f: fn(&pb::QueueStatus) -> Option<V>,
    ) -> impl Iterator<Item = (Labels, V)> + '_ {
        self.queues.iter().filter_map(move |q| {
            let name = q.queue.as_ref().map(|q| q.name.clone()).unwrap_or_default();
            f(q).map(|v| (vec![("queue", name)], v))
        })
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let by_state = |name: &str, prefix: &str| -> Labels {
            let state = name.strip_prefix(prefix).unwrap_or(name).to_lowercase();
            vec![("state", state)]
        };
        encode_gauges(
            e,
            "runs",
            "Runs by state: active runs, and every finished run etcd holds.",
            self.runs
                .iter()
                .map(|(s, n)| (by_state(s.as_str_name(), "RUN_STATE_"), *n)),
        )?;
        encode_gauges(
            e,
            "tasks",
            "Tasks of active runs by state.",
            self.tasks
                .iter()
                .map(|(s, n)| (by_state(s.as_str_name(), "TASK_STATE_"), *n)),
        )?;
        encode_gauges(
            e,
            "agents",
            "Known agents by state.",
            self.agents
                .iter()
                .map(|(s, n)| (by_state(s.as_str_name(), "AGENT_STATE_"), *n)),
        )?;

        encode_gauges(
            e,
            "queue_pending_tasks",
            "Ready tasks waiting for admission, by queue.",
            self.per_queue(|q| Some(q.pending)),
        )?;
        encode_gauges(
            e,
            "queue_running_tasks",
            "Tasks holding resources on an agent, by queue.",
            self.per_queue(|q| Some(q.running)),
        )?;
        encode_gauges(
            e,
            "queue_active_runs",
            "Runs not finished yet, by queue.",
            self.per_queue(|q| Some(q.runs)),
        )?;
        encode_gauges(
            e,
            "queue_used_cpu_cores",
            "CPUs requested by the queue's running tasks.",
            self.per_queue(|q| Some(used(q).cpu_millis as f64 / 1000.0)),
        )?;
        encode_gauges(
            e,
            "queue_used_memory_bytes",
            "Memory requested by the queue's running tasks.",
            self.per_queue(|q| Some(used(q).memory_bytes)),
        )?;
        encode_gauges(
            e,
            "queue_used_gpus",
            "GPUs held by the queue's running tasks.",
            self.per_queue(|q| Some(used(q).gpus)),
        )?;
        encode_gauges(
            e,
            "queue_quota_cpu_cores",
            "The queue's CPU quota (no series: unlimited).",
            self.per_queue(|q| quota(q)?.cpu_millis.map(|m| f64::from(m) / 1000.0)),
        )?;
        encode_gauges(
            e,
            "queue_quota_memory_bytes",
            "The queue's memory quota (no series: unlimited).",
            self.per_queue(|q| quota(q)?.memory_bytes),
        )?;
        encode_gauges(
            e,
            "queue_quota_gpus",
            "The queue's GPU quota (no series: unlimited).",
            self.per_queue(|q| quota(q)?.gpus),
        )?;
        encode_gauges(
            e,
            "queue_paused",
            "1 when the queue admits nothing new.",
            self.per_queue(|q| Some(u32::from(q.queue.as_ref()?.paused))),
        )
    }
}

fn used(q: &pb::QueueStatus) -> pb::ResourceUsage {
    q.used.unwrap_or_default()
}

fn quota(q: &pb::QueueStatus) -> Option<pb::Quota> {
    q.queue.as_ref().and_then(|q| q.quota)
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Rendered under the lock: a scrape never sees half of one snapshot.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Registry) -> String {
        drover_metrics::text(r).expect("our collectors encode")
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn snapshot_counts_every_state_and_adds_finished_runs() {
        let finished = BTreeMap::from([(pb::RunState::Succeeded, 3)]);
        let s = Snapshot::new(
            [pb::RunState::Running, pb::RunState::Running],
            &finished,
            [pb::TaskState::Ready, pb::TaskState::Running],
            [pb::AgentState::Ready],
            vec![],
        );
        assert_eq!(s.runs[&pb::RunState::Running], 2);
        assert_eq!(s.runs[&pb::RunState::Succeeded], 3);
        assert_eq!(s.runs[&pb::RunState::Failed], 0);
        assert_eq!(s.runs.len(), 5, "every state, unspecified left out");
        assert_eq!(s.tasks.len(), 9);
        assert_eq!(s.tasks[&pb::TaskState::Ready], 1);
        assert_eq!(s.agents[&pb::AgentState::Lost], 0);
    }

    #[test]
    fn gauges_render_states_queues_and_quotas_in_base_units() {
        let (m, r) = SchedulerMetrics::new();
        let gpu_queue = pb::QueueStatus {
            queue: Some(pb::Queue {
                name: "gpu".into(),
                quota: Some(pb::Quota {
                    cpu_millis: Some(1500),
                    memory_bytes: None,
                    gpus: Some(2),
                }),
                ..Default::default()
            }),
            used: Some(pb::ResourceUsage {
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                gpus: 1,
            }),
            pending: 4,
            running: 1,
            runs: 2,
            ..Default::default()
        };
        m.publish(Snapshot::new(
            [pb::RunState::Cancelling],
            &BTreeMap::new(),
            [pb::TaskState::RetryWait],
            [],
            vec![gpu_queue],
        ));
        let text = render(&r);
        for line in [
            "# TYPE drover_scheduler_runs gauge",
            "drover_scheduler_runs{state=\"cancelling\"} 1",
            "drover_scheduler_runs{state=\"succeeded\"} 0",
            "drover_scheduler_tasks{state=\"retry_wait\"} 1",
            "drover_scheduler_agents{state=\"ready\"} 0",
            "drover_scheduler_queue_pending_tasks{queue=\"gpu\"} 4",
            "drover_scheduler_queue_running_tasks{queue=\"gpu\"} 1",
            "drover_scheduler_queue_active_runs{queue=\"gpu\"} 2",
            "drover_scheduler_queue_used_cpu_cores{queue=\"gpu\"} 0.5",
            "drover_scheduler_queue_used_memory_bytes{queue=\"gpu\"} 1073741824",
            "drover_scheduler_queue_used_gpus{queue=\"gpu\"} 1",
            "drover_scheduler_queue_quota_cpu_cores{queue=\"gpu\"} 1.5",
            "drover_scheduler_queue_quota_gpus{queue=\"gpu\"} 2",
            "drover_scheduler_queue_paused{queue=\"gpu\"} 0",
        ] {
            assert!(has(&text, line), "missing `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("drover_scheduler_queue_quota_memory_bytes{"),
            "no memory quota means no series:\n{text}"
        );
    }

    #[test]
    fn events_render_as_counters_and_histograms() {
        let (m, r) = SchedulerMetrics::new();
        let text = render(&r);
        assert!(has(
            &text,
            "drover_scheduler_etcd_errors_total{op=\"commit\"} 0"
        ));
        assert!(has(
            &text,
            "drover_scheduler_nats_errors_total{op=\"ack\"} 0"
        ));
        m.etcd_errors.inc("commit");
        m.nats_errors.inc("assign");
        m.etcd_conflicts.inc();
        m.observe_admission("default", 1500);
        m.observe_assign_to_start("default", 20);
        let text = render(&r);
        for line in [
            "drover_scheduler_etcd_errors_total{op=\"commit\"} 1",
            "drover_scheduler_nats_errors_total{op=\"assign\"} 1",
            "drover_scheduler_etcd_conflicts_total 1",
            "# TYPE drover_scheduler_admission_latency_seconds histogram",
            "drover_scheduler_admission_latency_seconds_count{queue=\"default\"} 1",
            "drover_scheduler_admission_latency_seconds_sum{queue=\"default\"} 1.5",
            "drover_scheduler_admission_latency_seconds_bucket{le=\"1.0\",queue=\"default\"} 0",
            "drover_scheduler_admission_latency_seconds_bucket{le=\"2.5\",queue=\"default\"} 1",
            "drover_scheduler_assign_to_start_latency_seconds_bucket{le=\"0.025\",queue=\"default\"} 1",
        ] {
            assert!(has(&text, line), "missing `{line}` in:\n{text}");
        }
    }
}
