//! Executors: how a task's command becomes something running on this
//! machine — a process group ([`process`]) or a container ([`docker`]) —
//! behind one small interface, [`Running`], that the attempt supervises.

pub mod cgroup;
pub mod docker;
pub mod guardian;
pub mod process;

use std::time::Duration;

pub use cgroup::CgroupRoot;
pub use docker::{DockerError, DockerExecutor, RunningContainer};
pub use guardian::Guardian;
pub use process::{ProcessSpec, RunningProcess, SpawnError};

use crate::core::Termination;
use process::termination_of;

/// Why a task could not be started, waited for or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),

    #[error("waiting for `{program}`: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A started task, whichever executor runs it.
#[derive(Debug)]
pub enum Running {
    Process(RunningProcess),
    Container(RunningContainer),
}

impl Running {
    /// Waits until the task ends on its own.
    pub async fn wait(&mut self) -> Result<Termination, ExecError> {
        match self {
            Running::Process(p) => {
                p.wait()
                    .await
                    .map(termination_of)
                    .map_err(|source| ExecError::Wait {
                        program: p.program().to_owned(),
                        source,
                    })
            }
            Running::Container(c) => Ok(c.wait().await?),
        }
    }

    /// SIGTERM, `grace`, SIGKILL; returns once the task is gone.
    pub async fn stop(&mut self, grace: Duration) -> Result<(), ExecError> {
        match self {
            Running::Process(p) => match p.stop(grace).await {
                Ok(_) => Ok(()),
                Err(source) => Err(ExecError::Wait {
                    program: p.program().to_owned(),
                    source,
                }),
            },
            Running::Container(c) => Ok(c.stop(grace).await?),
        }
    }

    /// The image that ran (`sha256:…`) once the task ended; empty for a
    /// process.
    pub fn image_digest(&self) -> String {
        match self {
            Running::Process(_) => String::new(),
            Running::Container(c) => c.image_id().to_owned(),
        }
    }

    /// Whether an agent shutdown leaves this task running (a container, unless
    /// `--docker-stop-on-shutdown`) rather than stopping it.
    pub fn survives_shutdown(&self) -> bool {
        match self {
            Running::Process(_) => false,
            Running::Container(c) => !c.stop_on_shutdown(),
        }
    }

    /// Cleans up after the task ended: the rest of a process group is
    /// killed; a container's last output is copied and the container removed.
    /// Returns lines for the attempt's log.
    pub async fn finish(self) -> Vec<String> {
        match self {
            Running::Process(mut p) => {
                // Whatever the leader left behind in its group or cgroup
                // goes too, before the attempt is reported finished.
                p.kill_group();
                p.wait_group_gone().await;
                p.kill_cgroup().await;
                Vec::new()
            }
            Running::Container(c) => c.finish().await,
        }
    }

    /// Leaves the task running as the agent goes away.
    pub fn detach(self) {
        match self {
            // Never asked for (survives_shutdown is false); dropping kills the group.
            Running::Process(p) => drop(p),
            Running::Container(c) => c.detach(),
        }
    }
}
