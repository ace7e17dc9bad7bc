//! One admission pass: the within-quota round, then the borrowing round.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use super::fleet::{Blocked, ClassId, Fleet};
use super::preempt::{self, ByAgent, Plan, Rule};
use super::{Admit, Decision, Evict, Pending, Preemption, Queue, Resources, Running, Wait};
use crate::placement::{bytes, AgentSlot, Request, Strategy};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Round {
    /// Every queue held to its quota; heads may reserve and evict.
    Quota,
    /// Borrowers' quota-blocked tasks on what is left; heads may reserve.
    Borrow,
}

enum Step {
    Admitted,
    Waiting,
    /// The queue reached max_running.
    Full(u32),
}

#[derive(Default)]
struct QueueState {
    /// Pending indices in the queue's order.
    tasks: Vec<usize>,
    /// Tasks that waited for quota only, for the borrowing round (in order).
    borrowers: Vec<usize>,
    cursor: usize,
    /// Held by running tasks plus admitted this pass.
    used: Resources,
    /// Quota kept for quota-blocked tasks this pass.
    held: Resources,
    /// Running plus admitted this pass.
    count: u32,
    /// Held by running tasks not being evicted, less victims chosen this
    /// pass: what decides whether its borrowed work is reclaimable.
    net: Resources,
    borrowed_running: u32,
    /// The head of this round has been handled (reservation/preemption).
    head_done: bool,
    /// The last quota text and what it says: consecutive blocked tasks
    /// usually share it, and cloning beats formatting.
    quota_text: Option<(QuotaBlock, Arc<str>)>,
}

/// Why a task may not start within its queue's quota.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct QuotaBlock {
    /// 0 = gpus, 1 = cpu, 2 = memory.
    dim: usize,
    why: QuotaWhy,
    used: u64,
    limit: u64,
    want: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum QuotaWhy {
    /// Needs more than the whole quota: holds nothing.
    TooBig,
    /// Fits, but quota is kept for an earlier task of the queue.
    Kept,
    /// The queue is at its quota.
    Full,
}

/// What the pass learnt about one request shape.
struct Shape {
    never: Option<Arc<str>>,
    /// Placement failed once this pass; room only shrinks, so it fails again.
    failed: Option<Wait>,
}

/// A task's place inside its queue: run priority desc, submit time, seq,
/// then its index.
type OrderKey = (Reverse<i64>, u64, u64, usize);

/// What a pending task's request means for this pass.
#[derive(Copy, Clone)]
struct Facts {
    class: ClassId,
    /// Index into `shapes`.
    shape: usize,
    res: Resources,
}

/// The shape of `req` (class and sizes), learnt on first sight.
fn shape_of(
    fleet: &Fleet,
    ids: &mut BTreeMap<(ClassId, u64, u64, u32), usize>,
    shapes: &mut Vec<Shape>,
    class: ClassId,
    req: &Request,
) -> usize {
    *ids.entry((class, req.cpu_millis, req.memory_bytes, req.gpus))
        .or_insert_with(|| {
            shapes.push(Shape {
                never: fleet.never(class, req).map(|n| n.to_string().into()),
                failed: None,
            });
            shapes.len() - 1
        })
}

pub(super) struct Pass<'a, K> {
    queues: &'a [Queue],
    pending: &'a [Pending<K>],
    running: &'a [Running<K>],
    fleet: Fleet<'a>,
    /// Queue indices in serving order: priority desc, name, index.
    order: Vec<usize>,
    qs: Vec<QueueState>,
    /// Pending tasks naming no known queue.
    unknown: Vec<usize>,
    /// Per pending task.
    facts: Vec<Facts>,
    shapes: Vec<Shape>,
    /// Per pending task: why it waits; None once admitted (or not yet seen).
    waits: Vec<Option<Wait>>,
    admit: Vec<Admit<K>>,
    evict: Vec<Evict<K>>,
    by_agent: Option<ByAgent>,
    /// Running tasks chosen as victims this pass.
    chosen: Vec<bool>,
    /// Per queue: `net` is over its quota, so its borrowed work is reclaimable.
    over_quota: Vec<bool>,
    any_draining: bool,
}

