//! The machine's GPUs for the heartbeat: NVIDIA GPUs through NVML
//! (nvml-wrapper loads `libnvidia-ml.so.1` at run time, so a machine without
//! the driver simply has none), or simulated ones (`--simulate-gpus`).
//!
//! Identity (index, UUID, name) is read once; usage on every sample. A query
//! that fails keeps the GPU's last known values and is logged at most once a
//! minute. Every call here may block (NVML can take long on a sick GPU), so
//! the heartbeat runs them on a blocking thread.

use std::time::{Duration, Instant};

use drover_api::pb::GpuInfo;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tracing::{debug, info, warn};

use crate::core::capacity::format_bytes;
use crate::core::gpu::{apply_reading, cuda_version, simulated_gpus, GpuReading, GpuSource};

/// At most one warning per this long about failing GPU queries.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The GPUs to report now, and the driver behind them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSnapshot {
    pub gpus: Vec<GpuInfo>,
    /// Empty without NVML.
    pub driver_version: String,
    /// e.g. `12.4`; empty without NVML.
    pub cuda_version: String,
}

/// Keeps NVML open (or the simulated list) for the life of the agent.
pub struct GpuMonitor {
    state: State,
}

enum State {
    /// No NVML library or driver: no GPUs.
    Absent,
    Simulated(GpuSnapshot),
    Nvml(Box<NvmlGpus>),
}

struct NvmlGpus {
    nvml: Nvml,
    /// Identified devices with their last known usage, by index.
    snapshot: GpuSnapshot,
    /// Indices whose UUID or name could not be read yet: not advertised
    /// (the scheduler needs the UUID), retried on every sample.
    unidentified: Vec<u32>,
    warnings: Throttle,
}

impl GpuMonitor {
    /// Opens NVML (or builds the simulated list) and logs, once, what it found.
    pub fn start(source: &GpuSource, agent_id: &str) -> Self {
        let state = match source {
            GpuSource::Simulated {
                count,
                model,
                memory_bytes,
            } => {
                info!(
                    gpus = count,
                    model = %model,
                    memory = %format_bytes(*memory_bytes),
                    "advertising simulated GPUs (--simulate-gpus): no devices behind them"
                );
                State::Simulated(GpuSnapshot {
                    gpus: simulated_gpus(agent_id, *count, model, *memory_bytes),
                    ..Default::default()
                })
            }
            GpuSource::Nvml => match Nvml::init() {
                Ok(nvml) => match NvmlGpus::open(nvml) {
                    Some(gpus) => State::Nvml(Box::new(gpus)),
                    None => State::Absent,
                },
                Err(e) => {
                    log_no_nvml(&e);
                    State::Absent
                }
            },
        };
        GpuMonitor { state }
    }

    /// Reports no GPUs.
    pub fn none() -> Self {
        GpuMonitor {
            state: State::Absent,
        }
    }

    /// The GPUs with their usage now (simulated: always idle).
    pub fn sample(&mut self) -> GpuSnapshot {
        match &mut self.state {
            State::Absent => GpuSnapshot::default(),
            State::Simulated(snapshot) => snapshot.clone(),
            State::Nvml(gpus) => gpus.sample(),
        }
    }
}

/// The one line saying why this agent reports no GPUs.
fn log_no_nvml(e: &NvmlError) {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => info!(
            error = %e,
            "no NVIDIA driver library (libnvidia-ml.so.1): reporting no GPUs"
        ),
        NvmlError::DriverNotLoaded => {
            info!("NVIDIA driver not loaded: reporting no GPUs")
        }
        other => warn!(error = %other, "NVML did not start: reporting no GPUs"),
    }
}

