//! One attempt, start to finish: work directory, inputs, the task (a
//! process or a container) under timeout and cancel, outputs, log, final
//! event — and a started event if it still runs after `STARTED_AFTER`.
//! Also the containers a restarted agent finds: adopted and finished the
//! same way, or stopped when their plan is lost.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_api::pb::{attempt_event::Kind, Artifact, Assignment, AttemptSucceeded};
use drover_api::spec::condition;
use drover_artifacts::{ArtifactError, Store};
use drover_telemetry::{propagation, Context};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tracing::{error, info, info_span, warn, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::core::container::{self, container_spec, HostDirs, ImageAction};
use crate::core::executor::task_env;
use crate::core::limits::{output_too_large, TaskLimits};
use crate::core::{
    decide_assign, AssignDecision, AttemptKey, AttemptPlan, ExecutorKind, Failure, InputFetch,
    InputSource, OutputUpload, StopCause, StoredObject, Termination,
};
use crate::shell::code::CodeCache;
use crate::shell::events::{EventPublisher, StartNotice, STARTED_AFTER};
use crate::shell::executor::docker::FoundContainer;
use crate::shell::executor::{
    CgroupRoot, DockerExecutor, ExecError, Guardian, ProcessSpec, Running, RunningProcess,
};
use crate::shell::host::now_ms;
use crate::shell::limits::{compact_log, disk_full_reason, free_attempt_space};
use crate::shell::live_log::LiveLogs;
use crate::shell::metrics::{AgentMetrics, TaskOutcome};
use crate::shell::registry::{Registry, StopRequest, StopSignal};
use crate::shell::slots::{self, Slot, Slots};

/// The task's stdout and stderr, inside the attempt directory.
pub const LOG_FILE: &str = "drover-attempt.log";
pub const INPUTS_DIR: &str = "inputs";
pub const OUTPUTS_DIR: &str = "outputs";
/// A container's working directory (`/drover/work`).
pub const WORK_DIR: &str = "work";
/// The `Assignment` of a docker attempt, as received: what a restarted agent
/// needs to finish the attempt its container runs.
pub const ASSIGNMENT_FILE: &str = "assignment.pb";
/// The scheduler's `traceparent` for a docker attempt, saved next to its
/// assignment: a restarted agent adopting the container stays in the trace.
pub const TRACEPARENT_FILE: &str = "traceparent";

/// What every attempt on this agent shares.
pub struct AttemptContext {
    pub agent_id: String,
    /// Absolute.
    pub work_dir: PathBuf,
    pub store: Store,
    pub events: EventPublisher,
    /// Publishes running attempts' logs as they grow.
    pub live: LiveLogs,
    pub registry: Registry,
    /// SIGTERM → SIGKILL grace for timeouts.
    pub kill_grace: Duration,
    /// The executors enabled here (an adopted container's plan is checked again).
    pub executors: Vec<ExecutorKind>,
    /// Set when the docker executor is enabled (and the engine answered at startup).
    pub docker: Option<DockerExecutor>,
    /// Set when the process executor is enabled.
    pub guardian: Option<Arc<Guardian>>,
    /// Process attempts' working directories; set with `guardian`.
    pub slots: Option<Arc<Slots>>,
    /// Where process attempts get cgroups, if the agent can make them.
    pub cgroups: Option<Arc<CgroupRoot>>,
    /// `--max-log-bytes` and `--max-output-bytes`.
    pub limits: TaskLimits,
    /// Code snapshots unpacked on this agent.
    pub code: CodeCache,
    pub metrics: AgentMetrics,
}

impl AttemptContext {
    /// `<work-dir>/<run>/<task>/<attempt>`; the names were checked to be single path components.
    pub fn attempt_dir(&self, key: &AttemptKey) -> PathBuf {
        self.work_dir
            .join(&key.run_id)
            .join(&key.task)
            .join(key.attempt.to_string())
    }
}

/// Where an attempt runs.
enum WorkDir {
    /// A process attempt: a reused slot (see `slots`), and its pool.
    Slot(Slot, Arc<Slots>),
    /// A container's own `<work-dir>/<run>/<task>/<attempt>`, which a
    /// restarted agent finds again from the container's labels.
    Own(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Slot(slot, _) => slot.path(),
            WorkDir::Own(dir) => dir,
        }
    }
}

