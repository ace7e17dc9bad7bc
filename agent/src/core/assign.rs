//! What to do with an `Assignment`: refuse it, recognise it as a duplicate,
//! or turn it into a checked [`AttemptPlan`] the shell can execute without
//! validating anything again.

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::time::Duration;

use drover_api::naming;
use drover_api::pb::{Assignment, PullPolicy};

use super::executor::{names, required_executor, ExecutorKind};
use super::table::AttemptKey;

/// An input to put in `inputs/` before the task starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFetch {
    pub name: String,
    /// The task that produced it, as the task's spec says (for messages;
    /// empty when the spec does not name it).
    pub from_task: String,
    pub source: InputSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// One object, downloaded to `inputs/<name>`.
    Object(StoredObject),
    /// Every instance's output of a task with a matrix: each part to
    /// `inputs/<name>/<file>`, and `listing` written to `inputs/<name>.json`.
    Gathered {
        parts: Vec<(String, StoredObject)>,
        listing: Vec<u8>,
    },
    /// A param's value, written to `inputs/<name>`.
    Content(Vec<u8>),
}

/// An object in the store and the sha256 its content must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    /// Lowercase hex; empty: unknown (recorded before sha256s were sent), not checked.
    pub sha256: String,
}

impl StoredObject {
    fn new(input: &str, key: &str, sha256: &str) -> Result<Self, String> {
        if !sha256.is_empty() && !naming::is_sha256(sha256) {
            return Err(format!(
                "input `{input}`: sha256 `{sha256}` is not a sha256"
            ));
        }
        Ok(StoredObject {
            key: key.to_owned(),
            sha256: sha256.to_owned(),
        })
    }
}

/// A declared output: `outputs/<path>` goes to `key` after the task exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputUpload {
    pub name: String,
    pub path: String,
    pub key: String,
    /// Declared `result: true`: its content goes back with the success.
    pub result: bool,
}

/// The run's code snapshot, as an attempt uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePlan {
    /// Lowercase hex; the object is `code/<sha256>.tar`.
    pub sha256: String,
    /// Working directory relative to the snapshot's root; empty: the root.
    pub workdir: String,
}

/// A validated assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPlan {
    pub key: AttemptKey,
    pub executor: ExecutorKind,
    /// argv; never empty, `command[0]` never empty.
    pub command: Vec<String>,
    /// The task's own environment, sorted by name.
    pub env: Vec<(String, String)>,
    pub inputs: Vec<InputFetch>,
    pub outputs: Vec<OutputUpload>,
    pub timeout: Option<Duration>,
    pub log_key: String,
    /// GPUs given to this attempt: (NVML index, UUID). Their env is in `env`.
    pub gpus: Vec<(u32, String)>,
    /// Container image (docker executor); empty for the process executor.
    pub image: String,
    pub pull_policy: PullPolicy,
    /// Limits from the spec's resources; 0 = none.
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    /// W3C `traceparent` the task's own spans go under (the agent's execute
    /// span, else the scheduler's attempt span); set by the shell at start.
    pub traceparent: Option<String>,
    /// Unpacked read-only at `$DROVER_CODE`, the task's working directory
    /// (or its `workdir` inside it).
    pub code: Option<CodePlan>,
}

/// The environment that confines a task to its GPUs. CUDA numbers devices in
/// PCI bus order only when asked to, and NVML indices are in that order, so
/// the indices the scheduler picked mean the same devices inside the task. A
/// task given no GPU sees none, even on a GPU machine.
pub fn gpu_env(gpus: &[(u32, String)]) -> Vec<(String, String)> {
    let indices: Vec<String> = gpus.iter().map(|(i, _)| i.to_string()).collect();
    let uuids: Vec<&str> = gpus.iter().map(|(_, u)| u.as_str()).collect();
    let nvidia = if gpus.is_empty() {
        "none".to_owned()
    } else {
        uuids.join(",")
    };
    vec![
        ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
        ("CUDA_VISIBLE_DEVICES".to_owned(), indices.join(",")),
        ("NVIDIA_VISIBLE_DEVICES".to_owned(), nvidia),
    ]
}

