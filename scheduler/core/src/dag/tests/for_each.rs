use super::*;

/// `list` → `map` (for_each) → `after`, plus an unrelated `other`.
fn mapped_defs() -> Vec<TaskDef> {
    let mut d = defs(&[
        ("list", &[], 0),
        ("map", &["list"], 0),
        ("after", &["map"], 0),
        ("other", &[], 0),
    ]);
    d[1].for_each = true;
    d
}

fn mapped(fail_fast: bool) -> (RunDag, Vec<Effect>) {
    RunDag::new(mapped_defs(), fail_fast)
}

fn records(dag: &RunDag) -> Vec<Option<TaskRun>> {
    dag.tasks()
        .iter()
        .map(|t| t.needs_record().then(|| t.clone()))
        .collect()
}

/// Restores what `dag` would have stored: the run state (with its
/// expansions) and the records of the tasks that need one.
fn restored(dag: &RunDag) -> (RunDag, Vec<Effect>) {
    let statics = dag.defs().len()
        - dag
            .run_state()
            .expansions
            .iter()
            .map(|e| e.1)
            .sum::<usize>();
    RunDag::restore(
        dag.defs()[..statics].to_vec(),
        dag.fail_fast(),
        dag.run_state().clone(),
        records(dag),
    )
}

#[test]
fn a_for_each_task_expands_into_instances_and_succeeds_with_them() -> TestResult {
    let (mut dag, _) = mapped(true);
    let fx = run_ok(&mut dag, 0, 1);
    assert_eq!(fx[1..], [Effect::Expand { task: 1 }]);
    assert_eq!(status(&dag, "map"), TaskStatus::Pending);
    // Only the run record changes: no per-instance state before an attempt.
    dag.take_dirty();
    let fx = dag.apply(Event::Expanded { task: 1, count: 3 }, 5)?;
    assert_eq!(
        fx,
        [
            Effect::Ready { task: 4 },
            Effect::Ready { task: 5 },
            Effect::Ready { task: 6 }
        ]
    );
    let (run_dirty, tasks) = dag.take_dirty();
    assert!(run_dirty);
    assert!(tasks.iter().all(|&t| !dag.task(t).needs_record()));
    assert_eq!(dag.run_state().expansions, [(1, 3)]);
    assert_eq!(dag.defs()[5].name, "map[1]");
    assert_eq!(dag.instance_of(5), Some((1, 1)));
    assert_eq!(dag.index_of("map[2]"), Some(6));
    // A second answer is stale.
    assert!(dag.apply(Event::Expanded { task: 1, count: 3 }, 5).is_err());

    run_ok(&mut dag, 4, 6);
    let fx = run_ok(&mut dag, 6, 7);
    assert!(!fx.contains(&Effect::Ready { task: 2 }));
    assert_eq!(status(&dag, "map"), TaskStatus::Pending);
    // Restored halfway: the instances come back, two done and one Ready.
    let (back, fx) = restored(&dag);
    assert_eq!(status(&back, "map[0]"), TaskStatus::Succeeded);
    assert_eq!(status(&back, "map[1]"), TaskStatus::Ready);
    assert_eq!(status(&back, "map"), TaskStatus::Pending);
    assert!(fx.contains(&Effect::Ready { task: 5 }));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Expand { .. })));

    let fx = run_ok(&mut dag, 5, 8);
    assert!(fx.contains(&Effect::Ready { task: 2 }));
    assert_eq!(status(&dag, "map"), TaskStatus::Succeeded);
    let (back, _) = restored(&dag);
    assert_eq!(status(&back, "map"), TaskStatus::Succeeded);
    assert_eq!(status(&back, "after"), TaskStatus::Ready);
    run_ok(&mut dag, 2, 9);
    let fx = run_ok(&mut dag, 3, 10);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