/// How executing an attempt ended.
enum Outcome {
    /// Report this.
    Finished(Result<Produced, Failure>),
    /// Its container was left running as the agent shuts down: no final
    /// event; the next agent start adopts it.
    Detached,
}

/// What a successful attempt reports.
struct Produced {
    /// The declared outputs, uploaded.
    outputs: Vec<Artifact>,
    /// The image that ran (`sha256:…`); empty for a process.
    image_digest: String,
}

/// The agent's span for one attempt, a child of the scheduler's attempt span
/// (`parent`, from the assignment's headers) when there is one.
fn attempt_span(key: &AttemptKey, agent: &str, parent: &Context) -> Span {
    let span = info_span!(
        "agent attempt",
        run = %key.run_id, task = %key.task, attempt = key.attempt, agent = %agent
    );
    if propagation::span_of(parent).is_some() {
        // Fails only when no OpenTelemetry layer is installed: nothing to parent then.
        let _ = span.set_parent(parent.clone());
    }
    span
}

/// The `traceparent` for the task: the execute span's, or without export
/// the scheduler's attempt span, so the task's spans still join the run.
fn task_traceparent(execute: &Span, parent: &Context) -> Option<String> {
    propagation::span_of(&execute.context())
        .or_else(|| propagation::span_of(parent))
        .map(|sc| propagation::traceparent(&sc))
}

/// Runs one attempt to its final event. The attempt must already be
/// registered (it is removed from the registry here, once its final event
/// is acked). `assignment` is the message the plan came from (saved for a
/// container, which a restarted agent adopts); `parent` the trace context
/// it came with.
pub async fn run(
    ctx: Arc<AttemptContext>,
    plan: AttemptPlan,
    assignment: Assignment,
    stop: StopSignal,
    parent: Context,
) {
    let span = attempt_span(&plan.key, &ctx.agent_id, &parent);
    run_attempt(ctx, plan, assignment, stop, parent)
        .instrument(span)
        .await
}

async fn run_attempt(
    ctx: Arc<AttemptContext>,
    plan: AttemptPlan,
    assignment: Assignment,
    mut stop: StopSignal,
    parent: Context,
) {
    let key = plan.key.clone();
    let (run, task, attempt) = (&key.run_id, &key.task, key.attempt);
    let workdir = match (plan.executor, ctx.slots.as_ref()) {
        (ExecutorKind::Process, Some(slots)) => WorkDir::Slot(slots.acquire(), Arc::clone(slots)),
        _ => WorkDir::Own(ctx.attempt_dir(&key)),
    };
    let dir = workdir.path().to_owned();

    let mut notice = StartNotice::after(&ctx.events, &key, STARTED_AFTER);
    info!(run = %run, task = %task, attempt, dir = %dir.display(), "started");
    ctx.metrics.started(plan.executor);

    let log_path = dir.join(LOG_FILE);
    let work = async {
        let started = start(
            &ctx,
            &plan,
            &assignment,
            &parent,
            &workdir,
            &log_path,
            &mut stop,
        )
        .await;
        match started {
            Ok((running, execute)) => {
                let to_end = run_to_end(
                    &ctx,
                    &plan,
                    (running, execute),
                    plan.timeout,
                    &dir,
                    &log_path,
                    &mut stop,
                );
                ctx.live
                    .during(&key, &log_path, ctx.limits.log, to_end)
                    .await
            }
            Err(failure) => Outcome::Finished(Err(failure)),
        }
    };
    let outcome = notice.during(work).await;
    conclude(&ctx, &plan, workdir, &log_path, outcome, notice).await;
}

/// Finishes an attempt whose container an earlier life of this agent
/// started, as if this one had: follows it (or collects it, if it already
/// exited), uploads outputs and log, publishes the final event, which
/// carries the container's creation as the start. The attempt must already
/// be registered.
pub async fn adopt(
    ctx: Arc<AttemptContext>,
    plan: AttemptPlan,
    found: FoundContainer,
    stop: StopSignal,
) {
    let dir = ctx.attempt_dir(&plan.key);
    let parent = tokio::fs::read_to_string(dir.join(TRACEPARENT_FILE))
        .await
        .ok()
        .and_then(|tp| propagation::from_traceparent(tp.trim()))
        .unwrap_or_default();
    let span = attempt_span(&plan.key, &ctx.agent_id, &parent);
    adopt_attempt(ctx, plan, found, stop).instrument(span).await
}

