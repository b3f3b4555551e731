//! Session commands end to end through the agent: a scripted broker on `127.0.0.1:0`
//! sends commands down the real stream, and the agent runs them on the process runtime
//! with the workspace's `hearth-test-worker` as the workload.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/worker.rs"]
mod support;

use std::time::{Duration, Instant};

use broker::{Agent, Conn, next_conn, start_broker};
use hearth_agent::{Config, RuntimeKind};
use hearth_sdk::proto::v1::{
    CancelTurn, CommandMeta, ExecCommand, ExecExit, ExecRequest, Header, InvokeCommand, InvokeHead,
    InvokeRequest, PauseSessionCommand, PortSpec, ReadinessProbe, ResumeSessionCommand,
    SessionSpec, SessionState, StartSessionCommand, StopSessionCommand, agent_message,
    broker_message, exec_response, invoke_response, readiness_probe,
};
use support::{StateDir, json_number, worker};

const EPOCH: i64 = 4;

fn config(broker: &str, state_dir: &StateDir) -> Config {
    Config {
        broker: vec![broker.to_owned()],
        node_id: "session-node".into(),
        no_gpus: true,
        runtime: RuntimeKind::Process,
        state_dir: state_dir.path(),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..Config::default()
    }
}

fn meta(id: &str, session: &str, generation: u64) -> Option<CommandMeta> {
    Some(CommandMeta {
        command_id: id.into(),
        epoch: EPOCH,
        session_id: session.into(),
        generation,
    })
}

fn secs(d: Duration) -> Option<prost_types::Duration> {
    Some(hearth_sdk::time::duration(d))
}

/// The test worker listening on session port 8080 (and declaring 9000, where nothing
/// listens), ready once port `probe_port` takes a TCP connection.
fn worker_spec(state_dir: &StateDir, probe_port: u32, probe_timeout: Duration) -> SessionSpec {
    let worker_state = state_dir.path().join("worker");
    std::fs::create_dir_all(&worker_state).unwrap();
    SessionSpec {
        image: worker().to_str().unwrap().into(),
        env: [
            ("WARMUP_MS".to_owned(), "300".to_owned()),
            (
                "STATE_DIR".to_owned(),
                worker_state.to_str().unwrap().to_owned(),
            ),
        ]
        .into(),
        ports: vec![
            PortSpec {
                port: 8080,
                name: "http".into(),
            },
            PortSpec {
                port: 9000,
                name: "silent".into(),
            },
        ],
        readiness: Some(ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(probe_port)),
            timeout: secs(probe_timeout),
            period: secs(Duration::from_millis(50)),
        }),
        ..SessionSpec::default()
    }
}

async fn start_session(conn: &mut Conn, session: &str, spec: SessionSpec) -> String {
    conn.send(broker_message::Msg::StartSession(StartSessionCommand {
        meta: meta(&format!("start-{session}"), session, 1),
        spec: Some(spec),
        gpu_uuids: vec![],
        tenant: "acme".into(),
        network: None,
        registry_auth: None,
    }))
    .await;
    let reply = conn.reply().await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.command_id, format!("start-{session}"));
    assert!(!reply.container_id.is_empty());
    let starting = conn.status(SessionState::Starting).await;
    assert_eq!(
        (starting.session_id.as_str(), starting.generation),
        (session, 1)
    );
    assert_eq!(starting.container_id, reply.container_id);
    reply.container_id
}

async fn exec(conn: &Conn, turn: &str, session: &str, argv: &[&str], timeout: Option<Duration>) {
    conn.send(broker_message::Msg::Exec(ExecCommand {
        meta: meta(&format!("cmd-{turn}"), session, 1),
        turn_id: turn.into(),
        request: Some(ExecRequest {
            session_id: session.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout: timeout.and_then(secs),
            ..ExecRequest::default()
        }),
    }))
    .await;
}

/// Everything an Exec turn sends: its output chunks, then its exit.
async fn exec_result(conn: &mut Conn, turn: &str) -> (Vec<Vec<u8>>, Vec<u8>, ExecExit) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match conn.next().await {
            agent_message::Msg::ExecOutput(out) => {
                assert_eq!(out.turn_id, turn);
                match out.response.unwrap().event.unwrap() {
                    exec_response::Event::Stdout(b) => stdout.push(b),
                    exec_response::Event::Stderr(b) => stderr.extend(b),
                    exec_response::Event::Exit(exit) => return (stdout, stderr, exit),
                }
            }
            other => panic!("expected output of {turn}, got {other:?}"),
        }
    }
}

