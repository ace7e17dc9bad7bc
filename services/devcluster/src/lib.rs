//! Real etcd and nats-server as child processes on free loopback ports, each
//! with its own data directory, killed when dropped. `drover dev` runs its
//! local cluster on these, and the integration tests use the same code
//! (and [`garage`], a real S3 server, for the tests of S3 stores).

pub mod alertmanager;
pub mod clusters;
pub mod docker;
pub mod etcd_auth;
pub mod garage;
pub mod pki;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports picked by [`free_port`]: below Linux's default ephemeral range
/// (32768-60999), where every outgoing connection takes its local port — a
/// port the OS had just handed us could be taken by one before the server
/// bound it (seen in CI as etcd's "address already in use").
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports this process has claimed: their lock files stay locked until it
/// exits, so parallel test processes never pick the same port.
static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// A random port nobody listens on right now and no other process using
/// this function has claimed (a lock file per port under
/// `$TMPDIR/drover-ports`, held until this process exits). A process that
/// does not take part can still bind it in the window before our server
/// does: the servers here start again on other ports when that happens.
pub fn free_port() -> Result<u16> {
    use std::hash::BuildHasher;
    let locks = std::env::temp_dir().join("drover-ports");
    std::fs::create_dir_all(&locks)?;
    for _ in 0..200 {
        // RandomState is seeded randomly per process and per call.
        let random = std::collections::hash_map::RandomState::new().hash_one(());
        let port = PORTS.start + (random % u64::from(PORTS.end - PORTS.start)) as u16;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(port.to_string()))?;
        if try_lock(&lock) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(lock);
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Takes `file`'s exclusive lock without waiting; false when another open
/// of it (in any process) holds it.
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns for the call; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// How many times a server is started on fresh ports when its port was taken.
const START_TRIES: usize = 5;

/// Runs `start` until it does not fail for a port taken under it.
async fn on_free_ports<T, F, Fut>(what: &str, mut start: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match start().await {
            Err(e)
                if tries < START_TRIES && format!("{e:#}").contains("address already in use") =>
            {
                tracing::debug!(server = what, error = %e, "port taken while starting; trying others");
            }
            other => return other,
        }
    }
}

/// Where a server keeps its data: a caller's directory, or a temp one removed on drop.
enum DataDir {
    Kept(PathBuf),
    Temp(TempDir),
}

impl DataDir {
    fn new(dir: Option<&Path>) -> Result<Self> {
        Ok(match dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                DataDir::Kept(d.to_path_buf())
            }
            None => DataDir::Temp(tempfile::tempdir()?),
        })
    }

    fn path(&self) -> &Path {
        match self {
            DataDir::Kept(p) => p,
            DataDir::Temp(t) => t.path(),
        }
    }
}

fn spawn(program: &str, args: &[String], log: &Path, package: &str) -> Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the
    // server if we die without running destructors (a killed test, Ctrl-\).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!("starting `{program}` (is it installed? Debian package `{package}`)")
    })
}

/// Waits until `probe` answers, or the child exits, or the timeout passes.
async fn wait_ready<F, Fut>(child: &mut Child, what: &str, log: &Path, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Answering, and still ours: a server that lost its port exits at
        // once, while another process's server on it would answer the probe.
        if probe().await && child.try_wait()?.is_none() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status} while starting:\n{tail}");
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not ready after {START_TIMEOUT:?} (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A server child process: killed when dropped, its data directory with it
/// unless the caller chose the directory.
pub struct Server {
    /// Client URL: `http://127.0.0.1:PORT` for etcd, `nats://127.0.0.1:PORT`
    /// for NATS (`tls://127.0.0.1:PORT` over TLS).
    pub url: String,
    child: Child,
    /// A nats-server's config file, when it was started from one.
    nats_config: Option<NatsConfig>,
    /// How to start it again on the same ports and data ([`Server::restart`]).
    relaunch: Option<Relaunch>,
    _dir: DataDir,
}

/// The command a [`Server`] was started with, and how to tell it is ready.
struct Relaunch {
    program: &'static str,
    args: Vec<String>,
    log: PathBuf,
    ready: Ready,
}

#[derive(Clone, Copy)]
enum Ready {
    /// etcd's /health on this port.
    Etcd(u16),
    /// nats-server's INFO greeting on this port.
    Nats(u16),
}

/// How [`Server::nats_with`] configures nats-server beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct NatsSettings<'a> {
    /// An `authorization { ... }` block (e.g. `drover nats-config`'s output).
    pub authorization: Option<String>,
    /// Serve TLS only, with the dev CA's server certificate.
    pub tls: Option<&'a pki::DevPki>,
    /// fsync JetStream writes before acknowledging them
    /// (`sync_interval: always`; see [`nats_supports_sync_always`]).
    pub sync_always: bool,
}

