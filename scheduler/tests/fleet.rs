//! Placement over a fleet of real agents with simulated GPUs, agent loss,
//! drain, and the fleet view — through real etcd, NATS and the scheduler binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb::{self, AgentState, AttemptState, RunState, TaskState};

const LONG: Duration = Duration::from_secs(60);

fn gpu_agent(gpus: u32, model: &str) -> impl FnOnce(&mut drover_agent::AgentOptions) {
    let model = model.to_string();
    move |o| {
        o.simulate_gpus = gpus;
        o.simulate_gpu_model = model;
    }
}

async fn wait_agents(
    c: &Cluster,
    what: &str,
    pred: impl Fn(&[pb::Agent]) -> bool,
) -> Vec<pb::Agent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = c.agents().await;
        if pred(&agents) {
            return agents;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {agents:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_tasks_never_share_a_gpu_and_see_exactly_theirs() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("gpu-a", gpu_agent(2, "Simulated A100"))
        .await;
    c.add_agent_with("gpu-b", gpu_agent(2, "Simulated A100"))
        .await;
    wait_agents(&c, "two agents", |a| a.len() == 2).await;
    // Six one-GPU tasks on four GPUs: two must wait for a GPU to free up.
    let mut spec = String::from("name: sweep\ntasks:\n");
    for i in 0..6 {
        spec.push_str(&format!(
            "  - name: t{i}\n    command: [\"sh\", \"-c\", \"echo $CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER; sleep 1\"]\n    resources: {{gpu: 1, gpu_model: a100}}\n"
        ));
    }
    let id = c.submit(&spec).await.unwrap();
    let waiting = c
        .wait_for(&id, "4 running, 2 waiting", |r| {
            r.tasks
                .iter()
                .filter(|t| t.state() == TaskState::Running)
                .count()
                == 4
        })
        .await;
    let queued: Vec<&pb::Task> = waiting
        .tasks
        .iter()
        .filter(|t| t.state() == TaskState::Ready)
        .collect();
    assert_eq!(queued.len(), 2);
    for t in queued {
        assert!(t.message.starts_with("waiting for room"), "{}", t.message);
        assert!(!t.unschedulable);
    }
    let agents = c.agents().await;
    for a in &agents {
        assert!(
            a.gpus.iter().all(|g| !g.allocated_to.is_empty()),
            "all GPUs held: {a:#?}"
        );
        assert!(a.gpus.iter().all(|g| g.info.as_ref().unwrap().simulated));
    }

    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    // (agent, gpu uuid) → the [start, end] of every attempt that held it.
    let mut holds: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for t in &run.tasks {
        let a = &t.attempts[0];
        assert_eq!(a.gpus.len(), 1, "{} got {:?}", t.name, a.gpus);
        let g = &a.gpus[0];
        let log = c.logs(&id, &t.name, 1).await.unwrap();
        assert_eq!(
            log.trim(),
            format!("{} {} PCI_BUS_ID", g.index, g.uuid),
            "task {} sees only its GPU",
            t.name
        );
        holds
            .entry((a.agent_id.clone(), g.uuid.clone()))
            .or_default()
            .push((a.assigned_at_ms, a.finished_at_ms));
    }
    for (gpu, mut spans) in holds {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "GPU {gpu:?} shared: {spans:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_no_agent_can_run_are_reported_unschedulable() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("gpu-a", gpu_agent(2, "Simulated A100"))
        .await;
    wait_agents(&c, "agent", |a| a.len() == 1).await;
    let spec = r#"
name: picky
tasks:
  - name: needs-h100
    command: ["true"]
    resources: {gpu: 1, gpu_model: H100}
  - name: needs-eu
    command: ["true"]
    node_selector: {zone: eu}
  - name: fits
    command: ["true"]
"#;
    let id = c.submit(spec).await.unwrap();
    let run = c
        .wait_for(&id, "fits done", |r| {
            task(r, "fits").state() == TaskState::Succeeded
        })
        .await;
    let h100 = task(&run, "needs-h100");
    assert_eq!(h100.state(), TaskState::Ready);
    assert!(h100.unschedulable);
    assert_eq!(
        h100.message,
        "unschedulable: no connected agent offers executor `process`, 250m cpu, 1 GPU(s) matching `h100` (gpu-a: 0 matching GPU(s))"
    );
    let eu = task(&run, "needs-eu");
    assert!(eu.unschedulable);
    assert!(
        eu.message.ends_with("(gpu-a: no label zone=eu)"),
        "{}",
        eu.message
    );
    assert_eq!(
        run.state(),
        RunState::Running,
        "waits for the fleet to change"
    );

    // An agent with the label joins: that task runs.
    c.add_agent_with("eu-1", |o| o.labels = vec!["zone=eu".into()])
        .await;
    c.wait_for(&id, "needs-eu done", |r| {
        task(r, "needs-eu").state() == TaskState::Succeeded
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_dead_agent_completes_on_another_exactly_once() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "2s"]).await;
    c.add_agent("doomed").await;
    let marker = c.scratch.join("runs");
    let spec = format!(
        "name: survive\ntasks:\n  - name: work\n    command: [\"sh\", \"-c\", \"echo $DROVER_AGENT_ID >> {}; sleep 2\"]\n",
        marker.display()
    );
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on doomed", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    c.add_agent("spare").await;
    c.kill_agent("doomed");
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "work");
    assert_eq!(t.attempts.len(), 2, "{t:#?}");
    assert_eq!(t.attempts[0].agent_id, "doomed");
    assert_eq!(t.attempts[0].state(), AttemptState::Lost);
    assert!(
        t.attempts[0].error.contains("agent `doomed` lost"),
        "{}",
        t.attempts[0].error
    );
    assert_eq!(t.attempts[1].agent_id, "spare");
    assert_eq!(t.attempts[1].state(), AttemptState::Succeeded);
    let successes = t
        .attempts
        .iter()
        .filter(|a| a.state() == AttemptState::Succeeded)
        .count();
    assert_eq!(successes, 1);
    // The dead agent's process died with it: only the spare finished the work.
    let ran = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(ran, "doomed\nspare\n");
    let agents = c.agents().await;
    let doomed = agents.iter().find(|a| a.id == "doomed").unwrap();
    assert_eq!(doomed.state(), AgentState::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_agents_take_no_new_work_and_drain_survives_restart() {
    let mut c = Cluster::without_agents().await;
    c.add_agent("a1").await;
    wait_agents(&c, "agent", |a| a.len() == 1).await;
    let drained = c
        .agents_client()
        .await
        .drain_agent(pb::DrainAgentRequest {
            agent_id: "a1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.state(), AgentState::Draining);
    let id = c
        .submit("name: later\ntasks:\n  - name: t\n    command: [\"true\"]\n")
        .await
        .unwrap();
    let run = c
        .wait_for(&id, "a reason", |r| !task(r, "t").message.is_empty())
        .await;
    assert_eq!(task(&run, "t").state(), TaskState::Ready);
    assert_eq!(
        task(&run, "t").message,
        "waiting for an agent to take work (drained: a1)"
    );

    // Drain is stored: a restarted scheduler still holds the agent back.
    c.kill_scheduler().await;
    c.start_scheduler().await;
    let agents = wait_agents(&c, "agent back", |a| a.len() == 1 && a[0].last_seen_ms > 0).await;
    assert_eq!(agents[0].state(), AgentState::Draining);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(task(&c.get(&id).await, "t").state(), TaskState::Ready);

    c.agents_client()
        .await
        .undrain_agent(pb::DrainAgentRequest {
            agent_id: "a1".into(),
        })
        .await
        .unwrap();
    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded);

    let err = c
        .agents_client()
        .await
        .drain_agent(pb::DrainAgentRequest {
            agent_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "agent `nope` not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_list_shows_capacity_labels_and_simulated_gpus() {
    let mut c = Cluster::without_agents().await;
    c.add_agent_with("g", |o| {
        o.simulate_gpus = 3;
        o.simulate_gpu_model = "Simulated H100".into();
        o.labels = vec!["zone=eu".into(), "tier=gold".into()];
    })
    .await;
    let agents = wait_agents(&c, "agent", |a| a.len() == 1).await;
    let a = &agents[0];
    assert_eq!(a.state(), AgentState::Ready);
    assert_eq!(a.labels.get("zone").map(String::as_str), Some("eu"));
    assert_eq!(a.gpus.len(), 3);
    let uuids: BTreeSet<&str> = a
        .gpus
        .iter()
        .map(|g| g.info.as_ref().unwrap().uuid.as_str())
        .collect();
    assert_eq!(uuids.len(), 3);
    for g in &a.gpus {
        let info = g.info.as_ref().unwrap();
        assert!(info.simulated);
        assert_eq!(info.name, "Simulated H100");
        assert!(drover_api::naming::is_simulated_gpu(&info.uuid));
    }
    assert!(a.cpu_millis > 0 && a.memory_bytes > 0);
    assert_eq!(a.allocated_cpu_millis, 0);
}
