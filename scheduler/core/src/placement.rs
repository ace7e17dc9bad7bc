//! Placement: which live agent, and which of its GPUs, take a ready task.
//!
//! A task fits an agent when the agent offers the executor it needs, carries
//! every label of its `node_selector`, has enough GPUs of the wanted model and
//! memory, and has free CPU, memory and GPUs now. Among fitting agents:
//!
//! - **bin-pack** (default): the agent left with the fewest free GPUs, then
//!   the least free CPU, so whole GPU machines stay free for big jobs;
//! - **spread**: the agent left with the most free CPU.
//!
//! Either way a task that needs no GPU goes to a machine without GPUs when one
//! fits. Ties go to the lexically smallest id, so decisions are deterministic.
//! GPUs are chosen lowest index first and never given to two tasks.

use std::collections::BTreeMap;

/// CPU a task asks for when its spec says nothing: a quarter core, so an
/// agent runs several small tasks per core without oversubscribing heavily.
pub const DEFAULT_CPU_MILLIS: u64 = 250;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    BinPack,
    Spread,
}

/// One GPU as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSlot {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
    pub held: bool,
}

/// An agent as placement sees it: capacity from its heartbeat, allocation
/// from the attempts the scheduler has placed on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentSlot {
    pub id: String,
    pub executors: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub used_cpu_millis: u64,
    pub used_memory_bytes: u64,
    pub gpus: Vec<GpuSlot>,
}

/// What a task needs from an agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub executor: &'static str,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// Lower-case substring of the GPU name; empty = any.
    pub gpu_model: String,
    /// Minimum memory of each GPU; 0 = any.
    pub gpu_memory_bytes: u64,
    pub node_selector: BTreeMap<String, String>,
}

impl Request {
    /// The process executor's request from the spec's CPU and memory; `image`
    /// non-empty means the docker executor.
    pub fn new(image: &str, cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            executor: if image.is_empty() {
                "process"
            } else {
                "docker"
            },
            cpu_millis: if cpu_millis == 0 {
                DEFAULT_CPU_MILLIS
            } else {
                cpu_millis
            },
            memory_bytes,
            ..Self::default()
        }
    }

    /// Adds the GPU constraints.
    pub fn with_gpus(mut self, count: u32, model: &str, memory_bytes: u64) -> Self {
        self.gpus = count;
        self.gpu_model = model.to_lowercase();
        self.gpu_memory_bytes = memory_bytes;
        self
    }

    pub fn with_selector(mut self, selector: BTreeMap<String, String>) -> Self {
        self.node_selector = selector;
        self
    }

    fn gpu_matches(&self, g: &GpuSlot) -> bool {
        (self.gpu_model.is_empty() || g.name.to_lowercase().contains(&self.gpu_model))
            && g.memory_bytes >= self.gpu_memory_bytes
    }

    /// Whether GPU `g` (held or not) has the wanted model and memory.
    pub fn accepts_gpu(&self, g: &GpuSlot) -> bool {
        self.gpu_matches(g)
    }

    /// Human summary, e.g. "executor `process`, 250m cpu, 2 GPU(s) `a100`".
    pub fn describe(&self) -> String {
        let mut s = format!("executor `{}`, {}m cpu", self.executor, self.cpu_millis);
        if self.memory_bytes > 0 {
            s.push_str(&format!(", {} memory", bytes(self.memory_bytes)));
        }
        if self.gpus > 0 {
            s.push_str(&format!(", {} GPU(s)", self.gpus));
            if !self.gpu_model.is_empty() {
                s.push_str(&format!(" matching `{}`", self.gpu_model));
            }
            if self.gpu_memory_bytes > 0 {
                s.push_str(&format!(" with >= {}", bytes(self.gpu_memory_bytes)));
            }
        }
        for (k, v) in &self.node_selector {
            s.push_str(&format!(", label {k}={v}"));
        }
        s
    }
}

/// `1.5Gi`-style rendering for messages.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

