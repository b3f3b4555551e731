//! The compose cluster of `deploy/compose`, driven from the host as an operator would:
//! its `up.sh`, `env.sh` and `down.sh`, under a project name, ports and a state directory
//! of the test's own, so that tests never collide with each other or with a cluster a
//! developer is running.
//!
//! Use [`compose_or_skip`] first: without Docker or a compose command it skips locally
//! (printing `SKIPPED: ...`) and fails in CI. A [`Project`] takes its cluster down on drop,
//! whatever happened, so no container, network or volume outlives a test.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::process::{bin_dir, free_port};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The compose command the scripts will use, as they find it: `HEARTH_COMPOSE`, else the
/// `docker compose` plugin, else docker-compose.
pub fn compose_command() -> Option<String> {
    if let Ok(command) = std::env::var("HEARTH_COMPOSE")
        && !command.is_empty()
    {
        return Some(command);
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("docker", &["compose", "version"]) {
        Some("docker compose".into())
    } else if works("docker-compose", &["version"]) {
        Some("docker-compose".into())
    } else {
        None
    }
}

/// Whether Docker and a compose command are here. When not: panics in CI (`CI` set),
/// otherwise prints `SKIPPED: ...` and returns false, and the test should return.
pub fn compose_or_skip() -> bool {
    if !crate::images::docker_or_skip() {
        return false;
    }
    if compose_command().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "a compose command is required in CI: neither `docker compose` nor docker-compose \
             works (apt-get install docker-compose)"
        );
    }
    eprintln!("SKIPPED: neither `docker compose` nor docker-compose is installed");
    false
}

/// One compose cluster's settings: the environment `up.sh`, `env.sh` and `down.sh` read.
pub struct Project {
    /// `COMPOSE_PROJECT_NAME`.
    pub name: String,
    /// Host port of broker-a's gRPC (TLS).
    pub port_a: u16,
    /// Host port of broker-b's gRPC (TLS).
    pub port_b: u16,
    /// `HEARTH_COMPOSE_STATE`: certificates, tokens, configs, workloads.
    pub state: tempfile::TempDir,
    /// Further `HEARTH_*` settings for the cluster (liveness, say).
    pub extra_env: Vec<(String, String)>,
}

impl Project {
    /// A project named `hearth-test-<what>-<pid>` on free ports.
    pub fn new(what: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name: format!("hearth-test-{what}-{}", std::process::id()),
            port_a: free_port(),
            port_b: free_port(),
            state: tempfile::tempdir()?,
            extra_env: Vec::new(),
        })
    }

    /// Adds a `HEARTH_*` setting for the cluster.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A shell command in the repository root with this project's environment, and the
    /// workspace's binaries (`hearth`) first on PATH.
    pub fn command(&self, script: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(repo())
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("HEARTH_BROKER_A_PORT", self.port_a.to_string())
            .env("HEARTH_BROKER_B_PORT", self.port_b.to_string())
            .env("HEARTH_COMPOSE_STATE", self.state.path())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env_remove("HEARTH_BROKER")
            .env_remove("HEARTH_CA")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::null());
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        command
    }

    /// Runs `script` (see [`Project::command`]); fails with its output if it fails.
    pub fn run(&self, script: &str) -> anyhow::Result<Output> {
        let out = self
            .command(script)
            .output()
            .with_context(|| format!("running {script:?}"))?;
        if !out.status.success() {
            bail!(
                "{script:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `deploy/compose/up.sh`; returns how long it took in all, and its own figure for
    /// the cluster's start (compose up until both agents are READY).
    pub fn up(&self) -> anyhow::Result<(Duration, Duration)> {
        let started = Instant::now();
        let out = self.run("deploy/compose/up.sh")?;
        let total = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ready = stderr
            .split_once("Hearth is up in ")
            .and_then(|(_, rest)| rest.split_once("s from start"))
            .and_then(|(seconds, _)| seconds.parse::<f64>().ok())
            .with_context(|| format!("up.sh did not say when it was up:\n{stderr}"))?;
        Ok((total, Duration::from_secs_f64(ready)))
    }

    /// `deploy/compose/down.sh`.
    pub fn down(&self) -> anyhow::Result<()> {
        self.run("deploy/compose/down.sh").map(drop)
    }

    /// The brokers' published URLs, as `env.sh` gives them to the CLI.
    pub fn brokers(&self) -> String {
        format!(
            "https://127.0.0.1:{},https://127.0.0.1:{}",
            self.port_a, self.port_b
        )
    }

    /// A file under the state directory, such as `secrets/ca.pem`.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.state.path().join(relative)
    }

    /// The token in `secrets/<name>.token` (`admin` or `team-a`).
    pub fn token(&self, name: &str) -> anyhow::Result<String> {
        let path = self.file(&format!("secrets/{name}.token"));
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// The container id of a service (`broker-a`, `etcd-2`, ...), by compose's labels,
    /// which both compose implementations set.
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        let id = out.trim();
        if id.is_empty() || id.contains('\n') {
            bail!("expected one container of service {service}, found {id:?}");
        }
        Ok(id.to_owned())
    }

    /// What of this project is still on the engine: containers, networks and volumes
    /// carrying its compose label, one line each.
    pub fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut found = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "--format", "{{.Names}}"]),
            ("network", vec!["network", "ls", "--format", "{{.Name}}"]),
            ("volume", vec!["volume", "ls", "--format", "{{.Name}}"]),
        ] {
            let mut args = args;
            args.extend(["--filter", &label]);
            for line in docker(&args)?.lines().filter(|l| !l.trim().is_empty()) {
                found.push(format!("{kind} {line}"));
            }
        }
        Ok(found)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Whatever the test did, the cluster goes; the state directory goes with `state`.
        if let Ok(out) = self.command("deploy/compose/down.sh").output()
            && !out.status.success()
        {
            eprintln!(
                "down.sh for {} failed:\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs `docker` with `args`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running docker {args:?}"))?;
    if !out.status.success() {
        bail!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
