//! The agent's I/O shell: NATS, the object store, processes, Docker and the
//! file system. It performs what `crate::core` decides.

pub mod agent;
pub mod attempt;
pub mod code;
pub mod events;
pub mod executor;
pub mod fence;
pub mod gpu;
pub mod heartbeat;
pub mod host;
pub mod limits;
pub mod live_log;
pub mod metrics;
pub mod registry;
pub mod slots;