async fn adopt_attempt(
    ctx: Arc<AttemptContext>,
    plan: AttemptPlan,
    found: FoundContainer,
    mut stop: StopSignal,
) {
    let key = plan.key.clone();
    let dir = ctx.attempt_dir(&key);
    let log_path = dir.join(LOG_FILE);
    let created_ms = u64::try_from(found.created_s)
        .unwrap_or(0)
        .saturating_mul(1000);
    let outcome = match ctx.docker.as_ref() {
        // Only called when a docker executor listed the container.
        None => Outcome::Finished(Err(Failure::agent("the docker executor is not enabled"))),
        Some(docker) => match docker.adopt(&found, &log_path).await {
            Ok(container) => {
                info!(
                    run = %key.run_id, task = %key.task, attempt = key.attempt,
                    container = %found.name, state = %found.state, "adopted"
                );
                // The timeout counts from the container's creation.
                let elapsed = Duration::from_millis(now_ms().saturating_sub(created_ms));
                let timeout = plan.timeout.map(|t| t.saturating_sub(elapsed));
                let running = Running::Container(container);
                let execute = info_span!("execute", adopted = true);
                let running = (running, execute);
                let to_end = run_to_end(&ctx, &plan, running, timeout, &dir, &log_path, &mut stop);
                ctx.live
                    .during(&key, &log_path, ctx.limits.log, to_end)
                    .await
            }
            Err(e) => {
                ctx.metrics.executor_error(ExecutorKind::Docker);
                docker.discard(&found).await;
                Outcome::Finished(Err(Failure::agent(e.to_string())))
            }
        },
    };
    let notice = StartNotice::earlier(created_ms);
    conclude(&ctx, &plan, WorkDir::Own(dir), &log_path, outcome, notice).await;
}

/// The plan of a container found at startup, from its labels and the
/// assignment saved in its attempt directory, checked again as a new
/// assignment would be. `Err` carries the attempt (when the labels name
/// one) and why the plan is lost.
pub async fn recover_plan(
    ctx: &AttemptContext,
    found: &FoundContainer,
) -> Result<AttemptPlan, (Option<AttemptKey>, String)> {
    let key = container::key_from_labels(&found.labels).map_err(|e| (None, e))?;
    let lost = |reason: String| (Some(key.clone()), reason);
    let path = ctx.attempt_dir(&key).join(ASSIGNMENT_FILE);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| lost(format!("reading `{}`: {e}", path.display())))?;
    let assignment = Assignment::decode(bytes.as_slice())
        .map_err(|e| lost(format!("decoding `{}`: {e}", path.display())))?;
    match decide_assign(&ctx.agent_id, &ctx.executors, &assignment, |_| false) {
        AssignDecision::Start(plan) if plan.key == key && plan.executor == ExecutorKind::Docker => {
            Ok(*plan)
        }
        AssignDecision::Start(plan) => Err(lost(format!(
            "`{}` is for attempt {} ({} executor)",
            path.display(),
            plan.key,
            plan.executor
        ))),
        AssignDecision::Refuse(reason) => Err(lost(format!(
            "the saved assignment is no longer accepted: {reason}"
        ))),
        AssignDecision::Duplicate(_) => Err(lost("the saved assignment is a duplicate".to_owned())),
    }
}

/// A container found at startup whose attempt cannot be finished: it is
/// killed and removed, and its attempt reported failed. `key`, when given,
/// is registered (it is removed from the registry here).
pub async fn abandon(
    ctx: Arc<AttemptContext>,
    found: FoundContainer,
    key: Option<AttemptKey>,
    reason: String,
) {
    error!(
        container = %found.name, attempt = ?key.as_ref().map(ToString::to_string), reason = %reason,
        "cannot recover the plan of a container this agent started; stopping and removing it"
    );
    if let Some(docker) = ctx.docker.as_ref() {
        docker.discard(&found).await;
    }
    let Some(key) = key else { return };
    let failure = Failure::agent(format!(
        "agent `{}` restarted and could not recover the attempt: {reason}",
        ctx.agent_id
    ));
    if let Err(e) = ctx
        .events
        .publish(&key, Kind::Failed(failure.into_event(String::new())), 0)
        .await
    {
        warn!(attempt = %key, error = %e, "final event not published");
    }
    ctx.metrics
        .finished(ExecutorKind::Docker, TaskOutcome::Failed);
    ctx.registry.finish(&key);
    let dir = ctx.attempt_dir(&key);
    remove_attempt_dir(&ctx.work_dir, &dir).await;
}

