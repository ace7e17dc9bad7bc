//! Requests from the API: submit, cancel, drain, queues, priorities — and
//! the views they answer with.

use std::sync::Arc;

use drover_api::pb;
use drover_scheduler_core::dag::{Event, RetryRefusal, TaskStatus};
use drover_scheduler_core::ids::{RunId, TaskIndex};
use drover_scheduler_core::queue_rules::{self, QueueEdit, QueueFacts, QueueRefusal};
use drover_scheduler_core::Millis;
use tracing::info;

use crate::error::SchedulerError;
use crate::queues::DEFAULT_QUEUE;
use crate::store::StoredRun;

use super::handle::{Request, Response};
use super::records::Versioned;
use super::state::{ActiveRun, AfterCommit, Answer, EngineState, Turn};

impl EngineState {
    pub(super) fn request(&mut self, request: Request, now: Millis, turn: &mut Turn) -> Answer {
        let after = |a| Answer::AfterCommit(a);
        match request {
            Request::Submit { record, spec } => {
                if !self.queue_exists(&record.queue) {
                    return Answer::now(Err(SchedulerError::QueueNotFound(record.queue.clone())));
                }
                self.add_run(*record, spec, now, turn);
                after(AfterCommit::Done)
            }
            Request::Adopt { stored } => {
                let id = RunId::new(&stored.record.id);
                // A reload after a failed commit may have read it already.
                if !self.runs.contains_key(&id) {
                    info!(run = %id, pipeline = %stored.spec.name, "run started by a trigger");
                    let (id, fx) = self.insert_stored_run(Arc::unwrap_or_clone(stored), now);
                    self.effects(&id, fx, now, turn);
                }
                after(AfterCommit::Done)
            }
            Request::Cancel { run } => {
                if !self.runs.contains_key(&run) {
                    return Answer::now(Ok(Response::Active(false)));
                }
                self.apply_to(&run, Event::Cancel, now, turn);
                after(AfterCommit::Active)
            }
            Request::ListAgents => {
                let views = self
                    .fleet
                    .entries()
                    .filter_map(|a| self.agent_view(a.id().as_str()))
                    .collect();
                Answer::now(Ok(Response::Agents(views)))
            }
            Request::Drain { agent, drained } => {
                match self.fleet.set_drained(agent.as_str(), drained) {
                    Some(()) => after(AfterCommit::Agent(agent)),
                    None => Answer::now(Err(SchedulerError::AgentNotFound(agent.to_string()))),
                }
            }
            Request::PutQueue { queue, create } => {
                let edit = if create {
                    QueueEdit::Create
                } else {
                    QueueEdit::Update
                };
                let name = queue.name.clone();
                if let Err(refusal) = self.check_queue(edit, &name) {
                    return Answer::now(Err(refused(refusal, name)));
                }
                match self.queues.get_mut(&name).filter(|q| !q.is_deleted()) {
                    Some(entry) => {
                        info!(queue = %name, "queue updated");
                        // Pause and resume have their own calls: an update
                        // read before a pause must not undo it.
                        let paused = entry.get().paused;
                        *entry.modify() = pb::Queue { paused, ..queue };
                    }
                    None => {
                        info!(queue = %name, "queue created");
                        self.queues.insert(name.clone(), Versioned::created(queue));
                    }
                }
                after(AfterCommit::Queue(name))
            }
            Request::SetPaused { name, paused } => {
                if let Err(refusal) = self.check_queue(QueueEdit::SetPaused, &name) {
                    return Answer::now(Err(refused(refusal, name)));
                }
                if let Some(entry) = self.queues.get_mut(&name) {
                    if entry.get().paused != paused {
                        info!(queue = %name, paused, "queue paused state changed");
                        entry.modify().paused = paused;
                    }
                }
                after(AfterCommit::Queue(name))
            }
            Request::DeleteQueue { name } => {
                if let Err(refusal) = self.check_queue(QueueEdit::Delete, &name) {
                    return Answer::now(Err(refused(refusal, name)));
                }
                if let Some(entry) = self.queues.get_mut(&name) {
                    info!(queue = %name, "queue deleted");
                    entry.delete();
                }
                after(AfterCommit::Done)
            }
            Request::ListQueues => {
                let statuses = self
                    .queues
                    .keys()
                    .filter_map(|name| self.queue_status(name))
                    .collect();
                Answer::now(Ok(Response::Queues(statuses)))
            }
            Request::ShowQueue { name } => {
                let detail = self
                    .queue_status(&name)
                    .map(|status| {
                        Response::QueueDetail(pb::QueueDetail {
                            status: Some(status),
                            pending: self.pending_list(&name),
                        })
                    })
                    .ok_or(SchedulerError::QueueNotFound(name));
                Answer::now(detail)
            }
            Request::SetRunPriority { run, priority } => match self.runs.get_mut(&run) {
                Some(active) => {
                    if active.priority() != priority {
                        info!(run = %run, priority, "run priority changed");
                        active.record.modify().priority = priority;
                        turn.touched.insert(run);
                    }
                    after(AfterCommit::Active)
                }
                None => Answer::now(Ok(Response::Active(false))),
            },
            Request::Retry { stored, tasks } => match self.retry(&stored, &tasks, now, turn) {
                Ok(()) => after(AfterCommit::Done),
                Err(e) => Answer::now(Err(e)),
            },
            Request::ListCache { task } => {
                Answer::now(Ok(Response::CacheEntries(self.cache.list(&task))))
            }
            Request::ForgetCache { key, run } => {
                let n = self.cache.forget_matching(&key, &run);
                info!(forgotten = n, "cache entries forgotten");
                after(AfterCommit::Forgotten(n))
            }
        }
    }

