//! `for_each` tasks in the engine. When the DAG asks to expand one
//! ([`Effect::Expand`]), the list's object key (the producer's output) goes
//! out with the turn ([`Turn::lists`]); the loop reads it from the artifact
//! store off the engine's thread and hands the bytes back as
//! [`Input::List`]. Then every item is checked against the task's
//! `{{item…}}` templates, and the DAG appends the instances.
//!
//! The items stay in memory only ([`ActiveRun::items`]): an instance's
//! command and env are rendered when it is assigned. After a restart (or a
//! `drover retry` of a finished run) they are read again the first time an
//! instance is assigned; its assignment waits for them.
//!
//! [`Effect::Expand`]: drover_scheduler_core::dag::Effect::Expand

use std::sync::Arc;

use tracing::{debug, warn};

use drover_api::pb;
use drover_api::spec::substitute_item;
use drover_scheduler_core::dag::{Event, TaskStatus};
use drover_scheduler_core::ids::{AttemptId, RunId};
use drover_scheduler_core::Millis;

use super::state::{ActiveRun, EngineState, Input, Send, Turn};

/// Most items one list may hold.
pub const MAX_ITEMS: usize = 100_000;

/// A `for_each` list to read from the artifact store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRead {
    pub run: RunId,
    /// The `for_each` task.
    pub task: usize,
    /// Where the producer stored its output.
    pub key: String,
    /// `<producer>/<output>`, for messages.
    pub output: String,
    /// Read again for an expansion that happened before (after a restart):
    /// keep trying rather than fail the task.
    pub reload: bool,
}

