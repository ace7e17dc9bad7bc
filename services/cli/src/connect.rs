//! One way to the scheduler for every command: the channel (TLS when the
//! server is `https://`, with `--ca` and, for mutual TLS, `--cert`/`--key`)
//! and an interceptor that adds the bearer token (`DROVER_TOKEN` or
//! `--token-file`) and the current span's `traceparent` to each call.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

use drover_api::pb::agents_client::AgentsClient;
use drover_api::pb::cluster_client::ClusterClient;
use drover_api::pb::queues_client::QueuesClient;
use drover_api::pb::scheduler_client::SchedulerClient;
use drover_api::pb::tokens_client::TokensClient;

/// The global flags that say where the scheduler is and how to reach it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Scheduler gRPC address (`https://…` for TLS); several, comma-separated,
    /// for standby schedulers: commands go to whichever leads.
    #[arg(
        long,
        env = "DROVER_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// CA certificate (PEM) the scheduler's certificate is checked against
    /// [default: the system's roots].
    #[arg(long, value_name = "PEM", env = "DROVER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for a scheduler that requires one (mutual TLS).
    #[arg(long, value_name = "PEM", env = "DROVER_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", env = "DROVER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// File holding the API token (else the DROVER_TOKEN variable).
    #[arg(long, value_name = "FILE", env = "DROVER_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// Adds the token and the trace context to every call.
#[derive(Clone)]
pub struct Auth {
    bearer: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = drover_telemetry::propagation::grpc_interceptor(req)?;
        if let Some(bearer) = &self.bearer {
            req.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(req)
    }
}

/// The transport every client runs on.
pub type Svc = InterceptedService<Channel, Auth>;
/// A Scheduler client.
pub type Client = SchedulerClient<Svc>;

fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

/// The token, from `--token-file` or else `DROVER_TOKEN`, as a header value.
fn bearer(args: &ConnectArgs) -> Result<Option<MetadataValue<Ascii>>> {
    let (token, from) = match &args.token_file {
        Some(path) => {
            let text = read("--token-file", path)?;
            let text = String::from_utf8(text)
                .map_err(|_| anyhow!("--token-file {}: not a token", path.display()))?;
            (text, format!("--token-file {}", path.display()))
        }
        None => match std::env::var("DROVER_TOKEN") {
            Ok(t) => (t, "DROVER_TOKEN".to_string()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Ok(None);
    }
    format!("Bearer {token}")
        .parse()
        .map(Some)
        .map_err(|_| anyhow!("{from}: not a token (unexpected characters)"))
}

fn tls(args: &ConnectArgs, server: &str) -> Result<Option<ClientTlsConfig>> {
    let https = server.starts_with("https://");
    if !https {
        for (flag, given) in [("--ca", args.ca.is_some()), ("--cert", args.cert.is_some())] {
            if given {
                bail!("{flag} needs an https:// --server (got `{server}`)");
            }
        }
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    config = match &args.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read("--ca", ca)?)),
        None => config.with_native_roots(),
    };
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        (Some(_), None) => bail!("--cert needs --key"),
        (None, Some(_)) => bail!("--key needs --cert"),
        (None, None) => {}
    }
    Ok(Some(config))
}

/// How long a command waits for a leader while schedulers answer but none
/// leads (a failover: a leader's lease is 3 s by default).
const LEADER_WAIT: Duration = Duration::from_secs(30);

fn servers(args: &ConnectArgs) -> Vec<&str> {
    args.server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

async fn connect_to(args: &ConnectArgs, server: &str) -> Result<Channel> {
    let mut endpoint =
        Channel::from_shared(server.to_owned()).map_err(|e| anyhow!("--server `{server}`: {e}"))?;
    if let Some(tls) = tls(args, server)? {
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS settings for {server}"))?;
    }
    endpoint.connect().await.with_context(|| {
        format!("cannot reach the scheduler at {server} (set --server or DROVER_SERVER)")
    })
}

/// A channel to the first of `--server`'s schedulers that answers, leader
/// or not (`drover status`).
pub async fn any(args: &ConnectArgs) -> Result<Channel> {
    let mut last = None;
    for server in servers(args) {
        match connect_to(args, server).await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("--server: no address given")))
}

