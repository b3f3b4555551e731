//! The Docker runtime against the real Docker engine, with the test worker image
//! (`hearth-test-worker:latest`, `FROM scratch`, built by `scripts/build-test-image.sh`;
//! nothing is pulled).
//!
//! Without a reachable Docker engine these tests print `SKIPPED: docker not available`
//! and pass, except in CI (`CI` set), where they fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hearth_agent::runtime::docker::{DEFAULT_PIDS_LIMIT, DockerRuntime, container_name};
use hearth_agent::runtime::{
    ExecOutput, ExecSpec, LABEL_EPOCH, LABEL_GENERATION, LABEL_SESSION, LABEL_TENANT, Runtime,
    RuntimeError, StartRequest, Workload, WorkloadState,
};
use hearth_sdk::proto::v1::{PortSpec, SessionSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "hearth-test-worker:latest";
const PORT: u32 = 8080;
/// The worker is PID 1 and ignores SIGTERM (see the worker's docs): keep stops short.
const GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Harness

/// Whether Docker answers; panics in CI when it does not (so CI never skips silently).
fn docker_or_skip() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("Docker is required in CI, but `docker info` failed");
        }
        eprintln!("SKIPPED: docker not available");
    }
    ok
}

/// Builds the worker image once per test process.
fn build_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// The runtime, or `None` when the test should skip.
async fn runtime() -> Option<DockerRuntime> {
    if !docker_or_skip() {
        return None;
    }
    build_image();
    Some(DockerRuntime::connect().await.expect("connect to docker"))
}

/// A unique session whose container is force-removed when the test ends, pass or fail.
struct Session(String);

impl Session {
    fn new() -> Self {
        Self(format!("t{}", ulid::Ulid::new().to_string().to_lowercase()))
    }

