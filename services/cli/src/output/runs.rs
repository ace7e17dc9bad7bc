//! Runs: `drover get`, `list`, `watch`'s change lines, `submit --dry-run`.

use std::fmt::Write as _;

use drover_api::pb;
use serde_json::{json, Value};

use super::*;

/// The queue a run without one waits in (the scheduler fills it in; older
/// runs may not have it).
const DEFAULT_QUEUE: &str = "default";

fn queue_of(queue: &str) -> &str {
    if queue.is_empty() {
        DEFAULT_QUEUE
    } else {
        queue
    }
}

/// Why a task is in its state. A task waiting again because its latest
/// attempt was preempted says so: the scheduler puts the reason in the
/// task's message; the attempt's error is the fallback.
pub(super) fn task_message(t: &pb::Task) -> String {
    let mut msg = t.message.clone();
    let preempted = t
        .attempts
        .last()
        .filter(|a| t.state() == pb::TaskState::Ready && a.state() == pb::AttemptState::Preempted);
    if let Some(a) = preempted {
        let note = if a.error.is_empty() {
            format!("attempt {} preempted", a.number)
        } else {
            format!("attempt {} preempted: {}", a.number, a.error)
        };
        if msg.is_empty() {
            msg = note;
        } else if !a.error.is_empty() && !msg.contains(&a.error) {
            msg = format!("{msg}; {note}");
        }
    }
    msg
}

fn run_elapsed(run: &pb::Run, now_ms: u64) -> u64 {
    let end = if run.finished_at_ms > 0 {
        run.finished_at_ms
    } else {
        now_ms
    };
    end.saturating_sub(run.created_at_ms)
}

fn attempt_elapsed(a: &pb::Attempt) -> Option<u64> {
    (a.started_at_ms > 0 && a.finished_at_ms >= a.started_at_ms)
        .then(|| a.finished_at_ms - a.started_at_ms)
}

/// `drover get` as a table.
pub fn run_table(run: &pb::Run, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Run:       {}", run.id);
    let _ = writeln!(out, "Pipeline:  {}", run.name);
    let _ = writeln!(out, "State:     {}", run_state(run.state()));
    let _ = writeln!(out, "Queue:     {}", queue_of(&run.queue));
    let _ = writeln!(out, "Priority:  {}", run.priority);
    let _ = writeln!(out, "Created:   {}", timestamp(run.created_at_ms));
    let _ = writeln!(out, "Duration:  {}", duration(run_elapsed(run, now_ms)));
    if !run.trace_id.is_empty() {
        let _ = writeln!(out, "Trace:     {}", run.trace_id);
    }
    if !run.code_sha256.is_empty() {
        let _ = writeln!(out, "Code:      sha256:{}", run.code_sha256);
    }
    if !run.params.is_empty() {
        let mut params: Vec<_> = run.params.iter().collect();
        params.sort();
        let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "Params:    {}", p.join(" "));
    }
    if !run.message.is_empty() {
        let _ = writeln!(out, "Message:   {}", run.message);
    }
    let width = run
        .tasks
        .iter()
        .map(|t| shown_name(t).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<10}  {:>8}  {:<16}  {:>8}  MESSAGE",
        "TASK", "STATE", "ATTEMPTS", "AGENT", "DURATION"
    );
    for t in &run.tasks {
        let last = t.attempts.last();
        let agent = last.map_or_else(
            || "-".to_string(),
            |a| {
                if a.cached_from.is_some() {
                    "(cached)".to_owned()
                } else if a.gpus.is_empty() {
                    a.agent_id.clone()
                } else {
                    let idx: Vec<String> = a.gpus.iter().map(|g| g.index.to_string()).collect();
                    format!("{} gpu:{}", a.agent_id, idx.join(","))
                }
            },
        );
        let took = last
            .and_then(attempt_elapsed)
            .map_or_else(|| "-".to_string(), duration);
        let mut msg = task_message(t);
        if let (Some(from), true) = (last.and_then(|a| a.cached_from.as_ref()), msg.is_empty()) {
            msg = format!("cached from {}", source_name(from));
        }
        if let Some(code) = last.and_then(|a| a.exit_code).filter(|c| *c != 0) {
            if !msg.contains("code") {
                msg = format!("exit code {code}; {msg}");
            }
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:>8}  {:<16}  {:>8}  {}",
            shown_name(t),
            task_state(t.state()),
            t.attempts.len(),
            agent,
            took,
            msg
        );
    }
    out
}

