//! A cgroup per process attempt, where the agent may make one: everything
//! the task starts stays in it, including daemons that leave the task's
//! process group or session (`setsid`, double forks), so the attempt's end
//! kills them all.
//!
//! The cgroups live under `drover-<agent id>/` in the agent's own cgroup of
//! the v1 `pids` hierarchy, or else of the unified (v2) one: no limit is
//! set, they only group. std spawns with `posix_spawn` (a `pre_exec` hook
//! would make it fork the whole agent), so the task cannot move itself in.
//! Under v1, where a single thread may change cgroups, the spawning thread
//! steps into the attempt's cgroup for the spawn and back out: the task is
//! born inside. Under v2 the task is moved in right after the spawn: what
//! it forks before that (within microseconds of starting) stays outside.
//! An attempt's cgroup, emptied at its end, is kept for the next attempt:
//! creating and removing one per task would cost more than moving in.
//! An agent that cannot create cgroups (not root, read-only `/sys/fs/cgroup`
//! in a container) falls back to the process group alone. A restarted
//! agent kills what an earlier life left in its cgroups.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{debug, info, warn};

/// How long the killing of a cgroup's members goes on before giving up
/// (a member stuck in the kernel), and how often its members are listed.
const GONE_WAIT: Duration = Duration::from_millis(1000);
const GONE_POLL: Duration = Duration::from_millis(2);

/// Where this agent makes its attempts' cgroups.
#[derive(Debug)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// Under v1: the agent's own cgroup, where a spawning thread goes back to.
    v1_home: Option<PathBuf>,
    /// Names attempt cgroups.
    next: AtomicU64,
    /// Empty cgroups, ready for the next attempt.
    free: Free,
}

type Free = Arc<Mutex<Vec<PathBuf>>>;

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        // Only the empty ones: a busy one is cleared by the next agent start.
        for dir in lock(&self.free).drain(..) {
            let _ = std::fs::remove_dir(dir);
        }
        // Fails, harmlessly, while another agent with this id uses it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn lock(free: &Free) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
    // A plain list pushed to and popped from: a poisoned one is consistent.
    free.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One attempt's cgroup; emptied (its members killed) and given back by
/// [`AttemptCgroup::kill_all`].
#[derive(Debug)]
pub struct AttemptCgroup {
    dir: PathBuf,
    v1_home: Option<PathBuf>,
    /// Where it goes back to once empty; `None`: removed instead.
    free: Option<Free>,
}

impl CgroupRoot {
    /// The agent's cgroup directory for attempts, created and cleared of an
    /// earlier life's leftovers; `None` where no hierarchy lets the agent
    /// create one.
    pub fn open(agent_id: &str) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        for (base, v1) in candidates(&own) {
            let dir = base.join(format!("drover-{agent_id}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    debug!(dir = %dir.display(), error = %e, "cannot create a cgroup here");
                    continue;
                }
            }
            let root = CgroupRoot {
                dir,
                v1_home: v1.then_some(base),
                next: AtomicU64::new(0),
                free: Free::default(),
            };
            root.clear_leftovers();
            info!(dir = %root.dir.display(), "process attempts run in cgroups of their own");
            return Some(root);
        }
        let why = "cannot create cgroups: a process task's daemons that leave its process group outlive the attempt";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            warn!("{why}");
        } else {
            // Expected without root (`drover dev`, a user's agent).
            info!("{why}");
        }
        None
    }

    /// An empty cgroup for an attempt: a free one, or a new one.
    pub fn create(&self) -> io::Result<AttemptCgroup> {
        let free = Some(Arc::clone(&self.free));
        if let Some(dir) = lock(&self.free).pop() {
            return Ok(AttemptCgroup {
                dir,
                v1_home: self.v1_home.clone(),
                free,
            });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The agent's pid first: agents with one id may share a machine
        // (tests) and each clears only what a dead one left.
        let dir = self.dir.join(format!("{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // Left by an attempt whose members could not all be killed: reused.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(AttemptCgroup {
            dir,
            v1_home: self.v1_home.clone(),
            free,
        })
    }

    /// Kills and removes the attempt cgroups an earlier life of this agent
    /// left: those named after an agent process that no longer runs.
    fn clear_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let agent_pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .map(|(p, _)| p);
            let alive = agent_pid.is_some_and(|p| Path::new("/proc").join(p).exists());
            if !alive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                let left = AttemptCgroup {
                    dir: entry.path(),
                    v1_home: None,
                    free: None,
                };
                let killed = left.kill_members();
                if killed > 0 {
                    warn!(cgroup = %left.dir.display(), killed, "killed processes an earlier agent's attempt left");
                }
                // Killed members leave at once; try to remove without waiting.
                let _ = std::fs::remove_dir(&left.dir);
            }
        }
    }
}

