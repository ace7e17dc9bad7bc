//! `drover-scheduler` options: defaults, then `DROVER_*` environment, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_scheduler_core::placement::Strategy;

/// Parses "10s", "500ms", "1h30m" into a Duration (clap value parser).
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    drover_api::duration::parse(s)
}

/// `--events-replicas`: JetStream keeps 1 to 5 copies of a stream.
pub fn replicas_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err(format!("`{s}` is not a number of replicas from 1 to 5")),
    }
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
    /// etcd endpoints, comma-separated: the members of one etcd cluster
    /// (the client moves to another when one dies).
    #[arg(
        long,
        env = "DROVER_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// NATS server URL(s), comma-separated: servers of one NATS cluster.
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
    /// Copies of the events stream the NATS cluster keeps (1 to 5): 3 on a
    /// cluster of 3 or more, so an acknowledged event survives losing a
    /// server. Changing it updates the existing stream.
    #[arg(long, env = "DROVER_EVENTS_REPLICAS", default_value_t = 1, value_parser = replicas_arg)]
    pub events_replicas: usize,
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
    /// This scheduler's name among several sharing --etcd and --prefix
    /// [default: hostname-pid].
    #[arg(long, env = "DROVER_SCHEDULER_ID")]
    pub id: Option<String>,
    /// The address clients are sent to when this scheduler leads (a
    /// standby answers with it) [default: http(s)://LISTEN, the hostname
    /// when --listen is 0.0.0.0 or ::].
    #[arg(long, env = "DROVER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The leader's lease in etcd: a leader that dies is replaced within
    /// about this long (etcd counts whole seconds, at least 2 s).
    #[arg(long, env = "DROVER_LEADER_LEASE", default_value = "3s", value_parser = duration_arg)]
    pub leader_lease: Duration,
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
pub struct ApiSecurityOptions {
    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", env = "DROVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", env = "DROVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Also require a client certificate signed by this CA (mutual TLS).
    #[arg(long, value_name = "PEM", env = "DROVER_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// `tokens`: every call needs `authorization: Bearer <token>`; `none`:
    /// anyone who reaches the port may do anything [default: none on a
    /// loopback --listen, tokens otherwise].
    #[arg(long, value_enum, env = "DROVER_AUTH")]
    pub auth: Option<AuthMode>,
    /// At start, if no admin token exists, create one and write it to FILE
    /// (mode 0600).
    #[arg(long, value_name = "FILE", env = "DROVER_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Serve a non-loopback --listen without TLS or without tokens anyway.
    #[arg(long, env = "DROVER_INSECURE")]
    pub insecure: bool,
}

/// How API callers are authenticated.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone who reaches the port may do anything.
    None,
    /// Bearer tokens with roles (`drover token create`).
    Tokens,
}

impl ApiSecurityOptions {
    /// `--auth`, or its default for `listen`: none on loopback, tokens elsewhere.
    pub fn auth_mode(&self, listen: SocketAddr) -> AuthMode {
        self.auth.unwrap_or(if listen.ip().is_loopback() {
            AuthMode::None
        } else {
            AuthMode::Tokens
        })
    }