impl NvmlGpus {
    /// Reads the driver, the devices and their first usage; `None` (after
    /// one warning) when NVML cannot even count the devices.
    fn open(nvml: Nvml) -> Option<Self> {
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "NVML cannot count GPUs: reporting no GPUs");
                return None;
            }
        };
        let driver_version = nvml.sys_driver_version().unwrap_or_else(|e| {
            warn!(error = %e, "NVML: driver version unreadable");
            String::new()
        });
        let cuda_version = nvml
            .sys_cuda_driver_version()
            .map(cuda_version)
            .unwrap_or_else(|e| {
                warn!(error = %e, "NVML: CUDA version unreadable");
                String::new()
            });
        let mut gpus = NvmlGpus {
            nvml,
            snapshot: GpuSnapshot {
                gpus: Vec::new(),
                driver_version,
                cuda_version,
            },
            unidentified: (0..count).collect(),
            warnings: Throttle::new(WARN_EVERY),
        };
        let first = gpus.sample();
        let models: Vec<&str> = first.gpus.iter().map(|g| g.name.as_str()).collect();
        info!(
            gpus = first.gpus.len(),
            models = %models.join(", "),
            driver = %first.driver_version,
            cuda = %first.cuda_version,
            "NVIDIA GPUs found through NVML"
        );
        Some(gpus)
    }

    fn sample(&mut self) -> GpuSnapshot {
        let mut errors = Vec::new();
        self.identify(&mut errors);
        for gpu in &mut self.snapshot.gpus {
            let reading = read_usage(&self.nvml, gpu.index, &mut errors);
            apply_reading(gpu, &reading);
        }
        if !errors.is_empty() {
            let errors = errors.join("; ");
            match self.warnings.allow(Instant::now()) {
                Some(suppressed) => warn!(
                    errors = %errors,
                    suppressed,
                    "GPU queries failed: reporting last known values"
                ),
                None => debug!(errors = %errors, "GPU queries failed"),
            }
        }
        self.snapshot.clone()
    }

    /// Reads UUID and name of the devices that lack them.
    fn identify(&mut self, errors: &mut Vec<String>) {
        if self.unidentified.is_empty() {
            return;
        }
        let nvml = &self.nvml;
        let gpus = &mut self.snapshot.gpus;
        self.unidentified.retain(|&index| {
            let identity = nvml
                .device_by_index(index)
                .and_then(|d| Ok((d.uuid()?, d.name()?)));
            match identity {
                Ok((uuid, name)) => {
                    gpus.push(GpuInfo {
                        index,
                        uuid,
                        name,
                        ..Default::default()
                    });
                    false
                }
                Err(e) => {
                    errors.push(format!("gpu {index}: uuid/name: {e}"));
                    true
                }
            }
        });
        gpus.sort_by_key(|g| g.index);
    }
}

/// One device's usage; failed queries are `None` (and noted in `errors`
/// unless the device simply lacks that sensor).
fn read_usage(nvml: &Nvml, index: u32, errors: &mut Vec<String>) -> GpuReading {
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            errors.push(format!("gpu {index}: {e}"));
            return GpuReading::nothing();
        }
    };
    let mut note = |what: &str, e: NvmlError| {
        if !matches!(e, NvmlError::NotSupported) {
            errors.push(format!("gpu {index}: {what}: {e}"));
        }
    };
    let memory = device.memory_info().map_err(|e| note("memory", e)).ok();
    GpuReading {
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        utilization_percent: device
            .utilization_rates()
            .map(|u| u.gpu)
            .map_err(|e| note("utilization", e))
            .ok(),
        temperature_c: device
            .temperature(TemperatureSensor::Gpu)
            .map_err(|e| note("temperature", e))
            .ok(),
        power_mw: device.power_usage().map_err(|e| note("power", e)).ok(),
    }
}

/// Lets one event through per `every`, counting the ones held back.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last one)` when this event may be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_period() {
        let mut t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn simulated_gpus_are_reported_as_configured() {
        let source = GpuSource::Simulated {
            count: 3,
            model: "Sim A100".into(),
            memory_bytes: 40 << 30,
        };
        let mut monitor = GpuMonitor::start(&source, "node-7");
        let snapshot = monitor.sample();
        assert_eq!(
            snapshot.gpus,
            simulated_gpus("node-7", 3, "Sim A100", 40 << 30)
        );
        assert!(snapshot.driver_version.is_empty() && snapshot.cuda_version.is_empty());
        assert_eq!(monitor.sample(), snapshot, "stable across samples");
    }

    /// On a machine without the NVIDIA driver (CI, this repository's dev
    /// machines) NVML reports nothing and nothing fails; with one, every GPU
    /// has an identity and sane readings.
    #[test]
    fn real_gpus_or_none_without_failing() {
        let mut monitor = GpuMonitor::start(&GpuSource::Nvml, "a1");
        let snapshot = monitor.sample();
        for (i, gpu) in snapshot.gpus.iter().enumerate() {
            assert_eq!(gpu.index as usize, i);
            assert!(gpu.uuid.starts_with("GPU-") || gpu.uuid.starts_with("MIG-"));
            assert!(!gpu.simulated && !gpu.name.is_empty());
            assert!(gpu.memory_total_bytes >= gpu.memory_used_bytes);
            assert!(gpu.utilization_percent <= 100);
        }
        if snapshot.gpus.is_empty() {
            assert!(snapshot.cuda_version.is_empty() || snapshot.cuda_version.contains('.'));
        } else {
            assert!(!snapshot.driver_version.is_empty());
        }
        let _ = monitor.sample();
    }
}
