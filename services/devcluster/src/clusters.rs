//! Three-member etcd and NATS (JetStream) clusters on loopback, each member
//! its own process and data directory, killable on its own: what the tests
//! of a dying member (the etcd leader, the events stream's leader) run on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{etcd_args, free_port, on_free_ports, spawn, wait_ready, DataDir, Server};

/// How long a new cluster has to elect its leaders.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Members of a cluster; a killed one is `None`.
struct Members {
    servers: Vec<Option<Server>>,
}

impl Members {
    fn urls(&self) -> String {
        self.servers
            .iter()
            .flatten()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn kill(&mut self, i: usize) -> Result<()> {
        let Some(mut server) = self.servers.get_mut(i).and_then(Option::take) else {
            bail!("member {i} is not running");
        };
        server.kill().await
    }
}

/// `n` pairs of free ports: a member's client port and its peer (route) port.
fn port_pairs(n: usize) -> Result<Vec<(u16, u16)>> {
    (0..n).map(|_| Ok((free_port()?, free_port()?))).collect()
}

/// Every member's peer port as `each` writes it (given the member's index), joined by `sep`.
fn peers(ports: &[(u16, u16)], sep: &str, each: impl Fn(usize, u16) -> String) -> String {
    let all: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| each(i, *p))
        .collect();
    all.join(sep)
}

/// An etcd cluster of `n` members (`m0`, `m1`, ...).
pub struct EtcdCluster {
    members: Members,
    /// Every member's client URL, killed ones included, by index.
    all_urls: Vec<String>,
}

impl EtcdCluster {
    pub async fn start(n: usize) -> Result<Self> {
        on_free_ports("etcd cluster", || Self::start_once(n)).await
    }

    async fn start_once(n: usize) -> Result<Self> {
        let ports = port_pairs(n)?;
        let initial = peers(&ports, ",", |i, peer| {
            format!("m{i}=http://127.0.0.1:{peer}")
        });
        let token = format!("drover-{}-{}", std::process::id(), ports[0].0);
        let mut started = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = DataDir::new(None)?;
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut args = etcd_args(
                &format!("m{i}"),
                &dir.path().join("data"),
                &url,
                &peer_url,
                &initial,
            );
            args.extend(["--initial-cluster-state".into(), "new".into()]);
            args.extend(["--initial-cluster-token".into(), token.clone()]);
            let log = dir.path().join("etcd.log");
            let child = spawn("etcd", &args, &log, "etcd-server")?;
            started.push((child, log, dir, url, *client));
        }
        // Members report healthy only once the cluster has a leader, so
        // they are waited for after all have started.
        let mut servers = Vec::new();
        for (mut child, log, dir, url, client) in started {
            wait_ready(&mut child, "etcd member", &log, || {
                crate::etcd_healthy(client)
            })
            .await?;
            servers.push(Some(Server {
                url,
                child,
                nats_config: None,
                relaunch: None,
                _dir: dir,
            }));
        }
        let all_urls = servers.iter().flatten().map(|s| s.url.clone()).collect();
        Ok(Self {
            members: Members { servers },
            all_urls,
        })
    }

    /// The running members' client URLs, comma-separated (`--etcd`).
    pub fn urls(&self) -> String {
        self.members.urls()
    }

    /// Kills member `i` (SIGKILL).
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        self.members.kill(i).await
    }

    /// The index of the member that leads now, asked of a running member.
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            if let Some(i) = self.leader_once().await {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no etcd member knows a leader after {FORM_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn leader_once(&self) -> Option<usize> {
        let mut leader_id = None;
        let mut ids = Vec::new();
        for (i, url) in self.all_urls.iter().enumerate() {
            if self.members.servers.get(i).is_none_or(Option::is_none) {
                continue;
            }
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2));
            let Ok(mut client) = etcd_client::Client::connect([url], Some(options)).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let id = status.header().map(|h| h.member_id())?;
            if status.leader() != 0 {
                leader_id = Some(status.leader());
            }
            ids.push((i, id));
        }
        let leader = leader_id?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }
}

/// A NATS cluster of `n` servers (`n0`, `n1`, ...) with JetStream.
pub struct NatsCluster {
    members: Members,
}

