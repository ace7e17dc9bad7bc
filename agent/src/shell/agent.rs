//! The agent service: connects to NATS and the object store, answers
//! assignments and cancels, heartbeats, and runs attempts until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use drover_api::pb::{
    AssignBatch, AssignBatchReply, AssignReply, Assignment, CancelAttempt, CancelReply,
};
use drover_api::{naming, nats_auth, nats_connect};
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::core::container::{started_with_work_dir, LABEL_WORK_DIR};
use crate::core::{decide_assign, AssignDecision, AttemptKey, ExecutorKind, StopCause};
use crate::options::{AgentConfig, AgentOptions};
use crate::shell::attempt::{self, AttemptContext};
use crate::shell::code::{CodeCache, CODE_DIR};
use crate::shell::events::{self, EventPublisher};
use crate::shell::executor::{CgroupRoot, DockerExecutor, Guardian};
use crate::shell::fence::{self, FenceConfig};
use crate::shell::heartbeat::{self, HeartbeatConfig};
use crate::shell::live_log::LiveLogs;
use crate::shell::metrics::AgentMetrics;
use crate::shell::registry::{Registry, StopRequest};
use crate::shell::slots::{Slots, SLOTS_DIR};
use crate::AgentError;

/// After the kill grace, how long stopped attempts get to upload their logs
/// and publish their final events before those are given up.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(15);

/// The Drover agent.
pub struct Agent;

