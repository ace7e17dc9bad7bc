use std::collections::BTreeMap;

use super::*;
use crate::store::StoredRun;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

const PIPELINE: &str = r#"
name: digits
params: {epochs: "3"}
tasks:
  - name: prepare
    command: [python3, prepare.py]
    outputs: [{name: dataset, path: dataset.csv}]
  - name: train
    depends_on: [prepare]
    matrix: {lr: ["0.1", "0.3"]}
    image: python:3.12-slim
    command: [python3, train.py, --lr, "{{matrix.lr}}", --epochs, "{{params.epochs}}"]
    inputs: [{name: dataset, from: prepare/dataset}]
    outputs: [{name: model, path: model.json}]
  - name: evaluate
    depends_on: [train]
    command: [python3, evaluate.py]
    inputs:
      - {name: models, from: train/model}
      - {name: dataset, from: prepare/dataset}
    outputs: [{name: best_model, path: best.json}, {name: metrics, path: m.json}]
"#;

/// A successful attempt on `agent-1`, assigned at `assigned`, ended at
/// `finished`, with outputs (name, sha256).
fn ok(number: u32, assigned: u64, finished: u64, outputs: &[(&str, &str)]) -> pb::Attempt {
    pb::Attempt {
        number,
        agent_id: "agent-1".into(),
        state: pb::AttemptState::Succeeded as i32,
        assigned_at_ms: assigned,
        started_at_ms: assigned + 1,
        finished_at_ms: finished,
        outputs: outputs
            .iter()
            .map(|(name, sha)| pb::Artifact {
                name: (*name).into(),
                key: format!("k/{name}/{number}"),
                sha256: (*sha).into(),
                size: 7,
                result: Some(b"{}".to_vec()),
            })
            .collect(),
        ..Default::default()
    }
}

fn record(attempts: Vec<pb::Attempt>) -> pb::TaskRecord {
    let state = match attempts.last().map(pb::Attempt::state) {
        Some(pb::AttemptState::Succeeded) => pb::TaskState::Succeeded,
        Some(_) => pb::TaskState::Running,
        None => pb::TaskState::Pending,
    };
    pb::TaskRecord {
        state: state as i32,
        attempts,
        ..Default::default()
    }
}

/// Run `id` of [`PIPELINE`] with these task records, its code at `code`.
fn run_of(id: &str, tasks: Vec<(&str, pb::TaskRecord)>) -> LineageRun {
    let mut spec = drover_api::spec::parse_spec(PIPELINE, &BTreeMap::new()).expect("valid spec");
    spec.code_sha256 = "c0de".repeat(16);
    let stored = StoredRun {
        record: pb::RunRecord {
            id: id.into(),
            params: spec.params.clone(),
            state: pb::RunState::Running as i32,
            ..Default::default()
        },
        spec: Arc::new(spec),
        rev: 1,
        tasks: tasks
            .into_iter()
            .map(|(name, r)| (name.to_owned(), r, 1))
            .collect(),
    };
    let (dag, _) = convert::restore(&stored);
    LineageRun::new(stored.record, stored.spec, dag, HashMap::new())
}

/// Every task of [`PIPELINE`] succeeded once, in order.
fn finished_run(id: &str) -> LineageRun {
    run_of(
        id,
        vec![
            ("prepare", record(vec![ok(1, 1, 10, &[("dataset", "d1")])])),
            (
                "train[lr=0.1]",
                record(vec![ok(1, 11, 20, &[("model", "m01")])]),
            ),
            (
                "train[lr=0.3]",
                record(vec![ok(1, 11, 21, &[("model", "m03")])]),
            ),
            (
                "evaluate",
                record(vec![ok(
                    1,
                    22,
                    30,
                    &[("best_model", "b"), ("metrics", "x")],
                )]),
            ),
        ],
    )
}

fn runs(list: Vec<LineageRun>) -> Runs {
    list.into_iter()
        .map(|r| (r.record.id.clone(), Some(r)))
        .collect()
}

fn node(resp: &pb::GetLineageResponse, i: Option<u32>) -> &pb::LineageNode {
    &resp.nodes[i.expect("a node index") as usize]
}