/// Uploads the log, publishes the final event (after the started one, if
/// that goes out at all), forgets the attempt and removes (or, a slot,
/// empties) its directory.
async fn conclude(
    ctx: &AttemptContext,
    plan: &AttemptPlan,
    workdir: WorkDir,
    log_path: &Path,
    outcome: Outcome,
    notice: StartNotice,
) {
    let key = &plan.key;
    let (run, task, attempt) = (&key.run_id, &key.task, key.attempt);
    let result = match outcome {
        Outcome::Finished(result) => result,
        Outcome::Detached => {
            info!(run = %run, task = %task, attempt, "container left running at shutdown");
            return;
        }
    };
    let result = match result {
        // A task that filled the work disk usually fails on its own
        // writes, with its own words for it: the reason says so for it.
        Err(mut failure) if !failure.cancelled => {
            if let Some(full) = disk_full_reason(workdir.path()).await {
                failure.reason = format!("{} ({full})", failure.reason);
                let kept_dirs = [INPUTS_DIR, OUTPUTS_DIR, WORK_DIR];
                free_attempt_space(workdir.path(), LOG_FILE, kept_dirs).await;
            }
            Err(failure)
        }
        other => other,
    };
    if let Err(failure) = &result {
        note_in_log(log_path, &format!("attempt failed: {}", failure.reason)).await;
    }
    if let Err(e) = compact_log(log_path, ctx.limits.log).await {
        warn!(run = %run, task = %task, attempt, error = %e, "capping the log failed");
    }

    // A successful attempt that wrote nothing stores no log object: for a
    // short task that file was the largest part of the agent's own cost
    // (benches/README.md). A failed one always has the agent's note.
    // One stat, inline: cheaper than the blocking pool's thread hand-off.
    let log_empty = result.is_ok() && std::fs::metadata(log_path).is_ok_and(|m| m.len() == 0);
    let uploaded = if log_empty {
        Ok(())
    } else {
        ctx.store
            .upload_file(&plan.log_key, log_path)
            .await
            .map(drop)
    };
    let log_key = match uploaded {
        Ok(()) => Ok(plan.log_key.clone()),
        Err(e) => {
            warn!(run = %run, task = %task, attempt, key = %plan.log_key, error = %e, "uploading log failed");
            Err(format!("uploading log (key {}): {e}", plan.log_key))
        }
    };

    let (final_event, outcome) = match (result, log_key) {
        (Ok(produced), Ok(log_key)) => {
            info!(run = %run, task = %task, attempt, outputs = produced.outputs.len(), "succeeded");
            let event = Kind::Succeeded(AttemptSucceeded {
                outputs: produced.outputs,
                log_key,
                log_empty,
                image_digest: produced.image_digest,
            });
            (event, TaskOutcome::Succeeded)
        }
        (Ok(_), Err(reason)) => {
            warn!(run = %run, task = %task, attempt, reason = %reason, "failed");
            let event = Kind::Failed(Failure::after_success(reason).into_event(String::new()));
            (event, TaskOutcome::Failed)
        }
        (Err(failure), log_key) => {
            info!(
                run = %run, task = %task, attempt,
                reason = %failure.reason, exit_code = ?failure.exit_code, cancelled = failure.cancelled,
                "failed"
            );
            let outcome = if failure.cancelled {
                TaskOutcome::Cancelled
            } else {
                TaskOutcome::Failed
            };
            (
                Kind::Failed(failure.into_event(log_key.unwrap_or_default())),
                outcome,
            )
        }
    };
    ctx.metrics.finished(plan.executor, outcome);
    let started_at_ms = notice.settle().await;
    if let Err(e) = ctx.events.publish(key, final_event, started_at_ms).await {
        warn!(run = %run, task = %task, attempt, error = %e, "final event not published");
    }
    ctx.registry.finish(key);
    release(ctx, workdir).await;
}

