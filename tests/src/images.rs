//! The test worker, built locally: the `hearth-test-worker:latest` image (`FROM scratch`
//! around a static binary) for the docker runtime, and the same binary for the process
//! runtime. Both come from `scripts/build-test-image.sh`; nothing is ever pulled.
//!
//! Use [`docker_or_skip`] first in tests that need Docker: it skips locally (printing
//! `SKIPPED: docker not available`) but fails in CI (`CI` set), so CI never passes by
//! silently skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The tag `scripts/build-test-image.sh` gives the test worker image.
pub const WORKER_IMAGE: &str = "hearth-test-worker:latest";

/// Builds the test worker image once per test process (later calls wait for the first,
/// then share its outcome) and returns its tag, [`WORKER_IMAGE`].
pub fn worker_image() -> anyhow::Result<&'static str> {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    match BUILT.get_or_init(|| run_script(&[]).map_err(|e| format!("{e:#}"))) {
        Ok(_image_id) => Ok(WORKER_IMAGE),
        Err(e) => bail!("building the test worker image: {e}"),
    }
}

/// The statically linked test worker binary (built once per test process), for the
/// process runtime. Panics when it cannot be built.
pub fn worker_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        run_script(&["--binary-only"])
            .map(PathBuf::from)
            .map_err(|e| format!("{e:#}"))
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("building the test worker binary: {e}"),
    }
}

/// Whether a Docker engine answers (`docker info`). When none does: panics in CI (`CI`
/// set and non-empty), otherwise prints `SKIPPED: docker not available` and returns
/// false, and the test should return early.
pub fn docker_or_skip() -> bool {
    let available = Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("Docker is required in CI, but `docker info` failed");
    }
    eprintln!("SKIPPED: docker not available");
    false
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh")
}

/// Runs the build script and returns the last line it printed (the image id, or the
/// binary's path with `--binary-only`).
fn run_script(args: &[&str]) -> anyhow::Result<String> {
    let script = script();
    let output = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}):\n{}",
            script.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(line) if !line.trim().is_empty() => Ok(line.trim().to_string()),
        _ => bail!("{} printed nothing", script.display()),
    }
}

/// A session spec that runs the test worker `image` (the image tag for the docker
/// runtime, the binary's path for the process runtime): its HTTP port 8080, named
/// `http`, and a TCP readiness probe on it. Tests set GPUs, idle policy and the rest.
pub fn worker_spec(image: impl Into<String>) -> hearth_sdk::proto::v1::SessionSpec {
    use hearth_sdk::proto::v1::{PortSpec, ReadinessProbe, SessionSpec, readiness_probe};
    SessionSpec {
        image: image.into(),
        ports: vec![PortSpec {
            port: 8080,
            name: "http".into(),
        }],
        readiness: Some(ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(8080)),
            ..ReadinessProbe::default()
        }),
        ..SessionSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_binary_is_built_and_runs() {
        let output = Command::new(worker_binary())
            .args(["echo", "hello", "worker"])
            .output()
            .unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, b"hello worker\n");
    }

    #[test]
    fn the_worker_image_is_built_locally() {
        if !docker_or_skip() {
            return;
        }
        assert_eq!(worker_image().unwrap(), WORKER_IMAGE);
        let inspected = Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config.Entrypoint}}",
            ])
            .arg(WORKER_IMAGE)
            .output()
            .unwrap();
        assert!(inspected.status.success());
        assert_eq!(
            String::from_utf8_lossy(&inspected.stdout).trim(),
            r#"["/worker"]"#
        );
    }
}
