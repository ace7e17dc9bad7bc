//! Test harness: real etcd and nats-server (child processes on free loopback
//! ports, temp dirs, killed on drop), the real `drover-scheduler` binary, and
//! in-process agents with the process executor and a `file://` artifact store.
//! Each cluster uses its own etcd prefix and NATS subject prefix, so tests
//! stay apart even if they shared servers.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use drover_api::pb;
use drover_api::pb::scheduler_client::SchedulerClient;
use drover_devcluster::{free_port, Server};
use futures::StreamExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tonic::transport::Channel;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Cluster {
    pub etcd: Server,
    pub nats: Server,
    pub prefix: String,
    pub nats_prefix: String,
    pub artifacts_dir: PathBuf,
    pub artifacts: String,
    /// Scratch space tests may hand to tasks (markers, pid files).
    pub scratch: PathBuf,
    pub server: String,
    listen: u16,
    scheduler: Option<Child>,
    agents: Vec<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// etcd, NATS, the scheduler and one agent.
    pub async fn start() -> Self {
        let mut c = Self::without_agents().await;
        c.add_agent("agent-1").await;
        c
    }

    pub async fn without_agents() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("t{}x{n}", std::process::id());
        let tmp = tempfile::tempdir().unwrap();
        let artifacts_dir = tmp.path().join("artifacts");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let etcd = Server::etcd(None).await.unwrap();
        let nats = Server::nats(None).await.unwrap();
        let listen = free_port().unwrap();
        let mut c = Self {
            etcd,
            nats,
            prefix: format!("/{tag}"),
            nats_prefix: tag,
            artifacts: format!("file://{}", artifacts_dir.display()),
            artifacts_dir,
            scratch,
            server: format!("http://127.0.0.1:{listen}"),
            listen,
            scheduler: None,
            agents: Vec::new(),
            _tmp: tmp,
        };
        c.start_scheduler().await;
        c
    }

    /// Starts the `drover-scheduler` binary and waits until it answers.
    pub async fn start_scheduler(&mut self) {
        let log = std::fs::File::create(self._tmp.path().join("scheduler.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
            .args(["--listen", &format!("127.0.0.1:{}", self.listen)])
            .args(["--etcd", &self.etcd.url])
            .args(["--nats", &self.nats.url])
            .args(["--prefix", &self.prefix])
            .args(["--nats-prefix", &self.nats_prefix])
            .args(["--artifacts", &self.artifacts])
            .args(["--cancel-grace", "2s"])
            .env("RUST_LOG", "info,drover_scheduler=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.scheduler = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Channel::from_shared(self.server.clone())
            .unwrap()
            .connect()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "scheduler did not start:\n{}",
                self.scheduler_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub async fn kill_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            c.kill().await.unwrap();
        }
    }

    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("scheduler.log")).unwrap_or_default()
    }

    pub async fn add_agent(&mut self, id: &str) {
        let mut opts =
            drover_agent::AgentOptions::new(self.nats.url.clone(), self.artifacts.clone());
        opts.id = Some(id.to_string());
        opts.executors = vec!["process".into()];
        opts.work_dir = self._tmp.path().join("work").join(id);
        opts.nats_prefix = self.nats_prefix.clone();
        opts.heartbeat_interval = Duration::from_millis(200);
        opts.kill_grace = Duration::from_secs(2);
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = drover_agent::Agent::run(opts, stop).await {
                panic!("agent failed: {e:#}");
            }
        });
        self.agents.push((tx, task));
    }

    pub async fn client(&self) -> SchedulerClient<Channel> {
        SchedulerClient::connect(self.server.clone()).await.unwrap()
    }

    pub async fn submit(&self, yaml: &str) -> Result<String, tonic::Status> {
        self.submit_with(yaml, &[]).await
    }

    pub async fn submit_with(
        &self,
        yaml: &str,
        params: &[(&str, &str)],
    ) -> Result<String, tonic::Status> {
        let params: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = self
            .client()
            .await
            .submit_run(pb::SubmitRunRequest {
                spec_yaml: yaml.to_string(),
                params,
            })
            .await?;
        Ok(r.into_inner().run_id)
    }

    pub async fn get(&self, run: &str) -> pb::Run {
        self.client()
            .await
            .get_run(pb::GetRunRequest { run_id: run.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Follows WatchRun until the run ends.
    pub async fn wait_done(&self, run: &str, timeout: Duration) -> pb::Run {
        let fut = async {
            let mut s = self
                .client()
                .await
                .watch_run(pb::WatchRunRequest { run_id: run.into() })
                .await
                .unwrap()
                .into_inner();
            let mut last = None;
            while let Some(r) = s.next().await {
                last = Some(r.unwrap());
            }
            last.expect("watch sent nothing")
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => panic!(
                "run {run} not done after {timeout:?}: {:#?}\nscheduler log:\n{}",
                self.get(run).await,
                self.scheduler_log()
            ),
        }
    }

    /// Polls until `pred` holds for the run.
    pub async fn wait_for(
        &self,
        run: &str,
        what: &str,
        pred: impl Fn(&pb::Run) -> bool,
    ) -> pb::Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(run).await;
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn logs(&self, run: &str, task: &str, attempt: u32) -> Result<String, tonic::Status> {
        let mut s = self
            .client()
            .await
            .get_logs(pb::GetLogsRequest {
                run_id: run.into(),
                task: task.into(),
                attempt,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend(c?.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Every etcd key under this cluster's prefix.
    pub async fn etcd_keys(&self) -> Vec<String> {
        let mut client = etcd_client::Client::connect([&self.etcd.url], None)
            .await
            .unwrap();
        let resp = client
            .get(
                self.prefix.as_bytes(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    }

    pub fn artifact(&self, key: &str) -> PathBuf {
        self.artifacts_dir.join(key)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (tx, _) in &self.agents {
            let _ = tx.send(true);
        }
    }
}

pub fn task<'a>(run: &'a pb::Run, name: &str) -> &'a pb::Task {
    run.tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no task {name}"))
}

/// Whether a process still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
