//! One run's task state machine.
//!
//! The shell feeds [`Event`]s (placement decisions, agent events, cancel) and
//! timer ticks; [`RunDag`] updates task and attempt states and returns
//! [`Effect`]s to carry out *after* the new state is committed.
//!
//! Only tasks that have had an attempt need storing: a task with no attempts
//! is Pending, Ready, Skipped or Cancelled purely as a function of its
//! upstream tasks and the run's state. [`RunDag::restore`] derives those, so
//! submitting a run writes one key rather than one per task, and restart and
//! read paths share one derivation.
//!
//! A `for_each` task grows the DAG at run time (`for_each`): its instances
//! are appended after the static tasks, and only their count is run-level
//! state.

use std::collections::HashMap;

use crate::{retry, Millis};

/// A task's static definition, taken from the validated spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDef {
    pub name: String,
    /// Indices of upstream tasks.
    pub deps: Vec<usize>,
    pub retry_limit: u32,
    pub backoff_ms: Millis,
    /// Runs once every other task has ended, whatever the outcome.
    pub finally: bool,
    /// Has a `when:` condition: once its upstream tasks succeeded, the shell
    /// evaluates it ([`Effect::Evaluate`]) before the task becomes Ready.
    pub conditional: bool,
    /// Has `for_each`: once its upstream tasks succeeded, the shell reads
    /// the list ([`Effect::Expand`]) and the task becomes a group of
    /// instances ([`Event::Expanded`]).
    pub for_each: bool,
    /// A `for_each` task whose condition names `item`: each instance's is
    /// evaluated instead of the task's, and an instance it skips counts as
    /// done for the task (what follows still runs).
    pub item_condition: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Ready,
    Assigned,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }

    /// Holds an attempt on an agent.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttemptStatus {
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its agent was lost or restarted without it; not counted as a retry.
    Lost,
    /// Stopped to make room for other work; not counted as a retry.
    Preempted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
    /// The content, for an output declared `result: true`.
    pub result: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub agent: String,
    pub status: AttemptStatus,
    /// When the task became Ready for this attempt (None = unknown: a root
    /// task waits from the run's creation). Queue wait = ready → assigned.
    pub ready_at: Option<Millis>,
    pub assigned_at: Millis,
    /// None until the agent reports the start.
    pub started_at: Option<Millis>,
    /// None while the attempt is live.
    pub finished_at: Option<Millis>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub outputs: Vec<Artifact>,
    pub log_key: String,
    /// Nothing was written: no object is stored under `log_key`.
    pub log_empty: bool,
    /// GPUs given to the attempt.
    pub gpus: Vec<GivenGpu>,
    /// The image the agent ran, as `sha256:…` (empty: not a container, or
    /// not reported).
    pub image_digest: String,
    /// The attempt's cache key (lowercase hex); None: not cacheable.
    pub cache_key: Option<String>,
    /// Never ran: its result is this earlier attempt's, whose key matched.
    pub cached_from: Option<AttemptSource>,
}

/// One GPU given to an attempt, as the agent reported it when placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GivenGpu {
    /// The agent's NVML index.
    pub index: u32,
    pub uuid: String,
    /// The model NVML names (empty: unknown, e.g. a record from before).
    pub model: String,
}

/// One attempt of one task of one run, named as a user reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptSource {
    pub run: String,
    pub task: String,
    pub attempt: u32,
}

/// A task's changing state: what the shell stores once it has an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRun {
    pub status: TaskStatus,
    pub attempts: Vec<Attempt>,
    /// Why the task is where it is (failure reason, what it waits for).
    pub message: String,
    /// RetryWait: when the next attempt may be placed.
    pub retry_at: Millis,
    /// Retries consumed; attempts refused by or lost with an agent do not count.
    pub retries_used: u32,
    /// Set while the running attempt is being stopped to make room: why.
    pub preempting: Option<String>,
    /// When the task last became Ready (None = unknown).
    pub ready_at: Option<Millis>,
    /// Skipped or failed by its `when:` before any attempt: stored although
    /// it never ran, so a read of the finished run shows why.
    pub decided: bool,
}

