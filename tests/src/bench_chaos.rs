//! `hearth-bench chaos`: turns under random faults, then the invariants that must hold.
//!
//! Starts a real etcd, three `hearth-broker` processes on it (one leads, two stand by)
//! and several `hearth-agent` processes with simulated GPUs: one on the Docker runtime
//! (the test worker image), two on the process runtime on the host and, where network
//! namespaces work (root and `ip netns`), one on the process runtime inside a namespace
//! whose veth the bench can cut. Only one agent uses Docker: an agent lists every Hearth
//! container of its engine as its own, so two agents on one engine (never the case on
//! real hosts) would report each other's workloads.
//!
//! Sessions are pinned round-robin to the agents (a `chaos-node` label and a node
//! selector) and each is driven by its own loop of turns: mostly `Invoke POST /incr`,
//! whose answer is the worker's in-memory counter, and some `Exec` turns. Every turn has
//! a deadline. The client follows the leader by itself: a standby's `hearth-leader`
//! answer names the leader, and a broker that cannot be reached is skipped for the next
//! one. A turn is sent again only when it certainly did not run (the broker said so with
//! `hearth-not-run`, or the connection was refused); such retries are counted apart and
//! the turn counts once, by its final outcome.
//!
//! Meanwhile faults are injected one at a time, in a seeded random order, a few seconds
//! apart: `kill -9` of the broker leader (restarted as a standby once another broker
//! leads), `kill -9` and restart of an agent, a restart of etcd, and a cut of the
//! namespace's link for less than `lost_after`.
//!
//! At the end the load stops, the cluster gets a bounded time to converge, and the bench
//! checks, from etcd, Docker, the process runtime's state and the workers themselves:
//! - `double_booked`: GPUs held by two live sessions ([`crate::allocations::audit`]);
//! - `sessions_lost_silently`: sessions the bench never deleted that are gone from the
//!   store, STOPPED, or live in the store with no workload, all without LOST or FAILED;
//! - `orphans_after_reconcile`: workloads (containers, processes) with no live session;
//! - `extra_cold_starts`: warm-ups beyond one per session, the largest of what the store
//!   says (`cold_starts`), what the worker says (`/state` warm-ups) and what the counter
//!   shows (it starting again from 1);
//! - `turns_failed` by gRPC code and `turns_unanswered` (no answer by the deadline plus
//!   a grace period);
//! - `turn_gap_s`: the worst time from a leader kill to the first success of a turn
//!   started after it (`turn_gap_all_sessions_s`: until every session has had one). Turns
//!   on READY sessions go on through the agents' turn links while the brokers elect a
//!   new leader, so this is far shorter than
//! - `control_plane_failover_s`: the worst time from a leader kill until another broker
//!   says it leads.
//!
//! Every session is then deleted and everything the run created (processes, containers,
//! workloads, the namespace, etcd's data directory) is removed, on errors too.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use etcd_client::GetOptions;
use hearth_sdk::{
    LEADER_METADATA_KEY,
    proto::v1::{
        CreateSessionRequest, DeleteSessionRequest, ExecRequest, GpuRequest, IdleAction,
        InvokeRequest, ListNodesRequest, NodeState, PlacementSpec, Session, SessionState,
        admin_client::AdminClient, create_session_request, exec_response,
        sessions_client::SessionsClient,
    },
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};

use crate::{
    allocations::{self, is_terminal},
    api,
    etcd::{Etcd, unique_prefix},
    images, netns,
    process::{Proc, binary, free_port},
    report,
    sim_agent::XorShift,
};

/// Usage of `hearth-bench chaos`.
pub const USAGE: &str = "usage: hearth-bench chaos [--json] [--faults N] [--sessions N] [--seed S]

chaos   Turns under random faults. A real etcd, 3 brokers on it and 3-4 agents (one on
        Docker, two process-runtime agents on the host, and one in a network namespace
        when running as root); N sessions (default 8) pinned round-robin to the agents,
        each driven by a loop of Invoke /incr and Exec turns with deadlines. N faults
        (default 24, at least 20), one at a time, seeded (default seed 1): kill -9 of the
        broker leader, kill -9 and restart of an agent, an etcd restart, a cut of the
        namespace's link shorter than lost_after. Then checks double bookings, sessions
        lost without LOST/FAILED, orphan workloads, extra cold starts, failed and
        unanswered turns, the worst turn gap after a leader kill and the worst
        control-plane failover.";

/// A turn's deadline, sent to the broker as the request's timeout.
const TURN_DEADLINE: Duration = Duration::from_secs(10);
/// How long past its deadline a turn may stay unanswered before it counts as hung.
const UNANSWERED_GRACE: Duration = Duration::from_secs(5);
/// Broker liveness for the run: short enough that a cut crosses DISCONNECTED.
const SUSPECT_AFTER: &str = "2s";
const DISCONNECTED_AFTER: &str = "4s";
/// Far longer than any cut, so a cut node's sessions must never become LOST.
const LOST_AFTER: &str = "60s";
/// Each cut lasts this long plus up to `CUT_JITTER`: past DISCONNECTED, below lost_after.
const CUT_MIN: Duration = Duration::from_secs(5);
const CUT_JITTER: Duration = Duration::from_secs(4);
/// Pause between faults: this plus up to `SPACING_JITTER`.
const SPACING_MIN: Duration = Duration::from_secs(3);
const SPACING_JITTER: Duration = Duration::from_secs(3);
/// Bound on waiting for the cluster to settle after the load stops.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);
/// Simulated GPUs per agent.
const GPUS_PER_AGENT: u32 = 4;
/// The worker's warm-up, so a cold start takes visible time.
const WARMUP_MS: &str = "300";
/// Node label that pins a session to one agent.
const NODE_LABEL: &str = "chaos-node";

