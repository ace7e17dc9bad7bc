//! Test harness: real etcd and nats-server (child processes on free loopback
//! ports, temp dirs, killed on drop), the real `drover-scheduler` binary, and
//! in-process agents with the process executor and a `file://` artifact store
//! (or another store, e.g. a Garage S3 bucket, with `with_store`).
//! Each cluster uses its own etcd prefix and NATS subject prefix, so tests
//! stay apart even if they shared servers.

#![allow(dead_code)]

pub mod relay;

use std::collections::{BTreeMap, HashMap};
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

/// a → (b, c) → d, passing files along; submitted with `greeting=drover`,
/// d's output `joined` reads "DROVER\nrevord\n".
pub const DIAMOND: &str = r#"
name: diamond
params: {greeting: hello}
tasks:
  - name: a
    command: ["sh", "-c", "echo '{{params.greeting}}' > $DROVER_OUTPUTS/a.txt; echo a-ran"]
    outputs: [{name: text, path: a.txt}]
  - name: b
    depends_on: [a]
    command: ["sh", "-c", "tr a-z A-Z < $DROVER_INPUTS/in > $DROVER_OUTPUTS/b.txt"]
    inputs: [{name: in, from: a/text}]
    outputs: [{name: text, path: b.txt}]
  - name: c
    depends_on: [a]
    command: ["sh", "-c", "rev < $DROVER_INPUTS/in > $DROVER_OUTPUTS/c.txt"]
    inputs: [{name: in, from: a/text}]
    outputs: [{name: text, path: c.txt}]
  - name: d
    depends_on: [b, c]
    command: ["sh", "-c", "cat $DROVER_INPUTS/upper $DROVER_INPUTS/reversed > $DROVER_OUTPUTS/d.txt; echo run=$DROVER_RUN_ID task=$DROVER_TASK attempt=$DROVER_ATTEMPT"]
    inputs: [{name: upper, from: b/text}, {name: reversed, from: c/text}]
    outputs: [{name: joined, path: d.txt}]
"#;

/// etcd or NATS under a test cluster: a server the harness started (its
/// methods through `Deref`), or members of a cluster the test holds and
/// kills (then only their URLs are here).
pub struct Backend {
    /// What the scheduler and agents are given (comma-separated for members).
    pub url: String,
    server: Option<Server>,
}

impl Backend {
    fn one(server: Server) -> Self {
        Self {
            url: server.url.clone(),
            server: Some(server),
        }
    }

    fn members(urls: &str) -> Self {
        Self {
            url: urls.to_owned(),
            server: None,
        }
    }
}

impl std::ops::Deref for Backend {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.server
            .as_ref()
            .expect("a single server (this cluster runs on members the test holds)")
    }
}

pub struct Cluster {
    pub etcd: Backend,
    pub nats: Backend,
    pub prefix: String,
    pub nats_prefix: String,
    pub artifacts_dir: PathBuf,
    pub artifacts: String,
    /// Scratch space tests may hand to tasks (markers, pid files).
    pub scratch: PathBuf,
    pub server: String,
    /// `http://…/metrics` of the scheduler, when started `with_metrics`.
    pub metrics_url: Option<String>,
    listen: u16,
    scheduler: Option<Child>,
    agents: HashMap<String, AgentProc>,
    /// Extra scheduler flags (e.g. a short --agent-timeout).
    scheduler_args: Vec<String>,
    /// Where the scheduler reaches NATS, when not `nats` itself (a relay).
    scheduler_nats: Option<String>,
    /// Extra environment of the scheduler process (e.g. OTEL_* variables).
    scheduler_env: Vec<(String, String)>,
    /// Object-store settings (`AWS_*`): the scheduler's environment and
    /// every agent's `artifacts_settings`.
    store_settings: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

/// An agent on its own thread and runtime, so that killing it is like a
/// machine dying: no shutdown code runs, and the thread's exit fires the
/// parent-death signal of every process it started.
pub struct AgentProc {
    stop: Option<std::sync::mpsc::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentProc {
    fn spawn(opts: drover_agent::AgentOptions) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<bool>();
            // Bridge the std channel into the runtime without blocking it.
            std::thread::spawn(move || {
                let graceful = rx.recv().unwrap_or(true);
                let _ = kill_tx.send(graceful);
            });
            rt.block_on(async move {
                let (stop_tx, mut stop_rx) = watch::channel(false);
                let agent = drover_agent::Agent::run(opts, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                });
                tokio::pin!(agent);
                tokio::select! {
                    r = &mut agent => if let Err(e) = r { eprintln!("agent failed: {e:#}") },
                    graceful = kill_rx => {
                        if graceful.unwrap_or(true) {
                            let _ = stop_tx.send(true);
                            let _ = agent.await;
                        }
                        // else: the agent future is dropped mid-flight.
                    }
                }
            });
        });
        Self {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn end(&mut self, graceful: bool) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(graceful);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.end(true);
    }
}

