//! Simulated agents: they speak the agents' real NATS protocol (the subjects
//! in `drover_api::naming`, the messages in `proto/drover/v1/agent.proto`)
//! but run nothing. A batch of assignments is accepted, then the
//! `succeeded` events of its attempts are published to JetStream in one
//! message (one `AttemptEventBatch`, or one `AttemptEvent` for a batch of
//! one), with the `Nats-Msg-Id` a real agent gives it, awaiting the
//! stream's ack: a real agent's publisher sends events that are ready
//! together in one message the same way. The attempts are reported running
//! in heartbeats until then, as `drover-agent` does. Like a real agent's attempt that
//! ends within `STARTED_AFTER` (50 ms), it publishes no `started` event: the
//! final one carries the start (`started_at_ms`). What is left to measure is the scheduler, etcd
//! and NATS, without process start-up.
//!
//! Every simulated agent carries the label `drover.bench/simulated=true`
//! and the hostname `simulated`, so no report can mistake it for a machine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::{self, attempt_event::Kind};
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The label every simulated agent carries.
pub const SIMULATED_LABEL: (&str, &str) = ("drover.bench/simulated", "true");
/// Publishing an event is retried this often before it counts as an error.
const PUBLISH_TRIES: u32 = 20;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nats_url: String,
    pub nats_prefix: String,
    pub agents: usize,
    /// Agent ids are `<id_prefix><index>`.
    pub id_prefix: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub heartbeat_interval: Duration,
    /// Declared outputs are stored with this content (None: outputs are
    /// not stored, as no task reads them).
    pub outputs: Option<SimOutputs>,
}

/// What simulated attempts store for their declared outputs: the same
/// content for each (a `for_each` list, say), in a file:// artifact store.
#[derive(Debug, Clone)]
pub struct SimOutputs {
    /// The artifact store's root directory.
    pub dir: std::path::PathBuf,
    pub content: Arc<Vec<u8>>,
}

