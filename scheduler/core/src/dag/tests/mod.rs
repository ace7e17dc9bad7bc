use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `spec` lists tasks as (name, deps by name, retry limit).
fn defs(spec: &[(&str, &[&str], u32)]) -> Vec<TaskDef> {
    let idx = |n: &str| {
        spec.iter()
            .position(|(m, _, _)| *m == n)
            .expect("a test spec names only its own tasks as dependencies")
    };
    spec.iter()
        .map(|(name, deps, limit)| TaskDef {
            name: name.to_string(),
            deps: deps.iter().map(|d| idx(d)).collect(),
            retry_limit: *limit,
            backoff_ms: 1_000,
            finally: false,
            conditional: false,
            for_each: false,
            item_condition: false,
        })
        .collect()
}

fn diamond(fail_fast: bool) -> (RunDag, Vec<Effect>) {
    RunDag::new(
        defs(&[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["a"], 0),
            ("d", &["b", "c"], 0),
        ]),
        fail_fast,
    )
}

fn status(dag: &RunDag, name: &str) -> TaskStatus {
    let i = dag
        .index_of(name)
        .expect("tests ask only for tasks they defined");
    dag.task(i).status
}

/// Assign, start and finish `task` successfully; returns the effects of success.
fn run_ok(dag: &mut RunDag, task: usize, now: Millis) -> Vec<Effect> {
    let fx = dag
        .apply(
            Event::Assign {
                cache_key: None,
                task,
                agent: "a1".into(),
                gpus: vec![],
            },
            now,
        )
        .expect("the task is Ready");
    let attempt = match &fx[0] {
        Effect::Assign { attempt, .. } => *attempt,
        other => panic!("expected assign, got {other:?}"),
    };
    dag.apply(Event::Started { task, attempt }, now)
        .expect("the attempt was just assigned");
    dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task,
            attempt,
            started_at: None,
            outputs: vec![],
            log_key: "log".into(),
            log_empty: false,
        },
        now + 1,
    )
    .expect("the attempt is running")
}

/// Places `task` on agent `a1` at 10.
fn assign(dag: &mut RunDag, task: usize) {
    dag.apply(
        Event::Assign {
            cache_key: None,
            task,
            agent: "a1".into(),
            gpus: vec![],
        },
        10,
    )
    .expect("the task is Ready");
}

fn start(dag: &mut RunDag, task: usize) -> u32 {
    assign(dag, task);
    let attempt = dag.task(task).current().expect("just assigned").number;
    dag.apply(Event::Started { task, attempt }, 11)
        .expect("the attempt was just assigned");
    attempt
}

/// The agent's report of an attempt it stopped on request.
fn stopped(task: usize, attempt: u32) -> Event {
    Event::Failed {
        task,
        attempt,
        started_at: None,
        exit_code: None,
        reason: "cancelled".into(),
        log_key: String::new(),
        cancelled: true,
    }
}

/// The agent's report of an attempt that exited 0 and wrote nothing.
fn succeed(task: usize, attempt: u32) -> Event {
    Event::Succeeded {
        image_digest: String::new(),
        task,
        attempt,
        started_at: None,
        outputs: vec![],
        log_key: String::new(),
        log_empty: true,
    }
}

fn fail(task: usize, attempt: u32) -> Event {
    Event::Failed {
        task,
        attempt,
        started_at: None,
        exit_code: Some(1),
        reason: "exited with code 1".into(),
        log_key: String::new(),
        cancelled: false,
    }
}

#[test]
fn new_run_has_only_roots_ready() {
    let (dag, fx) = diamond(true);
    assert_eq!(fx, vec![Effect::Ready { task: 0 }]);
    assert_eq!(status(&dag, "a"), TaskStatus::Ready);
    assert_eq!(status(&dag, "d"), TaskStatus::Pending);
    assert_eq!(dag.status(), RunStatus::Running);
}

