//! The host's GPUs: inventory for `Hello` and per-GPU telemetry samples.
//!
//! [`GpuInventory`] is a real seam with three sources, picked once at start-up by [`open`]:
//! - [`nvml`]: real hardware through NVML (the default);
//! - [`simulated`]: synthetic GPUs, only with `--simulate-gpus N`, marked simulated everywhere
//!   so they can never pass for real hardware;
//! - [`none`]: a CPU-only node, only with `--no-gpus`.
//!
//! When NVML is missing and neither opt-in is given, the agent refuses to start: silently
//! coming up as a GPU-less (or fake-GPU) node would hide a broken driver from the fleet.

pub mod none;
pub mod nvml;
pub mod simulated;

use std::sync::Arc;

use hearth_sdk::proto::v1::{Gpu, GpuSource, GpuTelemetry};

use crate::{Config, Error};

/// Where a node's GPUs come from, and how to read them.
///
/// Calls block (NVML is a synchronous C library), so async callers use `spawn_blocking`.
pub trait GpuInventory: Send + Sync {
    /// The source, reported in `Hello` so the broker can tell real from simulated.
    fn source(&self) -> GpuSource;

    /// Every GPU on the host, ordered by index.
    fn inventory(&self) -> Result<Vec<Gpu>, Error>;

    /// One telemetry sample per GPU. A GPU that cannot be read is left out (and logged);
    /// an error means no GPU could be read at all.
    fn sample(&self) -> Result<Vec<GpuTelemetry>, Error>;
}

/// Opens the GPU source the configuration asks for: simulated with `simulate_gpus`, none
/// with `no_gpus`, NVML otherwise (failing with [`Error::NvmlUnavailable`] when it cannot).
pub fn open(config: &Config) -> Result<Arc<dyn GpuInventory>, Error> {
    if let Some(count) = config.simulate_gpus {
        return Ok(Arc::new(simulated::SimulatedGpus::new(
            &config.node_id,
            count,
            &config.simulate_gpu_model,
            config.simulate_gpu_memory,
        )));
    }
    if config.no_gpus {
        return Ok(Arc::new(none::NoGpus));
    }
    Ok(Arc::new(nvml::NvmlGpus::open()?))
}