impl TaskRun {
    fn derived(status: TaskStatus, message: String) -> Self {
        Self {
            status,
            attempts: Vec::new(),
            message,
            retry_at: 0,
            retries_used: 0,
            preempting: None,
            ready_at: None,
            decided: false,
        }
    }

    /// The latest attempt, if any.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// Whether this state must be stored; otherwise it is derivable.
    pub fn needs_record(&self) -> bool {
        !self.attempts.is_empty() || self.decided
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelling,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Inputs to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Placement chose `agent` (and these of its GPUs) for a Ready task.
    Assign {
        task: usize,
        agent: String,
        gpus: Vec<GivenGpu>,
        /// The attempt's cache key, recorded with it.
        cache_key: Option<String>,
    },
    /// The agent refused the assignment or never answered. Not a retry.
    AssignFailed {
        task: usize,
        attempt: u32,
        reason: String,
    },
    /// The attempt's agent was lost, or restarted without it. Not a retry.
    Lost {
        task: usize,
        attempt: u32,
        reason: String,
    },
    Started {
        task: usize,
        attempt: u32,
    },
    Succeeded {
        task: usize,
        attempt: u32,
        /// When the agent saw the attempt start, if it sent no started
        /// event (an attempt that ends quickly reports its start here).
        started_at: Option<Millis>,
        outputs: Vec<Artifact>,
        log_key: String,
        /// The attempt wrote nothing; no log object was stored.
        log_empty: bool,
        /// The image that ran (`sha256:…`; empty for a process).
        image_digest: String,
    },
    Failed {
        task: usize,
        attempt: u32,
        /// As for `Succeeded`.
        started_at: Option<Millis>,
        exit_code: Option<i32>,
        reason: String,
        log_key: String,
        /// Stopped by a cancel request rather than failing on its own.
        cancelled: bool,
    },
    /// Admission chose this running attempt as a victim: stop it; when it
    /// has stopped the task runs again later, without using a retry.
    Preempt {
        task: usize,
        attempt: u32,
        reason: String,
    },
    /// The user cancelled the run.
    Cancel,
    /// What a task's `when:` condition said, asked for by [`Effect::Evaluate`].
    Condition {
        task: usize,
        verdict: Verdict,
    },
    /// A `for_each` task's list has `count` items, asked for by [`Effect::Expand`].
    Expanded {
        task: usize,
        count: usize,
    },
    /// A `for_each` task's list could not be read: the task fails.
    ExpandFailed {
        task: usize,
        reason: String,
    },
    /// A Ready task's cache key matched `from`'s successful attempt: it
    /// succeeds with that attempt's outputs, without running.
    Cached {
        task: usize,
        key: String,
        from: AttemptSource,
        outputs: Vec<Artifact>,
        image_digest: String,
    },
}

/// The outcome of a `when:` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// True: the task becomes Ready.
    Run,
    /// False: the task and its downstream are skipped, the run goes on.
    Skip { reason: String },
    /// It could not be evaluated: the task fails.
    Fail { reason: String },
}

/// What the shell must do once the state change is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send attempt `attempt` of `task` to `agent`.
    Assign {
        task: usize,
        attempt: u32,
        agent: String,
    },
    /// Ask `agent` to stop the attempt.
    Cancel {
        task: usize,
        attempt: u32,
        agent: String,
    },
    /// `task` became Ready: hand it to placement.
    Ready { task: usize },
    /// Every upstream task of `task` succeeded: evaluate its `when:` and
    /// answer with [`Event::Condition`].
    Evaluate { task: usize },
    /// Every upstream task of the `for_each` task `task` succeeded: read
    /// its list and answer with [`Event::Expanded`] or [`Event::ExpandFailed`].
    Expand { task: usize },
    /// An attempt on `agent` ended: its resources are free again.
    Released { task: usize, agent: String },
    /// The run reached a terminal state.
    Finished(RunStatus),
}

