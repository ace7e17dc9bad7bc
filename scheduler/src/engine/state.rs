//! [`EngineState`]: everything the scheduler knows in memory, changed one
//! [`Input`] at a time, synchronously, at a time the caller gives. It does
//! no I/O: what a turn must commit to etcd comes out as changes
//! ([`EngineState::changes`]), and what must happen once they are committed
//! (assignments, cancels, answers, spans) collects in the [`Turn`].
//!
//! The other files of this module add to it by concern: `commands`
//! (requests from the API), `agent_events` (events, heartbeats, loss),
//! `admission` (placing Ready tasks), `commit` (changes and revisions),
//! `recovery` (loading from etcd) and `spans`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use drover_api::{naming, pb};
use drover_scheduler_core::dag::{Effect, Event, RunDag};
use drover_scheduler_core::ids::{AgentId, AttemptId, AttemptNumber, RunId, TaskIndex};
use drover_scheduler_core::placement::Request as Resources;
use drover_scheduler_core::Millis;
use drover_telemetry::propagation;
use drover_telemetry::record::{self, RecordedSpan};

use crate::convert;
use crate::error::{Result, SchedulerError};
use crate::fleet::Fleet;
use crate::metrics::{SchedulerMetrics, Snapshot};

use super::admission::{PassBuffers, WaitBoard};
use super::cache::StepCache;
use super::handle::{Request, Response};
use super::records::Versioned;
use super::{spans, EngineOptions};

/// Names a request within the loop, so its answer finds its caller.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyId(pub u64);

/// One thing that happened, for the state to take in.
#[derive(Clone, Debug)]
pub enum Input {
    /// A caller's request.
    Request {
        id: ReplyId,
        request: Request,
    },
    /// One agent event. `trace_id`: the agent's attempt span's trace, for
    /// the log line (empty when not logged).
    AgentEvent {
        event: pb::AttemptEvent,
        trace_id: String,
        /// The agent whose events subject carried it: the only one whose
        /// word on the attempt counts.
        via: std::sync::Arc<str>,
    },
    Heartbeat(pb::Heartbeat),
    /// An agent refused an assignment or did not answer.
    AssignFailed {
        attempt: AttemptId,
        agent: AgentId,
        reason: String,
    },
    /// A cancel found the attempt already gone, or its agent unreachable.
    CancelGone {
        attempt: AttemptId,
        reason: String,
    },
    /// A `for_each` list read from the artifact store, or why it could not be.
    List {
        read: super::for_each::ListRead,
        result: std::result::Result<Vec<u8>, String>,
    },
    /// Time passed: timers (retries, liveness, the full admission pass).
    Tick,
}

/// A message for an agent, sent once the turn is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Send {
    Assign {
        agent: AgentId,
        attempt: AttemptId,
        assignment: Box<pb::Assignment>,
        /// The attempt span's W3C `traceparent`.
        traceparent: Option<String>,
    },
    Cancel {
        agent: AgentId,
        request: pb::CancelAttempt,
        /// The attempt to fail as cancelled if the agent no longer runs it;
        /// None for an attempt the scheduler does not expect (nothing to
        /// follow up).
        follow_up: Option<AttemptId>,
    },
}

/// The answer to a request: known now (nothing to commit), or once the
/// turn's changes are committed.
#[derive(Debug)]
pub enum Answer {
    Now(Box<Result<Response>>),
    AfterCommit(AfterCommit),
}

impl Answer {
    pub fn now(result: Result<Response>) -> Self {
        Self::Now(Box::new(result))
    }
}

/// What to answer once committed ([`EngineState::answer`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AfterCommit {
    Done,
    Active,
    /// The agent's view as it is then.
    Agent(AgentId),
    /// The queue's settings as they are then.
    Queue(String),
    /// How many cache entries a forget deleted.
    Forgotten(u32),
}

