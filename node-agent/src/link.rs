//! The one stream to the broker (`NodeAgent.Connect`), kept up for the agent's whole life.
//!
//! Each attempt: pick a broker URL, open an HTTP/2 channel, send `Hello`, wait for `Welcome`
//! within `hello_timeout`, then send telemetry every interval while answering the broker's
//! commands. When the stream fails or ends, the reason is logged and the link sleeps a
//! full-jitter backoff before the next attempt; the backoff starts over after any stream that
//! reached `Welcome`, and after any standby's refusal (the election is nearly over).
//!
//! Broker choice: round-robin over the configured URLs, except that a standby's refusal
//! (`UNAVAILABLE` with `hearth-leader: <url>` metadata) makes the leader the next one dialled.
//!
//! Mailbox: agent messages go through a bounded channel of [`MAILBOX`] messages. Telemetry
//! uses `try_send` and is dropped (and counted) when a slow broker leaves the mailbox full:
//! a fresher sample follows within one interval, and memory never grows. Replies use `send`
//! and wait, since a lost reply would leave the broker waiting out its own timeout.
//!
//! Commands: the reader loop never waits on a command. CancelTurn goes straight to
//! [`Sessions`]; every other command is fenced here, then handed to [`Sessions::dispatch`],
//! which runs it in its own task and answers through the same mailbox (awaiting room, so a
//! slow broker backs the turn's output up to the workload). `Hello` reports the runtime and
//! the sessions running on the host ([`Sessions::running`]), and telemetry the sessions
//! with a turn in flight.
//!
//! Fencing: the link remembers the highest leader epoch it has seen and answers any
//! command with a lower epoch not-ok, `FAILED_PRECONDITION`. The epoch is kept in
//! `state_dir/leader-epoch` (written atomically whenever it rises), so a restarted agent
//! still refuses a deposed leader.
//! (Generations are fenced per session by [`Sessions`].)

