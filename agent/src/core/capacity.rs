//! What this agent offers the scheduler: the machine's CPUs and memory, or
//! less where `--cpus` / `--memory` reserve less, and the agent's labels.
//! Plain inputs in, checked values or an error naming the flag out.

use std::collections::BTreeMap;

use crate::core::gpu::GpuSource;

/// More simulated GPUs than any machine has is a typo, not a test setup.
pub const MAX_SIMULATED_GPUS: u32 = 1024;

/// What the capacity flags ask for, as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityRequest<'a> {
    /// `--cpus`, in thousandths.
    pub cpu_millis: Option<u32>,
    /// `--memory`.
    pub memory_bytes: Option<u64>,
    /// `--label` entries, `key=value`.
    pub labels: &'a [String],
    /// `--simulate-gpus`; 0: the machine's GPUs through NVML.
    pub simulate_gpus: u32,
    pub simulate_gpu_model: &'a str,
    pub simulate_gpu_memory_bytes: u64,
}

/// What every heartbeat advertises, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityConfig {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub gpus: GpuSource,
}

/// Checks `request` against a machine with `machine`'s CPUs and memory;
/// errors name the flag.
pub fn resolve(request: &CapacityRequest<'_>, machine: Capacity) -> Result<CapacityConfig, String> {
    let reserved = reserve(machine, request.cpu_millis, request.memory_bytes)?;
    let labels = parse_labels(request.labels)?;
    let gpus = match request.simulate_gpus {
        0 => GpuSource::Nvml,
        count if count > MAX_SIMULATED_GPUS => {
            return Err(format!(
                "--simulate-gpus (DROVER_SIMULATE_GPUS) {count} is more than {MAX_SIMULATED_GPUS}"
            ))
        }
        count => {
            let model = request.simulate_gpu_model.trim();
            if model.is_empty() {
                return Err("--simulate-gpu-model (DROVER_SIMULATE_GPU_MODEL) is empty".to_owned());
            }
            if request.simulate_gpu_memory_bytes == 0 {
                return Err(
                    "--simulate-gpu-memory (DROVER_SIMULATE_GPU_MEMORY) must be more than 0"
                        .to_owned(),
                );
            }
            GpuSource::Simulated {
                count,
                model: model.to_owned(),
                memory_bytes: request.simulate_gpu_memory_bytes,
            }
        }
    };
    Ok(CapacityConfig {
        cpu_millis: reserved.cpu_millis,
        memory_bytes: reserved.memory_bytes,
        labels,
        gpus,
    })
}

/// CPUs (thousandths) and memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
}

/// The capacity to advertise: what `machine` has, or `cpus` / `memory`
/// where given. A reservation of nothing, or of more than the machine has,
/// is refused with the flag's name.
pub fn reserve(
    machine: Capacity,
    cpus: Option<u32>,
    memory: Option<u64>,
) -> Result<Capacity, String> {
    let cpu_millis = match cpus {
        None => machine.cpu_millis,
        Some(0) => return Err("--cpus (DROVER_CPUS) must be more than 0".to_owned()),
        Some(want) if want > machine.cpu_millis => {
            return Err(format!(
                "--cpus (DROVER_CPUS) {} is more than this machine's {} cpus",
                format_cpus(want),
                format_cpus(machine.cpu_millis)
            ))
        }
        Some(want) => want,
    };
    let memory_bytes = match memory {
        None => machine.memory_bytes,
        Some(0) => return Err("--memory (DROVER_MEMORY) must be more than 0".to_owned()),
        Some(want) if want > machine.memory_bytes => {
            return Err(format!(
                "--memory (DROVER_MEMORY) {} is more than this machine's {}",
                format_bytes(want),
                format_bytes(machine.memory_bytes)
            ))
        }
        Some(want) => want,
    };
    Ok(Capacity {
        cpu_millis,
        memory_bytes,
    })
}

