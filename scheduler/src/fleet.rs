//! The scheduler's view of its agents: capacity and usage from heartbeats,
//! what it has placed on each (allocations), drain and loss state, and the
//! per-agent record kept in etcd.
//!
//! No I/O and no clock here: the engine feeds heartbeats and the time in, and
//! carries out what comes back (lost attempts to requeue, stray attempts to
//! cancel, records to write).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use drover_api::pb;
use drover_scheduler_core::ids::{AgentId, AttemptId, AttemptNumber, RunId, TaskIndex};
use drover_scheduler_core::placement::{AgentSlot, GpuSlot, Request};
use drover_scheduler_core::Millis;
use tracing::{info, warn};

use crate::engine::records::Versioned;

/// Resources an attempt holds on an agent.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// The agent's id, shared with its entry ([`Fleet::agent_id`]) when the
    /// agent is known: a walk over allocations compares pointers first.
    pub agent: AgentId,
    pub attempt: AttemptNumber,
    pub req: Request,
    pub gpus: Vec<(u32, String)>,
    /// Admitted beyond its queue's quota: the first to be reclaimed.
    pub borrowed: bool,
    /// `on_agent_lost: wait`: how long it stays Running on a lost agent
    /// before it is requeued (None: requeued at once).
    pub lost_after: Option<Duration>,
}

pub struct AgentEntry {
    /// The id, shared with this agent's allocations.
    id: AgentId,
    slot: AgentSlot,
    /// The latest heartbeat; None until one arrives after a scheduler start.
    last: Option<pb::Heartbeat>,
    /// When it was last heard from (or loaded, before any heartbeat).
    last_seen_ms: Millis,
    lost: bool,
    drained: bool,
    /// Refused or missed an assignment: no new work until it heartbeats again.
    suspended: bool,
    record: Versioned<pb::AgentRecord>,
    /// Attempts it reported that the scheduler does not expect, as of the
    /// previous heartbeat: cancelled when seen twice in a row, so an attempt
    /// whose final event is still in flight is not cancelled for nothing.
    unexpected: HashSet<pb::AttemptRef>,
}

impl AgentEntry {
    fn new(record: Versioned<pb::AgentRecord>, now_ms: Millis) -> Self {
        let r = record.get();
        Self {
            id: AgentId::new(&r.id),
            slot: AgentSlot {
                id: r.id.clone(),
                ..AgentSlot::default()
            },
            last: None,
            last_seen_ms: now_ms,
            lost: r.lost_at_ms > 0,
            drained: r.drained,
            suspended: false,
            record,
            unexpected: HashSet::new(),
        }
    }

    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// Capacity, labels and what placement has allocated on it.
    pub fn slot(&self) -> &AgentSlot {
        &self.slot
    }

    /// Can take new work.
    pub fn schedulable(&self) -> bool {
        self.last.is_some() && !self.lost && !self.drained && !self.suspended
    }

    pub fn state(&self) -> pb::AgentState {
        match (self.lost, self.drained) {
            (true, _) => pb::AgentState::Lost,
            (false, true) => pb::AgentState::Draining,
            (false, false) => pb::AgentState::Ready,
        }
    }

    pub fn record(&self) -> &Versioned<pb::AgentRecord> {
        &self.record
    }
}

/// What a heartbeat means for the attempts on that agent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Expected here but gone: the agent restarted without them.
    pub lost: Vec<AttemptId>,
    /// Running there but not expected (stale attempt, finished run): stop them.
    pub cancel: Vec<pb::AttemptRef>,
}

/// Agents for an admission pass ([`Fleet::admission_slots`]).
pub struct AdmissionSlots {
    pub slots: Vec<AgentSlot>,
    /// Each agent's position in `slots`.
    pub index: HashMap<String, usize>,
    /// How many lead `slots` as schedulable.
    pub schedulable: usize,
}

#[derive(Default)]
pub struct Fleet {
    agents: BTreeMap<AgentId, AgentEntry>,
    /// By run, then task: one live attempt per task at most. The admission
    /// pass walks every allocation every turn; this way it meets each run's
    /// attempts together and compares the run's id once, not once per
    /// attempt (a `memcmp` and a cache miss each: 12% of the scheduler's
    /// samples with 5,000 running, keyed by `(run, task)`).
    allocations: Allocations,
}