#[test]
fn new_run_writes_only_the_run_record() {
    let (mut dag, _) = diamond(true);
    assert_eq!(dag.take_dirty(), (true, vec![]));
    assert_eq!(dag.take_dirty(), (false, vec![]));
}

#[test]
fn diamond_join_waits_for_both_branches() {
    let (mut dag, _) = diamond(true);
    let fx = run_ok(&mut dag, 0, 100);
    assert!(fx.contains(&Effect::Ready { task: 1 }));
    assert!(fx.contains(&Effect::Ready { task: 2 }));
    let fx = run_ok(&mut dag, 1, 200);
    assert!(
        !fx.contains(&Effect::Ready { task: 3 }),
        "d must wait for c"
    );
    let fx = run_ok(&mut dag, 2, 300);
    assert!(fx.contains(&Effect::Ready { task: 3 }));
    let fx = run_ok(&mut dag, 3, 400);
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    assert_eq!(dag.status(), RunStatus::Succeeded);
    assert_eq!(dag.run_state().finished_at, Some(401));
}

#[test]
fn attempt_records_agent_times_and_outputs() -> TestResult {
    let (mut dag, _) = diamond(true);
    dag.apply(
        Event::Assign {
            cache_key: None,
            task: 0,
            agent: "gpu-1".into(),
            gpus: vec![],
        },
        5,
    )?;
    dag.apply(
        Event::Started {
            task: 0,
            attempt: 1,
        },
        7,
    )?;
    let out = Artifact {
        name: "dataset".into(),
        key: "runs/r/a.1/outputs/dataset".into(),
        sha256: "ab".into(),
        size: 3,
        result: None,
    };
    let fx = dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 0,
            attempt: 1,
            started_at: None,
            outputs: vec![out.clone()],
            log_key: "runs/r/a.1.log".into(),
            log_empty: false,
        },
        9,
    )?;
    assert!(fx.contains(&Effect::Released {
        task: 0,
        agent: "gpu-1".into()
    }));
    let a = dag.task(0).current().ok_or("no current attempt")?;
    assert_eq!(
        (a.agent.as_str(), a.assigned_at, a.started_at, a.finished_at),
        ("gpu-1", 5, Some(7), Some(9))
    );
    assert_eq!(a.outputs, vec![out]);
    assert_eq!(a.status, AttemptStatus::Succeeded);
    assert_eq!(a.exit_code, Some(0));
    Ok(())
}

#[test]
fn events_for_old_or_unknown_attempts_are_stale() -> TestResult {
    let (mut dag, _) = diamond(true);
    let attempt = start(&mut dag, 0);
    assert!(dag.apply(fail(0, attempt + 1), 20).is_err());
    assert!(dag.apply(Event::Started { task: 0, attempt }, 20).is_err());
    assert!(dag.apply(fail(3, 1), 20).is_err(), "d has no attempt");
    assert!(dag.apply(fail(99, 1), 20).is_err(), "no such task");
    // A duplicate success after the first is ignored.
    let ok = Event::Succeeded {
        image_digest: String::new(),
        task: 0,
        attempt,
        started_at: None,
        outputs: vec![],
        log_key: String::new(),
        log_empty: false,
    };
    dag.apply(ok.clone(), 30)?;
    assert!(dag.apply(ok, 31).is_err());
    assert_eq!(status(&dag, "a"), TaskStatus::Succeeded);
    Ok(())
}

#[test]
fn cannot_assign_a_task_that_is_not_ready() {
    let (mut dag, _) = diamond(true);
    let e = Event::Assign {
        cache_key: None,
        task: 3,
        agent: "a1".into(),
        gpus: vec![],
    };
    assert!(dag.apply(e, 1).is_err());
}

