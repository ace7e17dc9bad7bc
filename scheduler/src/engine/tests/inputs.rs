//! One test per kind of input: requests, agent events, heartbeats, ticks.

use super::*;

#[test]
fn a_submit_is_committed_then_answered_and_its_roots_are_assigned() -> TestResult {
    let mut h = Harness::new();
    let hb = heartbeat("a1", 4, &[]);
    let log = h.turn(vec![hb]);
    assert_eq!(log.changes, [(RecordKey::Agent(AgentId::new("a1")), true)]);
    let submit = h.submit("r1", &[("prep", &[]), ("train", &["prep"])]);
    let log = h.turn(vec![submit]);
    assert_eq!(log.answer(0), "Ok(Done)");
    assert_eq!(log.assigned(), [("prep", 1, "a1")]);
    // The task record and the run record, together, the run's last.
    let prep = RecordKey::Task {
        run: RunId::new("r1"),
        task: drover_scheduler_core::ids::TaskIndex(0),
        name: "prep".into(),
    };
    assert_eq!(log.changes, [(prep, true), run_key("r1")]);
    let task = h.task("r1", "prep").ok_or("prep not stored")?;
    assert_eq!(task.state(), pb::TaskState::Assigned);
    assert!(h.task("r1", "train").is_none(), "derived, not stored");
    let Send::Assign {
        assignment,
        traceparent,
        ..
    } = &log.sends[0]
    else {
        return Err("not an assignment".into());
    };
    assert_eq!(assignment.artifact_prefix, "runs/r1/prep.1");
    assert_eq!(traceparent, &None, "the run has no trace id");
    Ok(())
}

#[test]
fn a_success_readies_downstream_and_the_last_one_ends_the_run() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("prep", &[]), ("train", &["prep"])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    h.now = 2_000;
    let log = h.turn(vec![succeeded("a1", "r1", "prep", 1, 1_990)]);
    assert_eq!(log.assigned(), [("train", 1, "a1")]);
    let prep = h.task("r1", "prep").ok_or("prep not stored")?;
    assert_eq!(prep.state(), pb::TaskState::Succeeded);
    assert_eq!(prep.attempts[0].finished_at_ms, 1_990);
    h.now = 3_000;
    let log = h.turn(vec![succeeded("a1", "r1", "train", 1, 2_995)]);
    assert_eq!(log.settled, [RunId::new("r1")]);
    let run = h.run("r1").ok_or("run not stored")?;
    assert_eq!(run.state(), pb::RunState::Succeeded);
    assert_eq!(run.finished_at_ms, 2_995);
    // It left memory: a cancel now finds no active run.
    let cancel = h.request(Request::Cancel {
        run: RunId::new("r1"),
    });
    let log = h.turn(vec![cancel]);
    assert_eq!(log.answer(1), "Ok(Active(false))");
    assert!(log.changes.is_empty());
    Ok(())
}

#[test]
fn a_final_event_with_its_start_records_the_start() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("t", &[])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    let Input::AgentEvent {
        mut event,
        trace_id,
        via,
    } = succeeded("a1", "r1", "t", 1, 1_500)
    else {
        return Err("not an event".into());
    };
    event.started_at_ms = 1_200;
    h.now = 1_600;
    h.turn(vec![Input::AgentEvent {
        event,
        trace_id,
        via,
    }]);
    let t = h.task("r1", "t").ok_or("t not stored")?;
    assert_eq!(
        (t.attempts[0].started_at_ms, t.attempts[0].finished_at_ms),
        (1_200, 1_500)
    );
    Ok(())
}

#[test]
fn an_event_stamped_ahead_of_the_schedulers_clock_ends_before_the_room_is_reused() -> TestResult {
    let mut h = Harness::new();
    // One CPU: the second task waits for the first to end.
    let submit = h.submit("r1", &[("a", &[]), ("b", &[])]);
    h.turn(vec![heartbeat("a1", 1, &[]), submit]);
    h.now = 2_000;
    let log = h.turn(vec![succeeded("a1", "r1", "a", 1, 2_001)]);
    assert_eq!(log.assigned(), [("b", 1, "a1")]);
    let a = h.task("r1", "a").ok_or("a not stored")?;
    let b = h.task("r1", "b").ok_or("b not stored")?;
    assert_eq!(a.attempts[0].finished_at_ms, 2_000);
    assert!(a.attempts[0].finished_at_ms <= b.attempts[0].assigned_at_ms);
    Ok(())
}

