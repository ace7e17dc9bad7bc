//! End-to-end tests of `parse_spec`: the documented example, then one test
//! per rejection asserting the exact message a user sees.

use std::collections::BTreeMap;

use super::*;
use crate::pb;

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
                matrix: Default::default(),
                max_parallel: 0,
            },
        ],
        // No `queue:` or `priority:`: the default queue, priority 0.
        queue: String::new(),
        priority: 0,
    };
    assert_eq!(parse(EXAMPLE), Ok(expected));
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
fn rejects_invalid_yaml() {
    assert_eq!(
        rejection("name: [p\n"),
        "invalid yaml: did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 7"
    );
    assert_eq!(
        rejection("name: p\nname: q\n"),
        "invalid yaml: duplicate entry with key \"name\""
    );
    assert_eq!(
        rejection("name: p\nparams: {a: 1, a: 2}\n"),
        "invalid yaml: params: duplicate entry with key \"a\" at line 2 column 9"
    );
}

#[test]
fn rejects_unknown_fields_naming_the_task() {
    assert_eq!(
        task_rejection("{name: train, comand: [x]}"),
        "task `train`: unknown field `comand`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], resources: {mem: 1Gi}}"),
        "task `train`: resources: unknown field `mem`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], retries: {limit: 1, delay: 5s}}"),
        "task `train`: retries: unknown field `delay`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], inputs: [{name: d, form: prepare/dataset}]}"),
        "task `train`: inputs[0]: unknown field `form`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], outputs: [{name: m, path: m, kind: file}]}"),
        "task `train`: outputs[0]: unknown field `kind`"
    );
    // No name to show: the position instead.
    assert_eq!(
        task_rejection("{comand: [x]}"),
        "task #2: unknown field `comand`"
    );
}

#[test]
fn rejects_unknown_top_level_fields() {
    assert_eq!(rejection("name: p\ntask: []\n"), "unknown field `task`");
}

#[test]
fn rejects_wrong_types_with_their_location() {
    assert_eq!(
        task_rejection("{name: train, command: [x], depends_on: prepare}"),
        "task `train`: depends_on: invalid type: string \"prepare\", expected a sequence at line 4 column 45"
    );
    assert_eq!(
        rejection("name: p\nfail_fast: \"yes\"\ntasks: []\n"),
        "fail_fast: invalid type: string \"yes\", expected a boolean at line 2 column 12"
    );
    assert_eq!(
        rejection("- a\n"),
        "invalid type: sequence, expected a pipeline spec (a mapping with `name` and `tasks`)"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x, [y]]}"),
        "task `train`: command[1]: invalid type: sequence, expected a string at line 4 column 32"
    );
}

// --- pipeline ----------------------------------------------------------------

#[test]
fn rejects_a_spec_without_name_or_tasks() {
    assert_eq!(rejection(""), "spec: missing `name`");
    assert_eq!(
        rejection("tasks: [{name: t, command: [x]}]\n"),
        "spec: missing `name`"
    );
    assert_eq!(rejection("name: p\n"), "spec has no tasks");
    assert_eq!(rejection("name: p\ntasks: []\n"), "spec has no tasks");
}

#[test]
fn rejects_bad_pipeline_and_task_names() {
    let rule = "use up to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit";
    assert_eq!(
        rejection("name: my pipeline\ntasks: [{name: t, command: [x]}]\n"),
        format!("invalid pipeline name `my pipeline` ({rule})")
    );
    assert_eq!(
        task_rejection("{name: a/b, command: [x]}"),
        format!("invalid task name `a/b` ({rule})")
    );
    let long = "t".repeat(64);
    assert_eq!(
        task_rejection(&format!("{{name: {long}, command: [x]}}")),
        format!("invalid task name `{long}` ({rule})")
    );
}

