//! Live logs: while an attempt's task runs, what its log file gains is
//! published on core NATS (`LiveLogChunk` on `<prefix>.logs.<run>.<task>`),
//! and the log so far is read back on request (`<prefix>.agent.<id>.log`)
//! for a reader that attaches late or missed a chunk.
//!
//! The attempt's log file is the one source: the agent tails the file the
//! task writes into (a process's stdout and stderr, a container's copied
//! output), so every executor is covered the same way, the hot path of
//! capturing output is untouched, and the object uploaded when the attempt
//! ends holds the same bytes at the same offsets. Tailing starts only a
//! tick after the task started: a task shorter than that opens nothing and
//! publishes nothing. A request before that tick finds the attempt not
//! running yet; its first chunk starts at offset 0, so a reader misses
//! nothing.
//! Nothing is retained: a chunk nobody subscribed to is dropped by NATS.
//!
//! Under `--max-log-bytes`, only the log's first half-cap (which the
//! stored log keeps at the same offsets) is published and served live; a
//! follower reads the rest from the stored log once the attempt ended.
//! The cap itself is kept meanwhile (`shell::limits::watch_log`).

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::{Client, Message};
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::{LiveLogChunk, LiveLogReply, LiveLogRequest};
use prost::Message as _;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::core::limits::LogCap;
use crate::core::AttemptKey;
use crate::shell::limits::watch_log;

/// How often a running attempt's log is looked at: output reaches a
/// follower at most this late, and a chatty task costs one publish per
/// tick, not one per line.
pub const TICK: Duration = Duration::from_millis(100);
/// Most bytes in one published chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Most chunks published per tick: a task writing faster than this falls
/// behind live (its stored log still has everything).
const MAX_CHUNKS_PER_TICK: usize = 16;
/// Most bytes in one reply to a `LiveLogRequest` (NATS refuses messages
/// over 1 MiB by default).
pub const MAX_REPLY_BYTES: u32 = 512 * 1024;

/// The logs of this agent's running attempts, open for reading.
type OpenLogs = Arc<Mutex<HashMap<AttemptKey, LiveFile>>>;

/// A running attempt's log, and how far of it is served live.
#[derive(Clone)]
struct LiveFile {
    file: Arc<File>,
    /// Bytes from the start that the stored log keeps where they are.
    served: u64,
}

/// Publishes running attempts' logs and answers requests for them.
#[derive(Clone)]
pub struct LiveLogs {
    client: Client,
    prefix: Arc<str>,
    /// This agent's id: its log subjects carry it.
    agent_id: Arc<str>,
    open: OpenLogs,
}

/// Keeps an attempt's log readable by requests until dropped.
struct Registered {
    open: OpenLogs,
    key: AttemptKey,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.key);
    }
}

