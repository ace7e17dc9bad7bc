//! The agent against a real nats-server and a `file://` store, with the test
//! playing the scheduler.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use common::*;
use drover_api::pb::{attempt_event::Kind, AssignBatch};
use futures::StreamExt;

#[tokio::test]
async fn success_fetches_inputs_sees_its_env_and_uploads_outputs() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let input_key = "runs/r1/prep.1/outputs/dataset";
    h.store
        .put_bytes(input_key, Bytes::from_static(b"hello\n"))
        .await?;

    let a = attempt_ref("r1", "train", 1);
    let script = r#"set -e
cat "$DROVER_INPUTS/dataset" > "$DROVER_OUTPUTS/model.txt"
echo trained >> "$DROVER_OUTPUTS/model.txt"
mkdir -p "$DROVER_OUTPUTS/nested"
printf metrics > "$DROVER_OUTPUTS/nested/metrics.json"
env | grep '^DROVER_' | sort
echo "cwd=$PWD"
echo "custom=$CUSTOM"
echo "to stderr" >&2
"#;
    let assignment = with_output(
        with_output(
            with_input(
                with_env(assignment(&a, &sh(script)), "CUSTOM", "yes"),
                "dataset",
                input_key,
            ),
            "model",
            "model.txt",
        ),
        "metrics",
        "nested/metrics.json",
    );
    let reply = h.assign(&assignment).await?;
    assert!(reply.accepted, "{}", reply.reason);

    let fin = events.final_event(&a).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        panic!("expected success, got {fin:?}");
    };
    assert_eq!(ok.log_key, "runs/r1/train.1.log");
    assert_eq!(ok.image_digest, "", "a process runs no image");
    assert_eq!(ok.outputs.len(), 2);

    let model = &ok.outputs[0];
    assert_eq!(model.name, "model");
    assert_eq!(model.key, "runs/r1/train.1/outputs/model");
    assert_eq!(model.size, 14);
    assert_eq!(model.sha256, sha256_hex(b"hello\ntrained\n"));
    assert_eq!(
        h.store.get_bytes(&model.key).await?,
        Bytes::from_static(b"hello\ntrained\n")
    );
    let metrics = &ok.outputs[1];
    assert_eq!(metrics.key, "runs/r1/train.1/outputs/metrics");
    assert_eq!(metrics.sha256, sha256_hex(b"metrics"));

    // A process attempt runs in a reused slot; the first is `_process/0`.
    let dir = h.work_dir.join("_process/0");
    let log = String::from_utf8(h.store.get_bytes(&ok.log_key).await?.to_vec())?;
    for line in [
        "DROVER_AGENT_ID=a1".to_owned(),
        "DROVER_ATTEMPT=1".to_owned(),
        format!("DROVER_INPUTS={}", dir.join("inputs").display()),
        format!("DROVER_OUTPUTS={}", dir.join("outputs").display()),
        "DROVER_RUN_ID=r1".to_owned(),
        "DROVER_TASK=train".to_owned(),
        format!("cwd={}", dir.display()),
        "custom=yes".to_owned(),
        "to stderr".to_owned(),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "`{line}` not in log:\n{log}"
        );
    }
    assert!(!log.contains("[drover-agent]"), "{log}");
    // The slot is emptied once the final event is acked: outputs gone, log
    // truncated; no per-run directory was made.
    let outputs = dir.join("outputs");
    let log_len = || std::fs::metadata(dir.join("drover-attempt.log")).map(|m| m.len());
    let deadline = Instant::now() + Duration::from_secs(2);
    // Both, as the slot is emptied entry by entry in directory order.
    while (std::fs::read_dir(&outputs)?.next().is_some() || log_len()? > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(&outputs)?.count(),
        0,
        "outputs left behind"
    );
    assert_eq!(log_len()?, 0);
    assert!(!h.work_dir.join("r1").exists(), "a run directory was made");
    Ok(())
}

#[tokio::test]
async fn the_next_attempt_in_a_slot_finds_nothing_the_last_one_left() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let first = attempt_ref("r1", "messy", 1);
    let script = r#"set -e
