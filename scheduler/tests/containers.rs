//! Container tasks through the whole system: scheduler, agents with the
//! docker executor, a real Docker engine (started by ops/test.sh) and a
//! locally imported busybox image (no registry is reachable).

mod common;

use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb::{AttemptState, RunState, TaskState};

const LONG: Duration = Duration::from_secs(90);

fn docker(o: &mut drover_agent::AgentOptions) {
    o.executors = vec!["docker".into()];
    o.docker_network = "none".into();
}

async fn cluster_with_docker_agent(id: &str) -> (Cluster, String) {
    let image = drover_devcluster::docker::ensure_test_image()
        .await
        .expect("a Docker engine must run for these tests (ops/test.sh starts one)");
    let mut c = Cluster::without_agents().await;
    c.add_agent_with(id, docker).await;
    (c, image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_pipeline_passes_artifacts_and_surfaces_failures() {
    let (c, image) = cluster_with_docker_agent("d1").await;
    let spec = format!(
        r#"
name: boxed
fail_fast: false
tasks:
  - name: make
    image: {image}
    command: ["sh", "-c", "echo from-a-container > $DROVER_OUTPUTS/out.txt"]
    outputs: [{{name: text, path: out.txt}}]
  - name: use
    depends_on: [make]
    image: {image}
    command: ["sh", "-c", "cat $DROVER_INPUTS/in; cat $DROVER_INPUTS/in | tr a-z A-Z > $DROVER_OUTPUTS/up.txt"]
    inputs: [{{name: in, from: make/text}}]
    outputs: [{{name: upper, path: up.txt}}]
  - name: breaks
    image: {image}
    command: ["sh", "-c", "echo bad >&2; exit 3"]
"#
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed, "{run:#?}");
    assert_eq!(task(&run, "make").state(), TaskState::Succeeded);
    assert_eq!(task(&run, "use").state(), TaskState::Succeeded);
    let up = &task(&run, "use").attempts[0].outputs[0];
    assert_eq!(
        std::fs::read_to_string(c.artifact(&up.key)).unwrap(),
        "FROM-A-CONTAINER\n"
    );
    assert!(c
        .logs(&id, "use", 0)
        .await
        .unwrap()
        .starts_with("from-a-container\n"));
    let breaks = task(&run, "breaks");
    assert_eq!(breaks.state(), TaskState::Failed);
    assert_eq!(breaks.attempts[0].exit_code, Some(3));
    assert!(c.logs(&id, "breaks", 0).await.unwrap().starts_with("bad\n"));

    // Lineage names the image and the id of the image each container ran.
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap();
    let image_id = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    assert!(image_id.starts_with("sha256:"), "{inspect:?}");
    let lineage = c
        .client()
        .await
        .get_lineage(drover_api::pb::GetLineageRequest {
            run_id: id.clone(),
            task: "use".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lineage.nodes.len(), 2, "{lineage:#?}");
    for node in &lineage.nodes {
        assert_eq!(
            (node.image.as_str(), node.image_digest.as_str()),
            (image.as_str(), image_id.as_str()),
            "{}",
            node.task
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpullable_image_fails_fast_with_the_reason() {
    let (c, _) = cluster_with_docker_agent("d1").await;
    let started = Instant::now();
    let id = c
        .submit("name: nopull\ntasks:\n  - name: t\n    image: drover-test/does-not-exist:1\n    command: [\"true\"]\n")
        .await
        .unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.state(), RunState::Failed);
    let t = task(&run, "t");
    assert!(
        t.message.contains("drover-test/does-not-exist:1"),
        "{}",
        t.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_past_its_timeout_is_stopped() {
    let (c, image) = cluster_with_docker_agent("d1").await;
    let spec = format!(
        "name: slowbox\ntasks:\n  - name: t\n    image: {image}\n    command: [\"sleep\", \"60\"]\n    timeout: 1s\n"
    );
    let id = c.submit(&spec).await.unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Failed);
    assert!(
        task(&run, "t").message.contains("timed out"),
        "{}",
        task(&run, "t").message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_readopts_its_running_container() {
    let (mut c, image) = cluster_with_docker_agent("d1").await;
    let spec = format!(
        r#"
name: adopt
tasks:
  - name: long
    image: {image}
    command: ["sh", "-c", "sleep 4; echo finished > $DROVER_OUTPUTS/done.txt; echo done"]
    outputs: [{{name: done, path: done.txt}}]
"#
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running", |r| {
        task(r, "long").state() == TaskState::Running
    })
    .await;
    c.kill_agent("d1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.add_agent_with("d1", docker).await;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "long");
    assert_eq!(
        t.attempts.len(),
        1,
        "the container was adopted, not re-run: {t:#?}"
    );
    assert_eq!(t.attempts[0].state(), AttemptState::Succeeded);
    let out = &t.attempts[0].outputs[0];
    assert_eq!(
        std::fs::read_to_string(c.artifact(&out.key)).unwrap(),
        "finished\n"
    );
}