impl SimOutputs {
    /// Stores the assignment's declared outputs; their artifacts.
    fn store(&self, assignment: &pb::Assignment) -> Vec<pb::Artifact> {
        let Some(task) = &assignment.task else {
            return Vec::new();
        };
        task.outputs
            .iter()
            .filter_map(|o| {
                let key = naming::output_key(&assignment.artifact_prefix, &o.name);
                let path = self.dir.join(&key);
                std::fs::create_dir_all(path.parent()?).ok()?;
                std::fs::write(&path, self.content.as_slice()).ok()?;
                Some(pb::Artifact {
                    name: o.name.clone(),
                    key,
                    size: self.content.len() as u64,
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// Counters the scenarios read while the simulator runs.
#[derive(Debug, Default)]
pub struct SimStats {
    pub assigned: AtomicU64,
    pub refused: AtomicU64,
    /// Attempts whose final event the stream acknowledged.
    pub finished: AtomicU64,
    /// Of those, the ones acknowledged in a message with others.
    pub batched: AtomicU64,
    pub publish_errors: AtomicU64,
    pub heartbeats: AtomicU64,
}

type Running = Arc<Mutex<HashMap<usize, HashSet<pb::AttemptRef>>>>;

/// Running simulated agents; stopped (and their tasks ended) on drop.
pub struct Simulator {
    pub stats: Arc<SimStats>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Simulator {
    pub async fn start(opts: SimOptions) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("drover-bench simulated agents")
            .connect(opts.nats_url.as_str())
            .await
            .with_context(|| format!("connecting to {}", opts.nats_url))?;
        let js = jetstream::new(client.clone());
        // The same stream configuration the agents and the scheduler create.
        js.get_or_create_stream(naming::events_stream_config(&opts.nats_prefix))
            .await
            .context("creating the events stream")?;
        // One wildcard subscription serves every simulated agent: the
        // scheduler still addresses each one on its own subject.
        let p = &opts.nats_prefix;
        let assigns = client.subscribe(format!("{p}.agent.*.assigns")).await?;
        let cancels = client.subscribe(format!("{p}.agent.*.cancel")).await?;
        let now = client.subscribe(naming::heartbeat_now_subject(p)).await?;

        let stats = Arc::new(SimStats::default());
        let running: Running = Arc::default();
        let (stop, stop_rx) = watch::channel(false);
        let fleet = Arc::new(Fleet::new(&opts));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_assigns(
            client.clone(),
            opts.outputs.clone(),
            js,
            fleet.clone(),
            assigns,
            running.clone(),
            stats.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(serve_cancels(
            client.clone(),
            fleet.clone(),
            cancels,
            running.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(heartbeats(
            client,
            fleet,
            now,
            running,
            stats.clone(),
            stop_rx,
        ));
        Ok(Self { stats, stop, tasks })
    }

    /// Waits until `n` final events were acked, or `timeout` passes.
    pub async fn wait_finished(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.stats.finished.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
    }
}

/// The simulated machines: ids and what every heartbeat repeats.
struct Fleet {
    prefix: String,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    instances: Vec<String>,
    opts: SimOptions,
}

impl Fleet {
    fn new(opts: &SimOptions) -> Self {
        let ids: Vec<String> = (0..opts.agents)
            .map(|i| format!("{}{i:05}", opts.id_prefix))
            .collect();
        Self {
            prefix: opts.nats_prefix.clone(),
            index: ids.iter().cloned().zip(0..).collect(),
            instances: (0..opts.agents)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect(),
            ids,
            opts: opts.clone(),
        }
    }

    /// The agent a request subject (`<prefix>.agent.<id>.<verb>`) is for, if ours.
    fn agent_of(&self, subject: &str) -> Option<usize> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".agent.")?;
        let id = rest.rsplit_once('.')?.0;
        self.index.get(id).copied()
    }

    fn heartbeat(&self, i: usize, running: Vec<pb::AttemptRef>) -> pb::Heartbeat {
        pb::Heartbeat {
            agent_id: self.ids[i].clone(),
            executors: vec!["process".into()],
            cpu_millis: self.opts.cpu_millis,
            memory_bytes: self.opts.memory_bytes,
            running,
            sent_at_ms: now_ms(),
            labels: [(SIMULATED_LABEL.0.into(), SIMULATED_LABEL.1.into())].into(),
            instance: self.instances[i].clone(),
            hostname: "simulated".into(),
            ..Default::default()
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resolves once the simulator is told to stop (the watch guard stays inside).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn reply(client: &async_nats::Client, msg: &async_nats::Message, body: Vec<u8>) {
    if let Some(to) = msg.reply.clone() {
        // A lost reply looks like an agent that did not answer: the scheduler copes.
        let _ = client.publish(to, Bytes::from(body)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_assigns(
    client: async_nats::Client,
    outputs: Option<SimOutputs>,
    js: jetstream::Context,
    fleet: Arc<Fleet>,
    mut assigns: async_nats::Subscriber,
    running: Running,
    stats: Arc<SimStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            _ = stopped(&mut stop) => return,
            m = assigns.next() => match m { Some(m) => m, None => return },
        };
        let Some(agent) = fleet.agent_of(&msg.subject) else {
            continue;
        };
        let batch = match pb::AssignBatch::decode(msg.payload.clone()) {
            Ok(batch) => batch,
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let refuse = pb::AssignBatchReply {
                    replies: Vec::new(),
                    malformed: e.to_string(),
                };
                reply(&client, &msg, refuse.encode_to_vec()).await;
                continue;
            }
        };
        let mut replies = Vec::with_capacity(batch.assignments.len());
        let mut fresh = Vec::new();
        let mut stored: HashMap<pb::AttemptRef, Vec<pb::Artifact>> = HashMap::new();
        for assignment in batch.assignments {
            if let Some(outputs) = &outputs {
                let artifacts = outputs.store(&assignment);
                if let (false, Some(attempt)) = (artifacts.is_empty(), &assignment.attempt) {
                    stored.insert(attempt.clone(), artifacts);
                }
            }
            let Some(attempt) = assignment.attempt else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                replies.push(pb::AssignReply {
                    accepted: false,
                    reason: "malformed assignment".into(),
                });
                continue;
            };
            replies.push(pb::AssignReply {
                accepted: true,
                reason: String::new(),
            });
            // A re-sent assignment is already running, as a real agent answers.
            if lock(&running)
                .entry(agent)
                .or_default()
                .insert(attempt.clone())
            {
                fresh.push(attempt);
            }
        }
        let answer = pb::AssignBatchReply {
            replies,
            malformed: String::new(),
        };
        reply(&client, &msg, answer.encode_to_vec()).await;
        if fresh.is_empty() {
            continue;
        }
        // Every attempt of the batch finishes at once, so their events go
        // in one message, as a real agent's publisher sends the events that
        // are ready together.
        stats
            .assigned
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let (js, running, stats) = (js.clone(), running.clone(), stats.clone());
        let (prefix, agent_id) = (fleet.prefix.clone(), fleet.ids[agent].clone());
        let started_at_ms = now_ms();
        tokio::spawn(async move {
            let ok =
                publish_succeeded(&js, &prefix, &agent_id, &fresh, &stored, started_at_ms).await;
            if let Some(set) = lock(&running).get_mut(&agent) {
                for attempt in &fresh {
                    set.remove(attempt);
                }
            }
            let n = fresh.len() as u64;
            if !ok {
                stats.publish_errors.fetch_add(n, Ordering::Relaxed);
                return;
            }
            stats.finished.fetch_add(n, Ordering::Relaxed);
            if n > 1 {
                stats.batched.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
}

/// The `succeeded` events of `attempts`, in one message (an
/// `AttemptEventBatch` when there are several), acknowledged by the stream;
/// retried like the agent does.
async fn publish_succeeded(
    js: &jetstream::Context,
    prefix: &str,
    agent_id: &str,
    attempts: &[pb::AttemptRef],
    outputs: &HashMap<pb::AttemptRef, Vec<pb::Artifact>>,
    started_at_ms: u64,
) -> bool {
    let at_ms = now_ms();
    let event = |attempt: &pb::AttemptRef| pb::AttemptEvent {
        attempt: Some(attempt.clone()),
        agent_id: agent_id.to_string(),
        at_ms,
        kind: Some(Kind::Succeeded(pb::AttemptSucceeded {
            outputs: outputs.get(attempt).cloned().unwrap_or_default(),
            ..Default::default()
        })),
        started_at_ms,
    };
    let ids: Vec<String> = attempts
        .iter()
        .map(|a| naming::event_msg_id(&a.run_id, &a.task, a.attempt, "succeeded"))
        .collect();
    let (subject, payload, msg_id) = match attempts {
        [one] => (
            naming::events_subject(prefix, agent_id),
            event(one).encode_to_vec(),
            ids[0].clone(),
        ),
        _ => (
            naming::events_batch_subject(prefix, agent_id),
            pb::AttemptEventBatch {
                events: attempts.iter().map(event).collect(),
                traceparents: Vec::new(),
            }
            .encode_to_vec(),
            naming::event_batch_msg_id(ids.iter().map(String::as_str)),
        ),
    };
    let payload = Bytes::from(payload);
    let mut backoff = Duration::from_millis(50);
    for _ in 0..PUBLISH_TRIES {
        let msg = PublishMessage::build()
            .payload(payload.clone())
            .message_id(&msg_id);
        let acked = async { js.send_publish(subject.clone(), msg).await?.await }.await;
        if acked.is_ok() {
            return true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    false
}

async fn serve_cancels(
    client: async_nats::Client,
    fleet: Arc<Fleet>,
    mut cancels: async_nats::Subscriber,
    running: Running,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            _ = stopped(&mut stop) => return,
            m = cancels.next() => match m { Some(m) => m, None => return },
        };
        let Some(agent) = fleet.agent_of(&msg.subject) else {
            continue;
        };
        // Simulated work ends by itself an instant later, so a cancel only
        // says whether the attempt is still being reported.
        let found = match pb::CancelAttempt::decode(msg.payload.clone()) {
            Ok(pb::CancelAttempt {
                attempt: Some(a), ..
            }) => lock(&running).get(&agent).is_some_and(|s| s.contains(&a)),
            _ => false,
        };
        reply(&client, &msg, pb::CancelReply { found }.encode_to_vec()).await;
    }
}

/// Every agent heartbeats once per interval, spread evenly over it (as
/// independent machines would be); a "heartbeat now" request answers for all.
async fn heartbeats(
    client: async_nats::Client,
    fleet: Arc<Fleet>,
    mut now: async_nats::Subscriber,
    running: Running,
    stats: Arc<SimStats>,
    mut stop: watch::Receiver<bool>,
) {
    let n = fleet.ids.len();
    if n == 0 {
        return;
    }
    let send = |i: usize| {
        let list: Vec<pb::AttemptRef> = lock(&running)
            .get(&i)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let hb = fleet.heartbeat(i, list);
        (
            naming::heartbeat_subject(&fleet.prefix, &fleet.ids[i]),
            Bytes::from(hb.encode_to_vec()),
        )
    };
    let interval = fleet.opts.heartbeat_interval.max(Duration::from_millis(10));
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            m = now.next() => {
                if m.is_none() { return; }
                for i in 0..n {
                    let (subject, body) = send(i);
                    if client.publish(subject, body).await.is_ok() {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = tick.tick() => {
                let due = (start.elapsed().as_secs_f64() / interval.as_secs_f64() * n as f64) as u64;
                while sent < due {
                    let (subject, body) = send((sent % n as u64) as usize);
                    if client.publish(subject, body).await.is_ok() {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_subjects_map_to_our_agents_only() {
        let fleet = Fleet::new(&SimOptions {
            nats_url: String::new(),
            nats_prefix: "b.1".into(),
            agents: 3,
            id_prefix: "sim-".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            heartbeat_interval: Duration::from_secs(2),
            outputs: None,
        });
        assert_eq!(fleet.agent_of("b.1.agent.sim-00002.assign"), Some(2));
        assert_eq!(fleet.agent_of("b.1.agent.sim-00003.assign"), None);
        assert_eq!(fleet.agent_of("other.agent.sim-00000.assign"), None);
        let hb = fleet.heartbeat(1, vec![]);
        assert_eq!(hb.agent_id, "sim-00001");
        assert_eq!(
            hb.labels.get(SIMULATED_LABEL.0).map(String::as_str),
            Some("true")
        );
    }
}
