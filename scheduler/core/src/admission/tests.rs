use std::collections::BTreeMap;

use super::fleet::Fleet;
use super::*;
use crate::placement::{choose, GpuSlot, NoFit};

const GI: u64 = 1 << 30;

fn cpu_agent(id: &str, cores: u64) -> AgentSlot {
    AgentSlot {
        id: id.into(),
        executors: vec!["process".into()],
        cpu_millis: cores * 1000,
        memory_bytes: 64 * GI,
        ..Default::default()
    }
}

fn gpu_agent(id: &str, n: u32, model: &str) -> AgentSlot {
    let mut a = cpu_agent(id, 32);
    a.gpus = (0..n)
        .map(|i| GpuSlot {
            index: i,
            uuid: format!("GPU-{id}-{i}"),
            name: model.into(),
            memory_bytes: 80 * GI,
            held: false,
        })
        .collect();
    a
}

fn queue(name: &str, priority: i64) -> Queue {
    Queue {
        name: name.into(),
        priority,
        weight: 1,
        quota: Quota::default(),
        max_running: None,
        paused: false,
        preemption: Preemption::Never,
        borrow: false,
    }
}

fn cpu(cores: u64) -> Request {
    Request::new("", cores * 1000, GI)
}

fn gpus(n: u32) -> Request {
    Request::new("", 1000, GI).with_gpus(n, "", 0)
}

fn task(key: &'static str, queue: usize, req: Request) -> Pending<&'static str> {
    Pending {
        key,
        queue,
        run_priority: 0,
        submitted_at: 0,
        seq: 0,
        req,
    }
}

/// Starts `req` on `agents[agent]` (lowest free matching GPUs) and returns it as running.
fn start(
    agents: &mut [AgentSlot],
    key: &'static str,
    queue: usize,
    agent: usize,
    req: Request,
    started_at: u64,
) -> Running<&'static str> {
    let p = choose(
        std::slice::from_ref(&agents[agent]),
        &req,
        Strategy::BinPack,
    )
    .unwrap_or_else(|e| panic!("{key} does not fit agent {agent}: {e}"));
    agents[agent].allocate(&req, &p.gpus);
    Running {
        key,
        queue,
        run_priority: 0,
        agent,
        req,
        gpus: p.gpus,
        started_at,
        borrowed: false,
        preempting: false,
    }
}

fn admitted<K: Clone>(d: &Decision<K>) -> Vec<K> {
    d.admit.iter().map(|a| a.key.clone()).collect()
}

fn evicted<K: Clone>(d: &Decision<K>) -> Vec<K> {
    d.evict.iter().map(|e| e.victim.clone()).collect()
}

fn wait_of<'d>(d: &'d Decision<&str>, key: &str) -> &'d Wait {
    &d.waiting
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("{key} is not waiting: {d:#?}"))
        .1
}

