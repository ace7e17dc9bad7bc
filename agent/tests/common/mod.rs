//! Test harness: a real nats-server (JetStream, temp dir, killed on drop), a
//! temp `file://` artifact store, an in-process agent (restartable), the
//! scheduler's side of the wire (assign/cancel requests, reading the events
//! stream), and for the docker tests the local Docker engine.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use drover_agent::{Agent, AgentError, AgentOptions};
use drover_api::naming;
use drover_api::pb::{
    attempt_event::Kind, AssignBatch, AssignBatchReply, AssignReply, Assignment, AttemptEvent,
    AttemptRef, CancelAttempt, CancelReply, GpuRef, Heartbeat, InputArtifact, OutputSpec,
    PullPolicy, Resources, TaskSpec,
};
use drover_artifacts::Store;
use drover_devcluster::Server;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const AGENT_ID: &str = "a1";
pub const PREFIX: &str = "t";
pub const KILL_GRACE: Duration = Duration::from_millis(300);
/// How long a test waits for what should come: generous, because a loaded
/// two-core CI machine runs the docker tests next to every other test.
const WAIT: Duration = Duration::from_secs(60);

pub struct Harness {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub store: Store,
    /// The agent's id (`AGENT_ID` unless the test chose another).
    pub agent_id: String,
    /// The agent's `--work-dir`.
    pub work_dir: PathBuf,
    /// Scratch space outside the agent's reach (pid files, counters).
    pub scratch: PathBuf,
    opts: AgentOptions,
    shutdown: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<Result<(), AgentError>>>,
    /// Docker tests: containers labelled with this agent id are force-removed on drop.
    remove_containers: bool,
    _tmp: tempfile::TempDir,
    // Dropped last: kills nats-server.
    _nats: Server,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.remove_containers {
            remove_containers_of(&self.agent_id);
        }
    }
}

impl Harness {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts nats-server and the agent (options adjusted by `tweak`; the
    /// process executor unless it says otherwise), and returns once the
    /// agent's first heartbeat arrived.
    pub async fn start_with(tweak: impl FnOnce(&mut AgentOptions)) -> Result<Self> {
        let nats = Server::nats(None).await?;
        let tmp = tempfile::tempdir()?;
        let store_url = format!("file://{}", tmp.path().join("store").display());
        let work_dir = tmp.path().join("work");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch)?;

        let mut opts = AgentOptions::new(nats.url.clone(), store_url.clone());
        opts.id = Some(AGENT_ID.to_owned());
        opts.work_dir = work_dir.clone();
        opts.nats_prefix = PREFIX.to_owned();
        opts.heartbeat_interval = Duration::from_millis(100);
        opts.kill_grace = KILL_GRACE;
        opts.executors = vec!["process".to_owned()];
        tweak(&mut opts);
        let agent_id = opts.id.clone().unwrap_or_else(|| AGENT_ID.to_owned());
        let remove_containers = opts.executors.iter().any(|e| e == "docker");

        let client = async_nats::connect(nats.url.as_str()).await?;
        let (tx, agent) = spawn_agent(&client, &opts, &agent_id).await?;

        Ok(Harness {
            js: jetstream::new(client.clone()),
            client,
            store: drover_artifacts::open(&store_url).await?,
            agent_id,
            work_dir,
            scratch,
            opts,
            shutdown: Some(tx),
            agent: Some(agent),
            remove_containers,
            _tmp: tmp,
            _nats: nats,
        })
    }

    /// Ends the agent as if it crashed: its task is aborted mid-flight, no
    /// shutdown runs.
    pub async fn crash_agent(&mut self) -> Result<()> {
        self.shutdown.take();
        let agent = self
            .agent
            .take()
            .ok_or_else(|| anyhow!("agent already stopped"))?;
        agent.abort();
        let _ = agent.await;
        Ok(())
    }

