//! CPU time and memory of a process, from `/proc` (Linux).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks()))
        .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))
}

/// Child processes of `parent`, by command name (`comm`), e.g. the etcd
/// and nats-server that `drover-devcluster` started for this process.
pub fn children(parent: u32) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, ppid)) = parse_comm_ppid(&stat) {
            if ppid == parent {
                out.push((comm, pid));
            }
        }
    }
    out.sort();
    out
}

fn parse_comm_ppid(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// utime + stime, in clock ticks. The command name (field 2) may hold
/// spaces, so fields are counted from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident memory now and its peak (VmRSS, VmHWM), in bytes.
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// CPU use of a process over a window, as a fraction of one core.
pub struct CpuMeter {
    pid: u32,
    cpu: Duration,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            cpu: cpu_time(pid)?,
            at: Instant::now(),
        })
    }

    /// Cores used since `start` (1.0 = one core busy all the time), and the CPU time.
    pub fn cores(&self) -> Result<(f64, Duration)> {
        let used = cpu_time(self.pid)?.saturating_sub(self.cpu);
        let wall = self.at.elapsed().as_secs_f64();
        Ok((
            if wall > 0.0 {
                used.as_secs_f64() / wall
            } else {
                0.0
            },
            used,
        ))
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
    }

    #[test]
    fn children_are_found_by_parent() -> TestResult {
        assert_eq!(
            parse_comm_ppid("42 (nats-server) S 7 42 42 0"),
            Some(("nats-server".to_string(), 7))
        );
        let mut child = std::process::Command::new("sleep").arg("5").spawn()?;
        let found = children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.contains(&("sleep".to_string(), child.id())),
            "{found:?}"
        );
        Ok(())
    }

    #[test]
    fn own_process_is_readable() -> TestResult {
        let pid = std::process::id();
        let (rss, peak) = memory(pid)?;
        assert!(rss > 0 && peak >= rss);
        assert!(cpu_time(pid).is_ok());
        Ok(())
    }
}