#[test]
fn rejects_missing_and_duplicate_task_names() {
    assert_eq!(task_rejection("{command: [x]}"), "task #2: missing `name`");
    assert_eq!(
        task_rejection("{name: '', command: [x]}"),
        "task #2: missing `name`"
    );
    assert_eq!(
        task_rejection("{name: prepare, command: [y]}"),
        "duplicate task name `prepare`"
    );
}

// --- queue and priority -------------------------------------------------------

/// The message for a valid one-task spec with `fields` (YAML lines) added.
fn top_rejection(fields: &str) -> String {
    rejection(&format!(
        "name: p\n{fields}\ntasks: [{{name: t, command: [x]}}]\n"
    ))
}

#[test]
fn rejects_bad_queue_names() {
    let rule = "use lowercase letters, digits and `-`";
    let long = "q".repeat(64);
    for queue in [
        "Bad_Q",
        "Train",
        "-a",
        "a-",
        "team_a",
        "a.b",
        "'a b'",
        long.as_str(),
    ] {
        let shown = queue.trim_matches('\'');
        assert_eq!(
            top_rejection(&format!("queue: {queue}")),
            format!("queue: invalid queue name `{shown}` ({rule})"),
            "{queue}"
        );
    }
    assert_eq!(
        top_rejection("queue: [a]"),
        "queue: invalid type: sequence, expected a string at line 2 column 8"
    );
}

#[test]
fn rejects_bad_priorities() {
    // Beyond i64 still reads as out of range (quoted: serde_yaml refuses
    // integers beyond u64 while reading the document).
    for priority in ["-1", "1000001", "10000000000000", "'99999999999999999999'"] {
        let shown = priority.trim_matches('\'');
        assert_eq!(
            top_rejection(&format!("priority: {priority}")),
            format!("priority: `{shown}` must be between 0 and 1000000")
        );
    }
    for priority in ["1.5", "high", "1e3", "0x10", "''"] {
        let shown = priority.trim_matches('\'');
        assert_eq!(
            top_rejection(&format!("priority: {priority}")),
            format!("priority: invalid priority `{shown}` (use a whole number from 0 to 1000000)")
        );
    }
    assert_eq!(
        top_rejection("priority: {a: 1}"),
        "priority: invalid type: map, expected a string at line 2 column 11"
    );
}

#[test]
fn queue_and_priority_are_checked_before_params_and_tasks() {
    assert_eq!(
        rejection("name: p\nqueue: Bad_Q\nparams: {'bad name': x}\ntasks: []\n"),
        "queue: invalid queue name `Bad_Q` (use lowercase letters, digits and `-`)"
    );
    assert_eq!(
        rejection("name: p\npriority: -1\ntasks: [{name: t, command: []}]\n"),
        "priority: `-1` must be between 0 and 1000000"
    );
    // The name still comes first.
    assert_eq!(
        rejection("queue: Bad_Q\ntasks: []\n"),
        "spec: missing `name`"
    );
}

#[test]
fn rejects_unknown_queue_like_fields() {
    assert_eq!(top_rejection("queues: train"), "unknown field `queues`");
}

// --- params ------------------------------------------------------------------

#[test]
fn rejects_undeclared_overrides() {
    let overrides = BTreeMap::from([("foo".to_owned(), "1".to_owned())]);
    assert_eq!(
        parse_spec(EXAMPLE, &overrides).unwrap_err().to_string(),
        "param `foo` is not declared in the spec's params"
    );
}

#[test]
fn rejects_bad_params() {
    assert_eq!(
        rejection("name: p\nparams: {learning rate: 1}\ntasks: [{name: t, command: [x]}]\n"),
        "invalid param name `learning rate` (use letters, digits, `_` or `-`, starting with a letter or `_`)"
    );
    assert_eq!(
        rejection("name: p\nparams: {lr: }\ntasks: [{name: t, command: [x]}]\n"),
        "param `lr`: missing value"
    );
    assert_eq!(
        rejection("name: p\nparams: {lr: [1]}\ntasks: [{name: t, command: [x]}]\n"),
        "params.lr: invalid type: sequence, expected a string at line 2 column 14"
    );
}

