//! `when:` conditions, evaluated as soon as the DAG asks: over the run's
//! params, the instance's matrix values and the `result: true` outputs of
//! the task's upstream tasks (all succeeded by then). Only upstream results
//! are visible, so the verdict is the same if it is asked again after a
//! restart.

use drover_api::spec::condition::{self, Inputs};
use drover_scheduler_core::dag::Verdict;

use super::state::ActiveRun;

/// What `task`'s condition says; None for a `for_each` instance whose
/// items are not in memory (after a restart: read again first).
pub(super) fn verdict(run: &ActiveRun, task: usize) -> Option<Verdict> {
    let (spec, item) = match run.spec.tasks.get(task) {
        Some(spec) => (spec, None),
        None => {
            let Some((group, k)) = run.dag.instance_of(task) else {
                return Some(Verdict::Fail {
                    reason: format!("no task #{task}"),
                });
            };
            let item = run.items.get(&group)?.get(k)?;
            (run.spec.tasks.get(group)?, Some(item))
        }
    };
    let expr = spec.when.as_str();
    let mut inputs = Inputs {
        params: run
            .spec
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        matrix: spec
            .matrix
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        item,
        ..Inputs::default()
    };
    let defs = run.dag.defs();
    let mut seen = vec![false; defs.len()];
    let mut stack = defs[task].deps.clone();
    while let Some(up) = stack.pop() {
        if std::mem::replace(&mut seen[up], true) {
            continue;
        }
        stack.extend(&defs[up].deps);
        let Some(attempt) = run.dag.task(up).current() else {
            continue;
        };
        for output in &attempt.outputs {
            if let Some(bytes) = &output.result {
                inputs
                    .results
                    .entry(defs[up].name.as_str())
                    .or_default()
                    .insert(output.name.as_str(), bytes.as_slice());
            }
        }
    }
    Some(match condition::evaluate(expr, &inputs) {
        Ok(true) => Verdict::Run,
        Ok(false) => Verdict::Skip {
            reason: format!("when: {expr} was false"),
        },
        Err(e) => Verdict::Fail {
            reason: format!("when: {expr}: {e}"),
        },
    })
}
