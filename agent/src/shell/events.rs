//! Attempt events on the JetStream stream: published with `Nats-Msg-Id` so a
//! re-publish is stored once, and retried until the stream acknowledges them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use drover_api::naming;
use drover_api::pb::{attempt_event::Kind, AttemptEvent, AttemptEventBatch, AttemptStarted};
use drover_telemetry::propagation;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument, Span};

use crate::core::AttemptKey;
use crate::shell::host::now_ms;
use crate::AgentError;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Gets, or creates, the events stream. The scheduler creates the same
/// configuration, so whichever side comes first wins and both agree (the
/// scheduler then sets its `--events-replicas` on the stream). An
/// agent with its own NATS identity may only look (`may_create` false): a
/// stream not there yet is the scheduler's to create, and events wait for it.
pub async fn ensure_stream(
    js: &jetstream::Context,
    prefix: &str,
    may_create: bool,
) -> Result<(), AgentError> {
    let config = naming::events_stream_config(prefix);
    let name = config.name.clone();
    if !may_create {
        if let Err(e) = js.get_stream(&name).await {
            warn!(stream = %name, error = %e, "events stream not readable yet; events wait for the scheduler to create it");
        }
        return Ok(());
    }
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

/// Most events in one message.
const MAX_EVENTS: usize = 64;
/// Most bytes of events in one message (NATS refuses over 1 MiB by
/// default); an event larger than this still goes, alone.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Publishes this agent's attempt events.
///
/// One publisher task per agent sends them, one message at a time: the
/// events that become ready while a message awaits the stream's ack go
/// together in the next (`AttemptEventBatch`), like a database's group
/// commit. An idle agent's event goes out at once, alone, as before; a busy
/// agent's finishing tasks share messages, acks and the scheduler's
/// deliveries (benches/README.md).
#[derive(Clone)]
pub struct EventPublisher {
    agent_id: Arc<str>,
    queue: mpsc::UnboundedSender<Pending>,
}

/// An event waiting for its message's ack.
struct Pending {
    event: AttemptEvent,
    msg_id: String,
    /// The attempt's span (the caller's when it published): W3C
    /// traceparent, empty for none.
    traceparent: String,
    acked: oneshot::Sender<()>,
}

impl EventPublisher {
    pub fn new(
        js: jetstream::Context,
        prefix: &str,
        agent_id: &str,
        abandon: watch::Receiver<bool>,
    ) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let sender = Sender {
            js,
            subject: naming::events_subject(prefix, agent_id),
            batch_subject: naming::events_batch_subject(prefix, agent_id),
            abandon,
        };
        tokio::spawn(sender.run(pending));
        EventPublisher {
            agent_id: agent_id.into(),
            queue,
        }
    }

    /// Publishes one event and waits for the stream's ack, retrying with
    /// backoff; only an abandon (shutdown deadline) ends the retries early.
    /// `started_at_ms`: when the attempt started (0: unknown); a started
    /// event's own time. The caller's span travels with the event, so
    /// consumers can join the run's trace.
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
        let event = AttemptEvent {
            attempt: Some(key.to_ref()),
            agent_id: self.agent_id.to_string(),
            at_ms: match kind {
                Kind::Started(_) if started_at_ms > 0 => started_at_ms,
                _ => now_ms(),
            },
            kind: Some(kind),
            started_at_ms,
        };
        let traceparent = propagation::span_of(&propagation::current())
            .map(|sc| propagation::traceparent(&sc))
            .unwrap_or_default();
        let (acked, ack) = oneshot::channel();
        let pending = Pending {
            event,
            msg_id: msg_id.clone(),
            traceparent,
            acked,
        };
        // The sender drops what it gives up on (abandoned at shutdown) and
        // is gone once the runtime is.
        if self.queue.send(pending).is_err() || ack.await.is_err() {
            return Err(Abandoned { msg_id });
        }
        debug!(
            run = %key.run_id, task = %key.task, attempt = key.attempt,
            event = kind_name, "event acked"
        );
        Ok(())
    }
}

/// The agent's publisher task: one message in flight at a time.
struct Sender {
    js: jetstream::Context,
    subject: String,
    batch_subject: String,
    /// Turns true when retrying must stop (the shutdown deadline passed).
    abandon: watch::Receiver<bool>,
}

impl Sender {
    async fn run(mut self, mut pending: mpsc::UnboundedReceiver<Pending>) {
        let mut queue: Vec<Pending> = Vec::new();
        loop {
            if queue.is_empty() && pending.recv_many(&mut queue, MAX_EVENTS).await == 0 {
                return; // every EventPublisher is gone
            }
            while queue.len() < MAX_EVENTS {
                match pending.try_recv() {
                    Ok(p) => queue.push(p),
                    Err(_) => break,
                }
            }
            let n = batch_len(&queue);
            let batch: Vec<Pending> = queue.drain(..n).collect();
            // Abandoned (false): the waiters dropped here tell each publish.
            if self.send(&batch).await {
                for p in batch {
                    let _ = p.acked.send(());
                }
            }
        }
    }