/// The agent's answer to an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignDecision {
    /// Accept and run it.
    Start(Box<AttemptPlan>),
    /// Accept, but it is already running or finished here: do nothing.
    Duplicate(AttemptKey),
    /// Refuse, with the reason for the scheduler.
    Refuse(String),
}

/// Decides what to do with `assignment` on agent `agent_id`, which runs the
/// `enabled` executors and already knows the attempts for which `is_known` is true.
pub fn decide_assign(
    agent_id: &str,
    enabled: &[ExecutorKind],
    assignment: &Assignment,
    is_known: impl FnOnce(&AttemptKey) -> bool,
) -> AssignDecision {
    let key = match attempt_key(assignment) {
        Ok(k) => k,
        Err(e) => return AssignDecision::Refuse(format!("malformed assignment: {e}")),
    };
    if is_known(&key) {
        return AssignDecision::Duplicate(key);
    }
    let Some(task) = assignment.task.as_ref() else {
        return AssignDecision::Refuse(format!("malformed assignment for {key}: missing task"));
    };
    let needed = required_executor(task);
    let Some(executor) = enabled.iter().copied().find(|k| k.name() == needed) else {
        return AssignDecision::Refuse(format!(
            "executor `{needed}` is not enabled on agent `{agent_id}` (enabled: {})",
            names(enabled)
        ));
    };
    match plan(key.clone(), executor, assignment) {
        Ok(plan) => AssignDecision::Start(Box::new(plan)),
        Err(e) => AssignDecision::Refuse(format!("malformed assignment for {key}: {e}")),
    }
}

fn attempt_key(assignment: &Assignment) -> Result<AttemptKey, String> {
    let r = assignment.attempt.as_ref().ok_or("missing attempt")?;
    path_component("run id", &r.run_id)?;
    path_component("task name", &r.task)?;
    Ok(AttemptKey::from(r))
}