impl<'a, K: Clone> Pass<'a, K> {
    pub fn new(
        queues: &'a [Queue],
        pending: &'a [Pending<K>],
        running: &'a [Running<K>],
        agents: &'a [AgentSlot],
        strategy: Strategy,
    ) -> Self {
        let mut order: Vec<usize> = (0..queues.len()).collect();
        order.sort_by(|&a, &b| {
            let (qa, qb) = (&queues[a], &queues[b]);
            qb.priority
                .cmp(&qa.priority)
                .then_with(|| qa.name.cmp(&qb.name))
                .then(a.cmp(&b))
        });
        let mut qs: Vec<QueueState> = queues.iter().map(|_| QueueState::default()).collect();
        let mut unknown = Vec::new();
        // Sort keys and request shapes are read here, in pending order: the
        // queue order visits tasks at random, and `Pending` is large, so
        // reading them there would miss the cache once per task.
        let mut keys: Vec<Vec<OrderKey>> = vec![Vec::new(); queues.len()];
        let mut fleet = Fleet::new(agents, strategy);
        let mut shape_ids = BTreeMap::new();
        let mut shapes = Vec::new();
        let mut facts = Vec::with_capacity(pending.len());
        for (i, p) in pending.iter().enumerate() {
            match keys.get_mut(p.queue) {
                Some(k) => k.push((Reverse(p.run_priority), p.submitted_at, p.seq, i)),
                None => unknown.push(i),
            }
            let class = fleet.class_of(&p.req);
            let shape = shape_of(&fleet, &mut shape_ids, &mut shapes, class, &p.req);
            facts.push(Facts {
                class,
                shape,
                res: Resources::of(&p.req),
            });
        }
        let mut waits: Vec<Option<Wait>> = vec![None; pending.len()];
        for (q, (s, mut k)) in qs.iter_mut().zip(keys).enumerate() {
            k.sort_unstable();
            s.tasks = k.into_iter().map(|(.., i)| i).collect();
            if queues[q].paused {
                for &i in &s.tasks {
                    waits[i] = Some(Wait::Paused);
                }
            }
        }
        for &i in &unknown {
            waits[i] = Some(Wait::Unschedulable(
                format!("unknown queue #{}", pending[i].queue).into(),
            ));
        }
        let mut any_draining = false;
        for r in running {
            any_draining |= r.preempting;
            let Some(s) = qs.get_mut(r.queue) else {
                continue;
            };
            let res = Resources::of(&r.req);
            s.used += res;
            s.count = s.count.saturating_add(1);
            if !r.preempting {
                s.net += res;
                s.borrowed_running += u32::from(r.borrowed);
            }
        }
        let over_quota = qs
            .iter()
            .zip(queues)
            .map(|(s, q)| !s.net.within(&q.quota))
            .collect();
        Self {
            queues,
            pending,
            running,
            over_quota,
            fleet,
            order,
            qs,
            unknown,
            facts,
            shapes,
            waits,
            admit: Vec::new(),
            evict: Vec::new(),
            by_agent: None,
            chosen: vec![false; running.len()],
            any_draining,
        }
    }

    pub fn run(mut self) -> Decision<K> {
        // Tiers: runs of equal priority in serving order.
        let mut tiers = Vec::new();
        let mut start = 0;
        for k in 1..=self.order.len() {
            if k == self.order.len()
                || self.queues[self.order[k]].priority != self.queues[self.order[start]].priority
            {
                tiers.push(start..k);
                start = k;
            }
        }
        for round in [Round::Quota, Round::Borrow] {
            for tier in &tiers {
                self.serve(tier.clone(), round);
            }
        }
        self.finish()
    }

    fn list(&self, q: usize, round: Round) -> &[usize] {
        match round {
            Round::Quota => &self.qs[q].tasks,
            Round::Borrow => &self.qs[q].borrowers,
        }
    }

    /// Weighted dominant share as sortable bits: for non-negative finite
    /// floats the IEEE bit patterns order like the numbers.
    fn share(&self, q: usize) -> u64 {
        let weight = f64::from(self.queues[q].weight.max(1));
        (self.qs[q].used.dominant_share(self.fleet.total) / weight).to_bits()
    }

    /// Serves one tier of equal-priority queues, lowest weighted share first.
    fn serve(&mut self, tier: std::ops::Range<usize>, round: Round) {
        let mut heap = BinaryHeap::new();
        for pos in tier {
            let q = self.order[pos];
            self.qs[q].cursor = 0;
            self.qs[q].head_done = false;
            if !self.queues[q].paused && !self.list(q, round).is_empty() {
                heap.push(Reverse((self.share(q), pos)));
            }
        }
        while let Some(Reverse((_, pos))) = heap.pop() {
            let q = self.order[pos];
            let cursor = self.qs[q].cursor;
            let i = self.list(q, round)[cursor];
            self.qs[q].cursor += 1;
            if let Step::Full(max) = self.consider(q, i, round) {
                let rest = self.list(q, round)[cursor..].to_vec();
                for i in rest {
                    self.waits[i] = Some(Wait::MaxRunning(max));
                }
                continue;
            }
            if self.qs[q].cursor < self.list(q, round).len() {
                heap.push(Reverse((self.share(q), pos)));
            }
        }
    }