/// Gives a slot back to the pool (emptied) or removes an own directory.
async fn release(ctx: &AttemptContext, workdir: WorkDir) {
    match workdir {
        WorkDir::Slot(slot, slots) => {
            // A slot left as the attempt found it is freed after a look at
            // two directories, inline; emptying one walks a tree of unknown
            // size, on the blocking pool.
            let Some(slot) = slots.release_if_clean(slot) else {
                return;
            };
            if let Err(e) = tokio::task::spawn_blocking(move || slots.release(slot)).await {
                warn!(error = %e, "emptying a process slot failed");
            }
        }
        WorkDir::Own(dir) => remove_attempt_dir(&ctx.work_dir, &dir).await,
    }
}

/// Everything between the started event and the task running: work dir,
/// inputs, then the process or container, with the (open) execute span.
async fn start(
    ctx: &AttemptContext,
    plan: &AttemptPlan,
    assignment: &Assignment,
    parent: &Context,
    workdir: &WorkDir,
    log_path: &Path,
    stop: &mut StopSignal,
) -> Result<(Running, Span), Failure> {
    let dir = workdir.path();
    let inputs = dir.join(INPUTS_DIR);
    let outputs = dir.join(OUTPUTS_DIR);
    let work = dir.join(WORK_DIR);
    let docker = plan.executor == ExecutorKind::Docker;
    // A container mounts `inputs/` whatever it declares; a process only
    // finds its declared inputs there.
    let inputs_dir = docker || !plan.inputs.is_empty();
    let prepared = match workdir {
        // At most a few calls that walk no tree (on a reused slot, two
        // failing `mkdir`/`rmdir`, an open and a truncate of an empty
        // log): inline, as the blocking pool's hand-off to another thread
        // and back cost more than the calls (benches/README.md).
        WorkDir::Slot(slot, _) => slots::prepare(slot.path(), inputs_dir),
        WorkDir::Own(dir) => {
            prepare_dir(
                dir,
                inputs_dir.then_some(inputs.as_path()),
                &outputs,
                docker.then_some(work.as_path()),
                log_path,
            )
            .await
        }
    };
    let log = prepared
        .map_err(|e| Failure::agent(format!("preparing work dir `{}`: {e}", dir.display())))?;

    let fetch = async {
        for input in &plan.inputs {
            let downloads = match &input.source {
                InputSource::Object(object) => vec![(inputs.join(&input.name), object)],
                InputSource::Content(content) => {
                    tokio::fs::write(inputs.join(&input.name), content)
                        .await
                        .map_err(|e| {
                            Failure::agent(format!("writing input `{}`: {e}", input.name))
                        })?;
                    continue;
                }
                InputSource::Gathered { parts, listing } => {
                    let dir = inputs.join(&input.name);
                    let listing_path = inputs.join(format!("{}.json", input.name));
                    let written = async {
                        tokio::fs::create_dir_all(&dir).await?;
                        tokio::fs::write(&listing_path, listing).await
                    };
                    written.await.map_err(|e| {
                        Failure::agent(format!("writing input `{}`: {e}", input.name))
                    })?;
                    parts
                        .iter()
                        .map(|(file, object)| (dir.join(file), object))
                        .collect()
                }
            };
            for (dest, object) in downloads {
                tokio::select! {
                    fetched = ctx.store.download_verified(&object.key, &dest, &object.sha256) => {
                        fetched.map_err(|e| Failure::agent(fetch_failure(input, object, &e)))?;
                    }
                    request = stop_requested(stop) => return Err(Failure::stopped(&request.cause)),
                }
            }
        }
        Ok(())
    };
    // A span only where there is something to fetch: an empty one says
    // nothing in a trace and costs the export.
    let span = match plan.inputs.len() {
        0 => Span::none(),
        n => info_span!("fetch inputs", inputs = n),
    };
    fetch.instrument(span).await?;
    let code = match &plan.code {
        None => None,
        Some(code) => tokio::select! {
            fetched = ctx.code.ensure(&code.sha256).instrument(info_span!("fetch code")) => {
                Some(fetched.map_err(Failure::agent)?)
            }
            request = stop_requested(stop) => return Err(Failure::stopped(&request.cause)),
        },
    };
    if let Some(request) = stop.borrow().as_ref() {
        return Err(Failure::stopped(&request.cause));
    }

    let key = &plan.key;
    // Opened before the task starts so the task's TRACEPARENT names it.
    let execute = info_span!("execute", executor = plan.executor.name());
    let plan = &AttemptPlan {
        traceparent: task_traceparent(&execute, parent),
        ..plan.clone()
    };
    match plan.executor {
        ExecutorKind::Process => {
            // decide_assign plans process attempts only when the executor is
            // enabled, and then the agent started its guardian.
            let Some(guardian) = ctx.guardian.as_ref() else {
                return Err(Failure::agent("the process executor is not enabled"));
            };
            let code_dir = code.as_deref().unwrap_or(Path::new(""));
            let env = task_env(
                plan,
                &ctx.agent_id,
                &inputs.to_string_lossy(),
                &outputs.to_string_lossy(),
                &code_dir.to_string_lossy(),
            );
            let cwd = match &plan.code {
                None => dir.to_owned(),
                Some(c) if c.workdir.is_empty() => code_dir.to_owned(),
                Some(c) => {
                    let cwd = code_dir.join(&c.workdir);
                    if !cwd.is_dir() {
                        return Err(Failure::agent(format!(
                            "workdir `{}` is not a directory of the code snapshot",
                            c.workdir
                        )));
                    }
                    cwd
                }
            };
            let spec = ProcessSpec {
                command: &plan.command,
                cwd: &cwd,
                env,
                log,
                read_only: code.as_deref(),
                cgroups: ctx.cgroups.as_deref(),
            };
            let process = RunningProcess::spawn(spec, guardian).map_err(|e| {
                ctx.metrics.executor_error(ExecutorKind::Process);
                Failure::agent(e.to_string())
            })?;
            info!(
                run = %key.run_id, task = %key.task, attempt = key.attempt, pgid = process.pgid(),
                "process running"
            );
            Ok((Running::Process(process), execute))
        }
        ExecutorKind::Docker => {
            // decide_assign plans docker attempts only when the executor is
            // enabled, and then the agent connected to Docker at startup.
            let Some(docker) = ctx.docker.as_ref() else {
                return Err(Failure::agent("the docker executor is not enabled"));
            };
            let saved = dir.join(ASSIGNMENT_FILE);
            let encoded = assignment.encode_to_vec();
            tokio::fs::write(&saved, encoded).await.map_err(|e| {
                Failure::agent(format!(
                    "saving the assignment to `{}`: {e}",
                    saved.display()
                ))
            })?;
            if let Some(sc) = propagation::span_of(parent) {
                let saved = dir.join(TRACEPARENT_FILE);
                // Only the trace of an adopted container depends on it: not fatal.
                if let Err(e) = tokio::fs::write(&saved, propagation::traceparent(&sc)).await {
                    warn!(path = %saved.display(), error = %e, "saving the traceparent failed");
                }
            }
            let dirs = HostDirs {
                root: &ctx.work_dir,
                inputs: &inputs,
                outputs: &outputs,
                work: &work,
                code: code.as_deref(),
            };
            let spec = container_spec(plan, &ctx.agent_id, dirs, docker.network());
            let action = ImageAction::for_policy(plan.pull_policy);
            let pull = info_span!("pull image", image = %spec.image);
            tokio::select! {
                ready = docker.ensure_image(&spec.image, action).instrument(pull) => {
                    ready.map_err(|e| {
                        ctx.metrics.executor_error(ExecutorKind::Docker);
                        Failure::agent(e.to_string())
                    })?;
                }
                request = stop_requested(stop) => return Err(Failure::stopped(&request.cause)),
            }
            if let Some(request) = stop.borrow().as_ref() {
                return Err(Failure::stopped(&request.cause));
            }
            let container = docker.start(&spec, log).await.map_err(|e| {
                ctx.metrics.executor_error(ExecutorKind::Docker);
                Failure::agent(e.to_string())
            })?;
            info!(
                run = %key.run_id, task = %key.task, attempt = key.attempt,
                container = %container.name(), image = %spec.image, "container running"
            );
            Ok((Running::Container(container), execute))
        }
    }
}

