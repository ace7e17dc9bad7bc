//! One test per rejection, asserting the exact message a user sees.

use super::*;

#[test]
fn rejects_invalid_yaml() {
    // The parser's own words, with the position of the unclosed `[`.
    assert_eq!(
        rejection("name: [p\n"),
        "invalid yaml: unclosed bracket '[' at line 1 column 7"
    );
    assert_eq!(
        rejection("name: p\ntasks:\n  - name: a\n   command: [x]\n"),
        "invalid yaml: while parsing a block collection, did not find expected '-' indicator at line 4 column 4"
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
    // Beyond i64 still reads as out of range, quoted or not.
    for priority in [
        "-1",
        "1000001",
        "10000000000000",
        "'99999999999999999999'",
        "99999999999999999999",
    ] {
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
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, param: objects}}]}}"
        )),
        "task `train`: input `d` comes from unknown param `objects` (declare it under `params`)"
    );
    assert_eq!(
        task_rejection(&format!(
            "{{{deps}, inputs: [{{name: d, from: prepare/dataset, param: x}}]}}"
        )),
        "task `train`: input `d`: give one of `from` (an upstream output) and `param` (a param's value), not both"
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
        "task `train`: retries.backoff: invalid duration `5x` (use e.g. 500ms, 5s, 1m, 1h30m, 7d)"
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
        "task `train`: timeout: invalid duration `5x` (use e.g. 500ms, 5s, 1m, 1h30m, 7d)"
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
fn rejects_bad_on_agent_lost() {
    let task = |fields: &str| task_rejection(&format!("{{name: train, command: [x], {fields}}}"));
    assert_eq!(
        task("on_agent_lost: stay"),
        "task `train`: on_agent_lost: unknown value `stay` (use requeue or wait)"
    );
    assert_eq!(
        task("lost_after: 5m"),
        "task `train`: lost_after: needs on_agent_lost: wait"
    );
    assert_eq!(
        task("on_agent_lost: requeue, lost_after: 5m"),
        "task `train`: lost_after: needs on_agent_lost: wait"
    );
    assert_eq!(
        task("on_agent_lost: wait, lost_after: 0s"),
        "task `train`: lost_after: must be greater than 0, got `0s`"
    );
}

#[test]
fn reports_the_first_problem_in_spec_order() {
    // Both tasks are broken; the earlier one is reported.
    let yaml = "name: p\ntasks:\n  - {name: a, command: []}\n  - {name: b, depends_on: [zzz], command: [x]}\n";
    assert_eq!(rejection(yaml), "task `a`: command is empty");
}
