//! From the raw YAML structs to a validated, resolved `pb::PipelineSpec`.
//!
//! Checks run in spec order and stop at the first problem: the pipeline's
//! name, queue, priority and params, every task's name, then each task's fields in turn, then
//! the graph (cycles, then whether every input's producer is upstream).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::code;
use super::condition;
use super::for_each;
use super::matrix::Matrix;
use super::quantity::{parse_count, parse_cpu, parse_duration, parse_memory};
use super::raw::{RawCache, RawInput, RawOutput, RawResources, RawRetries, RawSpec, RawTask};
use super::template::{is_param_name, substitute, Scope};
use super::{SpecError, TaskError, MAX_PRIORITY};
use crate::pb;

/// Backoff when `retries` is given without one.
const DEFAULT_BACKOFF_MS: u64 = 10_000;
/// Most retries a task may ask for.
const MAX_RETRY_LIMIT: u32 = 100;
/// Env var prefix the agent reserves for itself (`DROVER_RUN_ID`, ...).
const RESERVED_ENV_PREFIX: &str = "DROVER_";
/// Variables the agent sets for trace propagation and GPU assignment; a spec
/// overriding them would break tracing or hand a task GPUs it was not given.
const RESERVED_ENV_NAMES: &[&str] = &[
    "TRACEPARENT",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
];