#[test]
fn the_tree_names_each_producer_once_with_resolved_commands_and_values() -> TestResult {
    let runs = runs(vec![finished_run("r1")]);
    let roots = roots_of(&runs, "r1", "evaluate", Some("best_model"))?;
    let a = assemble(&runs, &roots, "best_model", DEFAULT_DEPTH);
    assert!(a.missing.is_empty());
    let resp = a.response;
    assert_eq!(resp.output, "best_model");
    assert_eq!(resp.roots.len(), 1);
    // evaluate, prepare once (shared: a diamond), two train instances.
    assert_eq!(resp.nodes.len(), 4, "{:#?}", resp.nodes);
    let eval = node(&resp, Some(resp.roots[0]));
    assert_eq!((eval.task.as_str(), eval.attempt), ("evaluate", 1));
    assert_eq!(eval.command, ["python3", "evaluate.py"]);
    assert_eq!(eval.code_sha256, "c0de".repeat(16));
    assert_eq!(eval.params.get("epochs").map(String::as_str), Some("3"));
    assert_eq!((eval.started_at_ms, eval.finished_at_ms), (23, 30));
    assert_eq!(eval.agent_id, "agent-1");
    assert!(
        eval.outputs.iter().all(|o| o.result.is_none()),
        "result contents are left out"
    );

    let models = &eval.inputs[0];
    assert_eq!(
        (models.name.as_str(), models.from_task.as_str()),
        ("models", "train")
    );
    let parts: Vec<(&str, &str)> = models
        .parts
        .iter()
        .map(|p| (p.task.as_str(), p.sha256.as_str()))
        .collect();
    assert_eq!(parts, [("train[lr=0.1]", "m01"), ("train[lr=0.3]", "m03")]);
    let train = node(&resp, models.parts[1].node);
    assert_eq!(train.matrix.get("lr").map(String::as_str), Some("0.3"));
    assert_eq!(
        train.command,
        ["python3", "train.py", "--lr", "0.3", "--epochs", "3"]
    );
    assert_eq!(train.image, "python:3.12-slim");

    let dataset = &eval.inputs[1];
    assert_eq!(dataset.parts.len(), 1);
    assert_eq!(dataset.parts[0].sha256, "d1");
    let prepare = dataset.parts[0].node;
    assert_eq!(node(&resp, prepare).task, "prepare");
    for part in &models.parts {
        let t = node(&resp, part.node);
        assert_eq!(t.inputs[0].parts[0].node, prepare, "one node for prepare");
    }
    assert!(node(&resp, prepare).inputs.is_empty());
    Ok(())
}

#[test]
fn the_depth_limit_lists_inputs_without_their_producers() -> TestResult {
    let runs = runs(vec![finished_run("r1")]);
    let roots = roots_of(&runs, "r1", "evaluate", None)?;
    let resp = assemble(&runs, &roots, "", 1).response;
    let eval = node(&resp, Some(resp.roots[0]));
    assert!(eval.note.is_empty(), "{}", eval.note);
    let train = node(&resp, eval.inputs[0].parts[0].node);
    let part = &train.inputs[0].parts[0];
    assert_eq!(
        (part.task.as_str(), part.sha256.as_str()),
        ("prepare", "d1")
    );
    assert!(part.node.is_none(), "past the depth limit");
    assert!(train.note.contains("depth limit (1)"), "{}", train.note);
    // prepare is reachable at depth 1 through evaluate's own input.
    assert_eq!(resp.nodes.len(), 4);
    Ok(())
}

#[test]
fn an_input_comes_from_the_producer_attempt_that_had_ended_when_assigned() -> TestResult {
    let run = run_of(
        "r1",
        vec![
            (
                "prepare",
                record(vec![
                    ok(1, 1, 10, &[("dataset", "old")]),
                    ok(2, 40, 50, &[("dataset", "new")]),
                ]),
            ),
            (
                "train[lr=0.1]",
                record(vec![
                    ok(1, 20, 30, &[("model", "m-old")]),
                    ok(2, 60, 70, &[("model", "m-new")]),
                ]),
            ),
        ],
    );
    let runs = runs(vec![run]);
    let resp = assemble(
        &runs,
        &[
            Root {
                run: "r1".into(),
                task: 1,
                attempt: 1,
            },
            Root {
                run: "r1".into(),
                task: 1,
                attempt: 2,
            },
        ],
        "",
        DEFAULT_DEPTH,
    )
    .response;
    let digests: Vec<&str> = resp
        .roots
        .iter()
        .map(|&r| resp.nodes[r as usize].inputs[0].parts[0].sha256.as_str())
        .collect();
    assert_eq!(digests, ["old", "new"]);
    Ok(())
}