#[test]
fn rejects_unknown_and_malformed_templates() {
    assert_eq!(
        task_rejection("{name: train, command: [x, '{{params.lr}}']}"),
        "task `train`: command: `{{params.lr}}` refers to unknown param `lr`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x, '--lr={{ params.lr }}']}"),
        "task `train`: command: `{{ params.lr }}` refers to unknown param `lr`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], env: {LR: '{{params.lr}}'}}"),
        "task `train`: env.LR: `{{params.lr}}` refers to unknown param `lr`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], image: 'py:{{params.tag}}'}"),
        "task `train`: image: `{{params.tag}}` refers to unknown param `tag`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x, '--lr={{params.lr']}"),
        "task `train`: command: unterminated `{{` in `--lr={{params.lr`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x, '{{lr}}']}"),
        "task `train`: command: unsupported template `{{lr}}` (only `{{params.NAME}}` and `{{matrix.NAME}}` are supported)"
    );
}

// --- task fields -------------------------------------------------------------

#[test]
fn rejects_empty_commands() {
    for task in [
        "{name: train}",
        "{name: train, command: []}",
        "{name: train, command: ['', x]}",
        "{name: train, command: ['  ']}",
    ] {
        assert_eq!(
            task_rejection(task),
            "task `train`: command is empty",
            "{task}"
        );
    }
    // Empty after substitution counts too.
    let yaml = "name: p\nparams: {py: ''}\ntasks: [{name: train, command: ['{{params.py}}']}]\n";
    assert_eq!(rejection(yaml), "task `train`: command is empty");
}

#[test]
fn rejects_bad_dependencies() {
    assert_eq!(
        task_rejection("{name: train, depends_on: [prep], command: [x]}"),
        "task `train`: depends_on: unknown task `prep`"
    );
    assert_eq!(
        task_rejection("{name: train, depends_on: [train], command: [x]}"),
        "task `train`: depends_on: a task cannot depend on itself"
    );
    assert_eq!(
        task_rejection("{name: train, depends_on: [prepare, prepare], command: [x]}"),
        "task `train`: depends_on: `prepare` is listed twice"
    );
}

#[test]
fn rejects_cycles_naming_every_task_in_order() {
    let yaml = r#"
name: p
tasks:
  - {name: x, depends_on: [c], command: [x]}
  - {name: a, depends_on: [b], command: [x]}
  - {name: b, depends_on: [c], command: [x]}
  - {name: c, depends_on: [a], command: [x]}
"#;
    // Found from `x`, reported from `a`, the cycle's first task in the spec.
    assert_eq!(rejection(yaml), "dependency cycle: a -> b -> c -> a");
    let two = "name: p\ntasks:\n  - {name: a, depends_on: [b], command: [x]}\n  - {name: b, depends_on: [a], command: [x]}\n";
    assert_eq!(rejection(two), "dependency cycle: a -> b -> a");
}

#[test]
fn rejects_inputs_whose_producer_is_not_upstream() {
    assert_eq!(
        task_rejection("{name: train, command: [x], inputs: [{name: dataset, from: prepare/dataset}]}"),
        "task `train`: input `dataset` comes from `prepare`, which is not upstream of `train` (add it to depends_on)"
    );
    // A sibling is not upstream either.
    let yaml = with_tasks(
        "  - {name: a, depends_on: [prepare], command: [x], outputs: [{name: o, path: o}]}\n  - {name: b, depends_on: [prepare], command: [x], inputs: [{name: i, from: a/o}]}\n",
    );
    assert_eq!(
        rejection(&yaml),
        "task `b`: input `i` comes from `a`, which is not upstream of `b` (add it to depends_on)"
    );
}

