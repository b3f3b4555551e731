//! A CPU-only node (`--no-gpus`): no GPUs, source `GPU_SOURCE_NONE`.

use hearth_sdk::proto::v1::{Gpu, GpuSource, GpuTelemetry};

use super::GpuInventory;
use crate::Error;

/// The GPU source of a host that has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpus;

impl GpuInventory for NoGpus {
    fn source(&self) -> GpuSource {
        GpuSource::None
    }

    fn inventory(&self) -> Result<Vec<Gpu>, Error> {
        Ok(Vec::new())
    }

    fn sample(&self) -> Result<Vec<GpuTelemetry>, Error> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_no_gpus_and_says_so() {
        assert_eq!(NoGpus.source(), GpuSource::None);
        assert!(NoGpus.inventory().unwrap().is_empty());
        assert!(NoGpus.sample().unwrap().is_empty());
    }
}