    /// `drover retry`: the run as etcd holds it becomes active again, and
    /// its DAG decides what runs again.
    fn retry(
        &mut self,
        stored: &StoredRun,
        tasks: &[String],
        now: Millis,
        turn: &mut Turn,
    ) -> Result<(), SchedulerError> {
        let id = RunId::new(&stored.record.id);
        // Active here, or active as read (it may have ended since the read:
        // then the caller asks again and reads it finished).
        if self.runs.contains_key(&id) || crate::store::is_active(stored.record.state()) {
            return Err(SchedulerError::FailedPrecondition(format!(
                "run `{id}` is still running; wait for it to end or cancel it first"
            )));
        }
        let queue = &stored.record.queue;
        if !self.queue_exists(queue) {
            return Err(SchedulerError::FailedPrecondition(format!(
                "run `{id}` waited in queue `{queue}`, which no longer exists; create it again to retry the run"
            )));
        }
        let state = stored.record.state();
        // Finished: it holds no agent, so nothing is allocated here.
        let (id, fx) = self.insert_stored_run(stored.clone(), now);
        let Some(run) = self.runs.get_mut(&id) else {
            return Err(SchedulerError::RunNotFound(id.to_string()));
        };
        let rerun = match tasks_named(run, tasks) {
            Ok(rerun) => rerun,
            Err(task) => {
                self.runs.remove(&id);
                return Err(if task.is_empty() {
                    SchedulerError::InvalidArgument {
                        field: "tasks",
                        message: "a task name is empty".into(),
                    }
                } else {
                    SchedulerError::TaskNotFound {
                        run: id.to_string(),
                        task,
                    }
                });
            }
        };
        match run.dag.retry(&rerun, now) {
            Ok((again, more)) => {
                info!(run = %id, tasks = again.len(), "run retried");
                // Tasks named to run again must run, not take the result
                // they made before from the cache; nor what follows them.
                if !rerun.is_empty() {
                    run.record.modify().no_cache = true;
                }
                if let Some(n) = self.finished.get_mut(&state) {
                    *n = n.saturating_sub(1);
                }
                self.effects(&id, fx.into_iter().chain(more).collect(), now, turn);
                Ok(())
            }
            Err(refusal) => {
                self.runs.remove(&id);
                Err(SchedulerError::FailedPrecondition(match refusal {
                    RetryRefusal::NotFinished(status) => {
                        format!(
                            "run `{id}` is still {status:?}; wait for it to end or cancel it first"
                        )
                    }
                    RetryRefusal::AllSucceeded => {
                        format!("run `{id}` succeeded; name the tasks to run again (--task NAME)")
                    }
                }))
            }
        }
    }

    fn queue_exists(&self, name: &str) -> bool {
        self.queues.get(name).is_some_and(|q| !q.is_deleted())
    }

    fn check_queue(&self, edit: QueueEdit, name: &str) -> Result<(), QueueRefusal> {
        let facts = QueueFacts {
            // A queue deleted this turn is still in etcd until the commit:
            // creating it again waits for that.
            exists: match edit {
                QueueEdit::Create => self.queues.contains_key(name),
                _ => self.queue_exists(name),
            },
            is_default: name == DEFAULT_QUEUE,
            active_runs: self.runs.values().filter(|r| r.queue() == name).count(),
        };
        queue_rules::check(edit, facts)
    }

