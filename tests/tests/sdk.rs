//! The Rust SDK against a real broker and agent (process runtime, the static test worker
//! as the workload): the session handle's background keep-alive, turns, retries through
//! a broker restart, idempotent create, and the errors a new user meets first.

use std::time::Duration;

use hearth_sdk::{
    Client, Error, RetryPolicy, Session,
    proto::v1::{GpuRequest, SessionSpec, SessionState, exec_response, invoke_response},
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker},
};
use tonic::Code;

struct Fixture {
    broker: Broker,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
        let agent = Agent::spawn(
            dir.path(),
            "sdk-node",
            &[&broker.url],
            &["--simulate-gpus", "1"],
        )?;
        let f = Self {
            broker,
            agent,
            _dir: dir,
        };
        f.node_ready().await?;
        Ok(f)
    }

    async fn node_ready(&self) -> anyhow::Result<()> {
        api::node_ready(&self.broker.url, &self.agent.node_id)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}\n{}\n{}",
                    self.broker.proc.log_tail(),
                    self.agent.proc.log_tail()
                )
            })?;
        Ok(())
    }

    fn spec(&self, idle: Duration) -> SessionSpec {
        SessionSpec {
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            idle_timeout: Some(hearth_sdk::time::duration(idle)),
            ..images::worker_spec(self.worker())
        }
    }

    fn worker(&self) -> String {
        images::worker_binary().display().to_string()
    }
}

/// The worker's in-memory counter after one more `/incr`, and its warm-up count.
async fn incr(session: &Session) -> anyhow::Result<(u64, u64)> {
    let r = session.invoke(8080, "/incr").method("POST").await?;
    anyhow::ensure!(r.status == 200, "POST /incr: {r:?}");
    let counter = r.text().trim().parse()?;
    let state = session.invoke(8080, "/state").await?.text();
    let warmups = state
        .split("\"warmups\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .ok_or_else(|| anyhow::anyhow!("no warmups in {state}"))?
        .trim()
        .parse()?;
    Ok((counter, warmups))
}

async fn state_of(client: &Client, id: &str) -> anyhow::Result<SessionState> {
    Ok(client.get_session(id).await?.state())
}

/// The handle keeps its session awake well past the idle timeout; once it is dropped,
/// the same session pauses on schedule. Both halves matter: the second shows the first
/// is the keep-alive's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_keep_alive_outlives_the_idle_timeout_while_the_handle_lives()
-> anyhow::Result<()> {
    let f = Fixture::start().await?;
    let client = Client::connect(&f.broker.url).await?;
    let idle = Duration::from_secs(2);
    let session = client
        .create(f.spec(idle))
        .label("test", "keepalive")
        .await?;
    assert_eq!(session.info().state(), SessionState::Ready);
    assert_eq!(
        session.info().labels.get("test").map(String::as_str),
        Some("keepalive")
    );
    assert!(session.keeps_alive());
    let id = session.id().to_owned();

    // Three idle timeouts with no turn at all.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            state_of(&client, &id).await?,
            SessionState::Ready,
            "the session paused although its handle kept it alive\n{}",
            f.broker.proc.log_tail()
        );
    }

    drop(session);
    eventually(
        "PAUSED once the handle is gone",
        Duration::from_secs(15),
        || async { Ok((state_of(&client, &id).await? == SessionState::Paused).then_some(())) },
    )
    .await?;

    // A turn through a new handle resumes it with its state and without a new warm-up.
    let session = client.attach(&id).await?;
    assert_eq!(incr(&session).await?, (1, 1));
    let deleted = session.delete().await?;
    assert_eq!(deleted.state(), SessionState::Stopped);
    Ok(())
}

