//! SIMULATED node agents: many GPU hosts in one process, for tests and benchmarks.
//!
//! Nothing here is real hardware or a real workload. Each simulated host speaks the real
//! `NodeAgent.Connect` protocol to a real broker over gRPC, exactly as `hearth-agent` does
//! (node-agent/src/link.rs, node-agent/src/sessions.rs), but it runs nothing: a start
//! only records the session, so the broker sees a host that answers every command at once.
//! Everything it reports is labelled simulated: `gpu_source` is `GPU_SOURCE_SIMULATED`,
//! every GPU and telemetry sample says `simulated: true` (the inventory and samples come
//! from the agent's own `--simulate-gpus` source, so UUIDs start with `GPU-SIM-`), the node
//! carries the label `hearth.simulated=true`, the runtime is `simulated` and the version
//! ends in `-simulated`.
//!
//! # Protocol, as the real agent speaks it
//! - Dial, send `Hello` (inventory, the workloads it "runs", the highest epoch seen), wait
//!   for `Welcome` within `hello_timeout`. A standby's refusal (`UNAVAILABLE` with
//!   `hearth-leader`) makes the named leader the next broker dialled; otherwise brokers are
//!   tried round-robin, with full-jitter backoff between attempts.
//! - Telemetry every interval (the broker's `Welcome` decides unless overridden). It goes
//!   through a bounded mailbox with `try_send`, and is dropped and counted when the broker
//!   is not reading, as the real agent does.
//! - Fencing: a command whose epoch is lower than the highest seen is refused with a
//!   not-ok `Reply`, `FAILED_PRECONDITION`; so is one for a generation older than the one
//!   the host runs.
//! - StartSession: `Reply{ok, container_id}`, `SessionStatus STARTING`, then `READY` at
//!   once (as the real agent does for a spec without a readiness probe). A repeat of the
//!   running generation answers ok again without a restart.
//! - StopSession: `Reply ok`, `SessionStatus STOPPED`. Pause / Resume: `Reply ok`,
//!   `SessionStatus PAUSED` / `READY`.
//! - Exec / Invoke: one not-ok `Reply` (`UNIMPLEMENTED`) keyed by the turn id, since no
//!   workload exists to run them.
//!
//! # Sharing connections
//! A thousand hosts must fit in one process, so hosts share HTTP/2 connections: host `i`
//! uses connection `i / streams_per_channel` to a broker, and each host's stream is one
//! HTTP/2 stream on it. HTTP/2 keepalive pings (10 s / 5 s by default, as the real agent)
//! notice a broker that stopped answering; when a connection dies, every host on it
//! reconnects, just as that many real agents would.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hearth_agent::{backoff::Backoff, gpu::GpuInventory as _, gpu::simulated::SimulatedGpus};
use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CommandMeta, GpuSource, Hello, NodeCapacity, NodeTelemetry, Reply,
    RunningSession, SessionState, SessionStatus, agent_message, broker_message,
    node_agent_client::NodeAgentClient,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

/// The label every simulated node carries.
pub const SIMULATED_LABEL: (&str, &str) = ("hearth.simulated", "true");
/// The runtime name simulated hosts report in `Hello`.
pub const RUNTIME: &str = "simulated";
/// Agent messages that may wait for the broker to read them (as the real agent).
pub const MAILBOX: usize = 64;
/// Floor on the telemetry interval, so a bad `Welcome` cannot make a busy loop.
const MIN_TELEMETRY_INTERVAL: Duration = Duration::from_millis(10);

/// How a simulated fleet is made and behaves.
#[derive(Clone, Debug)]
pub struct SimFleetConfig {
    /// Broker gRPC URLs, tried round-robin (a standby's leader hint goes first).
    pub brokers: Vec<String>,
    /// Number of simulated hosts.
    pub hosts: usize,
    /// Simulated GPUs per host.
    pub gpus_per_host: u32,
    /// Node ids are this prefix plus a zero-padded index: `sim-host-0007`.
    pub node_prefix: String,
    /// Model name of every simulated GPU.
    pub gpu_model: String,
    /// Memory of every simulated GPU, in bytes.
    pub gpu_memory_bytes: u64,
    /// Hosts that share one HTTP/2 connection to a broker.
    pub streams_per_channel: usize,
    /// Telemetry interval; `None` uses the one the broker's `Welcome` asks for.
    pub telemetry_interval: Option<Duration>,
    /// Each host waits a random time up to this before its first dial, so a fleet's
    /// telemetry is spread over the interval rather than sent in one burst.
    pub start_jitter: Duration,
    /// HTTP/2 keepalive ping period and timeout.
    pub keepalive: (Duration, Duration),
    /// How long a dialled broker has to answer `Hello` with `Welcome`.
    pub hello_timeout: Duration,
    /// Reconnect backoff floor and cap (full jitter).
    pub backoff: (Duration, Duration),
    /// Images a host reports holding in its `Hello`, by host index (none when absent).
    pub images: BTreeMap<usize, Vec<String>>,
}