    /// Publishes `batch` (one event alone, else as an `AttemptEventBatch`)
    /// until the stream acks it: true, or the agent abandons: false.
    async fn send(&mut self, batch: &[Pending]) -> bool {
        let (subject, payload, msg_id, headers) = match batch {
            [one] => {
                let mut headers = async_nats::HeaderMap::new();
                if !one.traceparent.is_empty() {
                    headers.insert(propagation::TRACEPARENT, one.traceparent.as_str());
                }
                let payload = one.event.encode_to_vec();
                (&self.subject, payload, one.msg_id.clone(), headers)
            }
            _ => {
                let payload = AttemptEventBatch {
                    events: batch.iter().map(|p| p.event.clone()).collect(),
                    traceparents: batch.iter().map(|p| p.traceparent.clone()).collect(),
                }
                .encode_to_vec();
                let msg_id = naming::event_batch_msg_id(batch.iter().map(|p| p.msg_id.as_str()));
                let headers = async_nats::HeaderMap::new();
                (&self.batch_subject, payload, msg_id, headers)
            }
        };
        let payload = Bytes::from(payload);
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0u32;
        loop {
            if *self.abandon.borrow() {
                return false;
            }
            tries += 1;
            let publish = PublishMessage::build()
                .headers(headers.clone())
                .payload(payload.clone())
                .message_id(&msg_id);
            let result = async {
                let ack = self.js.send_publish(subject.clone(), publish).await?;
                ack.await
            }
            .await;
            match result {
                Ok(ack) => {
                    debug!(
                        msg_id,
                        events = batch.len(),
                        seq = ack.sequence,
                        duplicate = ack.duplicate,
                        "events acked"
                    );
                    return true;
                }
                Err(e) => {
                    warn!(
                        msg_id, events = batch.len(), tries, error = %e,
                        retry_in = ?backoff, "publishing events failed"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.abandon.wait_for(|a| *a) => return false,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// How many of the queued events go in the next message: up to
/// `MAX_EVENTS` and `MAX_BATCH_BYTES`, at least one.
fn batch_len(queue: &[Pending]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for p in queue.iter().take(MAX_EVENTS) {
        bytes += p.event.encoded_len() + p.traceparent.len() + 8;
        if n > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n.max(1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use drover_devcluster::Server;
    use futures::StreamExt;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    const PREFIX: &str = "evtest";

    async fn publisher(
        nats: &Server,
        abandon: bool,
    ) -> TestResult<(jetstream::Context, EventPublisher)> {
        let client = async_nats::connect(nats.url.as_str()).await?;
        let js = jetstream::new(client);
        ensure_stream(&js, PREFIX, true).await?;
        let (_tx, rx) = watch::channel(abandon);
        // The sender half may drop: the receiver keeps the last value.
        Ok((js.clone(), EventPublisher::new(js, PREFIX, "ag1", rx)))
    }

    fn key(i: usize) -> AttemptKey {
        AttemptKey {
            run_id: "r1".into(),
            task: format!("t{i}"),
            attempt: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_ready_together_share_messages_and_each_is_stored_once() -> TestResult {
        let nats = Server::nats(None).await?;
        let (js, events) = publisher(&nats, false).await?;
        let n = 200;
        let succeeded = || Kind::Succeeded(Default::default());
        let publishes = (0..n).map(|i| {
            let (events, key) = (events.clone(), key(i));
            async move { events.publish(&key, succeeded(), 7).await }
        });
        for result in futures::future::join_all(publishes).await {
            result?;
        }

        let mut stream = js.get_stream(naming::events_stream(PREFIX)).await?;
        let messages = stream.info().await?.state.messages as usize;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config::default())
            .await?;
        let mut read = consumer.messages().await?;
        let mut tasks = Vec::new();
        for _ in 0..messages {
            let msg = read.next().await.ok_or("the stream ended")??;
            let id = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .ok_or("no Nats-Msg-Id")?
                .to_string();
            let got = drover_api::events::decode(PREFIX, &msg.subject, msg.payload.clone())?;
            assert!(got.len() <= MAX_EVENTS);
            let ids = got
                .iter()
                .map(|(ev, _)| {
                    let a = ev.attempt.as_ref().ok_or("an event without its attempt")?;
                    Ok(naming::event_msg_id(
                        &a.run_id,
                        &a.task,
                        a.attempt,
                        "succeeded",
                    ))
                })
                .collect::<TestResult<Vec<String>>>()?;
            if got.len() == 1 {
                assert_eq!(msg.subject.as_str(), naming::events_subject(PREFIX, "ag1"));
                assert_eq!(id, ids[0]);
            } else {
                assert_eq!(
                    msg.subject.as_str(),
                    naming::events_batch_subject(PREFIX, "ag1")
                );
                assert_eq!(
                    id,
                    naming::event_batch_msg_id(ids.iter().map(String::as_str))
                );
            }
            for (ev, _) in got {
                assert_eq!((ev.agent_id.as_str(), ev.started_at_ms), ("ag1", 7));
                tasks.push(ev.attempt.ok_or("an event without its attempt")?.task);
            }
        }
        // Every event once, in the order they were published.
        let want: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        assert_eq!(tasks, want);
        // 200 events became ready at once: they cannot all have gone alone.
        assert!(messages < n / 2, "{messages} messages for {n} events");
        Ok(())
    }

    #[tokio::test]
    async fn an_abandoned_publish_says_which_event() -> TestResult {
        let nats = Server::nats(None).await?;
        let (_js, events) = publisher(&nats, true).await?;
        let Err(err) = events
            .publish(&key(3), Kind::Started(AttemptStarted {}), 0)
            .await
        else {
            return Err("an abandoned publish succeeded".into());
        };
        assert_eq!(err.msg_id, "r1/t3/1/started");
        Ok(())
    }
}
