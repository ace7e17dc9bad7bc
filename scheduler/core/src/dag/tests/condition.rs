use super::*;

/// `spec` as for [`defs`]; the tasks named in `conditional` have a `when:`.
fn with_when(spec: &[(&str, &[&str], u32)], conditional: &[&str]) -> Vec<TaskDef> {
    let mut d = defs(spec);
    for def in &mut d {
        def.conditional = conditional.contains(&def.name.as_str());
    }
    d
}

fn chain() -> (RunDag, Vec<Effect>) {
    RunDag::new(
        with_when(
            &[
                ("a", &[], 0),
                ("b", &["a"], 0),
                ("c", &["b"], 0),
                ("d", &[], 0),
            ],
            &["b"],
        ),
        true,
    )
}

#[test]
fn a_conditional_task_is_evaluated_once_its_upstream_succeeded() -> TestResult {
    let (mut dag, _) = chain();
    let fx = run_ok(&mut dag, 0, 1);
    assert_eq!(fx[1..], [Effect::Evaluate { task: 1 }]);
    assert_eq!(status(&dag, "b"), TaskStatus::Pending);
    let fx = dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Run,
        },
        3,
    )?;
    assert_eq!(fx, [Effect::Ready { task: 1 }]);
    assert_eq!(dag.task(1).ready_at, Some(3));
    // Asked twice: the second is stale.
    let again = dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Run,
        },
        4,
    );
    assert!(again.is_err());
    Ok(())
}

#[test]
fn false_skips_the_task_and_its_downstream_and_the_run_still_succeeds() -> TestResult {
    let (mut dag, _) = chain();
    run_ok(&mut dag, 0, 1);
    dag.take_dirty();
    let reason = "when: x was false".to_string();
    dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Skip {
                reason: reason.clone(),
            },
        },
        3,
    )?;
    assert_eq!(status(&dag, "b"), TaskStatus::Skipped);
    assert_eq!(dag.task(1).message, reason);
    assert_eq!(status(&dag, "c"), TaskStatus::Skipped);
    assert_eq!(dag.task(2).message, "upstream task `b` was skipped");
    // The decision is stored (b never ran); c stays derivable.
    let (_, dirty) = dag.take_dirty();
    let stored: Vec<usize> = dirty
        .into_iter()
        .filter(|&i| dag.task(i).needs_record())
        .collect();
    assert_eq!(stored, [1]);
    let fx = run_ok(&mut dag, 3, 5);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_task_and_the_run() -> TestResult {
    let (mut dag, _) = chain();
    let d = start(&mut dag, 3);
    run_ok(&mut dag, 0, 1);
    let fx = dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Fail {
                reason: "when: x: no such key".into(),
            },
        },
        3,
    )?;
    assert_eq!(status(&dag, "b"), TaskStatus::Failed);
    assert_eq!(status(&dag, "c"), TaskStatus::Skipped);
    // Fail-fast: the other branch is stopped.
    assert!(fx.contains(&Effect::Cancel {
        task: 3,
        attempt: d,
        agent: "a1".into()
    }));
    let fx = dag.apply(stopped(3, d), 4)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    Ok(())
}

#[test]
fn restore_asks_again_for_an_undecided_condition_and_keeps_a_decided_one() -> TestResult {
    let d = with_when(
        &[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["b"], 0),
            ("d", &[], 0),
        ],
        &["b"],
    );
    let (mut dag, _) = RunDag::new(d.clone(), true);
    run_ok(&mut dag, 0, 1);
    let records = |dag: &RunDag| -> Vec<Option<TaskRun>> {
        dag.tasks()
            .iter()
            .map(|t| t.needs_record().then(|| t.clone()))
            .collect()
    };
    let (restored, fx) = RunDag::restore(d.clone(), true, RunState::new(), records(&dag));
    assert_eq!(status(&restored, "b"), TaskStatus::Pending);
    assert!(fx.contains(&Effect::Evaluate { task: 1 }));
    dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Skip {
                reason: "when: x was false".into(),
            },
        },
        3,
    )?;
    let (restored, fx) = RunDag::restore(d, true, RunState::new(), records(&dag));
    assert_eq!(status(&restored, "b"), TaskStatus::Skipped);
    assert_eq!(status(&restored, "c"), TaskStatus::Skipped);
    assert!(!fx.contains(&Effect::Evaluate { task: 1 }));
    Ok(())
}

#[test]
fn a_retry_evaluates_a_skipped_condition_again() -> TestResult {
    let (mut dag, _) = RunDag::new(
        with_when(&[("a", &[], 0), ("b", &["a"], 0), ("x", &[], 0)], &["b"]),
        false,
    );
    run_ok(&mut dag, 0, 1);
    let skip = Verdict::Skip {
        reason: "no".into(),
    };
    dag.apply(
        Event::Condition {
            task: 1,
            verdict: skip,
        },
        2,
    )?;
    let x = start(&mut dag, 2);
    dag.apply(fail(2, x), 12)?;
    assert_eq!(dag.status(), RunStatus::Failed);
    let (again, fx) = dag.retry(&[], 20)?;
    assert_eq!(again, [1, 2]);
    assert!(fx.contains(&Effect::Evaluate { task: 1 }));
    assert!(!dag.task(1).decided);
    Ok(())
}
