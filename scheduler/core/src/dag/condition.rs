//! `when:` conditions. The state machine does not evaluate them: once a
//! conditional task's upstream tasks have succeeded it asks the shell to
//! ([`Effect::Evaluate`]) and stays Pending until the [`Verdict`] comes back.
//! Evaluation depends only on the run's params and stored upstream results,
//! so asking again after a restart gives the same answer.

use super::{Effect, RunDag, Stale, TaskStatus, Verdict};
use crate::Millis;

impl RunDag {
    /// Applies a `when:` verdict to a task waiting for it.
    pub(super) fn decide(
        &mut self,
        task: usize,
        verdict: Verdict,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Stale> {
        if task >= self.tasks.len() || !self.awaits_verdict(task) {
            return Err(Stale(format!(
                "task #{task} is not waiting for its condition"
            )));
        }
        match verdict {
            // The list is read first; the task stays Pending meanwhile.
            Verdict::Run if self.defs[task].for_each => fx.push(Effect::Expand { task }),
            Verdict::Run => {
                self.tasks[task].ready_at = Some(now);
                self.set_status(task, TaskStatus::Ready, "");
                fx.push(Effect::Ready { task });
            }
            Verdict::Skip { reason } => {
                self.tasks[task].decided = true;
                self.set_status(task, TaskStatus::Skipped, reason);
                match self.instance_of.get(task).copied().flatten() {
                    // An instance: done, and its task may be complete now.
                    Some(group) => self.ready_if_upstream_succeeded(group, now, fx),
                    None => self.skip_downstream(task),
                }
            }
            Verdict::Fail { reason } => {
                self.tasks[task].decided = true;
                self.set_status(task, TaskStatus::Failed, reason.clone());
                self.fail(task, &reason, fx);
            }
        }
        Ok(())
    }

    /// A task skipped by its condition: what depends on it is skipped too.
    fn skip_downstream(&mut self, task: usize) {
        let msg = format!("upstream task `{}` was skipped", self.defs[task].name);
        let mut stack = self.dependents[task].clone();
        while let Some(d) = stack.pop() {
            if self.tasks[d].status == TaskStatus::Pending {
                self.set_status(d, TaskStatus::Skipped, msg.clone());
                stack.extend(self.dependents[d].iter().copied());
            }
        }
    }

    /// Whether `task` waits for its condition to be evaluated: Pending,
    /// conditional, free to start, with every upstream task succeeded.
    pub(super) fn awaits_verdict(&self, task: usize) -> bool {
        self.defs[task].conditional && self.pending_and_free(task)
    }
}
