//! Durations as people write and read them, in specs (`timeout: 1h`), flags
//! (`--agent-timeout 10s`) and the CLI's output: one parser and one formatter.
//!
//! Parsing is `humantime`'s: `500ms`, `30s`, `1h30m`, `1h 30m`, `7d`, `2w`,
//! `1day`… in whole milliseconds. Formatting writes the compact form the
//! parser reads back (`1d2h`, `1m30s`, `1s250ms`).

use std::time::Duration;

const HINT: &str = "use e.g. 500ms, 5s, 1m, 1h30m, 7d";

/// Parses `text`; a bare `0` is zero. Errors are complete sentences naming
/// the value.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty duration ({HINT})"));
    }
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(trimmed).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("duration `{text}` is too large"),
        _ => format!("invalid duration `{text}` ({HINT})"),
    })?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "invalid duration `{text}` (durations count whole milliseconds)"
        ));
    }
    if u64::try_from(d.as_millis()).is_err() {
        return Err(format!("duration `{text}` is too large"));
    }
    Ok(d)
}

/// [`parse`], in milliseconds (what the proto carries).
pub fn parse_ms(text: &str) -> Result<u64, String> {
    // `parse` refuses what does not fit in u64 milliseconds.
    parse(text).map(|d| d.as_millis() as u64)
}

const UNITS: [(u128, &str); 5] = [
    (86_400_000, "d"),
    (3_600_000, "h"),
    (60_000, "m"),
    (1_000, "s"),
    (1, "ms"),
];

/// `d` as [`parse`] reads it back: `2s`, `500ms`, `1m30s`, `1d2h`, `0s`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit_ms, unit) in UNITS {
        if ms >= unit_ms {
            out.push_str(&format!("{}{unit}", ms / unit_ms));
            ms %= unit_ms;
        }
    }
    out
}

/// `ms` for a table or a status line: [`format`] of it rounded to its two
/// largest units (`3s400ms`, `3m4s`, `1h2m`, `2d3h`), tenths below a minute.
pub fn format_rounded(ms: u64) -> String {
    let ms = u128::from(ms);
    let step = match UNITS.iter().position(|(unit_ms, _)| ms >= *unit_ms) {
        // Below a minute: to a tenth of a second.
        Some(p) if UNITS[p].0 <= 1_000 => 100,
        Some(p) => UNITS[p + 1].0,
        None => 1,
    };
    let rounded = ms / step * step;
    format(Duration::from_millis(rounded as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Result<u64, String> {
        parse_ms(text)
    }

    #[test]
    fn parses_what_people_write_days_included() {
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("90m"), Ok(5_400_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1h 30m"), Ok(5_400_000));
        assert_eq!(ms("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(ms("2days"), Ok(2 * 86_400_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms(" 5s "), Ok(5_000));
    }

    #[test]
    fn refuses_with_the_value_named() {
        let hint = "(use e.g. 500ms, 5s, 1m, 1h30m, 7d)";
        for bad in ["5x", "5", "-5s", "s", "ms5"] {
            assert_eq!(
                ms(bad),
                Err(format!("invalid duration `{bad}` {hint}")),
                "{bad}"
            );
        }
        assert_eq!(ms(""), Err(format!("empty duration {hint}")));
        assert_eq!(
            ms("1us"),
            Err("invalid duration `1us` (durations count whole milliseconds)".to_owned())
        );
        for big in ["99999999999999999999999h", "18446744073709551616ms"] {
            assert_eq!(ms(big), Err(format!("duration `{big}` is too large")));
        }
    }

    #[test]
    fn formats_compactly_and_reads_back() {
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_millis(90_000)), "1m30s");
        assert_eq!(format(Duration::from_millis(1_250)), "1s250ms");
        assert_eq!(format(Duration::from_secs(93_600)), "1d2h");
        assert_eq!(format(Duration::ZERO), "0s");
        for n in [1, 999, 1_000, 61_001, 3_723_004, 90_061_001] {
            assert_eq!(ms(&format(Duration::from_millis(n))), Ok(n));
        }
    }

    #[test]
    fn rounds_for_tables() {
        assert_eq!(format_rounded(420), "400ms");
        assert_eq!(format_rounded(1_234), "1s200ms");
        assert_eq!(format_rounded(184_000), "3m4s");
        assert_eq!(format_rounded(3_720_500), "1h2m");
        assert_eq!(format_rounded(2 * 86_400_000 + 3 * 3_600_000 + 5), "2d3h");
        assert_eq!(format_rounded(7), "0s");
    }
}