    fn id(&self) -> &str {
        &self.0
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &container_name(&self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn worker_request(session: &Session, generation: u64) -> StartRequest {
    StartRequest {
        session_id: session.id().to_string(),
        generation,
        epoch: 42,
        tenant: "acme".into(),
        spec: SessionSpec {
            image: IMAGE.into(),
            env: [
                ("WARMUP_MS".to_string(), "300".to_string()),
                ("PORT".to_string(), PORT.to_string()),
            ]
            .into(),
            ports: vec![PortSpec {
                port: PORT,
                name: "http".into(),
            }],
            ..Default::default()
        },
        gpu_uuids: Vec::new(),
        network: None,
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the raw body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: worker\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {raw:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// `http` with a deadline.
async fn http_within(
    limit: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    tokio::time::timeout(limit, http(addr, method, path, b""))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// Waits until the worker answers `/healthz` (it binds only after its warm-up).
async fn wait_ready(rt: &DockerRuntime, session: &Session) -> SocketAddr {
    let addr = rt.address(session.id(), PORT).await.expect("address");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_within(Duration::from_secs(2), addr, "GET", "/healthz").await {
            Ok((200, body)) if body == "ok" => return addr,
            other if Instant::now() > deadline => panic!("worker never became ready: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A number field of the worker's `/state` JSON.
fn state_field(json: &str, field: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json).expect("state is JSON");
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {json}"))
}

async fn get_state(addr: SocketAddr) -> String {
    let (status, body) = http_within(Duration::from_secs(5), addr, "GET", "/state")
        .await
        .expect("GET /state");
    assert_eq!(status, 200);
    body
}

async fn incr(addr: SocketAddr) -> u64 {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), http(addr, "POST", "/incr", b""))
            .await
            .expect("POST /incr timed out")
            .expect("POST /incr");
    assert_eq!(status, 200);
    body.parse().expect("counter")
}

/// Runs an exec to completion, collecting stdout and stderr.
async fn run_exec(
    rt: &DockerRuntime,
    session: &Session,
    argv: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> (Result<i32, RuntimeError>, String, String) {
    let (tx, mut rx) = mpsc::channel(4);
    let spec = ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        stdin: stdin.to_vec(),
        workdir: String::new(),
    };
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            match chunk {
                ExecOutput::Stdout(b) => out.extend(b),
                ExecOutput::Stderr(b) => err.extend(b),
            }
        }
        (out, err)
    };
    let exec = rt.exec(session.id(), spec, tx, CancellationToken::new());
    let (code, (out, err)) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(exec, collect)
    })
    .await
    .expect("exec timed out");
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_session_serves_http_keeps_state_and_warms_once() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    let workload = rt.start(&worker_request(&session, 1)).await.expect("start");
    assert_eq!(workload.session_id, session.id());
    assert_eq!((workload.generation, workload.epoch), (1, 42));
    assert_eq!(workload.state, WorkloadState::Running);
    assert!(!workload.id.is_empty());

    let addr = wait_ready(&rt, &session).await;
    assert!(
        !addr.ip().is_loopback(),
        "the container's own IP, got {addr}"
    );
    assert_eq!(addr.port(), 8080);

    for expected in 1..=20 {
        assert_eq!(incr(addr).await, expected);
    }
    let state = get_state(addr).await;
    assert_eq!(state_field(&state, "warmups"), 1, "{state}");
    assert_eq!(state_field(&state, "counter"), 20, "{state}");
    assert_eq!(state_field(&state, "requests"), 20, "{state}");

    // Bodies echo, and a stream arrives chunked.
    let (status, body) = http(addr, "POST", "/echo", b"hello worker").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello worker"));
    let (status, body) = http_within(
        Duration::from_secs(5),
        addr,
        "GET",
        "/stream?n=3&delay_ms=10",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("data: token-0") && body.contains("data: token-2"),
        "{body}"
    );
    assert!(body.ends_with("0\r\n\r\n"), "terminating chunk: {body:?}");

    // Keep-alive: two requests on one connection.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /incr HTTP/1.1\r\nHost: w\r\n\r\nGET /state HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 2, "{raw}");
    assert!(raw.contains(r#""counter":21"#), "{raw}");
}

#[tokio::test]
async fn containers_are_labelled_and_hardened() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    let workload = rt.start(&worker_request(&session, 5)).await.expect("start");

    let info = rt
        .client()
        .inspect_container(&container_name(session.id()), None)
        .await
        .unwrap();
    assert_eq!(info.id.as_deref(), Some(workload.id.as_str()));
    let labels = info.config.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_SESSION], session.id());
    assert_eq!(labels[LABEL_GENERATION], "5");
    assert_eq!(labels[LABEL_EPOCH], "42");
    assert_eq!(labels[LABEL_TENANT], "acme");
    let host = info.host_config.as_ref().unwrap();
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        host.security_opt.as_deref(),
        Some(&["no-new-privileges:true".to_string()][..])
    );
    assert_eq!(host.pids_limit, Some(DEFAULT_PIDS_LIMIT));
    assert!(
        host.memory.unwrap_or(0) > 0,
        "a memory limit even when the spec sets none"
    );
    assert!(
        host.nano_cpus.unwrap_or(0) > 0,
        "a CPU limit even when the spec sets none"
    );
    assert_eq!(
        host.init,
        Some(true),
        "an init forwards SIGTERM to the workload"
    );
    assert!(host.device_requests.as_ref().is_none_or(|d| d.is_empty()));
    let env = info.config.as_ref().unwrap().env.as_ref().unwrap();
    assert!(env.contains(&"WARMUP_MS=300".to_string()), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("CUDA_VISIBLE_DEVICES")),
        "{env:?}"
    );

    // The process really runs without capabilities.
    let (code, out, _) = run_exec(&rt, &session, &["/worker", "env", "PATH"], b"", &[]).await;
    assert_eq!(code.unwrap(), 0);
    assert!(!out.is_empty());
}

