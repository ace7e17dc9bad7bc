//! Working directories for process attempts, reused from attempt to attempt.
//!
//! Creating `<run>/<task>/<attempt>/outputs` and a log file per task and
//! removing them afterwards was most of a short task's cost on the agent:
//! ext4 allocates each new inode by scanning past the recently freed ones
//! (`recently_deleted`), so per-task create/remove made every allocation
//! slower (benches/README.md, profile item 1). A slot is a directory under
//! `<work-dir>/_process/<n>` holding `outputs/`, `inputs/` (only while the
//! attempt declares inputs) and the log; an attempt takes a free slot, and
//! when it ends the slot is emptied (its contents removed, the directories
//! and the log file kept, the log truncated) and handed to the next one. A
//! slot the attempt left as it found it — a short task's usual case — is
//! handed on after a look at two directories, without the blocking pool:
//! preparing and checking a slot are a few system calls, cheaper than the
//! hand-off to another thread and back.
//! The pool grows to the agent's peak concurrency. `_` cannot start a run
//! id, so the directory never meets a run's.
//!
//! Like Nomad's `raw_exec`, the process executor isolates nothing: a
//! process that leaves its process group (`setsid`) outlives its attempt and
//! could write into the slot's next attempt. Use the docker executor where
//! tasks are not trusted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::shell::attempt::{INPUTS_DIR, LOG_FILE, OUTPUTS_DIR};

/// The directory under the work dir that holds the slots.
pub const SLOTS_DIR: &str = "_process";

/// The pool; cheap to share behind the attempt context.
#[derive(Debug)]
pub struct Slots {
    root: PathBuf,
    /// Free slot numbers (lowest first), and the next number never handed out.
    free: Mutex<(BinaryHeap<Reverse<usize>>, usize)>,
}

/// One slot, taken by one attempt until given back with [`Slots::release`].
#[derive(Debug)]
pub struct Slot {
    index: usize,
    path: PathBuf,
}

impl Slot {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Slots {
    /// The pool under `<work_dir>/_process`, emptied of whatever an earlier
    /// life of this agent left (its processes died with it: the guardian).
    pub fn open(work_dir: &Path) -> io::Result<Self> {
        let root = work_dir.join(SLOTS_DIR);
        match std::fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            free: Mutex::new((BinaryHeap::new(), 0)),
        })
    }

    /// A free slot (the lowest numbered, so a steady load keeps reusing the
    /// same few); a new number when all are taken. No I/O: [`prepare`] makes
    /// its directories.
    pub fn acquire(&self) -> Slot {
        // The lock guards two plain values; a panic elsewhere cannot leave them torn.
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match free.0.pop() {
            Some(Reverse(i)) => i,
            None => {
                free.1 += 1;
                free.1 - 1
            }
        };
        Slot {
            index,
            path: self.root.join(index.to_string()),
        }
    }

    /// Empties the slot and makes it free again (blocking file-system work).
    /// A slot that cannot be emptied is removed whole; [`prepare`] creates
    /// it again on its next use. One that cannot be removed either is not
    /// handed out again.
    pub fn release(&self, slot: Slot) {
        // A missing slot is fine: never prepared (the attempt ended before
        // its directory was made), or removed just now.
        let found = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
        let usable = found(empty_slot(&slot.path))
            .or_else(|e| {
                tracing::warn!(dir = %slot.path.display(), error = %e, "emptying a process slot failed; removing it");
                found(std::fs::remove_dir_all(&slot.path))
            })
            .inspect_err(|e| {
                tracing::error!(dir = %slot.path.display(), error = %e, "removing a process slot failed; not using it again");
            })
            .is_ok();
        if usable {
            self.free_again(slot.index);
        }
    }

    /// Makes the slot free again without emptying it when the attempt left
    /// it as it found it (empty `outputs/` and `inputs/`, an empty log,
    /// nothing else — a short task's usual case; or never prepared): a
    /// couple of directory reads, cheap enough to do without the blocking
    /// pool. Returns the slot when it needs [`Slots::release`].
    pub fn release_if_clean(&self, slot: Slot) -> Option<Slot> {
        let clean = is_clean(&slot.path).unwrap_or_else(|e| e.kind() == io::ErrorKind::NotFound);
        if !clean {
            return Some(slot);
        }
        self.free_again(slot.index);
        None
    }

    fn free_again(&self, index: usize) {
        // The lock guards two plain values; a panic elsewhere cannot leave them torn.
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.0.push(Reverse(index));
    }
}

