//! Several schedulers on one etcd prefix: one leads, the others stand by
//! and take over when it dies, is paused past its lease, or is stopped.
//! What agents received is checked, not only the final state.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{check_exactly_once, leads, ledger_spec, Cluster};
use drover_api::pb::{self, RunState};
use drover_devcluster::free_port;
use futures::StreamExt;
use prost::Message;
use tokio::process::Child;
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(120);

/// One scheduler process of the test.
struct Sched {
    id: String,
    server: String,
    child: Child,
    log: PathBuf,
}

impl Sched {
    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a plain syscall on a child we have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }
}

/// The cluster's first scheduler (`scheduler-1`, leading) plus `standbys` more.
async fn schedulers(c: &mut Cluster, standbys: usize) -> Vec<Sched> {
    let first = Sched {
        id: "scheduler-1".into(),
        server: c.server.clone(),
        child: c.take_scheduler().expect("the cluster's scheduler"),
        log: c.dir().join("scheduler.log"),
    };
    let mut all = vec![first];
    for n in 2..=standbys + 1 {
        let port = free_port().unwrap();
        let id = format!("scheduler-{n}");
        let log = c.dir().join(format!("{id}.log"));
        let child = c.spawn_scheduler(&id, port, &log);
        all.push(Sched {
            id,
            server: format!("http://127.0.0.1:{port}"),
            child,
            log,
        });
    }
    for s in &all[1..] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&s.server).await.is_none() {
            assert!(Instant::now() < deadline, "{} did not start", s.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    all
}

async fn status(server: &str) -> Option<pb::ClusterStatus> {
    let channel = Channel::from_shared(server.to_owned())
        .unwrap()
        .connect()
        .await
        .ok()?;
    let mut client = pb::cluster_client::ClusterClient::new(channel);
    let r = client.get_cluster_status(pb::GetClusterStatusRequest {});
    Some(r.await.ok()?.into_inner())
}

/// The leader as the live schedulers see it, once one leads.
async fn leader<'a>(all: &'a [Sched], not: &[&str]) -> &'a Sched {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for s in all.iter().filter(|s| !not.contains(&s.id.as_str())) {
            if leads(&s.server).await {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "no leader among the schedulers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(server: &str) -> pb::scheduler_client::SchedulerClient<Channel> {
    pb::scheduler_client::SchedulerClient::connect(server.to_owned())
        .await
        .unwrap()
}

