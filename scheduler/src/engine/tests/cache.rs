//! The step cache: hits within one turn, waiting for an identical attempt,
//! policies, and entries that survive a reload.

use super::*;

/// A pipeline `a → b` where each task writes an output `out`.
fn with_outputs(name: &str) -> pb::PipelineSpec {
    let mut s = spec(name, &[("a", &[]), ("b", &["a"])]);
    for t in &mut s.tasks {
        t.outputs = vec![pb::OutputSpec {
            name: "out".into(),
            path: "out".into(),
            ..Default::default()
        }];
    }
    s.tasks[1].inputs = vec![pb::InputSpec {
        name: "in".into(),
        from_task: "a".into(),
        from_output: "out".into(),
        ..Default::default()
    }];
    s
}

/// Success of `task` with its output `out` holding bytes that hash to `sha`.
fn wrote(run: &str, task: &str, attempt: u32, sha: &str, at: Millis) -> Input {
    let kind = pb::attempt_event::Kind::Succeeded(pb::AttemptSucceeded {
        outputs: vec![pb::Artifact {
            name: "out".into(),
            key: format!("runs/{run}/{task}/{attempt}/out"),
            sha256: sha.into(),
            size: 1,
            result: None,
        }],
        log_empty: true,
        ..Default::default()
    });
    event("a1", run, task, attempt, at, kind)
}

/// Runs `a → b` of `run` to success on agent a1.
fn run_through(h: &mut Harness, run: &str) {
    h.now += 10;
    let log = h.turn(vec![wrote(run, "a", 1, "aa", h.now)]);
    assert_eq!(log.assigned(), [("b", 1, "a1")]);
    h.now += 10;
    h.turn(vec![wrote(run, "b", 1, "bb", h.now)]);
}

fn attempt(h: &Harness, run: &str, task: &str) -> pb::Attempt {
    h.task(run, task)
        .and_then(|t| t.attempts.last().cloned())
        .unwrap_or_default()
}

#[test]
fn a_pipeline_submitted_again_is_served_whole_in_one_turn() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    let log = h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    assert_eq!(log.assigned(), [("a", 1, "a1")]);
    run_through(&mut h, "r1");
    let first = attempt(&h, "r1", "b");
    assert_eq!(first.cache_key.len(), 64);

    h.now += 10;
    let submit = h.submit_spec("r2", with_outputs("r2"));
    let log = h.turn(vec![submit]);
    assert!(log.assigned().is_empty(), "{:?}", log.assigned());
    assert_eq!(log.settled, [RunId::new("r2")]);
    assert_eq!(h.run("r2").ok_or("r2")?.state(), pb::RunState::Succeeded);
    for task in ["a", "b"] {
        let a = attempt(&h, "r2", task);
        let from = a.cached_from.ok_or("not cached")?;
        assert_eq!(
            (from.run_id.as_str(), from.task.as_str(), from.attempt),
            ("r1", task, 1)
        );
        assert_eq!(a.agent_id, "");
        // The same objects, not copies.
        assert_eq!(a.outputs, attempt(&h, "r1", task).outputs);
        assert_eq!(a.started_at_ms, a.finished_at_ms);
    }
    Ok(())
}

#[test]
fn changed_input_bytes_rerun_only_what_reads_them() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    run_through(&mut h, "r1");

    // `a` never cached: it runs again and writes other bytes; `b` reads them.
    let mut s = with_outputs("r2");
    s.tasks[0].cache = Some(pb::CachePolicy {
        mode: pb::CacheMode::Off.into(),
        ..Default::default()
    });
    let submit = h.submit_spec("r2", s);
    let log = h.turn(vec![submit]);
    assert_eq!(log.assigned(), [("a", 1, "a1")]);
    h.now += 10;
    let log = h.turn(vec![wrote("r2", "a", 1, "a2", h.now)]);
    assert_eq!(log.assigned(), [("b", 1, "a1")]);
    assert_ne!(
        attempt(&h, "r2", "b").cache_key,
        attempt(&h, "r1", "b").cache_key
    );

    // The same bytes as r1's `a`: `b` is served from r1's entry.
    let mut s = with_outputs("r3");
    s.tasks[0].cache = Some(pb::CachePolicy {
        mode: pb::CacheMode::Off.into(),
        ..Default::default()
    });
    let submit = h.submit_spec("r3", s);
    h.turn(vec![submit]);
    h.now += 10;
    let log = h.turn(vec![wrote("r3", "a", 1, "aa", h.now)]);
    assert!(log.assigned().is_empty());
    let from = attempt(&h, "r3", "b").cached_from.ok_or("not cached")?;
    assert_eq!(from.run_id, "r1");
    Ok(())
}

