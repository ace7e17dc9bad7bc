//! Self-fencing agents: an agent cut off from NATS past the scheduler's
//! agent timeout stops its own attempts before they run elsewhere, so a
//! task's side effect happens once — through real etcd, NATS, the scheduler
//! binary, and agents reaching NATS through a relay the test can freeze
//! ([`common::relay`]).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::{task, Cluster};
use drover_api::pb::{AgentState, AttemptState, RunState, TaskState};

const LONG: Duration = Duration::from_secs(90);

/// A task that records its start and its end in `marker`, and whether a
/// copy on another agent still ran when it started (`overlap`). It ignores
/// SIGTERM: only the SIGKILL after the kill grace stops it.
fn side_effect_spec(name: &str, scratch: &Path, secs: u32, extra: &str) -> String {
    let marker = scratch.join("marker");
    let pids = scratch.display();
    format!(
        r#"name: {name}
tasks:
  - name: work
{extra}    command: ["sh", "-c", "trap '' TERM; for f in {pids}/pid-*; do [ -f \"$f\" ] && kill -0 $(cat \"$f\") 2>/dev/null && echo overlap >> {m}; done; echo $$ > {pids}/pid-$DROVER_AGENT_ID; echo start $DROVER_AGENT_ID >> {m}; sleep {secs}; echo done $DROVER_AGENT_ID >> {m}"]
"#,
        m = marker.display(),
    )
}

fn marker(c: &Cluster) -> String {
    std::fs::read_to_string(c.scratch.join("marker")).unwrap_or_default()
}

/// Waits until `agent` is lost, then a little longer: its task must still
/// run there, with no attempt elsewhere (`on_agent_lost: wait`).
async fn lost_and_kept(c: &Cluster, id: &str, agent: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = c.agents().await;
        if agents
            .iter()
            .any(|a| a.id == agent && a.state() == AgentState::Lost)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{agent} never lost: {agents:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = c.get(id).await;
    let t = task(&run, "work");
    assert_eq!(t.state(), TaskState::Running, "{t:#?}");
    assert_eq!(t.attempts.len(), 1, "run elsewhere: {t:#?}");
}

/// The run succeeded with its one attempt on `agent`, which ran it to its end once.
async fn finished_there(c: &Cluster, id: &str, agent: &str) {
    let run = c.wait_done(id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "work");
    assert_eq!(t.attempts.len(), 1, "{t:#?}");
    assert_eq!(t.attempts[0].agent_id, agent);
    assert_eq!(t.attempts[0].state(), AttemptState::Succeeded);
    assert_eq!(marker(c), format!("start {agent}\ndone {agent}\n"));
}

/// Runs until the agent's first heartbeat ack has surely arrived (it
/// learns the timeout from it).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_agent_stops_its_copy_and_the_task_runs_once_elsewhere() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "3s"]).await;
    let relay = Relay::start(&c.nats.url).await;
    let url = relay.url.clone();
    c.add_agent_with("cut", move |o| o.nats = url).await;
    let spec = side_effect_spec("fence", &c.scratch, 8, "");
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on cut", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    settle().await;
    c.add_agent("spare").await;
    let cut_at = Instant::now();
    relay.freeze(true);

    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "work");
    assert_eq!(t.attempts.len(), 2, "{t:#?}");
    assert_eq!(t.attempts[0].agent_id, "cut");
    assert_eq!(t.attempts[0].state(), AttemptState::Lost);
    assert_eq!(t.attempts[1].agent_id, "spare");
    assert_eq!(t.attempts[1].state(), AttemptState::Succeeded);
    // Past the end the cut-off copy would have reached unfenced.
    let unfenced_end = cut_at + Duration::from_secs(9);
    tokio::time::sleep_until(unfenced_end.into()).await;
    assert_eq!(
        marker(&c),
        "start cut\nstart spare\ndone spare\n",
        "the cut-off copy ran on (or overlapped the spare's)"
    );

    // Back in contact: the agent is Ready again and reported nothing twice.
    relay.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = c.agents().await;
        let cut = agents.iter().find(|a| a.id == "cut").unwrap();
        if cut.state() == AgentState::Ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cut agent never came back: {cut:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = c.get(&id).await;
    assert_eq!(task(&run, "work").attempts.len(), 2, "{run:#?}");
    assert_eq!(run.state(), RunState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_agent_lost_wait_the_task_waits_for_its_agent_and_finishes_there() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "3s"]).await;
    let relay = Relay::start(&c.nats.url).await;
    let url = relay.url.clone();
    c.add_agent_with("cut", move |o| o.nats = url).await;
    let spec = side_effect_spec(
        "wait",
        &c.scratch,
        10,
        "    on_agent_lost: wait\n    lost_after: 1m\n",
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on cut", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    settle().await;
    c.add_agent("spare").await;
    relay.freeze(true);

    // Past the agent timeout: the agent is lost, its attempt kept.
    lost_and_kept(&c, &id, "cut").await;
    relay.freeze(false);

    finished_there(&c, &id, "cut").await;
}

