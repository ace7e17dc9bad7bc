//! Rebuilding a run's state machine from what etcd holds, and deriving the
//! state of tasks that never had an attempt.

use super::{Effect, RunDag, RunState, RunStatus, TaskDef, TaskRun, TaskStatus};

impl RunDag {
    /// Rebuild from stored state. `records[i]` is task `i`'s stored state, if
    /// it has one. Returns the effects to resume with: Ready tasks for
    /// placement, and the assignments and cancels that may not have reached
    /// their agent before a restart (agents treat repeats as no-ops).
    /// `defs` are the static tasks; the instances of the `for_each` tasks in
    /// `run.expansions` are appended after them, and `records` covers both.
    pub fn restore(
        defs: Vec<TaskDef>,
        fail_fast: bool,
        run: RunState,
        records: Vec<Option<TaskRun>>,
    ) -> (Self, Vec<Effect>) {
        let statics = defs.len();
        let mut dependents = vec![Vec::new(); statics];
        for (i, def) in defs.iter().enumerate() {
            for &d in &def.deps {
                dependents[d].push(i);
            }
        }
        let by_name = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        let expansions = run.expansions.clone();
        let failed = records
            .iter()
            .flatten()
            .any(|r| r.status == TaskStatus::Failed);
        let mut dag = Self {
            defs,
            by_name,
            dependents,
            tasks: Vec::with_capacity(statics),
            run,
            fail_fast,
            failed,
            unfinished: 0,
            main_unfinished: 0,
            finally_due: false,
            retry_waiting: 0,
            dirty: vec![false; statics],
            dirty_list: Vec::new(),
            run_dirty: false,
            instance_of: vec![None; statics],
            groups: Default::default(),
        };
        for (task, count) in expansions {
            if task < statics && dag.defs[task].for_each && !dag.groups.contains_key(&task) {
                dag.append_instances(task, count);
            }
        }
        let n = dag.defs.len();
        let mut order = dag.topo_order();
        // The other tasks first: whether a `finally` task may start depends
        // on whether they all ended (and none of them depends on it).
        order.sort_by_key(|&i| dag.defs[i].finally);
        let mut slots: Vec<Option<TaskRun>> = records;
        slots.resize(n, None);
        let mut resolved: Vec<Option<TaskRun>> = vec![None; n];
        for &i in &order {
            let group = dag.derive_group(i, |d| {
                resolved[d]
                    .as_ref()
                    .map_or(TaskStatus::Pending, |t| t.status)
            });
            let task = match slots[i].take() {
                // Pending is derived even when stored (a retried task keeps
                // its earlier attempts): its upstream tasks may have moved
                // on in a commit that this task's record missed.
                Some(stored) if stored.status != TaskStatus::Pending => stored,
                stored => {
                    let (status, message) = group.unwrap_or_else(|| {
                        dag.derive(i, |d| {
                            resolved[d]
                                .as_ref()
                                .map_or(TaskStatus::Pending, |t| t.status)
                        })
                    });
                    let mut t = match stored {
                        Some(mut kept) => {
                            kept.status = status;
                            kept.message = message;
                            kept
                        }
                        None => TaskRun::derived(status, message),
                    };
                    if status == TaskStatus::Ready {
                        // Ready since its last upstream task finished.
                        t.ready_at = dag.defs[i]
                            .deps
                            .iter()
                            .filter_map(|&d| resolved[d].as_ref()?.current()?.finished_at)
                            .max();
                    }
                    t
                }
            };
            if !dag.defs[i].finally && !task.status.is_terminal() {
                dag.main_unfinished += 1;
            }
            resolved[i] = Some(task);
        }
        dag.tasks = resolved
            .into_iter()
            .map(|t| t.unwrap_or_else(|| TaskRun::derived(TaskStatus::Pending, String::new())))
            .collect();
        dag.unfinished = dag.tasks.iter().filter(|t| !t.status.is_terminal()).count();
        dag.retry_waiting = dag
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::RetryWait)
            .count();
        let tasks = &dag.tasks;
        for g in dag.groups.values_mut() {
            g.left = (g.first..g.first + g.count)
                .filter(|&i| {
                    !matches!(tasks[i].status, TaskStatus::Succeeded | TaskStatus::Skipped)
                })
                .count();
        }

