//! `GetLineage` end to end: a prepare → train (matrix lr) → evaluate run
//! with a code snapshot, on real etcd, NATS, the scheduler binary and an
//! agent with simulated GPUs, then the tree behind evaluate's output and
//! the search by digest.

mod common;

use std::time::Duration;

use common::{task, Cluster};
use drover_api::pb::{self, RunState};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

const SPEC: &str = r#"
name: lineage
code: .
params: {epochs: "2"}
tasks:
  - name: prepare
    command: [sh, -c, 'echo "1,2,3" > $DROVER_OUTPUTS/dataset.csv']
    outputs: [{name: dataset, path: dataset.csv}]
  - name: train
    depends_on: [prepare]
    matrix: {lr: ["0.1", "0.3"]}
    resources: {gpu: 1}
    command: [sh, -c, 'cat $DROVER_INPUTS/dataset > $DROVER_OUTPUTS/model; echo "lr={{matrix.lr}} epochs={{params.epochs}}" >> $DROVER_OUTPUTS/model']
    inputs: [{name: dataset, from: prepare/dataset}]
    outputs: [{name: model, path: model}]
  - name: evaluate
    depends_on: [train]
    command: [sh, -c, 'cat $DROVER_INPUTS/models/1 > $DROVER_OUTPUTS/best; echo {} > $DROVER_OUTPUTS/m.json']
    inputs:
      - {name: models, from: train/model}
      - {name: dataset, from: prepare/dataset}
    outputs: [{name: best_model, path: best}, {name: metrics, path: m.json}]
"#;

/// Stores an empty tar (two zero blocks) as the run's code snapshot.
async fn put_empty_code(c: &Cluster) -> String {
    let tar = vec![0u8; 1024];
    let sha256 = format!("{:x}", Sha256::digest(&tar));
    let chunk = pb::CodeChunk {
        code: Some(pb::CodeRef {
            sha256: sha256.clone(),
            size_bytes: tar.len() as u64,
        }),
        data: tar,
    };
    c.client()
        .await
        .put_code(futures::stream::iter(vec![chunk]))
        .await
        .unwrap();
    sha256
}

async fn lineage(
    c: &Cluster,
    req: pb::GetLineageRequest,
) -> Result<pb::GetLineageResponse, tonic::Status> {
    Ok(c.client().await.get_lineage(req).await?.into_inner())
}

fn at(l: &pb::GetLineageResponse, i: Option<u32>) -> &pb::LineageNode {
    &l.nodes[i.expect("a followed producer") as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_of_the_best_model_names_dataset_code_and_learning_rate() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("gpu-agent", |o| {
        o.simulate_gpus = 2;
        o.simulate_gpu_model = "Simulated H100".into();
    })
    .await;
    let code = put_empty_code(&c).await;
    let id = c
        .client()
        .await
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: SPEC.into(),
            code_sha256: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let dataset_sha = format!("{:x}", Sha256::digest(b"1,2,3\n"));
    let best = &task(&run, "evaluate").attempts[0].outputs[0];

    let l = lineage(
        &c,
        pb::GetLineageRequest {
            run_id: id.clone(),
            task: "evaluate".into(),
            output: "best_model".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(l.output, "best_model");
    assert_eq!(l.roots.len(), 1);
    let eval = at(&l, l.roots.first().copied());
    assert_eq!(
        (eval.run_id.as_str(), eval.task.as_str(), eval.attempt),
        (id.as_str(), "evaluate", 1)
    );
    assert_eq!(eval.code_sha256, code);
    assert_eq!(eval.agent_id, "gpu-agent");
    assert!(
        eval.started_at_ms > 0 && eval.started_at_ms <= eval.finished_at_ms,
        "{eval:#?}"
    );
    assert_eq!(eval.params.get("epochs").map(String::as_str), Some("2"));
    assert_eq!(eval.image_digest, "", "a process runs no image");
    let out = eval
        .outputs
        .iter()
        .find(|o| o.name == "best_model")
        .unwrap();
    assert_eq!(out.sha256, best.sha256);

    // models: one part per train instance, each with its lr and GPU.
    let models = &eval.inputs[0];
    assert_eq!(models.from_task, "train");
    assert_eq!(models.parts.len(), 2, "{models:#?}");
    let mut lrs = Vec::new();
    for part in &models.parts {
        let train = at(&l, part.node);
        assert_eq!(part.sha256, train.outputs[0].sha256);
        let lr = train.matrix.get("lr").cloned().unwrap_or_default();
        assert!(
            train.command[2].contains(&format!("lr={lr} epochs=2")),
            "resolved command: {:?}",
            train.command
        );
        assert_eq!(train.gpus.len(), 1, "{train:#?}");
        assert_eq!(train.gpus[0].model, "Simulated H100");
        assert!(!train.gpus[0].uuid.is_empty());
        assert_eq!(train.code_sha256, code);
        assert_eq!(train.inputs[0].parts[0].sha256, dataset_sha);
        assert_eq!(
            train.inputs[0].parts[0].node, eval.inputs[1].parts[0].node,
            "prepare is one node"
        );
        lrs.push(lr);
    }
    assert_eq!(lrs, ["0.1", "0.3"]);
    let dataset = &eval.inputs[1].parts[0];
    assert_eq!(dataset.sha256, dataset_sha);
    let prepare = at(&l, dataset.node);
    assert_eq!(prepare.task, "prepare");
    assert_eq!(prepare.agent_id, "gpu-agent");
    assert!(prepare.gpus.is_empty());
    assert_eq!(l.nodes.len(), 4);

    // By digest: the dataset's producer.
    let by_digest = lineage(
        &c,
        pb::GetLineageRequest {
            sha256: format!("sha256:{}", dataset_sha.to_uppercase()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_digest.output, "dataset");
    let root = at(&by_digest, by_digest.roots.first().copied());
    assert_eq!(
        (root.run_id.as_str(), root.task.as_str()),
        (id.as_str(), "prepare")
    );

    // A task with a matrix as written: every instance.
    let sweep = lineage(
        &c,
        pb::GetLineageRequest {
            run_id: id.clone(),
            task: "train".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(sweep.roots.len(), 2);

    for (req, code, message) in [
        (
            pb::GetLineageRequest {
                run_id: id.clone(),
                task: "evaluate".into(),
                output: "nope".into(),
                ..Default::default()
            },
            tonic::Code::NotFound,
            format!("task `evaluate` of run `{id}` has no output `nope` (it declares: best_model, metrics)"),
        ),
        (
            pb::GetLineageRequest {
                sha256: "ab".repeat(32),
                ..Default::default()
            },
            tonic::Code::NotFound,
            format!("no stored output has sha256 `{}`", "ab".repeat(32)),
        ),
        (
            pb::GetLineageRequest {
                run_id: id.clone(),
                sha256: dataset_sha.clone(),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            format!("sha256: `{dataset_sha}` cannot be combined with run_id `{id}`: give either sha256 alone or run_id and task"),
        ),
        (
            pb::GetLineageRequest {
                run_id: "missing-run".into(),
                task: "evaluate".into(),
                ..Default::default()
            },
            tonic::Code::NotFound,
            "run `missing-run` not found".to_owned(),
        ),
    ] {
        let e = lineage(&c, req).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (code, message.as_str()));
    }
}
