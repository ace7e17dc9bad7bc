//! The `process` executor: the task's argv as a child process (no shell) in
//! its own process group, so stopping it reaches everything it started,
//! watched by the agent's [`Guardian`] so an agent crash does too.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tracing::debug;

use super::guardian::Guardian;
use crate::core::Termination;

/// How long the group's other members may take to die after SIGKILL
/// before the attempt is reported anyway (orphans are reaped by init, not
/// by the agent), and how often to look.
const GROUP_GONE_WAIT: Duration = Duration::from_millis(500);
const GROUP_GONE_POLL: Duration = Duration::from_millis(2);

/// What to run and where.
#[derive(Debug)]
pub struct ProcessSpec<'a> {
    /// argv; `command[0]` is looked up on `PATH` when it has no slash.
    pub command: &'a [String],
    pub cwd: &'a Path,
    /// Added to (and overriding) the agent's own environment.
    pub env: Vec<(String, String)>,
    /// Receives both stdout and stderr; opened for appending.
    pub log: std::fs::File,
}

/// The task's command could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting `{program}`: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: io::Error,
}

/// A started task: its child and the process group it leads.
#[derive(Debug)]
pub struct RunningProcess {
    child: Child,
    pgid: libc::pid_t,
    program: String,
    guardian: Arc<Guardian>,
}

impl RunningProcess {
    /// Starts the command in a new process group whose id is its pid, and
    /// has `guardian` kill that group if the agent dies.
    pub fn spawn(spec: ProcessSpec<'_>, guardian: &Arc<Guardian>) -> Result<Self, SpawnError> {
        let program = spec.command.first().cloned().unwrap_or_default();
        let err = |source| SpawnError {
            program: program.clone(),
            source,
        };
        if program.is_empty() {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command",
            )));
        }
        let stderr = spec.log.try_clone().map_err(err)?;
        let mut cmd = Command::new(&program);
        cmd.args(&spec.command[1..])
            .current_dir(spec.cwd)
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(spec.log)
            .stderr(stderr)
            .process_group(0)
            // Only the leader; the group is killed explicitly on every exit path.
            .kill_on_drop(true);
        // No `pre_exec` hook (a `PR_SET_PDEATHSIG` there made std fork the
        // whole agent per task): std can `posix_spawn`, and the guardian
        // covers an agent crash instead.
        let child = cmd.spawn().map_err(err)?;
        // `id()` is `Some` until the child has been reaped, and nothing has
        // waited on it yet.
        let pid = child
            .id()
            .ok_or_else(|| err(io::Error::other("process exited before it was seen")))?;
        let pgid =
            libc::pid_t::try_from(pid).map_err(|_| err(io::Error::other("pid out of range")))?;
        let process = RunningProcess {
            child,
            pgid,
            program: program.clone(),
            guardian: Arc::clone(guardian),
        };
        // On failure the group is killed as `process` drops.
        guardian.watch(pgid).map_err(err)?;
        debug!(pid, program = %process.program, "process started");
        Ok(process)
    }

    /// The process group id (= the leader's pid).
    pub fn pgid(&self) -> libc::pid_t {
        self.pgid
    }

    /// `command[0]`, for messages.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Waits for the leader to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal_group(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                debug!(pgid = self.pgid, ?grace, "grace period over, killing");
                self.signal_group(libc::SIGKILL);
                self.child.wait().await
            }
        }
    }

    /// SIGKILLs whatever is left in the group (children the task left behind).
    ///
    /// Called right after the leader exits: the group id stays reserved while
    /// any member lives, and the kernel does not hand a live group's id to a
    /// new process, so this cannot hit an unrelated process group.
    pub fn kill_group(&self) {
        self.signal_group(libc::SIGKILL);
    }

    /// After [`RunningProcess::kill_group`]: waits until nothing in the
    /// group is alive any more (up to `GROUP_GONE_WAIT`), so an attempt
    /// reported finished has left no process behind to touch the slot's
    /// next attempt. A SIGKILL takes effect when its target next runs,
    /// which on a busy machine is not at once; a group already empty (the
    /// usual case) costs one system call.
    pub async fn wait_group_gone(&self) {
        let deadline = tokio::time::Instant::now() + GROUP_GONE_WAIT;
        while self.group_alive() {
            if tokio::time::Instant::now() >= deadline {
                debug!(pgid = self.pgid, "process group still alive after SIGKILL");
                return;
            }
            tokio::time::sleep(GROUP_GONE_POLL).await;
        }
    }

    /// Whether any process (a zombie not yet reaped included) is in the group.
    fn group_alive(&self) -> bool {
        // SAFETY: killpg takes plain integers and touches no memory of ours;
        // signal 0 only checks that the group has a member.
        unsafe { libc::killpg(self.pgid, 0) == 0 }
    }

    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: killpg takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::killpg(self.pgid, signal) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // ESRCH: the group is already empty.
            if e.raw_os_error() != Some(libc::ESRCH) {
                debug!(pgid = self.pgid, signal, error = %e, "signalling process group failed");
            }
        }
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        // An attempt task dropped mid-run (aborted at the shutdown deadline)
        // must not leave its process group behind. Once the leader has been
        // reaped (`id()` is `None`) the exit path has already cleaned up.
        if self.child.id().is_some() {
            self.kill_group();
        }
        // Every path has killed the group by now (`finish` after the leader
        // exited, or just above).
        self.guardian.forget(self.pgid);
    }
}

/// How an exit status reads as a termination the agent did not cause.
pub fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(sig)) => Termination::Signalled(sig),
        // Unix statuses are either an exit code or a signal.
        (None, None) => Termination::Exited(-1),
    }
}
