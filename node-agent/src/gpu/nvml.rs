//! Real GPUs through NVML (nvml-wrapper loads `libnvidia-ml.so.1` at run time, so the agent
//! builds and starts on hosts without a driver and only this source fails).
//!
//! Reading and converting are split: [`NvmlGpus`] gathers a [`RawGpuReading`] per GPU in
//! NVML's own units, and the pure [`to_telemetry`] turns it into the proto message. The
//! conversion is where the unit and "not supported" rules live, and it is unit-tested without
//! a GPU.
//!
//! Fields a GPU does not support (ECC on consumer cards, power on some boards, ...) are
//! reported as 0 rather than failing the sample. A GPU that cannot be read at all (fallen off
//! the bus, say) is left out of the sample and logged, so the other GPUs and the node's
//! heartbeat keep flowing.
//!
//! XID errors are watched on a dedicated thread through an NVML event set (Linux only) and
//! handed out with the next sample of the GPU they happened on.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use hearth_sdk::proto::v1::{Gpu, GpuProcess, GpuSource, GpuTelemetry, XidEvent};
use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor},
    enums::device::UsedGpuMemory,
    error::NvmlError,
};

use super::GpuInventory;
use crate::Error;

/// Most XID events kept per GPU between two samples; older ones are dropped first. XIDs come
/// in bursts when a GPU is failing, and the first few say what happened.
const MAX_PENDING_XIDS: usize = 64;

/// One GPU's readings in NVML's units, before conversion to [`GpuTelemetry`].
/// `None` means the GPU does not support (or the driver does not expose) that reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawGpuReading {
    /// NVML UUID, such as `GPU-5d1c...`.
    pub uuid: String,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Percent of time a kernel ran.
    pub util_gpu: Option<u32>,
    /// Percent of time memory was read or written.
    pub util_mem: Option<u32>,
    /// Die temperature, °C.
    pub temp_c: Option<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Enforced power limit, milliwatts.
    pub power_limit_mw: Option<u32>,
    /// Current SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Volatile (since driver load) ECC totals: (corrected, uncorrected).
    pub ecc: Option<(u64, u64)>,
    /// Compute processes on the GPU.
    pub processes: Vec<RawProcess>,
}

/// A compute process on a GPU, as NVML reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawProcess {
    /// Host pid.
    pub pid: u32,
    /// GPU memory it uses, bytes; `None` where NVML cannot tell (`NVML_VALUE_NOT_AVAILABLE`).
    pub used_memory: Option<u64>,
}

impl From<&nvml_wrapper::struct_wrappers::device::ProcessInfo> for RawProcess {
    fn from(p: &nvml_wrapper::struct_wrappers::device::ProcessInfo) -> Self {
        Self {
            pid: p.pid,
            used_memory: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            },
        }
    }
}

/// NVML reports power in milliwatts; the proto carries watts.
pub fn milliwatts_to_watts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

/// Converts one GPU's raw readings (plus the XIDs seen since the last sample) into the proto
/// message. Unsupported readings become 0; utilization is clamped to 100.
pub fn to_telemetry(raw: RawGpuReading, xid_events: Vec<XidEvent>) -> GpuTelemetry {
    GpuTelemetry {
        uuid: raw.uuid,
        utilization_gpu_percent: raw.util_gpu.unwrap_or(0).min(100),
        utilization_memory_percent: raw.util_mem.unwrap_or(0).min(100),
        memory_used_bytes: raw.mem_used,
        memory_total_bytes: raw.mem_total,
        temperature_celsius: raw.temp_c.unwrap_or(0),
        power_watts: raw.power_mw.map_or(0.0, milliwatts_to_watts),
        power_limit_watts: raw.power_limit_mw.map_or(0.0, milliwatts_to_watts),
        sm_clock_mhz: raw.sm_clock_mhz.unwrap_or(0),
        ecc_corrected: raw.ecc.map_or(0, |(corrected, _)| corrected),
        ecc_uncorrected: raw.ecc.map_or(0, |(_, uncorrected)| uncorrected),
        xid_events,
        processes: raw
            .processes
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: p.used_memory.unwrap_or(0),
                // Attribution to sessions (by cgroup for docker, process group for the process
                // runtime) arrives with the runtimes; until then no process is a session's.
                session_id: String::new(),
            })
            .collect(),
        simulated: false,
    }
}

