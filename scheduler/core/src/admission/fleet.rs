//! The fleet as one pass sees it: free room after this pass's admissions,
//! reservations, and an index that finds the agent [`placement::choose`]
//! would pick without scoring every agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Resources;
use crate::placement::{self, AgentSlot, NoFit, Placement, Request, Strategy};

/// Position of an agent in the index. Bin-pack: (has GPUs, free GPUs, free
/// CPU, id rank). Spread: (has GPUs, 0, u64::MAX - free CPU, id rank).
///
/// Among agents where a request fits now, this orders them exactly as
/// `choose`'s score does: every candidate of a GPU request has GPUs (so
/// "wastes a GPU machine" is false for all of them, as `choose` has it), the
/// request's own CPU and GPUs are subtracted from every candidate alike, and
/// the id rank breaks ties as `choose` does (id, then slice index).
type Key = (bool, u64, u64, u32);

/// What decides which agents a request could ever use, apart from sizes.
type ClassKey<'a> = (&'static str, &'a str, u64, &'a BTreeMap<String, String>);

/// Classes compatible with fewer than 1 in this many agents are placed by a
/// plain scan of their agents: cheaper than skipping through the index.
const SMALL_CLASS: usize = 8;

pub(super) type ClassId = usize;

/// Requests sharing executor, node selector and GPU model/memory floor.
struct Class {
    /// Per agent: offers the executor and carries every label.
    ok: Vec<bool>,
    /// Agents with `ok`, ascending.
    compat: Vec<u32>,
    /// No GPU model or memory floor: every GPU matches.
    any_gpu: bool,
    /// Per GPU kind (name, memory): whether it matches.
    kind_ok: Vec<bool>,
    /// Per agent: how many of its GPUs match.
    matching: Vec<u32>,
    small: bool,
}

/// Why a request found no agent.
pub(super) enum Blocked {
    /// It fits `agent` now, but that is reserved for the head of `queue`.
    Held { agent: usize, queue: usize },
    /// Placement's own answer (Busy or NoAgents).
    Room(NoFit),
}

pub(super) struct Fleet<'a> {
    pub agents: &'a [AgentSlot],
    strategy: Strategy,
    /// Agent index -> position in (id, index) order, and back.
    rank: Vec<u32>,
    by_rank: Vec<u32>,
    free_cpu: Vec<u64>,
    free_mem: Vec<u64>,
    free_gpus: Vec<u32>,
    /// Agent i's GPUs are `held[gpu_at[i]..gpu_at[i + 1]]`.
    gpu_at: Vec<usize>,
    held: Vec<bool>,
    /// Per GPU: index into `kinds`.
    kind: Vec<u32>,
    /// One (agent, position) per distinct (name, memory) of GPU.
    kinds: Vec<(usize, usize)>,
    /// Per agent: the queue whose head reserved it.
    reserved: Vec<Option<usize>>,
    reserved_list: Vec<usize>,
    index: BTreeSet<Key>,
    classes: Vec<Class>,
    class_ids: HashMap<ClassKey<'a>, ClassId>,
    /// Per executor and per node selector: which agents match. Classes
    /// differing only in GPU model share these.
    by_executor: HashMap<&'static str, Vec<bool>>,
    by_selector: HashMap<&'a BTreeMap<String, String>, Vec<bool>>,
    /// Classes of requests with no selector and no GPU model, keyed by the
    /// executor's address and length and the GPU memory floor: integer
    /// compares only. (Equal address and length mean equal text; equal text
    /// at another address just misses here and is found in `class_ids`.)
    plain: Vec<(usize, usize, u64, ClassId)>,
    pub total: Resources,
}

