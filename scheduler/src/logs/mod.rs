//! `GetLogs` with `follow`: a task's log (or every task's of a run) while
//! it is written, then the stored log, with nothing lost or repeated where
//! one hands over to the other.
//!
//! Agents publish what a running attempt's log gains on core NATS
//! (`LiveLogChunk`, each with the byte offset of its data, see
//! `drover_agent::shell::live_log`) and answer requests for the log so
//! far. A follower here:
//! 1. subscribes to the run's (or task's) live subject and to the engine's
//!    run changes, and only then reads the run, so nothing slips between;
//! 2. for each followed task takes its latest attempt: an ended one's
//!    stored log is sent whole; a running one's log so far is read from its
//!    agent, and live chunks carry on from the offset reached (overlap
//!    dropped, a gap read from the agent again: [`follow::take`]);
//! 3. when the record says the attempt ended, sends its stored log from
//!    the offset reached, which ends it: the object is the same file the
//!    agent tailed, so the bytes line up;
//! 4. follows each later attempt of the task (retries, preemption, a lost
//!    agent) the same way, announced by a chunk without data;
//! 5. ends when every followed task has finished (with a task) or the run
//!    has ended (without), and everything is sent.
//!
//! Should the agent be unreachable for a gap, the follower stops taking
//! live chunks for that attempt and waits for its stored log: late, but
//! still whole. An attempt lost with its agent has no stored log: what was
//! followed live is all there is.

pub mod follow;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, warn};

use drover_api::{naming, pb};

use crate::error::{Result, SchedulerError};
use crate::grpc::Api;
use follow::{Next, Take, TaskFollow};

/// How long an agent has to answer for a running attempt's log.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes asked of an agent at once (it caps replies at 512 KiB).
const READ_BYTES: u32 = 256 * 1024;

/// The NATS side of live logs: agents' chunks and their logs so far.
#[derive(Clone)]
pub struct LiveLogSource {
    client: Client,
    prefix: String,
}

impl LiveLogSource {
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }

    /// Live chunks of `task` of the run, or of all its tasks.
    async fn subscribe(&self, run_id: &str, task: Option<&str>) -> Result<Subscriber> {
        let subject = naming::logs_follow_subject(&self.prefix, run_id, task);
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| SchedulerError::Nats(e.to_string()))
    }

    /// The log of a running attempt on `agent`, from `offset`.
    async fn read(
        &self,
        agent: &str,
        attempt: pb::AttemptRef,
        offset: u64,
    ) -> Result<pb::LiveLogReply> {
        let request = pb::LiveLogRequest {
            attempt: Some(attempt),
            offset,
            max_bytes: READ_BYTES,
        };
        let subject = naming::live_log_subject(&self.prefix, agent);
        let asked = self.client.request(subject, request.encode_to_vec().into());
        let msg = tokio::time::timeout(READ_TIMEOUT, asked)
            .await
            .map_err(|_| SchedulerError::Nats(format!("no answer within {READ_TIMEOUT:?}")))?
            .map_err(|e| SchedulerError::Nats(e.to_string()))?;
        pb::LiveLogReply::decode(msg.payload).map_err(|e| SchedulerError::Nats(e.to_string()))
    }
}

/// A checked follow request, subscribed and with its run read: run it with
/// [`Follower::run`].
pub struct Follower {
    api: Api,
    live: Subscriber,
    changes: broadcast::Receiver<String>,
    /// The run as last read.
    run: Arc<pb::Run>,
    /// `None`: every task of the run.
    only: Option<String>,
    tasks: HashMap<String, TaskFollow>,
    tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
}

/// Why following stopped early.
enum Stop {
    /// The client went away.
    Gone,
    Failed(SchedulerError),
}

impl From<SchedulerError> for Stop {
    fn from(e: SchedulerError) -> Self {
        Stop::Failed(e)
    }
}

