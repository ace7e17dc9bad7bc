//! Periodic heartbeat on core NATS: capacity and running attempts.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::Heartbeat;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tracing::warn;

use crate::core::ExecutorKind;
use crate::shell::host;
use crate::shell::registry::Registry;

/// What every heartbeat repeats.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub agent_id: String,
    pub subject: String,
    pub executors: Vec<ExecutorKind>,
    pub interval: Duration,
}

impl HeartbeatConfig {
    pub fn new(
        prefix: &str,
        agent_id: &str,
        executors: &[ExecutorKind],
        interval: Duration,
    ) -> Self {
        HeartbeatConfig {
            agent_id: agent_id.to_owned(),
            subject: naming::heartbeat_subject(prefix, agent_id),
            executors: executors.to_vec(),
            interval,
        }
    }
}

/// The heartbeat for this moment.
pub fn heartbeat(config: &HeartbeatConfig, registry: &Registry) -> Heartbeat {
    Heartbeat {
        agent_id: config.agent_id.clone(),
        executors: config
            .executors
            .iter()
            .map(|k| k.name().to_owned())
            .collect(),
        cpu_millis: host::cpu_millis(),
        memory_bytes: host::memory_bytes(),
        running: registry.running().iter().map(|k| k.to_ref()).collect(),
        sent_at_ms: host::now_ms(),
        ..Default::default()
    }
}

/// Sends a heartbeat now, then every `interval` and whenever a scheduler
/// asks on `now_subject`, until `stop` turns true.
pub async fn run(
    client: Client,
    config: HeartbeatConfig,
    now_subject: String,
    registry: Registry,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asks = match client.subscribe(now_subject).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(agent = %config.agent_id, error = %e, "cannot subscribe to heartbeat requests");
            None
        }
    };
    loop {
        let ask = async {
            match asks.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = ask => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let body = Bytes::from(heartbeat(&config, &registry).encode_to_vec());
        if let Err(e) = client.publish(config.subject.clone(), body).await {
            warn!(agent = %config.agent_id, error = %e, "sending heartbeat failed");
        }
    }
}