/// Exec and Invoke, collected and streamed; pause and resume; delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_pause_resume_and_delete() -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    let client = Client::connect(&f.broker.url).await?;
    let session = client.create(f.spec(Duration::from_secs(60))).await?;
    let worker = f.worker();

    let out = session
        .exec([worker.as_str(), "cat"])
        .stdin(b"from stdin".to_vec())
        .await?;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "from stdin");

    let out = session.exec([worker.as_str(), "stderr", "oops"]).await?;
    assert_eq!(out.stderr_text().trim(), "oops");
    let out = session.exec([worker.as_str(), "exit", "3"]).await?;
    assert_eq!(out.code, 3);
    assert!(!out.success());

    // Streamed: chunks in order, the exit status last.
    use futures::StreamExt as _;
    let mut stream = session
        .exec([worker.as_str(), "lines", "3", "50"])
        .stream()
        .await?;
    let mut stdout = Vec::new();
    let mut exit = None;
    while let Some(event) = stream.next().await {
        match event? {
            exec_response::Event::Stdout(b) => stdout.extend(b),
            exec_response::Event::Stderr(_) => {}
            exec_response::Event::Exit(e) => exit = Some(e.code),
        }
    }
    assert_eq!(String::from_utf8(stdout)?, "line 1\nline 2\nline 3\n");
    assert_eq!(exit, Some(0));

    let mut stream = session
        .invoke(8080, "/stream?n=3&delay_ms=20")
        .stream()
        .await?;
    let first = stream.next().await.expect("a head")?;
    assert!(
        matches!(&first, invoke_response::Event::Head(h) if h.status == 200),
        "{first:?}"
    );
    let mut chunks = 0;
    while let Some(event) = stream.next().await {
        assert!(matches!(event?, invoke_response::Event::Body(_)));
        chunks += 1;
    }
    assert!(chunks >= 1);

    let echoed = session
        .invoke(8080, "/echo")
        .method("POST")
        .header("x-test", "1")
        .body(b"ping".to_vec())
        .await?;
    assert_eq!((echoed.status, echoed.text().as_str()), (200, "ping"));

    assert_eq!(session.pause().await?.state(), SessionState::Paused);
    assert_eq!(session.resume().await?.state(), SessionState::Ready);
    assert_eq!(incr(&session).await?, (1, 1));
    session.keep_alive().await?;

    let id = session.id().to_owned();
    session.delete().await?;
    let err = client.get_session(&id).await.map(|s| s.state());
    assert!(
        matches!(err, Ok(SessionState::Stopped))
            || matches!(&err, Err(e) if e.code() == Some(Code::NotFound)),
        "{err:?}"
    );
    Ok(())
}

/// A broker restart in the middle of a conversation: the next turn waits it out (the
/// broker is refused, then answers that the node has not reconnected yet, both of which
/// mean the turn did not run) and reaches the same warm workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_retry_through_a_broker_restart() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let client = Client::connect(&f.broker.url).await?;
    let session = client.create(f.spec(Duration::from_secs(60))).await?;
    assert_eq!(incr(&session).await?, (1, 1));

    f.broker.proc.kill();
    // Let the client's connection see the close first. A turn written at the very instant
    // the broker dies fails on the broken connection, and then nobody can say whether it
    // ran, so the SDK rightly does not send it again; this test is about the outage that
    // follows, when every attempt certainly did not run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = {
        let started = tokio::time::sleep(Duration::from_secs(1));
        async {
            started.await;
            f.broker.proc.restart()
        }
    };
    let (restarted, turn) = tokio::join!(restart, incr(&session));
    restarted?;
    let turn = turn.map_err(|e| {
        anyhow::anyhow!(
            "{e}\n{}\n{}",
            f.broker.proc.log_tail(),
            f.agent.proc.log_tail()
        )
    })?;
    assert_eq!(turn, (2, 1), "the turn reached a new workload");

    let again = client.get_session(session.id()).await?;
    assert_eq!(again.cold_starts, 1);
    session.delete().await?;
    Ok(())
}

