//! `drover-scheduler`: keeps every run's DAG and state in etcd, decides which
//! ready task runs where, and assigns it over NATS.
//!
//! Shell around the pure core (`drover-scheduler-core`):
//! - [`engine`]: a synchronous state (`engine::EngineState`) fed by one loop
//!   that group-commits its changes to etcd, then acts;
//! - [`fleet`]: the agents as the engine sees them (capacity, allocations, loss);
//! - [`store`]: etcd keys and compare-and-swap transactions;
//! - [`bus`]: NATS subjects, the JetStream events consumer, agent requests;
//! - [`grpc`]: the public API; [`convert`]: protobuf ↔ core types;
//! - [`lineage`]: `GetLineage`, the tree of attempts behind an artifact;
//! - [`code`]: code snapshots, stored once per sha256 in the artifact store;
//! - [`logs`]: `GetLogs` with `follow`, from agents' live logs to the stored log;
//! - [`metrics`]: Prometheus metrics, served on `--metrics-listen`;
//! - [`auth`]: API tokens and roles, the auth layer, the API's TLS;
//! - [`enroll`]: agents' NATS identities and nats-server's authorization block;
//! - [`leader`]: the election among schedulers and the fencing of what the
//!   leader does; [`cluster`]: `GetClusterStatus` (`drover status`).
//!
//! Every run is one trace (design in `drover_telemetry`): [`grpc`] picks the
//! run's trace and root span ids at submit (joining the caller's
//! `traceparent`) and stores them with the run; [`engine`] sends each
//! attempt's context with its assignment and emits attempt and run spans
//! from the recorded timestamps once their end is committed.

pub mod auth;
pub mod bus;
pub mod cluster;
pub mod code;
pub mod convert;
pub mod engine;
pub mod enroll;
pub mod error;
pub mod etcd_members;
pub mod fleet;
pub mod grpc;
pub mod leader;
pub mod lineage;
pub mod logs;
pub mod metrics;
pub mod options;
pub mod queues;
pub mod runs;
pub mod store;
pub mod triggers;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tracing::info;

use drover_api::pb;

pub use error::SchedulerError;
pub use options::SchedulerOptions;