/// An attempt as `run/task/attempt`.
pub fn source_name(s: &pb::AttemptSource) -> String {
    format!("{}/{}/{}", s.run_id, s.task, s.attempt)
}

/// A task's name with `finally` tasks marked.
fn finally_name(name: &str, finally: bool) -> String {
    if finally {
        format!("{name} (finally)")
    } else {
        name.to_owned()
    }
}

/// Most characters of a `for_each` item a table shows.
const ITEM_WIDTH: usize = 24;

/// A task's name as tables show it: `finally` tasks marked, `for_each`
/// instances with their item.
fn shown_name(t: &pb::Task) -> String {
    if t.finally {
        finally_name(&t.name, true)
    } else if !t.item.is_empty() {
        let mut item: String = t.item.chars().take(ITEM_WIDTH).collect();
        if item.len() < t.item.len() {
            item.push('…');
        }
        format!("{} ({item})", t.name)
    } else {
        t.name.clone()
    }
}

pub fn run_json(run: &pb::Run) -> Value {
    json!({
        "id": run.id,
        "name": run.name,
        "state": json_name(&run_state(run.state())),
        "params": run.params,
        "created_at_ms": run.created_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "message": run.message,
        "fail_fast": run.fail_fast,
        "queue": queue_of(&run.queue),
        "priority": run.priority,
        "trace_id": run.trace_id,
        "root_span_id": run.root_span_id,
        "code_sha256": run.code_sha256,
        "tasks": run.tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

fn task_json(t: &pb::Task) -> Value {
    let mut v = json!({
        "name": t.name,
        "state": json_name(&task_state(t.state())),
        "depends_on": t.depends_on,
        "finally": t.finally,
        "message": t.message,
        "retry_at_ms": t.retry_at_ms,
        "unschedulable": t.unschedulable,
        "attempts": t.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    });
    if let (false, Some(o)) = (t.item.is_empty(), v.as_object_mut()) {
        o.insert("item".into(), json!(t.item));
    }
    v
}

fn attempt_json(a: &pb::Attempt) -> Value {
    json!({
        "number": a.number,
        "agent_id": a.agent_id,
        "state": json_name(&attempt_state(a.state())),
        "ready_at_ms": a.ready_at_ms,
        "assigned_at_ms": a.assigned_at_ms,
        "started_at_ms": a.started_at_ms,
        "finished_at_ms": a.finished_at_ms,
        "exit_code": a.exit_code,
        "error": a.error,
        "log_key": a.log_key,
        "log_empty": a.log_empty,
        "image_digest": a.image_digest,
        "cache_key": a.cache_key,
        "cached_from": a.cached_from.as_ref().map(|s| json!({
            "run_id": s.run_id, "task": s.task, "attempt": s.attempt,
        })),
        "gpus": a.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid, "model": g.model})).collect::<Vec<_>>(),
        "outputs": a.outputs.iter().map(|o| json!({
            "name": o.name, "key": o.key, "sha256": o.sha256, "size": o.size,
            "result": o.result.as_deref().map(result_json),
        })).collect::<Vec<_>>(),
    })
}

/// A `result: true` output as JSON shows it: parsed if it is JSON, else text.
fn result_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).trim_end().to_owned()))
}

pub fn summary_json(r: &pb::RunSummary) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "state": json_name(&run_state(r.state())),
        "created_at_ms": r.created_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "tasks": r.tasks_total,
        "queue": queue_of(&r.queue),
        "priority": r.priority,
    })
}

