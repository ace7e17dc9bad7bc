//! What the agent advertises in its heartbeats — reserved CPUs and memory,
//! labels, simulated or real GPUs, host name and instance — read off a real
//! nats-server.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use common::*;
use drover_agent::{Agent, AgentError, AgentOptions};
use drover_api::naming;
use drover_api::pb::Heartbeat;
use futures::StreamExt;

const GI: u64 = 1 << 30;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: AgentOptions,
}

/// `drover-agent` flags (with the required `--artifacts`) as options.
fn flags(args: &[&str]) -> Result<AgentOptions> {
    let argv = ["drover-agent", "--artifacts=file:///unused"]
        .into_iter()
        .chain(args.iter().copied());
    Ok(Cli::try_parse_from(argv)?.opts)
}

/// The next heartbeat on `subscriber`.
async fn next_heartbeat(subscriber: &mut async_nats::Subscriber) -> Result<Heartbeat> {
    match tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await {
        Err(_) => bail!("no heartbeat within 5s"),
        Ok(None) => bail!("heartbeat subscription ended"),
        Ok(Some(msg)) => heartbeat(&msg),
    }
}

fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn heartbeats_advertise_reserved_capacity_labels_and_simulated_gpus() -> Result<()> {
    let parsed = flags(&[
        "--simulate-gpus",
        "2",
        "--label",
        "zone=a",
        "--cpus",
        "1",
        "--memory",
        "1Gi",
    ])?;
    let mut h = Harness::start_with(|o| {
        o.cpu_millis = parsed.cpu_millis;
        o.memory_bytes = parsed.memory_bytes;
        o.labels = parsed.labels;
        o.simulate_gpus = parsed.simulate_gpus;
        o.simulate_gpu_model = parsed.simulate_gpu_model;
        o.simulate_gpu_memory_bytes = parsed.simulate_gpu_memory_bytes;
    })
    .await?;
    let mut heartbeats = h.heartbeats().await?;
    drover_devcluster::nats_synced(&h.client).await?;

    let hb = next_heartbeat(&mut heartbeats).await?;
    assert_eq!(hb.agent_id, AGENT_ID);
    assert_eq!(hb.cpu_millis, 1000);
    assert_eq!(hb.memory_bytes, GI);
    assert_eq!(hb.labels.len(), 1);
    assert_eq!(hb.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(hb.hostname, kernel_hostname());
    assert!(!hb.hostname.is_empty());
    assert_eq!(hb.instance.len(), 32, "{:?}", hb.instance);

    assert_eq!(hb.gpus.len(), 2, "{:?}", hb.gpus);
    for (i, gpu) in hb.gpus.iter().enumerate() {
        assert_eq!(gpu.index as usize, i);
        assert_eq!(
            gpu.uuid,
            format!("{}{AGENT_ID}-{i}", naming::SIMULATED_GPU_UUID_PREFIX)
        );
        assert!(gpu.simulated);
        assert_eq!(gpu.name, "Simulated GPU");
        assert_eq!(gpu.memory_total_bytes, 80 * GI);
        assert_eq!(
            (
                gpu.memory_used_bytes,
                gpu.utilization_percent,
                gpu.temperature_c,
                gpu.power_mw
            ),
            (0, 0, 0, 0)
        );
    }
    assert!(hb.driver_version.is_empty() && hb.cuda_version.is_empty());
    // Whole-machine usage is measured, not reserved.
    assert!(hb.memory_used_bytes > 0, "{hb:?}");
    assert!((0.0..=100.0).contains(&hb.cpu_usage_percent), "{hb:?}");

    // The same process, the next heartbeat: the same instance.
    let again = next_heartbeat(&mut heartbeats).await?;
    assert_eq!(again.instance, hb.instance);
    assert_eq!(again.gpus, hb.gpus);

    // A restarted agent announces a new instance.
    h.stop_agent().await?;
    h.restart_agent().await?;
    let restarted = next_heartbeat(&mut heartbeats).await?;
    assert_eq!(restarted.agent_id, AGENT_ID);
    assert_ne!(restarted.instance, hb.instance);
    assert_eq!(restarted.gpus, hb.gpus, "simulated UUIDs are stable");
    Ok(())
}

/// Without `--simulate-gpus` the agent asks NVML. On a machine without the
/// NVIDIA driver (no /proc/driver/nvidia) that means zero GPUs, and the
/// agent runs as usual; with the driver, real and unsimulated GPUs.
#[tokio::test]
async fn real_mode_reports_the_machines_gpus_or_none_without_failing() -> Result<()> {
    let h = Harness::start().await?;
    let mut heartbeats = h.heartbeats().await?;
    drover_devcluster::nats_synced(&h.client).await?;
    let hb = next_heartbeat(&mut heartbeats).await?;
    // The whole machine by default.
    assert!(hb.cpu_millis >= 1000 && hb.cpu_millis % 1000 == 0, "{hb:?}");
    assert!(hb.memory_bytes >= hb.memory_used_bytes && hb.memory_used_bytes > 0);
    assert!(hb.labels.is_empty());

    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        assert!(!hb.driver_version.is_empty(), "{hb:?}");
        assert!(hb.gpus.iter().all(|g| !g.simulated && !g.uuid.is_empty()));
    } else {
        assert!(hb.gpus.is_empty(), "{:?}", hb.gpus);
        assert!(hb.driver_version.is_empty() && hb.cuda_version.is_empty());
    }
    // Still heartbeating: NVML's absence is noticed once, not a failure.
    next_heartbeat(&mut heartbeats).await?;
    Ok(())
}

#[tokio::test]
async fn reserving_more_than_the_machine_has_stops_the_start() -> Result<()> {
    for (args, flag) in [
        (&["--id=a1", "--cpus=100000"][..], "--cpus"),
        (&["--id=a1", "--memory=1Ei"][..], "--memory"),
        (&["--id=a1", "--label=zone a"][..], "label"),
    ] {
        let opts = flags(args)?;
        // Refused before anything is connected: no NATS is needed.
        let started = Agent::run(opts, std::future::pending()).await;
        match started {
            Err(AgentError::Config(msg)) => assert!(msg.contains(flag), "{flag}: {msg}"),
            other => bail!("{args:?}: expected a configuration error, got {other:?}"),
        }
    }
    Ok(())
}