/// What one turn owes the world once its changes are committed.
#[derive(Debug, Default)]
pub struct Turn {
    pub sends: Vec<Send>,
    /// Spans that ended this turn, exported once it is committed.
    pub spans: Vec<RecordedSpan>,
    pub answers: Vec<(ReplyId, Answer)>,
    /// Why Ready tasks wait, when a pass changed it: for `drover get`.
    pub board: Option<Arc<WaitBoard>>,
    /// `for_each` lists to read from the artifact store once committed.
    pub lists: Vec<super::for_each::ListRead>,
    /// Runs this turn changed: their changes are collected, and watchers
    /// told once committed.
    pub(super) touched: BTreeSet<RunId>,
}

/// An active run as the engine keeps it.
pub(super) struct ActiveRun {
    /// Params, queue, priority and creation time; the run-level state comes
    /// from `dag` when it is written.
    pub record: Versioned<pb::RunRecord>,
    /// Never changes; shared with readers.
    pub spec: Arc<pb::PipelineSpec>,
    pub dag: RunDag,
    /// Each task's record; its value is the DAG's state of the task.
    pub tasks: Vec<Versioned<()>>,
    /// Each task's resource request, for placement.
    pub requests: Vec<Resources>,
    /// The run's `max_parallel` caps; None when it has none.
    pub caps: Option<ParallelCaps>,
    /// The instances of each task with a matrix, by the task as written.
    pub matrices: HashMap<String, Vec<TaskIndex>>,
    /// The items of each expanded `for_each` task, once read.
    pub items: HashMap<usize, Arc<Vec<serde_json::Value>>>,
    /// By `for_each` task: what its instances wait to do until its items
    /// are read again (after a restart).
    pub waiting_items: HashMap<usize, Vec<super::for_each::Deferred>>,
    /// By Ready task: the cache key it was looked up with.
    pub cache_keys: HashMap<usize, String>,
}

/// The instances of each task with a matrix, by the task as written.
fn matrix_instances(spec: &pb::PipelineSpec) -> HashMap<String, Vec<TaskIndex>> {
    let mut instances: HashMap<String, Vec<TaskIndex>> = HashMap::new();
    for (i, task) in spec.tasks.iter().enumerate() {
        if !task.matrix_task.is_empty() {
            let of = instances.entry(task.matrix_task.clone()).or_default();
            of.push(TaskIndex(i));
        }
    }
    instances
}

/// Tasks whose instances may run only so many at once (`max_parallel` on a
/// task with a matrix).
pub(super) struct ParallelCaps {
    /// By task index: the capped group it belongs to.
    pub group_of: Vec<Option<usize>>,
    /// By group: the task as written, and its cap.
    pub groups: Vec<(String, u32)>,
}

impl ParallelCaps {
    pub fn of(spec: &pb::PipelineSpec) -> Option<Self> {
        let mut groups: Vec<(String, u32)> = Vec::new();
        let group_of = spec
            .tasks
            .iter()
            .map(|t| {
                // A `for_each` task never runs itself; its instances are capped.
                if t.max_parallel == 0 || t.for_each.is_some() {
                    return None;
                }
                match groups.iter().position(|(name, _)| *name == t.matrix_task) {
                    Some(g) => Some(g),
                    None => {
                        groups.push((t.matrix_task.clone(), t.max_parallel));
                        Some(groups.len() - 1)
                    }
                }
            })
            .collect();
        (!groups.is_empty()).then_some(Self { group_of, groups })
    }

    /// Task `task` belongs to `group` (the task as written), capped at `cap`.
    fn push(&mut self, group: &str, cap: u32) {
        let g = match self.groups.iter().position(|(name, _)| name == group) {
            Some(g) => g,
            None => {
                self.groups.push((group.to_owned(), cap));
                self.groups.len() - 1
            }
        };
        self.group_of.push(Some(g));
    }
}