pub(crate) fn resolve(
    raw: RawSpec,
    overrides: &BTreeMap<String, String>,
) -> Result<pb::PipelineSpec, SpecError> {
    let name = raw
        .name
        .filter(|n| !n.is_empty())
        .ok_or(SpecError::MissingName)?;
    if !is_name(&name) {
        return Err(SpecError::InvalidName {
            kind: "pipeline",
            name,
        });
    }
    let queue = raw.queue.unwrap_or_default();
    if !queue.is_empty() && !is_queue_name(&queue) {
        return Err(SpecError::InvalidQueueName(queue));
    }
    let priority = match raw.priority.as_deref() {
        None => 0,
        Some(text) => parse_priority(text).map_err(SpecError::InvalidPriority)?,
    };
    let params = resolve_params(raw.params.unwrap_or_default(), overrides)?;
    let code = code::resolve_code(raw.code)?;
    let tasks = raw.tasks.unwrap_or_default();
    if tasks.is_empty() {
        return Err(SpecError::NoTasks);
    }
    // `finally` tasks follow the others, as one list: task `i` is one of
    // them when `i >= main`.
    let main = tasks.len();
    let tasks: Vec<RawTask> = tasks
        .into_iter()
        .chain(raw.finally.unwrap_or_default())
        .collect();
    let names = task_names(&tasks, main)?;
    let graph = Graph {
        index: names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect(),
        outputs: tasks
            .iter()
            .zip(&names)
            .map(|(task, name)| {
                let outputs = task
                    .outputs
                    .iter()
                    .flatten()
                    .filter_map(|o| o.name.as_deref())
                    .collect();
                (name.as_str(), outputs)
            })
            .collect(),
    };
    // Each task as written resolves to its instances (one without a matrix).
    let expanded = tasks
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (task, name))| {
            let mut instances =
                resolve_instances(task, name, &graph, &params).map_err(|error| {
                    SpecError::Task {
                        task: name.clone(),
                        error,
                    }
                })?;
            for instance in &mut instances {
                instance.finally = i >= main;
            }
            Ok(instances)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Instances share their dependencies and inputs: the graph is checked
    // on the tasks as written, through each one's first instance.
    let specs: Vec<&pb::TaskSpec> = expanded.iter().filter_map(|i| i.first()).collect();

    // Every dependency was checked to exist, so the lookups all succeed.
    let deps: Vec<Vec<usize>> = specs
        .iter()
        .map(|t| {
            t.depends_on
                .iter()
                .filter_map(|d| graph.index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    check_finally_deps(&deps, &names, main)?;
    if let Some(cycle) = find_cycle(&deps) {
        return Err(SpecError::Cycle(
            cycle.into_iter().map(|i| names[i].clone()).collect(),
        ));
    }
    check_upstream(&specs, &names, &graph, &deps, main)?;
    for_each::check_producers(&specs, &names, &deps, main)?;
    code::check_workdirs(&code, &specs, &names)?;

    Ok(pb::PipelineSpec {
        name,
        params: params.into_iter().collect(),
        fail_fast: raw.fail_fast.unwrap_or(true),
        tasks: depend_on_instances(expanded),
        queue,
        priority,
        code,
        code_sha256: String::new(),
    })
}

/// What a task may refer to in other tasks.
pub(super) struct Graph<'a> {
    pub index: HashMap<&'a str, usize>,
    /// Declared output names per task, as written.
    pub outputs: HashMap<&'a str, HashSet<&'a str>>,
}

/// A task's instances: itself without a matrix, one per combination with.
fn resolve_instances(
    raw: &RawTask,
    name: &str,
    graph: &Graph<'_>,
    params: &BTreeMap<String, String>,
) -> Result<Vec<pb::TaskSpec>, TaskError> {
    let max_parallel = match &raw.max_parallel {
        None => 0,
        Some(text) => positive("max_parallel", text, parse_count(text))?,
    };
    if let Some(raw_for_each) = &raw.for_each {
        let from = for_each::resolve(raw_for_each, raw.matrix.is_some(), name, graph)?;
        let scope = Scope {
            params,
            matrix: None,
            for_each: true,
        };
        let mut spec = resolve_task(raw, name, graph, scope)?;
        for_each::check_templates(&spec)?;
        spec.for_each = Some(from);
        spec.max_parallel = max_parallel;
        return Ok(vec![spec]);
    }
    let Some(matrix) = &raw.matrix else {
        if max_parallel > 0 {
            return Err(TaskError::Needs {
                field: "max_parallel",
                needs: "a matrix or for_each",
            });
        }
        let scope = Scope {
            params,
            matrix: None,
            for_each: false,
        };
        return Ok(vec![resolve_task(raw, name, graph, scope)?]);
    };
    let matrix = Matrix::parse(matrix)?;
    matrix
        .instances()
        .into_iter()
        .map(|instance| {
            let scope = Scope {
                params,
                matrix: Some(&instance.values),
                for_each: false,
            };
            let mut spec = resolve_task(raw, name, graph, scope)?;
            spec.name = format!("{name}{}", instance.suffix);
            spec.matrix_task = name.to_owned();
            spec.matrix = instance.values.into_iter().collect();
            spec.max_parallel = max_parallel;
            Ok(spec)
        })
        .collect()
}

/// The final task list: a dependency on a task with a matrix becomes one
/// on each of its instances.
fn depend_on_instances(expanded: Vec<Vec<pb::TaskSpec>>) -> Vec<pb::TaskSpec> {
    let instances: HashMap<String, Vec<String>> = expanded
        .iter()
        .filter_map(|group| {
            let task = &group.first()?.matrix_task;
            (!task.is_empty())
                .then(|| (task.clone(), group.iter().map(|t| t.name.clone()).collect()))
        })
        .collect();
    let mut tasks: Vec<pb::TaskSpec> = expanded.into_iter().flatten().collect();
    if instances.is_empty() {
        return tasks;
    }
    for task in &mut tasks {
        if task.depends_on.iter().any(|d| instances.contains_key(d)) {
            task.depends_on = task
                .depends_on
                .iter()
                .flat_map(|d| instances.get(d).cloned().unwrap_or_else(|| vec![d.clone()]))
                .collect();
        }
    }
    tasks
}

/// Declared defaults as strings, then `overrides` on top.
fn resolve_params(
    declared: BTreeMap<String, Option<String>>,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut params = BTreeMap::new();
    for (name, value) in declared {
        if !is_param_name(&name) {
            return Err(SpecError::InvalidParamName(name));
        }
        let Some(value) = value else {
            return Err(SpecError::InvalidParam {
                name,
                message: "missing value".to_owned(),
            });
        };
        params.insert(name, value);
    }
    for (name, value) in overrides {
        let Some(slot) = params.get_mut(name) else {
            return Err(SpecError::UndeclaredParam(name.clone()));
        };
        slot.clone_from(value);
    }
    Ok(params)
}

/// Every task's name, checked for presence, shape and uniqueness.
/// Every task's name, checked; the `finally` ones start at `main`.
fn task_names(tasks: &[RawTask], main: usize) -> Result<Vec<String>, SpecError> {
    let mut seen = HashSet::new();
    let mut names = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let missing = if i < main {
            SpecError::MissingTaskName(i + 1)
        } else {
            SpecError::MissingFinallyTaskName(i - main + 1)
        };
        let name = task.name.clone().filter(|n| !n.is_empty()).ok_or(missing)?;
        if !is_name(&name) {
            return Err(SpecError::InvalidName { kind: "task", name });
        }
        if !seen.insert(name.clone()) {
            return Err(SpecError::DuplicateTask(name));
        }
        names.push(name);
    }
    Ok(names)
}

fn resolve_task(
    raw: &RawTask,
    name: &str,
    graph: &Graph<'_>,
    scope: Scope<'_>,
) -> Result<pb::TaskSpec, TaskError> {
    let template = |field: &str, text: &str| {
        substitute(text, scope).map_err(|error| TaskError::Template {
            field: field.to_owned(),
            error,
        })
    };

    let depends_on = raw.depends_on.clone().unwrap_or_default();
    let mut seen = HashSet::new();
    for dep in &depends_on {
        if dep == name {
            return Err(TaskError::SelfDependency);
        }
        if !graph.index.contains_key(dep.as_str()) {
            return Err(TaskError::UnknownDependency(dep.clone()));
        }
        if !seen.insert(dep) {
            return Err(TaskError::DuplicateDependency(dep.clone()));
        }
    }

    let command = raw
        .command
        .iter()
        .flatten()
        .map(|arg| template("command", arg))
        .collect::<Result<Vec<_>, _>>()?;
    if command
        .first()
        .is_none_or(|program| program.trim().is_empty())
    {
        return Err(TaskError::EmptyCommand);
    }

    let when = raw.when.clone().unwrap_or_default();
    if raw.when.is_some() {
        let checked = match when.trim() {
            "" => Err("empty expression".to_owned()),
            expr => condition::check(expr, scope.matrix.is_some(), scope.for_each),
        };
        checked.map_err(|message| invalid("when", message))?;
    }

    let inputs = resolve_inputs(
        raw.inputs.as_deref().unwrap_or_default(),
        name,
        graph,
        scope.params,
    )?;
    let outputs = resolve_outputs(raw.outputs.as_deref().unwrap_or_default())?;

    let mut env = BTreeMap::new();
    for (key, value) in raw.env.iter().flatten() {
        if !is_env_name(key) {
            return Err(TaskError::InvalidEnvName(key.clone()));
        }
        if key.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV_NAMES.contains(&key.as_str()) {
            return Err(TaskError::ReservedEnvName(key.clone()));
        }
        let field = format!("env.{key}");
        let Some(value) = value else {
            return Err(invalid(&field, "missing value".to_owned()));
        };
        env.insert(key.clone(), template(&field, value)?);
    }

    let resources = raw
        .resources
        .as_ref()
        .map(|resources| resolve_resources(resources, &template))
        .transpose()?
        .unwrap_or_default();
    let retries = raw
        .retries
        .as_ref()
        .map(resolve_retries)
        .transpose()?
        .unwrap_or_default();
    let timeout_ms = match &raw.timeout {
        None => 0,
        Some(text) => positive("timeout", text, parse_duration(text))?,
    };
    let image = raw
        .image
        .as_deref()
        .map(|image| template("image", image))
        .transpose()?
        .unwrap_or_default();

    let mut node_selector = BTreeMap::new();
    for (key, value) in raw.node_selector.iter().flatten() {
        if !is_label_key(key) {
            return Err(TaskError::InvalidLabelKey(key.clone()));
        }
        let field = format!("node_selector.{key}");
        let Some(written) = value else {
            return Err(invalid(
                &field,
                "missing value (write '' for an empty one)".to_owned(),
            ));
        };
        let value = template(&field, written)?;
        if !is_label_value(&value) {
            return Err(TaskError::InvalidLabelValue {
                key: key.clone(),
                template: (value != *written).then(|| written.clone()),
                value,
            });
        }
        node_selector.insert(key.clone(), value);
    }

    let pull_policy = match raw.pull_policy.as_deref() {
        None => pb::PullPolicy::Unspecified,
        Some(text) => {
            let policy = parse_pull_policy(text)?;
            if image.is_empty() {
                return Err(TaskError::Needs {
                    field: "pull_policy",
                    needs: "an image",
                });
            }
            policy
        }
    };

    let workdir = code::resolve_workdir(raw.workdir.as_deref())?;
    let cache = raw.cache.as_ref().map(resolve_cache).transpose()?;
    let (on_agent_lost, lost_after_ms) = resolve_on_agent_lost(raw)?;
    Ok(pb::TaskSpec {
        name: name.to_owned(),
        depends_on,
        command,
        inputs,
        outputs,
        env: env.into_iter().collect(),
        resources: Some(resources),
        retries: Some(retries),
        timeout_ms,
        image,
        node_selector,
        pull_policy: pull_policy.into(),
        when,
        workdir,
        cache,
        on_agent_lost: on_agent_lost.into(),
        lost_after_ms,
        ..Default::default()
    })
}

/// `on_agent_lost:` and `lost_after:` (which only `wait` takes).
fn resolve_on_agent_lost(raw: &RawTask) -> Result<(pb::OnAgentLost, u64), TaskError> {
    let policy = match raw.on_agent_lost.as_deref() {
        None => pb::OnAgentLost::Unspecified,
        Some("requeue") => pb::OnAgentLost::Requeue,
        Some("wait") => pb::OnAgentLost::Wait,
        Some(other) => {
            return Err(invalid(
                "on_agent_lost",
                format!("unknown value `{other}` (use requeue or wait)"),
            ))
        }
    };
    let lost_after_ms = match &raw.lost_after {
        None => 0,
        Some(_) if policy != pb::OnAgentLost::Wait => {
            return Err(TaskError::Needs {
                field: "lost_after",
                needs: "on_agent_lost: wait",
            })
        }
        Some(text) => positive("lost_after", text, parse_duration(text))?,
    };
    Ok((policy, lost_after_ms))
}

fn resolve_cache(raw: &RawCache) -> Result<pb::CachePolicy, TaskError> {
    let settings = match raw {
        RawCache::Switch(on) => {
            let mode = if *on {
                pb::CacheMode::On
            } else {
                pb::CacheMode::Off
            };
            return Ok(pb::CachePolicy {
                mode: mode.into(),
                ..Default::default()
            });
        }
        RawCache::Settings(settings) => settings,
    };
    let max_age_ms = match &settings.max_age {
        None => 0,
        Some(text) => positive("cache.max_age", text, parse_duration(text))?,
    };
    Ok(pb::CachePolicy {
        mode: pb::CacheMode::On.into(),
        version: settings.version.clone().unwrap_or_default(),
        max_age_ms,
    })
}

fn resolve_inputs(
    raw: &[RawInput],
    task: &str,
    graph: &Graph<'_>,
    params: &BTreeMap<String, String>,
) -> Result<Vec<pb::InputSpec>, TaskError> {
    let mut seen = HashSet::new();
    let mut inputs = Vec::with_capacity(raw.len());
    for (i, input) in raw.iter().enumerate() {
        let name = required(&input.name, || format!("input #{}", i + 1), "name")?;
        if !is_name(name) {
            return Err(TaskError::InvalidName {
                kind: "input",
                name: name.to_owned(),
            });
        }
        if !seen.insert(name) {
            return Err(TaskError::DuplicateInput(name.to_owned()));
        }
        let resolved = match (&input.from, &input.param) {
            (Some(_), Some(_)) => {
                return Err(TaskError::InputFromAndParam {
                    input: name.to_owned(),
                })
            }
            (None, Some(param)) => input_from_param(name, param, params)?,
            _ => {
                let from = required(&input.from, || format!("input `{name}`"), "from")?;
                input_from_output(name, from, task, graph)?
            }
        };
        inputs.push(resolved);
    }
    Ok(inputs)
}

fn input_from_param(
    name: &str,
    param: &str,
    params: &BTreeMap<String, String>,
) -> Result<pb::InputSpec, TaskError> {
    if !params.contains_key(param) {
        return Err(TaskError::InputFromUnknownParam {
            input: name.to_owned(),
            param: param.to_owned(),
        });
    }
    Ok(pb::InputSpec {
        name: name.to_owned(),
        from_param: param.to_owned(),
        ..Default::default()
    })
}

fn input_from_output(
    name: &str,
    from: &str,
    task: &str,
    graph: &Graph<'_>,
) -> Result<pb::InputSpec, TaskError> {
    let (from_task, from_output) = from
        .split_once('/')
        .filter(|(t, o)| !t.is_empty() && !o.is_empty() && !o.contains('/'))
        .ok_or_else(|| TaskError::InvalidFrom {
            input: name.to_owned(),
            from: from.to_owned(),
        })?;
    if from_task == task {
        return Err(TaskError::InputFromSelf {
            input: name.to_owned(),
        });
    }
    let Some(outputs) = graph.outputs.get(from_task) else {
        return Err(TaskError::InputFromUnknownTask {
            input: name.to_owned(),
            from_task: from_task.to_owned(),
        });
    };
    if !outputs.contains(from_output) {
        return Err(TaskError::InputFromUnknownOutput {
            input: name.to_owned(),
            from_task: from_task.to_owned(),
            from_output: from_output.to_owned(),
        });
    }
    Ok(pb::InputSpec {
        name: name.to_owned(),
        from_task: from_task.to_owned(),
        from_output: from_output.to_owned(),
        ..Default::default()
    })
}

fn resolve_outputs(raw: &[RawOutput]) -> Result<Vec<pb::OutputSpec>, TaskError> {
    let mut names = HashSet::new();
    // Normalised path → the output that claimed it.
    let mut paths: HashMap<String, &str> = HashMap::new();
    let mut outputs = Vec::with_capacity(raw.len());
    for (i, output) in raw.iter().enumerate() {
        let name = required(&output.name, || format!("output #{}", i + 1), "name")?;
        if !is_name(name) {
            return Err(TaskError::InvalidName {
                kind: "output",
                name: name.to_owned(),
            });
        }
        if !names.insert(name) {
            return Err(TaskError::DuplicateOutput(name.to_owned()));
        }
        let path = output.path.as_deref().ok_or_else(|| TaskError::Missing {
            at: format!("output `{name}`"),
            field: "path",
        })?;
        let normalised =
            normalise_output_path(path).ok_or_else(|| TaskError::InvalidOutputPath {
                output: name.to_owned(),
                path: path.to_owned(),
            })?;
        if let Some(other) = paths.insert(normalised, name) {
            return Err(TaskError::DuplicateOutputPath {
                output: name.to_owned(),
                path: path.to_owned(),
                other: other.to_owned(),
            });
        }
        outputs.push(pb::OutputSpec {
            name: name.to_owned(),
            path: path.to_owned(),
            result: output.result.unwrap_or(false),
        });
    }
    Ok(outputs)
}

/// `template` substitutes `{{params.x}}` in a field's text (`gpu_model`).
fn resolve_resources(
    raw: &RawResources,
    template: &dyn Fn(&str, &str) -> Result<String, TaskError>,
) -> Result<pb::Resources, TaskError> {
    let cpu_millis = match &raw.cpu {
        None => 0,
        Some(text) => positive("resources.cpu", text, parse_cpu(text))?,
    };
    let memory_bytes = match &raw.memory {
        None => 0,
        // Zero would read as "unset" downstream, so it is refused like cpu.
        Some(text) => positive("resources.memory", text, parse_memory(text))?,
    };
    let gpu = match &raw.gpu {
        None => 0,
        Some(text) => parse_count(text).map_err(|message| invalid("resources.gpu", message))?,
    };
    let gpu_model = match &raw.gpu_model {
        None => String::new(),
        Some(text) => {
            let model = template("resources.gpu_model", text)?;
            if model.trim().is_empty() {
                return Err(invalid(
                    "resources.gpu_model",
                    "must not be empty (leave it out to accept any GPU)".to_owned(),
                ));
            }
            needs_a_gpu("resources.gpu_model", gpu, model)?
        }
    };
    let gpu_memory_bytes = match &raw.gpu_memory {
        None => 0,
        Some(text) => {
            let bytes = positive("resources.gpu_memory", text, parse_memory(text))?;
            needs_a_gpu("resources.gpu_memory", gpu, bytes)?
        }
    };
    Ok(pb::Resources {
        cpu_millis,
        memory_bytes,
        gpu,
        gpu_model,
        gpu_memory_bytes,
    })
}

/// `value`, for a field that only means something for a task given GPUs.
fn needs_a_gpu<T>(field: &'static str, gpu: u32, value: T) -> Result<T, TaskError> {
    if gpu == 0 {
        return Err(TaskError::Needs {
            field,
            needs: "resources.gpu of at least 1",
        });
    }
    Ok(value)
}

/// The spellings Kubernetes users already know, and only those.
fn parse_pull_policy(text: &str) -> Result<pb::PullPolicy, TaskError> {
    match text {
        "IfNotPresent" => Ok(pb::PullPolicy::IfNotPresent),
        "Always" => Ok(pb::PullPolicy::Always),
        "Never" => Ok(pb::PullPolicy::Never),
        _ => Err(invalid(
            "pull_policy",
            format!("unknown policy `{text}` (use IfNotPresent, Always or Never)"),
        )),
    }
}

fn resolve_retries(raw: &RawRetries) -> Result<pb::RetryPolicy, TaskError> {
    let text = required(&raw.limit, || "retries".to_owned(), "limit")?;
    let limit = parse_count(text).map_err(|message| invalid("retries.limit", message))?;
    if limit > MAX_RETRY_LIMIT {
        return Err(invalid(
            "retries.limit",
            format!("`{text}` is more than the maximum of {MAX_RETRY_LIMIT}"),
        ));
    }
    let backoff_ms = match &raw.backoff {
        None => DEFAULT_BACKOFF_MS,
        Some(text) => {
            parse_duration(text).map_err(|message| invalid("retries.backoff", message))?
        }
    };
    Ok(pb::RetryPolicy { limit, backoff_ms })
}

/// A parsed value that must also be greater than zero.
fn positive<T: Default + PartialEq>(
    field: &str,
    text: &str,
    parsed: Result<T, String>,
) -> Result<T, TaskError> {
    match parsed {
        Err(message) => Err(invalid(field, message)),
        Ok(value) if value == T::default() => Err(invalid(
            field,
            format!("must be greater than 0, got `{text}`"),
        )),
        Ok(value) => Ok(value),
    }
}

fn invalid(field: &str, message: String) -> TaskError {
    TaskError::InvalidValue {
        field: field.to_owned(),
        message,
    }
}

/// A required, non-empty string field.
fn required<'a>(
    value: &'a Option<String>,
    at: impl FnOnce() -> String,
    field: &'static str,
) -> Result<&'a str, TaskError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| TaskError::Missing { at: at(), field })
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`: pipeline, task, input and output names.
fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[A-Za-z0-9][A-Za-z0-9_./-]{0,62}`: node selector (agent label) keys.
pub fn is_label_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
}

