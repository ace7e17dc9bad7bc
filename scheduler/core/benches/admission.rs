//! The admission pass and DAG transitions, on scheduler-sized inputs.
//!
//! `admission/busy`: 10,000 pending tasks in 50 queues over 1,000 agents
//! (800 CPU machines, 200 machines with 8 GPUs of two models), with the
//! fleet ~85% full of running work: the steady state a scheduler sees.
//! `admission/idle`: the same backlog on an empty fleet, so thousands of
//! tasks are admitted in one pass: the worst case after a restart or a
//! fleet scale-up. `dag/fan_out_fan_in`: one 10,000-task run driven to
//! completion through `RunDag::apply`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use drover_scheduler_core::admission::{
    schedule, Pending, Preemption, Queue, Quota, Resources, Running,
};
use drover_scheduler_core::dag::{Effect, Event, RunDag, TaskDef};
use drover_scheduler_core::placement::{choose, AgentSlot, GpuSlot, Request, Strategy};

const GI: u64 = 1 << 30;
const AGENTS: usize = 1_000;
const QUEUES: usize = 50;
const PENDING: usize = 10_000;

/// Deterministic pseudo-random numbers (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.next(xs.len() as u64) as usize]
    }
}

const ZONES: [&str; 3] = ["eu", "us", "ap"];