    /// Starts the agent again, with the same options, after `stop_agent`.
    pub async fn restart_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("the agent is still running");
        }
        let (tx, agent) = spawn_agent(&self.client, &self.opts, &self.agent_id).await?;
        self.shutdown = Some(tx);
        self.agent = Some(agent);
        Ok(())
    }

    /// Shuts the agent down and returns what `Agent::run` returned.
    pub async fn stop_agent(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let agent = self
            .agent
            .take()
            .ok_or_else(|| anyhow!("agent already stopped"))?;
        tokio::time::timeout(WAIT, agent)
            .await
            .context("agent did not stop")???;
        Ok(())
    }

    pub async fn assign(&self, assignment: &Assignment) -> Result<AssignReply> {
        self.assign_raw(assignment.encode_to_vec().into()).await
    }

    pub async fn assign_raw(&self, body: Bytes) -> Result<AssignReply> {
        self.request(naming::assign_subject(PREFIX, &self.agent_id), body)
            .await
    }

    /// What the scheduler sends: a turn's assignments in one request.
    pub async fn assign_batch(&self, batch: &AssignBatch) -> Result<AssignBatchReply> {
        self.assign_batch_raw(batch.encode_to_vec().into()).await
    }

    pub async fn assign_batch_raw(&self, body: Bytes) -> Result<AssignBatchReply> {
        self.request(naming::assign_batch_subject(PREFIX, &self.agent_id), body)
            .await
    }

    pub async fn cancel(&self, attempt: &AttemptRef, grace_ms: u64) -> Result<CancelReply> {
        let body = CancelAttempt {
            attempt: Some(attempt.clone()),
            grace_ms,
        }
        .encode_to_vec();
        self.request(naming::cancel_subject(PREFIX, &self.agent_id), body.into())
            .await
    }

    /// A request to the agent, as the scheduler makes it, and its decoded reply.
    async fn request<R: prost::Message + Default>(
        &self,
        subject: String,
        body: Bytes,
    ) -> Result<R> {
        let msg = self.client.request(subject, body).await?;
        Ok(R::decode(msg.payload)?)
    }

    /// Reads this agent's events from the start of the stream.
    pub async fn events(&self) -> Result<EventReader> {
        let stream = self.js.get_stream(naming::events_stream(PREFIX)).await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                // Its single events and its batches (`<subject>.batch`):
                // nats-server 2.9 takes one filter, so the reader skips
                // other agents'.
                filter_subject: naming::events_wildcard(PREFIX),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        Ok(EventReader {
            messages: consumer.messages().await?,
            consumer,
            agent_id: self.agent_id.clone(),
            read: VecDeque::new(),
        })
    }

    /// Assigns a process task that must succeed; returns its uploaded log.
    pub async fn log_of_success(
        &self,
        events: &mut EventReader,
        attempt: &AttemptRef,
        script: &str,
    ) -> Result<String> {
        let reply = self.assign(&assignment(attempt, &sh(script))).await?;
        if !reply.accepted {
            bail!("refused: {}", reply.reason);
        }
        let fin = events.final_event(attempt).await?;
        let Kind::Succeeded(ok) = fin.kind() else {
            bail!("expected success, got {fin:?}");
        };
        Ok(String::from_utf8(
            self.store.get_bytes(&ok.log_key).await?.to_vec(),
        )?)
    }

    pub async fn heartbeats(&self) -> Result<async_nats::Subscriber> {
        Ok(self
            .client
            .subscribe(naming::heartbeat_subject(PREFIX, &self.agent_id))
            .await?)
    }

    pub fn attempt_dir(&self, a: &AttemptRef) -> PathBuf {
        self.work_dir
            .join(&a.run_id)
            .join(&a.task)
            .join(a.attempt.to_string())
    }
}

/// Starts `Agent::run` and waits for its first heartbeat; an agent that
/// fails to start fails this with its error.
async fn spawn_agent(
    client: &async_nats::Client,
    opts: &AgentOptions,
    agent_id: &str,
) -> Result<(oneshot::Sender<()>, JoinHandle<Result<(), AgentError>>)> {
    let mut heartbeats = client
        .subscribe(naming::heartbeat_subject(PREFIX, agent_id))
        .await?;
    drover_devcluster::nats_synced(client).await?;
    let (tx, rx) = oneshot::channel();
    let mut agent = tokio::spawn(Agent::run(opts.clone(), async {
        let _ = rx.await;
    }));
    let first = async {
        tokio::select! {
            hb = heartbeats.next() => hb.context("heartbeat subscription closed").map(|_| ()),
            ended = &mut agent => match ended {
                Ok(Ok(())) => bail!("the agent stopped before its first heartbeat"),
                Ok(Err(e)) => Err(anyhow!(e).context("the agent failed to start")),
                Err(e) => Err(anyhow!(e).context("the agent task failed")),
            },
        }
    };
    tokio::time::timeout(WAIT, first)
        .await
        .context("no heartbeat from the agent")??;
    Ok((tx, agent))
}