/// Whether the scheduler at `server` answers and leads (health SERVING).
pub async fn leads(server: &str) -> bool {
    match Channel::from_shared(server.to_owned())
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => serving(channel).await,
        Err(_) => false,
    }
}

async fn serving(channel: Channel) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: "drover.v1.Scheduler".into(),
    };
    health.check(request).await.is_ok_and(|r| {
        r.into_inner().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
    })
}

impl Cluster {
    /// etcd, NATS, the scheduler and one agent.
    pub async fn start() -> Self {
        let mut c = Self::without_agents().await;
        c.add_agent("agent-1").await;
        c
    }

    pub async fn without_agents() -> Self {
        Self::with_scheduler_args(&[]).await
    }

    /// No agents yet; the scheduler gets these extra flags.
    pub async fn with_scheduler_args(args: &[&str]) -> Self {
        Self::with_scheduler(args, &[]).await
    }

    /// No agents yet; the scheduler gets these extra flags and environment.
    pub async fn with_scheduler(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::build(args, env, None, None).await
    }

    /// No agents yet; NATS is `nats` (e.g. with an authorization block and
    /// TLS, written for subject prefix `nats_prefix`) and the scheduler gets
    /// these extra flags.
    pub async fn on_nats(nats: Server, nats_prefix: &str, args: &[&str]) -> Self {
        Self::build(args, &[], None, Some((nats, nats_prefix.to_owned()))).await
    }

    /// No agents yet; artifacts and logs go to the store at `url`, reached
    /// with `settings` (e.g. a Garage bucket's `AWS_*` variables).
    pub async fn with_store(url: &str, settings: Vec<(String, String)>) -> Self {
        Self::build(&[], &[], Some((url.to_owned(), settings)), None).await
    }

    /// No agents yet; on this etcd (e.g. one on TLS) with these scheduler
    /// flags and environment.
    pub async fn with_etcd(etcd: Server, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::build_on(Some(Backend::one(etcd)), args, env, None, None).await
    }