use std::{
    convert::Infallible,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CommandMeta, Hello, NodeImages, NodeTelemetry, Reply, Welcome,
    agent_message, broker_message, node_agent_client::NodeAgentClient,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::{
    Config, Error, backoff::Backoff, gpu::GpuInventory, host, metrics::Metrics, sessions::Sessions,
};

/// Messages that may wait for the broker to read them. At 1 Hz telemetry this is a minute of
/// samples: enough to ride out a pause, small enough to bound memory.
pub const MAILBOX: usize = 64;
/// Limit on the TCP (and HTTP/2) connect to one broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping period (DESIGN section 4), so a dead peer is noticed within
/// seconds even when no message is due.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keepalive ping may go unanswered before the connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Floor on a telemetry interval set by the broker, so a bad `Welcome` cannot make a busy
/// loop.
pub const MIN_TELEMETRY_INTERVAL: Duration = Duration::from_millis(10);

/// The state the link carries across reconnects.
pub struct Link {
    config: Arc<Config>,
    gpus: Arc<dyn GpuInventory>,
    sessions: Arc<Sessions>,
    incarnation: String,
    metrics: Metrics,
    ready: watch::Sender<bool>,
    fence: EpochFence,
    /// True while telemetry samples are being dropped, so the streak is logged once.
    dropping: bool,
    /// True while GPU sampling fails, so the streak is logged once.
    sample_failing: bool,
    /// What the broker was last told of the host's images, on this stream.
    images: ImagesSent,
}

/// The image list last sent on the current stream, and when it was read.
#[derive(Default)]
struct ImagesSent {
    /// [`Sessions::images_version`] when it was read.
    version: u64,
    /// Sorted.
    images: Vec<String>,
    read_at: Option<tokio::time::Instant>,
}

/// How often the host's images are listed again to catch changes the agent did not make
/// (an operator's `docker load` or `docker rmi`). The agent's own pulls and removals are
/// reported at the next telemetry tick.
pub const IMAGES_REFRESH: Duration = Duration::from_secs(30);

impl Link {
    /// A link for this agent process, running the broker's commands on `sessions`.
    /// `incarnation` identifies the process to the broker; `ready` follows whether a stream
    /// has reached `Welcome`; `fence` starts from the highest epoch an earlier agent
    /// process saw ([`EpochFence::load`]).
    pub fn new(
        config: Arc<Config>,
        fence: EpochFence,
        gpus: Arc<dyn GpuInventory>,
        sessions: Arc<Sessions>,
        incarnation: String,
        metrics: Metrics,
        ready: watch::Sender<bool>,
    ) -> Self {
        Self {
            config,
            gpus,
            sessions,
            incarnation,
            metrics,
            ready,
            fence,
            dropping: false,
            sample_failing: false,
            images: ImagesSent::default(),
        }
    }

    /// Keeps a stream to the broker up until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(
            self.config.reconnect_backoff_min,
            self.config.reconnect_backoff_max,
        );
        let mut brokers = BrokerPicker::new(self.config.broker.clone());
        loop {
            let url = brokers.next();
            self.metrics.set_broker(&url);
            let mut welcomed = false;
            let reason = tokio::select! {
                () = shutdown.cancelled() => break,
                reason = self.session(&url, &mut welcomed) => reason,
            };
            self.set_connected(false);
            if welcomed {
                backoff.reset();
            }
            if let Error::NotLeader { leader } = &reason {
                // A standby answered, so the brokers are up and an election is at most a
                // lease away: poll at the short end instead of backing off towards the
                // maximum, which would leave this node without a leader for up to that long
                // after the election ends.
                backoff.reset();
                brokers.prefer(leader.clone());
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                broker = %url,
                error = %crate::report(&reason),
                retry_in = ?Duration::from_millis(delay.as_millis() as u64),
                attempt = backoff.attempt(),
                "broker link down; reconnecting"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            self.metrics.reconnects.inc();
        }
        self.set_connected(false);
        tracing::info!("broker link stopped");
    }

    fn set_connected(&self, connected: bool) {
        self.ready.send_replace(connected);
        self.metrics.connected.set(i64::from(connected));
    }

    /// One stream, from dialling to its end. It only ever ends with the reason it ended.
    async fn session(&mut self, url: &str, welcomed: &mut bool) -> Error {
        match self.try_session(url, welcomed).await {
            Ok(never) => match never {},
            Err(reason) => reason,
        }
    }

    async fn try_session(&mut self, url: &str, welcomed: &mut bool) -> Result<Infallible, Error> {
        let mut client = NodeAgentClient::new(dial(&self.config, url).await?);

        let (tx, rx) = mpsc::channel(MAILBOX);
        let hello = self.hello().await?;
        tx.send(hello).await.map_err(|_| Error::StreamClosed)?;

        let status_error = |status: tonic::Status| status_to_error(status, url);
        let hello_timeout = self.config.hello_timeout;
        let (mut inbound, welcome) = tokio::time::timeout(hello_timeout, async {
            let mut inbound = client
                .connect(ReceiverStream::new(rx))
                .await
                .map_err(status_error)?
                .into_inner();
            match inbound.next().await {
                Some(Ok(BrokerMessage {
                    msg: Some(broker_message::Msg::Welcome(welcome)),
                })) => Ok((inbound, welcome)),
                Some(Ok(other)) => Err(Error::Protocol(format!(
                    "expected Welcome as the broker's first message, got {}",
                    kind(&other)
                ))),
                Some(Err(status)) => Err(status_error(status)),
                None => Err(Error::StreamClosed),
            }
        })
        .await
        .map_err(|_| Error::HelloTimeout(hello_timeout))??;

        *welcomed = true;
        let interval = self.accept_welcome(url, &welcome);
        self.sessions.attach(tx.clone());
        self.set_connected(true);

        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, so the broker has telemetry right after Welcome.
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.send_telemetry(&tx).await?;
                    self.send_images_if_changed(&tx).await?;
                }
                message = inbound.next() => match message {
                    Some(Ok(message)) => self.handle(message, &tx),
                    Some(Err(status)) => return Err(status_error(status)),
                    None => return Err(Error::StreamClosed),
                },
            }
        }
    }

    /// The host's images, sorted; empty (and logged) when the runtime cannot list them,
    /// since placement only prefers holders and can do without.
    async fn list_images(&mut self) -> Vec<String> {
        let version = self.sessions.images_version();
        match self.sessions.images().await {
            Ok(mut images) => {
                images.sort();
                images.dedup();
                self.images.version = version;
                self.images.read_at = Some(tokio::time::Instant::now());
                images
            }
            Err(e) => {
                tracing::warn!(error = %crate::report(&e), "cannot list the host's images");
                self.images.read_at = Some(tokio::time::Instant::now());
                self.images.images.clone()
            }
        }
    }

    /// Tells the broker the host's images when this agent pulled or removed one, or when
    /// a periodic listing finds them changed.
    async fn send_images_if_changed(
        &mut self,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), Error> {
        let stale = self
            .images
            .read_at
            .is_none_or(|at| at.elapsed() >= IMAGES_REFRESH);
        if !stale && self.sessions.images_version() == self.images.version {
            return Ok(());
        }
        let images = self.list_images().await;
        if images == self.images.images {
            return Ok(());
        }
        let message = AgentMessage {
            msg: Some(agent_message::Msg::NodeImages(NodeImages {
                images: images.clone(),
            })),
        };
        match tx.try_send(message) {
            Ok(()) => {
                tracing::debug!(images = images.len(), "told the broker the host's images");
                self.images.images = images;
                Ok(())
            }
            // Tried again at the next tick: the version or the listing still differs.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.images.read_at = None;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::StreamClosed),
        }
    }

    async fn hello(&mut self) -> Result<AgentMessage, Error> {
        let gpus = self.gpus.clone();
        let inventory = blocking(move || gpus.inventory()).await?;
        let sessions = self.sessions.running().await.map_err(Error::Runtime)?;
        let images = self.list_images().await;
        self.images.images = images.clone();
        let config = &self.config;
        Ok(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                node_id: config.node_id.clone(),
                incarnation: self.incarnation.clone(),
                version: hearth_sdk::VERSION.to_owned(),
                labels: config
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                taints: config.taints.clone(),
                gpus: inventory,
                gpu_source: self.gpus.source().into(),
                capacity: Some(host::capacity()),
                runtime: self.sessions.runtime_kind().to_owned(),
                sessions,
                highest_epoch: self.fence.highest(),
                images,
            })),
        })
    }

    /// Takes in a `Welcome`: records its epoch and returns the telemetry interval to use.
    fn accept_welcome(&mut self, url: &str, welcome: &Welcome) -> Duration {
        match self.fence.welcome(welcome.epoch, &welcome.cluster_id) {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                broker = %url,
                epoch = welcome.epoch,
                cluster_id = %welcome.cluster_id,
                "broker belongs to another cluster (its store is new or was wiped); the epoch fence starts over"
            ),
            // Not a reason to hang up: a deposed leader soon hands the node to the new one.
            // Its commands are refused meanwhile.
            Err(highest) => tracing::warn!(
                broker = %url,
                epoch = welcome.epoch,
                highest_epoch = highest,
                "broker's epoch is lower than one already seen; its commands will be refused"
            ),
        }
        self.metrics.highest_epoch.set(self.fence.highest());
        let interval = telemetry_interval(welcome, self.config.telemetry_interval);
        tracing::info!(
            broker = %url,
            broker_id = %welcome.broker_id,
            epoch = welcome.epoch,
            telemetry_interval = ?interval,
            "connected to broker"
        );
        interval
    }

    async fn send_telemetry(&mut self, tx: &mpsc::Sender<AgentMessage>) -> Result<(), Error> {
        let gpus = self.gpus.clone();
        let gpus = match blocking(move || gpus.sample()).await {
            Ok(sample) => {
                if std::mem::take(&mut self.sample_failing) {
                    tracing::info!("GPU telemetry readable again");
                }
                sample
            }
            Err(e) => {
                // Still send the (empty) sample: any message is a heartbeat, and a node
                // whose GPUs fail must not also look disconnected.
                self.metrics.telemetry_errors.inc();
                if !std::mem::replace(&mut self.sample_failing, true) {
                    tracing::warn!(error = %crate::report(&e), "cannot read GPU telemetry; sending heartbeats without GPU figures");
                }
                Vec::new()
            }
        };
        let message = AgentMessage {
            msg: Some(agent_message::Msg::Telemetry(NodeTelemetry {
                sampled_at: Some(hearth_sdk::time::now()),
                gpus,
                busy_sessions: self.sessions.busy_sessions(),
            })),
        };
        match tx.try_send(message) {
            Ok(()) => {
                self.metrics.telemetry_sent.inc();
                if std::mem::take(&mut self.dropping) {
                    tracing::info!("broker is reading telemetry again");
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.telemetry_dropped.inc();
                if !std::mem::replace(&mut self.dropping, true) {
                    tracing::warn!(
                        mailbox = MAILBOX,
                        "broker is not keeping up; dropping telemetry samples"
                    );
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::StreamClosed),
        }
    }

    /// Fences a command and hands it to [`Sessions`]; never waits (the reader must keep
    /// reading while turns stream).
    fn handle(&mut self, message: BrokerMessage, tx: &mpsc::Sender<AgentMessage>) {
        use broker_message::Msg;
        let what = kind(&message);
        let Some(command) = message.msg else {
            return;
        };
        let (meta, turn_id) = match &command {
            Msg::Welcome(_) => {
                tracing::warn!("broker sent a second Welcome on one stream; ignoring it");
                return;
            }
            // No epoch to fence: cancelling is always safe.
            Msg::CancelTurn(cancel) => {
                if !self.sessions.cancel_turn(&cancel.turn_id) {
                    tracing::debug!(turn = %cancel.turn_id, "CancelTurn for a turn not in flight");
                }
                return;
            }
            Msg::StartSession(c) => (c.meta.as_ref(), None),
            Msg::StopSession(c) => (c.meta.as_ref(), None),
            Msg::PauseSession(c) => (c.meta.as_ref(), None),
            Msg::ResumeSession(c) => (c.meta.as_ref(), None),
            Msg::Exec(c) => (c.meta.as_ref(), Some(c.turn_id.as_str())),
            Msg::Invoke(c) => (c.meta.as_ref(), Some(c.turn_id.as_str())),
        };
        let Some(meta) = meta else {
            tracing::warn!(command = what, "command without CommandMeta; cannot reply");
            return;
        };
        let admitted = self.fence.admit(meta.epoch);
        self.metrics.highest_epoch.set(self.fence.highest());
        if let Err(highest) = admitted {
            let reply = stale_epoch_reply(meta, turn_id, highest);
            self.metrics.refused("stale_epoch");
            tracing::debug!(command = what, id = %meta.command_id, epoch = meta.epoch, message = %reply.message, "refusing command");
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(AgentMessage {
                        msg: Some(agent_message::Msg::Reply(reply)),
                    })
                    .await;
            });
            return;
        }
        tracing::debug!(command = what, id = %meta.command_id, session = %meta.session_id, "dispatching command");
        self.sessions.dispatch(command, tx.clone());
    }
}