fn sched(
    queues: &[Queue],
    pending: &[Pending<&'static str>],
    running: &[Running<&'static str>],
    agents: &[AgentSlot],
) -> Decision<&'static str> {
    schedule(queues, pending, running, agents, Strategy::BinPack)
}

#[test]
fn higher_priority_queues_go_first() {
    let queues = [queue("low", 0), queue("high", 10)];
    let mut pending = vec![
        task("low1", 0, cpu(2)),
        task("low2", 0, cpu(2)),
        task("high1", 1, cpu(2)),
        task("high2", 1, cpu(2)),
    ];
    // The low queue's tasks were submitted long before.
    pending[2].submitted_at = 100;
    pending[3].submitted_at = 100;
    let d = sched(&queues, &pending, &[], &[cpu_agent("a", 4)]);
    assert_eq!(admitted(&d), ["high1", "high2"]);
    let waiting: Vec<_> = d.waiting.iter().map(|(k, w)| (*k, w.kind())).collect();
    assert_eq!(waiting, [("low1", "no_capacity"), ("low2", "no_capacity")]);
}

#[test]
fn inside_a_queue_run_priority_then_submit_time_then_seq() {
    let queues = [queue("q", 0)];
    let mut pending = vec![
        task("old-low", 0, cpu(1)),
        task("new-high", 0, cpu(1)),
        task("older-high", 0, cpu(1)),
        task("old-low-seq0", 0, cpu(1)),
    ];
    pending[0].submitted_at = 1;
    pending[0].seq = 7;
    pending[1].run_priority = 5;
    pending[1].submitted_at = 30;
    pending[2].run_priority = 5;
    pending[2].submitted_at = 20;
    pending[3].submitted_at = 1;
    pending[3].seq = 3;
    let agent = cpu_agent("a", 3);
    let d = sched(&queues, &pending, &[], std::slice::from_ref(&agent));
    assert_eq!(admitted(&d), ["older-high", "new-high", "old-low-seq0"]);
    assert_eq!(d.waiting.len(), 1);
    assert_eq!(d.waiting[0].0, "old-low");
    // With room for none, the waiting list shows the whole queue order.
    let d = sched(&queues, &pending, &[], &[cpu_agent("a", 0)]);
    let order: Vec<_> = d.waiting.iter().map(|(k, _)| *k).collect();
    assert_eq!(order, ["older-high", "new-high", "old-low-seq0", "old-low"]);
}

#[test]
fn equal_priority_queues_share_by_weight_on_their_dominant_resource() {
    let mut light = queue("light", 5);
    light.weight = 1;
    let mut heavy = queue("heavy", 5);
    heavy.weight = 3;
    let queues = [light, heavy];
    let keys: Vec<&'static str> = (0..100)
        .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
        .collect();
    let pending: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| task(k, i % 2, cpu(1)))
        .collect();
    let agents: Vec<_> = (0..4).map(|i| cpu_agent(&format!("a{i}"), 10)).collect();
    let d = sched(&queues, &pending, &[], &agents);
    let by_queue = |q: usize| {
        d.admit
            .iter()
            .filter(|a| pending.iter().any(|p| p.key == a.key && p.queue == q))
            .count()
    };
    assert_eq!(d.admit.len(), 40);
    assert_eq!((by_queue(0), by_queue(1)), (10, 30));

    // Shares count what queues already run, on their dominant resource:
    // `alpha` holds 2 of 4 GPUs (share 0.5), `beta` 7 of 40 cores (0.175).
    // By CPU alone (or by name) `alpha` would go first; by dominant share
    // `beta` does, and takes the last free core.
    let queues = [queue("alpha", 5), queue("beta", 5)];
    let mut agents = vec![gpu_agent("g", 4, "A100"), cpu_agent("c", 8)];
    let running = vec![
        start(&mut agents, "a-run", 0, 0, gpus(2), 0),
        start(&mut agents, "b-run", 1, 1, cpu(7), 0),
    ];
    agents[0].used_cpu_millis = agents[0].cpu_millis;
    let pending = vec![task("a", 0, cpu(1)), task("b", 1, cpu(1))];
    let d = sched(&queues, &pending, &running, &agents);
    assert_eq!(admitted(&d), ["b"]);
}

#[test]
fn quotas_hold_without_borrowing() {
    let mut q = queue("train", 0);
    q.quota.gpus = Some(2);
    let pending = vec![
        task("t1", 0, gpus(1)),
        task("t2", 0, gpus(1)),
        task("t3", 0, gpus(1)),
        task("t4", 0, gpus(1)),
    ];
    let d = sched(&[q], &pending, &[], &[gpu_agent("g", 8, "A100")]);
    assert_eq!(admitted(&d), ["t1", "t2"]);
    assert!(d.admit.iter().all(|a| !a.borrowed));
    assert_eq!(
        wait_of(&d, "t3"),
        &Wait::Quota(
            "queue `train` is at its gpus quota (2 of 2 in use, this task needs 1)".into()
        )
    );
    assert_eq!(wait_of(&d, "t4").kind(), "quota");
}