/// `1500` → `1.5`, `16000` → `16`, `250` → `0.25`.
pub fn format_cpus(millis: u32) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Exact in the largest binary unit from Mi up that divides it (`8Gi`,
/// `1536Mi`), else bytes with a rounded size (`16318204928 bytes (about 15.2Gi)`,
/// as a machine's total RAM often reads).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20)];
    for (suffix, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    let (suffix, shift) = match bytes {
        b if b >= 1 << 30 => ("Gi", 30),
        b if b >= 1 << 20 => ("Mi", 20),
        _ => return format!("{bytes} bytes"),
    };
    // Display only: the precision lost converting to f64 does not show.
    #[allow(clippy::cast_precision_loss)]
    let size = bytes as f64 / (1u64 << shift) as f64;
    format!("{bytes} bytes (about {size:.1}{suffix})")
}

/// What label keys may look like: the rule `node_selector` keys follow
/// (drover_api::spec), so every label can be selected.
pub const LABEL_KEY_RULE: &str =
    "use up to 63 letters, digits, `_`, `.`, `/` or `-`, starting with a letter or digit";

/// What label values may look like (the `node_selector` value rule).
pub const LABEL_VALUE_RULE: &str = "use up to 63 letters, digits, `_`, `.` or `-`";

/// Parses `key=value` labels (`--label`, repeatable, or `DROVER_LABELS`
/// comma-separated — clap splits it). Blank entries are skipped; a key given
/// twice is refused.
pub fn parse_labels<S: AsRef<str>>(list: &[S]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for entry in list.iter().map(|s| s.as_ref().trim()) {
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!(
                "label `{entry}` (--label / DROVER_LABELS) must be key=value"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if !drover_api::spec::is_label_key(key) {
            return Err(format!(
                "invalid label key `{key}` in `{entry}` ({LABEL_KEY_RULE})"
            ));
        }
        if !drover_api::spec::is_label_value(value) {
            return Err(format!(
                "invalid label value `{value}` in `{entry}` ({LABEL_VALUE_RULE})"
            ));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    const GI: u64 = 1 << 30;

    fn machine() -> Capacity {
        Capacity {
            cpu_millis: 16_000,
            memory_bytes: 64 * GI,
        }
    }

    #[test]
    fn no_reservation_offers_the_whole_machine() {
        assert_eq!(reserve(machine(), None, None), Ok(machine()));
    }

    #[test]
    fn reservations_below_the_machine_are_advertised() -> TestResult {
        let cap = reserve(machine(), Some(1_500), Some(8 * GI))?;
        assert_eq!(
            cap,
            Capacity {
                cpu_millis: 1_500,
                memory_bytes: 8 * GI
            }
        );
        // Exactly the machine is fine; each flag applies alone.
        assert_eq!(reserve(machine(), Some(16_000), None), Ok(machine()));
        assert_eq!(
            reserve(machine(), None, Some(GI))?,
            Capacity {
                cpu_millis: 16_000,
                memory_bytes: GI
            }
        );
        Ok(())
    }

    #[test]
    fn fractional_cpus_from_the_flag_syntax() -> TestResult {
        // What clap hands over: drover_api's parse_cpu of the flag's text.
        for (flag, millis) in [("1.5", 1_500), ("0.25", 250), ("500m", 500), ("2", 2_000)] {
            let cpus = drover_api::spec::parse_cpu(flag)?;
            assert_eq!(
                reserve(machine(), Some(cpus), None)?.cpu_millis,
                millis,
                "{flag}"
            );
        }
        Ok(())
    }

    #[test]
    fn reservations_above_the_machine_name_the_flag() {
        let err = reserve(machine(), Some(16_001), None).unwrap_err();
        assert_eq!(
            err,
            "--cpus (DROVER_CPUS) 16.001 is more than this machine's 16 cpus"
        );
        let err = reserve(machine(), None, Some(65 * GI)).unwrap_err();
        assert_eq!(
            err,
            "--memory (DROVER_MEMORY) 65Gi is more than this machine's 64Gi"
        );
        let err = reserve(machine(), Some(0), None).unwrap_err();
        assert!(
            err.contains("--cpus") && err.contains("more than 0"),
            "{err}"
        );
        let err = reserve(machine(), None, Some(0)).unwrap_err();
        assert!(
            err.contains("--memory") && err.contains("more than 0"),
            "{err}"
        );
    }

    fn request(labels: &[String]) -> CapacityRequest<'_> {
        CapacityRequest {
            cpu_millis: None,
            memory_bytes: None,
            labels,
            simulate_gpus: 0,
            simulate_gpu_model: "Simulated GPU",
            simulate_gpu_memory_bytes: 80 * GI,
        }
    }

    #[test]
    fn resolve_defaults_to_the_machine_and_nvml() -> TestResult {
        let cfg = resolve(&request(&[]), machine())?;
        assert_eq!(
            cfg,
            CapacityConfig {
                cpu_millis: 16_000,
                memory_bytes: 64 * GI,
                labels: BTreeMap::new(),
                gpus: GpuSource::Nvml,
            }
        );
        Ok(())
    }

    #[test]
    fn resolve_reserves_labels_and_simulates() -> TestResult {
        let labels = vec!["zone=a".to_owned()];
        let req = CapacityRequest {
            cpu_millis: Some(1_500),
            memory_bytes: Some(GI),
            simulate_gpus: 2,
            simulate_gpu_model: " Simulated H100 ",
            simulate_gpu_memory_bytes: 40 * GI,
            ..request(&labels)
        };
        let cfg = resolve(&req, machine())?;
        assert_eq!((cfg.cpu_millis, cfg.memory_bytes), (1_500, GI));
        assert_eq!(cfg.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            cfg.gpus,
            GpuSource::Simulated {
                count: 2,
                model: "Simulated H100".into(),
                memory_bytes: 40 * GI
            }
        );
        Ok(())
    }

    #[test]
    fn resolve_refuses_bad_requests_naming_the_flag() -> TestResult {
        let bad_label = vec!["zone".to_owned()];
        let cases = [
            (
                CapacityRequest {
                    cpu_millis: Some(17_000),
                    ..request(&[])
                },
                "--cpus",
            ),
            (
                CapacityRequest {
                    memory_bytes: Some(65 * GI),
                    ..request(&[])
                },
                "--memory",
            ),
            (request(&bad_label), "must be key=value"),
            (
                CapacityRequest {
                    simulate_gpus: MAX_SIMULATED_GPUS + 1,
                    ..request(&[])
                },
                "--simulate-gpus",
            ),
            (
                CapacityRequest {
                    simulate_gpus: 1,
                    simulate_gpu_model: " ",
                    ..request(&[])
                },
                "--simulate-gpu-model",
            ),
            (
                CapacityRequest {
                    simulate_gpus: 1,
                    simulate_gpu_memory_bytes: 0,
                    ..request(&[])
                },
                "--simulate-gpu-memory",
            ),
        ];
        for (req, want) in cases {
            let err = resolve(&req, machine()).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        // Without --simulate-gpus the simulation flags are not looked at.
        let req = CapacityRequest {
            simulate_gpu_model: "",
            simulate_gpu_memory_bytes: 0,
            ..request(&[])
        };
        assert_eq!(resolve(&req, machine())?.gpus, GpuSource::Nvml);
        Ok(())
    }

    #[test]
    fn formats() {
        assert_eq!(format_cpus(1_500), "1.5");
        assert_eq!(format_cpus(250), "0.25");
        assert_eq!(format_cpus(1), "0.001");
        assert_eq!(format_cpus(8_000), "8");
        assert_eq!(format_bytes(8 * GI), "8Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert_eq!(format_bytes(4096), "4096 bytes");
        assert_eq!(format_bytes(3 << 19), "1572864 bytes (about 1.5Mi)");
        assert_eq!(
            format_bytes(16_318_204_928),
            "16318204928 bytes (about 15.2Gi)"
        );
    }

    #[test]
    fn labels_parse() -> TestResult {
        let labels = parse_labels(&[
            "zone=eu-west-1",
            " gpu = h100 ",
            "",
            "example.com/rack=r7",
            "empty=",
        ])?;
        let want: BTreeMap<String, String> = [
            ("zone", "eu-west-1"),
            ("gpu", "h100"),
            ("example.com/rack", "r7"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(labels, want);
        assert!(parse_labels::<&str>(&[])?.is_empty());
        // A value may hold `=` only as the separator: the first one splits.
        let err = parse_labels(&["a=b=c"]).unwrap_err();
        assert!(err.contains("invalid label value `b=c`"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_labels_are_refused_clearly() {
        let err = parse_labels(&["zone"]).unwrap_err();
        assert_eq!(
            err,
            "label `zone` (--label / DROVER_LABELS) must be key=value"
        );
        let err = parse_labels(&["=a"]).unwrap_err();
        assert!(err.starts_with("invalid label key `` in `=a`"), "{err}");
        let err = parse_labels(&["-zone=a"]).unwrap_err();
        assert!(err.contains("invalid label key `-zone`"), "{err}");
        assert!(err.contains(LABEL_KEY_RULE), "{err}");
        let err = parse_labels(&["zone=eu west"]).unwrap_err();
        assert!(err.contains("invalid label value `eu west`"), "{err}");
        assert!(err.contains(LABEL_VALUE_RULE), "{err}");
        let long = format!("k={}", "v".repeat(64));
        assert!(parse_labels(&[long]).is_err());
        let err = parse_labels(&["zone=a", "zone=b"]).unwrap_err();
        assert_eq!(err, "label `zone` is given twice");
    }
}
