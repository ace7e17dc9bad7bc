//! The artifact store on real S3: a single-node Garage started by the
//! harness (drover_devcluster::garage), with real etcd, NATS, the scheduler
//! binary and agents, the store URL `s3://bucket/prefix` and the `AWS_*`
//! settings. Covers a pipeline end to end, inputs checked against their
//! recorded sha256 (an object deleted or overwritten in the bucket), and
//! uploads retried while the store is unreachable.

mod common;

use std::time::Duration;

use common::{task, Cluster};
use drover_api::pb::{RunState, TaskState};
use drover_artifacts::{RetryPolicy, Store, StoreOptions};
use drover_devcluster::garage::Garage;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

/// The bucket as a test reaches it directly, to look at or tamper with objects.
async fn bucket(garage: &Garage, prefix: &str) -> Store {
    let options = StoreOptions {
        settings: garage.env(),
        retry: RetryPolicy::default(),
    };
    drover_artifacts::open_with(&garage.url(prefix), &options)
        .await
        .unwrap()
}

/// A cluster whose scheduler and agents store everything under `prefix` in Garage.
async fn cluster(garage: &Garage, prefix: &str) -> Cluster {
    Cluster::with_store(&garage.url(prefix), garage.env()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diamond_pipeline_passes_its_artifacts_through_s3() {
    let garage = Garage::start("drover").await.unwrap();
    let mut c = cluster(&garage, "team/runs").await;
    c.add_agent("agent-1").await;

    let id = c
        .submit_with(common::DIAMOND, &[("greeting", "drover")])
        .await
        .unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let out = &task(&run, "d").attempts[0].outputs[0];
    // In the bucket, under the URL's prefix, with the sha256 recorded for it.
    let bytes = bucket(&garage, "team/runs")
        .await
        .get_bytes(&out.key)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bytes), "DROVER\nrevord\n");
    assert_eq!(out.sha256, format!("{:x}", Sha256::digest(&bytes)));
    let whole = bucket(&garage, "").await;
    assert!(whole
        .exists(&format!("team/runs/{}", out.key))
        .await
        .unwrap());
    // The scheduler reads the stored log back from S3.
    assert_eq!(c.logs(&id, "a", 1).await.unwrap().trim(), "a-ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_deleted_or_overwritten_in_the_bucket_fails_its_consumer_clearly() {
    let garage = Garage::start("drover").await.unwrap();
    let mut c = cluster(&garage, "p").await;
    c.add_agent("agent-1").await;
    // `gate` holds `consume` back until the object was tampered with; two
    // runs, as a run's first failure cancels the rest of it.
    let go = c.scratch.join("go");
    let spec = format!(
        r#"
name: tamper
tasks:
  - name: produce
    command: ["sh", "-c", "echo two > $DROVER_OUTPUTS/data"]
    outputs: [{{name: data, path: data}}]
    # Each run its own object (the second would take the first's from the cache).
    cache: false
  - name: gate
    command: ["sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done"]
  - name: consume
    depends_on: [produce, gate]
    command: ["sh", "-c", "touch {scratch}/$DROVER_RUN_ID"]
    inputs: [{{name: data, from: produce/data}}]
"#,
        go = go.display(),
        scratch = c.scratch.display(),
    );
    let (deleted, overwritten) = (
        c.submit(&spec).await.unwrap(),
        c.submit(&spec).await.unwrap(),
    );
    let mut stored = Vec::new();
    for id in [&deleted, &overwritten] {
        let run = c
            .wait_for(id, "produce succeeded", |r| {
                task(r, "produce").state() == TaskState::Succeeded
            })
            .await;
        stored.push(task(&run, "produce").attempts[0].outputs[0].clone());
    }
    let store = bucket(&garage, "p").await;
    store.delete(&stored[0].key).await.unwrap();
    store
        .put_bytes(&stored[1].key, bytes::Bytes::from_static(b"not two\n"))
        .await
        .unwrap();
    std::fs::write(&go, b"").unwrap();

    let mut errors = Vec::new();
    for id in [&deleted, &overwritten] {
        let run = c.wait_done(id, LONG).await;
        assert_eq!(run.state(), RunState::Failed, "{run:#?}");
        let consume = task(&run, "consume");
        assert_eq!(consume.state(), TaskState::Failed, "{consume:#?}");
        errors.push(consume.attempts[0].error.clone());
        // The task never ran on missing or bad bytes.
        assert!(!c.scratch.join(id).exists());
    }
    assert_eq!(
        errors[0],
        format!(
            "artifact data from produce is missing from the store ({})",
            stored[0].key
        )
    );
    let (want, got) = (
        &stored[1].sha256,
        format!("{:x}", Sha256::digest(b"not two\n")),
    );
    assert_eq!(
        errors[1],
        format!("artifact data from produce is corrupt: sha256 {want} != {got}")
    );
}

/// A run whose `produce` writes `data` and `consume` reads it, on an agent
/// that retries a store request for `window`; returned once Garage was
/// stopped and `produce` told to end (its output upload is next).
async fn outage(window: Duration) -> (Garage, Cluster, String) {
    let mut garage = Garage::start("drover").await.unwrap();
    let mut c = cluster(&garage, "p").await;
    c.add_agent_with("agent-1", |o| {
        o.artifacts_retry_timeout = window;
        o.artifacts_max_retries = 100;
    })
    .await;
    let gate = c.scratch.join("go");
    let spec = format!(
        r#"
name: outage
tasks:
  - name: produce
    command: ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.05; done; echo payload > $DROVER_OUTPUTS/data"]
    outputs: [{{name: data, path: data}}]
  - name: consume
    depends_on: [produce]
    command: ["sh", "-c", "cat $DROVER_INPUTS/data"]
    inputs: [{{name: data, from: produce/data}}]
"#,
        gate = gate.display()
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "produce running", |r| {
        task(r, "produce").state() == TaskState::Running
    })
    .await;
    garage.stop().await.unwrap();
    std::fs::write(&gate, b"").unwrap();
    (garage, c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_a_store_down_past_the_retry_window_fails_and_records_nothing() {
    let window = Duration::from_secs(2);
    let (mut garage, c, id) = outage(window).await;
    let started = std::time::Instant::now();
    let run = c.wait_done(&id, LONG).await;
    let took = started.elapsed();
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    let produce = task(&run, "produce");
    assert_eq!(produce.state(), TaskState::Failed, "{produce:#?}");
    let attempt = &produce.attempts[0];
    assert!(
        attempt
            .error
            .starts_with("uploading output `data` (key runs/"),
        "{attempt:#?}"
    );
    assert!(attempt.error.contains("retries"), "{attempt:#?}");
    assert!(attempt.outputs.is_empty(), "{attempt:#?}");
    // Retried for the window (the output, then the log), not given up at once.
    assert!(took >= window, "failed after {took:?}");
    assert_eq!(task(&run, "consume").state(), TaskState::Skipped);

    // Back up: nothing of the attempt's output is in the store.
    garage.resume().await.unwrap();
    let key = format!("runs/{id}/produce.1/outputs/data");
    assert!(!bucket(&garage, "p").await.exists(&key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_a_store_back_within_the_retry_window_succeeds() {
    let (mut garage, c, id) = outage(Duration::from_secs(30)).await;
    // The task ends at once; its upload meets a closed port meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = c.get(&id).await;
    assert_eq!(
        task(&run, "produce").state(),
        TaskState::Running,
        "{run:#?}"
    );
    garage.resume().await.unwrap();

    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    assert_eq!(task(&run, "produce").attempts.len(), 1);
    assert_eq!(c.logs(&id, "consume", 1).await.unwrap(), "payload\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_trigger_on_an_s3_prefix_fires_once_per_batch_of_new_objects() {
    use drover_api::pb;
    use drover_api::pb::trigger_settings::Source;
    let garage = Garage::start("drover").await.unwrap();
    let mut c = cluster(&garage, "runs").await;
    c.add_agent("agent-1").await;
    let data = bucket(&garage, "data/incoming").await;
    data.put_bytes("old.csv", "there before".into())
        .await
        .unwrap();
    let spec = "name: ingest\nparams: {objects: \"[]\"}\ntasks:\n  - name: t\n    command: [\"echo\", \"{{params.objects}}\"]\n";
    let created = c
        .triggers()
        .await
        .create_trigger(pb::TriggerSettings {
            name: "ingest".into(),
            spec_yaml: spec.into(),
            source: Some(Source::Objects(pb::ObjectsSource {
                url: garage.url("data/incoming/"),
                batch_window_ms: 1_000,
                poll_interval_ms: 200,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.trigger.unwrap().objects_seen, 1);

    for key in ["a.csv", "b.csv", "2026/c.csv"] {
        data.put_bytes(key, key.as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    let runs = c.wait_runs_named("ingest", 1, LONG).await;
    let objects: Vec<serde_json::Value> = serde_json::from_str(&runs[0].params["objects"]).unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["2026/c.csv", "a.csv", "b.csv"]);
    // S3's ETag of a single-part upload: the content's MD5, quoted.
    let etag = objects[1]["etag"].as_str().unwrap();
    assert!(etag.trim_matches('"').len() == 32, "{etag}");
    assert_eq!(
        objects[1]["sha256"],
        format!("{:x}", Sha256::digest(b"a.csv")),
        "{}",
        objects[1]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.runs_named("ingest").await.len(), 1, "fired again");

    data.put_bytes("d.csv", "fourth".into()).await.unwrap();
    let runs = c.wait_runs_named("ingest", 2, LONG).await;
    let newest = runs.iter().max_by_key(|r| r.created_at_ms).unwrap();
    assert!(newest.params["objects"].contains("d.csv"));
    assert!(!newest.params["objects"].contains("a.csv"));
    for r in &runs {
        assert_eq!(c.wait_done(&r.id, LONG).await.state(), RunState::Succeeded);
    }
}