/// `Ok(None)` for readings the GPU or driver does not offer, so they become 0 instead of
/// failing the whole sample. Other errors (GPU lost, driver gone) stay errors.
fn optional<T>(result: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// GPUs read through NVML.
pub struct NvmlGpus {
    nvml: Arc<Nvml>,
    xids: Arc<XidBuffer>,
    /// Set on drop so the XID thread exits.
    stop: Arc<AtomicBool>,
    /// Indexes of GPUs whose last read failed, so a broken GPU is logged once, not per sample.
    failing: Mutex<HashSet<u32>>,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpus").finish_non_exhaustive()
    }
}

impl NvmlGpus {
    /// Loads NVML and checks that it sees at least one GPU.
    pub fn open() -> Result<Self, Error> {
        let nvml = Nvml::init().map_err(|e| Error::NvmlUnavailable(e.to_string()))?;
        let count = nvml
            .device_count()
            .map_err(|e| Error::NvmlUnavailable(format!("cannot count GPUs: {e}")))?;
        if count == 0 {
            return Err(Error::NvmlUnavailable(
                "NVML loaded but reports no GPUs".into(),
            ));
        }
        let nvml = Arc::new(nvml);
        let xids = Arc::new(XidBuffer::default());
        let stop = Arc::new(AtomicBool::new(false));
        xid::start(nvml.clone(), xids.clone(), stop.clone());
        Ok(Self {
            nvml,
            xids,
            stop,
            failing: Mutex::default(),
        })
    }

    fn device(&self, index: u32) -> Result<Device<'_>, Error> {
        self.nvml
            .device_by_index(index)
            .map_err(|source| Error::Nvml {
                what: format!("GPU {index}"),
                source,
            })
    }

    fn count(&self) -> Result<u32, Error> {
        self.nvml.device_count().map_err(|source| Error::Nvml {
            what: "counting GPUs".into(),
            source,
        })
    }

    fn read(&self, index: u32) -> Result<RawGpuReading, Error> {
        let nvml_err = |what: &str| {
            let what = format!("GPU {index}: {what}");
            move |source| Error::Nvml { what, source }
        };
        let device = self.device(index)?;
        let memory = device.memory_info().map_err(nvml_err("memory"))?;
        let utilization = optional(device.utilization_rates()).map_err(nvml_err("utilization"))?;
        let ecc = match (
            optional(device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)),
            optional(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)),
        ) {
            (Ok(Some(corrected)), Ok(Some(uncorrected))) => Some((corrected, uncorrected)),
            (Ok(_), Ok(_)) => None,
            (Err(e), _) | (_, Err(e)) => return Err(nvml_err("ECC counts")(e)),
        };
        Ok(RawGpuReading {
            uuid: device.uuid().map_err(nvml_err("UUID"))?,
            mem_used: memory.used,
            mem_total: memory.total,
            util_gpu: utilization.as_ref().map(|u| u.gpu),
            util_mem: utilization.as_ref().map(|u| u.memory),
            temp_c: optional(device.temperature(TemperatureSensor::Gpu))
                .map_err(nvml_err("temperature"))?,
            power_mw: optional(device.power_usage()).map_err(nvml_err("power"))?,
            power_limit_mw: optional(device.enforced_power_limit())
                .map_err(nvml_err("power limit"))?,
            sm_clock_mhz: optional(device.clock_info(Clock::SM)).map_err(nvml_err("SM clock"))?,
            ecc,
            processes: optional(device.running_compute_processes())
                .map_err(nvml_err("processes"))?
                .unwrap_or_default()
                .iter()
                .map(RawProcess::from)
                .collect(),
        })
    }

    fn note_health(&self, index: u32, result: Result<(), &Error>) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Err(e) if failing.insert(index) => {
                tracing::warn!(gpu = index, error = %e, "cannot read GPU; leaving it out of telemetry");
            }
            Ok(()) if failing.remove(&index) => {
                tracing::info!(gpu = index, "GPU readable again");
            }
            _ => {}
        }
    }
}