/// The answer to a command from a leader older than one already seen. For a turn, the
/// broker waits on the turn id, so the reply carries that.
fn stale_epoch_reply(meta: &CommandMeta, turn_id: Option<&str>, highest: i64) -> Reply {
    Reply {
        command_id: turn_id
            .filter(|t| !t.is_empty())
            .unwrap_or(&meta.command_id)
            .to_owned(),
        ok: false,
        code: tonic::Code::FailedPrecondition as i32,
        message: format!(
            "stale leader epoch {}: this agent has seen epoch {highest}",
            meta.epoch
        ),
        container_id: String::new(),
    }
}

/// Runs a blocking GPU call off the async workers; a panic inside stays a panic.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The telemetry interval a `Welcome` asks for, or `fallback` when it sets none (or a
/// nonsensical one); never below [`MIN_TELEMETRY_INTERVAL`].
pub fn telemetry_interval(welcome: &Welcome, fallback: Duration) -> Duration {
    welcome
        .telemetry_interval
        .as_ref()
        .and_then(|d| hearth_sdk::time::std_duration(d, "telemetry_interval").ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(fallback)
        .max(MIN_TELEMETRY_INTERVAL)
}

/// A standby's refusal becomes [`Error::NotLeader`]; every other status stays a status.
fn status_to_error(status: tonic::Status, dialled: &str) -> Error {
    if status.code() == tonic::Code::Unavailable
        && let Some(leader) = status
            .metadata()
            .get(hearth_sdk::LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|hint| leader_url(hint, dialled))
    {
        return Error::NotLeader { leader };
    }
    Error::Status(status)
}

/// The URL to dial for a `hearth-leader` hint. A bare `host:port` takes the scheme of the
/// URL that was dialled. `None` for an empty or unparsable hint.
pub fn leader_url(hint: &str, dialled: &str) -> Option<String> {
    let hint = hint.trim();
    if hint.is_empty() {
        return None;
    }
    let url = if hint.contains("://") {
        hint.to_owned()
    } else {
        let scheme = dialled.split_once("://").map_or("http", |(s, _)| s);
        format!("{scheme}://{hint}")
    };
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    uri.host()?;
    Some(url)
}

/// Dials the broker at `url` as every agent stream does: TLS per the config, HTTP/2
/// keepalives, and a TCP user timeout of `dead_link_after` (`dial.rs`).
pub(crate) async fn dial(config: &Config, url: &str) -> Result<tonic::transport::Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| Error::BrokerUrl {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    config
        .tls
        .apply(url, endpoint)?
        .connect_with_connector(crate::dial::Connector {
            user_timeout: config.dead_link_after,
        })
        .await
        .map_err(Error::Connect)
}

/// The name of a broker message's kind, for logs.
pub(crate) fn kind(message: &BrokerMessage) -> &'static str {
    use broker_message::Msg;
    match &message.msg {
        None => "an empty message",
        Some(Msg::Welcome(_)) => "Welcome",
        Some(Msg::StartSession(_)) => "StartSession",
        Some(Msg::StopSession(_)) => "StopSession",
        Some(Msg::PauseSession(_)) => "PauseSession",
        Some(Msg::ResumeSession(_)) => "ResumeSession",
        Some(Msg::Exec(_)) => "Exec",
        Some(Msg::Invoke(_)) => "Invoke",
        Some(Msg::CancelTurn(_)) => "CancelTurn",
    }
}

