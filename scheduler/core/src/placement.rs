//! Placement: which live agent takes a ready task.
//!
//! Bin-packing: among agents with the executor and enough free CPU and
//! memory, take the one left with the least free CPU, so whole machines stay
//! free for big tasks. Ties go to the lexically smallest id, so decisions are
//! deterministic and testable.

/// CPU a task asks for when its spec says nothing: a quarter core, so an
/// agent runs several small tasks per core without oversubscribing heavily.
pub const DEFAULT_CPU_MILLIS: u64 = 250;

/// An agent as placement sees it: capacity from its heartbeat, allocation
/// from the attempts the scheduler has placed on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSlot {
    pub id: String,
    pub executors: Vec<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub used_cpu_millis: u64,
    pub used_memory_bytes: u64,
}

impl AgentSlot {
    fn free_cpu(&self) -> u64 {
        self.cpu_millis.saturating_sub(self.used_cpu_millis)
    }

    fn free_memory(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.used_memory_bytes)
    }

    fn could_ever_fit(&self, req: &Request) -> bool {
        self.executors.iter().any(|e| e == req.executor)
            && self.cpu_millis >= req.cpu_millis
            && self.memory_bytes >= req.memory_bytes
    }

    fn fits_now(&self, req: &Request) -> bool {
        self.could_ever_fit(req)
            && self.free_cpu() >= req.cpu_millis
            && self.free_memory() >= req.memory_bytes
    }

    /// Take `req`'s resources.
    pub fn allocate(&mut self, req: &Request) {
        self.used_cpu_millis += req.cpu_millis;
        self.used_memory_bytes += req.memory_bytes;
    }

    /// Give `req`'s resources back.
    pub fn release(&mut self, req: &Request) {
        self.used_cpu_millis = self.used_cpu_millis.saturating_sub(req.cpu_millis);
        self.used_memory_bytes = self.used_memory_bytes.saturating_sub(req.memory_bytes);
    }
}

/// What a task needs from an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub executor: &'static str,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Request {
    /// From the spec's fields; `image` empty means the process executor.
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
        }
    }
}

/// Why a task was not placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoFit {
    /// No live agent at all.
    NoAgents,
    /// No live agent could run it even when idle.
    Never(String),
    /// Some agent could, once running work frees room.
    Busy(String),
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoFit::NoAgents => f.write_str("no agent is connected"),
            NoFit::Never(why) | NoFit::Busy(why) => f.write_str(why),
        }
    }
}

/// Index of the agent that should take `req`.
pub fn choose(agents: &[AgentSlot], req: &Request) -> Result<usize, NoFit> {
    if agents.is_empty() {
        return Err(NoFit::NoAgents);
    }
    let best = agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.fits_now(req))
        .min_by(|(_, a), (_, b)| {
            (a.free_cpu() - req.cpu_millis, &a.id).cmp(&(b.free_cpu() - req.cpu_millis, &b.id))
        });
    if let Some((i, _)) = best {
        return Ok(i);
    }
    let want = format!(
        "executor `{}`, {}m cpu, {} bytes memory",
        req.executor, req.cpu_millis, req.memory_bytes
    );
    if agents.iter().any(|a| a.could_ever_fit(req)) {
        Err(NoFit::Busy(format!(
            "waiting for an agent with room for {want}"
        )))
    } else {
        Err(NoFit::Never(format!("no connected agent offers {want}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, cpu: u64, used: u64) -> AgentSlot {
        AgentSlot {
            id: id.into(),
            executors: vec!["process".into()],
            cpu_millis: cpu,
            memory_bytes: 8 << 30,
            used_cpu_millis: used,
            used_memory_bytes: 0,
        }
    }

    #[test]
    fn bin_packs_onto_the_fullest_agent_that_fits() {
        let agents = [
            agent("a", 4000, 0),
            agent("b", 4000, 3000),
            agent("c", 4000, 3900),
        ];
        let req = Request::new("", 500, 0);
        assert_eq!(choose(&agents, &req), Ok(1));
    }

    #[test]
    fn ties_go_to_the_smallest_id() {
        let agents = [agent("b", 2000, 0), agent("a", 2000, 0)];
        assert_eq!(choose(&agents, &Request::new("", 0, 0)), Ok(1));
    }

    #[test]
    fn unspecified_cpu_takes_the_default() {
        assert_eq!(Request::new("", 0, 0).cpu_millis, DEFAULT_CPU_MILLIS);
        assert_eq!(Request::new("img", 0, 0).executor, "docker");
    }

    #[test]
    fn busy_agents_mean_wait_and_missing_executor_means_never() {
        let agents = [agent("a", 1000, 900)];
        assert!(matches!(
            choose(&agents, &Request::new("", 500, 0)),
            Err(NoFit::Busy(_))
        ));
        assert!(matches!(
            choose(&agents, &Request::new("python:3.12", 500, 0)),
            Err(NoFit::Never(_))
        ));
        assert!(matches!(
            choose(&agents, &Request::new("", 5000, 0)),
            Err(NoFit::Never(_))
        ));
        assert_eq!(choose(&[], &Request::new("", 1, 0)), Err(NoFit::NoAgents));
    }

    #[test]
    fn memory_must_fit_too() {
        let mut a = agent("a", 4000, 0);
        a.memory_bytes = 1 << 30;
        let r = Request::new("", 100, 2 << 30);
        assert!(matches!(choose(&[a], &r), Err(NoFit::Never(_))));
    }

    #[test]
    fn allocate_and_release_round_trip() {
        let mut a = agent("a", 1000, 0);
        let r = Request::new("", 600, 100);
        a.allocate(&r);
        assert!(choose(std::slice::from_ref(&a), &r).is_err());
        a.release(&r);
        assert_eq!(choose(&[a], &r), Ok(0));
    }
}
