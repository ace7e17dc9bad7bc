//! `for_each:`: what is kept for run time, and mistakes rejected at submit.

use super::*;

#[test]
fn a_for_each_task_keeps_its_item_templates_for_run_time() -> TestResult {
    let spec = parse(&with_tasks(
        "  - {name: map, depends_on: [prepare], for_each: {from: prepare/dataset}, max_parallel: 3, \
         command: [x, '{{item}}', '{{ item.lr }}', '{{params.p}}'], env: {A: 'a{{item.b}}'}}\n",
    ).replace("name: p\n", "name: p\nparams: {p: v}\n"))?;
    let t = &spec.tasks[1];
    assert_eq!(t.command, strings(&["x", "{{item}}", "{{ item.lr }}", "v"]));
    assert_eq!(t.env.get("A").map(String::as_str), Some("a{{item.b}}"));
    let from = t.for_each.as_ref().ok_or("no for_each")?;
    assert_eq!(
        (from.from_task.as_str(), from.from_output.as_str()),
        ("prepare", "dataset")
    );
    assert_eq!(t.max_parallel, 3);
    assert_eq!(spec.tasks[0].for_each, None);
    Ok(())
}

#[test]
fn for_each_mistakes_are_rejected_naming_the_task_and_field() {
    assert_eq!(
        task_rejection("{name: t, command: [x, '{{item}}']}"),
        "task `t`: command: `{{item}}` needs `for_each` on the task"
    );
    assert_eq!(
        task_rejection("{name: t, env: {A: '{{item.x}}'}, command: [x]}"),
        "task `t`: env.A: `{{item.x}}` needs `for_each` on the task"
    );
    assert_eq!(
        task_rejection("{name: t, command: [x], for_each: {from: prepare/dataset}}"),
        "task `t`: for_each.from: `prepare` is not upstream of `t` (add it to depends_on)"
    );
    assert_eq!(
        task_rejection("{name: t, depends_on: [prepare], command: [x], for_each: {from: prepare}}"),
        "task `t`: for_each.from: must be `task/output`, got `prepare`"
    );
    assert_eq!(
        task_rejection("{name: t, depends_on: [prepare], command: [x], for_each: {from: nope/x}}"),
        "task `t`: for_each.from: unknown task `nope`"
    );
    assert_eq!(
        task_rejection(
            "{name: t, depends_on: [prepare], command: [x], for_each: {from: prepare/x}}"
        ),
        "task `t`: for_each.from: `prepare` has no output `x`"
    );
    assert_eq!(
        task_rejection("{name: t, depends_on: [prepare], command: [x], for_each: {}}"),
        "task `t`: for_each: missing `from`"
    );
    assert_eq!(
        task_rejection(
            "{name: t, depends_on: [prepare], command: [x], matrix: {a: [1]}, for_each: {from: prepare/dataset}}"
        ),
        "task `t`: for_each: cannot be combined with `matrix` (use one or the other)"
    );
    assert_eq!(
        task_rejection(
            "{name: t, depends_on: [prepare], command: [x], image: 'i:{{item}}', for_each: {from: prepare/dataset}}"
        ),
        "task `t`: image: `i:{{item}}`: `{{item}}` is only substituted in command and env values"
    );
    assert_eq!(
        rejection(&with_tasks(
            "  - {name: m, depends_on: [prepare], command: [x], for_each: {from: prepare/dataset}, outputs: [{name: o, path: o}]}\n  - {name: t, depends_on: [m], command: [x], for_each: {from: m/o}}\n"
        )),
        "task `t`: for_each.from: `m` is itself a for_each task; for_each reads one task's output"
    );
}
