//! Code snapshots on the agent: each one is fetched once per sha256 from
//! `code/<sha256>.tar` in the object store, checked against its sha256 as
//! it streams to disk, unpacked read-only into a temporary directory and renamed to
//! `<work-dir>/_code/<sha256>/`, where every later attempt of any run with
//! the same code finds it. Snapshots stay there (content-addressed, so a
//! stale one cannot exist); removing `_code/` while the agent is stopped
//! frees the space.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use drover_api::naming::code_key;
use drover_artifacts::{snapshot, ArtifactError, Store};
use tracing::{info, warn};

/// Under the agent's `--work-dir`; task names cannot start with `_`.
pub const CODE_DIR: &str = "_code";

/// Marks an unpacking or abandoned directory inside `CODE_DIR`.
const PARTIAL: &str = ".partial-";

/// The agent's unpacked snapshots.
pub struct CodeCache {
    root: PathBuf,
    store: Store,
    /// One lock per sha256 being fetched, so concurrent attempts fetch it once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_partial: AtomicU64,
}

impl CodeCache {
    /// Opens `<work_dir>/_code`, removing what an earlier life of the agent
    /// left half unpacked.
    pub fn open(work_dir: &Path, store: Store) -> std::io::Result<Self> {
        let root = work_dir.join(CODE_DIR);
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let path = entry?.path();
            let partial = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(PARTIAL));
            if partial && path.is_dir() {
                remove(&path);
            } else if partial {
                // A downloaded tar not unpacked yet.
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(CodeCache {
            root,
            store,
            fetching: Mutex::default(),
            next_partial: AtomicU64::new(0),
        })
    }

    /// The unpacked snapshot `sha256` (a checked sha256), fetched first if
    /// this agent does not have it yet.
    pub async fn ensure(&self, sha256: &str) -> Result<PathBuf, String> {
        let dir = self.root.join(sha256);
        // One stat, inline: the common case once a run's first task is here.
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = match self.fetching.lock() {
            Ok(mut fetching) => Arc::clone(fetching.entry(sha256.to_owned()).or_default()),
            Err(_) => return Err("code cache lock poisoned".to_owned()),
        };
        let _fetching = lock.lock().await;
        if !dir.is_dir() {
            self.fetch(sha256, &dir).await?;
        }
        if let Ok(mut fetching) = self.fetching.lock() {
            fetching.remove(sha256);
        }
        Ok(dir)
    }

    async fn fetch(&self, sha256: &str, dir: &Path) -> Result<(), String> {
        let key = code_key(sha256);
        let n = self.next_partial.fetch_add(1, Ordering::Relaxed);
        let partial = self.root.join(format!("{sha256}{PARTIAL}{n}"));
        // Streamed to disk and checked on the way: a snapshot is never held
        // in memory whole, and a corrupt one is never unpacked.
        let tar = self.root.join(format!("{sha256}{PARTIAL}{n}.tar"));
        self.store
            .download_verified(&key, &tar, sha256)
            .await
            .map_err(|e| match e {
                ArtifactError::NotFound { .. } => {
                    format!("code snapshot `{sha256}` is missing from the store ({key})")
                }
                ArtifactError::Corrupt { want, got, .. } => {
                    format!("code snapshot `{sha256}` is corrupt: sha256 {want} != {got}")
                }
                other => format!("fetching code snapshot `{sha256}`: {other}"),
            })?;
        let (sha256, dir) = (sha256.to_owned(), dir.to_owned());
        let unpacked = tokio::task::spawn_blocking(move || {
            let result = std::fs::File::open(&tar)
                .map_err(|e| format!("opening code snapshot `{}`: {e}", tar.display()))
                .and_then(|file| {
                    snapshot::unpack(std::io::BufReader::new(file), &partial)
                        .map_err(|e| format!("unpacking code snapshot `{sha256}`: {e}"))
                })
                .and_then(|()| {
                    std::fs::rename(&partial, &dir)
                        .map_err(|e| format!("moving code snapshot into `{}`: {e}", dir.display()))
                });
            let _ = std::fs::remove_file(&tar);
            if result.is_err() {
                remove(&partial);
            } else {
                info!(sha256 = %sha256, dir = %dir.display(), "code snapshot unpacked");
            }
            result
        });
        unpacked.await.map_err(|e| e.to_string())?
    }
}

/// Removes a (read-only) snapshot directory; failures are only logged.
fn remove(path: &Path) {
    let removed = snapshot::writable(path)
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::remove_dir_all(path).map_err(|e| e.to_string()));
    if let Err(e) = removed {
        warn!(path = %path.display(), error = %e, "removing a partial code snapshot failed");
    }
}
