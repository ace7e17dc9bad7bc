//! The scheduler on clustered etcd and NATS: a member dies mid-run (the etcd
//! leader; the NATS server leading the R3 events stream, by SIGKILL) and the
//! run still completes with every task run once, no attempt twice. Also
//! what such a death does to the scheduler's own connection: events
//! delivered to it and lost on the wire are read back, never acked past.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::relay::Relay;
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
    let run = submit(c, &ledger_spec(TASKS, "0.1", ledger)).await;
    let deadline = Instant::now() + LONG;
    while lines(ledger) < KILL_AFTER {
        assert!(Instant::now() < deadline, "tasks did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run
}

/// Submits `yaml`, again while the scheduler answers that it is (re)gaining
/// leadership (a loaded host can cost it its first lease).
async fn submit(c: &Cluster, yaml: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        match c.submit(yaml).await {
            Ok(run) => return run,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("submit: {e}"),
        }
    }
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

/// Tasks that write `start <task>` to the ledger, wait until the file
/// `go-<name>` exists in `dir`, then write `end <task>`: `quick` instances
/// of `quick`, and one `slow`.
fn gated_spec(dir: &Path, quick: usize) -> String {
    let values: Vec<String> = (0..quick).map(|i| format!("\"{i}\"")).collect();
    let cmd = |gate: &str| {
        format!(
            "[\"sh\", \"-c\", \"echo start $DROVER_TASK >> {d}/ledger; while [ ! -e {d}/go-{gate} ]; do sleep 0.05; done; echo end $DROVER_TASK >> {d}/ledger\"]",
            d = dir.display()
        )
    };
    format!(
        "name: wire\ntasks:\n  - name: quick\n    matrix: {{i: [{}]}}\n    resources: {{cpu: 50m}}\n    command: {}\n  - name: slow\n    resources: {{cpu: 50m}}\n    command: {}\n",
        values.join(", "),
        cmd("quick"),
        cmd("slow")
    )
}

fn count(ledger: &Path, word: &str) -> usize {
    std::fs::read_to_string(ledger).map_or(0, |t| t.lines().filter(|l| l.starts_with(word)).count())
}

/// The scheduler's connection to NATS dies with the quick tasks' success
/// events on the wire to it (delivered by the consumer, never received);
/// it reconnects, and the slow task's success comes after them. Acking
/// that one acks every earlier event: the lost ones must be read back from
/// the stream first — or the run waits forever for successes it never
/// heard of. They come back at once, not after the consumer's 30 s ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_on_the_wire_to_the_scheduler_are_read_back_not_acked_past() {
    const QUICK: usize = 6;
    let mut c = Cluster::start().await;
    let relay = Relay::start(&c.nats.url).await;
    c.kill_scheduler().await;
    c.route_scheduler_nats(&relay.url);
    c.start_scheduler().await;
    let dir = c.scratch.clone();
    let ledger = dir.join("ledger");
    let run = submit(&c, &gated_spec(&dir, QUICK)).await;
    // Every assignment answered and every start heard, through the relay.
    c.wait_for(&run, "every task running", |r| {
        r.tasks.iter().all(|t| t.state() == pb::TaskState::Running)
    })
    .await;
    // From now on the scheduler hears nothing: the quick tasks end.
    relay.freeze(true);
    std::fs::write(dir.join("go-quick"), "").unwrap();
    let deadline = Instant::now() + LONG;
    while count(&ledger, "end") < QUICK {
        assert!(Instant::now() < deadline, "quick tasks did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Their events reach the stream, and the consumer sends them on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.cut();
    let cut_at = Instant::now();
    std::fs::write(dir.join("go-slow"), "").unwrap();

    let done = wait_done(&c, &run).await;
    assert_eq!(done.state(), pb::RunState::Succeeded, "{:?}", done.message);
    assert!(
        cut_at.elapsed() < Duration::from_secs(20),
        "the lost events came back only after {:?} (redelivered, not read back)",
        cut_at.elapsed()
    );
    assert!(
        c.scheduler_log().contains("events missed in delivery"),
        "no gap was seen: the events were not lost on the wire, so this tested nothing"
    );
    for task in &done.tasks {
        assert_eq!(task.attempts.len(), 1, "{task:?}");
    }
}
