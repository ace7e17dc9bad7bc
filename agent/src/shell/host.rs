//! What the agent reports about its machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// The kernel's host name.
pub fn hostname() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("empty host name"));
    }
    Ok(name)
}

/// Thousandths of a CPU this machine offers: one per hardware thread.
pub fn cpu_millis() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus)
        .unwrap_or(u32::MAX / 1000)
        .saturating_mul(1000)
}

/// `MemTotal` from /proc/meminfo, in bytes; 0 when unreadable (non-Linux).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_total(&s))
        .unwrap_or(0)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let s = "MemTotal:       16318204 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(s), Some(16318204 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
    }

    #[test]
    fn this_host_has_a_name_cpus_and_memory() {
        assert!(!hostname().unwrap().is_empty());
        assert!(cpu_millis() >= 1000);
        assert!(memory_bytes() > 0);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