impl ActiveRun {
    /// A run with its record and DAG; what placement needs is derived from
    /// the spec here.
    pub fn new(
        record: Versioned<pb::RunRecord>,
        spec: Arc<pb::PipelineSpec>,
        dag: RunDag,
        tasks: Vec<Versioned<()>>,
    ) -> Self {
        let mut run = Self {
            record,
            requests: requests(&spec),
            caps: ParallelCaps::of(&spec),
            matrices: matrix_instances(&spec),
            spec,
            dag,
            tasks,
            items: HashMap::new(),
            waiting_items: HashMap::new(),
            cache_keys: HashMap::new(),
        };
        run.grow();
        run
    }

    /// `for_each` instances the DAG appended get what placement needs: the
    /// request and cap of their task.
    pub fn grow(&mut self) {
        for i in self.requests.len()..self.dag.tasks().len() {
            let group = self.dag.instance_of(i).map(|(g, _)| g);
            let spec = group.and_then(|g| self.spec.tasks.get(g));
            self.requests.push(
                spec.map(request)
                    .unwrap_or_else(|| request(&Default::default())),
            );
            if self.tasks.len() == i {
                self.tasks.push(Versioned::stored((), 0));
            }
            let cap = spec.map_or(0, |t| t.max_parallel);
            match (&mut self.caps, spec) {
                (Some(caps), Some(t)) if cap > 0 => caps.push(&t.name, cap),
                (Some(caps), _) => caps.group_of.push(None),
                (None, Some(t)) if cap > 0 => {
                    let mut caps = ParallelCaps {
                        group_of: vec![None; i],
                        groups: Vec::new(),
                    };
                    caps.push(&t.name, cap);
                    self.caps = Some(caps);
                }
                (None, _) => {}
            }
        }
    }

    /// With `on_agent_lost: wait`, how long task `task` (or the task it is
    /// an instance of) stays Running on a lost agent.
    pub fn lost_after(&self, task: usize) -> Option<Duration> {
        let spec = match self.spec.tasks.get(task) {
            Some(t) => t,
            None => self.spec.tasks.get(self.dag.instance_of(task)?.0)?,
        };
        spec.wait_when_lost()
    }

    /// Task `task`'s spec: as submitted, or for a `for_each` instance its
    /// task's with the item substituted (None while its items are not in
    /// memory).
    pub fn task_spec(&self, task: usize) -> Option<std::borrow::Cow<'_, pb::TaskSpec>> {
        if let Some(t) = self.spec.tasks.get(task) {
            return Some(std::borrow::Cow::Borrowed(t));
        }
        let (group, k) = self.dag.instance_of(task)?;
        let item = self.items.get(&group)?.get(k)?;
        let spec = self.spec.tasks.get(group)?;
        // Every item was checked to render when the task expanded.
        super::for_each::render(spec, self.task_name(TaskIndex(task)), item)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    pub fn queue(&self) -> &str {
        &self.record.get().queue
    }

    pub fn priority(&self) -> i64 {
        self.record.get().priority
    }

    /// Which of two runs a queue serves first: higher priority, then the
    /// one submitted earlier.
    pub fn serving_order(&self, other: &ActiveRun) -> std::cmp::Ordering {
        let (a, b) = (self.record.get(), other.record.get());
        b.priority
            .cmp(&a.priority)
            .then(a.created_at_ms.cmp(&b.created_at_ms))
    }

    pub fn task_name(&self, task: TaskIndex) -> &str {
        &self.dag.defs()[task.0].name
    }
}

pub struct EngineState {
    pub(super) opts: EngineOptions,
    pub(super) runs: BTreeMap<RunId, ActiveRun>,
    pub(super) fleet: Fleet,
    /// Ready tasks not yet admitted, with when they became ready (for the
    /// admission latency; after a restart, from when it was loaded).
    /// Grouped by run, so a pass compares each run id once, not once per
    /// task (a 100,000-task backlog made that a visible cost).
    pub(super) ready: BTreeMap<RunId, BTreeMap<TaskIndex, Millis>>,
    pub(super) queues: BTreeMap<String, Versioned<pb::Queue>>,
    /// Why Ready tasks wait, from the last full pass.
    pub(super) board: Arc<WaitBoard>,
    /// Finished runs in etcd by state: loaded with the active runs, then
    /// counted as runs finish here.
    pub(super) finished: BTreeMap<pb::RunState, u64>,
    /// When the last full admission pass ran.
    pub(super) full_pass_at: Millis,
    /// A quick pass ran since: the wait reasons may be out of date.
    pub(super) board_stale: bool,
    pub(super) pass_buffers: PassBuffers,
    /// In-memory counters and histograms (admission and start latency).
    pub(super) metrics: SchedulerMetrics,
    pub(super) cache: StepCache,
}

