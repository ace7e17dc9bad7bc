//! `EngineState` driven directly: inputs in, changes and sends out — no
//! etcd, no NATS. Commits go to [`MemoryStore`], which keeps what a turn
//! wrote and enforces the same compare-and-swap contract as `Store::commit`
//! (a change must name the revision the key has, or none for a new key), so
//! every test also checks that the state tracks its revisions right; a
//! state loaded back from it must carry on exactly as the original.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use drover_api::pb;
use drover_scheduler_core::ids::{AgentId, AttemptId, RunId};
use drover_scheduler_core::placement::Strategy;
use drover_scheduler_core::Millis;

use super::*;
use crate::metrics::SchedulerMetrics;
use crate::store::{Change, LoadedRuns, RecordKey, Revisions, StoredRun};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options() -> EngineOptions {
    EngineOptions {
        agent_timeout: Duration::from_secs(10),
        cancel_grace: Duration::from_secs(5),
        preemption_grace: Duration::from_secs(30),
        placement: Strategy::BinPack,
        pass_depth: 1000,
    }
}

/// What a commit wrote, by record, with etcd's revision rules.
#[derive(Default)]
struct MemoryStore {
    records: BTreeMap<RecordKey, (Vec<u8>, i64)>,
    revision: i64,
}

impl MemoryStore {
    fn commit(&mut self, groups: Vec<Vec<Change>>) -> Result<Revisions, String> {
        let changes: Vec<Change> = groups.into_iter().flatten().collect();
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        for c in &changes {
            let now = self.records.get(&c.key).map(|(_, rev)| *rev);
            if now != c.expect {
                return Err(format!(
                    "{:?}: expected {:?}, etcd has {now:?}",
                    c.key, c.expect
                ));
            }
        }
        self.revision += 1;
        let mut revs = Vec::new();
        for c in changes {
            match c.value {
                Some(v) => drop(self.records.insert(c.key.clone(), (v, self.revision))),
                None => drop(self.records.remove(&c.key)),
            }
            revs.push((c.key, self.revision));
        }
        Ok(revs)
    }

    fn decode<M: Message + Default>(&self, key: &RecordKey) -> Option<M> {
        M::decode(self.records.get(key)?.0.as_slice()).ok()
    }

    /// What `Store` would load: queues, agents and every active run.
    fn stored(&self, specs: &HashMap<String, Arc<pb::PipelineSpec>>) -> Stored {
        let mut queues = Vec::new();
        let mut agents = Vec::new();
        let mut runs = Vec::new();
        let mut finished = BTreeMap::new();
        for (key, (value, rev)) in &self.records {
            match key {
                RecordKey::Queue(_) => {
                    let r = pb::QueueRecord::decode(value.as_slice()).unwrap_or_default();
                    queues.push((r.queue.unwrap_or_default(), *rev));
                }
                RecordKey::Agent(_) => agents.push((
                    pb::AgentRecord::decode(value.as_slice()).unwrap_or_default(),
                    *rev,
                )),
                RecordKey::Run(id) => {
                    let record = pb::RunRecord::decode(value.as_slice()).unwrap_or_default();
                    if !crate::store::is_active(record.state()) {
                        *finished.entry(record.state()).or_default() += 1;
                        continue;
                    }
                    let tasks = self
                        .records
                        .iter()
                        .filter_map(|(k, (v, rev))| match k {
                            RecordKey::Task { run, name, .. } if run == id => Some((
                                name.clone(),
                                pb::TaskRecord::decode(v.as_slice()).unwrap_or_default(),
                                *rev,
                            )),
                            _ => None,
                        })
                        .collect();
                    runs.push(StoredRun {
                        spec: Arc::clone(&specs[id.as_str()]),
                        record,
                        rev: *rev,
                        tasks,
                    });
                }
                RecordKey::Task { .. } => {}
            }
        }
        Stored {
            queues,
            agents,
            runs: LoadedRuns {
                active: runs,
                finished,
            },
        }
    }
}

/// What one turn produced, in a form two runs can be compared by.
#[derive(Debug, PartialEq)]
struct TurnLog {
    changes: Vec<(RecordKey, bool)>,
    sends: Vec<Send>,
    answers: Vec<(ReplyId, String)>,
    settled: Vec<RunId>,
}

impl TurnLog {
    fn assigned(&self) -> Vec<(&str, u32, &str)> {
        self.sends
            .iter()
            .filter_map(|s| match s {
                Send::Assign {
                    agent, assignment, ..
                } => {
                    let a = assignment.attempt.as_ref()?;
                    Some((a.task.as_str(), a.attempt, agent.as_str()))
                }
                Send::Cancel { .. } => None,
            })
            .collect()
    }