        let mut effects = Vec::new();
        for (i, t) in dag.tasks.iter().enumerate() {
            if dag.awaits_verdict(i) {
                effects.push(Effect::Evaluate { task: i });
                continue;
            }
            if dag.awaits_expansion(i) {
                effects.push(Effect::Expand { task: i });
                continue;
            }
            let Some(a) = t.current() else {
                if t.status == TaskStatus::Ready {
                    effects.push(Effect::Ready { task: i });
                }
                continue;
            };
            match (t.status, dag.run.status) {
                (TaskStatus::Ready, _) => effects.push(Effect::Ready { task: i }),
                (s, _) if s.is_active() && t.preempting.is_some() => effects.push(Effect::Cancel {
                    task: i,
                    attempt: a.number,
                    agent: a.agent.clone(),
                }),
                (s, RunStatus::Cancelling) if s.is_active() && dag.stopped_by_cancel(i) => effects
                    .push(Effect::Cancel {
                        task: i,
                        attempt: a.number,
                        agent: a.agent.clone(),
                    }),
                (TaskStatus::Assigned, _) => effects.push(Effect::Assign {
                    task: i,
                    attempt: a.number,
                    agent: a.agent.clone(),
                }),
                _ => {}
            }
        }
        if dag.unfinished == 0 && !dag.run.status.is_terminal() {
            // Crashed after the last task's commit but before the run's.
            // It ended when its last task did.
            let last = dag
                .tasks
                .iter()
                .filter_map(|t| t.current()?.finished_at)
                .max();
            let at = dag.run.finished_at.or(last).unwrap_or_default();
            effects.push(dag.finish(at));
        }
        (dag, effects)
    }

    /// State of a task that never had an attempt, from its upstream tasks.
    fn derive(&self, i: usize, status_of: impl Fn(usize) -> TaskStatus) -> (TaskStatus, String) {
        let mut all_done = true;
        for &d in &self.defs[i].deps {
            match status_of(d) {
                TaskStatus::Failed => {
                    return (
                        TaskStatus::Skipped,
                        format!("upstream task `{}` did not succeed", self.defs[d].name),
                    )
                }
                TaskStatus::Skipped => {
                    return (
                        TaskStatus::Skipped,
                        format!("upstream task `{}` was skipped", self.defs[d].name),
                    )
                }
                TaskStatus::Cancelled => {
                    return (
                        TaskStatus::Cancelled,
                        format!("upstream task `{}` was cancelled", self.defs[d].name),
                    )
                }
                TaskStatus::Succeeded => {}
                _ => all_done = false,
            }
        }
        if self.defs[i].finally {
            // Not stopped by a first cancel or a failure: only waits for the rest.
            return if self.run.finally_stopped {
                (TaskStatus::Cancelled, "run cancelled twice".into())
            } else if all_done
                && self.main_unfinished == 0
                && !self.run.status.is_terminal()
                && !self.defs[i].conditional
                && !self.defs[i].for_each
            {
                (TaskStatus::Ready, String::new())
            } else {
                (TaskStatus::Pending, String::new())
            };
        }
        match self.run.status {
            RunStatus::Cancelling | RunStatus::Cancelled => {
                (TaskStatus::Cancelled, "run cancelled".into())
            }
            _ if self.failed && self.fail_fast => (TaskStatus::Skipped, "run failed fast".into()),
            // A condition is evaluated first (`Effect::Evaluate`).
            // A `for_each` task is expanded first (`Effect::Expand`).
            RunStatus::Running
                if all_done && !self.defs[i].conditional && !self.defs[i].for_each =>
            {
                (TaskStatus::Ready, String::new())
            }
            _ => (TaskStatus::Pending, String::new()),
        }
    }

    /// Kahn's order over the static tasks, each group's instances just
    /// before it (their dependencies are the group's); tasks on a cycle
    /// (validation rejects those) come last.
    fn topo_order(&self) -> Vec<usize> {
        let n = self.defs.len();
        let mut indegree: Vec<usize> = self.defs.iter().map(|d| d.deps.len()).collect();
        let is_static = |i: usize| self.instance_of[i].is_none();
        let mut queue: Vec<usize> = (0..n)
            .filter(|&i| indegree[i] == 0 && is_static(i))
            .collect();
        let mut order = Vec::with_capacity(n);
        let mut head = 0;
        while head < queue.len() {
            let i = queue[head];
            head += 1;
            order.extend(self.instances(i).into_iter().flatten());
            order.push(i);
            for &j in &self.dependents[i] {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    queue.push(j);
                }
            }
        }
        if order.len() < n {
            let mut seen = vec![false; n];
            order.iter().for_each(|&i| seen[i] = true);
            order.extend((0..n).filter(|&i| !seen[i]));
        }
        order
    }
}
