//! The binary's configuration layers end to end: defaults < TOML file < `HEARTH_*` env <
//! flags, observed through `--print-config`, and its start-up refusals. Environment variables
//! are set on the child process only (setting them in-process would need `unsafe`).

use std::process::{Command, Output};

use hearth_agent::Config;

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth-agent"));
    cmd.args(args);
    // Start from a clean slate: an operator's own HEARTH_* must not leak into the test.
    for (key, _) in std::env::vars() {
        if key.starts_with("HEARTH_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run hearth-agent")
}

fn effective(args: &[&str], env: &[(&str, &str)]) -> Config {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let out = agent(&all, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Config::from_toml(std::str::from_utf8(&out.stdout).unwrap()).unwrap()
}

#[test]
fn env_beats_file_and_flags_beat_env() {
    let dir = std::env::temp_dir().join(format!("hearth-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "node_id = \"file-node\"\nhello_timeout = \"7s\"\ntelemetry_interval = \"3s\"\n\
         simulate_gpus = 1\n[labels]\nzone = \"file\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let env = [
        ("HEARTH_CONFIG", file),
        ("HEARTH_NODE_ID", "env-node"),
        ("HEARTH_TELEMETRY_INTERVAL", "2s"),
        ("HEARTH_BROKER", "http://b1:7700,http://b2:7700"),
        ("HEARTH_LABELS", "zone=env,rack=r9"),
        ("HEARTH_SIMULATE_GPU_MEMORY", "24GiB"),
        ("HEARTH_LOG_JSON", "true"),
    ];
    let c = effective(&[], &env);
    assert_eq!(c.node_id, "env-node", "env beats file");
    assert_eq!(c.telemetry_interval.as_secs(), 2, "env beats file");
    assert_eq!(c.hello_timeout.as_secs(), 7, "file beats default");
    assert_eq!(c.simulate_gpus, Some(1), "file kept when env is silent");
    assert_eq!(c.broker, ["http://b1:7700", "http://b2:7700"]);
    assert_eq!(c.labels.get("rack").map(String::as_str), Some("r9"));
    assert_eq!(c.labels["zone"], "env");
    assert_eq!(c.simulate_gpu_memory, 24 << 30);
    assert!(c.log_json);
    assert_eq!(c.reconnect_backoff_max.as_secs(), 10, "default kept");

    let c = effective(
        &[
            "--node-id",
            "flag-node",
            "--telemetry-interval",
            "500ms",
            "--log-json=false",
        ],
        &env,
    );
    assert_eq!(c.node_id, "flag-node", "flag beats env");
    assert_eq!(c.telemetry_interval.as_millis(), 500, "flag beats env");
    assert!(!c.log_json, "flag beats env");
    assert_eq!(c.hello_timeout.as_secs(), 7, "file still applies");

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_settings_are_named_and_refused() {
    let out = agent(
        &[
            "--simulate-gpus",
            "1",
            "--node-id",
            "n1",
            "--reconnect-backoff-min",
            "20s",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reconnect_backoff_min (20s) must not exceed reconnect_backoff_max (10s)"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn help_explains_layering_and_gpu_sources() {
    let out = agent(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "HEARTH_BROKER",
        "--simulate-gpus",
        "--no-gpus",
        "--simulate-gpu-memory",
        "then flags",
        "humantime",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn an_unreachable_docker_engine_is_named_with_the_way_out() {
    let out = agent(
        &[
            "--no-gpus",
            "--node-id",
            "n1",
            "--admin-addr",
            "127.0.0.1:0",
            "--runtime",
            "docker",
        ],
        &[("DOCKER_HOST", "unix:///nonexistent/hearth-test/docker.sock")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "cannot reach the Docker engine at unix:///nonexistent/hearth-test/docker.sock"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("use --runtime process on hosts without Docker"),
        "{stderr}"
    );
}

#[test]
fn the_process_runtime_needs_an_absolute_state_dir() {
    let out = agent(
        &["--no-gpus", "--node-id", "n1", "--runtime", "process"],
        &[("HEARTH_STATE_DIR", "relative/state")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state_dir \"relative/state\" must be an absolute path"),
        "{stderr}"
    );
}