/// Round-robin over the configured brokers, with a one-shot preference for a named leader.
#[derive(Debug)]
pub struct BrokerPicker {
    urls: Vec<String>,
    next: usize,
    preferred: Option<String>,
}

impl BrokerPicker {
    /// A picker over `urls` (at least one; the configuration guarantees it).
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            next: 0,
            preferred: None,
        }
    }

    /// The URL to dial now.
    pub fn next(&mut self) -> String {
        if let Some(url) = self.preferred.take() {
            return url;
        }
        let url = self.urls[self.next % self.urls.len()].clone();
        self.next = self.next.wrapping_add(1);
        url
    }

    /// Makes `url` the next one dialled (a standby named it as the leader).
    pub fn prefer(&mut self, url: String) {
        self.preferred = Some(url);
    }
}

/// File in the agent's `state_dir` holding the highest leader epoch seen.
pub const EPOCH_FILE: &str = "leader-epoch";

/// The highest leader epoch seen; lower epochs are refused. Loaded from and persisted to
/// a file, so the fence survives an agent restart.
///
/// Epochs count within one cluster (one store). The fence remembers the cluster id that
/// the brokers send in `Welcome`: a different one means the store is new or was wiped and
/// its epochs start over, so the fence starts over too instead of refusing every command
/// of the new cluster for good. A deposed leader of the same cluster sends the same id and
/// stays fenced.
#[derive(Debug, Default)]
pub struct EpochFence {
    highest: i64,
    /// The cluster `highest` belongs to; empty until a broker names one.
    cluster: String,
    /// Where the fence is kept; `None`: in memory only.
    path: Option<PathBuf>,
}

