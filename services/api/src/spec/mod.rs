//! The YAML pipeline spec: parsing, validation, and resolution into the
//! `pb::PipelineSpec` that everything downstream consumes.
//!
//! ```yaml
//! name: train-digits
//! queue: train               # default: the `default` queue
//! priority: 10               # order inside the queue, higher first; default 0
//! params: {lr: "0.1"}
//! fail_fast: true            # default true
//! tasks:
//!   - name: prepare
//!     command: ["python3", "prepare.py"]
//!     outputs: [{name: dataset, path: dataset.csv}]
//!   - name: train
//!     depends_on: [prepare]
//!     command: ["python3", "train.py", "--lr", "{{params.lr}}"]
//!     inputs: [{name: dataset, from: prepare/dataset}]
//!     env: {SEED: "1"}
//!     resources: {cpu: 2, memory: 4Gi, gpu: 1, gpu_model: A100, gpu_memory: 40Gi}
//!     retries: {limit: 2, backoff: 5s}
//!     timeout: 1h
//!     image: python:3.12-slim
//!     pull_policy: IfNotPresent  # or Always, Never; needs an image
//!     node_selector: {zone: eu}  # only agents with all these labels
//!     on_agent_lost: wait        # or requeue (default): see below
//!     lost_after: 30m            # with wait: how long (default 10m)
//! ```
//!
//! `on_agent_lost` says what happens when the task's agent loses contact:
//! `requeue` (default) — the agent stops the attempt before the scheduler's
//! agent timeout and it runs again elsewhere; `wait` — the attempt keeps
//! running there and the scheduler waits up to `lost_after` for the agent
//! to come back before running it elsewhere.
//!
//! A task with `matrix:` (named lists of values) runs once per combination,
//! each instance named `<task>[<k>=<v>,…]` and seeing its values as
//! `{{matrix.<name>}}`; `max_parallel: N` caps how many run at once, and a
//! task that depends on it waits for every instance:
//!
//! ```yaml
//!   - name: train
//!     matrix: {lr: ["0.001", "0.03"], epochs: ["10", "30"]}
//!     max_parallel: 2
//!     command: [python3, train.py, --lr, "{{matrix.lr}}", --epochs, "{{matrix.epochs}}"]
//! ```
//!
//! A task with `for_each: {from: <task>/<output>}` runs once per element of
//! the JSON array that upstream output holds, known only at run time: here
//! the reference is checked and `{{item}}` / `{{item.<field>}}` in command
//! and env values are kept as written, for the scheduler to substitute per
//! instance (`substitute_item`):
//!
//! ```yaml
//!   - name: process
//!     depends_on: [list]
//!     for_each: {from: list/shards}
//!     command: [python3, process.py, "{{item}}"]
//! ```
//!
//! `code: <dir>` (relative to the spec file) is packed by `drover submit`
//! into a snapshot every task gets read-only at `$DROVER_CODE`, which is also
//! its working directory; a task's `workdir: <path>` is relative to the
//! snapshot. The parser keeps the path as written: only the CLI, which has
//! the directory, resolves it.
//!
//! `gpu_model` (a case-insensitive substring of the GPU's name) and
//! `gpu_memory` (the least memory each GPU must have) need at least one
//! `gpu`. `gpu_model` and node selector values, like env values, may use
//! `{{params.x}}`.
//!
//! Layout: `yaml` reads the text into a tree, `raw` is the serde side,
//! `validate` turns it into the proto, `quantity` and `template` are the
//! small languages inside values.

mod code;
pub mod condition;
mod for_each;
mod matrix;
mod quantity;
mod raw;
mod schema;
mod template;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use quantity::{parse_cpu, parse_duration, parse_memory};
pub use schema::json_schema;
pub use template::{has_item_template, substitute_item, TemplateError};
/// The label rules agents and node selectors share.
pub use validate::{is_label_key, is_label_value};
/// The queue and priority rules the spec, the scheduler and the CLI share.
pub use validate::{is_queue_name, parse_priority};

