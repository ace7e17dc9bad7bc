//! The scheduler on clustered etcd and NATS: a member dies mid-run (the etcd
//! leader; the NATS server leading the R3 events stream, by SIGKILL) and the
//! run still completes with every task run once, no attempt twice.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{check_exactly_once, ledger_spec, Cluster};
use drover_api::{naming, pb};
use drover_devcluster::clusters::{EtcdCluster, NatsCluster};
use drover_devcluster::Server;

/// Tasks per run: enough that the kill lands mid-run.
const TASKS: usize = 200;
/// Lines in the ledger (tasks run) before the member is killed.
const KILL_AFTER: usize = 40;
const LONG: Duration = Duration::from_secs(150);

/// Two agents on `c`, then a run of [`TASKS`] ledger tasks; returns its id
/// once [`KILL_AFTER`] of them have run.
async fn start_run(c: &mut Cluster, ledger: &Path) -> String {
    c.add_agent("agent-1").await;
    c.add_agent("agent-2").await;
    let run = c.submit(&ledger_spec(TASKS, "0.1", ledger)).await.unwrap();
    let deadline = Instant::now() + LONG;
    while lines(ledger) < KILL_AFTER {
        assert!(Instant::now() < deadline, "tasks did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run
}

fn lines(ledger: &Path) -> usize {
    std::fs::read_to_string(ledger).map_or(0, |t| t.lines().count())
}

/// Waits for `run` to finish; the scheduler may briefly refuse (leadership
/// lost and regained) while a member dies.
async fn wait_done(c: &Cluster, run: &str) -> pb::Run {
    let deadline = Instant::now() + LONG;
    let mut last = None;
    loop {
        if let Ok(Ok(mut client)) =
            tokio::time::timeout(Duration::from_secs(5), c.try_client()).await
        {
            let got = client
                .get_run(pb::GetRunRequest { run_id: run.into() })
                .await;
            if let Ok(r) = got.map(tonic::Response::into_inner) {
                if !matches!(r.state(), pb::RunState::Running | pb::RunState::Cancelling) {
                    return r;
                }
                last = Some(r);
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run} not done after {LONG:?}; tasks not succeeded as last answered: {}\nscheduler {}\nscheduler log:\n{}",
            unfinished(last.as_ref()),
            c.scheduler_state(),
            c.scheduler_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each task of `run` not Succeeded, with its attempts' states and agents.
fn unfinished(run: Option<&pb::Run>) -> String {
    let Some(run) = run else {
        return "(no answer)".into();
    };
    let tasks: Vec<String> = run
        .tasks
        .iter()
        .filter(|t| t.state() != pb::TaskState::Succeeded)
        .map(|t| {
            let attempts: Vec<String> = t
                .attempts
                .iter()
                .map(|a| format!("#{} {:?} on {}", a.number, a.state(), a.agent_id))
                .collect();
            format!(
                "{} {:?} [{}] {}",
                t.name,
                t.state(),
                attempts.join(", "),
                t.message
            )
        })
        .collect();
    format!(
        "{} of {}: {}",
        tasks.len(),
        run.tasks.len(),
        tasks.join("; ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_dies_mid_run_and_every_task_runs_once() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    let nats = Server::nats(None).await.unwrap();
    let mut c = Cluster::on_members(&etcd.urls(), &nats.url, &[]).await;
    let ledger = c.scratch.join("ledger");
    let run = start_run(&mut c, &ledger).await;

    let leader = etcd.leader().await.unwrap();
    etcd.kill(leader).await.unwrap();
    let after = etcd.leader().await.unwrap();
    assert_ne!(after, leader);
    assert!(
        lines(&ledger) < TASKS,
        "the run ended before the kill: make it longer"
    );

    let done = wait_done(&c, &run).await;
    check_exactly_once(&done, &ledger, TASKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_leader_is_killed_mid_run_and_nothing_is_lost_or_run_twice() {
    let etcd = Server::etcd(None).await.unwrap();
    let mut nats = NatsCluster::start(3).await.unwrap();
    let mut c = Cluster::on_members(&etcd.url, &nats.urls(), &["--events-replicas", "3"]).await;
    let stream = naming::events_stream(&c.nats_prefix);
    let ledger = c.scratch.join("ledger");
    let run = start_run(&mut c, &ledger).await;

    // The scheduler made the stream with three copies.
    let client = async_nats::connect(nats.urls().split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let info = async_nats::jetstream::new(client)
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);

    let leader = nats.stream_leader(&stream).await.unwrap();
    nats.kill(leader).await.unwrap();
    assert!(
        lines(&ledger) < TASKS,
        "the run ended before the kill: make it longer"
    );
    let after = nats.stream_leader(&stream).await.unwrap();
    assert_ne!(after, leader);

    let done = wait_done(&c, &run).await;
    check_exactly_once(&done, &ledger, TASKS);
}