/// Why an event changed nothing (a duplicate or an event for an attempt that
/// is no longer current). The shell logs it and acknowledges the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale(pub String);

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stale event: {}", self.0)
    }
}

impl std::error::Error for Stale {}

/// Why [`RunDag::retry`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryRefusal {
    /// Only a finished run can be retried.
    NotFinished(RunStatus),
    /// Every task succeeded and none was named.
    AllSucceeded,
}

impl std::fmt::Display for RetryRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFinished(status) => write!(f, "the run is still {status:?}"),
            Self::AllSucceeded => f.write_str("every task succeeded and none was named"),
        }
    }
}

impl std::error::Error for RetryRefusal {}

/// Stored run-level state, for [`RunDag::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunState {
    pub status: RunStatus,
    pub message: String,
    /// None until the run ends.
    pub finished_at: Option<Millis>,
    /// A second cancel stopped the `finally` tasks too.
    pub finally_stopped: bool,
    /// `for_each` tasks expanded so far (task, item count), in order: their
    /// instances follow the static tasks in that order.
    pub expansions: Vec<(usize, usize)>,
}

impl RunState {
    pub fn new() -> Self {
        Self {
            status: RunStatus::Running,
            message: String::new(),
            finished_at: None,
            finally_stopped: false,
            expansions: Vec::new(),
        }
    }
}

impl Default for RunState {
    fn default() -> Self {
        Self::new()
    }
}

pub struct RunDag {
    defs: Vec<TaskDef>,
    by_name: HashMap<String, usize>,
    dependents: Vec<Vec<usize>>,
    tasks: Vec<TaskRun>,
    run: RunState,
    fail_fast: bool,
    /// Some task failed for good.
    failed: bool,
    unfinished: usize,
    /// Unfinished tasks, not counting `finally` ones: those start at zero.
    main_unfinished: usize,
    /// The last non-`finally` task just ended: the `finally` tasks are due.
    finally_due: bool,
    /// Tasks in RetryWait: most turns have none, and then the retry-timer
    /// scans over every task are skipped.
    retry_waiting: usize,
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    run_dirty: bool,
    /// By task: the `for_each` task it is an instance of.
    instance_of: Vec<Option<usize>>,
    /// Expanded `for_each` tasks and their instances.
    groups: HashMap<usize, for_each::Group>,
}

impl RunDag {
    /// A fresh run: roots are Ready, everything else Pending.
    pub fn new(defs: Vec<TaskDef>, fail_fast: bool) -> (Self, Vec<Effect>) {
        let n = defs.len();
        let mut dag = Self::restore(defs, fail_fast, RunState::new(), vec![None; n]);
        dag.0.run_dirty = true;
        dag
    }

    pub fn status(&self) -> RunStatus {
        self.run.status
    }

    pub fn run_state(&self) -> &RunState {
        &self.run
    }

    pub fn fail_fast(&self) -> bool {
        self.fail_fast
    }

    pub fn defs(&self) -> &[TaskDef] {
        &self.defs
    }

    pub fn task(&self, i: usize) -> &TaskRun {
        &self.tasks[i]
    }

