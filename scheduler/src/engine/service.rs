//! The engine's async loop: the one owner of [`EngineState`]. Each turn
//! gathers what is waiting (requests, agent events, heartbeats, answers to
//! assign/cancel requests, timers), feeds it to the state, commits the
//! turn's changes to etcd in as few transactions as possible (group
//! commit), and only then carries the turn out: assignments and cancels
//! go to agents, the agent events are acked — once per turn: the consumer
//! acks everything up to the turn's last event (`AckPolicy::All`), never
//! past one not yet applied ([`super::ack_frontier`]) — and callers get
//! their answers. If a commit fails, nothing is sent or acked:
//! the loop reloads the state from etcd and applies the turn's events again
//! (a later ack would cover them, so they are not left to redelivery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

use drover_api::{naming, nats_auth, pb};
use drover_scheduler_core::ids::{AgentId, AttemptId};
use drover_scheduler_core::Millis;
use drover_telemetry::{propagation, record};

use crate::bus::{Bus, Events, Fetched};
use crate::error::{Result, SchedulerError};
use crate::leader::Leadership;
use crate::metrics::SchedulerMetrics;
use crate::store::Store;

use super::ack_frontier::AckFrontier;
use super::admission::WaitBoard;
use super::event_message::EventMessage;
use super::handle::{Command, EngineHandle, Response};
use super::recovery::Stored;
use super::state::{Answer, EngineState, Input, ReplyId, Send, Turn};
use super::EngineOptions;

/// Most items one turn takes before committing.
const MAX_BATCH: usize = 1024;
/// How often silent agents are looked for.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// Least time between two metrics snapshots: deriving one walks every
/// active task, which busy turns need not do each time. Idle, the liveness
/// tick still brings a turn (and a snapshot) every second.
const METRICS_EVERY_MS: u64 = 250;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The loop's clock: wall-clock milliseconds at start, advanced by a
/// monotonic clock, so a step of the system clock (NTP) neither marks every
/// agent lost at once nor hides a silent one.
struct Clock {
    wall_at_start: u64,
    started: std::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            wall_at_start: now_ms(),
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.wall_at_start + self.started.elapsed().as_millis() as u64
    }
}

/// Something that woke the loop.
enum Item {
    Command(Command),
    Event(Box<EventMessage>),
    /// Events read from the stream to fill a gap in what was delivered.
    Fetched(Fetched),
    Heartbeat(async_nats::Message),
    /// What came of a request to an agent (`AssignFailed`, `CancelGone`).
    Outcome(Input),
    Tick,
}

pub struct Engine {
    store: Store,
    /// Where `for_each` lists are read from.
    artifacts: drover_artifacts::Store,
    /// Shared with the tasks that send assignments and acks: cloning a
    /// `Bus` clones a NATS client handle, which allocates (per assignment).
    bus: Arc<Bus>,
    state: EngineState,
    changed: broadcast::Sender<String>,
    waiting: Arc<Mutex<Arc<WaitBoard>>>,
    outcomes_tx: mpsc::UnboundedSender<Input>,
    outcomes: mpsc::UnboundedReceiver<Input>,
    commands: mpsc::Receiver<Command>,
    metrics: SchedulerMetrics,
    metrics_at: Millis,
    clock: Clock,
    /// Callers waiting for their answer, by the id their request went in with.
    replies: HashMap<ReplyId, oneshot::Sender<Result<Response>>>,
    next_reply: u64,
    /// A commit failed: reload from etcd before the next turn.
    reload_pending: bool,
    /// What a failed turn applied (its events), or what waited while the
    /// reload failed: applied at the start of the next turn.
    redo: Vec<Item>,
    opts: EngineOptions,
    /// Nothing is sent or acked unless this process leads (see [`crate::leader`]).
    leadership: Leadership,
    /// Leadership was lost during the term: it ends at once.
    deposed: bool,
    /// Agents whose heartbeat this turn took in and asked for an ack.
    heartbeat_acks: Vec<String>,
    /// Which event may be acked; set when the events stream is opened.
    frontier: AckFrontier<Box<jetstream::Message>>,
    fetched_tx: mpsc::UnboundedSender<Fetched>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
    /// A gap is being fetched: no second fetch until it answers.
    fetching: bool,
    /// After a failed fetch, the next waits until then.
    fetch_after: Option<std::time::Instant>,
}

