//! A turn's writes: collected from the records it changed as groups of
//! [`Change`]s (a run's tasks with its record, the record last, so a run is
//! never seen half-changed), and settled from the [`Revisions`] the store
//! returns once they are committed.

use prost::Message;

use drover_api::pb;
use drover_scheduler_core::ids::{RunId, TaskIndex};

use crate::convert;
use crate::store::{Change, RecordKey};

use super::records::{PendingWrite, Revisions};
use super::state::{EngineState, Turn};

impl EngineState {
    /// What the turn must commit, in groups that belong together. Marks
    /// the records of the tasks each touched run's DAG changed.
    pub fn changes(&mut self, turn: &Turn) -> Vec<Vec<Change>> {
        let mut groups = Vec::new();
        for run_id in &turn.touched {
            let Some(run) = self.runs.get_mut(run_id) else {
                continue;
            };
            let (run_changed, tasks) = run.dag.take_dirty();
            if run_changed {
                run.record.mark();
            }
            let mut group = Vec::new();
            for t in tasks {
                let state = run.dag.task(t);
                // A task with no attempt is derived from its upstream tasks;
                // one stored before (a retried `when:` skip) is kept in step.
                if !state.needs_record() && !run.tasks[t].exists() {
                    continue;
                }
                run.tasks[t].mark();
                let key = RecordKey::Task {
                    run: run_id.clone(),
                    task: TaskIndex(t),
                    name: run.dag.defs()[t].name.clone(),
                };
                let encode = |_: &()| convert::task_record(state).encode_to_vec();
                group.extend(run.tasks[t].change(key, encode));
            }
            let dag = &run.dag;
            let encode = |r: &pb::RunRecord| convert::run_record(r, dag).encode_to_vec();
            group.extend(run.record.change(RecordKey::Run(run_id.clone()), encode));
            if !group.is_empty() {
                groups.push(group);
            }
        }
        for (id, record) in self.fleet.unsaved_records() {
            let key = RecordKey::Agent(id.clone());
            groups.extend(record.change(key, |r| r.encode_to_vec()).map(|c| vec![c]));
        }
        for (name, queue) in &self.queues {
            let key = RecordKey::Queue(name.clone());
            let encode = |q: &pb::Queue| {
                let record = pb::QueueRecord {
                    queue: Some(q.clone()),
                };
                record.encode_to_vec()
            };
            groups.extend(queue.change(key, encode).map(|c| vec![c]));
        }
        // Each entry alone: they are independent, so they fill the turn's
        // transactions' room rather than forming a group that is split
        // (and committed in order) when a turn ends many tasks.
        groups.extend(self.cache.changes().into_iter().map(|c| vec![c]));
        groups
    }

    /// The turn's changes were committed at these revisions.
    pub fn committed(&mut self, revisions: &Revisions) {
        for (key, rev) in revisions {
            let rev = *rev;
            match key {
                RecordKey::Run(run) => {
                    if let Some(r) = self.runs.get_mut(run) {
                        r.record.committed(rev);
                    }
                }
                RecordKey::Task { run, task, .. } => {
                    let record = self
                        .runs
                        .get_mut::<RunId>(run)
                        .and_then(|r| r.tasks.get_mut(task.0));
                    if let Some(record) = record {
                        record.committed(rev);
                    }
                }
                RecordKey::Agent(id) => self.fleet.record_committed(id.as_str(), rev),
                RecordKey::Cache(key) => self.cache.committed(key, rev),
                RecordKey::Queue(name) => {
                    let deleted = self
                        .queues
                        .get(name)
                        .is_some_and(|q| q.pending() == Some(PendingWrite::Delete));
                    if deleted {
                        self.queues.remove(name);
                    } else if let Some(q) = self.queues.get_mut(name) {
                        q.committed(rev);
                    }
                }
            }
        }
    }
}
