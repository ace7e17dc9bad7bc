//! NATS side of the scheduler: the events stream and its durable consumer,
//! heartbeats, and assign/cancel requests to agents. It connects with the
//! scheduler's own identity (`--nats-creds`) and inbox prefix; what that
//! identity may do is [`drover_api::nats_auth::scheduler_permissions`], so a
//! new subject or JetStream call here needs a grant there.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use bytes::Bytes;
use drover_api::{naming, nats_auth, pb};
use futures::TryStreamExt;
use prost::Message;

use crate::error::{Result, SchedulerError};
use crate::leader::Leadership;
use crate::metrics::OpErrors;

/// How long an agent has to answer an assign or cancel request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacked events are redelivered after this; the scheduler acks after each commit.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The scheduler's durable consumer of the events stream. Acking an event
/// acks every earlier one (`AckPolicy::All`): one ack per turn rather than
/// one per event (benches/README.md).
const CONSUMER: &str = drover_api::nats_auth::SCHEDULER_CONSUMER;
/// The consumer of versions that acked every event (`AckPolicy::Explicit`;
/// a consumer's ack policy cannot be changed): replaced on start by
/// `CONSUMER`, starting after its ack floor.
const EXPLICIT_CONSUMER: &str = drover_api::nats_auth::SCHEDULER_OLD_CONSUMER;

fn nats_err(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Nats(e.to_string())
}

pub struct Bus {
    client: async_nats::Client,
    prefix: String,
    /// Copies of the events stream (`--events-replicas`).
    replicas: usize,
    errors: OpErrors,
    /// Requests to agents go out only while this process may act as leader.
    leadership: Option<Leadership>,
}

pub type EventStream = pull::Stream;

/// The events stream as opened: its messages, and the sequence every
/// earlier event of which was dealt with (acked by an earlier term, or
/// gone from the stream).
pub struct Events {
    pub messages: EventStream,
    pub after: u64,
}

/// What fetching a gap's sequences from the stream found, in order; it
/// stops at the first error (the stream leaderless, say), to be tried again.
#[derive(Default)]
pub struct Fetched {
    pub messages: Vec<jetstream::message::StreamMessage>,
    /// Not in the stream (expired, or never stored).
    pub gone: Vec<u64>,
    pub error: Option<String>,
}

