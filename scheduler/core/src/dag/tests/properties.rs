//! Property tests of the DAG state machine: random DAGs driven by random
//! event sequences — duplicated, replayed out of order, for stale or
//! future attempts, cache hits — must keep its promises: a task succeeds
//! at most once, nothing is made ready, evaluated or assigned before all
//! its upstream tasks succeeded (and, for a `finally` task, every other
//! task ended), and a finished run never changes.

use proptest::prelude::*;

use super::*;

/// A random DAG: each task depends on some earlier ones; some retry, some
/// have a `when:` condition; the last few may be `finally` tasks, which
/// depend only on each other.
fn dag_defs() -> impl Strategy<Value = Vec<TaskDef>> {
    (1usize..8, 0usize..3).prop_flat_map(|(n, finally)| {
        let task = move |i: usize| {
            let is_finally = i >= n;
            let first = if is_finally { n } else { 0 };
            (
                prop::collection::vec(any::<bool>(), i),
                0u32..3,
                prop::bool::weighted(if is_finally { 0.0 } else { 0.2 }),
            )
                .prop_map(move |(picks, retry_limit, conditional)| TaskDef {
                    name: format!("t{i}"),
                    deps: (first..i).filter(|&d| picks[d]).collect(),
                    retry_limit,
                    backoff_ms: 500,
                    finally: is_finally,
                    conditional,
                    for_each: false,
                    item_condition: false,
                })
        };
        (0..n + finally).map(task).collect::<Vec<_>>()
    })
}

/// One step of the sequence, read against the state it meets (see `event`).
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    task: usize,
    /// Which attempt: the current one, the one before, the next; and
    /// whether to pick a task with a live attempt rather than `task`.
    pick: u8,
    /// Milliseconds since the step before.
    after: u16,
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..60, 0usize..8, any::<u8>(), 0u16..1500).prop_map(|(kind, task, pick, after)| Step {
        kind,
        task,
        pick,
        after,
    })
}

/// What a step means for the DAG as it is: an event, a timer tick, or a
/// replay of an event already applied (a duplicate or a late delivery).
enum Input {
    Event(Event),
    Tick,
    Replay(usize),
}

fn input(dag: &RunDag, step: &Step, history: usize) -> Input {
    let n = dag.tasks().len();
    let live = |t: &TaskRun| {
        t.current()
            .is_some_and(|a| matches!(a.status, AttemptStatus::Assigned | AttemptStatus::Running))
    };
    // Half the steps go to a task where they can change something.
    let task = match step.pick % 2 {
        0 => (0..n)
            .find(|&i| match step.kind % 13 {
                0 | 12 => dag.task(i).status == TaskStatus::Ready,
                9..=11 => dag.defs()[i].conditional && dag.task(i).status == TaskStatus::Pending,
                _ => live(dag.task(i)),
            })
            .unwrap_or(step.task % n),
        _ => step.task % n,
    };
    let current = dag.task(task).attempts.len() as u32;
    let attempt = match (step.pick / 2) % 4 {
        0 | 1 => current,
        2 => current.saturating_sub(1),
        _ => current + 1,
    };
    let ev = match step.kind {
        // Rare: the run is cancelled.
        59 => Event::Cancel,
        56..=58 => return Input::Tick,
        50..=55 if history > 0 => return Input::Replay(usize::from(step.pick) % history),
        k => match k % 13 {
            0 => Event::Assign {
                task,
                agent: "a1".into(),
                gpus: vec![],
                cache_key: None,
            },
            1 | 2 | 8 => interrupted(k % 13, task, attempt),
            12 => Event::Cached {
                task,
                key: "k".into(),
                from: AttemptSource {
                    run: "earlier".into(),
                    task: dag.defs()[task].name.clone(),
                    attempt: 1,
                },
                outputs: vec![],
                image_digest: String::new(),
            },
            3 | 4 => Event::Started { task, attempt },
            5 | 6 => succeed(task, attempt),
            7 => Event::Failed {
                task,
                attempt,
                started_at: None,
                exit_code: Some(1),
                reason: "failed".into(),
                log_key: String::new(),
                cancelled: step.pick > 200,
            },
            9 => Event::Condition {
                task,
                verdict: Verdict::Run,
            },
            10 => Event::Condition {
                task,
                verdict: Verdict::Skip {
                    reason: "no".into(),
                },
            },
            _ => Event::Condition {
                task,
                verdict: Verdict::Fail {
                    reason: "bad".into(),
                },
            },
        },
    };
    Input::Event(ev)
}

