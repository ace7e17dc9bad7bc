//! `for_each` end to end: real etcd, NATS JetStream, the scheduler binary,
//! an agent running real processes, and a file:// object store.

mod common;

use std::time::Duration;

use common::{most_at_once, task, Cluster};
use drover_api::pb::{self, RunState, TaskState};

const LONG: Duration = Duration::from_secs(60);

/// A producer writing `json` as its `items` output, then `rest` (YAML task
/// list items).
fn with_list(name: &str, json: &str, rest: &str) -> String {
    let json = json.replace('"', "\\\"");
    format!(
        r#"
name: {name}
fail_fast: false
tasks:
  - name: list
    command: ["sh", "-c", "printf '%s' '{json}' > $DROVER_OUTPUTS/items"]
    outputs: [{{name: items, path: items}}]
{rest}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_runs_once_per_item_and_a_downstream_task_gathers_every_instance() {
    let c = Cluster::start().await;
    let spec = with_list(
        "map",
        r#"["a", "b", "c"]"#,
        r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    max_parallel: 2
    command: ["sh", "-c", "echo got {{item}} $ITEM; echo {{item}}-done > $DROVER_OUTPUTS/out; sleep 0.3"]
    env: {ITEM: "<{{ item }}>"}
    outputs: [{name: out, path: out}]
  - name: gather
    depends_on: [work]
    command: ["sh", "-c", "cd $DROVER_INPUTS && cat outs/0 outs/2 && cat outs.json"]
    inputs: [{name: outs, from: work/out}]
"#,
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let names: Vec<&str> = run.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["list", "work", "gather", "work[0]", "work[1]", "work[2]"]
    );
    assert_eq!(task(&run, "work").state(), TaskState::Succeeded);
    assert!(task(&run, "work").attempts.is_empty());
    assert_eq!(task(&run, "work").message, "3 instances succeeded");
    let items: Vec<&str> = run.tasks.iter().map(|t| t.item.as_str()).collect();
    assert_eq!(items, ["", "", "", "a", "b", "c"]);
    assert_eq!(c.logs(&id, "work[1]", 0).await.unwrap(), "got b <b>\n");
    let spans: Vec<(u64, u64)> = ["work[0]", "work[1]", "work[2]"]
        .iter()
        .map(|n| {
            let a = &task(&run, n).attempts[0];
            (a.started_at_ms, a.finished_at_ms)
        })
        .collect();
    let most = most_at_once(&spans);
    assert!(most <= 2, "max_parallel: 2 exceeded: {spans:?}");
    let gather = &task(&run, "gather").attempts[0];
    let last = ["work[0]", "work[1]", "work[2]"]
        .iter()
        .map(|n| task(&run, n).attempts[0].finished_at_ms)
        .max()
        .unwrap();
    assert!(
        gather.started_at_ms >= last,
        "gather started before the map ended"
    );
    let log = c.logs(&id, "gather", 0).await.unwrap();
    let rest = log.strip_prefix("a-done\nc-done\n").expect(&log);
    let listing: serde_json::Value = serde_json::from_str(rest).unwrap();
    assert_eq!(
        listing[1],
        serde_json::json!({"index": 1, "matrix": {"item": "b"}, "file": "1"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_items_fill_their_fields_and_zero_items_succeed_at_once() {
    let c = Cluster::start().await;
    let spec = with_list(
        "objects",
        r#"[{"name": "x", "n": 1}, {"name": "y", "n": 2.5}]"#,
        r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    command: ["sh", "-c", "echo {{item.name}}=$N"]
    env: {N: "{{item.n}}"}
"#,
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(c.logs(&id, "work[0]", 0).await.unwrap(), "x=1\n");
    assert_eq!(c.logs(&id, "work[1]", 0).await.unwrap(), "y=2.5\n");
    assert_eq!(task(&run, "work[1]").item, r#"{"n":2.5,"name":"y"}"#);

    let spec = with_list(
        "empty",
        "[]",
        r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    command: ["false"]
  - name: after
    depends_on: [work]
    command: ["true"]
"#,
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(task(&run, "work").state(), TaskState::Succeeded);
    assert_eq!(task(&run, "work").message, "no items");
    assert_eq!(task(&run, "after").state(), TaskState::Succeeded);
    assert_eq!(run.tasks.len(), 3, "no instances: {run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_list_or_a_missing_field_fails_the_task_naming_the_cause() {
    let c = Cluster::start().await;
    let map = r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    command: ["echo", "{{item.name}}"]
  - name: after
    depends_on: [work]
    command: ["true"]
"#;
    let cases = [
        (
            r#"["a", "#,
            "for_each: output `list/items` is not valid JSON: EOF while parsing a value at line 1 column 6",
        ),
        (
            r#"{"a": 1}"#,
            "for_each: output `list/items` holds an object, not a JSON array",
        ),
        (
            r#"[{"name": "x"}, {"nom": "y"}]"#,
            "for_each: item 1 (`{\"nom\":\"y\"}`): command: `{{item.name}}`: the item has no field `name`",
        ),
        (
            r#"[{"name": "x"}, "y"]"#,
            "for_each: item 1 (`y`): command: `{{item.name}}` needs an object item, got `\"y\"`",
        ),
    ];
    for (json, want) in cases {
        let id = c.submit(&with_list("bad", json, map)).await.unwrap();
        let run = c.wait_done(&id, LONG).await;
        assert_eq!(run.state(), RunState::Failed, "{json}: {run:#?}");
        let work = task(&run, "work");
        assert_eq!(work.state(), TaskState::Failed, "{json}");
        assert_eq!(work.message, want, "{json}");
        assert_eq!(task(&run, "after").state(), TaskState::Skipped, "{json}");
        assert_eq!(run.tasks.len(), 3, "no instances: {run:#?}");
        assert_eq!(run.message, format!("task `work` failed: {want}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_fails_the_map_and_skips_its_downstream() {
    let c = Cluster::start().await;
    let spec = with_list(
        "one-fails",
        "[0, 1, 0]",
        r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    command: ["sh", "-c", "exit {{item}}"]
  - name: after
    depends_on: [work]
    command: ["true"]
"#,
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    assert_eq!(task(&run, "work[1]").state(), TaskState::Failed);
    // Without fail_fast the other instances still ran.
    assert_eq!(task(&run, "work[0]").state(), TaskState::Succeeded);
    assert_eq!(task(&run, "work[2]").state(), TaskState::Succeeded);
    let work = task(&run, "work");
    assert_eq!(work.state(), TaskState::Failed);
    assert!(
        work.message.starts_with("instance `work[1]` failed"),
        "{}",
        work.message
    );
    assert_eq!(task(&run, "after").state(), TaskState::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_the_failed_instance_again_with_its_item() {
    let c = Cluster::start().await;
    let marker = c.scratch.join("failed-once");
    let spec = with_list(
        "flaky",
        r#"["ok", "flaky", "ok"]"#,
        &format!(
            r#"
  - name: work
    depends_on: [list]
    for_each: {{from: list/items}}
    command: ["sh", "-c", "echo {{{{item}}}}; test {{{{item}}}} = ok || test -e {m} || {{ touch {m}; exit 3; }}"]
  - name: after
    depends_on: [work]
    command: ["true"]
"#,
            m = marker.display()
        ),
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    assert_eq!(run.tasks.len(), 6, "{run:#?}");
    assert_eq!(task(&run, "work[1]").state(), TaskState::Failed);
    let back = c
        .client()
        .await
        .retry_run(pb::RetryRunRequest {
            run_id: id.clone(),
            tasks: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state(), RunState::Running);
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(task(&run, "work[1]").attempts.len(), 2);
    assert_eq!(task(&run, "work[0]").attempts.len(), 1, "kept its success");
    assert_eq!(c.logs(&id, "work[1]", 2).await.unwrap(), "flaky\n");
    assert_eq!(task(&run, "after").state(), TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_map_reads_the_list_again_and_finishes() {
    let mut c = Cluster::start().await;
    let count = c.scratch.join("count");
    let spec = with_list(
        "survivor",
        r#"["a", "b", "c", "d"]"#,
        &format!(
            r#"
  - name: work
    depends_on: [list]
    for_each: {{from: list/items}}
    max_parallel: 1
    command: ["sh", "-c", "echo {{{{item}}}} >> {f}; sleep 0.5"]
"#,
            f = count.display()
        ),
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "the first instance running", |r| {
        r.tasks
            .iter()
            .any(|t| t.name == "work[0]" && t.state() == TaskState::Running)
    })
    .await;
    // No per-instance record before an instance has an attempt.
    let keys = c.run_keys().await;
    let instance_keys: Vec<&String> = keys.iter().filter(|k| k.contains("work[")).collect();
    assert!(instance_keys.len() <= 2, "{instance_keys:?}");
    c.kill_scheduler().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.start_scheduler().await;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    for t in &run.tasks {
        assert!(t.attempts.len() <= 1, "task {} ran more than once", t.name);
    }
    let ran = std::fs::read_to_string(&count).unwrap();
    assert_eq!(ran, "a\nb\nc\nd\n", "each item ran exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_on_item_skips_only_the_instances_it_is_false_for() {
    let c = Cluster::start().await;
    let spec = with_list(
        "filtered",
        r#"[{"shard": "a", "rows": 1}, {"shard": "b", "rows": 5}, {"shard": "c", "rows": 0}]"#,
        r#"
  - name: work
    depends_on: [list]
    for_each: {from: list/items}
    when: "item.rows > 0 && item.shard != 'c'"
    command: ["sh", "-c", "echo {{item.shard}} > $DROVER_OUTPUTS/out"]
    outputs: [{name: out, path: out}]
  - name: gather
    depends_on: [work]
    command: ["sh", "-c", "cat $DROVER_INPUTS/outs/*"]
    inputs: [{name: outs, from: work/out}]
"#,
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let states: Vec<(&str, TaskState)> = ["work[0]", "work[1]", "work[2]"]
        .iter()
        .map(|n| (*n, task(&run, n).state()))
        .collect();
    assert_eq!(
        states,
        [
            ("work[0]", TaskState::Succeeded),
            ("work[1]", TaskState::Succeeded),
            ("work[2]", TaskState::Skipped)
        ]
    );
    assert_eq!(
        task(&run, "work[2]").message,
        "when: item.rows > 0 && item.shard != 'c' was false"
    );
    assert_eq!(
        task(&run, "work").message,
        "2 instances succeeded, 1 skipped by their condition"
    );
    // What follows the map runs, with the outputs of the instances that ran.
    assert_eq!(task(&run, "gather").state(), TaskState::Succeeded);
    assert_eq!(c.logs(&id, "gather", 0).await.unwrap(), "a\nb\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_for_each_specs_are_rejected_and_nothing_is_written() {
    let c = Cluster::start().await;
    let base = "name: x\ntasks:\n  - name: list\n    command: [\"true\"]\n    outputs: [{name: items, path: items}]\n";
    let cases: &[(&str, &str)] = &[
        (
            "  - name: a\n    command: [\"true\"]\n    for_each: {from: list/items}\n",
            "task `a`: for_each.from: `list` is not upstream of `a` (add it to depends_on)",
        ),
        (
            "  - name: a\n    depends_on: [list]\n    command: [\"true\"]\n    for_each: {from: list-items}\n",
            "task `a`: for_each.from: must be `task/output`, got `list-items`",
        ),
        (
            "  - name: a\n    depends_on: [list]\n    command: [\"true\"]\n    matrix: {x: [\"1\"]}\n    for_each: {from: list/items}\n",
            "task `a`: for_each: cannot be combined with `matrix` (use one or the other)",
        ),
        (
            "  - name: a\n    depends_on: [list]\n    command: [\"echo\", \"{{item}}\"]\n",
            "task `a`: command: `{{item}}` needs `for_each` on the task",
        ),
    ];
    for (tasks, want) in cases {
        c.assert_refused(&format!("{base}{tasks}"), want).await;
    }
    c.assert_no_run_written().await;
}