impl<'a> Fleet<'a> {
    pub fn new(agents: &'a [AgentSlot], strategy: Strategy) -> Self {
        let n = agents.len();
        let mut by_rank: Vec<u32> = (0..n as u32).collect();
        by_rank.sort_by(|&a, &b| {
            agents[a as usize]
                .id
                .cmp(&agents[b as usize].id)
                .then(a.cmp(&b))
        });
        let mut rank = vec![0u32; n];
        for (r, &a) in by_rank.iter().enumerate() {
            rank[a as usize] = r as u32;
        }
        let mut gpu_at = Vec::with_capacity(n + 1);
        let mut held = Vec::new();
        let mut kind = Vec::new();
        let mut kinds = Vec::new();
        let mut kind_ids: BTreeMap<(&str, u64), u32> = BTreeMap::new();
        let mut last: Option<(&str, u64, u32)> = None;
        let mut total = Resources::default();
        for (i, a) in agents.iter().enumerate() {
            gpu_at.push(held.len());
            for (p, g) in a.gpus.iter().enumerate() {
                held.push(g.held);
                // Machines usually carry one model: skip the map lookup then.
                let k = match last {
                    Some((name, mem, k)) if name == g.name && mem == g.memory_bytes => k,
                    _ => *kind_ids
                        .entry((g.name.as_str(), g.memory_bytes))
                        .or_insert_with(|| {
                            kinds.push((i, p));
                            (kinds.len() - 1) as u32
                        }),
                };
                last = Some((g.name.as_str(), g.memory_bytes, k));
                kind.push(k);
            }
            total += Resources {
                cpu_millis: a.cpu_millis,
                memory_bytes: a.memory_bytes,
                gpus: a.gpus.len() as u64,
            };
        }
        gpu_at.push(held.len());
        let mut fleet = Self {
            agents,
            strategy,
            rank,
            by_rank,
            free_cpu: agents.iter().map(AgentSlot::free_cpu).collect(),
            free_mem: agents.iter().map(AgentSlot::free_memory).collect(),
            free_gpus: agents
                .iter()
                .map(|a| a.gpus.iter().filter(|g| !g.held).count() as u32)
                .collect(),
            gpu_at,
            held,
            kind,
            kinds,
            reserved: vec![None; n],
            reserved_list: Vec::new(),
            index: BTreeSet::new(),
            classes: Vec::new(),
            class_ids: HashMap::new(),
            by_executor: HashMap::new(),
            by_selector: HashMap::new(),
            plain: Vec::new(),
            total,
        };
        fleet.index = (0..n).map(|a| fleet.key(a)).collect();
        fleet
    }

    fn key(&self, a: usize) -> Key {
        let has_gpus = !self.agents[a].gpus.is_empty();
        match self.strategy {
            Strategy::BinPack => (
                has_gpus,
                u64::from(self.free_gpus[a]),
                self.free_cpu[a],
                self.rank[a],
            ),
            Strategy::Spread => (has_gpus, 0, u64::MAX - self.free_cpu[a], self.rank[a]),
        }
    }

    /// The class of `req`, built on first use.
    pub fn class_of(&mut self, req: &'a Request) -> ClassId {
        let plain = req.gpu_model.is_empty() && req.node_selector.is_empty();
        let short = (
            req.executor.as_ptr() as usize,
            req.executor.len(),
            req.gpu_memory_bytes,
        );
        if plain {
            if let Some(&(_, _, _, id)) =
                self.plain.iter().find(|&&(p, l, m, _)| (p, l, m) == short)
            {
                return id;
            }
        }
        let id = self.class_by_key(req);
        if plain {
            self.plain.push((short.0, short.1, short.2, id));
        }
        id
    }