#[test]
fn a_quota_blocked_task_keeps_its_claim_and_a_too_big_one_does_not() {
    let mut q = queue("train", 0);
    q.quota.gpus = Some(4);
    let mut agents = vec![gpu_agent("g", 8, "A100")];
    let running = vec![start(&mut agents, "r", 0, 0, gpus(1), 0)];
    let pending = vec![
        task("huge", 0, gpus(5)),
        task("four", 0, gpus(4)),
        task("one", 0, gpus(1)),
        task("cpu-only", 0, cpu(1)),
    ];
    let d = sched(std::slice::from_ref(&q), &pending, &running, &agents);
    // `huge` can never run within quota: it holds nothing. `four` waits for
    // quota and holds it, so `one` may not use the 3 GPUs of quota left, but
    // a task needing no GPU quota runs.
    assert_eq!(admitted(&d), ["cpu-only"]);
    assert_eq!(
        wait_of(&d, "huge"),
        &Wait::Quota("queue `train` has a gpus quota of 4, less than the 5 this task needs".into())
    );
    assert_eq!(
        wait_of(&d, "four"),
        &Wait::Quota(
            "queue `train` is at its gpus quota (1 of 4 in use, this task needs 4)".into()
        )
    );
    assert_eq!(
        wait_of(&d, "one"),
        &Wait::Quota(
            "queue `train` keeps its remaining gpus quota for an earlier task (1 of 4 in use)"
                .into()
        )
    );
}

#[test]
fn borrowing_takes_only_what_within_quota_demand_left_and_is_marked() {
    // `burst` is served first (higher priority) but may only borrow after
    // `steady`'s within-quota demand was served.
    let mut burst = queue("burst", 10);
    burst.quota.gpus = Some(2);
    burst.borrow = true;
    let mut steady = queue("steady", 0);
    steady.quota.gpus = Some(4);
    let pending = vec![
        task("b1", 0, gpus(1)),
        task("b2", 0, gpus(1)),
        task("b3", 0, gpus(1)),
        task("b4", 0, gpus(1)),
        task("s1", 1, gpus(1)),
        task("s2", 1, gpus(1)),
    ];
    let d = sched(
        &[burst, steady],
        &pending,
        &[],
        &[gpu_agent("g", 5, "A100")],
    );
    assert_eq!(admitted(&d), ["b1", "b2", "s1", "s2", "b3"]);
    let borrowed: Vec<_> = d
        .admit
        .iter()
        .filter(|a| a.borrowed)
        .map(|a| a.key)
        .collect();
    assert_eq!(borrowed, ["b3"]);
    let w = wait_of(&d, "b4");
    assert_eq!(w.kind(), "quota");
    assert!(
        w.to_string()
            .contains("no idle capacity to borrow: waiting for room"),
        "{w}"
    );

    // A queue that may not borrow stays at its quota with idle capacity.
    let mut strict = queue("strict", 0);
    strict.quota.gpus = Some(1);
    let d = sched(&[strict], &pending[..2], &[], &[gpu_agent("g", 8, "A100")]);
    assert_eq!(admitted(&d), ["b1"]);
}

#[test]
fn an_under_quota_queue_reclaims_borrowed_capacity() {
    let mut lender = queue("lender", 0); // never preempts on its own
    lender.quota.gpus = Some(4);
    let mut borrower = queue("borrower", 10);
    borrower.quota.gpus = Some(2);
    borrower.borrow = true;
    let queues = [lender, borrower];
    let mut agents = vec![gpu_agent("g", 4, "A100")];
    let mut running = vec![
        start(&mut agents, "own1", 1, 0, gpus(1), 10),
        start(&mut agents, "own2", 1, 0, gpus(1), 20),
        start(&mut agents, "lent1", 1, 0, gpus(1), 30),
        start(&mut agents, "lent2", 1, 0, gpus(1), 40),
    ];
    running[2].borrowed = true;
    running[3].borrowed = true;
    let pending = vec![task("mine", 0, gpus(2))];
    let d = sched(&queues, &pending, &running, &agents);
    assert!(d.admit.is_empty());
    let mut victims = evicted(&d);
    victims.sort();
    assert_eq!(victims, ["lent1", "lent2"]);
    assert!(d.evict.iter().all(
        |e| e.for_task == "mine" && e.reason == "borrowed capacity reclaimed by queue `lender`"
    ));
    assert_eq!(wait_of(&d, "mine").kind(), "preempting");

    // Once the borrower is back within its quota, its old "borrowed" tasks
    // are safe.
    let d = sched(&queues, &pending, &running[2..], &agents);
    assert!(d.evict.is_empty(), "{:?}", d.evict);
    assert_eq!(wait_of(&d, "mine").kind(), "no_capacity");

    // A queue at its own quota reclaims nothing.
    let mut full = queues.clone();
    full[0].quota.gpus = Some(1);
    let d = sched(&full, &pending, &running, &agents);
    assert!(d.evict.is_empty());
    assert_eq!(wait_of(&d, "mine").kind(), "quota");
}

