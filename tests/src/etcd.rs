//! Starts a real, single-member etcd server for a test.
//!
//! Each [`Etcd`] is its own server process on ephemeral ports with its own data directory,
//! killed when dropped. Tests that share one server keep apart with [`unique_prefix`].
//!
//! Use [`etcd_or_skip`] in tests: without an `etcd` binary it skips locally (printing
//! `SKIPPED: etcd not installed`) but fails in CI (`CI` set), so CI never passes by
//! silently skipping.

use std::fmt;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long a starting etcd may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The error [`Etcd::start`] returns when no `etcd` binary exists; check for it with
/// `error.is::<EtcdNotInstalled>()`.
#[derive(Debug)]
pub struct EtcdNotInstalled;

impl fmt::Display for EtcdNotInstalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no etcd binary on PATH or at /usr/bin/etcd (install Debian's etcd-server)")
    }
}

impl std::error::Error for EtcdNotInstalled {}

/// A running etcd server owned by one test.
pub struct Etcd {
    binary: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds the data directory and the log; removed on drop.
    dir: TempDir,
    child: Option<Child>,
}

/// Starts etcd, or decides that this test should skip.
///
/// Returns `None` (after printing `SKIPPED: etcd not installed` to stderr) when no etcd
/// binary exists and `CI` is unset or empty. Panics when etcd is missing in CI, or when it
/// exists but does not start.
pub async fn etcd_or_skip() -> Option<Etcd> {
    match Etcd::start().await {
        Ok(etcd) => Some(etcd),
        Err(e) if e.is::<EtcdNotInstalled>() && !in_ci() => {
            eprintln!("SKIPPED: etcd not installed");
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

/// A key prefix no other test uses: `/hearth-test/<test>-<ulid>`.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "/hearth-test/{test}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"));
    on_path
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    // Racy by nature (the port is free only until someone else binds it), but etcd needs
    // numbers up front and cannot be handed a listener.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Etcd {
    /// Starts a fresh server and waits until it answers.
    ///
    /// # Errors
    ///
    /// [`EtcdNotInstalled`] when no binary exists outside CI; in CI that case becomes
    /// "etcd is required in CI: install Debian's etcd-server". Otherwise, the reason it
    /// did not start, with the tail of its log.
    pub async fn start() -> anyhow::Result<Etcd> {
        let Some(binary) = find_binary() else {
            if in_ci() {
                bail!("etcd is required in CI: install Debian's etcd-server");
            }
            return Err(EtcdNotInstalled.into());
        };
        let mut etcd = Etcd {
            binary,
            name: format!(
                "hearth-test-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            ),
            client_port: free_port()?,
            peer_port: free_port()?,
            dir: tempfile::Builder::new()
                .prefix("hearth-etcd-")
                .tempdir()
                .context("creating etcd's temp dir")?,
            child: None,
        };
        let mut tries = 1;
        loop {
            match etcd.spawn().await {
                Ok(()) => return Ok(etcd),
                // Another process took a port between `free_port` and etcd's bind (tests
                // run side by side): pick new ports and start over.
                Err(e) if tries < 3 && format!("{e:#}").contains("address already in use") => {
                    tries += 1;
                    etcd.client_port = free_port()?;
                    etcd.peer_port = free_port()?;
                    let _ = fs::remove_dir_all(etcd.dir.path().join("data"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL, like `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The server's log file (stdout and stderr, across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit. Data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server, then starts it again on the same ports and data directory.
    ///
    /// # Panics
    ///
    /// When it does not come back (a test helper: the test cannot go on).
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn().await {
            panic!("restarting etcd: {e:#}");
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{}={peer_url}", self.name))
            .arg("--initial-cluster-token")
            .arg(&self.name)
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let endpoint = self.endpoint();
        let mut last_error = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "etcd exited with {status} before answering; log tail:\n{}",
                    log_tail(&self.log_path())
                );
            }
            let probe = async {
                let options =
                    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
                let mut client = etcd_client::Client::connect([&endpoint], Some(options)).await?;
                client.status().await
            };
            match tokio::time::timeout(Duration::from_secs(2), probe).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "probe timed out".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        bail!(
            "etcd at {endpoint} did not answer within {START_DEADLINE:?} (last error: {last_error}); log tail:\n{}",
            log_tail(&self.log_path())
        )
    }
}

fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
