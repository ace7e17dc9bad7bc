//! Placing Ready tasks: one admission pass per turn, decided by the pure
//! core (`drover_scheduler_core::admission`: queue order, quotas, fair
//! shares, backfill and preemption); this applies its decision and keeps
//! why the rest wait ([`WaitBoard`]) for `drover get` and `queue show`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tracing::{debug, info};

use drover_api::pb;
use drover_scheduler_core::admission::{self, Wait};
use drover_scheduler_core::dag::{instance_name, Event, TaskStatus};
use drover_scheduler_core::ids::{AgentId, AttemptNumber, RunId, TaskIndex};
use drover_scheduler_core::Millis;

use crate::fleet::Allocation;
use crate::queues::{self, DEFAULT_QUEUE};

use super::state::{ActiveRun, EngineState, Turn};

/// A full admission pass (`--pass-depth` deep per queue, and the wait
/// reasons `drover get` and `queue show` report) runs at most this often;
/// the turns between run a quick pass over the first `QUICK_PASS_DEPTH`
/// Ready tasks of each queue, which only admits (Slurm's quick scheduler and
/// backfill cycle, in short). A full pass every turn cost ~1 ms of
/// scheduler CPU per turn with a 10,000-task backlog, for the handful of
/// tasks that finish between two turns (benches/README.md).
pub(super) const FULL_PASS_EVERY_MS: u64 = 250;
const QUICK_PASS_DEPTH: usize = 256;

/// The pass's pending and running inputs, kept for the next pass: rebuilt
/// every turn (thousands of entries with a backlog), fresh ones cost a large
/// allocation and free per turn (glibc's malloc_consolidate in the profile).
#[derive(Default)]
pub(super) struct PassBuffers {
    pending: Vec<admission::Pending<usize>>,
    running: Vec<admission::Running<usize>>,
}

/// Why each Ready task of a run waits.
#[derive(Debug, Default)]
pub struct Waiting {
    /// By task index: (reason, unschedulable), for the tasks the last pass looked at.
    pub tasks: HashMap<usize, (String, bool)>,
    /// Why the run's other Ready tasks wait: set when the pass stopped at
    /// its depth before reaching them.
    pub rest: Option<String>,
}

/// A run that had Ready tasks in the last admission pass.
#[derive(Debug)]
struct BoardRun {
    id: RunId,
    queue: String,
    priority: i64,
    /// For task names.
    spec: Arc<pb::PipelineSpec>,
    /// For the names of `for_each` instances, which follow the spec's
    /// tasks: each expanded task's first instance, count and name.
    expansions: Vec<(usize, usize, String)>,
    /// Some of its Ready tasks were past the pass's depth.
    beyond: bool,
}

impl BoardRun {
    /// The name of task `task`: from the spec, or a `for_each` instance's.
    fn task_name(&self, task: usize) -> String {
        if let Some(t) = self.spec.tasks.get(task) {
            return t.name.clone();
        }
        self.expansions
            .iter()
            .find(|(first, count, _)| (*first..first + count).contains(&task))
            .map(|(first, _, name)| instance_name(name, task - first))
            .unwrap_or_default()
    }
}

/// Why each Ready task waits, as the last admission pass decided, kept as
/// the pass returned it: rendered only when someone asks (`drover get`,
/// `drover queue show`), not for every waiting task every turn.
#[derive(Debug, Default)]
pub struct WaitBoard {
    runs: Vec<BoardRun>,
    /// (index into `runs`, task, why), in the pass's order: queues in
    /// serving order, each in the order it would admit its tasks.
    entries: Vec<(u32, TaskIndex, Wait)>,
    /// Ready tasks held back by their task's `max_parallel`: (index into
    /// `runs`, task, the task as written, its cap).
    capped: Vec<(u32, TaskIndex, String, u32)>,
    /// Set when no agent takes work: said instead of "no capacity" or
    /// "unschedulable".
    idle: Option<String>,
    /// The pass's depth per queue.
    depth: usize,
    /// Ready tasks waiting for an identical attempt's result: (run, task, why).
    identical: Vec<(RunId, usize, String)>,
}