/// The same `request_id` gives the same session, whatever the caller retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_the_same_request_id_gives_one_session() -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    let client = Client::connect(&f.broker.url).await?;
    let first = client
        .create(f.spec(Duration::from_secs(60)))
        .request_id("sdk-test-1")
        .await?;
    let second = client
        .create(f.spec(Duration::from_secs(60)))
        .request_id("sdk-test-1")
        .await?;
    assert_eq!(first.id(), second.id());
    let all = client.list_sessions(Default::default()).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    first.delete().await?;
    Ok(())
}

/// What a new user gets wrong first, and what they are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_went_wrong() -> anyhow::Result<()> {
    let err = Client::connect("127.0.0.1:7700").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    assert!(err.to_string().contains("http://"), "{err}");

    let port = hearth_tests::process::free_port();
    let err = Client::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");

    let err = Client::builder("http://127.0.0.1:7700")
        .token("bad\ntoken")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidToken), "{err}");

    // A broker that stays down: calls give up after the policy's time, with UNAVAILABLE.
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retry(RetryPolicy {
            max_elapsed: Duration::from_millis(300),
            ..RetryPolicy::default()
        })
        .build()?;
    let err = client
        .get_session("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(
        err.to_string().starts_with("Sessions/GetSession failed"),
        "{err}"
    );

    let f = Fixture::start().await?;
    let client = Client::connect(&f.broker.url).await?;
    let err = client.create(SessionSpec::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("spec.image"), "{err}");
    let err = client
        .get_session("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    Ok(())
}

/// `sdk/examples/agent_loop.rs`, as a user runs it, against a live broker and agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_loop_example_runs() -> anyhow::Result<()> {
    let example = hearth_tests::process::bin_dir().join("examples/agent_loop");
    anyhow::ensure!(
        example.exists(),
        "{} is missing: build it with `cargo build --workspace --bins --examples`",
        example.display()
    );
    let f = Fixture::start().await?;
    let out = tokio::process::Command::new(&example)
        .args([f.broker.url.as_str(), f.worker().as_str()])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for turn in 1..=3 {
        let line = format!("turn {turn}: counter={turn} tool said \"tool call {turn}\" (exit 0)");
        assert!(stdout.contains(&line), "missing {line:?} in\n{stdout}");
    }
    assert!(stdout.contains("(cold starts: 1)"), "{stdout}");
    assert!(stdout.contains("kept alive: idle deadline in"), "{stdout}");
    assert!(
        stdout.contains("deleted: SESSION_STATE_STOPPED"),
        "{stdout}"
    );
    Ok(())
}

/// A client given a standby's address follows the leader that the standby names, and
/// its turns and creates work as if it had been given the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pointed_at_a_standby_follows_the_leader() -> anyhow::Result<()> {
    let Some(etcd) = hearth_tests::etcd::etcd_or_skip().await else {
        return Ok(());
    };
    let endpoint = etcd.endpoint();
    let prefix = hearth_tests::etcd::unique_prefix("sdk-standby");
    let dir = tempfile::tempdir()?;
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let leader = Broker::spawn(dir.path(), "broker-a", &flags)?;
    eventually("broker-a leads", Duration::from_secs(15), || async {
        Ok(api::cluster_info(&leader.url)
            .await
            .ok()
            .filter(|i| i.is_leader))
    })
    .await?;
    let standby = Broker::spawn(dir.path(), "broker-b", &flags)?;
    eventually("broker-b stands by", Duration::from_secs(15), || async {
        Ok(api::cluster_info(&standby.url)
            .await
            .ok()
            .filter(|i| !i.is_leader && i.leader_id == "broker-a"))
    })
    .await?;
    let agent = Agent::spawn(
        dir.path(),
        "follow-node",
        &[&leader.url],
        &["--simulate-gpus", "1"],
    )?;
    api::node_ready(&leader.url, &agent.node_id).await?;

    let client = Client::connect(&standby.url).await?;
    let spec = images::worker_spec(images::worker_binary().display().to_string());
    let session = client.create(spec).await?;
    assert_eq!(session.info().node_id, "follow-node");
    assert_eq!(incr(&session).await?, (1, 1));
    session.delete().await?;
    Ok(())
}
