//! The scenarios of the benchmark issue. Each starts its own cluster (so
//! the scheduler's peak RSS and CPU time are its own), measures, and returns
//! an [`Outcome`]; a failure is reported in it, never hidden.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use drover_api::naming;
use drover_api::pb;
use futures::StreamExt;

use crate::cluster::{Bins, Cluster};
use crate::floors::Floors;
use crate::procstat::{self, CpuMeter};
use crate::report::{fmt_num, Outcome, Target};
use crate::sim::{SimOptions, SimOutputs, Simulator};
use crate::specs;
use crate::stats::{r3, rate, Summary};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: u64 = 1 << 30;

/// Settings shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bins: Bins,
    /// Longest any one scenario may take to finish its work.
    pub timeout: Duration,
    /// Real agents and the CPUs each offers (`--cpus`); tasks ask 250m each.
    pub real_agents: usize,
    pub real_cpus: u32,
    /// Simulated agents for the throughput and scale scenarios, and their CPUs.
    pub sim_agents: usize,
    pub sim_cpus: u32,
    /// Extra environment of the scheduler and real agents (trace export).
    pub env: Vec<(String, String)>,
    /// Hop and real throughput on a secured cluster (TLS, tokens, NATS
    /// permissions, etcd auth: [`crate::secure`]).
    pub secure: bool,
    /// nats-server fsyncs each JetStream write before acking it.
    pub nats_sync_always: bool,
}

impl Settings {
    /// Tasks the real agents run at once (the spec's default request is 250m).
    pub fn real_concurrency(&self) -> usize {
        self.real_agents * (self.real_cpus as usize * 1000 / 250)
    }

    fn sim(&self, cluster: &Cluster, agents: usize, interval: Duration) -> SimOptions {
        SimOptions {
            nats_url: cluster.nats.url.clone(),
            nats_prefix: cluster.nats_prefix.clone(),
            agents,
            id_prefix: "sim-".into(),
            cpu_millis: self.sim_cpus * 1000,
            memory_bytes: 1 << 40,
            heartbeat_interval: interval,
            outputs: None,
        }
    }
}

/// Runs `body`; an error becomes the outcome's failure, and each of the
/// scenario's `targets` it did not get to is reported missed.
pub(crate) async fn guarded<F>(
    mut o: Outcome,
    targets: &[(&str, &'static str, f64)],
    body: F,
) -> Outcome
where
    F: AsyncFnOnce(&mut Outcome) -> Result<()>,
{
    if let Err(e) = body(&mut o).await {
        o.fail(format!("{e:#}"));
        for &(what, op, limit) in targets {
            if !o.targets.iter().any(|t| t.what == what) {
                o.targets.push(Target::not_reached(what, op, limit));
            }
        }
    }
    o
}

/// CPU meters on every process of the benchmark (etcd, nats-server, the
/// scheduler, real agents, and this process: the simulator and observers),
/// and what etcd took in: revisions (one per transaction) and database growth.
struct Breakdown {
    meters: Vec<(String, CpuMeter)>,
    etcd: Option<(etcd_client::Client, i64, i64)>,
}

async fn etcd_status(etcd: &mut etcd_client::Client) -> Result<(i64, i64)> {
    let st = etcd.status().await?;
    Ok((st.db_size(), st.header().map_or(0, |h| h.revision())))
}

impl Breakdown {
    async fn start(c: &Cluster) -> Self {
        let me = std::process::id();
        let mut meters: Vec<(String, CpuMeter)> = procstat::children(me)
            .into_iter()
            .filter_map(|(name, pid)| Some((name, CpuMeter::start(pid).ok()?)))
            .collect();
        if let Ok(m) = CpuMeter::start(me) {
            meters.push(("drover-bench".into(), m));
        }
        let etcd = match c.etcd().await {
            Ok(mut e) => etcd_status(&mut e).await.ok().map(|(db, rev)| (e, db, rev)),
            Err(_) => None,
        };
        Self { meters, etcd }
    }

    /// Cores each kind of process used (agents summed) into `cpu_cores`;
    /// etcd transactions and database growth.
    async fn report(&mut self, o: &mut Outcome) {
        let mut by = serde_json::Map::new();
        for (name, m) in &self.meters {
            if let Ok((cores, _)) = m.cores() {
                let e = by.entry(name.clone()).or_insert(serde_json::json!(0.0));
                *e = serde_json::json!(r3(e.as_f64().unwrap_or(0.0) + cores));
            }
        }
        o.metric("cpu_cores", by);
        if let Some((etcd, db0, rev0)) = &mut self.etcd {
            if let Ok((db, rev)) = etcd_status(etcd).await {
                o.metric("etcd_write_txns", rev - *rev0);
                o.metric("etcd_db_growth_mib", r3((db - *db0) as f64 / MIB));
            }
        }
    }
}

/// Scheduler CPU and memory over a measured window.
async fn scheduler_usage(o: &mut Outcome, pid: u32, meter: &CpuMeter) {
    if let Ok((cores, used)) = meter.cores() {
        o.metric("scheduler_cpu_cores", r3(cores));
        o.metric("scheduler_cpu_s", r3(used.as_secs_f64()));
    }
    if let Ok((rss, peak)) = procstat::memory(pid) {
        o.metric("scheduler_rss_mib", r3(rss as f64 / MIB));
        o.metric("scheduler_peak_rss_mib", r3(peak as f64 / MIB));
    }
}

/// Submits a spec; the error is the scheduler's answer when it refuses.
async fn submit(cluster: &Cluster, yaml: String) -> Result<(String, Duration)> {
    submit_run(cluster, yaml, false).await
}

/// [`submit`], taking nothing from the step cache when `no_cache`.
async fn submit_run(cluster: &Cluster, yaml: String, no_cache: bool) -> Result<(String, Duration)> {
    let mut client = cluster.client().await?;
    let t = Instant::now();
    let r = client
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: yaml,
            no_cache,
            ..Default::default()
        })
        .await;
    let took = t.elapsed();
    match r {
        Ok(r) => Ok((r.into_inner().run_id, took)),
        Err(s) => bail!(
            "submit refused after {:.2} s: {:?}: {}",
            took.as_secs_f64(),
            s.code(),
            s.message()
        ),
    }
}

