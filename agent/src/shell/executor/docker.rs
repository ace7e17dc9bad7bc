//! The `docker` executor: a task's command in a container of its image,
//! through the Docker Engine API on the local unix socket (bollard).
//!
//! Containers are labelled with their attempt and agent, so an agent that
//! restarts finds its containers (still running or exited) and adopts them:
//! see [`DockerExecutor::list_owned`] and [`DockerExecutor::adopt`].

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::core::container::{ContainerSpec, ImageAction, LABEL_AGENT};
use crate::core::Termination;

/// The Engine's socket when `--docker-host` is not given.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Quick Engine calls (inspect, create, start, kill, remove) get this long
/// for their answer; streams (logs, wait, pull) only for their first byte.
const API_TIMEOUT_S: u64 = 120;
/// The startup check.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGKILL, how long the Engine gets to report the container gone.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// After the container exited, how long its last log lines get to arrive.
const LOG_DRAIN: Duration = Duration::from_secs(10);

/// The docker executor's flags (`--docker-*`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Path of the Engine's unix socket.
    pub socket: String,
    /// Network of task containers.
    pub network: String,
    pub pull_timeout: Duration,
    /// Stop containers at shutdown instead of leaving them for the next start.
    pub stop_on_shutdown: bool,
}

impl DockerConfig {
    /// From `--docker-host` (`unix:///path` or `/path`), `--docker-network`,
    /// `--docker-pull-timeout` and `--docker-stop-on-shutdown`.
    pub fn new(
        host: &str,
        network: &str,
        pull_timeout: Duration,
        stop_on_shutdown: bool,
    ) -> Result<Self, String> {
        let host = host.trim();
        let socket = match host.strip_prefix("unix://") {
            Some(path) => path,
            None if host.starts_with('/') => host,
            None => {
                return Err(format!(
                    "--docker-host `{host}`: only a local unix socket is supported (e.g. {DEFAULT_HOST})"
                ))
            }
        };
        if socket.is_empty() {
            return Err("--docker-host is empty".to_owned());
        }
        let network = network.trim();
        if network.is_empty() {
            return Err("--docker-network is empty".to_owned());
        }
        if pull_timeout.is_zero() {
            return Err("--docker-pull-timeout must be more than 0".to_owned());
        }
        Ok(DockerConfig {
            socket: socket.to_owned(),
            network: network.to_owned(),
            pull_timeout,
            stop_on_shutdown,
        })
    }
}

/// What went wrong talking to Docker; each message names the image or container.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine at `{socket}` does not answer: {reason}")]
    Unreachable { socket: String, reason: String },

    #[error("pulling image `{image}`: {reason}")]
    Pull { image: String, reason: String },

    #[error("pulling image `{image}`: not done after {}", drover_api::duration::format(*after))]
    PullTimeout { image: String, after: Duration },

    #[error("inspecting image `{image}`: {reason}")]
    Inspect { image: String, reason: String },

    #[error("image `{image}` is not present on agent `{agent}` and its pull policy is Never")]
    NotPresent { image: String, agent: String },

    /// `action` is a verb: "creating", "starting", "waiting for", ...
    #[error("{action} container `{name}`: {reason}")]
    Container {
        action: &'static str,
        name: String,
        reason: String,
    },

    #[error("listing containers: {reason}")]
    List { reason: String },
}

/// The Engine's own message where it sent one, not bollard's wrapping.
fn describe(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        EngineError::DockerStreamError { error } => error.trim().to_owned(),
        EngineError::SocketNotFoundError(path) => format!("socket `{path}` not found"),
        EngineError::RequestTimeoutError => "no answer in time".to_owned(),
        other => other.to_string(),
    }
}

