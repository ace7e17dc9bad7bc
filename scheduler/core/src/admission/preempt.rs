//! What to evict, on which single agent, so that a blocked head fits.

use std::cmp::Reverse;

use super::fleet::{ClassId, Fleet};
use super::{Queue, Running};
use crate::placement::{AgentSlot, Request};

/// What planning needs of a running task, kept compact and grouped by
/// agent so that a head can look at every agent's work cheaply.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    /// Index into `running`.
    pub ri: usize,
    pub queue: usize,
    /// (queue priority, run priority); unknown queues rank lowest.
    pub priority: (i64, i64),
    pub cpu: u64,
    pub mem: u64,
    pub gpus: u32,
    pub started_at: u64,
    pub borrowed: bool,
    pub preempting: bool,
    /// Its GPUs' positions among the agent's: `ByAgent::gpu_pos[gpu_at]`.
    gpu_at: std::ops::Range<usize>,
}

/// Running tasks grouped by agent (tasks on unknown agents left out).
pub(super) struct ByAgent {
    at: Vec<usize>,
    slots: Vec<Slot>,
    summary: Vec<Summary>,
    /// Positions, found once by UUID, so planning compares no strings.
    gpu_pos: Vec<usize>,
}

/// Enough about an agent's running work to skip it without looking closer.
#[derive(Copy, Clone, Debug)]
struct Summary {
    /// Lowest priority among tasks not being evicted.
    lowest: (i64, i64),
    draining: bool,
    borrowed: bool,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            lowest: (i64::MAX, i64::MAX),
            draining: false,
            borrowed: false,
        }
    }
}

impl ByAgent {
    pub fn new<K>(running: &[Running<K>], queues: &[Queue], fleet: &[AgentSlot]) -> Self {
        let agents = fleet.len();
        let mut gpu_pos = Vec::new();
        let mut at = vec![0usize; agents + 1];
        for r in running.iter().filter(|r| r.agent < agents) {
            at[r.agent + 1] += 1;
        }
        for i in 0..agents {
            at[i + 1] += at[i];
        }
        // Counting sort: each agent's tasks in index order.
        let mut next = at.clone();
        let mut order = vec![0usize; at[agents]];
        for (i, r) in running.iter().enumerate().filter(|(_, r)| r.agent < agents) {
            order[next[r.agent]] = i;
            next[r.agent] += 1;
        }
        let slots: Vec<Slot> = order
            .into_iter()
            .map(|ri| {
                let r = &running[ri];
                let from = gpu_pos.len();
                let gpus = &fleet[r.agent].gpus;
                gpu_pos.extend(
                    r.gpus
                        .iter()
                        .filter_map(|(_, uuid)| gpus.iter().position(|g| g.uuid == *uuid)),
                );
                Slot {
                    ri,
                    queue: r.queue,
                    priority: (
                        queues.get(r.queue).map_or(i64::MIN, |q| q.priority),
                        r.run_priority,
                    ),
                    cpu: r.req.cpu_millis,
                    mem: r.req.memory_bytes,
                    gpus: r.gpus.len() as u32,
                    started_at: r.started_at,
                    borrowed: r.borrowed,
                    preempting: r.preempting,
                    gpu_at: from..gpu_pos.len(),
                }
            })
            .collect();
        let mut summary = vec![Summary::default(); agents];
        for (a, sum) in summary.iter_mut().enumerate() {
            for s in &slots[at[a]..at[a + 1]] {
                sum.draining |= s.preempting;
                if !s.preempting {
                    sum.borrowed |= s.borrowed;
                    sum.lowest = sum.lowest.min(s.priority);
                }
            }
        }
        Self {
            at,
            slots,
            summary,
            gpu_pos,
        }
    }

    /// Whether agent `a` has nothing `rule` could evict and nothing draining.
    fn nothing_for(&self, a: usize, rule: &Rule) -> bool {
        let s = &self.summary[a];
        !s.draining && !s.borrowed && (!rule.lower_priority || s.lowest >= rule.priority)
    }

    /// Positions among its agent's GPUs of the GPUs `s` holds.
    fn gpus_of(&self, s: &Slot) -> &[usize] {
        &self.gpu_pos[s.gpu_at.clone()]
    }

    /// The running tasks on agent `a`, ascending by index.
    pub fn on(&self, a: usize) -> &[Slot] {
        &self.slots[self.at[a]..self.at[a + 1]]
    }
}

/// Which running tasks a head may evict.
pub(super) struct Rule<'r> {
    /// The head's queue.
    pub queue: usize,
    /// The head's (queue priority, run priority).
    pub priority: (i64, i64),
    /// Its queue has [`super::Preemption::LowerPriority`].
    pub lower_priority: bool,
    /// Per queue: over its quota, so its borrowed work is reclaimable.
    pub over_quota: &'r [bool],
    /// Per running task: already chosen as a victim this pass.
    pub chosen: &'r [bool],
}

impl Rule<'_> {
    /// Borrowed work of another queue that is over its quota.
    pub fn reclaims(&self, s: &Slot) -> bool {
        s.borrowed && s.queue != self.queue && self.over_quota.get(s.queue) == Some(&true)
    }

    pub fn evictable(&self, s: &Slot) -> bool {
        !s.preempting
            && !self.chosen[s.ri]
            && self.over_quota.len() > s.queue
            && (self.reclaims(s) || (self.lower_priority && s.priority < self.priority))
    }
}

/// Evict `victims` (indices into running) on `agent`; `draining` tasks
/// there are already being evicted and count as freeing room.
#[derive(Debug)]
pub(super) struct Plan {
    pub agent: usize,
    pub victims: Vec<usize>,
    pub draining: usize,
}

