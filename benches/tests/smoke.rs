//! Keeps the harness from rotting: the simulated agents run real pipelines
//! on a real scheduler (in-process here, over real etcd and NATS), and the
//! floors measure on small sizes.

use std::time::{Duration, Instant};

use clap::Parser;
use drover_api::pb;
use drover_bench::floors::{self, FloorSizes};
use drover_bench::sim::{SimOptions, SimOutputs, Simulator, SIMULATED_LABEL};
use drover_bench::specs;
use drover_devcluster::Server;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

async fn run_to_end(server: &str, yaml: String) -> pb::Run {
    let mut client = pb::scheduler_client::SchedulerClient::connect(server.to_string())
        .await
        .unwrap();
    let run_id = client
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: yaml,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = client
            .get_run(pb::GetRunRequest {
                run_id: run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if run.state() != pb::RunState::Running {
            return run;
        }
        assert!(Instant::now() < deadline, "run not done: {run:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_run_pipelines_on_a_real_scheduler() {
    const MAP_ITEMS: usize = 10_000;
    let etcd = Server::etcd(None).await.unwrap();
    let nats = Server::nats(None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let artifacts = format!("file://{}", tmp.path().display());
    let flags = Flags::parse_from([
        "scheduler",
        "--etcd",
        &etcd.url,
        "--nats",
        &nats.url,
        "--prefix",
        "/smoke",
        "--nats-prefix",
        "smoke",
        "--artifacts",
        &artifacts,
    ]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(drover_scheduler::serve(flags.opts, listener, async {
        let _ = stop_rx.await;
    }));
    let sim = Simulator::start(SimOptions {
        nats_url: nats.url.clone(),
        nats_prefix: "smoke".into(),
        agents: 2,
        id_prefix: "sim-".into(),
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        heartbeat_interval: Duration::from_millis(200),
        // What a declared output holds: the map's list below (the other
        // specs declare none).
        outputs: Some(SimOutputs {
            dir: tmp.path().to_path_buf(),
            content: std::sync::Arc::new(
                serde_json::to_vec(&(0..MAP_ITEMS).collect::<Vec<usize>>()).unwrap(),
            ),
        }),
    })
    .await
    .unwrap();
    let server = format!("http://{addr}");
    // Serving is not leading: calls are refused until the election is won.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leads = match pb::scheduler_client::SchedulerClient::connect(server.clone()).await {
            Ok(mut c) => c.get_version(pb::GetVersionRequest {}).await.is_ok(),
            Err(_) => false,
        };
        if leads {
            break;
        }
        assert!(Instant::now() < deadline, "the scheduler never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Wide (more tasks than the two agents' 8 slots) and deep.
    let flat = run_to_end(&server, specs::independent(30)).await;
    assert_eq!(flat.state(), pb::RunState::Succeeded, "{flat:#?}");
    let chain = run_to_end(&server, specs::chain(5)).await;
    assert_eq!(chain.state(), pb::RunState::Succeeded, "{chain:#?}");
    for t in &chain.tasks {
        let a = t.attempts.last().unwrap();
        assert!(a.agent_id.starts_with("sim-"), "{t:#?}");
        assert!(a.started_at_ms > 0 && a.finished_at_ms >= a.started_at_ms);
    }
    // A for_each over 10,000 items: one instance each, then the run ends.
    let map = run_to_end(&server, specs::map()).await;
    assert_eq!(map.state(), pb::RunState::Succeeded, "{:?}", map.message);
    assert_eq!(map.tasks.len(), 2 + MAP_ITEMS);
    assert!(map.tasks[2..]
        .iter()
        .all(|t| t.state() == pb::TaskState::Succeeded));
    assert_eq!(
        sim.stats
            .finished
            .load(std::sync::atomic::Ordering::Relaxed),
        35 + 1 + MAP_ITEMS as u64
    );
    // The first turn hands each agent a batch of 8 tasks: their events go
    // back in one message each, which the scheduler must read as 8 events.
    assert!(sim.stats.batched.load(std::sync::atomic::Ordering::Relaxed) >= 16);

    let channel = tonic::transport::Channel::from_shared(server)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let agents = pb::agents_client::AgentsClient::new(channel)
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 2);
    for a in agents {
        assert_eq!(
            a.labels.get(SIMULATED_LABEL.0).map(String::as_str),
            Some("true")
        );
        assert_eq!(a.hostname, "simulated");
    }
    sim.stop().await;
    let _ = stop_tx.send(());
    let _ = scheduler.await;
}

#[tokio::test]
async fn floors_measure_on_small_sizes() {
    let etcd = Server::etcd(None).await.unwrap();
    let nats = Server::nats(None).await.unwrap();
    let sizes = FloorSizes {
        etcd_puts: 5,
        etcd_txn_keys: 300,
        nats_requests: 5,
        js_publishes: 5,
        spawns: 8,
    };
    let f = floors::measure(&etcd.url, &nats.url, sizes, 2)
        .await
        .unwrap();
    assert_eq!(f.etcd_put.n, 5);
    assert_eq!(f.etcd_txn.n, 3, "300 keys in transactions of 128");
    assert!(f.etcd_txn_keys_per_s > 0.0);
    assert_eq!(f.nats_rtt.n, 5);
    assert_eq!(f.js_publish.n, 5);
    assert!(f.js_publish_per_s > 0.0);
    assert_eq!(f.spawn.n, 8);
    assert!(f.spawn_per_s > 0.0);
}
