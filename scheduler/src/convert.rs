//! Between stored/wire protobuf types and the pure core's types.

use drover_api::pb;
use drover_scheduler_core::dag::{
    Artifact, Attempt, AttemptSource, AttemptStatus, GivenGpu, RunDag, RunState, RunStatus,
    TaskDef, TaskRun, TaskStatus,
};

use crate::store::StoredRun;

pub fn task_defs(spec: &pb::PipelineSpec) -> Vec<TaskDef> {
    let index: std::collections::HashMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    spec.tasks
        .iter()
        .map(|t| {
            let retries = t.retries.unwrap_or_default();
            TaskDef {
                name: t.name.clone(),
                // Validation guarantees every dependency exists.
                deps: t
                    .depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect(),
                retry_limit: retries.limit,
                backoff_ms: retries.backoff_ms,
                finally: t.finally,
                conditional: !t.when.is_empty() && !item_condition(t),
                for_each: t.for_each.is_some(),
                item_condition: item_condition(t),
            }
        })
        .collect()
}

/// A `for_each` task whose condition names `item`: each instance's is
/// evaluated, not the task's.
fn item_condition(t: &pb::TaskSpec) -> bool {
    t.for_each.is_some() && !t.when.is_empty() && drover_api::spec::condition::uses_item(&t.when)
}

/// Rebuilds a run's state machine from what etcd holds.
pub fn restore(stored: &StoredRun) -> (RunDag, Vec<drover_scheduler_core::dag::Effect>) {
    let spec = &stored.spec;
    let defs = task_defs(spec);
    let index: std::collections::HashMap<&str, usize> = defs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    // Instances follow the static tasks, in the order their tasks expanded.
    let mut expansions = Vec::new();
    let mut first: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    let mut total = defs.len();
    for e in &stored.record.expansions {
        if let Some(&task) = index.get(e.task.as_str()) {
            let count = e.count as usize;
            expansions.push((task, count));
            first.insert(e.task.as_str(), (total, count));
            total += count;
        }
    }
    let position = |name: &str| -> Option<usize> {
        if let Some(&i) = index.get(name) {
            return Some(i);
        }
        let (task, k) = name.strip_suffix(']')?.rsplit_once('[')?;
        let k: usize = k.parse().ok()?;
        let &(at, count) = first.get(task)?;
        (k < count).then_some(at + k)
    };
    let mut records: Vec<Option<TaskRun>> = vec![None; total];
    for (name, rec, _) in &stored.tasks {
        if let Some(i) = position(name) {
            records[i] = Some(task_run(rec));
        }
    }
    let run = RunState {
        status: run_status(stored.record.state()),
        message: stored.record.message.clone(),
        finished_at: known_ms(stored.record.finished_at_ms),
        finally_stopped: stored.record.finally_stopped,
        expansions,
    };
    RunDag::restore(defs, spec.fail_fast, run, records)
}

pub fn run_status(s: pb::RunState) -> RunStatus {
    match s {
        pb::RunState::Succeeded => RunStatus::Succeeded,
        pb::RunState::Failed => RunStatus::Failed,
        pb::RunState::Cancelling => RunStatus::Cancelling,
        pb::RunState::Cancelled => RunStatus::Cancelled,
        pb::RunState::Running | pb::RunState::Unspecified => RunStatus::Running,
    }
}

pub fn run_state(s: RunStatus) -> pb::RunState {
    match s {
        RunStatus::Running => pb::RunState::Running,
        RunStatus::Succeeded => pb::RunState::Succeeded,
        RunStatus::Failed => pb::RunState::Failed,
        RunStatus::Cancelling => pb::RunState::Cancelling,
        RunStatus::Cancelled => pb::RunState::Cancelled,
    }
}

pub fn task_state(s: TaskStatus) -> pb::TaskState {
    match s {
        TaskStatus::Pending => pb::TaskState::Pending,
        TaskStatus::Ready => pb::TaskState::Ready,
        TaskStatus::Assigned => pb::TaskState::Assigned,
        TaskStatus::Running => pb::TaskState::Running,
        TaskStatus::RetryWait => pb::TaskState::RetryWait,
        TaskStatus::Succeeded => pb::TaskState::Succeeded,
        TaskStatus::Failed => pb::TaskState::Failed,
        TaskStatus::Cancelled => pb::TaskState::Cancelled,
        TaskStatus::Skipped => pb::TaskState::Skipped,
    }
}

fn task_status(s: pb::TaskState) -> TaskStatus {
    match s {
        pb::TaskState::Pending | pb::TaskState::Unspecified => TaskStatus::Pending,
        pb::TaskState::Ready => TaskStatus::Ready,
        pb::TaskState::Assigned => TaskStatus::Assigned,
        pb::TaskState::Running => TaskStatus::Running,
        pb::TaskState::RetryWait => TaskStatus::RetryWait,
        pb::TaskState::Succeeded => TaskStatus::Succeeded,
        pb::TaskState::Failed => TaskStatus::Failed,
        pb::TaskState::Cancelled => TaskStatus::Cancelled,
        pb::TaskState::Skipped => TaskStatus::Skipped,
    }
}

