//! The scheduler loop: the one owner of in-memory run state.
//!
//! Each turn drains what is waiting (API commands, agent events, heartbeats,
//! answers to assign/cancel requests, retry timers), lets the pure core
//! decide, places ready tasks, commits every changed key to etcd in as few
//! transactions as possible (group commit), and only then sends assignments
//! and cancels, acks the agent events and answers the API callers. If a
//! commit fails, nothing is sent or acked: the loop reloads its state from
//! etcd and unacked events are delivered again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use drover_api::{naming, pb};
use drover_scheduler_core::dag::{Effect, Event, RunDag, TaskStatus};
use drover_scheduler_core::placement::{self, AgentSlot, NoFit, Request};

use crate::bus::Bus;
use crate::convert;
use crate::error::{Result, SchedulerError};
use crate::store::{Store, StoredRun, Write};

/// Most items one turn takes before committing.
const MAX_BATCH: usize = 1024;

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

/// Cheap handle for the gRPC layer.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    changed: broadcast::Sender<String>,
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

    /// Ids of runs as their changes are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub nats_prefix: String,
    pub agent_timeout: Duration,
    pub cancel_grace: Duration,
}

struct ActiveRun {
    /// Spec, params and creation time; run-level state comes from `dag`.
    record: pb::RunRecord,
    dag: RunDag,
    rev: i64,
    task_revs: Vec<i64>,
    requests: Vec<Request>,
}

struct AgentEntry {
    slot: AgentSlot,
    last_seen: Instant,
    /// Refused or missed an assignment: no new work until it heartbeats again.
    suspended: bool,
}

enum Send {
    Assign(Box<pb::Assignment>, String, usize),
    Cancel(pb::CancelAttempt, String, usize),
}

enum Reply {
    Submit(oneshot::Sender<Result<()>>),
    Cancel(oneshot::Sender<Result<bool>>),
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
    agents: BTreeMap<String, AgentEntry>,
    /// Resources held by attempts, by (run, task): agent and request.
    allocations: HashMap<(String, usize), (String, Request)>,
    queue: VecDeque<(String, usize)>,
    changed: broadcast::Sender<String>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    commands: mpsc::Receiver<Command>,
}

impl Engine {
    pub fn new(store: Store, bus: Bus, opts: EngineOptions) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(1024);
        let (changed, _) = broadcast::channel(4096);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let handle = EngineHandle {
            tx,
            changed: changed.clone(),
        };
        let engine = Self {
            store,
            bus,
            opts,
            runs: HashMap::new(),
            agents: BTreeMap::new(),
            allocations: HashMap::new(),
            queue: VecDeque::new(),
            changed,
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
        self.bus.ask_heartbeats().await?;
        let mut turn = Turn::default();
        self.resync(&mut turn).await?;
        self.finish_turn(turn).await;
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
            Item::Cmd(Command::Submit { record, reply }) => {
                self.add_run(*record, turn);
                turn.replies.push(Reply::Submit(reply));
            }
            Item::Cmd(Command::Cancel { run_id, reply }) => {
                if self.runs.contains_key(&run_id) {
                    self.apply_to(&run_id, Event::Cancel, now, turn);
                    turn.replies.push(Reply::Cancel(reply));
                } else {
                    let _ = reply.send(Ok(false));
                }
            }
            Item::Event(msg) => {
                self.on_agent_event(&msg, now, turn);
                turn.acks.push(*msg);
            }
            Item::Heartbeat(msg) => self.on_heartbeat(&msg),
            Item::Internal(Internal::AssignFailed {
                run,
                task,
                attempt,
                agent,
                reason,
            }) => {
                warn!(run = %run, task, attempt, agent = %agent, reason = %reason, "assignment failed");
                if let Some(a) = self.agents.get_mut(&agent) {
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
                    let c = pb::CancelAttempt {
                        attempt: Some(self.attempt_ref(run_id, task, attempt)),
                        grace_ms: self.opts.cancel_grace.as_millis() as u64,
                    };
                    turn.sends
                        .push((run_id.to_string(), Send::Cancel(c, agent, task)));
                }
                Effect::Released { task, .. } => self.release(run_id, task),
                Effect::Finished(status) => {
                    info!(run = %run_id, state = ?status, "run finished");
                }
            }
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

    /// The message an agent needs to run an attempt: the resolved task and
    /// where each input sits in the object store.
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
        pb::Assignment {
            artifact_prefix: naming::attempt_prefix(run_id, &aref.task, attempt),
            attempt: Some(aref),
            task: task_spec,
            inputs,
            gpus: vec![],
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

    fn on_heartbeat(&mut self, msg: &async_nats::Message) {
        let hb = match pb::Heartbeat::decode(msg.payload.clone()) {
            Ok(hb) => hb,
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "undecodable heartbeat");
                return;
            }
        };
        let id = hb.agent_id.clone();
        let (used_cpu, used_mem) = self
            .allocations
            .values()
            .filter(|(agent, _)| *agent == id)
            .fold((0, 0), |(c, m), (_, r)| {
                (c + r.cpu_millis, m + r.memory_bytes)
            });
        let entry = self.agents.entry(id.clone()).or_insert_with(|| {
            info!(agent = %id, executors = ?hb.executors, cpu_millis = hb.cpu_millis, "agent joined");
            AgentEntry {
                slot: AgentSlot {
                    id: id.clone(),
                    executors: Vec::new(),
                    cpu_millis: 0,
                    memory_bytes: 0,
                    used_cpu_millis: used_cpu,
                    used_memory_bytes: used_mem,
                },
                last_seen: Instant::now(),
                suspended: false,
            }
        });
        entry.slot.executors = hb.executors;
        entry.slot.cpu_millis = hb.cpu_millis as u64;
        entry.slot.memory_bytes = hb.memory_bytes;
        entry.last_seen = Instant::now();
        entry.suspended = false;
    }

