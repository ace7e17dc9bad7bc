//! End-to-end tests of `parse_spec`: here the documented example and what
//! resolves; `rejections` has one test per rejection asserting the exact
//! message a user sees; `matrix` the sweeps.

use std::collections::BTreeMap;

use super::*;
use crate::pb;

mod cache;
mod finally;
mod for_each;
mod matrix;
mod properties;
mod rejections;
mod when;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const EXAMPLE: &str = r#"
name: train-digits
params: {lr: "0.1"}
fail_fast: true
tasks:
  - name: prepare
    command: ["python3", "prepare.py"]
    outputs: [{name: dataset, path: dataset.csv}]
  - name: train
    depends_on: [prepare]
    command: ["python3", "train.py", "--lr", "{{params.lr}}"]
    inputs: [{name: dataset, from: prepare/dataset}]
    env: {SEED: "1"}
    resources: {cpu: 2, memory: 4Gi, gpu: 1, gpu_model: A100, gpu_memory: 40Gi}
    retries: {limit: 2, backoff: 5s}
    timeout: 1h
    image: python:3.12-slim
    pull_policy: IfNotPresent
    node_selector: {zone: eu}
"#;

fn parse(yaml: &str) -> Result<pb::PipelineSpec, SpecError> {
    parse_spec(yaml, &BTreeMap::new())
}

/// The message `yaml` is rejected with.
fn rejection(yaml: &str) -> String {
    match parse(yaml) {
        Ok(spec) => panic!("accepted: {spec:?}"),
        Err(e) => e.to_string(),
    }
}

/// A spec named `p` with a producer task `prepare` (output `dataset`) first,
/// then `tasks` (YAML list items, indented by two spaces).
fn with_tasks(tasks: &str) -> String {
    format!(
        "name: p\ntasks:\n  - {{name: prepare, command: [x], outputs: [{{name: dataset, path: d.csv}}]}}\n{tasks}"
    )
}