impl Engine {
    pub fn new(
        store: Store,
        artifacts: drover_artifacts::Store,
        bus: Bus,
        opts: EngineOptions,
        metrics: SchedulerMetrics,
        leadership: Leadership,
    ) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(1024);
        let (changed, _) = broadcast::channel(4096);
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let (fetched_tx, fetched) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Arc::new(WaitBoard::default())));
        let handle = EngineHandle {
            tx,
            changed: changed.clone(),
            waiting: waiting.clone(),
        };
        let engine = Self {
            store,
            artifacts,
            bus: Arc::new(bus),
            state: EngineState::new(opts.clone(), metrics.clone()),
            changed,
            waiting,
            outcomes_tx,
            outcomes,
            commands,
            metrics,
            metrics_at: 0,
            clock: Clock::new(),
            replies: HashMap::new(),
            next_reply: 0,
            reload_pending: false,
            redo: Vec::new(),
            opts,
            leadership,
            deposed: false,
            heartbeat_acks: Vec::new(),
            frontier: AckFrontier::after(0),
            fetched_tx,
            fetched,
            fetching: false,
            fetch_after: None,
        };
        (engine, handle)
    }

    /// Forgets everything of a term that ended (leadership lost or given
    /// up): its state, what it had to redo, and the callers still waiting,
    /// who are told to go to the leader. The next term loads from etcd.
    pub fn step_down(&mut self) {
        self.state = EngineState::new(self.opts.clone(), self.metrics.clone());
        self.redo.clear();
        self.reload_pending = false;
        self.deposed = false;
        let gone = || {
            Err(SchedulerError::Unavailable(
                "not the leader any more; retry".into(),
            ))
        };
        for (_, tx) in self.replies.drain() {
            let _ = tx.send(gone());
        }
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = cmd.reply.send(gone());
        }
        // An empty run id: every run's state is gone from here, so watchers
        // end and go to the new leader.
        let _ = self.changed.send(String::new());
    }

    /// Leads until `shutdown` resolves; Err(NotLeader) as soon as
    /// leadership is found lost. Everything is loaded from etcd first, as
    /// on a restart.
    pub async fn run_term(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        // Answers to the last term's requests go to a channel nobody reads.
        (self.outcomes_tx, self.outcomes) = mpsc::unbounded_channel();
        (self.fetched_tx, self.fetched) = mpsc::unbounded_channel();
        self.fetching = false;
        // Only the leader submits, and a new term starts with none in
        // flight: a spec without its run is left by a submit that died.
        let orphans = self.store.delete_orphan_specs().await?;
        if orphans > 0 {
            tracing::info!(
                runs = orphans,
                "deleted specs of submits that never completed"
            );
        }
        let mut events = self.open_events().await?;
        let mut heartbeats = self.bus.heartbeats().await?;
        let mut turn = Turn::default();
        let now = self.clock.now();
        self.state.load(self.load().await?, now, &mut turn);
        self.state.end_inputs(now, &mut turn);
        self.finish_turn(turn, Vec::new()).await;
        self.publish_metrics(now);
        if self.deposed {
            return Err(SchedulerError::NotLeader);
        }
        self.bus.ask_heartbeats().await?;
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        tokio::pin!(shutdown);
        loop {
            let now = self.clock.now();
            let wake = self.state.next_wakeup().map(|t| t.saturating_sub(now));
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                // After a failed commit: reload now, not at the next message.
                _ = std::future::ready(()), if self.reload_pending => Item::Tick,
                Some(cmd) = self.commands.recv() => Item::Command(cmd),
                Some(o) = self.outcomes.recv() => Item::Outcome(o),
                Some(f) = self.fetched.recv() => Item::Fetched(f),
                ev = events.next() => match ev {
                    Some(Ok(msg)) => Item::Event(Box::new(EventMessage::Delivered(Box::new(msg)))),
                    Some(Err(e)) => {
                        warn!(error = %e, "events consumer");
                        self.bus.failed("events");
                        continue
                    }
                    None => {
                        warn!("events consumer ended; reopening");
                        events = self.open_events().await?;
                        continue;
                    }
                },
                Some(hb) = heartbeats.next() => Item::Heartbeat(hb),
                _ = sleep_ms(wake) => Item::Tick,
                _ = liveness.tick() => Item::Tick,
            };
            let mut items = vec![first];
            while items.len() < MAX_BATCH {
                if let Ok(c) = self.commands.try_recv() {
                    items.push(Item::Command(c));
                } else if let Ok(o) = self.outcomes.try_recv() {
                    items.push(Item::Outcome(o));
                } else if let Some(Some(Ok(m))) = events.next().now_or_never() {
                    items.push(Item::Event(Box::new(EventMessage::Delivered(Box::new(m)))));
                } else if let Some(Some(h)) = heartbeats.next().now_or_never() {
                    items.push(Item::Heartbeat(h));
                } else {
                    break;
                }
            }
            let mut turn = Turn::default();
            let now = self.clock.now();
            if self.reload_pending {
                match self.load().await {
                    Ok(stored) => self.state.load(stored, now, &mut turn),
                    Err(e) => {
                        // Nothing is applied to a state etcd may not hold:
                        // it all waits for the reload.
                        warn!(error = %e, "reload from etcd failed; retrying");
                        self.redo.extend(items);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
                self.reload_pending = false;
            }
            let mut acks = Vec::new();
            let redo = std::mem::take(&mut self.redo);
            for item in redo.into_iter().chain(items) {
                self.apply(item, now, &mut turn, &mut acks);
            }
            self.answer_now(&mut turn);
            self.state.end_inputs(now, &mut turn);
            self.finish_turn(turn, acks).await;
            self.ack_heartbeats().await;
            self.publish_metrics(now);
            if self.deposed {
                return Err(SchedulerError::NotLeader);
            }
        }
        Ok(())
    }

    /// Opens the events consumer; acks start after what it was opened after.
    async fn open_events(&mut self) -> Result<crate::bus::EventStream> {
        let Events { messages, after } = self.bus.events().await?;
        self.frontier = AckFrontier::after(after);
        self.fetching = false;
        Ok(messages)
    }

    async fn load(&self) -> Result<Stored> {
        Ok(Stored {
            queues: self.store.list_queues().await?,
            agents: self.store.list_agents().await?,
            runs: self.store.load_active_runs().await?,
            cache: self.store.list_cache().await?,
        })
    }

    /// Tells the agents heard from this turn the agent timeout, after
    /// their heartbeats were taken in (self-fencing; see the agent).
    async fn ack_heartbeats(&mut self) {
        for agent in std::mem::take(&mut self.heartbeat_acks) {
            self.bus
                .ack_heartbeat(&agent, self.opts.agent_timeout)
                .await;
        }
    }

    /// Answers that need nothing committed (reads, refusals) go out before
    /// the commit; the rest wait for it.
    fn answer_now(&mut self, turn: &mut Turn) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut turn.answers)
            .into_iter()
            .partition(|(_, answer)| matches!(answer, Answer::Now(_)));
        turn.answers = later;
        for (id, answer) in now {
            if let (Answer::Now(result), Some(tx)) = (answer, self.replies.remove(&id)) {
                let _ = tx.send(*result);
            }
        }
    }

    /// Feeds one item to the state; events' messages are kept to be acked.
    fn apply(&mut self, item: Item, now: Millis, turn: &mut Turn, acks: &mut Vec<EventMessage>) {
        match item {
            Item::Command(Command { request, reply }) => {
                let id = ReplyId(self.next_reply);
                self.next_reply += 1;
                self.replies.insert(id, reply);
                self.state.apply(Input::Request { id, request }, now, turn);
            }
            Item::Event(msg) => {
                for input in self.decode_events(&msg) {
                    self.state.apply(input, now, turn);
                }
                acks.push(*msg);
            }
            Item::Fetched(fetched) => {
                self.fetching = false;
                if let Some(error) = fetched.error {
                    warn!(error = %error, "fetching missed events from the stream failed; retrying");
                    self.fetch_after = Some(std::time::Instant::now() + Duration::from_millis(500));
                }
                for seq in fetched.gone {
                    self.frontier.gone(seq);
                }
                for message in fetched.messages {
                    let event = Item::Event(Box::new(EventMessage::Fetched(message)));
                    self.apply(event, now, turn, acks);
                }
            }
            Item::Heartbeat(msg) => match pb::Heartbeat::decode(msg.payload.clone()) {
                Ok(hb)
                    if naming::heartbeat_agent(self.bus.prefix(), &msg.subject)
                        != Some(hb.agent_id.as_str()) =>
                {
                    warn!(subject = %msg.subject, agent = %hb.agent_id, "heartbeat dropped: it names another agent than its subject");
                    self.metrics.reject("heartbeat_mismatch");
                }
                Ok(hb) => {
                    // Only on the agent's own ack subject: a reply subject
                    // is the sender's to choose.
                    let ack = nats_auth::heartbeat_ack_subject(self.bus.prefix(), &hb.agent_id);
                    if msg.reply.as_deref() == Some(ack.as_str()) {
                        self.heartbeat_acks.push(hb.agent_id.clone());
                    }
                    self.state.apply(Input::Heartbeat(hb), now, turn);
                }
                Err(e) => warn!(subject = %msg.subject, error = %e, "undecodable heartbeat"),
            },
            Item::Outcome(input) => self.state.apply(input, now, turn),
            Item::Tick => self.state.apply(Input::Tick, now, turn),
        }
    }

    /// One message of the events stream: an agent's single event (its
    /// span in the headers) or its batch of events (spans in the body).
    fn decode_events(&self, msg: &EventMessage) -> Vec<Input> {
        let subject = msg.subject();
        let events = match drover_api::events::decode(self.bus.prefix(), subject, msg.payload()) {
            Ok(events) => events,
            Err(e) => {
                warn!(subject = %subject, error = %e, "undecodable event dropped");
                return Vec::new();
            }
        };
        let Some(via) = naming::events_agent(self.bus.prefix(), subject) else {
            warn!(subject = %subject, "event dropped: not on an agent's events subject");
            return Vec::new();
        };
        let via: std::sync::Arc<str> = via.into();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        events
            .into_iter()
            .map(|(event, traceparent)| {
                // Only parsed when it is logged.
                let trace_id = debug
                    .then(|| match traceparent.as_str() {
                        "" => propagation::span_of(&propagation::extract_nats(msg.headers())),
                        tp => propagation::parse_traceparent(tp),
                    })
                    .flatten()
                    .map(|sc| sc.trace_id().to_string())
                    .unwrap_or_default();
                Input::AgentEvent {
                    event,
                    trace_id,
                    via: via.clone(),
                }
            })
            .collect()
    }

    /// Hands the metrics a fresh snapshot of the state gauges, at most
    /// every `METRICS_EVERY_MS`.
    fn publish_metrics(&mut self, now: Millis) {
        if now.saturating_sub(self.metrics_at) < METRICS_EVERY_MS {
            return;
        }
        self.metrics_at = now;
        self.metrics.publish(self.state.metrics_snapshot());
    }

    /// Commit, then carry out; on failure the next turn reloads from etcd
    /// and applies this turn's events again.
    async fn finish_turn(&mut self, mut turn: Turn, acks: Vec<EventMessage>) {
        let changes = self.state.changes(&turn);
        let committed = if changes.is_empty() {
            Ok(Default::default())
        } else {
            self.store.commit(changes).await
        };
        // Paused past the lease (or fenced out): not one send or ack.
        let committed = match committed {
            Ok(_) if !self.leadership.may_act() => Err(SchedulerError::NotLeader),
            other => other,
        };
        match committed {
            Ok(revisions) => {
                self.state.committed(&revisions);
                self.carry_out(&mut turn, acks);
                let touched = std::mem::take(&mut turn.touched);
                for run in self.state.settle(touched) {
                    let _ = self.changed.send(run.to_string());
                }
            }
            Err(SchedulerError::NotLeader) => {
                warn!("leadership lost: nothing of this turn is sent or acked");
                self.deposed = true;
                for (_, tx) in self.replies.drain() {
                    let _ = tx.send(Err(SchedulerError::Unavailable(
                        "not the leader any more; retry".into(),
                    )));
                }
            }
            Err(e) => {
                warn!(error = %e, "commit failed; reloading state from etcd");
                for (id, answer) in turn.answers {
                    let result = match answer {
                        // Needed nothing committed: still true.
                        Answer::Now(result) => *result,
                        Answer::AfterCommit(_) => Err(SchedulerError::Unavailable(e.to_string())),
                    };
                    if let Some(tx) = self.replies.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                // Not naked for redelivery: the next turn's ack would cover
                // them before they came back.
                let events = acks.into_iter().map(|m| Item::Event(Box::new(m)));
                self.redo.extend(events);
                self.reload_pending = true;
            }
        }
    }

    fn carry_out(&mut self, turn: &mut Turn, acks: Vec<EventMessage>) {
        // One request per agent for all the turn's assignments to it.
        let mut batches: HashMap<AgentId, (pb::AssignBatch, Vec<AttemptId>)> = HashMap::new();
        for send in std::mem::take(&mut turn.sends) {
            match send {
                Send::Assign {
                    agent,
                    attempt,
                    assignment,
                    traceparent,
                } => {
                    let (request, attempts) = batches.entry(agent).or_default();
                    attempts.push(attempt);
                    request.assignments.push(*assignment);
                    request.traceparents.push(traceparent.unwrap_or_default());
                }
                Send::Cancel {
                    agent,
                    request,
                    follow_up,
                } => {
                    let bus = self.bus.clone();
                    let tx = self.outcomes_tx.clone();
                    tokio::spawn(async move {
                        let reason = match bus.cancel(agent.as_str(), &request).await {
                            Ok(true) => return,
                            Ok(false) => "cancelled (the agent no longer ran it)".to_string(),
                            Err(e) => format!("cancelled (agent `{agent}` unreachable: {e})"),
                        };
                        // A stray attempt needs no follow-up.
                        if let Some(attempt) = follow_up {
                            let _ = tx.send(Input::CancelGone { attempt, reason });
                        }
                    });
                }
            }
        }
        let term = self.leadership.fence().map_or(0, |f| f.revision);
        for (agent, (mut request, attempts)) in batches {
            request.leader_revision = term;
            let bus = self.bus.clone();
            let tx = self.outcomes_tx.clone();
            tokio::spawn(async move {
                let results = bus.assign(agent.as_str(), request).await;
                for (attempt, result) in attempts.into_iter().zip(results) {
                    if let Err(reason) = result {
                        let _ = tx.send(Input::AssignFailed {
                            attempt,
                            agent: agent.clone(),
                            reason,
                        });
                    }
                }
            });
        }
        for read in std::mem::take(&mut turn.lists) {
            let artifacts = self.artifacts.clone();
            let tx = self.outcomes_tx.clone();
            tokio::spawn(async move {
                let result = read_list(&artifacts, &read).await;
                let _ = tx.send(Input::list(read, result));
            });
        }
        for span in std::mem::take(&mut turn.spans) {
            record::emit(span);
        }
        // One ack for the turn: the consumer acks every event up to it,
        // so it goes no further than the first event not yet applied.
        for msg in acks {
            let Some(seq) = msg.sequence() else { continue };
            match msg {
                EventMessage::Delivered(m) => self.frontier.applied(seq, Some(m)),
                EventMessage::Fetched(_) => self.frontier.applied(seq, None),
            }
        }
        self.fetch_gap();
        if let Some(m) = self.frontier.take_ack() {
            let bus = self.bus.clone();
            let leadership = self.leadership.clone();
            tokio::spawn(async move {
                if !leadership.may_act() {
                    return;
                }
                if let Err(e) = m.ack().await {
                    warn!(error = %e, "ack failed; the events will be redelivered");
                    bus.failed("ack");
                }
            });
        }
        for (id, answer) in std::mem::take(&mut turn.answers) {
            let result = match answer {
                Answer::Now(result) => *result,
                Answer::AfterCommit(after) => self.state.answer(after),
            };
            if let Some(tx) = self.replies.remove(&id) {
                let _ = tx.send(result);
            }
        }
        if let Some(board) = turn.board.take() {
            if let Ok(mut w) = self.waiting.lock() {
                *w = board;
            }
        }
    }
}

