//! One attempt, start to finish: started event, work directory, inputs,
//! the process under timeout and cancel, outputs, log, final event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_api::pb::{attempt_event::Kind, Artifact, AttemptStarted, AttemptSucceeded};
use drover_artifacts::Store;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::core::{AttemptKey, AttemptPlan, Failure, StopCause, Termination};
use crate::shell::events::EventPublisher;
use crate::shell::executor::{self, process::termination_of, ProcessSpec, RunningProcess};
use crate::shell::registry::{Registry, StopRequest, StopSignal};

/// The task's stdout and stderr, inside the attempt directory.
pub const LOG_FILE: &str = "drover-attempt.log";
pub const INPUTS_DIR: &str = "inputs";
pub const OUTPUTS_DIR: &str = "outputs";

/// What every attempt on this agent shares.
pub struct AttemptContext {
    pub agent_id: String,
    /// Absolute.
    pub work_dir: PathBuf,
    pub store: Store,
    pub events: EventPublisher,
    pub registry: Registry,
    /// SIGTERM → SIGKILL grace for timeouts.
    pub kill_grace: Duration,
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

/// Runs one attempt to its final event. The attempt must already be
/// registered (it is removed from the registry here, once its final event is acked).
pub async fn run(ctx: Arc<AttemptContext>, plan: AttemptPlan, mut stop: StopSignal) {
    let key = plan.key.clone();
    let (run, task, attempt) = (&key.run_id, &key.task, key.attempt);
    let dir = ctx.attempt_dir(&key);

    if let Err(e) = ctx
        .events
        .publish(&key, Kind::Started(AttemptStarted {}))
        .await
    {
        warn!(run = %run, task = %task, attempt, error = %e, "attempt dropped");
        ctx.registry.finish(&key);
        return;
    }
    info!(run = %run, task = %task, attempt, dir = %dir.display(), "started");

    let log_path = dir.join(LOG_FILE);
    let result = execute(&ctx, &plan, &dir, &log_path, &mut stop).await;
    if let Err(failure) = &result {
        note_in_log(&log_path, &format!("attempt failed: {}", failure.reason)).await;
    }

    let log_key = match ctx.store.upload_file(&plan.log_key, &log_path).await {
        Ok(_) => Ok(plan.log_key.clone()),
        Err(e) => {
            warn!(run = %run, task = %task, attempt, key = %plan.log_key, error = %e, "uploading log failed");
            Err(format!("uploading log (key {}): {e}", plan.log_key))
        }
    };

    let final_event = match (result, log_key) {
        (Ok(outputs), Ok(log_key)) => {
            info!(run = %run, task = %task, attempt, outputs = outputs.len(), "succeeded");
            Kind::Succeeded(AttemptSucceeded { outputs, log_key })
        }
        (Ok(_), Err(reason)) => {
            warn!(run = %run, task = %task, attempt, reason = %reason, "failed");
            Kind::Failed(Failure::after_success(reason).into_event(String::new()))
        }
        (Err(failure), log_key) => {
            info!(
                run = %run, task = %task, attempt,
                reason = %failure.reason, exit_code = ?failure.exit_code, cancelled = failure.cancelled,
                "failed"
            );
            Kind::Failed(failure.into_event(log_key.unwrap_or_default()))
        }
    };
    if let Err(e) = ctx.events.publish(&key, final_event).await {
        warn!(run = %run, task = %task, attempt, error = %e, "final event not published");
    }
    ctx.registry.finish(&key);
    remove_attempt_dir(&ctx.work_dir, &dir).await;
}

/// Everything between the started and the final event. `Ok` carries the
/// uploaded outputs of a successful attempt.
async fn execute(
    ctx: &AttemptContext,
    plan: &AttemptPlan,
    dir: &Path,
    log_path: &Path,
    stop: &mut StopSignal,
) -> Result<Vec<Artifact>, Failure> {
    let inputs = dir.join(INPUTS_DIR);
    let outputs = dir.join(OUTPUTS_DIR);
    let log = prepare_dir(dir, &inputs, &outputs, log_path)
        .await
        .map_err(|e| Failure::agent(format!("preparing work dir `{}`: {e}", dir.display())))?;

    for input in &plan.inputs {
        let dest = inputs.join(&input.name);
        tokio::select! {
            fetched = ctx.store.download_file(&input.key, &dest) => {
                fetched.map_err(|e| Failure::agent(format!(
                    "fetching input `{}` (key {}): {e}", input.name, input.key
                )))?;
            }
            request = stop_requested(stop) => return Err(Failure::stopped(&request.cause)),
        }
    }
    if let Some(request) = stop.borrow().as_ref() {
        return Err(Failure::stopped(&request.cause));
    }

    let key = &plan.key;
    let mut env = plan.env.clone();
    env.extend([
        ("DROVER_RUN_ID".to_owned(), key.run_id.clone()),
        ("DROVER_TASK".to_owned(), key.task.clone()),
        ("DROVER_ATTEMPT".to_owned(), key.attempt.to_string()),
        ("DROVER_AGENT_ID".to_owned(), ctx.agent_id.clone()),
        (
            "DROVER_INPUTS".to_owned(),
            inputs.to_string_lossy().into_owned(),
        ),
        (
            "DROVER_OUTPUTS".to_owned(),
            outputs.to_string_lossy().into_owned(),
        ),
    ]);
    let spec = ProcessSpec {
        command: &plan.command,
        cwd: dir,
        env,
        log,
    };
    let mut process =
        executor::spawn(plan.executor, spec).map_err(|e| Failure::agent(e.to_string()))?;
    info!(
        run = %key.run_id, task = %key.task, attempt = key.attempt, pgid = process.pgid(),
        "process running"
    );
    let termination = supervise(&mut process, plan.timeout, stop, ctx.kill_grace).await;
    // Whatever the leader left behind in its group goes too.
    process.kill_group();
    drop(process);
    let termination = termination.map_err(|e| {
        let program = plan.command.first().map_or("", String::as_str);
        Failure::agent(format!("waiting for `{program}`: {e}"))
    })?;
    if let Some(failure) = termination.failure() {
        return Err(failure);
    }

    let mut uploaded = Vec::with_capacity(plan.outputs.len());
    for output in &plan.outputs {
        let shown = format!("{OUTPUTS_DIR}/{}", output.path);
        let path = outputs.join(&output.path);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => {}
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
        }
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
        });
    }
    Ok(uploaded)
}