/// Whether the installed nats-server accepts `sync_interval: always`
/// (2.9 refuses the field: it syncs on its own interval only).
pub fn nats_supports_sync_always() -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let config = dir.path().join("probe.conf");
    let text = format!(
        "jetstream {{ store_dir: {:?}, {SYNC_ALWAYS} }}\n",
        dir.path().to_string_lossy()
    );
    std::fs::write(&config, text).is_ok()
        && std::process::Command::new("nats-server")
            .arg("-t")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The JetStream setting that fsyncs every write before it is acknowledged.
const SYNC_ALWAYS: &str = "sync_interval: always";

/// A nats-server's config file and what it was written from, so a reload
/// can rewrite only the authorization.
struct NatsConfig {
    path: PathBuf,
    /// Everything but the authorization block.
    base: String,
    log: PathBuf,
}

impl Server {
    /// A single-member etcd cluster with its data under `data_dir` (a temp dir when `None`).
    pub async fn etcd(data_dir: Option<&Path>) -> Result<Self> {
        on_free_ports("etcd", || Self::etcd_once(data_dir, None)).await
    }

    /// The same over TLS: `https://` with `pki`'s server certificate, and
    /// client certificates signed by its CA required (`--client-cert-auth`).
    pub async fn etcd_tls(data_dir: Option<&Path>, pki: &pki::DevPki) -> Result<Self> {
        on_free_ports("etcd", || Self::etcd_once(data_dir, Some(pki))).await
    }

    async fn etcd_once(data_dir: Option<&Path>, tls: Option<&pki::DevPki>) -> Result<Self> {
        let dir = DataDir::new(data_dir)?;
        let (client, peer) = (free_port()?, free_port()?);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("data");
        let initial = format!("drover={peer_url}");
        let mut args = etcd_args("drover", &data, &url, &peer_url, &initial);
        // Over TLS the client port needs a certificate, so readiness is
        // probed on a plain-HTTP metrics port (it serves /health too).
        let health_port = match tls {
            None => client,
            Some(pki) => {
                let metrics = free_port()?;
                let path = |p: PathBuf| p.to_string_lossy().into_owned();
                args.extend([
                    "--cert-file".into(),
                    path(pki.server_cert()),
                    "--key-file".into(),
                    path(pki.server_key()),
                    "--trusted-ca-file".into(),
                    path(pki.ca()),
                    "--client-cert-auth".into(),
                    "--listen-metrics-urls".into(),
                    format!("http://127.0.0.1:{metrics}"),
                ]);
                metrics
            }
        };
        let log = dir.path().join("etcd.log");
        let mut child = spawn("etcd", &args, &log, "etcd-server")?;
        wait_ready(&mut child, "etcd", &log, || etcd_healthy(health_port)).await?;
        Ok(Self {
            url,
            child,
            nats_config: None,
            relaunch: Some(Relaunch {
                program: "etcd",
                args,
                log,
                ready: Ready::Etcd(health_port),
            }),
            _dir: dir,
        })
    }

    /// A nats-server with JetStream storage under `data_dir` (a temp dir
    /// when `None`), started from a config file with `settings`. The
    /// readiness probe is the server's INFO greeting, which it sends before
    /// TLS and authentication.
    pub async fn nats_with(data_dir: Option<&Path>, settings: &NatsSettings<'_>) -> Result<Self> {
        on_free_ports("nats-server", || Self::nats_with_once(data_dir, settings)).await
    }