/// The agent's own cgroup directories, preferred first, each with whether
/// it is of v1.
fn candidates(proc_self_cgroup: &str) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // The unified hierarchy: at the mount root, or `unified/` on a hybrid host.
            for mount in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                if Path::new(mount).join("cgroup.procs").exists() {
                    out.push((Path::new(mount).join(rel), false));
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "pids") {
            out.insert(0, (Path::new("/sys/fs/cgroup/pids").join(rel), true));
        }
    }
    out
}

impl AttemptCgroup {
    /// Runs `spawn` so that the process it starts (`Ok(pid)`) is in the
    /// cgroup: under v1 the calling thread is in it during the call, under
    /// v2 the process is moved in afterwards. `Err` says the cgroup could
    /// not be used; the spawn's own result is returned in either case.
    pub fn spawn_inside<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(T, u32)>,
    ) -> (io::Result<(T, u32)>, io::Result<()>) {
        let Some(home) = &self.v1_home else {
            let spawned = spawn();
            let moved = match &spawned {
                Ok((_, pid)) => std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()),
                Err(_) => Ok(()),
            };
            return (spawned, moved);
        };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() }.to_string();
        if let Err(e) = std::fs::write(self.dir.join("tasks"), &tid) {
            return (spawn(), Err(e));
        }
        let spawned = spawn();
        if let Err(e) = std::fs::write(home.join("tasks"), &tid) {
            // The thread stays with the attempt's processes; `kill_members`
            // never signals the agent itself, so nothing worse than a
            // cgroup left behind comes of it.
            warn!(tid, error = %e, "cannot move the agent thread back out of an attempt's cgroup");
        }
        (spawned, Ok(()))
    }

    /// SIGKILLs every member until none is left (or `GONE_WAIT` passed),
    /// then gives the cgroup back for the next attempt. Returns how many
    /// processes it found (a well-behaved task leaves none: one read).
    pub async fn kill_all(self) -> usize {
        let deadline = tokio::time::Instant::now() + GONE_WAIT;
        let mut found = 0;
        loop {
            let n = self.kill_members();
            if n == 0 {
                match &self.free {
                    Some(free) => lock(free).push(self.dir),
                    None => {
                        let _ = std::fs::remove_dir(&self.dir);
                    }
                }
                return found;
            }
            found = found.max(n);
            if tokio::time::Instant::now() >= deadline {
                // Not reused; cleared by the next agent start.
                warn!(cgroup = %self.dir.display(), "processes left in the attempt's cgroup after SIGKILL");
                return found;
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }

    /// Without waiting (an attempt dropped mid-run): SIGKILLs the members
    /// and tries to remove the cgroup (not reused: they may not be gone);
    /// one left behind is cleared by the next agent start.
    pub fn kill_now(self) {
        self.kill_members();
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// SIGKILLs the members listed now (the agent itself never); returns
    /// how many were listed.
    fn kill_members(&self) -> usize {
        let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) else {
            return 0;
        };
        let mut n = 0;
        let agent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        let pids = procs
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok());
        for pid in pids.filter(|&pid| pid != agent) {
            // SAFETY: kill takes plain integers and touches no memory of ours.
            // A member cannot be a recycled pid: it is still listed, so alive.
            // One exiting right now fails with ESRCH: it is gone at the next look.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_preferred_then_v1_pids() {
        let hybrid = "9:name=systemd:/\n8:pids:/agents\n4:memory:/x\n0::/\n";
        let got = candidates(hybrid);
        assert_eq!(
            got.first(),
            Some(&(PathBuf::from("/sys/fs/cgroup/pids/agents"), true))
        );
        assert!(candidates("4:memory:/x\n").is_empty());
    }
}
