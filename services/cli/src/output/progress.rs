//! `drover watch` on a terminal: one live line saying how far along the run
//! is, instead of a line per change (which a 10,000-task run floods).

use drover_api::pb::{self, TaskState};

use super::duration;

/// Task counts by what they are doing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub succeeded: usize,
    pub running: usize,
    /// Pending, Ready or waiting to retry.
    pub waiting: usize,
    pub failed: usize,
    /// Skipped or cancelled.
    pub skipped: usize,
}

impl Progress {
    pub fn of(run: &pb::Run) -> Self {
        let mut p = Progress {
            total: run.tasks.len(),
            ..Progress::default()
        };
        for t in &run.tasks {
            match t.state() {
                TaskState::Succeeded => p.succeeded += 1,
                TaskState::Assigned | TaskState::Running => p.running += 1,
                TaskState::Failed => p.failed += 1,
                TaskState::Skipped | TaskState::Cancelled => p.skipped += 1,
                TaskState::Pending
                | TaskState::Ready
                | TaskState::RetryWait
                | TaskState::Unspecified => p.waiting += 1,
            }
        }
        p
    }

    fn finished(&self) -> usize {
        self.succeeded + self.failed + self.skipped
    }
}

/// Tasks that must have ended before the pace says anything about the rest.
const MIN_HISTORY: usize = 3;

/// `12/40 succeeded · 4 running · 23 waiting · 1 failed · 1m2s elapsed · about 2m left`.
pub fn summary_line(run: &pb::Run, now_ms: u64) -> String {
    let p = Progress::of(run);
    let elapsed = now_ms.saturating_sub(run.created_at_ms);
    let mut line = format!(
        "{}/{} succeeded · {} running · {} waiting",
        p.succeeded, p.total, p.running, p.waiting
    );
    if p.failed > 0 {
        line.push_str(&format!(" · {} failed", p.failed));
    }
    if p.skipped > 0 {
        line.push_str(&format!(" · {} skipped", p.skipped));
    }
    line.push_str(&format!(" · {} elapsed", duration(elapsed)));
    let done = p.finished();
    if done >= MIN_HISTORY && done < p.total && elapsed > 0 {
        // The pace so far, applied to what is left.
        let left = elapsed as u128 * (p.total - done) as u128 / done as u128;
        line.push_str(&format!(" · about {} left", duration(left as u64)));
    }
    line
}

/// Whether a change is worth a line above the live summary: what went wrong
/// or will be tried again.
pub fn notable(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::RetryWait | TaskState::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(states: &[TaskState]) -> pb::Run {
        pb::Run {
            created_at_ms: 1_000,
            tasks: states
                .iter()
                .enumerate()
                .map(|(i, s)| pb::Task {
                    name: format!("t{i}"),
                    state: *s as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_line_counts_tasks_and_estimates_only_with_history() {
        use TaskState::*;
        let early = run(&[Succeeded, Running, Pending, Pending]);
        assert_eq!(
            summary_line(&early, 11_000),
            "1/4 succeeded · 1 running · 2 waiting · 10s elapsed"
        );
        let later = run(&[
            Succeeded, Succeeded, Failed, Skipped, Running, RetryWait, Ready, Pending,
        ]);
        // 4 of 8 ended in 20s: about 20s for the other 4.
        assert_eq!(
            summary_line(&later, 21_000),
            "2/8 succeeded · 1 running · 3 waiting · 1 failed · 1 skipped · 20s elapsed · about 20s left"
        );
    }

    #[test]
    fn failures_and_retries_are_notable() {
        assert!(notable(TaskState::Failed));
        assert!(notable(TaskState::RetryWait));
        assert!(!notable(TaskState::Running));
        assert!(!notable(TaskState::Succeeded));
    }
}
