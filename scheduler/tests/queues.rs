//! Priority queues end to end: preemption, pause, quotas under a burst,
//! fair sharing, and queue administration — real etcd, NATS, scheduler
//! binary and agents with simulated GPUs.

mod common;

use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb::{self, AttemptState, RunState, TaskState};

const LONG: Duration = Duration::from_secs(90);

fn queue(name: &str, priority: i64) -> pb::Queue {
    pb::Queue {
        name: name.into(),
        priority,
        weight: 1,
        ..Default::default()
    }
}

/// (start, end) of every attempt of every task of the runs.
async fn spans(c: &Cluster, runs: &[String]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for id in runs {
        for t in c.get(id).await.tasks {
            for a in t.attempts {
                out.push((a.assigned_at_ms, a.finished_at_ms));
            }
        }
    }
    out
}

/// Most attempts that overlapped at any instant.
fn max_concurrent(spans: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_run_preempts_and_the_victim_completes_later() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("gpu", |o| o.simulate_gpus = 2).await;
    c.create_queue(queue("research", 0)).await;
    c.create_queue(pb::Queue {
        preemption: pb::Preemption::LowerPriority as i32,
        ..queue("prod", 10)
    })
    .await;
    let starts = c.scratch.join("starts");
    let low = format!(
        "name: low\ntasks:\n  - name: sweep\n    command: [\"sh\", \"-c\", \"echo start >> {}; sleep 4\"]\n    resources: {{gpu: 2}}\n",
        starts.display()
    );
    let low_id = c.submit_to(&low, "research", 0).await.unwrap();
    c.wait_for(&low_id, "low running", |r| {
        task(r, "sweep").state() == TaskState::Running
    })
    .await;

    let high = "name: high\ntasks:\n  - name: urgent\n    command: [\"sh\", \"-c\", \"sleep 1\"]\n    resources: {gpu: 2}\n";
    let high_id = c.submit_to(high, "prod", 0).await.unwrap();
    let high_run = c.wait_done(&high_id, LONG).await;
    assert_eq!(high_run.state(), RunState::Succeeded);

    let low_run = c.wait_done(&low_id, LONG).await;
    assert_eq!(low_run.state(), RunState::Succeeded, "{low_run:#?}");
    let sweep = task(&low_run, "sweep");
    assert_eq!(sweep.attempts.len(), 2, "{sweep:#?}");
    let first = &sweep.attempts[0];
    assert_eq!(first.state(), AttemptState::Preempted);
    assert!(first.error.contains("preempt"), "{}", first.error);
    assert_eq!(sweep.attempts[1].state(), AttemptState::Succeeded);
    // The high-priority task ran while the low one was out, and the low one
    // came back only after it.
    let urgent = &task(&high_run, "urgent").attempts[0];
    assert!(urgent.assigned_at_ms >= first.finished_at_ms);
    assert!(sweep.attempts[1].assigned_at_ms >= urgent.finished_at_ms);
    assert_eq!(std::fs::read_to_string(&starts).unwrap(), "start\nstart\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_admits_nothing_until_resumed() {
    let c = Cluster::start().await;
    c.create_queue(pb::Queue {
        paused: true,
        ..queue("held", 0)
    })
    .await;
    let id = c
        .submit_to(
            "name: wait\ntasks:\n  - name: t\n    command: [\"true\"]\n",
            "held",
            0,
        )
        .await
        .unwrap();
    let run = c
        .wait_for(&id, "a reason", |r| !task(r, "t").message.is_empty())
        .await;
    assert_eq!(task(&run, "t").state(), TaskState::Ready);
    assert!(
        task(&run, "t").message.contains("paused"),
        "{}",
        task(&run, "t").message
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(task(&c.get(&id).await, "t").attempts.is_empty());
    let detail = c
        .queues()
        .await
        .show_queue(pb::QueueRef {
            name: "held".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detail.pending.len(), 1);
    assert_eq!(detail.pending[0].waiting_for, "paused");
    assert_eq!(detail.pending[0].position, 1);

    c.queues()
        .await
        .resume_queue(pb::QueueRef {
            name: "held".into(),
        })
        .await
        .unwrap();
    assert_eq!(c.wait_done(&id, LONG).await.state(), RunState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_under_a_burst_of_100_submissions() {
    let c = Cluster::start().await;
    c.create_queue(pb::Queue {
        quota: Some(pb::Quota {
            cpu_millis: Some(1000),
            ..Default::default()
        }),
        ..queue("capped", 0)
    })
    .await;
    let spec = "name: burst\ntasks:\n  - name: t\n    command: [\"sleep\", \"0.2\"]\n    resources: {cpu: 250m}\n";
    let submits = (0..100).map(|_| c.submit_to(spec, "capped", 0));
    let ids: Vec<String> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let deadline = Instant::now() + LONG;
    loop {
        let list = c
            .queues()
            .await
            .list_queues(pb::ListQueuesRequest {})
            .await
            .unwrap()
            .into_inner();
        let capped = list
            .queues
            .iter()
            .find(|q| q.queue.as_ref().unwrap().name == "capped")
            .unwrap();
        let used = capped.used.unwrap().cpu_millis;
        assert!(used <= 1000, "quota exceeded: {used}m in use");
        if capped.runs == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "burst did not drain: {capped:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        assert_eq!(c.get(id).await.state(), RunState::Succeeded);
    }
    let concurrent = max_concurrent(&spans(&c, &ids).await);
    assert!(
        concurrent <= 4,
        "{concurrent} tasks ran at once under a 1-cpu quota of 250m tasks"
    );
    assert!(
        concurrent >= 2,
        "the quota should allow parallelism, saw {concurrent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lighter_queue_still_progresses_as_capacity_frees() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("small", |o| o.cpu_millis = Some(1000))
        .await;
    c.create_queue(pb::Queue {
        weight: 3,
        ..queue("heavy", 0)
    })
    .await;
    c.create_queue(queue("light", 0)).await;
    let spec = |n: &str| {
        format!(
            "name: {n}\ntasks:\n{}",
            (0..8)
                .map(|i| format!("  - name: t{i}\n    command: [\"sleep\", \"0.3\"]\n    resources: {{cpu: 500m}}\n"))
                .collect::<String>()
        )
    };
    let heavy = c.submit_to(&spec("heavy"), "heavy", 0).await.unwrap();
    let light = c.submit_to(&spec("light"), "light", 0).await.unwrap();
    let heavy_run = c.wait_done(&heavy, LONG).await;
    let light_run = c.wait_done(&light, LONG).await;
    assert_eq!(heavy_run.state(), RunState::Succeeded);
    assert_eq!(light_run.state(), RunState::Succeeded);
    let first_light = light_run
        .tasks
        .iter()
        .map(|t| t.attempts[0].assigned_at_ms)
        .min()
        .unwrap();
    let last_heavy = heavy_run
        .tasks
        .iter()
        .map(|t| t.attempts[0].assigned_at_ms)
        .max()
        .unwrap();
    assert!(
        first_light < last_heavy,
        "the light queue must not wait for the heavy one to drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_administration_errors_and_restart() {
    let mut c = Cluster::without_agents().await;
    let mut q = c.queues().await;
    let list = q
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list
        .queues
        .iter()
        .map(|s| s.queue.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["default"],
        "a default queue exists from first start"
    );

    q.create_queue(queue("team-a", 5)).await.unwrap();
    let dup = q.create_queue(queue("team-a", 5)).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let bad = q.create_queue(queue("team-b", -3)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        bad.message(),
        "priority: `-3` must be between 0 and 1000000"
    );
    let missing = q
        .pause_queue(pb::QueueRef {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(missing.message(), "queue `nope` not found");
    let e = c
        .submit_to(
            "name: x\ntasks:\n  - name: t\n    command: [\"true\"]\n",
            "nope",
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A queue holding a run cannot be deleted.
    let id = c
        .submit_to(
            "name: x\ntasks:\n  - name: t\n    command: [\"true\"]\n",
            "team-a",
            3,
        )
        .await
        .unwrap();
    let busy = q
        .delete_queue(pb::QueueRef {
            name: "team-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    let run = c.get(&id).await;
    assert_eq!((run.queue.as_str(), run.priority), ("team-a", 3));

    // Priority changes and queue settings survive a scheduler restart.
    c.client()
        .await
        .set_run_priority(pb::SetRunPriorityRequest {
            run_id: id.clone(),
            priority: 7,
        })
        .await
        .unwrap();
    q.update_queue(pb::Queue {
        weight: 4,
        max_running: Some(2),
        ..queue("team-a", 6)
    })
    .await
    .unwrap();
    c.kill_scheduler().await;
    c.start_scheduler().await;
    let mut q = c.queues().await;
    let shown = q
        .show_queue(pb::QueueRef {
            name: "team-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let settings = shown.status.unwrap().queue.unwrap();
    assert_eq!(
        (settings.priority, settings.weight, settings.max_running),
        (6, 4, Some(2))
    );
    assert_eq!(c.get(&id).await.priority, 7);
    c.client()
        .await
        .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
        .await
        .unwrap();
    c.wait_done(&id, LONG).await;
    q.delete_queue(pb::QueueRef {
        name: "team-a".into(),
    })
    .await
    .unwrap();
    let default = q
        .delete_queue(pb::QueueRef {
            name: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(default.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_looks_only_pass_depth_deep_in_queue_order_and_the_rest_follow() {
    let mut c = Cluster::with_scheduler_args(&["--pass-depth", "3"]).await;
    let tasks = |n: usize| {
        let mut y = "name: deep\ntasks:\n".to_string();
        for i in 0..n {
            y += &format!("  - name: t{i}\n    command: [\"true\"]\n");
        }
        y
    };
    let low = c.submit_to(&tasks(6), "default", 0).await.unwrap();
    let high = c.submit_to(&tasks(2), "default", 10).await.unwrap();
    // No agent yet: the pass looks at the high-priority run's two tasks and
    // the low one's first, and says the others are behind them (once a full
    // pass has run since the second submit: at most 250 ms later).
    let behind = "queued: behind the first 3 ready tasks of queue `default`";
    let run = c
        .wait_for(&low, "reasons", |r| {
            ["t1", "t2", "t3", "t4", "t5"]
                .iter()
                .all(|t| task(r, t).message.starts_with(behind))
        })
        .await;
    assert!(!task(&run, "t0").message.contains(behind), "{run:#?}");
    assert!(!task(&run, "t0").message.is_empty(), "{run:#?}");
    let hi = c.get(&high).await;
    assert!(
        hi.tasks.iter().all(|t| !t.message.contains(behind)),
        "{hi:#?}"
    );
    let listed = c
        .queues()
        .await
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner();
    let default = listed
        .queues
        .iter()
        .find(|q| q.queue.as_ref().is_some_and(|q| q.name == "default"))
        .unwrap();
    assert_eq!(default.pending, 8, "every Ready task counts as pending");

    c.add_agent("agent-1").await;
    assert_eq!(c.wait_done(&high, LONG).await.state(), RunState::Succeeded);
    let done = c.wait_done(&low, LONG).await;
    assert_eq!(done.state(), RunState::Succeeded, "{done:#?}");
}