    fn consider(&mut self, q: usize, i: usize, round: Round) -> Step {
        let queue = &self.queues[q];
        let p = &self.pending[i];
        if let Some(max) = queue.max_running {
            if self.qs[q].count >= max {
                return Step::Full(max);
            }
        }
        let Facts { class, shape, res } = self.facts[i];
        if let Some(why) = &self.shapes[shape].never {
            self.waits[i] = Some(Wait::Unschedulable(why.clone()));
            return Step::Waiting;
        }
        if round == Round::Quota {
            if let Some((why, hold)) = self.quota_block(q, res) {
                let s = &mut self.qs[q];
                if hold {
                    s.held += res;
                }
                if queue.borrow {
                    s.borrowers.push(i);
                }
                self.waits[i] = Some(Wait::Quota(why));
                return Step::Waiting;
            }
        }
        let wait = match &self.shapes[shape].failed {
            Some(w) => w.clone(),
            None => match self.fleet.find(class, &p.req) {
                Some(a) => {
                    let placement = self.fleet.take(class, a, &p.req);
                    let s = &mut self.qs[q];
                    let borrowed = round == Round::Borrow && !(s.used + res).within(&queue.quota);
                    s.used += res;
                    s.count = s.count.saturating_add(1);
                    self.waits[i] = None;
                    self.admit.push(Admit {
                        key: p.key.clone(),
                        placement,
                        borrowed,
                    });
                    return Step::Admitted;
                }
                None => {
                    let w = self.blocked(class, &p.req);
                    self.shapes[shape].failed = Some(w.clone());
                    w
                }
            },
        };
        let mut wait = wait;
        if !self.qs[q].head_done {
            self.qs[q].head_done = true;
            if let Some(w) = self.head(q, i, class, round) {
                wait = w;
            }
        }
        self.waits[i] = Some(match (round, self.waits[i].take()) {
            (Round::Borrow, Some(Wait::Quota(over))) => {
                Wait::Quota(format!("{over}, and no idle capacity to borrow: {wait}").into())
            }
            _ => wait,
        });
        Step::Waiting
    }

    fn blocked(&self, class: ClassId, req: &Request) -> Wait {
        match self.fleet.blocked(class, req) {
            Blocked::Held { agent, queue } => Wait::NoCapacity(
                format!(
                    "held for the head of queue `{}` (agent `{}` is reserved for it)",
                    self.queues[queue].name, self.fleet.agents[agent].id
                )
                .into(),
            ),
            Blocked::Room(no_fit) => Wait::NoCapacity(no_fit.to_string().into()),
        }
    }

    /// Why `res` may not start within queue `q`'s quota now, and whether the
    /// task keeps its claim on quota (not if it needs more than the whole
    /// quota: it could never use it).
    fn quota_block(&mut self, q: usize, res: Resources) -> Option<(Arc<str>, bool)> {
        let quota = &self.queues[q].quota;
        let s = &self.qs[q];
        let dims = [
            (quota.gpus, s.used.gpus, s.held.gpus, res.gpus),
            (
                quota.cpu_millis,
                s.used.cpu_millis,
                s.held.cpu_millis,
                res.cpu_millis,
            ),
            (
                quota.memory_bytes,
                s.used.memory_bytes,
                s.held.memory_bytes,
                res.memory_bytes,
            ),
        ];
        let too_big = dims
            .iter()
            .enumerate()
            .find_map(|(dim, &(limit, used, _, want))| {
                let limit = limit.filter(|&l| want > l)?;
                Some(QuotaBlock {
                    dim,
                    why: QuotaWhy::TooBig,
                    used,
                    limit,
                    want,
                })
            });
        let block = too_big.or_else(|| {
            dims.iter()
                .enumerate()
                .find_map(|(dim, &(limit, used, held, want))| {
                    let limit = limit?;
                    if want == 0 || used.saturating_add(held).saturating_add(want) <= limit {
                        return None;
                    }
                    let why = if used.saturating_add(want) <= limit {
                        QuotaWhy::Kept
                    } else {
                        QuotaWhy::Full
                    };
                    Some(QuotaBlock {
                        dim,
                        why,
                        used,
                        limit,
                        want,
                    })
                })
        })?;
        let hold = block.why != QuotaWhy::TooBig;
        if let Some((last, text)) = &self.qs[q].quota_text {
            if *last == block {
                return Some((text.clone(), hold));
            }
        }
        let text: Arc<str> = self.quota_text(q, block).into();
        self.qs[q].quota_text = Some((block, Arc::clone(&text)));
        Some((text, hold))
    }

