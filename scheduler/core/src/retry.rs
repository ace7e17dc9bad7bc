//! Retry policy: how long a failed task waits before its next attempt.

use crate::Millis;

/// Upper bound on any single backoff, so a large limit cannot overflow or
/// park a task for days.
pub const MAX_BACKOFF_MS: Millis = 60 * 60 * 1000;

/// Delay before retry number `retry` (0 for the first retry): `base * 2^retry`,
/// capped at [`MAX_BACKOFF_MS`].
pub fn backoff(base_ms: Millis, retry: u32) -> Millis {
    let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_each_retry() {
        assert_eq!(backoff(5_000, 0), 5_000);
        assert_eq!(backoff(5_000, 1), 10_000);
        assert_eq!(backoff(5_000, 2), 20_000);
    }

    #[test]
    fn is_capped_and_never_overflows() {
        assert_eq!(backoff(5_000, 40), MAX_BACKOFF_MS);
        assert_eq!(backoff(u64::MAX, 3), MAX_BACKOFF_MS);
        assert_eq!(backoff(1, 200), MAX_BACKOFF_MS);
    }

    #[test]
    fn zero_base_retries_at_once() {
        assert_eq!(backoff(0, 5), 0);
    }
}