fn attempt_state(s: AttemptStatus) -> pb::AttemptState {
    match s {
        AttemptStatus::Assigned => pb::AttemptState::Assigned,
        AttemptStatus::Running => pb::AttemptState::Running,
        AttemptStatus::Succeeded => pb::AttemptState::Succeeded,
        AttemptStatus::Failed => pb::AttemptState::Failed,
        AttemptStatus::Cancelled => pb::AttemptState::Cancelled,
        AttemptStatus::Lost => pb::AttemptState::Lost,
        AttemptStatus::Preempted => pb::AttemptState::Preempted,
    }
}

fn attempt_status(s: pb::AttemptState) -> AttemptStatus {
    match s {
        pb::AttemptState::Assigned | pb::AttemptState::Unspecified => AttemptStatus::Assigned,
        pb::AttemptState::Running => AttemptStatus::Running,
        pb::AttemptState::Succeeded => AttemptStatus::Succeeded,
        pb::AttemptState::Failed => AttemptStatus::Failed,
        pb::AttemptState::Cancelled => AttemptStatus::Cancelled,
        pb::AttemptState::Lost => AttemptStatus::Lost,
        pb::AttemptState::Preempted => AttemptStatus::Preempted,
    }
}

/// Stored and wire messages say 0 for a time not known (yet).
fn wire_ms(at: Option<u64>) -> u64 {
    at.unwrap_or(0)
}

fn known_ms(at: u64) -> Option<u64> {
    (at > 0).then_some(at)
}

pub fn artifact(a: &pb::Artifact) -> Artifact {
    Artifact {
        name: a.name.clone(),
        key: a.key.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        result: a.result.as_ref().map(|r| r.to_vec()),
    }
}

pub fn pb_artifact(a: &Artifact) -> pb::Artifact {
    pb::Artifact {
        name: a.name.clone(),
        key: a.key.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        result: a.result.clone(),
    }
}

pub fn gpu_ref(g: &GivenGpu) -> pb::GpuRef {
    pb::GpuRef {
        index: g.index,
        uuid: g.uuid.clone(),
        model: g.model.clone(),
    }
}

pub fn attempt_source(s: &AttemptSource) -> pb::AttemptSource {
    pb::AttemptSource {
        run_id: s.run.clone(),
        task: s.task.clone(),
        attempt: s.attempt,
    }
}

fn pb_attempt(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        agent_id: a.agent.clone(),
        state: attempt_state(a.status) as i32,
        ready_at_ms: wire_ms(a.ready_at),
        assigned_at_ms: a.assigned_at,
        started_at_ms: wire_ms(a.started_at),
        finished_at_ms: wire_ms(a.finished_at),
        exit_code: a.exit_code,
        error: a.error.clone(),
        outputs: a.outputs.iter().map(pb_artifact).collect(),
        log_key: a.log_key.clone(),
        log_empty: a.log_empty,
        gpus: a.gpus.iter().map(gpu_ref).collect(),
        image_digest: a.image_digest.clone(),
        cache_key: a.cache_key.clone().unwrap_or_default(),
        cached_from: a.cached_from.as_ref().map(attempt_source),
    }
}

fn core_attempt(a: &pb::Attempt) -> Attempt {
    Attempt {
        image_digest: a.image_digest.clone(),
        cache_key: (!a.cache_key.is_empty()).then(|| a.cache_key.clone()),
        cached_from: a.cached_from.as_ref().map(|s| AttemptSource {
            run: s.run_id.clone(),
            task: s.task.clone(),
            attempt: s.attempt,
        }),
        number: a.number,
        agent: a.agent_id.clone(),
        status: attempt_status(a.state()),
        ready_at: known_ms(a.ready_at_ms),
        assigned_at: a.assigned_at_ms,
        started_at: known_ms(a.started_at_ms),
        finished_at: known_ms(a.finished_at_ms),
        exit_code: a.exit_code,
        error: a.error.clone(),
        outputs: a.outputs.iter().map(artifact).collect(),
        log_key: a.log_key.clone(),
        log_empty: a.log_empty,
        gpus: a
            .gpus
            .iter()
            .map(|g| GivenGpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
            })
            .collect(),
    }
}

pub fn task_record(t: &TaskRun) -> pb::TaskRecord {
    pb::TaskRecord {
        state: task_state(t.status) as i32,
        attempts: t.attempts.iter().map(pb_attempt).collect(),
        message: t.message.clone(),
        retry_at_ms: t.retry_at,
        retries_used: t.retries_used,
        preempting: t.preempting.clone().unwrap_or_default(),
        ready_at_ms: wire_ms(t.ready_at),
    }
}

