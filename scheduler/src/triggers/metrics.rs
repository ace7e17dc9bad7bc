//! Trigger metrics: firings by outcome, scheduled times missed, and the lag
//! from a scheduled time to its run.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use drover_api::pb;

type FiringLabels = [(&'static str, String); 2];
type TriggerLabel = [(&'static str, String); 1];

/// Seconds: a per-second schedule is on time well under 0.1 s; a catch-up
/// after a downtime is minutes late.
const LAG_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0];

#[derive(Clone, Debug)]
pub struct TriggerMetrics {
    firings: Family<FiringLabels, Counter>,
    missed: Family<TriggerLabel, Counter>,
    lag: Family<TriggerLabel, Histogram>,
}

impl Default for TriggerMetrics {
    fn default() -> Self {
        Self {
            firings: Family::default(),
            missed: Family::default(),
            lag: Family::new_with_constructor(|| Histogram::new(LAG_BUCKETS)),
        }
    }
}

impl TriggerMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "trigger_firings",
            "Trigger firings by trigger and outcome (started, skipped, failed)",
            self.firings.clone(),
        );
        r.register(
            "trigger_missed",
            "Scheduled times that passed while no scheduler ran and were not caught up, by trigger",
            self.missed.clone(),
        );
        r.register_with_unit(
            "trigger_lag",
            "From a schedule's time to its firing's run being created, by trigger",
            Unit::Seconds,
            self.lag.clone(),
        );
    }

    pub fn fired(&self, trigger: &str, firing: &pb::Firing, now_ms: u64) {
        let outcome = match firing.outcome() {
            pb::FiringOutcome::Started => "started",
            pb::FiringOutcome::Skipped => "skipped",
            pb::FiringOutcome::Missed => "missed",
            pb::FiringOutcome::Failed | pb::FiringOutcome::Unspecified => "failed",
        };
        self.firings
            .get_or_create(&[("trigger", trigger.into()), ("outcome", outcome.into())])
            .inc();
        if firing.cause == "schedule" {
            let lag = now_ms.saturating_sub(firing.due_ms) as f64 / 1000.0;
            self.lag
                .get_or_create(&[("trigger", trigger.into())])
                .observe(lag);
        }
    }

    pub fn missed(&self, trigger: &str, count: u64) {
        self.missed
            .get_or_create(&[("trigger", trigger.into())])
            .inc_by(count);
    }
}