impl Drop for NvmlGpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl GpuInventory for NvmlGpus {
    fn source(&self) -> GpuSource {
        GpuSource::Nvml
    }

    fn inventory(&self) -> Result<Vec<Gpu>, Error> {
        (0..self.count()?)
            .map(|index| {
                let device = self.device(index)?;
                let err = |what: &'static str| {
                    move |source| Error::Nvml {
                        what: format!("GPU {index}: {what}"),
                        source,
                    }
                };
                Ok(Gpu {
                    uuid: device.uuid().map_err(err("UUID"))?,
                    index,
                    name: device.name().map_err(err("name"))?,
                    memory_total_bytes: device.memory_info().map_err(err("memory"))?.total,
                    simulated: false,
                })
            })
            .collect()
    }

    fn sample(&self) -> Result<Vec<GpuTelemetry>, Error> {
        let count = self.count()?;
        let mut sample = Vec::with_capacity(count as usize);
        let mut last_error = None;
        for index in 0..count {
            match self.read(index) {
                Ok(raw) => {
                    self.note_health(index, Ok(()));
                    let xids = self.xids.take(&raw.uuid);
                    sample.push(to_telemetry(raw, xids));
                }
                Err(e) => {
                    self.note_health(index, Err(&e));
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            Some(e) if sample.is_empty() => Err(e),
            _ => Ok(sample),
        }
    }
}

/// XID events seen but not yet sampled, by GPU UUID.
#[derive(Debug, Default)]
struct XidBuffer(Mutex<HashMap<String, Vec<XidEvent>>>);

impl XidBuffer {
    fn push(&self, uuid: String, event: XidEvent) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let events = map.entry(uuid).or_default();
        if events.len() >= MAX_PENDING_XIDS {
            events.remove(0);
        }
        events.push(event);
    }

    fn take(&self, uuid: &str) -> Vec<XidEvent> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(uuid).unwrap_or_default()
    }
}

#[cfg(target_os = "linux")]
mod xid {
    //! The XID watcher thread. NVML's event wait blocks, so it gets its own OS thread rather
    //! than a tokio worker; it polls `stop` between 500 ms waits.

    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use nvml_wrapper::{
        Nvml, bitmasks::event::EventTypes, enums::event::XidError, error::NvmlError,
    };

    use super::{XidBuffer, XidEvent};

