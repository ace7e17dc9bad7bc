//! The `drover.v1.Scheduler` gRPC service.
//!
//! Writes go through the engine loop (so they are ordered with agent events
//! and committed before anything is sent); reads come straight from etcd,
//! the source of truth, through the same derivation the engine restarts with.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{warn, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use drover_api::pb;
use drover_api::pb::scheduler_server::Scheduler;

use crate::auth::Who;
use crate::convert;
use crate::engine::EngineHandle;
use crate::error::{Result, SchedulerError};
use crate::store::Store;

#[derive(Clone)]
pub struct Api {
    pub engine: EngineHandle,
    pub store: Store,
    pub artifacts: drover_artifacts::Store,
    /// Agents' live logs, for `GetLogs` with `follow`.
    pub live_logs: crate::logs::LiveLogSource,
    /// Largest encoded spec accepted (`--max-spec-bytes`).
    pub max_spec_bytes: usize,
    /// Largest code snapshot accepted (`--max-code-bytes`).
    pub max_code_bytes: u64,
    /// Logs and counts calls refused for a token's queue limit.
    pub refusals: crate::auth::Refusals,
    /// Agents' NATS identities (`EnrollAgent`, `GetNatsConfig`).
    pub nats_admin: crate::enroll::NatsAdmin,
}

// The methods whose queue limits handlers check (their metric labels).
const SUBMIT_RUN: &str = "/drover.v1.Scheduler/SubmitRun";
const CANCEL_RUN: &str = "/drover.v1.Scheduler/CancelRun";
const RETRY_RUN: &str = "/drover.v1.Scheduler/RetryRun";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(SchedulerError::InvalidArgument {
            field,
            message: "is required".into(),
        });
    }
    Ok(value)
}

/// `<pipeline>-<8 hex>`: readable in listings, unique enough for a fleet.
/// A log the artifact store could not give.
pub(crate) fn log_error(e: drover_artifacts::ArtifactError) -> SchedulerError {
    match e {
        drover_artifacts::ArtifactError::NotFound { key } => {
            SchedulerError::LogNotFound(format!("log `{key}` is missing from the artifact store"))
        }
        other => SchedulerError::Artifacts(other.to_string()),
    }
}

impl Api {
    pub(crate) async fn read_run(&self, run_id: &str) -> Result<pb::Run> {
        let stored = self
            .store
            .load_run(run_id)
            .await?
            .ok_or_else(|| SchedulerError::RunNotFound(run_id.to_string()))?;
        let (dag, _) = convert::restore(&stored);
        let mut run = convert::run_view(&stored.record, &stored.spec, &dag);
        self.show_items(&stored.spec, &dag, &mut run).await;
        // Why Ready tasks wait lives in the engine's memory, not in etcd.
        let mut waiting = self.engine.waiting(run_id);
        for (i, t) in run.tasks.iter_mut().enumerate() {
            if t.state() != pb::TaskState::Ready {
                continue;
            }
            match (waiting.tasks.remove(&i), &waiting.rest) {
                (Some((why, unschedulable)), _) => {
                    t.message = why;
                    t.unschedulable = unschedulable;
                }
                (None, Some(rest)) => t.message = rest.clone(),
                (None, None) => {}
            }
        }
        Ok(run)
    }

