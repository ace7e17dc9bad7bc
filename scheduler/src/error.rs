//! The scheduler's error type and its one mapping to gRPC status codes.

use drover_api::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("run `{0}` not found")]
    RunNotFound(String),
    #[error("agent `{0}` not found")]
    AgentNotFound(String),
    #[error("queue `{0}` not found")]
    QueueNotFound(String),
    #[error("queue `{0}` already exists")]
    QueueExists(String),
    /// Something to create is there already; the message names it.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request conflicts with the state (e.g. deleting a queue in use).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("run `{run}` has no task `{task}`")]
    TaskNotFound { run: String, task: String },
    #[error("{0}")]
    LogNotFound(String),
    /// Something else asked for is not there; the message names it.
    #[error("{0}")]
    NotFound(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error("artifact store: {0}")]
    Artifacts(String),
    /// A compare-and-swap lost: another writer changed the same keys.
    #[error("state changed concurrently; retry")]
    Conflict,
    #[error("stored value at `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("scheduler is shutting down")]
    ShuttingDown,
    /// This process's leadership is gone (a fenced transaction failed or
    /// its lease expired): it must stop acting at once.
    #[error("not the leader any more")]
    NotLeader,
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("grpc server: {0}")]
    Transport(String),
}

impl From<SchedulerError> for tonic::Status {
    fn from(e: SchedulerError) -> Self {
        use tonic::Code;
        let code = match &e {
            SchedulerError::InvalidSpec(_)
            | SchedulerError::InvalidArgument { .. }
            | SchedulerError::Config(_) => Code::InvalidArgument,
            SchedulerError::QueueExists(_) | SchedulerError::AlreadyExists(_) => {
                Code::AlreadyExists
            }
            SchedulerError::FailedPrecondition(_) => Code::FailedPrecondition,
            SchedulerError::RunNotFound(_)
            | SchedulerError::QueueNotFound(_)
            | SchedulerError::AgentNotFound(_)
            | SchedulerError::TaskNotFound { .. }
            | SchedulerError::LogNotFound(_)
            | SchedulerError::NotFound(_) => Code::NotFound,
            SchedulerError::Conflict => Code::Aborted,
            SchedulerError::Etcd(_)
            | SchedulerError::Nats(_)
            | SchedulerError::Artifacts(_)
            | SchedulerError::ShuttingDown
            | SchedulerError::NotLeader
            | SchedulerError::Unavailable(_) => Code::Unavailable,
            SchedulerError::Corrupt { .. } | SchedulerError::Transport(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
