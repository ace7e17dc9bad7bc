//! Cron schedules: parsing (croner: 5 fields, or 6 with seconds first, in an
//! IANA timezone), the next scheduled time, and which scheduled times fire
//! when the scheduler looks again after a while (`--catch-up`).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::Millis;

/// At most this many firings are caught up at once (`--catch-up all`); the
/// older ones are counted as missed.
pub const MAX_CATCH_UP: usize = 100;

/// Scheduled times counted past a downtime before giving up counting (a
/// per-second schedule after a day down).
const MAX_SCAN: usize = 100_000;

/// Firings due while no scheduler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CatchUp {
    None,
    #[default]
    Last,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression `{expression}`: {reason}")]
    Cron { expression: String, reason: String },
    #[error("unknown timezone `{0}` (use an IANA name such as Europe/Paris)")]
    Timezone(String),
}

/// A parsed cron expression in its timezone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Which scheduled times in (last handled, now] fire, and how many are
/// missed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Oldest first.
    pub fire: Vec<Millis>,
    /// Scheduled times that do not fire (not caught up).
    pub missed: u64,
    /// The latest of them that was missed, if any.
    pub last_missed: Option<Millis>,
    /// The latest scheduled time at or before now: the trigger has handled
    /// everything up to it once `fire` fired.
    pub handled_until: Option<Millis>,
}

impl Schedule {
    /// `timezone` empty: UTC.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let cron = Cron::from_str(expression).map_err(|e| ScheduleError::Cron {
            expression: expression.to_string(),
            reason: e.to_string(),
        })?;
        let tz = if timezone.is_empty() {
            Tz::UTC
        } else {
            Tz::from_str(timezone).map_err(|_| ScheduleError::Timezone(timezone.to_string()))?
        };
        Ok(Self { cron, tz })
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let start = self.at(after)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    fn at(&self, ms: Millis) -> Option<DateTime<Tz>> {
        let ms = i64::try_from(ms).ok()?;
        Some(
            Utc.timestamp_millis_opt(ms)
                .single()?
                .with_timezone(&self.tz),
        )
    }

    /// The scheduled times after `after` up to `now`, and which fire.
    /// Times from `running_since` on (when this scheduler started leading)
    /// came due while it ran: they all fire, however late it looks. Earlier
    /// ones came due while no scheduler ran: `catch_up` says which fire.
    pub fn plan(
        &self,
        after: Millis,
        now: Millis,
        running_since: Millis,
        catch_up: CatchUp,
    ) -> Plan {
        let mut due = Vec::new();
        let mut cursor = after;
        while due.len() < MAX_SCAN {
            match self.next_after(cursor) {
                Some(t) if t <= now => {
                    due.push(t);
                    cursor = t;
                }
                _ => break,
            }
        }
        let Some(&last_scanned) = due.last() else {
            return Plan::default();
        };
        // Counting stopped at MAX_SCAN: the rest up to now are counted.
        let rest = if due.len() == MAX_SCAN {
            self.count_between(last_scanned, now)
        } else {
            Counted::default()
        };
        if let Some(last) = rest.last {
            due.push(last);
        }
        let latest = due[due.len() - 1];
        let total = due.len() as u64 - u64::from(rest.last.is_some()) + rest.count;
        let split = due.partition_point(|t| *t < running_since);
        let (down, up) = due.split_at(split);
        let mut fire: Vec<Millis> = match catch_up {
            CatchUp::None => Vec::new(),
            CatchUp::Last => down.last().copied().into_iter().collect(),
            CatchUp::All => down.to_vec(),
        };
        fire.extend_from_slice(up);
        let fire = fire.split_off(fire.len().saturating_sub(MAX_CATCH_UP));
        let last_missed = due.iter().rev().find(|t| !fire.contains(t)).copied();
        Plan {
            missed: total - fire.len() as u64,
            last_missed,
            handled_until: Some(latest),
            fire,
        }
    }

    /// Scheduled times in (after, now], counted without keeping them.
    fn count_between(&self, after: Millis, now: Millis) -> Counted {
        let mut counted = Counted::default();
        let (Some(start), Some(end)) = (self.at(after), self.at(now)) else {
            return counted;
        };
        for t in self.cron.iter_after(start) {
            if t > end {
                break;
            }
            counted.count += 1;
            counted.last = u64::try_from(t.timestamp_millis()).ok();
        }
        counted
    }
}

#[derive(Default)]
struct Counted {
    count: u64,
    last: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Millis = 60_000;
    /// 2026-01-05T00:00:00Z, a Monday.
    const T0: Millis = 1_767_571_200_000;

    fn every_minute() -> Schedule {
        parse("* * * * *", "")
    }

    fn parse(expression: &str, timezone: &str) -> Schedule {
        Schedule::parse(expression, timezone)
            .unwrap_or_else(|e| panic!("`{expression}` in `{timezone}`: {e}"))
    }