fn lock(open: &OpenLogs) -> MutexGuard<'_, HashMap<AttemptKey, LiveFile>> {
    // Only plain map operations run under the lock: a poisoned one is consistent.
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveLogs {
    pub fn new(client: Client, prefix: &str, agent_id: &str) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            agent_id: agent_id.into(),
            open: Arc::default(),
        }
    }

    /// Runs `work` (the attempt's task, from started to gone) while
    /// publishing what `log_path` gains, answering requests for it, and
    /// keeping it to `cap` on disk.
    pub async fn during<F: Future>(
        &self,
        key: &AttemptKey,
        log_path: &Path,
        cap: LogCap,
        work: F,
    ) -> F::Output {
        tokio::pin!(work);
        let beside = async {
            tokio::join!(
                self.tail(key, log_path, cap.head_bytes()),
                watch_log(log_path, cap)
            )
        };
        // All polled: a publish waiting on NATS never holds up the
        // attempt's supervision (its timeout, a cancel, its end).
        tokio::select! {
            biased;
            out = &mut work => out,
            _ = beside => work.await,
        }
    }

    /// From the first tick on, for as long as it is polled: keeps the log
    /// readable by requests and publishes what it gains every tick.
    /// Returns only when the log cannot be opened.
    async fn tail(&self, key: &AttemptKey, log_path: &Path, served: u64) {
        let mut tick = tokio::time::interval_at(Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A task that ends sooner costs no more than this timer.
        tick.tick().await;
        // The read handle, not the path: a request answered after the
        // attempt ended still reads this attempt's file, never the next
        // attempt's in a reused directory.
        let file = match File::open(log_path) {
            Ok(file) => Arc::new(file),
            Err(e) => {
                warn!(attempt = %key, path = %log_path.display(), error = %e, "cannot open the log to follow it live");
                return;
            }
        };
        let live = LiveFile {
            file: Arc::clone(&file),
            served,
        };
        lock(&self.open).insert(key.clone(), live);
        let _registered = Registered {
            open: Arc::clone(&self.open),
            key: key.clone(),
        };
        let subject = naming::logs_subject(&self.prefix, &self.agent_id, &key.run_id, &key.task);
        let mut published = 0;
        loop {
            published = self
                .publish_new(key, &file, served, &subject, published)
                .await;
            tick.tick().await;
        }
    }

    /// Publishes the log from `offset` to its current end, or `served`
    /// (at most `MAX_CHUNKS_PER_TICK` chunks); returns the offset reached.
    async fn publish_new(
        &self,
        key: &AttemptKey,
        file: &File,
        served: u64,
        subject: &str,
        offset: u64,
    ) -> u64 {
        // One fstat per tick; reads only when the task wrote something.
        let Ok(len) = file.metadata().map(|m| m.len().min(served)) else {
            return offset;
        };
        let mut offset = offset;
        for _ in 0..MAX_CHUNKS_PER_TICK {
            if offset >= len {
                break;
            }
            let want = usize::try_from(len - offset).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
            let data = match read_at(file, offset, want) {
                Ok(data) if !data.is_empty() => data,
                Ok(_) => break,
                Err(e) => {
                    debug!(attempt = %key, error = %e, "reading the log to publish failed");
                    break;
                }
            };
            let read = data.len() as u64;
            let chunk = LiveLogChunk {
                attempt: Some(key.to_ref()),
                offset,
                data,
            };
            let payload = Bytes::from(chunk.encode_to_vec());
            if let Err(e) = self.client.publish(subject.to_owned(), payload).await {
                // Published again next tick; a reader that saw a gap asks for it.
                debug!(attempt = %key, error = %e, "publishing a live log chunk failed");
                break;
            }
            offset += read;
        }
        offset
    }

    /// Answers one `LiveLogRequest` message (read off the caller's task).
    pub async fn answer(&self, msg: Message) {
        let Some(reply_to) = msg.reply.clone() else {
            return;
        };
        let reply = match LiveLogRequest::decode(msg.payload.clone()) {
            Ok(LiveLogRequest {
                attempt: Some(attempt),
                offset,
                max_bytes,
            }) => {
                let live = lock(&self.open).get(&AttemptKey::from(&attempt)).cloned();
                match live {
                    Some(LiveFile { file, served }) => {
                        let left = served.saturating_sub(offset);
                        let want =
                            u64::from(max_bytes.clamp(1, MAX_REPLY_BYTES)).min(left) as usize;
                        let read =
                            tokio::task::spawn_blocking(move || read_at(&file, offset, want)).await;
                        match read {
                            Ok(Ok(data)) => LiveLogReply {
                                running: true,
                                data,
                            },
                            Ok(Err(e)) => {
                                warn!(attempt = ?attempt, error = %e, "reading a live log failed");
                                not_running()
                            }
                            Err(e) => {
                                warn!(error = %e, "reading a live log failed");
                                not_running()
                            }
                        }
                    }
                    None => not_running(),
                }
            }
            Ok(LiveLogRequest { attempt: None, .. }) => not_running(),
            Err(e) => {
                warn!(error = %e, "malformed live log request");
                not_running()
            }
        };
        if let Err(e) = self
            .client
            .publish(reply_to, Bytes::from(reply.encode_to_vec()))
            .await
        {
            warn!(error = %e, "answering a live log request failed");
        }
    }
}

fn not_running() -> LiveLogReply {
    LiveLogReply {
        running: false,
        data: Vec::new(),
    }
}

/// Up to `len` bytes of `file` from `offset`; fewer at its end.
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut data[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    data.truncate(filled);
    Ok(data)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;
    use std::io::Write as _;

    #[test]
    fn reads_stop_at_the_end_of_what_was_written() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let mut w = File::create(&path)?;
        w.write_all(b"hello\nworld\n")?;
        let r = File::open(&path)?;
        assert_eq!(read_at(&r, 0, 5)?, b"hello");
        assert_eq!(read_at(&r, 6, 100)?, b"world\n");
        assert_eq!(read_at(&r, 12, 100)?, b"");
        assert_eq!(read_at(&r, 50, 100)?, b"");
        // A handle opened before the writes sees what is written later.
        w.write_all(b"more")?;
        assert_eq!(read_at(&r, 12, 100)?, b"more");
        Ok(())
    }
}