#[test]
fn rejects_bad_input_references() {
    let deps = "name: train, depends_on: [prepare], command: [x]";
    assert_eq!(
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, from: prep/dataset}}]}}"
        )),
        "task `train`: input `d` comes from unknown task `prep`"
    );
    assert_eq!(
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, from: prepare/data}}]}}"
        )),
        "task `train`: input `d` comes from `prepare`, which has no output `data`"
    );
    assert_eq!(
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, from: train/dataset}}]}}"
        )),
        "task `train`: input `d` comes from the task itself"
    );
    for from in ["prepare", "prepare/", "/dataset", "prepare/dataset/x"] {
        assert_eq!(
            task_rejection(&format!(
                "{{{deps}, inputs: [{{name: d, from: '{from}'}}]}}"
            )),
            format!("task `train`: input `d`: `from` must be `task/output`, got `{from}`")
        );
    }
    assert_eq!(
        task_rejection(&format!("{{{deps}, inputs: [{{name: d}}]}}")),
        "task `train`: input `d`: missing `from`"
    );
    assert_eq!(
        task_rejection(&format!("{{{deps}, inputs: [{{from: prepare/dataset}}]}}")),
        "task `train`: input #1: missing `name`"
    );
    assert_eq!(
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, from: prepare/dataset}}, {{name: d, from: prepare/dataset}}]}}"
        )),
        "task `train`: input `d` declared twice"
    );
    assert_eq!(
        task_rejection(&format!("{{{deps}, inputs: [{{name: 'my data', from: prepare/dataset}}]}}")),
        "task `train`: invalid input name `my data` (use up to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit)"
    );
}

#[test]
fn rejects_bad_outputs() {
    assert_eq!(
        task_rejection("{name: prep2, command: [x], outputs: [{name: dataset, path: a}, {name: dataset, path: b}]}"),
        "task `prep2`: output `dataset` declared twice"
    );
    assert_eq!(
        task_rejection("{name: prep2, command: [x], outputs: [{name: a, path: out/d.csv}, {name: b, path: ./out//d.csv}]}"),
        "task `prep2`: output `b`: path `./out//d.csv` is already used by output `a`"
    );
    for path in ["''", "/etc/passwd", "../up", "a/../../b", "."] {
        let shown = path.trim_matches('\'');
        assert_eq!(
            task_rejection(&format!("{{name: prep2, command: [x], outputs: [{{name: m, path: {path}}}]}}")),
            format!("task `prep2`: output `m`: invalid path `{shown}` (use a non-empty relative path without `..`)")
        );
    }
    assert_eq!(
        task_rejection("{name: prep2, command: [x], outputs: [{name: m}]}"),
        "task `prep2`: output `m`: missing `path`"
    );
    assert_eq!(
        task_rejection("{name: prep2, command: [x], outputs: [{path: m}]}"),
        "task `prep2`: output #1: missing `name`"
    );
    assert_eq!(
        task_rejection("{name: prep2, command: [x], outputs: [{name: m/x, path: m}]}"),
        "task `prep2`: invalid output name `m/x` (use up to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit)"
    );
}

#[test]
fn rejects_bad_env() {
    assert_eq!(
        task_rejection("{name: train, command: [x], env: {1SEED: '1'}}"),
        "task `train`: env: invalid variable name `1SEED` (use letters, digits and `_`, not starting with a digit)"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], env: {DROVER_RUN_ID: x}}"),
        "task `train`: env: `DROVER_RUN_ID` is reserved (drover sets it for every task)"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], env: {CUDA_VISIBLE_DEVICES: '0'}}"),
        "task `train`: env: `CUDA_VISIBLE_DEVICES` is reserved (drover sets it for every task)"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], env: {SEED: }}"),
        "task `train`: env.SEED: missing value"
    );
}