#[tokio::test]
async fn pause_freezes_and_resume_keeps_the_warm_state() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    rt.start(&worker_request(&session, 1)).await.expect("start");
    let addr = wait_ready(&rt, &session).await;
    for expected in 1..=3 {
        assert_eq!(incr(addr).await, expected);
    }

    rt.pause(session.id()).await.expect("pause");
    let workload = rt.inspect(session.id()).await.unwrap().unwrap();
    assert_eq!(workload.state, WorkloadState::Paused);
    let frozen = http_within(Duration::from_millis(700), addr, "GET", "/state").await;
    assert_eq!(
        frozen.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::TimedOut),
        "a paused worker must not answer: {frozen:?}"
    );
    rt.pause(session.id()).await.expect("pausing twice is fine");
    let exec = run_exec(&rt, &session, &["/worker", "echo", "hi"], b"", &[]).await;
    assert!(
        matches!(exec.0, Err(RuntimeError::WrongState(_))),
        "{exec:?}"
    );

    rt.resume(session.id()).await.expect("resume");
    rt.resume(session.id())
        .await
        .expect("resuming twice is fine");
    assert_eq!(
        rt.inspect(session.id()).await.unwrap().unwrap().state,
        WorkloadState::Running
    );
    assert_eq!(incr(addr).await, 4, "the counter survived the pause");
    let state = get_state(addr).await;
    assert_eq!(state_field(&state, "warmups"), 1, "no re-warm: {state}");
}

