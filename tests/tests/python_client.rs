//! The Python client (`sdk/python`) end to end, as a developer would use it: a fresh
//! virtualenv `pip install`s the package from the repo, and its example agent
//! (`sdk/python/examples/agent_loop.py`) drives a real Docker session through a live broker
//! and agent. A second test proves that the checked-in generated modules
//! (`sdk/python/src/hearth/v1/`) are what `scripts/gen-python.sh` generates from `proto/`
//! today.
//!
//! Without python3 (with venv and pip) or Docker these tests print `SKIPPED: ...`, except
//! in CI (`CI` set), where they fail instead.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hearth_sdk::proto::v1::{
    GetSessionRequest, ListSessionsRequest, SessionState, sessions_client::SessionsClient,
};
use hearth_tests::{
    api, images,
    process::{Agent, Broker},
    python::{install_client, python_or_skip, repo, run},
};

/// The raw text of a top-level field of a flat JSON object as Python's `json.dumps`
/// writes it: a number, `true`, a `"string"` (returned without its quotes) or a list of
/// numbers such as `[1, 2, 3]`.
fn json_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\": ");
    let rest = &line[line.find(&key)? + key.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(&s[..s.find('"')?]);
    }
    let end = if rest.starts_with('[') {
        rest.find(']')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

#[tokio::test]
async fn the_python_example_agent_runs_turns_on_a_docker_session() -> anyhow::Result<()> {
    if !python_or_skip() || !images::docker_or_skip() {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    // The image build and the pip install both take a while: do them side by side.
    let (python, image) = {
        let venv_dir = dir.path().to_path_buf();
        let install = tokio::task::spawn_blocking(move || install_client(&venv_dir));
        let image = tokio::task::spawn_blocking(images::worker_image).await??;
        (install.await??, image)
    };

    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let agent = Agent::spawn_docker(dir.path(), "python-node", &[&broker.url], "1")?;
    let logs = || format!("{}\n{}", broker.proc.log_tail(), agent.proc.log_tail());
    api::node_ready(&broker.url, &agent.node_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    // The example, exactly as the README runs it, but on this test's ports.
    let address = broker.url.trim_start_matches("http://").to_owned();
    let example = repo().join("sdk/python/examples/agent_loop.py");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&example)
        .args(["--broker", &address, "--image", image])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("the example agent ran for over 120 s\n{}", logs()))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- agent_loop.py ---\n{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the example agent failed ({}):\n{stdout}\n{stderr}\n{}",
        output.status,
        logs()
    );

    // What a person reads: one line per step.
    for line in [
        "created session ",
        "turn 1: invoke POST /incr -> 200 '1'",
        "turn 2: exec /worker echo -> exit 0 'tool call 2'",
        "turn 3: invoke POST /incr -> 200 '2'",
        "turn 4: exec /worker env AGENT_TURN -> exit 0",
        "turn 5: invoke POST /incr body: '3'",
        "turn 6: invoke GET /state -> warmups 1, counter 3",
        "keep-alive: idle deadline now ",
        "deleted session ",
    ] {
        assert!(stdout.contains(line), "no line with {line:?} in:\n{stdout}");
    }

    // What a script checks: the last line, one JSON object.
    let last = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| {
        json_field(last, name).unwrap_or_else(|| panic!("no {name:?} in the JSON line {last:?}"))
    };
    assert_eq!(field("ok"), "true", "{last}");
    assert_eq!(field("created_state"), "SESSION_STATE_READY", "{last}");
    assert_eq!(field("node_id"), agent.node_id, "{last}");
    // Six turns on one warm workload: its in-memory counter carried from turn to turn
    // and it warmed up once.
    assert_eq!(field("turns"), "6", "{last}");
    assert_eq!(field("counter"), "[1, 2, 3]", "{last}");
    assert_eq!(field("warmups"), "1", "{last}");
    assert_eq!(field("cold_starts"), "1", "{last}");
    // Thinking past the idle timeout, the background keep-alives kept it from pausing.
    assert_eq!(field("state_after_think"), "SESSION_STATE_READY", "{last}");
    let background: u32 = field("background_keep_alives").parse()?;
    assert!(background >= 1, "{last}");
    assert!(field("keep_alive_expires_at").starts_with("20"), "{last}");
    assert_eq!(field("deleted_state"), "SESSION_STATE_STOPPED", "{last}");
    assert_eq!(field("final_state"), "SESSION_STATE_STOPPED", "{last}");

    // The broker agrees, through its own API: the session ended and nothing is running.
    let id = field("session_id").to_owned();
    let mut sessions = SessionsClient::new(api::channel(&broker.url));
    let record = sessions
        .get_session(GetSessionRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(record.state(), SessionState::Stopped, "{record:?}");
    assert!(record.turns_served >= 6, "{record:?}");
    let live = sessions
        .list_sessions(ListSessionsRequest {
            states: vec![
                SessionState::Pending as i32,
                SessionState::Placed as i32,
                SessionState::Starting as i32,
                SessionState::Ready as i32,
                SessionState::Paused as i32,
            ],
            ..ListSessionsRequest::default()
        })
        .await?
        .into_inner();
    assert!(live.sessions.is_empty(), "{:?}", live.sessions);
    // And the container is gone from the Docker engine.
    assert!(!record.container_id.is_empty(), "{record:?}");
    let inspect = Command::new("docker")
        .args(["inspect", &record.container_id])
        .output()?;
    assert!(
        !inspect.status.success(),
        "container {} of the deleted session still exists",
        record.container_id
    );
    eprintln!(
        "python client end to end: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The generated files under `root/hearth/v1`, by name (compiled caches left out).
fn generated_files(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let dir = root.join("hearth/v1");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

#[test]
fn checked_in_python_code_matches_a_fresh_generation() -> anyhow::Result<()> {
    if !python_or_skip() {
        return Ok(());
    }
    let fresh = tempfile::tempdir()?;
    run(
        "scripts/gen-python.sh",
        Command::new(repo().join("scripts/gen-python.sh")).arg(fresh.path()),
    )?;
    let checked_in = repo().join("sdk/python/src");
    let fix = "sdk/python/src/hearth/v1 is out of date with proto/: run `scripts/gen-python.sh` \
               and commit the result";
    let expected = generated_files(fresh.path())?;
    assert!(
        expected.iter().any(|n| n == "sessions_pb2_grpc.py"),
        "the generator made no Sessions stub: {expected:?}"
    );
    assert_eq!(
        generated_files(&checked_in)?,
        expected,
        "{fix} (the set of files differs)"
    );
    for name in &expected {
        let want = std::fs::read(fresh.path().join("hearth/v1").join(name))?;
        let have = std::fs::read(checked_in.join("hearth/v1").join(name))?;
        assert!(want == have, "{fix} ({name} differs)");
    }
    Ok(())
}
