//! Real `hearth-broker` and `hearth-agent` processes on free loopback ports.
//!
//! Tests that kill a process (`kill -9` of a leader, an agent that dies) need real
//! processes; everything else about them is the same binary an operator runs. The
//! binaries must be built first (`cargo build --bins`, which the test command does).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// The directory holding the workspace's binaries: `target/<profile>`, whether this is a
/// test (`target/<profile>/deps/<test>`) or a binary such as `hearth-bench`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; fails clearly if it was not built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A child process whose output goes to a log file; killed with SIGKILL on drop.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program` with `args`, logging to `log`.
    pub fn spawn(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            log,
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts it again with the same arguments (after `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    /// `kill -9`: no chance to clean up, as when a host loses power.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; true if it exited in time.
    /// Async, so the test's own client connections keep being served meanwhile.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Its process id while it runs: for sampling `/proc/<pid>` and for signals such as
    /// SIGSTOP, which freeze it without closing its sockets.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) with `kill(1)`; true if it was sent.
    pub fn signal(&self, name: &str) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The end of its log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ---\n{}",
            self.name,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker process.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Its gRPC URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its admin HTTP address.
    pub admin: String,
}

impl Broker {
    /// Starts a broker on free ports; `extra` adds flags (`--etcd ...`, timings).
    pub fn spawn(dir: &Path, name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--broker-id".to_owned(),
            name.to_owned(),
            "--grpc-addr".to_owned(),
            grpc.clone(),
            "--admin-addr".to_owned(),
            admin.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(
            name,
            binary("hearth-broker")?,
            args,
            dir.join(format!("{name}.log")),
        )?;
        Ok(Self {
            proc,
            url: format!("http://{grpc}"),
            admin,
        })
    }
}

/// An agent process with simulated GPUs.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Its node id.
    pub node_id: String,
    /// Its admin HTTP address.
    pub admin: String,
    /// Where its process runtime keeps workload state, if it runs one.
    state_dir: Option<PathBuf>,
}

impl Drop for Agent {
    /// Ends the agent and then its workloads. A process-runtime workload runs in its own
    /// process group so that it survives an agent restart; at the end of a test nothing
    /// will adopt it, so it is killed rather than left running.
    fn drop(&mut self) {
        self.proc.kill();
        if let Some(dir) = &self.state_dir {
            kill_workloads(dir);
        }
    }
}

/// `kill -9` of every process group recorded in a process runtime's state files.
fn kill_workloads(state_dir: &Path) {
    let Ok(files) = std::fs::read_dir(state_dir) else {
        return;
    };
    for file in files.flatten() {
        let path = file.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let pgid = text
            .split("\"pgid\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|n| n.trim().parse::<i32>().ok())
            .filter(|pgid| *pgid > 1);
        if let Some(pgid) = pgid {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Agent {
    /// Starts an agent on the Docker runtime with `gpus` simulated GPUs, its state in
    /// `dir/agent-state`.
    pub fn spawn_docker(
        dir: &Path,
        node_id: &str,
        brokers: &[&str],
        gpus: &str,
    ) -> anyhow::Result<Self> {
        let state = dir.join("agent-state").display().to_string();
        let flags = [
            "--simulate-gpus",
            gpus,
            "--runtime",
            "docker",
            "--state-dir",
            &state,
        ];
        Self::spawn(dir, node_id, brokers, &flags)
    }

    /// Starts an agent named `node_id` dialling `brokers`; `extra` adds flags.
    pub fn spawn(
        dir: &Path,
        node_id: &str,
        brokers: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--node-id".to_owned(),
            node_id.to_owned(),
            "--broker".to_owned(),
            brokers.join(","),
            "--admin-addr".to_owned(),
            admin.clone(),
        ];
        // Control-plane tests need no Docker: the process runtime unless told otherwise.
        let mut state_dir = None;
        if !extra.contains(&"--runtime") {
            let state = dir.join(format!("{node_id}-state"));
            args.extend(["--runtime".to_owned(), "process".to_owned()]);
            args.extend(["--state-dir".to_owned(), state.display().to_string()]);
            state_dir = Some(state);
        }
        // Tests put sessions of several tenants on one process node, which a real agent
        // refuses unless told so (the process runtime keeps tenants apart in nothing);
        // `tests/tests/isolation.rs` checks that refusal with an agent of its own.
        let process = extra
            .iter()
            .position(|a| *a == "--runtime")
            .is_none_or(|at| extra.get(at + 1) == Some(&"process"));
        if process && !extra.iter().any(|a| a.starts_with("--mixed-tenants")) {
            args.push("--mixed-tenants".to_owned());
        }
        if let Some(at) = extra.iter().position(|a| *a == "--state-dir") {
            state_dir = extra.get(at + 1).map(PathBuf::from);
        } else if state_dir.is_none() {
            // Every agent keeps its own state (the leader epoch it has seen): never the
            // shared default, which another test's cluster would have written.
            let state = dir.join(format!("{node_id}-state"));
            args.extend(["--state-dir".to_owned(), state.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(
            node_id,
            binary("hearth-agent")?,
            args,
            dir.join(format!("{node_id}.log")),
        )?;
        Ok(Self {
            proc,
            node_id: node_id.to_owned(),
            admin,
            state_dir,
        })
    }
}