#[tokio::test]
async fn exec_streams_output_and_reports_exit_codes() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    rt.start(&worker_request(&session, 1)).await.expect("start");

    let (code, out, err) = run_exec(&rt, &session, &["/worker", "echo", "hi"], b"", &[]).await;
    assert_eq!((code.unwrap(), out.as_str(), err.as_str()), (0, "hi\n", ""));

    let (code, out, _) = run_exec(&rt, &session, &["/worker", "exit", "3"], b"", &[]).await;
    assert_eq!((code.unwrap(), out.as_str()), (3, ""));

    let (code, out, err) = run_exec(&rt, &session, &["/worker", "stderr", "x"], b"", &[]).await;
    assert_eq!((code.unwrap(), out.as_str(), err.as_str()), (0, "", "x\n"));

    let (code, out, _) = run_exec(
        &rt,
        &session,
        &["/worker", "cat"],
        b"from stdin\nsecond line",
        &[],
    )
    .await;
    assert_eq!(
        (code.unwrap(), out.as_str()),
        (0, "from stdin\nsecond line")
    );

    // More than a pipe holds, both ways: stdin is written while output is read.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let (code, out, _) = run_exec(&rt, &session, &["/worker", "cat"], &big, &[]).await;
    assert_eq!(code.unwrap(), 0);
    assert!(
        out.as_bytes() == big,
        "cat returned {} of {} bytes",
        out.len(),
        big.len()
    );

    let (code, out, _) = run_exec(
        &rt,
        &session,
        &["/worker", "env", "TURN"],
        b"",
        &[("TURN", "seven")],
    )
    .await;
    assert_eq!((code.unwrap(), out.as_str()), (0, "seven\n"));

    let (code, _, _) = run_exec(&rt, &session, &["/no/such/binary"], b"", &[]).await;
    assert_ne!(
        code.expect("docker reports a failed exec as an exit code"),
        0
    );

    // Output arrives while the command is still running.
    let (tx, mut rx) = mpsc::channel(1);
    let spec = ExecSpec {
        argv: ["/worker", "lines", "3", "700"].map(String::from).to_vec(),
        ..Default::default()
    };
    let started = Instant::now();
    let exec = tokio::spawn({
        let rt = DockerRuntime::connect().await.unwrap();
        let id = session.id().to_string();
        async move { rt.exec(&id, spec, tx, CancellationToken::new()).await }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("first line in time")
        .expect("a first chunk");
    assert_eq!(first, ExecOutput::Stdout(b"line 1\n".to_vec()));
    assert!(
        !exec.is_finished(),
        "line 1 must stream before the command ends ({:?} in)",
        started.elapsed()
    );
    let mut rest = Vec::new();
    while let Some(ExecOutput::Stdout(b)) = rx.recv().await {
        rest.extend(b);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), "line 2\nline 3\n");
    assert_eq!(exec.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn a_cancelled_exec_is_killed_and_returns_promptly() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    let workload = rt.start(&worker_request(&session, 1)).await.expect("start");
    let count_sleepers = || async {
        let top = rt
            .client()
            .top_processes(&workload.id, None)
            .await
            .expect("docker top");
        top.processes
            .unwrap_or_default()
            .iter()
            .filter(|p| p.iter().any(|field| field.contains("sleep 30")))
            .count()
    };

    let (tx, _rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let spec = ExecSpec {
        argv: ["/worker", "sleep", "30"].map(String::from).to_vec(),
        ..Default::default()
    };
    let canceller = {
        let cancel = cancel.clone();
        let count_sleepers = &count_sleepers;
        async move {
            // Cancel only once the command visibly runs, so "gone" below means killed.
            let deadline = Instant::now() + Duration::from_secs(10);
            while count_sleepers().await != 1 {
                assert!(Instant::now() < deadline, "the command never showed up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            cancel.cancel();
            Instant::now()
        }
    };
    let (code, cancelled_at) = tokio::join!(rt.exec(session.id(), spec, tx, cancel), canceller);
    assert_eq!(code.expect("cancel kills the process"), -1);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "exec returned {:?} after the cancel",
        cancelled_at.elapsed()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while count_sleepers().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled command still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session itself is untouched.
    assert_eq!(
        rt.inspect(session.id()).await.unwrap().unwrap().state,
        WorkloadState::Running
    );
}

#[tokio::test]
async fn a_missing_image_is_image_not_found_and_leaves_nothing() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    let mut request = worker_request(&session, 1);
    request.spec.image = format!("hearth-test-missing-{}:nope", session.id());
    match rt.start(&request).await {
        Err(RuntimeError::ImageNotFound(image)) => assert_eq!(image, request.spec.image),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert_eq!(rt.inspect(session.id()).await.unwrap(), None);
}

/// A workload whose entrypoint does not exist: docker-init (PID 1) starts, fails to run
/// it and exits 127. Either the start fails and leaves nothing behind, or the workload
/// is reported exited with 127 (the agent then fails the session and removes it).
#[tokio::test]
async fn a_broken_entrypoint_fails_the_start_or_exits_127() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    match start_with_bad_entrypoint(&rt, &session).await {
        Err(err) => {
            assert!(matches!(err, RuntimeError::Backend { .. }), "{err:?}");
            assert_eq!(
                rt.inspect(session.id()).await.unwrap(),
                None,
                "nothing left behind"
            );
        }
        Ok(_) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let state = rt.inspect(session.id()).await.unwrap().map(|w| w.state);
                if state == Some(WorkloadState::Exited(Some(127))) {
                    break;
                }
                assert!(Instant::now() < deadline, "still {state:?} after 10s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rt.stop(session.id(), GRACE).await.expect("remove");
            assert_eq!(rt.inspect(session.id()).await.unwrap(), None);
        }
    }
}

/// Starts a container whose entrypoint does not exist in the image.
async fn start_with_bad_entrypoint(
    rt: &DockerRuntime,
    session: &Session,
) -> Result<Workload, RuntimeError> {
    // Our spec has no entrypoint field; a tagged image with a broken ENTRYPOINT does it.
    let tag = format!("hearth-test-badentry-{}:latest", session.id());
    let context = std::env::temp_dir().join(format!("hearth-badentry-{}", session.id()));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {IMAGE}\nENTRYPOINT [\"/no/such/entry\"]\n"),
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(&context)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&context).ok();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut request = worker_request(session, 1);
    request.spec.image = tag.clone();
    let result = rt.start(&request).await;
    let _ = Command::new("docker")
        .args(["rmi", "-f", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    result
}

#[tokio::test]
async fn only_declared_ports_have_an_address() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    rt.start(&worker_request(&session, 1)).await.expect("start");
    assert!(matches!(
        rt.address(session.id(), 9999).await,
        Err(RuntimeError::PortNotExposed { port: 9999, .. })
    ));
    // Also on a fresh runtime (nothing cached: the ports come from the container).
    let fresh = DockerRuntime::connect().await.unwrap();
    assert!(matches!(
        fresh.address(session.id(), 9999).await,
        Err(RuntimeError::PortNotExposed { port: 9999, .. })
    ));
    assert!(fresh.address(session.id(), PORT).await.is_ok());
    assert!(matches!(
        rt.address("no-such-session", PORT).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn stop_removes_the_container_and_is_idempotent() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    rt.start(&worker_request(&session, 1)).await.expect("start");
    wait_ready(&rt, &session).await;
    rt.pause(session.id()).await.expect("pause");

    rt.stop(session.id(), GRACE)
        .await
        .expect("stop a paused session");
    assert_eq!(rt.inspect(session.id()).await.unwrap(), None);
    assert!(
        !rt.list()
            .await
            .unwrap()
            .iter()
            .any(|w| w.session_id == session.id()),
        "list() no longer has it"
    );
    assert!(matches!(
        rt.address(session.id(), PORT).await,
        Err(RuntimeError::NotFound(_))
    ));
    rt.stop(session.id(), GRACE)
        .await
        .expect("stopping again is fine");
    assert!(matches!(
        rt.pause(session.id()).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// The workload gets SIGTERM and stops at once, not at the end of the grace period:
/// the test worker installs no SIGTERM handler, which as PID 1 would make it immune.
#[tokio::test]
async fn stop_delivers_sigterm_to_a_workload_without_a_handler() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    rt.start(&worker_request(&session, 1)).await.expect("start");
    wait_ready(&rt, &session).await;
    let grace = Duration::from_secs(30);
    let asked = Instant::now();
    rt.stop(session.id(), grace).await.expect("stop");
    assert!(
        asked.elapsed() < grace / 3,
        "stop took {:?}: SIGTERM did not reach the workload",
        asked.elapsed()
    );
    assert_eq!(rt.inspect(session.id()).await.unwrap(), None);
}

#[tokio::test]
async fn a_restarted_agent_re_adopts_running_sessions() {
    let Some(rt) = runtime().await else { return };
    let node = format!("node-{}", ulid::Ulid::new().to_string().to_lowercase());
    let rt = rt.for_node(&node);
    let session = Session::new();
    let started = rt.start(&worker_request(&session, 3)).await.expect("start");
    let addr = wait_ready(&rt, &session).await;
    assert_eq!(incr(addr).await, 1);

    // Another node's agent on the same engine neither lists nor adopts it.
    let other = DockerRuntime::connect()
        .await
        .unwrap()
        .for_node("some-other-node");
    assert!(
        !other
            .list()
            .await
            .unwrap()
            .iter()
            .any(|w| w.session_id == session.id()),
        "another node's agent must not claim this container"
    );

    // A new runtime instance, as after an agent restart: it knows nothing in memory.
    let fresh = DockerRuntime::connect().await.unwrap().for_node(&node);
    let found = fresh
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.session_id == session.id())
        .expect("list() finds the running session");
    assert_eq!(found.id, started.id);
    assert_eq!((found.generation, found.epoch), (3, 42));
    assert_eq!(found.state, WorkloadState::Running);
    let addr = fresh.address(session.id(), PORT).await.unwrap();
    assert_eq!(incr(addr).await, 2, "same warm process");
}

#[tokio::test]
async fn start_replaces_a_leftover_container() {
    let Some(rt) = runtime().await else { return };
    let session = Session::new();
    let first = rt.start(&worker_request(&session, 1)).await.expect("start");
    let second = rt
        .start(&worker_request(&session, 2))
        .await
        .expect("restart");
    assert_ne!(first.id, second.id);
    let workloads: Vec<_> = rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.session_id == session.id())
        .collect();
    assert_eq!(workloads.len(), 1, "{workloads:?}");
    assert_eq!(
        (workloads[0].id.as_str(), workloads[0].generation),
        (second.id.as_str(), 2)
    );

    // An exited workload is listed with its exit code.
    let (code, ..) = run_exec(&rt, &session, &["/worker", "echo", "x"], b"", &[]).await;
    assert_eq!(code.unwrap(), 0);
    rt.client()
        .kill_container(&second.id, None)
        .await
        .expect("docker kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = rt.inspect(session.id()).await.unwrap().unwrap().state;
        if let WorkloadState::Exited(code) = state {
            assert_eq!(code, Some(137), "SIGKILL");
            break;
        }
        assert!(Instant::now() < deadline, "still {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = rt.list().await.unwrap();
    let listed = listed
        .iter()
        .find(|w| w.session_id == session.id())
        .unwrap();
    assert_eq!(listed.state, WorkloadState::Exited(Some(137)));
}