    /// Whether the API is served over TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Flags that need each other, and the refusal to serve an open API off
    /// loopback (unless --insecure).
    pub fn validate(&self, listen: SocketAddr) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
            _ => {}
        }
        if self.client_ca.is_some() && !self.tls() {
            return Err("--client-ca needs --tls-cert and --tls-key".into());
        }
        let tokens = self.auth_mode(listen) == AuthMode::Tokens;
        if self.bootstrap_token_file.is_some() && !tokens {
            return Err("--bootstrap-token-file needs --auth tokens".into());
        }
        if listen.ip().is_loopback() || self.insecure || (self.tls() && tokens) {
            return Ok(());
        }
        let (missing, add) = match (self.tls(), tokens) {
            (false, false) => (
                "TLS and tokens",
                "add --tls-cert and --tls-key and drop --auth none",
            ),
            (false, true) => ("TLS", "add --tls-cert and --tls-key"),
            _ => ("tokens", "drop --auth none (tokens are the default here)"),
        };
        Err(format!(
            "refusing to serve the API on {listen} without {missing}: {add}, or pass --insecure to serve it open anyway"
        ))
    }
}

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
pub struct EtcdSecurityOptions {
    /// CA certificate (PEM) etcd's server certificate is checked against;
    /// needed for `https://` endpoints.
    #[arg(long, env = "DROVER_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd started with
    /// `--client-cert-auth`; with --etcd-key.
    #[arg(long, env = "DROVER_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "DROVER_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, for an etcd with authentication enabled (see README for a
    /// role limited to --prefix).
    #[arg(long, env = "DROVER_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// The etcd user's password; prefer DROVER_ETCD_PASSWORD or the config
    /// file to the command line, which other users of the machine can read.
    #[arg(long, env = "DROVER_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

impl EtcdSecurityOptions {
    /// The client options these flags ask for, certificates read; an error
    /// names the flag at fault.
    pub fn connect_options(
        &self,
        endpoints: &[String],
    ) -> Result<Option<etcd_client::ConnectOptions>, String> {
        let tls = endpoints.iter().any(|e| e.starts_with("https://"));
        if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
            if tls || self.etcd_ca.is_some() || self.etcd_cert.is_some() {
                return Err(format!(
                    "--etcd: `{plain}` is not https:// while TLS is asked for (--etcd-ca/--etcd-cert or another https:// endpoint); use https:// for every endpoint"
                ));
            }
        }
        let mut options = etcd_client::ConnectOptions::new();
        if tls {
            let read = |flag: &str, path: &PathBuf| {
                std::fs::read(path).map_err(|e| format!("{flag}: reading {}: {e}", path.display()))
            };
            let Some(ca) = &self.etcd_ca else {
                return Err("--etcd-ca: needed for https:// endpoints (the CA that signed etcd's certificate)".into());
            };
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("--etcd-ca", ca)?));
            match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => {
                    config = config.identity(etcd_client::Identity::from_pem(
                        read("--etcd-cert", cert)?,
                        read("--etcd-key", key)?,
                    ));
                }
                (None, None) => {}
                (Some(_), None) => return Err("--etcd-cert: needs --etcd-key".into()),
                (None, Some(_)) => return Err("--etcd-key: needs --etcd-cert".into()),
            }
            options = options.with_tls(config);
        }
        match (&self.etcd_user, &self.etcd_password) {
            (Some(user), Some(password)) => {
                options = options
                    .with_user(user.as_str(), password.as_str())
                    .with_auto_token_refresh(true);
            }
            (None, None) => {}
            (Some(user), None) => {
                return Err(format!(
                    "--etcd-user `{user}`: needs --etcd-password (or DROVER_ETCD_PASSWORD)"
                ))
            }
            (None, Some(_)) => return Err("--etcd-password: needs --etcd-user".into()),
        }
        let secured = tls || self.etcd_user.is_some();
        Ok(secured.then_some(options))
    }
}

impl SchedulerOptions {
    /// The defaults of every other flag, for a scheduler embedded in
    /// another program (`drover dev`, tests) on these servers.
    pub fn embedded(
        listen: SocketAddr,
        etcd: &str,
        nats: &str,
        prefix: &str,
        artifacts: String,
    ) -> Self {
        Self {
            listen,
            etcd: vec![etcd.to_owned()],
            nats: nats.to_owned(),
            prefix: prefix.to_owned(),
            artifacts,
            nats_prefix: drover_api::naming::DEFAULT_NATS_PREFIX.into(),
            events_replicas: 1,
            agent_timeout: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(10),
            preemption_grace: Duration::from_secs(10),
            placement: Strategy::default(),
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
            pass_depth: DEFAULT_PASS_DEPTH,
            cache_ttl: DEFAULT_CACHE_TTL,
            id: None,
            advertise: None,
            leader_lease: Duration::from_secs(3),
            metrics_listen: None,
            api_security: ApiSecurityOptions::default(),
            nats_security: NatsSecurityOptions::default(),
            etcd_security: EtcdSecurityOptions::default(),
        }
    }

