//! The scheduler's engine: the one owner of in-memory run and fleet state.
//!
//! - [`state`]: [`EngineState`], synchronous and free of I/O: takes one
//!   input (a request, an agent event, a heartbeat, a tick) at a given time
//!   and returns what to commit and what to send. Unit-tested directly
//!   (`tests`), including replays of recorded inputs.
//! - [`service`]: the async loop around it ([`Engine`]): gathers inputs,
//!   commits each turn's changes to etcd, then carries the turn out.
//! - [`handle`]: [`EngineHandle`], the gRPC layer's way in.
//! - `commands`, `agent_events`, `admission`, `commit`, `recovery`, `spans`,
//!   `conditions`, `cache` (the step cache), `for_each` (reading and expanding `for_each` lists):
//!   the state's work by concern; [`records`]: the versioned record every
//!   write to etcd goes through.
//!
//! Tracing: each assignment carries its attempt span's context (derived from
//! the run's stored trace id, so it is the same after a restart); the
//! attempt spans and the run's root span are emitted from the recorded
//! timestamps once they end and their end is committed (see
//! `drover_telemetry` for the design).

use std::time::Duration;

use drover_scheduler_core::placement::Strategy;

pub(crate) mod ack_frontier;
mod admission;
mod agent_events;
mod cache;
mod commands;
mod commit;
mod conditions;
mod event_message;
mod for_each;
pub mod handle;
pub mod records;
mod recovery;
pub mod service;
mod spans;
pub mod state;

#[cfg(test)]
mod tests;

pub use admission::{WaitBoard, Waiting};
pub use for_each::{item_text, parse_list, render, ListRead};
pub use handle::{EngineHandle, Request, Response};
pub use recovery::Stored;
pub use service::{now_ms, Engine};
pub use state::{AfterCommit, Answer, EngineState, Input, ReplyId, Send, Turn};

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub agent_timeout: Duration,
    pub cancel_grace: Duration,
    pub preemption_grace: Duration,
    pub placement: Strategy,
    /// How many Ready tasks of each queue one admission pass looks at, in
    /// the queue's order (`--pass-depth`; Slurm's `default_queue_depth`
    /// plays this part). Looking at the whole backlog made every turn
    /// O(backlog) — ~0.25 ms of scheduler CPU per task with 100,000
    /// waiting — while only as many tasks as there is room for can start.
    /// The rest keep their places; backfill looks no deeper than this either.
    pub pass_depth: usize,
    /// How long step-cache entries are kept.
    pub cache_ttl: Duration,
}