async fn invoke(conn: &Conn, turn: &str, session: &str, method: &str, path: &str, port: u32) {
    conn.send(broker_message::Msg::Invoke(InvokeCommand {
        meta: meta(&format!("cmd-{turn}"), session, 1),
        turn_id: turn.into(),
        request: Some(InvokeRequest {
            session_id: session.into(),
            port,
            method: method.into(),
            path: path.into(),
            headers: vec![Header {
                name: "x-test".into(),
                value: "1".into(),
            }],
            body: vec![],
            timeout: secs(Duration::from_secs(5)),
        }),
    }))
    .await;
}

/// An Invoke turn's head and body chunks, up to its `end`.
async fn invoke_result(conn: &mut Conn, turn: &str) -> (InvokeHead, Vec<Vec<u8>>) {
    let head = match conn.next().await {
        agent_message::Msg::InvokeChunk(chunk) => {
            assert_eq!(chunk.turn_id, turn);
            assert!(!chunk.end);
            match chunk.response.unwrap().event.unwrap() {
                invoke_response::Event::Head(head) => head,
                other => panic!("the head must come first, got {other:?}"),
            }
        }
        other => panic!("expected the head of {turn}, got {other:?}"),
    };
    let mut body = Vec::new();
    loop {
        match conn.next().await {
            agent_message::Msg::InvokeChunk(chunk) if chunk.end => {
                assert!(chunk.response.is_none());
                return (head, body);
            }
            agent_message::Msg::InvokeChunk(chunk) => {
                match chunk.response.unwrap().event.unwrap() {
                    invoke_response::Event::Body(b) => body.push(b),
                    other => panic!("a second head: {other:?}"),
                }
            }
            other => panic!("expected the body of {turn}, got {other:?}"),
        }
    }
}

