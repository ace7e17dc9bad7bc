//! How runs, agents and queues look in a terminal and as JSON.

use std::fmt::Write as _;

use drover_api::pb;
use serde_json::{json, Value};

/// `TASK_STATE_RETRY_WAIT` → `RetryWait`.
fn pretty(name: &str, prefix: &str) -> String {
    let s = name.strip_prefix(prefix).unwrap_or(name);
    let mut out = String::with_capacity(s.len());
    for word in s.split('_') {
        let mut chars = word.chars();
        if let Some(c) = chars.next() {
            out.push(c);
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

pub fn run_state(s: pb::RunState) -> String {
    pretty(s.as_str_name(), "RUN_STATE_")
}

pub fn task_state(s: pb::TaskState) -> String {
    pretty(s.as_str_name(), "TASK_STATE_")
}

pub fn agent_state(s: pb::AgentState) -> String {
    pretty(s.as_str_name(), "AGENT_STATE_")
}

pub fn attempt_state(s: pb::AttemptState) -> String {
    pretty(s.as_str_name(), "ATTEMPT_STATE_")
}

/// `RetryWait` → `retry_wait`.
fn json_name(pretty: &str) -> String {
    let mut out = String::with_capacity(pretty.len() + 2);
    for (i, c) in pretty.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Milliseconds as `1.2s`, `3m04s`, `1h02m`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Unix milliseconds as `2026-11-22 07:40:01 UTC`.
pub fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Unix milliseconds as `07:40:01`.
pub fn clock(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

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
fn task_message(t: &pb::Task) -> String {
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
        .map(|t| t.name.len())
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
                if a.gpus.is_empty() {
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
        if let Some(code) = last.and_then(|a| a.exit_code).filter(|c| *c != 0) {
            if !msg.contains("code") {
                msg = format!("exit code {code}; {msg}");
            }
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:>8}  {:<16}  {:>8}  {}",
            t.name,
            task_state(t.state()),
            t.attempts.len(),
            agent,
            took,
            msg
        );
    }
    out
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
        "tasks": run.tasks.iter().map(|t| json!({
            "name": t.name,
            "state": json_name(&task_state(t.state())),
            "depends_on": t.depends_on,
            "message": t.message,
            "retry_at_ms": t.retry_at_ms,
            "unschedulable": t.unschedulable,
            "attempts": t.attempts.iter().map(|a| json!({
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
                "gpus": a.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid})).collect::<Vec<_>>(),
                "outputs": a.outputs.iter().map(|o| json!({
                    "name": o.name, "key": o.key, "sha256": o.sha256, "size": o.size,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
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

fn gib(bytes: u64) -> String {
    format!("{:.1}Gi", bytes as f64 / (1u64 << 30) as f64)
}

fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{:.2}", millis as f64 / 1000.0)
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    format!("{} ago", duration(now_ms.saturating_sub(then_ms)))
}

/// `drover agent list`: one line per agent, then its GPUs.
pub fn agents_table(agents: &[pb::Agent], now_ms: u64) -> String {
    let width = agents.iter().map(|a| a.id.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$}  {:<9}  {:<15}  {:>11}  {:>15}  {:>5}  {:>7}  LAST SEEN\n",
        "AGENT", "STATE", "EXECUTORS", "CPU", "MEMORY", "GPUS", "RUNNING"
    );
    for a in agents {
        let used_gpus = a.gpus.iter().filter(|g| !g.allocated_to.is_empty()).count();
        let _ = writeln!(
            out,
            "{:<width$}  {:<9}  {:<15}  {:>11}  {:>15}  {:>5}  {:>7}  {}",
            a.id,
            agent_state(a.state()),
            a.executors.join(","),
            format!(
                "{}/{}",
                cores(a.allocated_cpu_millis),
                cores(u64::from(a.cpu_millis))
            ),
            format!("{}/{}", gib(a.allocated_memory_bytes), gib(a.memory_bytes)),
            format!("{used_gpus}/{}", a.gpus.len()),
            a.running_attempts,
            ago(now_ms, a.last_seen_ms),
        );
        if !a.labels.is_empty() {
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "    labels: {}", labels.join(" "));
        }
        if !a.gpus.is_empty() {
            let _ = writeln!(
                out,
                "    {:>3}  {:<30}  {:>15}  {:>4}  {:>5}  {:>6}  ALLOCATED TO",
                "GPU", "NAME", "MEMORY", "UTIL", "TEMP", "POWER"
            );
            for g in &a.gpus {
                let Some(info) = &g.info else { continue };
                let mut name = info.name.clone();
                if info.simulated {
                    name.push_str(" (simulated)");
                }
                let _ = writeln!(
                    out,
                    "    {:>3}  {:<30}  {:>15}  {:>3}%  {:>4}C  {:>5}W  {}",
                    info.index,
                    name,
                    format!(
                        "{}/{}",
                        gib(info.memory_used_bytes),
                        gib(info.memory_total_bytes)
                    ),
                    info.utilization_percent,
                    info.temperature_c,
                    info.power_mw / 1000,
                    if g.allocated_to.is_empty() {
                        "-"
                    } else {
                        &g.allocated_to
                    },
                );
            }
        }
    }
    out
}

pub fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "id": a.id,
        "state": json_name(&agent_state(a.state())),
        "hostname": a.hostname,
        "executors": a.executors,
        "labels": a.labels,
        "cpu_millis": a.cpu_millis,
        "memory_bytes": a.memory_bytes,
        "allocated_cpu_millis": a.allocated_cpu_millis,
        "allocated_memory_bytes": a.allocated_memory_bytes,
        "cpu_usage_percent": a.cpu_usage_percent,
        "memory_used_bytes": a.memory_used_bytes,
        "running_attempts": a.running_attempts,
        "last_seen_ms": a.last_seen_ms,
        "driver_version": a.driver_version,
        "cuda_version": a.cuda_version,
        "drained": a.drained,
        "gpus": a.gpus.iter().filter_map(|g| {
            let i = g.info.as_ref()?;
            Some(json!({
                "index": i.index,
                "uuid": i.uuid,
                "name": i.name,
                "memory_total_bytes": i.memory_total_bytes,
                "memory_used_bytes": i.memory_used_bytes,
                "utilization_percent": i.utilization_percent,
                "temperature_c": i.temperature_c,
                "power_mw": i.power_mw,
                "simulated": i.simulated,
                "allocated_to": g.allocated_to,
            }))
        }).collect::<Vec<_>>(),
    })
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
                0 => "-".to_string(),
                // A sweep's instances would fill the line: say how many.
                n if n > 4 => format!("{n} tasks"),
                _ => t.depends_on.join(", "),
            };
            let runs = match t.image.as_str() {
                "" => format!("process: {}", t.command.join(" ")),
                image => format!("{image}: {}", t.command.join(" ")),
            };
            let cap = match t.max_parallel {
                0 => String::new(),
                n => format!(" (max_parallel {n})"),
            };
            vec![t.name.clone() + &cap, after, runs]
        })
        .collect();
    out.push_str(&table(&["TASK", "AFTER", "RUNS"], &[false; 3], &rows));
    out
}

/// Columns separated by two spaces, each as wide as its widest cell; `right`
/// says which are right-aligned (numbers). The last column is not padded.
fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths[c];
            if right[c] {
                let _ = write!(line, "{cell:>w$}");
            } else if c + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}");
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Shown for a resource without a quota.
const UNLIMITED: &str = "∞";

pub fn queue_state(q: &pb::Queue) -> &'static str {
    if q.paused {
        "paused"
    } else {
        "active"
    }
}