/// Options of `hearth-bench chaos`.
#[derive(Clone, Debug)]
pub struct Options {
    /// End with one JSON line.
    pub json: bool,
    /// Faults to inject (at least 20).
    pub faults: usize,
    /// Sessions under load.
    pub sessions: usize,
    /// Seed of the fault order, targets and timing.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            json: false,
            faults: 24,
            sessions: 8,
            seed: 1,
        }
    }
}

/// Parses the arguments after `chaos`.
pub fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} must be a number, not {v:?}"))
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--faults" => {
                o.faults = number("--faults")? as usize;
                if o.faults < 20 {
                    bail!("--faults must be at least 20, not {}", o.faults);
                }
            }
            "--sessions" => o.sessions = (number("--sessions")? as usize).max(1),
            "--seed" => o.seed = number("--seed")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(o)
}

/// `hearth-bench chaos ARGS`.
pub async fn main(args: &[String]) -> anyhow::Result<()> {
    run(parse(args)?).await
}

// ---------------------------------------------------------------------------------------
// Faults

/// The kinds of fault the bench injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    LeaderKill,
    AgentRestart,
    EtcdRestart,
    NetCut,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::LeaderKill => "leader_kill",
            FaultKind::AgentRestart => "agent_restart",
            FaultKind::EtcdRestart => "etcd_restart",
            FaultKind::NetCut => "net_cut",
        })
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
struct Fault {
    kind: FaultKind,
    target: String,
    /// Since the load started.
    at: Duration,
    /// What happened, in words (the new leader, how long the cut lasted, ...).
    detail: String,
}

// ---------------------------------------------------------------------------------------
// The cluster

/// How an agent runs its sessions.
#[derive(Clone, Debug)]
enum Runtime {
    Docker,
    /// The process runtime, with its state directory.
    Process(PathBuf),
}

/// One agent process and how to reach its sessions' workloads.
struct Node {
    id: String,
    proc: Proc,
    runtime: Runtime,
    /// True for the agent inside the network namespace.
    in_netns: bool,
    /// What `SessionSpec.image` names on this node.
    image: String,
    /// `argv[0]` of an Exec turn: the worker binary as the workload sees it.
    exec_program: String,
}