/// Room on one agent if some of its tasks stopped.
#[derive(Clone, Default)]
struct Room {
    cpu: u64,
    mem: u64,
    held: Vec<bool>,
}

/// One agent, one request: what is missing and what a victim would free.
struct Probe<'p> {
    fleet: &'p Fleet<'p>,
    class: ClassId,
    req: &'p Request,
    by_agent: &'p ByAgent,
    agent: usize,
}

impl Probe<'_> {
    fn free(&self, room: &mut Room, s: &Slot) {
        room.cpu = room.cpu.saturating_add(s.cpu);
        room.mem = room.mem.saturating_add(s.mem);
        for &p in self.by_agent.gpus_of(s) {
            room.held[p] = false;
        }
    }

    fn gpu_ok(&self, p: usize) -> bool {
        self.fleet
            .gpu_matches(self.class, self.fleet.gpu_base(self.agent) + p)
    }

    /// Missing CPU, memory and matching GPUs.
    fn missing(&self, room: &Room) -> (u64, u64, u32) {
        let free_gpus = if self.req.gpus == 0 {
            0
        } else {
            (0..room.held.len())
                .filter(|&p| !room.held[p] && self.gpu_ok(p))
                .count() as u32
        };
        (
            self.req.cpu_millis.saturating_sub(room.cpu),
            self.req.memory_bytes.saturating_sub(room.mem),
            self.req.gpus.saturating_sub(free_gpus),
        )
    }

    fn fits(&self, room: &Room) -> bool {
        self.missing(room) == (0, 0, 0)
    }

    /// Whether evicting `s` frees something still missing.
    fn helps(&self, room: &Room, s: &Slot) -> bool {
        let (cpu, mem, gpus) = self.missing(room);
        (cpu > 0 && s.cpu > 0)
            || (mem > 0 && s.mem > 0)
            || (gpus > 0
                && self
                    .by_agent
                    .gpus_of(s)
                    .iter()
                    .any(|&p| room.held[p] && self.gpu_ok(p)))
    }
}

/// (non-borrowed victims, victims, run time lost, agent rank): lower is
/// better. Run time lost is Σ(now − started_at); for a given number of
/// victims that is smallest when Σ started_at is largest, so no clock needed.
type Cost = (usize, usize, Reverse<u128>, u32);

/// The cheapest single-agent eviction that lets `req` fit, if any.
pub(super) fn plan<K>(
    fleet: &Fleet,
    class: ClassId,
    req: &Request,
    running: &[Running<K>],
    by_agent: &ByAgent,
    rule: &Rule,
) -> Option<Plan> {
    let mut best: Option<(Cost, Plan)> = None;
    let mut cands: Vec<&Slot> = Vec::new();
    let mut draining: Vec<&Slot> = Vec::new();
    let (mut base, mut room, mut trial) = (Room::default(), Room::default(), Room::default());
    for &a in fleet.compat(class) {
        let agent = a as usize;
        if by_agent.nothing_for(agent, rule)
            || fleet.is_reserved(agent)
            || !fleet.could_fit(class, agent, req)
        {
            continue;
        }
        // Cheap bound first: even freeing everything evictable (and all
        // GPUs it holds, matching or not), is there enough?
        let (free_cpu, free_mem) = fleet.room(agent);
        let (mut cpu, mut mem, mut gpus) = (free_cpu, free_mem, fleet.free_gpus(agent));
        let mut any = false;
        for s in by_agent.on(agent) {
            if s.preempting || rule.evictable(s) {
                any = true;
                cpu = cpu.saturating_add(s.cpu);
                mem = mem.saturating_add(s.mem);
                gpus = gpus.saturating_add(s.gpus);
            }
        }
        if !any || cpu < req.cpu_millis || mem < req.memory_bytes || gpus < req.gpus {
            continue;
        }
        let probe = Probe {
            fleet,
            class,
            req,
            by_agent,
            agent,
        };
        draining.clear();
        cands.clear();
        for s in by_agent.on(agent) {
            if s.preempting {
                draining.push(s);
            } else if rule.evictable(s) {
                cands.push(s);
            }
        }
        base.cpu = free_cpu;
        base.mem = free_mem;
        base.held.clear();
        base.held.extend_from_slice(fleet.held(agent));
        for s in &draining {
            probe.free(&mut base, s);
        }
        let victims = if probe.fits(&base) {
            Vec::new()
        } else {
            // Borrowed first, then lowest priority, then least work lost.
            cands.sort_by_key(|s| (!s.borrowed, s.priority, Reverse(s.started_at), s.ri));
            room.clone_from(&base);
            let mut taken = Vec::new();
            for s in &cands {
                if probe.fits(&room) {
                    break;
                }
                if probe.helps(&room, s) {
                    probe.free(&mut room, s);
                    taken.push(*s);
                }
            }
            if !probe.fits(&room) {
                continue;
            }
            // Drop victims the others make unnecessary, least preferred first.
            for k in (0..taken.len()).rev() {
                trial.clone_from(&base);
                for (j, s) in taken.iter().enumerate() {
                    if j != k {
                        probe.free(&mut trial, s);
                    }
                }
                if probe.fits(&trial) {
                    taken.remove(k);
                }
            }
            taken.iter().map(|s| s.ri).collect()
        };
        let cost: Cost = (
            victims.iter().filter(|&&i| !running[i].borrowed).count(),
            victims.len(),
            Reverse(
                victims
                    .iter()
                    .map(|&i| u128::from(running[i].started_at))
                    .sum(),
            ),
            fleet.rank(agent),
        );
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((
                cost,
                Plan {
                    agent,
                    victims,
                    draining: draining.len(),
                },
            ));
        }
    }
    best.map(|(_, p)| p)
}
