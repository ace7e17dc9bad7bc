//! Code snapshots on the scheduler's side: `StatCode` and `PutCode` store a
//! packed `code:` directory once per sha256 at `code/<sha256>.tar` in the
//! artifact store, and a submit may only name a snapshot that is stored.
//!
//! An upload is held in memory (at most `--max-code-bytes`) until its bytes
//! are known to hash to the sha256 it claims, so a refused or broken upload
//! writes nothing; the store's own put is atomic.

use drover_api::naming::{code_key, is_sha256};
use drover_api::pb;
use futures::{Stream, StreamExt};

use crate::error::{Result, SchedulerError};

/// Why a sha256 field is refused, naming the value.
fn check_sha256(field: &'static str, value: &str) -> Result<()> {
    if is_sha256(value) {
        return Ok(());
    }
    Err(SchedulerError::InvalidArgument {
        field,
        message: format!("`{value}` is not a sha256 (64 lowercase hex digits)"),
    })
}

fn store_error(e: drover_artifacts::ArtifactError) -> SchedulerError {
    SchedulerError::Artifacts(e.to_string())
}

/// Whether `code` is stored, and the largest snapshot accepted.
pub async fn stat(
    artifacts: &drover_artifacts::Store,
    max_bytes: u64,
    code: &pb::CodeRef,
) -> Result<pb::CodeStatus> {
    check_sha256("sha256", &code.sha256)?;
    let stored = artifacts
        .exists(&code_key(&code.sha256))
        .await
        .map_err(store_error)?;
    Ok(pb::CodeStatus { stored, max_bytes })
}

/// Reads an upload (the first chunk names the snapshot), checks its size
/// and sha256, and stores it unless it is there already.
pub async fn put<S>(
    artifacts: &drover_artifacts::Store,
    max_bytes: u64,
    mut chunks: S,
) -> Result<pb::CodeRef, tonic::Status>
where
    S: Stream<Item = Result<pb::CodeChunk, tonic::Status>> + Unpin,
{
    let invalid =
        |field, message| tonic::Status::from(SchedulerError::InvalidArgument { field, message });
    let Some(first) = chunks.next().await.transpose()? else {
        return Err(invalid("code", "the upload is empty".to_owned()));
    };
    let Some(code) = first.code else {
        return Err(invalid(
            "code",
            "the first chunk must name the snapshot's sha256 and size".to_owned(),
        ));
    };
    check_sha256("code.sha256", &code.sha256)?;
    if code.size_bytes > max_bytes {
        return Err(invalid(
            "code.size_bytes",
            format!(
                "the snapshot is {} bytes; at most {max_bytes} are accepted (--max-code-bytes)",
                code.size_bytes
            ),
        ));
    }
    // Bounded by --max-code-bytes, checked just above.
    let mut bytes = Vec::with_capacity(usize::try_from(code.size_bytes).unwrap_or(0));
    let mut data = first.data;
    loop {
        if (bytes.len() + data.len()) as u64 > code.size_bytes {
            return Err(invalid(
                "code.size_bytes",
                format!(
                    "the upload has more than the {} bytes announced",
                    code.size_bytes
                ),
            ));
        }
        bytes.extend_from_slice(&data);
        match chunks.next().await.transpose()? {
            Some(chunk) => data = chunk.data,
            None => break,
        }
    }
    if bytes.len() as u64 != code.size_bytes {
        return Err(invalid(
            "code.size_bytes",
            format!(
                "the upload has {} bytes, not the {} announced",
                bytes.len(),
                code.size_bytes
            ),
        ));
    }
    let actual = drover_artifacts::sha256_hex(&bytes);
    if actual != code.sha256 {
        return Err(invalid(
            "code.sha256",
            format!(
                "`{}` does not match the uploaded bytes (their sha256 is `{actual}`)",
                code.sha256
            ),
        ));
    }
    let key = code_key(&code.sha256);
    // Same content, same key: a second upload of it writes nothing.
    if !artifacts.exists(&key).await.map_err(store_error)? {
        artifacts
            .put_bytes(&key, bytes.into())
            .await
            .map_err(store_error)?;
    }
    Ok(code)
}

/// The snapshot a submit runs with: `requested` (SubmitRunRequest.code_sha256)
/// must be a stored snapshot, and is required when the spec has `code:`.
pub async fn for_submit(
    artifacts: &drover_artifacts::Store,
    spec_code: &str,
    requested: &str,
) -> Result<String> {
    if requested.is_empty() {
        if spec_code.is_empty() {
            return Ok(String::new());
        }
        return Err(SchedulerError::InvalidArgument {
            field: "code_sha256",
            message: format!(
                "the spec has `code: {spec_code}` but the request names no snapshot \
                 (`drover submit` packs and uploads it)"
            ),
        });
    }
    check_sha256("code_sha256", requested)?;
    if !artifacts
        .exists(&code_key(requested))
        .await
        .map_err(store_error)?
    {
        return Err(SchedulerError::FailedPrecondition(format!(
            "code_sha256: snapshot `{requested}` is not in the artifact store (upload it with PutCode first)"
        )));
    }
    Ok(requested.to_owned())
}