echo scratch > left-in-cwd
mkdir -p cache/deep && echo c > cache/deep/file
echo out > "$DROVER_OUTPUTS/undeclared"
echo "first log line"
echo "cwd=$PWD"
"#;
    let log = h.log_of_success(&mut events, &first, script).await?;
    let first_cwd = log
        .lines()
        .find_map(|l| l.strip_prefix("cwd="))
        .unwrap_or_default()
        .to_owned();
    assert!(first_cwd.ends_with("/_process/0"), "{log}");

    // One slot was used and given back: the next attempt gets it, empty.
    let check = r#"set -e
echo "cwd=$PWD"
ls -A
ls -A "$DROVER_OUTPUTS"
"#;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut attempt = 0;
    let log = loop {
        attempt += 1;
        let second = attempt_ref("r2", "tidy", attempt);
        let log = h.log_of_success(&mut events, &second, check).await?;
        // The slot comes back after the first attempt's final event: until
        // then a second slot serves, which is also clean but proves less.
        if log.contains(&format!("cwd={first_cwd}\n")) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        log,
        format!("cwd={first_cwd}\ndrover-attempt.log\noutputs\n"),
        "the slot was not reused, or not emptied"
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_success_stores_no_log_object() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "quiet", 1);
    assert!(h.assign(&assignment(&a, &sh("true"))).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        panic!("expected success, got {fin:?}");
    };
    assert!(ok.log_empty);
    assert_eq!(ok.log_key, "runs/r1/quiet.1.log");
    assert!(
        h.store.get_bytes(&ok.log_key).await.is_err(),
        "an empty log was stored"
    );

    // One byte of output is a log like any other.
    let b = attempt_ref("r1", "terse", 1);
    let log = h.log_of_success(&mut events, &b, "printf x").await?;
    assert_eq!(log, "x");
    Ok(())
}

#[tokio::test]
async fn a_quick_attempt_reports_its_start_in_the_final_event_and_a_long_one_publishes_started(
) -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    // Ends well within STARTED_AFTER (50 ms): one event, which says when it started.
    let quick = attempt_ref("r1", "quick", 1);
    let begun = now_ms();
    assert!(h.assign(&assignment(&quick, &sh("true"))).await?.accepted);
    let (started, fin) = events.started_and_final(&quick).await?;
    assert!(
        started.is_none(),
        "started event for a quick attempt: {started:?}"
    );
    assert!(matches!(fin.kind(), Kind::Succeeded(_)), "{fin:?}");
    assert!(fin.event.started_at_ms >= begun, "{fin:?}");

    // Still running after it: `started` first, stamped with the start, not
    // with when it was published (the final event's start says the same).
    let long = attempt_ref("r1", "long", 1);
    let begun = now_ms();
    assert!(
        h.assign(&assignment(&long, &sh("sleep 0.4")))
            .await?
            .accepted
    );
    let (started, fin) = events.started_and_final(&long).await?;
    let started =
        started.ok_or_else(|| anyhow::anyhow!("no started event for a 400 ms attempt"))?;
    assert!(
        started.event.at_ms >= begun,
        "started at {} for an assignment at {begun}",
        started.event.at_ms
    );
    assert!(fin.event.at_ms >= started.event.at_ms + 400, "{fin:?}");
    Ok(())
}

#[tokio::test]
async fn a_task_without_inputs_gets_outputs_but_no_inputs_dir() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "solo", 1);
    // Undeclared files may still be written to $DROVER_OUTPUTS.
    let script = r#"set -e
test -n "$DROVER_INPUTS"
test ! -e "$DROVER_INPUTS"
echo scratch > "$DROVER_OUTPUTS/undeclared"
echo checked
"#;
    let log = h.log_of_success(&mut events, &a, script).await?;
    assert_eq!(log, "checked\n");
    Ok(())
}

