//! Running tasks again: retry timers, and `drover retry` bringing a
//! finished run back.

use super::{Effect, RetryRefusal, RunDag, RunState, TaskStatus};
use crate::Millis;

impl RunDag {
    /// Brings a finished run back to Running (`drover retry`): every task
    /// that did not succeed, every task in `rerun` and everything downstream
    /// of those get new attempts (numbers continue from the last, retries
    /// start over); tasks that succeeded otherwise keep their attempts and
    /// outputs. Returns the tasks brought back and the effects (Ready tasks);
    /// refused when the run is not finished or nothing would run.
    pub fn retry(
        &mut self,
        rerun: &[usize],
        now: Millis,
    ) -> Result<(Vec<usize>, Vec<Effect>), RetryRefusal> {
        if !self.run.status.is_terminal() {
            return Err(RetryRefusal::NotFinished(self.run.status));
        }
        let mut again = vec![false; self.tasks.len()];
        let mut stack: Vec<usize> = rerun.to_vec();
        stack.extend(
            (0..self.tasks.len()).filter(|&i| self.tasks[i].status != TaskStatus::Succeeded),
        );
        if stack.is_empty() {
            return Err(RetryRefusal::AllSucceeded);
        }
        // `finally` tasks run again after the others, whatever they did before.
        stack.extend((0..self.tasks.len()).filter(|&i| self.defs[i].finally));
        while let Some(i) = stack.pop() {
            if !again[i] {
                again[i] = true;
                stack.extend(self.dependents[i].iter().copied());
            }
        }
        let tasks: Vec<usize> = (0..self.tasks.len()).filter(|&i| again[i]).collect();
        // The instances of expanded `for_each` tasks stay.
        let expansions = std::mem::take(&mut self.run.expansions);
        self.run = RunState {
            expansions,
            ..RunState::new()
        };
        self.run_dirty = true;
        self.failed = false;
        for &i in &tasks {
            let t = &mut self.tasks[i];
            t.retries_used = 0;
            t.retry_at = 0;
            t.preempting = None;
            t.decided = false;
            self.set_status(i, TaskStatus::Pending, "");
        }
        let mut fx = Vec::new();
        for &i in &tasks {
            self.ready_if_upstream_succeeded(i, now, &mut fx);
        }
        Ok((tasks, fx))
    }

    /// Retry timers: RetryWait tasks whose time has come become Ready.
    pub fn tick(&mut self, now: Millis) -> Vec<Effect> {
        if self.retry_waiting == 0 {
            return Vec::new();
        }
        let due: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                self.tasks[i].status == TaskStatus::RetryWait
                    && self.tasks[i].retry_at <= now
                    && !self.stopping_for(i)
            })
            .collect();
        due.into_iter()
            .map(|task| {
                // Ready from the moment its backoff ended, however late the tick.
                self.tasks[task].ready_at = Some(self.tasks[task].retry_at);
                self.set_status(task, TaskStatus::Ready, "");
                Effect::Ready { task }
            })
            .collect()
    }
}