#[test]
fn failure_with_retries_waits_with_exponential_backoff() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("flaky", &[], 2)]), true);
    let a1 = start(&mut dag, 0);
    dag.apply(fail(0, a1), 1_000)?;
    assert_eq!(status(&dag, "flaky"), TaskStatus::RetryWait);
    assert_eq!(dag.task(0).retry_at, 2_000);
    assert_eq!(dag.next_wakeup(), Some(2_000));
    assert!(dag.tick(1_999).is_empty(), "not before the backoff");
    // A restored run keeps its retry timer.
    let records = (0..1).map(|i| Some(dag.task(i).clone())).collect();
    let (restored, _) =
        RunDag::restore(dag.defs().to_vec(), true, dag.run_state().clone(), records);
    assert_eq!(restored.next_wakeup(), Some(2_000));
    assert_eq!(dag.tick(2_000), vec![Effect::Ready { task: 0 }]);
    assert_eq!(dag.next_wakeup(), None, "no task waits to retry any more");

    let a2 = start(&mut dag, 0);
    assert_eq!(a2, 2);
    dag.apply(fail(0, a2), 5_000)?;
    assert_eq!(
        dag.task(0).retry_at,
        7_000,
        "second retry waits twice as long"
    );
    dag.tick(7_000);
    let a3 = start(&mut dag, 0);
    let fx = dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 0,
            attempt: a3,
            started_at: None,
            outputs: vec![],
            log_key: String::new(),
            log_empty: false,
        },
        8_000,
    )?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    assert_eq!(dag.task(0).attempts.len(), 3);
    assert_eq!(dag.task(0).retries_used, 2);
    Ok(())
}

#[test]
fn exhausting_retries_fails_the_task_and_run() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 1)]), true);
    let a = start(&mut dag, 0);
    dag.apply(fail(0, a), 0)?;
    dag.tick(u64::MAX);
    let a = start(&mut dag, 0);
    let fx = dag.apply(fail(0, a), 0)?;
    assert_eq!(status(&dag, "t"), TaskStatus::Failed);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    assert_eq!(
        dag.run_state().message,
        "task `t` failed: exited with code 1"
    );
    Ok(())
}

#[test]
fn failure_skips_downstream_and_fail_fast_cancels_siblings() -> TestResult {
    let (mut dag, _) = diamond(true);
    run_ok(&mut dag, 0, 1);
    let b = start(&mut dag, 1);
    let c = start(&mut dag, 2);
    let fx = dag.apply(fail(1, b), 50)?;
    assert_eq!(status(&dag, "b"), TaskStatus::Failed);
    assert_eq!(status(&dag, "d"), TaskStatus::Skipped);
    assert!(fx.contains(&Effect::Cancel {
        task: 2,
        attempt: c,
        agent: "a1".into()
    }));
    assert_eq!(dag.status(), RunStatus::Running, "c is still stopping");
    let fx = dag.apply(stopped(2, c), 60)?;
    assert_eq!(status(&dag, "c"), TaskStatus::Cancelled);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    Ok(())
}

#[test]
fn without_fail_fast_independent_branches_finish() -> TestResult {
    let (mut dag, _) = RunDag::new(
        defs(&[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("x", &[], 0),
            ("y", &["x"], 0),
        ]),
        false,
    );
    let a = start(&mut dag, 0);
    let x = start(&mut dag, 2);
    let fx = dag.apply(fail(0, a), 5)?;
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Cancel { .. })),
        "no cancel without fail_fast"
    );
    assert_eq!(status(&dag, "b"), TaskStatus::Skipped);
    let fx = dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 2,
            attempt: x,
            started_at: None,
            outputs: vec![],
            log_key: String::new(),
            log_empty: false,
        },
        6,
    )?;
    assert!(fx.contains(&Effect::Ready { task: 3 }), "y still starts");
    let fx = run_ok(&mut dag, 3, 7);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    Ok(())
}