/// Supervises the running task to its end, cleans up after it, and uploads
/// the outputs of a successful one.
async fn run_to_end(
    ctx: &AttemptContext,
    plan: &AttemptPlan,
    (mut running, execute): (Running, Span),
    timeout: Option<Duration>,
    dir: &Path,
    log_path: &Path,
    stop: &mut StopSignal,
) -> Outcome {
    let supervised = supervise(&mut running, timeout, stop, ctx.kill_grace)
        .instrument(execute.clone())
        .await;
    let ended = match supervised {
        Supervised::Ended(ended) => ended,
        Supervised::LeftRunning => {
            running.detach();
            return Outcome::Detached;
        }
    };
    let image_digest = running.image_digest();
    for note in running.finish().instrument(execute.clone()).await {
        note_in_log(log_path, &note).await;
    }
    // The execute span ends here, before outputs are uploaded.
    drop(execute);
    let termination = match ended {
        Ok(termination) => termination,
        Err(e) => {
            ctx.metrics.executor_error(plan.executor);
            return Outcome::Finished(Err(Failure::agent(e.to_string())));
        }
    };
    if let Some(failure) = termination.failure() {
        return Outcome::Finished(Err(failure));
    }
    let upload = match plan.outputs.len() {
        0 => Span::none(),
        n => info_span!("upload outputs", outputs = n),
    };
    let outputs = upload_outputs(ctx, plan, &dir.join(OUTPUTS_DIR))
        .instrument(upload)
        .await;
    Outcome::Finished(outputs.map(|outputs| Produced {
        outputs,
        image_digest,
    }))
}

