//! Durations and resource quantities as users write them, turned into the
//! base units the proto carries (milliseconds, bytes, millicpus).
//!
//! Every error is a complete lowercase sentence naming the bad value, so the
//! CLI can show it as is after a flag name and the spec validator after a field.

const MEMORY_HINT: &str = "use e.g. 512Mi, 4Gi, 1G";
const CPU_HINT: &str = "use e.g. 500m, 0.5, 2";

/// A duration in milliseconds, as [`crate::duration::parse`] reads it
/// (`500ms`, `30s`, `1h30m`, `7d`).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    crate::duration::parse_ms(s)
}

/// `"4Gi"`, `"512Mi"`, `"1G"`, `"1500M"`, `"1024"`, `"1.5Gi"` → bytes.
///
/// Binary suffixes `Ki Mi Gi Ti Pi Ei`, decimal suffixes `k K M G T P E`, no
/// suffix for bytes. A fraction is allowed as long as the result is a whole
/// number of bytes (`0.5Ki` yes, `1.5` no).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty quantity ({MEMORY_HINT})"));
    }
    let invalid = || format!("invalid quantity `{s}` ({MEMORY_HINT})");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return Err(invalid()),
    };
    match scale(number, multiplier) {
        Scaled::Whole(bytes) => {
            u64::try_from(bytes).map_err(|_| format!("quantity `{s}` is too large"))
        }
        Scaled::TooLarge => Err(format!("quantity `{s}` is too large")),
        Scaled::Fractional => Err(format!(
            "invalid quantity `{s}` (must be a whole number of bytes)"
        )),
        Scaled::Malformed => Err(invalid()),
    }
}

/// `2`, `0.5`, `"500m"`, `"2"` → millicpus (thousandths of a CPU).
///
/// Zero parses (an agent may advertise none); the spec validator rejects it
/// for a task's request.
pub fn parse_cpu(s: &str) -> Result<u32, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty quantity ({CPU_HINT})"));
    }
    let (number, multiplier) = match text.strip_suffix('m') {
        // Millicpus are whole: `1.5m` is below the precision we keep.
        Some(millis) if millis.contains('.') => {
            return Err(format!("invalid quantity `{s}` ({CPU_HINT})"))
        }
        Some(millis) => (millis, 1),
        None => (text, 1_000),
    };
    match scale(number, multiplier) {
        Scaled::Whole(millis) => {
            u32::try_from(millis).map_err(|_| format!("quantity `{s}` is too large"))
        }
        Scaled::TooLarge => Err(format!("quantity `{s}` is too large")),
        Scaled::Fractional => Err(format!(
            "invalid quantity `{s}` (the smallest unit is 1m, a thousandth of a cpu)"
        )),
        Scaled::Malformed => Err(format!("invalid quantity `{s}` ({CPU_HINT})")),
    }
}

/// A plain non-negative integer count, e.g. `gpu: 1`.
pub(crate) fn parse_count(s: &str) -> Result<u32, String> {
    let text = s.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Only ASCII digits, so a parse failure can only be an overflow.
        return text.parse().map_err(|_| format!("`{s}` is too large"));
    }
    Err(format!(
        "invalid count `{s}` (use a whole number, e.g. 0, 1, 2)"
    ))
}

enum Scaled {
    Whole(u128),
    Fractional,
    TooLarge,
    Malformed,
}

/// `number * multiplier`, computed exactly, where `number` is `digits` or
/// `digits.digits` (no sign, no exponent).
fn scale(number: &str, multiplier: u128) -> Scaled {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (number.contains('.') && !all_digits(frac)) {
        return Scaled::Malformed;
    }
    // Trailing zeros of the fraction change nothing; dropping them keeps
    // `0.5000000000000000000000000000000000000000` from overflowing.
    let frac = frac.trim_end_matches('0');
    let Some(denominator) = u32::try_from(frac.len())
        .ok()
        .and_then(|n| 10u128.checked_pow(n))
    else {
        return Scaled::Fractional;
    };
    // Digits only (checked above), so a parse failure can only be an overflow.
    let (Ok(int_value), Ok(frac_value)) = (int.parse::<u128>(), parse_or_zero(frac)) else {
        return Scaled::TooLarge;
    };
    let total = int_value
        .checked_mul(denominator)
        .and_then(|v| v.checked_add(frac_value))
        .and_then(|v| v.checked_mul(multiplier));
    match total {
        None => Scaled::TooLarge,
        Some(v) if v % denominator != 0 => Scaled::Fractional,
        Some(v) => Scaled::Whole(v / denominator),
    }
}

