//! Self-fencing: when this agent has had no contact with NATS for nearly
//! the scheduler's agent timeout, the scheduler is about to declare it lost
//! and run its attempts elsewhere, so the agent stops them first and at
//! most one copy of an attempt runs after the timeout.
//!
//! The scheduler declares an agent lost `timeout` after the last heartbeat
//! it received. The agent measures from when it *sent* the heartbeat whose
//! server round trip came back (never later than the scheduler received it),
//! on its monotonic clock (which keeps counting while the process is
//! stopped), and starts stopping at `FENCE_AT` of the timeout with a kill
//! grace of at most `GRACE_SHARE` of it: the attempts are killed by 7/8 of
//! the timeout, and the last eighth covers the SIGKILL, the agent's check
//! interval and scheduling delays.
//!
//! An `on_agent_lost: wait` attempt gets its `lost_after` on top of the
//! limit, as the scheduler waits that long past its timeout.
//!
//! Pure: the shell feeds contacts and the time in, and stops what comes back.

use std::time::{Duration, Instant};

/// Fraction of the timeout (numerator, denominator) after which the agent
/// starts stopping its attempts.
const FENCE_AT: (u32, u32) = (3, 4);
/// Fraction of the timeout the fenced attempts get between SIGTERM and SIGKILL.
const GRACE_SHARE: u32 = 8;

/// What the agent knows about its contact with NATS.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The scheduler's agent timeout; None until a heartbeat ack said it
    /// (an agent that does not know it never fences).
    timeout: Option<Duration>,
    /// When the latest echo that made a round trip was sent.
    last_contact: Instant,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceDecision {
    /// Contact is recent enough (or the timeout unknown).
    Keep,
    /// Stop the attempts silent past `limit` (plus their own
    /// `on_agent_lost: wait` allowance) with this kill grace; `silent`: how
    /// long there has been no contact. Repeated at every check while it
    /// lasts, so waiting attempts are stopped when their time comes.
    Stop {
        grace: Duration,
        silent: Duration,
        limit: Duration,
    },
}

impl Fence {
    /// A fresh agent: its connection was just made.
    pub fn new(now: Instant) -> Self {
        Fence {
            timeout: None,
            last_contact: now,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The scheduler said its agent timeout (0: unknown, ignored).
    pub fn set_timeout(&mut self, timeout: Duration) {
        if !timeout.is_zero() {
            self.timeout = Some(timeout);
        }
    }

    /// How long without contact before fencing; None while the timeout is unknown.
    pub fn limit(&self) -> Option<Duration> {
        self.timeout.map(|t| t * FENCE_AT.0 / FENCE_AT.1)
    }

    /// The kill grace of fenced attempts: at most `kill_grace`.
    pub fn grace(&self, kill_grace: Duration) -> Duration {
        self.timeout
            .map_or(kill_grace, |t| kill_grace.min(t / GRACE_SHARE))
    }

    /// A round trip to the server came back for a message sent at `sent`.
    /// A gap longer than the limit before it (the process was stopped, or
    /// the network was down between two checks) still fences: the scheduler
    /// may already have given the attempts away.
    pub fn contact(&mut self, sent: Instant, kill_grace: Duration) -> FenceDecision {
        let decision = self.check(sent, kill_grace);
        if sent > self.last_contact {
            self.last_contact = sent;
        }
        decision
    }

    /// Whether to stop the attempts now.
    pub fn check(&mut self, now: Instant, kill_grace: Duration) -> FenceDecision {
        let Some(limit) = self.limit() else {
            return FenceDecision::Keep;
        };
        let silent = now.saturating_duration_since(self.last_contact);
        if silent <= limit {
            return FenceDecision::Keep;
        }
        FenceDecision::Stop {
            grace: self.grace(kill_grace),
            silent,
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn without_a_timeout_nothing_is_fenced() {
        let t0 = Instant::now();
        let mut f = Fence::new(t0);
        assert_eq!(f.check(t0 + secs(3600.0), GRACE), FenceDecision::Keep);
        f.set_timeout(Duration::ZERO);
        assert_eq!(f.timeout(), None);
    }

    #[test]
    fn silence_past_three_quarters_of_the_timeout_fences_while_it_lasts() {
        let t0 = Instant::now();
        let mut f = Fence::new(t0);
        f.set_timeout(secs(4.0));
        assert_eq!(f.limit(), Some(secs(3.0)));
        assert_eq!(f.check(t0 + secs(3.0), GRACE), FenceDecision::Keep);
        assert_eq!(
            f.check(t0 + secs(3.5), GRACE),
            FenceDecision::Stop {
                grace: secs(0.5),
                silent: secs(3.5),
                limit: secs(3.0)
            },
            "grace: an eighth of the timeout, below --kill-grace"
        );
        assert!(matches!(
            f.check(t0 + secs(3.6), GRACE),
            FenceDecision::Stop { .. }
        ));
        // Contact again (after a gap past the limit: still a stop), then
        // only a later silence fences again.
        assert!(matches!(
            f.contact(t0 + secs(4.0), GRACE),
            FenceDecision::Stop { .. }
        ));
        assert_eq!(f.contact(t0 + secs(5.0), GRACE), FenceDecision::Keep);
        assert_eq!(f.check(t0 + secs(6.0), GRACE), FenceDecision::Keep);
        assert!(matches!(
            f.check(t0 + secs(8.5), GRACE),
            FenceDecision::Stop { .. }
        ));
    }

    #[test]
    fn contact_after_a_long_gap_fences_before_it_counts() {
        let t0 = Instant::now();
        let mut f = Fence::new(t0);
        f.set_timeout(secs(10.0));
        assert_eq!(f.contact(t0 + secs(1.0), GRACE), FenceDecision::Keep);
        // Woken from SIGSTOP: the first round trip after 20 s.
        assert_eq!(
            f.contact(t0 + secs(21.0), GRACE),
            FenceDecision::Stop {
                grace: secs(1.25),
                silent: secs(20.0),
                limit: secs(7.5)
            }
        );
        assert_eq!(f.check(t0 + secs(22.0), GRACE), FenceDecision::Keep);
    }

    #[test]
    fn a_short_kill_grace_is_kept() {
        let mut f = Fence::new(Instant::now());
        f.set_timeout(secs(80.0));
        assert_eq!(f.grace(secs(2.0)), secs(2.0));
        assert_eq!(f.grace(GRACE), GRACE);
    }
}