/// `[A-Za-z0-9_.-]{0,63}`: node selector (agent label) values; may be empty.
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`: queue names, like Kubernetes names.
pub fn is_queue_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|&b| b.is_ascii_lowercase() || b.is_ascii_digit());
    bytes.len() <= 63
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A run or queue priority as written (`10`, `0`, `1000000`): a whole number
/// from 0 to [`MAX_PRIORITY`]. The error names the value, without a field.
pub fn parse_priority(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid priority `{text}` (use a whole number from 0 to {MAX_PRIORITY})"
        ));
    }
    // Only a sign and digits remain: a parse failure is an overflow, which
    // is out of range all the same.
    match trimmed.parse::<i64>() {
        Ok(p) if (0..=MAX_PRIORITY).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` must be between 0 and {MAX_PRIORITY}")),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes
        .first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The path with `.` and empty components dropped, or `None` if it is empty,
/// absolute, or climbs out with `..`.
pub(super) fn normalise_output_path(path: &str) -> Option<String> {
    if path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// A cycle in the "depends on" graph, as task indices where each depends on
/// the next and the last repeats the first, starting from the task earliest
/// in the spec so the message does not depend on where the search began.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnStack,
        Done,
    }
    let mut state = vec![State::New; deps.len()];
    for start in 0..deps.len() {
        if state[start] != State::New {
            continue;
        }
        // Iterative DFS (a long chain must not overflow the call stack):
        // each frame is a task and the index of its next dependency to visit.
        let mut stack = vec![(start, 0)];
        state[start] = State::OnStack;
        while let Some(frame) = stack.last_mut() {
            let (node, next) = *frame;
            let Some(&dep) = deps[node].get(next) else {
                state[node] = State::Done;
                stack.pop();
                continue;
            };
            frame.1 += 1;
            match state[dep] {
                State::New => {
                    state[dep] = State::OnStack;
                    stack.push((dep, 0));
                }
                State::OnStack => {
                    let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                    let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                    cycle.rotate_left(first);
                    cycle.push(cycle[0]);
                    return Some(cycle);
                }
                State::Done => {}
            }
        }
    }
    None
}

