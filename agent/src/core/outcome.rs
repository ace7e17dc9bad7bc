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
    /// The agent lost contact with NATS for nearly the scheduler's agent
    /// timeout (self-fencing): the attempt is lost, to run elsewhere.
    Fenced { silent: Duration },
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
    /// Stopped by self-fencing: the scheduler counts it lost, not failed.
    pub agent_lost: bool,
}

impl Failure {
    /// A failure of the agent's own work (inputs, outputs, spawning), not of the process.
    pub fn agent(reason: impl Into<String>) -> Self {
        Failure {
            exit_code: None,
            reason: reason.into(),
            cancelled: false,
            agent_lost: false,
        }
    }

    /// The process exited 0, then something the agent did afterwards failed.
    pub fn after_success(reason: impl Into<String>) -> Self {
        Failure {
            exit_code: Some(0),
            reason: reason.into(),
            cancelled: false,
            agent_lost: false,
        }
    }

    /// The agent stopped the attempt before or while it ran.
    pub fn stopped(cause: &StopCause) -> Self {
        let agent_lost = matches!(cause, StopCause::Fenced { .. });
        let (reason, cancelled) = match cause {
            StopCause::Timeout(d) => (format!("timed out after {}", format_duration(*d)), false),
            StopCause::Cancelled => ("cancelled".to_owned(), true),
            StopCause::Shutdown { agent_id } => (
                format!("agent `{agent_id}` shut down while the attempt was running"),
                false,
            ),
            StopCause::Fenced { silent } => (
                format!(
                    "the agent lost contact with NATS for {} and stopped it before the scheduler's agent timeout",
                    format_duration(*silent)
                ),
                false,
            ),
        };
        Failure {
            exit_code: None,
            reason,
            cancelled,
            agent_lost,
        }
    }

    pub fn into_event(self, log_key: String) -> AttemptFailed {
        AttemptFailed {
            exit_code: self.exit_code,
            reason: self.reason,
            log_key,
            cancelled: self.cancelled,
            agent_lost: self.agent_lost,
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
                agent_lost: false,
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
        assert!(!f.cancelled && !f.agent_lost);

        let f = Termination::Stopped(StopCause::Fenced {
            silent: Duration::from_secs(8),
        })
        .failure()
        .ok_or("no failure")?;
        assert!(
            f.reason
                .starts_with("the agent lost contact with NATS for 8s"),
            "{}",
            f.reason
        );
        assert!(f.agent_lost && !f.cancelled);
        assert!(f.into_event(String::new()).agent_lost);
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