    #[test]
    fn five_and_six_fields_parse_and_bad_ones_are_named() {
        assert!(Schedule::parse("0 3 * * *", "Europe/Paris").is_ok());
        assert!(Schedule::parse("*/2 * * * * *", "").is_ok());
        let e = Schedule::parse("61 * * * *", "").unwrap_err();
        assert!(e.to_string().contains("`61 * * * *`"), "{e}");
        let e = Schedule::parse("0 3 * *", "").unwrap_err();
        assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
        let e = Schedule::parse("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e, ScheduleError::Timezone("Mars/Olympus".into()));
    }

    #[test]
    fn the_next_time_is_in_the_schedules_timezone() {
        // 03:00 in Paris is 02:00 UTC in January (CET, +1).
        let paris = parse("0 3 * * *", "Europe/Paris");
        assert_eq!(paris.next_after(T0), Some(T0 + 2 * 60 * MINUTE));
        let utc = parse("0 3 * * *", "");
        assert_eq!(utc.next_after(T0), Some(T0 + 3 * 60 * MINUTE));
        let seconds = parse("*/5 * * * * *", "");
        assert_eq!(seconds.next_after(T0), Some(T0 + 5_000));
        assert_eq!(seconds.next_after(T0 + 1), Some(T0 + 5_000));
    }

    #[test]
    fn while_running_what_is_due_fires_in_every_mode() {
        for mode in [CatchUp::None, CatchUp::Last, CatchUp::All] {
            let plan = every_minute().plan(T0, T0 + MINUTE + 500, T0, mode);
            assert_eq!(plan.fire, vec![T0 + MINUTE], "{mode:?}");
            assert_eq!(plan.missed, 0);
            assert_eq!(plan.handled_until, Some(T0 + MINUTE));
            // A slow pass finds two due: both fire.
            let slow = every_minute().plan(T0, T0 + 2 * MINUTE, T0, mode);
            assert_eq!(slow.fire, vec![T0 + MINUTE, T0 + 2 * MINUTE], "{mode:?}");
        }
        let nothing = every_minute().plan(T0, T0 + MINUTE - 1, T0, CatchUp::All);
        assert_eq!(nothing, Plan::default());
    }

    #[test]
    fn after_a_downtime_the_modes_differ() {
        // Down from T0 to ten minutes and a half; leading again since then,
        // and one more came due since.
        let back = T0 + 10 * MINUTE + 30_000;
        let now = T0 + 11 * MINUTE + 10;
        let none = every_minute().plan(T0, now, back, CatchUp::None);
        assert_eq!(none.fire, vec![T0 + 11 * MINUTE]);
        assert_eq!(none.missed, 10);
        assert_eq!(none.last_missed, Some(T0 + 10 * MINUTE));
        let last = every_minute().plan(T0, now, back, CatchUp::Last);
        assert_eq!(last.fire, vec![T0 + 10 * MINUTE, T0 + 11 * MINUTE]);
        assert_eq!(last.missed, 9);
        assert_eq!(last.last_missed, Some(T0 + 9 * MINUTE));
        let all = every_minute().plan(T0, now, back, CatchUp::All);
        assert_eq!(
            all.fire,
            (1..=11).map(|m| T0 + m * MINUTE).collect::<Vec<_>>()
        );
        assert_eq!(all.missed, 0);
        assert_eq!(all.last_missed, None);
        assert_eq!(all.handled_until, Some(T0 + 11 * MINUTE));
    }

    #[test]
    fn none_skips_a_time_due_before_the_scheduler_came_back() {
        let daily = parse("0 3 * * *", "");
        let now = T0 + 5 * 60 * MINUTE;
        let none = daily.plan(T0, now, now, CatchUp::None);
        assert!(none.fire.is_empty());
        assert_eq!(none.missed, 1);
        assert_eq!(none.last_missed, Some(T0 + 3 * 60 * MINUTE));
        assert_eq!(none.handled_until, Some(T0 + 3 * 60 * MINUTE));
        let last = daily.plan(T0, now, now, CatchUp::Last);
        assert_eq!(last.fire, vec![T0 + 3 * 60 * MINUTE]);
    }

    #[test]
    fn catching_up_all_is_bounded() {
        let now = T0 + 500 * MINUTE;
        let all = every_minute().plan(T0, now, now, CatchUp::All);
        assert_eq!(all.fire.len(), MAX_CATCH_UP);
        assert_eq!(all.fire.last(), Some(&now));
        assert_eq!(all.missed, 400);
        assert_eq!(all.last_missed, Some(T0 + 400 * MINUTE));
    }

    #[test]
    fn a_long_downtime_of_a_per_second_schedule_is_counted_without_firing_it_all() {
        let every_second = parse("* * * * * *", "");
        let now = T0 + 2 * 24 * 60 * MINUTE;
        let plan = every_second.plan(T0, now, now + 1, CatchUp::Last);
        assert_eq!(plan.fire, vec![now]);
        assert_eq!(plan.handled_until, Some(now));
        assert_eq!(plan.missed, 2 * 24 * 3600 - 1);
    }
}