impl WaitBoard {
    /// What `drover get` shows for the run's waiting tasks.
    pub fn waiting(&self, run_id: &str) -> Waiting {
        let identical = self
            .identical
            .iter()
            .filter(|(r, ..)| r.as_str() == run_id)
            .map(|(_, task, why)| (*task, (why.clone(), false)));
        let Some(slot) = self.runs.iter().position(|r| r.id == *run_id) else {
            return Waiting {
                tasks: identical.collect(),
                rest: None,
            };
        };
        let run = &self.runs[slot];
        let capped = self
            .capped
            .iter()
            .filter(|(s, ..)| *s as usize == slot)
            .map(|(_, task, group, cap)| {
                let why = format!("max_parallel: {cap} instances of `{group}` already running");
                (task.0, (why, false))
            });
        Waiting {
            tasks: self
                .entries
                .iter()
                .filter(|(s, ..)| *s as usize == slot)
                .map(|(_, task, wait)| (task.0, self.reason(wait)))
                .chain(capped)
                .chain(identical)
                .collect(),
            rest: run.beyond.then(|| {
                format!(
                    "queued: behind the first {} ready tasks of queue `{}` (--pass-depth)",
                    self.depth, run.queue
                )
            }),
        }
    }

    /// (reason, unschedulable).
    fn reason(&self, wait: &Wait) -> (String, bool) {
        match (wait, &self.idle) {
            // No agent takes work at all: say which and why, not "unschedulable".
            (Wait::NoCapacity(_) | Wait::Unschedulable(_), Some(idle)) => (idle.clone(), false),
            (Wait::Unschedulable(_), None) => (wait.to_string(), true),
            _ => (wait.to_string(), false),
        }
    }

    /// A queue's waiting tasks in the order it would admit them.
    pub fn positions(&self, queue: &str) -> Vec<pb::PendingTask> {
        let mut list = Vec::new();
        for (slot, task, wait) in &self.entries {
            let Some(run) = self.runs.get(*slot as usize).filter(|r| r.queue == queue) else {
                continue;
            };
            list.push(pb::PendingTask {
                position: list.len() as u32 + 1,
                run_id: run.id.to_string(),
                task: run.task_name(task.0),
                run_priority: run.priority,
                waiting_for: wait.kind().into(),
                reason: self.reason(wait).0,
            });
        }
        list
    }
}

/// A running attempt the pass may choose as a victim.
struct Victim {
    run: RunId,
    task: TaskIndex,
    attempt: AttemptNumber,
    reason: String,
}

impl EngineState {
    /// One admission pass over the Ready tasks.
    pub(super) fn place(&mut self, now: Millis, turn: &mut Turn) {
        // Runs that ended leave `ready` here; tasks that left Ready other
        // than by being admitted (a cancelled run) when the walk below meets them.
        let runs = &self.runs;
        self.ready
            .retain(|run, tasks| !tasks.is_empty() && runs.contains_key(run));
        // Nothing waits: no admission and no preemption, so skip building
        // the pass's inputs, which cost O(agents + running) per turn (a
        // 5,000-agent fleet's heartbeats spent most of the scheduler's CPU
        // here; see benches/README.md).
        if self.ready.is_empty() {
            self.set_board(WaitBoard::default(), turn);
            return;
        }
        let names: Vec<&str> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_deleted())
            .map(|(n, _)| n.as_str())
            .collect();
        let qindex: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let core_queues: Vec<admission::Queue> = names
            .iter()
            .map(|n| queues::to_core(self.queues[*n].get()))
            .collect();
        let queue_of = |run: &ActiveRun| {
            qindex
                .get(run.queue())
                .or_else(|| qindex.get(DEFAULT_QUEUE))
                .copied()
                .unwrap_or(0)
        };
        let agents = self.fleet.admission_slots();

        // Runs in the order a queue serves them (run priority, then submit
        // time), so the first `pass_depth` Ready tasks of each queue are the
        // ones the pass would put first anyway.
        let mut order: Vec<(&RunId, &ActiveRun, usize)> = self
            .ready
            .keys()
            .filter_map(|id| runs.get(id).map(|r| (id, r, queue_of(r))))
            .collect();
        order.sort_by(|(a_id, a, _), (b_id, b, _)| a.serving_order(b).then(a_id.cmp(b_id)));
        let mut taken = vec![0usize; names.len().max(1)];
        let mut left_ready: Vec<(RunId, TaskIndex)> = Vec::new();

