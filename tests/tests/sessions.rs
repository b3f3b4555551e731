//! Sessions end to end: a real broker and agent process, the test worker as a real Docker
//! container (or, for the process runtime, a real child process), and turns through the
//! broker. The scenario is the product promise: one warm workload answers every turn, its
//! in-memory state carries across turns, an idle pause and the resume that follows cost no
//! new warm-up, and delete leaves nothing behind.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecRequest, GetSessionRequest, GpuRequest,
    InvokeRequest, KeepAliveRequest, PortSpec, ReadinessProbe, Session, SessionSpec, SessionState,
    create_session_request, exec_response, invoke_response, readiness_probe,
    sessions_client::SessionsClient,
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker},
};
use tonic::{Code, transport::Channel};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    Docker,
    Process,
}

struct Fixture {
    broker: Broker,
    agent: Agent,
    client: SessionsClient<Channel>,
    runtime: Runtime,
    image: String,
    _dir: tempfile::TempDir,
}

static NEXT_FIXTURE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Fixture {
    async fn start(runtime: Runtime) -> anyhow::Result<Option<Self>> {
        let image = match runtime {
            Runtime::Docker => {
                if !images::docker_or_skip() {
                    return Ok(None);
                }
                images::worker_image()?.to_owned()
            }
            Runtime::Process => images::worker_binary().display().to_string(),
        };
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let state = dir.path().join("agent-state").display().to_string();
        let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
        let name = match runtime {
            Runtime::Docker => "docker",
            Runtime::Process => "process",
        };
        // Tests run side by side on one Docker engine: each agent gets its own node id, so
        // neither sweeps the other's containers or networks.
        let scenario = NEXT_FIXTURE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let agent = Agent::spawn(
            dir.path(),
            &format!("{name}-node-{}-{scenario}", std::process::id()),
            &[&broker.url],
            &[
                "--simulate-gpus",
                "1",
                "--runtime",
                name,
                "--state-dir",
                &state,
            ],
        )?;
        api::node_ready(&broker.url, &agent.node_id)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
            })?;
        let client = SessionsClient::new(api::long_channel(&broker.url));
        Ok(Some(Self {
            broker,
            agent,
            client,
            runtime,
            image,
            _dir: dir,
        }))
    }

    fn spec(&self, warmup_ms: u32, idle: Option<Duration>) -> SessionSpec {
        SessionSpec {
            image: self.image.clone(),
            env: [("WARMUP_MS".to_owned(), warmup_ms.to_string())].into(),
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            ports: vec![PortSpec {
                port: 8080,
                name: "http".into(),
            }],
            readiness: Some(ReadinessProbe {
                check: Some(readiness_probe::Check::TcpPort(8080)),
                timeout: Some(hearth_sdk::time::duration(Duration::from_secs(30))),
                ..ReadinessProbe::default()
            }),
            idle_timeout: idle.map(hearth_sdk::time::duration),
            ..SessionSpec::default()
        }
    }

    async fn create(&mut self, spec: SessionSpec) -> Result<Session, tonic::Status> {
        self.client
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec)),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn invoke(
        &mut self,
        id: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u32, Vec<Vec<u8>>), tonic::Status> {
        let mut stream = self
            .client
            .invoke(InvokeRequest {
                session_id: id.to_owned(),
                port: 8080,
                method: method.to_owned(),
                path: path.to_owned(),
                body: body.to_vec(),
                ..InvokeRequest::default()
            })
            .await?
            .into_inner();
        let mut status = 0;
        let mut chunks = Vec::new();
        while let Some(piece) = stream.message().await? {
            match piece.event {
                Some(invoke_response::Event::Head(h)) => {
                    assert!(chunks.is_empty(), "the head comes first");
                    status = h.status;
                }
                Some(invoke_response::Event::Body(b)) => chunks.push(b),
                None => {}
            }
        }
        Ok((status, chunks))
    }

    async fn state(&mut self, id: &str) -> anyhow::Result<(u64, String)> {
        let (status, chunks) = self.invoke(id, "GET", "/state", b"").await?;
        assert_eq!(status, 200);
        let body = String::from_utf8(chunks.concat())?;
        let field = |name: &str| -> String {
            let at = body
                .find(&format!("\"{name}\":"))
                .map(|i| i + name.len() + 3)
                .unwrap_or(0);
            let rest = body[at..].trim_start();
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].trim().trim_matches('"').to_owned()
        };
        Ok((field("warmups").parse()?, field("hostname")))
    }

    async fn exec(
        &mut self,
        id: &str,
        argv: &[&str],
        stdin: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>, i32, usize), tonic::Status> {
        let mut stream = self
            .client
            .exec(ExecRequest {
                session_id: id.to_owned(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                stdin: stdin.to_vec(),
                ..ExecRequest::default()
            })
            .await?
            .into_inner();
        let (mut out, mut err, mut code, mut pieces) = (Vec::new(), Vec::new(), None, 0);
        while let Some(piece) = stream.message().await? {
            pieces += 1;
            match piece.event {
                Some(exec_response::Event::Stdout(b)) => out.extend(b),
                Some(exec_response::Event::Stderr(b)) => err.extend(b),
                Some(exec_response::Event::Exit(e)) => code = Some(e.code),
                None => {}
            }
        }
        Ok((
            out,
            err,
            code.expect("an exit status ends every exec"),
            pieces,
        ))
    }

    /// A create that must succeed; on failure the error carries both processes' logs.
    async fn create_ok(&mut self, spec: SessionSpec) -> anyhow::Result<Session> {
        match self.create(spec).await {
            Ok(s) => Ok(s),
            Err(status) => Err(anyhow::anyhow!(
                "CreateSession: {status}\n{}\n{}",
                self.broker.proc.log_tail(),
                self.agent.proc.log_tail()
            )),
        }
    }

    /// The argv that runs the test worker's tool mode inside the session.
    fn tool(&self, args: &[&'static str]) -> Vec<&'static str> {
        let program: &'static str = match self.runtime {
            Runtime::Docker => "/worker",
            Runtime::Process => Box::leak(self.image.clone().into_boxed_str()),
        };
        std::iter::once(program)
            .chain(args.iter().copied())
            .collect()
    }

    fn paused_on_host(&self, s: &Session) -> bool {
        match self.runtime {
            Runtime::Docker => {
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", "{{.State.Paused}}", &s.container_id])
                    .output()
                    .expect("docker inspect");
                String::from_utf8_lossy(&out.stdout).trim() == "true"
            }
            Runtime::Process => std::fs::read_to_string(format!("/proc/{}/status", s.container_id))
                .map(|st| {
                    st.lines()
                        .any(|l| l.starts_with("State:") && l.contains("T (stopped)"))
                })
                .unwrap_or(false),
        }
    }

    fn workload_exists(&self, s: &Session) -> bool {
        match self.runtime {
            Runtime::Docker => std::process::Command::new("docker")
                .args(["inspect", &s.container_id])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            Runtime::Process => {
                std::path::Path::new(&format!("/proc/{}", s.container_id)).exists()
                    && !std::fs::read_to_string(format!("/proc/{}/stat", s.container_id))
                        .unwrap_or_default()
                        .contains(") Z ")
            }
        }
    }
}

async fn warm_session_scenario(runtime: Runtime) -> anyhow::Result<()> {
    let Some(mut f) = Fixture::start(runtime).await? else {
        return Ok(());
    };
    let session = f
        .create(f.spec(300, Some(Duration::from_secs(2))))
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "CreateSession: {s}\n{}\n{}",
                f.broker.proc.log_tail(),
                f.agent.proc.log_tail()
            )
        })?;
    assert_eq!(session.state(), SessionState::Ready, "{session:?}");
    assert_eq!(session.cold_starts, 1);
    assert_eq!(session.gpu_uuids.len(), 1);
    assert!(session.gpu_uuids[0].starts_with("GPU-SIM-"));
    let id = session.id.clone();

    // 200 turns, one warm workload, state carried in memory across them. Keep-alives keep
    // the 2 s idle timeout from pausing it mid-way.
    let (_, first_host) = f.state(&id).await?;
    for i in 1..=200u32 {
        let (status, chunks) = f.invoke(&id, "POST", "/incr", b"").await?;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8(chunks.concat())?.trim(), i.to_string());
        if i % 50 == 0 {
            f.client
                .keep_alive(KeepAliveRequest { id: id.clone() })
                .await?;
        }
    }
    let (warmups, host) = f.state(&id).await?;
    assert_eq!(warmups, 1, "exactly one warm-up");
    assert_eq!(host, first_host, "one workload answered every turn");

    // SSE-style streaming: several body chunks, head first.
    let (status, chunks) = f.invoke(&id, "GET", "/stream?n=5&delay_ms=30", b"").await?;
    assert_eq!(status, 200);
    let text = String::from_utf8(chunks.concat())?;
    assert_eq!(text.matches("data: token-").count(), 5, "{text}");
    assert!(
        chunks.len() >= 2,
        "the body streamed in pieces, not one blob: {chunks:?}"
    );

    // Exec streams stdout and stderr, then the exit code.
    let (out, _, code, pieces) = f.exec(&id, &f.tool(&["lines", "3", "50"]), b"").await?;
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out)?, "line 1\nline 2\nline 3\n");
    assert!(
        pieces >= 3,
        "output streamed as it was written ({pieces} pieces)"
    );
    let (_, err, code, _) = f.exec(&id, &f.tool(&["stderr", "oops"]), b"").await?;
    assert_eq!(
        (code, String::from_utf8(err)?.trim().to_owned()),
        (0, "oops".to_owned())
    );
    let (out, _, _, _) = f.exec(&id, &f.tool(&["cat"]), b"from stdin").await?;
    assert_eq!(out, b"from stdin");
    assert_eq!(f.exec(&id, &f.tool(&["exit", "3"]), b"").await?.2, 3);

    // Idle past 2 s: PAUSED, and the host agrees.
    let paused = eventually("idle pause", Duration::from_secs(20), || {
        let mut c = f.client.clone();
        let id = id.clone();
        async move {
            let s = c.get_session(GetSessionRequest { id }).await?.into_inner();
            Ok((s.state() == SessionState::Paused).then_some(s))
        }
    })
    .await?;
    assert!(
        f.paused_on_host(&paused),
        "the workload is frozen on the host"
    );

    // The next turn resumes it transparently, with no new warm-up and state intact.
    let (status, chunks) = f.invoke(&id, "POST", "/incr", b"").await?;
    assert_eq!(
        (
            status,
            String::from_utf8(chunks.concat())?.trim().to_owned()
        ),
        (200, "201".to_owned())
    );
    let (warmups, host) = f.state(&id).await?;
    assert_eq!(
        (warmups, host.as_str()),
        (1, first_host.as_str()),
        "no re-warm after the pause"
    );
    let s = f
        .client
        .get_session(GetSessionRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(s.state(), SessionState::Ready);
    assert_eq!(s.cold_starts, 1);
    assert!(s.turns_served >= 200);

    // Delete removes the workload and frees the GPU: the node's only GPU can be booked again.
    let deleted = f
        .client
        .delete_session(DeleteSessionRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(deleted.state(), SessionState::Stopped);
    assert!(!f.workload_exists(&paused), "no workload left behind");
    let again = f.create_ok(f.spec(0, None)).await?;
    assert_eq!(
        again.gpu_uuids, session.gpu_uuids,
        "the freed GPU was allocated again"
    );
    f.client
        .delete_session(DeleteSessionRequest { id: again.id })
        .await?;
    Ok(())
}

async fn bad_input_scenario(runtime: Runtime) -> anyhow::Result<()> {
    let Some(mut f) = Fixture::start(runtime).await? else {
        return Ok(());
    };
    let unknown = ulid::Ulid::new().to_string();
    let err = f.invoke(&unknown, "GET", "/", b"").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&unknown));

    // Not on the node, and not to be pulled (pulls have tests of their own, against a
    // registry: tests/tests/registry.rs).
    let mut missing = f.spec(0, None);
    missing.image = match runtime {
        Runtime::Docker => "hearth-no-such-image:latest".into(),
        Runtime::Process => "/no/such/executable".into(),
    };
    missing.set_pull_policy(hearth_sdk::proto::v1::PullPolicy::Never);
    let err = f.create(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("spec.image"), "{err:?}");

    let session = f.create_ok(f.spec(0, None)).await?;
    let err = f
        .client
        .invoke(InvokeRequest {
            session_id: session.id.clone(),
            port: 9999,
            ..InvokeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("invalid port") && err.message().contains("9999"),
        "{err:?}"
    );
    let err = f
        .invoke(&session.id, "POST", "/echo", &vec![0u8; 5 * 1024 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("invalid body"), "{err:?}");
    f.client
        .delete_session(DeleteSessionRequest { id: session.id })
        .await?;

    // A worker that never becomes ready: FAILED with the reason, GPU freed, nothing left.
    let mut never = f.spec(0, None);
    never.ports.push(PortSpec {
        port: 8081,
        name: "never".into(),
    });
    never.readiness = Some(ReadinessProbe {
        check: Some(readiness_probe::Check::TcpPort(8081)),
        timeout: Some(hearth_sdk::time::duration(Duration::from_secs(2))),
        ..ReadinessProbe::default()
    });
    let err = f.create(never).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("readiness"), "{err:?}");
    let failed_id = err
        .message()
        .split_whitespace()
        .nth(1)
        .expect("the message names the session")
        .to_owned();
    let failed = f
        .client
        .get_session(GetSessionRequest { id: failed_id })
        .await?
        .into_inner();
    assert_eq!(failed.state(), SessionState::Failed);
    assert!(
        failed.state_reason.contains("readiness"),
        "{}",
        failed.state_reason
    );
    if !failed.container_id.is_empty() {
        assert!(
            !f.workload_exists(&failed),
            "the failed workload was removed"
        );
    }
    let next = f.create_ok(f.spec(0, None)).await?;
    assert_eq!(
        next.gpu_uuids, failed.gpu_uuids,
        "the failed session's GPU was freed"
    );
    f.client
        .delete_session(DeleteSessionRequest { id: next.id })
        .await?;
    Ok(())
}

#[tokio::test]
async fn docker_warm_session_keeps_state_across_turns_and_idle_pause() -> anyhow::Result<()> {
    warm_session_scenario(Runtime::Docker).await
}

#[tokio::test]
async fn process_warm_session_keeps_state_across_turns_and_idle_pause() -> anyhow::Result<()> {
    warm_session_scenario(Runtime::Process).await
}

#[tokio::test]
async fn docker_bad_input_gets_clear_errors_and_leaves_nothing_behind() -> anyhow::Result<()> {
    bad_input_scenario(Runtime::Docker).await
}

#[tokio::test]
async fn process_bad_input_gets_clear_errors_and_leaves_nothing_behind() -> anyhow::Result<()> {
    bad_input_scenario(Runtime::Process).await
}
