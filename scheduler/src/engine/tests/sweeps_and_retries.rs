//! `max_parallel` in the admission pass, `drover retry`, and `finally` tasks.

use super::*;

#[test]
fn max_parallel_holds_back_instances_beyond_the_cap_and_says_why() -> TestResult {
    let mut h = Harness::new();
    let mut s = spec(
        "r1",
        &[
            ("t[a=1]", &[]),
            ("t[a=2]", &[]),
            ("t[a=3]", &[]),
            ("u", &[]),
        ],
    );
    for task in &mut s.tasks[..3] {
        task.matrix_task = "t".into();
        task.max_parallel = 2;
    }
    let submit = h.submit_spec("r1", s);
    // Room for all four: the cap, not capacity, holds the third back.
    let log = h.turn(vec![heartbeat("a1", 8, &[]), submit]);
    assert_eq!(
        log.assigned(),
        [("t[a=1]", 1, "a1"), ("t[a=2]", 1, "a1"), ("u", 1, "a1")]
    );
    let waiting = h.state.board.waiting("r1");
    assert_eq!(
        waiting.tasks.get(&2),
        Some(&(
            "max_parallel: 2 instances of `t` already running".to_string(),
            false
        ))
    );
    h.now += 10;
    let log = h.turn(vec![succeeded("a1", "r1", "t[a=2]", 1, h.now)]);
    assert_eq!(log.assigned(), [("t[a=3]", 1, "a1")]);
    Ok(())
}

#[test]
fn a_retry_brings_a_finished_run_back_and_reruns_what_failed() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("t", &[]), ("u", &["t"]), ("v", &[])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    h.now += 10;
    h.turn(vec![succeeded("a1", "r1", "v", 1, h.now)]);
    let log = h.turn(vec![failed("a1", "r1", "t", 1, h.now)]);
    assert_eq!(log.settled, [RunId::new("r1")]);
    assert_eq!(h.run("r1").ok_or("run")?.state(), pb::RunState::Failed);

    let stored = Arc::new(h.stored_run("r1").ok_or("r1 not stored")?);
    let retry = h.request(Request::Retry {
        stored: Arc::clone(&stored),
        tasks: vec![],
    });
    // The same request twice in one turn: the second finds it active.
    let again = h.request(Request::Retry {
        stored,
        tasks: vec![],
    });
    h.now += 10;
    let log = h.turn(vec![retry, again]);
    assert_eq!(log.answer(1), "Ok(Done)");
    assert!(log.answer(2).contains("still running"), "{}", log.answer(2));
    assert_eq!(log.assigned(), [("t", 2, "a1")]);
    assert_eq!(h.run("r1").ok_or("run")?.state(), pb::RunState::Running);
    let v = h.task("r1", "v").ok_or("v")?;
    assert_eq!(v.attempts.len(), 1, "v succeeded: kept");
    h.now += 10;
    let log = h.turn(vec![succeeded("a1", "r1", "t", 2, h.now)]);
    assert_eq!(log.assigned(), [("u", 1, "a1")]);
    Ok(())
}

#[test]
fn max_parallel_counts_what_is_admitted_not_what_is_offered() -> TestResult {
    // Instance a=1 fits no agent (it wants a label none has); the cap of 1
    // must not keep a=2 from the agent that can run it.
    let mut h = Harness::new();
    let mut s = spec("r1", &[("t[a=1]", &[]), ("t[a=2]", &[])]);
    for task in &mut s.tasks {
        task.matrix_task = "t".into();
        task.max_parallel = 1;
    }
    s.tasks[0].node_selector = [("zone".to_string(), "mars".to_string())].into();
    let submit = h.submit_spec("r1", s);
    let log = h.turn(vec![heartbeat("a1", 8, &[]), submit]);
    assert_eq!(log.assigned(), [("t[a=2]", 1, "a1")]);
    let waiting = h.state.board.waiting("r1");
    let (why, _) = waiting.tasks.get(&0).ok_or("no reason for t[a=1]")?;
    assert!(why.contains("zone"), "{why}");
    Ok(())
}

