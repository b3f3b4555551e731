//! Network namespaces joined to the host by a veth pair, for network-cut tests.
//!
//! A process started with [`Netns::command`] reaches the host only through its veth: the
//! host end carries `host_ip` and the namespace end `ns_ip`, a /30 taken from
//! 10.231.0.0/16. [`Netns::cut`] takes the host end down, so packets are dropped and open
//! connections hang (as in a real partition) rather than being reset; [`Netns::restore`]
//! brings it back. Everything needs root and `ip netns` ([`available`]).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Number of /30 subnets in 10.231.0.0/16.
const SUBNETS: u32 = 1 << 14;

/// Namespaces created by this process so far (spreads the subnet choice).
static CREATED: AtomicU32 = AtomicU32::new(0);

/// Whether network namespaces can be used here: running as root and `ip netns` works.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    root && Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace with a veth pair to the host; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Name of the namespace (`ip netns exec NAME …`).
    pub name: String,
    /// Address of the host end of the veth: what a process in the namespace dials.
    pub host_ip: Ipv4Addr,
    /// Address of the namespace end of the veth.
    pub ns_ip: Ipv4Addr,
    /// Name of the host end of the veth.
    host_veth: String,
}

impl Netns {
    /// Creates a uniquely named namespace and a veth pair with a /30 from 10.231.0.0/16;
    /// both ends and the namespace's `lo` are up. `tag` only helps a reader of `ip netns`.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let start = std::process::id()
            .wrapping_mul(131)
            .wrapping_add(CREATED.fetch_add(1, Ordering::Relaxed).wrapping_mul(7));
        let mut last_error = None;
        // Another process (or test) may hold a subnet: the veth names are derived from it,
        // so creating the pair fails and the next subnet is tried.
        for attempt in 0..64 {
            let index = start.wrapping_add(attempt) % SUBNETS;
            match Self::try_create(&tag, index) {
                Ok(ns) => return Ok(ns),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no subnet tried")))
            .context("creating a network namespace with a veth pair")
    }

    fn try_create(tag: &str, index: u32) -> anyhow::Result<Netns> {
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + index * 4;
        let host_ip = Ipv4Addr::from(base + 1);
        let ns_ip = Ipv4Addr::from(base + 2);
        let name = format!("hearth-{tag}-{index}");
        let host_veth = format!("hvh{index}");
        let ns_veth = format!("hvn{index}");
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth,
        ])?;
        // From here on, drop cleans up whatever was created.
        let ns = Netns {
            name,
            host_ip,
            ns_ip,
            host_veth,
        };
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "set", &ns_veth, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &ns.host_veth,
        ])?;
        ip(&["link", "set", &ns.host_veth, "up"])?;
        let exec = ["netns", "exec", ns.name.as_str(), "ip"];
        ip(&[
            &exec[..],
            &["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_veth],
        ]
        .concat())?;
        ip(&[&exec[..], &["link", "set", &ns_veth, "up"]].concat())?;
        ip(&[&exec[..], &["link", "set", "lo", "up"]].concat())?;
        Ok(ns)
    }

    /// Cuts the link: the host end goes down, so packets either way are dropped and open
    /// connections hang until their own timeouts, as in a real partition.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_veth, "down"])
    }

    /// Restores the link cut by [`Netns::cut`] (the address comes back with the link).
    pub fn restore(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_veth, "up"])?;
        // Taking a link down drops its routes; put the /30 route back if it is missing.
        let addr = format!("{}/30", self.host_ip);
        let shown = Command::new("ip")
            .args(["-4", "addr", "show", "dev", &self.host_veth])
            .output()
            .context("running ip addr show")?;
        if !String::from_utf8_lossy(&shown.stdout).contains(&addr) {
            ip(&["addr", "add", &addr, "dev", &self.host_veth])?;
        }
        // The carrier comes back a moment after the link; wait for it (briefly) so the
        // first packet after a restore is not dropped.
        for _ in 0..50 {
            let link = Command::new("ip")
                .args(["link", "show", "dev", &self.host_veth])
                .output()
                .context("running ip link show")?;
            if String::from_utf8_lossy(&link.stdout).contains("LOWER_UP") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    /// `ip` execs the program, so the child's pid is the program's own.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes its peer, wherever it lives.
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_reaches_the_host_until_cut() {
        if !available() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "network namespaces are required in CI (run as root with iproute2)"
            );
            eprintln!("skipping: network namespaces need root and iproute2");
            return;
        }
        let ns = Netns::create("selftest").expect("create");
        let listener = std::net::TcpListener::bind((ns.host_ip, 0)).expect("bind the host end");
        let port = listener.local_addr().expect("addr").port();
        // Connects from inside the namespace with bash's /dev/tcp, giving up after 3 s.
        let reaches = || {
            ns.command(Path::new("timeout"))
                .args(["3", "bash", "-c"])
                .arg(format!("echo > /dev/tcp/{}/{port}", ns.host_ip))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("ip netns exec")
                .success()
        };
        assert!(reaches(), "the host end is reachable from the namespace");
        ns.cut().expect("cut");
        assert!(!reaches(), "the cut drops packets");
        ns.restore().expect("restore");
        // A SYN sent while neighbour resolution restarts may be lost: retry a few times.
        assert!((0..5).any(|_| reaches()), "the link is back");
        let name = ns.name.clone();
        drop(ns);
        let list = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }
}