#[test]
fn fail_fast_stops_retry_waits_and_pending_work() -> TestResult {
    let (mut dag, _) = RunDag::new(
        defs(&[("a", &[], 0), ("r", &[], 3), ("z", &["r"], 0)]),
        true,
    );
    let r = start(&mut dag, 1);
    dag.apply(fail(1, r), 1)?;
    assert_eq!(status(&dag, "r"), TaskStatus::RetryWait);
    let a = start(&mut dag, 0);
    let fx = dag.apply(fail(0, a), 2)?;
    assert_eq!(status(&dag, "r"), TaskStatus::Cancelled);
    assert_eq!(status(&dag, "z"), TaskStatus::Skipped);
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    assert!(dag.tick(u64::MAX).is_empty());
    Ok(())
}

#[test]
fn cancel_stops_running_and_cancels_waiting() -> TestResult {
    let (mut dag, _) = diamond(true);
    let a = start(&mut dag, 0);
    let fx = dag.apply(Event::Cancel, 5)?;
    assert_eq!(
        fx,
        vec![Effect::Cancel {
            task: 0,
            attempt: a,
            agent: "a1".into()
        }]
    );
    assert_eq!(dag.status(), RunStatus::Cancelling);
    assert_eq!(status(&dag, "d"), TaskStatus::Cancelled);
    // A second cancel is a no-op.
    assert_eq!(dag.apply(Event::Cancel, 6)?, vec![]);
    let fx = dag.apply(stopped(0, a), 7)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Cancelled)));
    assert_eq!(
        dag.task(0).current().ok_or("no current attempt")?.status,
        AttemptStatus::Cancelled
    );
    Ok(())
}

#[test]
fn cancel_of_a_finished_run_changes_nothing() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("a", &[], 0)]), true);
    run_ok(&mut dag, 0, 1);
    assert_eq!(dag.apply(Event::Cancel, 9)?, vec![]);
    assert_eq!(dag.status(), RunStatus::Succeeded);
    Ok(())
}

#[test]
fn refused_assignment_returns_task_to_ready_without_using_a_retry() -> TestResult {
    let (mut dag, _) = diamond(true);
    dag.apply(
        Event::Assign {
            cache_key: None,
            task: 0,
            agent: "a1".into(),
            gpus: vec![],
        },
        1,
    )?;
    let fx = dag.apply(
        Event::AssignFailed {
            task: 0,
            attempt: 1,
            reason: "executor `docker` is not enabled".into(),
        },
        2,
    )?;
    assert!(fx.contains(&Effect::Ready { task: 0 }));
    assert_eq!(dag.task(0).retries_used, 0);
    let fx = dag.apply(
        Event::Assign {
            cache_key: None,
            task: 0,
            agent: "a2".into(),
            gpus: vec![],
        },
        3,
    )?;
    assert!(fx.contains(&Effect::Assign {
        task: 0,
        attempt: 2,
        agent: "a2".into()
    }));
    Ok(())
}

#[test]
fn only_tasks_with_attempts_are_dirty() {
    let (mut dag, _) = diamond(true);
    dag.take_dirty();
    run_ok(&mut dag, 0, 1);
    let (run_dirty, tasks) = dag.take_dirty();
    assert!(!run_dirty);
    // b and c became Ready: derivable, but the shell is told so it can skip them.
    assert!(tasks.contains(&0));
    assert!(dag.task(0).needs_record());
    assert!(!dag.task(1).needs_record());
}

#[test]
fn restore_derives_unstored_tasks_and_resends_unconfirmed_work() -> TestResult {
    // Before a restart: a succeeded, b assigned (maybe never sent), c running.
    let (mut dag, _) = diamond(true);
    run_ok(&mut dag, 0, 1);
    dag.apply(
        Event::Assign {
            cache_key: None,
            task: 1,
            agent: "a1".into(),
            gpus: vec![],
        },
        2,
    )?;
    start(&mut dag, 2);
    let records: Vec<Option<TaskRun>> = dag
        .tasks()
        .iter()
        .map(|t| t.needs_record().then(|| t.clone()))
        .collect();
    assert!(records[3].is_none());

    let (restored, fx) =
        RunDag::restore(dag.defs().to_vec(), true, dag.run_state().clone(), records);
    assert_eq!(restored.tasks(), dag.tasks());
    assert_eq!(
        fx,
        vec![Effect::Assign {
            task: 1,
            attempt: 1,
            agent: "a1".into()
        }]
    );
    Ok(())
}