#[test]
fn paused_queues_admit_nothing_and_max_running_caps_a_queue() {
    let mut paused = queue("paused", 100);
    paused.paused = true;
    paused.preemption = Preemption::LowerPriority;
    let mut capped = queue("capped", 0);
    capped.max_running = Some(2);
    let queues = [paused, capped];
    let mut agents = vec![cpu_agent("a", 16)];
    let running = vec![start(&mut agents, "r", 1, 0, cpu(1), 0)];
    let pending = vec![
        task("p1", 0, cpu(1)),
        task("c1", 1, cpu(1)),
        task("c2", 1, cpu(1)),
        task("c3", 1, cpu(1)),
    ];
    let d = sched(&queues, &pending, &running, &agents);
    assert_eq!(admitted(&d), ["c1"]);
    assert_eq!(wait_of(&d, "p1"), &Wait::Paused);
    assert_eq!(wait_of(&d, "c2"), &Wait::MaxRunning(2));
    assert_eq!(wait_of(&d, "c3"), &Wait::MaxRunning(2));
    assert!(d.evict.is_empty());

    // A paused high-priority preempting queue evicts nothing even when full.
    let mut full = vec![cpu_agent("a", 1)];
    let running = vec![start(&mut full, "r", 1, 0, cpu(1), 0)];
    let d = sched(&queues, &pending[..1], &running, &full);
    assert!(d.evict.is_empty());
    assert_eq!(wait_of(&d, "p1"), &Wait::Paused);
}

#[test]
fn an_unschedulable_task_does_not_block_its_queue() {
    let queues = [queue("q", 0)];
    let agents = [cpu_agent("a", 4)];
    let docker = Request::new("python:3.12", 1000, 0);
    let pending = vec![task("docker", 0, docker.clone()), task("proc", 0, cpu(1))];
    let d = sched(&queues, &pending, &[], &agents);
    assert_eq!(admitted(&d), ["proc"]);
    let Err(NoFit::Never(text)) = choose(&agents, &docker, Strategy::BinPack) else {
        panic!("expected never");
    };
    assert_eq!(wait_of(&d, "docker"), &Wait::Unschedulable(text.into()));
}

#[test]
fn no_agents_means_waiting_for_one() {
    let d = sched(&[queue("q", 0)], &[task("t", 0, cpu(1))], &[], &[]);
    assert_eq!(
        wait_of(&d, "t"),
        &Wait::NoCapacity("waiting for an agent to connect".into())
    );
}

#[test]
fn backfill_runs_small_tasks_elsewhere_and_keeps_the_heads_agent() {
    let queues = [queue("train", 5), queue("batch", 0)];
    let mut agents = vec![
        gpu_agent("g1", 8, "A100"),
        gpu_agent("g2", 8, "A100"),
        cpu_agent("c", 8),
    ];
    // g1 misses 4 GPUs for the head, g2 misses 6: the head reserves g1.
    let running = vec![
        start(&mut agents, "r1", 0, 0, gpus(4), 0),
        start(&mut agents, "r2", 0, 1, gpus(6), 0),
    ];
    let pending = vec![
        task("big", 0, gpus(8)),
        task("small1", 0, gpus(1)),
        task("small2", 0, gpus(1)),
        task("small3", 0, gpus(1)),
        task("cpu", 0, cpu(2)),
        task("lower", 1, gpus(1)),
    ];
    let d = sched(&queues, &pending, &running, &agents);
    // Bin-packing fills g2 first; small3 would then go to g1, which is held.
    assert!(
        d.admit.iter().all(|a| a.placement.agent != 0),
        "{:?}",
        d.admit
    );
    assert_eq!(admitted(&d), ["small1", "small2", "cpu"]);
    assert_eq!(
        d.admit
            .iter()
            .map(|a| a.placement.agent)
            .collect::<Vec<_>>(),
        [1, 1, 2]
    );
    assert_eq!(wait_of(&d, "big").kind(), "no_capacity");
    let held = Wait::NoCapacity(
        "held for the head of queue `train` (agent `g1` is reserved for it)".into(),
    );
    assert_eq!(wait_of(&d, "small3"), &held);
    assert_eq!(wait_of(&d, "lower"), &held);

    // Not delayed: once r1 stops, the head starts on g1 before anything else.
    let d = sched(&queues, &pending, &running[1..], &{
        let mut a = agents.clone();
        a[0].release(&running[0].req, &running[0].gpus);
        a
    });
    assert_eq!(d.admit[0].key, "big");
    assert_eq!(d.admit[0].placement.agent, 0);
}

