//! Queue settings: validation of what callers send, and the conversion to the
//! pure core's `admission::Queue`.

use drover_api::pb;
use drover_api::spec::{is_queue_name, MAX_PRIORITY};
use drover_scheduler_core::admission;

use crate::error::{Result, SchedulerError};

/// The queue every run without `queue:` goes to; it exists from first start.
pub const DEFAULT_QUEUE: &str = "default";

fn invalid(field: &'static str, message: String) -> SchedulerError {
    SchedulerError::InvalidArgument { field, message }
}

/// Checks a queue sent by a caller and fills defaults; the error names the
/// field and the value.
pub fn validate(mut q: pb::Queue) -> Result<pb::Queue> {
    if !is_queue_name(&q.name) {
        return Err(invalid(
            "name",
            format!(
                "invalid queue name `{}` (use lowercase letters, digits and `-`)",
                q.name
            ),
        ));
    }
    if !(0..=MAX_PRIORITY).contains(&q.priority) {
        return Err(invalid(
            "priority",
            format!("`{}` must be between 0 and {MAX_PRIORITY}", q.priority),
        ));
    }
    if q.weight == 0 {
        q.weight = 1;
    }
    if q.max_running == Some(0) {
        return Err(invalid(
            "max_running",
            "`0` would admit nothing (pause the queue instead)".into(),
        ));
    }
    if q.preemption() == pb::Preemption::Unspecified {
        q.preemption = pb::Preemption::Never as i32;
    }
    Ok(q)
}

pub fn default_queue() -> pb::Queue {
    pb::Queue {
        name: DEFAULT_QUEUE.into(),
        weight: 1,
        preemption: pb::Preemption::Never as i32,
        ..Default::default()
    }
}

pub fn to_core(q: &pb::Queue) -> admission::Queue {
    let quota = q.quota.unwrap_or_default();
    admission::Queue {
        name: q.name.clone(),
        priority: q.priority,
        weight: q.weight.max(1),
        quota: admission::Quota {
            cpu_millis: quota.cpu_millis.map(u64::from),
            memory_bytes: quota.memory_bytes,
            gpus: quota.gpus.map(u64::from),
        },
        max_running: q.max_running,
        paused: q.paused,
        preemption: match q.preemption() {
            pb::Preemption::LowerPriority => admission::Preemption::LowerPriority,
            _ => admission::Preemption::Never,
        },
        borrow: q.borrow,
    }
}

/// Checks a run priority from a spec, a flag or SetRunPriority.
pub fn check_priority(priority: i64) -> Result<i64> {
    if (0..=MAX_PRIORITY).contains(&priority) {
        Ok(priority)
    } else {
        Err(invalid(
            "priority",
            format!("`{priority}` must be between 0 and {MAX_PRIORITY}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn validation_names_the_field_and_value() -> TestResult {
        let bad = pb::Queue {
            name: "Bad_Q".into(),
            ..Default::default()
        };
        assert_eq!(
            validate(bad).unwrap_err().to_string(),
            "name: invalid queue name `Bad_Q` (use lowercase letters, digits and `-`)"
        );
        let neg = pb::Queue {
            name: "ok".into(),
            priority: -1,
            ..Default::default()
        };
        assert_eq!(
            validate(neg).unwrap_err().to_string(),
            "priority: `-1` must be between 0 and 1000000"
        );
        let q = validate(pb::Queue {
            name: "ok".into(),
            ..Default::default()
        })?;
        assert_eq!(q.weight, 1);
        assert_eq!(q.preemption(), pb::Preemption::Never);
        Ok(())
    }

    #[test]
    fn core_queue_keeps_unset_quotas_unlimited() {
        let q = pb::Queue {
            name: "train".into(),
            priority: 5,
            weight: 3,
            quota: Some(pb::Quota {
                gpus: Some(4),
                ..Default::default()
            }),
            preemption: pb::Preemption::LowerPriority as i32,
            borrow: true,
            ..Default::default()
        };
        let c = to_core(&q);
        assert_eq!(c.quota.gpus, Some(4));
        assert_eq!(c.quota.cpu_millis, None);
        assert_eq!(c.preemption, admission::Preemption::LowerPriority);
        assert!(c.borrow);
    }
}