pub fn list_table(runs: &[pb::RunSummary], now_ms: u64) -> String {
    let width = runs.iter().map(|r| r.id.len()).max().unwrap_or(3).max(3);
    let queues = runs
        .iter()
        .map(|r| queue_of(&r.queue).chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:<10}  {:<queues$}  {:>5}  {:<23}  DURATION\n",
        "RUN", "STATE", "QUEUE", "TASKS", "CREATED"
    );
    for r in runs {
        let end = if r.finished_at_ms > 0 {
            r.finished_at_ms
        } else {
            now_ms
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:<queues$}  {:>5}  {:<23}  {}",
            r.id,
            run_state(r.state()),
            queue_of(&r.queue),
            r.tasks_total,
            timestamp(r.created_at_ms),
            duration(end.saturating_sub(r.created_at_ms))
        );
    }
    out
}

/// `drover submit --dry-run`: the expanded DAG as the scheduler would run
/// it, one task a line, with its resolved command.
pub fn dry_run_table(spec: &pb::PipelineSpec) -> String {
    let queue = if spec.queue.is_empty() {
        "default"
    } else {
        spec.queue.as_str()
    };
    let mut out = format!(
        "pipeline {}: {} tasks, queue {queue}, priority {} (not submitted)\n",
        spec.name,
        spec.tasks.len(),
        spec.priority
    );
    let rows: Vec<Vec<String>> = spec
        .tasks
        .iter()
        .map(|t| {
            let after = match t.depends_on.len() {
                0 if t.finally => "every other task".to_string(),
                0 => "-".to_string(),
                // A sweep's instances would fill the line: say how many.
                n if n > 4 => format!("{n} tasks"),
                _ => t.depends_on.join(", "),
            };
            let mut runs = match t.image.as_str() {
                "" => format!("process: {}", t.command.join(" ")),
                image => format!("{image}: {}", t.command.join(" ")),
            };
            if !t.workdir.is_empty() {
                runs.push_str(&format!(" (in {})", t.workdir));
            }
            let mut cap = match t.max_parallel {
                0 => String::new(),
                n => format!(" (max_parallel {n})"),
            };
            if let Some(from) = &t.for_each {
                cap.push_str(&format!(
                    " (for_each {}/{})",
                    from.from_task, from.from_output
                ));
            }
            vec![finally_name(&t.name, t.finally) + &cap, after, runs]
        })
        .collect();
    // Conditions only when there are some: most pipelines have none.
    if spec.tasks.iter().any(|t| !t.when.is_empty()) {
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .zip(&spec.tasks)
            .map(|(mut row, t)| {
                let when = if t.when.is_empty() { "-" } else { &t.when };
                row.insert(2, when.to_owned());
                row
            })
            .collect();
        let headers = ["TASK", "AFTER", "WHEN", "RUNS"];
        out.push_str(&table(&headers, &[false; 4], &rows));
    } else {
        out.push_str(&table(&["TASK", "AFTER", "RUNS"], &[false; 3], &rows));
    }
    out
}

/// Lines describing what changed between two snapshots of a run (for `watch`).
/// Each with the task's new state.
pub fn changes(before: Option<&pb::Run>, after: &pb::Run) -> Vec<(pb::TaskState, String)> {
    let mut lines = Vec::new();
    let width = after.tasks.iter().map(|t| t.name.len()).max().unwrap_or(4);
    for (i, t) in after.tasks.iter().enumerate() {
        // Tasks keep their order from one snapshot to the next.
        let prev = before
            .and_then(|b| b.tasks.get(i))
            .filter(|p| p.name == t.name);
        let same = prev.is_some_and(|p| p.state == t.state && p.attempts.len() == t.attempts.len());
        if same || (prev.is_none() && t.state() == pb::TaskState::Pending) {
            continue;
        }
        let last = t.attempts.last();
        let detail = match t.state() {
            pb::TaskState::Assigned | pb::TaskState::Running => last
                .map(|a| format!("attempt {} on {}", a.number, a.agent_id))
                .unwrap_or_default(),
            pb::TaskState::Succeeded => last
                .and_then(attempt_elapsed)
                .map(|d| format!("in {}", duration(d)))
                .unwrap_or_default(),
            _ => task_message(t),
        };
        let line = format!(
            "{:<width$}  {:<10}  {}",
            t.name,
            task_state(t.state()),
            detail
        );
        lines.push((t.state(), line));
    }
    lines
}