impl Follower {
    /// Subscribes, then reads the run; NotFound for an unknown run or task.
    pub async fn open(
        api: &Api,
        run_id: &str,
        task: Option<&str>,
        tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
    ) -> Result<Self> {
        // Both before the read: a chunk or a change after it is not missed.
        let live = api.live_logs.subscribe(run_id, task).await?;
        let changes = api.engine.subscribe();
        let run = api.read_run(run_id).await?;
        if let Some(task) = task {
            if !run.tasks.iter().any(|t| t.name == task) {
                return Err(SchedulerError::TaskNotFound {
                    run: run_id.to_owned(),
                    task: task.to_owned(),
                });
            }
        }
        Ok(Self {
            api: api.clone(),
            live,
            changes,
            run: Arc::new(run),
            only: task.map(str::to_owned),
            tasks: HashMap::new(),
            tx,
        })
    }

    /// Streams until the end (see the module docs) or the client leaves.
    pub async fn run(mut self) {
        let ended = self.follow().await;
        // Best effort: nothing is listening any more when this fails.
        let _ = self.live.unsubscribe().await;
        if let Err(Stop::Failed(e)) = ended {
            let _ = self.tx.send(Err(e.into())).await;
        }
    }

    async fn follow(&mut self) -> Result<(), Stop> {
        let run_id = self.run.id.clone();
        // Whether the run was read since the tasks were last advanced.
        let mut read = true;
        loop {
            if read && self.advance().await? {
                return Ok(());
            }
            tokio::select! {
                () = self.tx.closed() => return Err(Stop::Gone),
                msg = self.live.next() => match msg {
                    Some(msg) => {
                        if self.on_chunk(&msg.payload).await? {
                            return Ok(());
                        }
                        read = false;
                    }
                    None => {
                        return Err(SchedulerError::Nats("live log subscription closed".into()).into())
                    }
                },
                changed = self.changes.recv() => match changed {
                    Ok(id) if id != run_id => read = false,
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.reread().await?;
                        read = true;
                    }
                    Err(RecvError::Closed) => return Err(SchedulerError::ShuttingDown.into()),
                },
            }
        }
    }

    async fn reread(&mut self) -> Result<(), Stop> {
        self.run = Arc::new(self.api.read_run(&self.run.id).await?);
        Ok(())
    }

    /// Takes every followed task as far as the run as last read allows;
    /// true when all of them are done.
    async fn advance(&mut self) -> Result<bool, Stop> {
        let run = Arc::clone(&self.run);
        let active = crate::store::is_active(run.state());
        let mut all_done = true;
        for task in &run.tasks {
            if self.only.as_ref().is_some_and(|only| *only != task.name) {
                continue;
            }
            if !self.advance_task(task, active).await? {
                all_done = false;
            }
        }
        Ok(all_done)
    }

    /// One task's steps ([`TaskFollow::next`]); true when it is done.
    async fn advance_task(&mut self, task: &pb::Task, active: bool) -> Result<bool, Stop> {
        let name = &task.name;
        loop {
            let next = self
                .tasks
                .entry(name.clone())
                .or_insert_with(|| TaskFollow::new(name.clone()))
                .next(task, active);
            let follow = self.follow_of(name)?;
            match next {
                Next::Follow { attempt } => {
                    follow.start(attempt);
                    self.send(name, attempt, Vec::new()).await?;
                }
                Next::Stored { key } => {
                    self.send_stored(name, &key).await?;
                    self.follow_of(name)?.drained();
                }
                Next::NoStoredLog => follow.drained(),
                Next::Live { agent, started } => {
                    follow.agent = agent;
                    // Before its started event the agent may still fetch
                    // inputs; live chunks (or a gap in them) say when it prints.
                    if started && !follow.caught_up {
                        let caught_up = self.catch_up(name, None).await?;
                        self.follow_of(name)?.caught_up = caught_up;
                    }
                    return Ok(false);
                }
                Next::Wait => return Ok(false),
                Next::Done => return Ok(true),
            }
        }
    }

    fn follow_of(&mut self, task: &str) -> Result<&mut TaskFollow, Stop> {
        self.tasks.get_mut(task).ok_or_else(|| {
            Stop::Failed(SchedulerError::Unavailable(format!(
                "task `{task}` is not followed"
            )))
        })
    }

    /// A live chunk from the subscription; true when every followed task
    /// is done (a chunk of an attempt not seen yet has the run read again
    /// and its tasks advanced first).
    async fn on_chunk(&mut self, payload: &[u8]) -> Result<bool, Stop> {
        let chunk = match pb::LiveLogChunk::decode(payload) {
            Ok(chunk) => chunk,
            Err(e) => {
                debug!(error = %e, "malformed live log chunk ignored");
                return Ok(false);
            }
        };
        // Another run or task whose names share the subject.
        let Some(attempt) = chunk.attempt.filter(|a| a.run_id == self.run.id) else {
            return Ok(false);
        };
        let Some(follow) = self.tasks.get(&attempt.task) else {
            return Ok(false);
        };
        if attempt.attempt > follow.attempt {
            // An attempt the last read did not show yet.
            self.reread().await?;
            if self.advance().await? {
                return Ok(true);
            }
        }
        let name = attempt.task;
        let Some(follow) = self.tasks.get(&name) else {
            return Ok(false);
        };
        if !follow.takes_live(attempt.attempt) {
            return Ok(false);
        }
        let mut take = follow::take(follow.sent, chunk.offset, chunk.data.len());
        if let Take::Gap { missing } = take {
            if !self.catch_up(&name, Some(missing.end)).await? {
                self.follow_of(&name)?.live_broken = true;
                return Ok(false);
            }
            take = follow::take(self.follow_of(&name)?.sent, chunk.offset, chunk.data.len());
        }
        if let Take::Send { from } = take {
            let mut data = chunk.data;
            data.drain(..from);
            self.send(&name, attempt.attempt, data).await?;
        }
        Ok(false)
    }

    /// Reads the running attempt's log from its agent, from what was sent
    /// to its current end (or at least to `until`), and sends it. False
    /// when the agent could not give it (not started there yet, ended, or
    /// unreachable).
    async fn catch_up(&mut self, task: &str, until: Option<u64>) -> Result<bool, Stop> {
        loop {
            let follow = self.follow_of(task)?;
            if until.is_some_and(|until| follow.sent >= until) {
                return Ok(true);
            }
            let (agent, number, offset) = (follow.agent.clone(), follow.attempt, follow.sent);
            let attempt = pb::AttemptRef {
                run_id: self.run.id.clone(),
                task: task.to_owned(),
                attempt: number,
            };
            let reply = match self.api.live_logs.read(&agent, attempt, offset).await {
                Ok(reply) if reply.running => reply,
                Ok(_) => return Ok(false),
                Err(e) => {
                    warn!(run = %self.run.id, task, attempt = number, agent = %agent, error = %e,
                        "reading a running attempt's log from its agent failed");
                    return Ok(false);
                }
            };
            let read = reply.data.len();
            if read > 0 {
                self.send(task, number, reply.data).await?;
            }
            if read < READ_BYTES as usize {
                let sent = self.follow_of(task)?.sent;
                return Ok(until.is_none_or(|until| sent >= until));
            }
        }
    }

    /// Sends the stored log of the followed attempt from what was sent on.
    async fn send_stored(&mut self, task: &str, key: &str) -> Result<(), Stop> {
        let follow = self.follow_of(task)?;
        let (number, sent) = (follow.attempt, follow.sent);
        let mut stored = self
            .api
            .artifacts
            .get_bytes_stream_from(key, sent)
            .await
            .map_err(crate::grpc::log_error)?;
        while let Some(data) = stored.next().await {
            let data = data.map_err(crate::grpc::log_error)?;
            self.send(task, number, data.to_vec()).await?;
        }
        Ok(())
    }

    /// Sends bytes of `attempt` of `task` (none: announces the attempt)
    /// and counts them as sent.
    async fn send(&mut self, task: &str, attempt: u32, data: Vec<u8>) -> Result<(), Stop> {
        let sent = data.len() as u64;
        let chunk = pb::LogChunk {
            data,
            task: task.to_owned(),
            attempt,
        };
        self.tx.send(Ok(chunk)).await.map_err(|_| Stop::Gone)?;
        self.follow_of(task)?.sent += sent;
        Ok(())
    }
}