#[test]
fn rejects_bad_resources() {
    let task = |resources: &str| {
        task_rejection(&format!(
            "{{name: train, command: [x], resources: {resources}}}"
        ))
    };
    assert_eq!(
        task("{memory: 4GB}"),
        "task `train`: resources.memory: invalid quantity `4GB` (use e.g. 512Mi, 4Gi, 1G)"
    );
    assert_eq!(
        task("{memory: 0}"),
        "task `train`: resources.memory: must be greater than 0, got `0`"
    );
    assert_eq!(
        task("{memory: 16Ei}"),
        "task `train`: resources.memory: quantity `16Ei` is too large"
    );
    for cpu in ["-1", "abc", "2cores"] {
        assert_eq!(
            task(&format!("{{cpu: {cpu}}}")),
            format!(
                "task `train`: resources.cpu: invalid quantity `{cpu}` (use e.g. 500m, 0.5, 2)"
            )
        );
    }
    assert_eq!(
        task("{cpu: 0}"),
        "task `train`: resources.cpu: must be greater than 0, got `0`"
    );
    assert_eq!(
        task("{cpu: 0m}"),
        "task `train`: resources.cpu: must be greater than 0, got `0m`"
    );
    for gpu in ["-1", "1.5", "one"] {
        assert_eq!(
            task(&format!("{{gpu: {gpu}}}")),
            format!("task `train`: resources.gpu: invalid count `{gpu}` (use a whole number, e.g. 0, 1, 2)")
        );
    }
}

#[test]
fn rejects_bad_gpu_constraints() {
    let task = |resources: &str| {
        task_rejection(&format!(
            "{{name: train, command: [x], resources: {resources}}}"
        ))
    };
    // Without GPUs there is no GPU to constrain.
    for resources in [
        "{gpu_model: A100}",
        "{gpu: 0, gpu_model: A100}",
        "{cpu: 1, gpu_model: A100}",
    ] {
        assert_eq!(
            task(resources),
            "task `train`: resources.gpu_model: needs resources.gpu of at least 1",
            "{resources}"
        );
    }
    for resources in ["{gpu_memory: 40Gi}", "{gpu: 0, gpu_memory: 40Gi}"] {
        assert_eq!(
            task(resources),
            "task `train`: resources.gpu_memory: needs resources.gpu of at least 1",
            "{resources}"
        );
    }
    assert_eq!(
        task("{gpu: 1, gpu_model: '{{params.model}}'}"),
        "task `train`: resources.gpu_model: `{{params.model}}` refers to unknown param `model`"
    );
    for model in ["''", "'  '"] {
        assert_eq!(
            task(&format!("{{gpu: 1, gpu_model: {model}}}")),
            "task `train`: resources.gpu_model: must not be empty (leave it out to accept any GPU)"
        );
    }
    assert_eq!(
        task("{gpu: 1, gpu_memory: 40GB}"),
        "task `train`: resources.gpu_memory: invalid quantity `40GB` (use e.g. 512Mi, 4Gi, 1G)"
    );
    assert_eq!(
        task("{gpu: 1, gpu_memory: 0Gi}"),
        "task `train`: resources.gpu_memory: must be greater than 0, got `0Gi`"
    );
    assert_eq!(
        task("{gpu: 1, gpu_model: [A100]}"),
        "task `train`: resources.gpu_model: invalid type: sequence, expected a string at line 4 column 64"
    );
    assert_eq!(
        task("{gpu: 1, gpu_mem: 40Gi}"),
        "task `train`: resources: unknown field `gpu_mem`"
    );
}