/// The highest run (and queue) priority; the lowest is 0.
pub const MAX_PRIORITY: i64 = 1_000_000;

/// `lost_after:` when not written.
pub const DEFAULT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl crate::pb::TaskSpec {
    /// With `on_agent_lost: wait`, how long its attempt may stay on a lost
    /// agent (scheduler) and run on while cut off (agent) beyond the agent
    /// timeout; None: requeued at once.
    pub fn wait_when_lost(&self) -> Option<std::time::Duration> {
        (self.on_agent_lost() == crate::pb::OnAgentLost::Wait).then(|| match self.lost_after_ms {
            0 => DEFAULT_LOST_AFTER,
            ms => std::time::Duration::from_millis(ms),
        })
    }
}

/// What queue names may look like (as Kubernetes names: they end up in etcd
/// keys and metrics labels).
pub const QUEUE_NAME_RULE: &str = "use lowercase letters, digits and `-`";

/// What pipeline, task, input and output names may look like: they end up in
/// etcd keys, NATS subjects and object-store keys.
const NAME_RULE: &str =
    "use up to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit";

/// What `node_selector` keys may look like (agent label keys).
const LABEL_KEY_RULE: &str =
    "use up to 63 letters, digits, `_`, `.`, `/` or `-`, starting with a letter or digit";

/// What `node_selector` values may look like (agent label values).
const LABEL_VALUE_RULE: &str = "use up to 63 letters, digits, `_`, `.` or `-`";

/// Parses YAML, validates everything, merges `overrides` over the declared
/// params and substitutes `{{params.x}}` in every command element, env value,
/// image, `resources.gpu_model` and node selector value. Returns the resolved spec; its `params` are the merged values.
///
/// Stops at the first problem, checking in spec order.
pub fn parse_spec(
    yaml: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<crate::pb::PipelineSpec, SpecError> {
    let raw = raw::decode(yaml)?;
    validate::resolve(raw, overrides)
}

/// Why a spec was rejected. `Display` is the message shown to the user.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// Not YAML, or YAML with a duplicate key.
    #[error("invalid yaml: {0}")]
    Yaml(String),
    /// Valid YAML of the wrong shape: unknown field, wrong type. `at` is
    /// where ("task `train`: resources"), empty at the top level.
    #[error("{}{message}", if at.is_empty() { String::new() } else { format!("{at}: ") })]
    Schema { at: String, message: String },
    #[error("spec: missing `name`")]
    MissingName,
    #[error("spec has no tasks")]
    NoTasks,
    /// `code:` given but unusable; the message says why.
    #[error("code: {0}")]
    InvalidCode(String),
    #[error("queue: invalid queue name `{0}` ({QUEUE_NAME_RULE})")]
    InvalidQueueName(String),
    /// The message comes from [`parse_priority`].
    #[error("priority: {0}")]
    InvalidPriority(String),
    /// `kind` is "pipeline" or "task".
    #[error("invalid {kind} name `{name}` ({NAME_RULE})")]
    InvalidName { kind: &'static str, name: String },
    #[error(
        "invalid param name `{0}` (use letters, digits, `_` or `-`, starting with a letter or `_`)"
    )]
    InvalidParamName(String),
    #[error("param `{name}`: {message}")]
    InvalidParam { name: String, message: String },
    #[error("param `{0}` is not declared in the spec's params")]
    UndeclaredParam(String),
    /// `index` counts from 1.
    #[error("task #{0}: missing `name`")]
    MissingTaskName(usize),
    /// `index` counts from 1, in the `finally` list.
    #[error("finally task #{0}: missing `name`")]
    MissingFinallyTaskName(usize),
    #[error("duplicate task name `{0}`")]
    DuplicateTask(String),
    /// Each task depends on the next; the last repeats the first.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("task `{task}`: {error}")]
    Task { task: String, error: TaskError },
}

