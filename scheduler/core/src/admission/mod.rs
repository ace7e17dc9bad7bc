//! Admission: which Ready tasks start now, on which agent, and which running
//! tasks must stop to make room. One call to [`schedule`] is one pass over
//! the whole backlog; it takes the queues, the pending and running tasks and
//! the fleet, and returns a [`Decision`]. Nothing here keeps state between
//! passes: reservations and preemption plans are recomputed every pass.
//!
//! # Order
//!
//! Queues are served by priority (higher first). Queues of equal priority
//! share by weight with dominant resource fairness: each queue's share is the
//! largest of its CPU, memory and GPU use (running plus admitted this pass)
//! as a fraction of the fleet's total, divided by its weight; the queue with
//! the lowest share is served next (ties: queue name, then index), and shares
//! are recomputed after every admission. Inside a queue, tasks go by run
//! priority (higher first), then submit time, then `seq`.
//!
//! # Per task
//!
//! 1. a paused queue admits nothing ([`Wait::Paused`]); a queue with
//!    `max_running` tasks running (or admitted this pass) admits no more
//!    ([`Wait::MaxRunning`]);
//! 2. a task no agent could ever run is [`Wait::Unschedulable`] and does not
//!    hold up its queue;
//! 3. quota: a task that would take its queue over quota waits
//!    ([`Wait::Quota`]). It keeps its place: the quota it needs is held for
//!    it, so later tasks of the queue may only use quota it does not need
//!    (a task asking for more than the whole quota holds nothing);
//! 4. placement: the task is admitted only where [`crate::placement`]'s rules
//!    put it (same filters, same bin-pack/spread scoring and tie-breaks as
//!    [`crate::placement::choose`], reserved agents left out).
//!
//! # Borrowing
//!
//! Two passes. In the first, every queue is held to its quota. In the second,
//! tasks of `borrow` queues that waited for quota only are tried again, in
//! the same order, with no quota, on what the first pass left over (agents
//! reserved in the first pass stay reserved). Admits beyond quota are marked
//! `borrowed`. Borrowed work is the first to go: a queue within its quota
//! whose head cannot be placed may evict borrowed tasks of other queues,
//! whatever their priority and whatever its own preemption policy, as long as
//! the borrowing queue is still over its quota (counting neither work already
//! being evicted nor victims chosen this pass).
//!
//! # Backfill
//!
//! The first task of a queue that cannot be placed for lack of room (its
//! *head*) gets a reservation: one agent that later tasks of this pass (of
//! any queue served after it) may not use. Tasks behind it still run
//! elsewhere, so small work is not stuck behind a big task, and nothing
//! served after the head can take the room it is waiting for. The reserved
//! agent is the one where it could fit soonest, judged by what is free now
//! among agents where it could ever fit: the fewest missing matching GPUs
//! (GPUs free in whole units and are the scarce resource), then the smallest
//! missing fraction of the agent's CPU or memory (the larger of the two),
//! then agent id.
//!
//! # Preemption
//!
//! A head that cannot be placed for lack of room (within quota, never in the
//! borrowing pass) may evict: borrowed work of other queues that are over
//! their quota (see above), and, when its queue has
//! [`Preemption::LowerPriority`], running tasks of lower priority: a lower
//! queue priority, or the same queue priority and a lower run priority.
//! Same-or-higher priority work that is not reclaimable borrowed work is
//! never evicted. Victims come from a single agent; on each candidate agent
//! they are taken borrowed first, then lowest (queue priority, run priority),
//! then most recently started (least work lost), skipping tasks that free
//! nothing still missing, and superfluous victims are dropped again. Tasks
//! already being evicted count as freeing room and are never chosen twice.
//! Among agents where this makes the head fit (CPU, memory and enough free
//! GPUs of the wanted model), the one chosen evicts the fewest non-borrowed
//! tasks, then the fewest tasks, then the least run time (latest start
//! times), then agent id. If evicting everything evictable would not make it
//! fit, nothing is evicted. The chosen agent is reserved for the head, which
//! waits with [`Wait::Preempting`].
//!
//! # Cost
//!
//! A pass keeps a compact copy of free resources and an ordered index of
//! agents by placement score, so placing a task looks at the few best agents
//! instead of all of them. Free room only shrinks during a pass (admissions
//! and reservations take, evictions free nothing until the victims stop), so
//! a request shape that failed once fails again: failures are memoised.

mod fleet;
mod pass;
mod preempt;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::placement::{AgentSlot, Placement, Request, Strategy};

/// CPU, memory and GPUs, as requested, used or limited.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

impl Resources {
    /// What `req` takes.
    pub fn of(req: &Request) -> Self {
        Self {
            cpu_millis: req.cpu_millis,
            memory_bytes: req.memory_bytes,
            gpus: u64::from(req.gpus),
        }
    }

