//! `drover dev --secure`: the dev cluster set up as the README's "Running on
//! a real network" says, so a user can try it in one command:
//! - a CA under the data dir signs the certificate etcd, nats-server and the
//!   scheduler present;
//! - etcd runs on TLS with client certificates and a user limited to
//!   Drover's prefix;
//! - nats-server runs on TLS with one NKey per component and the subject
//!   permissions `drover nats-config` writes;
//! - the API is served over TLS with tokens; an admin token is written
//!   under the data dir.
//!
//! Secrets live under `<data dir>/secure` (mode 0600) and are reused on the
//! next start, so tokens and identities handed out stay valid.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use drover_api::nats_connect;
use drover_api::pb;
use drover_devcluster::etcd_auth::{self, EtcdUser};
use drover_devcluster::pki::DevPki;
use drover_devcluster::{NatsSettings, Server};
use drover_scheduler::options::{
    ApiSecurityOptions, AuthMode, EtcdSecurityOptions, NatsSecurityOptions,
};

/// The etcd user the dev scheduler connects as.
const ETCD_USER: &str = "drover";

pub struct Secure {
    pub pki: DevPki,
    dir: PathBuf,
}

impl Secure {
    /// The CA and certificates under `data_dir/secure`, made on first use.
    pub fn prepare(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("secure");
        let pki = DevPki::ensure(&dir.join("pki"))?;
        Ok(Self { pki, dir })
    }

    /// A secret kept in `name` under the secure dir: read, or made and
    /// written (mode 0600) on first use.
    fn secret(&self, name: &str) -> Result<String> {
        let path = self.dir.join(name);
        if let Ok(s) = std::fs::read_to_string(&path) {
            return Ok(s.trim().to_owned());
        }
        let secret = uuid::Uuid::new_v4().simple().to_string();
        nats_connect::write_secret(&path, &secret)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(secret)
    }

    /// etcd on TLS, its authentication enabled on first start.
    pub async fn etcd(&self, data_dir: &Path, prefix: &str) -> Result<(Server, EtcdUser)> {
        let etcd = Server::etcd_tls(Some(data_dir), &self.pki).await?;
        let user = EtcdUser {
            name: ETCD_USER.into(),
            password: self.secret("etcd-password")?,
            prefix: prefix.into(),
        };
        // Written once auth is on: etcd keeps it on across restarts.
        let marker = data_dir.join("auth-enabled");
        if !marker.exists() {
            let root = self.secret("etcd-root-password")?;
            etcd_auth::enable(&etcd.url, Some(&self.pki), &root, &user).await?;
            std::fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))?;
        }
        Ok((etcd, user))
    }

    /// The scheduler's etcd flags for `user`.
    pub fn etcd_options(&self, user: &EtcdUser) -> EtcdSecurityOptions {
        EtcdSecurityOptions {
            etcd_ca: Some(self.pki.ca()),
            etcd_cert: Some(self.pki.client_cert()),
            etcd_key: Some(self.pki.client_key()),
            etcd_user: Some(user.name.clone()),
            etcd_password: Some(user.password.clone()),
        }
    }

    /// An NKey seed file under the secure dir for `who`, made on first use;
    /// its path and public key.
    fn identity(&self, file: &str, who: &str) -> Result<(PathBuf, String)> {
        let path = self.dir.join(file);
        if !path.exists() {
            let (seed, _) = nats_connect::new_identity().map_err(anyhow::Error::msg)?;
            nats_connect::write_secret(&path, &nats_connect::seed_file(who, &seed))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let seed = nats_connect::parse_seed(&text).map_err(anyhow::Error::msg)?;
        let key = nats_connect::public_key(&seed).map_err(anyhow::Error::msg)?;
        Ok((path, key))
    }

    /// nats-server on TLS whose authorization admits the scheduler and
    /// `agent` (enrolled in etcd under `prefix`, as `drover agent enroll`
    /// does) plus every agent enrolled before; the scheduler's and the
    /// agent's NATS flags.
    pub async fn nats(
        &self,
        data_dir: &Path,
        etcd: (&Server, &EtcdSecurityOptions),
        (prefix, nats_prefix): (&str, &str),
        agent: &str,
        sync_always: bool,
    ) -> Result<(Server, NatsSecurityOptions, NatsSecurityOptions)> {
        let (scheduler_seed, scheduler_key) =
            self.identity("nats-scheduler.nk", "the drover scheduler")?;
        let (agent_seed, agent_key) =
            self.identity(&format!("nats-agent-{agent}.nk"), &format!("agent {agent}"))?;
        let endpoints = [etcd.0.url.clone()];
        let options = etcd
            .1
            .connect_options(&endpoints)
            .map_err(anyhow::Error::msg)?;
        let store =
            drover_scheduler::store::Store::connect_with(&endpoints, prefix, options).await?;
        let enrolled = pb::EnrolledAgent {
            agent_id: agent.to_owned(),
            public_key: agent_key,
            enrolled_at_ms: crate::now_ms(),
        };
        let same = store
            .list_enrolled_agents()
            .await?
            .iter()
            .any(|a| a.agent_id == enrolled.agent_id && a.public_key == enrolled.public_key);
        if !same {
            store.put_enrolled_agent(&enrolled, true).await?;
        }
        let agents = store.list_enrolled_agents().await?;
        let block = drover_scheduler::enroll::block(nats_prefix, &scheduler_key, &agents);
        let settings = NatsSettings {
            authorization: Some(block),
            tls: Some(&self.pki),
            sync_always,
        };
        let nats = Server::nats_with(Some(data_dir), &settings).await?;
        let ca = Some(self.pki.ca());
        let scheduler = NatsSecurityOptions {
            nats_creds: Some(scheduler_seed),
            nats_ca: ca.clone(),
        };
        let agent = NatsSecurityOptions {
            nats_creds: Some(agent_seed),
            nats_ca: ca,
        };
        Ok((nats, scheduler, agent))
    }

    /// The API over TLS with tokens; the first admin token goes to
    /// [`Secure::admin_token`].
    pub fn api_options(&self) -> ApiSecurityOptions {
        ApiSecurityOptions {
            tls_cert: Some(self.pki.server_cert()),
            tls_key: Some(self.pki.server_key()),
            auth: Some(AuthMode::Tokens),
            bootstrap_token_file: Some(self.admin_token()),
            ..Default::default()
        }
    }

    /// Where the admin token is.
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// What a shell needs to use the API: CA and token.
    pub fn client_env(&self) -> String {
        format!(
            "DROVER_CA={}\nDROVER_TOKEN_FILE={}\n",
            self.pki.ca().display(),
            self.admin_token().display()
        )
    }
}
