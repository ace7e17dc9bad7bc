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