impl EngineState {
    pub fn new(opts: EngineOptions, metrics: SchedulerMetrics) -> Self {
        Self {
            cache: StepCache::new(opts.cache_ttl.as_millis() as Millis),
            opts,
            runs: BTreeMap::new(),
            fleet: Fleet::default(),
            ready: BTreeMap::new(),
            queues: BTreeMap::new(),
            board: Arc::new(WaitBoard::default()),
            finished: BTreeMap::new(),
            full_pass_at: 0,
            board_stale: false,
            pass_buffers: PassBuffers::default(),
            metrics,
        }
    }

    /// Takes one input in at `now`.
    pub fn apply(&mut self, input: Input, now: Millis, turn: &mut Turn) {
        match input {
            Input::Request { id, request } => {
                let answer = self.request(request, now, turn);
                turn.answers.push((id, answer));
            }
            Input::AgentEvent {
                event,
                trace_id,
                via,
            } => self.on_agent_event(event, &trace_id, &via, now, turn),
            Input::Heartbeat(hb) => self.on_heartbeat(hb, now, turn),
            Input::AssignFailed {
                attempt,
                agent,
                reason,
            } => self.on_assign_failed(attempt, &agent, reason, now, turn),
            Input::CancelGone { attempt, reason } => {
                self.on_cancel_gone(attempt, reason, now, turn)
            }
            Input::List { read, result } => self.on_list(read, result, now, turn),
            Input::Tick => {}
        }
    }

    /// After a turn's inputs: retry timers, silent agents, then one
    /// admission pass over what is Ready.
    pub fn end_inputs(&mut self, now: Millis, turn: &mut Turn) {
        self.tick(now, turn);
        self.expire_agents(now, turn);
        self.serve_from_cache(now, turn);
        self.place(now, turn);
    }

    /// When the state next needs a turn with no input: a retry due, or a
    /// full pass to bring the wait reasons up to date after quick ones.
    pub fn next_wakeup(&self) -> Option<Millis> {
        let full_pass = self
            .board_stale
            .then_some(self.full_pass_at + super::admission::FULL_PASS_EVERY_MS);
        let runs = self.runs.values().filter_map(|r| r.dag.next_wakeup());
        let lookups = self.cache.due().then_some(0);
        runs.chain(full_pass).chain(lookups).min()
    }

    /// Once the turn is committed: the answer to a request that waited.
    pub fn answer(&self, after: AfterCommit) -> Result<Response> {
        match after {
            AfterCommit::Done => Ok(Response::Done),
            AfterCommit::Active => Ok(Response::Active(true)),
            AfterCommit::Forgotten(n) => Ok(Response::Forgotten(n)),
            AfterCommit::Agent(id) => self
                .agent_view(id.as_str())
                .map(Response::Agent)
                .ok_or_else(|| SchedulerError::AgentNotFound(id.to_string())),
            AfterCommit::Queue(name) => self
                .queues
                .get(&name)
                .map(|q| Response::Queue(q.get().clone()))
                .ok_or(SchedulerError::QueueNotFound(name)),
        }
    }

    /// Once the turn is committed: finished runs leave memory. Returns the
    /// runs it changed, for watchers.
    pub fn settle(&mut self, touched: BTreeSet<RunId>) -> Vec<RunId> {
        for run_id in &touched {
            let done = self
                .runs
                .get(run_id)
                .map(|r| r.dag.status())
                .filter(|s| s.is_terminal());
            if let Some(status) = done {
                self.runs.remove(run_id);
                self.ready.remove(run_id);
                *self.finished.entry(convert::run_state(status)).or_default() += 1;
            }
        }
        touched.into_iter().collect()
    }

