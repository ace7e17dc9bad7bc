//! `drover-agent`: runs the tasks the scheduler assigns to this machine.
//!
//! * [`core`] — pure decisions: validate an assignment into a plan, track the
//!   attempts this agent knows, turn how a process ended into the reported
//!   failure. No I/O; unit-tested.
//! * `shell` — the I/O around it: NATS (assign/cancel request-reply — the
//!   scheduler sends each turn's assignments to an agent as one batch —,
//!   heartbeats, JetStream events, live logs: what a running attempt's log
//!   file gains, published every 100 ms, and the log so far on request),
//!   the object store, process groups and Docker containers.
//!
//! NATS identity: with `--nats-creds` the agent connects as the NKey it was
//! enrolled with (`drover agent enroll`), on its own inbox prefix, and may
//! use only its own subjects ([`drover_api::nats_auth::agent_permissions`]);
//! it then leaves creating the events stream to the scheduler, and stops at
//! start when the server refuses one of its subscriptions (an id that is not
//! the enrolled one).
//!
//! Tracing: each attempt is an `agent attempt` span (with `fetch inputs`,
//! `pull image`, `execute`, `upload outputs` under it) whose parent is the
//! scheduler's attempt span, taken from the assignment's `traceparent` (in
//! the batch, or a single assignment's NATS headers); the
//! task gets the execute span as `TRACEPARENT`, and attempt events carry the
//! attempt span's context in their headers.
//!
//! [`Agent::run`] is the whole service; `main.rs` only parses flags and
//! waits for a signal.

pub mod core;
mod options;
mod shell;

use std::path::PathBuf;

pub use options::{AgentConfig, AgentOptions};
pub use shell::agent::Agent;
pub use shell::executor::docker::DockerConfig;

/// Why the agent could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An option is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("artifact store: {0}")]
    Artifacts(#[from] drover_artifacts::ArtifactError),

    #[error("creating work dir `{}`: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("connecting to NATS at `{url}`: {reason}")]
    Connect { url: String, reason: String },

    #[error(transparent)]
    NatsIdentity(#[from] drover_api::nats_connect::NatsConnectError),

    /// The server refused what this agent's identity asked for: it was
    /// enrolled under another id, or nats-server's config lacks its entry.
    #[error("NATS refused agent `{agent}`: {violations}; the agent's --id must be the id its --nats-creds were enrolled for, and nats-server's config must hold that agent's entry (`drover nats-config`)")]
    NatsPermissions { agent: String, violations: String },

    /// The docker executor is enabled and Docker does not answer (or listing
    /// this agent's containers failed).
    #[error("docker executor: {0}")]
    Docker(String),

    /// The process executor is enabled and its guardian (which kills the
    /// tasks if the agent dies) could not be forked.
    #[error("starting the process guardian: {0}")]
    Guardian(#[source] std::io::Error),

    #[error("events stream `{name}`: {reason}")]
    Stream { name: String, reason: String },

    #[error("subscribing to `{subject}`: {reason}")]
    Subscribe { subject: String, reason: String },

    /// The NATS connection closed for good.
    #[error("subscription to `{subject}` ended (NATS connection closed)")]
    SubscriptionClosed { subject: String },
}
