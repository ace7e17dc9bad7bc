//! Which executors exist, which one a task needs, and the `DROVER_*`
//! environment every executor gives a task.

use std::fmt;

use drover_api::pb::TaskSpec;

use super::assign::AttemptPlan;

/// An executor this build of the agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// The task's command as a plain child process (its own process group).
    /// Off unless named in `--executors`, like Nomad's `raw_exec`: the task
    /// runs with the agent's own rights.
    Process,
    /// The task's command in a container of its image, through the Docker
    /// engine. Containers outlive an agent restart and are re-adopted.
    Docker,
}

impl ExecutorKind {
    /// Every implemented executor.
    pub const ALL: &'static [ExecutorKind] = &[ExecutorKind::Process, ExecutorKind::Docker];

    /// The name used in `--executors`, heartbeats and refusal reasons.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Process => "process",
            ExecutorKind::Docker => "docker",
        }
    }

    /// Parses one `--executors` entry.
    pub fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if let Some(kind) = Self::ALL.iter().find(|k| k.name() == name) {
            return Ok(*kind);
        }
        Err(format!(
            "unknown executor `{name}` (available: {})",
            names(Self::ALL)
        ))
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a whole `--executors` list, dropping repeats; an empty list is an error.
pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Vec<ExecutorKind>, String> {
    let mut kinds = Vec::new();
    for name in list
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| !n.trim().is_empty())
    {
        let kind = ExecutorKind::parse(name)?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err(format!(
            "no executor enabled (available: {})",
            names(ExecutorKind::ALL)
        ));
    }
    Ok(kinds)
}

/// The executor a task asks for: a container image means `docker`.
pub fn required_executor(task: &TaskSpec) -> &'static str {
    if task.image.is_empty() {
        ExecutorKind::Process.name()
    } else {
        ExecutorKind::Docker.name()
    }
}

/// What a task sees, whatever runs it: the plan's own environment (task env
/// and GPU variables), then the `DROVER_*` variables, with `inputs`,
/// `outputs` and `code` (the code snapshot, when the plan has one) as the
/// task itself sees those directories (host paths for a process, mount
/// points inside a container).
pub fn task_env(
    plan: &AttemptPlan,
    agent_id: &str,
    inputs: &str,
    outputs: &str,
    code: &str,
) -> Vec<(String, String)> {
    let key = &plan.key;
    let mut env = plan.env.clone();
    env.extend([
        ("DROVER_RUN_ID".to_owned(), key.run_id.clone()),
        ("DROVER_TASK".to_owned(), key.task.clone()),
        ("DROVER_ATTEMPT".to_owned(), key.attempt.to_string()),
        ("DROVER_AGENT_ID".to_owned(), agent_id.to_owned()),
        ("DROVER_INPUTS".to_owned(), inputs.to_owned()),
        ("DROVER_OUTPUTS".to_owned(), outputs.to_owned()),
    ]);
    if plan.code.is_some() {
        env.push(("DROVER_CODE".to_owned(), code.to_owned()));
    }
    if let Some(tp) = &plan.traceparent {
        // W3C's name for it in an environment: OTel SDKs in the task pick it up.
        env.push(("TRACEPARENT".to_owned(), tp.clone()));
    }
    env
}

/// `process, docker`: for messages.
pub fn names(kinds: &[ExecutorKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        assert_eq!(
            parse_list(&["process", " process "]),
            Ok(vec![ExecutorKind::Process])
        );
        assert_eq!(
            parse_list(&["docker", "process", "docker"]),
            Ok(vec![ExecutorKind::Docker, ExecutorKind::Process])
        );
        let err = parse_list(&["podman"]).unwrap_err();
        assert_eq!(
            err,
            "unknown executor `podman` (available: process, docker)"
        );
        let err = parse_list::<&str>(&[""]).unwrap_err();
        assert!(err.contains("no executor enabled"), "{err}");
    }

    #[test]
    fn image_means_docker() {
        let mut task = TaskSpec::default();
        assert_eq!(required_executor(&task), "process");
        task.image = "python:3.12".into();
        assert_eq!(required_executor(&task), "docker");
        assert_eq!(ExecutorKind::parse("docker"), Ok(ExecutorKind::Docker));
    }
}