    fn class_by_key(&mut self, req: &'a Request) -> ClassId {
        let key: ClassKey<'a> = (
            req.executor,
            req.gpu_model.as_str(),
            req.gpu_memory_bytes,
            &req.node_selector,
        );
        if let Some(&id) = self.class_ids.get(&key) {
            return id;
        }
        let agents = self.agents;
        let by_executor = self.by_executor.entry(req.executor).or_insert_with(|| {
            agents
                .iter()
                .map(|a| a.executors.iter().any(|e| e == req.executor))
                .collect()
        });
        let mut ok = by_executor.clone();
        if !req.node_selector.is_empty() {
            let by_selector = self
                .by_selector
                .entry(&req.node_selector)
                .or_insert_with(|| {
                    agents
                        .iter()
                        .map(|a| {
                            req.node_selector
                                .iter()
                                .all(|(k, v)| a.labels.get(k) == Some(v))
                        })
                        .collect()
                });
            for (ok, &labels) in ok.iter_mut().zip(by_selector.iter()) {
                *ok &= labels;
            }
        }
        let any_gpu = req.gpu_model.is_empty() && req.gpu_memory_bytes == 0;
        let kind_ok: Vec<bool> = self
            .kinds
            .iter()
            .map(|&(a, p)| req.accepts_gpu(&self.agents[a].gpus[p]))
            .collect();
        let compat: Vec<u32> = (0..ok.len() as u32).filter(|&a| ok[a as usize]).collect();
        let matching = (0..ok.len())
            .map(|a| {
                if any_gpu {
                    self.agents[a].gpus.len() as u32
                } else {
                    (self.gpu_at[a]..self.gpu_at[a + 1])
                        .filter(|&f| kind_ok[self.kind[f] as usize])
                        .count() as u32
                }
            })
            .collect();
        let small = compat.len() * SMALL_CLASS < ok.len();
        self.classes.push(Class {
            ok,
            compat,
            any_gpu,
            kind_ok,
            matching,
            small,
        });
        let id = self.classes.len() - 1;
        self.class_ids.insert(key, id);
        id
    }

    /// Agents of the class, ascending.
    pub fn compat(&self, class: ClassId) -> &[u32] {
        &self.classes[class].compat
    }

    /// Whether agent `a` could ever run `req` (placement's `never_fits` is None).
    pub fn could_fit(&self, class: ClassId, a: usize, req: &Request) -> bool {
        let c = &self.classes[class];
        let agent = &self.agents[a];
        c.ok[a]
            && agent.cpu_millis >= req.cpu_millis
            && agent.memory_bytes >= req.memory_bytes
            && c.matching[a] >= req.gpus
    }

    /// Placement's "unschedulable" answer if no agent could ever run `req`.
    /// An empty fleet is not unschedulable: it waits for agents.
    pub fn never(&self, class: ClassId, req: &Request) -> Option<NoFit> {
        if self.agents.is_empty()
            || self.classes[class]
                .compat
                .iter()
                .any(|&a| self.could_fit(class, a as usize, req))
        {
            return None;
        }
        let first: Vec<(&str, String)> = self
            .agents
            .iter()
            .take(placement::EXAMPLES)
            .map(|a| (a.id.as_str(), a.never_fits(req).unwrap_or_default()))
            .collect();
        Some(placement::unschedulable(req, &first, self.agents.len()))
    }

    pub fn gpu_matches(&self, class: ClassId, flat: usize) -> bool {
        let c = &self.classes[class];
        c.any_gpu || c.kind_ok[self.kind[flat] as usize]
    }

    fn free_matching(&self, class: ClassId, a: usize) -> u32 {
        if self.classes[class].any_gpu {
            return self.free_gpus[a];
        }
        (self.gpu_at[a]..self.gpu_at[a + 1])
            .filter(|&f| !self.held[f] && self.gpu_matches(class, f))
            .count() as u32
    }

    fn fits_now(&self, class: ClassId, a: usize, req: &Request) -> bool {
        self.classes[class].ok[a]
            && self.free_cpu[a] >= req.cpu_millis
            && self.free_mem[a] >= req.memory_bytes
            && (req.gpus == 0
                || (self.free_gpus[a] >= req.gpus && self.free_matching(class, a) >= req.gpus))
    }

    /// Free CPU and memory on `a` after this pass's admissions.
    pub fn room(&self, a: usize) -> (u64, u64) {
        (self.free_cpu[a], self.free_mem[a])
    }

    /// Held flags of `a`'s GPUs, in the agent's order.
    pub fn held(&self, a: usize) -> &[bool] {
        &self.held[self.gpu_at[a]..self.gpu_at[a + 1]]
    }

    /// Position of `a`'s GPUs in the flat arrays.
    pub fn gpu_base(&self, a: usize) -> usize {
        self.gpu_at[a]
    }

    pub fn free_gpus(&self, a: usize) -> u32 {
        self.free_gpus[a]
    }

    pub fn rank(&self, a: usize) -> u32 {
        self.rank[a]
    }

    pub fn is_reserved(&self, a: usize) -> bool {
        self.reserved[a].is_some()
    }

    /// The agent `choose` would pick for `req` among agents not reserved.
    pub fn find(&self, class: ClassId, req: &Request) -> Option<usize> {
        if self.classes[class].small {
            return self.scan(class, req);
        }
        match self.strategy {
            Strategy::BinPack => self.find_packed(class, req),
            Strategy::Spread => self.find_spread(class, req),
        }
    }

    fn usable(&self, class: ClassId, a: usize, req: &Request) -> bool {
        self.reserved[a].is_none() && self.fits_now(class, a, req)
    }

    /// `choose`'s loop and score over the class's agents.
    fn scan(&self, class: ClassId, req: &Request) -> Option<usize> {
        let g = u64::from(req.gpus);
        let mut best: Option<((bool, i64, i64, u32), usize)> = None;
        for &a in &self.classes[class].compat {
            let a = a as usize;
            if !self.usable(class, a, req) {
                continue;
            }
            let wastes = req.gpus == 0 && !self.agents[a].gpus.is_empty();
            let gpus_after = (u64::from(self.free_gpus[a]) - g) as i64;
            let cpu_after = (self.free_cpu[a] - req.cpu_millis) as i64;
            let score = match self.strategy {
                Strategy::BinPack => (wastes, gpus_after, cpu_after, self.rank[a]),
                Strategy::Spread => (wastes, 0, -cpu_after, self.rank[a]),
            };
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, a));
            }
        }
        best.map(|(_, a)| a)
    }

    /// Bin-pack: walk the index from the fullest agent with enough free GPUs
    /// and CPU; within each (has GPUs, free GPUs) group jump straight to the
    /// first agent with enough free CPU.
    fn find_packed(&self, class: ClassId, req: &Request) -> Option<usize> {
        let cpu = req.cpu_millis;
        let mut start: Key = (req.gpus > 0, u64::from(req.gpus), cpu, 0);
        'groups: loop {
            for &(has_gpus, free_gpus, free_cpu, r) in self.index.range(start..) {
                if free_cpu < cpu {
                    start = (has_gpus, free_gpus, cpu, 0);
                    continue 'groups;
                }
                let a = self.by_rank[r as usize] as usize;
                if self.usable(class, a, req) {
                    return Some(a);
                }
            }
            return None;
        }
    }

    /// Spread: walk each (has GPUs) group from the most free CPU down until
    /// CPU runs short.
    fn find_spread(&self, class: ClassId, req: &Request) -> Option<usize> {
        let limit = u64::MAX - req.cpu_millis;
        let mut start: Key = (req.gpus > 0, 0, 0, 0);
        'groups: loop {
            for &(has_gpus, _, inv_cpu, r) in self.index.range(start..) {
                if inv_cpu > limit {
                    if has_gpus {
                        return None;
                    }
                    start = (true, 0, 0, 0);
                    continue 'groups;
                }
                let a = self.by_rank[r as usize] as usize;
                if self.usable(class, a, req) {
                    return Some(a);
                }
            }
            return None;
        }
    }

    /// Gives `req` its room and GPUs (lowest position first) on `a`.
    pub fn take(&mut self, class: ClassId, a: usize, req: &Request) -> Placement {
        let old = self.key(a);
        self.index.remove(&old);
        let agent = &self.agents[a];
        let mut gpus = Vec::with_capacity(req.gpus as usize);
        for p in 0..agent.gpus.len() {
            if gpus.len() == req.gpus as usize {
                break;
            }
            let f = self.gpu_at[a] + p;
            if !self.held[f] && self.gpu_matches(class, f) {
                self.held[f] = true;
                gpus.push((agent.gpus[p].index, agent.gpus[p].uuid.clone()));
            }
        }
        self.free_gpus[a] -= gpus.len() as u32;
        self.free_cpu[a] = self.free_cpu[a].saturating_sub(req.cpu_millis);
        self.free_mem[a] = self.free_mem[a].saturating_sub(req.memory_bytes);
        let new = self.key(a);
        self.index.insert(new);
        Placement { agent: a, gpus }
    }

    /// Why `find` found nothing.
    pub fn blocked(&self, class: ClassId, req: &Request) -> Blocked {
        if self.agents.is_empty() {
            return Blocked::Room(NoFit::NoAgents);
        }
        for &a in &self.reserved_list {
            if self.fits_now(class, a, req) {
                if let Some(queue) = self.reserved[a] {
                    return Blocked::Held { agent: a, queue };
                }
            }
        }
        let mut first = Vec::with_capacity(placement::EXAMPLES);
        let mut busy = 0;
        for &a in &self.classes[class].compat {
            let a = a as usize;
            if !self.could_fit(class, a, req) {
                continue;
            }
            busy += 1;
            if first.len() < placement::EXAMPLES {
                let why = placement::busy_reason(
                    self.free_cpu[a],
                    self.free_mem[a],
                    self.free_matching(class, a) as usize,
                    req,
                );
                first.push((self.agents[a].id.as_str(), why.unwrap_or_default()));
            }
        }
        Blocked::Room(placement::waiting_for_room(req, &first, busy))
    }

    /// Reserves for the head of `queue` the unreserved agent where `req`
    /// could fit soonest (see the module docs); None if there is none.
    pub fn reserve_for(&mut self, class: ClassId, req: &Request, queue: usize) -> Option<usize> {
        let short_ppm = |want: u64, free: u64, total: u64| -> u64 {
            let missing = want.saturating_sub(free);
            if missing == 0 || total == 0 {
                return 0;
            }
            (u128::from(missing) * 1_000_000 / u128::from(total)) as u64
        };
        let mut best: Option<((u32, u64, u32), usize)> = None;
        for &a in &self.classes[class].compat {
            let a = a as usize;
            if self.reserved[a].is_some() || !self.could_fit(class, a, req) {
                continue;
            }
            let agent = &self.agents[a];
            let gpus_missing = req.gpus.saturating_sub(self.free_matching(class, a));
            let frac = short_ppm(req.cpu_millis, self.free_cpu[a], agent.cpu_millis).max(
                short_ppm(req.memory_bytes, self.free_mem[a], agent.memory_bytes),
            );
            let score = (gpus_missing, frac, self.rank[a]);
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, a));
            }
        }
        let (_, a) = best?;
        self.reserve(a, queue);
        Some(a)
    }

    pub fn reserve(&mut self, a: usize, queue: usize) {
        if self.reserved[a].is_none() {
            self.reserved[a] = Some(queue);
            self.reserved_list.push(a);
        }
    }
}
