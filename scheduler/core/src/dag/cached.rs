//! A Ready task served from the step cache: it gets an attempt that never
//! ran — no agent, zero length, the source attempt's outputs (the same
//! objects, not copies) — and succeeds like any other, so its downstream
//! reads its outputs the usual way.

use super::{Artifact, Attempt, AttemptSource, AttemptStatus, Effect, RunDag, Stale, TaskStatus};
use crate::Millis;

impl RunDag {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_cached(
        &mut self,
        task: usize,
        key: String,
        from: AttemptSource,
        outputs: Vec<Artifact>,
        image_digest: String,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Stale> {
        if self.tasks.get(task).map(|t| t.status) != Some(TaskStatus::Ready)
            || self.stopping_for(task)
        {
            return Err(Stale(format!("task #{task} is not ready to take a result")));
        }
        let t = &mut self.tasks[task];
        let number = t.attempts.len() as u32 + 1;
        t.attempts.push(Attempt {
            number,
            agent: String::new(),
            status: AttemptStatus::Succeeded,
            ready_at: t.ready_at,
            assigned_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            exit_code: None,
            error: String::new(),
            outputs,
            log_key: String::new(),
            log_empty: true,
            gpus: Vec::new(),
            image_digest,
            cache_key: Some(key),
            cached_from: Some(from),
        });
        self.succeed(task, now, fx);
        Ok(())
    }
}