/// Whether the slot holds only what [`prepare`] makes, empty. Entries are
/// looked at without following links, as in [`empty_slot`].
fn is_clean(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        let clean = if kind.is_dir() && (name == OUTPUTS_DIR || name == INPUTS_DIR) {
            std::fs::read_dir(entry.path())?.next().is_none()
        } else if kind.is_file() && name == LOG_FILE {
            entry.metadata()?.len() == 0
        } else {
            false
        };
        if !clean {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes the slot ready for an attempt (blocking): `outputs/`, `inputs/`
/// when `inputs` (removed otherwise, so a task without declared inputs finds
/// none, as before), and the log, empty and opened for appending. On a
/// reused slot this allocates nothing.
pub fn prepare(dir: &Path, inputs: bool) -> io::Result<std::fs::File> {
    let exists_ok = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    };
    std::fs::create_dir_all(dir)?;
    exists_ok(std::fs::create_dir(dir.join(OUTPUTS_DIR)))?;
    let inputs_dir = dir.join(INPUTS_DIR);
    if inputs {
        exists_ok(std::fs::create_dir(&inputs_dir))?;
    } else {
        match std::fs::remove_dir(&inputs_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Appending: the agent's own notes go after the task's output.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))?;
    log.set_len(0)?;
    Ok(log)
}

/// Removes everything an attempt left in the slot except `outputs/` and
/// `inputs/` (emptied) and the log (truncated). Entries are looked at
/// without following links: an `outputs` that is a symlink is removed,
/// never emptied through.
fn empty_slot(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        let path = entry.path();
        if kind.is_dir() && (name == OUTPUTS_DIR || name == INPUTS_DIR) {
            for inner in std::fs::read_dir(&path)? {
                remove_entry(&inner?)?;
            }
        } else if kind.is_file() && name == LOG_FILE {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(0)?;
        } else {
            remove_entry(&entry)?;
        }
    }
    Ok(())
}

