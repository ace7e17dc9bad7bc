//! The `process` executor: the task's argv as a child process (no shell) in
//! its own process group, so stopping it reaches everything it started,
//! watched by the agent's [`Guardian`] so an agent crash does too; and,
//! where the agent can make one, in a cgroup of its own, so what left the
//! group (`setsid`, daemons) is killed when the attempt ends too.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tracing::{debug, warn};

use super::cgroup::{AttemptCgroup, CgroupRoot};
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
    /// A directory (the code snapshot) to make read-only for the task, even
    /// for root, where the agent can: see [`read_only_mount`].
    pub read_only: Option<&'a Path>,
    /// Where to make the attempt's cgroup, if the agent can.
    pub cgroups: Option<&'a CgroupRoot>,
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
    /// Holds every process the task starts; `None` without cgroups.
    cgroup: Option<AttemptCgroup>,
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
        // covers an agent crash instead. Only a root agent's task with a code
        // snapshot pays for one, to get its read-only mount.
        if let Some(dir) = spec.read_only {
            read_only_mount(&mut cmd, dir, spec.cwd).map_err(err)?;
        }
        let mut spawn = || {
            let child = cmd.spawn()?;
            // `id()` is `Some` until the child has been reaped, and nothing
            // has waited on it yet.
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("process exited before it was seen"))?;
            Ok((child, pid))
        };
        // Without its cgroup the task still runs, as without cgroups at all.
        let (spawned, cgroup) = match spec.cgroups.map(CgroupRoot::create) {
            None => (spawn(), None),
            Some(Err(e)) => {
                warn!(error = %e, "cannot make a cgroup for the task");
                (spawn(), None)
            }
            Some(Ok(cgroup)) => match cgroup.spawn_inside(spawn) {
                (spawned, Ok(())) => (spawned, Some(cgroup)),
                (spawned, Err(e)) => {
                    warn!(error = %e, "cannot put the task in its cgroup");
                    cgroup.kill_now();
                    (spawned, None)
                }
            },
        };
        let (child, pid) = match spawned {
            Ok(started) => started,
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    cgroup.kill_now();
                }
                return Err(err(e));
            }
        };
        let pgid =
            libc::pid_t::try_from(pid).map_err(|_| err(io::Error::other("pid out of range")))?;
        let process = RunningProcess {
            child,
            pgid,
            program: program.clone(),
            guardian: Arc::clone(guardian),
            cgroup,
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

    /// After the leader exited: kills what is left in the attempt's cgroup
    /// (daemons that left the process group) and gives the cgroup back.
    pub async fn kill_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let killed = cgroup.kill_all().await;
            if killed > 0 {
                debug!(
                    pgid = self.pgid,
                    killed, "killed processes left in the attempt's cgroup"
                );
            }
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
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill_now();
        }
        // Every path has killed the group by now (`finish` after the leader
        // exited, or just above).
        self.guardian.forget(self.pgid);
    }
}

/// For an agent running as root (which can write to any file whatever its
/// mode): the task starts in a mount namespace of its own where `dir` is a
/// read-only bind mount, gone with the task. Elsewhere the snapshot's modes
/// (0444/0555) are what keeps the task from writing, and a kernel that
/// refuses the namespace leaves it at that too.
fn read_only_mount(cmd: &mut Command, dir: &Path, cwd: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
    };
    let (dir, cwd, root) = (c_path(dir)?, c_path(cwd)?, c_path(Path::new("/"))?);
    // A remount must keep the flags the mount underneath has locked.
    let flags = locked_mount_flags(&dir)?;
    // SAFETY: the hook runs between fork and exec and only makes system
    // calls on memory prepared here (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Ok(());
            }
            let null = std::ptr::null();
            let steps = [
                (null, root.as_ptr(), libc::MS_REC | libc::MS_PRIVATE),
                (dir.as_ptr(), dir.as_ptr(), libc::MS_BIND | libc::MS_REC),
                (
                    null,
                    dir.as_ptr(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
                ),
            ];
            for (source, target, flags) in steps {
                if libc::mount(source, target, null, flags, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // std changed into `cwd` before this hook: again, now through
            // the read-only mount.
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The `nosuid`, `nodev`, `noexec` and atime flags of the mount holding `dir`.
fn locked_mount_flags(dir: &std::ffi::CStr) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs writes only into the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is a valid C string and `st` a valid out pointer.
    if unsafe { libc::statvfs(dir.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let pairs = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .into_iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |acc, (_, ms_flag)| acc | ms_flag))
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
