//! The process runtime with real processes: the workspace's `hearth-test-worker` as the
//! session workload, and its subcommands (plus `/bin/sh`) as Exec commands.

#[path = "support/worker.rs"]
mod support;

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use hearth_agent::runtime::{
    ExecOutput, ExecSpec, Runtime, RuntimeError, StartRequest, WorkloadState,
    process::ProcessRuntime,
};
use hearth_sdk::proto::v1::{PortSpec, SessionSpec};
use support::{StateDir, http, json_number, worker};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);
/// How long a request to a paused worker is given before it counts as unanswered.
const PAUSED_LIMIT: Duration = Duration::from_millis(700);

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request to run the test worker as session `session`, serving its port 8080.
fn worker_session(session: &str, state_dir: &StateDir, gpus: &[&str]) -> StartRequest {
    StartRequest {
        session_id: session.into(),
        generation: 3,
        epoch: 7,
        tenant: "acme".into(),
        spec: SessionSpec {
            image: worker().to_str().unwrap().into(),
            env: [
                ("WARMUP_MS".to_owned(), "200".to_owned()),
                (
                    "STATE_DIR".to_owned(),
                    state_dir.path().join("worker").to_str().unwrap().to_owned(),
                ),
            ]
            .into(),
            ports: vec![PortSpec {
                port: 8080,
                name: "http".into(),
            }],
            ..SessionSpec::default()
        },
        gpu_uuids: gpus.iter().map(|g| g.to_string()).collect(),
        network: None,
    }
}

fn runtime(dir: &StateDir) -> ProcessRuntime {
    std::fs::create_dir_all(dir.path().join("worker")).unwrap();
    ProcessRuntime::new(dir.path()).unwrap()
}

/// Runs `argv` in the session; returns (stdout, stderr, exit code).
async fn exec(
    rt: &ProcessRuntime,
    session: &str,
    argv: &[&str],
    stdin: &[u8],
) -> Result<(String, String, i32), RuntimeError> {
    let spec = ExecSpec {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::from([("EXEC_VAR".to_owned(), "from-exec".to_owned())]),
        stdin: stdin.to_vec(),
        workdir: String::new(),
    };
    let (tx, mut rx) = mpsc::channel(4);
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
    let (code, (out, err)) = tokio::join!(
        rt.exec(session, spec, tx, CancellationToken::new()),
        collect
    );
    Ok((
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        code?,
    ))
}

fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn worker_keeps_state_across_requests_pause_and_resume() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    let workload = rt.start(&worker_session("s1", &dir, &[])).await.unwrap();
    assert_eq!(workload.state, WorkloadState::Running);
    assert_eq!((workload.generation, workload.epoch), (3, 7));
    let addr = rt.address("s1", 8080).await.unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");

    // The worker binds only after its warm-up.
    eventually("the worker to listen", || async {
        http(addr, "GET", "/healthz", "", Duration::from_secs(1))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    for expected in ["1", "2"] {
        let (status, body) = http(addr, "POST", "/incr", "", DEADLINE).await.unwrap();
        assert_eq!((status, body.as_str()), (200, expected));
    }
    let (_, state) = http(addr, "GET", "/state", "", DEADLINE).await.unwrap();
    assert_eq!(json_number(&state, "warmups"), 1);
    assert_eq!(json_number(&state, "counter"), 2);
    assert_eq!(json_number(&state, "pid").to_string(), workload.id);

    rt.pause("s1").await.unwrap();
    assert_eq!(
        rt.inspect("s1").await.unwrap().unwrap().state,
        WorkloadState::Paused
    );
    assert_eq!(
        http(addr, "GET", "/state", "", PAUSED_LIMIT).await,
        None,
        "a paused worker must not answer"
    );
    let err = exec(&rt, "s1", &["/bin/true"], b"").await.unwrap_err();
    assert!(matches!(err, RuntimeError::WrongState(_)), "{err:?}");

    rt.resume("s1").await.unwrap();
    assert_eq!(
        rt.inspect("s1").await.unwrap().unwrap().state,
        WorkloadState::Running
    );
    let (_, state) = http(addr, "GET", "/state", "", DEADLINE).await.unwrap();
    assert_eq!(json_number(&state, "warmups"), 1, "resumed, not re-warmed");
    assert_eq!(json_number(&state, "counter"), 2, "state kept");

    // Stop: the process is gone, the state file too, and stopping again is fine.
    rt.stop("s1", Duration::from_secs(5)).await.unwrap();
    assert!(!pid_alive(&workload.id));
    assert_eq!(rt.inspect("s1").await.unwrap(), None);
    assert!(!dir.path().join("s1.json").exists());
    rt.stop("s1", Duration::from_secs(5)).await.unwrap();
    rt.stop("never-started", Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn exec_streams_output_stdin_exit_codes_and_env() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    rt.start(&worker_session("s2", &dir, &["GPU-a", "GPU-b"]))
        .await
        .unwrap();
    let w = worker();
    let w = w.to_str().unwrap();

    let (out, err, code) = exec(&rt, "s2", &[w, "echo", "hello", "world"], b"")
        .await
        .unwrap();
    assert_eq!((out.as_str(), err.as_str(), code), ("hello world\n", "", 0));
    let (out, err, code) = exec(&rt, "s2", &[w, "stderr", "oops"], b"").await.unwrap();
    assert_eq!((out.as_str(), err.as_str(), code), ("", "oops\n", 0));
    let (_, _, code) = exec(&rt, "s2", &[w, "exit", "3"], b"").await.unwrap();
    assert_eq!(code, 3);
    let (out, _, code) = exec(&rt, "s2", &[w, "cat"], b"from stdin").await.unwrap();
    assert_eq!((out.as_str(), code), ("from stdin", 0));
    // argv[0] is looked up on the session's PATH.
    let (out, _, _) = exec(&rt, "s2", &["sh", "-c", "echo $$ >/dev/null; echo sh"], b"")
        .await
        .unwrap();
    assert_eq!(out, "sh\n");

    for (var, want) in [
        ("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b"),
        ("HEARTH_SESSION_ID", "s2"),
        ("WARMUP_MS", "200"),
        ("EXEC_VAR", "from-exec"),
    ] {
        let (out, _, _) = exec(&rt, "s2", &[w, "env", var], b"").await.unwrap();
        assert_eq!(out.trim_end(), want, "{var}");
    }
    let port = rt.address("s2", 8080).await.unwrap().port().to_string();
    let (out, _, _) = exec(&rt, "s2", &[w, "env", "PORT"], b"").await.unwrap();
    assert_eq!(out.trim_end(), port);
    let (out, _, _) = exec(&rt, "s2", &[w, "env", "HEARTH_PORT_8080"], b"")
        .await
        .unwrap();
    assert_eq!(out.trim_end(), port);

    // A missing command fails like a shell's would: the turn succeeds, the command does not.
    let (_, err, code) = exec(&rt, "s2", &["no-such-command-xyz"], b"")
        .await
        .unwrap();
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-command-xyz"), "{err}");

    // Output streams as it is produced: the first line arrives long before the last.
    let (tx, mut rx) = mpsc::channel(4);
    let spec = ExecSpec {
        argv: vec![w.into(), "lines".into(), "3".into(), "300".into()],
        ..ExecSpec::default()
    };
    let started = Instant::now();
    let run = tokio::spawn({
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        async move { rt.exec("s2", spec, tx, CancellationToken::new()).await }
    });
    let first = rx.recv().await.unwrap();
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    while let Some(chunk) = rx.recv().await {
        rest.push(chunk);
    }
    assert_eq!(run.await.unwrap().unwrap(), 0);
    assert_eq!(first, ExecOutput::Stdout(b"line 1\n".to_vec()));
    assert!(
        first_at < Duration::from_millis(450),
        "first line took {first_at:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(!rest.is_empty(), "later lines came as later chunks");

    rt.stop("s2", Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn cancel_kills_a_long_exec_promptly() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    rt.start(&worker_session("s3", &dir, &[])).await.unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let spec = ExecSpec {
        // A shell whose child sleeps: cancelling must take the whole group.
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo started; sleep 30.123; echo never".into(),
        ],
        ..ExecSpec::default()
    };
    let exec = rt.exec("s3", spec, tx, cancel.clone());
    let drive = async {
        let first = rx.recv().await;
        assert!(
            matches!(&first, Some(ExecOutput::Stdout(b)) if b == b"started\n"),
            "{first:?}"
        );
        let cancelled_at = Instant::now();
        cancel.cancel();
        while rx.recv().await.is_some() {}
        cancelled_at
    };
    let (code, cancelled_at) = tokio::time::timeout(DEADLINE, async { tokio::join!(exec, drive) })
        .await
        .expect("exec returns after cancel");
    assert_eq!(code.unwrap(), -1);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );
    // No `sleep 30.123` of this test survives: the whole group was killed. (A killed
    // process lingers in /proc for a moment; a zombie has an empty command line.)
    eventually("the killed group to vanish", || async {
        let survivors: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| {
                c.contains("echo started; sleep 30.123; echo never") || c.trim() == "sleep 30.123"
            })
            .collect();
        survivors.is_empty().then_some(())
    })
    .await;
    rt.stop("s3", Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_second_runtime_on_the_same_dir_adopts_the_workload() {
    let dir = StateDir::new();
    let first = runtime(&dir);
    let workload = first.start(&worker_session("s4", &dir, &[])).await.unwrap();
    let addr = first.address("s4", 8080).await.unwrap();
    drop(first); // the agent "restarts"; the workload runs on

    let second = ProcessRuntime::new(dir.path()).unwrap();
    let listed = second.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].session_id, "s4");
    assert_eq!(listed[0].id, workload.id);
    assert_eq!((listed[0].generation, listed[0].epoch), (3, 7));
    assert_eq!(listed[0].state, WorkloadState::Running);
    assert_eq!(second.address("s4", 8080).await.unwrap(), addr);
    let (out, _, _) = exec(
        &second,
        "s4",
        &[worker().to_str().unwrap(), "env", "HEARTH_SESSION_ID"],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        out, "s4\n",
        "execs get the session's environment after re-adoption"
    );
    eventually("the adopted worker to answer", || async {
        http(addr, "GET", "/healthz", "", Duration::from_secs(1))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    second.stop("s4", Duration::from_secs(5)).await.unwrap();
    assert!(!pid_alive(&workload.id));
    assert!(second.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_workload_that_exits_is_reported_with_its_code() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    let mut request = worker_session("s5", &dir, &[]);
    request.spec.image = "/bin/sh".into();
    request.spec.command = vec!["-c".into(), "sleep 0.2; exit 7".into()];
    rt.start(&request).await.unwrap();
    let state = eventually("the workload to exit", || async {
        let w = rt.inspect("s5").await.unwrap().unwrap();
        matches!(w.state, WorkloadState::Exited(_)).then_some(w.state)
    })
    .await;
    assert_eq!(state, WorkloadState::Exited(Some(7)));
    let err = rt.pause("s5").await.unwrap_err();
    assert!(matches!(err, RuntimeError::WrongState(_)), "{err:?}");
    rt.stop("s5", Duration::from_secs(1)).await.unwrap();
    assert_eq!(rt.inspect("s5").await.unwrap(), None);
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    let mut request = worker_session("s6", &dir, &[]);
    request.spec.image = "/bin/sh".into();
    // Ignores SIGTERM.
    request.spec.command = vec![
        "-c".into(),
        "trap '' TERM; while :; do sleep 0.05; done".into(),
    ];
    let workload = rt.start(&request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    rt.stop("s6", Duration::from_millis(300)).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(!pid_alive(&workload.id));
}

#[tokio::test]
async fn bad_requests_are_named() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    let mut request = worker_session("s7", &dir, &[]);
    request.spec.image = "/nonexistent/model-server".into();
    let err = rt.start(&request).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::ImageNotFound(i) if i == "/nonexistent/model-server"),
        "{err:?}"
    );
    assert!(rt.list().await.unwrap().is_empty(), "nothing left behind");

    let not_executable = dir.path().join("model.bin");
    std::fs::write(&not_executable, "weights").unwrap();
    let mut request = worker_session("s7", &dir, &[]);
    request.spec.image = not_executable.to_str().unwrap().into();
    assert!(matches!(
        rt.start(&request).await,
        Err(RuntimeError::ImageNotFound(_))
    ));

    rt.start(&worker_session("s7", &dir, &[])).await.unwrap();
    let err = rt.address("s7", 9999).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::PortNotExposed { port: 9999, .. }),
        "{err:?}"
    );
    assert!(matches!(
        rt.address("other", 8080).await,
        Err(RuntimeError::NotFound(_))
    ));
    let mut bad_id = worker_session("../escape", &dir, &[]);
    bad_id.session_id = "../escape".into();
    assert!(matches!(
        rt.start(&bad_id).await,
        Err(RuntimeError::InvalidSpec { .. })
    ));
    rt.stop("s7", Duration::from_secs(5)).await.unwrap();
}

/// `NoNewPrivs` of a process, from `/proc/<pid>/status`.
fn no_new_privs(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim)
}

#[tokio::test]
async fn workloads_and_execs_run_with_no_new_privs() {
    let dir = StateDir::new();
    let rt = runtime(&dir);
    let workload = rt.start(&worker_session("nnp", &dir, &[])).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", workload.id)).unwrap();
    assert_eq!(no_new_privs(&status), Some("1"), "the workload");
    let (out, _, code) = exec(&rt, "nnp", &["sh", "-c", "cat /proc/self/status"], b"")
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(no_new_privs(&out), Some("1"), "an exec");
    rt.stop("nnp", Duration::from_secs(2)).await.unwrap();
}