/// Waits for the process, stopping it on timeout or on request.
async fn supervise(
    process: &mut RunningProcess,
    timeout: Option<Duration>,
    stop: &mut StopSignal,
    kill_grace: Duration,
) -> std::io::Result<Termination> {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (cause, grace) = tokio::select! {
        status = process.wait() => return status.map(termination_of),
        () = deadline => (StopCause::Timeout(timeout.unwrap_or_default()), kill_grace),
        request = stop_requested(stop) => (request.cause, request.grace),
    };
    process.stop(grace).await?;
    Ok(Termination::Stopped(cause))
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

/// A clean attempt directory with `inputs/`, `outputs/` and an empty log,
/// opened for appending. A directory left by an earlier life of this agent
/// is replaced.
async fn prepare_dir(
    dir: &Path,
    inputs: &Path,
    outputs: &Path,
    log_path: &Path,
) -> std::io::Result<std::fs::File> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Another attempt of the same run finishing at this moment may remove
    // the (then empty) run or task directory under us: try again.
    let mut tries = 0;
    loop {
        tries += 1;
        let created = async {
            tokio::fs::create_dir_all(inputs).await?;
            tokio::fs::create_dir_all(outputs).await
        };
        match created.await {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => continue,
            Err(e) => return Err(e),
        }
    }
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .await?;
    Ok(log.into_std().await)
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
    if let Err(e) = tokio::fs::remove_dir_all(dir).await {
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
        if tokio::fs::remove_dir(p).await.is_err() {
            break;
        }
        parent = p.parent();
    }
}
