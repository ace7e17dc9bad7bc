//! `drover-bench`: how fast Drover is, and how far that is from what etcd,
//! NATS and the operating system allow on the same machine.
//!
//! - [`cluster`]: etcd, nats-server, the real scheduler and agent binaries;
//! - [`sim`]: simulated agents speaking the agents' NATS protocol;
//! - [`floors`]: etcd, NATS, JetStream and process-spawn floors;
//! - [`scenarios`]: hop latency, throughput, scale, fleet, tracing overhead;
//! - [`failover`]: the leader killed mid-run, until the next task is assigned;
//! - [`chaos`]: every process killed and restarted at random during a run;
//! - [`secure`]: a cluster secured as on a real network (TLS, tokens, NATS permissions);
//! - [`otlp`]: a span-counting OTLP receiver for the tracing overhead;
//! - [`report`]: the table and the JSON lines.

pub mod chaos;
pub mod cluster;
pub mod failover;
pub mod floors;
pub mod otlp;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod secure;
pub mod sim;
pub mod specs;
pub mod stats;