#[tokio::test]
async fn nonzero_exit_is_a_failure_with_the_code_and_the_log() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "fail", 1);
    let cmd = sh("echo to-stdout; echo to-stderr >&2; exit 3");
    let assignment = with_output(assignment(&a, &cmd), "model", "model.json");
    assert!(h.assign(&assignment).await?.accepted);

    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.reason, "exited with code 3");
    assert!(!failed.cancelled);
    assert_eq!(failed.log_key, "runs/r1/fail.1.log");
    let log = String::from_utf8(h.store.get_bytes(&failed.log_key).await?.to_vec())?;
    assert_eq!(
        log,
        "to-stdout\nto-stderr\n[drover-agent] attempt failed: exited with code 3\n"
    );
    // Outputs are not uploaded for a failed attempt.
    assert!(h
        .store
        .get_bytes("runs/r1/fail.1/outputs/model")
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "slow", 1);
    let pidfile = h.scratch.join("slow.pid");
    // Ignores SIGTERM (so only SIGKILL after the grace works) and leaves a
    // background child that would outlive a leader-only kill.
    let cmd =
        sh(r#"trap "" TERM; sleep 30 & echo $$ > "$PIDFILE"; while true; do sleep 0.05; done"#);
    let mut assignment = with_env(
        assignment(&a, &cmd),
        "PIDFILE",
        pidfile.display().to_string(),
    );
    if let Some(task) = assignment.task.as_mut() {
        task.timeout_ms = 500;
    }
    let begun = Instant::now();
    assert!(h.assign(&assignment).await?.accepted);
    let pgid = read_pid(&pidfile).await?;
    assert!(
        group_members(pgid).len() >= 2,
        "leader and background child are running"
    );

    let fin = events.final_event(&a).await?;
    let elapsed = begun.elapsed();
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert_eq!(failed.reason, "timed out after 500ms");
    assert_eq!(failed.exit_code, None);
    assert!(!failed.cancelled);
    assert!(
        elapsed >= Duration::from_millis(500) + KILL_GRACE,
        "SIGTERM was ignored, so SIGKILL came only after the grace: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "process group is gone"
    );
    let log = String::from_utf8(h.store.get_bytes(&failed.log_key).await?.to_vec())?;
    assert!(
        log.ends_with("[drover-agent] attempt failed: timed out after 500ms\n"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_running_attempt() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r2", "train", 3);
    let pidfile = h.scratch.join("cancel.pid");
    let cmd = sh(r#"echo $$ > "$PIDFILE"; sleep 30"#);
    let assignment = with_env(
        assignment(&a, &cmd),
        "PIDFILE",
        pidfile.display().to_string(),
    );
    assert!(h.assign(&assignment).await?.accepted);
    let pgid = read_pid(&pidfile).await?;

    let reply = h.cancel(&a, 200).await?;
    assert!(reply.found);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("expected failure, got {fin:?}");
    };
    assert!(failed.cancelled);
    assert_eq!(failed.reason, "cancelled");
    assert_eq!(failed.exit_code, None);
    assert_eq!(failed.log_key, "runs/r2/train.3.log");
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "process group is gone"
    );

    // Finished (once its final event is acked, which may come just after
    // the event is seen), or never seen: not found.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.cancel(&a, 0).await?.found {
        assert!(tokio::time::Instant::now() < deadline, "still found");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!h.cancel(&attempt_ref("r2", "other", 1), 0).await?.found);
    Ok(())
}

#[tokio::test]
async fn refuses_executors_it_does_not_run_and_malformed_assignments() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;

    let a = attempt_ref("r1", "gpu", 1);
    let mut docker = assignment(&a, &["python", "train.py"]);
    if let Some(task) = docker.task.as_mut() {
        task.image = "python:3.12".into();
    }
    let reply = h.assign(&docker).await?;
    assert!(!reply.accepted);
    assert_eq!(
        reply.reason,
        "executor `docker` is not enabled on agent `a1` (enabled: process)"
    );

    let reply = h.assign_raw(Bytes::from_static(b"\xff\xff\xff")).await?;
    assert!(!reply.accepted);
    assert!(
        reply.reason.starts_with("malformed assignment: "),
        "{}",
        reply.reason
    );

    let mut no_attempt = assignment(&a, &["true"]);
    no_attempt.attempt = None;
    let reply = h.assign(&no_attempt).await?;
    assert_eq!(
        (reply.accepted, reply.reason.as_str()),
        (false, "malformed assignment: missing attempt")
    );

    // A refused attempt is not remembered: the same attempt, runnable, is accepted.
    let reply = h.assign(&assignment(&a, &["true"])).await?;
    assert!(reply.accepted, "{}", reply.reason);
    let fin = events.final_event(&a).await?;
    assert!(matches!(fin.kind(), Kind::Succeeded(_)), "{fin:?}");
    Ok(())
}