impl EpochFence {
    /// The fence kept at `path` (`<epoch> [<cluster id>]`), starting from what is stored
    /// there (0 while the file does not exist). A file that cannot be read or parsed is an
    /// error rather than a silent 0, which would re-admit a deposed leader.
    pub fn load(path: PathBuf) -> Result<Self, Error> {
        let (highest, cluster) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut fields = text.split_whitespace();
                let epoch = fields.next().unwrap_or_default();
                let highest = epoch.parse::<i64>().map_err(|e| Error::EpochFile {
                    path: path.clone(),
                    reason: format!("{epoch:?} is not an epoch ({e})"),
                })?;
                (highest, fields.next().unwrap_or_default().to_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, String::new()),
            Err(e) => {
                return Err(Error::EpochFile {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        Ok(Self {
            highest,
            cluster,
            path: Some(path),
        })
    }

    /// The highest epoch admitted so far (0 before any).
    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// Takes in a leader's `Welcome`: a cluster id other than the remembered one starts the
    /// fence over at `epoch` (returning true); otherwise the epoch is admitted as by
    /// [`admit`](Self::admit). An empty id says nothing about the cluster.
    pub fn welcome(&mut self, epoch: i64, cluster: &str) -> Result<bool, i64> {
        if cluster.is_empty() || cluster == self.cluster {
            return self.admit(epoch).map(|()| false);
        }
        let other_cluster = !self.cluster.is_empty();
        if other_cluster || epoch >= self.highest {
            self.cluster = cluster.to_owned();
            self.highest = epoch;
        } else {
            // First id ever heard (an older file without one), from a broker behind the
            // fence: keep the fence and learn the id only once an epoch is admitted.
            return Err(self.highest);
        }
        self.persist();
        Ok(other_cluster)
    }

    /// Admits `epoch` if it is not lower than the highest seen (raising that, and
    /// persisting it), or returns the highest seen.
    pub fn admit(&mut self, epoch: i64) -> Result<(), i64> {
        if epoch < self.highest {
            return Err(self.highest);
        }
        if epoch > self.highest {
            self.highest = epoch;
            self.persist();
        }
        Ok(())
    }

    /// Writes the fence; a failure is logged and the fence still holds in memory (the
    /// epoch only rises, so the next rise tries again).
    fn persist(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let contents = format!("{} {}", self.highest, self.cluster);
        if let Err(e) = write_atomically(path, format!("{}\n", contents.trim_end()).as_bytes()) {
            tracing::warn!(
                path = %path.display(),
                epoch = self.highest,
                error = %e,
                "could not persist the leader epoch; a restarted agent would not remember it"
            );
        }
    }
}

/// Replaces `path` with `contents` so that a crash leaves the old or the new file, never a
/// torn one: a temporary file, fsync, rename, then fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_refuses_only_lower_epochs() {
        let mut fence = EpochFence::default();
        assert_eq!(fence.admit(3), Ok(()));
        assert_eq!(fence.admit(3), Ok(()), "the same epoch is the same leader");
        assert_eq!(fence.admit(2), Err(3));
        assert_eq!(fence.highest(), 3, "a refusal does not lower the fence");
        assert_eq!(fence.admit(7), Ok(()));
        assert_eq!(fence.admit(3), Err(7));
    }

    #[test]
    fn the_fence_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(EPOCH_FILE);
        let mut fence = EpochFence::load(path.clone()).unwrap();
        assert_eq!(fence.highest(), 0, "no file yet: nothing seen");
        assert_eq!(fence.admit(5), Ok(()));
        assert_eq!(fence.admit(4), Err(5));
        drop(fence);
        let mut restarted = EpochFence::load(path.clone()).unwrap();
        assert_eq!(restarted.highest(), 5, "the epoch was read back");
        assert_eq!(
            restarted.admit(4),
            Err(5),
            "a deposed leader is still refused"
        );
        assert_eq!(restarted.admit(9), Ok(()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "9\n");
        assert_eq!(restarted.welcome(9, "C1"), Ok(false), "the first id heard");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "9 C1\n");
        drop(restarted);
        let mut again = EpochFence::load(path.clone()).unwrap();
        assert_eq!(again.welcome(8, "C1"), Err(9), "same cluster, older leader");
        assert!(
            !path.with_extension("tmp").exists(),
            "the temporary file was renamed into place"
        );
        std::fs::write(&path, "garbage").unwrap();
        let err = EpochFence::load(path).unwrap_err().to_string();
        assert!(err.contains(EPOCH_FILE), "{err}");
    }