#[test]
fn rejects_bad_node_selectors() {
    let task = |selector: &str| {
        task_rejection(&format!(
            "{{name: train, command: [x], node_selector: {selector}}}"
        ))
    };
    let key_rule =
        "use up to 63 letters, digits, `_`, `.`, `/` or `-`, starting with a letter or digit";
    let value_rule = "use up to 63 letters, digits, `_`, `.` or `-`";
    let long_key = "k".repeat(64);
    for key in [
        "-zone",
        "'gpu model'",
        "'zone='",
        "/zone",
        long_key.as_str(),
    ] {
        let shown = key.trim_matches('\'');
        assert_eq!(
            task(&format!("{{{key}: eu}}")),
            format!("task `train`: node_selector: invalid label key `{shown}` ({key_rule})")
        );
    }
    let long_value = "v".repeat(64);
    for value in ["'eu west'", "eu/west", "'a,b'", long_value.as_str()] {
        let shown = value.trim_matches('\'');
        assert_eq!(
            task(&format!("{{zone: {value}}}")),
            format!(
                "task `train`: node_selector.zone: invalid label value `{shown}` ({value_rule})"
            )
        );
    }
    assert_eq!(
        task("{zone: }"),
        "task `train`: node_selector.zone: missing value (write '' for an empty one)"
    );
    assert_eq!(
        task("{zone: [eu]}"),
        "task `train`: node_selector.zone: invalid type: sequence, expected a string at line 4 column 55"
    );
    assert_eq!(
        task("{zone: '{{params.zone}}'}"),
        "task `train`: node_selector.zone: `{{params.zone}}` refers to unknown param `zone`"
    );
    // A value that is only wrong once substituted names its template.
    let yaml = "name: p\nparams: {zone: eu west}\ntasks: [{name: train, command: [x], node_selector: {zone: 'z-{{params.zone}}'}}]\n";
    assert_eq!(
        rejection(yaml),
        format!("task `train`: node_selector.zone: invalid label value `z-eu west` from `z-{{{{params.zone}}}}` ({value_rule})")
    );
}

#[test]
fn rejects_bad_pull_policies() {
    for policy in ["always", "IfNotPresent ", "''", "Sometimes"] {
        let shown = policy.trim_matches('\'');
        assert_eq!(
            task_rejection(&format!("{{name: x, command: [x], image: i, pull_policy: '{shown}'}}")),
            format!("task `x`: pull_policy: unknown policy `{shown}` (use IfNotPresent, Always or Never)")
        );
    }
    assert_eq!(
        task_rejection("{name: x, command: [x], pull_policy: Always}"),
        "task `x`: pull_policy: needs an image"
    );
    // An image that is empty once substituted is no image either.
    let yaml = "name: p\nparams: {img: ''}\ntasks: [{name: x, command: [x], image: '{{params.img}}', pull_policy: Never}]\n";
    assert_eq!(rejection(yaml), "task `x`: pull_policy: needs an image");
}

#[test]
fn rejects_bad_retries_and_timeouts() {
    let task = |fields: &str| task_rejection(&format!("{{name: train, command: [x], {fields}}}"));
    assert_eq!(
        task("retries: {limit: 2, backoff: 5x}"),
        "task `train`: retries.backoff: invalid duration `5x` (use e.g. 500ms, 5s, 1m, 1h30m)"
    );
    assert_eq!(
        task("retries: {limit: 101}"),
        "task `train`: retries.limit: `101` is more than the maximum of 100"
    );
    assert_eq!(
        task("retries: {limit: -1}"),
        "task `train`: retries.limit: invalid count `-1` (use a whole number, e.g. 0, 1, 2)"
    );
    assert_eq!(
        task("retries: {backoff: 5s}"),
        "task `train`: retries: missing `limit`"
    );
    assert_eq!(
        task("timeout: 5x"),
        "task `train`: timeout: invalid duration `5x` (use e.g. 500ms, 5s, 1m, 1h30m)"
    );
    assert_eq!(
        task("timeout: 0s"),
        "task `train`: timeout: must be greater than 0, got `0s`"
    );
    assert_eq!(
        task("timeout: 99999999999999999999h"),
        "task `train`: timeout: duration `99999999999999999999h` is too large"
    );
}

#[test]
fn reports_the_first_problem_in_spec_order() {
    // Both tasks are broken; the earlier one is reported.
    let yaml = "name: p\ntasks:\n  - {name: a, command: []}\n  - {name: b, depends_on: [zzz], command: [x]}\n";
    assert_eq!(rejection(yaml), "task `a`: command is empty");
}

