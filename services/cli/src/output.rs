//! How runs look in a terminal and as JSON.

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

fn attempt_state(s: pb::AttemptState) -> String {
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
    let _ = writeln!(out, "Created:   {}", timestamp(run.created_at_ms));
    let _ = writeln!(out, "Duration:  {}", duration(run_elapsed(run, now_ms)));
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
        let mut msg = t.message.clone();
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
                "assigned_at_ms": a.assigned_at_ms,
                "started_at_ms": a.started_at_ms,
                "finished_at_ms": a.finished_at_ms,
                "exit_code": a.exit_code,
                "error": a.error,
                "log_key": a.log_key,
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
    })
}

pub fn list_table(runs: &[pb::RunSummary], now_ms: u64) -> String {
    let width = runs.iter().map(|r| r.id.len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "{:<width$}  {:<10}  {:>5}  {:<23}  DURATION\n",
        "RUN", "STATE", "TASKS", "CREATED"
    );
    for r in runs {
        let end = if r.finished_at_ms > 0 {
            r.finished_at_ms
        } else {
            now_ms
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:>5}  {:<23}  {}",
            r.id,
            run_state(r.state()),
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
            _ => t.message.clone(),
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