/// Everything the run started. Dropping it removes all of it: agents first (so nothing
/// restarts a workload), then containers and process workloads of the run's sessions,
/// then brokers, etcd with its data directory, and the namespace.
struct Cluster {
    nodes: Vec<Node>,
    brokers: Vec<(String, Proc)>,
    broker_urls: Vec<String>,
    etcd: Etcd,
    prefix: String,
    netns: Option<netns::Netns>,
    /// Every session id this run created or found in its store.
    session_ids: Arc<Mutex<BTreeSet<String>>>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.proc.kill();
        }
        let ids = lock(&self.session_ids).clone();
        for (session, container) in docker_workloads(&ids) {
            let _ = Command::new("docker")
                .args(["rm", "-f", &container.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = session;
        }
        for node in &self.nodes {
            if let Runtime::Process(dir) = &node.runtime {
                for w in process_workloads(dir) {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", w.pgid)])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        for (_, proc) in &mut self.brokers {
            proc.kill();
        }
        self.etcd.kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container of this run: its id and whether it runs.
struct Container {
    id: String,
    running: bool,
}

/// Hearth containers on this Docker engine whose session is one of `ids`.
fn docker_workloads(ids: &BTreeSet<String>) -> Vec<(String, Container)> {
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=hearth.session",
            "--format",
            "{{.ID}} {{.State}} {{.Label \"hearth.session\"}}",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (id, state, session) = (parts.next()?, parts.next()?, parts.next()?);
            ids.contains(session).then(|| {
                (
                    session.to_owned(),
                    Container {
                        id: id.to_owned(),
                        running: matches!(state, "running" | "paused" | "restarting"),
                    },
                )
            })
        })
        .collect()
}

/// A process-runtime workload recorded in a state directory.
struct ProcessWorkload {
    session: String,
    pgid: i32,
    alive: bool,
}

/// The workloads a process runtime recorded in `state_dir` (`<session>.json` with its
/// process group), and whether each still runs (not gone, not a zombie).
fn process_workloads(state_dir: &Path) -> Vec<ProcessWorkload> {
    let Ok(files) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in files.flatten() {
        let path = file.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(session) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if session.starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(pgid) = text
            .split("\"pgid\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|n| n.trim().parse::<i32>().ok())
            .filter(|pgid| *pgid > 1)
        else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{pgid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state != "Z" && state != "X");
        out.push(ProcessWorkload {
            session: session.to_owned(),
            pgid,
            alive,
        });
    }
    out
}

/// Whether this `hearth-broker` knows `--insecure-listen` (needed to listen on a
/// non-loopback address without TLS where it exists).
fn broker_has_insecure_listen() -> bool {
    binary("hearth-broker")
        .ok()
        .and_then(|b| Command::new(b).arg("--help").output().ok())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("--insecure-listen"))
}

impl Cluster {
    async fn start(o: &Options) -> anyhow::Result<Cluster> {
        let etcd = Etcd::start().await.context("starting etcd")?;
        let prefix = unique_prefix("chaos");
        let dir = tempfile::Builder::new()
            .prefix("hearth-chaos-")
            .tempdir()
            .context("creating the run's directory")?;
        let netns = if netns::available() {
            Some(netns::Netns::create("chaos").context("creating the network namespace")?)
        } else {
            None
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            brokers: Vec::new(),
            broker_urls: Vec::new(),
            etcd,
            prefix,
            netns,
            session_ids: Arc::new(Mutex::new(BTreeSet::new())),
            dir,
        };
        // Brokers listen where the namespace can reach them (the host end of the veth,
        // which stays a local address on the host even while the link is down), and
        // advertise that address so agents and clients can follow the leader.
        let listen_ip = cluster
            .netns
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |ns| ns.host_ip.to_string());
        let insecure = cluster.netns.is_some() && broker_has_insecure_listen();
        for i in 0..3 {
            let name = format!("chaos-b{i}");
            let grpc = format!("{listen_ip}:{}", free_port());
            let url = format!("http://{grpc}");
            let mut args: Vec<String> = [
                "--broker-id",
                &name,
                "--grpc-addr",
                &grpc,
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--advertise-url",
                &url,
                "--etcd",
                &cluster.etcd.endpoint(),
                "--etcd-prefix",
                &cluster.prefix,
                "--suspect-after",
                SUSPECT_AFTER,
                "--disconnected-after",
                DISCONNECTED_AFTER,
                "--lost-after",
                LOST_AFTER,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if insecure {
                args.push("--insecure-listen".to_owned());
            }
            let proc = Proc::spawn(
                &name,
                binary("hearth-broker")?,
                args,
                cluster.dir.path().join(format!("{name}.log")),
            )?;
            cluster.brokers.push((name, proc));
            cluster.broker_urls.push(url);
        }

        let docker = images::docker_or_skip();
        let worker = images::worker_binary().display().to_string();
        let mut plan: Vec<(String, Runtime, bool)> = Vec::new();
        if docker {
            images::worker_image()?;
            plan.push(("chaos-docker".into(), Runtime::Docker, false));
        }
        for i in 1..=2 {
            let id = format!("chaos-proc-{i}");
            let state = cluster.dir.path().join(format!("{id}-state"));
            plan.push((id, Runtime::Process(state), false));
        }
        if cluster.netns.is_some() {
            let state = cluster.dir.path().join("chaos-netns-state");
            plan.push(("chaos-netns".into(), Runtime::Process(state), true));
        }
        let gpus = GPUS_PER_AGENT.max(o.sessions.div_ceil(plan.len().max(1)) as u32);
        for (id, runtime, in_netns) in plan {
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.clone(),
                "--broker".into(),
                cluster.broker_urls.join(","),
                "--admin-addr".into(),
                format!("127.0.0.1:{}", free_port()),
                "--simulate-gpus".into(),
                gpus.to_string(),
                "--label".into(),
                format!("{NODE_LABEL}={id}"),
                "--reconnect-backoff-max".into(),
                "3s".into(),
            ];
            let (image, exec_program) = match &runtime {
                Runtime::Docker => {
                    // Its own state directory too: the agent keeps the highest leader
                    // epoch it has seen there, and the default is shared by the host.
                    args.extend([
                        "--runtime".into(),
                        "docker".into(),
                        "--state-dir".into(),
                        cluster
                            .dir
                            .path()
                            .join(format!("{id}-state"))
                            .display()
                            .to_string(),
                    ]);
                    (images::WORKER_IMAGE.to_owned(), "/worker".to_owned())
                }
                Runtime::Process(state) => {
                    args.extend([
                        "--runtime".into(),
                        "process".into(),
                        "--state-dir".into(),
                        state.display().to_string(),
                    ]);
                    (worker.clone(), worker.clone())
                }
            };
            let agent = binary("hearth-agent")?;
            let log = cluster.dir.path().join(format!("{id}.log"));
            let proc = match (&cluster.netns, in_netns) {
                (Some(ns), true) => {
                    // `ip netns exec` execs the agent, so kill -9 reaches the agent itself.
                    let mut full = vec![
                        "netns".to_owned(),
                        "exec".to_owned(),
                        ns.name.clone(),
                        agent.display().to_string(),
                    ];
                    full.extend(args);
                    Proc::spawn(&id, PathBuf::from("ip"), full, log)?
                }
                _ => Proc::spawn(&id, agent, args, log)?,
            };
            cluster.nodes.push(Node {
                id,
                proc,
                runtime,
                in_netns,
                image,
                exec_program,
            });
        }
        Ok(cluster)
    }

    /// The end of every log, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (_, p) in &self.brokers {
            out.push_str(&p.log_tail());
            out.push('\n');
        }
        for n in &self.nodes {
            out.push_str(&n.proc.log_tail());
            out.push('\n');
        }
        out
    }

    /// Copies every broker and agent log to a directory that outlives the run, for a
    /// reader to investigate; returns it.
    fn keep_logs(&self) -> Option<PathBuf> {
        let kept = std::env::temp_dir().join(format!(
            "hearth-chaos-logs-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&kept).ok()?;
        for file in std::fs::read_dir(self.dir.path()).ok()?.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(&path, kept.join(file.file_name()));
            }
        }
        let _ = std::fs::copy(self.etcd.log_path(), kept.join("etcd.log"));
        Some(kept)
    }

    /// Index of the broker that says it leads, asking each with a short timeout.
    async fn leader(&self) -> Option<usize> {
        for (i, url) in self.broker_urls.iter().enumerate() {
            let info = tokio::time::timeout(Duration::from_secs(2), api::cluster_info(url)).await;
            if let Ok(Ok(info)) = info
                && info.is_leader
            {
                return Some(i);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// A client that follows the leader

/// Every broker, and the one calls go to: the leader as far as the bench knows.
#[derive(Clone)]
struct Brokers {
    urls: Arc<Vec<String>>,
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
}

impl Brokers {
    fn new(urls: &[String]) -> Self {
        Self {
            urls: Arc::new(urls.to_vec()),
            channels: Arc::new(urls.iter().map(|u| api::long_channel(u)).collect()),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn sessions(&self) -> (usize, SessionsClient<Channel>) {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len();
        (i, SessionsClient::new(self.channels[i].clone()))
    }

    /// After a failed call on broker `used`: go to the leader it named, or, when it
    /// could not be reached or did not know a leader, on to the next broker.
    fn after_error(&self, used: usize, status: &Status) {
        if let Some(leader) = status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            && let Some(i) = self.urls.iter().position(|u| u == leader)
        {
            self.current.store(i, Ordering::Relaxed);
            return;
        }
        if matches!(status.code(), Code::Unavailable | Code::Unknown) {
            let next = (used + 1) % self.urls.len();
            let _ = self
                .current
                .compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Runs an idempotent unary call, retrying UNAVAILABLE (and a broken connection)
    /// across brokers until `budget` has passed.
    async fn unary<T, F, Fut>(&self, budget: Duration, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Brokers, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let used = self.current.load(Ordering::Relaxed) % self.urls.len();
            let attempt = tokio::time::timeout(Duration::from_secs(10), f(self.clone(), used))
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("no answer within 10 s")));
            let status = match attempt {
                Ok(v) => return Ok(v),
                Err(s) => s,
            };
            let status = hearth_sdk::error::transport_as_unavailable(status);
            let retryable = status.code() == Code::Unavailable;
            if !retryable || started.elapsed() > budget {
                return Err(status);
            }
            self.after_error(used, &status);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Turns

/// What a turn asks for.
#[derive(Clone, Copy, Debug)]
enum TurnKind {
    /// `POST /incr`: the worker's counter, one up.
    Incr,
    /// `GET /state`: warm-ups and counter.
    State,
    /// `Exec <worker> echo chaos`.
    Exec,
}

/// How one turn ended.
#[derive(Debug)]
enum Outcome {
    /// Answered; the body for Invoke turns.
    Ok(Vec<u8>),
    /// Failed with this code (or a short reason when the answer was wrong).
    Failed(String),
    /// No answer by the deadline plus [`UNANSWERED_GRACE`].
    Unanswered,
}

/// One attempt of a turn on broker `client`.
async fn attempt(
    mut client: SessionsClient<Channel>,
    session: &SessionRef,
    kind: TurnKind,
    timeout: Duration,
) -> Result<Result<Vec<u8>, String>, Status> {
    match kind {
        TurnKind::Incr | TurnKind::State => {
            let (method, path) = match kind {
                TurnKind::Incr => ("POST", "/incr"),
                _ => ("GET", "/state"),
            };
            let request = InvokeRequest {
                session_id: session.id.clone(),
                port: 8080,
                method: method.into(),
                path: path.into(),
                timeout: Some(hearth_sdk::time::duration(timeout)),
                ..InvokeRequest::default()
            };
            let (status, body) = api::invoke_request(&mut client, request).await?;
            Ok(if status == 200 {
                Ok(body)
            } else {
                Err(format!("http_{status}"))
            })
        }
        TurnKind::Exec => {
            let mut stream = client
                .exec(ExecRequest {
                    session_id: session.id.clone(),
                    argv: vec![session.exec_program.clone(), "echo".into(), "chaos".into()],
                    timeout: Some(hearth_sdk::time::duration(timeout)),
                    ..ExecRequest::default()
                })
                .await?
                .into_inner();
            let mut stdout = Vec::new();
            let mut exit = None;
            while let Some(piece) = stream.message().await? {
                match piece.event {
                    Some(exec_response::Event::Stdout(b)) => stdout.extend_from_slice(&b),
                    Some(exec_response::Event::Exit(e)) => exit = Some(e.code),
                    _ => {}
                }
            }
            Ok(if exit == Some(0) && stdout == b"chaos\n" {
                Ok(stdout)
            } else {
                Err("exec_wrong_output".to_owned())
            })
        }
    }
}

/// One turn with its deadline, following the leader and retrying only what did not run.
/// Returns the outcome and how many times it was sent again.
async fn turn(brokers: &Brokers, session: &SessionRef, kind: TurnKind) -> (Outcome, u64) {
    let started = Instant::now();
    let mut retries = 0;
    let run = async {
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = TURN_DEADLINE.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Outcome::Failed("DeadlineExceeded(client)".to_owned());
            }
            let (used, client) = brokers.sessions();
            match attempt(client, session, kind, left).await {
                Ok(Ok(body)) => return Outcome::Ok(body),
                Ok(Err(reason)) => return Outcome::Failed(reason),
                Err(status) => {
                    brokers.after_error(used, &status);
                    if !hearth_sdk::error::certainly_not_run(&status)
                        || started.elapsed() + backoff >= TURN_DEADLINE
                    {
                        // Counted by the code the SDK would report (a connection that
                        // broke under the call is UNAVAILABLE, not tonic's UNKNOWN).
                        let status = hearth_sdk::error::transport_as_unavailable(status);
                        return Outcome::Failed(format!("{:?}", status.code()));
                    }
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    };
    let outcome = tokio::time::timeout(TURN_DEADLINE + UNANSWERED_GRACE, run)
        .await
        .unwrap_or(Outcome::Unanswered);
    (outcome, retries)
}

/// A session under load.
#[derive(Clone, Debug)]
struct SessionRef {
    id: String,
    node: String,
    exec_program: String,
}

/// What the load saw, shared by every session loop.
#[derive(Default)]
struct LoadStats {
    ok: u64,
    failed: BTreeMap<String, u64>,
    unanswered: u64,
    retries: u64,
    /// Per session: times the counter started again from 1 (a cold worker).
    counter_resets: BTreeMap<String, u64>,
    /// Per session: `/incr` answers that skipped numbers (turns that ran but whose
    /// answer was lost, such as one cut off mid-stream).
    counter_skips: BTreeMap<String, u64>,
    /// Leader kills, in order.
    failovers: Vec<Failover>,
    /// Sessions whose loop still runs.
    driven: usize,
    /// Sessions whose loop ended because the session ended (LOST, FAILED), with its
    /// state and reason.
    ended: Vec<String>,
}

/// One leader kill, when another broker led and when turns succeeded again after it.
struct Failover {
    killed: Instant,
    /// When another broker said it leads.
    takeover: Option<Duration>,
    /// The first success of any turn started after the kill.
    first: Option<Duration>,
    /// Per session, its first success of a turn started after the kill.
    per_session: HashMap<String, Duration>,
    /// Sessions still driven when the leader was killed (not ended as LOST or FAILED).
    driven: usize,
}

/// The session's state and reason if it has ended (terminal in the leader's view).
async fn session_ended(brokers: &Brokers, id: &str) -> Option<String> {
    let id = id.to_owned();
    let session = brokers
        .unary(Duration::from_secs(10), |b, i| {
            let id = id.clone();
            async move {
                SessionsClient::new(b.channels[i].clone())
                    .get_session(hearth_sdk::proto::v1::GetSessionRequest { id })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .ok()?;
    is_terminal(session.state()).then(|| {
        format!(
            "{} ({})",
            session.state().as_str_name(),
            session.state_reason
        )
    })
}

/// Drives one session until `stop`: mostly `/incr`, every fifth turn an Exec.
async fn session_loop(
    brokers: Brokers,
    session: SessionRef,
    stats: Arc<Mutex<LoadStats>>,
    stop: CancellationToken,
    seed: u64,
) {
    let mut rng = XorShift::new(seed);
    let mut last_counter: u64 = 0;
    lock(&stats).driven += 1;
    while !stop.is_cancelled() {
        let kind = if rng.next_u64().is_multiple_of(5) {
            TurnKind::Exec
        } else {
            TurnKind::Incr
        };
        let started = Instant::now();
        let (outcome, retries) = turn(&brokers, &session, kind).await;
        let finished = Instant::now();
        let gone = matches!(&outcome, Outcome::Failed(code) if code == "NotFound" || code == "FailedPrecondition");
        {
            let mut s = lock(&stats);
            s.retries += retries;
            match outcome {
                Outcome::Ok(body) => {
                    s.ok += 1;
                    for f in &mut s.failovers {
                        if started >= f.killed {
                            let took = finished - f.killed;
                            f.first.get_or_insert(took);
                            f.per_session.entry(session.id.clone()).or_insert(took);
                        }
                    }
                    if let TurnKind::Incr = kind {
                        match String::from_utf8_lossy(&body).trim().parse::<u64>() {
                            Ok(counter) if counter == last_counter + 1 => {}
                            Ok(counter) if counter > last_counter => {
                                *s.counter_skips.entry(session.id.clone()).or_default() += 1;
                            }
                            Ok(_) => {
                                *s.counter_resets.entry(session.id.clone()).or_default() += 1;
                            }
                            Err(_) => *s.failed.entry("bad_counter".to_owned()).or_default() += 1,
                        }
                        if let Ok(counter) = String::from_utf8_lossy(&body).trim().parse::<u64>() {
                            last_counter = counter;
                        }
                    }
                }
                Outcome::Failed(code) => *s.failed.entry(code).or_default() += 1,
                Outcome::Unanswered => s.unanswered += 1,
            }
        }
        if gone && let Some(ended) = session_ended(&brokers, &session.id).await {
            // A client would stop using an ended session; turns on it only repeat NotFound.
            let mut s = lock(&stats);
            s.driven -= 1;
            s.ended.push(format!("{}: {ended}", session.id));
            return;
        }
        let pause = Duration::from_millis(150 + rng.next_u64() % 150);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run

async fn run(o: Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&o).await?;
    let result = exercise(&o, &mut cluster).await;
    if let Err(e) = &result {
        eprintln!("chaos run failed: {e:#}\n{}", cluster.log_tails());
        if let Some(kept) = cluster.keep_logs() {
            eprintln!("logs kept in {}", kept.display());
        }
    }
    drop(cluster);
    result
}

/// Reads every session record under the run's prefix.
async fn store_sessions(endpoint: &str, prefix: &str) -> anyhow::Result<HashMap<String, Session>> {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))?;
    let key = format!("{}/sessions/", prefix.trim_end_matches('/'));
    let response = client
        .get(key.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {key}*"))?;
    let mut out = HashMap::new();
    for kv in response.kvs() {
        let s = Session::decode(kv.value()).context("decoding a session record")?;
        out.insert(s.id.clone(), s);
    }
    Ok(out)
}

/// Nodes READY on the leader, by id.
async fn ready_nodes(brokers: &Brokers) -> BTreeSet<String> {
    brokers
        .unary(Duration::from_secs(5), |b, i| async move {
            let mut admin = AdminClient::new(b.channels[i].clone());
            admin
                .list_nodes(ListNodesRequest::default())
                .await
                .map(|r| r.into_inner())
        })
        .await
        .map(|r| {
            r.nodes
                .into_iter()
                .filter(|n| n.state() == NodeState::Ready)
                .map(|n| n.id)
                .collect()
        })
        .unwrap_or_default()
}

/// What the end-of-run checks found.
#[derive(Default)]
struct Findings {
    lost_silently: Vec<String>,
    lost_reported: Vec<String>,
    orphans: Vec<String>,
    extra_cold_starts: u64,
    cold_starts_unreported: Vec<String>,
    double_booked: usize,
    audit_clean: bool,
    audit_examples: Vec<String>,
}

/// Checks the invariants, from etcd, the runtimes and the workers.
async fn check(
    cluster: &Cluster,
    brokers: &Brokers,
    sessions: &[SessionRef],
    stats: &LoadStats,
) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let audit = allocations::audit(&cluster.etcd.endpoint(), &cluster.prefix).await?;
    f.double_booked = audit.double_booked;
    f.audit_clean = audit.clean();
    f.audit_examples = audit.examples.clone();

    let records = store_sessions(&cluster.etcd.endpoint(), &cluster.prefix).await?;
    lock(&cluster.session_ids).extend(records.keys().cloned());
    let all_ids = lock(&cluster.session_ids).clone();
    let containers = docker_workloads(&all_ids);
    let mut running: BTreeSet<String> = containers
        .iter()
        .filter(|(_, c)| c.running)
        .map(|(s, _)| s.clone())
        .collect();
    let mut process: Vec<ProcessWorkload> = Vec::new();
    for node in &cluster.nodes {
        if let Runtime::Process(dir) = &node.runtime {
            process.extend(process_workloads(dir));
        }
    }
    running.extend(
        process
            .iter()
            .filter(|w| w.alive)
            .map(|w| w.session.clone()),
    );
    let live = |id: &str| records.get(id).is_some_and(|r| !is_terminal(r.state()));

    for s in sessions {
        match records.get(&s.id) {
            None => f
                .lost_silently
                .push(format!("{} on {}: no record in the store", s.id, s.node)),
            Some(r) if matches!(r.state(), SessionState::Lost | SessionState::Failed) => {
                f.lost_reported.push(format!(
                    "{} {}: {}",
                    s.id,
                    r.state().as_str_name(),
                    r.state_reason
                ))
            }
            Some(r) if is_terminal(r.state()) || r.state() == SessionState::Stopping => {
                f.lost_silently.push(format!(
                    "{} on {}: {} ({}) though never deleted",
                    s.id,
                    s.node,
                    r.state().as_str_name(),
                    r.state_reason
                ))
            }
            Some(r) if !running.contains(&s.id) => f.lost_silently.push(format!(
                "{} on {}: {} in the store but no workload runs",
                s.id,
                s.node,
                r.state().as_str_name()
            )),
            Some(r) => {
                // Live with a workload: how many times did it warm up?
                let (outcome, _) = turn(brokers, s, TurnKind::State).await;
                let warmups = match outcome {
                    Outcome::Ok(body) => api::json_field(&body, "warmups")
                        .and_then(|w| w.parse::<u64>().ok())
                        .unwrap_or(0),
                    _ => 0,
                };
                let resets = stats.counter_resets.get(&s.id).copied().unwrap_or(0);
                let by_store = u64::from(r.cold_starts);
                let most = by_store.max(warmups).max(1 + resets);
                f.extra_cold_starts += most - 1;
                if most > by_store {
                    f.cold_starts_unreported.push(format!(
                        "{} on {}: store says {} cold start(s), worker warm-ups {}, counter restarts {}",
                        s.id, s.node, by_store, warmups, resets
                    ));
                }
            }
        }
    }
    for (session, c) in &containers {
        if c.running && !live(session) {
            f.orphans
                .push(format!("container {} of session {session}", c.id));
        }
    }
    for w in &process {
        if w.alive && !live(&w.session) {
            f.orphans
                .push(format!("process group {} of session {}", w.pgid, w.session));
        }
    }
    Ok(f)
}

/// Whether everything agrees: every node READY, every session of the run live with a
/// running workload or terminal, and no workload without a live session.
async fn converged(cluster: &Cluster, brokers: &Brokers) -> anyhow::Result<bool> {
    let ready = ready_nodes(brokers).await;
    if cluster.nodes.iter().any(|n| !ready.contains(&n.id)) {
        return Ok(false);
    }
    let records = store_sessions(&cluster.etcd.endpoint(), &cluster.prefix).await?;
    let ids: BTreeSet<String> = records.keys().cloned().collect();
    let mut running: BTreeSet<String> = docker_workloads(&ids)
        .into_iter()
        .filter(|(_, c)| c.running)
        .map(|(s, _)| s)
        .collect();
    for node in &cluster.nodes {
        if let Runtime::Process(dir) = &node.runtime {
            running.extend(
                process_workloads(dir)
                    .into_iter()
                    .filter(|w| w.alive)
                    .map(|w| w.session),
            );
        }
    }
    let settled = records.values().all(|r| {
        let live = !is_terminal(r.state());
        let steady = matches!(r.state(), SessionState::Ready | SessionState::Paused) || !live;
        steady && live == running.contains(&r.id)
    });
    Ok(settled && running.iter().all(|id| records.contains_key(id)))
}

async fn exercise(o: &Options, cluster: &mut Cluster) -> anyhow::Result<()> {
    let brokers = Brokers::new(&cluster.broker_urls);
    let mut rng = XorShift::new(o.seed);

    // Wait for a leader and every agent.
    let setup = Instant::now();
    crate::eventually(
        "a leader and every agent READY",
        Duration::from_secs(60),
        || {
            let brokers = brokers.clone();
            let want: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
            async move {
                let ready = ready_nodes(&brokers).await;
                Ok(want.iter().all(|id| ready.contains(id)).then_some(()))
            }
        },
    )
    .await?;

    // Sessions, round-robin over the agents.
    let mut sessions = Vec::new();
    for i in 0..o.sessions {
        let node = &cluster.nodes[i % cluster.nodes.len()];
        let mut spec = images::worker_spec(node.image.clone());
        spec.env.insert("WARMUP_MS".into(), WARMUP_MS.into());
        spec.gpus = Some(GpuRequest {
            count: 1,
            ..GpuRequest::default()
        });
        spec.idle_action = IdleAction::Keep as i32;
        spec.placement = Some(PlacementSpec {
            node_selector: [(NODE_LABEL.to_owned(), node.id.clone())].into(),
            ..PlacementSpec::default()
        });
        let request = CreateSessionRequest {
            source: Some(create_session_request::Source::Spec(spec)),
            request_id: ulid::Ulid::new().to_string(),
            labels: [("chaos".to_owned(), i.to_string())].into(),
            no_wait: false,
        };
        let created = brokers
            .unary(Duration::from_secs(60), |b, i| {
                let request = request.clone();
                async move {
                    SessionsClient::new(b.channels[i].clone())
                        .create_session(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
            .with_context(|| format!("creating session {i} on {}", node.id))?;
        lock(&cluster.session_ids).insert(created.id.clone());
        if created.state() != SessionState::Ready {
            bail!(
                "session {} on {} is {} ({})",
                created.id,
                node.id,
                created.state().as_str_name(),
                created.state_reason
            );
        }
        sessions.push(SessionRef {
            id: created.id,
            node: node.id.clone(),
            exec_program: node.exec_program.clone(),
        });
    }
    let setup_s = setup.elapsed().as_secs_f64();

    // Load.
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        loops.push(tokio::spawn(session_loop(
            brokers.clone(),
            s.clone(),
            stats.clone(),
            stop.clone(),
            o.seed.wrapping_mul(1000).wrapping_add(i as u64 + 1),
        )));
    }
    let load_started = Instant::now();

    // Faults.
    let mut kinds = vec![
        FaultKind::LeaderKill,
        FaultKind::AgentRestart,
        FaultKind::EtcdRestart,
    ];
    if cluster.netns.is_some() {
        kinds.push(FaultKind::NetCut);
    }
    let mut faults: Vec<Fault> = Vec::new();
    let mut bag: Vec<FaultKind> = Vec::new();
    let jitter =
        |rng: &mut XorShift, base: Duration, spread: Duration| base + spread.mul_f64(rng.unit());
    for _ in 0..o.faults {
        tokio::time::sleep(jitter(&mut rng, SPACING_MIN, SPACING_JITTER)).await;
        // Every kind once per round, in a shuffled order: random but covering all kinds.
        if bag.is_empty() {
            bag = kinds.clone();
            rng.shuffle(&mut bag);
        }
        let kind = bag.pop().unwrap_or(FaultKind::AgentRestart);
        let at = load_started.elapsed();
        let (target, detail) = match kind {
            FaultKind::LeaderKill => {
                let Some(leader) = cluster.leader().await else {
                    faults.push(Fault {
                        kind,
                        target: "-".into(),
                        at,
                        detail: "skipped: no broker said it leads".into(),
                    });
                    continue;
                };
                let killed = Instant::now();
                cluster.brokers[leader].1.kill();
                {
                    let mut s = lock(&stats);
                    let driven = s.driven;
                    s.failovers.push(Failover {
                        killed,
                        takeover: None,
                        first: None,
                        per_session: HashMap::new(),
                        driven,
                    });
                }
                let mut new_leader = None;
                while killed.elapsed() < Duration::from_secs(30) {
                    if let Some(l) = cluster.leader().await
                        && l != leader
                    {
                        new_leader = Some(l);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let took = killed.elapsed().as_secs_f64();
                if new_leader.is_some()
                    && let Some(f) = lock(&stats).failovers.last_mut()
                {
                    f.takeover = Some(killed.elapsed());
                }
                cluster.brokers[leader]
                    .1
                    .restart()
                    .context("restarting the killed leader")?;
                let detail = match new_leader {
                    Some(l) => format!(
                        "{} leads after {took:.1}s; restarted as a standby",
                        cluster.brokers[l].0
                    ),
                    None => format!("no new leader within {took:.0}s; restarted"),
                };
                (cluster.brokers[leader].0.clone(), detail)
            }
            FaultKind::AgentRestart => {
                let i = (rng.next_u64() % cluster.nodes.len() as u64) as usize;
                let down = jitter(&mut rng, Duration::from_millis(500), Duration::from_secs(2));
                let node = &mut cluster.nodes[i];
                node.proc.kill();
                tokio::time::sleep(down).await;
                node.proc.restart().context("restarting an agent")?;
                (
                    node.id.clone(),
                    format!("kill -9, restarted after {:.1}s", down.as_secs_f64()),
                )
            }
            FaultKind::EtcdRestart => {
                let t = Instant::now();
                cluster.etcd.restart().await;
                (
                    "etcd".to_owned(),
                    format!(
                        "kill -9, answering again after {:.1}s",
                        t.elapsed().as_secs_f64()
                    ),
                )
            }
            FaultKind::NetCut => {
                let Some(ns) = &cluster.netns else { continue };
                let node = cluster
                    .nodes
                    .iter()
                    .find(|n| n.in_netns)
                    .map_or_else(|| ns.name.clone(), |n| n.id.clone());
                let cut = jitter(&mut rng, CUT_MIN, CUT_JITTER);
                ns.cut()?;
                tokio::time::sleep(cut).await;
                ns.restore()?;
                (
                    node,
                    format!(
                        "link down for {:.1}s (lost_after {LOST_AFTER})",
                        cut.as_secs_f64()
                    ),
                )
            }
        };
        faults.push(Fault {
            kind,
            target,
            at,
            detail,
        });
    }
    // A last stretch of load after the final fault, so its recovery is seen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    let load_s = load_started.elapsed().as_secs_f64();

    // Convergence, bounded.
    let t = Instant::now();
    let mut is_converged = false;
    while t.elapsed() < CONVERGE_DEADLINE {
        if converged(cluster, &brokers).await.unwrap_or(false) {
            is_converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converge_s = t.elapsed().as_secs_f64();

    let stats = std::mem::take(&mut *lock(&stats));
    let findings = check(cluster, &brokers, &sessions, &stats).await?;

    // Delete every session; the cluster's drop removes whatever is left.
    let mut delete_errors = 0;
    for s in &sessions {
        let id = s.id.clone();
        let deleted = brokers
            .unary(Duration::from_secs(30), |b, i| {
                let id = id.clone();
                async move {
                    SessionsClient::new(b.channels[i].clone())
                        .delete_session(DeleteSessionRequest { id })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await;
        if deleted.is_err() {
            delete_errors += 1;
        }
    }

    // Figures.
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in &faults {
        *by_kind.entry(f.kind.to_string()).or_default() += 1;
    }
    // Per kill: another broker leading, turns succeeding again at all, and on every
    // session.
    let failovers: Vec<(Option<Duration>, Option<Duration>, Option<Duration>)> = stats
        .failovers
        .iter()
        .map(|f| {
            let all = (f.per_session.len() >= f.driven)
                .then(|| f.per_session.values().max().copied())
                .flatten();
            (f.takeover, f.first, all)
        })
        .collect();
    let unrecovered = failovers.iter().filter(|f| f.1.is_none()).count();
    let worst = |times: &mut dyn Iterator<Item = Duration>| {
        times.map(|d| d.as_secs_f64()).fold(0.0, f64::max)
    };
    let control_plane_failover_s = worst(&mut failovers.iter().filter_map(|f| f.0));
    let turn_gap_s = worst(&mut failovers.iter().filter_map(|f| f.1));
    let turn_gap_all_sessions_s = worst(&mut failovers.iter().filter_map(|f| f.2));
    let turns_failed: u64 = stats.failed.values().sum();
    let json_map = |m: &BTreeMap<String, u64>| {
        let fields: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    };
    let by_kind_json = {
        let fields: Vec<String> = by_kind
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let counter_resets: u64 = stats.counter_resets.values().sum();
    let counter_skips: u64 = stats.counter_skips.values().sum();
    let injected = faults.iter().filter(|f| f.target != "-").count();

    println!("machine: {}", report::machine());
    println!(
        "cluster: etcd, {} brokers, agents {} ({} sessions, {} simulated GPUs each agent)",
        cluster.brokers.len(),
        cluster
            .nodes
            .iter()
            .map(|n| format!(
                "{}[{}]",
                n.id,
                match (&n.runtime, n.in_netns) {
                    (Runtime::Docker, _) => "docker",
                    (Runtime::Process(_), true) => "process, netns",
                    (Runtime::Process(_), false) => "process",
                }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        sessions.len(),
        GPUS_PER_AGENT,
    );
    if cluster.netns.is_none() {
        println!("note: no network namespaces here (needs root and ip netns): no cut faults");
    }
    println!(
        "liveness: suspect {SUSPECT_AFTER}, disconnected {DISCONNECTED_AFTER}, lost {LOST_AFTER}; turn deadline {}s (+{}s before a turn counts as unanswered)",
        TURN_DEADLINE.as_secs(),
        UNANSWERED_GRACE.as_secs()
    );
    println!("faults (seed {}):", o.seed);
    for (i, f) in faults.iter().enumerate() {
        println!(
            "  {:>2}  t={:>6.1}s  {:<13}  {:<12}  {}",
            i + 1,
            f.at.as_secs_f64(),
            f.kind.to_string(),
            f.target,
            f.detail
        );
    }
    for (i, (takeover, first, all)) in failovers.iter().enumerate() {
        let secs = |d: &Option<Duration>| {
            d.map_or("never".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()))
        };
        println!(
            "  leader kill {}: turns succeed again after {}, on every session after {}; \
             another broker leads after {}",
            i + 1,
            secs(first),
            secs(all),
            secs(takeover)
        );
    }
    if !stats.failed.is_empty() {
        println!("turns failed by code:");
        for (code, n) in &stats.failed {
            println!("  {code}: {n}");
        }
    }
    for (title, list) in [
        (
            "sessions whose turns stopped because they ended",
            &stats.ended,
        ),
        ("sessions lost silently", &findings.lost_silently),
        (
            "sessions LOST or FAILED (reported)",
            &findings.lost_reported,
        ),
        ("orphan workloads", &findings.orphans),
        (
            "cold starts the store did not count",
            &findings.cold_starts_unreported,
        ),
        ("allocation audit", &findings.audit_examples),
    ] {
        if !list.is_empty() {
            println!("{title}:");
            for line in list {
                println!("  {line}");
            }
        }
    }
    let report = [
        ("faults_injected", injected.to_string()),
        ("faults_by_kind", by_kind_json),
        (
            "sessions_lost_silently",
            findings.lost_silently.len().to_string(),
        ),
        ("double_booked", findings.double_booked.to_string()),
        (
            "orphans_after_reconcile",
            findings.orphans.len().to_string(),
        ),
        ("extra_cold_starts", findings.extra_cold_starts.to_string()),
        ("turns_failed", turns_failed.to_string()),
        ("turns_failed_by_code", json_map(&stats.failed)),
        ("turns_unanswered", stats.unanswered.to_string()),
        ("turn_gap_s", format!("{turn_gap_s:.2}")),
        (
            "turn_gap_all_sessions_s",
            format!("{turn_gap_all_sessions_s:.2}"),
        ),
        (
            "control_plane_failover_s",
            format!("{control_plane_failover_s:.2}"),
        ),
        ("failovers_unrecovered", unrecovered.to_string()),
        ("turns_ok", stats.ok.to_string()),
        ("turn_retries_not_run", stats.retries.to_string()),
        ("counter_restarts", counter_resets.to_string()),
        ("counter_skips", counter_skips.to_string()),
        ("sessions", sessions.len().to_string()),
        (
            "sessions_lost_reported",
            findings.lost_reported.len().to_string(),
        ),
        ("allocations_clean", findings.audit_clean.to_string()),
        ("converged", is_converged.to_string()),
        ("converge_s", format!("{converge_s:.1}")),
        ("delete_errors", delete_errors.to_string()),
        ("setup_s", format!("{setup_s:.1}")),
        ("load_s", format!("{load_s:.1}")),
        ("seed", o.seed.to_string()),
    ];
    let violated = !findings.lost_silently.is_empty()
        || !findings.lost_reported.is_empty()
        || !findings.orphans.is_empty()
        || findings.double_booked > 0
        || findings.extra_cold_starts > 0
        || stats.unanswered > 0
        || !is_converged;
    if violated && let Some(kept) = cluster.keep_logs() {
        println!("logs kept in {}", kept.display());
    }
    report::print(&report, 26);
    if o.json {
        println!("{}", report::json_line(&report));
    }
    Ok(())
}
