//! What keeps one runaway attempt from taking the agent down with it: the
//! log cap carried out on the file the task writes (see [`LogCap`]), and
//! naming a full work disk when an attempt fails on it.
//!
//! The task keeps writing its log file directly (the agent copies no
//! output). While it runs, the agent frees the disk blocks of the part that
//! will be dropped by punching a hole in the file (`fallocate`), so the
//! disk holds about the cap whatever the task prints; once it ended, the
//! tail is moved up behind the head and a marker line, and the file
//! truncated. The agent holds one 64 KiB buffer for that, never the log.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::core::limits::LogCap;

/// How often a running attempt's log size is looked at: a task writing at
/// disk speed gets this far past the cap before its blocks are freed.
const WATCH_TICK: Duration = Duration::from_millis(50);
/// The buffer moving the kept tail.
const COPY_BYTES: usize = 64 * 1024;
/// A work disk with less than this available is reported full.
const FULL_BELOW: u64 = 1 << 20;

/// For as long as it is polled: frees the blocks of the part of the log at
/// `log_path` the cap drops. Returns when it cannot go on (the filesystem
/// cannot punch holes, or the file is gone): the cap then still applies
/// to the stored log, not to the disk meanwhile.
pub async fn watch_log(log_path: &Path, cap: LogCap) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_TICK, WATCH_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut file: Option<File> = None;
    let mut punched = 0;
    loop {
        tick.tick().await;
        // One stat per tick; the file is opened once the log passes the cap.
        let Ok(len) = std::fs::metadata(log_path).map(|m| m.len()) else {
            return;
        };
        let Some(range) = cap.droppable(len, punched) else {
            continue;
        };
        if file.is_none() {
            match std::fs::OpenOptions::new().write(true).open(log_path) {
                Ok(f) => file = Some(f),
                Err(e) => {
                    warn!(path = %log_path.display(), error = %e, "cannot open the log to cap it");
                    return;
                }
            }
        }
        let Some(f) = file.as_ref() else { return };
        match punch_hole(f, range.start, range.end - range.start) {
            Ok(()) => punched = range.end,
            Err(e) => {
                warn!(
                    path = %log_path.display(), error = %e,
                    "cannot free the dropped part of a log over --max-log-bytes (the stored log is still capped)"
                );
                return;
            }
        }
    }
}

/// Frees the disk blocks of `[offset, offset + len)`; the file keeps its size
/// and reads zeros there.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: fallocate takes plain integers and a file descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn to_off(n: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(n).map_err(|_| io::Error::other("offset out of range"))
}

/// After the task ended: rewrites the log at `log_path` as the cap stores
/// it (head, marker, tail). Returns whether anything was dropped.
pub async fn compact_log(log_path: &Path, cap: LogCap) -> io::Result<bool> {
    // One stat inline: most logs are within the cap and need nothing more.
    let len = match std::fs::metadata(log_path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if cap.compaction(len).is_none() {
        return Ok(false);
    }
    let path = log_path.to_owned();
    tokio::task::spawn_blocking(move || compact_blocking(&path, cap))
        .await
        .map_err(io::Error::other)?
}

fn compact_blocking(log_path: &Path, cap: LogCap) -> io::Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(log_path)?;
    let len = file.metadata()?.len();
    let Some(plan) = cap.compaction(len) else {
        return Ok(false);
    };
    file.write_all_at(plan.marker.as_bytes(), plan.head)?;
    let mut to = plan.head + plan.marker.len() as u64;
    // The tail only ever moves towards the start (the marker is far shorter
    // than what was dropped), so copying forward never reads what it wrote.
    debug_assert!(to <= plan.tail_start);
    let mut from = plan.tail_start;
    let mut buf = vec![0; COPY_BYTES];
    while from < len {
        let want = usize::try_from(len - from).map_or(COPY_BYTES, |n| n.min(COPY_BYTES));
        let n = file.read_at(&mut buf[..want], from)?;
        if n == 0 {
            break;
        }
        file.write_all_at(&buf[..n], to)?;
        from += n as u64;
        to += n as u64;
    }
    file.set_len(to)?;
    debug!(path = %log_path.display(), len, stored = to, "log capped");
    Ok(true)
}