/// `finally` tasks (from `main` on) run after every other task: they may
/// depend only on each other, and no other task may depend on them.
fn check_finally_deps(deps: &[Vec<usize>], names: &[String], main: usize) -> Result<(), SpecError> {
    for (i, task_deps) in deps.iter().enumerate() {
        let finally = i >= main;
        if let Some(&d) = task_deps.iter().find(|&&d| (d >= main) != finally) {
            let dep = names[d].clone();
            return Err(SpecError::Task {
                task: names[i].clone(),
                error: if finally {
                    TaskError::FinallyDependsOnOther(dep)
                } else {
                    TaskError::DependsOnFinally(dep)
                },
            });
        }
    }
    Ok(())
}

/// Every input's producer must be reachable through `depends_on`, or the
/// task could start before the artifact exists. A `finally` task (from
/// `main` on) starts after every other task, so any of those may produce it.
fn check_upstream(
    specs: &[&pb::TaskSpec],
    names: &[String],
    graph: &Graph<'_>,
    deps: &[Vec<usize>],
    main: usize,
) -> Result<(), SpecError> {
    for (i, (task, name)) in specs.iter().zip(names).enumerate() {
        if task.inputs.is_empty() {
            continue;
        }
        let upstream = reachable(i, deps);
        for input in task.inputs.iter().filter(|i| i.from_param.is_empty()) {
            let producer = graph.index.get(input.from_task.as_str());
            let before = |p: usize| upstream[p] || (i >= main && p < main);
            if !producer.is_some_and(|&p| before(p)) {
                return Err(SpecError::Task {
                    task: name.clone(),
                    error: TaskError::InputNotUpstream {
                        input: input.name.clone(),
                        from_task: input.from_task.clone(),
                        task: name.clone(),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Which tasks `start` depends on, directly or transitively.
pub(super) fn reachable(start: usize, deps: &[Vec<usize>]) -> Vec<bool> {
    let mut seen = vec![false; deps.len()];
    let mut todo = deps[start].clone();
    while let Some(node) = todo.pop() {
        if !seen[node] {
            seen[node] = true;
            todo.extend(&deps[node]);
        }
    }
    seen
}

#[cfg(test)]
mod tests;