    /// `GetLogs` with `follow` (see [`crate::logs`]).
    async fn follow_logs(
        &self,
        req: pb::GetLogsRequest,
    ) -> Result<Response<BoxStream<pb::LogChunk>>, Status> {
        if req.attempt != 0 {
            return Err(SchedulerError::InvalidArgument {
                field: "attempt",
                message: format!(
                    "{} cannot be combined with follow, which starts at the latest attempt",
                    req.attempt
                ),
            }
            .into());
        }
        let task = Some(req.task.as_str()).filter(|t| !t.is_empty());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let follower = crate::logs::Follower::open(self, &req.run_id, task, tx).await?;
        tokio::spawn(follower.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Each `for_each` instance's item, from its task's list (read again:
    /// only the item count is stored); left out when it cannot be read.
    async fn show_items(
        &self,
        spec: &pb::PipelineSpec,
        dag: &drover_scheduler_core::dag::RunDag,
        run: &mut pb::Run,
    ) {
        for (task, items) in self.for_each_items(spec, dag).await {
            let Some(range) = dag.instances(task) else {
                continue;
            };
            for (i, item) in range.zip(&items) {
                if let Some(t) = run.tasks.get_mut(i) {
                    t.item = crate::engine::item_text(item);
                }
            }
        }
    }

    /// The items of each expanded `for_each` task, by task, read again
    /// from its producer's output; a list that cannot be read is left out.
    pub(crate) async fn for_each_items(
        &self,
        spec: &pb::PipelineSpec,
        dag: &drover_scheduler_core::dag::RunDag,
    ) -> std::collections::HashMap<usize, Vec<serde_json::Value>> {
        let mut lists = std::collections::HashMap::new();
        for &(task, count) in &dag.run_state().expansions {
            let Some(from) = spec.tasks.get(task).and_then(|t| t.for_each.as_ref()) else {
                continue;
            };
            let key = dag.index_of(&from.from_task).and_then(|p| {
                let attempt = dag.task(p).current()?;
                let output = attempt
                    .outputs
                    .iter()
                    .find(|o| o.name == from.from_output)?;
                Some(output.key.clone())
            });
            let Some(key) = key.filter(|_| count > 0) else {
                continue;
            };
            let output = format!("{}/{}", from.from_task, from.from_output);
            let items = match self.artifacts.get_bytes(&key).await {
                Ok(bytes) => crate::engine::parse_list(&bytes, &output),
                Err(e) => Err(e.to_string()),
            };
            match items {
                Ok(items) => {
                    lists.insert(task, items);
                }
                Err(e) => warn!(output = %output, error = %e, "for_each items not read"),
            }
        }
        lists
    }

    /// The log key of `attempt` of `task` (0 = the latest with a log), and
    /// whether that log is empty (then no object was stored).
    /// The log of an attempt (0: the latest with one): its key and whether
    /// it is empty. A result served from the cache has the log of the
    /// attempt that made it.
    async fn log_key(&self, run_id: &str, task: &str, attempt: u32) -> Result<(String, bool)> {
        match self.attempt_log(run_id, task, attempt).await? {
            Log::Stored { key, empty } => Ok((key, empty)),
            Log::Cached(from) => match self
                .attempt_log(&from.run_id, &from.task, from.attempt)
                .await?
            {
                Log::Stored { key, empty } => Ok((key, empty)),
                Log::Cached(_) => Err(SchedulerError::LogNotFound(format!(
                    "task `{task}` was served from the cache, and so was its source"
                ))),
            },
        }
    }

    async fn attempt_log(&self, run_id: &str, task: &str, attempt: u32) -> Result<Log> {
        let run = self.read_run(run_id).await?;
        let t = run.tasks.iter().find(|t| t.name == task).ok_or_else(|| {
            SchedulerError::TaskNotFound {
                run: run_id.to_string(),
                task: task.to_string(),
            }
        })?;
        let found = if attempt == 0 {
            t.attempts
                .iter()
                .rev()
                .find(|a| !a.log_key.is_empty() || a.cached_from.is_some())
        } else {
            t.attempts.iter().find(|a| a.number == attempt)
        };
        match found {
            Some(a) if !a.log_key.is_empty() => Ok(Log::Stored {
                key: a.log_key.clone(),
                empty: a.log_empty,
            }),
            Some(pb::Attempt {
                cached_from: Some(from),
                ..
            }) => Ok(Log::Cached(from.clone())),
            Some(a) => Err(SchedulerError::LogNotFound(format!(
                "task `{task}` attempt {} has no log yet (state {:?})",
                a.number,
                a.state()
            ))),
            None if attempt == 0 => Err(SchedulerError::LogNotFound(format!(
                "task `{task}` has no log yet (state {:?})",
                t.state()
            ))),
            None => Err(SchedulerError::LogNotFound(format!(
                "task `{task}` has no attempt {attempt} (it has {})",
                t.attempts.len()
            ))),
        }
    }
}

/// Where an attempt's log is.
enum Log {
    Stored {
        key: String,
        empty: bool,
    },
    /// Served from the cache: the log is this attempt's.
    Cached(pb::AttemptSource),
}

#[tonic::async_trait]
impl Scheduler for Api {
    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let caller = drover_telemetry::propagation::span_of(
            &drover_telemetry::propagation::extract_grpc(req.metadata()),
        );
        let who = Who::of(&req);
        let req = req.into_inner();
        let crate::runs::NewRun { mut record, spec } = crate::runs::prepare(
            &self.artifacts,
            self.max_spec_bytes,
            crate::runs::RunRequest {
                spec_yaml: &req.spec_yaml,
                params: &req.params,
                queue: &req.queue,
                priority: req.priority,
                code_sha256: &req.code_sha256,
                no_cache: req.no_cache,
                trace_parent: caller
                    .map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string())),
            },
        )
        .await?;
        self.refusals
            .check_queue(&who, SUBMIT_RUN, "submit to", &record.queue)?;
        let run_id = record.id.clone();
        let span = tracing::info_span!("submit run", run = %run_id);
        if let Some(root) =
            drover_telemetry::propagation::remote(&record.trace_id, &record.root_span_id)
        {
            // Fails only when no OpenTelemetry layer is installed: nothing to parent then.
            let _ = span.set_parent(root);
        }
        // The spec first, the run record (written by the engine) last: a run
        // is never seen without its spec.
        let created = async {
            record.spec_chunks = self.store.put_spec(&run_id, &spec).await?;
            self.engine.submit(record, Arc::new(spec)).await
        };
        if let Err(e) = created.instrument(span).await {
            if let Err(del) = self.store.delete_spec(&run_id).await {
                // Left for the next start's orphan sweep.
                warn!(run = %run_id, error = %del, "cannot delete the spec of a failed submit");
            }
            return Err(e.into());
        }
        Ok(Response::new(pb::SubmitRunResponse { run_id }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().run_id;
        Ok(Response::new(
            self.read_run(required("run_id", &id)?).await?,
        ))
    }

    async fn list_runs(
        &self,
        _req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let mut runs: Vec<pb::RunSummary> = self
            .store
            .list_runs()
            .await?
            .iter()
            .map(|(r, _)| convert::summary(r))
            .collect();
        runs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    type WatchRunStream = BoxStream<pb::Run>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let id = req.into_inner().run_id;
        required("run_id", &id)?;
        // Subscribe before the first read so no change slips between them.
        let mut changes = self.engine.subscribe();
        let first = self.read_run(&id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            let done = |r: &pb::Run| !crate::store::is_active(r.state());
            if tx.send(Ok(last.clone())).await.is_err() || done(&last) {
                return;
            }
            loop {
                match changes.recv().await {
                    Ok(changed) if changed.is_empty() => {
                        let gone = "not the leader any more; watch again at the leader";
                        let _ = tx.send(Err(Status::unavailable(gone))).await;
                        return;
                    }
                    Ok(changed) if changed != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        let _ = tx.send(Err(SchedulerError::ShuttingDown.into())).await;
                        return;
                    }
                }
                let run = match api.read_run(&id).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if run == last {
                    continue;
                }
                last = run;
                if tx.send(Ok(last.clone())).await.is_err() || done(&last) {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let who = Who::of(&req);
        let id = req.into_inner().run_id;
        required("run_id", &id)?;
        if who.limited() {
            let run = self.read_run(&id).await?;
            self.refusals
                .check_queue(&who, CANCEL_RUN, "cancel in", &run.queue)?;
        }
        // Not active here: unknown (NotFound from the read) or already finished (no-op).
        self.engine.cancel(id.clone()).await?;
        Ok(Response::new(self.read_run(&id).await?))
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        Ok(Response::new(drover_api::version()))
    }

    async fn retry_run(
        &self,
        req: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let who = Who::of(&req);
        let req = req.into_inner();
        required("run_id", &req.run_id)?;
        let stored = self
            .store
            .load_run(&req.run_id)
            .await?
            .ok_or_else(|| SchedulerError::RunNotFound(req.run_id.clone()))?;
        self.refusals
            .check_queue(&who, RETRY_RUN, "retry in", &stored.record.queue)?;
        self.engine.retry(stored, req.tasks).await?;
        Ok(Response::new(self.read_run(&req.run_id).await?))
    }

    async fn set_run_priority(
        &self,
        req: Request<pb::SetRunPriorityRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        required("run_id", &req.run_id)?;
        let priority = crate::queues::check_priority(req.priority)?;
        if !self
            .engine
            .set_run_priority(req.run_id.clone(), priority)
            .await?
        {
            // Unknown (NotFound from the read) or finished: nothing waits any more.
            let run = self.read_run(&req.run_id).await?;
            return Err(SchedulerError::FailedPrecondition(format!(
                "run `{}` has finished ({:?}); its priority no longer matters",
                run.id,
                run.state()
            ))
            .into());
        }
        Ok(Response::new(self.read_run(&req.run_id).await?))
    }

    async fn stat_code(
        &self,
        req: Request<pb::CodeRef>,
    ) -> Result<Response<pb::CodeStatus>, Status> {
        let status =
            crate::code::stat(&self.artifacts, self.max_code_bytes, &req.into_inner()).await?;
        Ok(Response::new(status))
    }

    async fn put_code(
        &self,
        req: Request<tonic::Streaming<pb::CodeChunk>>,
    ) -> Result<Response<pb::CodeRef>, Status> {
        let code = crate::code::put(&self.artifacts, self.max_code_bytes, req.into_inner()).await?;
        Ok(Response::new(code))
    }

    async fn list_cache(
        &self,
        req: Request<pb::ListCacheRequest>,
    ) -> Result<Response<pb::ListCacheResponse>, Status> {
        let entries = self.engine.list_cache(req.into_inner().task).await?;
        Ok(Response::new(pb::ListCacheResponse { entries }))
    }

    async fn forget_cache(
        &self,
        req: Request<pb::ForgetCacheRequest>,
    ) -> Result<Response<pb::ForgetCacheResponse>, Status> {
        let req = req.into_inner();
        let forgotten = match (req.key.is_empty(), req.run_id.is_empty()) {
            (false, true) => {
                let key = req.key.to_ascii_lowercase();
                if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SchedulerError::InvalidArgument {
                        field: "key",
                        message: format!("`{}` is not a cache key (64 hex digits)", req.key),
                    }
                    .into());
                }
                let n = self.engine.forget_cache(key.clone(), String::new()).await?;
                if n == 0 {
                    return Err(
                        SchedulerError::NotFound(format!("cache entry `{key}` not found")).into(),
                    );
                }
                n
            }
            (true, false) => self.engine.forget_cache(String::new(), req.run_id).await?,
            _ => {
                return Err(SchedulerError::InvalidArgument {
                    field: "key",
                    message: "give exactly one of key and run_id".to_owned(),
                }
                .into())
            }
        };
        Ok(Response::new(pb::ForgetCacheResponse { forgotten }))
    }

    type GetLogsStream = BoxStream<pb::LogChunk>;

    async fn get_logs(
        &self,
        req: Request<pb::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let req = req.into_inner();
        required("run_id", &req.run_id)?;
        if req.follow {
            return self.follow_logs(req).await;
        }
        required("task", &req.task)?;
        let (key, empty) = self.log_key(&req.run_id, &req.task, req.attempt).await?;
        if empty {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        }
        let stream = self
            .artifacts
            .get_bytes_stream(&key)
            .await
            .map_err(log_error)?;
        let chunks = stream.map(|r| {
            r.map(|data| pb::LogChunk {
                data: data.to_vec(),
                ..Default::default()
            })
            .map_err(|e| Status::from(SchedulerError::Artifacts(e.to_string())))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn get_lineage(
        &self,
        req: Request<pb::GetLineageRequest>,
    ) -> Result<Response<pb::GetLineageResponse>, Status> {
        Ok(Response::new(self.lineage(&req.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl pb::agents_server::Agents for Api {
    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.engine.list_agents().await?;
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn drain_agent(
        &self,
        req: Request<pb::DrainAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = req.into_inner().agent_id;
        required("agent_id", &id)?;
        Ok(Response::new(self.engine.drain(id, true).await?))
    }

    async fn undrain_agent(
        &self,
        req: Request<pb::DrainAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = req.into_inner().agent_id;
        required("agent_id", &id)?;
        Ok(Response::new(self.engine.drain(id, false).await?))
    }

    async fn enroll_agent(
        &self,
        req: Request<pb::EnrollAgentRequest>,
    ) -> Result<Response<pb::EnrollAgentResponse>, Status> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let enrolled = self
            .nats_admin
            .enroll(&self.store, req.into_inner(), now_ms)
            .await?;
        tracing::info!(agent = %enrolled.agent.as_ref().map(|a| a.agent_id.as_str()).unwrap_or_default(), "agent enrolled for NATS");
        Ok(Response::new(enrolled))
    }

    async fn get_nats_config(
        &self,
        _req: Request<pb::GetNatsConfigRequest>,
    ) -> Result<Response<pb::GetNatsConfigResponse>, Status> {
        Ok(Response::new(self.nats_admin.config(&self.store).await?))
    }
}

#[tonic::async_trait]
impl pb::queues_server::Queues for Api {
    async fn create_queue(&self, req: Request<pb::Queue>) -> Result<Response<pb::Queue>, Status> {
        let q = crate::queues::validate(req.into_inner())?;
        Ok(Response::new(self.engine.put_queue(q, true).await?))
    }

    async fn update_queue(&self, req: Request<pb::Queue>) -> Result<Response<pb::Queue>, Status> {
        let q = crate::queues::validate(req.into_inner())?;
        Ok(Response::new(self.engine.put_queue(q, false).await?))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::QueueRef>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let name = req.into_inner().name;
        required("name", &name)?;
        self.engine.delete_queue(name).await?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn list_queues(
        &self,
        _req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self.engine.list_queues().await?;
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn show_queue(
        &self,
        req: Request<pb::QueueRef>,
    ) -> Result<Response<pb::QueueDetail>, Status> {
        let name = req.into_inner().name;
        required("name", &name)?;
        Ok(Response::new(self.engine.show_queue(name).await?))
    }

    async fn pause_queue(&self, req: Request<pb::QueueRef>) -> Result<Response<pb::Queue>, Status> {
        let name = req.into_inner().name;
        required("name", &name)?;
        Ok(Response::new(self.engine.set_paused(name, true).await?))
    }

    async fn resume_queue(
        &self,
        req: Request<pb::QueueRef>,
    ) -> Result<Response<pb::Queue>, Status> {
        let name = req.into_inner().name;
        required("name", &name)?;
        Ok(Response::new(self.engine.set_paused(name, false).await?))
    }
}
