//! The scheduler's pure core. Nothing here does I/O, spawns, awaits or reads
//! the clock: every function takes the current time and the facts it needs,
//! and returns decisions for the shell (`drover-scheduler`) to commit to etcd
//! and then carry out. That keeps it fast to unit-test and to benchmark.
//!
//! - [`dag`]: one run's task state machine (ready, attempts, retries, fail-fast, cancel).
//! - [`cache`]: the step cache's key and policy.
//! - [`retry`]: exponential backoff.
//! - [`ids`]: run, agent, task and attempt identifiers.
//! - [`placement`]: which live agent takes a ready task.
//! - [`queue_rules`]: which changes to the set of queues are allowed.
//! - [`admission`]: priority queues, quotas, fair sharing, borrowing, backfill
//!   and preemption: which ready tasks start now.
//! - [`triggers`]: cron schedules and catch-up, data batches, alert groups:
//!   which firings start runs.

pub mod admission;
pub mod cache;
pub mod dag;
pub mod ids;
pub mod placement;
pub mod queue_rules;
pub mod retry;
pub mod triggers;

/// Milliseconds since the Unix epoch; the shell passes the clock in.
pub type Millis = u64;
