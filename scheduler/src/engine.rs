//! The scheduler loop: the one owner of in-memory run and fleet state.
//!
//! Each turn drains what is waiting (API commands, agent events, heartbeats,
//! answers to assign/cancel requests, timers), lets the pure core decide,
//! places ready tasks, commits every changed key to etcd in as few
//! transactions as possible (group commit), and only then sends assignments
//! and cancels, acks the agent events and answers the API callers. If a
//! commit fails, nothing is sent or acked: the loop reloads its state from
//! etcd and unacked events are delivered again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use drover_api::{naming, pb};
use drover_scheduler_core::dag::{Effect, Event, RunDag, TaskStatus};
use drover_scheduler_core::placement::{self, NoFit, Request, Strategy};

use crate::bus::Bus;
use crate::convert;
use crate::error::{Result, SchedulerError};
use crate::fleet::{Allocation, AttemptId, Fleet};
use crate::store::{Store, StoredRun, Write};

/// Most items one turn takes before committing.
const MAX_BATCH: usize = 1024;
/// How often silent agents are looked for.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub enum Command {
    /// Store and start a new run (its record is already validated).
    Submit {
        record: Box<pb::RunRecord>,
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
pub type Waiting = HashMap<usize, (String, bool)>;

/// Cheap handle for the gRPC layer.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    changed: broadcast::Sender<String>,
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
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

    pub async fn submit(&self, record: pb::RunRecord) -> Result<()> {
        self.call(|reply| Command::Submit {
            record: Box::new(record),
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

    /// Ids of runs as their changes are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Why the run's Ready tasks are not placed yet (kept in memory only:
    /// it changes with every heartbeat).
    pub fn waiting(&self, run_id: &str) -> Waiting {
        self.waiting
            .lock()
            .map(|w| w.get(run_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub nats_prefix: String,
    pub agent_timeout: Duration,
    pub cancel_grace: Duration,
    pub placement: Strategy,
}

struct ActiveRun {
    /// Spec, params and creation time; run-level state comes from `dag`.
    record: pb::RunRecord,
    dag: RunDag,
    rev: i64,
    task_revs: Vec<i64>,
    requests: Vec<Request>,
}

enum Send {
    Assign(Box<pb::Assignment>, String, usize),
    Cancel(pb::CancelAttempt, String, Option<usize>),
}

enum Reply {
    Submit(oneshot::Sender<Result<()>>),
    Cancel(oneshot::Sender<Result<bool>>),
    Agent(oneshot::Sender<Result<pb::Agent>>, String),
}

/// What one turn owes the world once its commit succeeds.
#[derive(Default)]
struct Turn {
    touched: HashSet<String>,
    sends: Vec<(String, Send)>,
    acks: Vec<jetstream::Message>,
    replies: Vec<Reply>,
    placement_needed: bool,
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
    bus: Bus,
    opts: EngineOptions,
    runs: HashMap<String, ActiveRun>,
    fleet: Fleet,
    queue: VecDeque<(String, usize)>,
    changed: broadcast::Sender<String>,
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    commands: mpsc::Receiver<Command>,
}

impl Engine {
    pub fn new(store: Store, bus: Bus, opts: EngineOptions) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(1024);
        let (changed, _) = broadcast::channel(4096);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(HashMap::new()));
        let handle = EngineHandle {
            tx,
            changed: changed.clone(),
            waiting: waiting.clone(),
        };
        let engine = Self {
            store,
            bus,
            opts,
            runs: HashMap::new(),
            fleet: Fleet::default(),
            queue: VecDeque::new(),
            changed,
            waiting,
            internal_tx,
            internal_rx,
            commands,
        };
        (engine, handle)
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let mut events = self.bus.events().await?;
        let mut heartbeats = self.bus.heartbeats().await?;
        let mut turn = Turn::default();
        self.fleet.load(self.store.list_agents().await?);
        self.resync(&mut turn).await?;
        self.finish_turn(turn).await;
        self.bus.ask_heartbeats().await?;
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        tokio::pin!(shutdown);
        loop {
            let wake = self.next_wakeup();
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(cmd) = self.commands.recv() => Item::Cmd(cmd),
                Some(i) = self.internal_rx.recv() => Item::Internal(i),
                ev = events.next() => match ev {
                    Some(Ok(msg)) => Item::Event(Box::new(msg)),
                    Some(Err(e)) => { warn!(error = %e, "events consumer"); continue }
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
            let now = now_ms();
            for item in items {
                self.apply(item, now, &mut turn);
            }
            self.tick(now, &mut turn);
            self.expire_agents(now, &mut turn);
            if turn.placement_needed || !turn.touched.is_empty() {
                self.place(now, &mut turn);
            }
            self.finish_turn(turn).await;
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Option<u64> {
        self.runs.values().filter_map(|r| r.dag.next_wakeup()).min()
    }

    fn apply(&mut self, item: Item, now: u64, turn: &mut Turn) {
        match item {
            Item::Cmd(cmd) => self.command(cmd, now, turn),
            Item::Event(msg) => {
                self.on_agent_event(&msg, now, turn);
                turn.acks.push(*msg);
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
            Command::Submit { record, reply } => {
                self.add_run(*record, turn);
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
        }
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

    fn add_run(&mut self, record: pb::RunRecord, turn: &mut Turn) {
        let spec = record.spec.clone().unwrap_or_default();
        let (dag, fx) = RunDag::new(convert::task_defs(&spec), spec.fail_fast);
        let id = record.id.clone();
        info!(run = %id, pipeline = %spec.name, tasks = spec.tasks.len(), "run submitted");
        let n = spec.tasks.len();
        self.runs.insert(
            id.clone(),
            ActiveRun {
                record,
                dag,
                rev: 0,
                task_revs: vec![0; n],
                requests: requests(&spec),
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
                Effect::Ready { task } => self.queue.push_back((run_id.to_string(), task)),
                Effect::Assign {
                    task,
                    attempt,
                    agent,
                } => {
                    let send = self.assignment(run_id, task, attempt);
                    turn.sends.push((
                        run_id.to_string(),
                        Send::Assign(Box::new(send), agent, task),
                    ));
                }
                Effect::Cancel {
                    task,
                    attempt,
                    agent,
                } => {
                    let c = self.cancel_request(self.attempt_ref(run_id, task, attempt));
                    turn.sends
                        .push((run_id.to_string(), Send::Cancel(c, agent, Some(task))));
                }
                Effect::Released { task, .. } => self.fleet.release(run_id, task),
                Effect::Finished(status) => {
                    info!(run = %run_id, state = ?status, "run finished");
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
        let spec = run.record.spec.as_ref();
        let task_spec = spec.and_then(|s| s.tasks.get(task)).cloned();
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

    fn on_agent_event(&mut self, msg: &jetstream::Message, now: u64, turn: &mut Turn) {
        let ev = match pb::AttemptEvent::decode(msg.payload.clone()) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "undecodable event dropped");
                return;
            }
        };
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
        debug!(run = %aref.run_id, task = %aref.task, attempt, agent = %ev.agent_id, "agent event");
        let at = if ev.at_ms > 0 { ev.at_ms } else { now };
        self.apply_to(&aref.run_id, core, at, turn);
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

    /// Hands queued Ready tasks to agents with room, oldest first, and notes
    /// why the others wait.
    fn place(&mut self, now: u64, turn: &mut Turn) {
        if self.queue.is_empty() {
            return;
        }
        let mut slots = self.fleet.schedulable_slots();
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        let mut still_queued = VecDeque::new();
        while let Some((run_id, task)) = self.queue.pop_front() {
            let Some(run) = self.runs.get_mut(&run_id) else {
                continue;
            };
            if run.dag.task(task).status != TaskStatus::Ready {
                continue;
            }
            let req = run.requests[task].clone();
            match placement::choose(&slots, &req, self.opts.placement) {
                Ok(p) => {
                    let agent = slots[p.agent].id.clone();
                    let ev = Event::Assign {
                        task,
                        agent: agent.clone(),
                        gpus: p.gpus.clone(),
                    };
                    match run.dag.apply(ev, now) {
                        Ok(fx) => {
                            let attempt = run.dag.task(task).current().map_or(0, |a| a.number);
                            slots[p.agent].allocate(&req, &p.gpus);
                            self.fleet.allocations.insert(
                                (run_id.clone(), task),
                                Allocation {
                                    agent,
                                    attempt,
                                    req,
                                    gpus: p.gpus,
                                },
                            );
                            self.effects(&run_id, fx, turn);
                        }
                        Err(stale) => debug!(run = %run_id, reason = %stale.0, "not placed"),
                    }
                }
                Err(why) => {
                    let unschedulable = matches!(why, NoFit::Never(_));
                    let reason = match why {
                        NoFit::NoAgents => self.fleet.idle_reason(),
                        other => other.to_string(),
                    };
                    debug!(run = %run_id, task, reason = %reason, "task waits");
                    waiting
                        .entry(run_id.clone())
                        .or_default()
                        .insert(task, (reason, unschedulable));
                    still_queued.push_back((run_id, task));
                }
            }
        }
        self.queue = still_queued;
        self.fleet.store_slots(slots);
        if let Ok(mut w) = self.waiting.lock() {
            *w = waiting;
        }
    }

    /// Commit, then carry out; on failure reload from etcd instead.
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
                    }
                }
                for m in turn.acks {
                    // Redeliver now rather than after the ack wait.
                    tokio::spawn(async move { m.ack_with(AckKind::Nak(None)).await });
                }
                let mut retry = Turn::default();
                if let Err(e) = self.reload(&mut retry).await {
                    warn!(error = %e, "reload from etcd failed; retrying next turn");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
                Box::pin(self.finish_turn(retry)).await;
            }
        }
    }

    async fn commit(&mut self, turn: &Turn) -> Result<()> {
        enum Target {
            Run(String),
            Task(String, usize),
            Agent(String),
        }
        let mut groups = Vec::new();
        let mut index: Vec<Target> = Vec::new();
        for run_id in &turn.touched {
            let Some(run) = self.runs.get_mut(run_id) else {
                continue;
            };
            let (run_dirty, tasks) = run.dag.take_dirty();
            let mut group = Vec::new();
            for t in tasks {
                let state = run.dag.task(t);
                if !state.needs_record() {
                    continue;
                }
                group.push(Write {
                    key: self.store.task_key(run_id, &run.dag.defs()[t].name),
                    value: convert::task_record(state).encode_to_vec(),
                    expect_rev: run.task_revs[t],
                });
                index.push(Target::Task(run_id.clone(), t));
            }
            if run_dirty {
                group.push(Write {
                    key: self.store.run_key(run_id),
                    value: convert::run_record(&run.record, &run.dag).encode_to_vec(),
                    expect_rev: run.rev,
                });
                index.push(Target::Run(run_id.clone()));
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        for (id, a) in &self.fleet.agents {
            if a.record_dirty {
                groups.push(vec![Write {
                    key: self.store.agent_key(id),
                    value: a.record.encode_to_vec(),
                    expect_rev: a.record_rev,
                }]);
                index.push(Target::Agent(id.clone()));
            }
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
            }
        }
        Ok(())
    }

    async fn carry_out(&mut self, turn: Turn) {
        for (run_id, send) in turn.sends {
            let bus = self.bus.clone();
            let tx = self.internal_tx.clone();
            match send {
                Send::Assign(a, agent, task) => {
                    let attempt = a.attempt.as_ref().map_or(0, |r| r.attempt);
                    tokio::spawn(async move {
                        if let Err(reason) = bus.assign(&agent, &a).await {
                            let _ = tx.send(Internal::AssignFailed {
                                run: run_id,
                                task,
                                attempt,
                                agent,
                                reason,
                            });
                        }
                    });
                }
                Send::Cancel(c, agent, task) => {
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
        for m in turn.acks {
            tokio::spawn(async move {
                if let Err(e) = m.ack().await {
                    warn!(error = %e, "ack failed; the event will be redelivered");
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
            }
        }
        for run_id in turn.touched {
            let done = self
                .runs
                .get(&run_id)
                .is_some_and(|r| r.dag.status().is_terminal());
            if done {
                self.runs.remove(&run_id);
            }
            let _ = self.changed.send(run_id);
        }
    }

    /// After a failed commit: agent records and runs from etcd again.
    async fn reload(&mut self, turn: &mut Turn) -> Result<()> {
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
        let stored = self.store.load_active_runs().await?;
        self.runs.clear();
        self.queue.clear();
        self.fleet.clear_allocations();
        info!(runs = stored.len(), "loaded active runs from etcd");
        for s in stored {
            self.restore_run(s, turn);
        }
        turn.placement_needed = true;
        Ok(())
    }

    fn restore_run(&mut self, s: StoredRun, turn: &mut Turn) {
        let (dag, fx) = convert::restore(&s);
        let spec = s.record.spec.clone().unwrap_or_default();
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
                        agent: a.agent.clone(),
                        attempt: a.number,
                        req: reqs[i].clone(),
                        gpus: a.gpus.clone(),
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
                dag,
                rev: s.rev,
                task_revs,
                requests: reqs,
            },
        );
        self.effects(&id, fx, turn);
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
