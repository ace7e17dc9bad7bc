//! Executors: how a task's command becomes something running on this
//! machine. Only `process` exists today; `docker` comes with its own issue.

pub mod process;

pub use process::{ProcessSpec, RunningProcess, SpawnError};

use crate::core::ExecutorKind;

/// Starts a task with the executor its plan chose.
pub fn spawn(kind: ExecutorKind, spec: ProcessSpec<'_>) -> Result<RunningProcess, SpawnError> {
    match kind {
        ExecutorKind::Process => RunningProcess::spawn(spec),
    }
}
