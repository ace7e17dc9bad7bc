//! How an attempt ended, and the failure the scheduler is told about.

use std::time::Duration;

use drover_api::pb::AttemptFailed;

use drover_api::duration::format as format_duration;

/// Why the agent stopped a running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// `timeout_ms` passed.
    Timeout(Duration),
    /// The scheduler sent `CancelAttempt`.
    Cancelled,
    /// The agent itself is shutting down.
    Shutdown { agent_id: String },
}

/// How the task's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// It exited on its own with this code.
    Exited(i32),
    /// It was killed by a signal nobody on the agent sent.
    Signalled(i32),
    /// The agent stopped it.
    Stopped(StopCause),
}

/// A failed attempt, as reported in `AttemptFailed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit_code: Option<i32>,
    pub reason: String,
    pub cancelled: bool,
}

impl Failure {
    /// A failure of the agent's own work (inputs, outputs, spawning), not of the process.
    pub fn agent(reason: impl Into<String>) -> Self {
        Failure {
            exit_code: None,
            reason: reason.into(),
            cancelled: false,
        }
    }

    /// The process exited 0, then something the agent did afterwards failed.
    pub fn after_success(reason: impl Into<String>) -> Self {
        Failure {
            exit_code: Some(0),
            reason: reason.into(),
            cancelled: false,
        }
    }

    /// The agent stopped the attempt before or while it ran.
    pub fn stopped(cause: &StopCause) -> Self {
        let (reason, cancelled) = match cause {
            StopCause::Timeout(d) => (format!("timed out after {}", format_duration(*d)), false),
            StopCause::Cancelled => ("cancelled".to_owned(), true),
            StopCause::Shutdown { agent_id } => (
                format!("agent `{agent_id}` shut down while the attempt was running"),
                false,
            ),
        };
        Failure {
            exit_code: None,
            reason,
            cancelled,
        }
    }

    pub fn into_event(self, log_key: String) -> AttemptFailed {
        AttemptFailed {
            exit_code: self.exit_code,
            reason: self.reason,
            log_key,
            cancelled: self.cancelled,
        }
    }
}

impl Termination {
    /// `None` when the process succeeded (exit 0); otherwise what failed.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Termination::Exited(0) => None,
            Termination::Exited(code) => Some(Failure {
                exit_code: Some(*code),
                reason: format!("exited with code {code}"),
                cancelled: false,
            }),
            Termination::Signalled(sig) => Some(Failure::agent(format!("killed by signal {sig}"))),
            Termination::Stopped(cause) => Some(Failure::stopped(cause)),
        }
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn exit_zero_is_success() {
        assert_eq!(Termination::Exited(0).failure(), None);
    }

    #[test]
    fn reasons_say_what_happened() -> TestResult {
        let f = Termination::Exited(3).failure().ok_or("no failure")?;
        assert_eq!(
            (f.exit_code, f.reason.as_str()),
            (Some(3), "exited with code 3")
        );

        let f = Termination::Signalled(9).failure().ok_or("no failure")?;
        assert_eq!(
            (f.exit_code, f.reason.as_str()),
            (None, "killed by signal 9")
        );

        let f = Termination::Stopped(StopCause::Timeout(Duration::from_secs(2)))
            .failure()
            .ok_or("no failure")?;
        assert_eq!(f.reason, "timed out after 2s");
        assert!(!f.cancelled && f.exit_code.is_none());

        let f = Termination::Stopped(StopCause::Cancelled)
            .failure()
            .ok_or("no failure")?;
        assert_eq!((f.reason.as_str(), f.cancelled), ("cancelled", true));

        let f = Termination::Stopped(StopCause::Shutdown {
            agent_id: "a1".into(),
        })
        .failure()
        .ok_or("no failure")?;
        assert_eq!(
            f.reason,
            "agent `a1` shut down while the attempt was running"
        );
        assert!(!f.cancelled);
        Ok(())
    }

    #[test]
    fn event_carries_the_log_key() {
        let ev = Failure::after_success("declared output `m` not found at outputs/m")
            .into_event("runs/r/t.1.log".into());
        assert_eq!(ev.exit_code, Some(0));
        assert_eq!(ev.log_key, "runs/r/t.1.log");
    }
}