#[test]
fn zero_items_succeed_at_once_and_a_bad_list_fails_the_task() -> TestResult {
    let (mut dag, _) = mapped(true);
    run_ok(&mut dag, 0, 1);
    // Restored before the answer: asked again.
    let (_, fx) = restored(&dag);
    assert!(fx.contains(&Effect::Expand { task: 1 }));
    let fx = dag.apply(Event::Expanded { task: 1, count: 0 }, 2)?;
    assert_eq!(fx, [Effect::Ready { task: 2 }]);
    assert_eq!(status(&dag, "map"), TaskStatus::Succeeded);
    let (back, _) = restored(&dag);
    assert_eq!(status(&back, "map"), TaskStatus::Succeeded);
    assert_eq!(status(&back, "after"), TaskStatus::Ready);

    let (mut dag, _) = mapped(false);
    run_ok(&mut dag, 0, 1);
    let reason = "for_each: output `list/items`: not a JSON array".to_string();
    dag.apply(
        Event::ExpandFailed {
            task: 1,
            reason: reason.clone(),
        },
        2,
    )?;
    assert_eq!(status(&dag, "map"), TaskStatus::Failed);
    assert_eq!(dag.task(1).message, reason);
    assert_eq!(status(&dag, "after"), TaskStatus::Skipped);
    let (back, _) = restored(&dag);
    assert_eq!(status(&back, "map"), TaskStatus::Failed);
    let fx = run_ok(&mut dag, 3, 3);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    Ok(())
}

#[test]
fn a_failed_instance_fails_its_task_and_retry_runs_it_again() -> TestResult {
    let (mut dag, _) = mapped(false);
    run_ok(&mut dag, 0, 1);
    dag.apply(Event::Expanded { task: 1, count: 2 }, 2)?;
    let attempt = start(&mut dag, 4);
    dag.apply(fail(4, attempt), 12)?;
    assert_eq!(status(&dag, "map"), TaskStatus::Failed);
    assert_eq!(
        dag.task(1).message,
        "instance `map[0]` failed: exited with code 1"
    );
    assert_eq!(status(&dag, "after"), TaskStatus::Skipped);
    let (back, _) = restored(&dag);
    assert_eq!(status(&back, "map"), TaskStatus::Failed);
    assert_eq!(status(&back, "after"), TaskStatus::Skipped);
    // The other instance still runs without fail_fast.
    run_ok(&mut dag, 5, 13);
    let fx = run_ok(&mut dag, 3, 14);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));

    let (again, fx) = dag.retry(&[], 20).map_err(|e| e.to_string())?;
    assert!(again.contains(&4) && again.contains(&1) && !again.contains(&5));
    assert_eq!(fx, [Effect::Ready { task: 4 }]);
    assert_eq!(dag.run_state().expansions, [(1, 2)]);
    let (back, _) = restored(&dag);
    assert_eq!(status(&back, "map[0]"), TaskStatus::Ready);
    assert_eq!(status(&back, "map[1]"), TaskStatus::Succeeded);
    let fx = run_ok(&mut dag, 4, 21);
    assert!(fx.contains(&Effect::Ready { task: 2 }));
    let fx = run_ok(&mut dag, 2, 22);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

#[test]
fn fail_fast_stops_the_other_instances_and_cancel_reaches_them() -> TestResult {
    let (mut dag, _) = mapped(true);
    run_ok(&mut dag, 0, 1);
    dag.apply(Event::Expanded { task: 1, count: 3 }, 2)?;
    let a0 = start(&mut dag, 4);
    let a1 = start(&mut dag, 5);
    let fx = dag.apply(fail(4, a0), 12)?;
    assert!(fx.contains(&Effect::Cancel {
        task: 5,
        attempt: a1,
        agent: "a1".into()
    }));
    assert_eq!(status(&dag, "map[2]"), TaskStatus::Skipped);
    assert_eq!(status(&dag, "map"), TaskStatus::Failed);

    let (mut dag, _) = mapped(true);
    run_ok(&mut dag, 0, 1);
    dag.apply(Event::Expanded { task: 1, count: 2 }, 2)?;
    let a0 = start(&mut dag, 4);
    let fx = dag.apply(Event::Cancel, 12)?;
    assert!(fx.contains(&Effect::Cancel {
        task: 4,
        attempt: a0,
        agent: "a1".into()
    }));
    assert_eq!(status(&dag, "map"), TaskStatus::Cancelled);
    assert_eq!(status(&dag, "map[1]"), TaskStatus::Cancelled);
    Ok(())
}

