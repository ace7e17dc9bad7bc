//! The API's TLS: `--tls-cert`/`--tls-key`, and `--client-ca` for mutual TLS.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::{Result, SchedulerError};
use crate::options::ApiSecurityOptions;

fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| SchedulerError::Config(format!("{flag} {}: {e}", path.display())))
}

/// PEM that holds at least one certificate, checked here so that the
/// error names the flag.
fn certificates(flag: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = read(flag, path)?;
    let bad = |why: String| SchedulerError::Config(format!("{flag} {}: {why}", path.display()));
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(format!("unreadable PEM: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(bad("no certificate in this PEM file".into()));
    }
    Ok(pem)
}

/// The server's TLS settings, or None without `--tls-cert`.
pub fn server_config(opts: &ApiSecurityOptions) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) else {
        return Ok(None);
    };
    let cert_pem = certificates("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        SchedulerError::Config(format!("--tls-key {}: no private key: {e}", key.display()))
    })?;
    // The one TLS crypto of the tree; a no-op when already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    if let Some(ca) = &opts.client_ca {
        config = config.client_ca_root(Certificate::from_pem(certificates("--client-ca", ca)?));
    }
    Ok(Some(config))
}