fn plan(
    key: AttemptKey,
    executor: ExecutorKind,
    assignment: &Assignment,
) -> Result<AttemptPlan, String> {
    // decide_assign checked that the task is there.
    let task = assignment.task.as_ref().ok_or("missing task")?;
    match task.command.first() {
        None => return Err("empty command".to_owned()),
        Some(p) if p.is_empty() => return Err("empty program name in command".to_owned()),
        Some(_) => {}
    }
    for (name, value) in &task.env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!("invalid environment variable `{name}`"));
        }
    }
    let gpus: Vec<(u32, String)> = assignment
        .gpus
        .iter()
        .map(|g| (g.index, g.uuid.clone()))
        .collect();
    let mut env: Vec<_> = task
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(gpu_env(&gpus))
        .collect();
    env.sort();

    let prefix = assignment.artifact_prefix.as_str();
    if prefix.is_empty() {
        return Err("empty artifact prefix".to_owned());
    }

    let mut seen = BTreeSet::new();
    let mut inputs = Vec::with_capacity(assignment.inputs.len());
    for input in &assignment.inputs {
        path_component("input name", &input.name)?;
        if !seen.insert(input.name.clone()) {
            return Err(format!("input `{}` declared twice", input.name));
        }
        let source = if let Some(content) = &input.content {
            if !input.key.is_empty() || !input.parts.is_empty() {
                return Err(format!(
                    "input `{}` has both a content and an object to fetch",
                    input.name
                ));
            }
            InputSource::Content(content.clone())
        } else if input.parts.is_empty() {
            if input.key.is_empty() {
                return Err(format!("input `{}` has an empty key", input.name));
            }
            InputSource::Object(StoredObject::new(&input.name, &input.key, &input.sha256)?)
        } else {
            // Its listing takes `<name>.json` beside it.
            let listing = format!("{}.json", input.name);
            if !seen.insert(listing.clone()) {
                return Err(format!(
                    "input `{}` collides with input `{listing}`'s listing",
                    input.name
                ));
            }
            let mut files = BTreeSet::new();
            let mut parts = Vec::with_capacity(input.parts.len());
            for part in &input.parts {
                path_component("input part", &part.file)?;
                if part.key.is_empty() || !files.insert(part.file.as_str()) {
                    return Err(format!(
                        "input `{}`: part `{}` has an empty key or is listed twice",
                        input.name, part.file
                    ));
                }
                let object = StoredObject::new(&input.name, &part.key, &part.sha256)?;
                parts.push((part.file.clone(), object));
            }
            InputSource::Gathered {
                parts,
                listing: input.listing.clone(),
            }
        };
        let from_task = task
            .inputs
            .iter()
            .find(|i| i.name == input.name)
            .map(|i| i.from_task.clone())
            .unwrap_or_default();
        inputs.push(InputFetch {
            name: input.name.clone(),
            from_task,
            source,
        });
    }

    let mut seen = BTreeSet::new();
    let mut outputs = Vec::with_capacity(task.outputs.len());
    for output in &task.outputs {
        path_component("output name", &output.name)?;
        if !seen.insert(output.name.as_str()) {
            return Err(format!("output `{}` declared twice", output.name));
        }
        relative_path(&output.name, &output.path)?;
        outputs.push(OutputUpload {
            name: output.name.clone(),
            path: output.path.clone(),
            key: naming::output_key(prefix, &output.name),
            result: output.result,
        });
    }

    let code = match assignment.code_sha256.as_str() {
        "" if task.workdir.is_empty() => None,
        "" => {
            return Err(format!(
                "workdir `{}` without a code snapshot",
                task.workdir
            ))
        }
        sha256 if !naming::is_sha256(sha256) => {
            return Err(format!("code snapshot `{sha256}` is not a sha256"))
        }
        sha256 => {
            if !task.workdir.is_empty() && !is_inside(&task.workdir) {
                return Err(format!(
                    "workdir `{}` must be a relative path without `..`",
                    task.workdir
                ));
            }
            Some(CodePlan {
                sha256: sha256.to_owned(),
                workdir: task.workdir.clone(),
            })
        }
    };

    Ok(AttemptPlan {
        key,
        executor,
        command: task.command.clone(),
        env,
        inputs,
        outputs,
        timeout: (task.timeout_ms > 0).then(|| Duration::from_millis(task.timeout_ms)),
        log_key: naming::log_key(prefix),
        gpus,
        image: task.image.clone(),
        pull_policy: task.pull_policy(),
        cpu_millis: task.resources.as_ref().map_or(0, |r| r.cpu_millis),
        memory_bytes: task.resources.as_ref().map_or(0, |r| r.memory_bytes),
        traceparent: None,
        code,
    })
}

/// Names that become one directory or file name on the agent's disk.
fn path_component(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("empty {what}"));
    }
    if value == "." || value == ".." || value.contains(['/', '\\', '\0']) {
        return Err(format!("{what} `{value}` is not a valid file name"));
    }
    Ok(())
}

/// An output path must stay inside `outputs/`.
fn relative_path(output: &str, path: &str) -> Result<(), String> {
    if is_inside(path) {
        Ok(())
    } else {
        Err(format!(
            "output `{output}` path `{path}` must be a relative path inside outputs/"
        ))
    }
}