#[test]
fn restore_of_fresh_run_matches_new() {
    let (dag, fx_new) = diamond(true);
    let (restored, fx) = RunDag::restore(dag.defs().to_vec(), true, RunState::new(), vec![None; 4]);
    assert_eq!(restored.tasks(), dag.tasks());
    assert_eq!(fx, fx_new);
}

#[test]
fn restore_derives_skipped_and_cancelled() {
    let d = defs(&[("a", &[], 0), ("b", &["a"], 0), ("c", &[], 0)]);
    let failed = TaskRun {
        status: TaskStatus::Failed,
        attempts: vec![Attempt {
            image_digest: String::new(),
            cache_key: None,
            cached_from: None,
            number: 1,
            agent: "x".into(),
            status: AttemptStatus::Failed,
            ready_at: None,
            assigned_at: 1,
            started_at: Some(1),
            finished_at: Some(2),
            exit_code: Some(2),
            error: "boom".into(),
            outputs: vec![],
            log_key: String::new(),
            log_empty: false,
            gpus: vec![],
        }],
        message: "boom".into(),
        retry_at: 0,
        retries_used: 0,
        preempting: None,
        ready_at: None,
        decided: false,
    };
    // Fail-fast run: b is downstream of the failure, c is stopped.
    let run = RunState {
        status: RunStatus::Failed,
        message: "task `a` failed: boom".into(),
        finished_at: Some(3),
        ..RunState::new()
    };
    let (dag, fx) = RunDag::restore(d.clone(), true, run, vec![Some(failed), None, None]);
    assert_eq!(status(&dag, "b"), TaskStatus::Skipped);
    assert_eq!(status(&dag, "c"), TaskStatus::Skipped);
    assert!(fx.is_empty());

    let cancelled = RunState {
        status: RunStatus::Cancelled,
        message: String::new(),
        finished_at: Some(3),
        ..RunState::new()
    };
    let (dag, _) = RunDag::restore(d, true, cancelled, vec![None, None, None]);
    assert_eq!(status(&dag, "a"), TaskStatus::Cancelled);
    assert_eq!(status(&dag, "b"), TaskStatus::Cancelled);
}

#[test]
fn restore_finishes_a_run_whose_last_commit_was_lost() {
    let d = defs(&[("a", &[], 0)]);
    let (mut dag, _) = RunDag::new(d.clone(), true);
    run_ok(&mut dag, 0, 1);
    let record = Some(dag.task(0).clone());
    let (restored, fx) = RunDag::restore(d, true, RunState::new(), vec![record]);
    assert_eq!(fx, vec![Effect::Finished(RunStatus::Succeeded)]);
    assert_eq!(restored.status(), RunStatus::Succeeded);
}

#[test]
fn restore_of_cancelling_run_resends_cancels() -> TestResult {
    let (mut dag, _) = diamond(true);
    let a = start(&mut dag, 0);
    dag.apply(Event::Cancel, 3)?;
    let records = dag
        .tasks()
        .iter()
        .map(|t| t.needs_record().then(|| t.clone()))
        .collect();
    let (_, fx) = RunDag::restore(dag.defs().to_vec(), true, dag.run_state().clone(), records);
    assert_eq!(
        fx,
        vec![Effect::Cancel {
            task: 0,
            attempt: a,
            agent: "a1".into()
        }]
    );
    Ok(())
}

