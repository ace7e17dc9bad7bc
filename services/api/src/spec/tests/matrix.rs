//! `matrix:`: expansion, substitution, dependencies, fan-in, and mistakes.

use super::*;

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
        "task `t`: max_parallel: needs a matrix or for_each"
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
