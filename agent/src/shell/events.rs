//! Attempt events on the JetStream stream: published with `Nats-Msg-Id` so a
//! re-publish is stored once, and retried until the stream acknowledges them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::{attempt_event::Kind, AttemptEvent, AttemptStarted};
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument, Span};

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
    /// `started_at_ms`: when the attempt started (0: unknown); a started
    /// event's own time.
    pub async fn publish(
        &self,
        key: &AttemptKey,
        kind: Kind,
        started_at_ms: u64,
    ) -> Result<(), Abandoned> {
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
                at_ms: match kind {
                    Kind::Started(_) if started_at_ms > 0 => started_at_ms,
                    _ => now_ms(),
                },
                kind: Some(kind),
                started_at_ms,
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

/// How long an attempt runs before its `started` event is published. An
/// attempt that ends sooner — most short tasks — publishes no `started`
/// event: its final event carries the start (`started_at_ms`). That is one
/// JetStream message, one scheduler event and usually one etcd write fewer
/// per short task (benches/README.md), for a `running` state that shows at
/// most this much later.
pub const STARTED_AFTER: Duration = Duration::from_millis(50);

/// The `started` event of one attempt, published only if the attempt still
/// runs `STARTED_AFTER` after it began.
///
/// The delay is a timer polled inside the attempt's own task
/// ([`StartNotice::during`]): the publish is spawned only when it is due,
/// so a short attempt costs no extra task (spawning one per attempt and
/// aborting it was a wake-up on another worker thread per no-op task).
pub struct StartNotice {
    at_ms: u64,
    /// Not yet due: what to publish, and when.
    armed: Option<Armed>,
    /// Due: the publish, and who claimed the decision first: the publish
    /// (it goes out) or `settle` (it never does).
    pending: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

struct Armed {
    events: EventPublisher,
    key: AttemptKey,
    due: tokio::time::Instant,
}

impl StartNotice {
    /// The attempt starts now; its `started` event follows after `after`
    /// if the work given to [`StartNotice::during`] still runs then.
    pub fn after(events: &EventPublisher, key: &AttemptKey, after: Duration) -> Self {
        StartNotice {
            at_ms: now_ms(),
            armed: Some(Armed {
                events: events.clone(),
                key: key.clone(),
                due: tokio::time::Instant::now() + after,
            }),
            pending: None,
        }
    }

    /// An attempt that started at `at_ms`, in an earlier life of the agent
    /// (an adopted container): whether its `started` event went out then is
    /// unknown, so the final event carries the start either way.
    pub fn earlier(at_ms: u64) -> Self {
        StartNotice {
            at_ms,
            armed: None,
            pending: None,
        }
    }

    /// Runs the attempt's `work`; if it is still running when the notice
    /// is due, the `started` event is published (in the caller's span)
    /// while it goes on.
    pub async fn during<T>(&mut self, work: impl Future<Output = T>) -> T {
        let Some(armed) = self.armed.take() else {
            return work.await;
        };
        tokio::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::time::sleep_until(armed.due) => {}
        }
        let claimed = Arc::new(AtomicBool::new(false));
        let at_ms = self.at_ms;
        let publish = {
            let claimed = Arc::clone(&claimed);
            async move {
                if claimed.swap(true, Ordering::AcqRel) {
                    return;
                }
                let started = Kind::Started(AttemptStarted {});
                if let Err(e) = armed.events.publish(&armed.key, started, at_ms).await {
                    warn!(attempt = %armed.key, error = %e, "started event not published");
                }
            }
        };
        self.pending = Some((claimed, tokio::spawn(publish.instrument(Span::current()))));
        work.await
    }

    /// Called right before the final event: afterwards the `started` event
    /// either was acknowledged (so the final event follows it in the
    /// stream) or will never be published. Returns the start, for the final
    /// event.
    pub async fn settle(self) -> u64 {
        if let Some((claimed, publish)) = self.pending {
            if claimed.swap(true, Ordering::AcqRel) {
                // Being published (or done): wait for its ack.
                let _ = publish.await;
            } else {
                publish.abort();
            }
        }
        self.at_ms
    }
}
