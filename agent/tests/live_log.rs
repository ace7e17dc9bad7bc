//! Live logs from a real agent on a real nats-server: what a running
//! attempt's log gains is published with its offset, and the log so far is
//! read back on request, only while the attempt runs.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use common::*;
use drover_api::naming;
use drover_api::pb::{attempt_event::Kind, AttemptRef, LiveLogChunk, LiveLogReply, LiveLogRequest};
use futures::StreamExt;
use prost::Message as _;

async fn read(
    h: &Harness,
    attempt: &AttemptRef,
    offset: u64,
    max_bytes: u32,
) -> Result<LiveLogReply> {
    let request = LiveLogRequest {
        attempt: Some(attempt.clone()),
        offset,
        max_bytes,
    };
    let subject = naming::live_log_subject(PREFIX, &h.agent_id);
    let reply = h
        .client
        .request(subject, Bytes::from(request.encode_to_vec()))
        .await?;
    Ok(LiveLogReply::decode(reply.payload)?)
}

/// Subscribes to the live log of task `task` of run `r1`, then runs
/// `script` as its first attempt.
async fn follow_and_run(
    h: &Harness,
    task: &str,
    script: &str,
) -> Result<(AttemptRef, async_nats::Subscriber)> {
    let attempt = attempt_ref("r1", task, 1);
    let live = h
        .client
        .subscribe(naming::logs_subject(PREFIX, &h.agent_id, "r1", task))
        .await?;
    let reply = h.assign(&assignment(&attempt, &sh(script))).await?;
    if !reply.accepted {
        bail!("refused: {}", reply.reason);
    }
    Ok((attempt, live))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_attempts_log_is_published_as_it_grows_and_read_back_on_request() -> Result<()> {
    let h = Harness::start().await?;
    let mut events = h.events().await?;
    // A dot in the task name: still one subject token.
    let script = "echo one; sleep 0.6; echo two; sleep 0.6; printf three";
    let (attempt, mut live) = follow_and_run(&h, "talk.v2", script).await?;

    // The first chunk comes while the task sleeps after `one`.
    let first = tokio::time::timeout(Duration::from_secs(5), live.next()).await?;
    let Some(first) = first else {
        bail!("subscription ended")
    };
    let first = LiveLogChunk::decode(first.payload)?;
    assert_eq!(first.attempt.as_ref(), Some(&attempt));
    assert_eq!(first.offset, 0);
    assert!(first.data.starts_with(b"one\n"), "{:?}", first.data);
    let so_far = read(&h, &attempt, 0, 1 << 20).await?;
    assert!(so_far.running);
    assert!(so_far.data.starts_with(b"one\n"), "{:?}", so_far.data);
    let part = read(&h, &attempt, 2, 2).await?;
    assert_eq!(part.data, b"e\n");
    let other = read(&h, &attempt_ref("r1", "talk.v2", 2), 0, 100).await?;
    assert!(!other.running && other.data.is_empty());

    let fin = events.final_event(&attempt).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        bail!("expected success, got {fin:?}");
    };
    let stored = h.store.get_bytes(&ok.log_key).await?;
    assert_eq!(stored, Bytes::from_static(b"one\ntwo\nthree"));
    // Chunks follow each other byte for byte, and agree with the stored log.
    let mut published = first.data;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), live.next()).await {
        let chunk = LiveLogChunk::decode(msg.payload)?;
        assert_eq!(chunk.offset, published.len() as u64);
        published.extend(chunk.data);
    }
    assert!(stored.starts_with(&published), "{published:?}");
    assert!(published.len() >= b"one\ntwo\n".len(), "{published:?}");
    // Ended: its log is the stored one now.
    let after = read(&h, &attempt, 0, 100).await?;
    assert!(!after.running && after.data.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_log_is_live_up_to_half_the_cap_which_the_stored_log_keeps_in_place() -> Result<()>
{
    let h = Harness::start_with(|o| o.max_log_bytes = 16 << 10).await?;
    let mut events = h.events().await?;
    // 40 KiB of numbered lines, then a pause to look at the live side.
    let script = "seq -w 1 5000 | sed 's/^/line /'; sleep 3; echo END";
    let (attempt, mut live) = follow_and_run(&h, "chatty", script).await?;

    let half = 8 << 10;
    let mut published = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), live.next()).await {
        let chunk = LiveLogChunk::decode(msg.payload)?;
        assert_eq!(chunk.offset, published.len() as u64);
        published.extend(chunk.data);
    }
    assert_eq!(published.len(), half, "live output stops at half the cap");
    let so_far = read(&h, &attempt, 0, 1 << 20).await?;
    assert!(so_far.running);
    assert_eq!(so_far.data, published);
    let beyond = read(&h, &attempt, half as u64, 100).await?;
    assert!(beyond.running && beyond.data.is_empty());

    let fin = events.final_event(&attempt).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        bail!("expected success, got {fin:?}");
    };
    let stored = h.store.get_bytes(&ok.log_key).await?;
    // What was live is where the stored log has it; a follower reads on from there.
    assert!(stored.starts_with(&published));
    let rest = String::from_utf8_lossy(&stored[half..]);
    assert!(rest.contains("bytes of output dropped here"), "{rest}");
    assert!(rest.ends_with("line 5000\nEND\n"), "{rest}");
    Ok(())
}
