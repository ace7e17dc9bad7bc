//! One benchmark cluster: etcd and nats-server from `drover-devcluster`, the
//! real `drover-scheduler` binary and, where a scenario wants them, real
//! `drover-agent` processes with the process executor. Everything binds
//! 127.0.0.1, lives in a temp dir and is killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use drover_api::pb;
use drover_api::pb::scheduler_client::SchedulerClient;
use drover_devcluster::{free_port, Server};
use prost::Message as _;
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::secure::{self, Bearer, Security};

/// A Scheduler client of the bench (with the token when secured).
pub type Client = SchedulerClient<InterceptedService<Channel, Bearer>>;

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub scheduler: PathBuf,
    pub agent: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            scheduler: dir.join("drover-scheduler"),
            agent: dir.join("drover-agent"),
        };
        for b in [&bins.scheduler, &bins.agent] {
            if !b.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release -p drover-scheduler -p drover-agent`",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

pub struct Cluster {
    pub etcd: Server,
    pub nats: Server,
    pub prefix: String,
    pub nats_prefix: String,
    pub server: String,
    scheduler: Child,
    /// Real agents, with the id each was started as.
    agents: Vec<Child>,
    agent_ids: Vec<(String, u32)>,
    /// Scheduler restarts so far (each incarnation logs to its own file).
    restarts: usize,
    bins: Bins,
    /// Extra environment of the scheduler and real agents.
    env: Vec<(String, String)>,
    /// The scheduler's flags but `--listen` and `--id`, and its environment.
    scheduler_flags: (Vec<String>, Vec<(String, String)>),
    /// Set on a cluster started secured ([`Cluster::start_with`]).
    security: Option<Security>,
    /// Taken on drop and kept until [`remove_scenario_dirs`].
    tmp: Option<tempfile::TempDir>,
    /// `tmp`'s path.
    dir: PathBuf,
}

/// Scenario directories, removed only when every scenario has run: removing
/// one between scenarios frees tens of thousands of inodes, and on ext4
/// without a journal every inode allocated in the next minutes first skips
/// the recently freed ones (`recently_deleted`), so the next scenario's
/// agents and stores paid for the last one's clean-up.
/// Only while [`defer_dir_removal`] is on: a test process never reaches the
/// end that would remove them.
static LEFT: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());
static DEFER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on a cluster's directory outlives it until [`remove_scenario_dirs`].
pub fn defer_dir_removal() {
    DEFER.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Removes the directories of every scenario run so far.
pub fn remove_scenario_dirs() {
    let dirs = std::mem::take(
        &mut *LEFT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    drop(dirs);
}

/// The OpenTelemetry variables that turn trace export on: never inherited
/// from the caller, so "off" is off; set through `env` where wanted.
const OTEL_VARS: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
];

/// Starts a Drover binary at `RUST_LOG=warn`, stdout and stderr into `log`,
/// killed when its handle drops.
fn spawn_logged(cmd: &mut Command, program: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// `cmd` with the caller's OTEL variables removed and `env` set.
fn with_env<'c>(cmd: &'c mut Command, env: &[(String, String)]) -> &'c mut Command {
    for v in OTEL_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
}

impl Cluster {
    /// etcd, NATS and the scheduler, answering gRPC; no agents yet. `env`
    /// is added to the scheduler's and every real agent's environment.
    /// `sync_always`: nats-server fsyncs each JetStream write before acking.
    pub async fn start(bins: &Bins, env: &[(String, String)], sync_always: bool) -> Result<Self> {
        Self::start_with(bins, env, false, sync_always).await
    }

    /// [`Cluster::start`], with everything secured when `secure` (see [`crate::secure`]).
    pub async fn start_with(
        bins: &Bins,
        env_in: &[(String, String)],
        secure: bool,
        sync_always: bool,
    ) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("drover-bench").tempdir()?;
        let security = match secure {
            true => Some(Security::new(&tmp.path().join("secure"))?),
            false => None,
        };
        let (etcd, nats) = match &security {
            Some(s) => (
                s.etcd(&tmp.path().join("etcd"), "/bench").await?,
                s.nats(&tmp.path().join("nats"), "bench", sync_always)
                    .await?,
            ),
            None => (Server::etcd(Some(&tmp.path().join("etcd"))).await?, {
                let nats = drover_devcluster::NatsSettings {
                    sync_always,
                    ..Default::default()
                };
                Server::nats_with(Some(&tmp.path().join("nats")), &nats).await?
            }),
        };
        let listen = free_port()?;
        let scheme = if secure { "https" } else { "http" };
        let server = format!("{scheme}://127.0.0.1:{listen}");
        let (secure_args, mut env) = match &security {
            Some(s) => s.scheduler_args(),
            None => (Vec::new(), Vec::new()),
        };
        env.extend(env_in.iter().cloned());
        let mut flags = secure_args;
        flags.extend(
            ["--etcd", &etcd.url, "--nats", &nats.url]
                .into_iter()
                .chain(["--prefix", "/bench", "--nats-prefix", "bench"])
                .map(str::to_owned),
        );
        flags.push("--artifacts".into());
        flags.push(format!("file://{}", tmp.path().join("artifacts").display()));
        let mut cmd = Command::new(&bins.scheduler);
        with_env(&mut cmd, &env)
            .args(&flags)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--id", "scheduler-1"]);
        let scheduler = spawn_logged(&mut cmd, &bins.scheduler, &tmp.path().join("scheduler.log"))?;
        let mut c = Self {
            etcd,
            nats,
            prefix: "/bench".into(),
            nats_prefix: "bench".into(),
            server,
            scheduler,
            agents: Vec::new(),
            agent_ids: Vec::new(),
            restarts: 0,
            bins: bins.clone(),
            env: env_in.to_vec(),
            scheduler_flags: (flags, env),
            security,
            dir: tmp.path().to_owned(),
            tmp: Some(tmp),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.leads().await.is_err() {
            if let Some(status) = c.scheduler.try_wait()? {
                bail!("scheduler exited with {status}:\n{}", c.scheduler_log());
            }
            if Instant::now() > deadline {
                bail!("scheduler not leading after 30 s:\n{}", c.scheduler_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(c)
    }

    /// Starts another scheduler process on this cluster (a standby while
    /// one leads) as `id`; the process and its address.
    pub fn spawn_scheduler(&self, id: &str) -> Result<(Child, String)> {
        let listen = free_port()?;
        let (flags, env) = &self.scheduler_flags;
        let mut cmd = Command::new(&self.bins.scheduler);
        with_env(&mut cmd, env)
            .args(flags)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--id", id]);
        let child = spawn_logged(
            &mut cmd,
            &self.bins.scheduler,
            &self.dir.join(format!("{id}.log")),
        )?;
        Ok((child, format!("http://127.0.0.1:{listen}")))
    }

    pub fn scheduler_pid(&self) -> Result<u32> {
        self.scheduler.id().context("the scheduler has exited")
    }

    /// The real agents still running.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().filter_map(Child::id).collect()
    }

    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("scheduler.log")).unwrap_or_default()
    }

    /// Starts a real agent: process executor, `cpus` CPUs offered.
    pub async fn add_agent(&mut self, id: &str, cpus: u32) -> Result<()> {
        let secure_args = match &mut self.security {
            Some(s) => s.add_agent(&self.nats, &self.nats_prefix, id).await?,
            None => Vec::new(),
        };
        let child = self.spawn_agent(id, cpus, &secure_args, "agent.log")?;
        self.agents.push(child);
        self.agent_ids.push((id.to_owned(), cpus));
        Ok(())
    }

    /// Kills the scheduler (SIGKILL) and, after `down`, starts it again on
    /// the same address, as after a crash (not waiting for it to lead).
    pub async fn restart_scheduler(&mut self, down: Duration) -> Result<()> {
        self.scheduler.kill().await?;
        tokio::time::sleep(down).await;
        self.restarts += 1;
        let listen = self
            .server
            .rsplit(':')
            .next()
            .context("no port in the scheduler's address")?
            .to_owned();
        let (flags, env) = &self.scheduler_flags;
        let mut cmd = Command::new(&self.bins.scheduler);
        with_env(&mut cmd, env)
            .args(flags)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--id", "scheduler-1"]);
        let log = self.dir.join(format!("scheduler.{}.log", self.restarts));
        self.scheduler = spawn_logged(&mut cmd, &self.bins.scheduler, &log)?;
        Ok(())
    }

    /// Kills real agent `index` (SIGKILL) and, after `down`, starts it again
    /// with the same id and work directory (unsecured clusters only).
    pub async fn restart_agent(&mut self, index: usize, down: Duration) -> Result<()> {
        let (id, cpus) = self
            .agent_ids
            .get(index)
            .cloned()
            .context("no such agent")?;
        if self.security.is_some() {
            bail!("restarting a secured agent is not supported");
        }
        self.agents[index].kill().await?;
        tokio::time::sleep(down).await;
        self.restarts += 1;
        let log = format!("agent.{}.log", self.restarts);
        self.agents[index] = self.spawn_agent(&id, cpus, &[], &log)?;
        Ok(())
    }

    fn spawn_agent(&self, id: &str, cpus: u32, secure_args: &[String], log: &str) -> Result<Child> {
        let dir = self.dir.join("agents").join(id);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(&self.bins.agent);
        with_env(&mut cmd, &self.env)
            .args(secure_args)
            .args(["--nats", &self.nats.url, "--nats-prefix", &self.nats_prefix])
            .arg("--artifacts")
            .arg(format!("file://{}", self.dir.join("artifacts").display()))
            .args(["--id", id, "--executors", "process"])
            .args(["--cpus", &cpus.to_string()])
            .arg("--work-dir")
            .arg(dir.join("work"));
        spawn_logged(&mut cmd, &self.bins.agent, &dir.join(log))
    }

    /// Real agents started so far.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// The last lines of every real agent's log.
    fn agent_logs(&self) -> String {
        let Ok(dirs) = std::fs::read_dir(self.dir.join("agents")) else {
            return String::new();
        };
        let mut out = String::new();
        for dir in dirs.flatten() {
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            out.push_str(&format!("{}:\n{tail}\n", dir.path().display()));
        }
        out
    }

    /// The file:// artifact store's root.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// The channel to the API and what each call carries (a token when secured).
    async fn api(&self) -> Result<(Channel, Bearer)> {
        let channel = secure::channel(&self.server, self.security.as_ref()).await?;
        let bearer = match &self.security {
            Some(s) => s.bearer()?,
            None => Bearer::default(),
        };
        Ok((channel, bearer))
    }

    pub async fn client(&self) -> Result<Client> {
        let (channel, bearer) = self.api().await?;
        Ok(SchedulerClient::with_interceptor(channel, bearer)
            // A large spec is the scheduler's to refuse, not the client's.
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX))
    }

    /// Ok once the scheduler answers as the leader.
    async fn leads(&self) -> Result<()> {
        self.client()
            .await?
            .get_version(pb::GetVersionRequest {})
            .await?;
        Ok(())
    }

    /// A NATS connection allowed to read every subject.
    pub async fn nats_observer(&self) -> Result<async_nats::Client> {
        let options = match &self.security {
            Some(s) => s.observer(&self.nats_prefix)?,
            None => async_nats::ConnectOptions::new(),
        };
        Ok(options.connect(self.nats.url.as_str()).await?)
    }

    /// Waits until `n` agents are Ready in the scheduler's view.
    pub async fn wait_agents(&self, n: usize, timeout: Duration) -> Result<()> {
        let (channel, bearer) = self.api().await?;
        let mut agents = pb::agents_client::AgentsClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(usize::MAX);
        let deadline = Instant::now() + timeout;
        loop {
            let list = agents
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner();
            let ready = list
                .agents
                .iter()
                .filter(|a| a.state() == pb::AgentState::Ready)
                .count();
            if ready >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs = self.agent_logs();
                bail!("{ready} of {n} agents ready after {timeout:?}; agents' logs end:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The run record straight from etcd (the source of truth), without
    /// asking the scheduler, so that watching costs it nothing.
    pub async fn run_state(
        &self,
        etcd: &mut etcd_client::Client,
        run_id: &str,
    ) -> Result<pb::RunState> {
        let key = format!("{}/runs/{run_id}", self.prefix);
        let resp = etcd.get(key, None).await?;
        let kv = resp.kvs().first().context("no run record")?;
        Ok(pb::RunRecord::decode(kv.value())?.state())
    }

    pub async fn etcd(&self) -> Result<etcd_client::Client> {
        let options = match &self.security {
            Some(s) => Some(s.etcd_options()?),
            None => None,
        };
        Ok(etcd_client::Client::connect([&self.etcd.url], options).await?)
    }

    /// Polls etcd until the run is no longer active; its final state.
    pub async fn wait_run(
        &self,
        run_id: &str,
        poll: Duration,
        timeout: Duration,
    ) -> Result<pb::RunState> {
        let mut etcd = self.etcd().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.run_state(&mut etcd, run_id).await?;
            if !matches!(s, pb::RunState::Running | pb::RunState::Cancelling) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("run {run_id} still {s:?} after {timeout:?}");
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Stops the agents (SIGTERM, then SIGKILL) so they can report and exit.
    pub async fn stop_agents(&mut self) {
        for a in &self.agents {
            terminate(a);
        }
        for mut a in self.agents.drain(..) {
            wait_or_kill(&mut a).await;
        }
    }

    /// Stops the scheduler the same way, after the measurement: it exports
    /// the spans it still holds as it exits, so an OTLP receiver has them
    /// all (a SIGKILL lost the last ~fifth of a short simulated run's).
    pub async fn stop_scheduler(&mut self) {
        terminate(&self.scheduler);
        wait_or_kill(&mut self.scheduler).await;
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a plain syscall on our own unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// Up to 5 s for a terminated child to exit, then SIGKILL.
async fn wait_or_kill(child: &mut Child) {
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.start_kill();
        }
        let _ = self.scheduler.start_kill();
        let defer = DEFER.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(tmp) = self.tmp.take().filter(|_| defer) {
            LEFT.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(tmp);
        }
    }
}