fn remove_entry(entry: &std::fs::DirEntry) -> io::Result<()> {
    if entry.file_type()?.is_dir() {
        std::fs::remove_dir_all(entry.path())
    } else {
        std::fs::remove_file(entry.path())
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn names(dir: &Path) -> std::io::Result<Vec<String>> {
        let mut v = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<String>>>()?;
        v.sort();
        Ok(v)
    }

    #[test]
    fn slots_are_reused_lowest_first_and_grow_with_concurrency() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let slots = Slots::open(tmp.path())?;
        let (a, b) = (slots.acquire(), slots.acquire());
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.path(), tmp.path().join("_process/0"));
        prepare(a.path(), false)?;
        prepare(b.path(), false)?;
        slots.release(b);
        slots.release(a);
        assert_eq!(slots.acquire().index, 0);
        assert_eq!(slots.acquire().index, 1);
        assert_eq!(slots.acquire().index, 2);
        Ok(())
    }

    #[test]
    fn a_released_slot_keeps_its_directories_and_loses_what_the_task_left() -> TestResult {
        use std::io::Write;
        let tmp = tempfile::tempdir()?;
        let slots = Slots::open(tmp.path())?;
        let slot = slots.acquire();
        let dir = slot.path().to_owned();
        let mut log = prepare(&dir, true)?;
        log.write_all(b"output of the task\n")?;
        std::fs::write(dir.join("outputs/model"), b"m")?;
        std::fs::create_dir_all(dir.join("outputs/nested/deeper"))?;
        std::fs::write(dir.join("inputs/data"), b"d")?;
        std::fs::write(dir.join("scratch"), b"s")?;
        std::fs::create_dir(dir.join("cache"))?;
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside)?;
        std::fs::write(outside.join("keep"), b"k")?;
        std::os::unix::fs::symlink(&outside, dir.join("link"))?;
        let inode =
            |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let before = (inode(&dir.join("outputs"))?, inode(&dir.join(LOG_FILE))?);

        slots.release(slot);
        assert_eq!(names(&dir)?, ["drover-attempt.log", "inputs", "outputs"]);
        assert!(names(&dir.join("outputs"))?.is_empty());
        assert!(names(&dir.join("inputs"))?.is_empty());
        assert_eq!(std::fs::metadata(dir.join(LOG_FILE))?.len(), 0);
        assert!(outside.join("keep").exists(), "a link was followed");

        // Reused: same directory and log file, and no inputs when none are declared.
        let slot = slots.acquire();
        assert_eq!(slot.path(), dir);
        prepare(&dir, false)?;
        assert_eq!(names(&dir)?, ["drover-attempt.log", "outputs"]);
        assert_eq!(
            (inode(&dir.join("outputs"))?, inode(&dir.join(LOG_FILE))?),
            before
        );
        Ok(())
    }

    #[test]
    fn an_outputs_symlink_is_removed_not_emptied_through() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let slots = Slots::open(tmp.path())?;
        let slot = slots.acquire();
        let dir = slot.path().to_owned();
        prepare(&dir, false)?;
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside)?;
        std::fs::write(outside.join("keep"), b"k")?;
        std::fs::remove_dir(dir.join("outputs"))?;
        std::os::unix::fs::symlink(&outside, dir.join("outputs"))?;
        slots.release(slot);
        assert!(outside.join("keep").exists());
        let slot = slots.acquire();
        prepare(slot.path(), false)?;
        assert!(std::fs::symlink_metadata(dir.join("outputs"))?.is_dir());
        Ok(())
    }

    #[test]
    fn only_a_slot_left_as_prepared_is_freed_without_emptying() -> TestResult {
        use std::io::Write;
        let tmp = tempfile::tempdir()?;
        let slots = Slots::open(tmp.path())?;
        // Each way an attempt can leave something behind.
        type Leave<'a> = &'a dyn Fn(&Path, &mut std::fs::File) -> std::io::Result<()>;
        let dirty: [Leave; 5] = [
            &|_, log| log.write_all(b"a line\n"),
            &|dir, _| std::fs::write(dir.join("outputs/model"), b"m"),
            &|dir, _| std::fs::write(dir.join("inputs/data"), b"d"),
            &|dir, _| std::fs::write(dir.join("scratch"), b"s"),
            &|dir, _| std::os::unix::fs::symlink(tmp.path(), dir.join("link")),
        ];
        for leave in dirty {
            let slot = slots.acquire();
            let dir = slot.path().to_owned();
            let mut log = prepare(&dir, true)?;
            leave(&dir, &mut log)?;
            let slot = slots
                .release_if_clean(slot)
                .ok_or("a slot with something left in it was freed as it was")?;
            slots.release(slot);
            assert!(names(&dir.join("outputs"))?.is_empty());
        }

        let slot = slots.acquire();
        prepare(slot.path(), true)?;
        assert!(slots.release_if_clean(slot).is_none());
        assert_eq!(slots.acquire().index, 0, "the clean slot was not freed");
        let unprepared = slots.acquire();
        assert!(!unprepared.path().exists());
        assert!(slots.release_if_clean(unprepared).is_none());
        assert_eq!(slots.acquire().index, 1);
        Ok(())
    }

    #[test]
    fn a_slot_released_unprepared_is_simply_free_again() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let slots = Slots::open(tmp.path())?;
        let slot = slots.acquire();
        slots.release(slot);
        assert_eq!(slots.acquire().index, 0);
        Ok(())
    }

    #[test]
    fn opening_the_pool_clears_an_earlier_life() -> TestResult {
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir_all(tmp.path().join("_process/3/outputs"))?;
        let _slots = Slots::open(tmp.path())?;
        assert!(names(&tmp.path().join("_process"))?.is_empty());
        Ok(())
    }
}