    /// No agents yet; on the members of an etcd cluster and of a NATS
    /// cluster the test holds (comma-separated URLs), with these scheduler flags.
    pub async fn on_members(etcd: &str, nats: &str, args: &[&str]) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nats = (
            Backend::members(nats),
            format!("m{}x{n}", std::process::id()),
        );
        Self::build_on(Some(Backend::members(etcd)), args, &[], None, Some(nats)).await
    }

    async fn build(
        args: &[&str],
        env: &[(&str, &str)],
        store: Option<(String, Vec<(String, String)>)>,
        nats: Option<(Server, String)>,
    ) -> Self {
        let nats = nats.map(|(server, prefix)| (Backend::one(server), prefix));
        Self::build_on(None, args, env, store, nats).await
    }

    async fn build_on(
        etcd: Option<Backend>,
        args: &[&str],
        env: &[(&str, &str)],
        store: Option<(String, Vec<(String, String)>)>,
        nats: Option<(Backend, String)>,
    ) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("t{}x{n}", std::process::id());
        let tmp = tempfile::tempdir().unwrap();
        let artifacts_dir = tmp.path().join("artifacts");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let etcd = match etcd {
            Some(etcd) => etcd,
            None => Backend::one(Server::etcd(None).await.unwrap()),
        };
        let (nats, nats_prefix) = match nats {
            Some((nats, prefix)) => (nats, prefix),
            None => (Backend::one(Server::nats(None).await.unwrap()), tag.clone()),
        };
        let listen = free_port().unwrap();
        let (artifacts, store_settings) = match store {
            Some((url, settings)) => (url, settings),
            None => (format!("file://{}", artifacts_dir.display()), Vec::new()),
        };
        let mut c = Self {
            etcd,
            nats,
            prefix: format!("/{tag}"),
            nats_prefix,
            artifacts,
            artifacts_dir,
            scratch,
            // With --tls-cert the API speaks TLS only.
            server: format!(
                "{}://127.0.0.1:{listen}",
                if args.contains(&"--tls-cert") {
                    "https"
                } else {
                    "http"
                }
            ),
            metrics_url: None,
            listen,
            scheduler: None,
            agents: HashMap::new(),
            scheduler_args: args.iter().map(|a| a.to_string()).collect(),
            scheduler_nats: None,
            scheduler_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            store_settings,
            _tmp: tmp,
        };
        c.start_scheduler().await;
        c
    }

    /// No agents yet; the scheduler serves metrics (`--metrics-listen`) at `metrics_url`.
    pub async fn with_metrics() -> Self {
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let mut c = Self::with_scheduler_args(&["--metrics-listen", &addr]).await;
        c.metrics_url = Some(format!("http://{addr}/metrics"));
        c
    }

    /// Starts a `drover-scheduler` process named `id` on `listen` with this
    /// cluster's flags (another one is a standby), logging to `log`.
    pub fn spawn_scheduler(&self, id: &str, listen: u16, log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--etcd", &self.etcd.url])
            .args([
                "--nats",
                self.scheduler_nats.as_ref().unwrap_or(&self.nats.url),
            ])
            .args(["--prefix", &self.prefix])
            .args(["--nats-prefix", &self.nats_prefix])
            .args(["--artifacts", &self.artifacts])
            .args(["--cancel-grace", "2s"])
            .args(["--preemption-grace", "1s"])
            .args(["--id", id])
            .args(&self.scheduler_args)
            .env("RUST_LOG", "info,drover_scheduler=debug")
            .envs(self.store_settings.iter().cloned())
            .envs(self.scheduler_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// The directory logs and scratch files of this cluster go to.
    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }

    /// The scheduler's next start reaches NATS at `url` (a relay to it).
    pub fn route_scheduler_nats(&mut self, url: &str) {
        self.scheduler_nats = Some(url.to_owned());
    }

    /// More flags and environment for the scheduler's next start.
    pub fn add_scheduler_args(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.scheduler_args
            .extend(args.iter().map(|a| a.to_string()));
        self.scheduler_env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }

    /// Starts the `drover-scheduler` binary and waits until it answers.
    pub async fn start_scheduler(&mut self) {
        let log = self._tmp.path().join("scheduler.log");
        let child = self.spawn_scheduler("scheduler-1", self.listen, &log);
        self.scheduler = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers().await {
            assert!(
                Instant::now() < deadline,
                "scheduler did not start:\n{}",
                self.scheduler_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the scheduler's port takes connections (a plain TCP connect
    /// when it speaks TLS: the test's own client brings the certificates).
    /// Whether the scheduler answers and leads. Over TLS, with the dev CA
    /// next to its `--tls-cert` (and its client certificate for mTLS).
    async fn answers(&self) -> bool {
        if !self.server.starts_with("https://") {
            return leads(&self.server).await;
        }
        let arg = |flag: &str| {
            let at = self.scheduler_args.iter().position(|a| a == flag)?;
            self.scheduler_args.get(at + 1).map(PathBuf::from)
        };
        let Some(dir) = arg("--tls-cert").and_then(|c| c.parent().map(Path::to_path_buf)) else {
            return false;
        };
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost");
        if arg("--client-ca").is_some() {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("client.pem"),
                read("client-key.pem"),
            ));
        }
        let Ok(endpoint) = Channel::from_shared(self.server.clone())
            .unwrap()
            .tls_config(tls)
        else {
            return false;
        };
        match endpoint.connect().await {
            Ok(channel) => serving(channel).await,
            Err(_) => false,
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    /// CPU time (user + system) the scheduler process has used so far.
    pub fn scheduler_cpu(&self) -> Duration {
        let pid = self
            .scheduler
            .as_ref()
            .and_then(|c| c.id())
            .expect("scheduler running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces), from field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// The scheduler process's state as `/proc` says (`R`, `S`, `Z` for
    /// exited, ...), or why it cannot be told: for failure messages.
    pub fn scheduler_state(&self) -> String {
        let Some(pid) = self.scheduler.as_ref().and_then(|c| c.id()) else {
            return "not running (reaped)".into();
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .map_or_else(|| stat.clone(), |s| format!("pid {pid} state {s}")),
            Err(e) => format!("pid {pid}: {e}"),
        }
    }

    /// The scheduler process, for a test that manages it from now on.
    pub fn take_scheduler(&mut self) -> Option<Child> {
        self.scheduler.take()
    }

    pub async fn kill_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            c.kill().await.unwrap();
        }
    }

    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("scheduler.log")).unwrap_or_default()
    }

    pub async fn add_agent(&mut self, id: &str) {
        self.add_agent_with(id, |_| {}).await;
    }

    /// Starts an agent with the process executor, then lets `configure` change its options.
    pub async fn add_agent_with(
        &mut self,
        id: &str,
        configure: impl FnOnce(&mut drover_agent::AgentOptions),
    ) {
        let mut opts =
            drover_agent::AgentOptions::new(self.nats.url.clone(), self.artifacts.clone());
        opts.id = Some(id.to_string());
        opts.executors = vec!["process".into()];
        opts.work_dir = self._tmp.path().join("work").join(id);
        opts.nats_prefix = self.nats_prefix.clone();
        opts.heartbeat_interval = Duration::from_millis(200);
        opts.kill_grace = Duration::from_secs(2);
        opts.artifacts_settings = self.store_settings.clone();
        configure(&mut opts);
        let old = self.agents.insert(id.to_string(), AgentProc::spawn(opts));
        assert!(old.is_none(), "agent {id} already runs");
    }

    /// Ends an agent as if its machine died.
    pub fn kill_agent(&mut self, id: &str) {
        let mut a = self.agents.remove(id).expect("no such agent");
        a.end(false);
    }

    pub async fn agents(&self) -> Vec<pb::Agent> {
        let channel = Channel::from_shared(self.server.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::agents_client::AgentsClient::new(channel)
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents
    }

    pub async fn agents_client(&self) -> pb::agents_client::AgentsClient<Channel> {
        let channel = Channel::from_shared(self.server.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::agents_client::AgentsClient::new(channel)
    }

    pub async fn queues(&self) -> pb::queues_client::QueuesClient<Channel> {
        let channel = Channel::from_shared(self.server.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::queues_client::QueuesClient::new(channel)
    }

    /// Creates a queue (settings not given take their defaults).
    pub async fn create_queue(&self, q: pb::Queue) {
        self.queues().await.create_queue(q).await.unwrap();
    }

    pub async fn client(&self) -> SchedulerClient<Channel> {
        self.try_client().await.unwrap()
    }

    /// A client, or the error while the scheduler does not listen.
    pub async fn try_client(&self) -> Result<SchedulerClient<Channel>, tonic::transport::Error> {
        SchedulerClient::connect(self.server.clone()).await
    }

    pub async fn triggers(&self) -> pb::triggers_client::TriggersClient<Channel> {
        pb::triggers_client::TriggersClient::connect(self.server.clone())
            .await
            .unwrap()
    }

    /// Every run of pipeline `name`, in full.
    pub async fn runs_named(&self, name: &str) -> Vec<pb::Run> {
        let summaries = self
            .client()
            .await
            .list_runs(pb::ListRunsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .runs;
        let mut runs = Vec::new();
        for s in summaries.into_iter().filter(|s| s.name == name) {
            runs.push(self.get(&s.id).await);
        }
        runs
    }

    /// Waits until pipeline `name` has at least `n` runs; returns them.
    pub async fn wait_runs_named(&self, name: &str, n: usize, timeout: Duration) -> Vec<pb::Run> {
        let deadline = Instant::now() + timeout;
        loop {
            let runs = self.runs_named(name).await;
            if runs.len() >= n {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {} runs, not {n}\n{}",
                runs.len(),
                self.scheduler_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn submit(&self, yaml: &str) -> Result<String, tonic::Status> {
        self.submit_with(yaml, &[]).await
    }

    /// Submits into `queue` with run priority `priority`.
    pub async fn submit_to(
        &self,
        yaml: &str,
        queue: &str,
        priority: i64,
    ) -> Result<String, tonic::Status> {
        let r = self
            .client()
            .await
            .submit_run(pb::SubmitRunRequest {
                spec_yaml: yaml.to_string(),
                params: Default::default(),
                queue: queue.into(),
                priority: Some(priority),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().run_id)
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
                ..Default::default()
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

    /// `GetLogs` of `task` (empty: the whole run, with `follow`).
    pub async fn log_stream(
        &self,
        run: &str,
        task: &str,
        attempt: u32,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::LogChunk>, tonic::Status> {
        let request = pb::GetLogsRequest {
            run_id: run.into(),
            task: task.into(),
            attempt,
            follow,
        };
        Ok(self.client().await.get_logs(request).await?.into_inner())
    }

    pub async fn logs(&self, run: &str, task: &str, attempt: u32) -> Result<String, tonic::Status> {
        let mut s = self.log_stream(run, task, attempt, false).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend(c?.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Every etcd key under this cluster's prefix.
    /// Submits `yaml` and expects it refused with InvalidArgument and `want`.
    pub async fn assert_refused(&self, yaml: &str, want: &str) {
        let err = self
            .client()
            .await
            .submit_run(pb::SubmitRunRequest {
                spec_yaml: yaml.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{yaml}");
        assert_eq!(err.message(), want, "{yaml}");
    }

    /// Nothing of any run is in etcd: no run record, task record or spec chunk.
    pub async fn assert_no_run_written(&self) {
        let keys = self.etcd_keys().await;
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("/runs/") || k.contains("/tasks/") || k.contains("/specs/")),
            "{keys:?}"
        );
    }

    pub async fn etcd_keys(&self) -> Vec<String> {
        let mut client =
            etcd_client::Client::connect(self.etcd.url.split(',').collect::<Vec<_>>(), None)
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

    /// Keys that hold runs and tasks (not agents or queues).
    pub async fn run_keys(&self) -> Vec<String> {
        let runs = format!("{}/runs/", self.prefix);
        let tasks = format!("{}/tasks/", self.prefix);
        self.etcd_keys()
            .await
            .into_iter()
            .filter(|k| k.starts_with(&runs) || k.starts_with(&tasks))
            .collect()
    }

    pub fn artifact(&self, key: &str) -> PathBuf {
        self.artifacts_dir.join(key)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut a) in self.agents.drain() {
            a.end(true);
        }
    }
}

/// GETs an `http://host:port/path` URL (plain HTTP/1.1, `Connection: close`)
/// and returns the status code, the Content-Type and the body.
pub async fn http_get(url: &str) -> std::io::Result<(u16, String, String)> {
    http_request("GET", url, &[], "").await
}

/// One HTTP/1.1 request; the status, content type and body of its answer.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// Most of `spans` (start, end) running at one moment: each start, against
/// the spans it falls in.
pub fn most_at_once(spans: &[(u64, u64)]) -> usize {
    spans
        .iter()
        .map(|&(start, _)| {
            spans
                .iter()
                .filter(|&&(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap_or(0)
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

/// `n` tasks (a matrix), each appending `task attempt` to `ledger`
/// after `sleep` seconds: what every agent really ran.
pub fn ledger_spec(n: usize, sleep: &str, ledger: &std::path::Path) -> String {
    let values: Vec<String> = (0..n).map(|i| format!("\"{i}\"")).collect();
    format!(
        "name: ledger\ntasks:\n  - name: t\n    matrix: {{i: [{}]}}\n    resources: {{cpu: 50m}}\n    command: [\"sh\", \"-c\", \"sleep {sleep}; echo \\\"$DROVER_TASK $DROVER_ATTEMPT\\\" >> {}\"]\n",
        values.join(", "),
        ledger.display()
    )
}

/// Every task succeeded exactly once, and no (task, attempt) ran twice.
pub fn check_exactly_once(run: &pb::Run, ledger: &std::path::Path, n: usize) {
    assert_eq!(run.state(), pb::RunState::Succeeded, "{:?}", run.message);
    assert_eq!(run.tasks.len(), n);
    for t in &run.tasks {
        assert_eq!(t.state(), pb::TaskState::Succeeded, "{}", t.name);
        let ok = t
            .attempts
            .iter()
            .filter(|a| a.state() == pb::AttemptState::Succeeded)
            .count();
        assert_eq!(ok, 1, "{}: {:?}", t.name, t.attempts);
    }
    let text = std::fs::read_to_string(ledger).unwrap();
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *ran.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts run twice: {twice:?}");
    let tasks: std::collections::BTreeSet<&str> = ran
        .keys()
        .filter_map(|l| l.rsplit_once(' ').map(|(t, _)| t))
        .collect();
    assert_eq!(tasks.len(), n, "tasks that ran");
}