#[test]
fn a_silent_agent_is_lost_and_its_attempt_runs_elsewhere_without_a_retry() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("t", &[])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    h.now += 5_000;
    // a2 joins; a1 keeps quiet.
    assert!(h.turn(vec![heartbeat("a2", 4, &[])]).assigned().is_empty());
    h.now += 5_000;
    let log = h.turn(vec![heartbeat("a2", 4, &[]), Input::Tick]);
    assert_eq!(log.assigned(), [("t", 2, "a2")]);
    let t = h.task("r1", "t").ok_or("t not stored")?;
    assert_eq!(t.attempts[0].state(), pb::AttemptState::Lost);
    assert_eq!(t.retries_used, 0);
    let a1: pb::AgentRecord = h
        .store
        .decode(&RecordKey::Agent(AgentId::new("a1")))
        .ok_or("a1 not stored")?;
    assert_eq!(a1.lost_at_ms, h.now);
    // Its late success is for an attempt that is no longer current.
    let log = h.turn(vec![succeeded("a1", "r1", "t", 1, h.now)]);
    assert!(log.changes.is_empty(), "{:?}", log.changes);
    Ok(())
}

#[test]
fn a_refused_assignment_goes_elsewhere_and_suspends_the_agent() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("t", &[])]);
    h.turn(vec![
        heartbeat("a1", 4, &[]),
        heartbeat("a2", 1, &[]),
        submit,
    ]);
    let refused = Input::AssignFailed {
        attempt: AttemptId::new(RunId::new("r1"), 0, 1),
        agent: AgentId::new("a1"),
        reason: "no room".into(),
    };
    let log = h.turn(vec![refused]);
    assert_eq!(log.assigned(), [("t", 2, "a2")]);
    let t = h.task("r1", "t").ok_or("t not stored")?;
    assert_eq!(t.retries_used, 0, "a refusal is not the task's failure");
    Ok(())
}

#[test]
fn a_cancel_stops_running_attempts_and_ends_when_they_are_gone() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("a", &[]), ("b", &[]), ("c", &["a"])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    let cancel = h.request(Request::Cancel {
        run: RunId::new("r1"),
    });
    let log = h.turn(vec![cancel]);
    assert_eq!(log.answer(1), "Ok(Active(true))");
    let stops = log.cancelled();
    assert_eq!(stops.len(), 2);
    assert!(stops.iter().all(|(agent, _)| agent.as_str() == "a1"));
    let run = h.run("r1").ok_or("run not stored")?;
    assert_eq!(run.state(), pb::RunState::Cancelling);
    let gone = stops
        .into_iter()
        .filter_map(|(_, attempt)| attempt)
        .map(|attempt| Input::CancelGone {
            attempt,
            reason: "cancelled (the agent no longer ran it)".into(),
        })
        .collect();
    let log = h.turn(gone);
    assert_eq!(log.settled, [RunId::new("r1")]);
    assert_eq!(h.run("r1").ok_or("run")?.state(), pb::RunState::Cancelled);
    Ok(())
}