#[test]
fn the_reservation_goes_where_the_head_fits_soonest() {
    // For a CPU task: the agent missing the smallest fraction of its CPU.
    let queues = [queue("q", 0)];
    let mut agents = vec![cpu_agent("a", 16), cpu_agent("b", 16), cpu_agent("c", 8)];
    let running = vec![
        start(&mut agents, "ra", 0, 0, cpu(14), 0), // 2 free: misses 6 of 16
        start(&mut agents, "rb", 0, 1, cpu(11), 0), // 5 free: misses 3 of 16
        start(&mut agents, "rc", 0, 2, cpu(8), 0),  // 0 free and too small
    ];
    let pending = vec![task("head", 0, cpu(8)), task("small", 0, cpu(2))];
    let d = sched(&queues, &pending, &running, &agents);
    // `small` would bin-pack onto `a` (2 free) and may: `b` is the one held.
    assert_eq!(admitted(&d), ["small"]);
    assert_eq!(d.admit[0].placement.agent, 0);
    let pending = vec![task("head", 0, cpu(8)), task("small", 0, cpu(5))];
    let d = sched(&queues, &pending, &running, &agents);
    assert!(d.admit.is_empty());
    assert_eq!(
        wait_of(&d, "small"),
        &Wait::NoCapacity("held for the head of queue `q` (agent `b` is reserved for it)".into())
    );
}

/// prod (priority 10) preempts; low (priority 0); vip (priority 20) borrows.
fn preempt_queues() -> Vec<Queue> {
    let mut prod = queue("prod", 10);
    prod.preemption = Preemption::LowerPriority;
    let mut vip = queue("vip", 20);
    vip.quota.gpus = Some(0);
    vip.borrow = true;
    vec![prod, queue("low", 0), vip]
}

#[test]
fn victims_borrowed_first_then_lowest_priority_on_a_single_agent() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("g1", 8, "A100"), gpu_agent("g2", 8, "A100")];
    let mut running = vec![
        // g1: only lower-priority work.
        start(&mut agents, "g1-low-a", 1, 0, gpus(4), 900),
        start(&mut agents, "g1-low-b", 1, 0, gpus(4), 950),
        // g2: borrowed work of a *higher*-priority queue, and lower-priority work.
        start(&mut agents, "g2-vip", 2, 1, gpus(4), 100),
        start(&mut agents, "g2-low", 1, 1, gpus(4), 990),
    ];
    running[2].borrowed = true;
    let pending = vec![task("head", 0, gpus(4))];
    let d = sched(&queues, &pending, &running, &agents);
    assert_eq!(evicted(&d), ["g2-vip"]);
    assert_eq!(
        d.evict[0].reason,
        "borrowed capacity reclaimed by queue `prod`"
    );
    assert_eq!(
        wait_of(&d, "head"),
        &Wait::Preempting("preempting 1 task(s) on agent `g2` to make room".into())
    );

    // Without borrowed work, the least work lost: the most recently started
    // lower-priority task (g2-low started at 990).
    running[2].borrowed = false;
    running[2].queue = 1;
    let d = sched(&queues, &pending, &running, &agents);
    assert_eq!(evicted(&d), ["g2-low"]);
    assert_eq!(
        d.evict[0].reason,
        "preempted for a task of higher-priority queue `prod` (priority 10 over 0)"
    );
}

