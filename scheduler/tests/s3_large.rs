//! A 1 GiB output through a real S3 store (a Garage started by the harness):
//! uploaded by one task and downloaded by the next while the agent's memory
//! stays bounded. Alone in its test binary, so the process's peak RSS is
//! the agent's (plus the harness's own), whatever runs the tests.

mod common;

use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb::RunState;
use drover_devcluster::garage::Garage;

const SIZE: u64 = 1 << 30;

/// Well under the file: a single PUT would hold all of it in memory, so
/// staying under this also shows the upload went in parts.
const RSS_BOUND: u64 = 256 << 20;

/// The peak resident set of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_output_goes_through_s3_with_the_agents_memory_bounded() {
    let garage = Garage::start("drover").await.unwrap();
    let mut c = Cluster::with_store(&garage.url("big"), garage.env()).await;
    c.add_agent("agent-1").await;
    let scratch = c.scratch.display().to_string();
    let spec = format!(
        r#"
name: big
tasks:
  - name: produce
    command: ["sh", "-c", "head -c {SIZE} /dev/urandom > $DROVER_OUTPUTS/big && sha256sum < $DROVER_OUTPUTS/big | cut -d' ' -f1 > {scratch}/produced"]
    outputs: [{{name: big, path: big}}]
  - name: consume
    depends_on: [produce]
    command: ["sh", "-c", "stat -c %s $DROVER_INPUTS/big > {scratch}/size && sha256sum < $DROVER_INPUTS/big | cut -d' ' -f1 > {scratch}/consumed"]
    inputs: [{{name: big, from: produce/big}}]
"#
    );
    let before = peak_rss();
    let started = Instant::now();
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, Duration::from_secs(240)).await;
    let took = started.elapsed();
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");

    let read = |name: &str| {
        std::fs::read_to_string(c.scratch.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let out = &task(&run, "produce").attempts[0].outputs[0];
    assert_eq!(out.size, SIZE);
    assert_eq!(read("produced"), out.sha256);
    assert_eq!(read("consumed"), out.sha256);
    assert_eq!(read("size"), SIZE.to_string());

    let peak = peak_rss();
    eprintln!(
        "1 GiB through S3 (upload and download) in {took:?}; peak RSS of the test process \
         (agent and harness): {} MiB, {} MiB before the run",
        peak >> 20,
        before >> 20
    );
    assert!(peak < RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}
