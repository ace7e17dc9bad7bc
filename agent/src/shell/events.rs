//! Attempt events on the JetStream stream: published with `Nats-Msg-Id` so a
//! re-publish is stored once, and retried until the stream acknowledges them.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::{attempt_event::Kind, AttemptEvent};
use prost::Message as _;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::core::AttemptKey;
use crate::shell::host::now_ms;
use crate::AgentError;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Gets, or creates, the events stream. The scheduler creates the same
/// configuration, so whichever side comes first wins and both agree.
pub async fn ensure_stream(js: &jetstream::Context, prefix: &str) -> Result<(), AgentError> {
    let config = naming::events_stream_config(prefix);
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(_) => Ok(()),
        // Lost a creation race with the scheduler or another agent: it exists now.
        Err(create) => match js.get_stream(&name).await {
            Ok(_) => Ok(()),
            Err(_) => Err(AgentError::Stream {
                name,
                reason: create.to_string(),
            }),
        },
    }
}

/// The publish was given up because the agent is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("gave up publishing event `{msg_id}`: the agent is shutting down")]
pub struct Abandoned {
    pub msg_id: String,
}

/// Publishes this agent's attempt events.
#[derive(Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    subject: String,
    agent_id: String,
    /// Turns true when retrying must stop (the shutdown deadline passed).
    abandon: watch::Receiver<bool>,
}

impl EventPublisher {
    pub fn new(
        js: jetstream::Context,
        prefix: &str,
        agent_id: &str,
        abandon: watch::Receiver<bool>,
    ) -> Self {
        EventPublisher {
            js,
            subject: naming::events_subject(prefix, agent_id),
            agent_id: agent_id.to_owned(),
            abandon,
        }
    }

    /// Publishes one event and waits for the stream's ack, retrying with
    /// backoff; only an abandon (shutdown deadline) ends the retries early.
    pub async fn publish(&self, key: &AttemptKey, kind: Kind) -> Result<(), Abandoned> {
        let kind_name = match &kind {
            Kind::Started(_) => "started",
            Kind::Succeeded(_) => "succeeded",
            Kind::Failed(_) => "failed",
        };
        let msg_id = naming::event_msg_id(&key.run_id, &key.task, key.attempt, kind_name);
        let payload = Bytes::from(
            AttemptEvent {
                attempt: Some(key.to_ref()),
                agent_id: self.agent_id.clone(),
                at_ms: now_ms(),
                kind: Some(kind),
            }
            .encode_to_vec(),
        );

        let mut abandon = self.abandon.clone();
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0u32;
        loop {
            if *abandon.borrow() {
                return Err(Abandoned { msg_id });
            }
            tries += 1;
            // The attempt's span (the caller's current one) travels with the
            // event, so consumers can join the run's trace.
            let mut headers = async_nats::HeaderMap::new();
            drover_telemetry::propagation::inject_nats(
                &drover_telemetry::propagation::current(),
                &mut headers,
            );
            let publish = PublishMessage::build()
                .headers(headers)
                .payload(payload.clone())
                .message_id(&msg_id);
            let result = async {
                let ack = self.js.send_publish(self.subject.clone(), publish).await?;
                ack.await
            }
            .await;
            match result {
                Ok(ack) => {
                    debug!(
                        run = %key.run_id, task = %key.task, attempt = key.attempt,
                        event = kind_name, seq = ack.sequence, duplicate = ack.duplicate,
                        "event acked"
                    );
                    return Ok(());
                }
                Err(e) => {
                    warn!(
                        run = %key.run_id, task = %key.task, attempt = key.attempt,
                        event = kind_name, tries, error = %e, retry_in = ?backoff,
                        "publishing event failed"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = abandon.wait_for(|a| *a) => return Err(Abandoned { msg_id }),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