#[test]
fn victims_come_from_one_agent_and_must_free_matching_gpus() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("g1", 4, "A100"), gpu_agent("g2", 4, "A100")];
    let mut running = vec![
        start(&mut agents, "g1-low", 1, 0, gpus(2), 0),
        start(&mut agents, "g1-prod", 0, 0, gpus(2), 0),
        start(&mut agents, "g2-low", 1, 1, gpus(2), 0),
        start(&mut agents, "g2-prod", 0, 1, gpus(2), 0),
    ];
    // Two evictable GPUs per agent: enough together, never on one agent.
    let d = sched(&queues, &[task("head", 0, gpus(4))], &running, &agents);
    assert!(d.evict.is_empty(), "{:?}", d.evict);
    assert_eq!(wait_of(&d, "head").kind(), "no_capacity");

    // Only victims that free something missing: the head needs one GPU and
    // a little CPU; the recent CPU-only task frees no GPU and stays.
    let mut agents = vec![gpu_agent("g", 2, "A100")];
    running = vec![
        start(&mut agents, "cpu-recent", 1, 0, cpu(1), 999),
        start(&mut agents, "gpu-old", 1, 0, gpus(2), 1),
    ];
    let d = sched(&queues, &[task("head", 0, gpus(1))], &running, &agents);
    assert_eq!(evicted(&d), ["gpu-old"]);

    // GPUs of the wrong model do not count: the recent task on the T4s
    // stays, the old one on an A100 goes.
    let mut mixed = gpu_agent("m", 4, "NVIDIA A100");
    mixed.gpus[2].name = "Tesla T4".into();
    mixed.gpus[3].name = "Tesla T4".into();
    let mut agents = vec![mixed];
    let a100 = |n| Request::new("", 1000, GI).with_gpus(n, "a100", 0);
    let t4 = Request::new("", 1000, GI).with_gpus(2, "t4", 0);
    let running = vec![
        start(&mut agents, "low-a100", 1, 0, a100(1), 1),
        start(&mut agents, "prod-a100", 0, 0, a100(1), 1),
        start(&mut agents, "low-t4", 1, 0, t4, 999),
    ];
    let d = sched(&queues, &[task("head", 0, a100(1))], &running, &agents);
    assert_eq!(evicted(&d), ["low-a100"]);
    // Two A100s would need the equal-priority one too: nothing happens.
    let d = sched(&queues, &[task("head", 0, a100(2))], &running, &agents);
    assert!(d.evict.is_empty());
}

#[test]
fn among_agents_the_one_losing_least_work_is_chosen() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("a", 4, "A100"), gpu_agent("b", 4, "A100")];
    let running = vec![
        // a: two victims needed.
        start(&mut agents, "a1", 1, 0, gpus(2), 500),
        start(&mut agents, "a2", 1, 0, gpus(2), 600),
        // b: one victim, started long ago -- fewer victims still wins.
        start(&mut agents, "b1", 1, 1, gpus(4), 1),
    ];
    let d = sched(&queues, &[task("head", 0, gpus(4))], &running, &agents);
    assert_eq!(evicted(&d), ["b1"]);

    // Same number of victims: the one started most recently loses least.
    let mut agents = vec![gpu_agent("a", 2, "A100"), gpu_agent("b", 2, "A100")];
    let running = vec![
        start(&mut agents, "a1", 1, 0, gpus(2), 700),
        start(&mut agents, "b1", 1, 1, gpus(2), 100),
    ];
    let d = sched(&queues, &[task("head", 0, gpus(2))], &running, &agents);
    assert_eq!(evicted(&d), ["a1"]);
}

#[test]
fn no_preemption_when_evicting_everything_still_would_not_fit() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("g", 8, "A100")];
    let running = vec![
        start(&mut agents, "low", 1, 0, gpus(4), 0),
        start(&mut agents, "prod", 0, 0, gpus(4), 0),
    ];
    let d = sched(&queues, &[task("head", 0, gpus(8))], &running, &agents);
    assert!(d.evict.is_empty());
    assert!(
        wait_of(&d, "head")
            .to_string()
            .starts_with("waiting for room: executor `process`, 1000m cpu, 1.0Gi memory, 8 GPU(s)"),
        "{}",
        wait_of(&d, "head")
    );
}

