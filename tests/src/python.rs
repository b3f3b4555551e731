//! The Python client (`sdk/python`) in a fresh virtualenv, as a developer installs it.
//!
//! Without python3 (with venv and pip) [`python_or_skip`] prints `SKIPPED: ...` and the
//! test returns early, except in CI (`CI` set), where it fails instead.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether `python3` with the `venv` and `ensurepip` modules (a virtualenv with pip) is
/// here. When it is not: panics in CI, otherwise prints `SKIPPED: ...` and returns false.
pub fn python_or_skip() -> bool {
    let available = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if available {
        return true;
    }
    let reason = "python3 with venv and pip not available (Debian: apt-get install python3-venv)";
    assert!(!in_ci(), "required in CI: {reason}");
    eprintln!("SKIPPED: {reason}");
    false
}

/// Runs `command`; fails with its output when it does not exit 0.
pub fn run(what: &str, command: &mut Command) -> anyhow::Result<Output> {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// A fresh virtualenv under `dir` with `sdk/python` installed from the repo, at the
/// versions `sdk/python/constraints.txt` pins; returns its python.
pub fn install_client(dir: &Path) -> anyhow::Result<PathBuf> {
    let venv = dir.join("venv");
    run(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    )?;
    let python = venv.join("bin/python");
    let sdk = repo().join("sdk/python");
    run(
        "pip install sdk/python",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-c",
            ])
            .arg(sdk.join("constraints.txt"))
            .arg(&sdk),
    )?;
    Ok(python)
}
