//! The docker executor against the real Docker engine (started by
//! ops/test.sh; these tests fail, never skip, without one), a real
//! nats-server and a `file://` store, with the test playing the scheduler.
//! Containers run a busybox image imported locally, on network `none`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use common::*;
use drover_api::naming::SIMULATED_GPU_UUID_PREFIX;
use drover_api::pb::{attempt_event::Kind, AttemptRef, PullPolicy};
use futures::StreamExt;

/// Written on the host into the attempt's `work/` (the container's
/// `/drover/work`) to let a waiting task go on.
async fn release(h: &Harness, a: &AttemptRef) -> Result<()> {
    tokio::fs::write(h.attempt_dir(a).join("work/go"), b"").await?;
    Ok(())
}

const WAIT_FOR_GO: &str = "while [ ! -e /drover/work/go ]; do sleep 0.05; done";

async fn log_of(h: &Harness, key: &str) -> Result<String> {
    Ok(String::from_utf8(h.store.get_bytes(key).await?.to_vec())?)
}

#[tokio::test]
async fn a_container_gets_inputs_env_gpus_limits_labels_and_uploads_outputs() -> Result<()> {
    let (h, image) = docker_harness("success", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let input_key = "runs/r1/prep.1/outputs/dataset";
    h.store
        .put_bytes(input_key, Bytes::from_static(b"hello\n"))
        .await?;

    let a = attempt_ref("r1", "train", 1);
    let script = format!(
        r#"set -e
cat "$DROVER_INPUTS/dataset" > "$DROVER_OUTPUTS/model.txt"
echo trained >> "$DROVER_OUTPUTS/model.txt"
env | grep -E '^(DROVER_|CUDA_|NVIDIA_|CUSTOM=)' | sort
echo "cwd=$PWD"
if touch "$DROVER_INPUTS/intruder" 2>/dev/null; then echo inputs=writable; else echo inputs=read-only; fi
echo to-stderr >&2
{WAIT_FOR_GO}
echo released
"#
    );
    let gpu1 = format!("{SIMULATED_GPU_UUID_PREFIX}1");
    let gpu3 = format!("{SIMULATED_GPU_UUID_PREFIX}3");
    let assignment = with_resources(
        with_gpus(
            with_output(
                with_input(
                    with_env(
                        with_image(
                            assignment(&a, &sh(&script)),
                            &image,
                            PullPolicy::Unspecified,
                        ),
                        "CUSTOM",
                        "yes",
                    ),
                    "dataset",
                    input_key,
                ),
                "model",
                "model.txt",
            ),
            &[(1, &gpu1), (3, &gpu3)],
        ),
        500,
        64 << 20,
    );
    let reply = h.assign(&assignment).await?;
    assert!(reply.accepted, "{}", reply.reason);

    // While it runs: name, labels, limits, network, mounts.
    let info = wait_container_state(&docker, &h.agent_id, &a, "running").await?;
    let id = info.id.clone().unwrap_or_default();
    assert_eq!(
        info.name.as_deref(),
        Some(format!("/drover-{}-r1-train-1", h.agent_id).as_str())
    );
    let labels = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    for (k, v) in [
        ("drover.run", "r1"),
        ("drover.task", "train"),
        ("drover.attempt", "1"),
        ("drover.agent", h.agent_id.as_str()),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let host = info.host_config.clone().unwrap_or_default();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.memory, Some(64 << 20));
    assert!(
        host.device_requests.unwrap_or_default().is_empty(),
        "no device request for simulated GPUs"
    );
    let mounts: HashMap<String, bool> = info
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| Some((m.destination?, m.rw?)))
        .collect();
    assert_eq!(mounts.get("/drover/inputs"), Some(&false), "{mounts:?}");
    assert_eq!(mounts.get("/drover/outputs"), Some(&true), "{mounts:?}");
    assert_eq!(mounts.get("/drover/work"), Some(&true), "{mounts:?}");

    release(&h, &a).await?;
    let fin = events.final_event(&a).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        panic!("expected success, got {fin:?}");
    };
    assert_eq!(ok.log_key, "runs/r1/train.1.log");
    // The id of the image the container was created from: what ran.
    let image_id = docker.inspect_image(&image).await?.id.unwrap_or_default();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert_eq!(ok.image_digest, image_id);
    assert_eq!(ok.outputs.len(), 1);
    let model = &ok.outputs[0];
    assert_eq!(model.name, "model");
    assert_eq!(model.key, "runs/r1/train.1/outputs/model");
    assert_eq!(model.size, 14);
    assert_eq!(model.sha256, sha256_hex(b"hello\ntrained\n"));
    assert_eq!(
        h.store.get_bytes(&model.key).await?,
        Bytes::from_static(b"hello\ntrained\n")
    );

    let log = log_of(&h, &ok.log_key).await?;
    for line in [
        format!("DROVER_AGENT_ID={}", h.agent_id),
        "DROVER_ATTEMPT=1".to_owned(),
        "DROVER_INPUTS=/drover/inputs".to_owned(),
        "DROVER_OUTPUTS=/drover/outputs".to_owned(),
        "DROVER_RUN_ID=r1".to_owned(),
        "DROVER_TASK=train".to_owned(),
        "CUDA_DEVICE_ORDER=PCI_BUS_ID".to_owned(),
        "CUDA_VISIBLE_DEVICES=1,3".to_owned(),
        format!("NVIDIA_VISIBLE_DEVICES={gpu1},{gpu3}"),
        "CUSTOM=yes".to_owned(),
        "cwd=/drover/work".to_owned(),
        "inputs=read-only".to_owned(),
        "to-stderr".to_owned(),
        "released".to_owned(),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "`{line}` not in log:\n{log}"
        );
    }
    assert!(!log.contains("[drover-agent]"), "{log}");
    assert!(inspect(&docker, &id).await?.is_none(), "container removed");
    Ok(())
}