fn is_status(e: &EngineError, status: u16) -> bool {
    matches!(e, EngineError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// A container labelled with this agent's id, found at startup.
#[derive(Debug, Clone)]
pub struct FoundContainer {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// Created, running, exited, ...
    pub state: String,
    /// When it was created, Unix seconds (0 when the Engine did not say).
    pub created_s: i64,
}

/// A connection to the Engine, shared by every docker attempt.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    agent_id: String,
    config: DockerConfig,
}

impl DockerExecutor {
    /// Connects and checks the Engine answers (agreeing on an API version:
    /// bollard speaks a newer one than many installed engines).
    pub async fn connect(config: &DockerConfig, agent_id: &str) -> Result<Self, DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            socket: config.socket.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_unix(&config.socket, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unreachable(describe(&e)))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(describe(&e)))?;
        let version = docker.client_version();
        info!(
            socket = %config.socket,
            api = %format!("{}.{}", version.major_version, version.minor_version),
            network = %config.network,
            "docker engine answers"
        );
        Ok(DockerExecutor {
            docker,
            agent_id: agent_id.to_owned(),
            config: config.clone(),
        })
    }

    /// The network task containers join.
    pub fn network(&self) -> &str {
        &self.config.network
    }

    /// Makes the image present as `action` says. Cancel-safe: dropping the
    /// future closes the pull's connection, and the Engine cancels the pull.
    pub async fn ensure_image(&self, image: &str, action: ImageAction) -> Result<(), DockerError> {
        let present = match action {
            ImageAction::Pull => false,
            ImageAction::PullIfMissing | ImageAction::RequireLocal => {
                match self.docker.inspect_image(image).await {
                    Ok(_) => true,
                    Err(e) if is_status(&e, 404) => false,
                    Err(e) => {
                        return Err(DockerError::Inspect {
                            image: image.to_owned(),
                            reason: describe(&e),
                        })
                    }
                }
            }
        };
        match (present, action) {
            (true, _) => Ok(()),
            (false, ImageAction::RequireLocal) => Err(DockerError::NotPresent {
                image: image.to_owned(),
                agent: self.agent_id.clone(),
            }),
            (false, _) => self.pull(image).await,
        }
    }

    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let after = self.config.pull_timeout;
        info!(image, "pulling image");
        // The whole pull is bounded below; the client's own timeout only
        // covers the wait for the Engine's first answer.
        let client = self
            .docker
            .clone()
            .with_timeout(after + Duration::from_secs(1));
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let pull = async {
            let mut progress = client.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| DockerError::Pull {
                    image: image.to_owned(),
                    reason: describe(&e),
                })?;
            }
            Ok(())
        };
        match tokio::time::timeout(after, pull).await {
            Ok(pulled) => pulled,
            Err(_) => Err(DockerError::PullTimeout {
                image: image.to_owned(),
                after,
            }),
        }
    }

    /// Creates and starts the container, and starts copying its output into
    /// `log`. A container of the same name left from an earlier life of this
    /// agent (no attempt runs in it: the agent does not know it) is replaced.
    pub async fn start(
        &self,
        spec: &ContainerSpec,
        log: std::fs::File,
    ) -> Result<RunningContainer, DockerError> {
        let err = |action, e: &EngineError| DockerError::Container {
            action,
            name: spec.name.clone(),
            reason: describe(e),
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = match self
            .docker
            .create_container(Some(options.clone()), create_body(spec))
            .await
        {
            Ok(created) => created,
            Err(e) if is_status(&e, 409) => {
                warn!(container = %spec.name, "a container of that name is left over, replacing it");
                self.remove(&spec.name).await;
                self.docker
                    .create_container(Some(options), create_body(spec))
                    .await
                    .map_err(|e| err("creating", &e))?
            }
            Err(e) => return Err(err("creating", &e)),
        };
        for warning in &created.warnings {
            warn!(container = %spec.name, warning = %warning, "docker warns");
        }
        let id = created.id;
        if let Err(e) = self.docker.start_container(&id, None).await {
            self.remove(&id).await;
            return Err(err("starting", &e));
        }
        debug!(container = %spec.name, id = %id, "container started");
        Ok(self.running(id, spec.name.clone(), tokio::fs::File::from_std(log)))
    }

    fn running(&self, id: String, name: String, log: tokio::fs::File) -> RunningContainer {
        let logs = tokio::spawn(follow_logs(self.docker.clone(), id.clone(), log));
        RunningContainer {
            docker: self.docker.clone(),
            id,
            name,
            logs: Some(logs),
            oom_killed: false,
            image_id: String::new(),
            stop_on_shutdown: self.config.stop_on_shutdown,
        }
    }

    /// Every container labelled with this agent's id, running or not.
    pub async fn list_owned(&self) -> Result<Vec<FoundContainer>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_AGENT}={}", self.agent_id)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::List {
                reason: describe(&e),
            })?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_else(|| id.clone());
                Some(FoundContainer {
                    name,
                    labels: c.labels.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    created_s: c.created.unwrap_or(0),
                    id,
                })
            })
            .collect())
    }

    /// Takes over a container an earlier life of this agent started: its
    /// output is copied again, from the start, into `log_path` (truncated). A
    /// container that was created but not started yet is started.
    pub async fn adopt(
        &self,
        found: &FoundContainer,
        log_path: &Path,
    ) -> Result<RunningContainer, DockerError> {
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(log_path)
            .await
            .map_err(|e| DockerError::Container {
                action: "adopting",
                name: found.name.clone(),
                reason: format!("opening log `{}`: {e}", log_path.display()),
            })?;
        if found.state == ContainerSummaryStateEnum::CREATED.to_string() {
            self.docker
                .start_container(&found.id, None)
                .await
                .map_err(|e| DockerError::Container {
                    action: "starting",
                    name: found.name.clone(),
                    reason: describe(&e),
                })?;
        }
        Ok(self.running(found.id.clone(), found.name.clone(), log))
    }

    /// Kills and removes a container the agent cannot finish.
    pub async fn discard(&self, found: &FoundContainer) {
        kill(&self.docker, &found.id, "SIGKILL").await;
        self.remove(&found.id).await;
    }

    async fn remove(&self, id_or_name: &str) {
        remove(&self.docker, id_or_name).await;
    }
}