impl AgentSlot {
    pub fn free_cpu(&self) -> u64 {
        self.cpu_millis.saturating_sub(self.used_cpu_millis)
    }

    pub fn free_memory(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.used_memory_bytes)
    }

    fn free_gpus(&self) -> usize {
        self.gpus.iter().filter(|g| !g.held).count()
    }

    /// Why this agent could never run `req`, even idle; None if it could.
    pub fn never_fits(&self, req: &Request) -> Option<String> {
        if !self.executors.iter().any(|e| e == req.executor) {
            return Some(format!("no executor `{}`", req.executor));
        }
        for (k, v) in &req.node_selector {
            if self.labels.get(k) != Some(v) {
                return Some(format!("no label {k}={v}"));
            }
        }
        if self.cpu_millis < req.cpu_millis {
            return Some(format!("only {}m cpu", self.cpu_millis));
        }
        if self.memory_bytes < req.memory_bytes {
            return Some(format!("only {} memory", bytes(self.memory_bytes)));
        }
        let matching = self.gpus.iter().filter(|g| req.gpu_matches(g)).count();
        if matching < req.gpus as usize {
            return Some(format!("{matching} matching GPU(s)"));
        }
        None
    }

    /// The GPUs `req` would get here now, or why it must wait.
    fn fits_now(&self, req: &Request) -> Result<Vec<usize>, String> {
        let gpus: Vec<usize> = self
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.held && req.gpu_matches(g))
            .map(|(i, _)| i)
            .take(req.gpus as usize)
            .collect();
        match busy_reason(self.free_cpu(), self.free_memory(), gpus.len(), req) {
            Some(why) => Err(why),
            None => Ok(gpus),
        }
    }

    /// Takes `req`'s resources and the GPUs with these UUIDs.
    pub fn allocate(&mut self, req: &Request, gpus: &[(u32, String)]) {
        self.used_cpu_millis += req.cpu_millis;
        self.used_memory_bytes += req.memory_bytes;
        for g in &mut self.gpus {
            if gpus.iter().any(|(_, u)| *u == g.uuid) {
                g.held = true;
            }
        }
    }

    /// The GPUs `placed` names (NVML index, UUID), with their models.
    pub fn given_gpus(&self, placed: &[(u32, String)]) -> Vec<crate::dag::GivenGpu> {
        placed
            .iter()
            .map(|(index, uuid)| crate::dag::GivenGpu {
                index: *index,
                uuid: uuid.clone(),
                model: self
                    .gpus
                    .iter()
                    .find(|g| g.uuid == *uuid)
                    .map(|g| g.name.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Gives `req`'s resources and these GPUs back.
    pub fn release(&mut self, req: &Request, gpus: &[(u32, String)]) {
        self.used_cpu_millis = self.used_cpu_millis.saturating_sub(req.cpu_millis);
        self.used_memory_bytes = self.used_memory_bytes.saturating_sub(req.memory_bytes);
        for g in &mut self.gpus {
            if gpus.iter().any(|(_, u)| *u == g.uuid) {
                g.held = false;
            }
        }
    }
}

/// Where a task goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the agents slice.
    pub agent: usize,
    /// (NVML index, UUID) of each GPU given.
    pub gpus: Vec<(u32, String)>,
}

/// Why a task was not placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoFit {
    /// No live agent at all.
    NoAgents,
    /// No live agent could run it even when idle: unschedulable until the fleet changes.
    Never(String),
    /// Some agent could, once running work frees room.
    Busy(String),
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoFit::NoAgents => f.write_str("waiting for an agent to connect"),
            NoFit::Never(why) | NoFit::Busy(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for NoFit {}

/// Why an agent with this much free CPU, memory and matching GPUs cannot
/// take `req` now, in [`choose`]'s words; None if it can.
pub fn busy_reason(
    free_cpu: u64,
    free_memory: u64,
    free_matching_gpus: usize,
    req: &Request,
) -> Option<String> {
    if free_cpu < req.cpu_millis {
        return Some(format!("{free_cpu}m cpu free"));
    }
    if free_memory < req.memory_bytes {
        return Some(format!("{} memory free", bytes(free_memory)));
    }
    if free_matching_gpus < req.gpus as usize {
        return Some(format!("{free_matching_gpus} matching GPU(s) free"));
    }
    None
}

/// How many examples a [`NoFit`] message lists.
pub const EXAMPLES: usize = 3;

/// [`NoFit::Busy`] as [`choose`] words it, from the first (up to
/// [`EXAMPLES`]) busy agents with their reason and how many are busy in all.
pub fn waiting_for_room(req: &Request, first: &[(&str, String)], busy: usize) -> NoFit {
    NoFit::Busy(format!(
        "waiting for room: {} ({})",
        req.describe(),
        examples(first, busy)
    ))
}

/// [`NoFit::Never`] as [`choose`] words it, from the first (up to
/// [`EXAMPLES`]) agents with why they never fit and how many agents there are.
pub fn unschedulable(req: &Request, first: &[(&str, String)], never: usize) -> NoFit {
    NoFit::Never(format!(
        "unschedulable: no connected agent offers {} ({})",
        req.describe(),
        examples(first, never)
    ))
}

/// Lists up to three agents with their reason, e.g. "a1: no label zone=eu; a2: ...".
fn examples(first: &[(&str, String)], total: usize) -> String {
    let mut s: Vec<String> = first
        .iter()
        .take(EXAMPLES)
        .map(|(id, why)| format!("{id}: {why}"))
        .collect();
    if total > s.len() {
        s.push(format!("{} more", total - s.len()));
    }
    s.join("; ")
}

/// Lower is better: (wastes a GPU machine, free GPUs after, free CPU after, id).
type Score<'a> = (bool, i64, i64, &'a str);

/// Chooses the agent (and GPUs) for `req`.
pub fn choose(agents: &[AgentSlot], req: &Request, strategy: Strategy) -> Result<Placement, NoFit> {
    if agents.is_empty() {
        return Err(NoFit::NoAgents);
    }
    let mut best: Option<(Placement, Score)> = None;
    let mut busy = Vec::new();
    let mut never = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        if let Some(why) = a.never_fits(req) {
            never.push((a.id.as_str(), why));
            continue;
        }
        let picked = match a.fits_now(req) {
            Ok(p) => p,
            Err(why) => {
                busy.push((a.id.as_str(), why));
                continue;
            }
        };
        // Keep GPU machines for GPU work, then pack or spread.
        let wastes_gpus = req.gpus == 0 && !a.gpus.is_empty();
        let free_gpus_after = (a.free_gpus() - picked.len()) as i64;
        let free_cpu_after = (a.free_cpu() - req.cpu_millis) as i64;
        let score = match strategy {
            Strategy::BinPack => (wastes_gpus, free_gpus_after, free_cpu_after, a.id.as_str()),
            Strategy::Spread => (wastes_gpus, 0, -free_cpu_after, a.id.as_str()),
        };
        if best.as_ref().is_none_or(|(_, s)| score < *s) {
            let gpus = picked
                .iter()
                .map(|&g| (a.gpus[g].index, a.gpus[g].uuid.clone()))
                .collect();
            best = Some((Placement { agent: i, gpus }, score));
        }
    }
    if let Some((p, _)) = best {
        return Ok(p);
    }
    if busy.is_empty() {
        let n = never.len().min(EXAMPLES);
        Err(unschedulable(req, &never[..n], never.len()))
    } else {
        let n = busy.len().min(EXAMPLES);
        Err(waiting_for_room(req, &busy[..n], busy.len()))
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn agent(id: &str, cpu: u64, used: u64) -> AgentSlot {
        AgentSlot {
            id: id.into(),
            executors: vec!["process".into()],
            cpu_millis: cpu,
            memory_bytes: 8 << 30,
            used_cpu_millis: used,
            ..Default::default()
        }
    }

    fn gpu_agent(id: &str, n: u32, name: &str, mem_gib: u64) -> AgentSlot {
        let mut a = agent(id, 16_000, 0);
        a.executors.push("docker".into());
        a.gpus = (0..n)
            .map(|i| GpuSlot {
                index: i,
                uuid: format!("GPU-{id}-{i}"),
                name: name.into(),
                memory_bytes: mem_gib << 30,
                held: false,
            })
            .collect();
        a
    }

    fn gpus(n: u32) -> Request {
        Request::new("", 1000, 0).with_gpus(n, "", 0)
    }

    #[test]
    fn bin_packs_onto_the_fullest_agent_that_fits() -> TestResult {
        let agents = [
            agent("a", 4000, 0),
            agent("b", 4000, 3000),
            agent("c", 4000, 3900),
        ];
        let req = Request::new("", 500, 0);
        assert_eq!(choose(&agents, &req, Strategy::BinPack)?.agent, 1);
        Ok(())
    }

    #[test]
    fn spread_picks_the_emptiest_agent() -> TestResult {
        let agents = [
            agent("a", 4000, 1000),
            agent("b", 4000, 0),
            agent("c", 4000, 3000),
        ];
        let req = Request::new("", 500, 0);
        assert_eq!(choose(&agents, &req, Strategy::Spread)?.agent, 1);
        Ok(())
    }

    #[test]
    fn ties_go_to_the_smallest_id() -> TestResult {
        let agents = [agent("b", 2000, 0), agent("a", 2000, 0)];
        let p = choose(&agents, &Request::new("", 0, 0), Strategy::BinPack)?;
        assert_eq!(p.agent, 1);
        Ok(())
    }

    #[test]
    fn unspecified_cpu_takes_the_default() {
        assert_eq!(Request::new("", 0, 0).cpu_millis, DEFAULT_CPU_MILLIS);
        assert_eq!(Request::new("img", 0, 0).executor, "docker");
    }

    #[test]
    fn busy_agents_mean_wait_and_missing_executor_means_never() {
        let agents = [agent("a", 1000, 900)];
        let busy = choose(&agents, &Request::new("", 500, 0), Strategy::BinPack);
        assert_eq!(
            busy,
            Err(NoFit::Busy(
                "waiting for room: executor `process`, 500m cpu (a: 100m cpu free)".into()
            ))
        );
        let never = choose(
            &agents,
            &Request::new("python:3.12", 500, 0),
            Strategy::BinPack,
        );
        assert_eq!(
            never,
            Err(NoFit::Never(
                "unschedulable: no connected agent offers executor `docker`, 500m cpu (a: no executor `docker`)".into()
            ))
        );
        assert!(matches!(
            choose(&agents, &Request::new("", 5000, 0), Strategy::BinPack),
            Err(NoFit::Never(_))
        ));
        assert_eq!(
            choose(&[], &Request::new("", 1, 0), Strategy::BinPack),
            Err(NoFit::NoAgents)
        );
    }

    #[test]
    fn memory_must_fit_too() {
        let mut a = agent("a", 4000, 0);
        a.memory_bytes = 1 << 30;
        let r = Request::new("", 100, 2 << 30);
        assert!(matches!(
            choose(&[a], &r, Strategy::BinPack),
            Err(NoFit::Never(_))
        ));
    }

    #[test]
    fn gpus_are_picked_lowest_index_first_and_never_shared() -> TestResult {
        let mut a = gpu_agent("g", 4, "NVIDIA A100-SXM4-40GB", 40);
        let req = gpus(2);
        let first = choose(std::slice::from_ref(&a), &req, Strategy::BinPack)?;
        assert_eq!(
            first.gpus,
            vec![(0, "GPU-g-0".into()), (1, "GPU-g-1".into())]
        );
        a.allocate(&req, &first.gpus);
        let second = choose(std::slice::from_ref(&a), &req, Strategy::BinPack)?;
        assert_eq!(
            second.gpus,
            vec![(2, "GPU-g-2".into()), (3, "GPU-g-3".into())]
        );
        a.allocate(&req, &second.gpus);
        let third = choose(std::slice::from_ref(&a), &req, Strategy::BinPack);
        assert!(matches!(third, Err(NoFit::Busy(ref m)) if m.contains("0 matching GPU(s) free")));
        a.release(&req, &first.gpus);
        let again = choose(std::slice::from_ref(&a), &req, Strategy::BinPack)?;
        assert_eq!(again.gpus, first.gpus);
        Ok(())
    }

    #[test]
    fn gpu_model_and_memory_constrain_which_gpus_count() -> TestResult {
        let a100 = gpu_agent("a", 2, "NVIDIA A100-SXM4-40GB", 40);
        let t4 = gpu_agent("t", 4, "Tesla T4", 16);
        let agents = [a100, t4];
        let want_a100 = Request::new("", 1000, 0).with_gpus(1, "A100", 0);
        assert_eq!(choose(&agents, &want_a100, Strategy::BinPack)?.agent, 0);
        let want_big = Request::new("", 1000, 0).with_gpus(1, "", 32 << 30);
        assert_eq!(choose(&agents, &want_big, Strategy::BinPack)?.agent, 0);
        let want_three_a100 = Request::new("", 1000, 0).with_gpus(3, "a100", 0);
        let err = choose(&agents, &want_three_a100, Strategy::BinPack).unwrap_err();
        assert_eq!(
            err,
            NoFit::Never("unschedulable: no connected agent offers executor `process`, 1000m cpu, 3 GPU(s) matching `a100` (a: 2 matching GPU(s); t: 0 matching GPU(s))".into())
        );
        Ok(())
    }

    #[test]
    fn bin_packing_keeps_whole_gpu_machines_free() -> TestResult {
        // One GPU already used on `half`: a 1-GPU task goes there, not to the idle machine.
        let mut half = gpu_agent("half", 2, "A100", 40);
        half.gpus[0].held = true;
        let idle = gpu_agent("idle", 2, "A100", 40);
        let p = choose(&[idle, half], &gpus(1), Strategy::BinPack)?;
        assert_eq!(p.agent, 1);
        assert_eq!(p.gpus, vec![(1, "GPU-half-1".into())]);
        Ok(())
    }

    #[test]
    fn cpu_tasks_avoid_gpu_machines_when_they_can() -> TestResult {
        let g = gpu_agent("a-gpu", 2, "A100", 40);
        let c = agent("z-cpu", 4000, 0);
        let req = Request::new("", 500, 0);
        assert_eq!(choose(&[g.clone(), c], &req, Strategy::BinPack)?.agent, 1);
        // ...but use them when nothing else fits.
        assert_eq!(choose(&[g], &req, Strategy::BinPack)?.agent, 0);
        Ok(())
    }

    #[test]
    fn node_selector_needs_every_label() -> TestResult {
        let mut eu = agent("eu", 4000, 0);
        eu.labels.insert("zone".into(), "eu".into());
        eu.labels.insert("disk".into(), "ssd".into());
        let us = agent("us", 4000, 0);
        let sel: BTreeMap<_, _> = [("zone".to_string(), "eu".to_string())].into();
        let req = Request::new("", 100, 0).with_selector(sel);
        assert_eq!(choose(&[us.clone(), eu], &req, Strategy::BinPack)?.agent, 1);
        let err = choose(&[us], &req, Strategy::BinPack).unwrap_err();
        assert!(
            matches!(err, NoFit::Never(ref m) if m.ends_with("(us: no label zone=eu)")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn allocate_and_release_round_trip() -> TestResult {
        let mut a = agent("a", 1000, 0);
        let r = Request::new("", 600, 100);
        a.allocate(&r, &[]);
        assert!(choose(std::slice::from_ref(&a), &r, Strategy::BinPack).is_err());
        a.release(&r, &[]);
        assert_eq!(choose(&[a], &r, Strategy::BinPack)?.agent, 0);
        Ok(())
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(40 << 30), "40.0Gi");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
    }
}