pub fn attempt_ref(run: &str, task: &str, attempt: u32) -> AttemptRef {
    AttemptRef {
        run_id: run.into(),
        task: task.into(),
        attempt,
    }
}

/// An assignment running `command` (argv) for `run/task/attempt`.
pub fn assignment(attempt: &AttemptRef, command: &[&str]) -> Assignment {
    Assignment {
        attempt: Some(attempt.clone()),
        task: Some(TaskSpec {
            name: attempt.task.clone(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        inputs: vec![],
        artifact_prefix: naming::attempt_prefix(&attempt.run_id, &attempt.task, attempt.attempt),
        gpus: vec![],
        code_sha256: String::new(),
    }
}

pub fn with_env(mut a: Assignment, name: &str, value: impl Into<String>) -> Assignment {
    if let Some(task) = a.task.as_mut() {
        task.env.insert(name.into(), value.into());
    }
    a
}

pub fn with_output(mut a: Assignment, name: &str, path: &str) -> Assignment {
    if let Some(task) = a.task.as_mut() {
        task.outputs.push(OutputSpec {
            name: name.into(),
            path: path.into(),
            result: false,
        });
    }
    a
}

/// Adds input `name` at `key`, produced by task `prep` (as the task's spec says).
pub fn with_input(mut a: Assignment, name: &str, key: &str) -> Assignment {
    a.inputs.push(InputArtifact {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    });
    if let Some(task) = a.task.as_mut() {
        task.inputs.push(drover_api::pb::InputSpec {
            name: name.into(),
            from_task: "prep".into(),
            from_output: name.into(),
            ..Default::default()
        });
    }
    a
}

/// `sh -c script` as an argv.
pub fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

pub struct EventReader {
    consumer: consumer::PullConsumer,
    messages: consumer::pull::Stream,
    agent_id: String,
    /// Events of a batch read but not returned yet.
    read: VecDeque<Event>,
}

/// One event read back from the stream, with its `Nats-Msg-Id`.
#[derive(Debug)]
pub struct Event {
    pub event: AttemptEvent,
    pub msg_id: String,
}

impl Event {
    pub fn kind(&self) -> &Kind {
        // Every event the agent publishes has a kind; a test fails loudly otherwise.
        self.event.kind.as_ref().expect("event without a kind")
    }
}

/// The `Nats-Msg-Id` an event has when it is published alone.
fn own_msg_id(ev: &AttemptEvent) -> String {
    let kind = match ev.kind {
        Some(Kind::Started(_)) => "started",
        Some(Kind::Succeeded(_)) => "succeeded",
        Some(Kind::Failed(_)) => "failed",
        None => "",
    };
    let a = ev.attempt.clone().unwrap_or_default();
    naming::event_msg_id(&a.run_id, &a.task, a.attempt, kind)
}

impl EventReader {
    pub async fn next(&mut self) -> Result<Event> {
        self.next_within(WAIT)
            .await?
            .ok_or_else(|| anyhow!("no event within {WAIT:?}"))
    }

    /// The next event, or `None` if none arrives within `within`. An event
    /// of a batch has its own id as `msg_id` once the batch's id was
    /// checked to be the one its events make.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Event>> {
        let deadline = tokio::time::Instant::now() + within;
        let single = naming::events_subject(PREFIX, &self.agent_id);
        let batch = naming::events_batch_subject(PREFIX, &self.agent_id);
        while self.read.is_empty() {
            let msg = match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("event stream ended"),
                // A heartbeat missed (the test did not read for a while, or
                // a loaded machine) is not a lost event, but the pull that
                // missed it may deliver nothing more: pull again from the
                // consumer, which keeps its place.
                Ok(Some(Err(e)))
                    if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat =>
                {
                    self.messages = self.consumer.messages().await?;
                    continue;
                }
                Ok(Some(msg)) => msg.map_err(|e| anyhow!("reading events: {e}"))?,
            };
            if msg.subject.as_str() != single && msg.subject.as_str() != batch {
                continue;
            }
            let msg_id = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let events = drover_api::events::decode(PREFIX, &msg.subject, msg.payload.clone())?;
            if msg.subject.as_str() == single {
                let (event, _) = events.into_iter().next().context("no event")?;
                self.read.push_back(Event { event, msg_id });
                continue;
            }
            let ids: Vec<String> = events.iter().map(|(ev, _)| own_msg_id(ev)).collect();
            let want = naming::event_batch_msg_id(ids.iter().map(String::as_str));
            if events.len() < 2 || msg_id != want {
                bail!(
                    "batch of {} events with id `{msg_id}`, want `{want}`",
                    events.len()
                );
            }
            for ((event, _), msg_id) in events.into_iter().zip(ids) {
                self.read.push_back(Event { event, msg_id });
            }
        }
        Ok(self.read.pop_front())
    }

    /// Returns the final event of `attempt`, and its `started` event if one
    /// came first (an attempt that ends within `STARTED_AFTER` has none);
    /// checks both belong to `attempt` and agree on the start.
    pub async fn started_and_final(
        &mut self,
        attempt: &AttemptRef,
    ) -> Result<(Option<Event>, Event)> {
        let first = self.next().await?;
        let (started, fin) = match first.kind() {
            Kind::Started(_) => {
                check_event(&first, attempt, "started", &self.agent_id)?;
                (Some(first), self.next().await?)
            }
            _ => (None, first),
        };
        let kind = match fin.kind() {
            Kind::Succeeded(_) => "succeeded",
            Kind::Failed(_) => "failed",
            Kind::Started(_) => bail!("second started event: {fin:?}"),
        };
        check_event(&fin, attempt, kind, &self.agent_id)?;
        let start = fin.event.started_at_ms;
        if start == 0 || start > fin.event.at_ms {
            bail!("final event starts at {start}, ends at {}", fin.event.at_ms);
        }
        if let Some(s) = &started {
            if s.event.at_ms != start {
                bail!("started at {}, final event says {start}", s.event.at_ms);
            }
        }
        Ok((started, fin))
    }

    /// The final event of `attempt` (see `started_and_final`).
    pub async fn final_event(&mut self, attempt: &AttemptRef) -> Result<Event> {
        Ok(self.started_and_final(attempt).await?.1)
    }

    /// Reads the final (succeeded or failed) event of `attempt`, with no
    /// started event before it (an adopted attempt's was published by the
    /// agent's earlier life); it carries the container's creation as the start.
    pub async fn final_only(&mut self, attempt: &AttemptRef) -> Result<Event> {
        let fin = self.next().await?;
        let kind = match fin.kind() {
            Kind::Succeeded(_) => "succeeded",
            Kind::Failed(_) => "failed",
            Kind::Started(_) => bail!("unexpected started event: {fin:?}"),
        };
        check_event(&fin, attempt, kind, &self.agent_id)?;
        if fin.event.started_at_ms == 0 {
            bail!("an adopted attempt's final event without its start: {fin:?}");
        }
        Ok(fin)
    }
}

fn check_event(ev: &Event, attempt: &AttemptRef, kind: &str, agent_id: &str) -> Result<()> {
    if ev.event.attempt.as_ref() != Some(attempt) {
        bail!("event for another attempt: {ev:?}");
    }
    if ev.event.agent_id != agent_id {
        bail!("event from agent `{}`", ev.event.agent_id);
    }
    let want = naming::event_msg_id(&attempt.run_id, &attempt.task, attempt.attempt, kind);
    if ev.msg_id != want {
        bail!("Nats-Msg-Id `{}`, want `{want}`", ev.msg_id);
    }
    Ok(())
}

pub fn heartbeat(msg: &async_nats::Message) -> Result<Heartbeat> {
    Ok(Heartbeat::decode(msg.payload.clone())?)
}

/// Live (non-zombie) processes in process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ..." — comm may contain spaces.
            let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
                return false;
            };
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields.first() != Some(&"Z")
                && fields.first() != Some(&"X")
                && fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
        .collect()
}

