//! `finally:` tasks: marked, after the others, depending only on each other.

use super::*;

const SPEC: &str = r#"
name: p
tasks:
  - {name: train, command: [x], outputs: [{name: model, path: m}]}
  - {name: evaluate, depends_on: [train], command: [x]}
finally:
  - name: summary
    command: [x]
    inputs: [{name: model, from: train/model}]
  - {name: notify, depends_on: [summary], command: [x]}
"#;

#[test]
fn finally_tasks_follow_the_others_marked_and_may_read_any_output() -> TestResult {
    let spec = parse(SPEC)?;
    let tasks: Vec<(&str, bool)> = spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.finally))
        .collect();
    assert_eq!(
        tasks,
        [
            ("train", false),
            ("evaluate", false),
            ("summary", true),
            ("notify", true)
        ]
    );
    // Its input comes from a task it does not (and may not) depend on.
    assert!(spec.tasks[2].depends_on.is_empty());
    assert_eq!(spec.tasks[2].inputs[0].from_task, "train");
    Ok(())
}

#[test]
fn finally_tasks_depend_only_on_each_other() {
    assert_eq!(
        rejection(&SPEC.replace("depends_on: [summary]", "depends_on: [evaluate]")),
        "task `notify`: depends_on: `evaluate` is not a `finally` task (`finally` tasks run after every other task and depend only on each other)"
    );
    assert_eq!(
        rejection(&SPEC.replace("depends_on: [train]", "depends_on: [summary]")),
        "task `evaluate`: depends_on: `summary` is a `finally` task, which runs after every other task"
    );
}

#[test]
fn finally_tasks_are_named_in_errors_and_share_the_task_names() {
    assert_eq!(
        rejection("name: p\ntasks: [{name: a, command: [x]}]\nfinally: [{command: [x]}]\n"),
        "finally task #1: missing `name`"
    );
    assert_eq!(
        rejection(
            "name: p\ntasks: [{name: a, command: [x]}]\nfinally: [{name: a, command: [x]}]\n"
        ),
        "duplicate task name `a`"
    );
    assert_eq!(
        rejection("name: p\ntasks: [{name: a, command: [x]}]\nfinally: [{name: f, comand: [x]}]\n"),
        "finally task `f`: unknown field `comand`"
    );
    assert_eq!(
        rejection("name: p\nfinally: [{name: f, command: [x]}]\n"),
        "spec has no tasks"
    );
}