#[test]
fn tasks_without_outputs_and_no_cache_runs_always_run() -> TestResult {
    let mut h = Harness::new();
    // No outputs: side effects, not cached by default.
    let submit = h.submit("r1", &[("t", &[])]);
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    h.now += 10;
    h.turn(vec![succeeded("a1", "r1", "t", 1, h.now)]);
    let submit = h.submit("r2", &[("t", &[])]);
    assert_eq!(h.turn(vec![submit]).assigned(), [("t", 1, "a1")]);
    assert_eq!(attempt(&h, "r2", "t").cache_key, "");

    // --no-cache: everything runs, and its results refresh the entries.
    let submit = h.submit_spec("r3", with_outputs("r3"));
    h.turn(vec![submit]);
    run_through(&mut h, "r3");
    let mut submit = h.submit_spec("r4", with_outputs("r4"));
    if let Input::Request {
        request: Request::Submit { record, .. },
        ..
    } = &mut submit
    {
        record.no_cache = true;
    }
    assert_eq!(h.turn(vec![submit]).assigned(), [("a", 1, "a1")]);
    run_through(&mut h, "r4");
    let request = h.request_list("");
    let list = h.turn(vec![request]);
    let entries = list.answer(h.next_reply - 1).to_owned();
    assert!(entries.contains("run_id: \"r4\""), "{entries}");
    assert!(!entries.contains("run_id: \"r3\""), "{entries}");
    Ok(())
}

#[test]
fn an_identical_instance_waits_for_the_first_and_takes_its_result() -> TestResult {
    let mut h = Harness::new();
    // A sweep that lists the same setting twice.
    let mut s = spec("r1", &[("t[lr=0.1]", &[]), ("t[lr=0.1] ", &[])]);
    for t in &mut s.tasks {
        t.matrix_task = "t".into();
        t.command = vec!["train".into(), "--lr".into(), "0.1".into()];
        t.outputs = vec![pb::OutputSpec {
            name: "out".into(),
            path: "out".into(),
            ..Default::default()
        }];
    }
    let submit = h.submit_spec("r1", s);
    let log = h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    assert_eq!(log.assigned(), [("t[lr=0.1]", 1, "a1")]);
    let waiting = h.state.board.waiting("r1");
    let why = &waiting.tasks.get(&1).ok_or("no reason")?.0;
    assert!(
        why.starts_with("waiting for an identical attempt (task #0"),
        "{why}"
    );

    h.now += 10;
    let log = h.turn(vec![wrote("r1", "t[lr=0.1]", 1, "aa", h.now)]);
    assert!(log.assigned().is_empty());
    assert_eq!(h.run("r1").ok_or("r1")?.state(), pb::RunState::Succeeded);
    Ok(())
}

#[test]
fn a_waiter_runs_itself_when_the_attempt_it_waited_for_fails() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    // r2's `a` has r1's `a`'s key while that one runs: it waits.
    let submit = h.submit_spec("r2", with_outputs("r2"));
    assert!(h.turn(vec![submit]).assigned().is_empty());
    h.now += 10;
    let log = h.turn(vec![failed("a1", "r1", "a", 1, h.now)]);
    assert_eq!(log.assigned(), [("a", 1, "a1")]);
    assert_eq!(log.sends.len(), 1);
    Ok(())
}

#[test]
fn entries_survive_a_reload_and_can_be_forgotten() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    run_through(&mut h, "r1");
    h.load();
    let submit = h.submit_spec("r2", with_outputs("r2"));
    let log = h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    assert!(log.assigned().is_empty());

    let forget = h.request(Request::ForgetCache {
        key: String::new(),
        run: "r1".into(),
    });
    let log = h.turn(vec![forget]);
    assert_eq!(log.answer(h.next_reply - 1), "Ok(Forgotten(2))");
    assert!(log.changes.iter().all(|(_, put)| !put));
    let submit = h.submit_spec("r3", with_outputs("r3"));
    assert_eq!(h.turn(vec![submit]).assigned(), [("a", 1, "a1")]);
    Ok(())
}

#[test]
fn max_age_and_the_ttl_bound_what_is_reused() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    run_through(&mut h, "r1");
    h.now += 60_000;
    let mut s = with_outputs("r2");
    s.tasks[0].cache = Some(pb::CachePolicy {
        mode: pb::CacheMode::On.into(),
        max_age_ms: 30_000,
        ..Default::default()
    });
    let submit = h.submit_spec("r2", s);
    let log = h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    assert_eq!(log.assigned(), [("a", 1, "a1")]);

    // Past the TTL r1's two entries are deleted.
    h.now += crate::options::DEFAULT_CACHE_TTL.as_millis() as Millis + 1;
    let log = h.turn(vec![heartbeat("a1", 4, &[("r2", "a", 1)])]);
    let deleted: Vec<_> = log
        .changes
        .iter()
        .filter(|(k, put)| matches!(k, RecordKey::Cache(_)) && !put)
        .collect();
    assert_eq!(deleted.len(), 2, "{:?}", log.changes);
    Ok(())
}

#[test]
fn a_retry_that_names_a_task_runs_it_rather_than_taking_its_old_result() -> TestResult {
    let mut h = Harness::new();
    let submit = h.submit_spec("r1", with_outputs("r1"));
    h.turn(vec![heartbeat("a1", 4, &[]), submit]);
    run_through(&mut h, "r1");
    let stored = Arc::new(h.stored_run("r1").ok_or("r1 not stored")?);
    let retry = h.request(Request::Retry {
        stored,
        tasks: vec!["a".into()],
    });
    let log = h.turn(vec![retry]);
    assert_eq!(log.assigned(), [("a", 2, "a1")]);
    h.now += 10;
    let log = h.turn(vec![wrote("r1", "a", 2, "aa", h.now)]);
    assert_eq!(log.assigned(), [("b", 2, "a1")]);
    Ok(())
}

impl Harness {
    fn request_list(&mut self, task: &str) -> Input {
        self.request(Request::ListCache { task: task.into() })
    }
}
