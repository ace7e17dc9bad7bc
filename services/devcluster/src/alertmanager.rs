//! A real Alertmanager for tests (see [`binary`] for where it is found) as
//! a child process on a free loopback port with its own temp dir,
//! clustering off, routing every alert to one webhook. Killed on drop.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::{free_port, spawn, wait_ready};

pub struct Alertmanager {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    _child: Child,
    dir: TempDir,
}

impl Alertmanager {
    /// Alerts grouped by `alertname`, sent to `webhook` at once
    /// (`group_wait: 0s`), changes within a second (`group_interval`),
    /// resolutions too; repeats only after an hour.
    pub async fn start(webhook: &str) -> Result<Self> {
        let binary = binary()?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_yaml(webhook))
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("alertmanager.log");
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // One instance: no gossip port.
            "--cluster.listen-address=".to_owned(),
            "--log.level=debug".to_owned(),
        ];
        let mut child = spawn(&binary, &args, &log, "prometheus-alertmanager")?;
        wait_ready(&mut child, "alertmanager", &log, || async move {
            matches!(request(port, "GET", "/-/ready", "").await, Ok((200, _)))
        })
        .await?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            _child: child,
            dir,
        })
    }

    /// Posts alerts (a JSON array, as Prometheus sends them) to `/api/v2/alerts`.
    pub async fn post_alerts(&self, alerts: &str) -> Result<()> {
        let (status, body) = request(self.port, "POST", "/api/v2/alerts", alerts).await?;
        if status != 200 {
            bail!("alertmanager answered {status}: {body}");
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

/// `$DROVER_ALERTMANAGER`, else `prometheus-alertmanager` (Debian's, as
/// `ops/install-deps.sh --with-garage` installs it) or `alertmanager` on `PATH`.
fn binary() -> Result<String> {
    if let Some(path) = std::env::var_os("DROVER_ALERTMANAGER") {
        return Ok(PathBuf::from(path).display().to_string());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .flat_map(|dir| ["prometheus-alertmanager", "alertmanager"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .context(
            "no alertmanager binary: set DROVER_ALERTMANAGER, or run \
             `ops/install-deps.sh --with-garage` (Debian's prometheus-alertmanager)",
        )
}

fn config_yaml(webhook: &str) -> String {
    format!(
        "route:\n  receiver: drover\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: drover\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
    )
}

/// One HTTP/1.1 request to the loopback `port`: status and body.
async fn request(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}