#[tokio::test]
async fn a_batch_of_assignments_gets_one_reply_each_in_order() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let (a, b) = (attempt_ref("r1", "a", 1), attempt_ref("r1", "b", 1));
    let mut refused = assignment(&attempt_ref("r1", "gpu", 1), &["true"]);
    if let Some(task) = refused.task.as_mut() {
        task.image = "python:3.12".into();
    }
    let batch = AssignBatch {
        assignments: vec![
            assignment(&a, &sh("echo a")),
            refused,
            assignment(&b, &sh("exit 3")),
            // Sent twice in one batch: the second is a known duplicate.
            assignment(&a, &sh("echo a")),
        ],
        traceparents: Vec::new(),
        leader_revision: 0,
    };
    let reply = h.assign_batch(&batch).await?;
    let answers: Vec<(bool, &str)> = reply
        .replies
        .iter()
        .map(|r| (r.accepted, r.reason.as_str()))
        .collect();
    assert_eq!(
        answers,
        [
            (true, ""),
            (
                false,
                "executor `docker` is not enabled on agent `a1` (enabled: process)"
            ),
            (true, ""),
            (true, ""),
        ]
    );
    // Both run at once: their events come in either order.
    let (first, second) = (events.next().await?, events.next().await?);
    let (ev_a, ev_b) = match first.event.attempt.as_ref() == Some(&a) {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(ev_a.event.attempt.as_ref(), Some(&a), "{ev_a:?}");
    assert!(matches!(ev_a.kind(), Kind::Succeeded(_)), "{ev_a:?}");
    assert_eq!(ev_b.event.attempt.as_ref(), Some(&b), "{ev_b:?}");
    let Kind::Failed(failed) = ev_b.kind() else {
        panic!("expected a failure, got {ev_b:?}");
    };
    assert_eq!(failed.exit_code, Some(3));
    let extra = events.next_within(Duration::from_millis(500)).await?;
    assert!(extra.is_none(), "unexpected event {extra:?}");

    let reply = h
        .assign_batch_raw(Bytes::from_static(b"\xff\xff\xff"))
        .await?;
    assert!(reply.replies.is_empty());
    assert!(!reply.malformed.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_batch_from_a_deposed_leader_is_refused_once_a_later_term_was_seen() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let batch = |task: &str, term: i64| AssignBatch {
        assignments: vec![assignment(&attempt_ref("r1", task, 1), &["true"])],
        traceparents: Vec::new(),
        leader_revision: term,
    };
    let reply = h.assign_batch(&batch("new", 7)).await?;
    assert!(reply.replies[0].accepted, "{reply:?}");
    let reply = h.assign_batch(&batch("stale", 5)).await?;
    assert!(reply.replies.is_empty(), "{reply:?}");
    assert_eq!(
        reply.malformed,
        "sent by a deposed leader (term 5 is older than the current one)"
    );
    // The same term and later ones still go through.
    let reply = h.assign_batch(&batch("same", 7)).await?;
    assert!(reply.replies[0].accepted, "{reply:?}");
    let mut ran = Vec::new();
    for _ in 0..2 {
        let ev = events.next().await?;
        ran.push(ev.event.attempt.map(|a| a.task).unwrap_or_default());
    }
    ran.sort();
    assert_eq!(ran, ["new", "same"]);
    Ok(())
}

#[tokio::test]
async fn a_duplicate_assignment_is_accepted_and_runs_once() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "once", 1);
    let counter = h.scratch.join("runs");
    let cmd = sh(r#"echo ran >> "$COUNTER"; sleep 0.3"#);
    let assignment = with_env(
        assignment(&a, &cmd),
        "COUNTER",
        counter.display().to_string(),
    );

    // While it runs (the scheduler restarted and re-sent it)...
    assert!(h.assign(&assignment).await?.accepted);
    assert!(h.assign(&assignment).await?.accepted);
    let fin = events.final_event(&a).await?;
    assert!(matches!(fin.kind(), Kind::Succeeded(_)), "{fin:?}");
    // ...and after it finished.
    assert!(h.assign(&assignment).await?.accepted);

    let extra = events.next_within(Duration::from_millis(500)).await?;
    assert!(extra.is_none(), "unexpected event {extra:?}");
    assert_eq!(std::fs::read_to_string(&counter)?, "ran\n");
    Ok(())
}