impl NatsCluster {
    /// Starts the servers and returns once JetStream can place a stream
    /// with a copy on every server.
    pub async fn start(n: usize) -> Result<Self> {
        on_free_ports("nats cluster", || Self::start_once(n)).await
    }

    async fn start_once(n: usize) -> Result<Self> {
        let ports = port_pairs(n)?;
        let mut servers = Vec::new();
        let routes = peers(&ports, ", ", |_, route| {
            format!("\"nats-route://127.0.0.1:{route}\"")
        });
        for (i, (port, route)) in ports.iter().enumerate() {
            let dir = DataDir::new(None)?;
            let quote = |p: &Path| format!("{:?}", p.to_string_lossy());
            let config = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: {} }}\n\
                 cluster {{ name: drover, listen: \"127.0.0.1:{route}\", routes: [{routes}] }}\n",
                quote(&dir.path().join("jetstream"))
            );
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
            let log = dir.path().join("nats.log");
            let args = vec!["-c".to_owned(), path.to_string_lossy().into_owned()];
            let mut child = spawn("nats-server", &args, &log, "nats-server")?;
            wait_ready(&mut child, "nats-server", &log, || crate::nats_ready(*port)).await?;
            servers.push(Some(Server {
                url: format!("nats://127.0.0.1:{port}"),
                child,
                nats_config: None,
                relaunch: None,
                _dir: dir,
            }));
        }
        let cluster = Self {
            members: Members { servers },
        };
        cluster.wait_formed(n, ports[0].0).await?;
        Ok(cluster)
    }

    /// Waits for a JetStream meta leader and all `n` peers: until then a
    /// stream of `n` replicas cannot be created.
    async fn wait_formed(&self, n: usize, tag: u16) -> Result<()> {
        let client = async_nats::connect(self.urls_list()).await?;
        let js = async_nats::jetstream::new(client);
        let name = format!("DEVCLUSTER_READY_{tag}");
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let probe = async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("devcluster.ready.{tag}")],
                storage: async_nats::jetstream::stream::StorageType::Memory,
                num_replicas: n,
                ..Default::default()
            };
            match js.create_stream(probe).await {
                Ok(_) => {
                    js.delete_stream(&name).await?;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("the NATS cluster did not form within {FORM_TIMEOUT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn urls_list(&self) -> Vec<String> {
        self.members
            .servers
            .iter()
            .flatten()
            .map(|s| s.url.clone())
            .collect()
    }

    /// The running servers' URLs, comma-separated (`--nats`).
    pub fn urls(&self) -> String {
        self.members.urls()
    }

    /// Kills server `i` (SIGKILL).
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        self.members.kill(i).await
    }

    /// The index of the server leading stream `stream` now.
    pub async fn stream_leader(&self, stream: &str) -> Result<usize> {
        let client = async_nats::connect(self.urls_list()).await?;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let leader = match js.get_stream(stream).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.cluster.clone())
                    .and_then(|c| c.leader),
                Err(_) => None,
            };
            // A leader just killed is still named until the others notice.
            let running = |i: &usize| self.members.servers.get(*i).is_some_and(Option::is_some);
            if let Some(i) = leader
                .and_then(|l| l.strip_prefix('n').map(str::to_owned))
                .and_then(|i| i.parse::<usize>().ok())
                .filter(running)
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("stream `{stream}` has no leader after {FORM_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[tokio::test]
    async fn an_etcd_cluster_elects_another_leader_when_its_leader_dies() -> TestResult {
        let mut etcd = EtcdCluster::start(3).await?;
        assert_eq!(etcd.urls().split(',').count(), 3);
        let first = etcd.leader().await?;
        etcd.kill(first).await?;
        assert_eq!(etcd.urls().split(',').count(), 2);
        let second = etcd.leader().await?;
        assert_ne!(first, second);
        Ok(())
    }

    #[tokio::test]
    async fn a_nats_cluster_places_r3_streams_and_names_their_leader() -> TestResult {
        let mut nats = NatsCluster::start(3).await?;
        let client = async_nats::connect(nats.urls_list()).await?;
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "R3".into(),
            subjects: vec!["r3".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await?;
        js.publish("r3", "one".into()).await?.await?;
        let first = nats.stream_leader("R3").await?;
        nats.kill(first).await?;
        let second = nats.stream_leader("R3").await?;
        assert_ne!(first, second);
        Ok(())
    }
}