/// `busy_sessions` of the first telemetry sample that satisfies `want`.
async fn telemetry_until(
    conn: &mut Conn,
    what: &str,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + broker::DEADLINE;
    loop {
        let busy = conn.next_telemetry().await.busy_sessions;
        if want(&busy) {
            return busy;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
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
async fn start_turns_pause_resume_and_stop() {
    let dir = StateDir::new();
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&url, &dir)).await;
    let mut conn = next_conn(&mut conns).await;
    assert_eq!(conn.hello.runtime, "process");
    assert!(conn.hello.sessions.is_empty());
    conn.welcome(EPOCH, Duration::from_millis(100)).await;

    // Start: Reply ok, STARTING, then READY once the worker listens after its warm-up.
    let started = Instant::now();
    let pid = start_session(
        &mut conn,
        "s1",
        worker_spec(&dir, 8080, Duration::from_secs(20)),
    )
    .await;
    let ready = conn.status(SessionState::Ready).await;
    assert_eq!(
        (ready.session_id.as_str(), ready.container_id.as_str()),
        ("s1", pid.as_str())
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "READY before the warm-up ended"
    );
    assert!(pid_alive(&pid));

    // Exec: output as chunks, then the exit code.
    let w = worker();
    let w = w.to_str().unwrap();
    exec(&conn, "t1", "s1", &[w, "lines", "3", "100"], None).await;
    let (stdout, _, exit) = exec_result(&mut conn, "t1").await;
    assert_eq!(stdout.concat(), b"line 1\nline 2\nline 3\n");
    assert_eq!(
        stdout.len(),
        3,
        "one chunk per line, as produced: {stdout:?}"
    );
    assert_eq!((exit.code, exit.timed_out), (0, false));
    assert!(exit.duration.unwrap().nanos > 0 || exit.duration.unwrap().seconds > 0);
    exec(&conn, "t2", "s1", &[w, "stderr", "bad"], None).await;
    let (_, stderr, exit) = exec_result(&mut conn, "t2").await;
    assert_eq!((stderr.as_slice(), exit.code), (&b"bad\n"[..], 0));
    exec(&conn, "t3", "s1", &[w, "exit", "4"], None).await;
    assert_eq!(exec_result(&mut conn, "t3").await.2.code, 4);

    // Invoke: head, then the SSE events as separate chunks, then end.
    invoke(&conn, "t4", "s1", "GET", "/stream?n=4&delay_ms=100", 8080).await;
    let (head, body) = invoke_result(&mut conn, "t4").await;
    assert_eq!(head.status, 200);
    assert!(
        head.headers
            .iter()
            .any(|h| h.name == "content-type" && h.value == "text/event-stream"),
        "{head:?}"
    );
    let text = String::from_utf8(body.concat()).unwrap();
    assert_eq!(
        text,
        "data: token-0\n\ndata: token-1\n\ndata: token-2\n\ndata: token-3\n\n"
    );
    assert!(body.len() >= 2, "the body streamed in pieces: {body:?}");
    // State lives on across turns (and across the pooled connection).
    for (turn, expected) in [("t5", "1"), ("t6", "2")] {
        invoke(&conn, turn, "s1", "POST", "/incr", 8080).await;
        let (head, body) = invoke_result(&mut conn, turn).await;
        assert_eq!(
            (head.status, body.concat()),
            (200, expected.as_bytes().to_vec())
        );
    }

    // Failed turns end with one Reply carrying the turn id.
    invoke(&conn, "t7", "s1", "GET", "/", 7777).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.ok, reply.code),
        ("t7", false, 3)
    );
    assert!(reply.message.contains("port 7777"), "{}", reply.message);
    invoke(&conn, "t8", "s1", "GET", "/", 9000).await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.code),
        ("t8", 14),
        "{reply:?}"
    );
    assert!(
        reply
            .message
            .contains("cannot reach port 9000 of session s1"),
        "{}",
        reply.message
    );

    // A long exec: the session shows as busy, and CancelTurn ends it promptly.
    exec(&conn, "t9", "s1", &[w, "sleep", "30"], None).await;
    let busy = telemetry_until(&mut conn, "s1 to show busy", |b| !b.is_empty()).await;
    assert_eq!(busy, ["s1"]);
    let cancelled_at = Instant::now();
    conn.send(broker_message::Msg::CancelTurn(CancelTurn {
        turn_id: "t9".into(),
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.code),
        ("t9", 1),
        "{reply:?}"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );
    telemetry_until(&mut conn, "s1 to be idle again", <[String]>::is_empty).await;

    // A timeout kills the command and says so.
    exec(
        &conn,
        "t10",
        "s1",
        &[w, "sleep", "30"],
        Some(Duration::from_millis(300)),
    )
    .await;
    let (_, _, exit) = exec_result(&mut conn, "t10").await;
    assert_eq!((exit.code, exit.timed_out), (-1, true));

    // Pause: Reply, PAUSED, and the worker no longer answers; Resume: READY, no re-warm.
    conn.send(broker_message::Msg::PauseSession(PauseSessionCommand {
        meta: meta("pause-1", "s1", 1),
    }))
    .await;
    assert!(conn.reply().await.ok);
    conn.status(SessionState::Paused).await;
    conn.send(broker_message::Msg::Invoke(InvokeCommand {
        meta: meta("cmd-t11", "s1", 1),
        turn_id: "t11".into(),
        request: Some(InvokeRequest {
            port: 8080,
            path: "/state".into(),
            timeout: secs(Duration::from_millis(500)),
            ..InvokeRequest::default()
        }),
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.code),
        ("t11", 4),
        "{reply:?}"
    );
    conn.send(broker_message::Msg::ResumeSession(ResumeSessionCommand {
        meta: meta("resume-1", "s1", 1),
    }))
    .await;
    assert!(conn.reply().await.ok);
    conn.status(SessionState::Ready).await;
    invoke(&conn, "t12", "s1", "GET", "/state", 8080).await;
    let (_, body) = invoke_result(&mut conn, "t12").await;
    let state = String::from_utf8(body.concat()).unwrap();
    assert_eq!(json_number(&state, "warmups"), 1, "{state}");
    assert_eq!(json_number(&state, "counter"), 2, "{state}");

    // Fencing: an older generation, and an older leader epoch, are refused.
    conn.send(broker_message::Msg::Exec(ExecCommand {
        meta: Some(CommandMeta {
            generation: 0,
            ..meta("cmd-t13", "s1", 0).unwrap()
        }),
        turn_id: "t13".into(),
        request: Some(ExecRequest {
            argv: vec![w.into(), "echo".into()],
            ..ExecRequest::default()
        }),
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.code),
        ("t13", 9),
        "{reply:?}"
    );
    assert!(
        reply.message.contains("stale generation 0"),
        "{}",
        reply.message
    );
    conn.send(broker_message::Msg::StopSession(StopSessionCommand {
        meta: Some(CommandMeta {
            epoch: EPOCH - 1,
            ..meta("stop-stale", "s1", 1).unwrap()
        }),
        grace: None,
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!((reply.command_id.as_str(), reply.code), ("stop-stale", 9));
    assert!(
        reply.message.contains("stale leader epoch 3"),
        "{}",
        reply.message
    );
    assert!(pid_alive(&pid), "a stale stop must not stop anything");

    // Stop: Reply ok, STOPPED, the process and its state file gone.
    conn.send(broker_message::Msg::StopSession(StopSessionCommand {
        meta: meta("stop-1", "s1", 1),
        grace: secs(Duration::from_secs(5)),
    }))
    .await;
    let reply = conn.reply().await;
    assert!(reply.ok && reply.command_id == "stop-1", "{reply:?}");
    let stopped = conn.status(SessionState::Stopped).await;
    assert_eq!(stopped.container_id, pid);
    assert!(!pid_alive(&pid));
    assert!(!dir.path().join("s1.json").exists());

    agent.shutdown().await;
}

#[tokio::test]
async fn a_never_ready_workload_fails_and_is_removed() {
    let dir = StateDir::new();
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&url, &dir)).await;
    let mut conn = next_conn(&mut conns).await;
    conn.welcome(EPOCH, Duration::from_secs(5)).await;

    // Port 9000 is declared but nothing listens there.
    let started = Instant::now();
    let pid = start_session(
        &mut conn,
        "s2",
        worker_spec(&dir, 9000, Duration::from_secs(1)),
    )
    .await;
    let failed = conn.status(SessionState::Failed).await;
    assert!(
        failed
            .reason
            .starts_with("readiness probe tcp :9000 did not pass within 1s"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.container_id, pid);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(!pid_alive(&pid), "the workload is removed");
    assert!(!dir.path().join("s2.json").exists());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_crash_is_reported_with_its_exit_code() {
    let dir = StateDir::new();
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&url, &dir)).await;
    let mut conn = next_conn(&mut conns).await;
    conn.welcome(EPOCH, Duration::from_secs(5)).await;

    let spec = SessionSpec {
        image: "/bin/sh".into(),
        command: vec!["-c".into(), "sleep 0.5; exit 5".into()],
        ..SessionSpec::default()
    };
    start_session(&mut conn, "s3", spec).await;
    conn.status(SessionState::Ready).await; // no probe: ready once started
    let failed = conn.status(SessionState::Failed).await;
    assert_eq!(failed.reason, "the workload exited with code 5");

    // A missing executable is refused outright, and nothing is reported as started.
    conn.send(broker_message::Msg::StartSession(StartSessionCommand {
        meta: meta("start-missing", "s4", 1),
        spec: Some(SessionSpec {
            image: "/nonexistent/server".into(),
            ..SessionSpec::default()
        }),
        ..StartSessionCommand::default()
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!((reply.ok, reply.code), (false, 5), "{reply:?}");
    assert!(
        reply.message.contains("/nonexistent/server"),
        "{}",
        reply.message
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_reports_and_keeps_its_sessions() {
    let dir = StateDir::new();
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&url, &dir)).await;
    let mut conn = next_conn(&mut conns).await;
    conn.welcome(EPOCH, Duration::from_secs(5)).await;
    let pid = start_session(
        &mut conn,
        "s5",
        worker_spec(&dir, 8080, Duration::from_secs(20)),
    )
    .await;
    conn.status(SessionState::Ready).await;
    invoke(&conn, "t1", "s5", "POST", "/incr", 8080).await;
    invoke_result(&mut conn, "t1").await;
    agent.shutdown().await;
    drop(conn);

    // The workload outlives the agent; the next agent names it in Hello and serves it.
    assert!(pid_alive(&pid));
    let agent = Agent::start(config(&url, &dir)).await;
    let mut conn = next_conn(&mut conns).await;
    let sessions = &conn.hello.sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        (sessions[0].session_id.as_str(), sessions[0].generation),
        ("s5", 1)
    );
    assert_eq!(sessions[0].container_id, pid);
    assert_eq!(sessions[0].state(), SessionState::Ready);
    conn.welcome(EPOCH, Duration::from_secs(5)).await;
    invoke(&conn, "t2", "s5", "GET", "/state", 8080).await;
    let (_, body) = invoke_result(&mut conn, "t2").await;
    let state = String::from_utf8(body.concat()).unwrap();
    assert_eq!(json_number(&state, "warmups"), 1, "{state}");
    assert_eq!(json_number(&state, "counter"), 1, "{state}");

    conn.send(broker_message::Msg::StopSession(StopSessionCommand {
        meta: meta("stop-5", "s5", 1),
        grace: None,
    }))
    .await;
    assert!(conn.reply().await.ok);
    conn.status(SessionState::Stopped).await;
    assert!(!pid_alive(&pid));
    agent.shutdown().await;
}