const SWEEP: &str = r#"
name: sweep
params: {data: "digits"}
tasks:
  - name: prepare
    command: [prep, "{{params.data}}"]
  - name: train
    depends_on: [prepare]
    matrix: {lr: ["0.001", "0.03", 1.0], epochs: [10, 30]}
    max_parallel: 4
    command: [train, --lr, "{{matrix.lr}}", --epochs, "{{ matrix.epochs }}", "{{params.data}}"]
    env: {LR: "{{matrix.lr}}"}
    outputs: [{name: model, path: model.json}]
  - name: evaluate
    depends_on: [train]
    command: [eval]
"#;

#[test]
fn a_matrix_expands_into_named_instances_that_downstream_waits_for() -> TestResult {
    let spec = parse(SWEEP)?;
    let names: Vec<&str> = spec.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare",
            "train[lr=0.001,epochs=10]",
            "train[lr=0.001,epochs=30]",
            "train[lr=0.03,epochs=10]",
            "train[lr=0.03,epochs=30]",
            "train[lr=1.0,epochs=10]",
            "train[lr=1.0,epochs=30]",
            "evaluate",
        ]
    );
    let t = &spec.tasks[4];
    assert_eq!(
        t.command,
        strings(&["train", "--lr", "0.03", "--epochs", "30", "digits"])
    );
    assert_eq!(t.env.get("LR").map(String::as_str), Some("0.03"));
    assert_eq!(t.depends_on, strings(&["prepare"]));
    assert_eq!(t.matrix_task, "train");
    assert_eq!(t.matrix.get("epochs").map(String::as_str), Some("30"));
    assert_eq!(t.max_parallel, 4);
    assert_eq!(spec.tasks[0].matrix_task, "");
    assert_eq!(spec.tasks[7].depends_on, names[1..7]);
    Ok(())
}

#[test]
fn matrix_mistakes_are_rejected_naming_the_task_and_field() {
    assert_eq!(
        task_rejection("{name: t, command: [x, '{{matrix.lr}}']}"),
        "task `t`: command: `{{matrix.lr}}` needs a `matrix` on the task"
    );
    assert_eq!(
        task_rejection("{name: t, matrix: {lr: [a]}, command: [x, '{{matrix.lrr}}']}"),
        "task `t`: command: `{{matrix.lrr}}` refers to `lrr`, which the task's matrix does not declare"
    );
    assert_eq!(
        task_rejection("{name: t, matrix: {lr: []}, command: [x]}"),
        "task `t`: matrix.lr: needs at least one value"
    );
    assert_eq!(
        task_rejection("{name: t, matrix: {lr: [a]}, max_parallel: 0, command: [x]}"),
        "task `t`: max_parallel: must be greater than 0, got `0`"
    );
    assert_eq!(
        task_rejection("{name: t, max_parallel: 2, command: [x]}"),
        "task `t`: max_parallel: needs a matrix"
    );
    assert_eq!(
        task_rejection("{name: t, matrix: [a, b], command: [x]}"),
        "task `t`: matrix: invalid type: sequence, expected a matrix (a mapping of names to lists of values) at line 4 column 23"
    );
    let not_upstream = with_tasks(
        "  - {name: t, matrix: {lr: [a, b]}, command: [x], outputs: [{name: m, path: m}]}\n  - {name: u, command: [x], inputs: [{name: m, from: t/m}]}\n",
    );
    assert_eq!(
        rejection(&not_upstream),
        "task `u`: input `m` comes from `t`, which is not upstream of `u` (add it to depends_on)"
    );
}

#[test]
fn an_input_from_a_task_with_a_matrix_gathers_every_instance() -> TestResult {
    let fan_in = with_tasks(
        "  - {name: t, matrix: {lr: [a, b]}, command: [x], outputs: [{name: m, path: m}]}\n  - {name: u, depends_on: [t], command: [x], inputs: [{name: models, from: t/m}]}\n",
    );
    let spec = parse(&fan_in)?;
    let u = spec.tasks.last().ok_or("no tasks")?;
    assert_eq!(u.depends_on, strings(&["t[lr=a]", "t[lr=b]"]));
    assert_eq!(
        u.inputs[0].from_task, "t",
        "the task as written: the scheduler gathers"
    );
    Ok(())
}