        // Pending keys are (run slot, task): the runs are listed once, so no
        // run id is cloned per task.
        let mut board_runs: Vec<BoardRun> = Vec::new();
        let full = now.saturating_sub(self.full_pass_at) >= FULL_PASS_EVERY_MS;
        let depth = if full {
            self.opts.pass_depth
        } else {
            self.opts.pass_depth.min(QUICK_PASS_DEPTH)
        };
        let n = depth.min(self.ready.values().map(BTreeMap::len).sum());
        let mut pending_keys: Vec<(u32, TaskIndex)> = Vec::with_capacity(n);
        let mut pending = std::mem::take(&mut self.pass_buffers.pending);
        pending.clear();
        for (run_id, run, queue) in order {
            let tasks = &self.ready[run_id];
            board_runs.push(BoardRun {
                id: run_id.clone(),
                queue: run.queue().to_string(),
                priority: run.priority(),
                spec: Arc::clone(&run.spec),
                expansions: run
                    .dag
                    .run_state()
                    .expansions
                    .iter()
                    .filter_map(|&(task, count)| {
                        let first = run.dag.instances(task)?.start;
                        Some((first, count, run.task_name(TaskIndex(task)).to_owned()))
                    })
                    .collect(),
                beyond: false,
            });
            let slot = (board_runs.len() - 1) as u32;
            for task in tasks.keys() {
                if run.dag.task(task.0).status != TaskStatus::Ready {
                    left_ready.push((run_id.clone(), *task));
                    continue;
                }
                if taken[queue] >= depth {
                    board_runs[slot as usize].beyond = true;
                    break;
                }
                taken[queue] += 1;
                pending.push(admission::Pending {
                    key: pending_keys.len(),
                    queue,
                    run_priority: run.priority(),
                    submitted_at: run.record.get().created_at_ms,
                    seq: task.0 as u64,
                    req: run.requests[task.0].clone(),
                });
                pending_keys.push((slot, *task));
            }
        }
        for (run_id, task) in left_ready {
            if let Some(tasks) = self.ready.get_mut(&run_id) {
                tasks.remove(&task);
            }
        }
        if pending.is_empty() {
            self.pass_buffers.pending = pending;
            let board = WaitBoard {
                runs: board_runs,
                ..WaitBoard::default()
            };
            self.set_board(board, turn);
            return;
        }
        // Running keys borrow the allocation map's run ids; only victims are
        // copied out, after the pass.
        let mut running_keys: Vec<(&RunId, TaskIndex, AttemptNumber)> =
            Vec::with_capacity(self.fleet.allocated());
        let mut running = std::mem::take(&mut self.pass_buffers.running);
        running.clear();
        // Allocations come grouped by run (one run lookup each), and
        // bin-packing puts a run's consecutive tasks on the same agent:
        // remember the last agent, compared by its shared id's pointer,
        // rather than hashing or comparing ids per running task.
        let mut last_agent: Option<(&AgentId, Option<usize>)> = None;
        for (run_id, tasks) in self.fleet.allocations_by_run() {
            let Some(run) = self.runs.get(run_id) else {
                continue;
            };
            let queue = queue_of(run);
            for (&task, alloc) in tasks {
                let agent = match last_agent {
                    Some((id, a)) if id.same(&alloc.agent) => a,
                    _ => {
                        let a = agents.index.get(alloc.agent.as_str()).copied();
                        last_agent = Some((&alloc.agent, a));
                        a
                    }
                };
                let Some(agent) = agent else {
                    continue;
                };
                let t = run.dag.task(task.0);
                running.push(admission::Running {
                    key: running_keys.len(),
                    queue,
                    run_priority: run.priority(),
                    agent,
                    req: alloc.req.clone(),
                    gpus: alloc.gpus.clone(),
                    started_at: t.current().map_or(0, |a| a.assigned_at),
                    borrowed: alloc.borrowed,
                    preempting: t.preempting.is_some(),
                });
                running_keys.push((run_id, task, alloc.attempt));
            }
        }

        let decision = admission::schedule(
            &core_queues,
            &pending,
            &running,
            &agents.slots,
            self.opts.placement,
        );
        self.pass_buffers = PassBuffers { pending, running };
        let victims: Vec<Victim> = decision
            .evict
            .into_iter()
            .map(|e| {
                let (run, task, attempt) = running_keys[e.victim];
                Victim {
                    run: run.clone(),
                    task,
                    attempt,
                    reason: e.reason,
                }
            })
            .collect();
        drop(running_keys);