#[test]
fn wide_fan_out_becomes_ready_together() {
    let mut spec: Vec<(String, Vec<String>)> = vec![("root".into(), vec![])];
    for i in 0..500 {
        spec.push((format!("t{i}"), vec!["root".into()]));
    }
    let d: Vec<TaskDef> = spec
        .iter()
        .map(|(n, deps)| TaskDef {
            name: n.clone(),
            deps: if deps.is_empty() { vec![] } else { vec![0] },
            retry_limit: 0,
            backoff_ms: 0,
            finally: false,
            conditional: false,
            for_each: false,
            item_condition: false,
        })
        .collect();
    let (mut dag, _) = RunDag::new(d, true);
    let fx = run_ok(&mut dag, 0, 1);
    let ready = fx
        .iter()
        .filter(|e| matches!(e, Effect::Ready { .. }))
        .count();
    assert_eq!(ready, 500);
}

#[test]
fn lost_attempts_are_retried_without_using_a_retry() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 0)]), true);
    let a = start(&mut dag, 0);
    let fx = dag.apply(
        Event::Lost {
            task: 0,
            attempt: a,
            reason: "agent `a1` lost".into(),
        },
        50,
    )?;
    assert!(fx.contains(&Effect::Ready { task: 0 }));
    assert!(fx.contains(&Effect::Released {
        task: 0,
        agent: "a1".into()
    }));
    let t = dag.task(0);
    assert_eq!(t.status, TaskStatus::Ready);
    assert_eq!(t.retries_used, 0, "retry limit 0, yet it runs again");
    assert_eq!(t.attempts[0].status, AttemptStatus::Lost);
    assert_eq!(t.attempts[0].error, "agent `a1` lost");
    // A late event from the lost attempt changes nothing.
    assert!(dag.apply(fail(0, a), 60).is_err());
    let b = start(&mut dag, 0);
    assert_eq!(b, 2);
    Ok(())
}

#[test]
fn lost_attempt_of_a_cancelling_run_is_cancelled() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 0)]), true);
    let a = start(&mut dag, 0);
    dag.apply(Event::Cancel, 1)?;
    let fx = dag.apply(
        Event::Lost {
            task: 0,
            attempt: a,
            reason: "agent gone".into(),
        },
        2,
    )?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Cancelled)));
    Ok(())
}

#[test]
fn preemption_stops_the_attempt_and_requeues_it_uncounted() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("train", &[], 0)]), true);
    let a = start(&mut dag, 0);
    let reason = "preempted for a priority-10 task of queue `prod`".to_string();
    let fx = dag.apply(
        Event::Preempt {
            task: 0,
            attempt: a,
            reason: reason.clone(),
        },
        20,
    )?;
    assert_eq!(
        fx,
        vec![Effect::Cancel {
            task: 0,
            attempt: a,
            agent: "a1".into()
        }]
    );
    // Still running (and holding its resources) until the agent confirms.
    assert_eq!(dag.task(0).status, TaskStatus::Running);
    assert_eq!(dag.task(0).preempting.as_deref(), Some(reason.as_str()));
    assert!(dag
        .apply(
            Event::Preempt {
                task: 0,
                attempt: a,
                reason: "again".into()
            },
            21
        )
        .is_err());
    let fx = dag.apply(stopped(0, a), 30)?;
    assert!(fx.contains(&Effect::Ready { task: 0 }));
    assert!(fx.contains(&Effect::Released {
        task: 0,
        agent: "a1".into()
    }));
    let t = dag.task(0);
    assert_eq!(t.status, TaskStatus::Ready);
    assert_eq!(t.retries_used, 0);
    assert_eq!(t.attempts[0].status, AttemptStatus::Preempted);
    assert_eq!(t.attempts[0].error, reason);
    assert!(t.preempting.is_none());
    Ok(())
}

#[test]
fn a_preempted_task_that_finishes_first_just_succeeds() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 0)]), true);
    let a = start(&mut dag, 0);
    dag.apply(
        Event::Preempt {
            task: 0,
            attempt: a,
            reason: "room".into(),
        },
        1,
    )?;
    let fx = dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 0,
            attempt: a,
            started_at: None,
            outputs: vec![],
            log_key: String::new(),
            log_empty: false,
        },
        2,
    )?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    assert!(dag.task(0).preempting.is_none());
    Ok(())
}