#[test]
fn queue_requests_follow_the_rules_and_write_only_what_changed() -> TestResult {
    let mut h = Harness::new();
    let ml = pb::Queue {
        name: "ml".into(),
        weight: 1,
        ..Default::default()
    };
    let create = h.request(Request::PutQueue {
        queue: ml.clone(),
        create: true,
    });
    let again = h.request(Request::PutQueue {
        queue: ml.clone(),
        create: true,
    });
    let log = h.turn(vec![create, again]);
    assert!(log.answer(0).starts_with("Ok(Queue("), "{}", log.answer(0));
    assert!(log.answer(1).contains("QueueExists"), "{}", log.answer(1));
    assert_eq!(log.changes, [(RecordKey::Queue("ml".into()), true)]);

    let pause = h.request(Request::SetPaused {
        name: "ml".into(),
        paused: true,
    });
    h.turn(vec![pause]);
    // An update does not undo the pause.
    let update = h.request(Request::PutQueue {
        queue: pb::Queue {
            weight: 3,
            ..ml.clone()
        },
        create: false,
    });
    let log = h.turn(vec![update]);
    assert!(log.answer(3).contains("paused: true"), "{}", log.answer(3));
    let stored: pb::QueueRecord = h
        .store
        .decode(&RecordKey::Queue("ml".into()))
        .ok_or("ml not stored")?;
    let stored = stored.queue.ok_or("no queue")?;
    assert_eq!((stored.weight, stored.paused), (3, true));

    let default = h.request(Request::DeleteQueue {
        name: "default".into(),
    });
    let missing = h.request(Request::DeleteQueue {
        name: "nope".into(),
    });
    let log = h.turn(vec![default, missing]);
    assert!(
        log.answer(4).contains("cannot be deleted"),
        "{}",
        log.answer(4)
    );
    assert!(log.answer(5).contains("QueueNotFound"), "{}", log.answer(5));
    assert!(log.changes.is_empty());

    let submit = h.submit("r1", &[("t", &[])]);
    let Input::Request {
        id,
        request: Request::Submit { mut record, spec },
    } = submit
    else {
        return Err("not a submit".into());
    };
    record.queue = "ml".into();
    let submit = Input::Request {
        id,
        request: Request::Submit { record, spec },
    };
    let in_use = h.request(Request::DeleteQueue { name: "ml".into() });
    let log = h.turn(vec![submit, in_use]);
    assert!(
        log.answer(7).contains("holds 1 active run(s)"),
        "{}",
        log.answer(7)
    );
    let cancel = h.request(Request::Cancel {
        run: RunId::new("r1"),
    });
    h.turn(vec![cancel]);
    let delete = h.request(Request::DeleteQueue { name: "ml".into() });
    let log = h.turn(vec![delete]);
    assert_eq!(log.answer(9), "Ok(Done)");
    assert_eq!(log.changes, [(RecordKey::Queue("ml".into()), false)]);
    assert!(!h.store.records.contains_key(&RecordKey::Queue("ml".into())));
    let show = h.request(Request::ShowQueue { name: "ml".into() });
    assert!(h.turn(vec![show]).answer(10).contains("QueueNotFound"));
    Ok(())
}

#[test]
fn a_failed_submit_to_a_missing_queue_writes_nothing() {
    let mut h = Harness::new();
    let Input::Request {
        id,
        request: Request::Submit { mut record, spec },
    } = h.submit("r1", &[("t", &[])])
    else {
        unreachable!("submit builds a submit")
    };
    record.queue = "nope".into();
    let log = h.turn(vec![Input::Request {
        id,
        request: Request::Submit { record, spec },
    }]);
    assert!(log.answer(0).contains("QueueNotFound"), "{}", log.answer(0));
    assert!(log.changes.is_empty());
    assert!(h.run("r1").is_none());
}

#[test]
fn drain_and_priority_are_stored_and_answered_after_the_commit() -> TestResult {
    let mut h = Harness::new();
    h.turn(vec![heartbeat("a1", 4, &[])]);
    let drain = h.request(Request::Drain {
        agent: AgentId::new("a1"),
        drained: true,
    });
    let unknown = h.request(Request::Drain {
        agent: AgentId::new("zz"),
        drained: true,
    });
    let log = h.turn(vec![drain, unknown]);
    assert!(log.answer(0).contains("drained: true"), "{}", log.answer(0));
    assert!(log.answer(1).contains("AgentNotFound"), "{}", log.answer(1));
    let a1: pb::AgentRecord = h
        .store
        .decode(&RecordKey::Agent(AgentId::new("a1")))
        .ok_or("a1 not stored")?;
    assert!(a1.drained);
    // Drained: nothing is placed on it.
    let submit = h.submit("r1", &[("t", &[])]);
    assert!(h.turn(vec![submit]).assigned().is_empty());
    let priority = h.request(Request::SetRunPriority {
        run: RunId::new("r1"),
        priority: 7,
    });
    let log = h.turn(vec![priority]);
    assert_eq!(log.answer(3), "Ok(Active(true))");
    assert_eq!(log.changes, [run_key("r1")]);
    assert_eq!(h.run("r1").ok_or("run")?.priority, 7);
    Ok(())
}

