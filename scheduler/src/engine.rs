//! The scheduler loop: the one owner of in-memory run and fleet state.
//!
//! Each turn drains what is waiting (API commands, agent events, heartbeats,
//! answers to assign/cancel requests, timers), lets the pure core decide,
//! places ready tasks, commits every changed key to etcd in as few
//! transactions as possible (group commit), and only then sends assignments
//! and cancels, acks the agent events — once per turn: the consumer acks
//! everything up to the turn's last event (`AckPolicy::All`) — and answers
//! the API callers. If a commit fails, nothing is sent or acked: the loop
//! reloads its state from etcd and applies the turn's events again (a later
//! ack would cover them, so they are not left to redelivery).
//!
//! Tracing: each assignment carries its attempt span's context (derived from
//! the run's stored trace id, so it is the same after a restart); the
//! attempt spans and the run's root span are emitted from the recorded
//! timestamps once they end and their end is committed (see
//! `drover_telemetry` for the design).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use drover_api::{naming, pb};
use drover_scheduler_core::admission::{self, Wait};
use drover_scheduler_core::dag::{AttemptStatus, Effect, Event, RunDag, TaskStatus};
use drover_scheduler_core::placement::{Request, Strategy};
use drover_telemetry::record::{self, RecordedSpan};
use drover_telemetry::{propagation, KeyValue};

use crate::bus::Bus;
use crate::convert;
use crate::error::{Result, SchedulerError};
use crate::fleet::{Allocation, AttemptId, Fleet};
use crate::metrics::{SchedulerMetrics, Snapshot};
use crate::queues::{self, DEFAULT_QUEUE};
use crate::store::{Store, StoredRun, Write};