/// The message for a spec whose second task is `task` (a flow mapping).
fn task_rejection(task: &str) -> String {
    rejection(&with_tasks(&format!("  - {task}\n")))
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn example_resolves_to_the_expected_proto() {
    let expected = pb::PipelineSpec {
        name: "train-digits".into(),
        params: map(&[("lr", "0.1")]),
        fail_fast: true,
        tasks: vec![
            pb::TaskSpec {
                name: "prepare".into(),
                depends_on: vec![],
                command: strings(&["python3", "prepare.py"]),
                inputs: vec![],
                outputs: vec![pb::OutputSpec {
                    name: "dataset".into(),
                    path: "dataset.csv".into(),
                    result: false,
                }],
                env: BTreeMap::new(),
                resources: Some(pb::Resources {
                    cpu_millis: 0,
                    memory_bytes: 0,
                    gpu: 0,
                    ..Default::default()
                }),
                retries: Some(pb::RetryPolicy {
                    limit: 0,
                    backoff_ms: 0,
                }),
                timeout_ms: 0,
                image: String::new(),
                ..Default::default()
            },
            pb::TaskSpec {
                name: "train".into(),
                depends_on: strings(&["prepare"]),
                command: strings(&["python3", "train.py", "--lr", "0.1"]),
                inputs: vec![pb::InputSpec {
                    name: "dataset".into(),
                    from_task: "prepare".into(),
                    from_output: "dataset".into(),
                    ..Default::default()
                }],
                outputs: vec![],
                env: map(&[("SEED", "1")]),
                resources: Some(pb::Resources {
                    cpu_millis: 2_000,
                    memory_bytes: 4 << 30,
                    gpu: 1,
                    gpu_model: "A100".into(),
                    gpu_memory_bytes: 40 << 30,
                }),
                retries: Some(pb::RetryPolicy {
                    limit: 2,
                    backoff_ms: 5_000,
                }),
                timeout_ms: 3_600_000,
                image: "python:3.12-slim".into(),
                node_selector: map(&[("zone", "eu")]),
                pull_policy: pb::PullPolicy::IfNotPresent.into(),
                // Not a matrix instance.
                matrix_task: String::new(),
                for_each: None,
                matrix: Default::default(),
                max_parallel: 0,
                finally: false,
                when: String::new(),
                // No `code:`: the scratch directory.
                workdir: String::new(),
                // No `cache:`: the default (off here: no outputs).
                cache: None,
                // No `on_agent_lost:`: requeue.
                on_agent_lost: pb::OnAgentLost::Unspecified.into(),
                lost_after_ms: 0,
            },
        ],
        // No `queue:` or `priority:`: the default queue, priority 0.
        queue: String::new(),
        priority: 0,
        code: String::new(),
        code_sha256: String::new(),
    };
    assert_eq!(parse(EXAMPLE), Ok(expected));
}

#[test]
fn an_input_from_a_param_needs_no_producer() -> TestResult {
    let yaml = r#"
name: p
params: {objects: "[]"}
tasks:
  - name: ingest
    command: [cat, objects.json]
    inputs: [{name: objects.json, param: objects}]
"#;
    let spec = parse(yaml)?;
    assert_eq!(
        spec.tasks[0].inputs,
        vec![pb::InputSpec {
            name: "objects.json".into(),
            from_param: "objects".into(),
            ..Default::default()
        }]
    );
    Ok(())
}

#[test]
fn overrides_replace_declared_params_everywhere() -> TestResult {
    let yaml = r#"
name: p
params: {lr: "0.1", tag: "3.12", other: x}
tasks:
  - name: t
    command: ["train", "--lr={{ params.lr }}", "{{params.other}}"]
    env: {LR: "{{params.lr}}", BOTH: "{{params.lr}}/{{params.other}}"}
    image: "python:{{params.tag}}-slim"
"#;
    let overrides = BTreeMap::from([("lr".to_owned(), "0.5".to_owned())]);
    let spec = parse_spec(yaml, &overrides)?;
    assert_eq!(
        spec.params,
        map(&[("lr", "0.5"), ("tag", "3.12"), ("other", "x")])
    );
    let task = &spec.tasks[0];
    assert_eq!(task.command, strings(&["train", "--lr=0.5", "x"]));
    assert_eq!(task.env, map(&[("LR", "0.5"), ("BOTH", "0.5/x")]));
    assert_eq!(task.image, "python:3.12-slim");
    Ok(())
}

#[test]
fn a_full_gpu_task_round_trips() -> TestResult {
    use prost::Message;

    let yaml = r#"
name: finetune
params: {zone: eu-west-1, model: H100}
tasks:
  - name: train
    command: [torchrun, --nproc-per-node, "4", train.py]
    resources:
      cpu: 16
      memory: 128Gi
      gpu: 4
      gpu_model: "{{params.model}}"
      gpu_memory: 80Gi
    image: ghcr.io/acme/trainer:1.4
    pull_policy: Always
    node_selector:
      zone: "{{params.zone}}"
      drover.io/tier: gold
      spot: ""
"#;
    let overrides = map(&[("zone", "us-east-2")]);
    let spec = parse_spec(yaml, &overrides)?;
    let task = &spec.tasks[0];
    assert_eq!(
        task.resources,
        Some(pb::Resources {
            cpu_millis: 16_000,
            memory_bytes: 128 << 30,
            gpu: 4,
            gpu_model: "H100".into(),
            gpu_memory_bytes: 80 << 30,
        })
    );
    assert_eq!(task.image, "ghcr.io/acme/trainer:1.4");
    assert_eq!(task.pull_policy(), pb::PullPolicy::Always);
    assert_eq!(
        task.node_selector,
        map(&[
            ("drover.io/tier", "gold"),
            ("spot", ""),
            ("zone", "us-east-2")
        ])
    );

    // What the scheduler stores and sends is what was parsed.
    let bytes = spec.encode_to_vec();
    assert_eq!(pb::PipelineSpec::decode(bytes.as_slice())?, spec);
    Ok(())
}

#[test]
fn queue_and_priority_round_trip() -> TestResult {
    use prost::Message;

    let yaml = "name: p\nqueue: train\npriority: 10\ntasks:\n  - {name: t, command: [x]}\n";
    let spec = parse(yaml)?;
    assert_eq!((spec.queue.as_str(), spec.priority), ("train", 10));
    let bytes = spec.encode_to_vec();
    assert_eq!(pb::PipelineSpec::decode(bytes.as_slice())?, spec);

    for (fields, queue, priority) in [
        ("queue: default\npriority: 0\n", "default", 0),
        ("queue: ''\n", "", 0),
        ("queue:\npriority:\n", "", 0),
        (
            "queue: team-a-2\npriority: 1000000\n",
            "team-a-2",
            1_000_000,
        ),
        ("queue: '0'\npriority: '7'\n", "0", 7),
        ("priority: +5\n", "", 5),
    ] {
        let spec = parse(&format!(
            "name: p\n{fields}tasks: [{{name: t, command: [x]}}]\n"
        ))
        .unwrap_or_else(|e| panic!("{fields}: {e}"));
        assert_eq!(
            (spec.queue.as_str(), spec.priority),
            (queue, priority),
            "{fields}"
        );
    }
    Ok(())
}

#[test]
fn pull_policies() -> TestResult {
    for (text, policy) in [
        ("IfNotPresent", pb::PullPolicy::IfNotPresent),
        ("Always", pb::PullPolicy::Always),
        ("Never", pb::PullPolicy::Never),
    ] {
        let yaml = format!(
            "name: p\ntasks:\n  - {{name: t, command: [x], image: i, pull_policy: {text}}}\n"
        );
        assert_eq!(parse(&yaml)?.tasks[0].pull_policy(), policy);
    }
    Ok(())
}

#[test]
fn on_agent_lost_and_lost_after() -> TestResult {
    let task = |fields: &str| -> Result<pb::TaskSpec, SpecError> {
        let yaml = format!("name: p\ntasks:\n  - {{name: t, command: [x]{fields}}}\n");
        Ok(parse(&yaml)?.tasks.remove(0))
    };
    let t = task("")?;
    assert_eq!(
        (t.on_agent_lost(), t.lost_after_ms),
        (pb::OnAgentLost::Unspecified, 0)
    );
    let t = task(", on_agent_lost: requeue")?;
    assert_eq!(t.on_agent_lost(), pb::OnAgentLost::Requeue);
    let t = task(", on_agent_lost: wait")?;
    assert_eq!(
        (t.on_agent_lost(), t.lost_after_ms),
        (pb::OnAgentLost::Wait, 0)
    );
    let t = task(", on_agent_lost: wait, lost_after: 30m")?;
    assert_eq!(t.lost_after_ms, 30 * 60 * 1000);
    Ok(())
}

#[test]
fn defaults_when_fields_are_left_out() -> TestResult {
    let spec = parse("name: p\ntasks:\n  - {name: t, command: [x]}\n")?;
    assert!(spec.fail_fast);
    assert_eq!(spec.queue, "");
    assert_eq!(spec.priority, 0);
    assert!(spec.params.is_empty());
    let task = &spec.tasks[0];
    assert_eq!(task.resources, Some(pb::Resources::default()));
    assert_eq!(task.retries, Some(pb::RetryPolicy::default()));
    assert_eq!(task.timeout_ms, 0);
    assert_eq!(task.image, "");
    assert!(task.node_selector.is_empty());
    assert_eq!(task.pull_policy(), pb::PullPolicy::Unspecified);

    let spec = parse("name: p\nfail_fast: false\ntasks:\n  - {name: t, command: [x]}\n")?;
    assert!(!spec.fail_fast);
    Ok(())
}

#[test]
fn retries_without_backoff_wait_ten_seconds() -> TestResult {
    let spec = parse("name: p\ntasks:\n  - {name: t, command: [x], retries: {limit: 3}}\n")?;
    assert_eq!(
        spec.tasks[0].retries,
        Some(pb::RetryPolicy {
            limit: 3,
            backoff_ms: 10_000
        })
    );
    Ok(())
}

#[test]
fn scalars_keep_their_yaml_text() -> TestResult {
    let yaml = r#"
name: p
params: {lr: 1.50, epochs: 3, debug: true, empty: ""}
tasks:
  - name: t
    command: [python3, train.py, --epochs, 10, --lr, 1e-3]
    env: {N: 1, FLAG: false, LR: "{{params.lr}}"}
    resources: {cpu: 0.5, memory: 1536Mi, gpu: 0}
    retries: {limit: 0, backoff: 0s}
"#;
    let spec = parse(yaml)?;
    assert_eq!(
        spec.params,
        map(&[
            ("lr", "1.50"),
            ("epochs", "3"),
            ("debug", "true"),
            ("empty", "")
        ])
    );
    let task = &spec.tasks[0];
    assert_eq!(
        task.command,
        strings(&["python3", "train.py", "--epochs", "10", "--lr", "1e-3"])
    );
    assert_eq!(
        task.env,
        map(&[("N", "1"), ("FLAG", "false"), ("LR", "1.50")])
    );
    assert_eq!(
        task.resources,
        Some(pb::Resources {
            cpu_millis: 500,
            memory_bytes: 1536 << 20,
            gpu: 0,
            ..Default::default()
        })
    );
    assert_eq!(
        task.retries,
        Some(pb::RetryPolicy {
            limit: 0,
            backoff_ms: 0
        })
    );
    Ok(())
}

/// YAML 1.2, as the README says: no octal, no YAML 1.1 booleans, aliases
/// but no merge keys.
#[test]
fn yaml_1_2_decides_what_a_value_is() -> TestResult {
    let yaml = r#"
name: p
fail_fast: False
tasks:
  - name: a
    command: [chmod, 0755, x, yes, off, 0x1F]
    env: {MODE: 0o755, ON: on}
    resources: &small {cpu: 1, memory: 1Gi}
    outputs: [{name: o, path: o, result: TRUE}]
  - name: b
    command: [x]
    resources: *small
"#;
    let spec = parse(yaml)?;
    assert!(!spec.fail_fast);
    let (a, b) = (&spec.tasks[0], &spec.tasks[1]);
    assert_eq!(
        a.command,
        strings(&["chmod", "0755", "x", "yes", "off", "0x1F"])
    );
    assert_eq!(a.env, map(&[("MODE", "0o755"), ("ON", "on")]));
    assert!(a.outputs[0].result);
    assert_eq!(b.resources, a.resources);
    assert_eq!(
        rejection("name: p\nfail_fast: yes\ntasks: []\n"),
        "fail_fast: invalid type: string \"yes\", expected a boolean at line 2 column 12"
    );
    assert_eq!(
        task_rejection("{name: t, command: [x], <<: {image: y}}"),
        "task `t`: unknown field `<<`"
    );
    Ok(())
}

#[test]
fn transitive_upstream_is_enough() -> TestResult {
    let yaml = with_tasks(
        "  - {name: mid, depends_on: [prepare], command: [x]}\n  - {name: last, depends_on: [mid], command: [x], inputs: [{name: d, from: prepare/dataset}]}\n",
    );
    let spec = parse(&yaml)?;
    assert_eq!(spec.tasks[2].inputs[0].from_task, "prepare");
    Ok(())
}

// --- YAML shape -------------------------------------------------------------

#[test]
fn code_and_workdir_are_kept_as_written_and_checked() -> TestResult {
    let spec = parse(
        "name: p\ncode: ../src\ntasks:\n  - {name: t, command: [x], workdir: ./tools//bin/}\n  - {name: u, command: [x]}\n",
    )?;
    assert_eq!(spec.code, "../src");
    assert_eq!(spec.code_sha256, "", "only the scheduler sets the digest");
    assert_eq!(spec.tasks[0].workdir, "tools/bin");
    assert_eq!(spec.tasks[1].workdir, "");

    assert_eq!(
        rejection("name: p\ncode: ''\ntasks:\n  - {name: t, command: [x]}\n"),
        "code: is empty (name a directory relative to the spec file, e.g. `.`)"
    );
    assert_eq!(
        rejection("name: p\ntasks:\n  - {name: t, command: [x], workdir: src}\n"),
        "task `t`: workdir: needs the pipeline's `code`"
    );
    for bad in ["/abs", "../up", "a/../../b"] {
        assert_eq!(
            rejection(&format!(
                "name: p\ncode: .\ntasks:\n  - {{name: t, command: [x], workdir: '{bad}'}}\n"
            )),
            format!("task `t`: workdir: `{bad}` must be a relative path inside the code snapshot, without `..`")
        );
    }
    Ok(())
}