/// A started (or adopted) container.
#[derive(Debug)]
pub struct RunningContainer {
    docker: Docker,
    id: String,
    name: String,
    /// Copies the container's output into the attempt's log until it exits.
    logs: Option<JoinHandle<()>>,
    oom_killed: bool,
    /// The id (`sha256:…`) of the image the container was created from,
    /// once inspected after it exited: what ran, whatever its tag says now.
    image_id: String,
    stop_on_shutdown: bool,
}

impl RunningContainer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image that ran (`sha256:…`), known once [`Self::wait`] returned;
    /// empty if the engine did not say.
    pub fn image_id(&self) -> &str {
        &self.image_id
    }

    /// Whether an agent shutdown should stop it (else it is left running).
    pub fn stop_on_shutdown(&self) -> bool {
        self.stop_on_shutdown
    }

    /// Waits until the container is not running, and returns its exit code.
    pub async fn wait(&mut self) -> Result<Termination, DockerError> {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let code = loop {
            let mut waited = self.docker.wait_container(&self.id, Some(options.clone()));
            match waited.next().await {
                Some(Ok(status)) => break status.status_code,
                // bollard reports a non-zero exit as an error carrying the code.
                Some(Err(EngineError::DockerContainerWaitError { code, .. })) => break code,
                // The Engine sends its answer's headers at once; should one
                // be slow, the container is still running: wait again.
                Some(Err(EngineError::RequestTimeoutError)) => continue,
                Some(Err(e)) => return Err(self.error("waiting for", &e)),
                None => {
                    return Err(DockerError::Container {
                        action: "waiting for",
                        name: self.name.clone(),
                        reason: "the engine closed the wait without an exit code".to_owned(),
                    })
                }
            }
        };
        match self.docker.inspect_container(&self.id, None).await {
            Ok(info) => {
                self.oom_killed = info.state.and_then(|s| s.oom_killed).unwrap_or(false);
                self.image_id = info.image.unwrap_or_default();
            }
            Err(e) => {
                debug!(container = %self.name, error = %describe(&e), "inspect after exit failed")
            }
        }
        Ok(Termination::Exited(i32::try_from(code).unwrap_or(-1)))
    }

    /// SIGTERM, up to `grace` for the container to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Result<(), DockerError> {
        kill(&self.docker, &self.id, "SIGTERM").await;
        if let Ok(waited) = tokio::time::timeout(grace, self.wait()).await {
            return waited.map(|_| ());
        }
        debug!(container = %self.name, ?grace, "grace period over, killing");
        kill(&self.docker, &self.id, "SIGKILL").await;
        match tokio::time::timeout(KILL_WAIT, self.wait()).await {
            Ok(waited) => waited.map(|_| ()),
            Err(_) => Err(DockerError::Container {
                action: "stopping",
                name: self.name.clone(),
                reason: format!("still running {KILL_WAIT:?} after SIGKILL"),
            }),
        }
    }

    /// After it exited: lets the last log lines arrive, removes the
    /// container, and returns what the log should say about it.
    pub async fn finish(mut self) -> Vec<String> {
        if let Some(mut logs) = self.logs.take() {
            if tokio::time::timeout(LOG_DRAIN, &mut logs).await.is_err() {
                logs.abort();
                warn!(container = %self.name, "log not complete after {LOG_DRAIN:?}, giving up on the rest");
            }
        }
        remove(&self.docker, &self.id).await;
        let mut notes = Vec::new();
        if self.oom_killed {
            notes.push(format!(
                "container `{}` was killed for exceeding its memory limit",
                self.name
            ));
        }
        notes
    }

    /// Leaves the container running (the agent is shutting down; its next
    /// start adopts it).
    pub fn detach(mut self) {
        if let Some(logs) = self.logs.take() {
            logs.abort();
        }
        info!(container = %self.name, "left running for the next agent start to adopt");
    }

    fn error(&self, action: &'static str, e: &EngineError) -> DockerError {
        DockerError::Container {
            action,
            name: self.name.clone(),
            reason: describe(e),
        }
    }
}