#[test]
fn attempts_record_when_their_task_became_ready() -> TestResult {
    let (mut dag, _) = diamond(true);
    let a = dag.index_of("a").ok_or("no such task")?;
    let b = dag.index_of("b").ok_or("no such task")?;
    // Roots are ready from the run's creation: unknown to the core.
    run_ok(&mut dag, a, 100);
    assert_eq!(
        dag.task(a).current().ok_or("no current attempt")?.ready_at,
        None
    );
    // b became ready when a succeeded (at 101), and waited until 150.
    run_ok(&mut dag, b, 150);
    let attempt = dag.task(b).current().ok_or("no current attempt")?;
    assert_eq!((attempt.ready_at, attempt.assigned_at), (Some(101), 150));
    Ok(())
}

#[test]
fn a_retry_is_ready_when_its_backoff_ends_and_a_lost_attempt_at_once() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 2)]), true);
    let attempt = start(&mut dag, 0);
    dag.apply(fail(0, attempt), 20)?;
    let retry_at = dag.task(0).retry_at;
    assert_eq!(retry_at, 1_020);
    // The tick comes late; the task was ready when the backoff ended.
    dag.tick(5_000);
    assert_eq!(dag.task(0).ready_at, Some(retry_at));
    let attempt = start(&mut dag, 0);
    assert_eq!(
        dag.task(0).current().ok_or("no current attempt")?.ready_at,
        Some(retry_at)
    );
    dag.apply(
        Event::Lost {
            task: 0,
            attempt,
            reason: "agent lost".into(),
        },
        6_000,
    )?;
    assert_eq!(dag.task(0).ready_at, Some(6_000));
    Ok(())
}

#[test]
fn restore_derives_ready_at_from_the_last_upstream_finish() -> TestResult {
    let (mut dag, _) = diamond(true);
    let a = dag.index_of("a").ok_or("no such task")?;
    let b = dag.index_of("b").ok_or("no such task")?;
    let c = dag.index_of("c").ok_or("no such task")?;
    run_ok(&mut dag, a, 100);
    run_ok(&mut dag, b, 200);
    run_ok(&mut dag, c, 300);
    let records: Vec<Option<TaskRun>> = dag
        .tasks()
        .iter()
        .map(|t| t.needs_record().then(|| t.clone()))
        .collect();
    let (restored, _) = RunDag::restore(dag.defs().to_vec(), true, RunState::new(), records);
    let d = restored.index_of("d").ok_or("no such task")?;
    assert_eq!(restored.task(d).status, TaskStatus::Ready);
    assert_eq!(restored.task(d).ready_at, Some(301));
    Ok(())
}

#[test]
fn a_final_event_carrying_the_start_records_it_as_if_started_first() -> TestResult {
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 0), ("u", &[], 0)]), true);
    assign(&mut dag, 0);
    assign(&mut dag, 1);
    dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 0,
            attempt: 1,
            started_at: Some(12),
            outputs: vec![],
            log_key: String::new(),
            log_empty: true,
        },
        15,
    )?;
    let a = dag.task(0).current().ok_or("no current attempt")?;
    assert_eq!((a.started_at, a.finished_at), (Some(12), Some(15)));
    // Without the start, the end is the start too (nothing better is known).
    dag.apply(fail(1, 1), 16)?;
    let a = dag.task(1).current().ok_or("no current attempt")?;
    assert_eq!((a.started_at, a.finished_at), (None, Some(16)));
    // A start already reported is not moved by the final event's.
    let (mut dag, _) = RunDag::new(defs(&[("t", &[], 0)]), true);
    let attempt = start(&mut dag, 0);
    dag.apply(
        Event::Succeeded {
            image_digest: String::new(),
            task: 0,
            attempt,
            started_at: Some(3),
            outputs: vec![],
            log_key: String::new(),
            log_empty: true,
        },
        20,
    )?;
    let a = dag.task(0).current().ok_or("no current attempt")?;
    assert_eq!(a.started_at, Some(11));
    Ok(())
}