    fn cancelled(&self) -> Vec<(AgentId, Option<AttemptId>)> {
        self.sends
            .iter()
            .filter_map(|s| match s {
                Send::Cancel {
                    agent, follow_up, ..
                } => Some((agent.clone(), follow_up.clone())),
                Send::Assign { .. } => None,
            })
            .collect()
    }

    fn answer(&self, id: u64) -> &str {
        self.answers
            .iter()
            .find(|(r, _)| r.0 == id)
            .map_or("no answer", |(_, a)| a.as_str())
    }
}

struct Harness {
    state: EngineState,
    store: MemoryStore,
    specs: HashMap<String, Arc<pb::PipelineSpec>>,
    now: Millis,
    next_reply: u64,
}

impl Harness {
    fn new() -> Self {
        let (metrics, _) = SchedulerMetrics::new();
        let mut h = Self {
            state: EngineState::new(options(), metrics),
            store: MemoryStore::default(),
            specs: HashMap::new(),
            now: 1_000,
            next_reply: 0,
        };
        // A first start: creates the default queue.
        h.load();
        h
    }

    /// Loads the state from the store, as a start or a reload does.
    fn load(&mut self) -> TurnLog {
        let mut turn = Turn::default();
        let stored = self.store.stored(&self.specs);
        self.state.load(stored, self.now, &mut turn);
        self.finish(turn)
    }

    /// A turn with these inputs at the current time.
    fn turn(&mut self, inputs: Vec<Input>) -> TurnLog {
        let mut turn = Turn::default();
        for input in inputs {
            self.state.apply(input, self.now, &mut turn);
        }
        self.finish(turn)
    }

    fn finish(&mut self, mut turn: Turn) -> TurnLog {
        self.state.end_inputs(self.now, &mut turn);
        let groups = self.state.changes(&turn);
        for group in &groups {
            // A run's record goes last in its group: it is the commit point.
            let runs = group
                .iter()
                .position(|c| matches!(c.key, RecordKey::Run(_)));
            assert!(runs.is_none_or(|i| i == group.len() - 1), "{group:?}");
        }
        let changes = groups
            .iter()
            .flatten()
            .map(|c| (c.key.clone(), c.value.is_some()))
            .collect();
        let revisions = match self.store.commit(groups) {
            Ok(revisions) => revisions,
            Err(e) => panic!("the state expected the wrong revisions: {e}"),
        };
        self.state.committed(&revisions);
        let answers = std::mem::take(&mut turn.answers)
            .into_iter()
            .map(|(id, answer)| {
                let result = match answer {
                    Answer::Now(r) => *r,
                    Answer::AfterCommit(after) => self.state.answer(after),
                };
                (id, format!("{result:?}"))
            })
            .collect();
        let settled = self.state.settle(std::mem::take(&mut turn.touched));
        TurnLog {
            changes,
            sends: turn.sends,
            answers,
            settled,
        }
    }

    fn request(&mut self, request: Request) -> Input {
        let id = ReplyId(self.next_reply);
        self.next_reply += 1;
        Input::Request { id, request }
    }

    fn submit(&mut self, id: &str, tasks: &[(&str, &[&str])]) -> Input {
        self.submit_spec(id, spec(id, tasks))
    }

    fn submit_spec(&mut self, id: &str, spec: pb::PipelineSpec) -> Input {
        let spec = Arc::new(spec);
        self.specs.insert(id.into(), Arc::clone(&spec));
        let record = pb::RunRecord {
            id: id.into(),
            state: pb::RunState::Running as i32,
            created_at_ms: self.now,
            queue: "default".into(),
            name: spec.name.clone(),
            tasks_total: spec.tasks.len() as u32,
            ..Default::default()
        };
        self.request(Request::Submit {
            record: Box::new(record),
            spec,
        })
    }

    /// A run as `Store::load_run` would read it, finished or not.
    fn stored_run(&self, id: &str) -> Option<StoredRun> {
        let key = RecordKey::Run(RunId::new(id));
        let (_, rev) = self.store.records.get(&key)?;
        let tasks = self
            .store
            .records
            .iter()
            .filter_map(|(k, (v, rev))| match k {
                RecordKey::Task { run, name, .. } if run == id => Some((
                    name.clone(),
                    pb::TaskRecord::decode(v.as_slice()).ok()?,
                    *rev,
                )),
                _ => None,
            })
            .collect();
        Some(StoredRun {
            record: self.run(id)?,
            spec: Arc::clone(self.specs.get(id)?),
            rev: *rev,
            tasks,
        })
    }