/// If the disk holding `dir` (an attempt's directory) is full: a reason
/// that says so and names the attempt's largest file, the likely culprit.
pub async fn disk_full_reason(dir: &Path) -> Option<String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || disk_full_blocking(&dir))
        .await
        .ok()
        .flatten()
}

fn disk_full_blocking(dir: &Path) -> Option<String> {
    let available = available_bytes(dir).ok()?;
    if available >= FULL_BELOW {
        return None;
    }
    let culprit = match largest_file(dir) {
        Some((path, size)) => {
            let shown = path.strip_prefix(dir).unwrap_or(&path);
            format!(
                "; the attempt's largest file is `{}` ({size} bytes)",
                shown.display()
            )
        }
        None => String::new(),
    };
    Some(format!(
        "no space left on device: the work disk holding `{}` is full ({available} bytes available){culprit}",
        dir.display()
    ))
}

/// After an attempt failed on a full disk, before it is reported: removes
/// what it wrote in `dir` (keeping `keep`, its log, and the directories
/// `kept_dirs`, emptied), so the next task the scheduler sends has the
/// space at once.
pub async fn free_attempt_space(dir: &Path, keep: &'static str, kept_dirs: [&'static str; 3]) {
    let dir = dir.to_owned();
    let freed = tokio::task::spawn_blocking(move || {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let path = entry.path();
            if name == keep {
                continue;
            }
            if kept_dirs.iter().any(|d| name == *d) {
                for inner in std::fs::read_dir(&path)?.flatten() {
                    remove_entry(&inner.path())?;
                }
            } else {
                remove_entry(&path)?;
            }
        }
        Ok::<_, io::Error>(())
    });
    match freed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "freeing a failed attempt's files failed"),
        Err(e) => warn!(error = %e, "freeing a failed attempt's files failed"),
    }
}

/// Removes a file, link or directory tree (links not followed).
fn remove_entry(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: statvfs writes only into the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The largest regular file under `dir` (symlinks not followed), looking at
/// no more than a bounded number of entries.
fn largest_file(dir: &Path) -> Option<(PathBuf, u64)> {
    let mut budget = 10_000usize;
    let mut stack = vec![dir.to_owned()];
    let mut best: Option<(PathBuf, u64)> = None;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            budget = budget.checked_sub(1)?;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && best.as_ref().is_none_or(|(_, s)| meta.len() > *s) {
                best = Some((entry.path(), meta.len()));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[tokio::test]
    async fn a_log_over_the_cap_is_stored_as_head_marker_and_tail() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let cap = LogCap::new(16 * 1024);
        // Numbered lines, so what is kept can be checked by content.
        let text: String = (0..10_000).map(|i| format!("line {i:05}\n")).collect();
        std::fs::write(&path, &text)?;
        // Punching the middle first, as the watcher does, changes nothing kept.
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        if let Some(r) = cap.droppable(text.len() as u64, 0) {
            punch_hole(&f, r.start, r.end - r.start)?;
        }
        assert!(compact_log(&path, cap).await?);
        let stored = std::fs::read_to_string(&path)?;
        let head = cap.head_bytes() as usize;
        let tail = cap.tail_bytes() as usize;
        assert!(stored.starts_with(&text[..head]));
        assert!(stored.ends_with(&text[text.len() - tail..]));
        let dropped = text.len() - head - tail;
        assert!(
            stored.contains(&format!("{dropped} bytes of output dropped")),
            "{stored}"
        );
        assert_eq!(
            stored.len(),
            head + tail
                + cap
                    .compaction(text.len() as u64)
                    .map_or(0, |c| c.marker.len())
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_roomy_disk_is_not_reported_full() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("f"), b"x")?;
        assert_eq!(disk_full_reason(dir.path()).await, None);
        assert_eq!(
            largest_file(dir.path()).map(|(_, s)| s),
            Some(1),
            "the only file"
        );
        Ok(())
    }
}
