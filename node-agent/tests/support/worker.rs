//! Shared by the agent's integration tests: the test worker binary, a state directory that
//! kills what it holds when dropped, and a tiny HTTP/1.1 client.

#![allow(dead_code)] // each test crate uses its own part of this

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The `hearth-test-worker` binary of this workspace, built on first use if absent.
pub fn worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from);
            let path = target.join("debug/hearth-test-worker");
            if !path.exists() {
                let status = Command::new(env!("CARGO"))
                    .args(["build", "-p", "hearth-test-worker"])
                    .current_dir(workspace)
                    .status()
                    .expect("run cargo build -p hearth-test-worker");
                assert!(status.success(), "cargo build -p hearth-test-worker failed");
            }
            assert!(path.exists(), "{} was not built", path.display());
            path
        })
        .clone()
}

/// A temporary state directory. Dropping it SIGKILLs every process group its state files
/// name, so a failing test leaves no workload behind.
pub struct StateDir(tempfile::TempDir);

impl StateDir {
    /// A fresh, empty directory.
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        self.0.path().to_owned()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.0.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(pgid) = state["pgid"].as_i64() {
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGCONT);
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): status and body, or
/// `None` if no complete answer came within `limit`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    };
    tokio::time::timeout(limit, exchange).await.ok()?
}

/// The number after `"key":` in a flat JSON object.
pub fn json_number(json: &str, key: &str) -> u64 {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json:?}: {e}"));
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}
