//! Self-fencing (see [`crate::core::fence`]): learns the scheduler's agent
//! timeout from its heartbeat acks, proves contact with the NATS server by
//! an echo on the agent's own inbox, and stops the attempts when the echoes
//! stop coming back for too long.
//!
//! An echo is a server round trip on the same connection as the heartbeats:
//! once it is back, every heartbeat published before it has reached the
//! server, so its send time bounds when the scheduler last heard from us.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use drover_api::pb::HeartbeatAck;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::core::{Fence, FenceDecision};
use crate::shell::registry::Registry;

/// How often the agent compares its silence with the limit.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Longest between two echoes.
const ECHO_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// Echoes still awaited; older ones are forgotten (their send time no longer matters).
const ECHOES_KEPT: usize = 256;

/// Where self-fencing listens and what it stops.
pub struct FenceConfig {
    pub agent_id: String,
    /// Where the scheduler's `HeartbeatAck`s arrive.
    pub ack_subject: String,
    /// The agent's own echo subject.
    pub contact_subject: String,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
}

/// Subscribes to the acks and echoes; `None` (no fencing, said in the log)
/// when the server refuses.
pub async fn subscribe(client: &Client, cfg: &FenceConfig) -> Option<(Subscriber, Subscriber)> {
    let subscribed = async {
        let acks = client.subscribe(cfg.ack_subject.clone()).await?;
        let echoes = client.subscribe(cfg.contact_subject.clone()).await?;
        Ok::<_, async_nats::SubscribeError>((acks, echoes))
    };
    match subscribed.await {
        Ok(subs) => Some(subs),
        Err(e) => {
            warn!(agent = %cfg.agent_id, error = %e, "cannot subscribe to heartbeat acks: this agent will not fence itself");
            None
        }
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    client: Client,
    cfg: FenceConfig,
    (mut acks, mut echoes): (Subscriber, Subscriber),
    registry: Registry,
    mut stop: watch::Receiver<bool>,
) {
    let mut fence = Fence::new(Instant::now().into_std());
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut echo = tokio::time::interval(cfg.heartbeat_interval.min(ECHO_AT_MOST_EVERY));
    echo.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next_echo: u64 = 0;
    loop {
        let decision = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            Some(msg) = acks.next() => {
                match HeartbeatAck::decode(msg.payload) {
                    Ok(ack) => learn_timeout(&mut fence, &cfg, ack),
                    Err(e) => warn!(agent = %cfg.agent_id, error = %e, "undecodable heartbeat ack"),
                }
                continue;
            }
            Some(msg) = echoes.next() => {
                let Some(at) = echo_sent_at(&msg.payload, &mut sent) else { continue };
                fence.contact(at.into_std(), cfg.kill_grace)
            }
            _ = echo.tick() => {
                next_echo += 1;
                sent.push_back((next_echo, Instant::now()));
                if sent.len() > ECHOES_KEPT {
                    sent.pop_front();
                }
                let body = Bytes::copy_from_slice(&next_echo.to_be_bytes());
                // Buffered while the server is away: sent (and answered) once it is back.
                if let Err(e) = client.publish(cfg.contact_subject.clone(), body).await {
                    warn!(agent = %cfg.agent_id, error = %e, "sending the contact echo failed");
                }
                continue;
            }
            _ = check.tick() => fence.check(Instant::now().into_std(), cfg.kill_grace),
        };
        if let FenceDecision::Stop {
            grace,
            silent,
            limit,
        } = decision
        {
            let stopped = registry.request_fence(silent, limit, grace);
            if stopped == 0 {
                continue;
            }
            warn!(
                agent = %cfg.agent_id, silent = ?silent, timeout = ?fence.timeout(), stopped,
                "no contact with NATS for nearly the scheduler's agent timeout: stopping this agent's attempts (they run elsewhere)"
            );
        }
    }
}

fn learn_timeout(fence: &mut Fence, cfg: &FenceConfig, ack: HeartbeatAck) {
    let timeout = Duration::from_millis(ack.agent_timeout_ms);
    if fence.timeout() != Some(timeout) && !timeout.is_zero() {
        info!(agent = %cfg.agent_id, timeout = ?timeout, limit = ?timeout * 3 / 4, "scheduler's agent timeout: this agent stops its attempts when out of contact for the limit");
    }
    fence.set_timeout(timeout);
}

/// The send time of the echo this payload numbers, dropping it and older
/// ones from `sent`.
fn echo_sent_at(payload: &[u8], sent: &mut VecDeque<(u64, Instant)>) -> Option<Instant> {
    let n = u64::from_be_bytes(payload.try_into().ok()?);
    let mut found = None;
    while let Some(&(m, at)) = sent.front() {
        if m > n {
            break;
        }
        sent.pop_front();
        if m == n {
            found = Some(at);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_finds_its_send_time_and_forgets_older_ones() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut sent = VecDeque::from([(1, at(1)), (2, at(2)), (3, at(3))]);
        assert_eq!(echo_sent_at(&2u64.to_be_bytes(), &mut sent), Some(at(2)));
        assert_eq!(sent, VecDeque::from([(3, at(3))]));
        assert_eq!(echo_sent_at(&2u64.to_be_bytes(), &mut sent), None);
        assert_eq!(echo_sent_at(b"junk", &mut sent), None);
        assert_eq!(sent.len(), 1);
    }
}