fn parse_or_zero(digits: &str) -> Result<u128, std::num::ParseIntError> {
    if digits.is_empty() {
        Ok(0)
    } else {
        digits.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        assert_eq!(parse_memory("4Gi"), Ok(4 << 30));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1500M"), Ok(1_500_000_000));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_memory("0.5Ki"), Ok(512));
        assert_eq!(parse_memory("2k"), Ok(2_000));
        assert_eq!(parse_memory("2K"), Ok(2_000));
        assert_eq!(parse_memory("1Ti"), Ok(1 << 40));
        assert_eq!(parse_memory("1Pi"), Ok(1 << 50));
        assert_eq!(parse_memory("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_memory("0"), Ok(0));
        assert_eq!(
            parse_memory("1.50000000000000000000000000000000000000000000Gi"),
            Ok(1_610_612_736)
        );
        assert_eq!(parse_memory("15Ei"), Ok(15 << 60));
        assert_eq!(parse_memory("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_memory() {
        let hint = "(use e.g. 512Mi, 4Gi, 1G)";
        for bad in [
            "4GB", "4gi", "abc", "-1Gi", "1e9", "Gi", ".5Gi", "1.Gi", "1..5Gi", "4 Gi", "+1", "1m",
            "0x10",
        ] {
            assert_eq!(
                parse_memory(bad),
                Err(format!("invalid quantity `{bad}` {hint}")),
                "{bad}"
            );
        }
        assert_eq!(parse_memory(""), Err(format!("empty quantity {hint}")));
        assert_eq!(
            parse_memory("1.5"),
            Err("invalid quantity `1.5` (must be a whole number of bytes)".to_owned())
        );
        for big in [
            "16Ei",
            "18446744073709551616",
            "99999999999999999999999999999999999999999Pi",
            "20000P",
        ] {
            assert_eq!(
                parse_memory(big),
                Err(format!("quantity `{big}` is too large")),
                "{big}"
            );
        }
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("2"), Ok(2_000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("1.25"), Ok(1_250));
        assert_eq!(parse_cpu("0.0010"), Ok(1));
        assert_eq!(parse_cpu("0"), Ok(0));
        assert_eq!(parse_cpu("4294967295m"), Ok(u32::MAX));
        assert_eq!(parse_cpu("4294967"), Ok(4_294_967_000));
    }

    #[test]
    fn bad_cpu() {
        let hint = "(use e.g. 500m, 0.5, 2)";
        for bad in [
            "abc", "-1", "-0.5", "1.5m", "m", "2 cores", "1e3", "1Gi", "0.5.1",
        ] {
            assert_eq!(
                parse_cpu(bad),
                Err(format!("invalid quantity `{bad}` {hint}")),
                "{bad}"
            );
        }
        assert_eq!(parse_cpu(""), Err(format!("empty quantity {hint}")));
        assert_eq!(
            parse_cpu("0.0005"),
            Err(
                "invalid quantity `0.0005` (the smallest unit is 1m, a thousandth of a cpu)"
                    .to_owned()
            )
        );
        for big in [
            "4294968",
            "4294967296m",
            "999999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                parse_cpu(big),
                Err(format!("quantity `{big}` is too large")),
                "{big}"
            );
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("8"), Ok(8));
        for bad in ["-1", "1.5", "", "one", "+1"] {
            assert_eq!(
                parse_count(bad),
                Err(format!(
                    "invalid count `{bad}` (use a whole number, e.g. 0, 1, 2)"
                )),
                "{bad}"
            );
        }
        assert_eq!(
            parse_count("4294967296"),
            Err("`4294967296` is too large".to_owned())
        );
    }
}