/// A problem inside one task; wrapped in [`SpecError::Task`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// `at` is e.g. "input #1", "output `model`", "retries".
    #[error("{at}: missing `{field}`")]
    Missing { at: String, field: &'static str },
    /// `kind` is "input" or "output".
    #[error("invalid {kind} name `{name}` ({NAME_RULE})")]
    InvalidName { kind: &'static str, name: String },
    #[error("depends_on: unknown task `{0}`")]
    UnknownDependency(String),
    #[error("depends_on: a task cannot depend on itself")]
    SelfDependency,
    #[error("depends_on: `{0}` is listed twice")]
    DuplicateDependency(String),
    #[error("depends_on: `{0}` is a `finally` task, which runs after every other task")]
    DependsOnFinally(String),
    #[error("depends_on: `{0}` is not a `finally` task (`finally` tasks run after every other task and depend only on each other)")]
    FinallyDependsOnOther(String),
    #[error("command is empty")]
    EmptyCommand,
    #[error("input `{0}` declared twice")]
    DuplicateInput(String),
    #[error("input `{input}`: `from` must be `task/output`, got `{from}`")]
    InvalidFrom { input: String, from: String },
    #[error("input `{input}` comes from the task itself")]
    InputFromSelf { input: String },
    #[error("input `{input}`: give one of `from` (an upstream output) and `param` (a param's value), not both")]
    InputFromAndParam { input: String },
    #[error("input `{input}` comes from unknown param `{param}` (declare it under `params`)")]
    InputFromUnknownParam { input: String, param: String },
    #[error("input `{input}` comes from unknown task `{from_task}`")]
    InputFromUnknownTask { input: String, from_task: String },
    #[error("input `{input}` comes from `{from_task}`, which has no output `{from_output}`")]
    InputFromUnknownOutput {
        input: String,
        from_task: String,
        from_output: String,
    },
    #[error("input `{input}` comes from `{from_task}`, which is not upstream of `{task}` (add it to depends_on)")]
    InputNotUpstream {
        input: String,
        from_task: String,
        task: String,
    },
    #[error("output `{0}` declared twice")]
    DuplicateOutput(String),
    #[error("output `{output}`: path `{path}` is already used by output `{other}`")]
    DuplicateOutputPath {
        output: String,
        path: String,
        other: String,
    },
    #[error(
        "output `{output}`: invalid path `{path}` (use a non-empty relative path without `..`)"
    )]
    InvalidOutputPath { output: String, path: String },
    #[error(
        "env: invalid variable name `{0}` (use letters, digits and `_`, not starting with a digit)"
    )]
    InvalidEnvName(String),
    #[error("env: `{0}` is reserved (drover sets it for every task)")]
    ReservedEnvName(String),
    /// A value that does not parse or is out of range; `field` is e.g.
    /// "resources.memory", `message` comes from the value's parser.
    #[error("{field}: {message}")]
    InvalidValue { field: String, message: String },
    #[error("{field}: {error}")]
    Template { field: String, error: TemplateError },
    /// A field that only makes sense with another: `field` is e.g.
    /// "pull_policy", `needs` e.g. "an image".
    #[error("{field}: needs {needs}")]
    Needs {
        field: &'static str,
        needs: &'static str,
    },
    #[error("node_selector: invalid label key `{0}` ({LABEL_KEY_RULE})")]
    InvalidLabelKey(String),
    /// `value` is after `{{params.x}}` substitution; `template` is the value
    /// as written when it differs.
    #[error(
        "node_selector.{key}: invalid label value `{value}`{} ({LABEL_VALUE_RULE})",
        template.as_ref().map(|t| format!(" from `{t}`")).unwrap_or_default()
    )]
    InvalidLabelValue {
        key: String,
        value: String,
        template: Option<String>,
    },
}
