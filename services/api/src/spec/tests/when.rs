//! `when:` conditions and `result:` outputs.

use super::*;

#[test]
fn a_condition_and_a_result_output_are_kept() -> TestResult {
    let spec = parse(&with_tasks(
        "  - name: evaluate\n    command: [x]\n    outputs: [{name: metrics, path: m.json, result: true}]\n  - name: register\n    depends_on: [evaluate]\n    when: \"tasks.evaluate.outputs.metrics.accuracy >= double(params.min)\"\n    command: [x]\n",
    ).replace("name: p\n", "name: p\nparams: {min: '0.9'}\n"))?;
    assert!(spec.tasks[1].outputs[0].result);
    assert_eq!(
        spec.tasks[2].when,
        "tasks.evaluate.outputs.metrics.accuracy >= double(params.min)"
    );
    Ok(())
}

#[test]
fn conditions_that_cannot_work_are_rejected_naming_task_and_field() {
    let broken = task_rejection("{name: t, command: [x], when: 'params.x =='}");
    assert!(broken.starts_with("task `t`: when: "), "{broken}");
    assert_eq!(
        task_rejection("{name: t, command: [x], when: 'acc > 1'}"),
        "task `t`: when: unknown variable `acc` (use params, matrix or tasks)"
    );
    assert_eq!(
        task_rejection("{name: t, command: [x], when: ''}"),
        "task `t`: when: empty expression"
    );
    assert_eq!(
        task_rejection("{name: t, command: [x], when: \"matrix.lr == '1'\"}"),
        "task `t`: when: `matrix` is used but the task has no matrix"
    );
    assert_eq!(
        task_rejection("{name: t, command: [x], outputs: [{name: o, path: o, result: yes}]}"),
        "task `t`: outputs[0].result: invalid type: string \"yes\", expected a boolean at line 4 column 66"
    );
}
