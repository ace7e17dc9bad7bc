//! How runs, agents and queues look in a terminal and as JSON: state names,
//! times and tables here; one file per kind of thing shown.

mod agents;
mod lineage;
pub mod progress;
mod queues;
mod runs;
#[cfg(test)]
mod tests;

pub use agents::{agent_json, agents_table};
pub use lineage::{lineage_json, lineage_table};
pub use queues::{
    queue_detail_json, queue_detail_table, queue_settings, queue_state, queue_status_json,
    queues_table,
};
pub use runs::{
    changes, dry_run_table, list_table, run_json, run_table, source_name, summary_json,
};

use std::fmt::Write as _;

use drover_api::pb;

/// `TASK_STATE_RETRY_WAIT` → `RetryWait`.
pub(super) fn pretty(name: &str, prefix: &str) -> String {
    let s = name.strip_prefix(prefix).unwrap_or(name);
    let mut out = String::with_capacity(s.len());
    for word in s.split('_') {
        let mut chars = word.chars();
        if let Some(c) = chars.next() {
            out.push(c);
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

pub fn run_state(s: pb::RunState) -> String {
    pretty(s.as_str_name(), "RUN_STATE_")
}

pub fn task_state(s: pb::TaskState) -> String {
    pretty(s.as_str_name(), "TASK_STATE_")
}

pub fn agent_state(s: pb::AgentState) -> String {
    pretty(s.as_str_name(), "AGENT_STATE_")
}

pub fn attempt_state(s: pb::AttemptState) -> String {
    pretty(s.as_str_name(), "ATTEMPT_STATE_")
}

/// `RetryWait` → `retry_wait`.
pub(super) fn json_name(pretty: &str) -> String {
    let mut out = String::with_capacity(pretty.len() + 2);
    for (i, c) in pretty.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Milliseconds as `1s200ms`, `3m4s`, `1h2m`, `2d3h`.
pub fn duration(ms: u64) -> String {
    drover_api::duration::format_rounded(ms)
}

/// Unix milliseconds as `2026-11-22 07:40:01 UTC`.
pub fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Unix milliseconds as `07:40:01`.
pub fn clock(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Columns separated by two spaces, each as wide as its widest cell; `right`
/// says which are right-aligned (numbers). The last column is not padded.
pub(crate) fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths[c];
            if right[c] {
                let _ = write!(line, "{cell:>w$}");
            } else if c + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}");
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A size for people: `512 B`, `2.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(super) fn gib(bytes: u64) -> String {
    format!("{:.1}Gi", bytes as f64 / (1u64 << 30) as f64)
}

pub(super) fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{:.2}", millis as f64 / 1000.0)
    }
}