/// An attempt ended by something other than its task: refused, lost, preempted.
fn interrupted(kind: u8, task: usize, attempt: u32) -> Event {
    let reason = format!("interrupted ({kind})");
    match kind {
        1 => Event::AssignFailed {
            task,
            attempt,
            reason,
        },
        2 => Event::Lost {
            task,
            attempt,
            reason,
        },
        _ => Event::Preempt {
            task,
            attempt,
            reason,
        },
    }
}

/// Every upstream task of `task` has succeeded, and for a `finally` task
/// every other task has ended.
fn upstream_done(dag: &RunDag, task: usize) -> bool {
    let others_ended = || {
        (0..dag.tasks().len())
            .filter(|&i| !dag.defs()[i].finally)
            .all(|i| dag.task(i).status.is_terminal())
    };
    dag.defs()[task]
        .deps
        .iter()
        .all(|&d| dag.task(d).status == TaskStatus::Succeeded)
        && (!dag.defs()[task].finally || others_ended())
}

fn check_effects(dag: &RunDag, fx: &[Effect]) -> Result<(), TestCaseError> {
    for effect in fx {
        let task = match effect {
            Effect::Assign { task, .. } | Effect::Ready { task } | Effect::Evaluate { task } => {
                *task
            }
            _ => continue,
        };
        prop_assert!(
            upstream_done(dag, task),
            "{effect:?} before the upstream of task #{task} succeeded: {:?}",
            dag.tasks().iter().map(|t| t.status).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn check_state(dag: &RunDag) -> Result<(), TestCaseError> {
    for (i, t) in dag.tasks().iter().enumerate() {
        let successes = t
            .attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Succeeded)
            .count();
        prop_assert!(successes <= 1, "task #{i} succeeded {successes} times");
        // An attempt exists only for a task whose upstream succeeded.
        if !t.attempts.is_empty() {
            prop_assert!(
                upstream_done(dag, i),
                "task #{i} has attempts while its upstream has not all succeeded"
            );
        }
    }
    Ok(())
}

proptest! {
    // Bounded so the whole suite stays well under half a minute in a debug build.
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_event_sequence_keeps_the_dags_promises(
        defs in dag_defs(),
        fail_fast in any::<bool>(),
        steps in prop::collection::vec(step(), 0..120),
    ) {
        let (mut dag, fx) = RunDag::new(defs, fail_fast);
        check_effects(&dag, &fx)?;
        let mut now: Millis = 1_000;
        let mut history: Vec<Event> = Vec::new();
        let mut finished: Option<(RunStatus, Vec<TaskRun>)> = None;
        let mut succeeded = vec![false; dag.tasks().len()];
        for step in &steps {
            now += Millis::from(step.after);
            let fx = match input(&dag, step, history.len()) {
                Input::Tick => dag.tick(now),
                Input::Replay(i) => dag.apply(history[i].clone(), now).unwrap_or_default(),
                Input::Event(ev) => {
                    let applied = dag.apply(ev.clone(), now);
                    history.push(ev);
                    applied.unwrap_or_default()
                }
            };
            check_effects(&dag, &fx)?;
            check_state(&dag)?;
            for (i, t) in dag.tasks().iter().enumerate() {
                // Once succeeded, a task stays so (and never succeeds again).
                prop_assert!(!succeeded[i] || t.status == TaskStatus::Succeeded, "task #{i} left Succeeded");
                succeeded[i] |= t.status == TaskStatus::Succeeded;
            }
            match &finished {
                Some((status, tasks)) => {
                    prop_assert_eq!(dag.status(), *status, "a finished run changed status");
                    prop_assert!(dag.tasks() == tasks.as_slice(), "a finished run's tasks changed");
                    prop_assert!(fx.is_empty(), "a finished run produced {:?}", fx);
                }
                None if dag.status().is_terminal() => {
                    finished = Some((dag.status(), dag.tasks().to_vec()));
                }
                None => {}
            }
        }
    }
}
