//! Command-line / environment options, and their validated form.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_api::naming::DEFAULT_NATS_PREFIX;
use drover_api::spec::{parse_cpu, parse_memory};
use drover_artifacts::{RetryPolicy, StoreOptions};

use crate::core::capacity::{self, CapacityConfig, CapacityRequest};
use crate::core::executor::{self, ExecutorKind};
use crate::core::gpu::{DEFAULT_SIMULATED_GPU_MEMORY, DEFAULT_SIMULATED_GPU_MODEL};
use crate::core::limits::{LogCap, TaskLimits, DEFAULT_MAX_LOG_BYTES};
use crate::shell::executor::docker::{self, DockerConfig};
use crate::shell::host;
use crate::AgentError;

/// How `drover-agent` is configured: flags, each with a `DROVER_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentOptions {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "DROVER_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,

    /// This agent's NATS identity: the NKey seed file `drover agent enroll`
    /// wrote (or a `.creds` file). The server's permissions then hold the
    /// agent to the subjects of the id it was enrolled as.
    #[arg(long, value_name = "FILE", env = "DROVER_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// CA certificate (PEM) of a NATS server over TLS (`tls://` URLs)
    /// [default: the system's roots].
    #[arg(long, value_name = "FILE", env = "DROVER_NATS_CA")]
    pub nats_ca: Option<PathBuf>,

    /// Object store for artifacts and logs: file:///dir, s3://bucket/prefix, gs://…, az://…
    /// (S3 credentials, endpoint and region from the AWS_* variables).
    #[arg(long, env = "DROVER_ARTIFACTS")]
    pub artifacts: String,

    /// How long one object-store request is retried (with exponential
    /// backoff) while the store is unreachable or answers 5xx, before the
    /// attempt that needs it fails (e.g. 3m, 30s).
    #[arg(long, env = "DROVER_ARTIFACTS_RETRY_TIMEOUT", default_value = "3m", value_parser = duration_arg)]
    pub artifacts_retry_timeout: Duration,

    /// Most retries of one object-store request within --artifacts-retry-timeout.
    #[arg(long, env = "DROVER_ARTIFACTS_MAX_RETRIES", default_value_t = RetryPolicy::DEFAULT_MAX_RETRIES)]
    pub artifacts_max_retries: usize,

    /// Object-store settings over those of the environment (`AWS_ENDPOINT`,
    /// …), for an agent embedded in another program (tests, `drover dev`).
    #[arg(skip)]
    pub artifacts_settings: Vec<(String, String)>,

    /// This agent's id in subjects and heartbeats [default: the host name, dots as dashes].
    #[arg(long, env = "DROVER_AGENT_ID")]
    pub id: Option<String>,

    /// Executors to offer, comma-separated: docker, process (tasks run as
    /// plain processes with the agent's rights: off unless named).
    #[arg(
        long,
        env = "DROVER_EXECUTORS",
        value_delimiter = ',',
        default_value = "docker"
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

    /// Docker Engine socket (docker executor).
    #[arg(long, env = "DROVER_DOCKER_HOST", default_value = docker::DEFAULT_HOST)]
    pub docker_host: String,

    /// Network of task containers: bridge, none, host, or a network's name.
    #[arg(long, env = "DROVER_DOCKER_NETWORK", default_value = "bridge")]
    pub docker_network: String,

    /// Longest an image pull may take before the attempt fails (e.g. 15m).
    #[arg(long, env = "DROVER_DOCKER_PULL_TIMEOUT", default_value = "15m", value_parser = duration_arg)]
    pub docker_pull_timeout: Duration,

    /// On shutdown, stop task containers and report their attempts failed,
    /// instead of leaving them running for the next agent start to adopt.
    #[arg(long, env = "DROVER_DOCKER_STOP_ON_SHUTDOWN")]
    pub docker_stop_on_shutdown: bool,

    /// CPUs to offer, fractions allowed (e.g. 4, 1.5, 500m); at most the
    /// machine's [default: every logical CPU].
    #[arg(long = "cpus", value_name = "CPUS", env = "DROVER_CPUS", value_parser = parse_cpu)]
    pub cpu_millis: Option<u32>,

    /// Memory to offer (e.g. 8Gi, 512Mi); at most the machine's [default: all of it].
    #[arg(long = "memory", value_name = "MEMORY", env = "DROVER_MEMORY", value_parser = parse_memory)]
    pub memory_bytes: Option<u64>,

    /// A label for tasks' node_selector, key=value; repeat the flag for
    /// several (comma-separated in DROVER_LABELS).
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        env = "DROVER_LABELS",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,

    /// Advertise this many simulated GPUs instead of the machine's (tests,
    /// demos): no device behind them, UUIDs start with GPU-SIMULATED-.
    #[arg(
        long,
        value_name = "N",
        env = "DROVER_SIMULATE_GPUS",
        default_value_t = 0
    )]
    pub simulate_gpus: u32,

    /// Model name of the simulated GPUs.
    #[arg(long, env = "DROVER_SIMULATE_GPU_MODEL", default_value = DEFAULT_SIMULATED_GPU_MODEL)]
    pub simulate_gpu_model: String,

    /// Memory of each simulated GPU (e.g. 80Gi).
    #[arg(
        long = "simulate-gpu-memory",
        value_name = "MEMORY",
        env = "DROVER_SIMULATE_GPU_MEMORY",
        default_value = "80Gi",
        value_parser = parse_memory
    )]
    pub simulate_gpu_memory_bytes: u64,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:7072) [default: off].
    #[arg(long, value_name = "ADDR", env = "DROVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Most of a task's output stored as its log (e.g. 64Mi): beyond it the
    /// first and last halves are kept, with a line saying what was dropped.
    #[arg(
        long,
        value_name = "BYTES",
        env = "DROVER_MAX_LOG_BYTES",
        default_value = "64Mi",
        value_parser = parse_memory
    )]
    pub max_log_bytes: u64,

    /// Largest declared output an attempt may upload (e.g. 10Gi): a larger
    /// one fails the attempt [default: no limit].
    #[arg(long, value_name = "BYTES", env = "DROVER_MAX_OUTPUT_BYTES", value_parser = parse_memory)]
    pub max_output_bytes: Option<u64>,

    /// Run each process task in a cgroup of its own (where the agent may
    /// create one), so daemons that leave its process group (`setsid`) die
    /// with the attempt. Off by default: moving each task into its cgroup
    /// costs a short task about a fifth of the agent's throughput (see
    /// README, "Runaway tasks").
    #[arg(
        long,
        env = "DROVER_TASK_CGROUPS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub task_cgroups: bool,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    drover_api::duration::parse(s)
}