#[test]
fn a_conditional_for_each_task_is_evaluated_then_expanded() -> TestResult {
    let (mut dag, _) = {
        let mut d = defs(&[("list", &[], 0), ("map", &["list"], 0)]);
        d[1].for_each = true;
        d[1].conditional = true;
        RunDag::new(d, true)
    };
    let fx = run_ok(&mut dag, 0, 1);
    assert_eq!(fx[1..], [Effect::Evaluate { task: 1 }]);
    let fx = dag.apply(
        Event::Condition {
            task: 1,
            verdict: Verdict::Run,
        },
        2,
    )?;
    assert_eq!(fx, [Effect::Expand { task: 1 }]);
    dag.apply(Event::Expanded { task: 1, count: 1 }, 3)?;
    let (_, fx) = restored(&dag);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Evaluate { .. })));
    let fx = run_ok(&mut dag, 2, 4);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

/// [`mapped`] with a condition on `map` that names `item`.
fn mapped_per_item() -> RunDag {
    let mut d = mapped_defs();
    d[1].item_condition = true;
    RunDag::new(d, true).0
}

#[test]
fn an_item_condition_is_asked_per_instance_and_skips_only_that_instance() -> TestResult {
    let mut dag = mapped_per_item();
    run_ok(&mut dag, 0, 1);
    let fx = dag.apply(Event::Expanded { task: 1, count: 3 }, 5)?;
    assert_eq!(
        fx,
        [
            Effect::Evaluate { task: 4 },
            Effect::Evaluate { task: 5 },
            Effect::Evaluate { task: 6 }
        ]
    );
    let skip = Verdict::Skip {
        reason: "when: item > 1 was false".into(),
    };
    dag.apply(
        Event::Condition {
            task: 4,
            verdict: skip.clone(),
        },
        6,
    )?;
    assert_eq!(dag.task(4).status, TaskStatus::Skipped);
    // The task and what follows it are not skipped with the instance.
    assert_eq!(status(&dag, "map"), TaskStatus::Pending);
    assert_eq!(status(&dag, "after"), TaskStatus::Pending);
    let fx = dag.apply(
        Event::Condition {
            task: 5,
            verdict: Verdict::Run,
        },
        6,
    )?;
    assert_eq!(fx, [Effect::Ready { task: 5 }]);
    dag.apply(
        Event::Condition {
            task: 6,
            verdict: skip,
        },
        6,
    )?;
    run_ok(&mut dag, 5, 7);
    assert_eq!(status(&dag, "map"), TaskStatus::Succeeded);
    assert_eq!(
        dag.task(1).message,
        "1 instance succeeded, 2 skipped by their condition"
    );
    assert_eq!(status(&dag, "after"), TaskStatus::Ready);

    // A restore derives the same, and asks again for what was not decided.
    let (again, _) = restored(&dag);
    assert_eq!(again.task(1).status, TaskStatus::Succeeded);
    assert_eq!(again.task(4).status, TaskStatus::Skipped);
    Ok(())
}

#[test]
fn undecided_instances_are_asked_again_after_a_restore() -> TestResult {
    let mut dag = mapped_per_item();
    run_ok(&mut dag, 0, 1);
    dag.apply(Event::Expanded { task: 1, count: 2 }, 5)?;
    dag.apply(
        Event::Condition {
            task: 4,
            verdict: Verdict::Skip {
                reason: "no".into(),
            },
        },
        6,
    )?;
    let (again, fx) = restored(&dag);
    assert_eq!(
        fx,
        [Effect::Ready { task: 3 }, Effect::Evaluate { task: 5 }]
    );
    assert_eq!(again.task(5).status, TaskStatus::Pending);
    Ok(())
}