#[test]
fn no_preemption_of_equal_or_higher_priority() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("g", 4, "A100")];
    let mut running = vec![
        start(&mut agents, "same", 0, 0, gpus(2), 0),
        start(&mut agents, "vip", 2, 0, gpus(2), 0),
    ];
    let pending = vec![task("head", 0, gpus(2))];
    let d = sched(&queues, &pending, &running, &agents);
    assert!(d.evict.is_empty(), "{:?}", d.evict);

    // Same queue priority with a lower run priority is lower priority.
    running[0].run_priority = -1;
    let d = sched(&queues, &pending, &running, &agents);
    assert_eq!(evicted(&d), ["same"]);
    assert_eq!(
        d.evict[0].reason,
        "preempted for a priority-0 task of queue `prod`"
    );

    // A queue that does not preempt never evicts non-borrowed work.
    let mut mild = queues.clone();
    mild[0].preemption = Preemption::Never;
    let d = sched(&mild, &pending, &running, &agents);
    assert!(d.evict.is_empty());
}

#[test]
fn tasks_already_preempting_free_room_and_are_not_chosen_twice() {
    let queues = preempt_queues();
    let mut agents = vec![gpu_agent("g", 4, "A100")];
    let mut running = vec![
        start(&mut agents, "going", 1, 0, gpus(2), 900),
        start(&mut agents, "staying", 1, 0, gpus(2), 100),
    ];
    running[0].preempting = true;
    // The next pass after an eviction: the head waits, nothing new is evicted.
    let d = sched(&queues, &[task("head", 0, gpus(2))], &running, &agents);
    assert!(d.evict.is_empty(), "{:?}", d.evict);
    assert_eq!(
        wait_of(&d, "head"),
        &Wait::Preempting("waiting for 1 preempted task(s) on agent `g` to stop".into())
    );
    // A lower-priority task may not take the room being freed either.
    let d = sched(
        &queues,
        &[task("head", 0, gpus(2)), task("low", 1, cpu(1))],
        &running,
        &agents,
    );
    assert!(d.admit.is_empty());
    // A head needing more evicts only the one not already going.
    let d = sched(&queues, &[task("head", 0, gpus(4))], &running, &agents);
    assert_eq!(evicted(&d), ["staying"]);
    assert_eq!(
        wait_of(&d, "head"),
        &Wait::Preempting(
            "preempting 1 task(s) on agent `g` to make room, and waiting for 1 already stopping"
                .into()
        )
    );
    // Two heads in one pass never pick the same victim.
    let mut two = queues.clone();
    two.push(two[0].clone());
    two[3].name = "prod2".into();
    let d = sched(
        &two,
        &[task("h1", 0, gpus(4)), task("h2", 3, gpus(2))],
        &running,
        &agents,
    );
    assert_eq!(evicted(&d), ["staying"]);
    assert_eq!(wait_of(&d, "h2").kind(), "no_capacity");
}

#[test]
fn no_preemption_beyond_quota() {
    let mut queues = preempt_queues();
    queues[0].quota.gpus = Some(1);
    let mut agents = vec![gpu_agent("g", 2, "A100")];
    let running = vec![start(&mut agents, "low", 1, 0, gpus(2), 0)];
    let d = sched(&queues, &[task("head", 0, gpus(2))], &running, &agents);
    assert!(d.evict.is_empty());
    assert_eq!(wait_of(&d, "head").kind(), "quota");
}

#[test]
fn same_inputs_same_decision() {
    let queues = preempt_queues();
    let mut agents: Vec<_> = (0..6)
        .map(|i| gpu_agent(&format!("g{}", 5 - i), 4, "A100"))
        .collect();
    let running: Vec<_> = (0..6)
        .map(|i| start(&mut agents, "r", 1, i, gpus(3), i as u64))
        .collect();
    let pending: Vec<_> = (0..12)
        .map(|i| task("t", i % 3, gpus(1 + (i as u32 % 2))))
        .collect();
    let a = format!("{:?}", sched(&queues, &pending, &running, &agents));
    let b = format!("{:?}", sched(&queues, &pending, &running, &agents));
    assert_eq!(a, b);
}

