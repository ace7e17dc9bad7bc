//! Limits on what one attempt may leave on the agent: its stored log
//! (`--max-log-bytes`: the first and last halves kept, the middle dropped
//! with a marker line) and each declared output (`--max-output-bytes`).
//! Pure arithmetic; the shell punches the holes and rewrites the file.

use std::ops::Range;

/// Default `--max-log-bytes`.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 64 << 20;

/// Filesystems allocate (and punch) whole blocks: dropped ranges start and
/// end on this boundary, which every common block size divides.
const BLOCK: u64 = 4096;

/// The agent's limits on each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    pub log: LogCap,
    /// An output over this many bytes fails the attempt; `None`: no limit.
    pub max_output_bytes: Option<u64>,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            log: LogCap::new(DEFAULT_MAX_LOG_BYTES),
            max_output_bytes: None,
        }
    }
}

/// How much of an attempt's log is stored: at most `max_bytes` of the
/// task's output (plus one marker line), half from its start, half from its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCap {
    max_bytes: u64,
}

/// How a log over the cap becomes the stored log: `[0, head)`, the marker,
/// then `[tail_start, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub head: u64,
    pub tail_start: u64,
    pub marker: String,
}

impl LogCap {
    /// Caps below two blocks are raised to two blocks (one for each half).
    pub fn new(max_bytes: u64) -> Self {
        LogCap {
            max_bytes: max_bytes.max(2 * BLOCK),
        }
    }

    pub fn max_bytes(self) -> u64 {
        self.max_bytes
    }

    /// The start of the log kept as it was written, which live followers
    /// see as it grows: half the cap, on a block boundary.
    pub fn head_bytes(self) -> u64 {
        (self.max_bytes / 2) / BLOCK * BLOCK
    }

    /// Bytes kept from the end of the log.
    pub fn tail_bytes(self) -> u64 {
        self.max_bytes - self.head_bytes()
    }

    /// While the task writes: the part of a log of `len` bytes that will
    /// not be stored and whose disk blocks can be freed now, beyond the
    /// `punched` bytes already freed; `None` while there is less than a
    /// block to free. Whole blocks only, so the blocks at its edges, which
    /// hold kept bytes, stay.
    pub fn droppable(self, len: u64, punched: u64) -> Option<Range<u64>> {
        let head = self.head_bytes();
        let keep_from = len.saturating_sub(self.tail_bytes()) / BLOCK * BLOCK;
        let start = punched.max(head);
        (keep_from >= start + BLOCK).then_some(start..keep_from)
    }

    /// Once the task ended: how a log of `len` bytes is stored, or `None`
    /// when it fits as it is.
    pub fn compaction(self, len: u64) -> Option<Compaction> {
        if len <= self.max_bytes {
            return None;
        }
        let head = self.head_bytes();
        let tail_start = len - self.tail_bytes();
        let dropped = tail_start - head;
        Some(Compaction {
            head,
            tail_start,
            marker: format!(
                "\n[drover-agent] … {dropped} bytes of output dropped here: the log is kept to its first {head} and last {} bytes (--max-log-bytes {}) …\n",
                self.tail_bytes(),
                self.max_bytes
            ),
        })
    }
}

/// Why an output of `size` bytes may not be uploaded under `max` (shown as
/// `shown`, its path in the attempt directory), if it may not.
pub fn output_too_large(name: &str, shown: &str, size: u64, max: Option<u64>) -> Option<String> {
    let max = max?;
    (size > max).then(|| {
        format!(
            "output `{name}` at {shown} has {size} bytes, over the agent's --max-output-bytes {max}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_within_the_cap_is_left_alone() {
        let cap = LogCap::new(1 << 20);
        assert_eq!(cap.compaction(1 << 20), None);
        assert_eq!(cap.droppable(1 << 20, 0), None);
        assert_eq!(cap.compaction(0), None);
    }

    #[test]
    fn a_longer_log_keeps_half_the_cap_from_each_end_with_a_marker() {
        let cap = LogCap::new(1 << 20);
        let len = 50 << 20;
        let c = cap
            .compaction(len)
            .unwrap_or_else(|| panic!("no compaction"));
        assert_eq!(c.head, 512 << 10);
        assert_eq!(len - c.tail_start, 512 << 10);
        let dropped = len - (1 << 20);
        assert!(
            c.marker
                .contains(&format!("{dropped} bytes of output dropped")),
            "{}",
            c.marker
        );
        assert!(c.marker.starts_with('\n') && c.marker.ends_with('\n'));
    }

    #[test]
    fn odd_caps_still_sum_to_the_cap() {
        let cap = LogCap::new(1_000_001);
        assert_eq!(cap.head_bytes() + cap.tail_bytes(), 1_000_001);
        assert_eq!(cap.head_bytes() % BLOCK, 0);
        // Tiny caps are raised so each half has a block.
        assert_eq!(LogCap::new(10).max_bytes(), 2 * BLOCK);
    }

    #[test]
    fn droppable_ranges_are_whole_blocks_between_head_and_tail_and_only_new_ones() {
        let cap = LogCap::new(1 << 20);
        let head = cap.head_bytes();
        // Just over the cap: less than a block to drop.
        assert_eq!(cap.droppable((1 << 20) + 100, 0), None);
        let len = (3 << 20) + 123;
        let r = cap
            .droppable(len, 0)
            .unwrap_or_else(|| panic!("nothing droppable"));
        assert_eq!(r.start, head);
        assert_eq!(r.end % BLOCK, 0);
        assert!(len - r.end >= cap.tail_bytes(), "the tail is kept");
        // Already punched up to there: nothing more until the log grows a block.
        assert_eq!(cap.droppable(len, r.end), None);
        let more = cap
            .droppable(len + 2 * BLOCK, r.end)
            .unwrap_or_else(|| panic!("nothing droppable"));
        assert_eq!(more.start, r.end);
        // The stored log never needs a punched byte.
        let c = cap
            .compaction(len + 2 * BLOCK)
            .unwrap_or_else(|| panic!("no compaction"));
        assert!(c.tail_start >= more.end && c.head <= more.start);
    }

    #[test]
    fn outputs_are_checked_only_under_a_limit() {
        assert_eq!(output_too_large("m", "outputs/m", u64::MAX, None), None);
        assert_eq!(output_too_large("m", "outputs/m", 10, Some(10)), None);
        let msg = output_too_large("model", "outputs/model.bin", 11, Some(10));
        assert_eq!(
            msg.as_deref(),
            Some("output `model` at outputs/model.bin has 11 bytes, over the agent's --max-output-bytes 10")
        );
    }
}
