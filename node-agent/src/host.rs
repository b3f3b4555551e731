//! The host's CPU and memory capacity, reported in `Hello`.

use hearth_sdk::proto::v1::NodeCapacity;

/// CPU cores this process may use and the host's total memory (0 where unknown).
pub fn capacity() -> NodeCapacity {
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text))
        .unwrap_or(0);
    NodeCapacity {
        cpu_cores,
        memory_bytes,
    }
}

/// `MemTotal` from `/proc/meminfo` text, in bytes (the file says "kB", meaning KiB).
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_total_in_kib() {
        let text = "MemTotal:       131926348 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total_bytes(text), Some(131_926_348 * 1024));
        let text = "MemFree: 1 kB\nMemTotal: 2 kB\n";
        assert_eq!(mem_total_bytes(text), Some(2048));
    }

    #[test]
    fn garbage_gives_none() {
        assert_eq!(mem_total_bytes(""), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB"), None);
        assert_eq!(mem_total_bytes("MemTotal: 5 MB"), None);
    }

    #[test]
    fn this_host_has_cpus_and_memory() {
        let c = capacity();
        assert!(c.cpu_cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(c.memory_bytes > 64 << 20, "{c:?}");
        }
    }
}