#[test]
fn an_attempt_the_scheduler_does_not_expect_is_cancelled_when_seen_twice() {
    let mut h = Harness::new();
    let stray = [("old-run", "x", 3)];
    assert!(h
        .turn(vec![heartbeat("a1", 4, &stray)])
        .cancelled()
        .is_empty());
    let log = h.turn(vec![heartbeat("a1", 4, &stray)]);
    assert_eq!(log.cancelled(), [(AgentId::new("a1"), None)]);
}

#[test]
fn a_failure_retries_after_its_backoff_and_then_fails_the_run() -> TestResult {
    let mut h = Harness::new();
    let mut s = spec("r1", &[("t", &[]), ("u", &["t"])]);
    s.tasks[0].retries = Some(pb::RetryPolicy {
        limit: 1,
        backoff_ms: 1_000,
    });
    let submit = h.submit_spec("r1", s);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    let log = h.turn(vec![failed("a1", "r1", "t", 1, h.now)]);
    assert!(log.assigned().is_empty(), "backing off");
    assert_eq!(h.state.next_wakeup(), Some(h.now + 1_000));
    assert_eq!(
        h.task("r1", "t").ok_or("t")?.state(),
        pb::TaskState::RetryWait
    );
    h.now += 1_000;
    let log = h.turn(vec![Input::Tick]);
    assert_eq!(log.assigned(), [("t", 2, "a1")]);
    let log = h.turn(vec![failed("a1", "r1", "t", 2, h.now)]);
    assert_eq!(log.settled, [RunId::new("r1")]);
    let run = h.run("r1").ok_or("run")?;
    assert_eq!(run.state(), pb::RunState::Failed);
    assert!(run.message.contains("task `t` failed"), "{}", run.message);
    Ok(())
}

#[test]
fn an_event_from_another_agent_than_the_attempts_is_dropped() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit("r1", &[("prep", &[])]);
    let log = h.turn(vec![
        heartbeat("a1", 4, &[]),
        heartbeat("a2", 4, &[]),
        submit,
    ]);
    let holder = log
        .assigned()
        .first()
        .ok_or("nothing assigned")?
        .2
        .to_owned();
    let holder = holder.as_str();
    let other = if holder == "a1" { "a2" } else { "a1" };
    h.now = 2_000;
    // Another agent's word on the attempt, on its own subject: dropped.
    let log = h.turn(vec![succeeded(other, "r1", "prep", 1, 1_990)]);
    assert!(log.changes.is_empty(), "{:?}", log.changes);
    // An event naming the holder but carried by another agent's subject: dropped too.
    let Input::AgentEvent {
        event, trace_id, ..
    } = succeeded(holder, "r1", "prep", 1, 1_990)
    else {
        return Err("not an event".into());
    };
    let log = h.turn(vec![Input::AgentEvent {
        event,
        trace_id,
        via: other.into(),
    }]);
    assert!(log.changes.is_empty(), "{:?}", log.changes);
    let prep = h.task("r1", "prep").ok_or("prep not stored")?;
    assert_eq!(prep.state(), pb::TaskState::Assigned);
    // The holder's own event counts.
    h.turn(vec![succeeded(holder, "r1", "prep", 1, 1_995)]);
    let prep = h.task("r1", "prep").ok_or("prep not stored")?;
    assert_eq!(prep.state(), pb::TaskState::Succeeded);
    Ok(())
}
