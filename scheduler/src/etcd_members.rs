//! With several etcd endpoints, the client's balancer keeps picking a member
//! that died: each request it sends there fails at connect, and a reload,
//! which needs all of its reads to succeed, fails for as long as the member
//! stays down. This watcher takes an endpoint out of the client while its
//! port refuses connections, and puts it back once it accepts them again.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::Client;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// How often each endpoint is probed, and how long a connect may take.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Watches `endpoints` (as given to the client) for as long as the process runs.
pub async fn watch(client: Client, endpoints: Vec<String>) {
    let mut down: BTreeSet<String> = BTreeSet::new();
    loop {
        for endpoint in &endpoints {
            let up = reachable(endpoint).await;
            let out = down.contains(endpoint);
            if !up && !out && down.len() + 1 < endpoints.len() {
                warn!(%endpoint, "etcd member unreachable; not sending it requests until it answers");
                let mut removed = Ok(());
                for uri in uris(endpoint) {
                    removed = removed.and(client.remove_endpoint(uri.as_str()).await);
                }
                match removed {
                    Ok(()) => {
                        down.insert(endpoint.clone());
                    }
                    Err(e) => warn!(%endpoint, error = %e, "cannot take the etcd member out"),
                }
            } else if up && out {
                info!(%endpoint, "etcd member reachable again");
                match client.add_endpoint(endpoint.as_str()).await {
                    Ok(()) => {
                        down.remove(endpoint);
                    }
                    Err(e) => warn!(%endpoint, error = %e, "cannot put the etcd member back"),
                }
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Whether the endpoint's port takes a TCP connection in time.
async fn reachable(endpoint: &str) -> bool {
    let Some(addr) = host_port(endpoint) else {
        return true;
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await,
        Ok(Ok(_))
    )
}

/// The URIs the client may have made of `endpoint` (without a scheme it
/// adds http:// or https://, as TLS is off or on).
fn uris(endpoint: &str) -> Vec<String> {
    if endpoint.contains("://") {
        vec![endpoint.to_string()]
    } else {
        vec![format!("http://{endpoint}"), format!("https://{endpoint}")]
    }
}

/// `host:port` of `http://host:port`, `https://host:port/` or `host:port`.
fn host_port(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let hostport = rest.split('/').next()?;
    hostport.contains(':').then(|| hostport.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_give_their_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(
            host_port("https://etcd-1:2379/").as_deref(),
            Some("etcd-1:2379")
        );
        assert_eq!(host_port("10.0.0.5:2379").as_deref(), Some("10.0.0.5:2379"));
        assert_eq!(host_port("http://etcd"), None);
    }
}
