//! The guardian: a small process, forked once per agent, that SIGKILLs the
//! process groups of the agent's running tasks when the agent dies.
//!
//! It replaces `PR_SET_PDEATHSIG` set in a `pre_exec` hook, which made std
//! `fork` the whole multi-threaded agent for every task (copying its page
//! tables) instead of using `posix_spawn` (vfork). The agent tells the
//! guardian each group it starts and each one it has cleaned up, over a
//! pipe whose only write end the agent holds (close-on-exec, so no task
//! inherits it). When the agent dies — a crash, SIGKILL, or the agent
//! dropped inside a larger process — the pipe reads end-of-file and the
//! guardian kills every group still registered, then exits.
//!
//! Differences from `PR_SET_PDEATHSIG`: the trigger is the agent process
//! (all its threads) going away, not the spawning thread; and a task
//! started by an agent that dies before registering it (between `spawn`
//! and [`Guardian::watch`], microseconds) is not killed, as with
//! `PR_SET_PDEATHSIG` when the parent dies before the child's `prctl`. If
//! the guardian itself dies, the next message finds the pipe broken and a
//! new guardian is started with every live group.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use tracing::{debug, warn};

/// Groups one guardian holds (256 KiB of pids), far above the tasks an agent
/// runs at once; `watch` refuses more.
const CAPACITY: usize = 1 << 16;

/// Messages are one native-endian `i32`: `pgid` to watch, `-pgid` to forget.
/// Writes of 4 bytes to a pipe are atomic (≤ `PIPE_BUF`), so concurrent
/// writers cannot interleave.
const MSG: usize = std::mem::size_of::<i32>();

/// The agent's handle on its guardian process.
#[derive(Debug)]
pub struct Guardian {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pipe's write end; `None` only while dropping.
    pipe: Option<OwnedFd>,
    pid: libc::pid_t,
    /// What the guardian holds, to start a new one with if it dies.
    live: HashSet<libc::pid_t>,
}

impl Guardian {
    /// Forks the guardian.
    pub fn start() -> io::Result<Self> {
        let (pipe, pid) = fork_guardian()?;
        debug!(pid, "process guardian started");
        Ok(Guardian {
            inner: Mutex::new(Inner {
                pipe: Some(pipe),
                pid,
                live: HashSet::new(),
            }),
        })
    }

