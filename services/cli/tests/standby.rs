//! The `drover` binary with two schedulers on one etcd prefix (in this
//! process, as `drover dev --schedulers 2` runs them; real etcd and NATS): a
//! command sent to the standby reaches the leader, `status` says who leads,
//! and a `watch` keeps going when the leader stops mid-run.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_devcluster::Server;

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

/// Two tasks of about 2 s each, one after the other.
const SPEC: &str = r#"
name: across-a-failover
tasks:
  - name: first
    command: ["sh", "-c", "sleep 2"]
  - name: second
    depends_on: [first]
    command: ["sh", "-c", "sleep 2"]
"#;

struct Pair {
    _rt: tokio::runtime::Runtime,
    servers: [String; 2],
    stops: [Option<tokio::sync::oneshot::Sender<()>>; 2],
    agent_stop: Option<tokio::sync::watch::Sender<bool>>,
    dir: tempfile::TempDir,
    _servers: (Server, Server),
}

fn options(
    etcd: &Server,
    nats: &Server,
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    id: &str,
) -> drover_scheduler::SchedulerOptions {
    let artifacts = format!("file://{}", dir.join("artifacts").display());
    let mut opts = drover_scheduler::SchedulerOptions::embedded(
        listen, &etcd.url, &nats.url, "/standby", artifacts,
    );
    opts.nats_prefix = "standby".into();
    opts.id = Some(id.into());
    opts
}

impl Pair {
    fn start() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (etcd, nats) = rt.block_on(async {
            (
                Server::etcd(None).await.unwrap(),
                Server::nats(None).await.unwrap(),
            )
        });
        let mut servers = [String::new(), String::new()];
        let mut stops = [None, None];
        for (n, id) in ["s1", "s2"].into_iter().enumerate() {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            servers[n] = format!("http://{addr}");
            let opts = options(&etcd, &nats, dir.path(), addr, id);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops[n] = Some(stop);
            rt.spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = drover_scheduler::serve(opts, listener, shutdown).await {
                    eprintln!("scheduler {id} failed: {e}");
                }
            });
            // s1 leads: it campaigns alone first.
            if n == 0 {
                let pair_server = servers[0].clone();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !status_json(&pair_server).is_some_and(|v| v["leader"] == "s1") {
                    assert!(Instant::now() < deadline, "s1 never led");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let mut agent = drover_agent::AgentOptions::new(
            nats.url.clone(),
            format!("file://{}", dir.path().join("artifacts").display()),
        );
        agent.id = Some("a1".into());
        agent.executors = vec!["process".into()];
        agent.work_dir = dir.path().join("work");
        agent.nats_prefix = "standby".into();
        agent.heartbeat_interval = Duration::from_millis(200);
        let (agent_stop, mut agent_stopped) = tokio::sync::watch::channel(false);
        rt.spawn(drover_agent::Agent::run(agent, async move {
            let _ = agent_stopped.wait_for(|s| *s).await;
        }));
        Self {
            _rt: rt,
            servers,
            stops,
            agent_stop: Some(agent_stop),
            dir,
            _servers: (etcd, nats),
        }
    }

    fn drover(&self, server: &str, args: &[&str]) -> Output {
        Command::new(DROVER)
            .args(args)
            .env("DROVER_SERVER", server)
            .env_remove("DROVER_TOKEN")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(stop) = self.agent_stop.take() {
            let _ = stop.send(true);
        }
        for stop in self.stops.iter_mut().filter_map(Option::take) {
            let _ = stop.send(());
        }
        // Their shutdown (resigning, stopping attempts) runs on `rt`.
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn status_json(server: &str) -> Option<serde_json::Value> {
    let out = Command::new(DROVER)
        .args(["status", "-o", "json"])
        .env("DROVER_SERVER", server)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_cli_pointed_at_a_standby_reaches_the_leader_and_a_watch_survives_a_failover() {
    let mut pair = Pair::start();
    let [s1, s2] = pair.servers.clone();

    // Through the standby alone: the CLI asks it who leads and goes there.
    let listed = pair.drover(&s2, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let status = status_json(&s2).unwrap();
    assert_eq!(status["leader"], "s1");
    assert_eq!(status["answered_by"], "s2");
    assert_eq!(status["schedulers"].as_array().unwrap().len(), 2);

    // A watch across a failover: the leader stops while `first` runs.
    let spec = pair.dir.path().join("spec.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let both = format!("{s1},{s2}");
    let watch = Command::new(DROVER)
        .args(["submit", spec.to_str().unwrap(), "--watch"])
        .env("DROVER_SERVER", &both)
        .current_dir(pair.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _ = pair.stops[0].take().unwrap().send(());
    let out = watch.wait_with_output().unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("Succeeded"), "{printed}");
    let after = status_json(&s2).unwrap();
    assert_eq!(after["leader"], "s2", "{after}");
}