    /// `--id`, or this machine's hostname and the process id.
    pub fn scheduler_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "scheduler".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// `--advertise`, or the address `listen` (the bound address) is reached at.
    pub fn advertised(&self, listen: SocketAddr) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        let scheme = match self.api_security.tls_cert {
            Some(_) => "https",
            None => "http",
        };
        if listen.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("{scheme}://{host}:{}", listen.port())
        } else {
            format!("{scheme}://{listen}")
        }
    }

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
        if self.leader_lease < Duration::from_secs(2) {
            return Err(format!(
                "--leader-lease: {:?} is under etcd's shortest lease, 2s",
                self.leader_lease
            ));
        }
        if self.etcd.is_empty() {
            return Err("--etcd: at least one endpoint is needed".into());
        }
        self.api_security.validate(self.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(f: impl FnOnce(&mut ApiSecurityOptions)) -> ApiSecurityOptions {
        let mut o = ApiSecurityOptions::default();
        f(&mut o);
        o
    }

    const LOOPBACK: &str = "127.0.0.1:7070";
    const ANY: &str = "0.0.0.0:7070";

    fn check(o: &ApiSecurityOptions, listen: &str) -> Result<(), String> {
        o.validate(
            listen
                .parse()
                .map_err(|e| format!("test address {listen}: {e}"))?,
        )
    }

    fn tls(o: &mut ApiSecurityOptions) {
        o.tls_cert = Some("server.pem".into());
        o.tls_key = Some("server-key.pem".into());
    }

    #[test]
    fn events_replicas_are_one_to_five() {
        assert_eq!(replicas_arg("3"), Ok(3));
        for bad in ["0", "6", "three"] {
            assert!(replicas_arg(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn auth_defaults_to_none_on_loopback_and_tokens_elsewhere(
    ) -> Result<(), std::net::AddrParseError> {
        let o = ApiSecurityOptions::default();
        assert_eq!(o.auth_mode(LOOPBACK.parse()?), AuthMode::None);
        assert_eq!(o.auth_mode("[::1]:7070".parse()?), AuthMode::None);
        assert_eq!(o.auth_mode(ANY.parse()?), AuthMode::Tokens);
        let o = api(|o| o.auth = Some(AuthMode::Tokens));
        assert_eq!(o.auth_mode(LOOPBACK.parse()?), AuthMode::Tokens);
        Ok(())
    }

    #[test]
    fn loopback_needs_nothing_and_elsewhere_needs_tls_and_tokens_or_insecure() {
        assert_eq!(check(&ApiSecurityOptions::default(), LOOPBACK), Ok(()));
        assert_eq!(
            check(&ApiSecurityOptions::default(), ANY),
            Err("refusing to serve the API on 0.0.0.0:7070 without TLS: add --tls-cert and --tls-key, or pass --insecure to serve it open anyway".into())
        );
        assert_eq!(check(&api(tls), ANY), Ok(()));
        let open = api(|o| {
            tls(o);
            o.auth = Some(AuthMode::None);
        });
        assert!(check(&open, ANY).unwrap_err().contains("without tokens"));
        let neither = api(|o| o.auth = Some(AuthMode::None));
        assert!(check(&neither, ANY)
            .unwrap_err()
            .contains("without TLS and tokens"));
        assert_eq!(check(&api(|o| o.insecure = true), ANY), Ok(()));
    }

    #[test]
    fn flags_that_need_each_other_are_named() {
        let cert_only = api(|o| o.tls_cert = Some("c".into()));
        assert_eq!(
            check(&cert_only, LOOPBACK),
            Err("--tls-cert needs --tls-key".into())
        );
        let key_only = api(|o| o.tls_key = Some("k".into()));
        assert_eq!(
            check(&key_only, LOOPBACK),
            Err("--tls-key needs --tls-cert".into())
        );
        let ca_only = api(|o| o.client_ca = Some("ca".into()));
        assert!(check(&ca_only, LOOPBACK)
            .unwrap_err()
            .starts_with("--client-ca needs"));
        let bootstrap = api(|o| o.bootstrap_token_file = Some("t".into()));
        assert_eq!(
            check(&bootstrap, LOOPBACK),
            Err("--bootstrap-token-file needs --auth tokens".into())
        );
    }
}