pub type Allocations = BTreeMap<RunId, BTreeMap<TaskIndex, Allocation>>;

/// Every allocation as (run, task, allocation), a run's together. A free
/// function, so it can walk them while an agent entry is borrowed mutably.
fn each(allocations: &Allocations) -> impl Iterator<Item = (&RunId, TaskIndex, &Allocation)> {
    allocations
        .iter()
        .flat_map(|(run, tasks)| tasks.iter().map(move |(t, a)| (run, *t, a)))
}

impl Fleet {
    /// Agents known from etcd, before any heartbeat: their loss clock starts
    /// at `now_ms`. An agent known already takes the stored record (after a
    /// failed commit, etcd's is the one to trust) and keeps its live state.
    pub fn load(&mut self, records: Vec<(pb::AgentRecord, i64)>, now_ms: Millis) {
        for (record, rev) in records {
            let id = AgentId::new(&record.id);
            match self.agents.get_mut(&id) {
                Some(a) => {
                    a.drained = record.drained;
                    a.record = Versioned::stored(record, rev);
                }
                None => {
                    let entry = AgentEntry::new(Versioned::stored(record, rev), now_ms);
                    self.agents.insert(id, entry);
                }
            }
        }
    }

    /// An agent that holds work but has no record (its record was never
    /// committed): known from now on, so its loss is noticed.
    pub fn expect(&mut self, id: &str, now_ms: Millis) {
        if !self.agents.contains_key(id) {
            let record = pb::AgentRecord {
                id: id.to_string(),
                ..Default::default()
            };
            let entry = AgentEntry::new(Versioned::stored(record, 0), now_ms);
            self.agents.insert(AgentId::new(id), entry);
        }
    }