#[test]
fn a_cached_result_leads_to_the_attempt_it_came_from_in_another_run() -> TestResult {
    let mut cached = ok(1, 5, 5, &[("dataset", "d1")]);
    cached.agent_id = String::new();
    cached.cached_from = Some(pb::AttemptSource {
        run_id: "r1".into(),
        task: "prepare".into(),
        attempt: 1,
    });
    let later = run_of("r2", vec![("prepare", record(vec![cached]))]);
    let roots = [Root {
        run: "r2".into(),
        task: 0,
        attempt: 1,
    }];

    let mut only_later = runs(vec![later]);
    let a = assemble(&only_later, &roots, "", DEFAULT_DEPTH);
    assert_eq!(a.missing, BTreeSet::from(["r1".to_owned()]));

    only_later.insert("r1".into(), None);
    let gone = assemble(&only_later, &roots, "", DEFAULT_DEPTH).response;
    assert!(
        gone.nodes[0].note.contains("`r1`"),
        "{}",
        gone.nodes[0].note
    );
    assert!(gone.nodes[0].source.is_none());

    only_later.insert("r1".into(), Some(finished_run("r1")));
    let a = assemble(&only_later, &roots, "", DEFAULT_DEPTH);
    assert!(a.missing.is_empty());
    let resp = a.response;
    let node0 = &resp.nodes[0];
    assert_eq!(
        node0.cached_from.as_ref().map(|s| s.run_id.as_str()),
        Some("r1")
    );
    let source = node(&resp, node0.source);
    assert_eq!(
        (
            source.run_id.as_str(),
            source.task.as_str(),
            source.agent_id.as_str()
        ),
        ("r1", "prepare", "agent-1")
    );
    Ok(())
}

#[test]
fn roots_name_what_is_missing_or_not_produced_yet() -> TestResult {
    let runs = runs(vec![run_of(
        "r1",
        vec![("prepare", record(vec![ok(1, 1, 10, &[("dataset", "d1")])]))],
    )]);
    let status = |r: Result<Vec<Root>>| match r {
        Ok(roots) => panic!("expected an error, got {roots:?}"),
        Err(e) => tonic::Status::from(e),
    };
    let s = status(roots_of(&runs, "nope", "prepare", None));
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert_eq!(s.message(), "run `nope` not found");
    let s = status(roots_of(&runs, "r1", "nope", None));
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert_eq!(s.message(), "run `r1` has no task `nope`");
    let s = status(roots_of(&runs, "r1", "evaluate", Some("model")));
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert_eq!(
        s.message(),
        "task `evaluate` of run `r1` has no output `model` (it declares: best_model, metrics)"
    );
    // A task with a matrix as written stands for its instances.
    let s = status(roots_of(&runs, "r1", "train", None));
    assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    assert!(
        s.message()
            .starts_with("task `train[lr=0.1]` of run `r1` has no successful attempt"),
        "{}",
        s.message()
    );
    assert_eq!(roots_of(&runs, "r1", "prepare", Some("dataset"))?.len(), 1);
    let done = runs_of_finished();
    let roots = roots_of(&done, "r1", "train", Some("model"))?;
    assert_eq!(roots.iter().map(|r| r.task).collect::<Vec<_>>(), [1, 2]);
    Ok(())
}

fn runs_of_finished() -> Runs {
    runs(vec![finished_run("r1")])
}

#[test]
fn requests_are_checked_naming_the_field_and_value() {
    let req = |run: &str, task: &str, sha: &str, depth: u32| pb::GetLineageRequest {
        run_id: run.into(),
        task: task.into(),
        sha256: sha.into(),
        max_depth: depth,
        ..Default::default()
    };
    let message = |r: &pb::GetLineageRequest| match parse_request(r) {
        Ok(q) => panic!("expected an error, got {q:?}"),
        Err(e) => {
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            s.message().to_owned()
        }
    };
    let sha = "AB".repeat(32);
    assert_eq!(
        message(&req("r1", "", &sha, 0)),
        format!("sha256: `{sha}` cannot be combined with run_id `r1`: give either sha256 alone or run_id and task")
    );
    for (request, want) in [
        (
            req("", "", "sha256:abc", 0),
            "sha256: `sha256:abc` is not a sha256 (64 hex digits, `sha256:` prefix allowed)",
        ),
        (req("", "", "", 0), "run_id: is required (or sha256)"),
        (req("r1", "", "", 0), "task: is required with run_id `r1`"),
        (
            req("r1", "t", "", 1000),
            "max_depth: 1000 is over the limit of 256",
        ),
    ] {
        assert_eq!(message(&request), want);
    }
    assert_eq!(
        parse_request(&req("", "", &format!("sha256:{sha}"), 0)).ok(),
        Some((Query::Sha256("ab".repeat(32)), DEFAULT_DEPTH))
    );
    assert_eq!(
        parse_request(&req("r1", "t", "", 3)).ok(),
        Some((
            Query::Artifact {
                run: "r1".into(),
                task: "t".into(),
                output: None
            },
            3
        ))
    );
}