    #[test]
    fn another_cluster_starts_the_fence_over() {
        let mut fence = EpochFence::default();
        assert_eq!(fence.welcome(40, "C1"), Ok(false));
        assert_eq!(fence.welcome(12, "C1"), Err(40), "a deposed leader of C1");
        assert_eq!(fence.admit(12), Err(40));
        assert_eq!(
            fence.welcome(3, "C2"),
            Ok(true),
            "a wiped store: new cluster"
        );
        assert_eq!((fence.highest(), fence.admit(3)), (3, Ok(())));
        assert_eq!(fence.welcome(2, "C2"), Err(3));
        assert_eq!(fence.welcome(2, ""), Err(3), "no id: epochs alone decide");
        // A fence from before cluster ids: an older broker behind it cannot teach an id.
        let mut old = EpochFence {
            highest: 10,
            ..EpochFence::default()
        };
        assert_eq!(old.welcome(7, "C1"), Err(10));
        assert_eq!(old.welcome(11, "C1"), Ok(false));
        assert_eq!(old.welcome(7, "C1"), Err(11));
    }

    #[test]
    fn picker_round_robins_and_honours_a_leader_once() {
        let mut p = BrokerPicker::new(vec!["http://a".into(), "http://b".into()]);
        assert_eq!(p.next(), "http://a");
        assert_eq!(p.next(), "http://b");
        p.prefer("http://leader".into());
        assert_eq!(p.next(), "http://leader");
        assert_eq!(p.next(), "http://a");
        assert_eq!(p.next(), "http://b");
        assert_eq!(p.next(), "http://a");
    }

