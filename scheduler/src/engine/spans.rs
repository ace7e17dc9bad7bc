//! The spans of a run's trace, built from the recorded timestamps once an
//! attempt or the run has ended (see `drover_telemetry` for the design).

use drover_scheduler_core::dag::{AttemptStatus, RunStatus};
use drover_scheduler_core::ids::TaskIndex;
use drover_telemetry::record::{self, RecordedSpan};
use drover_telemetry::KeyValue;

use super::state::ActiveRun;

/// The span of the current attempt of `task`, which has just ended: from the
/// moment the task became ready, through placement and start, to its end.
pub(super) fn attempt_span(run: &ActiveRun, task: TaskIndex) -> Option<RecordedSpan> {
    let a = run.dag.task(task.0).current()?;
    let record = run.record.get();
    let name = run.task_name(task);
    let trace_id = &record.trace_id;
    let start = match (a.ready_at, a.number) {
        // Served from the cache: it took no time.
        _ if a.cached_from.is_some() => a.assigned_at,
        (Some(t), _) => t,
        // A root task waits from the run's creation.
        (None, 1) => record.created_at_ms,
        (None, _) => a.assigned_at,
    };
    let mut attributes = vec![
        KeyValue::new("drover.run", record.id.clone()),
        KeyValue::new("drover.task", name.to_string()),
        KeyValue::new("drover.attempt", i64::from(a.number)),
        KeyValue::new("drover.agent", a.agent.clone()),
        KeyValue::new("drover.queue", record.queue.clone()),
        KeyValue::new(
            "drover.attempt.state",
            format!("{:?}", a.status).to_lowercase(),
        ),
        KeyValue::new(
            "drover.gpus",
            a.gpus
                .iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if let Some(from) = &a.cached_from {
        attributes.push(KeyValue::new("drover.cached", true));
        attributes.push(KeyValue::new(
            "drover.cached_from",
            format!("{}/{}/{}", from.run, from.task, from.attempt),
        ));
    }
    if let Some(code) = a.exit_code {
        attributes.push(KeyValue::new("drover.exit_code", i64::from(code)));
    }
    let mut events = vec![("placed", a.assigned_at)];
    if let Some(started) = a.started_at {
        events.push(("running", started));
    }
    let ok = a.status == AttemptStatus::Succeeded;
    Some(RecordedSpan {
        name: format!("task {name}"),
        trace_id: trace_id.clone(),
        span_id: record::attempt_span_id(trace_id, &record.id, name, a.number),
        parent_span_id: record.root_span_id.clone(),
        start_ms: start,
        end_ms: a.finished_at.unwrap_or_default(),
        attributes,
        events,
        error: (!ok).then(|| a.error.clone()),
    })
}

/// The run's root span, emitted when the run ends.
pub(super) fn run_span(run: &ActiveRun) -> RecordedSpan {
    let s = run.dag.run_state();
    let record = run.record.get();
    let pipeline = run.spec.name.clone();
    let state = format!("{:?}", s.status).to_lowercase();
    RecordedSpan {
        name: format!("run {pipeline}"),
        trace_id: record.trace_id.clone(),
        span_id: record.root_span_id.clone(),
        parent_span_id: record.trace_parent_span_id.clone(),
        start_ms: record.created_at_ms,
        end_ms: s.finished_at.unwrap_or_default(),
        attributes: vec![
            KeyValue::new("drover.run", record.id.clone()),
            KeyValue::new("drover.pipeline", pipeline),
            KeyValue::new("drover.queue", record.queue.clone()),
            KeyValue::new("drover.priority", record.priority),
            KeyValue::new("drover.run.state", state),
        ],
        events: Vec::new(),
        error: (s.status != RunStatus::Succeeded).then(|| s.message.clone()),
    }
}