impl Default for SimFleetConfig {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            hosts: 1,
            gpus_per_host: 8,
            node_prefix: "sim-host-".to_owned(),
            gpu_model: "Simulated H100 80GB".to_owned(),
            gpu_memory_bytes: 80 << 30,
            streams_per_channel: 100,
            telemetry_interval: None,
            start_jitter: Duration::ZERO,
            keepalive: (Duration::from_secs(10), Duration::from_secs(5)),
            hello_timeout: Duration::from_secs(10),
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
            images: BTreeMap::new(),
        }
    }
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Hosts whose stream has reached `Welcome` now.
    pub connected: AtomicU64,
    /// Streams that reached `Welcome`.
    pub welcomes: AtomicU64,
    /// Attempts that ended before `Welcome` (refused, timed out, unreachable).
    pub failed_attempts: AtomicU64,
    /// Welcomed streams that ended later.
    pub streams_ended: AtomicU64,
    /// Telemetry samples put in a mailbox.
    pub telemetry_sent: AtomicU64,
    /// Telemetry samples dropped because the broker was not reading.
    pub telemetry_dropped: AtomicU64,
    /// StartSession commands carried out (new workloads "started").
    pub starts: AtomicU64,
    /// StopSession commands carried out.
    pub stops: AtomicU64,
    /// Pause and Resume commands carried out.
    pub pauses_resumes: AtomicU64,
    /// Commands refused for a stale leader epoch.
    pub stale_epoch: AtomicU64,
    /// Commands refused for a stale session generation.
    pub stale_generation: AtomicU64,
    /// Starts that named a GPU another session on the same host still held. The broker
    /// frees GPUs in the store; this is what the host itself saw.
    pub gpu_overlaps: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A fleet of simulated hosts, each with its own task; stopped on [`SimFleet::stop`] or
/// drop.
pub struct SimFleet {
    hosts: Vec<Arc<SimHost>>,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SimFleet {
    /// Starts every host's link (must be called inside a Tokio runtime).
    ///
    /// # Panics
    ///
    /// When `brokers` is empty or a URL does not parse.
    pub fn start(config: SimFleetConfig) -> Self {
        assert!(
            !config.brokers.is_empty(),
            "a simulated fleet needs a broker"
        );
        let config = Arc::new(config);
        let channels = Arc::new(Channels::new(&config));
        let stats = Arc::new(SimStats::default());
        let shutdown = CancellationToken::new();
        let incarnation = ulid::Ulid::new().to_string();
        let width = config.hosts.to_string().len().max(4);
        let mut hosts = Vec::with_capacity(config.hosts);
        let mut tasks = Vec::with_capacity(config.hosts);
        for index in 0..config.hosts {
            let node_id = format!("{}{index:0width$}", config.node_prefix);
            let host = Arc::new(SimHost {
                index,
                gpus: SimulatedGpus::new(
                    &node_id,
                    config.gpus_per_host,
                    &config.gpu_model,
                    config.gpu_memory_bytes,
                ),
                incarnation: format!("{incarnation}-{index}"),
                node_id,
                state: Mutex::new(HostState::default()),
                stats: stats.clone(),
            });
            hosts.push(host.clone());
            tasks.push(tokio::spawn(host.run(
                config.clone(),
                channels.clone(),
                shutdown.clone(),
            )));
        }
        Self {
            hosts,
            stats,
            shutdown,
            tasks,
        }
    }

    /// The node ids, in host order.
    pub fn node_ids(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.node_id.clone()).collect()
    }

    /// Counters over the whole fleet.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Workloads the fleet "runs" now, over every host.
    pub fn running(&self) -> usize {
        self.hosts
            .iter()
            .map(|h: &Arc<SimHost>| h.lock().workloads.len())
            .sum()
    }

