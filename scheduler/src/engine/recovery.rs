//! Loading the state from etcd: at start, and after a failed commit (when
//! memory may hold what etcd does not). Runs come back through the DAG's
//! own restore, which also says what to resend (assignments that may not
//! have reached their agent, cancels still due).

use std::sync::Arc;

use tracing::info;

use drover_api::pb;
use drover_scheduler_core::dag::Effect;
use drover_scheduler_core::ids::{AttemptNumber, RunId, TaskIndex};
use drover_scheduler_core::Millis;

use crate::convert;
use crate::fleet::Allocation;
use crate::queues::{self, DEFAULT_QUEUE};
use crate::store::{LoadedRuns, StoredRun};

use super::records::Versioned;
use super::state::{ActiveRun, EngineState, Turn};

/// Everything the engine keeps in etcd, as read.
pub struct Stored {
    pub queues: Vec<(pb::Queue, i64)>,
    pub agents: Vec<(pb::AgentRecord, i64)>,
    pub runs: LoadedRuns,
    pub cache: Vec<(pb::CacheEntry, i64)>,
}

impl EngineState {
    /// Replaces queues, agent records and runs with what etcd holds. Agents'
    /// live state (their last heartbeat) is kept; their allocations are
    /// rebuilt from the runs.
    pub fn load(&mut self, stored: Stored, now: Millis, turn: &mut Turn) {
        self.queues.clear();
        for (queue, rev) in stored.queues {
            self.queues
                .insert(queue.name.clone(), Versioned::stored(queue, rev));
        }
        if !self.queues.contains_key(DEFAULT_QUEUE) {
            info!("creating the default queue");
            self.queues.insert(
                DEFAULT_QUEUE.into(),
                Versioned::created(queues::default_queue()),
            );
        }
        self.fleet.load(stored.agents, now);
        self.cache.load(stored.cache);
        self.runs.clear();
        self.ready.clear();
        self.fleet.clear_allocations();
        self.finished = stored.runs.finished;
        info!(
            runs = stored.runs.active.len(),
            "loaded active runs from etcd"
        );
        for run in stored.runs.active {
            self.restore_run(run, now, turn);
        }
    }

    fn restore_run(&mut self, s: StoredRun, now: Millis, turn: &mut Turn) {
        let (id, fx) = self.insert_stored_run(s, now);
        self.effects(&id, fx, now, turn);
    }

    /// Makes a stored run active again, with what its agents hold; returns
    /// its id and the effects its restore asks for.
    pub(super) fn insert_stored_run(&mut self, s: StoredRun, now: Millis) -> (RunId, Vec<Effect>) {
        let (dag, fx) = convert::restore(&s);
        let spec = Arc::clone(&s.spec);
        let mut tasks = vec![Versioned::stored((), 0); dag.tasks().len()];
        for (name, _, rev) in &s.tasks {
            if let Some(i) = dag.index_of(name) {
                tasks[i] = Versioned::stored((), *rev);
            }
        }
        let id = RunId::new(&s.record.id);
        let run = ActiveRun::new(Versioned::stored(s.record, s.rev), spec, dag, tasks);
        for (i, t) in run.dag.tasks().iter().enumerate() {
            if let (true, Some(a)) = (t.status.is_active(), t.current()) {
                // An agent that never comes back must still be noticed.
                self.fleet.expect(&a.agent, now);
                let allocation = Allocation {
                    agent: self.fleet.agent_id(&a.agent),
                    attempt: AttemptNumber(a.number),
                    req: run.requests[i].clone(),
                    gpus: a.gpus.iter().map(|g| (g.index, g.uuid.clone())).collect(),
                    // Not stored: after a restart running work counts as within quota.
                    borrowed: false,
                    lost_after: run.lost_after(i),
                };
                self.fleet.allocate(&id, TaskIndex(i), allocation);
                if let Some(key) = &a.cache_key {
                    self.reclaim(&id, TaskIndex(i), key);
                }
            }
        }
        self.runs.insert(id.clone(), run);
        (id, fx)
    }
}