/// Connects to etcd, NATS and the artifact store, then serves gRPC on
/// `listener` until `shutdown` resolves or the engine stops on an error.
pub async fn serve(
    opts: SchedulerOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    opts.validate().map_err(SchedulerError::Config)?;
    // Bound first: a taken port is a configuration error, found before any work.
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| SchedulerError::Config(format!("--metrics-listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let tls = auth::tls::server_config(&opts.api_security)?;
    let auth_mode = opts.api_security.auth_mode(opts.listen);
    let (metrics, mut registry) = metrics::SchedulerMetrics::new();
    let trigger_metrics = triggers::TriggerMetrics::default();
    trigger_metrics.register(&mut registry);
    let refusals = metrics.api_refused.clone();
    let etcd_options = opts
        .etcd_security
        .connect_options(&opts.etcd)
        .map_err(SchedulerError::Config)?;
    let leadership = leader::Leadership::default();
    let store = store::Store::connect_with(&opts.etcd, &opts.prefix, etcd_options)
        .await?
        .with_metrics(metrics.etcd_errors.clone(), metrics.etcd_conflicts.clone())
        .with_leadership(leadership.clone());
    // Loaded before serving: a token created earlier works from the first call.
    let tokens = auth::Tokens::new(&store);
    let tokens_rev = tokens.load().await?;
    if let Some(path) = &opts.api_security.bootstrap_token_file {
        auth::bootstrap_file(&tokens, path).await?;
    }
    let nats_admin = enroll::NatsAdmin {
        nats_prefix: opts.nats_prefix.clone(),
        scheduler_public_key: opts
            .nats_security
            .public_key()
            .map_err(SchedulerError::Config)?,
    };
    let bus = bus::Bus::connect(
        &opts.nats,
        &opts.nats_prefix,
        &opts.nats_security.identity(),
    )
    .await?
    .with_events_replicas(opts.events_replicas)
    .with_errors(metrics.nats_errors.clone())
    .with_leadership(leadership.clone());
    let live_logs = logs::LiveLogSource::new(bus.client(), &opts.nats_prefix);
    let artifacts = drover_artifacts::open(&opts.artifacts)
        .await
        .map_err(|e| SchedulerError::Config(e.to_string()))?;
    let (mut engine, handle) = engine::Engine::new(
        store.clone(),
        artifacts.clone(),
        bus,
        engine::EngineOptions {
            agent_timeout: opts.agent_timeout,
            cancel_grace: opts.cancel_grace,
            preemption_grace: opts.preemption_grace,
            pass_depth: opts.pass_depth as usize,
            placement: opts.placement,
            cache_ttl: opts.cache_ttl,
        },
        metrics,
        leadership.clone(),
    );
    let max_spec_bytes = usize::try_from(opts.max_spec_bytes).unwrap_or(usize::MAX);
    let triggers = triggers::Triggers {
        store: store.clone(),
        engine: handle.clone(),
        artifacts: artifacts.clone(),
        max_spec_bytes,
        metrics: trigger_metrics,
        changed: Arc::default(),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let scheduler_id = opts.scheduler_id();
    let election = leader::ElectionOptions {
        id: scheduler_id.clone(),
        address: opts.advertised(
            listener
                .local_addr()
                .map_err(|e| SchedulerError::Transport(e.to_string()))?,
        ),
        lease: opts.leader_lease,
    };
    let mut engine_task = {
        let (store, leadership, stop) = (store.clone(), leadership.clone(), stop_rx.clone());
        let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
        tokio::spawn(triggers::watch::follow(
            triggers.clone(),
            leading_tx.subscribe(),
            stop_rx.clone(),
        ));
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                let now = *leading.borrow_and_update();
                set_health(&health, now).await;
            }
        });
        tokio::spawn(async move {
            leader::run(store, election, leadership, &mut engine, stop, leading_tx).await
        })
    };
    tokio::spawn(
        tokens
            .clone()
            .keep_current(tokens_rev, stopped(stop_rx.clone())),
    );
    if let Some(listener) = metrics_listener {
        tokio::spawn(drover_metrics::serve(
            listener,
            Arc::new(registry),
            stopped(stop_rx.clone()),
        ));
    }

    // Both versions: grpcurl before 1.8.8, older Postman and Evans speak
    // only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| SchedulerError::Transport(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| SchedulerError::Transport(e.to_string()))?;
    let api = grpc::Api {
        engine: handle,
        store,
        artifacts,
        live_logs,
        max_spec_bytes,
        max_code_bytes: opts.max_code_bytes,
        refusals: refusals.clone(),
        nats_admin,
    };
    let hooks = triggers::webhook::Hooks {
        triggers: triggers.clone(),
        leadership: leadership.clone(),
    };
    // A standby refuses every Drover call, naming the leader.
    let refuse = move |req: tonic::Request<()>| match leadership.refusal() {
        Some(status) => Err(status),
        None => Ok(req),
    };
    let intercepted = |svc| InterceptedService::new(svc, refuse.clone());
    let cluster_api = pb::cluster_server::ClusterServer::new(cluster::ClusterApi {
        store: api.store.clone(),
        id: scheduler_id,
    });
    let triggers_api = pb::triggers_server::TriggersServer::new(triggers::api::TriggersApi {
        triggers,
        refusals: refusals.clone(),
    });
    let agents_api = intercepted(pb::agents_server::AgentsServer::new(api.clone()));
    let queues_api = pb::queues_server::QueuesServer::new(api.clone());
    let addr = listener.local_addr().ok();
    info!(
        listen = ?addr,
        prefix = %opts.prefix,
        nats_prefix = %opts.nats_prefix,
        tls = tls.is_some(),
        mtls = opts.api_security.client_ca.is_some(),
        auth = ?auth_mode,
        tokens = tokens.table().len(),
        "scheduler serving"
    );
    // HTTP/1 too: webhooks (Alertmanager) post plain HTTP/1.1 requests.
    let mut builder = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| SchedulerError::Config(format!("--tls-cert/--tls-key: {e}")))?;
    }
    let server = builder
        .layer(auth::AuthLayer::new(
            auth_mode,
            tokens.table().clone(),
            refusals,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            pb::scheduler_server::SchedulerServer::new(api)
                // Room for the YAML of the largest accepted spec; the
                // spec's own limit is checked after parsing.
                .max_decoding_message_size(max_spec_bytes.saturating_mul(4).max(4 << 20)),
            refuse.clone(),
        ))
        .add_service(agents_api)
        .add_service(InterceptedService::new(queues_api, refuse.clone()))
        .add_service(InterceptedService::new(
            pb::tokens_server::TokensServer::new(auth::service::TokensApi { tokens }),
            refuse.clone(),
        ))
        .add_service(InterceptedService::new(triggers_api, refuse))
        .add_service(hooks)
        .add_service(cluster_api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped(stop_rx));
    tokio::select! {
        r = server => r.map_err(|e| SchedulerError::Transport(e.to_string()))?,
        r = &mut engine_task => {
            return match r {
                Ok(res) => res,
                Err(e) => Err(SchedulerError::Transport(format!("engine task: {e}"))),
            };
        }
    }
    match engine_task.await {
        Ok(res) => res,
        Err(e) => Err(SchedulerError::Transport(format!("engine task: {e}"))),
    }
}

/// Health of the Drover services: SERVING on the leader, NOT_SERVING on a
/// standby, so load balancers send clients to the leader.
async fn set_health(health: &tonic_health::server::HealthReporter, leading: bool) {
    use pb::{agents_server::AgentsServer, queues_server::QueuesServer};
    use pb::{scheduler_server::SchedulerServer, tokens_server::TokensServer};
    if leading {
        health.set_serving::<SchedulerServer<grpc::Api>>().await;
        health.set_serving::<AgentsServer<grpc::Api>>().await;
        health.set_serving::<QueuesServer<grpc::Api>>().await;
        health
            .set_serving::<TokensServer<auth::service::TokensApi>>()
            .await;
    } else {
        health.set_not_serving::<SchedulerServer<grpc::Api>>().await;
        health.set_not_serving::<AgentsServer<grpc::Api>>().await;
        health.set_not_serving::<QueuesServer<grpc::Api>>().await;
        health
            .set_not_serving::<TokensServer<auth::service::TokensApi>>()
            .await;
    }
}