    /// Makes host `node_id` report XID `code` on GPU `gpu` in its next telemetry sample,
    /// as NVML would after a GPU error. Returns false for an unknown node.
    pub fn report_xid(&self, node_id: &str, gpu: usize, code: u64) -> bool {
        let Some(host) = self.hosts.iter().find(|h| h.node_id == node_id) else {
            return false;
        };
        host.lock().pending_xids.push((gpu, code));
        true
    }

    /// Hosts whose stream has reached `Welcome`.
    pub fn connected(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Ends every host's stream and waits for their tasks.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Shared HTTP/2 connections, per broker URL: host `i` uses number `i / per_channel`.
struct Channels {
    per_channel: usize,
    keepalive: (Duration, Duration),
    by_url: Mutex<HashMap<String, Vec<Channel>>>,
}

impl Channels {
    fn new(config: &SimFleetConfig) -> Self {
        Self {
            per_channel: config.streams_per_channel.max(1),
            keepalive: config.keepalive,
            by_url: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, url: &str, host: usize) -> Result<Channel, String> {
        let slot = host / self.per_channel;
        let mut by_url = self.by_url.lock().unwrap_or_else(|e| e.into_inner());
        let channels = by_url.entry(url.to_owned()).or_default();
        while channels.len() <= slot {
            let endpoint = Endpoint::from_shared(url.to_owned())
                .map_err(|e| format!("bad broker URL {url:?}: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(self.keepalive.0)
                .keep_alive_timeout(self.keepalive.1)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        Ok(channels[slot].clone())
    }
}

/// A workload the host pretends to run.
#[derive(Clone, Debug)]
struct Workload {
    generation: u64,
    container_id: String,
    state: SessionState,
    gpus: Vec<String>,
}

#[derive(Default)]
struct HostState {
    workloads: HashMap<String, Workload>,
    /// Highest leader epoch admitted; lower ones are refused (for the life of the host).
    highest_epoch: i64,
    /// Fatal XIDs to report in the next telemetry sample: (GPU index, code).
    pending_xids: Vec<(usize, u64)>,
}

struct SimHost {
    index: usize,
    node_id: String,
    incarnation: String,
    gpus: SimulatedGpus,
    state: Mutex<HostState>,
    stats: Arc<SimStats>,
}

/// Why one stream attempt ended.
struct Ended {
    why: String,
    /// A standby named the leader.
    leader: Option<String>,
}

impl Ended {
    fn from_status(status: &tonic::Status, dialled: &str) -> Self {
        let leader = (status.code() == Code::Unavailable)
            .then(|| status.metadata().get(hearth_sdk::LEADER_METADATA_KEY))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|hint| leader_url(hint, dialled));
        Self {
            why: format!("{:?}: {}", status.code(), status.message()),
            leader,
        }
    }

    fn because(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            leader: None,
        }
    }
}

/// The URL to dial for a `hearth-leader` hint; a bare `host:port` takes the dialled scheme.
fn leader_url(hint: &str, dialled: &str) -> Option<String> {
    let hint = hint.trim();
    if hint.is_empty() {
        return None;
    }
    Some(if hint.contains("://") {
        hint.to_owned()
    } else {
        let scheme = dialled.split_once("://").map_or("http", |(s, _)| s);
        format!("{scheme}://{hint}")
    })
}

impl SimHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(
        self: Arc<Self>,
        config: Arc<SimFleetConfig>,
        channels: Arc<Channels>,
        shutdown: CancellationToken,
    ) {
        let mut rng = XorShift::new(self.index as u64 + 1);
        let jitter = config.start_jitter.mul_f64(rng.unit());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(jitter) => {}
        }
        let mut backoff = Backoff::new(config.backoff.0, config.backoff.1);
        let mut next = 0usize;
        let mut preferred: Option<String> = None;
        loop {
            let url = preferred.take().unwrap_or_else(|| {
                let url = config.brokers[next % config.brokers.len()].clone();
                next = next.wrapping_add(1);
                url
            });
            let mut welcomed = false;
            let ended = tokio::select! {
                () = shutdown.cancelled() => break,
                ended = self.stream(&url, &config, &channels, &mut welcomed) => ended,
            };
            if welcomed {
                self.stats.connected.fetch_sub(1, Ordering::Relaxed);
                bump(&self.stats.streams_ended);
                backoff.reset();
            } else {
                bump(&self.stats.failed_attempts);
            }
            tracing::debug!(node = %self.node_id, broker = %url, why = %ended.why, "simulated host's stream ended");
            preferred = ended.leader;
            let delay = backoff.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream, from dialling to its end.
    async fn stream(
        &self,
        url: &str,
        config: &SimFleetConfig,
        channels: &Channels,
        welcomed: &mut bool,
    ) -> Ended {
        let channel = match channels.get(url, self.index) {
            Ok(c) => c,
            Err(e) => return Ended::because(e),
        };
        let mut client = NodeAgentClient::new(channel);
        let (tx, mut rx) = mpsc::channel(MAILBOX);
        let images = config.images.get(&self.index).cloned().unwrap_or_default();
        let _ = tx.try_send(self.hello(images));
        let opened = tokio::time::timeout(config.hello_timeout, async {
            let mut inbound = client
                .connect(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
                .await
                .map_err(|s| Ended::from_status(&s, url))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(BrokerMessage {
                    msg: Some(broker_message::Msg::Welcome(welcome)),
                })) => Ok((inbound, welcome)),
                Ok(Some(_)) => Err(Ended::because("the broker's first message was not Welcome")),
                Ok(None) => Err(Ended::because("stream closed before Welcome")),
                Err(s) => Err(Ended::from_status(&s, url)),
            }
        })
        .await;
        let (mut inbound, welcome) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(ended)) => return ended,
            Err(_) => return Ended::because("no Welcome within hello_timeout"),
        };
        *welcomed = true;
        bump(&self.stats.welcomes);
        bump(&self.stats.connected);
        {
            // A lower epoch is not a reason to hang up; its commands are refused.
            let mut state = self.lock();
            state.highest_epoch = state.highest_epoch.max(welcome.epoch);
        }
        let interval = config
            .telemetry_interval
            .or_else(|| {
                welcome
                    .telemetry_interval
                    .as_ref()
                    .and_then(|d| hearth_sdk::time::std_duration(d, "telemetry_interval").ok())
                    .filter(|d| !d.is_zero())
            })
            .unwrap_or(Duration::from_secs(1))
            .max(MIN_TELEMETRY_INTERVAL);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = ticker.tick() => {
                    if let Err(ended) = self.send_telemetry(&tx) {
                        return ended;
                    }
                    continue;
                }
                m = inbound.message() => m,
            };
            match message {
                Ok(Some(message)) => {
                    if let Some(msg) = message.msg
                        && let Err(ended) = self.handle(msg, &tx).await
                    {
                        return ended;
                    }
                }
                Ok(None) => return Ended::because("the broker closed the stream"),
                Err(s) => return Ended::from_status(&s, url),
            }
        }
    }

    fn hello(&self, images: Vec<String>) -> AgentMessage {
        let state = self.lock();
        let sessions = state
            .workloads
            .iter()
            .map(|(id, w)| RunningSession {
                session_id: id.clone(),
                generation: w.generation,
                container_id: w.container_id.clone(),
                state: w.state.into(),
            })
            .collect();
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                node_id: self.node_id.clone(),
                incarnation: self.incarnation.clone(),
                version: format!("{}-simulated", hearth_sdk::VERSION),
                labels: [(SIMULATED_LABEL.0.to_owned(), SIMULATED_LABEL.1.to_owned())].into(),
                taints: Vec::new(),
                gpus: self.gpus.inventory().unwrap_or_default(),
                gpu_source: GpuSource::Simulated.into(),
                capacity: Some(NodeCapacity {
                    cpu_cores: 64,
                    memory_bytes: 512 << 30,
                }),
                runtime: RUNTIME.to_owned(),
                sessions,
                highest_epoch: state.highest_epoch,
                images,
            })),
        }
    }

    fn send_telemetry(&self, tx: &mpsc::Sender<AgentMessage>) -> Result<(), Ended> {
        let message = AgentMessage {
            msg: Some(agent_message::Msg::Telemetry(NodeTelemetry {
                sampled_at: Some(hearth_sdk::time::now()),
                gpus: {
                    let mut gpus = self.gpus.sample().unwrap_or_default();
                    for (gpu, code) in std::mem::take(&mut self.lock().pending_xids) {
                        if let Some(g) = gpus.get_mut(gpu) {
                            g.xid_events.push(hearth_sdk::proto::v1::XidEvent {
                                code,
                                time: Some(hearth_sdk::time::now()),
                            });
                        }
                    }
                    gpus
                },
                busy_sessions: Vec::new(),
            })),
        };
        match tx.try_send(message) {
            Ok(()) => {
                bump(&self.stats.telemetry_sent);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.stats.telemetry_dropped);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Ended::because("the stream's sender closed"))
            }
        }
    }

    /// Answers one broker message. Sends wait for mailbox room, in order, so a Reply
    /// always precedes the statuses that follow it.
    async fn handle(
        &self,
        msg: broker_message::Msg,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), Ended> {
        use broker_message::Msg;
        let out = match msg {
            Msg::Welcome(_) | Msg::CancelTurn(_) => Vec::new(),
            Msg::StartSession(c) => match c.meta {
                Some(meta) => self.start(&meta, c.gpu_uuids),
                None => Vec::new(),
            },
            Msg::StopSession(c) => match c.meta {
                Some(meta) => self.stop(&meta),
                None => Vec::new(),
            },
            Msg::PauseSession(c) => match c.meta {
                Some(meta) => self.freeze(&meta, true),
                None => Vec::new(),
            },
            Msg::ResumeSession(c) => match c.meta {
                Some(meta) => self.freeze(&meta, false),
                None => Vec::new(),
            },
            Msg::Exec(c) => self.no_turns(c.meta.as_ref(), &c.turn_id),
            Msg::Invoke(c) => self.no_turns(c.meta.as_ref(), &c.turn_id),
        };
        for msg in out {
            tx.send(AgentMessage { msg: Some(msg) })
                .await
                .map_err(|_| Ended::because("the stream's sender closed"))?;
        }
        Ok(())
    }

    /// The refusal of a command from a leader older than the highest seen; a newer
    /// epoch is admitted (and remembered).
    fn stale_epoch(&self, meta: &CommandMeta, reply_id: &str) -> Option<agent_message::Msg> {
        let mut state = self.lock();
        if meta.epoch < state.highest_epoch {
            bump(&self.stats.stale_epoch);
            return Some(not_ok(
                reply_id,
                Code::FailedPrecondition,
                format!(
                    "stale leader epoch {}: this agent has seen epoch {}",
                    meta.epoch, state.highest_epoch
                ),
            ));
        }
        state.highest_epoch = meta.epoch;
        None
    }

    /// The refusal of a lifecycle command: a stale epoch, no session, or a generation
    /// older than the one running.
    fn refusal(&self, meta: &CommandMeta) -> Option<agent_message::Msg> {
        if let Some(refused) = self.stale_epoch(meta, &meta.command_id) {
            return Some(refused);
        }
        if meta.session_id.is_empty() {
            return Some(not_ok(
                &meta.command_id,
                Code::InvalidArgument,
                "the command names no session_id".to_owned(),
            ));
        }
        let running = self
            .lock()
            .workloads
            .get(&meta.session_id)
            .map(|w| w.generation);
        match running {
            Some(running) if meta.generation < running => {
                bump(&self.stats.stale_generation);
                Some(not_ok(
                    &meta.command_id,
                    Code::FailedPrecondition,
                    format!(
                        "stale generation {} of session {}: this node runs generation {running}",
                        meta.generation, meta.session_id
                    ),
                ))
            }
            _ => None,
        }
    }

    fn start(&self, meta: &CommandMeta, gpus: Vec<String>) -> Vec<agent_message::Msg> {
        if let Some(refused) = self.refusal(meta) {
            return vec![refused];
        }
        let session = &meta.session_id;
        let mut state = self.lock();
        if let Some(w) = state
            .workloads
            .get(session)
            .filter(|w| w.generation == meta.generation)
        {
            // A retried start of the generation already running: no restart.
            return vec![
                ok(&meta.command_id, &w.container_id),
                status(session, w.generation, w.state, "", &w.container_id),
            ];
        }
        let overlap = state
            .workloads
            .iter()
            .filter(|(id, _)| *id != session)
            .any(|(_, w)| w.gpus.iter().any(|g| gpus.contains(g)));
        if overlap {
            bump(&self.stats.gpu_overlaps);
            tracing::warn!(node = %self.node_id, session = %session, ?gpus, "simulated host was asked to start a session on a GPU another session still holds");
        }
        let container_id = format!("sim-{session}-{}", meta.generation);
        state.workloads.insert(
            session.clone(),
            Workload {
                generation: meta.generation,
                container_id: container_id.clone(),
                state: SessionState::Ready,
                gpus,
            },
        );
        drop(state);
        bump(&self.stats.starts);
        vec![
            ok(&meta.command_id, &container_id),
            status(
                session,
                meta.generation,
                SessionState::Starting,
                "",
                &container_id,
            ),
            status(
                session,
                meta.generation,
                SessionState::Ready,
                "simulated workload: nothing runs, so it is ready at once",
                &container_id,
            ),
        ]
    }

    fn stop(&self, meta: &CommandMeta) -> Vec<agent_message::Msg> {
        if let Some(refused) = self.refusal(meta) {
            return vec![refused];
        }
        let removed = self.lock().workloads.remove(&meta.session_id);
        bump(&self.stats.stops);
        let (generation, container_id) = removed
            .map(|w| (w.generation, w.container_id))
            .unwrap_or((meta.generation, String::new()));
        vec![
            ok(&meta.command_id, ""),
            status(
                &meta.session_id,
                generation,
                SessionState::Stopped,
                "stopped by the broker",
                &container_id,
            ),
        ]
    }

    fn freeze(&self, meta: &CommandMeta, pause: bool) -> Vec<agent_message::Msg> {
        if let Some(refused) = self.refusal(meta) {
            return vec![refused];
        }
        let mut state = self.lock();
        let Some(w) = state.workloads.get_mut(&meta.session_id) else {
            return vec![not_ok(
                &meta.command_id,
                Code::NotFound,
                format!("no workload for session {}", meta.session_id),
            )];
        };
        w.state = match (pause, w.state) {
            (true, _) => SessionState::Paused,
            (false, SessionState::Paused) => SessionState::Ready,
            (false, other) => other,
        };
        let w = w.clone();
        drop(state);
        bump(&self.stats.pauses_resumes);
        let reported = if pause {
            SessionState::Paused
        } else {
            SessionState::Ready
        };
        vec![
            ok(&meta.command_id, ""),
            status(
                &meta.session_id,
                w.generation,
                reported,
                "",
                &w.container_id,
            ),
        ]
    }

    fn no_turns(&self, meta: Option<&CommandMeta>, turn_id: &str) -> Vec<agent_message::Msg> {
        let Some(meta) = meta else {
            return Vec::new();
        };
        let id = if turn_id.is_empty() {
            &meta.command_id
        } else {
            turn_id
        };
        if let Some(refused) = self.stale_epoch(meta, id) {
            return vec![refused];
        }
        vec![not_ok(
            id,
            Code::Unimplemented,
            "simulated host: no workload runs here, so turns cannot be served".to_owned(),
        )]
    }
}

