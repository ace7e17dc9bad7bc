//! `code:` in `drover submit`: the directory is found relative to the spec
//! file, packed into a snapshot (`drover_artifacts::snapshot`), and uploaded
//! to the scheduler only when it does not have that sha256 yet.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use drover_api::pb;
use drover_artifacts::snapshot::{self, Snapshot, SnapshotError};

use crate::connect::Client;

/// Most a snapshot may pack to on this machine, whatever the scheduler
/// accepts: it is held in memory while it is hashed and sent.
const PACK_LIMIT: u64 = 4 << 30;

/// Bytes per `PutCode` message (the default gRPC limit is 4 MiB).
const CHUNK: usize = 1 << 20;

/// A spec's `code:` directory, packed.
pub struct Packed {
    /// `code:` as written in the spec.
    pub written: String,
    pub dir: PathBuf,
    pub snapshot: Snapshot,
}

/// Packs the `code:` of `spec` (read from `file`), refusing a snapshot over
/// `limit` bytes, and checks that every task's `workdir` is a directory in it.
pub fn pack(file: &Path, spec: &pb::PipelineSpec, limit: u64) -> Result<Option<Packed>> {
    if spec.code.is_empty() {
        return Ok(None);
    }
    let written = spec.code.clone();
    let base = file.parent().unwrap_or(Path::new("."));
    let dir = base.join(&written);
    let snapshot = snapshot::pack(&dir, limit.min(PACK_LIMIT)).map_err(|e| match e {
        SnapshotError::NotADirectory(_) => anyhow!(
            "code: `{written}` is not a directory (looked for `{}`, relative to the spec file)",
            dir.display()
        ),
        SnapshotError::TooLarge { limit, .. } => anyhow!(
            "code: `{written}` packs to more than {limit} bytes, the most the scheduler \
             accepts (--max-code-bytes); leave files out with a .droverignore"
        ),
        other => anyhow!("code: `{written}`: {other}"),
    })?;
    for task in spec.tasks.iter().filter(|t| !t.workdir.is_empty()) {
        if !snapshot.dirs.iter().any(|d| d == &task.workdir) {
            bail!(
                "task `{}`: workdir: `{}` is not a directory in code `{written}`",
                task.name,
                task.workdir
            );
        }
    }
    Ok(Some(Packed {
        written,
        dir,
        snapshot,
    }))
}

/// One line on what was packed.
pub fn describe(packed: &Packed) -> String {
    format!(
        "code: {} (`{}`): {} files, {} bytes, sha256 {}",
        packed.written,
        packed.dir.display(),
        packed.snapshot.files,
        packed.snapshot.tar.len(),
        packed.snapshot.sha256
    )
}

/// Makes sure the scheduler stores `packed`: asks first, uploads only when
/// it does not have it. Returns the sha256 to submit with.
pub async fn upload(client: &mut Client, packed: Packed) -> Result<String> {
    let Packed {
        written, snapshot, ..
    } = packed;
    let size = snapshot.tar.len() as u64;
    let code = pb::CodeRef {
        sha256: snapshot.sha256.clone(),
        size_bytes: size,
    };
    let status = client.stat_code(code.clone()).await?.into_inner();
    if status.stored {
        return Ok(code.sha256);
    }
    if size > status.max_bytes {
        bail!(
            "code: `{written}` packs to {size} bytes; the scheduler accepts at most {} \
             (--max-code-bytes); leave files out with a .droverignore",
            status.max_bytes
        );
    }
    let sha256 = code.sha256.clone();
    let tar = snapshot.tar;
    let chunks: Vec<pb::CodeChunk> = tar
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, data)| pb::CodeChunk {
            code: (i == 0).then(|| code.clone()),
            data: data.to_vec(),
        })
        .collect();
    // An empty tar never happens (it has an end marker), but the first
    // message must name the snapshot in any case.
    let chunks = if chunks.is_empty() {
        vec![pb::CodeChunk {
            code: Some(code),
            data: Vec::new(),
        }]
    } else {
        chunks
    };
    client.put_code(futures::stream::iter(chunks)).await?;
    Ok(sha256)
}
