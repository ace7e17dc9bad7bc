//! One way to the scheduler for every command: the channel (TLS when the
//! server is `https://`, with `--ca` and, for mutual TLS, `--cert`/`--key`)
//! and an interceptor that adds the bearer token (`DROVER_TOKEN` or
//! `--token-file`) and the current span's `traceparent` to each call.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use drover_api::pb::agents_client::AgentsClient;
use drover_api::pb::queues_client::QueuesClient;
use drover_api::pb::scheduler_client::SchedulerClient;
use drover_api::pb::tokens_client::TokensClient;

/// The global flags that say where the scheduler is and how to reach it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Scheduler gRPC address (`https://…` for TLS).
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

fn tls(args: &ConnectArgs) -> Result<Option<ClientTlsConfig>> {
    let https = args.server.starts_with("https://");
    if !https {
        for (flag, given) in [("--ca", args.ca.is_some()), ("--cert", args.cert.is_some())] {
            if given {
                bail!("{flag} needs an https:// --server (got `{}`)", args.server);
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

async fn channel(args: &ConnectArgs) -> Result<Channel> {
    let server = &args.server;
    let mut endpoint =
        Channel::from_shared(server.clone()).map_err(|e| anyhow!("--server `{server}`: {e}"))?;
    if let Some(tls) = tls(args)? {
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS settings for {server}"))?;
    }
    endpoint.connect().await.with_context(|| {
        format!("cannot reach the scheduler at {server} (set --server or DROVER_SERVER)")
    })
}

/// The channel with its token and trace interceptor, for any client.
pub async fn service(args: &ConnectArgs) -> Result<(Channel, Auth)> {
    let auth = Auth {
        bearer: bearer(args)?,
    };
    Ok((channel(args).await?, auth))
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

pub async fn tokens(args: &ConnectArgs) -> Result<TokensClient<Svc>> {
    let (channel, auth) = service(args).await?;
    Ok(TokensClient::with_interceptor(channel, auth))
}
