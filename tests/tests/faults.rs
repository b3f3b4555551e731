//! One end-to-end test per fault (DESIGN sections 3, 4, 5 and 7): real `hearth-broker` and
//! `hearth-agent` processes, a real etcd where the fault involves it, and the test worker
//! as a real Docker container (`hearth-test-worker:latest`, built locally).
//!
//! Where the design says a session survives the fault, the test asserts that it cost no
//! extra cold start: `Session.cold_starts` stays 1, the worker's own warm-up count stays 1
//! and its in-memory counter carries on, and the container is the one that was started
//! (same Docker id, `RestartCount` and `State.StartedAt`). While the fault lasts, turns
//! must fail fast with UNAVAILABLE rather than hang until their deadline. Each test prints
//! its figures (outage length, time to the first good turn) with `eprintln!`.
//!
//! The fencing test drives the real agent from a `NodeAgent` server written here: a
//! deposed leader cannot be made to reach a real agent on purpose, because an agent holds
//! one stream, to the broker that welcomed it last.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    process::Command,
    time::{Duration, Instant},
};

use futures::Stream;
use hearth_agent::runtime::docker::container_name;
use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CommandMeta, CreateSessionRequest, DeleteSessionRequest,
    ExecCommand, ExecRequest, GetSessionRequest, GpuRequest, Hello, IdleAction, InvokeRequest,
    KeepAliveRequest, ListSessionsRequest, PauseSessionRequest, Reply, Session, SessionSpec,
    SessionState, StartSessionCommand, StopSessionCommand, Welcome, agent_message, broker_message,
    create_session_request, exec_response,
    node_agent_server::{NodeAgent, NodeAgentServer},
    sessions_client::SessionsClient,
};
use hearth_tests::{
    api,
    cluster::{leader_and_standby, until_leads},
    etcd::{etcd_or_skip, unique_prefix},
    eventually, images,
    process::{Agent, Broker, Proc},
};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming, transport::Channel};

/// The deadline every turn carries; "fail fast" means well inside it.
const TURN_DEADLINE: Duration = Duration::from_secs(30);
/// A turn refused during an outage must come back within this (a third of its deadline).
const FAIL_FAST: Duration = Duration::from_secs(10);
/// How long a fault may take to heal before the test gives up.
const HEAL: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Docker: the session's container, inspected directly.

/// What shows that a container was neither replaced nor restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Container {
    id: String,
    restart_count: u64,
    started_at: String,
    running: bool,
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `docker inspect` of the session's container.
fn inspect(session_id: &str) -> anyhow::Result<Container> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{.Id}} {{.RestartCount}} {{.State.StartedAt}} {{.State.Running}}",
        &container_name(session_id),
    ])?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    anyhow::ensure!(
        fields.len() == 4,
        "unexpected docker inspect output {out:?}"
    );
    Ok(Container {
        id: fields[0].to_owned(),
        restart_count: fields[1].parse()?,
        started_at: fields[2].to_owned(),
        running: fields[3] == "true",
    })
}

/// Whether Docker has the session's container paused (frozen).
fn paused_on_host(session_id: &str) -> anyhow::Result<bool> {
    Ok(docker(&[
        "inspect",
        "-f",
        "{{.State.Paused}}",
        &container_name(session_id),
    ])? == "true")
}

/// Every container (running or not) whose environment carries this test's marker, so
/// containers of tests running alongside on the same engine are not counted.
fn marked_containers(marker: &str) -> Vec<String> {
    let Ok(ids) = docker(&["ps", "-aq", "--no-trunc", "--filter", "name=hearth-"]) else {
        return Vec::new();
    };
    let needle = format!("FAULTS_RUN={marker}");
    ids.lines()
        .filter(|id| {
            docker(&[
                "inspect",
                "-f",
                "{{range .Config.Env}}{{println .}}{{end}}",
                id,
            ])
            .is_ok_and(|env| env.lines().any(|l| l == needle))
        })
        .map(str::to_owned)
        .collect()
}

/// Removes this test's containers when the test ends, however it ends: an agent killed
/// with `kill -9` leaves them running on purpose.
struct Cleanup {
    marker: String,
}