#[test]
fn a_digest_is_found_in_a_successful_attempt_of_the_run() {
    let mut failed = ok(3, 1, 2, &[("dataset", "zz")]);
    failed.state = pb::AttemptState::Failed as i32;
    let tasks = vec![
        ("a".to_owned(), record(vec![failed]), 1),
        (
            "b".to_owned(),
            record(vec![
                ok(1, 1, 2, &[("x", "zz")]),
                ok(2, 3, 4, &[("y", "zz")]),
            ]),
            1,
        ),
    ];
    assert_eq!(
        find_output("r9", &tasks, "zz"),
        Some(Found {
            run: "r9".into(),
            task: "b".into(),
            attempt: 2,
            output: "y".into(),
        })
    );
    assert_eq!(find_output("r9", &tasks, "nope"), None);
}

const FOR_EACH: &str = r#"
name: shards
tasks:
  - {name: list, command: [list], outputs: [{name: shards, path: l.json}]}
  - name: process
    depends_on: [list]
    for_each: {from: list/shards}
    command: [process, "{{item}}"]
    outputs: [{name: stats, path: s.json}]
  - name: merge
    depends_on: [process]
    command: [merge]
    inputs: [{name: stats, from: process/stats}]
"#;

/// [`FOR_EACH`] finished, its list `["a", "b"]` read (or not: `items`).
fn for_each_run(items: bool) -> Runs {
    let spec = drover_api::spec::parse_spec(FOR_EACH, &BTreeMap::new()).expect("valid spec");
    let tasks = [
        ("list", ok(1, 1, 2, &[("shards", "l")])),
        ("process[0]", ok(1, 3, 4, &[("stats", "s0")])),
        ("process[1]", ok(1, 3, 5, &[("stats", "s1")])),
        ("merge", ok(1, 6, 7, &[])),
    ];
    let stored = StoredRun {
        record: pb::RunRecord {
            id: "f1".into(),
            state: pb::RunState::Succeeded as i32,
            expansions: vec![pb::Expansion {
                task: "process".into(),
                count: 2,
            }],
            ..Default::default()
        },
        spec: Arc::new(spec),
        rev: 1,
        tasks: tasks
            .into_iter()
            .map(|(name, a)| (name.to_owned(), record(vec![a]), 1))
            .collect(),
    };
    let (dag, _) = convert::restore(&stored);
    let lists = if items {
        HashMap::from([(1, vec![serde_json::json!("a"), serde_json::json!("b")])])
    } else {
        HashMap::new()
    };
    runs(vec![LineageRun::new(
        stored.record,
        stored.spec,
        dag,
        lists,
    )])
}

#[test]
fn for_each_instances_show_their_item_in_the_command_they_ran() -> TestResult {
    let runs = for_each_run(true);
    let roots = roots_of(&runs, "f1", "merge", None)?;
    let resp = assemble(&runs, &roots, "", DEFAULT_DEPTH).response;
    let merge = node(&resp, resp.roots.first().copied());
    let parts = &merge.inputs[0].parts;
    let names: Vec<&str> = parts.iter().map(|p| p.task.as_str()).collect();
    assert_eq!(names, ["process[0]", "process[1]"]);
    let second = node(&resp, parts[1].node);
    assert_eq!(second.command, ["process", "b"]);
    assert_eq!(second.matrix.get("item").map(String::as_str), Some("b"));
    assert!(second.note.is_empty(), "{}", second.note);
    // The task as written stands for its instances.
    assert_eq!(roots_of(&runs, "f1", "process", Some("stats"))?.len(), 2);

    // A list that cannot be read any more: the command as written, said so.
    let runs = for_each_run(false);
    let resp = assemble(&runs, &roots, "", DEFAULT_DEPTH).response;
    let merge = node(&resp, resp.roots.first().copied());
    let first = node(&resp, merge.inputs[0].parts[0].node);
    assert_eq!(first.command, ["process", "{{item}}"]);
    assert!(
        first.note.contains("for_each list could not be read"),
        "{}",
        first.note
    );
    Ok(())
}
