//! A private certificate authority for a dev or test cluster: one CA, a
//! server certificate for loopback (`localhost`, `127.0.0.1`) that etcd,
//! nats-server and the scheduler all present, and a client certificate for
//! mutual TLS. PEM files in one directory, created once and reused, so
//! `drover dev --secure` keeps its CA across restarts and a user can point
//! `--ca` at it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CN of the client certificate ([`DevPki::client_cert`]).
pub const CLIENT_NAME: &str = "drover-client";

const FILES: [&str; 5] = [
    "ca.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
];

/// The PEM files of a dev CA (see the module docs).
#[derive(Clone, Debug)]
pub struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    /// Uses the CA under `dir`, creating the directory and every file when
    /// any is missing. The CA's key is not kept: nothing is issued later.
    pub fn ensure(dir: &Path) -> Result<Self> {
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        if FILES.iter().all(|f| dir.join(f).is_file()) {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        pki.generate()?;
        Ok(pki)
    }

    /// The CA certificate every side trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// Client certificate with CN [`CLIENT_NAME`].
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    fn generate(&self) -> Result<()> {
        let (not_before, not_after) = validity()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Drover dev CA");
        ca.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        (ca.not_before, ca.not_after) = (not_before, not_after);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |cn: &str, names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usage;
            (params.not_before, params.not_after) = (not_before, not_after);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        // Servers also get ClientAuth: etcd and NATS peers dial each other
        // with the same certificate.
        let server = leaf(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let client = leaf(
            CLIENT_NAME,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        write(&self.ca(), &ca_cert.pem(), false)?;
        write(&self.server_cert(), &server.0, false)?;
        write(&self.server_key(), &server.1, true)?;
        write(&self.client_cert(), &client.0, false)?;
        write(&self.client_key(), &client.1, true)?;
        Ok(())
    }
}

/// From a day ago to ten years on: valid whatever the machine's small
/// clock skew, without a hard-coded date.
fn validity() -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(secs as i64).context("certificate validity")
    };
    Ok((
        at(now.saturating_sub(86_400))?,
        at(now + 10 * 365 * 86_400)?,
    ))
}

fn write(path: &Path, pem: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_created_once_and_keys_are_private() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let pki = DevPki::ensure(&dir.path().join("pki"))?;
        let ca = std::fs::read_to_string(pki.ca())?;
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(pki.server_key())?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second call keeps the CA: certificates handed out stay valid.
        let again = DevPki::ensure(&dir.path().join("pki"))?;
        assert_eq!(std::fs::read_to_string(again.ca())?, ca);
        Ok(())
    }
}
