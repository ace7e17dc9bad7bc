//! What users see, line by line.

type TestResult = Result<(), Box<dyn std::error::Error>>;
use super::runs::task_message;
use super::*;
use drover_api::pb;
use serde_json::{json, Value};

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
    assert_eq!(duration(1_234), "1s200ms");
    assert_eq!(duration(184_000), "3m4s");
    assert_eq!(duration(3_720_000), "1h2m");
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
            message: "preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
                .into(),
            attempts: vec![pb::Attempt {
                number: 1,
                agent_id: "gpu-1".into(),
                state: pb::AttemptState::Preempted as i32,
                error: "preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
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
    let (state, line) = &lines[0];
    assert_eq!(*state, pb::TaskState::Ready);
    assert!(
        line.contains("Ready")
            && line.contains("preempted for a task of higher-priority queue `prod`"),
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
    let (state, line) = &lines[0];
    assert_eq!(*state, pb::TaskState::Failed);
    assert!(line.contains("Failed") && line.contains("exited with code 3"));
}

#[test]
fn for_each_instances_show_their_item() -> TestResult {
    let instance = |name: &str, item: &str| pb::Task {
        name: name.into(),
        state: pb::TaskState::Succeeded as i32,
        item: item.into(),
        ..Default::default()
    };
    let run = pb::Run {
        tasks: vec![
            instance("work", ""),
            instance("work[0]", "shard-a"),
            instance("work[1]", r#"{"path": "a/very/long/path/to/a/shard.csv"}"#),
        ],
        ..Default::default()
    };
    let text = run_table(&run, 0);
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .map(str::to_owned)
    };
    assert!(line("work[0] (shard-a) ").is_some(), "{text}");
    assert!(
        line(r#"work[1] ({"path": "a/very/long/pa…) "#).is_some(),
        "{text}"
    );
    let v = run_json(&run);
    assert_eq!(v["tasks"][1]["item"], "shard-a");
    assert!(v["tasks"][0].get("item").is_none(), "{v}");
    Ok(())
}

fn cached_run() -> pb::Run {
    pb::Run {
        id: "digits-2".into(),
        created_at_ms: 1_000,
        finished_at_ms: 1_005,
        tasks: vec![pb::Task {
            name: "train".into(),
            state: pb::TaskState::Succeeded as i32,
            attempts: vec![pb::Attempt {
                number: 1,
                state: pb::AttemptState::Succeeded as i32,
                assigned_at_ms: 1_004,
                started_at_ms: 1_004,
                finished_at_ms: 1_004,
                ready_at_ms: 1_001,
                cache_key: "ab".repeat(32),
                cached_from: Some(pb::AttemptSource {
                    run_id: "digits-1".into(),
                    task: "train".into(),
                    attempt: 2,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn get_and_trace_show_a_cached_task_and_where_it_came_from() -> TestResult {
    let run = cached_run();
    let text = run_table(&run, 2_000);
    let line = text
        .lines()
        .find(|l| l.starts_with("train"))
        .ok_or("no train line")?;
    assert!(line.contains("(cached)"), "{line}");
    assert!(line.ends_with("cached from digits-1/train/2"), "{line}");
    let v = run_json(&run);
    assert_eq!(
        v["tasks"][0]["attempts"][0]["cached_from"]["run_id"],
        "digits-1"
    );

    // A zero-length bar marked cached, with its source where the agent goes.
    let w = crate::waterfall::build(&run, 2_000);
    let bar = &w.bars[0];
    assert_eq!(
        (bar.state.as_str(), bar.ready, bar.end),
        ("cached", 1_004, 1_004)
    );
    assert_eq!(bar.queue_wait() + bar.run_time(), 0);
    let drawn = crate::waterfall::render(&w, 40);
    let row = drawn
        .lines()
        .find(|l| l.contains("train #1"))
        .ok_or("no row")?;
    assert!(row.ends_with("from digits-1/train/2"), "{row}");
    assert_eq!(
        crate::waterfall::to_json(&w)["attempts"][0]["cached_from"],
        "digits-1/train/2"
    );
    Ok(())
}