/// `drover-agent` as its own process (to be stopped with SIGSTOP), built
/// next to the scheduler binary.
fn spawn_agent_process(c: &Cluster, id: &str) -> tokio::process::Child {
    let bin = Path::new(env!("CARGO_BIN_EXE_drover-scheduler")).with_file_name("drover-agent");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p drover-agent)",
        bin.display()
    );
    let work = c.dir().join("work").join(id);
    let log = std::fs::File::create(c.dir().join(format!("{id}.log"))).unwrap();
    tokio::process::Command::new(bin)
        .args([
            "--nats",
            &c.nats.url,
            "--artifacts",
            &c.artifacts,
            "--id",
            id,
        ])
        .args(["--executors", "process", "--nats-prefix", &c.nats_prefix])
        .args(["--heartbeat-interval", "200ms", "--kill-grace", "5s"])
        .arg("--work-dir")
        .arg(work)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn signal(child: &tokio::process::Child, sig: libc::c_int) {
    let pid = child.id().expect("agent exited") as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_woken_after_the_timeout_stops_its_copy_at_once() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "3s"]).await;
    let agent = spawn_agent_process(&c, "paused");
    // The copy ignores SIGTERM, and the scheduler's cancel of an attempt it
    // no longer expects comes after two heartbeats and waits the cancel
    // grace: only the agent's own fencing (grace: an eighth of the
    // timeout) kills it before it ends.
    let spec = side_effect_spec("pause", &c.scratch, 9, "");
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on paused", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    settle().await;
    c.add_agent("spare").await;
    let stopped_at = Instant::now();
    signal(&agent, libc::SIGSTOP);
    // Woken past the timeout, 1.5 s before its copy would end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(&agent, libc::SIGCONT);

    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "work");
    assert_eq!(t.attempts.len(), 2, "{t:#?}");
    assert_eq!(t.attempts[0].agent_id, "paused");
    assert_eq!(t.attempts[0].state(), AttemptState::Lost);
    assert_eq!(t.attempts[1].agent_id, "spare");
    tokio::time::sleep_until((stopped_at + Duration::from_secs(10)).into()).await;
    let log = std::fs::read_to_string(c.dir().join("paused.log")).unwrap_or_default();
    assert!(
        marker(&c).starts_with("start paused\n") && !marker(&c).contains("done paused"),
        "the paused agent's copy ran on: {}\nagent log:\n{log}",
        marker(&c)
    );
    assert!(log.contains("no contact with NATS"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_agent_lost_wait_a_frozen_agents_task_waits_for_it_and_finishes_there() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "3s"]).await;
    let agent = spawn_agent_process(&c, "frozen");
    let spec = side_effect_spec(
        "wait-frozen",
        &c.scratch,
        8,
        "    on_agent_lost: wait\n    lost_after: 1m\n",
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on frozen", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    settle().await;
    c.add_agent("spare").await;
    // The agent process stops; its task, a process of its own, runs on.
    signal(&agent, libc::SIGSTOP);
    lost_and_kept(&c, &id, "frozen").await;
    signal(&agent, libc::SIGCONT);

    finished_there(&c, &id, "frozen").await;
}
