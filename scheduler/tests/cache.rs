//! The step cache end to end: real etcd, NATS, scheduler and an agent
//! running processes, with a file:// store.

mod common;

use std::time::Duration;

use common::{task, Cluster, DIAMOND};
use drover_api::pb::{self, RunState, TaskState};

const LONG: Duration = Duration::from_secs(60);

/// Which tasks ran on an agent (the rest were served from the cache), by name.
fn ran(run: &pb::Run) -> Vec<&str> {
    run.tasks
        .iter()
        .filter(|t| t.attempts.last().is_some_and(|a| a.cached_from.is_none()))
        .map(|t| t.name.as_str())
        .collect()
}

fn cached_from<'a>(run: &'a pb::Run, name: &str) -> Option<&'a pb::AttemptSource> {
    task(run, name).attempts.last()?.cached_from.as_ref()
}

async fn submit_no_cache(c: &Cluster, yaml: &str) -> String {
    let r = c
        .client()
        .await
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: yaml.to_string(),
            no_cache: true,
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner().run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_submitted_again_is_served_from_the_cache() {
    let c = Cluster::start().await;
    let first = c.submit(DIAMOND).await.unwrap();
    let first = c.wait_done(&first, LONG).await;
    assert_eq!(first.state(), RunState::Succeeded, "{first:#?}");
    assert_eq!(ran(&first), ["a", "b", "c", "d"]);

    // Every task is cached: the run ends in the turn that took it in (its
    // latency is measured in benches/; here only that no agent was waited for).
    let second = c.submit(DIAMOND).await.unwrap();
    let second = c.wait_done(&second, LONG).await;
    assert_eq!(second.state(), RunState::Succeeded, "{second:#?}");
    assert!(ran(&second).is_empty(), "{second:#?}");
    let took = second.finished_at_ms - second.created_at_ms;
    assert!(took < 1_000, "a fully cached run took {took} ms");
    for name in ["a", "b", "c", "d"] {
        let from = cached_from(&second, name).unwrap();
        assert_eq!(
            (from.run_id.as_str(), from.task.as_str(), from.attempt),
            (first.id.as_str(), name, 1)
        );
        assert_eq!(task(&second, name).state(), TaskState::Succeeded);
        // The same objects: nothing copied.
        assert_eq!(
            task(&second, name).attempts[0].outputs,
            task(&first, name).attempts[0].outputs
        );
    }

    // A cached task's log is the log of the attempt that made its result.
    assert_eq!(c.logs(&second.id, "a", 0).await.unwrap().trim(), "a-ran");

    // Lineage of a cached result leads to the attempt that ran.
    let lineage = c
        .client()
        .await
        .get_lineage(pb::GetLineageRequest {
            run_id: second.id.clone(),
            task: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let root = &lineage.nodes[lineage.roots[0] as usize];
    assert_eq!(root.cached_from.as_ref().unwrap().run_id, first.id);
    let source = &lineage.nodes[root.source.unwrap() as usize];
    assert_eq!(
        (source.run_id.as_str(), source.agent_id.as_str()),
        (first.id.as_str(), "agent-1")
    );

    // A changed command runs that task again; what reads its output runs
    // again only if the bytes changed (here they did not).
    let changed = DIAMOND.replace(
        "rev < $DROVER_INPUTS/in > $DROVER_OUTPUTS/c.txt",
        "rev < $DROVER_INPUTS/in > $DROVER_OUTPUTS/c.txt; true",
    );
    let third = c.submit(&changed).await.unwrap();
    let third = c.wait_done(&third, LONG).await;
    assert_eq!(third.state(), RunState::Succeeded, "{third:#?}");
    assert_eq!(ran(&third), ["c"]);

    // `cache: false` always runs; so does every task of a --no-cache run.
    let uncached = DIAMOND.replace(
        "outputs: [{name: joined, path: d.txt}]",
        "outputs: [{name: joined, path: d.txt}]\n    cache: false",
    );
    let fourth = c.submit(&uncached).await.unwrap();
    let fourth = c.wait_done(&fourth, LONG).await;
    assert_eq!(ran(&fourth), ["d"]);
    let fifth = submit_no_cache(&c, DIAMOND).await;
    let fifth = c.wait_done(&fifth, LONG).await;
    assert_eq!(ran(&fifth), ["a", "b", "c", "d"]);

    // The entries, and forgetting one run's.
    let mut client = c.client().await;
    let entries = client
        .list_cache(pb::ListCacheRequest { task: "c".into() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    // c's two keys (two commands); the newest first, made by the --no-cache run.
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(entries[0].source.as_ref().unwrap().run_id, fifth.id);
    let forgotten = client
        .forget_cache(pb::ForgetCacheRequest {
            run_id: fifth.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 4);
    let sixth = c.submit(DIAMOND).await.unwrap();
    let sixth = c.wait_done(&sixth, LONG).await;
    assert_eq!(ran(&sixth), ["a", "b", "c", "d"]);
    let err = client
        .forget_cache(pb::ForgetCacheRequest {
            key: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "key: `nope` is not a cache key (64 hex digits)"
    );
}

const SWEEP: &str = r#"
name: sweep
params: {data: ""}
tasks:
  - name: prepare
    # Reads a file from outside the pipeline: not cacheable by its command.
    command: ["sh", "-c", "cp {{params.data}} $DROVER_OUTPUTS/data.csv"]
    outputs: [{name: dataset, path: data.csv}]
    cache: false
  - name: lint
    command: ["sh", "-c", "echo ok > $DROVER_OUTPUTS/ok"]
    outputs: [{name: ok, path: ok}]
  - name: train
    depends_on: [prepare]
    # `seed` is not used: instances that differ only by it are identical.
    matrix: {lr: ["0.1", "0.2"], seed: ["1", "2"]}
    command: ["sh", "-c", "sleep 0.3; echo {{matrix.lr}} | cat - $DROVER_INPUTS/data > $DROVER_OUTPUTS/model"]
    inputs: [{name: data, from: prepare/dataset}]
    outputs: [{name: model, path: model}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_input_bytes_rerun_what_reads_them_and_identical_instances_run_once() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.csv");
    let data_param = data.to_str().unwrap();
    std::fs::write(&data, "x,y\n1,2\n").unwrap();

    let first = c.submit_with(SWEEP, &[("data", data_param)]).await.unwrap();
    let first = c.wait_done(&first, LONG).await;
    assert_eq!(first.state(), RunState::Succeeded, "{first:#?}");
    // Two settings ran; each one's twin took its result.
    assert_eq!(
        ran(&first),
        [
            "prepare",
            "lint",
            "train[lr=0.1,seed=1]",
            "train[lr=0.2,seed=1]"
        ]
    );
    for lr in ["0.1", "0.2"] {
        let from = cached_from(&first, &format!("train[lr={lr},seed=2]")).unwrap();
        assert_eq!(from.run_id, first.id);
        assert_eq!(from.task, format!("train[lr={lr},seed=1]"));
    }

    // Other bytes in the dataset: what reads it runs again, the rest not.
    std::fs::write(&data, "x,y\n1,3\n").unwrap();
    let second = c.submit_with(SWEEP, &[("data", data_param)]).await.unwrap();
    let second = c.wait_done(&second, LONG).await;
    assert_eq!(
        ran(&second),
        ["prepare", "train[lr=0.1,seed=1]", "train[lr=0.2,seed=1]"]
    );
    assert_eq!(cached_from(&second, "lint").unwrap().run_id, first.id);

    // The first bytes again: the first run's models serve.
    std::fs::write(&data, "x,y\n1,2\n").unwrap();
    let third = c.submit_with(SWEEP, &[("data", data_param)]).await.unwrap();
    let third = c.wait_done(&third, LONG).await;
    assert_eq!(ran(&third), ["prepare"]);
    let from = cached_from(&third, "train[lr=0.2,seed=2]").unwrap();
    assert_eq!(
        (from.run_id.as_str(), from.task.as_str()),
        (first.id.as_str(), "train[lr=0.2,seed=1]")
    );
}
