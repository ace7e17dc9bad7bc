//! A real S3 server for tests: a single-node Garage (a production S3 store
//! written in Rust) as a child process on free loopback ports with its own
//! temp dir, a bucket and a read/write key made by the harness, killed on
//! drop. It can be stopped and started again on the same ports and data,
//! like a store that goes away for a while.
//!
//! The binary is `$DROVER_GARAGE`, else `garage` on `PATH`, else where
//! `ops/install-deps.sh --with-garage` caches it
//! (`${XDG_CACHE_HOME:-$HOME/.cache}/drover/garage/bin/garage`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{free_port, spawn, START_TIMEOUT};

/// Garage checks request signatures against it; any name will do.
pub const REGION: &str = "garage";

/// A running (or stopped) single-node Garage with one bucket and one key.
pub struct Garage {
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl Garage {
    /// Starts Garage, applies a one-node layout, and creates `bucket` with a
    /// key that may read and write it.
    pub async fn start(bucket: &str) -> Result<Self> {
        let binary = binary()?;
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(&binary, bucket).await {
                Err(e) if tries < 5 && format!("{e:#}").contains("ddress already in use") => {
                    tracing::debug!(error = %e, "port taken while starting garage; trying others");
                }
                other => return other,
            }
        }
    }

    async fn start_once(binary: &Path, bucket: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (s3, rpc) = (free_port()?, free_port()?);
        let config = dir.path().join("garage.toml");
        std::fs::write(&config, config_toml(dir.path(), s3, rpc))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_owned(),
            // Garage's formats: `GK` and 12 bytes in hex; 32 bytes in hex.
            access_key_id: format!("GK{}", random_hex(12)),
            secret_access_key: random_hex(32),
            binary: binary.to_owned(),
            config,
            child: None,
            dir,
        };
        garage.run().await?;
        let node = garage.cli(&["node", "id", "-q"]).await?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        garage
            .cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
            .await?;
        garage.cli(&["layout", "apply", "--version", "1"]).await?;
        garage.cli(&["bucket", "create", bucket]).await?;
        let (id, secret) = (
            garage.access_key_id.clone(),
            garage.secret_access_key.clone(),
        );
        garage
            .cli(&["key", "import", "--yes", "-n", "drover", &id, &secret])
            .await?;
        garage
            .cli(&[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "drover",
            ])
            .await?;
        Ok(garage)
    }

    /// `s3://<bucket>/<prefix>` (no prefix when empty).
    pub fn url(&self, prefix: &str) -> String {
        match prefix {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    /// The `AWS_*` variables that reach this store with path-style requests.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The log Garage writes (every start appends to it).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    /// Kills the server (SIGKILL) and reaps it: the S3 port refuses
    /// connections until [`Garage::resume`].
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same ports and data.
    pub async fn resume(&mut self) -> Result<()> {
        if self.child.is_none() {
            self.run().await?;
        }
        Ok(())
    }

    /// Spawns `garage server` and waits until its S3 port and its RPC
    /// (what the CLI uses) answer.
    async fn run(&mut self) -> Result<()> {
        let log = self.log();
        let args = [
            "-c".to_owned(),
            self.config.to_string_lossy().into_owned(),
            "server".to_owned(),
        ];
        let mut child = spawn(
            &self.binary.to_string_lossy(),
            &args,
            &log,
            "garage (ops/install-deps.sh --with-garage)",
        )?;
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .context("no port in the endpoint")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("garage exited with {status} while starting:\n{tail}");
            }
            let listening = TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            if listening && self.cli(&["node", "id", "-q"]).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "garage not ready after {START_TIMEOUT:?} (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Runs `garage -c <config> <args>` against the running server; its stdout.
    async fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn")
            .output()
            .await
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "garage {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Where the `garage` binary is (see the module docs).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DROVER_GARAGE") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("garage"))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let cached = cache.map(|c| c.join("drover/garage/bin/garage"));
    match cached {
        Some(path) if path.is_file() => Ok(path),
        _ => bail!(
            "no garage binary: set DROVER_GARAGE, put `garage` on PATH, \
             or run `ops/install-deps.sh --with-garage`"
        ),
    }
}

/// One node, one copy of each block, no compression (test data is often
/// random), metadata in SQLite; the S3 API and RPC on loopback only.
fn config_toml(dir: &Path, s3: u16, rpc: u16) -> String {
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
allow_world_readable_secrets = true

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        secret = random_hex(32),
    )
}

/// `bytes` random bytes in lowercase hex.
fn random_hex(bytes: usize) -> String {
    use std::hash::BuildHasher;
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        // RandomState is seeded randomly per process and per call.
        let word = std::collections::hash_map::RandomState::new().hash_one(out.len());
        out.push_str(&format!("{word:016x}"));
    }
    out.truncate(bytes * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_the_length_asked_and_differs() {
        let (a, b) = (random_hex(12), random_hex(12));
        assert_eq!(a.len(), 24);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