impl Agent {
    /// Runs the agent until `shutdown` resolves, then stops every running
    /// attempt (SIGTERM, `--kill-grace`, SIGKILL), reports them failed, and
    /// returns. Containers are left running instead (unless
    /// `--docker-stop-on-shutdown`): the next start adopts them, as it adopts
    /// every container labelled with this agent's id.
    pub async fn run(
        opts: AgentOptions,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        let cfg = opts.validate()?;
        // Bound first: a taken port is a configuration error, found before any work.
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::MetricsListen { addr, source })?,
            ),
            None => None,
        };
        let (service, registry) = Service::connect(cfg).await?;
        let (metrics_stop, metrics_stopped) = watch::channel(false);
        let server = metrics_listener.map(|listener| {
            let mut stopped = metrics_stopped;
            tokio::spawn(drover_metrics::serve(
                listener,
                Arc::new(registry),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        let result = service.serve(shutdown).await;
        let _ = metrics_stop.send(true);
        if let Some(server) = server {
            let _ = server.await;
        }
        result
    }
}

struct Service {
    cfg: AgentConfig,
    client: Client,
    assigns: Subscriber,
    assign_batches: Subscriber,
    cancels: Subscriber,
    log_requests: Subscriber,
    registry: Registry,
    ctx: Arc<AttemptContext>,
    abandon: watch::Sender<bool>,
    /// The highest leader term (election revision) an assignment batch
    /// came with: a batch from an earlier term is a deposed leader's.
    leader_term: std::sync::atomic::AtomicI64,
}

/// Fails when the server refused any of the subscriptions made so far: a
/// permissions violation arrives asynchronously, so this waits until the
/// server has answered everything sent before (its echo on our own inbox)
/// and a moment for the error callback.
async fn refused_subjects(
    client: &Client,
    errors: &nats_connect::ServerErrors,
    agent: &str,
) -> Result<(), AgentError> {
    let synced = async {
        let inbox = client.new_inbox();
        let mut echo = client.subscribe(inbox.clone()).await.ok()?;
        client.publish(inbox, Bytes::new()).await.ok()?;
        let got = echo.next().await;
        let _ = echo.unsubscribe().await;
        got
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), synced).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let violations: Vec<String> = errors
        .take()
        .into_iter()
        .filter(|e| nats_connect::is_permissions_violation(e))
        .collect();
    match violations.is_empty() {
        true => Ok(()),
        false => Err(AgentError::NatsPermissions {
            agent: agent.to_owned(),
            violations: violations.join("; "),
        }),
    }
}

impl Service {
    /// Connects everything; also returns the metrics registry to serve.
    async fn connect(
        cfg: AgentConfig,
    ) -> Result<(Self, prometheus_client::registry::Registry), AgentError> {
        let docker = if cfg.executors.contains(&ExecutorKind::Docker) {
            Some(
                DockerExecutor::connect(&cfg.docker, &cfg.id)
                    .await
                    .map_err(|e| AgentError::Docker(e.to_string()))?,
            )
        } else {
            None
        };
        let guardian = if cfg.executors.contains(&ExecutorKind::Process) {
            Some(Arc::new(Guardian::start().map_err(AgentError::Guardian)?))
        } else {
            None
        };
        let cgroups = match guardian {
            Some(_) if cfg.task_cgroups => {
                let id = cfg.id.clone();
                tokio::task::spawn_blocking(move || CgroupRoot::open(&id))
                    .await
                    .ok()
                    .flatten()
                    .map(Arc::new)
            }
            _ => None,
        };
        let store = drover_artifacts::open_with(&cfg.artifacts, &cfg.store).await?;
        let code = CodeCache::open(&cfg.work_dir, store.clone()).map_err(|source| {
            AgentError::WorkDir {
                path: cfg.work_dir.join(CODE_DIR),
                source,
            }
        })?;
        tokio::fs::create_dir_all(&cfg.work_dir)
            .await
            .map_err(|source| AgentError::WorkDir {
                path: cfg.work_dir.clone(),
                source,
            })?;
        let slots = match guardian {
            Some(_) => {
                let work_dir = cfg.work_dir.clone();
                let opened = tokio::task::spawn_blocking(move || Slots::open(&work_dir))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                Some(Arc::new(opened.map_err(|source| AgentError::WorkDir {
                    path: cfg.work_dir.join(SLOTS_DIR),
                    source,
                })?))
            }
            None => None,
        };

        let (options, server_errors) = nats_connect::options(
            &cfg.nats_identity,
            &format!("drover-agent {}", cfg.id),
            &nats_auth::agent_inbox_prefix(&cfg.nats_prefix, &cfg.id),
        )?;
        let client = options
            .connect(nats_connect::servers(&cfg.nats))
            .await
            .map_err(|e| AgentError::Connect {
                url: cfg.nats.clone(),
                reason: match nats_connect::is_auth_refusal(&e.to_string()) {
                    true => format!("{e} (is --nats-creds this agent's, and its entry in nats-server's config?)"),
                    false => e.to_string(),
                },
            })?;
        let js = async_nats::jetstream::new(client.clone());
        // With an identity, the agent may not create the stream: the scheduler does.
        let may_create = cfg.nats_identity.creds.is_none();
        events::ensure_stream(&js, &cfg.nats_prefix, may_create).await?;

        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| AgentError::Subscribe {
                        subject,
                        reason: e.to_string(),
                    })
            }
        };
        let assigns = subscribe(naming::assign_subject(&cfg.nats_prefix, &cfg.id)).await?;
        let assign_batches =
            subscribe(naming::assign_batch_subject(&cfg.nats_prefix, &cfg.id)).await?;
        let cancels = subscribe(naming::cancel_subject(&cfg.nats_prefix, &cfg.id)).await?;
        let log_requests = subscribe(naming::live_log_subject(&cfg.nats_prefix, &cfg.id)).await?;
        refused_subjects(&client, &server_errors, &cfg.id).await?;

        let registry = Registry::default();
        let (metrics, metrics_registry) =
            AgentMetrics::new(&cfg.id, &cfg.executors, registry.clone());
        let (abandon, abandon_rx) = watch::channel(false);
        let ctx = Arc::new(AttemptContext {
            agent_id: cfg.id.clone(),
            work_dir: cfg.work_dir.clone(),
            store,
            events: EventPublisher::new(js, &cfg.nats_prefix, &cfg.id, abandon_rx),
            live: LiveLogs::new(client.clone(), &cfg.nats_prefix, &cfg.id),
            registry: registry.clone(),
            kill_grace: cfg.kill_grace,
            executors: cfg.executors.clone(),
            docker,
            guardian,
            slots,
            cgroups,
            limits: cfg.limits,
            code,
            metrics,
        });
        let service = Service {
            cfg,
            client,
            assigns,
            assign_batches,
            cancels,
            log_requests,
            registry,
            ctx,
            abandon,
            leader_term: Default::default(),
        };
        Ok((service, metrics_registry))
    }

    async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let mut attempts = JoinSet::new();
        // Before the first heartbeat and the first assignment: adopted
        // attempts are reported running, and a re-sent assignment for one
        // of them is recognised as a duplicate.
        self.adopt_containers(&mut attempts).await?;

        let (heartbeat_stop, heartbeat_stop_rx) = watch::channel(false);
        let fence_cfg = FenceConfig {
            agent_id: self.cfg.id.clone(),
            ack_subject: nats_auth::heartbeat_ack_subject(&self.cfg.nats_prefix, &self.cfg.id),
            contact_subject: nats_auth::contact_subject(&self.cfg.nats_prefix, &self.cfg.id),
            heartbeat_interval: self.cfg.heartbeat_interval,
            kill_grace: self.cfg.kill_grace,
        };
        // Subscribed before the first heartbeat, so its ack is not missed.
        let fencing = fence::subscribe(&self.client, &fence_cfg)
            .await
            .map(|subs| {
                tokio::spawn(fence::run(
                    self.client.clone(),
                    fence_cfg,
                    subs,
                    self.registry.clone(),
                    heartbeat_stop_rx.clone(),
                ))
            });
        let heartbeat = tokio::spawn(heartbeat::run(
            self.client.clone(),
            HeartbeatConfig::new(
                &self.cfg.nats_prefix,
                &self.cfg.id,
                &self.cfg.executors,
                self.cfg.heartbeat_interval,
                &self.cfg.capacity,
            ),
            naming::heartbeat_now_subject(&self.cfg.nats_prefix),
            self.registry.clone(),
            self.ctx.metrics.clone(),
            heartbeat_stop_rx,
        ));
        info!(
            agent = %self.cfg.id,
            nats = %self.cfg.nats,
            artifacts = %self.cfg.artifacts,
            work_dir = %self.cfg.work_dir.display(),
            executors = %crate::core::executor::names(&self.cfg.executors),
            "agent ready"
        );

        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                msg = self.assigns.next() => match msg {
                    Some(msg) => self.on_assign(msg, &mut attempts).await,
                    None => break Err(AgentError::SubscriptionClosed {
                        subject: naming::assign_subject(&self.cfg.nats_prefix, &self.cfg.id),
                    }),
                },
                msg = self.assign_batches.next() => match msg {
                    Some(msg) => self.on_assign_batch(msg, &mut attempts).await,
                    None => break Err(AgentError::SubscriptionClosed {
                        subject: naming::assign_batch_subject(&self.cfg.nats_prefix, &self.cfg.id),
                    }),
                },
                msg = self.cancels.next() => match msg {
                    Some(msg) => self.on_cancel(msg).await,
                    None => break Err(AgentError::SubscriptionClosed {
                        subject: naming::cancel_subject(&self.cfg.nats_prefix, &self.cfg.id),
                    }),
                },
                msg = self.log_requests.next() => match msg {
                    // Off the loop: a read of the file must not hold up assignments.
                    Some(msg) => {
                        let live = self.ctx.live.clone();
                        tokio::spawn(async move { live.answer(msg).await });
                    }
                    None => break Err(AgentError::SubscriptionClosed {
                        subject: naming::live_log_subject(&self.cfg.nats_prefix, &self.cfg.id),
                    }),
                },
                Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                    if let Err(e) = joined {
                        error!(error = %e, "attempt task ended abnormally");
                    }
                }
            }
        };

        info!(agent = %self.cfg.id, "shutting down");
        // No new work from here on.
        let _ = self.assigns.unsubscribe().await;
        let _ = self.assign_batches.unsubscribe().await;
        let _ = self.cancels.unsubscribe().await;
        let _ = self.log_requests.unsubscribe().await;
        self.stop_attempts(&mut attempts).await;
        let _ = heartbeat_stop.send(true);
        if let Err(e) = heartbeat.await {
            error!(error = %e, "heartbeat task ended abnormally");
        }
        if let Some(fencing) = fencing {
            if let Err(e) = fencing.await {
                error!(error = %e, "self-fencing task ended abnormally");
            }
        }
        if let Err(e) = self.client.flush().await {
            warn!(error = %e, "flushing the NATS connection failed");
        }
        info!(agent = %self.cfg.id, "stopped");
        result
    }

    /// One assignment, the scheduler's trace context in the headers.
    async fn on_assign(&self, msg: Message, attempts: &mut JoinSet<()>) {
        let reply = match Assignment::decode(msg.payload.clone()) {
            Ok(assignment) => {
                // The scheduler's attempt span: parent of this agent's spans.
                let parent = drover_telemetry::propagation::extract_nats(msg.headers.as_ref());
                self.take(assignment, parent, attempts)
            }
            Err(e) => self.refuse(format!("malformed assignment: {e}")),
        };
        self.reply(&msg, reply.encode_to_vec()).await;
    }

    /// A scheduler turn's assignments to this agent, each taken as if it
    /// came alone; one reply each, in order.
    async fn on_assign_batch(&self, msg: Message, attempts: &mut JoinSet<()>) {
        let reply = match AssignBatch::decode(msg.payload.clone()) {
            Ok(batch) if !self.current_term(batch.leader_revision) => {
                warn!(agent = %self.cfg.id, term = batch.leader_revision, "assignments from a deposed leader refused");
                AssignBatchReply {
                    replies: Vec::new(),
                    malformed: format!(
                        "sent by a deposed leader (term {} is older than the current one)",
                        batch.leader_revision
                    ),
                }
            }
            Ok(batch) => {
                let mut traceparents = batch.traceparents.into_iter();
                let replies = batch
                    .assignments
                    .into_iter()
                    .map(|assignment| {
                        let parent = traceparents
                            .next()
                            .and_then(|tp| drover_telemetry::propagation::from_traceparent(&tp))
                            .unwrap_or_default();
                        self.take(assignment, parent, attempts)
                    })
                    .collect();
                AssignBatchReply {
                    replies,
                    malformed: String::new(),
                }
            }
            Err(e) => {
                warn!(agent = %self.cfg.id, error = %e, "malformed assignment batch refused");
                AssignBatchReply {
                    replies: Vec::new(),
                    malformed: e.to_string(),
                }
            }
        };
        self.reply(&msg, reply.encode_to_vec()).await;
    }

    /// Whether a batch of leader term `term` may be taken (0: a sender that
    /// does not say), remembering the highest term seen.
    fn current_term(&self, term: i64) -> bool {
        use std::sync::atomic::Ordering;
        term == 0 || self.leader_term.fetch_max(term, Ordering::AcqRel) <= term
    }

    /// Starts an assignment (or recognises it as one already known), or
    /// says why not.
    fn take(
        &self,
        assignment: Assignment,
        parent: drover_telemetry::Context,
        attempts: &mut JoinSet<()>,
    ) -> AssignReply {
        let decision = decide_assign(&self.cfg.id, &self.cfg.executors, &assignment, |k| {
            self.registry.is_known(k)
        });
        match decision {
            AssignDecision::Start(plan) => {
                if let Some(stop) = self.registry.start(plan.key.clone()) {
                    let key = &plan.key;
                    let wait = assignment.task.as_ref().and_then(|t| t.wait_when_lost());
                    if let Some(lost_after) = wait {
                        self.registry.wait_when_lost(key, lost_after);
                    }
                    info!(run = %key.run_id, task = %key.task, attempt = key.attempt, "assigned");
                    let ctx = Arc::clone(&self.ctx);
                    attempts.spawn(attempt::run(ctx, *plan, assignment, stop, parent));
                }
                accepted()
            }
            AssignDecision::Duplicate(key) => {
                info!(
                    run = %key.run_id, task = %key.task, attempt = key.attempt,
                    "duplicate assignment, already known"
                );
                accepted()
            }
            AssignDecision::Refuse(reason) => self.refuse(reason),
        }
    }

    fn refuse(&self, reason: String) -> AssignReply {
        warn!(agent = %self.cfg.id, reason = %reason, "assignment refused");
        AssignReply {
            accepted: false,
            reason,
        }
    }

    async fn on_cancel(&self, msg: Message) {
        let found = match CancelAttempt::decode(msg.payload.clone()) {
            Ok(CancelAttempt {
                attempt: Some(attempt),
                grace_ms,
            }) => {
                let key = AttemptKey::from(&attempt);
                let grace = if grace_ms == 0 {
                    self.cfg.kill_grace
                } else {
                    Duration::from_millis(grace_ms)
                };
                let request = StopRequest {
                    cause: StopCause::Cancelled,
                    grace,
                };
                let found = self.registry.request_stop(&key, request);
                info!(
                    run = %key.run_id, task = %key.task, attempt = key.attempt, found,
                    "cancel requested"
                );
                found
            }
            Ok(CancelAttempt { attempt: None, .. }) => {
                warn!("cancel without an attempt");
                false
            }
            Err(e) => {
                warn!(error = %e, "malformed cancel");
                false
            }
        };
        self.reply(&msg, CancelReply { found }.encode_to_vec())
            .await;
    }

    async fn reply(&self, msg: &Message, body: Vec<u8>) {
        let Some(reply) = msg.reply.clone() else {
            debug!(subject = %msg.subject, "request without a reply subject");
            return;
        };
        if let Err(e) = self.client.publish(reply, Bytes::from(body)).await {
            warn!(subject = %msg.subject, error = %e, "sending reply failed");
        }
    }

    /// Adopts the containers an earlier life of this agent started (found by
    /// their `drover.agent` label): running or exited, each is finished as if
    /// this agent had started it. One whose plan is lost is stopped and removed.
    async fn adopt_containers(&self, attempts: &mut JoinSet<()>) -> Result<(), AgentError> {
        let Some(docker) = self.ctx.docker.as_ref() else {
            return Ok(());
        };
        let found = docker
            .list_owned()
            .await
            .map_err(|e| AgentError::Docker(e.to_string()))?;
        if !found.is_empty() {
            info!(
                containers = found.len(),
                "found containers from an earlier start"
            );
        }
        for container in found {
            if !started_with_work_dir(&container.labels, &self.ctx.work_dir) {
                warn!(
                    container = %container.name,
                    work_dir = ?container.labels.get(LABEL_WORK_DIR),
                    "a container with this agent's id was started with another work dir; leaving it alone"
                );
                continue;
            }
            let ctx = Arc::clone(&self.ctx);
            match attempt::recover_plan(&ctx, &container).await {
                Ok(plan) => match self.registry.start(plan.key.clone()) {
                    Some(stop) => {
                        attempts.spawn(attempt::adopt(ctx, plan, container, stop));
                    }
                    None => {
                        let reason = format!("attempt {} already has a container", plan.key);
                        attempts.spawn(attempt::abandon(ctx, container, None, reason));
                    }
                },
                Err((key, reason)) => {
                    // Known (so not started again) until its failure is reported.
                    let key = key.filter(|k| self.registry.start(k.clone()).is_some());
                    attempts.spawn(attempt::abandon(ctx, container, key, reason));
                }
            }
        }
        Ok(())
    }

    /// SIGTERM → grace → SIGKILL every running attempt, give them time to
    /// report, then give up on what is left.
    async fn stop_attempts(&self, attempts: &mut JoinSet<()>) {
        let request = StopRequest {
            cause: StopCause::Shutdown {
                agent_id: self.cfg.id.clone(),
            },
            grace: self.cfg.kill_grace,
        };
        let running = self.registry.request_stop_all(&request);
        if running > 0 {
            info!(running, grace = ?self.cfg.kill_grace, "stopping running attempts");
        }
        let drain = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(self.cfg.kill_grace + SHUTDOWN_SLACK, drain)
            .await
            .is_ok()
        {
            return;
        }
        warn!(
            left = attempts.len(),
            "attempts still reporting at the shutdown deadline, giving up on their events"
        );
        let _ = self.abandon.send(true);
        let drain = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            // Dropping an attempt kills its process group (RunningProcess's Drop).
            attempts.shutdown().await;
        }
    }
}

fn accepted() -> AssignReply {
    AssignReply {
        accepted: true,
        reason: String::new(),
    }
}