    async fn nats_with_once(data_dir: Option<&Path>, settings: &NatsSettings<'_>) -> Result<Self> {
        let dir = DataDir::new(data_dir)?;
        let port = free_port()?;
        let quote = |p: &Path| format!("{:?}", p.to_string_lossy());
        let sync = if settings.sync_always {
            format!(", {SYNC_ALWAYS}")
        } else {
            String::new()
        };
        let mut base = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {}{sync} }}\n",
            quote(&dir.path().join("jetstream"))
        );
        if let Some(pki) = settings.tls {
            base.push_str(&format!(
                "tls {{ cert_file: {}, key_file: {}, timeout: 5 }}\n",
                quote(&pki.server_cert()),
                quote(&pki.server_key())
            ));
        }
        let config = NatsConfig {
            path: dir.path().join("nats.conf"),
            base,
            log: dir.path().join("nats.log"),
        };
        config.write(settings.authorization.as_deref())?;
        let args = vec!["-c".to_owned(), config.path.to_string_lossy().into_owned()];
        let mut child = spawn("nats-server", &args, &config.log, "nats-server")?;
        wait_ready(&mut child, "nats-server", &config.log, || nats_ready(port)).await?;
        let scheme = if settings.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        Ok(Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            child,
            relaunch: Some(Relaunch {
                program: "nats-server",
                args,
                log: config.log.clone(),
                ready: Ready::Nats(port),
            }),
            nats_config: Some(config),
            _dir: dir,
        })
    }

    /// Replaces the authorization block of a server started by
    /// [`Server::nats_with`] and has it reload its config (SIGHUP), as an
    /// operator does after enrolling an agent; returns once it has.
    pub async fn reload_nats(&self, authorization: Option<&str>) -> Result<()> {
        let Some(config) = &self.nats_config else {
            bail!("this server was not started from a config file (Server::nats_with)");
        };
        const RELOADED: &str = "Reloaded server configuration";
        let before = std::fs::read_to_string(&config.log)?
            .matches(RELOADED)
            .count();
        config.write(authorization)?;
        let Some(pid) = self.child.id() else {
            bail!("nats-server has exited");
        };
        // SAFETY: plain syscall on a pid we own and have not reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&config.log)?;
            if log.matches(RELOADED).count() > before {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not reload its config:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The log of a server started by [`Server::nats_with`] so far.
    pub fn nats_log(&self) -> String {
        self.nats_config
            .as_ref()
            .and_then(|c| std::fs::read_to_string(&c.log).ok())
            .unwrap_or_default()
    }

    /// A nats-server with JetStream storage under `data_dir` (a temp dir when `None`).
    pub async fn nats(data_dir: Option<&Path>) -> Result<Self> {
        on_free_ports("nats-server", || Self::nats_once(data_dir)).await
    }

    async fn nats_once(data_dir: Option<&Path>) -> Result<Self> {
        let dir = DataDir::new(data_dir)?;
        let port = free_port()?;
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &dir.path().join("jetstream").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.path().join("nats.log");
        let mut child = spawn("nats-server", &args, &log, "nats-server")?;
        wait_ready(&mut child, "nats-server", &log, || nats_ready(port)).await?;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            child,
            nats_config: None,
            relaunch: Some(Relaunch {
                program: "nats-server",
                args,
                log,
                ready: Ready::Nats(port),
            }),
            _dir: dir,
        })
    }

    /// Kills the server now (SIGKILL) and reaps it. Dropping also kills, but
    /// only this waits, so no zombie is left where nobody else reaps.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Kills the server (SIGKILL) and starts it again on the same ports and
    /// data, as after a crash; returns once it answers. Its log is started
    /// over.
    pub async fn restart(&mut self) -> Result<()> {
        let Some(r) = &self.relaunch else {
            bail!("this server cannot be restarted (a cluster member)");
        };
        self.child.kill().await?;
        let mut child = spawn(r.program, &r.args, &r.log, r.program)?;
        match r.ready {
            Ready::Etcd(port) => {
                wait_ready(&mut child, r.program, &r.log, || etcd_healthy(port)).await?
            }
            Ready::Nats(port) => {
                wait_ready(&mut child, r.program, &r.log, || nats_ready(port)).await?
            }
        }
        self.child = child;
        Ok(())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 5 s) and reaps it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain syscall on a pid we own and have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        self.kill().await
    }
}