    /// The state gauges for `/metrics`.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let runs = self
            .runs
            .values()
            .map(|r| convert::run_state(r.dag.status()));
        let tasks = self
            .runs
            .values()
            .flat_map(|r| r.dag.tasks().iter().map(|t| convert::task_state(t.status)));
        let agents = self.fleet.entries().map(|a| a.state());
        let queues = self
            .queues
            .keys()
            .filter_map(|name| self.queue_status(name))
            .collect();
        Snapshot::new(runs, &self.finished, tasks, agents, queues)
    }

    pub(super) fn add_run(
        &mut self,
        record: pb::RunRecord,
        spec: Arc<pb::PipelineSpec>,
        now: Millis,
        turn: &mut Turn,
    ) {
        let (dag, fx) = RunDag::new(convert::task_defs(&spec), spec.fail_fast);
        let id = RunId::new(&record.id);
        info!(run = %id, pipeline = %spec.name, tasks = spec.tasks.len(), "run submitted");
        let tasks = vec![Versioned::stored((), 0); spec.tasks.len()];
        let run = ActiveRun::new(Versioned::created(record), spec, dag, tasks);
        self.runs.insert(id.clone(), run);
        self.effects(&id, fx, now, turn);
    }

    /// Applies a core event to a run and handles its effects.
    pub(super) fn apply_to(&mut self, run_id: &RunId, ev: Event, now: Millis, turn: &mut Turn) {
        let Some(run) = self.runs.get_mut(run_id) else {
            debug!(run = %run_id, "event for a run that is not active");
            return;
        };
        match run.dag.apply(ev, now) {
            Ok(fx) => self.effects(run_id, fx, now, turn),
            Err(stale) => debug!(run = %run_id, reason = %stale.0, "stale event ignored"),
        }
    }

    /// Carries out what the DAG decided: Ready tasks wait for placement,
    /// assignments and cancels go out after the commit, released resources
    /// are free again, ended attempts and runs become spans.
    pub(super) fn effects(
        &mut self,
        run_id: &RunId,
        fx: Vec<Effect>,
        now: Millis,
        turn: &mut Turn,
    ) {
        turn.touched.insert(run_id.clone());
        for e in fx {
            match e {
                Effect::Expand { task } => self.read_list(run_id, task, now, turn),
                Effect::Evaluate { task } => self.evaluate(run_id, task, now, turn),
                Effect::Ready { task } => self.became_ready(run_id, task, now),
                Effect::Assign {
                    task,
                    attempt,
                    agent,
                } => {
                    let attempt_id = AttemptId::new(run_id.clone(), task, attempt);
                    match self.assign_send(&attempt_id, &agent) {
                        Some(send) => turn.sends.push(send),
                        None => {
                            let group = self.runs.get(run_id).and_then(|r| r.dag.instance_of(task));
                            if let Some((group, _)) = group {
                                let deferred = super::for_each::Deferred::Assign {
                                    task,
                                    attempt,
                                    agent,
                                };
                                self.defer(run_id, group, deferred, turn);
                            }
                        }
                    }
                }
                Effect::Cancel {
                    task,
                    attempt,
                    agent,
                } => {
                    let attempt = AttemptId::new(run_id.clone(), task, attempt);
                    let preempting = self
                        .runs
                        .get(run_id)
                        .is_some_and(|r| r.dag.task(task).preempting.is_some());
                    let mut request = self.cancel_request(self.attempt_ref(&attempt));
                    if preempting {
                        request.grace_ms = self.opts.preemption_grace.as_millis() as u64;
                    }
                    turn.sends.push(Send::Cancel {
                        agent: self.fleet.agent_id(&agent),
                        request,
                        follow_up: Some(attempt),
                    });
                }
                Effect::Released { task, .. } => {
                    self.fleet.release(run_id.as_str(), TaskIndex(task));
                    self.remember_result(run_id, task, now);
                    // Built only when exported: otherwise a no-op tracer
                    // would take it, after its attributes were formatted.
                    let span = drover_telemetry::exporting()
                        .then(|| {
                            let run = self.runs.get(run_id)?;
                            spans::attempt_span(run, TaskIndex(task))
                        })
                        .flatten();
                    turn.spans.extend(span);
                }
                Effect::Finished(status) => {
                    info!(run = %run_id, state = ?status, "run finished");
                    if let (true, Some(r)) = (drover_telemetry::exporting(), self.runs.get(run_id))
                    {
                        turn.spans.push(spans::run_span(r));
                    }
                }
            }
        }
    }

    /// Retry timers.
    fn tick(&mut self, now: Millis, turn: &mut Turn) {
        let due: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, r)| r.dag.next_wakeup().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(run) = self.runs.get_mut(&id) {
                let fx = run.dag.tick(now);
                self.effects(&id, fx, now, turn);
            }
        }
    }

    pub(super) fn cancel_request(&self, attempt: pb::AttemptRef) -> pb::CancelAttempt {
        pb::CancelAttempt {
            attempt: Some(attempt),
            grace_ms: self.opts.cancel_grace.as_millis() as u64,
        }
    }

    pub(super) fn attempt_ref(&self, attempt: &AttemptId) -> pb::AttemptRef {
        let name = self
            .runs
            .get(&attempt.run)
            .map(|r| r.task_name(attempt.task).to_string())
            .unwrap_or_default();
        pb::AttemptRef {
            run_id: attempt.run.to_string(),
            task: name,
            attempt: attempt.attempt.0,
        }
    }

    /// The attempt span's context, derived from the run's stored trace id
    /// (the same after a restart).
    pub(super) fn traceparent(&self, attempt: &AttemptId) -> Option<String> {
        let run = self.runs.get(&attempt.run)?;
        let trace_id = &run.record.get().trace_id;
        let name = run.task_name(attempt.task);
        let span = record::attempt_span_id(trace_id, attempt.run.as_str(), name, attempt.attempt.0);
        let context = propagation::span_context(trace_id, &span)?;
        Some(propagation::traceparent(&context))
    }

    /// The message an agent needs to run an attempt: the resolved task, where
    /// each input sits in the object store, and the GPUs it was given. None
    /// for a `for_each` instance whose items are not in memory.
    pub(super) fn assignment(&self, attempt: &AttemptId) -> Option<pb::Assignment> {
        let aref = self.attempt_ref(attempt);
        let Some(run) = self.runs.get(&attempt.run) else {
            return Some(pb::Assignment::default());
        };
        let mut task_spec = Some(run.task_spec(attempt.task.0)?.into_owned());
        if let Some(t) = task_spec.as_mut().filter(|t| t.finally) {
            let outcome = run.dag.outcome().as_str();
            t.env
                .insert(naming::RUN_STATE_ENV.to_owned(), outcome.to_owned());
        }
        let inputs = task_spec
            .as_ref()
            .map(|t| run.inputs(t))
            .unwrap_or_default();
        let gpus = run
            .dag
            .task(attempt.task.0)
            .current()
            .map(|a| a.gpus.iter().map(convert::gpu_ref).collect())
            .unwrap_or_default();
        Some(pb::Assignment {
            artifact_prefix: naming::attempt_prefix(
                attempt.run.as_str(),
                &aref.task,
                attempt.attempt.0,
            ),
            attempt: Some(aref),
            task: task_spec,
            inputs,
            gpus,
            code_sha256: run.spec.code_sha256.clone(),
        })
    }

    /// `run/task/attempt`, for the agent view's GPU holders.
    pub(super) fn describe(&self, run: &RunId, task: TaskIndex, attempt: AttemptNumber) -> String {
        let name = self.runs.get(run).map(|r| r.task_name(task)).unwrap_or("?");
        format!("{run}/{name}/{attempt}")
    }
}