    fn quota_text(&self, q: usize, b: QuotaBlock) -> String {
        let name = &self.queues[q].name;
        let (dim, show): (&str, fn(u64) -> String) = match b.dim {
            0 => ("gpus", |v| v.to_string()),
            1 => ("cpu", |v| format!("{v}m")),
            _ => ("memory", bytes),
        };
        match b.why {
            QuotaWhy::TooBig => format!(
                "queue `{name}` has a {dim} quota of {}, less than the {} this task needs",
                show(b.limit),
                show(b.want)
            ),
            QuotaWhy::Kept => format!(
                "queue `{name}` keeps its remaining {dim} quota for an earlier task ({} of {} in use)",
                show(b.used),
                show(b.limit)
            ),
            QuotaWhy::Full => format!(
                "queue `{name}` is at its {dim} quota ({} of {} in use, this task needs {})",
                show(b.used),
                show(b.limit),
                show(b.want)
            ),
        }
    }

    /// Whether a head of queue `q` might evict anything.
    fn may_evict(&self, q: usize) -> bool {
        self.queues[q].preemption == Preemption::LowerPriority
            || self.any_draining
            || self
                .qs
                .iter()
                .enumerate()
                .any(|(o, s)| o != q && s.borrowed_running > 0 && self.over_quota[o])
    }

    /// The head of queue `q` (pending `i`) could not be placed for lack of
    /// room: evict for it or reserve for it. Returns its wait if evicting.
    fn head(&mut self, q: usize, i: usize, class: ClassId, round: Round) -> Option<Wait> {
        let p = &self.pending[i];
        if round == Round::Quota && self.may_evict(q) {
            if self.by_agent.is_none() {
                self.by_agent = Some(ByAgent::new(self.running, self.queues, self.fleet.agents));
            }
            let rule = self.rule(q, p.run_priority);
            let plan = self.by_agent.as_ref().and_then(|by_agent| {
                preempt::plan(&self.fleet, class, &p.req, self.running, by_agent, &rule)
            });
            if let Some(plan) = plan {
                return Some(self.preempt(q, i, plan));
            }
        }
        self.fleet.reserve_for(class, &p.req, q);
        None
    }

    /// What a head of queue `q` with run priority `rp` may evict: borrowed
    /// work of other queues over their quota; with LowerPriority also lower
    /// (queue priority, run priority).
    fn rule(&self, q: usize, rp: i64) -> Rule<'_> {
        let queue = &self.queues[q];
        Rule {
            queue: q,
            priority: (queue.priority, rp),
            lower_priority: queue.preemption == Preemption::LowerPriority,
            over_quota: &self.over_quota,
            chosen: &self.chosen,
        }
    }

    fn preempt(&mut self, q: usize, i: usize, plan: Plan) -> Wait {
        let p = &self.pending[i];
        let queue = &self.queues[q];
        let reasons: Vec<String> = plan
            .victims
            .iter()
            .map(|&ri| {
                let r = &self.running[ri];
                let victim_priority = self.queues.get(r.queue).map_or(i64::MIN, |v| v.priority);
                if r.borrowed && r.queue != q && self.over_quota.get(r.queue) == Some(&true) {
                    format!("borrowed capacity reclaimed by queue `{}`", queue.name)
                } else if victim_priority < queue.priority {
                    format!(
                        "preempted for a task of higher-priority queue `{}` (priority {} over {victim_priority})",
                        queue.name, queue.priority
                    )
                } else {
                    format!(
                        "preempted for a priority-{} task of queue `{}`",
                        p.run_priority, queue.name
                    )
                }
            })
            .collect();
        for (&ri, reason) in plan.victims.iter().zip(reasons) {
            let r = &self.running[ri];
            self.chosen[ri] = true;
            if let Some(s) = self.qs.get_mut(r.queue) {
                s.net -= Resources::of(&r.req);
                self.over_quota[r.queue] = !s.net.within(&self.queues[r.queue].quota);
            }
            self.evict.push(Evict {
                victim: r.key.clone(),
                for_task: p.key.clone(),
                reason,
            });
        }
        self.fleet.reserve(plan.agent, q);
        let agent = &self.fleet.agents[plan.agent].id;
        match (plan.victims.len(), plan.draining) {
            (0, d) => Wait::Preempting(format!(
                "waiting for {d} preempted task(s) on agent `{agent}` to stop"
            ).into()),
            (n, 0) => Wait::Preempting(format!(
                "preempting {n} task(s) on agent `{agent}` to make room"
            ).into()),
            (n, d) => Wait::Preempting(format!(
                "preempting {n} task(s) on agent `{agent}` to make room, and waiting for {d} already stopping"
            ).into()),
        }
    }

    fn finish(mut self) -> Decision<K> {
        let mut waiting = Vec::with_capacity(self.pending.len() - self.admit.len());
        let groups = self.order.iter().map(|&q| &self.qs[q].tasks);
        for &i in groups.flatten().chain(&self.unknown) {
            if let Some(w) = self.waits[i].take() {
                waiting.push((self.pending[i].key.clone(), w));
            }
        }
        Decision {
            admit: self.admit,
            evict: self.evict,
            waiting,
        }
    }
}