#[test]
fn retry_refuses_an_active_run_a_missing_queue_and_an_empty_task_name() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("t", &[])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    let running = Arc::new(h.stored_run("r1").ok_or("r1 not stored")?);
    h.now += 10;
    h.turn(vec![failed("a1", "r1", "t", 1, h.now)]);
    let finished = h.stored_run("r1").ok_or("r1 not stored")?;
    let mut elsewhere = finished.clone();
    elsewhere.record.queue = "gone".into();
    let requests = vec![
        // Read while it was running: it may have ended since; ask again.
        Request::Retry {
            stored: running,
            tasks: vec![],
        },
        Request::Retry {
            stored: Arc::new(elsewhere),
            tasks: vec![],
        },
        Request::Retry {
            stored: Arc::new(finished),
            tasks: vec![String::new()],
        },
    ];
    let inputs = requests.into_iter().map(|r| h.request(r)).collect();
    let log = h.turn(inputs);
    assert!(log.answer(1).contains("still running"), "{}", log.answer(1));
    assert!(log.answer(2).contains("queue `gone`"), "{}", log.answer(2));
    assert!(
        log.answer(3).contains("a task name is empty"),
        "{}",
        log.answer(3)
    );
    assert!(log.changes.is_empty(), "{:?}", log.changes);
    assert!(log.assigned().is_empty());
    assert_eq!(
        h.state.fleet.allocated(),
        0,
        "nothing held by a refused retry"
    );
    Ok(())
}

/// The env a `finally` task was sent with.
fn run_state_sent(log: &TurnLog) -> Vec<(String, String)> {
    log.sends
        .iter()
        .filter_map(|s| match s {
            Send::Assign { assignment, .. } => {
                let task = assignment.task.as_ref()?;
                let state = task.env.get(naming::RUN_STATE_ENV)?;
                Some((task.name.clone(), state.clone()))
            }
            Send::Cancel { .. } => None,
        })
        .collect()
}

#[test]
fn finally_runs_after_a_failure_told_how_the_run_went() -> TestResult {
    let mut h = Harness::new();
    let mut s = spec("r1", &[("t", &[]), ("u", &["t"]), ("f", &[])]);
    s.tasks[2].finally = true;
    let submit = h.submit_spec("r1", s);
    let log = h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    assert_eq!(log.assigned(), [("t", 1, "a1")], "f waits for the others");
    h.now += 10;
    let log = h.turn(vec![failed("a1", "r1", "t", 1, h.now)]);
    assert_eq!(log.assigned(), [("f", 1, "a1")]);
    assert_eq!(run_state_sent(&log), [("f".into(), "failed".into())]);
    assert_eq!(h.run("r1").ok_or("run")?.state(), pb::RunState::Running);
    h.now += 10;
    let log = h.turn(vec![succeeded("a1", "r1", "f", 1, h.now)]);
    assert_eq!(log.settled, [RunId::new("r1")]);
    assert_eq!(h.run("r1").ok_or("run")?.state(), pb::RunState::Failed);
    Ok(())
}

#[test]
fn a_cancelled_run_runs_finally_and_a_second_cancel_stops_it() -> TestResult {
    let mut h = Harness::new();
    let mut s = spec("r1", &[("t", &[]), ("f", &[])]);
    s.tasks[1].finally = true;
    let submit = h.submit_spec("r1", s);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    let cancel = h.request(Request::Cancel {
        run: RunId::new("r1"),
    });
    let log = h.turn(vec![cancel]);
    assert_eq!(log.cancelled().len(), 1);
    h.now += 10;
    let log = h.turn(vec![Input::CancelGone {
        attempt: AttemptId::new(RunId::new("r1"), 0, 1),
        reason: "stopped".into(),
    }]);
    assert_eq!(run_state_sent(&log), [("f".into(), "cancelled".into())]);
    let again = h.request(Request::Cancel {
        run: RunId::new("r1"),
    });
    let log = h.turn(vec![again]);
    let stops = log.cancelled();
    assert_eq!(
        stops,
        [(
            AgentId::new("a1"),
            Some(AttemptId::new(RunId::new("r1"), 1, 1))
        )]
    );
    assert!(h.run("r1").ok_or("run")?.finally_stopped);
    Ok(())
}
