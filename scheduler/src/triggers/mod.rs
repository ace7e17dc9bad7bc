//! Triggers: runs of a registered pipeline started by a cron schedule, by
//! new objects under a prefix, by an Alertmanager webhook, or by hand.
//!
//! - [`records`]: how triggers are kept in etcd.
//! - [`fire`]: one firing, recorded and its run created in one transaction.
//! - [`watch`]: the leader's loop that fires schedules and polls prefixes.
//! - [`api`]: the `Triggers` gRPC service.
//! - [`webhook`]: Alertmanager's webhook, `/hooks/alertmanager/<trigger>`.
//!
//! The decisions (when, which objects, which alerts) are
//! `drover_scheduler_core::triggers`'.

pub mod api;
pub mod fire;
pub mod metrics;
pub mod records;
pub mod watch;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::Notify;

use drover_api::pb;
use drover_scheduler_core::triggers::schedule::{CatchUp, Schedule, ScheduleError};
use drover_scheduler_core::triggers::Concurrency;

use crate::engine::EngineHandle;
use crate::store::Store;

pub use metrics::TriggerMetrics;

/// What firing needs; cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    pub store: Store,
    pub engine: EngineHandle,
    pub artifacts: drover_artifacts::Store,
    pub max_spec_bytes: usize,
    pub metrics: TriggerMetrics,
    /// Wakes the leader's loop when a trigger changed.
    pub changed: Arc<Notify>,
}

pub fn concurrency_of(settings: &pb::TriggerSettings) -> Concurrency {
    match settings.concurrency() {
        pb::Concurrency::Forbid => Concurrency::Forbid,
        pb::Concurrency::Replace => Concurrency::Replace,
        pb::Concurrency::Unspecified | pb::Concurrency::Allow => Concurrency::Allow,
    }
}

pub fn catch_up_of(cron: &pb::CronSource) -> CatchUp {
    match cron.catch_up() {
        pb::CatchUp::None => CatchUp::None,
        pb::CatchUp::All => CatchUp::All,
        pb::CatchUp::Unspecified | pb::CatchUp::Last => CatchUp::Last,
    }
}

pub fn schedule_of(cron: &pb::CronSource) -> Result<Schedule, ScheduleError> {
    Schedule::parse(&cron.expression, &cron.timezone)
}

/// When a cron trigger fires next (None: not a cron trigger, or paused).
pub fn next_due(record: &pb::TriggerRecord, now: u64) -> Option<u64> {
    let source = record.settings.as_ref()?.source.as_ref()?;
    let pb::trigger_settings::Source::Cron(cron) = source else {
        return None;
    };
    if record.paused {
        return None;
    }
    schedule_of(cron)
        .ok()?
        .next_after(record.last_due_ms.max(now))
}