impl Bus {
    /// The subject prefix every Drover subject starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Connects to one of `servers` (comma-separated URLs) as `identity`
    /// (none: anonymously), with the scheduler's own inbox prefix (its NATS
    /// permissions allow it no other).
    pub async fn connect(
        servers: &str,
        prefix: &str,
        identity: &drover_api::nats_connect::NatsIdentity,
    ) -> Result<Self> {
        let (options, _errors) = drover_api::nats_connect::options(
            identity,
            "drover-scheduler",
            &drover_api::nats_auth::scheduler_inbox_prefix(prefix),
        )
        .map_err(|e| SchedulerError::Config(e.to_string()))?;
        let client = options
            .connect(drover_api::nats_connect::servers(servers))
            .await
            .map_err(|e| {
                let e = e.to_string();
                match drover_api::nats_connect::is_auth_refusal(&e) {
                    true => nats_err(format!(
                    "{e} (is --nats-creds the scheduler's, and its entry in nats-server's config?)"
                )),
                    false => nats_err(e),
                }
            })?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            replicas: 1,
            errors: OpErrors::default(),
            leadership: None,
        })
    }

    /// The connection, for what the engine does not own (live logs).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// Keeps `replicas` copies of the events stream.
    pub fn with_events_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sends nothing to agents unless `leadership` allows it.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Err when this process must not send (checked right before sending).
    fn may_send(&self) -> Result<()> {
        match &self.leadership {
            Some(l) if !l.may_act() => Err(SchedulerError::NotLeader),
            _ => Ok(()),
        }
    }

    /// Counts failed calls in `errors`, by operation.
    pub fn with_errors(mut self, errors: OpErrors) -> Self {
        self.errors = errors;
        self
    }

    /// Counts a failed call to `op` (also for the engine's own calls: acks).
    pub fn failed(&self, op: &'static str) {
        self.errors.inc(op);
    }

    fn count<T, E>(
        &self,
        op: &'static str,
        r: std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if r.is_err() {
            self.failed(op);
        }
        r
    }

    /// Agents' attempt events, from a durable consumer: what was not acked
    /// before a restart is delivered again.
    pub async fn events(&self) -> Result<Events> {
        let r = self.open_events().await;
        self.count("events", r)
    }

    /// Events `seqs` read from the stream itself (a gap the consumer left:
    /// see [`crate::engine::ack_frontier`]).
    pub async fn fetch_events(&self, seqs: std::ops::RangeInclusive<u64>) -> Fetched {
        let mut fetched = Fetched::default();
        let js = jetstream::new(self.client.clone());
        let stream = match js.get_stream(naming::events_stream(&self.prefix)).await {
            Ok(stream) => stream,
            Err(e) => {
                fetched.error = Some(e.to_string());
                return fetched;
            }
        };
        for seq in seqs {
            match stream.get_raw_message(seq).await {
                Ok(message) => fetched.messages.push(message),
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    fetched.gone.push(seq);
                }
                Err(e) => {
                    self.failed("fetch_events");
                    fetched.error = Some(e.to_string());
                    break;
                }
            }
        }
        fetched
    }

    async fn open_events(&self) -> Result<Events> {
        let js = jetstream::new(self.client.clone());
        let config = jetstream::stream::Config {
            num_replicas: self.replicas,
            ..naming::events_stream_config(&self.prefix)
        };
        let stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(nats_err)?;
        // A stream an earlier version made kept every event forever; one an
        // agent made, or an earlier --events-replicas, has other replicas.
        let have = &stream.cached_info().config;
        if have.max_age != config.max_age || have.num_replicas != config.num_replicas {
            js.update_stream(config).await.map_err(nats_err)?;
        }
        let names: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(nats_err)?;
        let has = |n: &str| names.iter().any(|x| x == n);
        // Sequences before the stream's first are gone (expired).
        let first = stream.cached_info().state.first_sequence;
        let deliver_policy = if has(CONSUMER) {
            // A new term takes the consumer over: what an earlier leader
            // pulled and never acked comes again now, not after ACK_WAIT.
            let old = stream.consumer_info(CONSUMER).await.map_err(nats_err)?;
            stream.delete_consumer(CONSUMER).await.map_err(nats_err)?;
            DeliverPolicy::ByStartSequence {
                start_sequence: old.ack_floor.stream_sequence + 1,
            }
        } else if has(EXPLICIT_CONSUMER) {
            // Everything up to its ack floor is done; events acked out of
            // order above it come again, and the engine ignores them as stale.
            let old = stream
                .consumer_info(EXPLICIT_CONSUMER)
                .await
                .map_err(nats_err)?;
            DeliverPolicy::ByStartSequence {
                start_sequence: old.ack_floor.stream_sequence + 1,
            }
        } else {
            DeliverPolicy::All
        };
        let start = match deliver_policy {
            DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
            _ => 1,
        };
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    deliver_policy,
                    ack_policy: jetstream::consumer::AckPolicy::All,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        if has(EXPLICIT_CONSUMER) {
            stream
                .delete_consumer(EXPLICIT_CONSUMER)
                .await
                .map_err(nats_err)?;
        }
        let messages = consumer.messages().await.map_err(nats_err)?;
        Ok(Events {
            messages,
            after: start.max(first).saturating_sub(1),
        })
    }

    pub async fn heartbeats(&self) -> Result<async_nats::Subscriber> {
        let r = self
            .client
            .subscribe(naming::heartbeat_wildcard(&self.prefix))
            .await
            .map_err(nats_err);
        self.count("heartbeats", r)
    }

    /// Asks every agent for a heartbeat now (a fresh scheduler knows none).
    pub async fn ask_heartbeats(&self) -> Result<()> {
        self.may_send()?;
        let r = self
            .client
            .publish(naming::heartbeat_now_subject(&self.prefix), Bytes::new())
            .await
            .map_err(nats_err);
        self.count("ask_heartbeats", r)
    }

    /// Answers an agent's heartbeat with the agent timeout (core NATS, no
    /// answer awaited; a lost ack is made up by the next heartbeat's).
    pub async fn ack_heartbeat(&self, agent: &str, agent_timeout: Duration) {
        let ack = pb::HeartbeatAck {
            agent_timeout_ms: agent_timeout.as_millis() as u64,
        };
        let subject = nats_auth::heartbeat_ack_subject(&self.prefix, agent);
        let r = self
            .client
            .publish(subject, Bytes::from(ack.encode_to_vec()))
            .await
            .map_err(nats_err);
        let _ = self.count("heartbeat_acks", r);
    }

    /// A request to an agent; no answer in time counts as an error of `op`.
    async fn request<R: Message + Default>(
        &self,
        op: &'static str,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<R> {
        let r = async {
            self.may_send()?;
            let request = self.client.request_with_headers(subject, headers, body);
            let msg = tokio::time::timeout(REQUEST_TIMEOUT, request)
                .await
                .map_err(|_| nats_err(format!("no answer within {REQUEST_TIMEOUT:?}")))?
                .map_err(nats_err)?;
            R::decode(msg.payload).map_err(nats_err)
        }
        .await;
        self.count(op, r)
    }

    /// Sends a turn's assignments to one agent in one request, each with
    /// its attempt span's `traceparent` (the parent of the agent's spans).
    /// One result per assignment, in order: Err(reason) when the agent
    /// refused it or did not answer.
    pub async fn assign(
        &self,
        agent: &str,
        batch: pb::AssignBatch,
    ) -> Vec<std::result::Result<(), String>> {
        let n = batch.assignments.len();
        let subject = naming::assign_batch_subject(&self.prefix, agent);
        let reply = self
            .request::<pb::AssignBatchReply>(
                "assign",
                subject,
                async_nats::HeaderMap::new(),
                batch.encode_to_vec().into(),
            )
            .await;
        match reply {
            Ok(r) if r.replies.len() == n => r
                .replies
                .into_iter()
                .map(|r| match r.accepted {
                    true => Ok(()),
                    false => Err(format!("agent `{agent}` refused: {}", r.reason)),
                })
                .collect(),
            Ok(r) => {
                self.failed("assign");
                let reason = match r.malformed.is_empty() {
                    true => format!(
                        "agent `{agent}` answered {} replies to {n} assignments",
                        r.replies.len()
                    ),
                    false => format!("agent `{agent}` refused the batch: {}", r.malformed),
                };
                vec![Err(reason); n]
            }
            Err(e) => vec![Err(format!("agent `{agent}` did not take the task: {e}")); n],
        }
    }

    /// Asks an agent to stop an attempt; Ok(false) when it does not run it.
    pub async fn cancel(&self, agent: &str, c: &pb::CancelAttempt) -> Result<bool> {
        let subject = naming::cancel_subject(&self.prefix, agent);
        let r: pb::CancelReply = self
            .request(
                "cancel",
                subject,
                async_nats::HeaderMap::new(),
                c.encode_to_vec().into(),
            )
            .await?;
        Ok(r.found)
    }
}