    /// Whether this stays within `quota` in every limited resource.
    pub fn within(self, quota: &Quota) -> bool {
        quota.cpu_millis.is_none_or(|q| self.cpu_millis <= q)
            && quota.memory_bytes.is_none_or(|q| self.memory_bytes <= q)
            && quota.gpus.is_none_or(|q| self.gpus <= q)
    }

    /// Dominant share: the largest fraction of `total` this uses (resources
    /// the fleet has none of are left out).
    pub fn dominant_share(self, total: Self) -> f64 {
        let frac = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            }
        };
        frac(self.cpu_millis, total.cpu_millis)
            .max(frac(self.memory_bytes, total.memory_bytes))
            .max(frac(self.gpus, total.gpus))
    }
}

/// Saturating sum.
impl std::ops::Add for Resources {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }
}

/// Saturating difference.
impl std::ops::Sub for Resources {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl std::ops::SubAssign for Resources {
    fn sub_assign(&mut self, o: Self) {
        *self = *self - o;
    }
}

/// Limits on what a queue's running tasks hold together. None = unlimited.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Option<u64>,
}

/// Whether a queue's blocked head may evict lower-priority work.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Preemption {
    #[default]
    Never,
    LowerPriority,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    pub name: String,
    /// Higher first.
    pub priority: i64,
    /// Share among queues of equal priority; 0 counts as 1.
    pub weight: u32,
    pub quota: Quota,
    pub max_running: Option<u32>,
    pub paused: bool,
    pub preemption: Preemption,
    /// May exceed its quota with capacity nobody else asks for.
    pub borrow: bool,
}

/// A Ready task waiting for admission; `key` is the caller's handle.
#[derive(Clone, Debug)]
pub struct Pending<K> {
    pub key: K,
    /// Index into the queues.
    pub queue: usize,
    pub run_priority: i64,
    pub submitted_at: u64,
    /// Last tie-break, e.g. the task's index.
    pub seq: u64,
    pub req: Request,
}

/// An admitted task still holding resources on `agents[agent]`.
#[derive(Clone, Debug)]
pub struct Running<K> {
    pub key: K,
    pub queue: usize,
    pub run_priority: i64,
    /// Index into the agents.
    pub agent: usize,
    pub req: Request,
    /// (NVML index, UUID) of the GPUs it holds.
    pub gpus: Vec<(u32, String)>,
    pub started_at: u64,
    /// Admitted beyond its queue's quota.
    pub borrowed: bool,
    /// Already being evicted.
    pub preempting: bool,
}

/// Why a pending task was not admitted. Texts are shared: a backlog of
/// 100,000 tasks mostly waits for a handful of reasons, and one allocation
/// per task per pass was the scheduler's largest cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    Paused,
    MaxRunning(u32),
    /// e.g. "queue `train` is at its gpus quota (4 of 4)".
    Quota(Arc<str>),
    /// Fits an agent, but not now: placement's text, or "held for the head
    /// of queue `x` ...".
    NoCapacity(Arc<str>),
    /// No agent could ever run it (placement's text).
    Unschedulable(Arc<str>),
    /// Waits for evicted work to stop.
    Preempting(Arc<str>),
}

impl Wait {
    pub fn kind(&self) -> &'static str {
        match self {
            Wait::Paused => "paused",
            Wait::MaxRunning(_) => "max_running",
            Wait::Quota(_) => "quota",
            Wait::NoCapacity(_) => "no_capacity",
            Wait::Unschedulable(_) => "unschedulable",
            Wait::Preempting(_) => "preempting",
        }
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Paused => f.write_str("its queue is paused"),
            Wait::MaxRunning(n) => {
                write!(f, "its queue already runs its maximum of {n} task(s)")
            }
            Wait::Quota(s) | Wait::NoCapacity(s) | Wait::Unschedulable(s) | Wait::Preempting(s) => {
                f.write_str(s)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Admit<K> {
    pub key: K,
    pub placement: Placement,
    /// Admitted beyond its queue's quota: the first to be reclaimed.
    pub borrowed: bool,
}

#[derive(Clone, Debug)]
pub struct Evict<K> {
    pub victim: K,
    pub for_task: K,
    /// e.g. "preempted for a priority-10 task of queue `prod`".
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Decision<K> {
    /// In the order they were decided.
    pub admit: Vec<Admit<K>>,
    pub evict: Vec<Evict<K>>,
    /// Every pending task not admitted, grouped by queue (queues in serving
    /// order: priority desc, then name, then index; tasks with an unknown
    /// queue index last) and in the order the queue would admit them
    /// (run_priority desc, submitted_at asc, seq asc), with why it waits.
    pub waiting: Vec<(K, Wait)>,
}

/// One admission pass. `agents` already include the allocations of
/// `running` (used CPU and memory, held GPUs).
pub fn schedule<K: Clone>(
    queues: &[Queue],
    pending: &[Pending<K>],
    running: &[Running<K>],
    agents: &[AgentSlot],
    strategy: Strategy,
) -> Decision<K> {
    pass::Pass::new(queues, pending, running, agents, strategy).run()
}