    fn release(&mut self, run_id: &str, task: usize) {
        if let Some((agent, req)) = self.allocations.remove(&(run_id.to_string(), task)) {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.slot.release(&req);
            }
        }
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

    /// Hands queued Ready tasks to agents with room, oldest first.
    fn place(&mut self, now: u64, turn: &mut Turn) {
        if self.queue.is_empty() {
            return;
        }
        let timeout = self.opts.agent_timeout;
        let live: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.suspended && a.last_seen.elapsed() < timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let mut slots: Vec<AgentSlot> =
            live.iter().map(|id| self.agents[id].slot.clone()).collect();
        let mut waiting = VecDeque::new();
        while let Some((run_id, task)) = self.queue.pop_front() {
            let Some(run) = self.runs.get_mut(&run_id) else {
                continue;
            };
            if run.dag.task(task).status != TaskStatus::Ready {
                continue;
            }
            let req = run.requests[task].clone();
            match placement::choose(&slots, &req) {
                Ok(i) => {
                    let agent = slots[i].id.clone();
                    let ev = Event::Assign {
                        task,
                        agent: agent.clone(),
                        gpus: vec![],
                    };
                    match run.dag.apply(ev, now) {
                        Ok(fx) => {
                            slots[i].allocate(&req);
                            self.allocations
                                .insert((run_id.clone(), task), (agent, req));
                            self.effects(&run_id, fx, turn);
                        }
                        Err(stale) => debug!(run = %run_id, reason = %stale.0, "not placed"),
                    }
                }
                Err(NoFit::NoAgents) => {
                    waiting.push_back((run_id, task));
                    waiting.extend(self.queue.drain(..));
                    break;
                }
                Err(why) => {
                    debug!(run = %run_id, task, reason = %why, "task waits");
                    waiting.push_back((run_id, task));
                }
            }
        }
        self.queue = waiting;
        for slot in slots {
            if let Some(a) = self.agents.get_mut(&slot.id) {
                a.slot.used_cpu_millis = slot.used_cpu_millis;
                a.slot.used_memory_bytes = slot.used_memory_bytes;
            }
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
                    }
                }
                for m in turn.acks {
                    // Redeliver now rather than after the ack wait.
                    tokio::spawn(async move { m.ack_with(AckKind::Nak(None)).await });
                }
                let mut retry = Turn::default();
                if let Err(e) = self.resync(&mut retry).await {
                    warn!(error = %e, "reload from etcd failed; retrying next turn");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
                Box::pin(self.finish_turn(retry)).await;
            }
        }
    }

    async fn commit(&mut self, turn: &Turn) -> Result<()> {
        let mut groups = Vec::new();
        let mut index: Vec<(String, Option<usize>)> = Vec::new();
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
                index.push((run_id.clone(), Some(t)));
            }
            if run_dirty {
                group.push(Write {
                    key: self.store.run_key(run_id),
                    value: convert::run_record(&run.record, &run.dag).encode_to_vec(),
                    expect_rev: run.rev,
                });
                index.push((run_id.clone(), None));
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        if groups.is_empty() {
            return Ok(());
        }
        let revs = self.store.commit(groups).await?;
        for ((run_id, task), rev) in index.into_iter().zip(revs) {
            if let Some(run) = self.runs.get_mut(&run_id) {
                match task {
                    Some(t) => run.task_revs[t] = rev,
                    None => run.rev = rev,
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
                        let _ = tx.send(Internal::CancelGone {
                            run: run_id,
                            task,
                            attempt,
                            reason,
                        });
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

    /// Replaces in-memory state with what etcd holds; queues what must be resent.
    async fn resync(&mut self, turn: &mut Turn) -> Result<()> {
        let stored = self.store.load_active_runs().await?;
        self.runs.clear();
        self.queue.clear();
        self.allocations.clear();
        for a in self.agents.values_mut() {
            a.slot.used_cpu_millis = 0;
            a.slot.used_memory_bytes = 0;
        }
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
                let req = reqs[i].clone();
                if let Some(entry) = self.agents.get_mut(&a.agent) {
                    entry.slot.allocate(&req);
                }
                self.allocations
                    .insert((id.clone(), i), (a.agent.clone(), req));
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
            Request::new(&t.image, r.cpu_millis as u64, r.memory_bytes)
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
