//! `for_each` tasks. Once a `for_each` task's upstream tasks succeeded the
//! shell reads its list ([`Effect::Expand`]) and answers with the item
//! count ([`Event::Expanded`]); the task then becomes a group: its
//! instances `<task>[0]`, `<task>[1]`, … are appended as new tasks (Ready,
//! with the task's dependencies), and the task itself never runs. It
//! succeeds when every instance has, fails when one fails for good, and
//! what depends on it keeps depending on it alone. Zero items: it succeeds
//! at once.
//!
//! Only the item count is run-level state ([`RunState::expansions`]);
//! instances have no record until they have an attempt, and
//! [`RunDag::restore`] appends them again from the counts.

use super::{Effect, RunDag, Stale, TaskDef, TaskRun, TaskStatus};
use crate::Millis;

/// An expanded `for_each` task's instances: `first..first + count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Group {
    pub first: usize,
    pub count: usize,
    /// Instances that have not succeeded (yet).
    pub left: usize,
}

/// Instance `k` of the `for_each` task `def`.
pub(super) fn instance_def(def: &TaskDef, k: usize) -> TaskDef {
    TaskDef {
        name: instance_name(&def.name, k),
        deps: def.deps.clone(),
        retry_limit: def.retry_limit,
        backoff_ms: def.backoff_ms,
        finally: def.finally,
        // The task's own condition was evaluated before it expanded,
        // unless it names `item`: then each instance's is.
        conditional: def.item_condition,
        for_each: false,
        item_condition: false,
    }
}

/// `<task>[<k>]`.
pub fn instance_name(task: &str, k: usize) -> String {
    format!("{task}[{k}]")
}

impl RunDag {
    /// The `for_each` task `task` is an instance of, and its index there.
    pub fn instance_of(&self, task: usize) -> Option<(usize, usize)> {
        let group = (*self.instance_of.get(task)?)?;
        let first = self.groups.get(&group)?.first;
        Some((group, task - first))
    }

    /// The instances of an expanded `for_each` task.
    pub fn instances(&self, task: usize) -> Option<std::ops::Range<usize>> {
        let g = self.groups.get(&task)?;
        Some(g.first..g.first + g.count)
    }

    /// Whether `task` waits for its list: Pending, `for_each`, not yet
    /// expanded, free to start, every upstream task succeeded.
    pub fn awaits_expansion(&self, task: usize) -> bool {
        task < self.tasks.len() && self.defs[task].for_each && self.pending_and_free(task)
    }

    /// The list of `task` has `count` items: its instances become Ready.
    pub(super) fn expand(
        &mut self,
        task: usize,
        count: usize,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Stale> {
        if !self.awaits_expansion(task) {
            return Err(Stale(format!("task #{task} is not waiting for its list")));
        }
        self.run.expansions.push((task, count));
        self.run_dirty = true;
        let first = self.append_instances(task, count);
        if count == 0 {
            self.complete_group(task, now, fx);
            return Ok(());
        }
        self.set_status(task, TaskStatus::Pending, format!("{count} instances"));
        let main = usize::from(!self.defs[task].finally);
        self.unfinished += count;
        self.main_unfinished += main * count;
        for i in first..first + count {
            if self.defs[i].conditional {
                self.tasks[i].status = TaskStatus::Pending;
                fx.push(Effect::Evaluate { task: i });
            } else {
                self.tasks[i].ready_at = Some(now);
                fx.push(Effect::Ready { task: i });
            }
        }
        Ok(())
    }

    /// Appends `count` Ready instances of `task` (a restore then derives
    /// their state) and makes it a group; returns the first one's index.
    pub(super) fn append_instances(&mut self, task: usize, count: usize) -> usize {
        let first = self.defs.len();
        for k in 0..count {
            let def = instance_def(&self.defs[task], k);
            self.defs.push(def);
            self.by_name
                .insert(instance_name(&self.defs[task].name, k), first + k);
            self.dependents.push(vec![task]);
            self.tasks
                .push(TaskRun::derived(TaskStatus::Ready, String::new()));
            self.dirty.push(false);
            self.instance_of.push(Some(task));
        }
        self.groups.insert(
            task,
            Group {
                first,
                count,
                left: count,
            },
        );
        first
    }

    /// Every instance of `task` succeeded (or was skipped by its
    /// condition): so did it.
    pub(super) fn complete_group(&mut self, task: usize, now: Millis, fx: &mut Vec<Effect>) {
        let skipped = self.instances(task).map_or(0, |r| {
            r.filter(|&i| self.tasks[i].status == TaskStatus::Skipped)
                .count()
        });
        let count = self.groups.get(&task).map_or(0, |g| g.count);
        let msg = group_message(count, skipped);
        self.set_status(task, TaskStatus::Succeeded, msg);
        for k in 0..self.dependents[task].len() {
            let d = self.dependents[task][k];
            if self.tasks[d].status == TaskStatus::Pending {
                self.ready_if_upstream_succeeded(d, now, fx);
            }
        }
    }

    /// An instance failed for good: its task fails with it (once). Returns
    /// the task whose downstream is skipped: the group, for an instance.
    pub(super) fn fail_group(&mut self, task: usize, reason: &str) -> usize {
        let Some(group) = self.instance_of.get(task).copied().flatten() else {
            return task;
        };
        if !self.tasks[group].status.is_terminal() {
            let msg = format!("instance `{}` failed: {reason}", self.defs[task].name);
            self.set_status(group, TaskStatus::Failed, msg);
        }
        group
    }

    /// Keeps a group's count of instances not succeeded.
    pub(super) fn count_instance(&mut self, task: usize, succeeded: bool) {
        let Some(group) = self.instance_of.get(task).copied().flatten() else {
            return;
        };
        if let Some(g) = self.groups.get_mut(&group) {
            if succeeded {
                g.left = g.left.saturating_sub(1);
            } else {
                g.left += 1;
            }
        }
    }

    /// Derived state of an expanded group from its instances: Failed if
    /// one failed, Succeeded if all did; None otherwise.
    pub(super) fn derive_group(
        &self,
        task: usize,
        status_of: impl Fn(usize) -> TaskStatus,
    ) -> Option<(TaskStatus, String)> {
        let range = self.instances(task)?;
        let mut all = true;
        let mut skipped = 0;
        for i in range.clone() {
            match status_of(i) {
                TaskStatus::Failed => {
                    let msg = format!("instance `{}` failed", self.defs[i].name);
                    return Some((TaskStatus::Failed, msg));
                }
                TaskStatus::Succeeded => {}
                TaskStatus::Skipped => skipped += 1,
                _ => all = false,
            }
        }
        all.then(|| (TaskStatus::Succeeded, group_message(range.len(), skipped)))
    }
}

/// What a completed group says: how many instances succeeded, and how many
/// their condition skipped.
fn group_message(count: usize, skipped: usize) -> String {
    let succeeded = count - skipped;
    let ran = match (count, succeeded) {
        (0, _) => return "no items".to_owned(),
        (_, 1) => "1 instance succeeded".to_owned(),
        (_, n) => format!("{n} instances succeeded"),
    };
    match skipped {
        0 => ran,
        n => format!("{ran}, {n} skipped by their condition"),
    }
}
