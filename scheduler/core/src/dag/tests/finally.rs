use super::*;

/// `main` as for [`defs`], then `finally` tasks (deps among themselves).
fn with_finally(main: &[(&str, &[&str], u32)], finally: &[(&str, &[&str])]) -> Vec<TaskDef> {
    let all: Vec<(&str, &[&str], u32)> = main
        .iter()
        .copied()
        .chain(finally.iter().map(|(n, d)| (*n, *d, 0)))
        .collect();
    let mut d = defs(&all);
    for def in d.iter_mut().skip(main.len()) {
        def.finally = true;
    }
    d
}

fn ready(fx: &[Effect]) -> Vec<usize> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Ready { task } => Some(*task),
            _ => None,
        })
        .collect()
}

#[test]
fn finally_waits_for_every_other_task_and_then_runs() -> TestResult {
    let (mut dag, fx) = RunDag::new(
        with_finally(&[("a", &[], 0), ("b", &["a"], 0)], &[("f", &[])]),
        true,
    );
    assert_eq!(ready(&fx), [0]);
    assert_eq!(status(&dag, "f"), TaskStatus::Pending);
    let fx = run_ok(&mut dag, 0, 1);
    assert_eq!(ready(&fx), [1], "b, not f: b has not ended");
    let fx = run_ok(&mut dag, 1, 3);
    assert_eq!(ready(&fx), [2]);
    assert_eq!(dag.outcome(), Outcome::Succeeded);
    let fx = run_ok(&mut dag, 2, 5);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

#[test]
fn finally_runs_after_a_fail_fast_failure_and_the_run_still_fails() -> TestResult {
    let (mut dag, _) = RunDag::new(
        with_finally(&[("a", &[], 0), ("b", &["a"], 0)], &[("f", &[])]),
        true,
    );
    let a = start(&mut dag, 0);
    let fx = dag.apply(fail(0, a), 12)?;
    assert_eq!(status(&dag, "b"), TaskStatus::Skipped);
    assert_eq!(ready(&fx), [2]);
    assert_eq!(dag.outcome(), Outcome::Failed);
    let fx = run_ok(&mut dag, 2, 13);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    assert_eq!(status(&dag, "f"), TaskStatus::Succeeded);
    Ok(())
}

#[test]
fn a_failing_finally_task_fails_the_run() -> TestResult {
    let (mut dag, _) = RunDag::new(with_finally(&[("a", &[], 0)], &[("f", &[])]), true);
    run_ok(&mut dag, 0, 1);
    let f = start(&mut dag, 1);
    let fx = dag.apply(fail(1, f), 12)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    Ok(())
}

#[test]
fn finally_tasks_depend_on_each_other_in_order() -> TestResult {
    let (mut dag, _) = RunDag::new(
        with_finally(&[("a", &[], 0)], &[("f1", &[]), ("f2", &["f1"])]),
        true,
    );
    let fx = run_ok(&mut dag, 0, 1);
    assert_eq!(ready(&fx), [1]);
    let fx = run_ok(&mut dag, 1, 3);
    assert_eq!(ready(&fx), [2]);
    Ok(())
}

#[test]
fn a_cancel_still_runs_finally_and_a_second_cancel_stops_it() -> TestResult {
    let (mut dag, _) = RunDag::new(
        with_finally(&[("a", &[], 0), ("b", &["a"], 0)], &[("f", &[])]),
        true,
    );
    let a = start(&mut dag, 0);
    dag.apply(Event::Cancel, 12)?;
    assert_eq!(
        status(&dag, "f"),
        TaskStatus::Pending,
        "a is still stopping"
    );
    let fx = dag.apply(stopped(0, a), 13)?;
    assert_eq!(ready(&fx), [2]);
    assert_eq!(dag.outcome(), Outcome::Cancelled);
    let f = start(&mut dag, 2);
    let fx = dag.apply(Event::Cancel, 14)?;
    assert_eq!(
        fx,
        [Effect::Cancel {
            task: 2,
            attempt: f,
            agent: "a1".into()
        }]
    );
    assert!(dag.run_state().finally_stopped);
    let fx = dag.apply(stopped(2, f), 15)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Cancelled)));
    assert_eq!(status(&dag, "f"), TaskStatus::Cancelled);
    // A third cancel changes nothing.
    assert_eq!(dag.apply(Event::Cancel, 16)?, []);
    Ok(())
}

