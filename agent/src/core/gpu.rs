//! The GPUs an agent advertises: simulated ones (`--simulate-gpus`), and how
//! readings of real ones (NVML, in the shell) become the reported list.

use drover_api::naming::SIMULATED_GPU_UUID_PREFIX;
use drover_api::pb::GpuInfo;

/// Default of `--simulate-gpu-model`.
pub const DEFAULT_SIMULATED_GPU_MODEL: &str = "Simulated GPU";

/// Default of `--simulate-gpu-memory`: 80Gi.
pub const DEFAULT_SIMULATED_GPU_MEMORY: u64 = 80 << 30;

/// Where the advertised GPUs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// The machine's NVIDIA GPUs through NVML; none without a driver.
    Nvml,
    /// `count` GPUs with no device behind them.
    Simulated {
        count: u32,
        model: String,
        memory_bytes: u64,
    },
}

/// `count` simulated GPUs of agent `agent_id`: indices `0..count`, UUIDs
/// [`SIMULATED_GPU_UUID_PREFIX`]`<agent_id>-<i>` (unique across agents),
/// marked simulated, idle.
pub fn simulated_gpus(agent_id: &str, count: u32, model: &str, memory_bytes: u64) -> Vec<GpuInfo> {
    (0..count)
        .map(|i| GpuInfo {
            index: i,
            uuid: format!("{SIMULATED_GPU_UUID_PREFIX}{agent_id}-{i}"),
            name: model.to_owned(),
            memory_total_bytes: memory_bytes,
            memory_used_bytes: 0,
            utilization_percent: 0,
            temperature_c: 0,
            power_mw: 0,
            simulated: true,
        })
        .collect()
}

/// NVML's CUDA driver version (`1000 * major + 10 * minor`, e.g. 12040) as
/// `12.4`; empty for a value that is not a version.
pub fn cuda_version(version: i32) -> String {
    if version <= 0 {
        return String::new();
    }
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

/// One heartbeat's readings of one GPU; `None` where that query failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuReading {
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
}

impl GpuReading {
    /// Every query failed (e.g. the device could not be opened).
    pub fn nothing() -> Self {
        GpuReading::default()
    }
}

/// Writes `reading` over `gpu`'s last known values; a field whose query
/// failed keeps its last value. Returns how many fields were not read.
pub fn apply_reading(gpu: &mut GpuInfo, reading: &GpuReading) -> usize {
    fn set<T: Copy>(field: &mut T, value: Option<T>, missing: &mut usize) {
        match value {
            Some(v) => *field = v,
            None => *missing += 1,
        }
    }
    let mut missing = 0;
    set(
        &mut gpu.memory_total_bytes,
        reading.memory_total_bytes,
        &mut missing,
    );
    set(
        &mut gpu.memory_used_bytes,
        reading.memory_used_bytes,
        &mut missing,
    );
    set(
        &mut gpu.utilization_percent,
        reading.utilization_percent,
        &mut missing,
    );
    set(&mut gpu.temperature_c, reading.temperature_c, &mut missing);
    set(&mut gpu.power_mw, reading.power_mw, &mut missing);
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    #[test]
    fn simulated_gpus_are_marked_unique_and_idle() {
        let gpus = simulated_gpus("gpu-node-1", 2, "Simulated H100", 80 * GI);
        assert_eq!(gpus.len(), 2);
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu.index as usize, i);
            assert_eq!(gpu.uuid, format!("GPU-SIMULATED-gpu-node-1-{i}"));
            assert!(drover_api::naming::is_simulated_gpu(&gpu.uuid));
            assert!(gpu.simulated);
            assert_eq!(gpu.name, "Simulated H100");
            assert_eq!(gpu.memory_total_bytes, 80 * GI);
            assert_eq!(
                (
                    gpu.memory_used_bytes,
                    gpu.utilization_percent,
                    gpu.temperature_c,
                    gpu.power_mw
                ),
                (0, 0, 0, 0)
            );
        }
        // Another agent's simulated GPUs never share a UUID with these.
        let other = simulated_gpus("gpu-node-2", 2, "Simulated H100", 80 * GI);
        assert!(gpus.iter().all(|g| other.iter().all(|o| o.uuid != g.uuid)));
        assert!(simulated_gpus("a", 0, "x", GI).is_empty());
    }

    #[test]
    fn cuda_versions_read_like_nvidia_smi() {
        assert_eq!(cuda_version(12040), "12.4");
        assert_eq!(cuda_version(12000), "12.0");
        assert_eq!(cuda_version(11080), "11.8");
        assert_eq!(cuda_version(12090), "12.9");
        assert_eq!(cuda_version(0), "");
        assert_eq!(cuda_version(-1), "");
    }

    #[test]
    fn failed_queries_keep_the_last_known_values() {
        let mut gpu = GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            name: "NVIDIA H100".into(),
            ..Default::default()
        };
        let full = GpuReading {
            memory_total_bytes: Some(80 * GI),
            memory_used_bytes: Some(GI),
            utilization_percent: Some(40),
            temperature_c: Some(55),
            power_mw: Some(300_000),
        };
        assert_eq!(apply_reading(&mut gpu, &full), 0);
        assert_eq!(gpu.memory_used_bytes, GI);

        let partial = GpuReading {
            memory_used_bytes: Some(2 * GI),
            temperature_c: None,
            power_mw: None,
            ..full
        };
        assert_eq!(apply_reading(&mut gpu, &partial), 2);
        assert_eq!(gpu.memory_used_bytes, 2 * GI);
        assert_eq!(gpu.temperature_c, 55, "kept");
        assert_eq!(gpu.power_mw, 300_000, "kept");

        let before = gpu.clone();
        assert_eq!(apply_reading(&mut gpu, &GpuReading::nothing()), 5);
        assert_eq!(gpu, before);
    }
}