fn agents(rng: &mut Lcg) -> Vec<AgentSlot> {
    (0..AGENTS)
        .map(|i| {
            let gpu = i % 5 == 0;
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), rng.pick(&ZONES).to_string());
            if rng.next(3) == 0 {
                labels.insert("disk".to_string(), "nvme".to_string());
            }
            let model = if i % 10 == 0 {
                "NVIDIA A100-SXM4-80GB"
            } else {
                "NVIDIA H100 80GB HBM3"
            };
            AgentSlot {
                id: format!("{}-{i:04}", if gpu { "gpu" } else { "cpu" }),
                executors: if rng.next(4) == 0 {
                    vec!["process".into()]
                } else {
                    vec!["process".into(), "docker".into()]
                },
                labels,
                cpu_millis: 64_000,
                memory_bytes: 512 * GI,
                used_cpu_millis: 0,
                used_memory_bytes: 0,
                gpus: if gpu {
                    (0..8)
                        .map(|g| GpuSlot {
                            index: g,
                            uuid: format!("GPU-{i:04}-{g}"),
                            name: model.into(),
                            memory_bytes: 80 * GI,
                            held: false,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

fn queues(rng: &mut Lcg) -> Vec<Queue> {
    (0..QUEUES)
        .map(|i| {
            let gpus = i % 3 == 0;
            Queue {
                name: format!("team-{i:02}"),
                priority: *rng.pick(&[0, 0, 10, 10, 10, 50, 100]),
                weight: 1 + rng.next(4) as u32,
                quota: Quota {
                    cpu_millis: (i % 4 == 0).then(|| 1_000_000 + rng.next(4_000_000)),
                    memory_bytes: None,
                    gpus: gpus.then(|| 16 + 8 * rng.next(8)),
                },
                max_running: (i % 7 == 0).then(|| 200 + rng.next(400) as u32),
                paused: i == 13,
                preemption: if i % 5 == 0 {
                    Preemption::LowerPriority
                } else {
                    Preemption::Never
                },
                borrow: i % 2 == 1,
            }
        })
        .collect()
}

fn request(rng: &mut Lcg) -> Request {
    let image = if rng.next(2) == 0 {
        ""
    } else {
        "registry/train:1"
    };
    let mut req = if rng.next(10) < 7 {
        let cpu = *rng.pick(&[500, 1000, 2000, 4000, 8000]);
        Request::new(image, cpu, *rng.pick(&[1, 2, 4, 8, 32]) * GI)
    } else {
        let n = *rng.pick(&[1, 1, 2, 4, 8]);
        let model = *rng.pick(&["", "a100", "h100"]);
        Request::new(image, 4000 * u64::from(n), 32 * GI * u64::from(n)).with_gpus(n, model, 0)
    };
    if rng.next(10) == 0 {
        let zone = rng.pick(&ZONES).to_string();
        req = req.with_selector(BTreeMap::from([("zone".to_string(), zone)]));
    }
    req
}

struct Scenario {
    queues: Vec<Queue>,
    pending: Vec<Pending<usize>>,
    running: Vec<Running<usize>>,
    agents: Vec<AgentSlot>,
}

/// The backlog, and running work filling the fleet to about `fill` (0..=1)
/// of its CPU; running work respects quotas except for borrowers.
fn scenario(fill: f64) -> Scenario {
    let mut rng = Lcg(42);
    let mut agents = agents(&mut rng);
    let queues = queues(&mut rng);
    let total_cpu = (AGENTS as u64 * 64_000) as f64;
    let mut used_cpu = 0u64;
    let mut usage = vec![Resources::default(); QUEUES];
    let mut running = Vec::new();
    let mut misses = 0;
    while (used_cpu as f64) < fill * total_cpu && misses < 50_000 {
        let queue = rng.next(QUEUES as u64) as usize;
        let req = request(&mut rng);
        let after = usage[queue] + Resources::of(&req);
        let borrowed = !after.within(&queues[queue].quota);
        if borrowed && !queues[queue].borrow {
            continue;
        }
        let Ok(p) = choose(&agents, &req, Strategy::Spread) else {
            misses += 1;
            continue;
        };
        agents[p.agent].allocate(&req, &p.gpus);
        used_cpu += req.cpu_millis;
        usage[queue] = after;
        running.push(Running {
            key: running.len(),
            queue,
            run_priority: rng.next(3) as i64,
            agent: p.agent,
            req,
            gpus: p.gpus,
            started_at: rng.next(1_000_000),
            borrowed,
            preempting: rng.next(100) == 0,
        });
    }
    let pending = (0..PENDING)
        .map(|i| Pending {
            key: i,
            queue: rng.next(QUEUES as u64) as usize,
            run_priority: rng.next(4) as i64,
            submitted_at: rng.next(1_000_000),
            seq: i as u64,
            req: request(&mut rng),
        })
        .collect();
    Scenario {
        queues,
        pending,
        running,
        agents,
    }
}

fn bench_admission(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission");
    for (name, fill) in [("busy", 0.85), ("idle", 0.0)] {
        let s = scenario(fill);
        let d = schedule(
            &s.queues,
            &s.pending,
            &s.running,
            &s.agents,
            Strategy::BinPack,
        );
        let cpu: u64 = s.agents.iter().map(|a| a.used_cpu_millis).sum();
        let gpus = s
            .agents
            .iter()
            .flat_map(|a| &a.gpus)
            .filter(|g| g.held)
            .count();
        eprintln!(
            "admission/{name}: {} running ({:.0}% of CPU, {gpus} of 1600 GPUs held), {} pending -> {} admitted, {} evicted, {} waiting",
            s.running.len(),
            cpu as f64 / (AGENTS as f64 * 64_000.0) * 100.0,
            s.pending.len(),
            d.admit.len(),
            d.evict.len(),
            d.waiting.len()
        );
        for strategy in [Strategy::BinPack, Strategy::Spread] {
            group.bench_function(format!("{name}/{strategy:?}"), |b| {
                b.iter(|| {
                    schedule(
                        black_box(&s.queues),
                        black_box(&s.pending),
                        black_box(&s.running),
                        black_box(&s.agents),
                        strategy,
                    )
                })
            });
        }
    }
    group.finish();
}

/// One root, `n - 2` parallel tasks, one sink; every task succeeds at once.
fn fan_out_fan_in(n: usize) -> usize {
    let defs: Vec<TaskDef> = (0..n)
        .map(|i| TaskDef {
            name: format!("t{i}"),
            deps: match i {
                0 => vec![],
                i if i == n - 1 => (1..n - 1).collect(),
                _ => vec![0],
            },
            retry_limit: 0,
            backoff_ms: 1_000,
            finally: false,
            conditional: false,
            for_each: false,
            item_condition: false,
        })
        .collect();
    let (dag, fx) = RunDag::new(defs, false);
    run_to_end(dag, fx, 0)
}

/// One list task, one `for_each` task over its `n` items, one join.
fn for_each_map(n: usize) -> usize {
    let def = |name: &str, deps: Vec<usize>, for_each: bool| TaskDef {
        name: name.into(),
        deps,
        retry_limit: 0,
        backoff_ms: 1_000,
        finally: false,
        conditional: false,
        for_each,
        item_condition: false,
    };
    let defs = vec![
        def("list", vec![], false),
        def("work", vec![0], true),
        def("join", vec![1], false),
    ];
    let (dag, fx) = RunDag::new(defs, false);
    run_to_end(dag, fx, n)
}

/// Runs every Ready task to success (a `for_each` task expands into
/// `items` instances); returns the events applied.
fn run_to_end(mut dag: RunDag, mut fx: Vec<Effect>, items: usize) -> usize {
    let mut ready = Vec::new();
    let mut applied = 0;
    let mut now = 1;
    loop {
        while let Some(e) = fx.pop() {
            match e {
                Effect::Ready { task } => ready.push(task),
                Effect::Expand { task } => {
                    let more = dag
                        .apply(Event::Expanded { task, count: items }, now)
                        .expect("the task waits for its list");
                    fx.extend(more);
                    applied += 1;
                }
                _ => {}
            }
        }
        let Some(task) = ready.pop() else { break };
        now += 1;
        let assigned = dag
            .apply(
                Event::Assign {
                    cache_key: None,
                    task,
                    agent: "agent-1".into(),
                    gpus: Vec::new(),
                },
                now,
            )
            .expect("ready task assigns");
        let attempt = assigned
            .iter()
            .find_map(|e| match e {
                Effect::Assign { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .expect("assign effect");
        dag.apply(Event::Started { task, attempt }, now)
            .expect("assigned attempt starts");
        fx = dag
            .apply(
                Event::Succeeded {
                    image_digest: String::new(),
                    task,
                    attempt,
                    started_at: None,
                    outputs: Vec::new(),
                    log_key: String::new(),
                    log_empty: true,
                },
                now,
            )
            .expect("running attempt succeeds");
        applied += 3;
    }
    assert!(dag.status().is_terminal(), "run did not finish");
    applied
}

fn bench_dag(c: &mut Criterion) {
    let mut group = c.benchmark_group("dag");
    group.sample_size(20);
    group.bench_function("fan_out_fan_in/10000", |b| {
        b.iter(|| fan_out_fan_in(black_box(10_000)))
    });
    group.bench_function("for_each/10000", |b| {
        b.iter(|| for_each_map(black_box(10_000)))
    });
    group.finish();
}

/// The step cache's key of a task like the example's `train` instance: a
/// six-argument command, two env values, one input, one output.
fn bench_cache_key(c: &mut Criterion) {
    use drover_scheduler_core::cache::{InputDigest, KeyInput, OutputDecl};
    let command: Vec<String> = ["python3", "train.py", "--lr", "0.03", "--epochs", "30"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let env = [("PYTHONUNBUFFERED", "1"), ("SEED", "7")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sha = "a".repeat(64);
    c.bench_function("cache_key/task", |b| {
        b.iter(|| {
            KeyInput {
                command: &command,
                env: &env,
                image: "",
                workdir: "",
                inputs: vec![InputDigest::One {
                    name: "dataset",
                    sha256: &sha,
                }],
                code_sha256: &sha,
                outputs: vec![OutputDecl {
                    name: "model",
                    path: "model.json",
                    result: false,
                }],
                version: "",
            }
            .key()
        })
    });
}

criterion_group!(benches, bench_admission, bench_dag, bench_cache_key);
criterion_main!(benches);
