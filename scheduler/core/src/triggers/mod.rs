//! Triggers: when a registered pipeline runs without a person submitting it.
//!
//! - [`schedule`]: cron expressions in a timezone, and which scheduled times
//!   fire after a downtime (`--catch-up`).
//! - [`objects`]: which new objects under a prefix make the next batch, and
//!   when it fires (`--batch-window`, `--max-per-run`).
//! - [`alerts`]: which Alertmanager notifications fire (one run per group
//!   firing, nothing for repeats and resolutions).
//! - [`concurrency`]: what a firing does while the previous run still runs.
//!
//! The shell records each decision and creates its run in one etcd
//! transaction; these functions only decide.

pub mod alerts;
pub mod objects;
pub mod schedule;

/// Argo's `concurrencyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Concurrency {
    #[default]
    Allow,
    Forbid,
    Replace,
}

/// What one firing does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the run.
    Start,
    /// Record the firing as skipped; no run.
    Skip,
    /// Cancel the previous run, then create the new one.
    Replace,
}

/// The firing's action under `policy`, given whether the trigger's previous
/// run is still active.
pub fn concurrency(policy: Concurrency, previous_active: bool) -> Action {
    match (policy, previous_active) {
        (_, false) | (Concurrency::Allow, true) => Action::Start,
        (Concurrency::Forbid, true) => Action::Skip,
        (Concurrency::Replace, true) => Action::Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_previous_run_changes_what_fires() {
        for policy in [
            Concurrency::Allow,
            Concurrency::Forbid,
            Concurrency::Replace,
        ] {
            assert_eq!(concurrency(policy, false), Action::Start);
        }
        assert_eq!(concurrency(Concurrency::Allow, true), Action::Start);
        assert_eq!(concurrency(Concurrency::Forbid, true), Action::Skip);
        assert_eq!(concurrency(Concurrency::Replace, true), Action::Replace);
    }
}