    #[test]
    fn leader_hints_become_urls() {
        assert_eq!(
            leader_url("http://10.0.0.2:7700", "http://10.0.0.1:7700").as_deref(),
            Some("http://10.0.0.2:7700")
        );
        assert_eq!(
            leader_url(" 10.0.0.2:7700 ", "http://10.0.0.1:7700").as_deref(),
            Some("http://10.0.0.2:7700"),
            "a bare host:port takes the dialled scheme"
        );
        assert_eq!(leader_url("", "http://a"), None);
        assert_eq!(leader_url("http://", "http://a"), None);
        assert_eq!(leader_url("not a url", "http://a"), None);
    }

    #[test]
    fn standby_refusal_names_the_leader() {
        let mut status = tonic::Status::unavailable("not the leader");
        status.metadata_mut().insert(
            hearth_sdk::LEADER_METADATA_KEY,
            "http://leader:7700".parse().unwrap(),
        );
        match status_to_error(status, "http://standby:7700") {
            Error::NotLeader { leader } => assert_eq!(leader, "http://leader:7700"),
            other => panic!("{other:?}"),
        }
        // UNAVAILABLE without a hint, or another code with one, is just a status.
        let plain = tonic::Status::unavailable("down");
        assert!(matches!(
            status_to_error(plain, "http://a"),
            Error::Status(_)
        ));
        let mut other = tonic::Status::internal("boom");
        other.metadata_mut().insert(
            hearth_sdk::LEADER_METADATA_KEY,
            "http://leader:7700".parse().unwrap(),
        );
        assert!(matches!(
            status_to_error(other, "http://a"),
            Error::Status(_)
        ));
    }

    #[test]
    fn welcome_interval_wins_unless_missing_or_silly() {
        let fallback = Duration::from_secs(1);
        let with = |d: Option<prost_types::Duration>| Welcome {
            telemetry_interval: d,
            ..Welcome::default()
        };
        let ms = |n| Some(hearth_sdk::time::duration(Duration::from_millis(n)));
        assert_eq!(telemetry_interval(&with(None), fallback), fallback);
        assert_eq!(
            telemetry_interval(&with(ms(250)), fallback),
            Duration::from_millis(250)
        );
        assert_eq!(telemetry_interval(&with(ms(0)), fallback), fallback);
        assert_eq!(
            telemetry_interval(&with(ms(1)), fallback),
            MIN_TELEMETRY_INTERVAL
        );
        let negative = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(telemetry_interval(&with(negative), fallback), fallback);
    }
}
