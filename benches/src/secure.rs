//! A benchmark cluster secured as the README's "Running on a real network"
//! says: etcd on TLS with client certificates and a user limited to the
//! prefix, nats-server on TLS with one NKey per component and subject
//! permissions, the API on TLS with a bearer token. What the bench's own
//! clients need to reach it (a token, an observer's NATS identity allowed to
//! read every subject) is here too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use drover_api::nats_auth::{self, Permissions};
use drover_api::nats_connect::{self, NatsIdentity};
use drover_devcluster::etcd_auth::{self, EtcdUser};
use drover_devcluster::pki::DevPki;
use drover_devcluster::{NatsSettings, Server};

use crate::floors::{self, Transport};

const ETCD_PASSWORD: &str = "bench-password";

pub struct Security {
    pub pki: DevPki,
    dir: PathBuf,
    scheduler_key: String,
    observer_key: String,
    /// Every agent's (id, public key), for the authorization block.
    agents: Vec<(String, String)>,
}

/// Adds the API token (when there is one) to every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

fn identity(path: &Path, who: &str) -> Result<String> {
    let (seed, key) = nats_connect::new_identity().map_err(anyhow::Error::msg)?;
    nats_connect::write_secret(path, &nats_connect::seed_file(who, &seed))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

impl Security {
    /// A CA and the scheduler's and observer's NATS identities under `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            pki: DevPki::ensure(&dir.join("pki"))?,
            scheduler_key: identity(&dir.join("scheduler.nk"), "the drover scheduler")?,
            observer_key: identity(&dir.join("observer.nk"), "the bench's observer")?,
            dir: dir.to_owned(),
            agents: Vec::new(),
        })
    }

    /// etcd on TLS with its authentication on, the scheduler's user limited
    /// to `prefix`.
    pub async fn etcd(&self, data_dir: &Path, prefix: &str) -> Result<Server> {
        let etcd = Server::etcd_tls(Some(data_dir), &self.pki).await?;
        let user = EtcdUser {
            name: "drover".into(),
            password: ETCD_PASSWORD.into(),
            prefix: prefix.into(),
        };
        etcd_auth::enable(&etcd.url, Some(&self.pki), "root-password", &user).await?;
        Ok(etcd)
    }

    /// nats-server's authorization: the scheduler, the agents so far, and
    /// the observer (subscribes to anything, publishes only to its inbox).
    pub fn authorization(&self, nats_prefix: &str) -> String {
        let agents = self
            .agents
            .iter()
            .map(|(id, key)| (id.as_str(), key.as_str()));
        let block = nats_auth::authorization_block(nats_prefix, &self.scheduler_key, agents);
        let observer = Permissions {
            publish: vec![format!("{}.>", observer_inbox(nats_prefix))],
            subscribe: vec![">".into()],
            allow_responses: false,
        };
        let entry = nats_auth::user_entry("the bench's observer", &self.observer_key, &observer);
        match block.rfind("  ]\n}") {
            Some(end) => format!("{}{entry}{}", &block[..end], &block[end..]),
            None => block,
        }
    }

    /// nats-server on TLS with [`Security::authorization`].
    pub async fn nats(
        &self,
        data_dir: &Path,
        nats_prefix: &str,
        sync_always: bool,
    ) -> Result<Server> {
        let settings = NatsSettings {
            authorization: Some(self.authorization(nats_prefix)),
            tls: Some(&self.pki),
            sync_always,
        };
        Server::nats_with(Some(data_dir), &settings).await
    }

    /// A new agent's identity, admitted by a reload of `nats`; its flags.
    pub async fn add_agent(
        &mut self,
        nats: &Server,
        nats_prefix: &str,
        id: &str,
    ) -> Result<Vec<String>> {
        let seed = self.dir.join(format!("agent-{id}.nk"));
        let key = identity(&seed, &format!("agent {id}"))?;
        self.agents.push((id.to_owned(), key));
        nats.reload_nats(Some(&self.authorization(nats_prefix)))
            .await?;
        Ok(self.nats_flags(&seed))
    }

    fn nats_flags(&self, seed: &Path) -> Vec<String> {
        vec![
            "--nats-creds".into(),
            seed.display().to_string(),
            "--nats-ca".into(),
            self.pki.ca().display().to_string(),
        ]
    }

    /// Where the scheduler writes the first admin token.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// The scheduler's flags (and environment) for all of it.
    pub fn scheduler_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        let path = |p: PathBuf| p.display().to_string();
        let mut args: Vec<String> = [
            "--etcd-ca",
            &path(self.pki.ca()),
            "--etcd-cert",
            &path(self.pki.client_cert()),
            "--etcd-key",
            &path(self.pki.client_key()),
            "--etcd-user",
            "drover",
            "--tls-cert",
            &path(self.pki.server_cert()),
            "--tls-key",
            &path(self.pki.server_key()),
            "--auth",
            "tokens",
            "--bootstrap-token-file",
            &path(self.token_file()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.nats_flags(&self.dir.join("scheduler.nk")));
        let env = vec![("DROVER_ETCD_PASSWORD".to_owned(), ETCD_PASSWORD.to_owned())];
        (args, env)
    }

    /// etcd client options of the scheduler's user.
    pub fn etcd_options(&self) -> Result<etcd_client::ConnectOptions> {
        etcd_auth::connect_options(Some(&self.pki), Some(("drover", ETCD_PASSWORD)))
    }

    /// TLS for the API, trusting the dev CA.
    pub fn api_tls(&self) -> Result<ClientTlsConfig> {
        let ca = std::fs::read(self.pki.ca())?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost"))
    }

    /// The admin token the scheduler wrote, as a header value.
    pub fn bearer(&self) -> Result<Bearer> {
        let token = std::fs::read_to_string(self.token_file())?;
        let value = format!("Bearer {}", token.trim()).parse()?;
        Ok(Bearer(Some(value)))
    }

    /// The observer's NATS connection options.
    pub fn observer(&self, nats_prefix: &str) -> Result<async_nats::ConnectOptions> {
        let identity = NatsIdentity {
            creds: Some(self.dir.join("observer.nk")),
            ca: Some(self.pki.ca()),
        };
        let (options, _) =
            nats_connect::options(&identity, "bench observer", &observer_inbox(nats_prefix))?;
        Ok(options)
    }
}