    pub(super) fn start(nvml: Arc<Nvml>, buffer: Arc<XidBuffer>, stop: Arc<AtomicBool>) {
        let spawned = std::thread::Builder::new()
            .name("hearth-xid".into())
            .spawn(move || watch(&nvml, &buffer, &stop));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the XID watcher; XID events will not be reported");
        }
    }

    fn watch(nvml: &Nvml, buffer: &XidBuffer, stop: &AtomicBool) {
        let mut set = match nvml.create_event_set() {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create an NVML event set; XID events will not be reported");
                return;
            }
        };
        let mut watched = 0;
        for index in 0..nvml.device_count().unwrap_or(0) {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            // Registering an unsupported type fails and frees the whole set, losing the GPUs
            // already registered; ask first.
            let supported = device
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            if !supported {
                tracing::info!(gpu = index, "GPU does not report XID events");
                continue;
            }
            set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "cannot watch XID events; XID events will not be reported");
                    return;
                }
            };
            watched += 1;
        }
        if watched == 0 {
            return;
        }
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            match set.wait(500) {
                Ok(event) => {
                    failing = false;
                    let Some(xid) = event.event_data else {
                        continue;
                    };
                    let code = match xid {
                        XidError::Value(code) => code,
                        // NVML's own marker for "unknown XID".
                        XidError::Unknown => 999,
                    };
                    let Ok(uuid) = event.device.uuid() else {
                        continue;
                    };
                    tracing::warn!(gpu = %uuid, xid = code, "GPU reported an XID error");
                    buffer.push(
                        uuid,
                        XidEvent {
                            code,
                            time: Some(hearth_sdk::time::now()),
                        },
                    );
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "waiting for XID events failed; retrying");
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod xid {
    //! NVML offers event sets on Linux only; elsewhere no XID events are reported.
    use std::sync::{Arc, atomic::AtomicBool};

    pub(super) fn start(_: Arc<nvml_wrapper::Nvml>, _: Arc<super::XidBuffer>, _: Arc<AtomicBool>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> RawGpuReading {
        RawGpuReading {
            uuid: "GPU-5d1c0e2a".into(),
            mem_used: 3 << 30,
            mem_total: 80 << 30,
            util_gpu: Some(87),
            util_mem: Some(41),
            temp_c: Some(64),
            power_mw: Some(612_345),
            power_limit_mw: Some(700_000),
            sm_clock_mhz: Some(1980),
            ecc: Some((12, 1)),
            processes: vec![
                RawProcess {
                    pid: 4242,
                    used_memory: Some(2 << 30),
                },
                RawProcess {
                    pid: 4343,
                    used_memory: None,
                },
            ],
        }
    }

    #[test]
    fn milliwatts_become_watts() {
        assert_eq!(milliwatts_to_watts(0), 0.0);
        assert_eq!(milliwatts_to_watts(1), 0.001);
        assert_eq!(milliwatts_to_watts(700_000), 700.0);
        assert_eq!(milliwatts_to_watts(612_345), 612.345);
        assert_eq!(milliwatts_to_watts(u32::MAX), 4_294_967.295);
    }

    #[test]
    fn full_reading_converts_field_by_field() {
        let t = to_telemetry(h100(), Vec::new());
        assert_eq!(t.uuid, "GPU-5d1c0e2a");
        assert_eq!(t.utilization_gpu_percent, 87);
        assert_eq!(t.utilization_memory_percent, 41);
        assert_eq!(t.memory_used_bytes, 3 << 30);
        assert_eq!(t.memory_total_bytes, 80 << 30);
        assert_eq!(t.temperature_celsius, 64);
        assert_eq!(t.power_watts, 612.345);
        assert_eq!(t.power_limit_watts, 700.0);
        assert_eq!(t.sm_clock_mhz, 1980);
        assert_eq!((t.ecc_corrected, t.ecc_uncorrected), (12, 1));
        assert!(!t.simulated, "real hardware must never be marked simulated");
        assert!(t.xid_events.is_empty());
    }

    #[test]
    fn unsupported_readings_become_zero() {
        let raw = RawGpuReading {
            uuid: "GPU-consumer".into(),
            mem_used: 1,
            mem_total: 24 << 30,
            ..RawGpuReading::default()
        };
        let t = to_telemetry(raw, Vec::new());
        assert_eq!(t.uuid, "GPU-consumer");
        assert_eq!((t.memory_used_bytes, t.memory_total_bytes), (1, 24 << 30));
        assert_eq!(t.utilization_gpu_percent, 0);
        assert_eq!(t.utilization_memory_percent, 0);
        assert_eq!(t.temperature_celsius, 0);
        assert_eq!((t.power_watts, t.power_limit_watts), (0.0, 0.0));
        assert_eq!(t.sm_clock_mhz, 0);
        assert_eq!((t.ecc_corrected, t.ecc_uncorrected), (0, 0));
        assert!(t.processes.is_empty());
    }

    #[test]
    fn utilization_is_clamped() {
        let raw = RawGpuReading {
            util_gpu: Some(250),
            util_mem: Some(101),
            ..h100()
        };
        let t = to_telemetry(raw, Vec::new());
        assert_eq!(
            (t.utilization_gpu_percent, t.utilization_memory_percent),
            (100, 100)
        );
    }

    #[test]
    fn processes_keep_pid_and_memory_and_are_not_yet_attributed() {
        let t = to_telemetry(h100(), Vec::new());
        assert_eq!(t.processes.len(), 2);
        assert_eq!(t.processes[0].pid, 4242);
        assert_eq!(t.processes[0].used_memory_bytes, 2 << 30);
        // NVML_VALUE_NOT_AVAILABLE (WDDM, some containers) is reported as 0 bytes.
        assert_eq!(t.processes[1].pid, 4343);
        assert_eq!(t.processes[1].used_memory_bytes, 0);
        // Placeholder until the runtimes can map pids to sessions.
        assert!(t.processes.iter().all(|p| p.session_id.is_empty()));
    }

    #[test]
    fn nvml_process_info_maps_used_and_unavailable_memory() {
        use nvml_wrapper::struct_wrappers::device::ProcessInfo;
        let used = ProcessInfo {
            pid: 7,
            used_gpu_memory: UsedGpuMemory::Used(1 << 20),
            gpu_instance_id: None,
            compute_instance_id: None,
        };
        let unavailable = ProcessInfo {
            used_gpu_memory: UsedGpuMemory::Unavailable,
            ..used.clone()
        };
        assert_eq!(
            RawProcess::from(&used),
            RawProcess {
                pid: 7,
                used_memory: Some(1 << 20)
            }
        );
        assert_eq!(RawProcess::from(&unavailable).used_memory, None);
    }

    #[test]
    fn xid_events_are_passed_through() {
        let xid = XidEvent {
            code: 79,
            time: Some(hearth_sdk::time::now()),
        };
        let t = to_telemetry(h100(), vec![xid]);
        assert_eq!(t.xid_events, [xid]);
    }

    #[test]
    fn xid_buffer_hands_events_out_once_per_gpu_and_is_bounded() {
        let buffer = XidBuffer::default();
        let event = |code| XidEvent { code, time: None };
        buffer.push("GPU-a".into(), event(79));
        buffer.push("GPU-b".into(), event(48));
        assert_eq!(buffer.take("GPU-a"), [event(79)]);
        assert!(buffer.take("GPU-a").is_empty(), "handed out once");
        assert_eq!(buffer.take("GPU-b"), [event(48)]);
        for code in 0..(MAX_PENDING_XIDS as u64 + 10) {
            buffer.push("GPU-a".into(), event(code));
        }
        let kept = buffer.take("GPU-a");
        assert_eq!(kept.len(), MAX_PENDING_XIDS);
        assert_eq!(kept.last().unwrap().code, MAX_PENDING_XIDS as u64 + 9);
    }

    #[test]
    fn unsupported_nvml_readings_are_optional_but_real_failures_are_not() {
        assert_eq!(optional(Ok::<u32, NvmlError>(5)).unwrap(), Some(5));
        assert_eq!(optional::<u32>(Err(NvmlError::NotSupported)).unwrap(), None);
        assert_eq!(
            optional::<u32>(Err(NvmlError::FailedToLoadSymbol("x".into()))).unwrap(),
            None
        );
        assert!(matches!(
            optional::<u32>(Err(NvmlError::GpuLost)),
            Err(NvmlError::GpuLost)
        ));
    }

    #[test]
    fn missing_nvml_says_what_to_do() {
        // This machine (and CI) has no NVIDIA driver; on one that has, the open succeeds.
        match NvmlGpus::open() {
            Ok(gpus) => assert_eq!(gpus.source(), GpuSource::Nvml),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("NVML not available (no NVIDIA driver?): "),
                    "{msg}"
                );
                assert!(msg.contains("--simulate-gpus N"), "{msg}");
                assert!(msg.contains("--no-gpus"), "{msg}");
            }
        }
    }
}