impl Cleanup {
    fn new() -> Self {
        Self {
            marker: ulid::Ulid::new().to_string().to_lowercase(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in marked_containers(&self.marker) {
            let _ = docker(&["rm", "-f", &id]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sessions and turns through a broker.

fn sessions(url: &str) -> SessionsClient<Channel> {
    SessionsClient::new(api::long_channel(url))
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// A session on the test worker (one simulated GPU unless `gpus` says otherwise), kept
/// running when idle, its container marked with `marker`.
fn spec(marker: &str, warmup: Duration, gpus: u32) -> anyhow::Result<SessionSpec> {
    let mut spec = images::worker_spec(images::worker_image()?);
    spec.env = [
        ("WARMUP_MS".to_owned(), warmup.as_millis().to_string()),
        ("FAULTS_RUN".to_owned(), marker.to_owned()),
    ]
    .into();
    spec.gpus = Some(GpuRequest {
        count: gpus,
        ..GpuRequest::default()
    });
    spec.idle_timeout = Some(hearth_sdk::time::duration(Duration::from_secs(1800)));
    spec.idle_action = IdleAction::Keep as i32;
    if let Some(readiness) = spec.readiness.as_mut() {
        readiness.timeout = Some(hearth_sdk::time::duration(Duration::from_secs(60)));
    }
    Ok(spec)
}

fn create_request(spec: SessionSpec, request_id: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        source: Some(create_session_request::Source::Spec(spec)),
        request_id: request_id.to_owned(),
        ..CreateSessionRequest::default()
    }
}

/// One Invoke turn on port 8080, collected, within `deadline`.
async fn turn(
    client: &mut SessionsClient<Channel>,
    id: &str,
    method: &str,
    path: &str,
    deadline: Duration,
) -> Result<Vec<u8>, Status> {
    let request = InvokeRequest {
        session_id: id.to_owned(),
        port: 8080,
        method: method.to_owned(),
        path: path.to_owned(),
        ..InvokeRequest::default()
    };
    let (status, body) = api::invoke_request(client, with_deadline(request, deadline)).await?;
    if status != 200 {
        return Err(Status::internal(format!(
            "{method} {path} answered HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(body)
}

/// `POST /incr`: the worker's in-memory counter after this turn.
async fn incr(client: &mut SessionsClient<Channel>, id: &str) -> Result<u64, Status> {
    let body = turn(client, id, "POST", "/incr", TURN_DEADLINE).await?;
    String::from_utf8_lossy(&body)
        .trim()
        .parse()
        .map_err(|e| Status::internal(format!("/incr answered {body:?}: {e}")))
}

/// The worker's own count of warm-ups (it persists it in its private directory, so a
/// restarted process or container would count 2).
async fn warmups(client: &mut SessionsClient<Channel>, id: &str) -> anyhow::Result<u64> {
    let body = turn(client, id, "GET", "/state", TURN_DEADLINE).await?;
    let field = api::json_field(&body, "warmups")
        .ok_or_else(|| anyhow::anyhow!("no warmups in {}", String::from_utf8_lossy(&body)))?;
    Ok(field.parse()?)
}

async fn get(client: &mut SessionsClient<Channel>, id: &str) -> Result<Session, Status> {
    client
        .get_session(with_deadline(
            GetSessionRequest { id: id.to_owned() },
            Duration::from_secs(10),
        ))
        .await
        .map(|r| r.into_inner())
}

/// A turn that must be refused because of the fault: UNAVAILABLE, with a message, well
/// before its deadline. Returns the refusal and how long it took.
async fn refused_turn(
    client: &mut SessionsClient<Channel>,
    id: &str,
    what: &str,
) -> anyhow::Result<(Status, Duration)> {
    let start = Instant::now();
    let outcome = incr(client, id).await;
    let took = start.elapsed();
    let status = match outcome {
        Ok(counter) => anyhow::bail!("{what}: a turn ran (counter {counter})"),
        Err(status) => status,
    };
    check_refusal(&status, took, what)?;
    Ok((status, took))
}

fn check_refusal(status: &Status, took: Duration, what: &str) -> anyhow::Result<()> {
    // As the SDK reports it: a connection that broke under the call is UNAVAILABLE.
    let status = &hearth_sdk::error::transport_as_unavailable(status.clone());
    anyhow::ensure!(
        status.code() == Code::Unavailable,
        "{what}: want UNAVAILABLE, got {status:?}"
    );
    anyhow::ensure!(
        !status.message().trim().is_empty(),
        "{what}: the refusal says nothing: {status:?}"
    );
    anyhow::ensure!(
        took < FAIL_FAST,
        "{what}: the refusal took {took:?} (deadline {TURN_DEADLINE:?})"
    );
    Ok(())
}

/// A READY session and what must not change while it survives faults.
struct Warm {
    id: String,
    counter: u64,
    container: Container,
}

impl Warm {
    /// The usual session of these tests (a 300 ms warm-up, one GPU), created through
    /// `client`; a failure carries the ends of `procs`' logs.
    async fn start(
        client: &mut SessionsClient<Channel>,
        marker: &str,
        procs: &[&Proc],
    ) -> anyhow::Result<Self> {
        let spec = spec(marker, Duration::from_millis(300), 1)?;
        Self::create(client, spec)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(procs)))
    }

    /// Creates a session through `client` and takes its first turn.
    async fn create(
        client: &mut SessionsClient<Channel>,
        spec: SessionSpec,
    ) -> anyhow::Result<Self> {
        let session = client
            .create_session(create_request(spec, ""))
            .await
            .map_err(|s| anyhow::anyhow!("CreateSession: {s:?}"))?
            .into_inner();
        assert_eq!(session.state(), SessionState::Ready, "{session:?}");
        assert_eq!(session.cold_starts, 1);
        let container = inspect(&session.id)?;
        assert!(container.running, "{container:?}");
        let mut warm = Self {
            id: session.id,
            counter: 0,
            container,
        };
        warm.still_warm(client, "after create").await?;
        Ok(warm)
    }

    /// One more turn reaches the same warm workload: the counter goes on by one, one
    /// warm-up, one cold start, the same container, never restarted.
    /// Deletes the session; its container goes with it.
    async fn delete(self, client: &mut SessionsClient<Channel>) -> anyhow::Result<()> {
        client
            .delete_session(DeleteSessionRequest { id: self.id })
            .await?;
        Ok(())
    }

    async fn still_warm(
        &mut self,
        client: &mut SessionsClient<Channel>,
        when: &str,
    ) -> anyhow::Result<()> {
        let counter = incr(client, &self.id)
            .await
            .map_err(|s| anyhow::anyhow!("{when}: turn failed: {s:?}"))?;
        assert_eq!(
            counter,
            self.counter + 1,
            "{when}: the worker's in-memory counter carries on"
        );
        self.counter = counter;
        self.accept_counter_unchanged(client, when).await
    }

    /// The same checks when the test has just taken the turn itself (`counter`), after
    /// `refusals`: a turn refused as "may or may not have run" may have counted.
    async fn took_turn(
        &mut self,
        client: &mut SessionsClient<Channel>,
        counter: u64,
        refusals: &[(Code, String)],
        when: &str,
    ) -> anyhow::Result<()> {
        let maybe_ran = refusals
            .iter()
            .filter(|(_, m)| m.contains("may or may not have run"))
            .count() as u64;
        assert!(
            counter > self.counter && counter <= self.counter + 1 + maybe_ran,
            "{when}: the worker's in-memory counter carries on: {counter} after {} \
             ({maybe_ran} turns may have run)",
            self.counter
        );
        self.counter = counter;
        self.accept_counter_unchanged(client, when).await
    }

    async fn accept_counter_unchanged(
        &mut self,
        client: &mut SessionsClient<Channel>,
        when: &str,
    ) -> anyhow::Result<()> {
        assert_eq!(
            warmups(client, &self.id).await?,
            1,
            "{when}: the worker warmed up once"
        );
        let session = get(client, &self.id).await?;
        assert_eq!(session.state(), SessionState::Ready, "{when}: {session:?}");
        assert_eq!(session.cold_starts, 1, "{when}: {session:?}");
        assert_eq!(
            inspect(&self.id)?,
            self.container,
            "{when}: the same container, not restarted"
        );
        Ok(())
    }
}

/// Polls turns until one succeeds; every failure on the way must be a fast UNAVAILABLE.
/// Returns the counter, when the first good turn came (since `since`) and the refusals.
async fn first_good_turn(
    client: &mut SessionsClient<Channel>,
    id: &str,
    since: Instant,
    what: &str,
) -> anyhow::Result<(u64, Duration, Vec<(Code, String)>)> {
    let mut refusals = Vec::new();
    loop {
        let start = Instant::now();
        match incr(client, id).await {
            Ok(counter) => return Ok((counter, since.elapsed(), refusals)),
            Err(status) => {
                check_refusal(&status, start.elapsed(), what)?;
                refusals.push((status.code(), status.message().to_owned()));
            }
        }
        anyhow::ensure!(
            since.elapsed() < HEAL,
            "{what}: no good turn within {HEAL:?}; last refusals {:?}",
            &refusals[refusals.len().saturating_sub(3)..]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct refusal messages, for the test output.
fn distinct(refusals: &[(Code, String)]) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for (code, message) in refusals {
        *seen.entry(format!("{code:?}: {message}")).or_insert(0) += 1;
    }
    seen.into_iter().map(|(m, n)| format!("{n}x {m}")).collect()
}

/// [`Agent::spawn_docker`], once the first of `brokers` has its node READY.
async fn ready_docker_agent(
    dir: &Path,
    node_id: &str,
    brokers: &[&str],
    gpus: &str,
) -> anyhow::Result<Agent> {
    let agent = Agent::spawn_docker(dir, node_id, brokers, gpus)?;
    api::node_ready(brokers[0], &agent.node_id).await?;
    Ok(agent)
}

/// A single broker on its embedded store under `dir`.
fn lone_broker(dir: &Path) -> anyhow::Result<Broker> {
    let store = dir.join("store").display().to_string();
    Broker::spawn(dir, "broker", &["--store-path", &store])
}

/// The ends of these processes' logs, for failure messages.
fn tails(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| p.log_tail())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn leads(url: &str) -> bool {
    api::cluster_info(url).await.is_ok_and(|i| i.is_leader)
}

/// Reads keys under `prefix` + `under` straight from etcd, bypassing every broker.
async fn etcd_list(
    endpoint: &str,
    prefix: &str,
    under: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let key = format!("{}/{under}", prefix.trim_end_matches('/'));
    let response = client
        .get(key, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect())
}

async fn etcd_sessions(endpoint: &str, prefix: &str) -> anyhow::Result<Vec<Session>> {
    etcd_list(endpoint, prefix, "sessions/")
        .await?
        .into_iter()
        .map(|(_, v)| Ok(Session::decode(v.as_slice())?))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. The agent dies (kill -9) and comes back.

/// While the agent is down, turns are refused at once (the broker has no stream to the
/// node); once it is back, it re-adopts the running container and turns reach the same
/// warm workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_and_restart_keeps_the_session_warm() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let broker = lone_broker(dir.path())?;
    let mut agent = ready_docker_agent(dir.path(), "agent-kill-node", &[&broker.url], "1").await?;
    let mut client = sessions(&broker.url);
    let mut warm = Warm::start(&mut client, &cleanup.marker, &[&broker.proc, &agent.proc]).await?;

    agent.proc.kill();
    let killed = Instant::now();
    let (first, took) = refused_turn(&mut client, &warm.id, "right after the agent died").await?;
    eprintln!(
        "agent kill: first turn refused in {took:?}: {:?} {}",
        first.code(),
        first.message()
    );
    // Still refused, just as fast, a few seconds into the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (later, took_later) = refused_turn(&mut client, &warm.id, "3 s into the outage").await?;
    assert!(
        later.message().contains(&agent.node_id),
        "the refusal names the node: {later:?}"
    );
    assert!(
        inspect(&warm.id)?.running,
        "the container outlives its agent"
    );

    agent.proc.restart()?;
    let outage = killed.elapsed();
    let restarted = Instant::now();
    let (counter, first_good, refusals) =
        first_good_turn(&mut client, &warm.id, restarted, "agent restarting")
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&broker.proc, &agent.proc])))?;
    warm.took_turn(&mut client, counter, &refusals, "after the agent restart")
        .await?;
    eprintln!(
        "agent kill: outage {outage:?}; refusals took {took:?} and {took_later:?}; first good \
         turn {first_good:?} after the restart ({} refused meanwhile: {:?})",
        refusals.len(),
        distinct(&refusals)
    );
    warm.still_warm(&mut client, "one more turn").await?;
    warm.delete(&mut client).await?;
    drop(cleanup);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. The leader broker dies (kill -9): a standby takes over; a lone broker restarts.

/// Turns aimed at the dead leader are refused fast (UNAVAILABLE). Turns aimed at the
/// standby reach the same warm workload at once, through the agent's turn link to it,
/// before the standby has taken over; after the take-over they go on, on the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_9_fails_over_and_the_session_stays_warm() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("faults-failover");
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let (mut a, first, b) = leader_and_standby(dir.path(), &flags).await?;
    let agent = ready_docker_agent(dir.path(), "failover-node", &[&a.url, &b.url], "1").await?;
    let mut on_a = sessions(&a.url);
    let mut on_b = sessions(&b.url);
    let mut warm =
        Warm::start(&mut on_a, &cleanup.marker, &[&a.proc, &b.proc, &agent.proc]).await?;

    a.proc.kill();
    let killed = Instant::now();
    let (at_dead, took) = refused_turn(&mut on_a, &warm.id, "a turn at the dead leader").await?;
    eprintln!(
        "leader kill: the dead leader's address refuses in {took:?}: {}",
        at_dead.message()
    );
    // Watch the take-over while turns go to broker-b.
    let takeover = tokio::spawn({
        let url = b.url.clone();
        async move {
            loop {
                if leads(&url).await {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let (counter, first_good, refusals) =
        first_good_turn(&mut on_b, &warm.id, killed, "failing over")
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&b.proc, &agent.proc])))?;
    let takeover = tokio::time::timeout(Duration::from_secs(5), takeover).await??;
    let info = api::cluster_info(&b.url).await?;
    assert!(info.is_leader && info.epoch > first.epoch, "{info:?}");
    // The first good turn was served by broker-b as a standby, through the turn link:
    // not by waiting for the election.
    let via_link = api::metric(&b.admin, "hearth_broker_turns_via_link_total")
        .await
        .unwrap_or(0.0);
    assert!(
        via_link >= 1.0,
        "broker-b sent no turn through the agent's turn link (first good turn {first_good:?} \
         after the kill, take-over {takeover:?}; refused meanwhile: {:?})\n{}",
        distinct(&refusals),
        tails(&[&b.proc, &agent.proc])
    );
    warm.took_turn(&mut on_b, counter, &refusals, "after the failover")
        .await?;
    eprintln!(
        "leader kill: broker-b leads {takeover:?} after kill -9 of broker-a (epoch {} -> {}); \
         turn gap: first good turn {first_good:?} after the kill ({via_link} turns through \
         the turn link); {} turns refused meanwhile: {:?}",
        first.epoch,
        info.epoch,
        refusals.len(),
        distinct(&refusals)
    );
    warm.still_warm(&mut on_b, "one more turn on the new leader")
        .await?;
    warm.delete(&mut on_b).await?;
    drop(cleanup);
    Ok(())
}

/// A single broker on its embedded store, killed and restarted: turns are refused fast
/// while it is down and reach the same warm workload once it and the agent are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_broker_kill_9_and_restart_keeps_the_session_warm() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let mut broker = lone_broker(dir.path())?;
    let agent = ready_docker_agent(dir.path(), "lone-broker-node", &[&broker.url], "1").await?;
    let mut client = sessions(&broker.url);
    let mut warm = Warm::start(&mut client, &cleanup.marker, &[&broker.proc, &agent.proc]).await?;

    broker.proc.kill();
    let killed = Instant::now();
    let (_, took) = refused_turn(&mut client, &warm.id, "broker down").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.proc.restart()?;
    let outage = killed.elapsed();
    let restarted = Instant::now();
    let (counter, first_good, refusals) =
        first_good_turn(&mut client, &warm.id, restarted, "broker restarting")
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&broker.proc, &agent.proc])))?;
    warm.took_turn(&mut client, counter, &refusals, "after the broker restart")
        .await?;
    eprintln!(
        "lone broker kill: outage {outage:?}, refusal in {took:?}; first good turn \
         {first_good:?} after the restart ({} refused meanwhile: {:?})",
        refusals.len(),
        distinct(&refusals)
    );
    warm.delete(&mut client).await?;
    drop(cleanup);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. etcd goes away for a few seconds and comes back.

/// The leader lease in this test; the outage is kept well under it. (With the default
/// 3 s lease, an etcd restart alone would outlast it.)
const ETCD_TEST_LEADER_TTL: &str = "20s";
/// How long etcd stays down.
const ETCD_OUTAGE: Duration = Duration::from_secs(5);

/// Turns on existing sessions never touch the store, so they keep succeeding while etcd
/// is down. Writes made meanwhile (a keep-alive, a pause, a create) either wait for etcd
/// and succeed, or fail with UNAVAILABLE and succeed when retried; afterwards etcd and the
/// broker agree on every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_turns_going_and_writes_converge() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let Some(mut etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("faults-etcd");
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &[
            "--etcd",
            &endpoint,
            "--etcd-prefix",
            &prefix,
            "--leader-ttl",
            ETCD_TEST_LEADER_TTL,
        ],
    )?;
    until_leads("the broker leads", &broker.url).await?;
    let agent = ready_docker_agent(dir.path(), "etcd-outage-node", &[&broker.url], "3").await?;
    let mut client = sessions(&broker.url);
    let logs = || tails(&[&broker.proc, &agent.proc]);
    let mut warm = Warm::start(&mut client, &cleanup.marker, &[&broker.proc, &agent.proc]).await?;
    let to_pause = Warm::create(&mut client, spec(&cleanup.marker, Duration::ZERO, 1)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    let new_spec = spec(&cleanup.marker, Duration::ZERO, 1)?;
    let request_id = "faults-etcd-outage-create";

    etcd.kill();
    let down = Instant::now();
    // Writes, each in its own task, with a deadline well past the outage.
    let write_deadline = Duration::from_secs(60);
    let keep_alive = tokio::spawn({
        let (mut c, id) = (client.clone(), warm.id.clone());
        async move {
            let start = Instant::now();
            let r = c
                .keep_alive(with_deadline(KeepAliveRequest { id }, write_deadline))
                .await
                .map(|_| ());
            (r, start.elapsed())
        }
    });
    let pause = tokio::spawn({
        let (mut c, id) = (client.clone(), to_pause.id.clone());
        async move {
            let start = Instant::now();
            let r = c
                .pause_session(with_deadline(PauseSessionRequest { id }, write_deadline))
                .await
                .map(|r| r.into_inner());
            (r, start.elapsed())
        }
    });
    let create = tokio::spawn({
        let mut c = client.clone();
        let request = create_request(new_spec.clone(), request_id);
        async move {
            let start = Instant::now();
            let r = c
                .create_session(with_deadline(request, write_deadline))
                .await
                .map(|r| r.into_inner());
            (r, start.elapsed())
        }
    });
    // Turns keep working on the warm session for the whole outage.
    let mut turns = 0;
    let mut slowest = Duration::ZERO;
    while down.elapsed() < ETCD_OUTAGE {
        let start = Instant::now();
        let counter = incr(&mut client, &warm.id).await.map_err(|s| {
            anyhow::anyhow!(
                "a turn failed {:?} into the etcd outage: {s:?}\n{}",
                down.elapsed(),
                logs()
            )
        })?;
        slowest = slowest.max(start.elapsed());
        assert_eq!(counter, warm.counter + 1);
        warm.counter = counter;
        turns += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(turns >= 5, "only {turns} turns in {ETCD_OUTAGE:?}");
    etcd.restart().await;
    let outage = down.elapsed();
    let back = Instant::now();
    assert!(
        leads(&broker.url).await,
        "the broker still leads after an outage shorter than its lease\n{}",
        logs()
    );

    // Each write either succeeded or failed with UNAVAILABLE; a failed one is retried now.
    let retryable = |what: &str, s: &Status| {
        assert_eq!(
            s.code(),
            Code::Unavailable,
            "{what} during the etcd outage failed without a retryable code: {s:?}"
        );
    };
    let (kept, took) = keep_alive.await?;
    let keep_alive_outcome = match kept {
        Ok(()) => format!("KeepAlive succeeded after {took:?}"),
        Err(s) => {
            retryable("KeepAlive", &s);
            client
                .keep_alive(KeepAliveRequest {
                    id: warm.id.clone(),
                })
                .await?;
            format!(
                "KeepAlive refused after {took:?} ({}), retried",
                s.message()
            )
        }
    };
    let (paused, took) = pause.await?;
    let pause_outcome = match paused {
        Ok(s) => {
            assert_eq!(s.state(), SessionState::Paused, "{s:?}");
            format!("PauseSession succeeded after {took:?}")
        }
        Err(s) => {
            retryable("PauseSession", &s);
            // The refused pause left the session READY, so its workload must not be frozen:
            // a turn on it is answered rather than hanging until its deadline.
            assert!(
                !paused_on_host(&to_pause.id)?,
                "PauseSession was refused ({}) but the container is frozen",
                s.message()
            );
            let mut c = client.clone();
            turn(
                &mut c,
                &to_pause.id,
                "GET",
                "/state",
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| anyhow::anyhow!("a turn after the refused pause: {e:?}"))?;
            retry_until_ok("PauseSession", || {
                let mut c = client.clone();
                let id = to_pause.id.clone();
                async move { c.pause_session(PauseSessionRequest { id }).await }
            })
            .await?;
            format!(
                "PauseSession refused after {took:?} ({}), retried",
                s.message()
            )
        }
    };
    let (created, took) = create.await?;
    let (created, create_outcome) = match created {
        Ok(s) => (s, format!("CreateSession succeeded after {took:?}")),
        Err(s) => {
            retryable("CreateSession", &s);
            let created = retry_until_ok("CreateSession", || {
                let mut c = client.clone();
                let request = create_request(new_spec.clone(), request_id);
                async move { c.create_session(request).await }
            })
            .await?
            .into_inner();
            (
                created,
                format!(
                    "CreateSession refused after {took:?} ({}), retried",
                    s.message()
                ),
            )
        }
    };
    let writes_done = back.elapsed();
    assert_eq!(created.state(), SessionState::Ready, "{created:?}");
    warm.still_warm(&mut client, "after the etcd outage")
        .await?;

    // The store agrees with the broker: the same sessions, states, nodes, GPUs, containers.
    let converged = eventually(
        "etcd and the broker agree",
        Duration::from_secs(30),
        || async {
            let mut c = client.clone();
            let listed = c
                .list_sessions(ListSessionsRequest::default())
                .await?
                .into_inner()
                .sessions;
            let stored = etcd_sessions(&endpoint, &prefix).await?;
            let key = |s: &Session| {
                (
                    s.id.clone(),
                    s.state(),
                    s.node_id.clone(),
                    s.gpu_uuids.clone(),
                    s.container_id.clone(),
                    s.cold_starts,
                )
            };
            let mut a: Vec<_> = listed.iter().map(key).collect();
            let mut b: Vec<_> = stored.iter().map(key).collect();
            a.sort();
            b.sort();
            Ok((a == b).then_some(a))
        },
    )
    .await?;
    let states: BTreeMap<&str, SessionState> = converged
        .iter()
        .map(|(id, state, ..)| (id.as_str(), *state))
        .collect();
    assert_eq!(states.len(), 3, "{converged:?}");
    assert_eq!(states[warm.id.as_str()], SessionState::Ready);
    assert_eq!(states[to_pause.id.as_str()], SessionState::Paused);
    assert_eq!(states[created.id.as_str()], SessionState::Ready);
    let requests = etcd_list(
        &endpoint,
        &prefix,
        &format!("requests/default/{request_id}"),
    )
    .await?;
    assert_eq!(
        requests.len(),
        1,
        "one idempotency key for the create: {requests:?}"
    );
    assert_eq!(requests[0].1, created.id.as_bytes());
    eprintln!(
        "etcd outage: etcd down {outage:?} (leader lease {ETCD_TEST_LEADER_TTL}); {turns} turns \
         served meanwhile, slowest {slowest:?}; {keep_alive_outcome}; {pause_outcome}; \
         {create_outcome}; every write done {writes_done:?} after etcd returned"
    );
    for id in [&warm.id, &to_pause.id, &created.id] {
        client
            .delete_session(DeleteSessionRequest { id: id.clone() })
            .await?;
    }
    drop(cleanup);
    Ok(())
}

/// etcd down for longer than the leader lease (3 s, the default): the broker can no
/// longer prove it leads, so it steps down and refuses turns (fast, UNAVAILABLE) instead of
/// serving them unfenced. Once etcd is back it is elected again, the agent reconnects, and
/// the session is the same warm workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_past_the_lease_pauses_service_and_keeps_the_session_warm() -> anyhow::Result<()>
{
    const TTL: Duration = Duration::from_secs(3);
    const OUTAGE: Duration = Duration::from_secs(8);
    if !images::docker_or_skip() {
        return Ok(());
    }
    let Some(mut etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("faults-etcd-long");
    let ttl = humantime_secs(TTL);
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &[
            "--etcd",
            &endpoint,
            "--etcd-prefix",
            &prefix,
            "--leader-ttl",
            &ttl,
        ],
    )?;
    let first = until_leads("the broker leads", &broker.url).await?;
    let agent = ready_docker_agent(dir.path(), "etcd-long-node", &[&broker.url], "1").await?;
    let mut client = sessions(&broker.url);
    let mut warm = Warm::start(&mut client, &cleanup.marker, &[&broker.proc, &agent.proc]).await?;

    etcd.kill();
    let down = Instant::now();
    let (mut served, mut refusals, mut stepped_down) = (0, Vec::new(), None);
    while down.elapsed() < OUTAGE {
        let start = Instant::now();
        match incr(&mut client, &warm.id).await {
            Ok(counter) => {
                assert_eq!(counter, warm.counter + 1);
                warm.counter = counter;
                served += 1;
            }
            Err(status) => {
                check_refusal(&status, start.elapsed(), "etcd down past the lease")?;
                stepped_down.get_or_insert(down.elapsed());
                refusals.push((status.code(), status.message().to_owned()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stepped_down = stepped_down.ok_or_else(|| {
        anyhow::anyhow!("turns were served for {OUTAGE:?} without etcd, past the {TTL:?} lease")
    })?;
    etcd.restart().await;
    let outage = down.elapsed();
    let back = Instant::now();
    let (counter, first_good, more) = first_good_turn(&mut client, &warm.id, back, "etcd back")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&broker.proc, &agent.proc])))?;
    refusals.extend(more);
    // The first good turn may come through the agent's turn link while the broker still
    // takes over (turn_links.rs); the checks below are lifecycle reads, for the leader.
    until_leads("the broker leads again", &broker.url).await?;
    warm.took_turn(
        &mut client,
        counter,
        &refusals,
        "after the long etcd outage",
    )
    .await?;
    let info = api::cluster_info(&broker.url).await?;
    assert!(info.is_leader && info.epoch > first.epoch, "{info:?}");
    eprintln!(
        "long etcd outage: etcd down {outage:?} (leader lease {TTL:?}); {served} turns served, \
         then refused from {stepped_down:?} on; first good turn {first_good:?} after etcd \
         returned (epoch {} -> {}); refusals: {:?}",
        first.epoch,
        info.epoch,
        distinct(&refusals)
    );
    warm.delete(&mut client).await?;
    drop(cleanup);
    Ok(())
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Retries a write for as long as it is refused with UNAVAILABLE (up to [`HEAL`]).
async fn retry_until_ok<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == Code::Unavailable && start.elapsed() < HEAL => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("{what}: {s:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. A create with a request id, interrupted by a leader kill, retried at the new leader.

/// The leader dies while the create waits for its session to warm up, so its answer never
/// reaches the client. The client retries the same `request_id` at the new leader and gets
/// the same session: one record in etcd, one idempotency key, one container, one warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_across_failover_gives_one_session() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("faults-idempotent");
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let (mut a, _, b) = leader_and_standby(dir.path(), &flags).await?;
    let agent = ready_docker_agent(dir.path(), "idempotent-node", &[&a.url, &b.url], "2").await?;

    // A slow warm-up keeps the create waiting at the leader long enough to kill it.
    let request_id = format!("faults-failover-{}", cleanup.marker);
    let create_spec = spec(&cleanup.marker, Duration::from_secs(4), 1)?;
    let first_try = tokio::spawn({
        let mut c = sessions(&a.url);
        let request = create_request(create_spec.clone(), &request_id);
        async move {
            c.create_session(with_deadline(request, Duration::from_secs(60)))
                .await
        }
    });
    let id = eventually(
        "the create's container started",
        Duration::from_secs(30),
        || async {
            let keys = etcd_list(
                &endpoint,
                &prefix,
                &format!("requests/default/{request_id}"),
            )
            .await?;
            let Some((_, id)) = keys.first() else {
                return Ok(None);
            };
            let id = String::from_utf8(id.clone())?;
            Ok(inspect(&id).ok().filter(|c| c.running).map(|_| id))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&a.proc, &b.proc, &agent.proc])))?;
    assert!(
        !first_try.is_finished(),
        "the create answered before the leader could be killed: {:?}",
        first_try.await
    );
    a.proc.kill();
    let killed = Instant::now();
    let lost = first_try.await?;
    let lost = lost.expect_err("the killed leader cannot have answered the create");
    eprintln!(
        "idempotent create: the first try died with the leader: {:?} {}",
        lost.code(),
        lost.message()
    );

    // The retry, same request id, at the other broker until it leads and answers.
    let mut on_b = sessions(&b.url);
    let mut refusals = Vec::new();
    let session = loop {
        let request = create_request(create_spec.clone(), &request_id);
        match on_b
            .create_session(with_deadline(request, Duration::from_secs(60)))
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(s) if s.code() == Code::Unavailable && killed.elapsed() < HEAL => {
                refusals.push((s.code(), s.message().to_owned()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => {
                if std::env::var_os("FAULTS_KEEP").is_some() {
                    eprintln!("kept {}", dir.keep().display());
                }
                anyhow::bail!(
                    "the retried create: {s:?}\n{}",
                    tails(&[&b.proc, &agent.proc])
                )
            }
        }
    };
    let answered = killed.elapsed();
    assert_eq!(
        session.id, id,
        "the retry gives the session the first try made"
    );
    assert_eq!(session.state(), SessionState::Ready, "{session:?}");
    assert_eq!(session.cold_starts, 1);

    // Exactly one of everything, read from etcd and Docker directly.
    let records = etcd_sessions(&endpoint, &prefix).await?;
    assert_eq!(
        records.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()],
        "one session record in etcd"
    );
    let keys = etcd_list(&endpoint, &prefix, "requests/").await?;
    assert_eq!(keys.len(), 1, "one idempotency key: {keys:?}");
    let containers = marked_containers(&cleanup.marker);
    let container = inspect(&id)?;
    assert_eq!(containers, vec![container.id.clone()], "one container");
    assert_eq!(container.restart_count, 0);
    let mut warm = Warm {
        id: id.clone(),
        counter: 0,
        container,
    };
    warm.still_warm(&mut on_b, "after the retried create")
        .await?;
    eprintln!(
        "idempotent create: the retry answered {answered:?} after the leader kill with the \
         same session ({} refusals meanwhile: {:?})",
        refusals.len(),
        distinct(&refusals)
    );
    on_b.delete_session(DeleteSessionRequest { id }).await?;
    drop(cleanup);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. Fencing: a deposed leader's commands are refused by the real agent.

/// One agent stream as a broker sees it, after the agent's Hello.
struct Conn {
    hello: Hello,
    inbound: Streaming<AgentMessage>,
    to_agent: mpsc::Sender<Result<BrokerMessage, Status>>,
}

impl Conn {
    async fn send(&self, msg: broker_message::Msg) -> anyhow::Result<()> {
        self.to_agent
            .send(Ok(BrokerMessage { msg: Some(msg) }))
            .await
            .map_err(|_| anyhow::anyhow!("the agent's stream is closed"))
    }

    async fn welcome(&self, epoch: i64) -> anyhow::Result<()> {
        self.send(broker_message::Msg::Welcome(Welcome {
            epoch,
            broker_id: format!("scripted-leader-epoch-{epoch}"),
            telemetry_interval: Some(hearth_sdk::time::duration(Duration::from_millis(500))),
            suspect_after: None,
            cluster_id: String::new(),
        }))
        .await
    }

    /// The next message that is not telemetry.
    async fn next(&mut self) -> anyhow::Result<agent_message::Msg> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.inbound.message())
                .await
                .map_err(|_| anyhow::anyhow!("no message from the agent in 60 s"))??
                .ok_or_else(|| anyhow::anyhow!("the agent closed its stream"))?;
            match message.msg {
                Some(agent_message::Msg::Telemetry(_)) | None => {}
                Some(other) => return Ok(other),
            }
        }
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        match self.next().await? {
            agent_message::Msg::Reply(r) => Ok(r),
            other => anyhow::bail!("want a Reply, got {other:?}"),
        }
    }

    /// Runs `argv` in the session as a turn with `epoch`: its stdout and exit code, or the
    /// agent's refusal.
    async fn exec(
        &mut self,
        session_id: &str,
        epoch: i64,
        argv: &[&str],
    ) -> anyhow::Result<Result<(String, i32), Reply>> {
        let turn_id = ulid::Ulid::new().to_string();
        self.send(broker_message::Msg::Exec(ExecCommand {
            meta: Some(meta(session_id, epoch)),
            turn_id: turn_id.clone(),
            request: Some(ExecRequest {
                session_id: session_id.to_owned(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..ExecRequest::default()
            }),
        }))
        .await?;
        let mut stdout = Vec::new();
        loop {
            match self.next().await? {
                agent_message::Msg::ExecOutput(out) if out.turn_id == turn_id => {
                    match out.response.and_then(|r| r.event) {
                        Some(exec_response::Event::Stdout(b)) => stdout.extend(b),
                        Some(exec_response::Event::Exit(e)) => {
                            return Ok(Ok((String::from_utf8(stdout)?, e.code)));
                        }
                        _ => {}
                    }
                }
                agent_message::Msg::Reply(r) if r.command_id == turn_id => return Ok(Err(r)),
                other => anyhow::bail!("unexpected message during turn {turn_id}: {other:?}"),
            }
        }
    }
}

fn meta(session_id: &str, epoch: i64) -> CommandMeta {
    CommandMeta {
        command_id: ulid::Ulid::new().to_string(),
        epoch,
        session_id: session_id.to_owned(),
        generation: 1,
    }
}

/// A `NodeAgent` server that hands every agent stream to the test.
struct ScriptedLeader(mpsc::UnboundedSender<Conn>);

type ToAgent = Pin<Box<dyn Stream<Item = Result<BrokerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for ScriptedLeader {
    type ConnectStream = ToAgent;

    async fn connect(
        &self,
        request: tonic::Request<Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }) => hello,
            other => {
                return Err(Status::invalid_argument(format!(
                    "want Hello, got {other:?}"
                )));
            }
        };
        let (to_agent, rx) = mpsc::channel(64);
        let _ = self.0.send(Conn {
            hello,
            inbound,
            to_agent,
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    type ConnectTurnsStream = ToAgent;

    /// No turn links: the tests here script the main stream alone.
    async fn connect_turns(
        &self,
        _: tonic::Request<Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::ConnectTurnsStream>, Status> {
        Err(Status::unimplemented(
            "the scripted leader has no turn links",
        ))
    }
}

async fn scripted_leader() -> anyhow::Result<(String, mpsc::UnboundedReceiver<Conn>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| socket);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeAgentServer::new(ScriptedLeader(tx)))
            .serve_with_incoming(incoming),
    );
    Ok((format!("http://{addr}"), rx))
}

async fn next_conn(conns: &mut mpsc::UnboundedReceiver<Conn>) -> anyhow::Result<Conn> {
    tokio::time::timeout(Duration::from_secs(60), conns.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the agent did not connect within 60 s"))?
        .ok_or_else(|| anyhow::anyhow!("the scripted leader stopped"))
}

/// The real `hearth-agent` (Docker runtime) is welcomed by a leader of epoch 7, which
/// starts a session. After a reconnect a deposed leader (epoch 5) speaks to it: its
/// StopSession and Exec are refused with FAILED_PRECONDITION naming both epochs, and the
/// container keeps running untouched, also after the agent is killed and restarted.
/// Commands of epoch 7 and 8 are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_deposed_leaders_commands() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    const LEADER: i64 = 7;
    const DEPOSED: i64 = 5;
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir()?;
    let (url, mut conns) = scripted_leader().await?;
    let mut agent = Agent::spawn_docker(dir.path(), "fenced-node", &[&url], "1")?;

    let mut leader = next_conn(&mut conns).await?;
    assert_eq!(
        leader.hello.highest_epoch, 0,
        "a fresh agent has seen no epoch"
    );
    leader.welcome(LEADER).await?;
    let session_id = ulid::Ulid::new().to_string();
    let gpu = leader
        .hello
        .gpus
        .first()
        .map(|g| g.uuid.clone())
        .ok_or_else(|| anyhow::anyhow!("no GPU in {:?}", leader.hello))?;
    leader
        .send(broker_message::Msg::StartSession(StartSessionCommand {
            meta: Some(meta(&session_id, LEADER)),
            spec: Some(spec(&cleanup.marker, Duration::ZERO, 1)?),
            gpu_uuids: vec![gpu],
            tenant: "default".to_owned(),
            network: None,
            registry_auth: None,
        }))
        .await?;
    let started = leader.reply().await?;
    assert!(
        started.ok,
        "StartSession: {started:?}\n{}",
        tails(&[&agent.proc])
    );
    loop {
        match leader.next().await? {
            agent_message::Msg::SessionStatus(s) if s.session_id == session_id => match s.state() {
                SessionState::Starting => {}
                SessionState::Ready => break,
                _ => anyhow::bail!(
                    "want the session READY, got {s:?}\n{}",
                    tails(&[&agent.proc])
                ),
            },
            other => anyhow::bail!("want the session READY, got {other:?}"),
        }
    }
    let container = inspect(&session_id)?;
    assert!(container.running);
    let out = leader
        .exec(&session_id, LEADER, &["/worker", "echo", "before"])
        .await?;
    assert_eq!(out, Ok(("before\n".to_owned(), 0)));

    // The leader's stream ends; the agent dials again and meets a deposed leader.
    drop(leader);
    let mut deposed = next_conn(&mut conns).await?;
    assert_eq!(
        deposed.hello.highest_epoch, LEADER,
        "the fence survives a reconnect"
    );
    assert!(
        deposed
            .hello
            .sessions
            .iter()
            .any(|s| s.session_id == session_id),
        "the session is reported running: {:?}",
        deposed.hello.sessions
    );
    deposed.welcome(DEPOSED).await?;
    let stop = meta(&session_id, DEPOSED);
    let stop_id = stop.command_id.clone();
    let sent = Instant::now();
    deposed
        .send(broker_message::Msg::StopSession(StopSessionCommand {
            meta: Some(stop),
            grace: Some(hearth_sdk::time::duration(Duration::from_secs(1))),
        }))
        .await?;
    let refused = deposed.reply().await?;
    let refusal_took = sent.elapsed();
    assert_eq!(refused.command_id, stop_id);
    assert!(!refused.ok, "{refused:?}");
    assert_eq!(refused.code, Code::FailedPrecondition as i32, "{refused:?}");
    assert!(
        refused.message.contains(&format!("epoch {DEPOSED}"))
            && refused.message.contains(&format!("epoch {LEADER}")),
        "the refusal names both epochs: {:?}",
        refused.message
    );
    let refused_exec = deposed
        .exec(&session_id, DEPOSED, &["/worker", "echo", "deposed"])
        .await?
        .expect_err("a deposed leader's turn must not run");
    assert_eq!(
        refused_exec.code,
        Code::FailedPrecondition as i32,
        "{refused_exec:?}"
    );
    assert!(
        refused_exec.message.contains(&format!("epoch {DEPOSED}")),
        "{refused_exec:?}"
    );
    // The workload was not touched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        inspect(&session_id)?,
        container,
        "the container keeps running, not stopped or restarted"
    );

