//! Reconciliation end to end (DESIGN section 4), with real broker and agent processes:
//! - a session whose workload vanished while its agent was down is FAILED when the agent
//!   says Hello again, with an event, and its GPU is free for the next session;
//! - a labelled workload of a session nobody knows is stopped after `orphan_grace`, not
//!   before;
//! - a network cut (the agent in a network namespace, the link taken down): shorter than
//!   `lost_after`, the node is DISCONNECTED, turns fail fast with UNAVAILABLE, and after
//!   the restore the same warm workload answers; longer, the session is LOST with an
//!   event, its GPU freed, and the returning agent's workload of it is stopped.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetSessionRequest, GpuRequest, NodeState, Session,
    SessionSpec, SessionState, create_session_request, sessions_client::SessionsClient,
};
use hearth_tests::{
    api,
    events::Events,
    eventually, images, netns,
    process::{Agent, Broker, Proc, binary, free_port},
};
use tonic::{Code, transport::Channel};

/// Generous: two busy cores, image unpacking, readiness probes.
const SLOW: Duration = Duration::from_secs(60);

fn one_gpu(mut spec: SessionSpec) -> SessionSpec {
    spec.gpus = Some(GpuRequest {
        count: 1,
        ..GpuRequest::default()
    });
    spec
}

async fn create(
    client: &mut SessionsClient<Channel>,
    spec: SessionSpec,
) -> anyhow::Result<Session> {
    Ok(client
        .create_session(CreateSessionRequest {
            source: Some(create_session_request::Source::Spec(spec)),
            ..CreateSessionRequest::default()
        })
        .await?
        .into_inner())
}

async fn session(client: &mut SessionsClient<Channel>, id: &str) -> anyhow::Result<Session> {
    Ok(client
        .get_session(GetSessionRequest { id: id.to_owned() })
        .await?
        .into_inner())
}

async fn wait_state(
    client: &SessionsClient<Channel>,
    id: &str,
    state: SessionState,
    timeout: Duration,
) -> anyhow::Result<Session> {
    eventually(&format!("session {id} {state:?}"), timeout, || {
        let mut client = client.clone();
        async move { Ok(Some(session(&mut client, id).await?).filter(|s| s.state() == state)) }
    })
    .await
}

async fn wait_node(
    url: &str,
    node: &str,
    state: NodeState,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(&format!("node {node} {state:?}"), timeout, || async {
        Ok(api::node(url, node)
            .await
            .ok()
            .filter(|n| n.state() == state)
            .map(|_| ()))
    })
    .await
}

/// `docker inspect` of a container: `Some(running)` if it exists.
fn container_running(name: &str) -> Option<bool> {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Running}}", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim() == "true")
}

