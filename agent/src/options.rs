//! Command-line / environment options, and their validated form.

use std::path::PathBuf;
use std::time::Duration;

use drover_api::naming::DEFAULT_NATS_PREFIX;
use drover_api::spec::parse_duration;

use crate::core::executor::{self, ExecutorKind};
use crate::shell::host;
use crate::AgentError;

/// How `drover-agent` is configured: flags, each with a `DROVER_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentOptions {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "DROVER_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,

    /// Object store for artifacts and logs: file:///dir, s3://bucket/prefix, gs://…, az://…
    #[arg(long, env = "DROVER_ARTIFACTS")]
    pub artifacts: String,

    /// This agent's id in subjects and heartbeats [default: the host name, dots as dashes].
    #[arg(long, env = "DROVER_AGENT_ID")]
    pub id: Option<String>,

    /// Executors to offer, comma-separated (implemented: process).
    #[arg(
        long,
        env = "DROVER_EXECUTORS",
        value_delimiter = ',',
        default_value = "process"
    )]
    pub executors: Vec<String>,

    /// Where attempts get their working directories.
    #[arg(long, env = "DROVER_WORK_DIR", default_value = "/var/lib/drover/work")]
    pub work_dir: PathBuf,

    /// Prefix of every NATS subject and of the events stream name.
    #[arg(long, env = "DROVER_NATS_PREFIX", default_value = DEFAULT_NATS_PREFIX)]
    pub nats_prefix: String,

    /// How often to send a heartbeat (e.g. 2s, 500ms).
    #[arg(long, env = "DROVER_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = duration_arg)]
    pub heartbeat_interval: Duration,

    /// Between SIGTERM and SIGKILL when stopping a task (timeout, cancel, shutdown).
    #[arg(long, env = "DROVER_KILL_GRACE", default_value = "10s", value_parser = duration_arg)]
    pub kill_grace: Duration,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map(Duration::from_millis)
}

/// [`AgentOptions`] after `validate`: every value usable as is.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub nats: String,
    pub artifacts: String,
    pub id: String,
    pub executors: Vec<ExecutorKind>,
    /// Absolute.
    pub work_dir: PathBuf,
    pub nats_prefix: String,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
}

impl AgentOptions {
    /// Options with defaults for everything but the artifact store; for
    /// embedding the agent (tests, `drover dev`).
    pub fn new(nats: impl Into<String>, artifacts: impl Into<String>) -> Self {
        AgentOptions {
            nats: nats.into(),
            artifacts: artifacts.into(),
            id: None,
            executors: vec![ExecutorKind::Process.name().to_owned()],
            work_dir: PathBuf::from("/var/lib/drover/work"),
            nats_prefix: DEFAULT_NATS_PREFIX.to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            kill_grace: Duration::from_secs(10),
        }
    }

    /// Checks every option and resolves defaults that need the host.
    pub fn validate(&self) -> Result<AgentConfig, AgentError> {
        let invalid = |msg: String| AgentError::Config(msg);
        let id = match &self.id {
            Some(id) => id.trim().to_owned(),
            None => host::hostname().map(|h| sanitize_token(&h)).map_err(|e| {
                invalid(format!(
                    "no --id given and the host name is unreadable: {e}"
                ))
            })?,
        };
        subject_token("agent id", &id).map_err(invalid)?;
        let executors = executor::parse_list(&self.executors).map_err(invalid)?;
        subject_prefix(&self.nats_prefix).map_err(invalid)?;
        if self.artifacts.trim().is_empty() {
            return Err(invalid(
                "--artifacts (DROVER_ARTIFACTS) is empty".to_owned(),
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(invalid(
                "--heartbeat-interval must be more than 0".to_owned(),
            ));
        }
        let work_dir = std::path::absolute(&self.work_dir).map_err(|e| {
            invalid(format!(
                "work dir `{}` cannot be made absolute: {e}",
                self.work_dir.display()
            ))
        })?;
        Ok(AgentConfig {
            nats: self.nats.clone(),
            artifacts: self.artifacts.clone(),
            id,
            executors,
            work_dir,
            nats_prefix: self.nats_prefix.clone(),
            heartbeat_interval: self.heartbeat_interval,
            kill_grace: self.kill_grace,
        })
    }
}

/// A NATS subject token: no separators, wildcards or whitespace.
fn subject_token(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace()) {
        return Err(format!(
            "{what} `{value}` must not contain `.`, `*`, `>` or whitespace (it is a NATS subject token)"
        ));
    }
    Ok(())
}

fn subject_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("nats prefix is empty".to_owned());
    }
    for token in prefix.split('.') {
        subject_token("nats prefix token", token)
            .map_err(|e| format!("nats prefix `{prefix}`: {e}"))?;
    }
    Ok(())
}

/// Host names may be dotted (FQDN); subject tokens may not.
fn sanitize_token(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: AgentOptions,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli =
            Cli::try_parse_from(["drover-agent", "--artifacts", "file:///tmp/a", "--id", "a1"])
                .unwrap();
        let cfg = cli.opts.validate().unwrap();
        assert_eq!(cfg.id, "a1");
        assert_eq!(cfg.executors, vec![ExecutorKind::Process]);
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(cfg.kill_grace, Duration::from_secs(10));
        assert_eq!(cfg.nats_prefix, "drover");
        assert!(cfg.work_dir.is_absolute());
    }

    #[test]
    fn durations_and_lists_parse() {
        let cli = Cli::try_parse_from([
            "drover-agent",
            "--artifacts=file:///tmp/a",
            "--id=a1",
            "--heartbeat-interval=500ms",
            "--kill-grace=1m30s",
            "--executors=process,process",
            "--work-dir=rel/dir",
        ])
        .unwrap();
        let cfg = cli.opts.validate().unwrap();
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(cfg.kill_grace, Duration::from_secs(90));
        assert_eq!(cfg.executors, vec![ExecutorKind::Process]);
        assert!(cfg.work_dir.is_absolute() && cfg.work_dir.ends_with("rel/dir"));

        let err = Cli::try_parse_from(["drover-agent", "--artifacts=x", "--kill-grace=10"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("invalid duration `10`"), "{err}");
    }

    #[test]
    fn docker_is_refused_at_startup() {
        let mut opts = AgentOptions::new("nats://x", "file:///tmp/a");
        opts.id = Some("a1".into());
        opts.executors = vec!["process".into(), "docker".into()];
        let err = opts.validate().unwrap_err().to_string();
        assert!(
            err.contains("executor `docker` is not implemented"),
            "{err}"
        );
    }

    #[test]
    fn ids_and_prefixes_must_be_subject_tokens() {
        let mut opts = AgentOptions::new("nats://x", "file:///tmp/a");
        opts.id = Some("gpu.node.1".into());
        let err = opts.validate().unwrap_err().to_string();
        assert!(
            err.contains("agent id `gpu.node.1` must not contain"),
            "{err}"
        );

        opts.id = Some("a1".into());
        opts.nats_prefix = "t.>".into();
        assert!(opts.validate().is_err());
        opts.nats_prefix = "t.1".into();
        assert!(opts.validate().is_ok());
    }

    #[test]
    fn default_id_is_the_sanitized_host_name() {
        assert_eq!(sanitize_token("gpu1.example.com"), "gpu1-example-com");
        let cfg = AgentOptions::new("nats://x", "file:///tmp/a")
            .validate()
            .unwrap();
        assert!(!cfg.id.is_empty() && !cfg.id.contains('.'));
    }
}