/// Most items one turn takes before committing.
const MAX_BATCH: usize = 1024;
/// How often silent agents are looked for.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// Least time between two metrics snapshots: deriving one walks every
/// active task, which busy turns need not do each time. Idle, the liveness
/// tick still brings a turn (and a snapshot) every second.
const METRICS_EVERY_MS: u64 = 250;
/// A full admission pass (`--pass-depth` deep per queue, and the wait
/// reasons `drover get` and `queue show` report) runs at most this often;
/// the turns between run a quick pass over the first `QUICK_PASS_DEPTH`
/// Ready tasks of each queue, which only admits (Slurm's quick scheduler and
/// backfill cycle, in short). A full pass every turn cost ~1 ms of
/// scheduler CPU per turn with a 10,000-task backlog, for the handful of
/// tasks that finish between two turns (benches/README.md).
const FULL_PASS_EVERY_MS: u64 = 250;
const QUICK_PASS_DEPTH: usize = 256;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub enum Command {
    /// Store and start a new run (its record is already validated).
    Submit {
        record: Box<pb::RunRecord>,
        spec: Arc<pb::PipelineSpec>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Cancel a run; answers false when the run is not active here.
    Cancel {
        run_id: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    ListAgents {
        reply: oneshot::Sender<Result<Vec<pb::Agent>>>,
    },
    /// Drain (true) or undrain (false) an agent.
    Drain {
        agent: String,
        drained: bool,
        reply: oneshot::Sender<Result<pb::Agent>>,
    },
    /// Create (`create`) or replace the settings of a queue (already validated).
    PutQueue {
        queue: pb::Queue,
        create: bool,
        reply: oneshot::Sender<Result<pb::Queue>>,
    },
    SetPaused {
        name: String,
        paused: bool,
        reply: oneshot::Sender<Result<pb::Queue>>,
    },
    DeleteQueue {
        name: String,
        reply: oneshot::Sender<Result<()>>,
    },
    ListQueues {
        reply: oneshot::Sender<Result<Vec<pb::QueueStatus>>>,
    },
    ShowQueue {
        name: String,
        reply: oneshot::Sender<Result<pb::QueueDetail>>,
    },
    /// Answers false when the run is not active here.
    SetRunPriority {
        run_id: String,
        priority: i64,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// Outcomes of requests the loop sent to agents.
enum Internal {
    AssignFailed {
        run: String,
        task: usize,
        attempt: u32,
        agent: String,
        reason: String,
    },
    CancelGone {
        run: String,
        task: usize,
        attempt: u32,
        reason: String,
    },
}

/// Why each Ready task of a run waits, by task index: (reason, unschedulable).
#[derive(Debug, Default)]
pub struct Waiting {
    /// By task index: (reason, unschedulable), for the tasks the last pass looked at.
    pub tasks: HashMap<usize, (String, bool)>,
    /// Why the run's other Ready tasks wait: set when the pass stopped at
    /// its depth before reaching them.
    pub rest: Option<String>,
}

/// A run that had Ready tasks in the last admission pass.
struct BoardRun {
    id: String,
    queue: String,
    priority: i64,
    /// For task names.
    spec: Arc<pb::PipelineSpec>,
    /// Some of its Ready tasks were past the pass's depth.
    beyond: bool,
}

/// Why each Ready task waits, as the last admission pass decided, kept as
/// the pass returned it: rendered only when someone asks (`drover get`,
/// `drover queue show`), not for every waiting task every turn.
#[derive(Default)]
struct WaitBoard {
    runs: Vec<BoardRun>,
    /// (index into `runs`, task index, why), in the pass's order: queues in
    /// serving order, each in the order it would admit its tasks.
    entries: Vec<(u32, usize, Wait)>,
    /// Set when no agent takes work: said instead of "no capacity" or
    /// "unschedulable".
    idle: Option<String>,
    /// The pass's depth per queue.
    depth: usize,
}

impl WaitBoard {
    /// What `drover get` shows for the run's waiting tasks.
    fn waiting(&self, run_id: &str) -> Waiting {
        let Some(slot) = self.runs.iter().position(|r| r.id == run_id) else {
            return Waiting::default();
        };
        let run = &self.runs[slot];
        Waiting {
            tasks: self
                .entries
                .iter()
                .filter(|(s, ..)| *s as usize == slot)
                .map(|(_, task, wait)| (*task, self.reason(wait)))
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
    fn positions(&self, queue: &str) -> Vec<pb::PendingTask> {
        let mut list = Vec::new();
        for (slot, task, wait) in &self.entries {
            let Some(run) = self.runs.get(*slot as usize).filter(|r| r.queue == queue) else {
                continue;
            };
            list.push(pb::PendingTask {
                position: list.len() as u32 + 1,
                run_id: run.id.clone(),
                task: run
                    .spec
                    .tasks
                    .get(*task)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                run_priority: run.priority,
                waiting_for: wait.kind().into(),
                reason: self.reason(wait).0,
            });
        }
        list
    }
}

/// Cheap handle for the gRPC layer.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    changed: broadcast::Sender<String>,
    waiting: Arc<Mutex<Arc<WaitBoard>>>,
}

impl EngineHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SchedulerError::ShuttingDown)?;
        rx.await.map_err(|_| SchedulerError::ShuttingDown)?
    }

    /// Creates a run. The caller has written its spec (`Store::put_spec`);
    /// the run record written here is the commit point.
    pub async fn submit(&self, record: pb::RunRecord, spec: Arc<pb::PipelineSpec>) -> Result<()> {
        self.call(|reply| Command::Submit {
            record: Box::new(record),
            spec,
            reply,
        })
        .await
    }

    pub async fn cancel(&self, run_id: String) -> Result<bool> {
        self.call(|reply| Command::Cancel { run_id, reply }).await
    }

    pub async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        self.call(|reply| Command::ListAgents { reply }).await
    }

    pub async fn drain(&self, agent: String, drained: bool) -> Result<pb::Agent> {
        self.call(|reply| Command::Drain {
            agent,
            drained,
            reply,
        })
        .await
    }

    pub async fn put_queue(&self, queue: pb::Queue, create: bool) -> Result<pb::Queue> {
        self.call(|reply| Command::PutQueue {
            queue,
            create,
            reply,
        })
        .await
    }

    pub async fn set_paused(&self, name: String, paused: bool) -> Result<pb::Queue> {
        self.call(|reply| Command::SetPaused {
            name,
            paused,
            reply,
        })
        .await
    }

    pub async fn delete_queue(&self, name: String) -> Result<()> {
        self.call(|reply| Command::DeleteQueue { name, reply })
            .await
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::QueueStatus>> {
        self.call(|reply| Command::ListQueues { reply }).await
    }

    pub async fn show_queue(&self, name: String) -> Result<pb::QueueDetail> {
        self.call(|reply| Command::ShowQueue { name, reply }).await
    }

    pub async fn set_run_priority(&self, run_id: String, priority: i64) -> Result<bool> {
        self.call(|reply| Command::SetRunPriority {
            run_id,
            priority,
            reply,
        })
        .await
    }

    /// Ids of runs as their changes are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Why the run's Ready tasks are not placed yet (kept in memory only:
    /// it changes with every heartbeat).
    pub fn waiting(&self, run_id: &str) -> Waiting {
        // Cloned out so the lock is not held while rendering.
        let board = self.waiting.lock().map(|w| Arc::clone(&w)).ok();
        board.map(|b| b.waiting(run_id)).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub nats_prefix: String,
    pub agent_timeout: Duration,
    pub cancel_grace: Duration,
    pub preemption_grace: Duration,
    pub placement: Strategy,
    /// How many Ready tasks of each queue one admission pass looks at, in
    /// the queue's order (`--pass-depth`; Slurm's `default_queue_depth`
    /// plays this part). Looking at the whole backlog made every turn
    /// O(backlog) — ~0.25 ms of scheduler CPU per task with 100,000
    /// waiting — while only as many tasks as there is room for can start.
    /// The rest keep their places; backfill looks no deeper than this either.
    pub pass_depth: usize,
}

struct ActiveRun {
    /// Params, queue and creation time; run-level state comes from `dag`.
    record: pb::RunRecord,
    /// Never changes; shared with readers.
    spec: Arc<pb::PipelineSpec>,
    dag: RunDag,
    rev: i64,
    task_revs: Vec<i64>,
    requests: Vec<Request>,
    /// The record itself changed (priority), not only its run state.
    record_dirty: bool,
}

/// A queue as the engine keeps it: settings, etcd revision, pending write.
struct QueueEntry {
    queue: pb::Queue,
    rev: i64,
    /// None: nothing to write; Some(false): put; Some(true): delete.
    write: Option<bool>,
}

enum Send {
    /// The assignment, its agent, the task index and the attempt span's
    /// `traceparent` (empty: none).
    Assign(Box<pb::Assignment>, String, usize, String),
    Cancel(pb::CancelAttempt, String, Option<usize>),
}

/// A turn's assignments to one agent: the request, and each one's run,
/// task index and attempt, in its order.
#[derive(Default)]
struct AssignBatch {
    request: pb::AssignBatch,
    tasks: Vec<(String, usize, u32)>,
}

enum Reply {
    Submit(oneshot::Sender<Result<()>>),
    Cancel(oneshot::Sender<Result<bool>>),
    Agent(oneshot::Sender<Result<pb::Agent>>, String),
    Queue(oneshot::Sender<Result<pb::Queue>>, String),
    Done(oneshot::Sender<Result<()>>),
    Flag(oneshot::Sender<Result<bool>>),
}

/// What one turn owes the world once its commit succeeds.
#[derive(Default)]
struct Turn {
    touched: HashSet<String>,
    sends: Vec<(String, Send)>,
    /// The agent events applied this turn: the one with the highest stream
    /// sequence is acked once the turn is committed, which acks them all.
    events: Vec<jetstream::Message>,
    replies: Vec<Reply>,
    placement_needed: bool,
    /// Spans that ended this turn, exported once it is committed.
    spans: Vec<RecordedSpan>,
}

enum Item {
    Cmd(Command),
    Event(Box<jetstream::Message>),
    Heartbeat(async_nats::Message),
    Internal(Internal),
    Tick,
}

pub struct Engine {
    store: Store,
    /// Shared with the tasks that send assignments and acks: cloning a
    /// `Bus` clones a NATS client handle, which allocates (per assignment).
    bus: Arc<Bus>,
    opts: EngineOptions,
    runs: HashMap<String, ActiveRun>,
    fleet: Fleet,
    /// Ready tasks not yet admitted, with when they became ready (ms; for
    /// the admission latency; after a restart, from when it was loaded).
    /// Grouped by run, so a pass compares each run id once, not once per
    /// task (a 100,000-task backlog made that a visible cost).
    ready: BTreeMap<String, BTreeMap<usize, u64>>,
    queues: BTreeMap<String, QueueEntry>,
    /// Why Ready tasks wait, from the last pass (shared with `waiting`).
    board: Arc<WaitBoard>,
    changed: broadcast::Sender<String>,
    waiting: Arc<Mutex<Arc<WaitBoard>>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    commands: mpsc::Receiver<Command>,
    metrics: SchedulerMetrics,
    /// Finished runs in etcd by state: loaded with the active runs, then
    /// counted as runs finish here.
    finished: BTreeMap<pb::RunState, u64>,
    metrics_at: u64,
    /// When the last full admission pass ran (ms).
    full_pass_at: u64,
    /// A quick pass ran since: the wait reasons may be out of date.
    board_stale: bool,
    /// `place`'s pending and running inputs, kept for the next pass.
    pass_buffers: (
        Vec<admission::Pending<usize>>,
        Vec<admission::Running<usize>>,
    ),
    /// A commit failed: reload from etcd before the next turn.
    reload_pending: bool,
    /// What a failed turn applied (its events), or what waited while the
    /// reload failed: applied at the start of the next turn.
    redo: Vec<Item>,
}

impl Engine {
    pub fn new(
        store: Store,
        bus: Bus,
        opts: EngineOptions,
        metrics: SchedulerMetrics,
    ) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(1024);
        let (changed, _) = broadcast::channel(4096);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Arc::new(WaitBoard::default())));
        let handle = EngineHandle {
            tx,
            changed: changed.clone(),
            waiting: waiting.clone(),
        };
        let engine = Self {
            store,
            bus: Arc::new(bus),
            opts,
            runs: HashMap::new(),
            fleet: Fleet::default(),
            ready: BTreeMap::new(),
            queues: BTreeMap::new(),
            board: Arc::new(WaitBoard::default()),
            changed,
            waiting,
            internal_tx,
            internal_rx,
            commands,
            metrics,
            finished: BTreeMap::new(),
            metrics_at: 0,
            full_pass_at: 0,
            board_stale: false,
            pass_buffers: Default::default(),
            reload_pending: false,
            redo: Vec::new(),
        };
        (engine, handle)
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let mut events = self.bus.events().await?;
        let mut heartbeats = self.bus.heartbeats().await?;
        let mut turn = Turn::default();
        self.fleet.load(self.store.list_agents().await?);
        self.load_queues().await?;
        self.resync(&mut turn).await?;
        self.finish_turn(turn).await;
        self.publish_metrics(now_ms());
        self.bus.ask_heartbeats().await?;
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        tokio::pin!(shutdown);
        loop {
            let wake = self.next_wakeup();
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                // After a failed commit: reload now, not at the next message.
                _ = std::future::ready(()), if self.reload_pending => Item::Tick,
                Some(cmd) = self.commands.recv() => Item::Cmd(cmd),
                Some(i) = self.internal_rx.recv() => Item::Internal(i),
                ev = events.next() => match ev {
                    Some(Ok(msg)) => Item::Event(Box::new(msg)),
                    Some(Err(e)) => {
                        warn!(error = %e, "events consumer");
                        self.bus.failed("events");
                        continue
                    }
                    None => {
                        warn!("events consumer ended; reopening");
                        events = self.bus.events().await?;
                        continue;
                    }
                },
                Some(hb) = heartbeats.next() => Item::Heartbeat(hb),
                _ = sleep_until_ms(wake) => Item::Tick,
                _ = liveness.tick() => Item::Tick,
            };
            let mut items = vec![first];
            while items.len() < MAX_BATCH {
                if let Ok(c) = self.commands.try_recv() {
                    items.push(Item::Cmd(c));
                } else if let Ok(i) = self.internal_rx.try_recv() {
                    items.push(Item::Internal(i));
                } else if let Some(Some(Ok(m))) = events.next().now_or_never() {
                    items.push(Item::Event(Box::new(m)));
                } else if let Some(Some(h)) = heartbeats.next().now_or_never() {
                    items.push(Item::Heartbeat(h));
                } else {
                    break;
                }
            }
            let mut turn = Turn::default();
            if self.reload_pending {
                if let Err(e) = self.reload(&mut turn).await {
                    // Nothing is applied to a state etcd may not hold: it
                    // all waits for the reload.
                    warn!(error = %e, "reload from etcd failed; retrying");
                    self.redo.extend(items);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                self.reload_pending = false;
            }
            let now = now_ms();
            let redo = std::mem::take(&mut self.redo);
            for item in redo.into_iter().chain(items) {
                self.apply(item, now, &mut turn);
            }
            self.tick(now, &mut turn);
            self.expire_agents(now, &mut turn);
            if turn.placement_needed || !turn.touched.is_empty() {
                self.place(now, &mut turn);
            }
            self.finish_turn(turn).await;
            self.publish_metrics(now);
        }
        Ok(())
    }

    /// Hands the metrics a fresh snapshot of the state gauges, at most
    /// every `METRICS_EVERY_MS`.
    fn publish_metrics(&mut self, now: u64) {
        if now.saturating_sub(self.metrics_at) < METRICS_EVERY_MS {
            return;
        }
        self.metrics_at = now;
        let runs = self
            .runs
            .values()
            .map(|r| convert::run_state(r.dag.status()));
        let tasks = self
            .runs
            .values()
            .flat_map(|r| r.dag.tasks().iter().map(|t| convert::task_state(t.status)));
        let agents = self.fleet.agents.values().map(|a| a.state());
        let queues = self
            .queues
            .keys()
            .filter_map(|name| self.queue_status(name))
            .collect();
        let snapshot = Snapshot::new(runs, &self.finished, tasks, agents, queues);
        self.metrics.publish(snapshot);
    }

    fn next_wakeup(&self) -> Option<u64> {
        // A quick pass left the wait reasons behind: a full pass brings
        // them up to date even if nothing else happens.
        let full_pass = self
            .board_stale
            .then_some(self.full_pass_at + FULL_PASS_EVERY_MS);
        let runs = self.runs.values().filter_map(|r| r.dag.next_wakeup());
        runs.chain(full_pass).min()
    }

    fn apply(&mut self, item: Item, now: u64, turn: &mut Turn) {
        match item {
            Item::Cmd(cmd) => self.command(cmd, now, turn),
            Item::Event(msg) => {
                self.on_events_message(&msg, now, turn);
                turn.events.push(*msg);
            }
            Item::Heartbeat(msg) => self.on_heartbeat(&msg, now, turn),
            Item::Internal(Internal::AssignFailed {
                run,
                task,
                attempt,
                agent,
                reason,
            }) => {
                warn!(run = %run, task, attempt, agent = %agent, reason = %reason, "assignment failed");
                if let Some(a) = self.fleet.agents.get_mut(&agent) {
                    a.suspended = true;
                }
                let ev = Event::AssignFailed {
                    task,
                    attempt,
                    reason,
                };
                self.apply_to(&run, ev, now, turn);
            }
            Item::Internal(Internal::CancelGone {
                run,
                task,
                attempt,
                reason,
            }) => {
                let ev = Event::Failed {
                    task,
                    attempt,
                    exit_code: None,
                    reason,
                    log_key: String::new(),
                    cancelled: true,
                };
                self.apply_to(&run, ev, now, turn);
            }
            Item::Tick => {}
        }
        turn.placement_needed = true;
    }

    fn command(&mut self, cmd: Command, now: u64, turn: &mut Turn) {
        match cmd {
            Command::Submit {
                record,
                spec,
                reply,
            } => {
                if !self.queues.contains_key(&record.queue) {
                    let _ = reply.send(Err(SchedulerError::QueueNotFound(record.queue.clone())));
                    return;
                }
                self.add_run(*record, spec, turn);
                turn.replies.push(Reply::Submit(reply));
            }
            Command::Cancel { run_id, reply } => {
                if self.runs.contains_key(&run_id) {
                    self.apply_to(&run_id, Event::Cancel, now, turn);
                    turn.replies.push(Reply::Cancel(reply));
                } else {
                    let _ = reply.send(Ok(false));
                }
            }
            Command::ListAgents { reply } => {
                let ids: Vec<String> = self.fleet.agents.keys().cloned().collect();
                let views = ids.iter().filter_map(|id| self.agent_view(id)).collect();
                let _ = reply.send(Ok(views));
            }
            Command::Drain {
                agent,
                drained,
                reply,
            } => match self.fleet.agents.get_mut(&agent) {
                Some(a) => {
                    if a.drained != drained {
                        info!(agent = %agent, drained, "agent drain changed");
                        a.drained = drained;
                        a.record.drained = drained;
                        a.record_dirty = true;
                    }
                    turn.replies.push(Reply::Agent(reply, agent));
                }
                None => {
                    let _ = reply.send(Err(SchedulerError::AgentNotFound(agent)));
                }
            },
            Command::PutQueue {
                queue,
                create,
                reply,
            } => {
                let name = queue.name.clone();
                match (self.queues.get_mut(&name), create) {
                    (Some(e), false) if e.write != Some(true) => {
                        info!(queue = %name, "queue updated");
                        // Pause and resume have their own calls: an update
                        // read before a pause must not undo it.
                        let paused = e.queue.paused;
                        e.queue = pb::Queue { paused, ..queue };
                        e.write = Some(false);
                    }
                    (None, true) => {
                        info!(queue = %name, "queue created");
                        self.queues.insert(
                            name.clone(),
                            QueueEntry {
                                queue,
                                rev: 0,
                                write: Some(false),
                            },
                        );
                    }
                    (Some(_), true) => {
                        let _ = reply.send(Err(SchedulerError::QueueExists(name)));
                        return;
                    }
                    (_, false) => {
                        let _ = reply.send(Err(SchedulerError::QueueNotFound(name)));
                        return;
                    }
                }
                turn.replies.push(Reply::Queue(reply, name));
            }
            Command::SetPaused {
                name,
                paused,
                reply,
            } => match self.queues.get_mut(&name) {
                Some(e) => {
                    if e.queue.paused != paused {
                        info!(queue = %name, paused, "queue paused state changed");
                        e.queue.paused = paused;
                        e.write = Some(false);
                    }
                    turn.replies.push(Reply::Queue(reply, name));
                }
                None => {
                    let _ = reply.send(Err(SchedulerError::QueueNotFound(name)));
                }
            },
            Command::DeleteQueue { name, reply } => {
                let runs = self
                    .runs
                    .values()
                    .filter(|r| r.record.queue == name)
                    .count();
                let result = match self.queues.get_mut(&name) {
                    None => Err(SchedulerError::QueueNotFound(name)),
                    Some(_) if name == DEFAULT_QUEUE => Err(SchedulerError::FailedPrecondition(
                        "the `default` queue cannot be deleted".into(),
                    )),
                    Some(_) if runs > 0 => Err(SchedulerError::FailedPrecondition(format!(
                        "queue `{name}` holds {runs} active run(s); cancel them or let them finish first"
                    ))),
                    Some(e) => {
                        info!(queue = %name, "queue deleted");
                        e.write = Some(true);
                        Ok(())
                    }
                };
                match result {
                    Ok(()) => turn.replies.push(Reply::Done(reply)),
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Command::ListQueues { reply } => {
                let statuses = self
                    .queues
                    .keys()
                    .filter_map(|name| self.queue_status(name))
                    .collect();
                let _ = reply.send(Ok(statuses));
            }
            Command::ShowQueue { name, reply } => {
                let detail = self
                    .queue_status(&name)
                    .map(|status| pb::QueueDetail {
                        status: Some(status),
                        pending: self.pending_list(&name),
                    })
                    .ok_or(SchedulerError::QueueNotFound(name));
                let _ = reply.send(detail);
            }
            Command::SetRunPriority {
                run_id,
                priority,
                reply,
            } => match self.runs.get_mut(&run_id) {
                Some(run) => {
                    if run.record.priority != priority {
                        info!(run = %run_id, priority, "run priority changed");
                        run.record.priority = priority;
                        run.record_dirty = true;
                        turn.touched.insert(run_id);
                    }
                    turn.replies.push(Reply::Flag(reply));
                }
                None => {
                    let _ = reply.send(Ok(false));
                }
            },
        }
    }

    /// The queue's settings with its usage now, or None if there is no such queue.
    fn queue_status(&self, name: &str) -> Option<pb::QueueStatus> {
        let entry = self.queues.get(name).filter(|e| e.write != Some(true))?;
        let mut used = pb::ResourceUsage::default();
        let mut borrowed = pb::ResourceUsage::default();
        let mut running = 0;
        for (run, _, a) in self.fleet.allocations() {
            if self.runs.get(run).is_none_or(|r| r.record.queue != name) {
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
                let r = self.runs.get(run).filter(|r| r.record.queue == name)?;
                let ready = |t: &&usize| r.dag.task(**t).status == TaskStatus::Ready;
                Some(tasks.keys().filter(ready).count())
            })
            .sum::<usize>() as u32;
        let runs = self
            .runs
            .values()
            .filter(|r| r.record.queue == name)
            .count() as u32;
        Some(pb::QueueStatus {
            queue: Some(entry.queue.clone()),
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
        for run in self.runs.values().filter(|r| r.record.queue == name) {
            for (i, t) in run.dag.tasks().iter().enumerate() {
                if t.status == TaskStatus::Pending {
                    blocked.push((run, i));
                }
            }
        }
        blocked.sort_by(|(a, i), (b, j)| {
            b.record
                .priority
                .cmp(&a.record.priority)
                .then(a.record.created_at_ms.cmp(&b.record.created_at_ms))
                .then(i.cmp(j))
        });
        for (run, i) in blocked {
            let deps: Vec<&str> = run.dag.defs()[i]
                .deps
                .iter()
                .filter(|&&d| run.dag.task(d).status != TaskStatus::Succeeded)
                .map(|&d| run.dag.defs()[d].name.as_str())
                .collect();
            list.push(pb::PendingTask {
                position: list.len() as u32 + 1,
                run_id: run.record.id.clone(),
                task: run.dag.defs()[i].name.clone(),
                run_priority: run.record.priority,
                waiting_for: "dependencies".into(),
                reason: format!("waiting for {}", deps.join(", ")),
            });
        }
        list
    }

    /// Queues from etcd; the default queue is created on first start.
    async fn load_queues(&mut self) -> Result<()> {
        for (queue, rev) in self.store.list_queues().await? {
            self.queues.insert(
                queue.name.clone(),
                QueueEntry {
                    queue,
                    rev,
                    write: None,
                },
            );
        }
        if !self.queues.contains_key(DEFAULT_QUEUE) {
            info!("creating the default queue");
            self.queues.insert(
                DEFAULT_QUEUE.into(),
                QueueEntry {
                    queue: queues::default_queue(),
                    rev: 0,
                    write: Some(false),
                },
            );
        }
        Ok(())
    }

    fn agent_view(&self, id: &str) -> Option<pb::Agent> {
        self.fleet.view(id, |run, task, attempt| {
            let name = self
                .runs
                .get(run)
                .map(|r| r.dag.defs()[task].name.as_str())
                .unwrap_or("?");
            format!("{run}/{name}/{attempt}")
        })
    }

    fn add_run(&mut self, record: pb::RunRecord, spec: Arc<pb::PipelineSpec>, turn: &mut Turn) {
        let (dag, fx) = RunDag::new(convert::task_defs(&spec), spec.fail_fast);
        let id = record.id.clone();
        info!(run = %id, pipeline = %spec.name, tasks = spec.tasks.len(), "run submitted");
        let n = spec.tasks.len();
        self.runs.insert(
            id.clone(),
            ActiveRun {
                record,
                requests: requests(&spec),
                spec,
                dag,
                rev: 0,
                task_revs: vec![0; n],
                record_dirty: false,
            },
        );
        self.effects(&id, fx, turn);
    }

    /// Applies a core event to a run and handles its effects.
    fn apply_to(&mut self, run_id: &str, ev: Event, now: u64, turn: &mut Turn) {
        let Some(run) = self.runs.get_mut(run_id) else {
            debug!(run = %run_id, "event for a run that is not active");
            return;
        };
        match run.dag.apply(ev, now) {
            Ok(fx) => self.effects(run_id, fx, turn),
            Err(stale) => debug!(run = %run_id, reason = %stale.0, "stale event ignored"),
        }
    }

    fn effects(&mut self, run_id: &str, fx: Vec<Effect>, turn: &mut Turn) {
        turn.touched.insert(run_id.to_string());
        for e in fx {
            match e {
                Effect::Ready { task } => {
                    match self.ready.get_mut(run_id) {
                        Some(tasks) => tasks.entry(task).or_insert_with(now_ms),
                        None => self
                            .ready
                            .entry(run_id.to_string())
                            .or_default()
                            .entry(task)
                            .or_insert_with(now_ms),
                    };
                }
                Effect::Assign {
                    task,
                    attempt,
                    agent,
                } => {
                    let send = self.assignment(run_id, task, attempt);
                    let traceparent = self
                        .runs
                        .get(run_id)
                        .and_then(|r| {
                            let name = &r.dag.defs()[task].name;
                            let span =
                                record::attempt_span_id(&r.record.trace_id, run_id, name, attempt);
                            propagation::span_context(&r.record.trace_id, &span)
                        })
                        .map(|sc| propagation::traceparent(&sc))
                        .unwrap_or_default();
                    turn.sends.push((
                        run_id.to_string(),
                        Send::Assign(Box::new(send), agent, task, traceparent),
                    ));
                }
                Effect::Cancel {
                    task,
                    attempt,
                    agent,
                } => {
                    let preempting = self
                        .runs
                        .get(run_id)
                        .is_some_and(|r| r.dag.task(task).preempting.is_some());
                    let mut c = self.cancel_request(self.attempt_ref(run_id, task, attempt));
                    if preempting {
                        c.grace_ms = self.opts.preemption_grace.as_millis() as u64;
                    }
                    turn.sends
                        .push((run_id.to_string(), Send::Cancel(c, agent, Some(task))));
                }
                Effect::Released { task, .. } => {
                    self.fleet.release(run_id, task);
                    // Built only when exported: otherwise a no-op tracer
                    // would take it, after its attributes were formatted.
                    let span = drover_telemetry::exporting()
                        .then(|| self.runs.get(run_id).and_then(|r| attempt_span(r, task)))
                        .flatten();
                    turn.spans.extend(span);
                }
                Effect::Finished(status) => {
                    info!(run = %run_id, state = ?status, "run finished");
                    if let (true, Some(r)) = (drover_telemetry::exporting(), self.runs.get(run_id))
                    {
                        turn.spans.push(run_span(r));
                    }
                }
            }
        }
    }

    fn cancel_request(&self, attempt: pb::AttemptRef) -> pb::CancelAttempt {
        pb::CancelAttempt {
            attempt: Some(attempt),
            grace_ms: self.opts.cancel_grace.as_millis() as u64,
        }
    }

    fn attempt_ref(&self, run_id: &str, task: usize, attempt: u32) -> pb::AttemptRef {
        let name = self
            .runs
            .get(run_id)
            .map(|r| r.dag.defs()[task].name.clone())
            .unwrap_or_default();
        pb::AttemptRef {
            run_id: run_id.to_string(),
            task: name,
            attempt,
        }
    }

    /// The message an agent needs to run an attempt: the resolved task, where
    /// each input sits in the object store, and the GPUs it was given.
    fn assignment(&self, run_id: &str, task: usize, attempt: u32) -> pb::Assignment {
        let aref = self.attempt_ref(run_id, task, attempt);
        let Some(run) = self.runs.get(run_id) else {
            return pb::Assignment::default();
        };
        let task_spec = run.spec.tasks.get(task).cloned();
        let inputs = task_spec
            .iter()
            .flat_map(|t| t.inputs.iter())
            .filter_map(|input| {
                let producer = run.dag.index_of(&input.from_task)?;
                let out = run
                    .dag
                    .task(producer)
                    .current()?
                    .outputs
                    .iter()
                    .find(|o| o.name == input.from_output)?;
                Some(pb::InputArtifact {
                    name: input.name.clone(),
                    key: out.key.clone(),
                })
            })
            .collect();
        let gpus = run
            .dag
            .task(task)
            .current()
            .map(|a| {
                a.gpus
                    .iter()
                    .map(|(index, uuid)| pb::GpuRef {
                        index: *index,
                        uuid: uuid.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        pb::Assignment {
            artifact_prefix: naming::attempt_prefix(run_id, &aref.task, attempt),
            attempt: Some(aref),
            task: task_spec,
            inputs,
            gpus,
        }
    }

    /// One message of the events stream: an agent's single event (its
    /// span in the headers) or its batch of events (spans in the body).
    fn on_events_message(&mut self, msg: &jetstream::Message, now: u64, turn: &mut Turn) {
        let events = match drover_api::events::decode(
            self.bus.prefix(),
            &msg.subject,
            msg.payload.clone(),
        ) {
            Ok(events) => events,
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "undecodable event dropped");
                return;
            }
        };
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        for (ev, traceparent) in events {
            // Only parsed when it is logged.
            let trace_id = debug
                .then(|| match traceparent.as_str() {
                    "" => propagation::span_of(&propagation::extract_nats(msg.headers.as_ref())),
                    tp => propagation::parse_traceparent(tp),
                })
                .flatten()
                .map(|sc| sc.trace_id().to_string())
                .unwrap_or_default();
            self.on_agent_event(ev, &trace_id, now, turn);
        }
    }

    /// `trace_id`: the agent's attempt span's trace, for the log line.
    fn on_agent_event(&mut self, ev: pb::AttemptEvent, trace_id: &str, now: u64, turn: &mut Turn) {
        let Some(aref) = ev.attempt else { return };
        let Some(task) = self
            .runs
            .get(&aref.run_id)
            .and_then(|r| r.dag.index_of(&aref.task))
        else {
            debug!(run = %aref.run_id, task = %aref.task, "event for an inactive run");
            return;
        };
        let attempt = aref.attempt;
        let core = match ev.kind {
            Some(pb::attempt_event::Kind::Started(_)) => Event::Started { task, attempt },
            Some(pb::attempt_event::Kind::Succeeded(s)) => Event::Succeeded {
                task,
                attempt,
                outputs: s.outputs.iter().map(convert::artifact).collect(),
                log_key: s.log_key,
                log_empty: s.log_empty,
            },
            Some(pb::attempt_event::Kind::Failed(f)) => Event::Failed {
                task,
                attempt,
                exit_code: f.exit_code,
                reason: f.reason,
                log_key: f.log_key,
                cancelled: f.cancelled,
            },
            None => return,
        };
        // The agent's attempt span joins the log line to the run's trace.
        debug!(run = %aref.run_id, task = %aref.task, attempt, agent = %ev.agent_id, trace_id, "agent event");
        let at = if ev.at_ms > 0 { ev.at_ms } else { now };
        // Measured on the scheduler's clock only (assigned_at is its own),
        // and only for the first start of the current attempt: a
        // redelivered event is not a second start.
        let assigned_at = self
            .runs
            .get(&aref.run_id)
            .and_then(|r| r.dag.task(task).current())
            .filter(|a| a.number == attempt && a.status == AttemptStatus::Assigned)
            .map(|a| a.assigned_at);
        // A final event for an attempt with no started event yet: agents
        // publish none for an attempt that ends quickly, and report its
        // start here instead. `ran`: how long it had run when the event was
        // stamped (agent clock to agent clock), so the assignment-to-start
        // delay is the delay to now less that.
        let ran = match core {
            Event::Started { .. } => Some(0),
            _ if ev.started_at_ms > 0 => {
                let started = Event::Started { task, attempt };
                if assigned_at.is_some() {
                    self.apply_to(&aref.run_id, started, ev.started_at_ms, turn);
                }
                Some(at.saturating_sub(ev.started_at_ms))
            }
            _ => None,
        };
        self.apply_to(&aref.run_id, core, at, turn);
        if let (Some(assigned_at), Some(ran), Some(run)) =
            (assigned_at, ran, self.runs.get(&aref.run_id))
        {
            let started = run
                .dag
                .task(task)
                .current()
                .is_some_and(|a| a.number == attempt && a.status != AttemptStatus::Assigned);
            if started {
                let delay = now.saturating_sub(assigned_at).saturating_sub(ran);
                self.metrics
                    .observe_assign_to_start(&run.record.queue, delay);
            }
        }
    }

    fn on_heartbeat(&mut self, msg: &async_nats::Message, now: u64, turn: &mut Turn) {
        let hb = match pb::Heartbeat::decode(msg.payload.clone()) {
            Ok(hb) => hb,
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "undecodable heartbeat");
                return;
            }
        };
        let agent = hb.agent_id.clone();
        let runs = &self.runs;
        let reconcile = self.fleet.heartbeat(hb, now, |r| {
            runs.get(&r.run_id)
                .and_then(|run| run.dag.index_of(&r.task))
        });
        for lost in reconcile.lost {
            self.lose(
                lost,
                format!("agent `{agent}` restarted without it"),
                now,
                turn,
            );
        }
        for stray in reconcile.cancel {
            info!(agent = %agent, run = %stray.run_id, task = %stray.task, attempt = stray.attempt, "cancelling an attempt the scheduler does not expect");
            let run = stray.run_id.clone();
            let c = self.cancel_request(stray);
            turn.sends.push((run, Send::Cancel(c, agent.clone(), None)));
        }
    }

    /// Agents silent past the timeout are lost; their attempts run again elsewhere.
    fn expire_agents(&mut self, now: u64, turn: &mut Turn) {
        for (lost, reason) in self.fleet.expire(self.opts.agent_timeout, now) {
            self.lose(lost, reason, now, turn);
        }
    }

    /// An attempt went with its agent: run it again elsewhere, not as a retry.
    fn lose(&mut self, (run, task, attempt): AttemptId, reason: String, now: u64, turn: &mut Turn) {
        let ev = Event::Lost {
            task,
            attempt,
            reason,
        };
        self.apply_to(&run, ev, now, turn);
    }

    fn tick(&mut self, now: u64, turn: &mut Turn) {
        let due: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, r)| r.dag.next_wakeup().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(run) = self.runs.get_mut(&id) {
                let fx = run.dag.tick(now);
                self.effects(&id, fx, turn);
            }
        }
    }

    /// One admission pass over every Ready task: queue order, quotas, fair
    /// shares, backfill and preemption are decided by the pure core; this
    /// applies its decision and notes why the rest wait.
    fn place(&mut self, now: u64, turn: &mut Turn) {
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
            self.set_board(WaitBoard::default());
            return;
        }
        let names: Vec<&str> = self
            .queues
            .iter()
            .filter(|(_, e)| e.write != Some(true))
            .map(|(n, _)| n.as_str())
            .collect();
        let qindex: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let core_queues: Vec<admission::Queue> = names
            .iter()
            .map(|n| queues::to_core(&self.queues[*n].queue))
            .collect();
        let queue_of = |run: &ActiveRun| {
            qindex
                .get(run.record.queue.as_str())
                .or_else(|| qindex.get(DEFAULT_QUEUE))
                .copied()
                .unwrap_or(0)
        };
        let (slots, agent_index, schedulable) = self.fleet.admission_slots();

        // Runs in the order a queue serves them (run priority, then submit
        // time), so the first `pass_depth` Ready tasks of each queue are the
        // ones the pass would put first anyway.
        let mut order: Vec<(&String, &ActiveRun, usize)> = self
            .ready
            .keys()
            .filter_map(|id| runs.get(id).map(|r| (id, r, queue_of(r))))
            .collect();
        order.sort_by(|(a_id, a, _), (b_id, b, _)| {
            b.record
                .priority
                .cmp(&a.record.priority)
                .then(a.record.created_at_ms.cmp(&b.record.created_at_ms))
                .then(a_id.cmp(b_id))
        });
        let mut taken = vec![0usize; names.len().max(1)];
        let mut left_ready: Vec<(String, usize)> = Vec::new();

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
        let mut pending_keys: Vec<(u32, usize)> = Vec::with_capacity(n);
        // The pass's inputs reuse last turn's buffers: rebuilt every turn
        // (thousands of entries with a backlog), fresh ones cost a large
        // allocation and free per turn (glibc's malloc_consolidate in the profile).
        let mut pending = std::mem::take(&mut self.pass_buffers.0);
        pending.clear();
        for (run_id, run, queue) in order {
            let tasks = &self.ready[run_id];
            board_runs.push(BoardRun {
                id: run_id.clone(),
                queue: run.record.queue.clone(),
                priority: run.record.priority,
                spec: Arc::clone(&run.spec),
                beyond: false,
            });
            let slot = (board_runs.len() - 1) as u32;
            for task in tasks.keys() {
                if run.dag.task(*task).status != TaskStatus::Ready {
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
                    run_priority: run.record.priority,
                    submitted_at: run.record.created_at_ms,
                    seq: *task as u64,
                    req: run.requests[*task].clone(),
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
            self.pass_buffers.0 = pending;
            self.set_board(WaitBoard::default());
            return;
        }
        // Running keys borrow the allocation map's run ids; only victims are
        // copied out, after the pass.
        let mut running_keys: Vec<(&String, usize, u32)> =
            Vec::with_capacity(self.fleet.allocated());
        let mut running = std::mem::take(&mut self.pass_buffers.1);
        running.clear();
        // Allocations come grouped by run (one run lookup each), and
        // bin-packing puts a run's consecutive tasks on the same agent:
        // remember the last agent, compared by its shared id's pointer,
        // rather than hashing or comparing ids per running task.
        let mut last_agent: Option<(&Arc<str>, Option<usize>)> = None;
        for (run_id, tasks) in self.fleet.allocations_by_run() {
            let Some(run) = self.runs.get(run_id) else {
                continue;
            };
            let queue = queue_of(run);
            for (&task, alloc) in tasks {
                let agent = match last_agent {
                    Some((id, a)) if Arc::ptr_eq(id, &alloc.agent) || **id == *alloc.agent => a,
                    _ => {
                        let a = agent_index.get(&*alloc.agent).copied();
                        last_agent = Some((&alloc.agent, a));
                        a
                    }
                };
                let Some(agent) = agent else {
                    continue;
                };
                let t = run.dag.task(task);
                running.push(admission::Running {
                    key: running_keys.len(),
                    queue,
                    run_priority: run.record.priority,
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
            &slots,
            self.opts.placement,
        );
        self.pass_buffers = (pending, running);
        let evicts: Vec<(String, usize, u32, String)> = decision
            .evict
            .into_iter()
            .map(|e| {
                let (run, task, attempt) = running_keys[e.victim];
                (run.clone(), task, attempt, e.reason)
            })
            .collect();
        drop(running_keys);

        for admit in decision.admit {
            let (slot, task) = pending_keys[admit.key];
            let run_id = &board_runs[slot as usize].id;
            let agent = slots[admit.placement.agent].id.clone();
            let agent_id = self.fleet.agent_id(&agent);
            let Some(run) = self.runs.get_mut(run_id) else {
                continue;
            };
            let ev = Event::Assign {
                task,
                agent,
                gpus: admit.placement.gpus.clone(),
            };
            match run.dag.apply(ev, now) {
                Ok(fx) => {
                    let attempt = run.dag.task(task).current().map_or(0, |a| a.number);
                    let req = run.requests[task].clone();
                    if let Some(since) = self
                        .ready
                        .get_mut(run_id.as_str())
                        .and_then(|t| t.remove(&task))
                    {
                        self.metrics
                            .observe_admission(&run.record.queue, now.saturating_sub(since));
                    }
                    self.fleet.allocate(
                        run_id,
                        task,
                        Allocation {
                            agent: agent_id,
                            attempt,
                            req,
                            gpus: admit.placement.gpus,
                            borrowed: admit.borrowed,
                        },
                    );
                    self.effects(run_id, fx, turn);
                }
                Err(stale) => debug!(run = %run_id, reason = %stale.0, "not placed"),
            }
        }
        for (run_id, task, attempt, reason) in evicts {
            info!(run = %run_id, task, attempt, reason = %reason, "preempting");
            let ev = Event::Preempt {
                task,
                attempt,
                reason,
            };
            self.apply_to(&run_id, ev, now, turn);
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
        self.set_board(WaitBoard {
            runs: board_runs,
            entries,
            idle: (schedulable == 0).then(|| self.fleet.idle_reason()),
            depth,
        });
    }

    /// Publishes the last pass's waits to `drover get` and `queue show`.
    fn set_board(&mut self, board: WaitBoard) {
        // Up to date now (also when nothing waits: no full pass is due then).
        self.board_stale = false;
        let board = Arc::new(board);
        self.board = Arc::clone(&board);
        if let Ok(mut w) = self.waiting.lock() {
            *w = board;
        }
    }

    /// Commit, then carry out; on failure the next turn reloads from etcd
    /// and applies this turn's events again.
    async fn finish_turn(&mut self, turn: Turn) {
        match self.commit(&turn).await {
            Ok(()) => self.carry_out(turn).await,
            Err(e) => {
                warn!(error = %e, "commit failed; reloading state from etcd");
                for r in turn.replies {
                    let err = || SchedulerError::Unavailable(e.to_string());
                    match r {
                        Reply::Submit(tx) => drop(tx.send(Err(err()))),
                        Reply::Cancel(tx) => drop(tx.send(Err(err()))),
                        Reply::Agent(tx, _) => drop(tx.send(Err(err()))),
                        Reply::Queue(tx, _) => drop(tx.send(Err(err()))),
                        Reply::Done(tx) => drop(tx.send(Err(err()))),
                        Reply::Flag(tx) => drop(tx.send(Err(err()))),
                    }
                }
                // Not naked for redelivery: the next turn's ack would cover
                // them before they came back.
                let events = turn.events.into_iter().map(|m| Item::Event(Box::new(m)));
                self.redo.extend(events);
                self.reload_pending = true;
            }
        }
    }

    async fn commit(&mut self, turn: &Turn) -> Result<()> {
        enum Target {
            Run(String),
            Task(String, usize),
            Agent(String),
            Queue(String),
        }
        let mut groups = Vec::new();
        let mut index: Vec<Target> = Vec::new();
        for run_id in &turn.touched {
            let Some(run) = self.runs.get_mut(run_id) else {
                continue;
            };
            let (dag_dirty, tasks) = run.dag.take_dirty();
            let run_dirty = dag_dirty || std::mem::take(&mut run.record_dirty);
            let mut group = Vec::new();
            for t in tasks {
                let state = run.dag.task(t);
                if !state.needs_record() {
                    continue;
                }
                group.push(Write::put(
                    self.store.task_key(run_id, &run.dag.defs()[t].name),
                    convert::task_record(state).encode_to_vec(),
                    run.task_revs[t],
                ));
                index.push(Target::Task(run_id.clone(), t));
            }
            if run_dirty {
                group.push(Write::put(
                    self.store.run_key(run_id),
                    convert::run_record(&run.record, &run.dag).encode_to_vec(),
                    run.rev,
                ));
                index.push(Target::Run(run_id.clone()));
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        for (id, a) in &self.fleet.agents {
            if a.record_dirty {
                groups.push(vec![Write::put(
                    self.store.agent_key(id),
                    a.record.encode_to_vec(),
                    a.record_rev,
                )]);
                index.push(Target::Agent(id.clone()));
            }
        }
        for (name, q) in &self.queues {
            let key = self.store.queue_key(name);
            let write = match q.write {
                None => continue,
                Some(true) => Write::delete(key, q.rev),
                Some(false) => {
                    let record = pb::QueueRecord {
                        queue: Some(q.queue.clone()),
                    };
                    Write::put(key, record.encode_to_vec(), q.rev)
                }
            };
            groups.push(vec![write]);
            index.push(Target::Queue(name.clone()));
        }
        if groups.is_empty() {
            return Ok(());
        }
        let revs = self.store.commit(groups).await?;
        for (target, rev) in index.into_iter().zip(revs) {
            match target {
                Target::Run(id) => {
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.rev = rev;
                    }
                }
                Target::Task(id, t) => {
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.task_revs[t] = rev;
                    }
                }
                Target::Agent(id) => {
                    if let Some(a) = self.fleet.agents.get_mut(&id) {
                        a.record_rev = rev;
                        a.record_dirty = false;
                    }
                }
                Target::Queue(name) => {
                    if let Some(q) = self.queues.get_mut(&name) {
                        if q.write == Some(true) {
                            self.queues.remove(&name);
                        } else {
                            q.rev = rev;
                            q.write = None;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn carry_out(&mut self, turn: Turn) {
        // One request per agent for all the turn's assignments to it.
        let mut batches: HashMap<String, AssignBatch> = HashMap::new();
        for (run_id, send) in turn.sends {
            match send {
                Send::Assign(a, agent, task, traceparent) => {
                    let batch = batches.entry(agent).or_default();
                    let attempt = a.attempt.as_ref().map_or(0, |r| r.attempt);
                    batch.tasks.push((run_id, task, attempt));
                    batch.request.assignments.push(*a);
                    batch.request.traceparents.push(traceparent);
                }
                Send::Cancel(c, agent, task) => {
                    let bus = self.bus.clone();
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let attempt = c.attempt.as_ref().map_or(0, |a| a.attempt);
                        let reason = match bus.cancel(&agent, &c).await {
                            Ok(true) => return,
                            Ok(false) => "cancelled (the agent no longer ran it)".to_string(),
                            Err(e) => format!("cancelled (agent `{agent}` unreachable: {e})"),
                        };
                        // A stray attempt (no task) needs no follow-up.
                        if let Some(task) = task {
                            let _ = tx.send(Internal::CancelGone {
                                run: run_id,
                                task,
                                attempt,
                                reason,
                            });
                        }
                    });
                }
            }
        }
        for (agent, batch) in batches {
            let bus = self.bus.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let results = bus.assign(&agent, batch.request).await;
                for ((run, task, attempt), result) in batch.tasks.into_iter().zip(results) {
                    if let Err(reason) = result {
                        let _ = tx.send(Internal::AssignFailed {
                            run,
                            task,
                            attempt,
                            agent: agent.clone(),
                            reason,
                        });
                    }
                }
            });
        }
        for span in turn.spans {
            record::emit(span);
        }
        // One ack for the turn: the consumer acks every event up to it.
        let last = turn
            .events
            .into_iter()
            .max_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
        if let Some(m) = last {
            let bus = self.bus.clone();
            tokio::spawn(async move {
                if let Err(e) = m.ack().await {
                    warn!(error = %e, "ack failed; the events will be redelivered");
                    bus.failed("ack");
                }
            });
        }
        for r in turn.replies {
            match r {
                Reply::Submit(tx) => drop(tx.send(Ok(()))),
                Reply::Cancel(tx) => drop(tx.send(Ok(true))),
                Reply::Agent(tx, id) => {
                    let view = self
                        .agent_view(&id)
                        .ok_or(SchedulerError::AgentNotFound(id));
                    drop(tx.send(view));
                }
                Reply::Queue(tx, name) => {
                    let q = self
                        .queues
                        .get(&name)
                        .map(|e| e.queue.clone())
                        .ok_or(SchedulerError::QueueNotFound(name));
                    drop(tx.send(q));
                }
                Reply::Done(tx) => drop(tx.send(Ok(()))),
                Reply::Flag(tx) => drop(tx.send(Ok(true))),
            }
        }
        for run_id in turn.touched {
            let done = self
                .runs
                .get(&run_id)
                .map(|r| r.dag.status())
                .filter(|s| s.is_terminal());
            if let Some(status) = done {
                self.runs.remove(&run_id);
                *self.finished.entry(convert::run_state(status)).or_default() += 1;
            }
            let _ = self.changed.send(run_id);
        }
    }

    /// After a failed commit: agent records, queues and runs from etcd again.
    async fn reload(&mut self, turn: &mut Turn) -> Result<()> {
        self.queues.clear();
        self.load_queues().await?;
        let records = self.store.list_agents().await?;
        for (record, rev) in records {
            if let Some(a) = self.fleet.agents.get_mut(&record.id) {
                a.record = record;
                a.record_rev = rev;
                a.record_dirty = false;
                a.drained = a.record.drained;
            } else {
                self.fleet.load(vec![(record, rev)]);
            }
        }
        self.resync(turn).await
    }

    /// Replaces in-memory run state with what etcd holds; queues what must be resent.
    async fn resync(&mut self, turn: &mut Turn) -> Result<()> {
        let loaded = self.store.load_active_runs().await?;
        self.runs.clear();
        self.ready.clear();
        self.fleet.clear_allocations();
        self.finished = loaded.finished;
        info!(runs = loaded.active.len(), "loaded active runs from etcd");
        for s in loaded.active {
            self.restore_run(s, turn);
        }
        turn.placement_needed = true;
        Ok(())
    }

    fn restore_run(&mut self, s: StoredRun, turn: &mut Turn) {
        let (dag, fx) = convert::restore(&s);
        let spec = Arc::clone(&s.spec);
        let mut task_revs = vec![0; spec.tasks.len()];
        for (name, _, rev) in &s.tasks {
            if let Some(i) = dag.index_of(name) {
                task_revs[i] = *rev;
            }
        }
        let id = s.record.id.clone();
        let reqs = requests(&spec);
        for (i, t) in dag.tasks().iter().enumerate() {
            if let (true, Some(a)) = (t.status.is_active(), t.current()) {
                self.fleet.allocate(
                    &id,
                    i,
                    Allocation {
                        agent: self.fleet.agent_id(&a.agent),
                        attempt: a.number,
                        req: reqs[i].clone(),
                        gpus: a.gpus.clone(),
                        // Not stored: after a restart running work counts as within quota.
                        borrowed: false,
                    },
                );
                // An agent that never comes back must still be noticed.
                if !self.fleet.agents.contains_key(&a.agent) {
                    self.fleet.load(vec![(
                        pb::AgentRecord {
                            id: a.agent.clone(),
                            ..Default::default()
                        },
                        0,
                    )]);
                }
            }
        }
        self.runs.insert(
            id.clone(),
            ActiveRun {
                record: s.record,
                spec,
                dag,
                rev: s.rev,
                task_revs,
                requests: reqs,
                record_dirty: false,
            },
        );
        self.effects(&id, fx, turn);
    }
}

/// The span of the current attempt of `task`, which has just ended: from the
/// moment the task became ready, through placement and start, to its end.
fn attempt_span(run: &ActiveRun, task: usize) -> Option<RecordedSpan> {
    let a = run.dag.task(task).current()?;
    let name = &run.dag.defs()[task].name;
    let trace_id = &run.record.trace_id;
    let start = match (a.ready_at, a.number) {
        (0, 1) => run.record.created_at_ms,
        (0, _) => a.assigned_at,
        (t, _) => t,
    };
    let mut attributes = vec![
        KeyValue::new("drover.run", run.record.id.clone()),
        KeyValue::new("drover.task", name.clone()),
        KeyValue::new("drover.attempt", i64::from(a.number)),
        KeyValue::new("drover.agent", a.agent.clone()),
        KeyValue::new("drover.queue", run.record.queue.clone()),
        KeyValue::new(
            "drover.attempt.state",
            format!("{:?}", a.status).to_lowercase(),
        ),
        KeyValue::new(
            "drover.gpus",
            a.gpus
                .iter()
                .map(|(_, uuid)| uuid.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if let Some(code) = a.exit_code {
        attributes.push(KeyValue::new("drover.exit_code", i64::from(code)));
    }
    let mut events = vec![("placed", a.assigned_at)];
    if a.started_at > 0 {
        events.push(("running", a.started_at));
    }
    let ok = a.status == drover_scheduler_core::dag::AttemptStatus::Succeeded;
    Some(RecordedSpan {
        name: format!("task {name}"),
        trace_id: trace_id.clone(),
        span_id: record::attempt_span_id(trace_id, &run.record.id, name, a.number),
        parent_span_id: run.record.root_span_id.clone(),
        start_ms: start,
        end_ms: a.finished_at,
        attributes,
        events,
        error: (!ok).then(|| a.error.clone()),
    })
}

/// The run's root span, emitted when the run ends.
fn run_span(run: &ActiveRun) -> RecordedSpan {
    let s = run.dag.run_state();
    let pipeline = run.spec.name.clone();
    let state = format!("{:?}", s.status).to_lowercase();
    RecordedSpan {
        name: format!("run {pipeline}"),
        trace_id: run.record.trace_id.clone(),
        span_id: run.record.root_span_id.clone(),
        parent_span_id: run.record.trace_parent_span_id.clone(),
        start_ms: run.record.created_at_ms,
        end_ms: s.finished_at,
        attributes: vec![
            KeyValue::new("drover.run", run.record.id.clone()),
            KeyValue::new("drover.pipeline", pipeline),
            KeyValue::new("drover.queue", run.record.queue.clone()),
            KeyValue::new("drover.priority", run.record.priority),
            KeyValue::new("drover.run.state", state),
        ],
        events: Vec::new(),
        error: (s.status != drover_scheduler_core::dag::RunStatus::Succeeded)
            .then(|| s.message.clone()),
    }
}

fn requests(spec: &pb::PipelineSpec) -> Vec<Request> {
    spec.tasks
        .iter()
        .map(|t| {
            let r = t.resources.clone().unwrap_or_default();
            Request::new(&t.image, u64::from(r.cpu_millis), r.memory_bytes)
                .with_gpus(r.gpu, &r.gpu_model, r.gpu_memory_bytes)
                .with_selector(t.node_selector.clone())
        })
        .collect()
}

async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(t) => {
            let wait = t.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}