/// Why an input could not be fetched, naming it and the task that produced it.
fn fetch_failure(input: &InputFetch, object: &StoredObject, error: &ArtifactError) -> String {
    let artifact = match input.from_task.as_str() {
        "" => format!("artifact {}", input.name),
        task => format!("artifact {} from {task}", input.name),
    };
    match error {
        ArtifactError::Corrupt { want, got, .. } => {
            format!("{artifact} is corrupt: sha256 {want} != {got}")
        }
        ArtifactError::NotFound { key } => {
            format!("{artifact} is missing from the store ({key})")
        }
        other => format!("fetching {artifact} (key {}): {other}", object.key),
    }
}

/// The declared outputs of a successful attempt, uploaded.
async fn upload_outputs(
    ctx: &AttemptContext,
    plan: &AttemptPlan,
    outputs: &Path,
) -> Result<Vec<Artifact>, Failure> {
    let mut uploaded = Vec::with_capacity(plan.outputs.len());
    for output in &plan.outputs {
        let shown = format!("{OUTPUTS_DIR}/{}", output.path);
        let path = outputs.join(&output.path);
        let size = match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => {
                return Err(Failure::after_success(format!(
                    "declared output `{}` at {shown} is not a regular file",
                    output.name
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::after_success(format!(
                    "declared output `{}` not found at {shown}",
                    output.name
                )))
            }
            Err(e) => {
                return Err(Failure::after_success(format!(
                    "declared output `{}` at {shown}: {e}",
                    output.name
                )))
            }
        };
        if let Some(reason) =
            output_too_large(&output.name, &shown, size, ctx.limits.max_output_bytes)
        {
            return Err(Failure::after_success(reason));
        }
        let result = if output.result {
            Some(read_result(output, &path, size, &shown).await?)
        } else {
            None
        };
        let info = ctx
            .store
            .upload_file(&output.key, &path)
            .await
            .map_err(|e| {
                Failure::after_success(format!(
                    "uploading output `{}` (key {}): {e}",
                    output.name, output.key
                ))
            })?;
        uploaded.push(Artifact {
            name: output.name.clone(),
            key: info.key,
            sha256: info.sha256,
            size: info.size,
            result,
        });
    }
    Ok(uploaded)
}

/// The content of an output declared `result: true`, if small enough to go
/// back with the attempt's success (and be stored with its record).
async fn read_result(
    output: &OutputUpload,
    path: &Path,
    size: u64,
    shown: &str,
) -> Result<Vec<u8>, Failure> {
    let most = condition::MAX_RESULT_BYTES;
    if size > most as u64 {
        return Err(Failure::after_success(format!(
            "output `{}` at {shown} is declared `result: true` but has {size} bytes (at most {most})",
            output.name
        )));
    }
    tokio::fs::read(path).await.map_err(|e| {
        Failure::after_success(format!("reading output `{}` at {shown}: {e}", output.name))
    })
}

/// How supervising ended.
enum Supervised {
    /// The task is gone: how it ended, or why that is unknown.
    Ended(Result<Termination, ExecError>),
    /// The agent is shutting down and the task outlives it.
    LeftRunning,
}

/// Waits for the task, stopping it on timeout or on request.
async fn supervise(
    running: &mut Running,
    timeout: Option<Duration>,
    stop: &mut StopSignal,
    kill_grace: Duration,
) -> Supervised {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (cause, grace) = tokio::select! {
        ended = running.wait() => return Supervised::Ended(ended),
        () = deadline => (StopCause::Timeout(timeout.unwrap_or_default()), kill_grace),
        request = stop_requested(stop) => (request.cause, request.grace),
    };
    if matches!(cause, StopCause::Shutdown { .. }) && running.survives_shutdown() {
        return Supervised::LeftRunning;
    }
    if let Err(e) = running.stop(grace).await {
        return Supervised::Ended(Err(e));
    }
    Supervised::Ended(Ok(Termination::Stopped(cause)))
}

/// Resolves once someone asks the attempt to stop (never, if nobody can).
async fn stop_requested(stop: &mut StopSignal) -> StopRequest {
    if let Ok(request) = stop.wait_for(Option::is_some).await {
        if let Some(request) = request.as_ref() {
            return request.clone();
        }
    }
    // The registry dropped the sender: no stop can come any more.
    std::future::pending().await
}

/// A clean attempt directory with `outputs/`, `inputs/` when given (a
/// process task without declared inputs gets none: one directory fewer per
/// task), `work/` for a container, and an empty log, opened for appending.
/// A directory left by an earlier life of this agent is replaced.
async fn prepare_dir(
    dir: &Path,
    inputs: Option<&Path>,
    outputs: &Path,
    work: Option<&Path>,
    log_path: &Path,
) -> std::io::Result<std::fs::File> {
    let (dir, outputs, log_path) = (dir.to_owned(), outputs.to_owned(), log_path.to_owned());
    let (inputs, work) = (inputs.map(Path::to_owned), work.map(Path::to_owned));
    // One trip to the blocking pool for all of it, not one per call.
    tokio::task::spawn_blocking(move || {
        prepare_dir_blocking(
            &dir,
            inputs.as_deref(),
            &outputs,
            work.as_deref(),
            &log_path,
        )
    })
    .await
    .map_err(std::io::Error::other)?
}

fn prepare_dir_blocking(
    dir: &Path,
    inputs: Option<&Path>,
    outputs: &Path,
    work: Option<&Path>,
    log_path: &Path,
) -> std::io::Result<std::fs::File> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Another attempt of the same run finishing at this moment may remove
    // the (then empty) run or task directory under us: try again.
    let mut tries = 0;
    loop {
        tries += 1;
        let created = (|| {
            std::fs::create_dir_all(outputs)?;
            for extra in [inputs, work].into_iter().flatten() {
                std::fs::create_dir(extra)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        match created {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => continue,
            Err(e) => return Err(e),
        }
    }
    if let Some(work) = work {
        // A container may run as any user: let it write its outputs and
        // scratch files (the attempt directory is the agent's alone otherwise).
        for writable in [outputs, work] {
            std::fs::set_permissions(writable, std::fs::Permissions::from_mode(0o777))?;
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
}

/// Appends an agent line to the task's log, so `drover logs` shows why it failed.
async fn note_in_log(log_path: &Path, line: &str) {
    let write = async {
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .await?;
        f.write_all(format!("[drover-agent] {line}\n").as_bytes())
            .await?;
        f.flush().await
    };
    if let Err(e) = write.await {
        warn!(path = %log_path.display(), error = %e, "writing to the attempt log failed");
    }
}

/// Removes the attempt directory, then its task and run directories if empty.
async fn remove_attempt_dir(work_dir: &Path, dir: &Path) {
    let (work_dir, dir) = (work_dir.to_owned(), dir.to_owned());
    // One trip to the blocking pool for all of it, not one per call.
    let removed = tokio::task::spawn_blocking(move || remove_attempt_dir_blocking(&work_dir, &dir));
    if let Err(e) = removed.await {
        warn!(error = %e, "removing attempt dir failed");
    }
}

fn remove_attempt_dir_blocking(work_dir: &Path, dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %dir.display(), error = %e, "removing attempt dir failed");
        }
    }
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p == work_dir || !p.starts_with(work_dir) {
            break;
        }
        // Fails (harmlessly) while another attempt of the run still uses it.
        if std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
}