        // Instances under a `max_parallel` are offered like any task, and
        // the cap applies to what the pass admits: an instance that cannot
        // be placed takes no room from one that can. By run slot, each
        // group's room left (its cap less what holds an agent), filled in
        // when the run's first capped instance is admitted.
        let mut room: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut capped = Vec::new();
        for admit in decision.admit {
            let (slot, task) = pending_keys[admit.key];
            let run_id = &board_runs[slot as usize].id;
            let group = self.runs.get(run_id).and_then(|run| {
                let caps = run.caps.as_ref()?;
                Some((caps, caps.group_of[task.0]?))
            });
            if let Some((caps, g)) = group {
                let left = room.entry(slot).or_insert_with(|| {
                    let mut left: Vec<u32> = caps.groups.iter().map(|(_, cap)| *cap).collect();
                    let running = self.fleet.allocations_by_run().get(run_id);
                    for held in running.into_iter().flat_map(|tasks| tasks.keys()) {
                        if let Some(g) = caps.group_of[held.0] {
                            left[g] = left[g].saturating_sub(1);
                        }
                    }
                    left
                });
                if left[g] == 0 {
                    let (name, cap) = &caps.groups[g];
                    capped.push((slot, task, name.clone(), *cap));
                    continue;
                }
                left[g] -= 1;
            }
            let agent = agents.slots[admit.placement.agent].id.clone();
            let agent_id = self.fleet.agent_id(&agent);
            let Some(run) = self.runs.get_mut(run_id) else {
                continue;
            };
            let ev = Event::Assign {
                cache_key: run.cache_keys.get(&task.0).cloned(),
                task: task.0,
                agent,
                gpus: agents.slots[admit.placement.agent].given_gpus(&admit.placement.gpus),
            };
            match run.dag.apply(ev, now) {
                Ok(fx) => {
                    let attempt = run.dag.task(task.0).current().map_or(0, |a| a.number);
                    let req = run.requests[task.0].clone();
                    if let Some(since) = self.ready.get_mut(run_id).and_then(|t| t.remove(&task)) {
                        self.metrics
                            .observe_admission(run.queue(), now.saturating_sub(since));
                    }
                    self.fleet.allocate(
                        run_id,
                        task,
                        Allocation {
                            agent: agent_id,
                            attempt: AttemptNumber(attempt),
                            req,
                            gpus: admit.placement.gpus,
                            borrowed: admit.borrowed,
                            lost_after: run.lost_after(task.0),
                        },
                    );
                    self.effects(run_id, fx, now, turn);
                }
                Err(stale) => debug!(run = %run_id, reason = %stale.0, "not placed"),
            }
        }
        for victim in victims {
            info!(run = %victim.run, task = victim.task.0, attempt = victim.attempt.0, reason = %victim.reason, "preempting");
            let ev = Event::Preempt {
                task: victim.task.0,
                attempt: victim.attempt.0,
                reason: victim.reason,
            };
            self.apply_to(&victim.run, ev, now, turn);
        }

        // Why the rest wait is kept as the pass said it and rendered only
        // when asked: formatting it for every waiting task every turn cost
        // several allocations per task.
        if !full {
            // The board stays as the last full pass left it, until the next.
            self.board_stale = true;
            return;
        }
        self.full_pass_at = now;
        let entries = decision
            .waiting
            .into_iter()
            .map(|(key, wait)| {
                let (slot, task) = pending_keys[key];
                (slot, task, wait)
            })
            .collect();
        let idle = (agents.schedulable == 0).then(|| self.fleet.idle_reason());
        self.set_board(
            WaitBoard {
                runs: board_runs,
                entries,
                capped,
                idle,
                depth,
                identical: Vec::new(),
            },
            turn,
        );
    }

    /// The last pass's waits, for `drover get` and `queue show`.
    fn set_board(&mut self, mut board: WaitBoard, turn: &mut Turn) {
        // Up to date now (also when nothing waits: no full pass is due then).
        self.board_stale = false;
        board.identical = self.cache.waits();
        let board = Arc::new(board);
        self.board = Arc::clone(&board);
        turn.board = Some(board);
    }
}
