//! Simulated GPUs, for development and tests on hosts without NVIDIA hardware.
//!
//! Only `--simulate-gpus N` turns this on. Every `Gpu` and `GpuTelemetry` carries
//! `simulated: true`, the source is `GPU_SOURCE_SIMULATED`, and UUIDs start with `GPU-SIM-`,
//! so a simulated node can never pass for real hardware. UUIDs derive from the node id and
//! index, so they stay the same across agent restarts (allocations are keyed by UUID).
//! Telemetry looks like an idle H100: no memory in use, low utilization, 30-40 °C, 60-80 W
//! of a 700 W limit.

use hearth_sdk::proto::v1::{Gpu, GpuSource, GpuTelemetry};
use rand::Rng;

use super::GpuInventory;
use crate::Error;

/// Power limit reported for every simulated GPU, in watts (an H100 SXM's TDP).
pub const POWER_LIMIT_WATTS: f64 = 700.0;

/// Every simulated GPU's UUID starts with this; no real NVIDIA UUID does (theirs are
/// `GPU-` followed by hex), so runtimes can tell them apart.
pub const UUID_PREFIX: &str = "GPU-SIM-";

/// `count` synthetic GPUs of one model.
#[derive(Debug, Clone)]
pub struct SimulatedGpus {
    gpus: Vec<Gpu>,
}

impl SimulatedGpus {
    /// `count` GPUs named `model` with `memory_bytes` each, UUIDs derived from `node_id`.
    pub fn new(node_id: &str, count: u32, model: &str, memory_bytes: u64) -> Self {
        let gpus = (0..count)
            .map(|index| Gpu {
                uuid: uuid(node_id, index),
                index,
                name: model.to_owned(),
                memory_total_bytes: memory_bytes,
                simulated: true,
            })
            .collect();
        Self { gpus }
    }
}

/// The stable UUID of simulated GPU `index` on `node_id`.
pub fn uuid(node_id: &str, index: u32) -> String {
    format!("{UUID_PREFIX}{node_id}-{index}")
}

impl GpuInventory for SimulatedGpus {
    fn source(&self) -> GpuSource {
        GpuSource::Simulated
    }

    fn inventory(&self) -> Result<Vec<Gpu>, Error> {
        Ok(self.gpus.clone())
    }

    fn sample(&self) -> Result<Vec<GpuTelemetry>, Error> {
        let mut rng = rand::rng();
        Ok(self
            .gpus
            .iter()
            .map(|gpu| GpuTelemetry {
                uuid: gpu.uuid.clone(),
                utilization_gpu_percent: rng.random_range(0..=3),
                utilization_memory_percent: rng.random_range(0..=1),
                memory_used_bytes: 0,
                memory_total_bytes: gpu.memory_total_bytes,
                temperature_celsius: rng.random_range(30..=40),
                power_watts: rng.random_range(60.0..=80.0),
                power_limit_watts: POWER_LIMIT_WATTS,
                // An idle H100's SM clock.
                sm_clock_mhz: rng.random_range(340..=360),
                ecc_corrected: 0,
                ecc_uncorrected: 0,
                xid_events: Vec::new(),
                processes: Vec::new(),
                simulated: true,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> SimulatedGpus {
        SimulatedGpus::new("gpu-7", 2, "Simulated H100 80GB", 80 << 30)
    }

    #[test]
    fn inventory_is_labelled_simulated_with_stable_uuids() {
        let sim = two();
        assert_eq!(sim.source(), GpuSource::Simulated);
        let gpus = sim.inventory().unwrap();
        assert_eq!(gpus.len(), 2);
        for (i, gpu) in gpus.iter().enumerate() {
            assert!(gpu.simulated, "{gpu:?}");
            assert_eq!(gpu.index, i as u32);
            assert_eq!(gpu.uuid, format!("GPU-SIM-gpu-7-{i}"));
            assert_eq!(gpu.name, "Simulated H100 80GB");
            assert_eq!(gpu.memory_total_bytes, 80 << 30);
        }
        // Same node, same UUIDs: a restarted agent keeps its allocations.
        assert_eq!(two().inventory().unwrap(), gpus);
        // Another node never collides.
        let other = SimulatedGpus::new("gpu-8", 2, "x", 1).inventory().unwrap();
        assert_ne!(other[0].uuid, gpus[0].uuid);
    }

    #[test]
    fn telemetry_is_labelled_simulated_and_plausible() {
        let sim = two();
        for _ in 0..200 {
            let sample = sim.sample().unwrap();
            assert_eq!(sample.len(), 2);
            for (t, gpu) in sample.iter().zip(sim.inventory().unwrap()) {
                assert!(t.simulated, "{t:?}");
                assert_eq!(t.uuid, gpu.uuid);
                assert!(t.utilization_gpu_percent <= 100);
                assert!(t.utilization_memory_percent <= 100);
                assert!(t.memory_used_bytes <= t.memory_total_bytes);
                assert_eq!(t.memory_total_bytes, 80 << 30);
                assert!((30..=40).contains(&t.temperature_celsius), "{t:?}");
                assert!((60.0..=80.0).contains(&t.power_watts), "{t:?}");
                assert!(t.power_watts < t.power_limit_watts);
                assert_eq!(t.power_limit_watts, POWER_LIMIT_WATTS);
                assert!(t.sm_clock_mhz > 0);
                assert!(t.processes.is_empty() && t.xid_events.is_empty());
            }
        }
    }
}
