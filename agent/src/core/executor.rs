//! Which executors exist, and which one a task needs.

use std::fmt;

use drover_api::pb::TaskSpec;

/// An executor this build of the agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// The task's command as a plain child process (its own process group).
    Process,
}

/// Executors that exist in Drover's design but not in this build yet.
const PLANNED: &[&str] = &["docker"];

impl ExecutorKind {
    /// Every implemented executor.
    pub const ALL: &'static [ExecutorKind] = &[ExecutorKind::Process];

    /// The name used in `--executors`, heartbeats and refusal reasons.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Process => "process",
        }
    }

    /// Parses one `--executors` entry.
    pub fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if let Some(kind) = Self::ALL.iter().find(|k| k.name() == name) {
            return Ok(*kind);
        }
        let available = names(Self::ALL);
        if PLANNED.contains(&name) {
            Err(format!(
                "executor `{name}` is not implemented in this build of drover-agent (available: {available})"
            ))
        } else {
            Err(format!(
                "unknown executor `{name}` (available: {available})"
            ))
        }
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
        "docker"
    }
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
        let err = parse_list(&["process", "docker"]).unwrap_err();
        assert!(err.contains("`docker` is not implemented"), "{err}");
        let err = parse_list(&["podman"]).unwrap_err();
        assert!(err.contains("unknown executor `podman`"), "{err}");
        let err = parse_list::<&str>(&[""]).unwrap_err();
        assert!(err.contains("no executor enabled"), "{err}");
    }

    #[test]
    fn image_means_docker() {
        let mut task = TaskSpec::default();
        assert_eq!(required_executor(&task), "process");
        task.image = "python:3.12".into();
        assert_eq!(required_executor(&task), "docker");
    }
}