#[test]
fn retry_reruns_what_did_not_succeed_and_keeps_the_rest() -> TestResult {
    // a → b, a → c; c fails for good (no retries), fail-fast off so b finishes.
    let (mut dag, _) = RunDag::new(
        defs(&[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["a"], 0),
            ("d", &["c"], 0),
        ]),
        false,
    );
    run_ok(&mut dag, 0, 10);
    run_ok(&mut dag, 1, 20);
    let attempt = start(&mut dag, 2);
    let fx = dag.apply(fail(2, attempt), 30)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Failed)));
    assert_eq!(dag.task(3).status, TaskStatus::Skipped);
    assert!(dag.retry(&[], 40).is_ok());
    // Again: the run is Running now.
    assert!(dag.retry(&[], 41).is_err(), "only a finished run");
    assert_eq!(dag.status(), RunStatus::Running);
    assert_eq!(dag.run_state().finished_at, None);
    assert_eq!(dag.task(0).status, TaskStatus::Succeeded);
    assert_eq!(dag.task(1).status, TaskStatus::Succeeded);
    assert_eq!(dag.task(2).status, TaskStatus::Ready);
    assert_eq!(dag.task(3).status, TaskStatus::Pending);
    // The new attempt's number continues from the failed one.
    let again = start(&mut dag, 2);
    assert_eq!(again, attempt + 1);
    dag.apply(succeed(2, again), 50)?;
    let d = start(&mut dag, 3);
    let fx = dag.apply(succeed(3, d), 60)?;
    assert!(fx.contains(&Effect::Finished(RunStatus::Succeeded)));
    assert_eq!(dag.task(0).attempts.len(), 1, "a was not run again");
    Ok(())
}

#[test]
fn retry_of_named_tasks_reruns_them_and_their_downstream() -> TestResult {
    let (mut dag, _) = RunDag::new(
        defs(&[("a", &[], 0), ("b", &["a"], 0), ("c", &[], 0)]),
        true,
    );
    run_ok(&mut dag, 0, 10);
    run_ok(&mut dag, 1, 20);
    run_ok(&mut dag, 2, 30);
    assert_eq!(dag.status(), RunStatus::Succeeded);
    assert!(dag.retry(&[], 40).is_err(), "nothing to run again");
    dag.take_dirty();
    let (tasks, fx) = dag.retry(&[0], 40)?;
    assert_eq!(tasks, [0, 1]);
    assert_eq!(fx, [Effect::Ready { task: 0 }]);
    assert_eq!(dag.task(1).status, TaskStatus::Pending);
    assert_eq!(dag.task(2).status, TaskStatus::Succeeded);
    let (dirty_run, dirty) = dag.take_dirty();
    assert!(dirty_run);
    assert!(dirty.contains(&0) && dirty.contains(&1) && !dirty.contains(&2));
    Ok(())
}

#[test]
fn a_stored_pending_task_is_derived_again_on_restore() -> TestResult {
    // A retried task is stored Pending with its earlier attempts; its
    // upstream task's success may be committed without it.
    let (mut dag, _) = RunDag::new(defs(&[("a", &[], 0), ("b", &["a"], 0)]), false);
    run_ok(&mut dag, 0, 10);
    run_ok(&mut dag, 1, 20);
    dag.retry(&[0], 30)?;
    run_ok(&mut dag, 0, 40);
    let mut b = dag.task(1).clone();
    b.status = TaskStatus::Pending;
    let records = vec![Some(dag.task(0).clone()), Some(b)];
    let (restored, fx) = RunDag::restore(dag.defs().to_vec(), false, RunState::new(), records);
    assert_eq!(restored.task(1).status, TaskStatus::Ready);
    assert_eq!(restored.task(1).attempts.len(), 1, "its attempts are kept");
    assert!(fx.contains(&Effect::Ready { task: 1 }));
    Ok(())
}

mod cached;
mod condition;
mod finally;
mod for_each;
mod properties;