/// What one scheduler says about leadership.
enum Lead {
    /// It leads: use it.
    Here(Channel),
    /// A standby; the leader is there (None: none is elected yet).
    There(Option<String>),
    /// The scheduler refused to say (no or a bad token): waiting won't help.
    Refused(tonic::Status),
}

async fn lead(channel: Channel, auth: &Auth) -> Lead {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest {
        service: "drover.v1.Scheduler".into(),
    };
    match health.check(request).await {
        Ok(r) if r.get_ref().status() == ServingStatus::NotServing => {}
        // Serving, or a scheduler that does not say: calls will tell.
        _ => return Lead::Here(channel),
    }
    let mut cluster = ClusterClient::with_interceptor(channel, auth.clone());
    let status = cluster
        .get_cluster_status(drover_api::pb::GetClusterStatusRequest {})
        .await;
    let status = match status {
        Err(e) if matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied) => {
            return Lead::Refused(e);
        }
        other => other,
    };
    let leader = status.ok().and_then(|s| {
        let s = s.into_inner();
        s.schedulers
            .into_iter()
            .find(|m| m.id == s.leader_id)
            .map(|m| m.address)
    });
    Lead::There(leader)
}

/// A channel to the leader among `--server`'s schedulers (or the one it
/// names), waiting while a failover is under way. A lone unreachable
/// server fails at once.
async fn channel(args: &ConnectArgs, auth: &Auth) -> Result<Channel> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let mut last = None;
        let mut answered = false;
        for server in servers(args) {
            let channel = match connect_to(args, server).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            answered = true;
            match lead(channel, auth).await {
                Lead::Here(channel) => return Ok(channel),
                Lead::There(Some(leader)) if leader != server => {
                    if let Ok(channel) = connect_to(args, &leader).await {
                        if let Lead::Here(channel) = lead(channel, auth).await {
                            return Ok(channel);
                        }
                    }
                }
                Lead::There(_) => {}
                Lead::Refused(status) => return Err(status.into()),
            }
        }
        if !answered {
            return Err(last.unwrap_or_else(|| anyhow!("--server: no address given")));
        }
        if Instant::now() > deadline {
            bail!(
                "no scheduler at {} leads after {LEADER_WAIT:?} (a failover under way, or etcd unreachable?)",
                args.server
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The channel with its token and trace interceptor, for any client.
pub async fn service(args: &ConnectArgs) -> Result<(Channel, Auth)> {
    let auth = Auth {
        bearer: bearer(args)?,
    };
    Ok((channel(args, &auth).await?, auth))
}

pub async fn scheduler(args: &ConnectArgs) -> Result<Client> {
    let (channel, auth) = service(args).await?;
    // A run of 100,000 tasks is tens of MiB as one `Run` message.
    Ok(SchedulerClient::with_interceptor(channel, auth).max_decoding_message_size(512 << 20))
}

pub async fn agents(args: &ConnectArgs) -> Result<AgentsClient<Svc>> {
    let (channel, auth) = service(args).await?;
    Ok(AgentsClient::with_interceptor(channel, auth))
}

pub async fn queues(args: &ConnectArgs) -> Result<QueuesClient<Svc>> {
    let (channel, auth) = service(args).await?;
    Ok(QueuesClient::with_interceptor(channel, auth))
}

/// A Cluster client on any answering scheduler (`drover status`).
pub async fn cluster(args: &ConnectArgs) -> Result<ClusterClient<Svc>> {
    let auth = Auth {
        bearer: bearer(args)?,
    };
    Ok(ClusterClient::with_interceptor(any(args).await?, auth))
}

pub async fn tokens(args: &ConnectArgs) -> Result<TokensClient<Svc>> {
    let (channel, auth) = service(args).await?;
    Ok(TokensClient::with_interceptor(channel, auth))
}