/// After the simulator waited for `tasks` finishes (`finished`): the run's
/// end, which must be Succeeded; the time since `t`.
async fn succeeded(
    c: &Cluster,
    sim: &Simulator,
    finished: bool,
    tasks: usize,
    run_id: &str,
    timeout: Duration,
    t: Instant,
) -> Result<Duration> {
    if !finished {
        bail!(
            "{} of {tasks} tasks finished after {timeout:?}",
            sim.stats.finished.load(Ordering::Relaxed),
        );
    }
    let state = c
        .wait_run(run_id, Duration::from_millis(5), Duration::from_secs(60))
        .await?;
    let took = t.elapsed();
    if state != pb::RunState::Succeeded {
        bail!("run ended {state:?}");
    }
    Ok(took)
}

/// `drover get` of a run (GetRun), and how long it took.
async fn timed_get(c: &Cluster, run_id: &str) -> Result<(pb::Run, Duration)> {
    let mut client = c.client().await?;
    let t = Instant::now();
    let run = client
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_owned(),
        })
        .await?
        .into_inner();
    Ok((run, t.elapsed()))
}

/// [`submit`]; when refused, the scheduler's usage and the breakdown so far
/// are still reported.
async fn submit_or_report(
    c: &Cluster,
    yaml: String,
    o: &mut Outcome,
    pid: u32,
    meter: &CpuMeter,
    breakdown: &mut Breakdown,
) -> Result<(String, Duration)> {
    let submitted = submit(c, yaml).await;
    if submitted.is_err() {
        scheduler_usage(o, pid, meter).await;
        breakdown.report(o).await;
    }
    submitted
}

/// A chain of no-op tasks on one real agent: for every dependent hop, the
/// upstream attempt's `succeeded` event time to the downstream attempt's
/// start (its `started` event, or the start its final event carries), both
/// as recorded by the scheduler (agent clocks, same machine, millisecond
/// resolution).
pub async fn hop(s: &Settings, tasks: usize, floors: Option<&Floors>) -> Outcome {
    let mut o = Outcome::new("hop-latency", false);
    o.param("tasks", tasks).param("agents", 1);
    guarded(
        o,
        &[("hop p50 ms", "<=", 5.0), ("hop p99 ms", "<=", 20.0)],
        async |o: &mut Outcome| {
            let mut c = Cluster::start_with(&s.bins, &s.env, s.secure, s.nats_sync_always).await?;
            c.add_agent("real-1", s.real_cpus).await?;
            c.wait_agents(1, Duration::from_secs(30)).await?;
            let pid = c.scheduler_pid()?;
            let meter = CpuMeter::start(pid)?;
            let mut breakdown = Breakdown::start(&c).await;
            let (run_id, _) = submit(&c, specs::chain(tasks)).await?;
            let t = Instant::now();
            let state = c
                .wait_run(&run_id, Duration::from_millis(20), s.timeout)
                .await?;
            let total = t.elapsed();
            scheduler_usage(o, pid, &meter).await;
            breakdown.report(o).await;
            if state != pb::RunState::Succeeded {
                bail!("run ended {state:?}");
            }
            let run = c
                .client()
                .await?
                .get_run(pb::GetRunRequest { run_id })
                .await?
                .into_inner();
            let times: Vec<(u64, u64)> = run
                .tasks
                .iter()
                .map(|t| {
                    let a = t.attempts.last().cloned().unwrap_or_default();
                    (a.started_at_ms, a.finished_at_ms)
                })
                .collect();
            let hops: Vec<f64> = times
                .windows(2)
                .map(|w| w[1].0 as f64 - w[0].1 as f64)
                .collect();
            let h = Summary::of_ms(hops);
            let (first, last) = (times[0].1, times[times.len() - 1].1);
            let cycle = (last - first) as f64 / (times.len() - 1).max(1) as f64;
            o.metric("hop", h)
                .metric("cycle_ms_per_task", r3(cycle))
                .metric("total_s", r3(total.as_secs_f64()));
            o.summary = format!(
                "hop p50 {} ms, p99 {} ms, max {} ms; finish-to-finish {} ms/task",
                fmt_num(h.p50_ms),
                fmt_num(h.p99_ms),
                fmt_num(h.max_ms),
                fmt_num(cycle)
            );
            if let Some(f) = floors {
                let floor = f.etcd_put.p50_ms + f.nats_rtt.p50_ms + f.spawn.p50_ms;
                let ratio = h.p50_ms / floor;
                o.metric("floor_ms", r3(floor))
                    .metric("ratio_to_floor", r3(ratio));
                o.summary += &format!(
                    "; hop p50 ÷ (etcd put + NATS rtt + spawn = {} ms) = {}",
                    fmt_num(floor),
                    fmt_num(ratio)
                );
            }
            o.targets.push(Target::at_most("hop p50 ms", h.p50_ms, 5.0));
            o.targets
                .push(Target::at_most("hop p99 ms", h.p99_ms, 20.0));
            Ok(())
        },
    )
    .await
}