fn docker_rm(name: &str) {
    let _ = Command::new("docker")
        .args(["rm", "-f", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True while process `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_workload_vanished_is_failed_and_its_gpu_freed() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let image = images::worker_image()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let mut agent = Agent::spawn(
        dir.path(),
        "vanish-node",
        &[&broker.url],
        &["--simulate-gpus", "1", "--runtime", "docker"],
    )?;
    wait_node(&broker.url, &agent.node_id, NodeState::Ready, SLOW).await?;
    let mut client = SessionsClient::new(api::long_channel(&broker.url));
    let created = create(&mut client, one_gpu(images::worker_spec(image))).await?;
    let id = created.id.clone();
    let container = hearth_agent::runtime::docker::container_name(&id);
    wait_state(&client, &id, SessionState::Ready, SLOW).await?;
    let events = Events::watch(&broker.url).await?;

    // The agent dies, and while it is down the workload goes too.
    agent.proc.kill();
    docker_rm(&container);
    assert_eq!(container_running(&container), None, "the container is gone");
    agent.proc.restart()?;

    let failed = wait_state(&client, &id, SessionState::Failed, SLOW)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.proc.log_tail()))?;
    assert!(
        failed.state_reason.contains("workload is gone"),
        "{}",
        failed.state_reason
    );
    let event = events.wait("session.failed", &id, SLOW).await?;
    assert!(
        event.message.contains("workload is gone"),
        "{}",
        event.message
    );

    // The node's only GPU is free again: a new session takes it.
    let next = create(&mut client, one_gpu(images::worker_spec(image))).await?;
    let next = wait_state(&client, &next.id, SessionState::Ready, SLOW).await?;
    assert_eq!(next.node_id, agent.node_id);
    assert_eq!(next.gpu_uuids, created.gpu_uuids, "the same (only) GPU");
    client
        .delete_session(DeleteSessionRequest {
            id: next.id.clone(),
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_an_unknown_session_is_stopped_after_the_grace() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let image = images::worker_image()?;
    const GRACE: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &["--store-path", &store, "--orphan-grace", "10s"],
    )?;
    // A workload labelled as Hearth's, of a session this cluster never had.
    let unknown = ulid::Ulid::new().to_string();
    let container = hearth_agent::runtime::docker::container_name(&unknown);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            docker_rm(&self.0);
        }
    }
    let _cleanup = Cleanup(container.clone());
    let started = Command::new("docker")
        .args(["run", "-d", "--name", &container])
        .args(["--label", &format!("hearth.session={unknown}")])
        .args([
            "--label",
            "hearth.generation=1",
            "--label",
            "hearth.epoch=1",
        ])
        .args(["--label", "hearth.tenant=default"])
        // On the node whose agent starts below (agents keep to their own node's).
        .args(["--label", "hearth.node=orphan-node"])
        .arg(image)
        .stdout(Stdio::null())
        .status()?;
    assert!(started.success(), "docker run of the orphan workload");
    assert_eq!(container_running(&container), Some(true));

    let events = Events::watch(&broker.url).await?;
    let agent = Agent::spawn(
        dir.path(),
        "orphan-node",
        &[&broker.url],
        &["--simulate-gpus", "1", "--runtime", "docker"],
    )?;
    wait_node(&broker.url, &agent.node_id, NodeState::Ready, SLOW).await?;
    let found = events.wait("session.orphan", &unknown, SLOW).await?;
    let seen = Instant::now();
    assert!(found.message.contains("orphan_grace") || found.message.contains("stopped in"));

    // Not before the grace: still running well into it.
    tokio::time::sleep(GRACE / 2).await;
    assert_eq!(
        container_running(&container),
        Some(true),
        "the orphan must survive until orphan_grace has passed"
    );
    assert!(events.find("session.orphan_stopped", &unknown).is_none());

    // After it: stopped, with an event.
    eventually("the orphan workload stopped", SLOW, || async {
        Ok((container_running(&container) != Some(true)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.proc.log_tail()))?;
    let stopped = events
        .wait("session.orphan_stopped", &unknown, SLOW)
        .await?;
    assert!(
        seen.elapsed() >= GRACE / 2,
        "stopped {:?} after the orphan was reported",
        seen.elapsed()
    );
    assert!(stopped.message.contains(&unknown), "{}", stopped.message);
    Ok(())
}

/// A broker on the host end of a veth and an agent (process runtime, one simulated GPU)
/// inside the namespace, with fast liveness timings.
struct CutFixture {
    ns: netns::Netns,
    broker: Proc,
    url: String,
    agent: Proc,
    node_id: String,
    client: SessionsClient<Channel>,
    /// Workload process groups to kill at the end (nothing adopts them after the test).
    workloads: Vec<u32>,
    _dir: tempfile::TempDir,
}

impl Drop for CutFixture {
    fn drop(&mut self) {
        self.agent.kill();
        for pid in &self.workloads {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.broker.kill();
    }
}

impl CutFixture {
    async fn start(tag: &str, lost_after: &str) -> anyhow::Result<Option<Self>> {
        if !netns::available() {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "network namespaces are required in CI (root and iproute2)"
            );
            eprintln!("SKIPPED: network namespaces need root and iproute2");
            return Ok(None);
        }
        let ns = netns::Netns::create(tag)?;
        let dir = tempfile::tempdir()?;
        let grpc = format!("{}:{}", ns.host_ip, free_port());
        let broker_bin = binary("hearth-broker")?;
        let mut args: Vec<String> = [
            "--broker-id",
            "broker",
            "--grpc-addr",
            &grpc,
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--store-path",
            &dir.path().join("store").display().to_string(),
            "--telemetry-interval",
            "200ms",
            "--suspect-after",
            "1s",
            "--disconnected-after",
            "2s",
            "--lost-after",
            lost_after,
            "--takeover-grace",
            "1s",
            "--orphan-grace",
            "2m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A broker without TLS on a non-loopback address needs the explicit opt-in, where
        // the build has it.
        let help = Command::new(&broker_bin).arg("--help").output()?;
        if String::from_utf8_lossy(&help.stdout).contains("--insecure-listen") {
            args.push("--insecure-listen".into());
        }
        let broker = Proc::spawn("broker", broker_bin, args, dir.path().join("broker.log"))?;
        let url = format!("http://{grpc}");
        let node_id = format!("{tag}-node");
        let agent_args = [
            "netns",
            "exec",
            &ns.name,
            &binary("hearth-agent")?.display().to_string(),
            "--node-id",
            &node_id,
            "--broker",
            &url,
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--runtime",
            "process",
            "--state-dir",
            &dir.path().join("agent-state").display().to_string(),
            "--simulate-gpus",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        let agent = Proc::spawn(
            "agent",
            "ip".into(),
            agent_args,
            dir.path().join("agent.log"),
        )?;
        wait_node(&url, &node_id, NodeState::Ready, SLOW)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", broker.log_tail(), agent.log_tail()))?;
        let client = SessionsClient::new(api::long_channel(&url));
        Ok(Some(Self {
            ns,
            broker,
            url,
            agent,
            node_id,
            client,
            workloads: Vec::new(),
            _dir: dir,
        }))
    }

    /// A READY worker session holding the node's GPU; its process is killed at the end.
    async fn session(&mut self) -> anyhow::Result<Session> {
        let spec = one_gpu(images::worker_spec(
            images::worker_binary().display().to_string(),
        ));
        let created = create(&mut self.client, spec).await?;
        let ready = wait_state(&self.client, &created.id, SessionState::Ready, SLOW).await?;
        if let Ok(pid) = ready.container_id.parse() {
            self.workloads.push(pid);
        }
        Ok(ready)
    }

    async fn incr(&mut self, id: &str) -> Result<u64, tonic::Status> {
        let (status, body) = api::invoke(&mut self.client, id, "POST", "/incr", Vec::new()).await?;
        let text = String::from_utf8_lossy(&body);
        match (status, text.trim().parse()) {
            (200, Ok(n)) => Ok(n),
            _ => Err(tonic::Status::internal(format!(
                "/incr answered {status}: {text}"
            ))),
        }
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.broker.log_tail(), self.agent.log_tail())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_network_cut_keeps_the_warm_session() -> anyhow::Result<()> {
    let Some(mut f) = CutFixture::start("short", "10m").await? else {
        return Ok(());
    };
    let s = f.session().await?;
    assert_eq!(f.incr(&s.id).await?, 1);
    assert_eq!(f.incr(&s.id).await?, 2);

    let downs_before = f.agent.log_tail().matches("broker link down").count();
    f.ns.cut()?;
    let cut = std::time::Instant::now();
    // The agent gives the silent link up by itself (dead_link_after, 2 s, on unacknowledged
    // telemetry), well before HTTP/2 keepalive would (10 s + 5 s).
    eventually(
        "the agent gives the cut link up",
        Duration::from_secs(12),
        || async {
            Ok(
                (f.agent.log_tail().matches("broker link down").count() > downs_before)
                    .then_some(()),
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    eprintln!(
        "the agent gave the cut link up {:?} after the cut",
        cut.elapsed()
    );
    wait_node(&f.url, &f.node_id, NodeState::Disconnected, SLOW)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    // A turn to a silent node fails fast (it does not wait on the hanging stream).
    let refused = tokio::time::timeout(Duration::from_secs(20), f.incr(&s.id))
        .await
        .map_err(|_| anyhow::anyhow!("a turn to a DISCONNECTED node hung"))?;
    let status = refused.expect_err("a turn during the cut must fail");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    f.ns.restore()?;
    wait_node(&f.url, &f.node_id, NodeState::Ready, SLOW)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    let n = eventually("a turn after the restore", SLOW, || {
        let id = s.id.clone();
        let mut client = f.client.clone();
        async move {
            let (status, body) = api::invoke(&mut client, &id, "POST", "/incr", Vec::new()).await?;
            Ok((status == 200)
                .then(|| String::from_utf8_lossy(&body).trim().parse::<u64>().ok())
                .flatten())
        }
    })
    .await?;
    assert!(
        n >= 3,
        "the counter continued (the same warm workload): {n}"
    );
    let after = session(&mut f.client, &s.id).await?;
    assert_eq!(after.state(), SessionState::Ready);
    assert_eq!(after.cold_starts, 1, "no extra cold start");
    assert_eq!(after.container_id, s.container_id, "the same workload");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_past_lost_after_loses_the_session_and_stops_its_workload()
-> anyhow::Result<()> {
    let Some(mut f) = CutFixture::start("long", "4s").await? else {
        return Ok(());
    };
    let s = f.session().await?;
    let pid: u32 = s.container_id.parse()?;
    assert!(process_alive(pid), "the workload runs as process {pid}");
    let events = Events::watch(&f.url).await?;

    f.ns.cut()?;
    wait_node(&f.url, &f.node_id, NodeState::Down, SLOW)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    let lost = wait_state(&f.client, &s.id, SessionState::Lost, SLOW).await?;
    assert!(
        lost.state_reason.contains("lost_after"),
        "{}",
        lost.state_reason
    );
    events.wait("session.lost", &s.id, SLOW).await?;
    // The workload itself cannot be reached yet: it still runs behind the cut.
    assert!(process_alive(pid), "nothing can stop it during the cut");

    f.ns.restore()?;
    wait_node(&f.url, &f.node_id, NodeState::Ready, SLOW)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    // The returning agent's workload of the LOST session is stopped at once (no grace).
    events.wait("session.orphan_stopped", &s.id, SLOW).await?;
    eventually("the LOST session's workload is gone", SLOW, || async {
        Ok((!process_alive(pid)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;

    // Its GPU was freed: a new session takes the node's only GPU.
    let next = f.session().await?;
    assert_eq!(next.gpu_uuids, s.gpu_uuids);
    assert_eq!(
        session(&mut f.client, &s.id).await?.state(),
        SessionState::Lost,
        "a LOST session stays LOST"
    );
    Ok(())
}