#[test]
fn waits_name_their_kind_and_read_as_sentences() {
    let cases = [
        (Wait::Paused, "paused", "its queue is paused"),
        (
            Wait::MaxRunning(3),
            "max_running",
            "its queue already runs its maximum of 3 task(s)",
        ),
        (Wait::Quota("q".into()), "quota", "q"),
        (Wait::NoCapacity("n".into()), "no_capacity", "n"),
        (Wait::Unschedulable("u".into()), "unschedulable", "u"),
        (Wait::Preempting("p".into()), "preempting", "p"),
    ];
    for (w, kind, text) in cases {
        assert_eq!(w.kind(), kind);
        assert_eq!(w.to_string(), text);
    }
}

/// A small deterministic generator for the property tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The pass's indexed placement picks exactly what `placement::choose`
/// picks, agent and GPUs, over random fleets and request sequences.
#[test]
fn indexed_placement_agrees_with_choose() {
    for strategy in [Strategy::BinPack, Strategy::Spread] {
        for seed in 0..40 {
            let mut rng = Lcg(seed);
            let n = 1 + rng.next(60) as usize;
            let mut agents: Vec<AgentSlot> = (0..n)
                .map(|_| {
                    // Duplicate ids now and then: ties fall back to the index.
                    let id = format!("a{:02}", rng.next(n as u64 + 5));
                    let mut a = match rng.next(3) {
                        0 => cpu_agent(&id, 4 + rng.next(8)),
                        1 => gpu_agent(&id, 1 + rng.next(8) as u32, "NVIDIA A100-SXM4-80GB"),
                        _ => gpu_agent(&id, 1 + rng.next(4) as u32, "Tesla T4"),
                    };
                    if rng.next(2) == 0 {
                        a.executors.push("docker".into());
                    }
                    if rng.next(4) == 0 {
                        a.labels.insert("zone".into(), "eu".into());
                    }
                    a.used_cpu_millis = rng.next(a.cpu_millis + 1);
                    a.used_memory_bytes = rng.next(a.memory_bytes / GI + 1) * GI;
                    for g in &mut a.gpus {
                        g.held = rng.next(3) == 0;
                    }
                    a
                })
                .collect();
            let reqs: Vec<Request> = (0..120)
                .map(|_| {
                    let image = if rng.next(3) == 0 { "img" } else { "" };
                    let mut r = Request::new(image, 250 * (1 + rng.next(12)), rng.next(8) * GI);
                    if rng.next(2) == 0 {
                        let model = ["", "a100", "t4"][rng.next(3) as usize];
                        r = r.with_gpus(rng.next(4) as u32, model, 0);
                    }
                    if rng.next(5) == 0 {
                        r = r.with_selector(BTreeMap::from([("zone".into(), "eu".into())]));
                    }
                    r
                })
                .collect();
            // The fleet reads a snapshot; `agents` follows choose's view.
            let snapshot = agents.clone();
            let mut fleet = Fleet::new(&snapshot, strategy);
            for req in &reqs {
                let class = fleet.class_of(req);
                let ours = fleet.find(class, req);
                let theirs = choose(&agents, req, strategy);
                match (ours, theirs) {
                    (Some(a), Ok(p)) => {
                        let placed = fleet.take(class, a, req);
                        assert_eq!(placed, p, "seed {seed} {strategy:?} {req:?}");
                        agents[p.agent].allocate(req, &p.gpus);
                    }
                    (None, Err(e)) => {
                        let never = fleet.never(class, req);
                        match e {
                            NoFit::Never(_) => assert_eq!(never, Some(e)),
                            NoFit::Busy(_) => {
                                assert_eq!(never, None);
                                match fleet.blocked(class, req) {
                                    fleet::Blocked::Room(ours) => assert_eq!(ours, e),
                                    fleet::Blocked::Held { .. } => panic!("nothing reserved"),
                                }
                            }
                            NoFit::NoAgents => unreachable!(),
                        }
                    }
                    (ours, theirs) => {
                        panic!("seed {seed} {strategy:?} {req:?}: {ours:?} vs {theirs:?}")
                    }
                }
            }
        }
    }
}