/// [`AgentOptions`] after `validate`: every value usable as is.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub nats: String,
    pub nats_identity: drover_api::nats_connect::NatsIdentity,
    pub artifacts: String,
    pub store: StoreOptions,
    pub id: String,
    pub executors: Vec<ExecutorKind>,
    /// Absolute.
    pub work_dir: PathBuf,
    pub nats_prefix: String,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
    pub docker: DockerConfig,
    pub capacity: CapacityConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub limits: TaskLimits,
    /// Process attempts get cgroups (`--task-cgroups`).
    pub task_cgroups: bool,
}

impl AgentOptions {
    /// Options with defaults for everything but the artifact store; for
    /// embedding the agent (tests, `drover dev`).
    pub fn new(nats: impl Into<String>, artifacts: impl Into<String>) -> Self {
        AgentOptions {
            nats: nats.into(),
            nats_creds: None,
            nats_ca: None,
            artifacts: artifacts.into(),
            artifacts_retry_timeout: RetryPolicy::DEFAULT_TIMEOUT,
            artifacts_max_retries: RetryPolicy::DEFAULT_MAX_RETRIES,
            artifacts_settings: Vec::new(),
            id: None,
            executors: vec![ExecutorKind::Docker.name().to_owned()],
            work_dir: PathBuf::from("/var/lib/drover/work"),
            nats_prefix: DEFAULT_NATS_PREFIX.to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            kill_grace: Duration::from_secs(10),
            docker_host: docker::DEFAULT_HOST.to_owned(),
            docker_network: "bridge".to_owned(),
            docker_pull_timeout: Duration::from_secs(15 * 60),
            docker_stop_on_shutdown: false,
            cpu_millis: None,
            memory_bytes: None,
            labels: Vec::new(),
            simulate_gpus: 0,
            simulate_gpu_model: DEFAULT_SIMULATED_GPU_MODEL.to_owned(),
            simulate_gpu_memory_bytes: DEFAULT_SIMULATED_GPU_MEMORY,
            metrics_listen: None,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_output_bytes: None,
            task_cgroups: false,
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
        let docker = DockerConfig::new(
            &self.docker_host,
            &self.docker_network,
            self.docker_pull_timeout,
            self.docker_stop_on_shutdown,
        )
        .map_err(invalid)?;
        subject_prefix(&self.nats_prefix).map_err(invalid)?;
        let capacity = capacity::resolve(
            &CapacityRequest {
                cpu_millis: self.cpu_millis,
                memory_bytes: self.memory_bytes,
                labels: &self.labels,
                simulate_gpus: self.simulate_gpus,
                simulate_gpu_model: &self.simulate_gpu_model,
                simulate_gpu_memory_bytes: self.simulate_gpu_memory_bytes,
            },
            host::machine_capacity(),
        )
        .map_err(invalid)?;
        if self.artifacts.trim().is_empty() {
            return Err(invalid(
                "--artifacts (DROVER_ARTIFACTS) is empty".to_owned(),
            ));
        }
        if self.artifacts_retry_timeout.is_zero() {
            return Err(invalid(
                "--artifacts-retry-timeout must be more than 0".to_owned(),
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
            nats_identity: drover_api::nats_connect::NatsIdentity {
                creds: self.nats_creds.clone(),
                ca: self.nats_ca.clone(),
            },
            artifacts: self.artifacts.clone(),
            store: StoreOptions {
                settings: self.artifacts_settings.clone(),
                retry: RetryPolicy {
                    max_retries: self.artifacts_max_retries,
                    timeout: self.artifacts_retry_timeout,
                },
            },
            id,
            executors,
            work_dir,
            nats_prefix: self.nats_prefix.clone(),
            heartbeat_interval: self.heartbeat_interval,
            kill_grace: self.kill_grace,
            docker,
            capacity,
            metrics_listen: self.metrics_listen,
            limits: TaskLimits {
                log: LogCap::new(self.max_log_bytes),
                max_output_bytes: self.max_output_bytes,
            },
            task_cgroups: self.task_cgroups,
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
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: AgentOptions,
    }

    #[test]
    fn task_limits_default_to_a_64_mib_log_and_no_output_limit() -> TestResult {
        let args = ["drover-agent", "--artifacts", "file:///tmp/a", "--id", "a1"];
        let cfg = Cli::try_parse_from(args)?.opts.validate()?;
        assert_eq!(cfg.limits, TaskLimits::default());
        assert_eq!(cfg.limits.log.max_bytes(), 64 << 20);
        let limited =
            args.into_iter()
                .chain(["--max-log-bytes", "1Mi", "--max-output-bytes", "10Gi"]);
        let cfg = Cli::try_parse_from(limited)?.opts.validate()?;
        assert_eq!(cfg.limits.log.max_bytes(), 1 << 20);
        assert_eq!(cfg.limits.max_output_bytes, Some(10 << 30));
        assert!(!cfg.task_cgroups, "off unless turned on");
        let on = args.into_iter().chain(["--task-cgroups", "true"]);
        assert!(Cli::try_parse_from(on)?.opts.validate()?.task_cgroups);
        Ok(())
    }

    #[test]
    fn flags_parse_with_defaults() -> TestResult {
        let cli =
            Cli::try_parse_from(["drover-agent", "--artifacts", "file:///tmp/a", "--id", "a1"])?;
        let cfg = cli.opts.validate()?;
        assert_eq!(cfg.id, "a1");
        assert_eq!(cfg.executors, vec![ExecutorKind::Docker]);
        assert_eq!(cfg.docker.network, "bridge");
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(cfg.kill_grace, Duration::from_secs(10));
        assert_eq!(cfg.nats_prefix, "drover");
        assert!(cfg.work_dir.is_absolute());
        assert_eq!(cfg.store.retry, RetryPolicy::default());
        assert!(cfg.store.settings.is_empty());
        Ok(())
    }

    #[test]
    fn the_store_retry_window_parses_and_zero_is_refused() -> TestResult {
        let cli = Cli::try_parse_from([
            "drover-agent",
            "--artifacts=s3://bucket/prefix",
            "--id=a1",
            "--artifacts-retry-timeout=5s",
            "--artifacts-max-retries=40",
        ])?;
        let cfg = cli.opts.validate()?;
        let want = RetryPolicy {
            max_retries: 40,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(cfg.store.retry, want);

        let mut opts = cli.opts;
        opts.artifacts_retry_timeout = Duration::ZERO;
        let err = opts.validate().unwrap_err().to_string();
        assert!(
            err.contains("--artifacts-retry-timeout must be more than 0"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn durations_and_lists_parse() -> TestResult {
        let cli = Cli::try_parse_from([
            "drover-agent",
            "--artifacts=file:///tmp/a",
            "--id=a1",
            "--heartbeat-interval=500ms",
            "--kill-grace=1m30s",
            "--executors=process,process",
            "--work-dir=rel/dir",
        ])?;
        let cfg = cli.opts.validate()?;
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(cfg.kill_grace, Duration::from_secs(90));
        assert_eq!(cfg.executors, vec![ExecutorKind::Process]);
        assert!(cfg.work_dir.is_absolute() && cfg.work_dir.ends_with("rel/dir"));

        let err = Cli::try_parse_from(["drover-agent", "--artifacts=x", "--kill-grace=10"])
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains("invalid duration `10`"), "{err}");
        Ok(())
    }

    #[test]
    fn new_matches_the_flag_defaults() -> TestResult {
        let cli =
            Cli::try_parse_from(["drover-agent", "--artifacts", "file:///tmp/a", "--id", "a1"])?;
        let mut opts = AgentOptions::new(cli.opts.nats.clone(), "file:///tmp/a");
        opts.id = Some("a1".into());
        assert_eq!(format!("{:?}", opts), format!("{:?}", cli.opts));
        Ok(())
    }

    #[test]
    fn docker_flags_parse() -> TestResult {
        let cli = Cli::try_parse_from([
            "drover-agent",
            "--artifacts=file:///tmp/a",
            "--id=a1",
            "--docker-host=/run/user/1000/docker.sock",
            "--docker-network=none",
            "--docker-pull-timeout=90s",
            "--docker-stop-on-shutdown",
        ])?;
        let cfg = cli.opts.validate()?;
        assert_eq!(cfg.docker.socket, "/run/user/1000/docker.sock");
        assert_eq!(cfg.docker.network, "none");
        assert_eq!(cfg.docker.pull_timeout, Duration::from_secs(90));
        assert!(cfg.docker.stop_on_shutdown);
        Ok(())
    }

    #[test]
    fn unknown_executors_and_docker_options_are_refused() {
        let mut opts = AgentOptions::new("nats://x", "file:///tmp/a");
        opts.id = Some("a1".into());
        opts.executors = vec!["process".into(), "podman".into()];
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("unknown executor `podman`"), "{err}");

        opts.executors = vec!["docker".into()];
        opts.docker_host = "tcp://10.0.0.1:2375".into();
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("--docker-host"), "{err}");
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
    fn default_id_is_the_sanitized_host_name() -> TestResult {
        assert_eq!(sanitize_token("gpu1.example.com"), "gpu1-example-com");
        let cfg = AgentOptions::new("nats://x", "file:///tmp/a").validate()?;
        assert!(!cfg.id.is_empty() && !cfg.id.contains('.'));
        Ok(())
    }

    #[test]
    fn capacity_flags_parse() -> TestResult {
        use crate::core::gpu::GpuSource;
        let cli = Cli::try_parse_from([
            "drover-agent",
            "--artifacts=file:///tmp/a",
            "--id=a1",
            "--cpus=0.5",
            "--memory=256Mi",
            "--label=zone=a",
            "--label",
            "tier=gold",
            "--simulate-gpus=2",
            "--simulate-gpu-model=Simulated H100",
            "--simulate-gpu-memory=40Gi",
        ])?;
        assert_eq!(cli.opts.cpu_millis, Some(500));
        assert_eq!(cli.opts.memory_bytes, Some(256 << 20));
        let cfg = cli.opts.validate()?;
        assert_eq!(
            (cfg.capacity.cpu_millis, cfg.capacity.memory_bytes),
            (500, 256 << 20)
        );
        assert_eq!(
            cfg.capacity.labels.iter().collect::<Vec<_>>(),
            [
                (&"tier".to_owned(), &"gold".to_owned()),
                (&"zone".to_owned(), &"a".to_owned())
            ]
        );
        assert_eq!(
            cfg.capacity.gpus,
            GpuSource::Simulated {
                count: 2,
                model: "Simulated H100".into(),
                memory_bytes: 40 << 30
            }
        );

        // Defaults: the whole machine, NVML.
        let cfg = AgentOptions::new("nats://x", "file:///tmp/a").validate()?;
        assert_eq!(cfg.capacity.cpu_millis, host::machine_capacity().cpu_millis);
        assert_eq!(cfg.capacity.gpus, GpuSource::Nvml);
        assert!(cfg.capacity.labels.is_empty());
        Ok(())
    }

    #[test]
    fn capacity_flags_are_checked() -> TestResult {
        let err = Cli::try_parse_from(["drover-agent", "--artifacts=x", "--cpus=1.0005"])
            .err()
            .ok_or("accepted")?
            .to_string();
        assert!(err.contains("--cpus") && err.contains("1m"), "{err}");
        let err = Cli::try_parse_from(["drover-agent", "--artifacts=x", "--memory=lots"])
            .err()
            .ok_or("accepted")?
            .to_string();
        assert!(
            err.contains("--memory") && err.contains("invalid quantity"),
            "{err}"
        );

        let mut opts = AgentOptions::new("nats://x", "file:///tmp/a");
        opts.cpu_millis = Some(u32::MAX);
        let err = opts.validate().unwrap_err().to_string();
        assert!(
            err.contains("--cpus (DROVER_CPUS)") && err.contains("more than this machine"),
            "{err}"
        );
        opts.cpu_millis = None;
        opts.memory_bytes = Some(u64::MAX);
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("--memory (DROVER_MEMORY)"), "{err}");
        opts.memory_bytes = None;
        opts.labels = vec!["zone a".into()];
        let err = opts.validate().unwrap_err().to_string();
        assert!(
            err.contains("label `zone a`") && err.contains("key=value"),
            "{err}"
        );
        Ok(())
    }
}
