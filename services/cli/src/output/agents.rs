//! Agents: `drover agent list` and its JSON.

use std::fmt::Write as _;

use drover_api::pb;
use serde_json::{json, Value};

use super::*;

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