#[tokio::test]
async fn agent_side_failures_name_what_failed() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;

    let a = attempt_ref("r1", "nosuch", 1);
    assert!(
        h.assign(&assignment(&a, &["drover-no-such-program"]))
            .await?
            .accepted
    );
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert!(
        failed
            .reason
            .starts_with("starting `drover-no-such-program`: No such file or directory"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.exit_code, None);
    // The log (with the agent's note) is uploaded even though nothing ran.
    let log = String::from_utf8(h.store.get_bytes(&failed.log_key).await?.to_vec())?;
    assert!(log.contains("starting `drover-no-such-program`"), "{log}");

    let a = attempt_ref("r1", "noinput", 1);
    let missing = "runs/r0/prep.1/outputs/dataset";
    let assignment_with_input = with_input(assignment(&a, &["true"]), "dataset", missing);
    assert!(h.assign(&assignment_with_input).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert_eq!(
        failed.reason,
        format!("artifact dataset from prep is missing from the store ({missing})")
    );

    // Stored bytes that are not what their producer uploaded: refused
    // before the task runs.
    let a = attempt_ref("r1", "corrupt", 1);
    let key = "runs/r0/prep.1/outputs/other";
    h.store.put_bytes(key, "changed".into()).await?;
    let want = drover_artifacts::sha256_hex(b"original");
    let mut corrupt = with_input(assignment(&a, &["true"]), "dataset", key);
    corrupt.inputs[0].sha256 = want.clone();
    assert!(h.assign(&corrupt).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    let got = drover_artifacts::sha256_hex(b"changed");
    assert_eq!(
        failed.reason,
        format!("artifact dataset from prep is corrupt: sha256 {want} != {got}")
    );

    let a = attempt_ref("r1", "nooutput", 1);
    let no_output = with_output(assignment(&a, &["true"]), "model", "model.json");
    assert!(h.assign(&no_output).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert_eq!(
        failed.reason,
        "declared output `model` not found at outputs/model.json"
    );
    assert_eq!(failed.exit_code, Some(0));

    let a = attempt_ref("r1", "signal", 1);
    assert!(h.assign(&assignment(&a, &sh("kill -9 $$"))).await?.accepted);
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert_eq!(failed.reason, "killed by signal 9");
    assert_eq!(failed.exit_code, None);
    Ok(())
}

#[tokio::test]
async fn heartbeats_report_capacity_and_running_attempts() -> Result<()> {
    let h = Harness::start().await?;
    let mut heartbeats = h.heartbeats().await?;
    drover_devcluster::nats_synced(&h.client).await?;
    let a = attempt_ref("r1", "hb", 1);
    let pidfile = h.scratch.join("hb.pid");
    let cmd = sh(r#"echo $$ > "$PIDFILE"; sleep 30"#);
    let assignment = with_env(
        assignment(&a, &cmd),
        "PIDFILE",
        pidfile.display().to_string(),
    );
    assert!(h.assign(&assignment).await?.accepted);
    read_pid(&pidfile).await?;

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(2), heartbeats.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("heartbeats ended"))?;
        let hb = heartbeat(&msg)?;
        assert_eq!(hb.agent_id, "a1");
        assert_eq!(hb.executors, vec!["process".to_owned()]);
        assert!(hb.cpu_millis >= 1000);
        assert!(hb.memory_bytes > 0);
        assert!(hb.sent_at_ms > 0);
        if hb.running == vec![a.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "running attempt never reported");
    }
    assert!(h.cancel(&a, 0).await?.found);
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_running_attempts_and_reports_them() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "long", 1);
    let pidfile = h.scratch.join("long.pid");
    let cmd = sh(r#"sleep 30 & echo $$ > "$PIDFILE"; wait"#);
    let assignment = with_env(
        assignment(&a, &cmd),
        "PIDFILE",
        pidfile.display().to_string(),
    );
    assert!(h.assign(&assignment).await?.accepted);
    let pgid = read_pid(&pidfile).await?;

    h.stop_agent().await?;
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "process group is gone"
    );
    let fin = events.final_event(&a).await?;
    let Kind::Failed(failed) = fin.kind() else {
        panic!("{fin:?}")
    };
    assert_eq!(
        failed.reason,
        "agent `a1` shut down while the attempt was running"
    );
    assert!(!failed.cancelled);
    Ok(())
}

#[tokio::test]
async fn startup_refuses_executors_that_do_not_exist() -> Result<()> {
    let mut opts = drover_agent::AgentOptions::new("nats://127.0.0.1:1", "file:///tmp/unused");
    opts.id = Some("a1".into());
    opts.executors = vec!["process".into(), "podman".into()];
    let err = drover_agent::Agent::run(opts, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: unknown executor `podman` (available: process, docker)"
    );
    Ok(())
}