#[tokio::test]
async fn a_failing_container_reports_its_exit_code_and_log() -> Result<()> {
    let (h, image) = docker_harness("failure", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;

    // Only docker is enabled: a process task is refused.
    let p = attempt_ref("r1", "plain", 1);
    let reply = h.assign(&assignment(&p, &["true"])).await?;
    assert!(!reply.accepted);
    assert_eq!(
        reply.reason,
        format!(
            "executor `process` is not enabled on agent `{}` (enabled: docker)",
            h.agent_id
        )
    );

    let a = attempt_ref("r1", "fail", 1);
    let cmd = sh("echo to-stdout; echo to-stderr >&2; exit 3");
    // Never, with the image present: used as is.
    let assignment = with_output(
        with_image(assignment(&a, &cmd), &image, PullPolicy::Never),
        "model",
        "model.json",
    );
    assert!(h.assign(&assignment).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.reason, "exited with code 3");
    assert!(!failed.cancelled);
    assert_eq!(failed.log_key, "runs/r1/fail.1.log");
    let log = log_of(&h, &failed.log_key).await?;
    let mut lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.pop(),
        Some("[drover-agent] attempt failed: exited with code 3"),
        "{log}"
    );
    // stdout and stderr are separate pipes: their order is not guaranteed.
    lines.sort();
    assert_eq!(lines, vec!["to-stderr", "to-stdout"], "{log}");
    assert!(h
        .store
        .get_bytes("runs/r1/fail.1/outputs/model")
        .await
        .is_err());
    assert!(containers_of(&docker, &h.agent_id, &a).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn cancel_stops_and_removes_the_container() -> Result<()> {
    let (h, image) = docker_harness("cancel", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r2", "train", 3);
    // Ignores SIGTERM: only the kill after the grace ends it.
    let cmd = sh(r#"trap "" TERM; echo started; while true; do sleep 0.05; done"#);
    let assignment = with_image(assignment(&a, &cmd), &image, PullPolicy::IfNotPresent);
    assert!(h.assign(&assignment).await?.accepted);
    let info = wait_container_state(&docker, &h.agent_id, &a, "running").await?;
    let id = info.id.unwrap_or_default();

    let grace = Duration::from_millis(300);
    let begun = Instant::now();
    assert!(h.cancel(&a, grace.as_millis() as u64).await?.found);
    let fin = events.final_event(&a).await?;
    let elapsed = begun.elapsed();
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert!(failed.cancelled);
    assert_eq!(failed.reason, "cancelled");
    assert_eq!(failed.exit_code, None);
    assert!(elapsed >= grace, "killed only after the grace: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    assert!(inspect(&docker, &id).await?.is_none(), "container removed");
    let log = log_of(&h, &failed.log_key).await?;
    assert!(log.starts_with("started\n"), "{log}");
    assert!(
        log.ends_with("[drover-agent] attempt failed: cancelled\n"),
        "{log}"
    );
    assert!(!h.cancel(&a, 0).await?.found);
    Ok(())
}

#[tokio::test]
async fn timeout_sends_sigterm_then_removes_the_container() -> Result<()> {
    let (h, image) = docker_harness("timeout", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "slow", 1);
    let cmd = sh(r#"trap 'echo got-sigterm; exit 0' TERM; while true; do sleep 0.05; done"#);
    let assignment = with_timeout(
        with_image(assignment(&a, &cmd), &image, PullPolicy::Unspecified),
        1000,
    );
    let begun = Instant::now();
    assert!(h.assign(&assignment).await?.accepted);
    let fin = events.final_event(&a).await?;
    let elapsed = begun.elapsed();
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert_eq!(failed.reason, "timed out after 1s");
    assert_eq!(failed.exit_code, None);
    assert!(!failed.cancelled);
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let log = log_of(&h, &failed.log_key).await?;
    assert!(
        log.lines().any(|l| l == "got-sigterm"),
        "the task got SIGTERM first: {log}"
    );
    assert!(containers_of(&docker, &h.agent_id, &a).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_unpullable_image_fails_fast_with_the_reason() -> Result<()> {
    let (h, _) = docker_harness("unpullable", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "pull", 1);
    let assignment = with_image(
        assignment(&a, &["true"]),
        "drover-test/does-not-exist:1",
        PullPolicy::IfNotPresent,
    );
    let begun = Instant::now();
    assert!(h.assign(&assignment).await?.accepted);
    let fin = events.final_event(&a).await?;
    let elapsed = begun.elapsed();
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert!(
        failed
            .reason
            .starts_with("pulling image `drover-test/does-not-exist:1`: "),
        "{}",
        failed.reason
    );
    assert!(failed.reason.len() > "pulling image `drover-test/does-not-exist:1`: ".len());
    assert_eq!(failed.exit_code, None);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let log = log_of(&h, &failed.log_key).await?;
    assert!(
        log.contains("pulling image `drover-test/does-not-exist:1`"),
        "{log}"
    );
    assert!(containers_of(&docker, &h.agent_id, &a).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn never_pull_policy_with_a_missing_image_fails() -> Result<()> {
    let (h, _) = docker_harness("never", |_| {}).await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "never", 1);
    let assignment = with_image(
        assignment(&a, &["true"]),
        "drover-test/not-here:never",
        PullPolicy::Never,
    );
    let begun = Instant::now();
    assert!(h.assign(&assignment).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert_eq!(
        failed.reason,
        format!(
            "image `drover-test/not-here:never` is not present on agent `{}` and its pull policy is Never",
            h.agent_id
        )
    );
    assert!(begun.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_containers() -> Result<()> {
    let (mut h, image) = docker_harness("restart", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let on_image = |a: &AttemptRef, script: &str| {
        with_image(assignment(a, &sh(script)), &image, PullPolicy::Unspecified)
    };

    // Keeps running through the restart, then succeeds with an output.
    let kept = attempt_ref("r1", "kept", 1);
    let kept_assignment = with_output(
        on_image(
            &kept,
            &format!(
                r#"echo before-restart; {WAIT_FOR_GO}; echo after-restart; echo model > "$DROVER_OUTPUTS/model.txt""#
            ),
        ),
        "model",
        "model.txt",
    );
    // Exits while no agent runs.
    let exited = attempt_ref("r1", "exited", 1);
    let exited_assignment = on_image(&exited, &format!("echo b-ran; {WAIT_FOR_GO}; exit 3"));
    // Its saved assignment disappears: the new agent cannot finish it.
    let lost = attempt_ref("r1", "lost", 1);
    let lost_assignment = on_image(&lost, "while true; do sleep 0.05; done");

    for a in [&kept_assignment, &exited_assignment, &lost_assignment] {
        assert!(h.assign(a).await?.accepted);
    }
    let mut started = Vec::new();
    for _ in 0..3 {
        let ev = events.next().await?;
        assert!(matches!(ev.kind(), Kind::Started(_)), "{ev:?}");
        started.extend(ev.event.attempt.clone());
    }
    started.sort_by(|x, y| x.task.cmp(&y.task));
    assert_eq!(started, vec![exited.clone(), kept.clone(), lost.clone()]);
    let kept_id = wait_container_state(&docker, &h.agent_id, &kept, "running")
        .await?
        .id
        .unwrap_or_default();
    for a in [&exited, &lost] {
        wait_container_state(&docker, &h.agent_id, a, "running").await?;
    }

    // A graceful stop leaves the containers running, and reports nothing.
    h.stop_agent().await?;
    for a in [&kept, &exited, &lost] {
        wait_container_state(&docker, &h.agent_id, a, "running").await?;
    }
    let none = events.next_within(Duration::from_millis(300)).await?;
    assert!(none.is_none(), "no final event at shutdown: {none:?}");

    release(&h, &exited).await?;
    wait_container_state(&docker, &h.agent_id, &exited, "exited").await?;
    tokio::fs::remove_file(h.attempt_dir(&lost).join("assignment.pb")).await?;

    // Same agent id, another work dir (another agent's): left alone.
    let foreign = attempt_ref("r9", "foreign", 1);
    let foreign_id = start_foreign_container(&docker, &image, &h.agent_id, &foreign).await?;

    let mut heartbeats = h.heartbeats().await?;
    drover_devcluster::nats_synced(&h.client).await?;
    h.restart_agent().await?;

    // The exited one is finished as if this agent had run it, the lost one
    // stopped and reported; both containers go.
    let mut finals = HashMap::new();
    for _ in 0..2 {
        let ev = events.next().await?;
        let attempt = ev.event.attempt.clone().unwrap_or_default();
        if finals.insert(attempt.task.clone(), ev).is_some() {
            bail!("two final events for {attempt:?}");
        }
    }
    let ev = finals.remove("exited").expect("final event of `exited`");
    let Kind::Failed(failed) = ev.kind() else {
        panic!("{ev:?}")
    };
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.reason, "exited with code 3");
    assert_eq!(
        log_of(&h, &failed.log_key).await?,
        "b-ran\n[drover-agent] attempt failed: exited with code 3\n"
    );
    let ev = finals.remove("lost").expect("final event of `lost`");
    let Kind::Failed(failed) = ev.kind() else {
        panic!("{ev:?}")
    };
    assert!(
        failed
            .reason
            .contains("restarted and could not recover the attempt"),
        "{}",
        failed.reason
    );
    for a in [&exited, &lost] {
        assert!(
            containers_of(&docker, &h.agent_id, a).await?.is_empty(),
            "{a:?}"
        );
    }

    // The kept one: the same container, still running, reported running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(2), heartbeats.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("heartbeats ended"))?;
        let hb = heartbeat(&msg)?;
        assert_eq!(hb.executors, vec!["docker".to_owned()]);
        assert!(hb.running.contains(&kept), "{:?}", hb.running);
        if hb.running == vec![kept.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", hb.running);
    }
    let info = wait_container_state(&docker, &h.agent_id, &kept, "running").await?;
    assert_eq!(info.id.as_deref(), Some(kept_id.as_str()), "not recreated");
    // The scheduler re-sends it: a duplicate, nothing new runs.
    assert!(h.assign(&kept_assignment).await?.accepted);
    assert_eq!(containers_of(&docker, &h.agent_id, &kept).await?.len(), 1);

    release(&h, &kept).await?;
    let ev = events.final_only(&kept).await?;
    let Kind::Succeeded(ok) = ev.kind() else {
        panic!("{ev:?}")
    };
    assert_eq!(ok.outputs.len(), 1);
    // An adopted container reports the image it ran, as one started here.
    let image_id = docker.inspect_image(&image).await?.id.unwrap_or_default();
    assert_eq!(ok.image_digest, image_id);
    assert_eq!(ok.outputs[0].sha256, sha256_hex(b"model\n"));
    assert_eq!(
        h.store.get_bytes(&ok.outputs[0].key).await?,
        Bytes::from_static(b"model\n")
    );
    assert_eq!(
        log_of(&h, &ok.log_key).await?,
        "before-restart\nafter-restart\n"
    );
    let left: Vec<_> = containers_of_agent(&docker, &h.agent_id)
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert_eq!(
        left,
        vec![foreign_id.clone()],
        "only the foreign container is left"
    );
    let info = inspect(&docker, &foreign_id)
        .await?
        .expect("foreign container");
    assert_eq!(
        state_of(&info),
        "running",
        "the foreign container is untouched"
    );
    let extra = events.next_within(Duration::from_millis(300)).await?;
    assert!(extra.is_none(), "unexpected event {extra:?}");
    Ok(())
}

/// A running container labelled like the agent's own but with another work dir.
async fn start_foreign_container(
    docker: &bollard::Docker,
    image: &str,
    agent_id: &str,
    a: &AttemptRef,
) -> Result<String> {
    let labels = HashMap::from([
        ("drover.agent".to_owned(), agent_id.to_owned()),
        ("drover.work-dir".to_owned(), "/elsewhere".to_owned()),
        ("drover.run".to_owned(), a.run_id.clone()),
        ("drover.task".to_owned(), a.task.clone()),
        ("drover.attempt".to_owned(), a.attempt.to_string()),
    ]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["sleep".into(), "60".into()]),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker.create_container(None, body).await?;
    docker.start_container(&created.id, None).await?;
    Ok(created.id)
}

#[tokio::test]
async fn a_container_outlives_an_agent_crash_and_is_adopted() -> Result<()> {
    let (mut h, image) = docker_harness("crash", |_| {}).await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "survivor", 1);
    let script = format!("echo one; {WAIT_FOR_GO}; echo two");
    let assignment = with_image(
        assignment(&a, &sh(&script)),
        &image,
        PullPolicy::Unspecified,
    );
    assert!(h.assign(&assignment).await?.accepted);
    assert!(matches!(events.next().await?.kind(), Kind::Started(_)));
    let before = wait_container_state(&docker, &h.agent_id, &a, "running").await?;

    h.crash_agent().await?;
    let after = wait_container_state(&docker, &h.agent_id, &a, "running").await?;
    assert_eq!(before.id, after.id);
    h.restart_agent().await?;
    release(&h, &a).await?;
    let ev = events.final_only(&a).await?;
    let Kind::Succeeded(ok) = ev.kind() else {
        panic!("{ev:?}")
    };
    assert_eq!(log_of(&h, &ok.log_key).await?, "one\ntwo\n");
    assert!(containers_of(&docker, &h.agent_id, &a).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn stop_on_shutdown_stops_containers_and_reports_them() -> Result<()> {
    let (mut h, image) = docker_harness("stop-on-shutdown", |o| {
        o.docker_stop_on_shutdown = true;
    })
    .await?;
    let docker = docker().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "long", 1);
    let cmd = sh("while true; do sleep 0.05; done");
    let assignment = with_image(assignment(&a, &cmd), &image, PullPolicy::Unspecified);
    assert!(h.assign(&assignment).await?.accepted);
    wait_container_state(&docker, &h.agent_id, &a, "running").await?;

    h.stop_agent().await?;
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert_eq!(
        failed.reason,
        format!(
            "agent `{}` shut down while the attempt was running",
            h.agent_id
        )
    );
    assert!(containers_of(&docker, &h.agent_id, &a).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn startup_fails_clearly_when_docker_does_not_answer() -> Result<()> {
    let mut opts = drover_agent::AgentOptions::new("nats://127.0.0.1:1", "file:///tmp/unused");
    opts.id = Some("a1".into());
    opts.docker_host = "unix:///nonexistent/docker.sock".into();
    assert_eq!(opts.executors, vec!["docker".to_owned()], "the default");
    let err = drover_agent::Agent::run(opts, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "docker executor: the Docker engine at `/nonexistent/docker.sock` does not answer: \
         socket `/nonexistent/docker.sock` not found"
    );
    Ok(())
}