impl Drop for RunningContainer {
    fn drop(&mut self) {
        // The container itself stays (an agent that dies leaves it for its
        // next start to adopt); only the log copy stops.
        if let Some(logs) = self.logs.take() {
            logs.abort();
        }
    }
}

/// Sends `signal`; a container that is gone or not running is not an error.
async fn kill(docker: &Docker, id: &str, signal: &str) {
    let options = KillContainerOptionsBuilder::new().signal(signal).build();
    match docker.kill_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
        Err(e) => {
            warn!(container = %id, signal, error = %describe(&e), "signalling container failed")
        }
    }
}

/// Force-removes a container and its anonymous volumes.
async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => debug!(container = %id, "container removed"),
        // Gone already, or its removal is in progress.
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
        Err(e) => warn!(container = %id, error = %describe(&e), "removing container failed"),
    }
}

/// Copies stdout and stderr, from the container's start, as they come.
async fn follow_logs(docker: Docker, id: String, mut log: tokio::fs::File) {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut output = docker.logs(&id, Some(options));
    while let Some(chunk) = output.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk.into_bytes(),
            Err(e) => {
                warn!(container = %id, error = %describe(&e), "reading container output failed");
                break;
            }
        };
        if let Err(e) = log.write_all(&chunk).await {
            warn!(container = %id, error = %e, "writing container output to the log failed");
            break;
        }
    }
    if let Err(e) = log.flush().await {
        warn!(container = %id, error = %e, "flushing the log failed");
    }
}

/// The Engine's create request for `spec`.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mounts = spec
        .mounts
        .iter()
        .map(|m| Mount {
            source: Some(m.source.to_string_lossy().into_owned()),
            target: Some(m.target.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let device_requests = (!spec.gpu_uuids.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(spec.gpu_uuids.clone()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        }]
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(spec.entrypoint.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        working_dir: Some(spec.working_dir.clone()),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            nano_cpus: spec.nano_cpus,
            memory: spec.memory,
            device_requests,
            network_mode: Some(spec.network.clone()),
            // A tiny init as PID 1 forwards SIGTERM to the task (a task
            // that is PID 1 itself ignores it) and reaps its zombies.
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn the_host_must_be_a_unix_socket() -> TestResult {
        let cfg = |host: &str| DockerConfig::new(host, "none", Duration::from_secs(1), false);
        assert_eq!(cfg(DEFAULT_HOST)?.socket, "/var/run/docker.sock");
        assert_eq!(cfg("/run/docker.sock")?.socket, "/run/docker.sock");
        let err = cfg("tcp://10.0.0.1:2375").unwrap_err();
        assert!(err.contains("only a local unix socket"), "{err}");
        assert!(cfg("unix://").is_err());
        assert!(DockerConfig::new(DEFAULT_HOST, " ", Duration::from_secs(1), false).is_err());
        assert!(DockerConfig::new(DEFAULT_HOST, "none", Duration::ZERO, false).is_err());
        Ok(())
    }

    #[test]
    fn engine_messages_are_shown_as_the_engine_wrote_them() {
        let e = EngineError::DockerResponseServerError {
            status_code: 404,
            message: "pull access denied for x\n".into(),
        };
        assert_eq!(describe(&e), "pull access denied for x");
        assert!(is_status(&e, 404) && !is_status(&e, 409));
    }
}
