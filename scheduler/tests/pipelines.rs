//! End to end through real etcd, NATS JetStream, the scheduler binary, an
//! agent running real processes, and a file:// object store.

mod common;

use std::time::{Duration, Instant};

use common::{alive, most_at_once, read_pid, task, Cluster};
use drover_api::pb::{self, AttemptState, RunState, TaskState};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_dag_passes_artifacts_along() {
    let c = Cluster::start().await;
    let spec = common::DIAMOND;
    let id = c
        .submit_with(spec, &[("greeting", "drover")])
        .await
        .unwrap();
    assert!(id.starts_with("diamond-"), "{id}");
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    for t in &run.tasks {
        assert_eq!(t.state(), TaskState::Succeeded);
        assert_eq!(t.attempts.len(), 1);
        assert_eq!(t.attempts[0].agent_id, "agent-1");
    }
    let out = &task(&run, "d").attempts[0].outputs[0];
    let bytes = std::fs::read(c.artifact(&out.key)).unwrap();
    assert_eq!(String::from_utf8_lossy(&bytes), "DROVER\nrevord\n");
    assert_eq!(out.sha256, format!("{:x}", Sha256::digest(&bytes)));
    assert_eq!(out.size, bytes.len() as u64);
    let log = c.logs(&id, "d", 0).await.unwrap();
    assert_eq!(log.trim(), format!("run={id} task=d attempt=1"));
    assert_eq!(c.logs(&id, "a", 1).await.unwrap().trim(), "a-ran");
    // b printed nothing: its log reads empty, and no object was stored for it.
    let b = &task(&run, "b").attempts[0];
    assert!(b.log_empty && !b.log_key.is_empty(), "{b:#?}");
    assert_eq!(c.logs(&id, "b", 0).await.unwrap(), "");
    assert!(!c.artifact(&b.log_key).exists());
    let a = &task(&run, "a").attempts[0];
    assert!(!a.log_empty && c.artifact(&a.log_key).exists(), "{a:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_and_long_tasks_are_recorded_with_their_real_start() {
    let c = Cluster::start().await;
    // `quick` ends before its agent would publish `started` (STARTED_AFTER,
    // 50 ms): its start comes with the final event. `long` shows Running.
    let spec = r#"
name: starts
tasks:
  - name: quick
    command: ["sleep", "0.02"]
  - name: long
    command: ["sleep", "0.6"]
"#;
    let id = c.submit(spec).await.unwrap();
    c.wait_for(&id, "long running", |r| {
        task(r, "long").state() == TaskState::Running
    })
    .await;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    for (name, ran_ms) in [("quick", 20), ("long", 600)] {
        let a = &task(&run, name).attempts[0];
        assert!(
            a.assigned_at_ms <= a.started_at_ms && a.started_at_ms + ran_ms <= a.finished_at_ms,
            "{name}: {a:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_commit_failed_is_applied_again_after_the_reload() {
    let c = Cluster::start().await;
    let spec = r#"
name: conflict
tasks:
  - name: t
    command: ["sleep", "0.5"]
"#;
    let id = c.submit(spec).await.unwrap();
    c.wait_for(&id, "t running", |r| {
        task(r, "t").state() == TaskState::Running
    })
    .await;
    // Someone else writes the task's key (same value, new revision): the
    // commit of the `succeeded` event fails its compare.
    let mut etcd = etcd_client::Client::connect([&c.etcd.url], None)
        .await
        .unwrap();
    let key = format!("{}/tasks/{id}/t", c.prefix);
    let value = etcd.get(key.as_str(), None).await.unwrap().kvs()[0]
        .value()
        .to_vec();
    etcd.put(key.as_str(), value, None).await.unwrap();
    // Redelivery would take the 30 s ack wait (and a later ack would cover
    // the event): done well before means it was applied again.
    let run = c.wait_done(&id, Duration::from_secs(15)).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(task(&run, "t").attempts.len(), 1, "{run:#?}");
    assert!(
        c.scheduler_log().contains("commit failed"),
        "no commit failed: {}",
        c.scheduler_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_scheduler_sleeps() {
    let c = Cluster::start().await;
    // A chain: its later tasks are admitted by quick passes (within 250 ms
    // of a full one), and then nothing is ready any more.
    let mut spec = "name: chain\ntasks:\n  - name: t0\n    command: [\"true\"]\n".to_string();
    for i in 1..8 {
        spec += &format!(
            "  - name: t{i}\n    depends_on: [t{}]\n    command: [\"true\"]\n",
            i - 1
        );
    }
    let spec = spec.as_str();
    let id = c.submit(spec).await.unwrap();
    assert_eq!(c.wait_done(&id, LONG).await.state(), RunState::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = c.scheduler_cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = c.scheduler_cpu() - before;
    // Idle: heartbeats and the liveness check, ~10 ms in 2 s (a debug
    // build). Waking every millisecond for a refresh that never came due
    // used 140 ms.
    assert!(
        used < Duration::from_millis(60),
        "idle scheduler used {used:?} of CPU in 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_task_fails_the_run_and_downstream_never_starts() {
    let c = Cluster::start().await;
    let spec = r#"
name: breaks
tasks:
  - name: prep
    command: ["sh", "-c", "echo about to fail >&2; exit 3"]
  - name: train
    depends_on: [prep]
    command: ["true"]
  - name: report
    depends_on: [train]
    command: ["true"]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed);
    assert_eq!(run.message, "task `prep` failed: exited with code 3");
    let prep = task(&run, "prep");
    assert_eq!(prep.state(), TaskState::Failed);
    assert_eq!(prep.attempts[0].exit_code, Some(3));
    for name in ["train", "report"] {
        let t = task(&run, name);
        assert_eq!(t.state(), TaskState::Skipped, "{name}");
        assert!(t.attempts.is_empty(), "{name} must never start");
    }
    let log = c.logs(&id, "prep", 0).await.unwrap();
    assert!(log.starts_with("about to fail\n"), "{log}");
    assert!(
        log.contains("exited with code 3"),
        "the agent notes why: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_task_succeeds_on_retry_after_backoff() {
    let c = Cluster::start().await;
    let marker = c.scratch.join("tried");
    let spec = format!(
        r#"
name: flaky
tasks:
  - name: sometimes
    command: ["sh", "-c", "if [ -e {m} ]; then echo second; else touch {m}; echo first; exit 1; fi"]
    retries: {{limit: 2, backoff: 300ms}}
"#,
        m = marker.display()
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "sometimes");
    assert_eq!(t.attempts.len(), 2);
    assert_eq!(t.attempts[0].state(), AttemptState::Failed);
    assert_eq!(t.attempts[0].exit_code, Some(1));
    assert_eq!(t.attempts[1].state(), AttemptState::Succeeded);
    let gap = t.attempts[1].assigned_at_ms - t.attempts[0].finished_at_ms;
    assert!(
        gap >= 300,
        "retry must wait for the backoff, waited {gap}ms"
    );
    assert!(c
        .logs(&id, "sometimes", 1)
        .await
        .unwrap()
        .starts_with("first\n"));
    assert_eq!(c.logs(&id, "sometimes", 2).await.unwrap().trim(), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_past_its_timeout_is_killed_and_fails() {
    let c = Cluster::start().await;
    let pid_file = c.scratch.join("pid");
    let spec = format!(
        r#"
name: slow
tasks:
  - name: sleeper
    command: ["sh", "-c", "echo $$ > {p}; exec sleep 60"]
    timeout: 700ms
"#,
        p = pid_file.display()
    );
    let started = Instant::now();
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(run.state(), RunState::Failed);
    let t = task(&run, "sleeper");
    assert_eq!(t.state(), TaskState::Failed);
    assert!(t.message.contains("timed out"), "{}", t.message);
    assert_eq!(t.attempts[0].exit_code, None);
    assert!(
        !alive(read_pid(&pid_file)),
        "the timed-out process must be gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finally_runs_after_a_failure_with_the_outputs_there_are() {
    let c = Cluster::start().await;
    let spec = r#"
name: cleanup
fail_fast: false
tasks:
  - name: good
    command: ["sh", "-c", "echo weights > $DROVER_OUTPUTS/model.txt"]
    outputs: [{name: model, path: model.txt}]
  - name: bad
    command: ["sh", "-c", "exit 3"]
  - name: never
    depends_on: [bad]
    command: ["true"]
finally:
  - name: summary
    command: ["sh", "-c", "echo run $DROVER_RUN_STATE; cat $DROVER_INPUTS/model"]
    inputs: [{name: model, from: good/model}]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    assert_eq!(task(&run, "never").state(), TaskState::Skipped);
    let summary = task(&run, "summary");
    assert!(summary.finally);
    assert_eq!(summary.state(), TaskState::Succeeded, "{run:#?}");
    let bad_end = task(&run, "bad").attempts[0].finished_at_ms;
    assert!(summary.attempts[0].assigned_at_ms >= bad_end);
    let log = c.logs(&id, "summary", 1).await.unwrap();
    assert_eq!(log, "run failed\nweights\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_runs_finally_and_a_second_cancel_stops_it() {
    let c = Cluster::start().await;
    let state_file = c.scratch.join("state");
    let spec = format!(
        r#"
name: cancelme
tasks:
  - name: long
    command: ["sleep", "60"]
finally:
  - name: cleanup
    command: ["sh", "-c", "echo $DROVER_RUN_STATE > {p}; exec sleep 60"]
"#,
        p = state_file.display()
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "long running", |r| {
        task(r, "long").state() == TaskState::Running
    })
    .await;
    let cancel = || async {
        c.client()
            .await
            .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    };
    cancel().await;
    let run = c
        .wait_for(&id, "cleanup running", |r| {
            task(r, "cleanup").state() == TaskState::Running
        })
        .await;
    assert_eq!(run.state(), RunState::Cancelling);
    assert_eq!(task(&run, "long").state(), TaskState::Cancelled);
    let deadline = Instant::now() + LONG;
    while std::fs::read_to_string(&state_file).unwrap_or_default() != "cancelled\n" {
        assert!(Instant::now() < deadline, "cleanup never wrote its state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel().await;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Cancelled);
    let cleanup = task(&run, "cleanup");
    assert_eq!(cleanup.state(), TaskState::Cancelled);
    assert_eq!(cleanup.attempts[0].state(), AttemptState::Cancelled);
}

const GATED: &str = r#"
name: gate
params: {min: "0.9"}
tasks:
  - name: evaluate
    command: ["sh", "-c", "echo '{\"accuracy\": 0.85}' > $DROVER_OUTPUTS/metrics.json"]
    outputs: [{name: metrics, path: metrics.json, result: true}]
  - name: register
    depends_on: [evaluate]
    when: "tasks.evaluate.outputs.metrics.accuracy >= double(params.min)"
    command: ["true"]
  - name: announce
    depends_on: [register]
    command: ["true"]
  - name: report
    depends_on: [evaluate]
    when: "tasks.evaluate.outputs.metrics.accuracy >= 0.8"
    command: ["true"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_when_skips_the_task_and_its_downstream_and_a_true_one_runs() {
    let c = Cluster::start().await;
    let id = c.submit(GATED).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let result = task(&run, "evaluate").attempts[0].outputs[0].result.clone();
    assert_eq!(result.as_deref(), Some(&b"{\"accuracy\": 0.85}\n"[..]));
    let register = task(&run, "register");
    assert_eq!(register.state(), TaskState::Skipped);
    assert_eq!(
        register.message,
        "when: tasks.evaluate.outputs.metrics.accuracy >= double(params.min) was false"
    );
    assert!(register.attempts.is_empty());
    assert_eq!(task(&run, "announce").state(), TaskState::Skipped);
    assert_eq!(task(&run, "report").state(), TaskState::Succeeded);

    // A lower bar: the same pipeline registers and announces.
    let id = c.submit_with(GATED, &[("min", "0.8")]).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(task(&run, "register").state(), TaskState::Succeeded);
    assert_eq!(task(&run, "announce").state(), TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_when_that_fails_at_run_time_fails_the_task_and_a_big_result_fails_its_producer() {
    let c = Cluster::start().await;
    let spec = GATED.replace("metrics.accuracy >= 0.8", "metrics.f1 >= 0.8");
    assert_ne!(spec, GATED);
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    let report = task(&run, "report");
    assert_eq!(report.state(), TaskState::Failed);
    assert!(
        report
            .message
            .starts_with("when: tasks.evaluate.outputs.metrics.f1 >= 0.8: ")
            && report.message.contains("f1"),
        "{}",
        report.message
    );

    let spec = GATED.replace(
        r#"echo '{\"accuracy\": 0.85}' > $DROVER_OUTPUTS/metrics.json"#,
        "head -c 70000 /dev/zero > $DROVER_OUTPUTS/metrics.json",
    );
    assert_ne!(spec, GATED);
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    let evaluate = task(&run, "evaluate");
    assert_eq!(evaluate.state(), TaskState::Failed);
    assert_eq!(
        evaluate.message,
        "output `metrics` at outputs/metrics.json is declared `result: true` but has 70000 bytes (at most 65536)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run() {
    let c = Cluster::start().await;
    let pid_file = c.scratch.join("pid");
    let spec = format!(
        r#"
name: cancelme
tasks:
  - name: long
    command: ["sh", "-c", "echo $$ > {p}; exec sleep 60"]
  - name: after
    depends_on: [long]
    command: ["true"]
"#,
        p = pid_file.display()
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "task running", |r| {
        task(r, "long").state() == TaskState::Running
    })
    .await;
    let run = c
        .client()
        .await
        .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(run.state(), RunState::Cancelling | RunState::Cancelled),
        "{:?}",
        run.state()
    );
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Cancelled);
    assert_eq!(task(&run, "long").state(), TaskState::Cancelled);
    assert_eq!(
        task(&run, "long").attempts[0].state(),
        AttemptState::Cancelled
    );
    assert_eq!(task(&run, "after").state(), TaskState::Cancelled);
    assert!(task(&run, "after").attempts.is_empty());
    assert!(!alive(read_pid(&pid_file)));
    // Cancelling a finished run changes nothing.
    let again = c
        .client()
        .await
        .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), RunState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_killed_mid_run_resumes_from_etcd() {
    let mut c = Cluster::start().await;
    let count = c.scratch.join("count");
    let step = |name: &str| {
        format!(
            r#"["sh", "-c", "echo {name} >> {f}; sleep 1"]"#,
            f = count.display()
        )
    };
    let spec = format!(
        r#"
name: survivor
tasks:
  - name: one
    command: {}
  - name: two
    depends_on: [one]
    command: {}
  - name: three
    depends_on: [two]
    command: {}
"#,
        step("one"),
        step("two"),
        step("three")
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "second task running", |r| {
        task(r, "two").state() == TaskState::Running
    })
    .await;
    c.kill_scheduler().await;
    // The agent finishes `two` while no scheduler runs: its events wait in JetStream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.start_scheduler().await;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    for t in &run.tasks {
        assert_eq!(t.attempts.len(), 1, "task {} ran more than once", t.name);
    }
    let ran = std::fs::read_to_string(&count).unwrap();
    assert_eq!(ran, "one\ntwo\nthree\n", "each task ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_fast_other_branches_finish() {
    let c = Cluster::start().await;
    let spec = r#"
name: branches
fail_fast: false
tasks:
  - name: bad
    command: ["false"]
  - name: after-bad
    depends_on: [bad]
    command: ["true"]
  - name: good
    command: ["sh", "-c", "sleep 0.5"]
  - name: after-good
    depends_on: [good]
    command: ["true"]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed);
    assert_eq!(task(&run, "after-bad").state(), TaskState::Skipped);
    assert_eq!(task(&run, "good").state(), TaskState::Succeeded);
    assert_eq!(task(&run, "after-good").state(), TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_and_nothing_is_written() {
    let c = Cluster::start().await;
    let cases: &[(&str, &str)] = &[
        (
            "name: x\ntasks:\n  - name: a\n    command: [\"true\"]\n    depends_on: [prep]\n",
            "task `a`: depends_on: unknown task `prep`",
        ),
        (
            "name: x\ntasks:\n  - name: a\n    command: []\n",
            "task `a`: command is empty",
        ),
        (
            "name: x\ntasks:\n  - name: a\n    command: [\"true\"]\n    depends_on: [b]\n  - name: b\n    command: [\"true\"]\n    depends_on: [a]\n",
            "dependency cycle: a -> b -> a",
        ),
        (
            "name: x\ntasks:\n  - name: a\n    command: [\"echo\", \"{{params.lr}}\"]\n",
            "task `a`: command: `{{params.lr}}` refers to unknown param `lr`",
        ),
        (
            "name: x\ntasks:\n  - name: a\n    command: [\"true\"]\n    resources: {memory: 4GB}\n",
            "task `a`: resources.memory: invalid quantity `4GB` (use e.g. 512Mi, 4Gi, 1G)",
        ),
    ];
    for (yaml, want) in cases {
        c.assert_refused(yaml, want).await;
    }
    let err = c
        .submit_with(
            "name: x\ntasks:\n  - name: a\n    command: [\"true\"]\n",
            &[("nope", "1")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "param `nope` is not declared in the spec's params"
    );
    c.assert_no_run_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_runs_and_tasks_are_not_found() {
    let c = Cluster::without_agents().await;
    let mut client = c.client().await;
    let get = client
        .get_run(pb::GetRunRequest {
            run_id: "nope-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), tonic::Code::NotFound);
    assert_eq!(get.message(), "run `nope-1` not found");
    let cancel = client
        .cancel_run(pb::CancelRunRequest {
            run_id: "nope-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), tonic::Code::NotFound);
    let watch = client
        .watch_run(pb::WatchRunRequest {
            run_id: "nope-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), tonic::Code::NotFound);
    let empty = client
        .get_run(pb::GetRunRequest {
            run_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert_eq!(empty.message(), "run_id: is required");

    // A run with no agent waits Ready; its logs and unknown tasks answer clearly.
    let id = c
        .submit("name: waits\ntasks:\n  - name: a\n    command: [\"true\"]\n")
        .await
        .unwrap();
    let run = c.get(&id).await;
    assert_eq!(run.state(), RunState::Running);
    assert_eq!(task(&run, "a").state(), TaskState::Ready);
    let e = c.logs(&id, "zzz", 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(e.message(), format!("run `{id}` has no task `zzz`"));
    let e = c.logs(&id, "a", 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // Only the run record is written at submit, not one key per task.
    assert_eq!(c.run_keys().await, vec![format!("{}/runs/{id}", c.prefix)]);
}

/// `tasks` tasks whose commands carry `pad` bytes each.
fn padded_spec(name: &str, tasks: usize, pad: usize) -> String {
    let mut yaml = format!("name: {name}\ntasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!(
            "  - name: t{i}\n    command: [\"echo\", \"{}\"]\n",
            "x".repeat(pad)
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_specs_are_stored_in_chunks_and_over_the_limit_refused() {
    // No agents: the run stays queued while the test looks at it.
    let mut c = Cluster::with_scheduler_args(&["--max-spec-bytes", "2Mi"]).await;

    // Over --max-spec-bytes: refused, nothing written.
    let err = c.submit(&padded_spec("huge", 8000, 300)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("spec_yaml: the resolved spec is ")
            && err
                .message()
                .ends_with("at most 2097152 are accepted (--max-spec-bytes)"),
        "{}",
        err.message()
    );
    assert!(c.run_keys().await.is_empty());
    assert!(c.etcd_keys().await.iter().all(|k| !k.contains("/specs/")));

    // 1.3 MB: more than one etcd value holds, stored as two chunks.
    let id = c.submit(&padded_spec("big", 4000, 300)).await.unwrap();
    let keys = c.etcd_keys().await;
    let ours: Vec<&String> = keys.iter().filter(|k| k.contains(id.as_str())).collect();
    assert_eq!(
        ours,
        [
            &format!("{}/runs/{id}", c.prefix),
            &format!("{}/specs/{id}/000000", c.prefix),
            &format!("{}/specs/{id}/000001", c.prefix),
        ],
        "{keys:?}"
    );
    let run = c.get(&id).await;
    assert_eq!(run.tasks.len(), 4000);
    assert_eq!(run.tasks[3999].name, "t3999");

    // A restarted scheduler reassembles it.
    c.kill_scheduler().await;
    c.start_scheduler().await;
    let run = c.get(&id).await;
    assert_eq!(run.tasks.len(), 4000);
    assert!(run.tasks.iter().all(|t| t.state() == TaskState::Ready));
    let listed = c
        .client()
        .await
        .list_runs(pb::ListRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs[0].name, "big");
    assert_eq!(listed.runs[0].tasks_total, 4000);
    c.client()
        .await
        .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
        .await
        .unwrap();
    assert_eq!(
        c.wait_done(&id, Duration::from_secs(30)).await.state(),
        RunState::Cancelled
    );
}

/// The events stream once the scheduler has made it and its consumer: the
/// harness waits for the port, and the engine makes them as it starts, a
/// moment later.
async fn events_stream(
    js: &async_nats::jetstream::Context,
    c: &Cluster,
) -> async_nats::jetstream::stream::Stream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let name = drover_api::naming::events_stream(&c.nats_prefix);
        if let Ok(stream) = js.get_stream(name).await {
            if stream.consumer_info("scheduler-turns").await.is_ok() {
                return stream;
            }
        }
        assert!(Instant::now() < deadline, "no events stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_keeps_events_a_week_also_when_an_earlier_version_made_it() {
    use drover_api::naming;
    let mut c = Cluster::without_agents().await;
    let js = async_nats::jetstream::new(async_nats::connect(&c.nats.url).await.unwrap());
    events_stream(&js, &c).await;
    let name = naming::events_stream(&c.nats_prefix);
    let max_age = |js: async_nats::jetstream::Context| {
        let name = name.clone();
        async move {
            let mut s = js.get_stream(&name).await.unwrap();
            s.info().await.unwrap().config.max_age
        }
    };
    assert_eq!(max_age(js.clone()).await, naming::EVENTS_MAX_AGE);

    // As an earlier version left it: no age limit, every event kept forever.
    c.kill_scheduler().await;
    let old = async_nats::jetstream::stream::Config {
        max_age: Duration::ZERO,
        ..naming::events_stream_config(&c.nats_prefix)
    };
    js.update_stream(old).await.unwrap();
    assert_eq!(max_age(js.clone()).await, Duration::ZERO);
    c.start_scheduler().await;
    // The scheduler opens the stream as its engine starts, maybe after it answers gRPC.
    let deadline = Instant::now() + Duration::from_secs(10);
    while max_age(js.clone()).await != naming::EVENTS_MAX_AGE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(max_age(js.clone()).await, naming::EVENTS_MAX_AGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explicit_ack_consumer_of_an_earlier_version_is_replaced_from_its_ack_floor() {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use drover_api::naming;
    use futures::StreamExt;
    let mut c = Cluster::without_agents().await;
    let js = async_nats::jetstream::new(async_nats::connect(&c.nats.url).await.unwrap());
    let stream = events_stream(&js, &c).await;
    c.kill_scheduler().await;
    stream.delete_consumer("scheduler-turns").await.unwrap();

    // As an earlier version left it: acks per event, the first of three acked.
    let old = stream
        .create_consumer(pull::Config {
            durable_name: Some("scheduler".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let subject = naming::events_subject(&c.nats_prefix, "gone-agent");
    let mut seqs = Vec::new();
    for i in 0..3 {
        let ack = js.publish(subject.clone(), format!("not an event {i}").into());
        seqs.push(ack.await.unwrap().await.unwrap().sequence);
    }
    let mut batch = old.fetch().max_messages(1).messages().await.unwrap();
    batch.next().await.unwrap().unwrap().ack().await.unwrap();
    let floor = || async {
        let info = stream.consumer_info("scheduler").await.unwrap();
        info.ack_floor.stream_sequence
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while floor().await != seqs[0] && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(floor().await, seqs[0]);

    c.start_scheduler().await;
    // The new consumer starts after the old one's ack floor, and the events
    // after it are consumed and acked (by one ack: AckPolicy::All).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(info) = stream.consumer_info("scheduler-turns").await {
            assert_eq!(info.config.ack_policy, AckPolicy::All);
            assert_eq!(
                info.config.deliver_policy,
                DeliverPolicy::ByStartSequence {
                    start_sequence: seqs[0] + 1
                }
            );
            if info.ack_floor.stream_sequence == seqs[2] && info.num_ack_pending == 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "events after the floor not acked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stream.consumer_info("scheduler").await.is_err(),
        "old consumer kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_runs_every_combination_at_most_max_parallel_at_once() {
    let c = Cluster::start().await;
    // The agent has room for 8 such tasks at once: only the cap holds them back.
    let spec = r#"
name: sweep
tasks:
  - name: train
    matrix: {lr: ["0.1", "0.3", "0.9"], layers: ["1", "2"]}
    max_parallel: 2
    command: ["sh", "-c", "echo lr={{matrix.lr}} layers={{matrix.layers}}; sleep 0.4"]
  - name: report
    depends_on: [train]
    command: ["true"]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let instances: Vec<&pb::Task> = run
        .tasks
        .iter()
        .filter(|t| t.name.starts_with("train["))
        .collect();
    assert_eq!(instances.len(), 6, "{run:#?}");
    let spans: Vec<(u64, u64)> = instances
        .iter()
        .map(|t| {
            let a = &t.attempts[0];
            (a.started_at_ms, a.finished_at_ms)
        })
        .collect();
    let most = most_at_once(&spans);
    assert_eq!(most, 2, "{spans:?}");
    let report = &task(&run, "report").attempts[0];
    let last = spans.iter().map(|&(_, f)| f).max().unwrap();
    assert!(
        report.started_at_ms >= last,
        "report started before train ended"
    );
    let log = c.logs(&id, "train[lr=0.3,layers=2]", 0).await.unwrap();
    assert_eq!(log.trim(), "lr=0.3 layers=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_from_a_matrix_gathers_every_instances_output_with_a_listing() {
    let c = Cluster::start().await;
    let spec = r#"
name: fan-in
tasks:
  - name: train
    matrix: {lr: ["0.1", "0.3"], layers: ["1", "2", "3"]}
    command: ["sh", "-c", "echo {{matrix.lr}}x{{matrix.layers}} > $DROVER_OUTPUTS/model"]
    outputs: [{name: model, path: model}]
  - name: pick
    depends_on: [train]
    command: ["sh", "-c", "cd $DROVER_INPUTS && ls models && cat models/0 models/5 && cat models.json"]
    inputs: [{name: models, from: train/model}]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let log = c.logs(&id, "pick", 0).await.unwrap();
    let (files, rest) = log.split_at(log.find("0.1x1").expect("instance 0's model"));
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4", "5"]
    );
    assert!(rest.starts_with("0.1x1\n0.3x3\n"), "{log}");
    let listing: serde_json::Value = serde_json::from_str(&rest["0.1x1\n0.3x3\n".len()..]).unwrap();
    assert_eq!(
        listing[4],
        serde_json::json!({"index": 4, "matrix": {"layers": "2", "lr": "0.3"}, "file": "4"})
    );
    assert_eq!(listing.as_array().map(Vec::len), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_only_the_failed_branch_and_keeps_what_succeeded() {
    let c = Cluster::start().await;
    let fixed = c.scratch.join("fixed");
    let spec = format!(
        r#"
name: retry
fail_fast: false
tasks:
  - name: prep
    command: ["sh", "-c", "echo data > $DROVER_OUTPUTS/d"]
    outputs: [{{name: d, path: d}}]
  - name: flaky
    depends_on: [prep]
    command: ["sh", "-c", "test -e {fixed} || exit 3; tr a-z A-Z < $DROVER_INPUTS/d > $DROVER_OUTPUTS/out"]
    inputs: [{{name: d, from: prep/d}}]
    outputs: [{{name: out, path: out}}]
  - name: after
    depends_on: [flaky]
    command: ["sh", "-c", "cat $DROVER_INPUTS/x > $DROVER_OUTPUTS/final"]
    inputs: [{{name: x, from: flaky/out}}]
    outputs: [{{name: final, path: final}}]
  - name: other
    command: ["true"]
"#,
        fixed = fixed.display()
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    assert_eq!(task(&run, "after").state(), TaskState::Skipped);

    let mut client = c.client().await;
    let retry = |tasks: &[&str]| pb::RetryRunRequest {
        run_id: id.clone(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
    };
    let err = client.retry_run(retry(&["nope"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    std::fs::write(&fixed, b"").unwrap();
    let back = client.retry_run(retry(&[])).await.unwrap().into_inner();
    assert_ne!(back.state(), RunState::Failed);
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let attempts = |run: &pb::Run, name: &str| -> Vec<u32> {
        task(run, name).attempts.iter().map(|a| a.number).collect()
    };
    assert_eq!(attempts(&run, "prep"), [1], "succeeded: not run again");
    assert_eq!(attempts(&run, "other"), [1]);
    assert_eq!(attempts(&run, "flaky"), [1, 2]);
    assert_eq!(attempts(&run, "after"), [1]);
    let out = &task(&run, "after").attempts[0].outputs[0];
    assert_eq!(
        std::fs::read_to_string(c.artifact(&out.key)).unwrap(),
        "DATA\n"
    );
    // The first attempt's record is still there: what failed, and why.
    assert_eq!(task(&run, "flaky").attempts[0].exit_code, Some(3));

    let err = client.retry_run(retry(&[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--task"), "{err:?}");

    // Named: that task and everything downstream of it, nothing else.
    client.retry_run(retry(&["flaky"])).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(attempts(&run, "prep"), [1]);
    assert_eq!(attempts(&run, "flaky"), [1, 2, 3]);
    assert_eq!(attempts(&run, "after"), [1, 2]);
    assert_eq!(attempts(&run, "other"), [1]);

    // A run still running is refused.
    let slow = c
        .submit("name: slow\ntasks:\n  - {name: s, command: [sleep, '30']}\n")
        .await
        .unwrap();
    let req = pb::RetryRunRequest {
        run_id: slow.clone(),
        tasks: vec![],
    };
    let err = client.retry_run(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("still running"), "{err:?}");
    client
        .cancel_run(pb::CancelRunRequest { run_id: slow })
        .await
        .unwrap();
}