    pub fn get(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    /// The id to put in an allocation: the agent entry's own when it is
    /// known, so allocations share it.
    pub fn agent_id(&self, id: &str) -> AgentId {
        self.agents
            .get(id)
            .map_or_else(|| AgentId::new(id), |a| a.id.clone())
    }

    /// It refused or missed an assignment: no new work until it heartbeats.
    pub fn suspend(&mut self, id: &str) {
        if let Some(a) = self.agents.get_mut(id) {
            a.suspended = true;
        }
    }

    /// Drains or undrains an agent; None when there is no such agent.
    pub fn set_drained(&mut self, id: &str, drained: bool) -> Option<()> {
        let a = self.agents.get_mut(id)?;
        if a.drained != drained {
            info!(agent = %id, drained, "agent drain changed");
            a.drained = drained;
            a.record.modify().drained = drained;
        }
        Some(())
    }

    /// Agent records with a write pending.
    pub fn unsaved_records(&self) -> impl Iterator<Item = (&AgentId, &Versioned<pb::AgentRecord>)> {
        self.agents
            .iter()
            .filter(|(_, a)| a.record.pending().is_some())
            .map(|(id, a)| (id, &a.record))
    }

    /// The agent's record was committed at `rev`.
    pub fn record_committed(&mut self, id: &str, rev: i64) {
        if let Some(a) = self.agents.get_mut(id) {
            a.record.committed(rev);
        }
    }

    pub fn allocate(&mut self, run: &RunId, task: TaskIndex, alloc: Allocation) {
        if let Some(a) = self.agents.get_mut(&alloc.agent) {
            a.slot.allocate(&alloc.req, &alloc.gpus);
        }
        let replaced = self
            .allocations
            .entry(run.clone())
            .or_default()
            .insert(task, alloc);
        // A task holds one allocation: what it held before is freed.
        if let Some(old) = replaced {
            if let Some(a) = self.agents.get_mut(&old.agent) {
                a.slot.release(&old.req, &old.gpus);
            }
        }
    }

    pub fn release(&mut self, run: &str, task: TaskIndex) {
        let Some(tasks) = self.allocations.get_mut(run) else {
            return;
        };
        let Some(alloc) = tasks.remove(&task) else {
            return;
        };
        if tasks.is_empty() {
            self.allocations.remove(run);
        }
        if let Some(a) = self.agents.get_mut(&alloc.agent) {
            a.slot.release(&alloc.req, &alloc.gpus);
        }
    }

    /// How many attempts hold resources.
    pub fn allocated(&self) -> usize {
        self.allocations.values().map(BTreeMap::len).sum()
    }

    /// One attempt's allocation.
    pub fn allocation(&self, run: &str, task: TaskIndex) -> Option<&Allocation> {
        self.allocations.get(run)?.get(&task)
    }

    /// Every allocation as (run, task, allocation), a run's together.
    pub fn allocations(&self) -> impl Iterator<Item = (&RunId, TaskIndex, &Allocation)> {
        each(&self.allocations)
    }

    /// Allocations by run, then task.
    pub fn allocations_by_run(&self) -> &Allocations {
        &self.allocations
    }

    /// Forgets every allocation (before rebuilding them from etcd).
    pub fn clear_allocations(&mut self) {
        self.allocations.clear();
        for a in self.agents.values_mut() {
            a.slot.used_cpu_millis = 0;
            a.slot.used_memory_bytes = 0;
            a.slot.gpus.iter_mut().for_each(|g| g.held = false);
        }
    }

    /// Takes a heartbeat in. `task_of` maps a reported attempt to its task
    /// index when its run is active, so it can be compared with allocations.
    pub fn heartbeat(
        &mut self,
        hb: pb::Heartbeat,
        now_ms: Millis,
        task_of: impl Fn(&pb::AttemptRef) -> Option<TaskIndex>,
    ) -> Reconcile {
        let id = AgentId::new(&hb.agent_id);
        let entry = self.agents.entry(id.clone()).or_insert_with(|| {
            let record = pb::AgentRecord {
                id: hb.agent_id.clone(),
                first_seen_ms: now_ms,
                ..Default::default()
            };
            AgentEntry::new(Versioned::created(record), now_ms)
        });
        if entry.last.is_none() {
            info!(agent = %id, executors = ?hb.executors, cpu_millis = hb.cpu_millis, gpus = hb.gpus.len(), "agent connected");
        }
        if entry.lost {
            info!(agent = %id, "lost agent is back");
            entry.lost = false;
            entry.record.modify().lost_at_ms = 0;
        }
        let known = entry.record.get().instance.as_str();
        let restarted = !known.is_empty() && known != hb.instance;
        if known != hb.instance {
            entry.record.modify().instance = hb.instance.clone();
        }
        entry.last_seen_ms = now_ms;
        entry.suspended = false;
        entry.slot.executors = hb.executors.clone();
        entry.slot.labels = hb.labels.clone();
        entry.slot.cpu_millis = u64::from(hb.cpu_millis);
        entry.slot.memory_bytes = hb.memory_bytes;
        let held: HashSet<String> = each(&self.allocations)
            .filter(|(_, _, a)| a.agent.same(&entry.id))
            .flat_map(|(_, _, a)| a.gpus.iter().map(|(_, u)| u.clone()))
            .collect();
        entry.slot.gpus = hb
            .gpus
            .iter()
            .map(|g| GpuSlot {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_bytes: g.memory_total_bytes,
                held: held.contains(&g.uuid),
            })
            .collect();

        let reported: HashSet<&pb::AttemptRef> = hb.running.iter().collect();
        let mut out = Reconcile::default();
        // What the scheduler placed here that the agent no longer has.
        if restarted {
            warn!(agent = %id, "agent restarted");
            for (run, task, a) in each(&self.allocations) {
                if !a.agent.same(&entry.id) {
                    continue;
                }
                let still_there = hb.running.iter().any(|r| {
                    run.as_str() == r.run_id && task_of(r) == Some(task) && r.attempt == a.attempt.0
                });
                if !still_there {
                    out.lost.push(AttemptId {
                        run: run.clone(),
                        task,
                        attempt: a.attempt,
                    });
                }
            }
        }
        // What the agent runs that the scheduler does not expect.
        let mut unexpected = HashSet::new();
        for r in reported {
            let expected = task_of(r).is_some_and(|t| {
                self.allocations
                    .get(r.run_id.as_str())
                    .and_then(|tasks| tasks.get(&t))
                    .is_some_and(|a| a.agent.same(&entry.id) && a.attempt.0 == r.attempt)
            });
            if !expected {
                if entry.unexpected.contains(r) {
                    out.cancel.push(r.clone());
                }
                unexpected.insert(r.clone());
            }
        }
        entry.unexpected = unexpected;
        entry.last = Some(hb);
        out
    }

    /// Agents silent for longer than `timeout` become lost; returns the
    /// attempts to requeue: those they held, but an `on_agent_lost: wait`
    /// attempt only once its agent has been lost for its `lost_after`.
    pub fn expire(&mut self, timeout: Duration, now_ms: Millis) -> Vec<(AttemptId, String)> {
        let timeout_ms = timeout.as_millis() as u64;
        let mut lost = Vec::new();
        for (id, a) in &mut self.agents {
            let newly = !a.lost && now_ms.saturating_sub(a.last_seen_ms) >= timeout_ms;
            if newly {
                warn!(agent = %id, timeout = ?timeout, "agent lost: no heartbeat");
                a.lost = true;
                a.record.modify().lost_at_ms = now_ms;
            } else if !a.lost {
                continue;
            }
            let lost_for = Duration::from_millis(now_ms.saturating_sub(a.record.get().lost_at_ms));
            for (run, task, alloc) in each(&self.allocations) {
                if !alloc.agent.same(id) {
                    continue;
                }
                let why = match alloc.lost_after {
                    None if newly => {
                        format!("agent `{id}` lost: no heartbeat for {}s", timeout.as_secs())
                    }
                    Some(wait) if lost_for >= wait => format!(
                        "agent `{id}` lost for {} (the task's lost_after)",
                        drover_api::duration::format(wait)
                    ),
                    Some(wait) if newly => {
                        info!(agent = %id, run = %run, task = task.0, wait = ?wait, "attempt kept running on the lost agent (on_agent_lost: wait)");
                        continue;
                    }
                    _ => continue,
                };
                let attempt = AttemptId {
                    run: run.clone(),
                    task,
                    attempt: alloc.attempt,
                };
                lost.push((attempt, why));
            }
        }
        lost
    }

    /// Why no agent can take work, when none is schedulable.
    pub fn idle_reason(&self) -> String {
        if self.agents.is_empty() {
            return "waiting for an agent to connect".into();
        }
        let list = |f: &dyn Fn(&AgentEntry) -> bool| -> Vec<&str> {
            self.agents
                .iter()
                .filter(|(_, a)| f(a))
                .map(|(id, _)| id.as_str())
                .collect()
        };
        let mut parts = Vec::new();
        for (what, ids) in [
            ("drained", list(&|a| a.drained && !a.lost)),
            ("lost", list(&|a| a.lost)),
            ("not heard from yet", list(&|a| a.last.is_none() && !a.lost)),
            ("refused work", list(&|a| a.suspended)),
        ] {
            if !ids.is_empty() {
                parts.push(format!("{what}: {}", ids.join(", ")));
            }
        }
        format!("waiting for an agent to take work ({})", parts.join("; "))
    }

    /// Agents for an admission pass, and each one's index there. Agents that
    /// take no new work are included only while they hold running work (so
    /// it counts against quotas), offering no executor and no room beyond it.
    pub fn admission_slots(&self) -> AdmissionSlots {
        let mut slots: Vec<AgentSlot> = Vec::new();
        let mut index = HashMap::new();
        for (id, a) in self.agents.iter().filter(|(_, a)| a.schedulable()) {
            index.insert(id.to_string(), slots.len());
            slots.push(a.slot.clone());
        }
        let schedulable = slots.len();
        for (id, a) in self.agents.iter().filter(|(_, a)| !a.schedulable()) {
            if !self.allocations().any(|(_, _, al)| al.agent.same(id)) {
                continue;
            }
            let mut slot = a.slot.clone();
            slot.executors.clear();
            slot.cpu_millis = slot.used_cpu_millis;
            slot.memory_bytes = slot.used_memory_bytes;
            slot.gpus.retain(|g| g.held);
            index.insert(id.to_string(), slots.len());
            slots.push(slot);
        }
        AdmissionSlots {
            slots,
            index,
            schedulable,
        }
    }

    /// The public view of one agent.
    pub fn view(
        &self,
        id: &str,
        describe: impl Fn(&RunId, TaskIndex, AttemptNumber) -> String,
    ) -> Option<pb::Agent> {
        let a = self.agents.get(id)?;
        let hb = a.last.clone().unwrap_or_default();
        let holders: BTreeMap<&str, String> = self
            .allocations()
            .filter(|(_, _, al)| al.agent.same(&a.id))
            .flat_map(|(run, task, al)| {
                let who = describe(run, task, al.attempt);
                al.gpus.iter().map(move |(_, u)| (u.as_str(), who.clone()))
            })
            .collect();
        Some(pb::Agent {
            id: id.to_string(),
            state: a.state() as i32,
            hostname: hb.hostname.clone(),
            executors: hb.executors.clone(),
            labels: hb.labels.clone(),
            cpu_millis: hb.cpu_millis,
            memory_bytes: hb.memory_bytes,
            allocated_cpu_millis: a.slot.used_cpu_millis,
            allocated_memory_bytes: a.slot.used_memory_bytes,
            cpu_usage_percent: hb.cpu_usage_percent,
            memory_used_bytes: hb.memory_used_bytes,
            gpus: hb
                .gpus
                .iter()
                .map(|g| pb::AgentGpu {
                    info: Some(g.clone()),
                    allocated_to: holders.get(g.uuid.as_str()).cloned().unwrap_or_default(),
                })
                .collect(),
            running_attempts: self
                .allocations()
                .filter(|(_, _, al)| al.agent.same(&a.id))
                .count() as u32,
            last_seen_ms: hb.sent_at_ms,
            driver_version: hb.driver_version.clone(),
            cuda_version: hb.cuda_version.clone(),
            drained: a.drained,
        })
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn hb(id: &str, instance: &str, running: &[(&str, &str, u32)]) -> pb::Heartbeat {
        pb::Heartbeat {
            agent_id: id.into(),
            executors: vec!["process".into()],
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            instance: instance.into(),
            gpus: vec![pb::GpuInfo {
                index: 0,
                uuid: "GPU-0".into(),
                name: "A100".into(),
                memory_total_bytes: 40 << 30,
                ..Default::default()
            }],
            running: running
                .iter()
                .map(|(r, t, a)| pb::AttemptRef {
                    run_id: r.to_string(),
                    task: t.to_string(),
                    attempt: *a,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn task_of(r: &pb::AttemptRef) -> Option<TaskIndex> {
        (r.run_id == "r1").then(|| r.task.trim_start_matches('t').parse().ok().map(TaskIndex))?
    }

    fn attempt(run: &str, task: usize, attempt: u32) -> AttemptId {
        AttemptId::new(RunId::new(run), task, attempt)
    }

    fn schedulable(f: &Fleet) -> usize {
        f.admission_slots().schedulable
    }

    fn alloc(f: &mut Fleet, task: usize, attempt: u32, gpus: bool) {
        f.allocate(
            &RunId::new("r1"),
            TaskIndex(task),
            Allocation {
                agent: AgentId::new("a"),
                attempt: AttemptNumber(attempt),
                req: Request::new("", 500, 0),
                gpus: if gpus {
                    vec![(0, "GPU-0".into())]
                } else {
                    vec![]
                },
                borrowed: false,
                lost_after: None,
            },
        );
    }

    #[test]
    fn first_heartbeat_registers_and_marks_the_record_for_writing() -> TestResult {
        let mut f = Fleet::default();
        let r = f.heartbeat(hb("a", "i1", &[]), 5, task_of);
        assert_eq!(r, Reconcile::default());
        let a = f.get("a").ok_or("no agent a")?;
        assert!(a.schedulable());
        assert!(a.record().pending().is_some());
        assert_eq!(a.record().get().first_seen_ms, 5);
        assert_eq!(a.record().get().instance, "i1");
        assert_eq!(a.slot().gpus.len(), 1);
        assert_eq!(f.unsaved_records().count(), 1);
        f.record_committed("a", 9);
        assert_eq!(f.unsaved_records().count(), 0);
        f.heartbeat(hb("a", "i1", &[]), 6, task_of);
        assert_eq!(f.unsaved_records().count(), 0, "nothing changed");
        Ok(())
    }

    #[test]
    fn held_gpus_stay_held_across_heartbeats() -> TestResult {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        alloc(&mut f, 0, 1, true);
        f.heartbeat(hb("a", "i1", &[("r1", "t0", 1)]), 1, task_of);
        assert!(f.get("a").ok_or("no agent a")?.slot().gpus[0].held);
        f.release("r1", TaskIndex(0));
        let a = f.get("a").ok_or("no agent a")?;
        assert!(!a.slot().gpus[0].held);
        assert_eq!(a.slot().used_cpu_millis, 0);
        Ok(())
    }

    #[test]
    fn allocations_are_kept_by_run_then_task_with_the_agents_shared_id() -> TestResult {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        let mk = |f: &Fleet, agent: &str, attempt| Allocation {
            agent: f.agent_id(agent),
            attempt: AttemptNumber(attempt),
            req: Request::new("", 500, 0),
            gpus: vec![],
            borrowed: false,
            lost_after: None,
        };
        let (r1, r2) = (RunId::new("r1"), RunId::new("r2"));
        f.allocate(&r2, TaskIndex(0), mk(&f, "a", 1));
        f.allocate(&r1, TaskIndex(5), mk(&f, "a", 2));
        f.allocate(&r1, TaskIndex(1), mk(&f, "gone", 1));
        // Placing the same task again replaces its allocation.
        f.allocate(&r1, TaskIndex(5), mk(&f, "a", 3));
        let listed: Vec<(&str, usize, u32)> = f
            .allocations()
            .map(|(r, t, a)| (r.as_str(), t.0, a.attempt.0))
            .collect();
        assert_eq!(listed, [("r1", 1, 1), ("r1", 5, 3), ("r2", 0, 1)]);
        assert_eq!(f.allocated(), 3);
        let shared = &f
            .allocation("r1", TaskIndex(5))
            .ok_or("no allocation")?
            .agent;
        assert!(shared.same(f.get("a").ok_or("no agent a")?.id()));
        assert_eq!(
            f.allocation("r1", TaskIndex(1))
                .ok_or("no allocation")?
                .agent
                .as_str(),
            "gone"
        );

        f.release("r1", TaskIndex(5));
        f.release("r1", TaskIndex(5));
        f.release("r3", TaskIndex(0));
        f.release("r1", TaskIndex(1));
        assert_eq!(f.allocated(), 1);
        assert_eq!(f.allocations_by_run().keys().collect::<Vec<_>>(), [&r2]);
        assert_eq!(f.get("a").ok_or("no agent a")?.slot().used_cpu_millis, 500);
        Ok(())
    }

    #[test]
    fn a_restarted_agent_loses_what_it_no_longer_reports() {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        alloc(&mut f, 0, 1, false);
        alloc(&mut f, 1, 3, false);
        let r = f.heartbeat(hb("a", "i2", &[("r1", "t1", 3)]), 1, task_of);
        assert_eq!(r.lost, vec![attempt("r1", 0, 1)]);
        assert!(r.cancel.is_empty());
    }

    #[test]
    fn same_instance_missing_attempt_is_not_lost() {
        // Its final event may still be in JetStream: the events decide.
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        alloc(&mut f, 0, 1, false);
        let r = f.heartbeat(hb("a", "i1", &[]), 1, task_of);
        assert!(r.lost.is_empty());
    }

    #[test]
    fn unexpected_attempts_are_cancelled_when_seen_twice() {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        alloc(&mut f, 0, 2, false);
        // Attempt 1 of t0 is stale (attempt 2 is current); "old" is not an active run.
        let stale = [("r1", "t0", 1), ("old", "x", 1), ("r1", "t0", 2)];
        let r = f.heartbeat(hb("a", "i1", &stale), 1, task_of);
        assert!(r.cancel.is_empty(), "first sighting: maybe in flight");
        let r = f.heartbeat(hb("a", "i1", &stale), 2, task_of);
        let mut names: Vec<_> = r
            .cancel
            .iter()
            .map(|c| (c.run_id.as_str(), c.attempt))
            .collect();
        names.sort();
        assert_eq!(names, vec![("old", 1), ("r1", 1)]);
    }

    #[test]
    fn silent_agents_expire_with_their_attempts_and_come_back() -> TestResult {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 1_000, task_of);
        alloc(&mut f, 0, 1, false);
        let timeout = Duration::from_secs(10);
        assert!(f.expire(timeout, 10_999).is_empty(), "silent 9.999 s");
        let lost = f.expire(timeout, 11_000);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, attempt("r1", 0, 1));
        assert!(lost[0].1.starts_with("agent `a` lost"));
        let a = f.get("a").ok_or("no agent a")?;
        assert_eq!(a.state(), pb::AgentState::Lost);
        assert!(!a.schedulable());
        assert_eq!(a.record().get().lost_at_ms, 11_000);
        assert!(f.expire(timeout, 30_000).is_empty(), "lost once");
        f.heartbeat(hb("a", "i1", &[]), 30_001, task_of);
        let a = f.get("a").ok_or("no agent a")?;
        assert_eq!(a.state(), pb::AgentState::Ready);
        assert_eq!(a.record().get().lost_at_ms, 0);
        Ok(())
    }

    #[test]
    fn waiting_attempts_stay_on_a_lost_agent_for_their_lost_after() -> TestResult {
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 1_000, task_of);
        alloc(&mut f, 0, 1, false);
        alloc(&mut f, 1, 1, false);
        let wait = Duration::from_secs(60);
        let mut kept = f
            .allocation("r1", TaskIndex(1))
            .ok_or("no allocation")?
            .clone();
        kept.lost_after = Some(wait);
        f.allocate(&RunId::new("r1"), TaskIndex(1), kept.clone());
        let timeout = Duration::from_secs(10);
        let lost = f.expire(timeout, 11_000);
        assert_eq!(lost.len(), 1, "only the requeue attempt: {lost:?}");
        assert_eq!(lost[0].0, attempt("r1", 0, 1));
        f.release("r1", TaskIndex(0));
        assert!(f.expire(timeout, 70_999).is_empty(), "lost 59.999 s");
        let lost = f.expire(timeout, 71_000);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, attempt("r1", 1, 1));
        assert_eq!(lost[0].1, "agent `a` lost for 1m (the task's lost_after)");

        // Back within lost_after: nothing is requeued.
        let mut f = Fleet::default();
        f.heartbeat(hb("a", "i1", &[]), 1_000, task_of);
        f.allocate(&RunId::new("r1"), TaskIndex(1), kept);
        assert!(f.expire(timeout, 11_000).is_empty());
        f.heartbeat(hb("a", "i1", &[("r1", "t1", 1)]), 20_000, task_of);
        assert!(f.expire(timeout, 80_000).is_empty());
        Ok(())
    }

    #[test]
    fn drained_and_loaded_agents_take_no_work_until_they_heartbeat() -> TestResult {
        let mut f = Fleet::default();
        f.load(
            vec![(
                pb::AgentRecord {
                    id: "a".into(),
                    drained: true,
                    ..Default::default()
                },
                7,
            )],
            0,
        );
        assert_eq!(schedulable(&f), 0);
        f.heartbeat(hb("a", "i1", &[]), 0, task_of);
        assert_eq!(schedulable(&f), 0, "still drained");
        assert_eq!(
            f.idle_reason(),
            "waiting for an agent to take work (drained: a)"
        );
        assert_eq!(
            f.get("a").ok_or("no agent a")?.state(),
            pb::AgentState::Draining
        );
        assert_eq!(f.unsaved_records().count(), 1, "its instance is stored");
        f.record_committed("a", 8);
        f.set_drained("a", false).ok_or("no agent a")?;
        assert_eq!(schedulable(&f), 1);
        assert_eq!(f.unsaved_records().count(), 1, "the drain is stored");
        assert!(f.set_drained("nope", true).is_none());
        Ok(())
    }
}