/// Waits for `path` to hold a pid written by the task.
pub async fn read_pid(path: &Path) -> Result<i32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return Ok(pid);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no pid in {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Wall-clock milliseconds, as the agent stamps its events.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- Docker --------------------------------------------------------------

/// An agent id no other test (nor an earlier run of this one) uses:
/// containers and their labels are global to the Docker engine, and an agent
/// adopts every container labelled with its id.
pub fn docker_agent_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("dk-{test}-{}-{nanos:x}", std::process::id())
}

/// The test image, then the harness with only the docker executor and
/// containers on network `none`. Fails (never skips) without an engine.
pub async fn docker_harness(
    test: &str,
    tweak: impl FnOnce(&mut AgentOptions),
) -> Result<(Harness, String)> {
    let image = drover_devcluster::docker::ensure_test_image().await?;
    let id = docker_agent_id(test);
    let h = Harness::start_with(|o| {
        o.id = Some(id);
        o.executors = vec!["docker".to_owned()];
        o.docker_network = "none".to_owned();
        tweak(o);
    })
    .await?;
    Ok((h, image))
}

pub fn with_image(mut a: Assignment, image: &str, policy: PullPolicy) -> Assignment {
    if let Some(task) = a.task.as_mut() {
        task.image = image.to_owned();
        task.set_pull_policy(policy);
    }
    a
}