fn observer_inbox(nats_prefix: &str) -> String {
    format!("_INBOX.{nats_prefix}.observer")
}

/// A channel to the API at `server`, over TLS when `security` says.
pub async fn channel(server: &str, security: Option<&Security>) -> Result<Channel> {
    let mut endpoint = Channel::from_shared(server.to_owned())?;
    if let Some(s) = security {
        endpoint = endpoint.tls_config(s.api_tls()?)?;
    }
    Ok(endpoint.connect().await?)
}

/// What each request costs open, with TLS alone, with authentication
/// alone and with both ([`Transport::SIDES`], in that order).
pub type TransportSides = [Transport; 4];

/// Request latencies of etcd and NATS as the scheduler's and agents'
/// clients see them, `n` of each, on fresh servers under `dir`: open; on
/// TLS (etcd requiring client certificates, NATS over TLS); with
/// authentication (an etcd user limited to a prefix; NATS unchanged, its
/// NKeys cost only at connect); and both, as a secured cluster runs.
pub async fn transport_floors(dir: &Path, n: usize) -> Result<TransportSides> {
    let pki = DevPki::ensure(&dir.join("pki"))?;
    let mut sides = Vec::with_capacity(4);
    for (i, (tls, auth)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let tls = tls.then_some(&pki);
        let side = dir.join(format!("side-{i}"));
        let etcd = match tls {
            Some(pki) => Server::etcd_tls(Some(&side.join("etcd")), pki).await?,
            None => Server::etcd(Some(&side.join("etcd"))).await?,
        };
        let user = auth.then(|| EtcdUser {
            name: "drover".into(),
            password: ETCD_PASSWORD.into(),
            prefix: "/floor".into(),
        });
        if let Some(user) = &user {
            etcd_auth::enable(&etcd.url, tls, "root-password", user).await?;
        }
        let credentials = user
            .as_ref()
            .map(|u| (u.name.as_str(), u.password.as_str()));
        let options = etcd_auth::connect_options(tls, credentials)?;
        let mut client = etcd_client::Client::connect([&etcd.url], Some(options)).await?;
        let settings = NatsSettings {
            authorization: None,
            tls,
            sync_always: false,
        };
        let nats = Server::nats_with(Some(&side.join("nats")), &settings).await?;
        let (url, ca) = (nats.url.clone(), tls.map(DevPki::ca));
        let connect = move || {
            let (url, ca) = (url.clone(), ca.clone());
            async move {
                let mut options = async_nats::ConnectOptions::new();
                if let Some(ca) = ca {
                    options = options.add_root_certificates(ca);
                }
                Ok(options.connect(url).await?)
            }
        };
        sides.push(floors::transport(&mut client, connect, n).await?);
    }
    sides
        .try_into()
        .map_err(|_| anyhow::anyhow!("four sides were measured"))
}
