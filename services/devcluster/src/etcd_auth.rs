//! Turning on etcd's authentication the way the README tells operators to:
//! a `root` user (etcd needs one before auth can be enabled) and a user whose
//! role may read and write only the keys under Drover's prefix.

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};

use crate::pki::DevPki;

/// An etcd user limited by its role to keys starting with `prefix` + `/`.
#[derive(Clone, Debug)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
    /// Drover's `--prefix` (e.g. `/drover`).
    pub prefix: String,
}

impl EtcdUser {
    /// The role etcd checks this user's requests against.
    pub fn role(&self) -> String {
        format!("{}-role", self.name)
    }
}

/// Connection options for a dev etcd: `pki`'s client certificate when the
/// server is on TLS, and `user` when given.
pub fn connect_options(pki: Option<&DevPki>, user: Option<(&str, &str)>) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new();
    if let Some(pki) = pki {
        let read = |p: std::path::PathBuf| {
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(pki.ca())?))
                .identity(Identity::from_pem(
                    read(pki.client_cert())?,
                    read(pki.client_key())?,
                )),
        );
    }
    if let Some((name, password)) = user {
        options = options
            .with_user(name, password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// Creates `root` (with `root_password`) and `user` with a role granting
/// read-write on `user.prefix/`, then enables authentication. Run once per
/// etcd: afterwards only `root` may change users.
pub async fn enable(
    url: &str,
    pki: Option<&DevPki>,
    root_password: &str,
    user: &EtcdUser,
) -> Result<()> {
    let mut client = Client::connect([url], Some(connect_options(pki, None)?))
        .await
        .with_context(|| format!("connecting to etcd at {url}"))?;
    let role = user.role();
    client
        .user_add("root", root_password, None)
        .await
        .context("etcd: adding user root")?;
    client
        .user_grant_role("root", "root")
        .await
        .context("etcd: granting root")?;
    client
        .role_add(role.as_str())
        .await
        .with_context(|| format!("etcd: adding role {role}"))?;
    client
        .role_grant_permission(
            role.as_str(),
            Permission::read_write(format!("{}/", user.prefix)).with_prefix(),
        )
        .await
        .with_context(|| format!("etcd: granting {role} {}/", user.prefix))?;
    client
        .user_add(user.name.as_str(), user.password.as_str(), None)
        .await
        .with_context(|| format!("etcd: adding user {}", user.name))?;
    client
        .user_grant_role(user.name.as_str(), role.as_str())
        .await
        .with_context(|| format!("etcd: granting {role} to {}", user.name))?;
    client.auth_enable().await.context("etcd: enabling auth")?;
    Ok(())
}