/// Counts distinct `succeeded` events on the events subjects (a plain NATS
/// subscriber sees what JetStream stores): done is then confirmed in etcd.
/// Also counts `started` events: agents publish one only for an attempt
/// still running after 50 ms, so a no-op task should have none; and the
/// messages that carried the events (an agent sends the events that are
/// ready together in one).
struct SuccessCounter {
    count: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SuccessCounter {
    async fn start(c: &Cluster) -> Result<Self> {
        let client = c.nats_observer().await?;
        let mut sub = client
            .subscribe(naming::events_wildcard(&c.nats_prefix))
            .await?;
        drover_devcluster::nats_synced(&client).await?;
        let count = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let messages = Arc::new(AtomicU64::new(0));
        let (n, s, msgs) = (count.clone(), started.clone(), messages.clone());
        let prefix = c.nats_prefix.clone();
        let task = tokio::spawn(async move {
            let _keep = client;
            while let Some(m) = sub.next().await {
                let Ok(events) = drover_api::events::decode(&prefix, &m.subject, m.payload) else {
                    continue;
                };
                msgs.fetch_add(1, Ordering::Relaxed);
                for (ev, _) in events {
                    if let Some(pb::attempt_event::Kind::Started(_)) = ev.kind {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    if let (Some(pb::attempt_event::Kind::Succeeded(_)), Some(a)) =
                        (ev.kind, ev.attempt)
                    {
                        let fresh = seen
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert((a.run_id, a.task));
                        if fresh {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Ok(Self {
            count,
            started,
            messages,
            task,
        })
    }

    /// `started` events seen so far.
    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Messages on the events subjects seen so far.
    fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    async fn wait(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} tasks succeeded after {timeout:?}",
                    self.count.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

impl Drop for SuccessCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Independent no-op tasks on real agents: submit to the run recorded
/// Succeeded in etcd.
/// [`real_throughput`] with every task cached (`cache: true`, a key of its
/// own) in a `--no-cache` run: each task's key is computed and its entry
/// written, none is served, so the difference to `throughput-real` is what
/// the step cache costs a run of tasks that all miss.
/// Real throughput's regression floor, as a share of the spawn rate: on two
/// shared cores the control plane and the spawns compete for the same CPU
/// (benches/README.md, "Latest numbers").
const REAL_FLOOR: f64 = 0.4;

pub async fn real_throughput_keyed(s: &Settings, tasks: usize, floors: Option<&Floors>) -> Outcome {
    real(s, tasks, floors, true).await
}

pub async fn real_throughput(s: &Settings, tasks: usize, floors: Option<&Floors>) -> Outcome {
    real(s, tasks, floors, false).await
}

async fn real(s: &Settings, tasks: usize, floors: Option<&Floors>, keyed: bool) -> Outcome {
    let name = if keyed {
        "throughput-real-keyed"
    } else {
        "throughput-real"
    };
    let mut o = Outcome::new(name, false);
    o.param("tasks", tasks)
        .param("agents", s.real_agents)
        .param("cpus_per_agent", s.real_cpus)
        .param("concurrency", s.real_concurrency());
    guarded(
        o,
        &[("real ÷ spawn rate", ">=", REAL_FLOOR)],
        async |o: &mut Outcome| {
            let mut c = Cluster::start_with(&s.bins, &s.env, s.secure, s.nats_sync_always).await?;
            for i in 0..s.real_agents {
                c.add_agent(&format!("real-{}", i + 1), s.real_cpus).await?;
            }
            c.wait_agents(s.real_agents, Duration::from_secs(30))
                .await?;
            let counter = SuccessCounter::start(&c).await?;
            let yaml = if keyed {
                specs::independent_cached(tasks)
            } else {
                specs::independent(tasks)
            };
            let pid = c.scheduler_pid()?;
            let meter = CpuMeter::start(pid)?;
            let mut breakdown = Breakdown::start(&c).await;
            let t = Instant::now();
            let (run_id, submit_took) = submit_run(&c, yaml, keyed).await?;
            o.metric("submit_s", r3(submit_took.as_secs_f64()));
            let waited = counter.wait(tasks as u64, s.timeout).await;
            scheduler_usage(o, pid, &meter).await;
            breakdown.report(o).await;
            o.metric("started_events", counter.started());
            o.metric("event_messages", counter.messages());
            waited?;
            let state = c
                .wait_run(&run_id, Duration::from_millis(5), Duration::from_secs(60))
                .await?;
            let took = t.elapsed();
            if state != pb::RunState::Succeeded {
                bail!("run ended {state:?}");
            }
            let tps = rate(tasks as u64, took);
            o.metric("tasks_per_s", r3(tps))
                .metric("total_s", r3(took.as_secs_f64()));
            o.summary = format!(
                "{} tasks/s ({} s)",
                fmt_num(tps),
                fmt_num(took.as_secs_f64())
            );
            report_cpu_per_task(o, tasks);
            if let Some(f) = floors {
                let ratio = tps / f.spawn_per_s;
                o.metric("spawn_per_s", r3(f.spawn_per_s))
                    .metric("ratio_to_spawn_rate", r3(ratio));
                o.summary += &format!(
                    "; ÷ spawn rate {} /s = {}",
                    fmt_num(f.spawn_per_s),
                    fmt_num(ratio)
                );
                o.targets
                    .push(Target::at_least("real ÷ spawn rate", ratio, REAL_FLOOR));
            }
            c.stop_agents().await;
            c.stop_scheduler().await;
            Ok(())
        },
    )
    .await
}

/// A run on simulated agents, finished.
struct SimRun {
    cluster: Cluster,
    sim: Simulator,
    run_id: String,
    submit: Duration,
    /// Submit to the run recorded Succeeded.
    took: Duration,
}

impl SimRun {
    /// Starts a cluster with simulated agents (whose attempts store
    /// `outputs` for their declared outputs), submits `yaml` and waits for
    /// its `tasks` to succeed; the scheduler's usage and the breakdown go to `o`.
    async fn start(
        s: &Settings,
        o: &mut Outcome,
        outputs: Option<Vec<u8>>,
        yaml: String,
        tasks: usize,
    ) -> Result<Self> {
        let c = Cluster::start(&s.bins, &s.env, s.nats_sync_always).await?;
        let mut opts = s.sim(&c, s.sim_agents, Duration::from_secs(2));
        opts.outputs = outputs.map(|content| SimOutputs {
            dir: c.artifacts_dir(),
            content: Arc::new(content),
        });
        let sim = Simulator::start(opts).await?;
        c.wait_agents(s.sim_agents, Duration::from_secs(30)).await?;
        o.param("spec_bytes", yaml.len());
        let pid = c.scheduler_pid()?;
        let meter = CpuMeter::start(pid)?;
        let mut breakdown = Breakdown::start(&c).await;
        let t = Instant::now();
        let (run_id, submit) = submit_or_report(&c, yaml, o, pid, &meter, &mut breakdown).await?;
        let finished = sim.wait_finished(tasks as u64, s.timeout).await;
        scheduler_usage(o, pid, &meter).await;
        breakdown.report(o).await;
        let took = succeeded(&c, &sim, finished, tasks, &run_id, s.timeout, t).await?;
        Ok(Self {
            cluster: c,
            sim,
            run_id,
            submit,
            took,
        })
    }

    /// Reports throughput against its target, then stops the cluster.
    async fn end(mut self, o: &mut Outcome, tasks: usize, tps: f64) {
        o.metric("tasks_per_s", r3(tps))
            .metric("total_s", r3(self.took.as_secs_f64()))
            .metric(
                "publish_errors",
                self.sim.stats.publish_errors.load(Ordering::Relaxed),
            );
        report_cpu_per_task(o, tasks);
        o.targets
            .push(Target::at_least("scheduler tasks/s", tps, 10_000.0));
        self.sim.stop().await;
        self.cluster.stop_scheduler().await;
    }
}

/// The outcome of a throughput scenario on simulated agents.
fn sim_outcome(s: &Settings, scenario: &str, size: (&str, usize)) -> Outcome {
    let mut o = Outcome::new(scenario, true);
    o.param(size.0, size.1)
        .param("simulated_agents", s.sim_agents)
        .param("cpus_per_agent", s.sim_cpus);
    o
}

/// Independent tasks on simulated agents: the scheduler, etcd and NATS path
/// without process start-up.
pub async fn sim_throughput(s: &Settings, tasks: usize) -> Outcome {
    let o = sim_outcome(
        s,
        &format!("throughput-scheduler-{tasks}"),
        ("tasks", tasks),
    );
    guarded(
        o,
        &[("scheduler tasks/s", ">=", 10_000.0)],
        async |o: &mut Outcome| {
            let run = SimRun::start(s, o, None, specs::independent(tasks), tasks).await?;
            let (_, get_took) = timed_get(&run.cluster, &run.run_id).await?;
            let tps = rate(tasks as u64, run.took);
            o.metric("submit_s", r3(run.submit.as_secs_f64()))
                .metric("get_ms", r3(get_took.as_secs_f64() * 1000.0));
            o.summary = format!(
                "{} tasks/s ({} s)",
                fmt_num(tps),
                fmt_num(run.took.as_secs_f64())
            );
            run.end(o, tasks, tps).await;
            Ok(())
        },
    )
    .await
}

/// A `for_each` over `items` no-op instances on simulated agents, next to
/// `throughput-scheduler-N`'s static tasks: the expansion (the producer's
/// end to its first instance's assignment: reading and checking the list,
/// growing the DAG, the first admission), throughput, and `drover get` of
/// the finished run.
pub async fn map_throughput(s: &Settings, items: usize) -> Outcome {
    let o = sim_outcome(s, &format!("throughput-map-{items}"), ("items", items));
    guarded(
        o,
        &[("scheduler tasks/s", ">=", 10_000.0)],
        async |o: &mut Outcome| {
            let list = serde_json::to_vec(&(0..items).collect::<Vec<usize>>())?;
            let tasks = items + 1;
            let run = SimRun::start(s, o, Some(list), specs::map(), tasks).await?;
            let (view, get_took) = timed_get(&run.cluster, &run.run_id).await?;
            let instances: Vec<&pb::Attempt> = view
                .tasks
                .iter()
                .filter(|t| t.name.starts_with("work["))
                .filter_map(|t| t.attempts.first())
                .collect();
            if instances.len() != items {
                bail!("{} instances in the run, not {items}", instances.len());
            }
            let produced = view
                .tasks
                .iter()
                .find(|t| t.name == "list")
                .and_then(|t| t.attempts.first())
                .map_or(0, |a| a.finished_at_ms);
            let first = instances.iter().map(|a| a.assigned_at_ms).min();
            let last = instances.iter().map(|a| a.finished_at_ms).max();
            let (first, last) = (first.unwrap_or(0), last.unwrap_or(0));
            let expansion_ms = first.saturating_sub(produced);
            let tps = rate(tasks as u64, run.took);
            let spread = Duration::from_millis(last.saturating_sub(first).max(1));
            o.metric("expansion_ms", expansion_ms)
                .metric("instances_per_s", r3(rate(items as u64, spread)))
                .metric("get_ms", r3(get_took.as_secs_f64() * 1000.0));
            o.summary = format!(
                "{} tasks/s ({} s); expansion {expansion_ms} ms; get {} ms",
                fmt_num(tps),
                fmt_num(run.took.as_secs_f64()),
                fmt_num(get_took.as_secs_f64() * 1000.0)
            );
            run.end(o, tasks, tps).await;
            Ok(())
        },
    )
    .await
}

/// `tasks` cached tasks run once on simulated agents, then submitted again:
/// the second run is served wholly from the step cache (no attempt reaches
/// an agent); its submit-to-Succeeded time and rate.
pub async fn cached_throughput(s: &Settings, tasks: usize) -> Outcome {
    let o = sim_outcome(s, &format!("throughput-cached-{tasks}"), ("tasks", tasks));
    guarded(
        o,
        &[("cached tasks/s", ">=", 10_000.0)],
        async |o: &mut Outcome| {
            let yaml = specs::independent_cached(tasks);
            let first = SimRun::start(s, o, None, yaml.clone(), tasks).await?;
            let ran = first.sim.stats.finished.load(Ordering::Relaxed);
            let t = Instant::now();
            let (run_id, submit_took) = submit(&first.cluster, yaml).await?;
            let state = first
                .cluster
                .wait_run(&run_id, Duration::from_millis(1), s.timeout)
                .await?;
            let took = t.elapsed();
            if state != pb::RunState::Succeeded {
                bail!("the cached run ended {state:?}");
            }
            let again = first.sim.stats.finished.load(Ordering::Relaxed) - ran;
            if again != 0 {
                bail!("{again} tasks of the cached run reached an agent");
            }
            let tps = rate(tasks as u64, took);
            o.metric("first_run_tasks_per_s", r3(rate(tasks as u64, first.took)))
                .metric("cached_submit_s", r3(submit_took.as_secs_f64()))
                .metric("cached_total_ms", r3(took.as_secs_f64() * 1000.0))
                .metric("cached_tasks_per_s", r3(tps));
            o.summary = format!(
                "cached run: {} tasks/s ({} ms, submit {} ms); first run {} tasks/s",
                fmt_num(tps),
                fmt_num(took.as_secs_f64() * 1000.0),
                fmt_num(submit_took.as_secs_f64() * 1000.0),
                fmt_num(rate(tasks as u64, first.took))
            );
            o.targets
                .push(Target::at_least("cached tasks/s", tps, 10_000.0));
            let mut first = first;
            first.sim.stop().await;
            first.cluster.stop_scheduler().await;
            Ok(())
        },
    )
    .await
}

/// A large fan-out/fan-in DAG on simulated agents: submit time, completion
/// time, scheduler peak RSS.
pub async fn scale(s: &Settings, about: usize, width: usize) -> Outcome {
    let (yaml, tasks) = specs::fan_dag(about, width);
    let mut o = Outcome::new("scale-dag", true);
    o.param("tasks", tasks)
        .param("fan_width", width)
        .param("spec_bytes", yaml.len())
        .param("simulated_agents", s.sim_agents);
    guarded(
        o,
        &[
            ("submit s", "<=", 2.0),
            ("scheduler peak RSS MiB", "<=", 1024.0),
        ],
        async |o: &mut Outcome| {
            let c = Cluster::start(&s.bins, &s.env, s.nats_sync_always).await?;
            let sim = Simulator::start(s.sim(&c, s.sim_agents, Duration::from_secs(2))).await?;
            c.wait_agents(s.sim_agents, Duration::from_secs(30)).await?;
            let pid = c.scheduler_pid()?;
            let meter = CpuMeter::start(pid)?;
            let mut breakdown = Breakdown::start(&c).await;
            let t = Instant::now();
            let peak = |o: &mut Outcome| {
                let peak = procstat::memory(pid).map(|m| m.1).unwrap_or(0);
                o.targets.push(Target::at_most(
                    "scheduler peak RSS MiB",
                    peak as f64 / MIB,
                    GIB as f64 / MIB,
                ));
            };
            // A refused DAG meets neither target (`guarded` marks both
            // missed): the RSS of a scheduler that holds nothing says nothing.
            let (run_id, submit_took) =
                submit_or_report(&c, yaml, o, pid, &meter, &mut breakdown).await?;
            o.metric("submit_s", r3(submit_took.as_secs_f64()));
            o.targets
                .push(Target::at_most("submit s", submit_took.as_secs_f64(), 2.0));
            let finished = sim.wait_finished(tasks as u64, s.timeout).await;
            scheduler_usage(o, pid, &meter).await;
            breakdown.report(o).await;
            peak(o);
            let took = succeeded(&c, &sim, finished, tasks, &run_id, s.timeout, t).await?;
            o.metric("completion_s", r3(took.as_secs_f64()))
                .metric("tasks_per_s", r3(rate(tasks as u64, took)));
            o.summary = format!(
                "submit {} s, done in {} s",
                fmt_num(submit_took.as_secs_f64()),
                fmt_num(took.as_secs_f64())
            );
            sim.stop().await;
            Ok(())
        },
    )
    .await
    .with_rss_summary()
}

/// Many simulated agents heartbeating every 2 s, no work: the scheduler's CPU.
pub async fn fleet(s: &Settings, agents: usize, window: Duration) -> Outcome {
    let mut o = Outcome::new("fleet-heartbeats", true);
    o.param("simulated_agents", agents)
        .param("heartbeat_interval_s", 2)
        .param("window_s", window.as_secs_f64());
    guarded(
        o,
        &[("scheduler cores", "<=", 0.5)],
        async |o: &mut Outcome| {
            let c = Cluster::start(&s.bins, &s.env, s.nats_sync_always).await?;
            let sim = Simulator::start(s.sim(&c, agents, Duration::from_secs(2))).await?;
            let t = Instant::now();
            c.wait_agents(agents, Duration::from_secs(120)).await?;
            o.metric("all_registered_s", r3(t.elapsed().as_secs_f64()));
            // Registration writes one etcd record per agent: let it settle.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pid = c.scheduler_pid()?;
            let meter = CpuMeter::start(pid)?;
            let mut breakdown = Breakdown::start(&c).await;
            let before = sim.stats.heartbeats.load(Ordering::Relaxed);
            tokio::time::sleep(window).await;
            let sent = sim.stats.heartbeats.load(Ordering::Relaxed) - before;
            let (cores, _) = meter.cores()?;
            scheduler_usage(o, pid, &meter).await;
            breakdown.report(o).await;
            o.metric("heartbeats_per_s", r3(rate(sent, window)));
            o.summary = format!(
                "scheduler {} cores at {} heartbeats/s",
                fmt_num(cores),
                fmt_num(rate(sent, window))
            );
            o.targets
                .push(Target::at_most("scheduler cores", cores, 0.5));
            sim.stop().await;
            Ok(())
        },
    )
    .await
}

trait RssSummary {
    fn with_rss_summary(self) -> Self;
}

impl RssSummary for Outcome {
    /// Adds the peak RSS to the table line (it matters even when submit failed).
    fn with_rss_summary(mut self) -> Self {
        if let Some(p) = self
            .metrics
            .get("scheduler_peak_rss_mib")
            .and_then(|v| v.as_f64())
        {
            let line = format!("scheduler peak RSS {} MiB", fmt_num(p));
            self.summary = if self.summary.is_empty() {
                line
            } else {
                format!("{}, {line}", self.summary)
            };
        }
        self
    }
}

/// The floors as an outcome row of their own.
pub fn floors_outcome(f: &Result<Floors>, concurrency: usize) -> Outcome {
    let mut o = Outcome::new("floors", false);
    o.param("spawn_concurrency", concurrency);
    match f {
        Ok(f) => {
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(f) {
                o.metrics = m;
            }
            o.summary = format!(
                "etcd put p50 {} ms, txn {} keys/s; NATS rtt p50 {} ms; JetStream ack p50 {} ms, {} msg/s; spawn p50 {} ms, {} /s at {}",
                fmt_num(f.etcd_put.p50_ms),
                fmt_num(f.etcd_txn_keys_per_s),
                fmt_num(f.nats_rtt.p50_ms),
                fmt_num(f.js_publish.p50_ms),
                fmt_num(f.js_publish_per_s),
                fmt_num(f.spawn.p50_ms),
                fmt_num(f.spawn_per_s),
                f.spawn_concurrency
            );
        }
        Err(e) => o.fail(format!("{e:#}")),
    }
    o
}

/// Which throughput scenario the tracing overhead is measured on.
#[derive(Copy, Clone, Debug)]
pub enum Path {
    /// Simulated agents: the scheduler exports every attempt span.
    Simulated,
    /// Real agents: the scheduler and the agents export (fetch, execute, upload spans).
    Real,
}

/// Throughput with trace export off and on (to a span-counting OTLP
/// receiver), alternating off/on `rounds` times, the order reversed every
/// other round (off, on, on, off, ...) so neither side always runs first on
/// a machine that drifts; the best of each side, as noise on a shared
/// machine only ever slows a run down.
pub async fn tracing_overhead(s: &Settings, path: Path, tasks: usize, rounds: usize) -> Outcome {
    let mut o = Outcome::new(
        &format!("tracing-overhead-{}", format!("{path:?}").to_lowercase()),
        matches!(path, Path::Simulated),
    );
    o.param("tasks", tasks).param("rounds", rounds);
    guarded(
        o,
        &[("throughput on ÷ off", ">=", 0.9)],
        async |o: &mut Outcome| {
            let sink = crate::otlp::Sink::start().await?;
            let on = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), sink.url.clone()),
                // Export sooner than the SDK's 5 s default, so the spans of a
                // short run are sent (and paid for) while it is measured.
                ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
            ];
            let (mut best_off, mut best_on) = (0.0f64, 0.0f64);
            // CPU of every measured process per task, in total (steadier than
            // throughput) and by process (where the difference is).
            let mut cpu = SideCpu::default();
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for export in order {
                    let mut run = s.clone();
                    if export {
                        run.env.extend(on.iter().cloned());
                    }
                    let r = match path {
                        Path::Simulated => sim_throughput(&run, tasks).await,
                        Path::Real => real_throughput(&run, tasks, None).await,
                    };
                    if let Some(e) = r.error {
                        bail!("export {}: {e}", if export { "on" } else { "off" });
                    }
                    let tps = r
                        .metrics
                        .get("tasks_per_s")
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(0.0);
                    let best = if export { &mut best_on } else { &mut best_off };
                    *best = best.max(tps);
                    cpu.record(export, &r.metrics, tasks);
                }
            }
            let spans = sink.spans();
            if spans == 0 {
                bail!("no span reached the OTLP receiver: export was not on");
            }
            let ratio = best_on / best_off;
            o.metric("tasks_per_s_off", r3(best_off))
                .metric("tasks_per_s_on", r3(best_on))
                .metric("spans_received", spans)
                .metric("ratio_on_off", r3(ratio));
            o.summary = format!(
                "off {} tasks/s, on {} tasks/s ({} spans exported): on ÷ off = {}",
                fmt_num(best_off),
                fmt_num(best_on),
                spans,
                fmt_num(ratio)
            );
            cpu.report(o);
            o.targets
                .push(Target::at_least("throughput on ÷ off", ratio, 0.9));
            Ok(())
        },
    )
    .await
}

/// Real throughput and hop latency with everything secured (TLS on the
/// API, etcd and NATS; tokens; NATS permissions; etcd auth) and without,
/// alternating `rounds` times in the tracing overhead's order; the best of
/// each side.
pub async fn security_overhead(
    s: &Settings,
    tasks: usize,
    hop_tasks: usize,
    rounds: usize,
) -> Outcome {
    let mut o = Outcome::new("security-overhead", false);
    o.param("tasks", tasks)
        .param("hop_tasks", hop_tasks)
        .param("rounds", rounds);
    guarded(
        o,
        &[
            ("throughput on ÷ off", ">=", 0.95),
            ("hop cycle off ÷ on", ">=", 0.95),
        ],
        async |o: &mut Outcome| {
            // Where a secured hop's time goes: each request it makes, alone.
            let dir = tempfile::tempdir()?;
            let transport = crate::secure::transport_floors(dir.path(), 1_000).await?;
            let (mut tps, mut hop_p50) = ([0.0f64; 2], [f64::MAX; 2]);
            let mut cycle = [f64::MAX; 2];
            let mut cpu = SideCpu::default();
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for on in order {
                    let side = usize::from(on);
                    let run = Settings {
                        secure: on,
                        ..s.clone()
                    };
                    let r = real_throughput(&run, tasks, None).await;
                    if let Some(e) = r.error {
                        bail!("real, secured {on}: {e}");
                    }
                    let t = r
                        .metrics
                        .get("tasks_per_s")
                        .and_then(serde_json::Value::as_f64);
                    tps[side] = tps[side].max(t.unwrap_or(0.0));
                    cpu.record(on, &r.metrics, tasks);
                    let h = hop(&run, hop_tasks, None).await;
                    if let Some(e) = h.error {
                        bail!("hop, secured {on}: {e}");
                    }
                    let p50 = h
                        .metrics
                        .get("hop")
                        .and_then(|v| v.get("p50_ms"))
                        .and_then(serde_json::Value::as_f64);
                    hop_p50[side] = hop_p50[side].min(p50.unwrap_or(f64::MAX));
                    let c = h
                        .metrics
                        .get("cycle_ms_per_task")
                        .and_then(serde_json::Value::as_f64);
                    cycle[side] = cycle[side].min(c.unwrap_or(f64::MAX));
                }
            }
            let tput = tps[1] / tps[0];
            // Per-hop p50 is whole milliseconds (the agents' timestamps);
            // the chain's finish-to-finish time per task resolves 5%.
            let latency = cycle[0] / cycle[1];
            o.metric("tasks_per_s_off", r3(tps[0]))
                .metric("tasks_per_s_on", r3(tps[1]))
                .metric("hop_p50_ms_off", r3(hop_p50[0]))
                .metric("hop_p50_ms_on", r3(hop_p50[1]))
                .metric("ratio_throughput_on_off", r3(tput))
                .metric("hop_cycle_ms_off", r3(cycle[0]))
                .metric("hop_cycle_ms_on", r3(cycle[1]))
                .metric("ratio_hop_off_on", r3(latency));
            o.summary = format!(
                "real {} → {} tasks/s secured (on ÷ off = {}); hop cycle {} → {} ms/task (off ÷ on = {}), hop p50 {} → {} ms",
                fmt_num(tps[0]),
                fmt_num(tps[1]),
                fmt_num(tput),
                fmt_num(cycle[0]),
                fmt_num(cycle[1]),
                fmt_num(latency),
                fmt_num(hop_p50[0]),
                fmt_num(hop_p50[1])
            );
            report_transport(o, &transport);
            cpu.report(o);
            o.targets
                .push(Target::at_least("throughput on ÷ off", tput, 0.95));
            o.targets
                .push(Target::at_least("hop cycle off ÷ on", latency, 0.95));
            Ok(())
        },
    )
    .await
}

/// Each request's median on every side, in the metrics; in the summary,
/// open → TLS → authentication → both.
fn report_transport(o: &mut Outcome, sides: &crate::secure::TransportSides) {
    use crate::floors::Transport;
    type P50 = fn(&Transport) -> f64;
    let requests: [(&str, &str, P50); 5] = [
        ("etcd_put", "etcd put", |t| t.etcd_put.p50_ms),
        ("etcd_hop_txn", "etcd txn of 4 keys", |t| {
            t.etcd_hop_txn.p50_ms
        }),
        ("etcd_txn", "etcd txn of 128 keys", |t| t.etcd_txn.p50_ms),
        ("nats_rtt", "NATS request", |t| t.nats_rtt.p50_ms),
        ("js_publish", "JetStream publish", |t| t.js_publish.p50_ms),
    ];
    let mut shown = Vec::new();
    for (key, name, p50) in requests {
        let values: Vec<String> = sides.iter().map(|t| format!("{:.3}", p50(t))).collect();
        for (side, t) in Transport::SIDES.iter().zip(sides) {
            o.metric(&format!("{key}_p50_ms_{side}"), r3(p50(t)));
        }
        shown.push(format!("{name} {}", values.join(" / ")));
    }
    o.summary += &format!(
        "; per request, p50 ms open / TLS / auth / both: {}",
        shown.join(", ")
    );
}

/// Milliseconds of CPU per task of one kind of process (`None`: all
/// measured processes together), from a throughput run's `cpu_cores` and `total_s`.
/// CPU per task of every measured process, in the metrics and the
/// summary: on a shared VM it moves much less from run to run than
/// throughput does, so it is what tells two runs apart.
fn report_cpu_per_task(o: &mut Outcome, tasks: usize) {
    if let Some(ms) = cpu_ms_per_task(&o.metrics, tasks, None) {
        o.metric("cpu_ms_per_task", r3(ms));
        o.summary += &format!("; CPU per task {} ms", fmt_num(ms));
    }
}

/// CPU per task of runs on two sides (off and on), in total and by
/// process; reported as medians.
#[derive(Default)]
struct SideCpu {
    total: [Vec<f64>; 2],
    by_process: std::collections::BTreeMap<(bool, String), Vec<f64>>,
}

impl SideCpu {
    fn record(
        &mut self,
        on: bool,
        metrics: &serde_json::Map<String, serde_json::Value>,
        tasks: usize,
    ) {
        if let Some(ms) = cpu_ms_per_task(metrics, tasks, None) {
            self.total[usize::from(on)].push(ms);
        }
        let names = metrics.get("cpu_cores").and_then(|c| c.as_object());
        for name in names.into_iter().flat_map(|c| c.keys()) {
            if let Some(ms) = cpu_ms_per_task(metrics, tasks, Some(name)) {
                self.by_process
                    .entry((on, name.clone()))
                    .or_default()
                    .push(ms);
            }
        }
    }

    fn report(&mut self, o: &mut Outcome) {
        for (on, key) in [
            (false, "cpu_ms_per_task_by_process_off"),
            (true, "cpu_ms_per_task_by_process_on"),
        ] {
            let mut m = serde_json::Map::new();
            for ((_, name), v) in self
                .by_process
                .iter_mut()
                .filter(|((side, _), _)| *side == on)
            {
                m.insert(name.clone(), serde_json::json!(median(v).map(r3)));
            }
            o.metric(key, m);
        }
        let [off, on] = &mut self.total;
        if let (Some(off), Some(on)) = (median(off), median(on)) {
            o.metric("cpu_ms_per_task_off", r3(off))
                .metric("cpu_ms_per_task_on", r3(on));
            o.summary += &format!(
                "; CPU per task (median) off {} ms, on {} ms",
                fmt_num(off),
                fmt_num(on)
            );
        }
    }
}

fn cpu_ms_per_task(
    metrics: &serde_json::Map<String, serde_json::Value>,
    tasks: usize,
    process: Option<&str>,
) -> Option<f64> {
    let total_s = metrics.get("total_s")?.as_f64()?;
    let cores: f64 = metrics
        .get("cpu_cores")?
        .as_object()?
        .iter()
        .filter(|(name, _)| process.is_none_or(|p| p == name.as_str()))
        .filter_map(|(_, c)| c.as_f64())
        .sum();
    (tasks > 0).then(|| cores * total_s / tasks as f64 * 1000.0)
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}
