//! `EngineState` driven directly: inputs in, changes and sends out — no
//! etcd, no NATS. Commits go to [`MemoryStore`], which keeps what a turn
//! wrote and enforces the same compare-and-swap contract as `Store::commit`
//! (a change must name the revision the key has, or none for a new key), so
//! every test also checks that the state tracks its revisions right; a
//! state loaded back from it must carry on exactly as the original.
//!
//! Here the harness; `inputs` has a test per kind of input, `replay` the
//! recorded sequences, `sweeps_and_retries` max_parallel and retry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use drover_api::{naming, pb};
use drover_scheduler_core::ids::{AgentId, AttemptId, RunId};
use drover_scheduler_core::placement::Strategy;
use drover_scheduler_core::Millis;

use super::*;
use crate::metrics::SchedulerMetrics;
use crate::store::{Change, LoadedRuns, RecordKey, Revisions, StoredRun};

mod cache;
mod inputs;
mod replay;
mod sweeps_and_retries;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options() -> EngineOptions {
    EngineOptions {
        agent_timeout: Duration::from_secs(10),
        cancel_grace: Duration::from_secs(5),
        preemption_grace: Duration::from_secs(30),
        placement: Strategy::BinPack,
        pass_depth: 1000,
        cache_ttl: crate::options::DEFAULT_CACHE_TTL,
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
        let mut cache = Vec::new();
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
                RecordKey::Cache(_) => cache.push((
                    pb::CacheEntry::decode(value.as_slice()).unwrap_or_default(),
                    *rev,
                )),
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
            cache,
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
        via: agent.into(),
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
