//! `drover dev --secure`: the dev cluster set up as the README's "Running on
//! a real network" says, so a user can try it in one command. A CA under the
//! data dir signs every server's certificate; etcd runs on TLS with client
//! certificates and a user limited to Drover's prefix. Secrets live under
//! `<data dir>/secure` (mode 0600) and are reused on the next start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use drover_devcluster::etcd_auth::{self, EtcdUser};
use drover_devcluster::pki::DevPki;
use drover_devcluster::Server;

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
        write_private(&path, &secret)?;
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
    pub fn etcd_options(&self, user: &EtcdUser) -> drover_scheduler::options::EtcdSecurityOptions {
        drover_scheduler::options::EtcdSecurityOptions {
            etcd_ca: Some(self.pki.ca()),
            etcd_cert: Some(self.pki.client_cert()),
            etcd_key: Some(self.pki.client_key()),
            etcd_user: Some(user.name.clone()),
            etcd_password: Some(user.password.clone()),
        }
    }
}

/// Writes `content` to `path`, readable by its owner only.
pub fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