    // The current leader's epoch still gets through.
    let out = deposed
        .exec(&session_id, LEADER, &["/worker", "echo", "after"])
        .await?;
    assert_eq!(
        out,
        Ok(("after\n".to_owned(), 0)),
        "{}",
        tails(&[&agent.proc])
    );

    // A restarted agent remembers the epoch (state_dir/leader-epoch) and still refuses.
    drop(deposed);
    agent.proc.kill();
    agent.proc.restart()?;
    let mut deposed = next_conn(&mut conns).await?;
    assert_eq!(
        deposed.hello.highest_epoch, LEADER,
        "the fence survives kill -9 and restart"
    );
    deposed.welcome(DEPOSED).await?;
    let refused_after_restart = deposed
        .exec(&session_id, DEPOSED, &["/worker", "echo", "deposed"])
        .await?
        .expect_err("a restarted agent must still refuse a deposed leader's turn");
    assert_eq!(
        refused_after_restart.code,
        Code::FailedPrecondition as i32,
        "{refused_after_restart:?}"
    );
    assert!(
        refused_after_restart
            .message
            .contains(&format!("epoch {LEADER}")),
        "{refused_after_restart:?}"
    );
    assert_eq!(
        inspect(&session_id)?,
        container,
        "the container survived the agent restart untouched"
    );
    // A newer leader is obeyed, and its epoch raises the fence.
    let out = deposed
        .exec(&session_id, LEADER + 1, &["/worker", "echo", "newer"])
        .await?;
    assert_eq!(
        out,
        Ok(("newer\n".to_owned(), 0)),
        "{}",
        tails(&[&agent.proc])
    );
    let stop = meta(&session_id, LEADER + 1);
    deposed
        .send(broker_message::Msg::StopSession(StopSessionCommand {
            meta: Some(stop),
            grace: Some(hearth_sdk::time::duration(Duration::from_secs(1))),
        }))
        .await?;
    let stopped = deposed.reply().await?;
    assert!(stopped.ok, "{stopped:?}\n{}", tails(&[&agent.proc]));
    eventually("the container removed", Duration::from_secs(30), || async {
        Ok(inspect(&session_id).is_err().then_some(()))
    })
    .await?;
    eprintln!(
        "fencing: epoch {DEPOSED} refused in {refusal_took:?} after epoch {LEADER}: {:?}",
        refused.message
    );
    drop(cleanup);
    Ok(())
}
