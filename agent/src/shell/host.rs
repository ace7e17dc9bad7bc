//! What the agent reports about its machine: host name, CPUs and memory
//! (sysinfo).

use std::time::{SystemTime, UNIX_EPOCH};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::core::capacity::Capacity;

/// The machine's logical CPUs and memory, read once.
pub fn machine_capacity() -> Capacity {
    Machine::new().capacity()
}

/// Whole-machine usage at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_usage_percent: f32,
    pub memory_used_bytes: u64,
}

/// The machine's CPUs and memory through one long-lived sysinfo `System`,
/// refreshing only CPU usage and RAM (a read of /proc/stat and /proc/meminfo
/// on Linux).
pub struct Machine {
    system: System,
}

impl Machine {
    pub fn new() -> Self {
        // Reads the CPU list and a first CPU-time sample, so the next
        // `usage` measures from here, and RAM.
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        Machine { system }
    }

    /// One thousandth per logical CPU, and total RAM.
    pub fn capacity(&self) -> Capacity {
        let cpus = match self.system.cpus().len() {
            // sysinfo cannot read CPUs on this platform: ask the standard library.
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Capacity {
            cpu_millis: u32::try_from(cpus)
                .unwrap_or(u32::MAX / 1000)
                .saturating_mul(1000),
            memory_bytes: self.system.total_memory(),
        }
    }

    /// CPU busy since the last call (all CPUs, 0–100) and RAM in use now.
    pub fn usage(&mut self) -> Usage {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        Usage {
            cpu_usage_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
        }
    }
}

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

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn this_host_has_a_name_cpus_memory_and_usage() -> TestResult {
        assert!(!hostname()?.is_empty());
        let mut m = Machine::new();
        let cap = m.capacity();
        assert!(cap.cpu_millis >= 1000 && cap.cpu_millis.is_multiple_of(1000));
        assert!(cap.memory_bytes > 0);
        assert_eq!(machine_capacity(), cap);
        for _ in 0..2 {
            let usage = m.usage();
            assert!(
                (0.0..=100.0).contains(&usage.cpu_usage_percent),
                "{usage:?}"
            );
            assert!(usage.memory_used_bytes > 0 && usage.memory_used_bytes <= cap.memory_bytes);
        }
        assert!(now_ms() > 1_600_000_000_000);
        Ok(())
    }
}