pub fn task_run(r: &pb::TaskRecord) -> TaskRun {
    TaskRun {
        status: task_status(r.state()),
        attempts: r.attempts.iter().map(core_attempt).collect(),
        message: r.message.clone(),
        retry_at: r.retry_at_ms,
        retries_used: r.retries_used,
        preempting: (!r.preempting.is_empty()).then(|| r.preempting.clone()),
        ready_at: known_ms(r.ready_at_ms),
        // Only a task decided by its `when:` is stored without an attempt.
        decided: r.attempts.is_empty(),
    }
}

/// The run record with the state machine's run-level state written in.
pub fn run_record(base: &pb::RunRecord, dag: &RunDag) -> pb::RunRecord {
    let mut r = base.clone();
    let s = dag.run_state();
    r.state = run_state(s.status) as i32;
    r.message = s.message.clone();
    r.finished_at_ms = wire_ms(s.finished_at);
    r.finally_stopped = s.finally_stopped;
    r.expansions = s
        .expansions
        .iter()
        .map(|&(task, count)| pb::Expansion {
            task: dag.defs()[task].name.clone(),
            count: count as u32,
        })
        .collect();
    r
}

/// The public view of a run.
pub fn run_view(record: &pb::RunRecord, spec: &pb::PipelineSpec, dag: &RunDag) -> pb::Run {
    let s = dag.run_state();
    pb::Run {
        id: record.id.clone(),
        name: spec.name.clone(),
        state: run_state(s.status) as i32,
        params: record.params.clone(),
        created_at_ms: record.created_at_ms,
        finished_at_ms: wire_ms(s.finished_at),
        message: s.message.clone(),
        fail_fast: spec.fail_fast,
        queue: record.queue.clone(),
        priority: record.priority,
        trace_id: record.trace_id.clone(),
        root_span_id: record.root_span_id.clone(),
        code_sha256: spec.code_sha256.clone(),
        tasks: dag
            .tasks()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                // A `for_each` instance is described by its task.
                let of = dag.instance_of(i).map_or(i, |(group, _)| group);
                let def = spec.tasks.get(of)?;
                Some(pb::Task {
                    name: dag.defs()[i].name.clone(),
                    state: task_state(t.status) as i32,
                    depends_on: def.depends_on.clone(),
                    attempts: t.attempts.iter().map(pb_attempt).collect(),
                    message: t.message.clone(),
                    retry_at_ms: t.retry_at,
                    unschedulable: false,
                    finally: def.finally,
                    item: String::new(),
                })
            })
            .collect(),
    }
}

pub fn summary(record: &pb::RunRecord) -> pb::RunSummary {
    pb::RunSummary {
        id: record.id.clone(),
        name: record.name.clone(),
        state: record.state,
        created_at_ms: record.created_at_ms,
        finished_at_ms: record.finished_at_ms,
        tasks_total: record.tasks_total,
        queue: record.queue.clone(),
        priority: record.priority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_records_round_trip() {
        let t = TaskRun {
            status: TaskStatus::RetryWait,
            attempts: vec![Attempt {
                image_digest: String::new(),
                cache_key: None,
                cached_from: None,
                number: 1,
                agent: "a".into(),
                status: AttemptStatus::Failed,
                ready_at: Some(1),
                assigned_at: 1,
                started_at: Some(2),
                finished_at: None,
                exit_code: Some(4),
                error: "exited with code 4".into(),
                outputs: vec![Artifact {
                    name: "m".into(),
                    key: "k".into(),
                    sha256: "s".into(),
                    size: 9,
                    result: Some(b"{\"accuracy\": 0.9}".to_vec()),
                }],
                log_key: "l".into(),
                // Round-trips even where it would not occur (a failed attempt).
                log_empty: true,
                gpus: vec![GivenGpu {
                    index: 1,
                    uuid: "GPU-1".into(),
                    model: "NVIDIA A100-SXM4-80GB".into(),
                }],
            }],
            message: "retry".into(),
            retry_at: 77,
            retries_used: 1,
            preempting: Some("room".into()),
            ready_at: Some(70),
            decided: false,
        };
        assert_eq!(task_run(&task_record(&t)), t);
        // A task stored without an attempt was decided by its `when:`.
        let skipped = TaskRun {
            status: TaskStatus::Skipped,
            attempts: vec![],
            message: "when: false was false".into(),
            retry_at: 0,
            retries_used: 0,
            preempting: None,
            ready_at: None,
            decided: true,
        };
        assert_eq!(task_run(&task_record(&skipped)), skipped);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelling,
            RunStatus::Cancelled,
        ] {
            assert_eq!(run_status(run_state(s)), s);
        }
    }
}
