//! Test harness: a real nats-server (JetStream, temp dir, killed on drop), a
//! temp `file://` artifact store, an in-process agent, and the scheduler's
//! side of the wire (assign/cancel requests, reading the events stream).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use drover_agent::{Agent, AgentError, AgentOptions};
use drover_api::naming;
use drover_api::pb::{
    attempt_event::Kind, AssignReply, Assignment, AttemptEvent, AttemptRef, CancelAttempt,
    CancelReply, Heartbeat, InputArtifact, OutputSpec, TaskSpec,
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
const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub store: Store,
    /// The agent's `--work-dir`.
    pub work_dir: PathBuf,
    /// Scratch space outside the agent's reach (pid files, counters).
    pub scratch: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    agent: Option<JoinHandle<Result<(), AgentError>>>,
    _tmp: tempfile::TempDir,
    // Dropped last: kills nats-server.
    _nats: Server,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts nats-server and the agent (options adjusted by `tweak`), and
    /// returns once the agent's first heartbeat arrived.
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
        tweak(&mut opts);

        let client = async_nats::connect(nats.url.as_str()).await?;
        let mut heartbeats = client
            .subscribe(naming::heartbeat_subject(PREFIX, AGENT_ID))
            .await?;
        client.flush().await?;

        let (tx, rx) = oneshot::channel();
        let agent = tokio::spawn(Agent::run(opts, async {
            let _ = rx.await;
        }));
        tokio::time::timeout(WAIT, heartbeats.next())
            .await
            .context("no heartbeat from the agent")?
            .context("heartbeat subscription closed")?;

        Ok(Harness {
            js: jetstream::new(client.clone()),
            client,
            store: drover_artifacts::open(&store_url).await?,
            work_dir,
            scratch,
            shutdown: Some(tx),
            agent: Some(agent),
            _tmp: tmp,
            _nats: nats,
        })
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
        let msg = self
            .client
            .request(naming::assign_subject(PREFIX, AGENT_ID), body)
            .await?;
        Ok(AssignReply::decode(msg.payload)?)
    }

    pub async fn cancel(&self, attempt: &AttemptRef, grace_ms: u64) -> Result<CancelReply> {
        let body = CancelAttempt {
            attempt: Some(attempt.clone()),
            grace_ms,
        }
        .encode_to_vec();
        let msg = self
            .client
            .request(naming::cancel_subject(PREFIX, AGENT_ID), body.into())
            .await?;
        Ok(CancelReply::decode(msg.payload)?)
    }

    /// Reads this agent's events from the start of the stream.
    pub async fn events(&self) -> Result<EventReader> {
        let stream = self.js.get_stream(naming::events_stream(PREFIX)).await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: naming::events_subject(PREFIX, AGENT_ID),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        Ok(EventReader {
            messages: consumer.messages().await?,
        })
    }

    pub async fn heartbeats(&self) -> Result<async_nats::Subscriber> {
        Ok(self
            .client
            .subscribe(naming::heartbeat_subject(PREFIX, AGENT_ID))
            .await?)
    }

    pub fn attempt_dir(&self, a: &AttemptRef) -> PathBuf {
        self.work_dir
            .join(&a.run_id)
            .join(&a.task)
            .join(a.attempt.to_string())
    }
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
        });
    }
    a
}

pub fn with_input(mut a: Assignment, name: &str, key: &str) -> Assignment {
    a.inputs.push(InputArtifact {
        name: name.into(),
        key: key.into(),
    });
    a
}

/// `sh -c script` as an argv.
pub fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

pub struct EventReader {
    messages: consumer::pull::Stream,
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

impl EventReader {
    pub async fn next(&mut self) -> Result<Event> {
        self.next_within(WAIT)
            .await?
            .ok_or_else(|| anyhow!("no event within {WAIT:?}"))
    }

    /// The next event, or `None` if none arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Event>> {
        let msg = match tokio::time::timeout(within, self.messages.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("event stream ended"),
            Ok(Some(msg)) => msg.map_err(|e| anyhow!("reading events: {e}"))?,
        };
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        Ok(Some(Event {
            event: AttemptEvent::decode(msg.payload.clone())?,
            msg_id,
        }))
    }

    /// Reads `started`, then returns the final event; checks both belong to `attempt`.
    pub async fn started_then_final(&mut self, attempt: &AttemptRef) -> Result<Event> {
        let started = self.next().await?;
        if !matches!(started.kind(), Kind::Started(_)) {
            bail!("expected started, got {started:?}");
        }
        check_event(&started, attempt, "started")?;
        let fin = self.next().await?;
        let kind = match fin.kind() {
            Kind::Succeeded(_) => "succeeded",
            Kind::Failed(_) => "failed",
            Kind::Started(_) => bail!("second started event: {fin:?}"),
        };
        check_event(&fin, attempt, kind)?;
        Ok(fin)
    }
}

fn check_event(ev: &Event, attempt: &AttemptRef, kind: &str) -> Result<()> {
    if ev.event.attempt.as_ref() != Some(attempt) {
        bail!("event for another attempt: {ev:?}");
    }
    if ev.event.agent_id != AGENT_ID {
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