/// As the `--preemption` flag spells it; unset is what the scheduler
/// defaults to.
fn preemption(q: &pb::Queue) -> &'static str {
    match q.preemption() {
        pb::Preemption::LowerPriority => "lower-priority",
        pb::Preemption::Never | pb::Preemption::Unspecified => "never",
    }
}

fn quota_of(q: &pb::Queue) -> pb::Quota {
    q.quota.unwrap_or_default()
}

fn or_unlimited<T>(v: Option<T>, show: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| UNLIMITED.to_owned(), show)
}

fn cpu_quota(q: &pb::Quota) -> String {
    or_unlimited(q.cpu_millis, |m| cores(u64::from(m)))
}

fn memory_quota(q: &pb::Quota) -> String {
    or_unlimited(q.memory_bytes, gib)
}

fn gpu_quota(q: &pb::Quota) -> String {
    or_unlimited(q.gpus, |g| g.to_string())
}

/// The non-zero parts of a borrowed amount, `-` when nothing is borrowed.
fn borrowed(b: &pb::ResourceUsage) -> String {
    let mut parts = Vec::new();
    if b.cpu_millis > 0 {
        parts.push(format!("cpu {}", cores(b.cpu_millis)));
    }
    if b.memory_bytes > 0 {
        parts.push(format!("memory {}", gib(b.memory_bytes)));
    }
    if b.gpus > 0 {
        parts.push(format!("gpus {}", b.gpus));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `create`, `update` and the top of `show`: every setting of a queue.
pub fn queue_settings(q: &pb::Queue) -> String {
    let quota = quota_of(q);
    let mut out = String::new();
    let _ = writeln!(out, "Queue:        {}", q.name);
    let _ = writeln!(out, "State:        {}", queue_state(q));
    let _ = writeln!(out, "Priority:     {}", q.priority);
    let _ = writeln!(out, "Weight:       {}", q.weight.max(1));
    let _ = writeln!(
        out,
        "Quota:        cpu {}, memory {}, gpus {}",
        cpu_quota(&quota),
        memory_quota(&quota),
        gpu_quota(&quota)
    );
    let _ = writeln!(
        out,
        "Max running:  {}",
        or_unlimited(q.max_running, |n| n.to_string())
    );
    let _ = writeln!(out, "Preemption:   {}", preemption(q));
    let _ = writeln!(out, "Borrow:       {}", if q.borrow { "yes" } else { "no" });
    out
}

/// `drover queue list`: one line per queue, usage as `used/quota`.
pub fn queues_table(queues: &[pb::QueueStatus]) -> String {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|s| {
            let q = s.queue.clone().unwrap_or_default();
            let quota = quota_of(&q);
            let used = s.used.unwrap_or_default();
            vec![
                q.name.clone(),
                q.priority.to_string(),
                q.weight.max(1).to_string(),
                queue_state(&q).to_owned(),
                format!("{}/{}", cores(used.cpu_millis), cpu_quota(&quota)),
                format!("{}/{}", gib(used.memory_bytes), memory_quota(&quota)),
                format!("{}/{}", used.gpus, gpu_quota(&quota)),
                borrowed(&s.borrowed.unwrap_or_default()),
                s.pending.to_string(),
                s.running.to_string(),
                s.runs.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "PRIO", "WEIGHT", "STATE", "CPU", "MEMORY", "GPUS", "BORROWED", "PENDING",
            "RUNNING", "RUNS",
        ],
        &[
            false, true, true, false, true, true, true, false, true, true, true,
        ],
        &rows,
    )
}

/// `drover queue show`: the settings, usage against quota, then the pending
/// tasks in the order they will be admitted.
pub fn queue_detail_table(d: &pb::QueueDetail) -> String {
    let status = d.status.clone().unwrap_or_default();
    let q = status.queue.clone().unwrap_or_default();
    let quota = quota_of(&q);
    let used = status.used.unwrap_or_default();
    let lent = status.borrowed.unwrap_or_default();
    let mut out = queue_settings(&q);
    let _ = writeln!(
        out,
        "Tasks:        {} running, {} pending, in {} active run{}",
        status.running,
        status.pending,
        status.runs,
        if status.runs == 1 { "" } else { "s" }
    );
    out.push('\n');
    let dash_if_zero = |v: String, zero: bool| if zero { "-".to_owned() } else { v };
    out.push_str(&table(
        &["RESOURCE", "USED", "QUOTA", "BORROWED"],
        &[false, true, true, true],
        &[
            vec![
                "cpu".into(),
                cores(used.cpu_millis),
                cpu_quota(&quota),
                dash_if_zero(cores(lent.cpu_millis), lent.cpu_millis == 0),
            ],
            vec![
                "memory".into(),
                gib(used.memory_bytes),
                memory_quota(&quota),
                dash_if_zero(gib(lent.memory_bytes), lent.memory_bytes == 0),
            ],
            vec![
                "gpus".into(),
                used.gpus.to_string(),
                gpu_quota(&quota),
                dash_if_zero(lent.gpus.to_string(), lent.gpus == 0),
            ],
        ],
    ));
    out.push('\n');
    if d.pending.is_empty() {
        out.push_str("No pending tasks.\n");
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .pending
        .iter()
        .map(|p| {
            vec![
                p.position.to_string(),
                p.run_id.clone(),
                p.task.clone(),
                p.run_priority.to_string(),
                waiting_for(&p.waiting_for),
                if p.reason.is_empty() {
                    "-".into()
                } else {
                    p.reason.clone()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["POS", "RUN", "TASK", "PRIO", "WAITING FOR", "REASON"],
        &[true, false, false, true, false, false],
        &rows,
    ));
    out
}

/// `no_capacity` → `no capacity`.
fn waiting_for(code: &str) -> String {
    if code.is_empty() {
        "-".into()
    } else {
        code.replace('_', " ")
    }
}

fn usage_json(u: &pb::ResourceUsage) -> Value {
    json!({"cpu_millis": u.cpu_millis, "memory_bytes": u.memory_bytes, "gpus": u.gpus})
}

/// A queue's settings and usage; unset quotas and `max_running` are `null`.
pub fn queue_status_json(s: &pb::QueueStatus) -> Value {
    let q = s.queue.clone().unwrap_or_default();
    let quota = quota_of(&q);
    json!({
        "name": q.name,
        "priority": q.priority,
        "weight": q.weight.max(1),
        "state": queue_state(&q),
        "paused": q.paused,
        "preemption": preemption(&q).replace('-', "_"),
        "borrow": q.borrow,
        "max_running": q.max_running,
        "quota": {
            "cpu_millis": quota.cpu_millis,
            "memory_bytes": quota.memory_bytes,
            "gpus": quota.gpus,
        },
        "used": usage_json(&s.used.unwrap_or_default()),
        "borrowed": usage_json(&s.borrowed.unwrap_or_default()),
        "pending": s.pending,
        "running": s.running,
        "runs": s.runs,
    })
}

/// `drover queue show -o json`: the status, plus `pending_tasks` in order.
pub fn queue_detail_json(d: &pb::QueueDetail) -> Value {
    let mut v = queue_status_json(&d.status.clone().unwrap_or_default());
    v["pending_tasks"] = d
        .pending
        .iter()
        .map(|p| {
            json!({
                "position": p.position,
                "run_id": p.run_id,
                "task": p.task,
                "run_priority": p.run_priority,
                "waiting_for": p.waiting_for,
                "reason": p.reason,
            })
        })
        .collect();
    v
}

/// Lines describing what changed between two snapshots of a run (for `watch`).
pub fn changes(before: Option<&pb::Run>, after: &pb::Run) -> Vec<String> {
    let mut lines = Vec::new();
    let width = after.tasks.iter().map(|t| t.name.len()).max().unwrap_or(4);
    for t in &after.tasks {
        let prev = before.and_then(|b| b.tasks.iter().find(|p| p.name == t.name));
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
        lines.push(format!(
            "{:<width$}  {:<10}  {}",
            t.name,
            task_state(t.state()),
            detail
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn state_names_read_well() {
        assert_eq!(run_state(pb::RunState::Succeeded), "Succeeded");
        assert_eq!(task_state(pb::TaskState::RetryWait), "RetryWait");
        assert_eq!(
            json_name(&task_state(pb::TaskState::RetryWait)),
            "retry_wait"
        );
    }

    #[test]
    fn durations_and_dates() {
        assert_eq!(duration(1_234), "1.2s");
        assert_eq!(duration(184_000), "3m04s");
        assert_eq!(duration(3_720_000), "1h02m");
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_795_334_401_000), "2026-11-22 08:00:01 UTC");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    fn queue_status() -> pb::QueueStatus {
        pb::QueueStatus {
            queue: Some(pb::Queue {
                name: "train".into(),
                priority: 10,
                weight: 2,
                quota: Some(pb::Quota {
                    cpu_millis: Some(8_000),
                    memory_bytes: Some(64 << 30),
                    gpus: Some(2),
                }),
                max_running: Some(4),
                paused: false,
                preemption: pb::Preemption::LowerPriority as i32,
                borrow: true,
            }),
            used: Some(pb::ResourceUsage {
                cpu_millis: 10_500,
                memory_bytes: 16 << 30,
                gpus: 2,
            }),
            borrowed: Some(pb::ResourceUsage {
                cpu_millis: 2_500,
                memory_bytes: 0,
                gpus: 0,
            }),
            pending: 3,
            running: 2,
            runs: 4,
        }
    }

    /// A queue as the scheduler creates it by default: nothing set.
    fn default_status() -> pb::QueueStatus {
        pb::QueueStatus {
            queue: Some(pb::Queue {
                name: "default".into(),
                paused: true,
                ..Default::default()
            }),
            used: Some(pb::ResourceUsage::default()),
            borrowed: None,
            pending: 0,
            running: 0,
            runs: 0,
        }
    }

    fn queue_detail() -> pb::QueueDetail {
        pb::QueueDetail {
            status: Some(queue_status()),
            pending: vec![
                pb::PendingTask {
                    position: 1,
                    run_id: "digits-7f3a".into(),
                    task: "train-lr-0.3".into(),
                    run_priority: 50,
                    waiting_for: "preempting".into(),
                    reason: "stopping 1 task of queue `research` on gpu-1".into(),
                },
                pb::PendingTask {
                    position: 2,
                    run_id: "digits-7f3a".into(),
                    task: "eval".into(),
                    run_priority: 50,
                    waiting_for: "no_capacity".into(),
                    reason: "no agent has 1 free GPU".into(),
                },
                pb::PendingTask {
                    position: 10,
                    run_id: "sweep-01".into(),
                    task: "t".into(),
                    run_priority: 0,
                    waiting_for: "max_running".into(),
                    reason: String::new(),
                },
            ],
        }
    }

    #[test]
    fn queue_list_shows_usage_against_quota() {
        let table = queues_table(&[queue_status(), default_status()]);
        assert_eq!(
            table,
            "\
NAME     PRIO  WEIGHT  STATE       CPU         MEMORY  GPUS  BORROWED  PENDING  RUNNING  RUNS
train      10       2  active  10.50/8  16.0Gi/64.0Gi   2/2  cpu 2.50        3        2     4
default     0       1  paused      0/∞        0.0Gi/∞   0/∞  -               0        0     0
"
        );
        // An empty list still has its header.
        assert_eq!(
            queues_table(&[]),
            "NAME  PRIO  WEIGHT  STATE  CPU  MEMORY  GPUS  BORROWED  PENDING  RUNNING  RUNS\n"
        );
    }

    #[test]
    fn queue_show_lists_settings_usage_and_pending_tasks_in_order() {
        assert_eq!(
            queue_detail_table(&queue_detail()),
            "\
Queue:        train
State:        active
Priority:     10
Weight:       2
Quota:        cpu 8, memory 64.0Gi, gpus 2
Max running:  4
Preemption:   lower-priority
Borrow:       yes
Tasks:        2 running, 3 pending, in 4 active runs

RESOURCE    USED   QUOTA  BORROWED
cpu        10.50       8      2.50
memory    16.0Gi  64.0Gi         -
gpus           2       2         -

POS  RUN          TASK          PRIO  WAITING FOR  REASON
  1  digits-7f3a  train-lr-0.3    50  preempting   stopping 1 task of queue `research` on gpu-1
  2  digits-7f3a  eval            50  no capacity  no agent has 1 free GPU
 10  sweep-01     t                0  max running  -
"
        );
        let empty = pb::QueueDetail {
            status: Some(default_status()),
            pending: vec![],
        };
        let text = queue_detail_table(&empty);
        assert!(text.contains("State:        paused\n"), "{text}");
        assert!(
            text.contains("Quota:        cpu ∞, memory ∞, gpus ∞\n"),
            "{text}"
        );
        assert!(text.contains("Max running:  ∞\n"), "{text}");
        assert!(text.contains("Preemption:   never\n"), "{text}");
        assert!(text.contains("Borrow:       no\n"), "{text}");
        assert!(text.ends_with("\nNo pending tasks.\n"), "{text}");
    }

    #[test]
    fn queue_json_has_nulls_for_unlimited() -> TestResult {
        let v = queue_status_json(&default_status());
        assert_eq!(v["name"], "default");
        assert_eq!(v["state"], "paused");
        assert_eq!(v["weight"], 1);
        assert_eq!(v["preemption"], "never");
        assert_eq!(v["max_running"], Value::Null);
        assert_eq!(
            v["quota"],
            json!({"cpu_millis": null, "memory_bytes": null, "gpus": null})
        );
        assert_eq!(
            v["borrowed"],
            json!({"cpu_millis": 0, "memory_bytes": 0, "gpus": 0})
        );

        let v = queue_detail_json(&queue_detail());
        assert_eq!(v["preemption"], "lower_priority");
        assert_eq!(v["max_running"], 4);
        assert_eq!(v["quota"]["gpus"], 2);
        assert_eq!(v["used"]["cpu_millis"], 10_500);
        assert_eq!(v["borrowed"]["cpu_millis"], 2_500);
        assert_eq!(
            (
                v["pending"].clone(),
                v["running"].clone(),
                v["runs"].clone()
            ),
            (json!(3), json!(2), json!(4))
        );
        let tasks = v["pending_tasks"].as_array().ok_or("no pending_tasks")?;
        assert_eq!(tasks.len(), 3);
        assert_eq!(
            tasks[1],
            json!({
                "position": 2,
                "run_id": "digits-7f3a",
                "task": "eval",
                "run_priority": 50,
                "waiting_for": "no_capacity",
                "reason": "no agent has 1 free GPU",
            })
        );
        Ok(())
    }

    fn preempted_run() -> pb::Run {
        pb::Run {
            id: "digits-7f3a".into(),
            name: "digits".into(),
            state: pb::RunState::Running as i32,
            queue: "research".into(),
            priority: 5,
            tasks: vec![pb::Task {
                name: "train".into(),
                state: pb::TaskState::Ready as i32,
                message:
                    "preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
                        .into(),
                attempts: vec![pb::Attempt {
                    number: 1,
                    agent_id: "gpu-1".into(),
                    state: pb::AttemptState::Preempted as i32,
                    error:
                        "preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
                            .into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn get_shows_queue_priority_and_preemption() -> TestResult {
        let run = preempted_run();
        let text = run_table(&run, 0);
        assert!(
            text.contains("Queue:     research\nPriority:  5\n"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("train"))
            .ok_or("no train line")?;
        assert!(line.contains("Ready"), "{line}");
        // The reason is shown once, from the task's message.
        assert!(
            line.ends_with(
                "  preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
            ),
            "{line}"
        );

        let v = run_json(&run);
        assert_eq!(v["queue"], "research");
        assert_eq!(v["priority"], 5);
        assert_eq!(v["tasks"][0]["attempts"][0]["state"], "preempted");
        assert_eq!(attempt_state(pb::AttemptState::Preempted), "Preempted");

        // A run stored before queues existed is in the default queue.
        let old = pb::Run::default();
        assert!(run_table(&old, 0).contains("Queue:     default\n"));
        assert_eq!(run_json(&old)["queue"], "default");
        Ok(())
    }

    #[test]
    fn a_ready_task_after_preemption_says_why() {
        let mut run = preempted_run();
        // No message from the scheduler: the attempt's error stands in.
        run.tasks[0].message.clear();
        assert_eq!(
            task_message(&run.tasks[0]),
            "attempt 1 preempted: preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
        );
        // A different message (waiting again) keeps the preemption note.
        run.tasks[0].message = "waiting for quota".into();
        run.tasks[0].attempts[0].error = "borrowed capacity reclaimed by queue `prod`".into();
        assert_eq!(
            task_message(&run.tasks[0]),
            "waiting for quota; attempt 1 preempted: borrowed capacity reclaimed by queue `prod`"
        );
        // Once it runs again, only its own message counts.
        run.tasks[0].state = pb::TaskState::Running as i32;
        run.tasks[0].message.clear();
        assert_eq!(task_message(&run.tasks[0]), "");

        // `watch` reports the move back to Ready with the reason.
        let before = pb::Run {
            tasks: vec![pb::Task {
                name: "train".into(),
                state: pb::TaskState::Running as i32,
                attempts: vec![pb::Attempt {
                    number: 1,
                    state: pb::AttemptState::Running as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = changes(Some(&before), &preempted_run());
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("Ready")
                && lines[0].contains("preempted for a task of higher-priority queue `prod`"),
            "{lines:?}"
        );
    }

    #[test]
    fn list_has_a_queue_column() {
        let runs = [
            pb::RunSummary {
                id: "a-1".into(),
                state: pb::RunState::Running as i32,
                queue: "research-gpu".into(),
                priority: 3,
                tasks_total: 2,
                ..Default::default()
            },
            pb::RunSummary {
                id: "b-2".into(),
                state: pb::RunState::Succeeded as i32,
                ..Default::default()
            },
        ];
        let text = list_table(&runs, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("RUN  STATE       QUEUE         TASKS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("a-1  Running     research-gpu      2"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b-2  Succeeded   default           0"),
            "{text}"
        );
        let v = summary_json(&runs[0]);
        assert_eq!(
            (v["queue"].clone(), v["priority"].clone()),
            (json!("research-gpu"), json!(3))
        );
    }

    #[test]
    fn watch_prints_only_changes() {
        let mut run = pb::Run {
            tasks: vec![pb::Task {
                name: "prep".into(),
                state: pb::TaskState::Ready as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let first = changes(None, &run);
        assert_eq!(first.len(), 1);
        assert!(changes(Some(&run.clone()), &run).is_empty());
        let before = run.clone();
        run.tasks[0].state = pb::TaskState::Failed as i32;
        run.tasks[0].message = "exited with code 3".into();
        let lines = changes(Some(&before), &run);
        assert!(lines[0].contains("Failed") && lines[0].contains("exited with code 3"));
    }
}