pub fn with_gpus(mut a: Assignment, gpus: &[(u32, &str)]) -> Assignment {
    a.gpus = gpus
        .iter()
        .map(|(index, uuid)| GpuRef {
            index: *index,
            uuid: (*uuid).to_owned(),
            ..Default::default()
        })
        .collect();
    a
}

pub fn with_resources(mut a: Assignment, cpu_millis: u32, memory_bytes: u64) -> Assignment {
    if let Some(task) = a.task.as_mut() {
        task.resources = Some(Resources {
            cpu_millis,
            memory_bytes,
            ..Default::default()
        });
    }
    a
}

pub fn with_timeout(mut a: Assignment, timeout_ms: u64) -> Assignment {
    if let Some(task) = a.task.as_mut() {
        task.timeout_ms = timeout_ms;
    }
    a
}

/// A client of the local engine, for looking at the agent's containers.
pub async fn docker() -> Result<bollard::Docker> {
    let socket = drover_devcluster::docker::socket_path();
    let docker = bollard::Docker::connect_with_unix(
        &socket.to_string_lossy(),
        60,
        bollard::API_DEFAULT_VERSION,
    )?;
    Ok(docker.negotiate_version().await?)
}

/// Containers carrying the labels of `attempt` on agent `agent_id`.
pub async fn containers_of(
    docker: &bollard::Docker,
    agent_id: &str,
    attempt: &AttemptRef,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters = std::collections::HashMap::from([(
        "label",
        vec![
            format!("drover.agent={agent_id}"),
            format!("drover.run={}", attempt.run_id),
            format!("drover.task={}", attempt.task),
            format!("drover.attempt={}", attempt.attempt),
        ],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// Every container labelled with agent `agent_id`.
pub async fn containers_of_agent(
    docker: &bollard::Docker,
    agent_id: &str,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters =
        std::collections::HashMap::from([("label", vec![format!("drover.agent={agent_id}")])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// The container's details; `None` once it is removed.
pub async fn inspect(
    docker: &bollard::Docker,
    id: &str,
) -> Result<Option<bollard::models::ContainerInspectResponse>> {
    match docker.inspect_container(id, None).await {
        Ok(info) => Ok(Some(info)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `running`, `exited`, ... of a container that exists.
pub fn state_of(info: &bollard::models::ContainerInspectResponse) -> String {
    info.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Waits until `attempt` has exactly one container and it is in `state`;
/// returns its details.
pub async fn wait_container_state(
    docker: &bollard::Docker,
    agent_id: &str,
    attempt: &AttemptRef,
    state: &str,
) -> Result<bollard::models::ContainerInspectResponse> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = containers_of(docker, agent_id, attempt).await?;
        if let [one] = found.as_slice() {
            if let Some(info) = inspect(docker, one.id.as_deref().unwrap_or_default()).await? {
                if state_of(&info) == state {
                    return Ok(info);
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no {state} container for {attempt:?} within {WAIT:?} (found {found:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Force-removes whatever containers agent `agent_id` left (a failed test).
fn remove_containers_of(agent_id: &str) {
    let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=drover.agent={agent_id}"))
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
