//! `drover-scheduler` options: defaults, then `DROVER_*` environment, then flags.

use std::net::SocketAddr;
use std::time::Duration;

use drover_scheduler_core::placement::Strategy;

/// Parses "10s", "500ms", "1h30m" into a Duration (clap value parser).
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    drover_api::duration::parse(s)
}

/// `--cache-ttl`'s default (as its flag writes it: 30d).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `--pass-depth`'s default.
pub const DEFAULT_PASS_DEPTH: u32 = 4096;

/// `--max-spec-bytes`' default, 64Mi.
pub const DEFAULT_MAX_SPEC_BYTES: u64 = 64 << 20;

/// `--max-code-bytes`' default, 256Mi.
pub const DEFAULT_MAX_CODE_BYTES: u64 = 256 << 20;

fn bytes_arg(s: &str) -> Result<u64, String> {
    drover_api::spec::parse_memory(s)
}

fn placement_arg(s: &str) -> Result<Strategy, String> {
    match s {
        "binpack" => Ok(Strategy::BinPack),
        "spread" => Ok(Strategy::Spread),
        other => Err(format!("`{other}`: expected binpack or spread")),
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct SchedulerOptions {
    /// gRPC listen address.
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "DROVER_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// NATS server URL.
    #[arg(long, env = "DROVER_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// etcd key prefix for all of this scheduler's state.
    #[arg(long, env = "DROVER_PREFIX", default_value = "/drover")]
    pub prefix: String,
    /// Artifact store URL (file:///dir, s3://bucket/path, ...); logs are read from it.
    #[arg(long, env = "DROVER_ARTIFACTS")]
    pub artifacts: String,
    /// Prefix of every NATS subject and of the events stream name.
    #[arg(long, env = "DROVER_NATS_PREFIX", default_value = drover_api::naming::DEFAULT_NATS_PREFIX)]
    pub nats_prefix: String,
    /// An agent silent for this long gets no new work.
    #[arg(long, env = "DROVER_AGENT_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub agent_timeout: Duration,
    /// How tasks are spread over agents: `binpack` fills busy machines first
    /// (keeps whole GPU machines free for big jobs), `spread` evens the load.
    #[arg(long, env = "DROVER_PLACEMENT", default_value = "binpack", value_parser = placement_arg)]
    pub placement: Strategy,
    /// How long a preempted task gets between SIGTERM and SIGKILL (to checkpoint).
    #[arg(long, env = "DROVER_PREEMPTION_GRACE", default_value = "30s", value_parser = duration_arg)]
    pub preemption_grace: Duration,
    /// Largest pipeline accepted, as its encoded spec (e.g. 64Mi; a
    /// 100,000-task pipeline is a few MiB). The spec is stored in 1 MiB
    /// chunks, so this is not bound by etcd's request limit.
    #[arg(long, env = "DROVER_MAX_SPEC_BYTES", default_value_t = DEFAULT_MAX_SPEC_BYTES, value_parser = bytes_arg)]
    pub max_spec_bytes: u64,
    /// Largest code snapshot (`code:` packed as a tar) accepted, e.g. 256Mi.
    /// The scheduler holds one upload in memory while it checks its sha256.
    #[arg(long, env = "DROVER_MAX_CODE_BYTES", default_value_t = DEFAULT_MAX_CODE_BYTES, value_parser = bytes_arg)]
    pub max_code_bytes: u64,
    /// How many Ready tasks of each queue a full admission pass looks at, in
    /// queue order (like Slurm's default_queue_depth); the rest keep their
    /// places and wait. Full passes run at most every 250 ms; the turns
    /// between look at the first 256 only. Bounds a turn's cost with a huge backlog.
    #[arg(long, env = "DROVER_PASS_DEPTH", default_value_t = DEFAULT_PASS_DEPTH, value_parser = clap::value_parser!(u32).range(1..))]
    pub pass_depth: u32,
    /// How long a step-cache entry is kept (results older than this are
    /// run again); a task's `cache: {max_age}` can only ask for less.
    #[arg(long, env = "DROVER_CACHE_TTL", default_value = "30d", value_parser = duration_arg)]
    pub cache_ttl: Duration,
    /// How long a cancelled task gets between SIGTERM and SIGKILL.
    #[arg(long, env = "DROVER_CANCEL_GRACE", default_value = "10s", value_parser = duration_arg)]
    pub cancel_grace: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:7071) [default: off].
    #[arg(long, value_name = "ADDR", env = "DROVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub api_security: ApiSecurityOptions,
    #[command(flatten)]
    pub nats_security: NatsSecurityOptions,
    #[command(flatten)]
    pub etcd_security: EtcdSecurityOptions,
}

/// Who may reach the gRPC API and how: TLS and tokens.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ApiSecurityOptions {}

/// The scheduler's own NATS identity and NATS over TLS.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NatsSecurityOptions {
    /// The scheduler's NATS identity: an NKey seed file (`drover-scheduler
    /// nats-identity --out FILE` makes one) or a `.creds` file. Its public
    /// key goes into `drover nats-config`'s block [default: none].
    #[arg(long, value_name = "FILE", env = "DROVER_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of a NATS server over TLS (`tls://` URLs)
    /// [default: the system's roots].
    #[arg(long, value_name = "FILE", env = "DROVER_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
}

impl NatsSecurityOptions {
    pub fn identity(&self) -> drover_api::nats_connect::NatsIdentity {
        drover_api::nats_connect::NatsIdentity {
            creds: self.nats_creds.clone(),
            ca: self.nats_ca.clone(),
        }
    }

    /// The public key of `--nats-creds`' NKey seed; None without one, or
    /// for a `.creds` file (its permissions come from its JWT, not this block).
    pub fn public_key(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.nats_creds else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--nats-creds `{}`: {e}", path.display()))?;
        if text.contains("BEGIN NATS USER JWT") {
            return Ok(None);
        }
        let seed = drover_api::nats_connect::parse_seed(&text)
            .map_err(|e| format!("--nats-creds `{}`: {e}", path.display()))?;
        drover_api::nats_connect::public_key(&seed).map(Some)
    }
}

/// etcd over TLS and etcd users.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EtcdSecurityOptions {}

impl SchedulerOptions {
    /// Checks what clap cannot: a prefix etcd keys can hang off.
    pub fn validate(&self) -> Result<(), String> {
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(format!(
                "--prefix: `{}` must start with `/` and not end with one (e.g. /drover)",
                self.prefix
            ));
        }
        if self.nats_prefix.is_empty()
            || !self
                .nats_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "--nats-prefix: `{}` must be letters, digits, `-`, `_` or `.`",
                self.nats_prefix
            ));
        }
        if self.etcd.is_empty() {
            return Err("--etcd: at least one endpoint is needed".into());
        }
        Ok(())
    }
}