#[test]
fn a_cancelled_run_with_finally_completes_it() -> TestResult {
    let (mut dag, _) = RunDag::new(with_finally(&[("a", &[], 0)], &[("f", &[])]), true);
    let a = start(&mut dag, 0);
    dag.apply(Event::Cancel, 12)?;
    dag.apply(stopped(0, a), 13)?;
    let fx = run_ok(&mut dag, 1, 14);
    assert!(fx.contains(&Effect::Finished(RunStatus::Cancelled)));
    assert_eq!(status(&dag, "f"), TaskStatus::Succeeded);
    Ok(())
}

#[test]
fn restore_derives_finally_from_the_other_tasks_and_keeps_it_running_on_cancel() -> TestResult {
    let d = with_finally(&[("a", &[], 0)], &[("f", &[])]);
    let (mut dag, _) = RunDag::new(d.clone(), true);
    // a still running: f waits.
    start(&mut dag, 0);
    let a = dag.task(0).clone();
    let (restored, _) = RunDag::restore(
        d.clone(),
        true,
        RunState::new(),
        vec![Some(a.clone()), None],
    );
    assert_eq!(status(&restored, "f"), TaskStatus::Pending);
    // a ended: f is Ready.
    dag.apply(succeed(0, 1), 12)?;
    let done = dag.task(0).clone();
    let (restored, fx) = RunDag::restore(d.clone(), true, RunState::new(), vec![Some(done), None]);
    assert_eq!(status(&restored, "f"), TaskStatus::Ready);
    assert_eq!(ready(&fx), [1]);
    // A cancelled run whose finally task runs: no cancel is sent to it again.
    start(&mut dag, 1);
    dag.apply(Event::Cancel, 13)?;
    let cancelling = dag.run_state().clone();
    let tasks = dag.tasks().iter().cloned().map(Some).collect();
    let (restored, fx) = RunDag::restore(d, true, cancelling, tasks);
    assert_eq!(status(&restored, "f"), TaskStatus::Running);
    assert!(fx.is_empty(), "{fx:?}");
    Ok(())
}

#[test]
fn retry_runs_finally_again_after_the_rerun_tasks() -> TestResult {
    let (mut dag, _) = RunDag::new(
        with_finally(&[("a", &[], 0), ("b", &[], 0)], &[("f", &[])]),
        false,
    );
    run_ok(&mut dag, 0, 1);
    let b = start(&mut dag, 1);
    dag.apply(fail(1, b), 12)?;
    run_ok(&mut dag, 2, 13);
    assert_eq!(dag.status(), RunStatus::Failed);
    let (again, fx) = dag.retry(&[], 20)?;
    assert_eq!(again, [1, 2]);
    assert_eq!(ready(&fx), [1], "f waits for b");
    let fx = run_ok(&mut dag, 1, 21);
    assert_eq!(ready(&fx), [2]);
    let fx = run_ok(&mut dag, 2, 23);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    Ok(())
}

#[test]
fn retry_of_a_run_that_succeeded_is_still_refused_without_tasks() {
    let (mut dag, _) = RunDag::new(with_finally(&[("a", &[], 0)], &[("f", &[])]), true);
    run_ok(&mut dag, 0, 1);
    run_ok(&mut dag, 1, 3);
    assert_eq!(dag.status(), RunStatus::Succeeded);
    assert_eq!(dag.retry(&[], 9), Err(RetryRefusal::AllSucceeded));
}