    fn run(&self, id: &str) -> Option<pb::RunRecord> {
        self.store.decode(&RecordKey::Run(RunId::new(id)))
    }

    fn task(&self, run: &str, task: &str) -> Option<pb::TaskRecord> {
        let index = self.specs[run].tasks.iter().position(|t| t.name == task)?;
        self.store.decode(&RecordKey::Task {
            run: RunId::new(run),
            task: drover_scheduler_core::ids::TaskIndex(index),
            name: task.into(),
        })
    }
}

fn spec(name: &str, tasks: &[(&str, &[&str])]) -> pb::PipelineSpec {
    pb::PipelineSpec {
        name: name.into(),
        fail_fast: true,
        tasks: tasks
            .iter()
            .map(|(task, deps)| pb::TaskSpec {
                name: task.to_string(),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
                command: vec!["true".into()],
                resources: Some(pb::Resources {
                    cpu_millis: 1000,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// An agent with `cpus` whole CPUs running `running` (run, task, attempt).
fn heartbeat(agent: &str, cpus: u32, running: &[(&str, &str, u32)]) -> Input {
    Input::Heartbeat(pb::Heartbeat {
        agent_id: agent.into(),
        executors: vec!["process".into()],
        cpu_millis: cpus * 1000,
        memory_bytes: 1 << 30,
        instance: format!("{agent}-1"),
        running: running
            .iter()
            .map(|(run, task, attempt)| attempt_ref(run, task, *attempt))
            .collect(),
        ..Default::default()
    })
}

fn attempt_ref(run: &str, task: &str, attempt: u32) -> pb::AttemptRef {
    pb::AttemptRef {
        run_id: run.into(),
        task: task.into(),
        attempt,
    }
}

fn event(
    agent: &str,
    run: &str,
    task: &str,
    attempt: u32,
    at: Millis,
    kind: pb::attempt_event::Kind,
) -> Input {
    Input::AgentEvent {
        event: pb::AttemptEvent {
            attempt: Some(attempt_ref(run, task, attempt)),
            agent_id: agent.into(),
            at_ms: at,
            kind: Some(kind),
            started_at_ms: 0,
        },
        trace_id: String::new(),
    }
}

fn succeeded(agent: &str, run: &str, task: &str, attempt: u32, at: Millis) -> Input {
    let kind = pb::attempt_event::Kind::Succeeded(pb::AttemptSucceeded {
        log_empty: true,
        ..Default::default()
    });
    event(agent, run, task, attempt, at, kind)
}

fn failed(agent: &str, run: &str, task: &str, attempt: u32, at: Millis) -> Input {
    let kind = pb::attempt_event::Kind::Failed(pb::AttemptFailed {
        exit_code: Some(1),
        reason: "exited with code 1".into(),
        ..Default::default()
    });
    event(agent, run, task, attempt, at, kind)
}

fn run_key(id: &str) -> (RecordKey, bool) {
    (RecordKey::Run(RunId::new(id)), true)
}

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
    } = succeeded("a1", "r1", "t", 1, 1_500)
    else {
        return Err("not an event".into());
    };
    event.started_at_ms = 1_200;
    h.turn(vec![Input::AgentEvent { event, trace_id }]);
    let t = h.task("r1", "t").ok_or("t not stored")?;
    assert_eq!(
        (t.attempts[0].started_at_ms, t.attempts[0].finished_at_ms),
        (1_200, 1_500)
    );
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

/// Two runs on two agents through submit, a start, successes, an agent
/// lost and a late event, as inputs with their times: what the shell would
/// have recorded.
fn recorded_inputs(h: &mut Harness) -> Vec<(Millis, Vec<Input>)> {
    let submit = h.submit(
        "r1",
        &[
            ("prep", &[]),
            ("a", &["prep"]),
            ("b", &["prep"]),
            ("join", &["a", "b"]),
        ],
    );
    let other = h.submit("r2", &[("solo", &[])]);
    let started = |task: &str, attempt| {
        event(
            "a2",
            "r1",
            task,
            attempt,
            0,
            pb::attempt_event::Kind::Started(pb::AttemptStarted {}),
        )
    };
    vec![
        (
            1_000,
            vec![heartbeat("a1", 2, &[]), heartbeat("a2", 1, &[])],
        ),
        (1_010, vec![submit, other]),
        (1_020, vec![started("prep", 1)]),
        (1_100, vec![succeeded("a1", "r1", "prep", 1, 1_090)]),
        (1_200, vec![heartbeat("a2", 1, &[("r2", "solo", 1)])]),
        (9_000, vec![heartbeat("a1", 2, &[])]),
        (12_000, vec![Input::Tick]),
        (
            12_100,
            vec![
                succeeded("a1", "r1", "a", 1, 12_050),
                failed("a1", "r1", "b", 1, 12_060),
            ],
        ),
    ]
}

fn replay(h: &mut Harness, inputs: Vec<(Millis, Vec<Input>)>) -> Vec<TurnLog> {
    inputs
        .into_iter()
        .map(|(now, inputs)| {
            h.now = now;
            h.turn(inputs)
        })
        .collect()
}

#[test]
fn replaying_recorded_inputs_gives_the_same_outputs() {
    let mut first = Harness::new();
    let inputs = recorded_inputs(&mut first);
    let outputs = replay(&mut first, inputs.clone());
    let mut second = Harness::new();
    second.specs = first.specs.clone();
    second.next_reply = first.next_reply;
    let again = replay(&mut second, inputs);
    assert_eq!(outputs, again);
    assert_eq!(first.store.records, second.store.records);
    // The sequence did what it says. Bin-packing put prep on the smaller
    // agent, then a and b on one agent each.
    assert_eq!(
        outputs[1].assigned(),
        [("prep", 1, "a2"), ("solo", 1, "a1")]
    );
    assert_eq!(outputs[3].assigned(), [("a", 1, "a1"), ("b", 1, "a2")]);
    // a2, silent since 1,200, is lost at 12,000: b waits, a1 being full.
    let b_key = RecordKey::Task {
        run: RunId::new("r1"),
        task: drover_scheduler_core::ids::TaskIndex(2),
        name: "b".into(),
    };
    let a2_key = RecordKey::Agent(AgentId::new("a2"));
    assert_eq!(outputs[6].changes, [(b_key, true), (a2_key, true)]);
    assert!(outputs[6].assigned().is_empty());
    // a's success frees room for b's second attempt; b's late failure of
    // its lost attempt changes nothing.
    assert_eq!(outputs[7].assigned(), [("b", 2, "a1")]);
    let b = first.task("r1", "b");
    let states: Vec<_> = b
        .iter()
        .flat_map(|b| &b.attempts)
        .map(|a| a.state())
        .collect();
    assert_eq!(states, [pb::AttemptState::Lost, pb::AttemptState::Assigned]);
    assert_eq!(b.map(|b| b.retries_used), Some(0));
}

#[test]
fn a_state_loaded_from_what_it_committed_carries_on_the_same() {
    let mut original = Harness::new();
    let inputs = recorded_inputs(&mut original);
    let (before, after) = inputs.split_at(5);
    replay(&mut original, before.to_vec());

    // A second scheduler (or this one after a failed commit) loads from etcd.
    let mut loaded = Harness::new();
    loaded.specs = original.specs.clone();
    loaded.store.records = original.store.records.clone();
    loaded.store.revision = original.store.revision;
    loaded.next_reply = original.next_reply;
    loaded.now = original.now;
    let resumed = loaded.load();
    // It resends what may not have reached agents: assignments not yet started.
    assert!(!resumed.assigned().is_empty());
    assert!(resumed.changes.is_empty(), "{:?}", resumed.changes);
    // Heartbeats bring back the agents' live state; from there on the two agree.
    let hbs = vec![
        heartbeat("a1", 2, &[]),
        heartbeat("a2", 1, &[("r2", "solo", 1)]),
    ];
    replay(&mut original, vec![(1_300, hbs.clone())]);
    replay(&mut loaded, vec![(1_300, hbs)]);
    let a = replay(&mut original, after.to_vec());
    let b = replay(&mut loaded, after.to_vec());
    assert_eq!(a, b);
    assert_eq!(original.store.records, loaded.store.records);
}

#[test]
fn a_commit_conflict_surfaces_as_a_wrong_expected_revision() {
    // The memory store holds the state to etcd's contract: a record written
    // behind the state's back makes its next change fail.
    let mut h = Harness::new();
    h.turn(vec![heartbeat("a1", 4, &[])]);
    let key = RecordKey::Agent(AgentId::new("a1"));
    let sneaky = Change {
        key: key.clone(),
        value: Some(vec![]),
        expect: h.store.records.get(&key).map(|(_, rev)| *rev),
    };
    assert!(h.store.commit(vec![vec![sneaky]]).is_ok());
    let drain = h.request(Request::Drain {
        agent: AgentId::new("a1"),
        drained: true,
    });
    let mut turn = Turn::default();
    h.state.apply(drain, h.now, &mut turn);
    h.state.end_inputs(h.now, &mut turn);
    let groups = h.state.changes(&turn);
    assert!(h.store.commit(groups).is_err());
}

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