    /// The queue's settings with its usage now, or None if there is no such queue.
    pub(super) fn queue_status(&self, name: &str) -> Option<pb::QueueStatus> {
        let entry = self.queues.get(name).filter(|e| !e.is_deleted())?;
        let mut used = pb::ResourceUsage::default();
        let mut borrowed = pb::ResourceUsage::default();
        let mut running = 0;
        for (run, _, a) in self.fleet.allocations() {
            if self.runs.get(run).is_none_or(|r| r.queue() != name) {
                continue;
            }
            running += 1;
            let add = |u: &mut pb::ResourceUsage| {
                u.cpu_millis += a.req.cpu_millis;
                u.memory_bytes += a.req.memory_bytes;
                u.gpus += a.req.gpus;
            };
            add(&mut used);
            if a.borrowed {
                add(&mut borrowed);
            }
        }
        // `ready` may still hold tasks that left Ready without being admitted.
        let pending = self
            .ready
            .iter()
            .filter_map(|(run, tasks)| {
                let r = self.runs.get(run).filter(|r| r.queue() == name)?;
                let ready = |t: &&TaskIndex| r.dag.task(t.0).status == TaskStatus::Ready;
                Some(tasks.keys().filter(ready).count())
            })
            .sum::<usize>() as u32;
        let runs = self.runs.values().filter(|r| r.queue() == name).count() as u32;
        Some(pb::QueueStatus {
            queue: Some(entry.get().clone()),
            used: Some(used),
            borrowed: Some(borrowed),
            pending,
            running,
            runs,
        })
    }

    /// Waiting tasks of a queue: those the last pass ordered, then those
    /// still waiting for upstream tasks.
    fn pending_list(&self, name: &str) -> Vec<pb::PendingTask> {
        let mut list = self.board.positions(name);
        let mut blocked: Vec<(&ActiveRun, usize)> = Vec::new();
        for run in self.runs.values().filter(|r| r.queue() == name) {
            for (i, t) in run.dag.tasks().iter().enumerate() {
                if t.status == TaskStatus::Pending {
                    blocked.push((run, i));
                }
            }
        }
        blocked.sort_by(|(a, i), (b, j)| a.serving_order(b).then(i.cmp(j)));
        for (run, i) in blocked {
            let deps: Vec<&str> = run.dag.defs()[i]
                .deps
                .iter()
                .filter(|&&d| run.dag.task(d).status != TaskStatus::Succeeded)
                .map(|&d| run.dag.defs()[d].name.as_str())
                .collect();
            list.push(pb::PendingTask {
                position: list.len() as u32 + 1,
                run_id: run.record.get().id.clone(),
                task: run.dag.defs()[i].name.clone(),
                run_priority: run.priority(),
                waiting_for: "dependencies".into(),
                reason: format!("waiting for {}", deps.join(", ")),
            });
        }
        list
    }

    pub(super) fn agent_view(&self, id: &str) -> Option<pb::Agent> {
        self.fleet
            .view(id, |run, task, attempt| self.describe(run, task, attempt))
    }
}

/// The task indices `names` stand for (a task with a matrix for all its
/// instances), or the first name that stands for none.
fn tasks_named(run: &ActiveRun, names: &[String]) -> Result<Vec<usize>, String> {
    let mut tasks = Vec::with_capacity(names.len());
    for name in names {
        match (run.dag.index_of(name), run.matrices.get(name)) {
            (Some(i), _) => {
                tasks.push(i);
                // A `for_each` task names all its instances too.
                tasks.extend(run.dag.instances(i).into_iter().flatten());
            }
            (None, Some(instances)) => tasks.extend(instances.iter().map(|t| t.0)),
            (None, None) => return Err(name.clone()),
        }
    }
    Ok(tasks)
}

fn refused(refusal: QueueRefusal, name: String) -> SchedulerError {
    match refusal {
        QueueRefusal::NotFound => SchedulerError::QueueNotFound(name),
        QueueRefusal::AlreadyExists => SchedulerError::QueueExists(name),
        QueueRefusal::DefaultUndeletable => SchedulerError::FailedPrecondition(format!(
            "the `{DEFAULT_QUEUE}` queue cannot be deleted"
        )),
        QueueRefusal::InUse { active_runs } => SchedulerError::FailedPrecondition(format!(
            "queue `{name}` holds {active_runs} active run(s); cancel them or let them finish first"
        )),
    }
}