impl NatsConfig {
    fn write(&self, authorization: Option<&str>) -> Result<()> {
        let text = format!("{}{}\n", self.base, authorization.unwrap_or_default());
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// An etcd member's flags: its name, data directory, client and peer URLs,
/// and the `--initial-cluster` list it starts in.
fn etcd_args(name: &str, data: &Path, url: &str, peer_url: &str, initial: &str) -> Vec<String> {
    let data = data.to_string_lossy();
    [
        "--name",
        name,
        "--data-dir",
        &data,
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial,
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.contains("\"health\":\"true\"")
}

/// Returns once the server has processed everything `client` sent before,
/// subscriptions included. `Client::flush` only empties the socket buffer, so a
/// request from another connection right after `subscribe` + `flush` can still
/// meet "no responders"; a message the client receives back on its own fresh
/// inbox proves the server is past every earlier command of this connection.
pub async fn nats_synced(client: &async_nats::Client) -> Result<()> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, bytes::Bytes::new()).await?;
    tokio::time::timeout(Duration::from_secs(10), echo.next())
        .await
        .context("nats-server did not echo our message within 10 s")?
        .context("the echo subscription closed")?;
    echo.unsubscribe().await?;
    Ok(())
}

/// nats-server greets every client with an INFO line once it accepts connections.
async fn nats_ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"INFO"
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[tokio::test]
    async fn etcd_and_nats_start_answer_and_die_on_drop() -> TestResult {
        let etcd = Server::etcd(None).await?;
        let nats = Server::nats(None).await?;
        let etcd_port: u16 = etcd
            .url
            .rsplit(':')
            .next()
            .ok_or("no port in url")?
            .parse()?;
        let nats_port: u16 = nats
            .url
            .rsplit(':')
            .next()
            .ok_or("no port in url")?
            .parse()?;
        assert!(etcd_healthy(etcd_port).await);
        assert!(nats_ready(nats_port).await);
        drop(etcd);
        drop(nats);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(TcpStream::connect(("127.0.0.1", etcd_port)).await.is_err());
        assert!(TcpStream::connect(("127.0.0.1", nats_port)).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn sync_always_is_written_when_asked_and_refused_where_unsupported() -> TestResult {
        let settings = NatsSettings {
            sync_always: true,
            ..Default::default()
        };
        match (
            nats_supports_sync_always(),
            Server::nats_with(None, &settings).await,
        ) {
            (true, Ok(nats)) => {
                let config = nats.nats_config.as_ref().ok_or("no config")?;
                assert!(std::fs::read_to_string(&config.path)?.contains(SYNC_ALWAYS));
            }
            (false, Err(e)) => assert!(format!("{e:#}").contains("sync_interval"), "{e:#}"),
            (supported, started) => panic!(
                "supported: {supported}, but starting gave {:?}",
                started.map(|s| s.url)
            ),
        }
        Ok(())
    }

    #[tokio::test]
    async fn kept_data_dir_survives_a_restart() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut etcd = Server::etcd(Some(dir.path())).await?;
        etcd.kill().await?;
        drop(etcd);
        assert!(dir.path().join("data").exists());
        Server::etcd(Some(dir.path())).await?;
        Ok(())
    }

    #[test]
    fn claimed_ports_are_distinct_outside_the_ephemeral_range_and_locked() -> TestResult {
        let ports = (0..50).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| PORTS.contains(p)), "{ports:?}");
        // Another open of the lock file (as another process would) cannot lock it.
        let lock = std::fs::File::open(
            std::env::temp_dir()
                .join("drover-ports")
                .join(ports[0].to_string()),
        )?;
        assert!(!try_lock(&lock), "a claimed port's lock was free");
        Ok(())
    }
}
