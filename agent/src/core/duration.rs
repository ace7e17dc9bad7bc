//! Durations as people read them: `2s`, `500ms`, `1m30s` — the form
//! `drover_api::spec::parse_duration` reads back.

use std::time::Duration;

/// Formats a duration the way `drover_api::spec::parse_duration` reads it: `2s`, `500ms`,
/// `1m30s`, `1h`, `1s250ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1_000 % 60, "s"),
        (ms % 1_000, "ms"),
    ];
    parts
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, unit)| format!("{v}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::spec::parse_duration;

    #[test]
    fn formats_humanly_and_roundtrips() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(90_000)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1_250)), "1s250ms");
        assert_eq!(format_duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for ms in [1, 999, 1_000, 61_001, 3_723_004] {
            let s = format_duration(Duration::from_millis(ms));
            assert_eq!(parse_duration(&s), Ok(ms), "{s}");
        }
    }
}