    pub fn tasks(&self) -> &[TaskRun] {
        &self.tasks
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Earliest retry time among tasks waiting to retry.
    pub fn next_wakeup(&self) -> Option<Millis> {
        if self.retry_waiting == 0 {
            return None;
        }
        self.tasks
            .iter()
            .filter(|t| t.status == TaskStatus::RetryWait)
            .map(|t| t.retry_at)
            .min()
    }

    /// Whether the run-level state changed, and which tasks did, since the
    /// last call; clears the marks.
    pub fn take_dirty(&mut self) -> (bool, Vec<usize>) {
        let list = std::mem::take(&mut self.dirty_list);
        for &i in &list {
            self.dirty[i] = false;
        }
        (std::mem::take(&mut self.run_dirty), list)
    }

    /// Stop placing new work: cancel requested, or a failure with fail_fast.
    fn stopping(&self) -> bool {
        self.run.status != RunStatus::Running || (self.failed && self.fail_fast)
    }

    fn touch(&mut self, i: usize) {
        if !self.dirty[i] {
            self.dirty[i] = true;
            self.dirty_list.push(i);
        }
    }

    fn set_status(&mut self, i: usize, status: TaskStatus, message: impl Into<String>) {
        let t = &mut self.tasks[i];
        let main = usize::from(!self.defs[i].finally);
        match (t.status.is_terminal(), status.is_terminal()) {
            (false, true) => {
                self.unfinished -= 1;
                self.main_unfinished -= main;
                self.finally_due |= main == 1 && self.main_unfinished == 0;
            }
            (true, false) => {
                self.unfinished += 1;
                self.main_unfinished += main;
            }
            _ => {}
        }
        let retry = TaskStatus::RetryWait;
        match (t.status == retry, status == retry) {
            (false, true) => self.retry_waiting += 1,
            (true, false) => self.retry_waiting -= 1,
            _ => {}
        }
        // An instance skipped by its own condition is done, like a success.
        let instance = self.instance_of.get(i).is_some_and(Option::is_some);
        let done =
            |s: TaskStatus| s == TaskStatus::Succeeded || (instance && s == TaskStatus::Skipped);
        let change = (done(t.status), done(status));
        t.status = status;
        t.message = message.into();
        self.touch(i);
        if change.0 != change.1 {
            self.count_instance(i, change.1);
        }
    }

    /// Current attempt of `task` if it is `attempt` and still live.
    fn live_attempt(&self, task: usize, attempt: u32) -> Result<(), Stale> {
        let t = self
            .tasks
            .get(task)
            .ok_or_else(|| Stale(format!("no task #{task}")))?;
        match t.current() {
            Some(a) if a.number == attempt && t.status.is_active() => Ok(()),
            Some(a) => Err(Stale(format!(
                "task `{}` attempt {attempt} is not live (current attempt {}, task {:?})",
                self.defs[task].name, a.number, t.status
            ))),
            None => Err(Stale(format!(
                "task `{}` has no attempt {attempt}",
                self.defs[task].name
            ))),
        }
    }

    fn end_attempt(&mut self, task: usize, f: impl FnOnce(&mut Attempt)) -> Effect {
        self.touch(task);
        self.tasks[task].preempting = None;
        let a = self.tasks[task]
            .attempts
            .last_mut()
            .expect("caller checked live_attempt, so an attempt exists");
        f(a);
        Effect::Released {
            task,
            agent: a.agent.clone(),
        }
    }

    pub fn apply(&mut self, event: Event, now: Millis) -> Result<Vec<Effect>, Stale> {
        let mut fx = Vec::new();
        match event {
            Event::Assign {
                task,
                agent,
                gpus,
                cache_key,
            } => {
                if self.tasks.get(task).map(|t| t.status) != Some(TaskStatus::Ready)
                    || self.stopping_for(task)
                {
                    return Err(Stale(format!("task #{task} is not ready to assign")));
                }
                let t = &mut self.tasks[task];
                let number = t.attempts.len() as u32 + 1;
                t.attempts.push(Attempt {
                    number,
                    agent: agent.clone(),
                    status: AttemptStatus::Assigned,
                    ready_at: t.ready_at,
                    assigned_at: now,
                    started_at: None,
                    finished_at: None,
                    exit_code: None,
                    error: String::new(),
                    outputs: Vec::new(),
                    log_key: String::new(),
                    log_empty: false,
                    gpus,
                    image_digest: String::new(),
                    cache_key,
                    cached_from: None,
                });
                self.set_status(task, TaskStatus::Assigned, "");
                fx.push(Effect::Assign {
                    task,
                    attempt: number,
                    agent,
                });
            }
            Event::AssignFailed {
                task,
                attempt,
                reason,
            } => {
                self.live_attempt(task, attempt)?;
                if self.tasks[task].status != TaskStatus::Assigned {
                    return Err(Stale(format!("attempt {attempt} already started")));
                }
                self.requeue(task, AttemptStatus::Failed, reason, now, &mut fx);
            }
            Event::Lost {
                task,
                attempt,
                reason,
            } => {
                self.live_attempt(task, attempt)?;
                self.requeue(task, AttemptStatus::Lost, reason, now, &mut fx);
            }
            Event::Started { task, attempt } => {
                self.live_attempt(task, attempt)?;
                if self.tasks[task].status != TaskStatus::Assigned {
                    return Err(Stale(format!("attempt {attempt} already started")));
                }
                self.start(task, now);
            }
            Event::Succeeded {
                task,
                attempt,
                started_at,
                outputs,
                log_key,
                log_empty,
                image_digest,
            } => {
                self.live_attempt(task, attempt)?;
                self.infer_start(task, started_at);
                fx.push(self.end_attempt(task, |a| {
                    a.status = AttemptStatus::Succeeded;
                    // Agents report success only for a process that exited 0.
                    a.exit_code = Some(0);
                    a.finished_at = Some(now);
                    a.started_at = a.started_at.or(Some(now));
                    a.outputs = outputs;
                    a.log_key = log_key;
                    a.log_empty = log_empty;
                    a.image_digest = image_digest;
                }));
                self.succeed(task, now, &mut fx);
            }
            Event::Failed {
                task,
                attempt,
                started_at,
                exit_code,
                reason,
                log_key,
                cancelled,
            } => {
                self.live_attempt(task, attempt)?;
                self.infer_start(task, started_at);
                if let (true, Some(why)) = (cancelled, self.tasks[task].preempting.take()) {
                    self.requeue(task, AttemptStatus::Preempted, why, now, &mut fx);
                    self.start_finally(now, &mut fx);
                    if self.unfinished == 0 && !self.run.status.is_terminal() {
                        fx.push(self.finish(now));
                    }
                    return Ok(fx);
                }
                fx.push(self.end_attempt(task, |a| {
                    a.status = if cancelled {
                        AttemptStatus::Cancelled
                    } else {
                        AttemptStatus::Failed
                    };
                    a.finished_at = Some(now);
                    a.exit_code = exit_code;
                    a.error = reason.clone();
                    a.log_key = log_key;
                }));
                let t = &self.tasks[task];
                let limit = self.defs[task].retry_limit;
                let stopping = self.stopping_for(task);
                if cancelled || (stopping && self.stopped_by_cancel(task)) {
                    self.set_status(task, TaskStatus::Cancelled, reason);
                } else if !stopping && t.retries_used < limit {
                    let wait = retry::backoff(self.defs[task].backoff_ms, t.retries_used);
                    let t = &mut self.tasks[task];
                    t.retries_used += 1;
                    t.retry_at = now.saturating_add(wait);
                    let msg = format!(
                        "attempt {attempt} failed: {reason}; retry {} of {limit} in {wait}ms",
                        t.retries_used
                    );
                    self.set_status(task, TaskStatus::RetryWait, msg);
                } else {
                    self.set_status(task, TaskStatus::Failed, reason.clone());
                    self.fail(task, &reason, &mut fx);
                }
            }
            Event::Preempt {
                task,
                attempt,
                reason,
            } => {
                self.live_attempt(task, attempt)?;
                let t = &mut self.tasks[task];
                if t.preempting.is_some() {
                    return Err(Stale(format!(
                        "attempt {attempt} is already being preempted"
                    )));
                }
                t.preempting = Some(reason);
                let agent = t.current().map(|a| a.agent.clone()).unwrap_or_default();
                self.touch(task);
                fx.push(Effect::Cancel {
                    task,
                    attempt,
                    agent,
                });
            }
            Event::Cancel => match self.run.status {
                RunStatus::Running => {
                    self.run.status = RunStatus::Cancelling;
                    self.run.message = "cancelled by user".into();
                    self.run_dirty = true;
                    self.stop_all(false, TaskStatus::Cancelled, "run cancelled", &mut fx);
                }
                // A second cancel stops the `finally` tasks a first one left running.
                RunStatus::Cancelling
                    if !self.run.finally_stopped && self.unfinished > self.main_unfinished =>
                {
                    self.run.finally_stopped = true;
                    self.run_dirty = true;
                    self.stop_all(true, TaskStatus::Cancelled, "run cancelled twice", &mut fx);
                }
                _ => return Ok(fx),
            },
            Event::Condition { task, verdict } => self.decide(task, verdict, now, &mut fx)?,
            Event::Expanded { task, count } => self.expand(task, count, now, &mut fx)?,
            Event::Cached {
                task,
                key,
                from,
                outputs,
                image_digest,
            } => self.take_cached(task, key, from, outputs, image_digest, now, &mut fx)?,
            Event::ExpandFailed { task, reason } => {
                if !self.awaits_expansion(task) {
                    return Err(Stale(format!("task #{task} is not waiting for its list")));
                }
                self.tasks[task].decided = true;
                self.set_status(task, TaskStatus::Failed, reason.clone());
                self.fail(task, &reason, &mut fx);
            }
        }
        self.start_finally(now, &mut fx);
        if self.unfinished == 0 && !self.run.status.is_terminal() {
            fx.push(self.finish(now));
        }
        Ok(fx)
    }

    /// The live attempt of `task` started at `at`.
    fn start(&mut self, task: usize, at: Millis) {
        if let Some(a) = self.tasks[task].attempts.last_mut() {
            a.status = AttemptStatus::Running;
            a.started_at = Some(at);
        }
        self.set_status(task, TaskStatus::Running, "");
    }

    /// A final event for an attempt whose start was never reported carries
    /// the start: recorded as if its started event had come first.
    fn infer_start(&mut self, task: usize, started_at: Option<Millis>) {
        if let (Some(at), TaskStatus::Assigned) = (started_at, self.tasks[task].status) {
            self.start(task, at);
        }
    }

    /// Ends the live attempt as `status` through no fault of the task and
    /// makes the task Ready again, without using a retry.
    fn requeue(
        &mut self,
        task: usize,
        status: AttemptStatus,
        reason: String,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        fx.push(self.end_attempt(task, |a| {
            a.status = status;
            a.error = reason.clone();
            a.finished_at = Some(now);
        }));
        if self.stopping_for(task) {
            self.set_status(task, TaskStatus::Cancelled, "run stopped");
        } else {
            self.tasks[task].ready_at = Some(now);
            self.set_status(task, TaskStatus::Ready, reason);
            fx.push(Effect::Ready { task });
        }
    }

    /// Whether every upstream task of `task` succeeded.
    fn upstream_succeeded(&self, task: usize) -> bool {
        self.defs[task]
            .deps
            .iter()
            .all(|&d| self.tasks[d].status == TaskStatus::Succeeded)
    }

    /// Whether `task`, still Pending and not expanded, could start now: free
    /// to start and every upstream task succeeded. What it waits for then
    /// (a verdict, a list) depends on its kind.
    fn pending_and_free(&self, task: usize) -> bool {
        self.tasks[task].status == TaskStatus::Pending
            && !self.groups.contains_key(&task)
            && !self.stopping_for(task)
            && self.may_start(task)
            && self.upstream_succeeded(task)
    }

    /// `task` becomes Ready at `now` if every upstream task succeeded.
    /// `task` succeeded: its dependents may be Ready now.
    fn succeed(&mut self, task: usize, now: Millis, fx: &mut Vec<Effect>) {
        self.set_status(task, TaskStatus::Succeeded, "");
        for k in 0..self.dependents[task].len() {
            let d = self.dependents[task][k];
            if self.tasks[d].status == TaskStatus::Pending {
                self.ready_if_upstream_succeeded(d, now, fx);
            }
        }
    }

    fn ready_if_upstream_succeeded(&mut self, task: usize, now: Millis, fx: &mut Vec<Effect>) {
        if self.stopping_for(task) || !self.may_start(task) {
            return;
        }
        if self.upstream_succeeded(task) {
            if let Some(group) = self.groups.get(&task) {
                if group.left == 0 {
                    self.complete_group(task, now, fx);
                }
                return;
            }
            if self.defs[task].conditional {
                fx.push(Effect::Evaluate { task });
                return;
            }
            if self.defs[task].for_each {
                fx.push(Effect::Expand { task });
                return;
            }
            self.tasks[task].ready_at = Some(now);
            self.set_status(task, TaskStatus::Ready, "");
            fx.push(Effect::Ready { task });
        }
    }

    /// `task` failed for good: downstream never starts; with fail_fast the
    /// rest of the run stops too.
    fn fail(&mut self, task: usize, reason: &str, fx: &mut Vec<Effect>) {
        self.failed = true;
        if self.run.message.is_empty() {
            self.run.message = format!("task `{}` failed: {reason}", self.defs[task].name);
            self.run_dirty = true;
        }
        let task = self.fail_group(task, reason);
        let mut stack = self.dependents[task].clone();
        while let Some(d) = stack.pop() {
            if matches!(
                self.tasks[d].status,
                TaskStatus::Pending | TaskStatus::Ready
            ) {
                let msg = format!("upstream task `{}` did not succeed", self.defs[task].name);
                self.set_status(d, TaskStatus::Skipped, msg);
                stack.extend(self.dependents[d].iter().copied());
            }
        }
        if self.fail_fast {
            let msg = format!(
                "run failed fast after task `{}` failed",
                self.defs[task].name
            );
            self.stop_all(false, TaskStatus::Skipped, &msg, fx);
        }
    }

    /// Waiting tasks take `waiting_to`; running attempts are asked to stop.
    /// Either the `finally` tasks (a second cancel) or all the others.
    fn stop_all(
        &mut self,
        finally: bool,
        waiting_to: TaskStatus,
        message: &str,
        fx: &mut Vec<Effect>,
    ) {
        for i in 0..self.tasks.len() {
            if self.defs[i].finally != finally {
                continue;
            }
            match self.tasks[i].status {
                TaskStatus::Pending | TaskStatus::Ready => self.set_status(i, waiting_to, message),
                TaskStatus::RetryWait => self.set_status(i, TaskStatus::Cancelled, message),
                TaskStatus::Assigned | TaskStatus::Running => {
                    if let Some(a) = self.tasks[i].current() {
                        fx.push(Effect::Cancel {
                            task: i,
                            attempt: a.number,
                            agent: a.agent.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    fn finish(&mut self, now: Millis) -> Effect {
        // Tasks skipped by a failure set `failed`; the others were skipped
        // by a `when:`, which does not fail the run.
        let all_ok = !self.failed
            && self
                .tasks
                .iter()
                .all(|t| matches!(t.status, TaskStatus::Succeeded | TaskStatus::Skipped));
        self.run.status = match self.run.status {
            RunStatus::Cancelling => RunStatus::Cancelled,
            _ if all_ok => RunStatus::Succeeded,
            _ => RunStatus::Failed,
        };
        self.run.finished_at = self.run.finished_at.or(Some(now));
        self.run_dirty = true;
        Effect::Finished(self.run.status)
    }
}

mod cached;
mod condition;
mod finally;
mod for_each;
pub use finally::Outcome;
pub use for_each::instance_name;
mod rerun;
mod restore;
#[cfg(test)]
mod tests;