/// The output `name` of the current attempt of `task`.
pub(super) fn output(run: &ActiveRun, task: usize, name: &str) -> Option<pb::Artifact> {
    let attempt = run.dag.task(task).current()?;
    let output = attempt.outputs.iter().find(|o| o.name == name)?;
    Some(pb::Artifact {
        name: output.name.clone(),
        key: output.key.clone(),
        sha256: output.sha256.clone(),
        size: output.size,
        result: None,
    })
}

impl ActiveRun {
    /// Where each input of `spec` (one of this run's tasks, Ready) is in
    /// the object store, with its sha256.
    pub(super) fn inputs(&self, spec: &pb::TaskSpec) -> Vec<pb::InputArtifact> {
        spec.inputs
            .iter()
            .filter_map(|input| match self.matrices.get(&input.from_task) {
                _ if !input.from_param.is_empty() => Some(self.param_input(input)),
                Some(instances) => Some(gathered_input(self, input, instances)),
                None => {
                    let producer = self.dag.index_of(&input.from_task)?;
                    if let Some(instances) = self.dag.instances(producer) {
                        let instances: Vec<TaskIndex> = instances.map(TaskIndex).collect();
                        return Some(gathered_input(self, input, &instances));
                    }
                    let output = output(self, producer, &input.from_output)?;
                    Some(pb::InputArtifact {
                        name: input.name.clone(),
                        key: output.key,
                        sha256: output.sha256,
                        ..Default::default()
                    })
                }
            })
            .collect()
    }
}