    /// Kills `pgid` (a group the agent leads) if the agent dies before
    /// [`Guardian::forget`].
    pub fn watch(&self, pgid: libc::pid_t) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.live.len() >= CAPACITY {
            return Err(io::Error::other(format!(
                "more than {CAPACITY} process groups running"
            )));
        }
        inner.live.insert(pgid);
        inner.send(pgid);
        Ok(())
    }

    /// The group is gone (killed after its leader exited): not to be killed.
    pub fn forget(&self, pgid: libc::pid_t) {
        let mut inner = self.lock();
        if inner.live.remove(&pgid) {
            inner.send(-pgid);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves `live` consistent (each
        // method changes it once, before writing), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Writes one message; if the guardian is gone, starts another with
    /// every live group (the message included: `live` is already updated).
    fn send(&mut self, msg: i32) {
        let Some(current) = &self.pipe else { return };
        match write_msg(current, msg) {
            Ok(()) => return,
            Err(e) => warn!(pid = self.pid, error = %e, "process guardian gone; starting another"),
        }
        reap(self.pid);
        let (pipe, pid) = match fork_guardian() {
            Ok(started) => started,
            Err(e) => {
                // Tasks still run and are stopped on every path the agent
                // lives through; only an agent crash would now orphan them.
                warn!(error = %e, "starting a process guardian failed");
                return;
            }
        };
        self.pid = pid;
        for &pgid in &self.live {
            if let Err(e) = write_msg(&pipe, pgid) {
                warn!(pid, error = %e, "registering with the new process guardian failed");
                break;
            }
        }
        self.pipe = Some(pipe);
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // Closing the pipe ends the guardian, which first kills whatever is
        // still registered (an attempt dropped without cleaning up).
        drop(inner.pipe.take());
        reap(inner.pid);
    }
}

fn write_msg(pipe: &OwnedFd, msg: i32) -> io::Result<()> {
    let bytes = msg.to_ne_bytes();
    loop {
        // SAFETY: writes from a live buffer of the given length to our fd.
        let n = unsafe { libc::write(pipe.as_raw_fd(), bytes.as_ptr().cast(), MSG) };
        if n == MSG as isize {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // A pipe write of ≤ PIPE_BUF bytes is all or nothing.
        return Err(if n < 0 {
            e
        } else {
            io::Error::other("short write")
        });
    }
}

/// Waits for an exited (or exiting) guardian so it does not stay a zombie.
fn reap(pid: libc::pid_t) {
    loop {
        // SAFETY: waits for our own child; no memory of ours is touched
        // besides the (null) status pointer.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A close-on-exec pipe: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks the guardian; returns the pipe's write end and its pid.
fn fork_guardian() -> io::Result<(OwnedFd, libc::pid_t)> {
    let (read, write) = pipe()?;
    // Allocated before the fork: the child must not allocate (another
    // thread may hold the allocator's lock at the moment of the fork).
    let mut groups = vec![0 as libc::pid_t; CAPACITY];
    // Blocked across the fork so none can end the child before it ignores
    // them; this thread's mask is restored right after.
    // SAFETY: sigset operations on a local set; pthread_sigmask changes only
    // this thread's mask and writes the old one into a local.
    let (blocked, old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in IGNORED {
            libc::sigaddset(&mut set, sig);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    // SAFETY: the child runs only `guardian_main`, which makes
    // async-signal-safe system calls on memory allocated before the fork
    // and never returns.
    let forked = match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => guardian_main(read.as_raw_fd(), &mut groups, &blocked),
        pid => Ok((write, pid)),
    };
    // SAFETY: restores this thread's mask from the local saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    forked
}

/// Signals meant for the agent (a terminal's ^C, `systemctl stop`): they
/// must not end the guardian before the agent; it leaves when the agent does.
const IGNORED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The guardian's whole life. Only async-signal-safe calls, no allocation,
/// no panics (no indexing that could fail), ends in `_exit`.
fn guardian_main(read: libc::c_int, groups: &mut [libc::pid_t], blocked: &libc::sigset_t) -> ! {
    // SAFETY (whole function): plain system calls on integers and on
    // buffers that live on this stack or were allocated before the fork.
    unsafe {
        // Only the read end stays open: the agent's sockets, files and
        // listeners (and the pipe's write end) must close when the agent
        // closes them, not live on here.
        if read != 3 {
            libc::dup2(read, 3);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let max = limit.rlim_cur.min(1 << 20) as libc::c_int;
            for fd in 4..max {
                libc::close(fd);
            }
        }
        // Ignored, then unblocked (any that came meanwhile are discarded).
        // Its own group keeps it out of the agent's job control.
        for sig in IGNORED {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, blocked, std::ptr::null_mut());
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_NAME, c"drover-guardian".as_ptr());

        let mut len = 0usize;
        let mut buf = [0u8; 4096];
        let mut have = 0usize;
        loop {
            let free = buf.len() - have;
            let n = libc::read(3, buf.as_mut_ptr().add(have).cast(), free);
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            have += n as usize;
            let mut at = 0;
            while have - at >= MSG {
                let mut word = [0u8; MSG];
                for (i, b) in word.iter_mut().enumerate() {
                    *b = *buf.as_ptr().add(at + i);
                }
                at += MSG;
                let msg = i32::from_ne_bytes(word);
                if msg > 0 {
                    if len < groups.len() {
                        *groups.as_mut_ptr().add(len) = msg;
                        len += 1;
                    }
                } else {
                    let pgid = msg.wrapping_neg();
                    let mut i = 0;
                    while i < len {
                        if *groups.as_ptr().add(i) == pgid {
                            len -= 1;
                            *groups.as_mut_ptr().add(i) = *groups.as_ptr().add(len);
                            break;
                        }
                        i += 1;
                    }
                }
            }
            // Keep a partial message (never produced: writes are whole).
            let rest = have - at;
            for i in 0..rest {
                *buf.as_mut_ptr().add(i) = *buf.as_ptr().add(at + i);
            }
            have = rest;
        }
        // End of file: the agent is gone.
        for i in 0..len {
            libc::kill(-*groups.as_ptr().add(i), libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// `sleep 30` leading its own process group.
    fn sleeper() -> (Child, libc::pid_t) {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning sleep");
        let pgid = libc::pid_t::try_from(child.id()).expect("pid fits");
        (child, pgid)
    }

    /// Waits for the child, up to 5 s; `None` if it is still running.
    fn exit_signal(child: &mut Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.signal();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn kills_the_watched_groups_when_the_agent_side_goes_away() {
        let guardian = Guardian::start().expect("starting the guardian");
        let (mut watched, pgid) = sleeper();
        let (mut forgotten, other) = sleeper();
        guardian.watch(pgid).expect("watch");
        guardian.watch(other).expect("watch");
        guardian.forget(other);
        // As when the agent process dies: the pipe closes.
        drop(guardian);
        assert_eq!(exit_signal(&mut watched), Some(libc::SIGKILL));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            forgotten.try_wait().expect("try_wait").is_none(),
            "a forgotten group is left alone"
        );
        forgotten.kill().expect("kill");
        forgotten.wait().expect("wait");
    }

    #[test]
    fn a_dead_guardian_is_replaced_with_every_live_group() {
        let guardian = Guardian::start().expect("starting the guardian");
        let (mut first, pgid) = sleeper();
        guardian.watch(pgid).expect("watch");
        let old = guardian.lock().pid;
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
        // Dead (a zombie: its end of the pipe is closed) before the next message.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{old}/stat"))
            .is_ok_and(|stat| stat.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "guardian {old} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mut second, next) = sleeper();
        guardian.watch(next).expect("watch");
        assert_ne!(guardian.lock().pid, old, "a new guardian runs");
        drop(guardian);
        assert_eq!(exit_signal(&mut first), Some(libc::SIGKILL));
        assert_eq!(exit_signal(&mut second), Some(libc::SIGKILL));
    }

    #[test]
    fn ignores_the_signals_meant_for_the_agent() {
        let guardian = Guardian::start().expect("starting the guardian");
        let (mut watched, pgid) = sleeper();
        guardian.watch(pgid).expect("watch");
        let pid = guardian.lock().pid;
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: signals our own child.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(guardian);
        assert_eq!(exit_signal(&mut watched), Some(libc::SIGKILL));
    }
}
