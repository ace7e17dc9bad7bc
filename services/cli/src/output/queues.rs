//! Queues: `drover queue list`, `queue show` and their JSON.

use std::fmt::Write as _;

use drover_api::pb;
use serde_json::{json, Value};

use super::*;

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