/// The items of `bytes`, a JSON array; the error names the output.
pub fn parse_list(bytes: &[u8], output: &str) -> Result<Vec<serde_json::Value>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("for_each: output `{output}` is not valid JSON: {e}"))?;
    let serde_json::Value::Array(items) = value else {
        return Err(format!(
            "for_each: output `{output}` holds {}, not a JSON array",
            kind(&value)
        ));
    };
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "for_each: output `{output}` has {} items; at most {MAX_ITEMS} are allowed",
            items.len()
        ));
    }
    Ok(items)
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `{{item}}` as it renders: a string as is, anything else as JSON.
pub fn item_text(item: &serde_json::Value) -> String {
    match item {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Instance `name` of the `for_each` task `spec`, with `item` substituted
/// in its command and env values.
pub fn render(
    spec: &pb::TaskSpec,
    name: &str,
    item: &serde_json::Value,
) -> Result<pb::TaskSpec, String> {
    let mut t = spec.clone();
    let at = |field: &str, e: drover_api::spec::TemplateError| format!("{field}: {e}");
    for arg in &mut t.command {
        *arg = substitute_item(arg, item).map_err(|e| at("command", e))?;
    }
    for (key, value) in &mut t.env {
        *value = substitute_item(value, item).map_err(|e| at(&format!("env.{key}"), e))?;
    }
    t.name = name.to_owned();
    t.matrix_task = spec.name.clone();
    t.matrix = [("item".to_owned(), item_text(item))].into();
    t.for_each = None;
    // Evaluated once, for the task, before it expanded.
    t.when = String::new();
    Ok(t)
}

/// Every item renders, or the message for the first that does not.
fn check_items(spec: &pb::TaskSpec, items: &[serde_json::Value]) -> Result<(), String> {
    for (k, item) in items.iter().enumerate() {
        render(spec, &spec.name, item)
            .map_err(|e| format!("for_each: item {k} (`{}`): {e}", item_text(item)))?;
    }
    Ok(())
}

/// What an instance waits to do until its task's items are in memory.
#[derive(Clone, Debug)]
pub(super) enum Deferred {
    /// Send the assignment of this attempt.
    Assign {
        task: usize,
        attempt: u32,
        agent: String,
    },
    /// Evaluate its condition (one that names `item`).
    Evaluate { task: usize },
}

impl EngineState {
    /// The DAG asks for `task`'s condition: evaluated now, or once its
    /// `for_each` items are back in memory.
    pub(super) fn evaluate(&mut self, run_id: &RunId, task: usize, now: Millis, turn: &mut Turn) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        match super::conditions::verdict(run, task) {
            Some(verdict) => self.apply_to(run_id, Event::Condition { task, verdict }, now, turn),
            None => {
                if let Some((group, _)) = run.dag.instance_of(task) {
                    self.defer(run_id, group, Deferred::Evaluate { task }, turn);
                }
            }
        }
    }

    /// The DAG asks for `task`'s list: read its producer's output.
    pub(super) fn read_list(&mut self, run_id: &RunId, task: usize, now: Millis, turn: &mut Turn) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        match list_source(run, task) {
            Ok((key, output)) => turn.lists.push(ListRead {
                run: run_id.clone(),
                task,
                key,
                output,
                reload: false,
            }),
            Err(reason) => self.apply_to(run_id, Event::ExpandFailed { task, reason }, now, turn),
        }
    }

    /// What came of reading a list.
    pub(super) fn on_list(
        &mut self,
        read: ListRead,
        result: Result<Vec<u8>, String>,
        now: Millis,
        turn: &mut Turn,
    ) {
        let Some(run) = self.runs.get_mut(&read.run) else {
            debug!(run = %read.run, "list for a run that is not active");
            return;
        };
        let items = result.and_then(|bytes| parse_list(&bytes, &read.output));
        if read.reload {
            match items {
                Ok(items) => self.items_loaded(&read.run, read.task, items, now, turn),
                Err(e) => {
                    warn!(run = %read.run, error = %e, "for_each list unreadable after restart")
                }
            }
            return;
        }
        if !run.dag.awaits_expansion(read.task) {
            debug!(run = %read.run, task = read.task, "list no longer awaited");
            return;
        }
        let checked = items.and_then(|items| {
            let spec = run.spec.tasks.get(read.task).ok_or("no such task")?;
            check_items(spec, &items)?;
            Ok(items)
        });
        let items = match checked {
            Ok(items) => items,
            Err(reason) => {
                let ev = Event::ExpandFailed {
                    task: read.task,
                    reason,
                };
                return self.apply_to(&read.run, ev, now, turn);
            }
        };
        let ev = Event::Expanded {
            task: read.task,
            count: items.len(),
        };
        match run.dag.apply(ev, now) {
            Ok(fx) => {
                run.items.insert(read.task, Arc::new(items));
                run.grow();
                self.effects(&read.run, fx, now, turn);
            }
            Err(stale) => debug!(run = %read.run, reason = %stale.0, "stale expansion"),
        }
    }

    /// The items of an earlier expansion are back: send the assignments
    /// and evaluate the conditions that waited for them.
    fn items_loaded(
        &mut self,
        run_id: &RunId,
        task: usize,
        items: Vec<serde_json::Value>,
        now: Millis,
        turn: &mut Turn,
    ) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.items.insert(task, Arc::new(items));
        let waiting = run.waiting_items.remove(&task).unwrap_or_default();
        for deferred in waiting {
            let (instance, attempt, agent) = match deferred {
                Deferred::Evaluate { task } => {
                    self.evaluate(run_id, task, now, turn);
                    continue;
                }
                Deferred::Assign {
                    task,
                    attempt,
                    agent,
                } => (task, attempt, agent),
            };
            let still = self.runs.get(run_id).is_some_and(|run| {
                let live = run.dag.task(instance);
                live.status == TaskStatus::Assigned
                    && live.current().is_some_and(|a| a.number == attempt)
            });
            if still {
                let attempt = AttemptId::new(run_id.clone(), instance, attempt);
                if let Some(send) = self.assign_send(&attempt, &agent) {
                    turn.sends.push(send);
                }
            }
        }
    }

    /// What the DAG asks of an instance whose items are not in memory
    /// (after a restart): it waits for them, and they are read (once).
    pub(super) fn defer(
        &mut self,
        run_id: &RunId,
        group: usize,
        deferred: Deferred,
        turn: &mut Turn,
    ) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let first = !run.waiting_items.contains_key(&group);
        run.waiting_items.entry(group).or_default().push(deferred);
        if !first {
            return;
        }
        match list_source(run, group) {
            Ok((key, output)) => turn.lists.push(ListRead {
                run: run_id.clone(),
                task: group,
                key,
                output,
                reload: true,
            }),
            Err(e) => warn!(run = %run_id, error = %e, "for_each list cannot be read again"),
        }
    }

    /// The agent message for an attempt, if its task can be rendered now.
    pub(super) fn assign_send(&self, attempt: &AttemptId, agent: &str) -> Option<Send> {
        let assignment = Box::new(self.assignment(attempt)?);
        Some(Send::Assign {
            agent: self.fleet.agent_id(agent),
            attempt: attempt.clone(),
            assignment,
            traceparent: self.traceparent(attempt),
        })
    }
}

/// The object key of `task`'s list and `<producer>/<output>`.
fn list_source(run: &ActiveRun, task: usize) -> Result<(String, String), String> {
    let from = run
        .spec
        .tasks
        .get(task)
        .and_then(|t| t.for_each.as_ref())
        .ok_or_else(|| format!("task #{task} has no for_each"))?;
    let output = format!("{}/{}", from.from_task, from.from_output);
    let key = run
        .dag
        .index_of(&from.from_task)
        .and_then(|p| super::state::output(run, p, &from.from_output))
        .map(|o| o.key)
        .ok_or_else(|| format!("for_each: output `{output}` was not stored"))?;
    Ok((key, output))
}

impl Input {
    /// A list read for `read`.
    pub fn list(read: ListRead, result: Result<Vec<u8>, String>) -> Self {
        Self::List { read, result }
    }
}
