//! Runs the README's "Secure setup" block as written, in one shell, with the real
//! `hearth`, `hearth-broker`, `hearth-agent` and grpcurl binaries: a development CA,
//! tokens appended to the broker's config, a TLS broker, an agent proving its node with
//! its certificate, and calls over TLS with a token. Only the ports are changed (tests
//! never share fixed ports); the shell runs in a fresh directory.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
    time::Duration,
};

use hearth_tests::{
    eventually,
    process::{bin_dir, binary, free_port},
    readme::{self, grpcurl_available},
};

fn block() -> String {
    let body = readme::section("secure-setup")
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .expect("the secure-setup block is one ```sh fence");
    body.to_owned()
}

#[tokio::test]
async fn readme_secure_setup_runs_as_written() -> anyhow::Result<()> {
    let script = block();
    for needed in [
        "hearth certs init",
        "hearth certs node",
        "hearth token create",
        "--tls-client-ca",
        "--tls-cert",
        "grpcurl -cacert",
        "authorization: Bearer",
    ] {
        assert!(
            script.contains(needed),
            "the block lost {needed:?}:\n{script}"
        );
    }
    // The block relies on the CLI's token command; say so plainly if it is missing.
    let token_help = Command::new(binary("hearth")?)
        .args(["token", "create", "--help"])
        .output()?;
    assert!(
        token_help.status.success(),
        "`hearth token create` is missing, and the README's secure setup uses it: {}",
        String::from_utf8_lossy(&token_help.stderr)
    );
    if !grpcurl_available() {
        return Ok(());
    }

    let dir = tempfile::tempdir()?;
    let (grpc, admin, agent_admin) = (free_port(), free_port(), free_port());
    let runnable = script
        .replace("127.0.0.1:7700", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:7701", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:7702", &format!("127.0.0.1:{agent_admin}"));
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = dir.path().join("shell.log");
    let out = std::fs::File::create(&log)?;
    // Its own process group, so the broker and agent it starts in the background can be
    // killed with it whatever happens.
    let mut shell = Command::new("sh")
        .args(["-c", &runnable])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("RUST_LOG", "info")
        .env_remove("HEARTH_BROKER")
        .env_remove("HEARTH_CA")
        .env_remove("HEARTH_TOKEN")
        .env_remove("HEARTH_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    let pgid = shell.id();
    let finished = eventually("the block to finish", Duration::from_secs(120), || {
        let status = shell.try_wait();
        async move { Ok(status?) }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = shell.wait();
    let output = std::fs::read_to_string(&log)?;
    let status = finished.map_err(|e| anyhow::anyhow!("{e}\n{output}"))?;
    assert!(status.success(), "the block failed ({status}):\n{output}");

    for expected in [
        // hearth certs, hearth token
        "wrote certs/ca.pem",
        "for node gpu-1",
        "appended the [[auth.tokens]] entry for tenant team-a",
        // hearth nodes ls with the admin token
        "gpu-1",
        "READY",
        // grpcurl Admin/ListNodes over TLS
        "\"id\": \"gpu-1\"",
        "GPU_SOURCE_SIMULATED",
    ] {
        assert!(output.contains(expected), "no {expected:?} in:\n{output}");
    }
    // The user token lists its (empty) sessions with the CLI: a table header, no error.
    assert!(output.contains("ID "), "no sessions table in:\n{output}");
    // The CLI and grpcurl start a failure's line with "error:" and "ERROR:". (The broker's
    // and agent's own log lines run in between, and a warning there, such as the agent
    // dialling before the broker listens, is not a failed command.)
    assert!(
        !output.lines().any(|l| l.starts_with("error:")),
        "a command failed:\n{output}"
    );
    assert!(
        !output.lines().any(|l| l.starts_with("ERROR:")),
        "a grpcurl call failed:\n{output}"
    );

    // broker.toml holds hashes, never a token; private keys are 0600.
    let config = std::fs::read_to_string(dir.path().join("broker.toml"))?;
    assert_eq!(config.matches("[[auth.tokens]]").count(), 2, "{config}");
    assert!(config.contains("sha256"), "{config}");
    for key in ["ca-key.pem", "broker-key.pem", "node-gpu-1-key.pem"] {
        let mode = std::fs::metadata(dir.path().join("certs").join(key))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    Ok(())
}