impl Engine {
    /// Events above a gap wait to be acked: what is missing is read from
    /// the stream itself rather than waited for (the consumer delivers it
    /// again only after its ack wait).
    fn fetch_gap(&mut self) {
        let Some(missing) = self.frontier.missing() else {
            return;
        };
        if self.fetching
            || self
                .fetch_after
                .is_some_and(|t| std::time::Instant::now() < t)
        {
            return;
        }
        warn!(
            from = missing.start(),
            to = missing.end(),
            waiting = self.frontier.held(),
            "events missed in delivery (lost on the wire); reading them from the stream"
        );
        self.fetching = true;
        self.fetch_after = None;
        let bus = self.bus.clone();
        let tx = self.fetched_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(bus.fetch_events(missing).await);
        });
    }
}

/// Reads a `for_each` list. A list read again after a restart is retried
/// (its task already expanded: failing it is no longer an option); a first
/// read's failure fails the task.
async fn read_list(
    artifacts: &drover_artifacts::Store,
    read: &super::ListRead,
) -> std::result::Result<Vec<u8>, String> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match artifacts.get_bytes(&read.key).await {
            Ok(bytes) => return Ok(bytes.to_vec()),
            Err(e) if read.reload => {
                warn!(run = %read.run, key = %read.key, error = %e, "reading a for_each list again; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                return Err(format!(
                    "for_each: output `{}` could not be read: {e}",
                    read.output
                ))
            }
        }
    }
}

/// Sleeps `ms`, or forever for None.
async fn sleep_ms(ms: Option<u64>) {
    match ms {
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => std::future::pending().await,
    }
}
