//! The gRPC layer's way into the engine: a cheap handle that sends
//! [`Request`]s to the loop and waits for their [`Response`].

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot};

use drover_api::pb;
use drover_scheduler_core::ids::{AgentId, RunId};

use crate::error::{Result, SchedulerError};
use crate::store::StoredRun;

use super::admission::{WaitBoard, Waiting};

/// What callers ask of the engine.
#[derive(Clone, Debug)]
pub enum Request {
    /// Store and start a new run (its record is already validated).
    Submit {
        record: Box<pb::RunRecord>,
        spec: Arc<pb::PipelineSpec>,
    },
    /// A run created in etcd outside the engine (a trigger's firing):
    /// it becomes active as a restart would load it.
    Adopt {
        stored: Arc<StoredRun>,
    },
    /// Cancel a run; answers false when the run is not active here.
    Cancel {
        run: RunId,
    },
    ListAgents,
    /// Drain (true) or undrain (false) an agent.
    Drain {
        agent: AgentId,
        drained: bool,
    },
    /// Create (`create`) or replace the settings of a queue (already validated).
    PutQueue {
        queue: pb::Queue,
        create: bool,
    },
    SetPaused {
        name: String,
        paused: bool,
    },
    DeleteQueue {
        name: String,
    },
    ListQueues,
    ShowQueue {
        name: String,
    },
    /// Answers false when the run is not active here.
    SetRunPriority {
        run: RunId,
        priority: i64,
    },
    /// Brings a finished run (as read from etcd) back to Running, with
    /// these tasks run again too.
    Retry {
        stored: Arc<StoredRun>,
        tasks: Vec<String>,
    },
    /// The step cache's entries (only `task`'s when not empty).
    ListCache {
        task: String,
    },
    /// Deletes the cache entry `key`, or every entry `run` made.
    ForgetCache {
        key: String,
        run: String,
    },
}

/// The engine's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Done,
    /// Whether the run was active here (cancel, priority).
    Active(bool),
    Agents(Vec<pb::Agent>),
    Agent(pb::Agent),
    Queue(pb::Queue),
    Queues(Vec<pb::QueueStatus>),
    QueueDetail(pb::QueueDetail),
    CacheEntries(Vec<pb::CacheEntry>),
    /// How many cache entries were deleted.
    Forgotten(u32),
}

/// A request with the channel its answer goes back on.
pub struct Command {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Response>>,
}

/// Cheap handle for the gRPC layer.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) changed: broadcast::Sender<String>,
    pub(super) waiting: Arc<Mutex<Arc<WaitBoard>>>,
}

/// A response of a kind the request does not answer with: a bug, reported
/// rather than panicking.
fn unexpected(response: Response) -> SchedulerError {
    SchedulerError::Unavailable(format!("engine answered unexpectedly: {response:?}"))
}

impl EngineHandle {
    async fn call(&self, request: Request) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command { request, reply })
            .await
            .map_err(|_| SchedulerError::ShuttingDown)?;
        rx.await.map_err(|_| SchedulerError::ShuttingDown)?
    }

    async fn done(&self, request: Request) -> Result<()> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn active(&self, request: Request) -> Result<bool> {
        match self.call(request).await? {
            Response::Active(active) => Ok(active),
            other => Err(unexpected(other)),
        }
    }

    async fn agent(&self, request: Request) -> Result<pb::Agent> {
        match self.call(request).await? {
            Response::Agent(agent) => Ok(agent),
            other => Err(unexpected(other)),
        }
    }

    async fn queue(&self, request: Request) -> Result<pb::Queue> {
        match self.call(request).await? {
            Response::Queue(queue) => Ok(queue),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a run. The caller has written its spec (`Store::put_spec`);
    /// the run record written here is the commit point.
    pub async fn submit(&self, record: pb::RunRecord, spec: Arc<pb::PipelineSpec>) -> Result<()> {
        let record = Box::new(record);
        self.done(Request::Submit { record, spec }).await
    }

    /// Makes a run stored by a trigger's firing active.
    pub async fn adopt(&self, stored: StoredRun) -> Result<()> {
        let stored = Arc::new(stored);
        self.done(Request::Adopt { stored }).await
    }

    pub async fn cancel(&self, run_id: String) -> Result<bool> {
        let run = RunId::from(run_id);
        self.active(Request::Cancel { run }).await
    }

    pub async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        match self.call(Request::ListAgents).await? {
            Response::Agents(agents) => Ok(agents),
            other => Err(unexpected(other)),
        }
    }

    pub async fn drain(&self, agent: String, drained: bool) -> Result<pb::Agent> {
        let agent = AgentId::from(agent);
        self.agent(Request::Drain { agent, drained }).await
    }

    pub async fn put_queue(&self, queue: pb::Queue, create: bool) -> Result<pb::Queue> {
        self.queue(Request::PutQueue { queue, create }).await
    }

    pub async fn set_paused(&self, name: String, paused: bool) -> Result<pb::Queue> {
        self.queue(Request::SetPaused { name, paused }).await
    }

    pub async fn delete_queue(&self, name: String) -> Result<()> {
        self.done(Request::DeleteQueue { name }).await
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::QueueStatus>> {
        match self.call(Request::ListQueues).await? {
            Response::Queues(queues) => Ok(queues),
            other => Err(unexpected(other)),
        }
    }

    pub async fn show_queue(&self, name: String) -> Result<pb::QueueDetail> {
        match self.call(Request::ShowQueue { name }).await? {
            Response::QueueDetail(detail) => Ok(detail),
            other => Err(unexpected(other)),
        }
    }

    pub async fn set_run_priority(&self, run_id: String, priority: i64) -> Result<bool> {
        let run = RunId::from(run_id);
        self.active(Request::SetRunPriority { run, priority }).await
    }

    /// Retries a finished run read from etcd (see [`Request::Retry`]).
    pub async fn retry(&self, stored: StoredRun, tasks: Vec<String>) -> Result<()> {
        let stored = Arc::new(stored);
        self.done(Request::Retry { stored, tasks }).await
    }

    pub async fn list_cache(&self, task: String) -> Result<Vec<pb::CacheEntry>> {
        match self.call(Request::ListCache { task }).await? {
            Response::CacheEntries(entries) => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes the entry `key`, or every entry `run` made; returns how many.
    pub async fn forget_cache(&self, key: String, run: String) -> Result<u32> {
        match self.call(Request::ForgetCache { key, run }).await? {
            Response::Forgotten(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Ids of runs as their changes are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Why the run's Ready tasks are not placed yet (kept in memory only:
    /// it changes with every heartbeat).
    pub fn waiting(&self, run_id: &str) -> Waiting {
        // Cloned out so the lock is not held while rendering.
        let board = self.waiting.lock().map(|w| Arc::clone(&w)).ok();
        board.map(|b| b.waiting(run_id)).unwrap_or_default()
    }
}
