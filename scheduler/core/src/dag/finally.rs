//! `finally` tasks: they wait until every other task has ended, whatever
//! the outcome, and run in a failed or cancelled run too; a second cancel
//! stops them. They depend only on each other (validation sees to it), so
//! the other tasks never wait for them.

use super::{Effect, RunDag, RunStatus, TaskStatus};
use crate::Millis;

/// How a run's other tasks ended, as a `finally` task is told
/// (`DROVER_RUN_STATE`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl RunDag {
    /// Whether no new work may start for `task`: a cancel or a fail-fast
    /// failure stops the other tasks; only a second cancel stops `finally` ones.
    pub(super) fn stopping_for(&self, task: usize) -> bool {
        if self.defs[task].finally {
            self.run.finally_stopped
        } else {
            self.stopping()
        }
    }

    /// Whether what stops `task` is a cancel (its attempts end Cancelled)
    /// rather than a fail-fast failure.
    pub(super) fn stopped_by_cancel(&self, task: usize) -> bool {
        if self.defs[task].finally {
            self.run.finally_stopped
        } else {
            self.run.status != RunStatus::Running
        }
    }

    /// A `finally` task may become Ready only once every other task ended.
    pub(super) fn may_start(&self, task: usize) -> bool {
        !self.defs[task].finally || self.main_unfinished == 0
    }

    /// Once the last other task has ended, the `finally` tasks whose own
    /// upstream tasks succeeded become Ready.
    pub(super) fn start_finally(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        if !std::mem::take(&mut self.finally_due) {
            return;
        }
        for i in 0..self.tasks.len() {
            if self.defs[i].finally && self.tasks[i].status == TaskStatus::Pending {
                self.ready_if_upstream_succeeded(i, now, fx);
            }
        }
    }

    /// How the tasks other than `finally` ones ended (or are ending).
    pub fn outcome(&self) -> Outcome {
        let main_ok = self
            .tasks
            .iter()
            .zip(&self.defs)
            .all(|(t, d)| d.finally || t.status == TaskStatus::Succeeded);
        match self.run.status {
            RunStatus::Cancelling | RunStatus::Cancelled => Outcome::Cancelled,
            _ if main_ok => Outcome::Succeeded,
            _ => Outcome::Failed,
        }
    }
}