fn ok(command_id: &str, container_id: &str) -> agent_message::Msg {
    agent_message::Msg::Reply(Reply {
        command_id: command_id.to_owned(),
        ok: true,
        code: 0,
        message: String::new(),
        container_id: container_id.to_owned(),
    })
}

fn not_ok(command_id: &str, code: Code, message: String) -> agent_message::Msg {
    agent_message::Msg::Reply(Reply {
        command_id: command_id.to_owned(),
        ok: false,
        code: code as i32,
        message,
        container_id: String::new(),
    })
}

fn status(
    session: &str,
    generation: u64,
    state: SessionState,
    reason: &str,
    container_id: &str,
) -> agent_message::Msg {
    agent_message::Msg::SessionStatus(SessionStatus {
        session_id: session.to_owned(),
        generation,
        state: state.into(),
        reason: reason.to_owned(),
        container_id: container_id.to_owned(),
        ..SessionStatus::default()
    })
}

/// A small seeded generator (xorshift64*): deterministic jitter and shuffles without a
/// dependency.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_take_the_dialled_scheme() {
        assert_eq!(
            leader_url("10.0.0.2:7700", "http://10.0.0.1:7700").as_deref(),
            Some("http://10.0.0.2:7700")
        );
        assert_eq!(
            leader_url("https://b:7700", "http://a:7700").as_deref(),
            Some("https://b:7700")
        );
        assert_eq!(leader_url(" ", "http://a"), None);
    }

    #[test]
    fn shuffles_are_permutations_and_seeded() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        XorShift::new(7).shuffle(&mut a);
        XorShift::new(7).shuffle(&mut b);
        assert_eq!(a, b, "same seed, same order");
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort_unstable();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }
}