/// A relative path with at least one name and no `..`: it stays inside the
/// directory it is joined to.
fn is_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && Path::new(path)
            .components()
            .any(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;
    use drover_api::pb::{AttemptRef, InputArtifact, InputPart, InputSpec, OutputSpec, TaskSpec};

    /// A well-formed sha256 (lowercase hex).
    const SHA: &str = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";

    #[test]
    fn gpu_tasks_see_exactly_their_gpus_and_others_none() {
        let env = gpu_env(&[(2, "GPU-b".into()), (5, "GPU-e".into())]);
        assert!(env.contains(&("CUDA_VISIBLE_DEVICES".into(), "2,5".into())));
        assert!(env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "GPU-b,GPU-e".into())));
        assert!(env.contains(&("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into())));
        let none = gpu_env(&[]);
        assert!(none.contains(&("CUDA_VISIBLE_DEVICES".into(), String::new())));
        assert!(none.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "none".into())));
    }

    fn assignment() -> Assignment {
        Assignment {
            attempt: Some(AttemptRef {
                run_id: "r1".into(),
                task: "train".into(),
                attempt: 2,
            }),
            task: Some(TaskSpec {
                name: "train".into(),
                command: vec!["python".into(), "train.py".into()],
                outputs: vec![OutputSpec {
                    name: "model".into(),
                    path: "model/weights.bin".into(),
                    result: true,
                }],
                env: [("B".to_owned(), "2".to_owned()), ("A".into(), "1".into())].into(),
                timeout_ms: 1500,
                inputs: vec![InputSpec {
                    name: "dataset".into(),
                    from_task: "prep".into(),
                    from_output: "dataset".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            inputs: vec![InputArtifact {
                name: "dataset".into(),
                key: "runs/r1/prep.1/outputs/dataset".into(),
                sha256: SHA.into(),
                ..Default::default()
            }],
            artifact_prefix: "runs/r1/train.2".into(),
            gpus: vec![],
            code_sha256: String::new(),
        }
    }

    fn decide(a: &Assignment) -> AssignDecision {
        decide_assign("a1", &[ExecutorKind::Process], a, |_| false)
    }

    fn refusal(a: &Assignment) -> String {
        match decide(a) {
            AssignDecision::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_code_snapshot_is_planned_with_its_workdir_and_checked() {
        let sha = "0f".repeat(32);
        let with = |code: &str, workdir: &str| {
            let mut a = assignment();
            a.code_sha256 = code.to_owned();
            if let Some(task) = a.task.as_mut() {
                task.workdir = workdir.to_owned();
            }
            a
        };
        let AssignDecision::Start(plan) = decide(&with(&sha, "tools/bin")) else {
            panic!("expected a plan");
        };
        assert_eq!(
            plan.code,
            Some(CodePlan {
                sha256: sha.clone(),
                workdir: "tools/bin".into()
            })
        );
        let AssignDecision::Start(plan) = decide(&assignment()) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.code, None);
        assert!(refusal(&with("ABC", "")).ends_with("code snapshot `ABC` is not a sha256"));
        assert!(refusal(&with("", "src")).ends_with("workdir `src` without a code snapshot"));
        assert!(refusal(&with(&sha, "../up"))
            .ends_with("workdir `../up` must be a relative path without `..`"));
    }

    #[test]
    fn a_valid_assignment_becomes_a_plan() {
        let AssignDecision::Start(plan) = decide(&assignment()) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.key.to_string(), "r1/train/2");
        assert_eq!(plan.executor, ExecutorKind::Process);
        assert_eq!(
            plan.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()),
                ("CUDA_VISIBLE_DEVICES".into(), String::new()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "none".into()),
            ]
        );
        assert_eq!(plan.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(plan.log_key, "runs/r1/train.2.log");
        assert_eq!(plan.outputs[0].key, "runs/r1/train.2/outputs/model");
        assert_eq!(plan.outputs[0].path, "model/weights.bin");
        assert!(plan.outputs[0].result);
        assert_eq!(plan.inputs[0].name, "dataset");
        assert_eq!(plan.inputs[0].from_task, "prep");
        assert_eq!(
            plan.inputs[0].source,
            InputSource::Object(StoredObject {
                key: "runs/r1/prep.1/outputs/dataset".into(),
                sha256: SHA.into(),
            })
        );
    }

    #[test]
    fn a_gathered_input_keeps_its_parts_and_listing() {
        let mut a = assignment();
        a.inputs.push(InputArtifact {
            name: "models".into(),
            parts: vec![InputPart {
                file: "0".into(),
                key: "runs/r1/t[x=1].1/outputs/m".into(),
                sha256: String::new(),
            }],
            listing: b"[]".to_vec(),
            ..Default::default()
        });
        let AssignDecision::Start(plan) = decide(&a) else {
            panic!("expected a plan");
        };
        assert_eq!(
            plan.inputs[1].source,
            InputSource::Gathered {
                parts: vec![(
                    "0".into(),
                    StoredObject {
                        key: "runs/r1/t[x=1].1/outputs/m".into(),
                        sha256: String::new(),
                    }
                )],
                listing: b"[]".to_vec(),
            }
        );
    }

    #[test]
    fn a_param_input_is_written_as_given_and_fetches_nothing() {
        let mut a = assignment();
        a.inputs.push(InputArtifact {
            name: "objects.json".into(),
            content: Some(b"[]".to_vec()),
            ..Default::default()
        });
        let AssignDecision::Start(plan) = decide(&a) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.inputs[1].source, InputSource::Content(b"[]".to_vec()));
        a.inputs[1].key = "k".into();
        assert!(refusal(&a).contains("has both a content and an object to fetch"));
    }

    #[test]
    fn an_input_sha256_is_a_sha256_or_empty() {
        let mut a = assignment();
        a.inputs[0].sha256 = "ABC".into();
        assert!(refusal(&a).ends_with("input `dataset`: sha256 `ABC` is not a sha256"));
        a.inputs[0].sha256 = String::new();
        let AssignDecision::Start(plan) = decide(&a) else {
            panic!("expected a plan");
        };
        assert!(matches!(&plan.inputs[0].source, InputSource::Object(o) if o.sha256.is_empty()));
    }

    #[test]
    fn no_timeout_when_zero() -> TestResult {
        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.timeout_ms = 0;
        let AssignDecision::Start(plan) = decide(&a) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.timeout, None);
        Ok(())
    }

    #[test]
    fn a_known_attempt_is_a_duplicate_even_before_other_checks() -> TestResult {
        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.image = "python:3".into();
        let d = decide_assign("a1", &[ExecutorKind::Process], &a, |k| k.attempt == 2);
        assert!(matches!(d, AssignDecision::Duplicate(k) if k.attempt == 2));
        Ok(())
    }

    #[test]
    fn an_image_needs_docker() -> TestResult {
        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.image = "python:3".into();
        assert_eq!(
            refusal(&a),
            "executor `docker` is not enabled on agent `a1` (enabled: process)"
        );
        Ok(())
    }

    #[test]
    fn malformed_assignments_are_refused_with_a_reason() -> TestResult {
        let mut a = assignment();
        a.attempt = None;
        assert_eq!(refusal(&a), "malformed assignment: missing attempt");

        let mut a = assignment();
        a.attempt.as_mut().ok_or("no attempt")?.run_id = "../etc".into();
        assert!(refusal(&a).contains("run id `../etc` is not a valid file name"));

        let mut a = assignment();
        a.task = None;
        assert!(refusal(&a).contains("missing task"));

        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.command.clear();
        assert!(refusal(&a).contains("empty command"));

        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.outputs[0].path = "../../escape".into();
        assert!(refusal(&a).contains("must be a relative path inside outputs/"));

        let mut a = assignment();
        a.task.as_mut().ok_or("no task")?.outputs[0].path = "/etc/passwd".into();
        assert!(refusal(&a).contains("must be a relative path inside outputs/"));

        let mut a = assignment();
        a.inputs.push(a.inputs[0].clone());
        assert!(refusal(&a).contains("input `dataset` declared twice"));

        let mut a = assignment();
        a.inputs[0].name = "a/b".into();
        assert!(refusal(&a).contains("input name `a/b`"));

        let mut a = assignment();
        a.artifact_prefix.clear();
        assert!(refusal(&a).contains("empty artifact prefix"));

        let part = |file: &str, key: &str| InputPart {
            file: file.into(),
            key: key.into(),
            ..Default::default()
        };
        let mut a = assignment();
        a.inputs.push(InputArtifact {
            name: "models".into(),
            parts: vec![part("0", "k0"), part("../x", "k1")],
            ..Default::default()
        });
        assert!(refusal(&a).contains("input part `../x` is not a valid file name"));
        a.inputs[1].parts[1] = part("0", "k1");
        assert!(
            refusal(&a).contains("input `models`: part `0` has an empty key or is listed twice")
        );
        a.inputs[1].parts[1] = part("1", "k1");
        a.inputs.push(InputArtifact {
            name: "models.json".into(),
            key: "k".into(),
            ..Default::default()
        });
        assert!(refusal(&a).contains("input `models.json` declared twice"));

        let mut a = assignment();
        a.task
            .as_mut()
            .ok_or("no task")?
            .env
            .insert("A=B".into(), "x".into());
        assert!(refusal(&a).contains("invalid environment variable `A=B`"));
        Ok(())
    }
}