impl ActiveRun {
    /// An input from a param: its value, written to the input's file.
    fn param_input(&self, input: &pb::InputSpec) -> pb::InputArtifact {
        // Validation checked the param is declared: it has a value.
        let value = self.spec.params.get(&input.from_param);
        pb::InputArtifact {
            name: input.name.clone(),
            content: Some(value.map(|v| v.as_bytes().to_vec()).unwrap_or_default()),
            ..Default::default()
        }
    }
}

/// An input taken from every instance of a task with a matrix or
/// `for_each`: one part per instance, named by its index among the
/// instances, and a listing of each instance's index, matrix values (for
/// `for_each`, `item`) and file.
fn gathered_input(
    run: &ActiveRun,
    input: &pb::InputSpec,
    instances: &[TaskIndex],
) -> pb::InputArtifact {
    let mut parts = Vec::with_capacity(instances.len());
    let mut listing = Vec::with_capacity(instances.len());
    for (index, task) in instances.iter().enumerate() {
        // Every instance is upstream and succeeded: the task is Ready only then.
        let Some(output) = output(run, task.0, &input.from_output) else {
            continue;
        };
        let file = index.to_string();
        let matrix = match run.spec.tasks.get(task.0) {
            Some(t) => serde_json::json!(t.matrix),
            None => serde_json::json!(run.task_spec(task.0).map(|t| t.matrix.clone())),
        };
        listing.push(serde_json::json!({"index": index, "matrix": matrix, "file": file}));
        parts.push(pb::InputPart {
            file,
            key: output.key,
            sha256: output.sha256,
        });
    }
    pb::InputArtifact {
        name: input.name.clone(),
        parts,
        listing: serde_json::to_vec_pretty(&listing).unwrap_or_default(),
        ..Default::default()
    }
}

/// Each task's resource request, for placement.
fn requests(spec: &pb::PipelineSpec) -> Vec<Resources> {
    spec.tasks.iter().map(request).collect()
}

fn request(t: &pb::TaskSpec) -> Resources {
    let r = t.resources.clone().unwrap_or_default();
    Resources::new(&t.image, u64::from(r.cpu_millis), r.memory_bytes)
        .with_gpus(r.gpu, &r.gpu_model, r.gpu_memory_bytes)
        .with_selector(t.node_selector.clone())
}