/// Waits for `run` to finish, asking whichever scheduler leads.
async fn wait_done(all: &[Sched], dead: &[&str], run: &str) -> pb::Run {
    let deadline = Instant::now() + LONG;
    loop {
        let s = leader(all, dead).await;
        if let Ok(r) = client(&s.server)
            .await
            .get_run(pb::GetRunRequest { run_id: run.into() })
            .await
        {
            let r = r.into_inner();
            if !matches!(r.state(), RunState::Running | RunState::Cancelling) {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "run {run} not done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refuses_naming_the_leader_and_every_scheduler_reports_the_cluster() {
    let mut c = Cluster::without_agents().await;
    let all = schedulers(&mut c, 2).await;
    let standby = &all[1];

    let err = client(&standby.server)
        .await
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.message(),
        format!("not the leader; leader is scheduler-1 at {}", all[0].server)
    );
    let address = err.metadata().get("drover-leader").unwrap();
    assert_eq!(address.to_str().unwrap(), all[0].server);
    assert!(!leads(&standby.server).await, "a standby reports SERVING");

    let st = status(&standby.server).await.unwrap();
    assert_eq!(st.leader_id, "scheduler-1");
    assert_eq!(st.answered_by, "scheduler-2");
    let ids: Vec<&str> = st.schedulers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["scheduler-1", "scheduler-2", "scheduler-3"]);
    let lead = &st.schedulers[0];
    assert!(
        lead.leader_since_ms > 0 && lead.leader_revision > 0,
        "{lead:?}"
    );
    assert!(st.schedulers[1..].iter().all(|s| s.leader_since_ms == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_twice_mid_run_loses_nothing_and_runs_nothing_twice() {
    const N: usize = 1000;
    let mut c = Cluster::without_agents().await;
    c.add_agent("agent-1").await;
    c.add_agent("agent-2").await;
    let mut all = schedulers(&mut c, 2).await;
    let ledger = c.scratch.join("ledger");
    let run = client(&all[0].server)
        .await
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: ledger_spec(N, "0.1", &ledger),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;

    let mut dead: Vec<String> = Vec::new();
    for _ in 0..2 {
        // Kill it once it has made progress (the ledger grew since the last kill).
        let before = lines(&ledger);
        let deadline = Instant::now() + LONG;
        while lines(&ledger) < before + 50 {
            assert!(Instant::now() < deadline, "no progress after a failover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dead_ids: Vec<&str> = dead.iter().map(String::as_str).collect();
        let id = leader(&all, &dead_ids).await.id.clone();
        let s = all.iter_mut().find(|s| s.id == id).unwrap();
        s.child.kill().await.unwrap();
        dead.push(id);
    }
    assert!(lines(&ledger) < N, "the run ended before the second kill");
    let dead_ids: Vec<&str> = dead.iter().map(String::as_str).collect();
    let done = wait_done(&all, &dead_ids, &run).await;
    check_exactly_once(&done, &ledger, N);
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_steps_down_without_sending_anything() {
    const N: usize = 300;
    let mut c = Cluster::without_agents().await;
    c.add_agent("agent-1").await;
    let all = schedulers(&mut c, 1).await;
    // Every assignment batch any scheduler sends, with when it arrived.
    let nats = async_nats::connect(c.nats.url.as_str()).await.unwrap();
    let mut sub = nats
        .subscribe(format!("{}.agent.*.assigns", c.nats_prefix))
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, i64)>::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let batch = pb::AssignBatch::decode(m.payload).unwrap();
                seen.lock()
                    .unwrap()
                    .push((Instant::now(), batch.leader_revision));
            }
        })
    };
    let first = status(&all[0].server).await.unwrap();
    let paused_term = first.schedulers[0].leader_revision;
    let ledger = c.scratch.join("ledger");
    let run = client(&all[0].server)
        .await
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: ledger_spec(N, "0.05", &ledger),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    while lines(&ledger) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all[0].signal(libc::SIGSTOP);
    let next = leader(&all, &["scheduler-1"]).await;
    assert_eq!(next.id, "scheduler-2");
    // The new leader assigns under its own term before the old one wakes.
    let deadline = Instant::now() + LONG;
    while !seen.lock().unwrap().iter().any(|(_, t)| *t > paused_term) {
        assert!(Instant::now() < deadline, "the new leader assigned nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let woke = Instant::now();
    all[0].signal(libc::SIGCONT);
    let done = wait_done(&all, &["scheduler-1"], &run).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    recorder.abort();

    let late = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, term)| *at >= woke && *term <= paused_term)
        .count();
    assert_eq!(late, 0, "batches the paused leader sent after waking");
    assert!(
        !leads(&all[0].server).await,
        "the paused leader still serves"
    );
    let st = status(&all[0].server).await.unwrap();
    assert_eq!(st.leader_id, "scheduler-2");
    let log = std::fs::read_to_string(&all[0].log).unwrap();
    assert!(log.contains("standing by"), "{log}");
    check_exactly_once(&done, &ledger, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over_within_a_second() {
    let mut c = Cluster::without_agents().await;
    let all = schedulers(&mut c, 1).await;
    let started = Instant::now();
    all[0].signal(libc::SIGTERM);
    while !leads(&all[1].server).await {
        assert!(started.elapsed() < Duration::from_secs(10), "no takeover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(1), "handover took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_trigger_fires_each_second_once_across_a_paused_leader_and_a_killed_one() {
    use pb::trigger_settings::Source;
    let mut c = Cluster::without_agents().await;
    c.add_agent("agent-1").await;
    let mut all = schedulers(&mut c, 1).await;
    let ledger = c.scratch.join("ticks");
    let spec = format!(
        "name: tick\nparams: {{scheduled_time: \"\"}}\ntasks:\n  - name: t\n    command: [\"sh\", \"-c\", \"echo {{{{params.scheduled_time}}}} >> {}\"]\n",
        ledger.display()
    );
    let triggers = |server: String| async move {
        pb::triggers_client::TriggersClient::connect(server)
            .await
            .unwrap()
    };
    triggers(all[0].server.clone())
        .await
        .create_trigger(pb::TriggerSettings {
            name: "tick".into(),
            spec_yaml: spec,
            source: Some(Source::Cron(pb::CronSource {
                expression: "* * * * * *".into(),
                timezone: String::new(),
                catch_up: pb::CatchUp::All as i32,
            })),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Paused past its lease: the standby fires meanwhile; the old leader,
    // woken, must not fire the seconds it believes it still owes.
    all[0].signal(libc::SIGSTOP);
    assert_eq!(leader(&all, &["scheduler-1"]).await.id, "scheduler-2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    all[0].signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    all[1].child.kill().await.unwrap();
    let back = leader(&all, &["scheduler-2"]).await;
    assert_eq!(back.id, "scheduler-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    triggers(back.server.clone())
        .await
        .pause_trigger(pb::TriggerRef {
            name: "tick".into(),
        })
        .await
        .unwrap();

    let mut seconds = std::collections::BTreeMap::<String, usize>::new();
    for run in c.runs_named("tick").await {
        let run = wait_done(&all, &["scheduler-2"], &run.id).await;
        assert_eq!(run.state(), RunState::Succeeded, "{run:?}");
        *seconds
            .entry(run.params["scheduled_time"].clone())
            .or_default() += 1;
    }
    let twice: Vec<_> = seconds.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seconds fired twice: {twice:?}");
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
    let fired: Vec<i64> = seconds.keys().map(|s| at(s)).collect();
    let (first, last) = (fired[0], fired[fired.len() - 1]);
    assert_eq!(
        fired.len() as i64,
        last - first + 1,
        "seconds lost: {fired:?}"
    );
    assert!(fired.len() >= 10, "{fired:?}");
    let ran = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(ran.lines().count(), fired.len(), "a run ran twice:\n{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_term_sweeps_orphan_specs_but_not_those_of_submits_racing_its_start() {
    let mut c = Cluster::without_agents().await;
    c.add_agent("agent-1").await;
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None)
        .await
        .unwrap();
    // A submit cut short between its spec and its run record.
    let ghost = format!("{}/specs/ghost-1/000000", c.prefix);
    etcd.put(ghost.as_str(), "x", None).await.unwrap();
    c.kill_scheduler().await;
    // Submits racing the term's start: each retries until the new
    // scheduler takes it, then sends a few more at once.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let server = c.server.clone();
            tokio::spawn(async move {
                let spec = "name: racer\ntasks:\n  - name: a\n    command: [\"true\"]\n";
                let mut ids = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while ids.len() < 5 {
                    assert!(Instant::now() < deadline, "no scheduler took a submit");
                    let Ok(mut client) =
                        pb::scheduler_client::SchedulerClient::connect(server.clone()).await
                    else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let req = pb::SubmitRunRequest {
                        spec_yaml: spec.into(),
                        ..Default::default()
                    };
                    match client.submit_run(req).await {
                        Ok(r) => ids.push(r.into_inner().run_id),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                ids
            })
        })
        .collect();
    c.start_scheduler().await;
    let mut runs = Vec::new();
    for r in racers {
        runs.extend(r.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcd
        .get(ghost.as_str(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the orphan spec was not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new process reads every spec from etcd, not from its memory.
    c.kill_scheduler().await;
    c.start_scheduler().await;
    for run in runs {
        let done = c.wait_done(&run, LONG).await;
        assert_eq!(done.state(), RunState::Succeeded, "{done:?}");
    }
}
