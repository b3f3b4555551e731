//! Runs the broker's session commands on a [`Runtime`]: starting workloads and watching
//! their readiness and health, stopping, pausing and resuming them, and the turns (Exec,
//! Invoke). It knows nothing of the stream: the link hands it each admitted command
//! together with the sender to answer on.
//!
//! Never blocks the stream reader: [`Sessions::dispatch`] only records the command and
//! spawns its work. Lifecycle commands of one session (start, stop, pause, resume, and the
//! agent's own clean-up after a failed probe or a crash) run one at a time, in arrival
//! order, on a per-session queue, so a Stop that follows a Start never overtakes it. Turns
//! run concurrently, each in its own task.
//!
//! Where answers go: a command's Reply and a turn's output go to the stream the command
//! came on. When that stream is gone, a turn is cancelled: its caller went with it, and
//! turns are never re-run. Status changes found later (READY after the probe, FAILED after
//! a crash) go to the stream current at that moment ([`Sessions::attach`]); with none up,
//! they are dropped and counted, and the next `Hello` reports the truth
//! ([`Sessions::running`]). Every send awaits the bounded mailbox: a slow broker slows the
//! workload's output down (backpressure) and nothing is buffered without bound.
//!
//! What each command gets (codes are `google.rpc.Code`):
//! - StartSession: `Reply{ok, container_id}` and `SessionStatus STARTING` once the workload
//!   started; then `READY` once the readiness probe passes (at once without a probe), or
//!   `FAILED` naming the probe when it does not pass in time (the workload is removed).
//!   A retry of the generation already running answers ok again without a restart. Later,
//!   a workload that exits on its own gives `FAILED` with its exit code.
//! - StopSession: `Reply ok`, `SessionStatus STOPPED`. Pause / Resume: `Reply ok`,
//!   `SessionStatus PAUSED` / `READY`.
//! - Exec: `ExecOutput` chunks as produced, then one `ExecOutput` exit.
//! - Invoke: `InvokeChunk` head, one per body frame, then one with `end`.
//! - A failure of any of them: one not-ok `Reply` (for a turn, `command_id` is the turn id;
//!   it ends the turn, also when CancelTurn ended it, with CANCELLED).
//! - Commands for a generation older than the one running are refused, FAILED_PRECONDITION.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use hearth_sdk::proto::v1::{
    AgentMessage, CommandMeta, ExecCommand, ExecExit, ExecOutput as ExecOutputMsg, ExecRequest,
    ExecResponse, Header, InvokeChunk, InvokeCommand, InvokeHead, InvokeRequest, InvokeResponse,
    PullProgress as PullProgressMsg, ReadinessProbe, Reply, RunningSession, SessionState,
    SessionStatus, StartSessionCommand, StopSessionCommand, agent_message, broker_message,
    exec_response, invoke_response, readiness_probe,
};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep},
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    metrics::Metrics,
    runtime::{
        ExecOutput, ExecSpec, ImageRequest, PullProgress, Runtime, RuntimeError, StartRequest,
        WorkloadState,
    },
};

/// Grace a StopSession without one gives the workload after SIGTERM.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Grace a workload gets when the agent removes it after a failed start or a crash.
pub const FAILED_STOP_GRACE: Duration = Duration::from_secs(2);
/// Limit on an Invoke turn whose request sets none.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Readiness probe timeout when the spec sets none.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time between readiness attempts when the spec sets none.
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_millis(200);
/// Longest one readiness attempt may take (a hung HTTP server must not eat the timeout in
/// one go).
pub const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a ready session's workload is checked for having exited on its own.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// Output chunks of one Exec that may wait between the runtime and the stream.
pub const EXEC_BUFFER: usize = 16;
/// TCP connect limit for Invoke and HTTP probes: the workload is on this host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle keep-alive connection to a workload stays in the pool.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle keep-alive connections kept per workload port.
pub const POOL_MAX_IDLE_PER_HOST: usize = 32;

/// Request headers that describe one hop, not the request, so they are not forwarded (the
/// agent's client frames the request itself); `host` is set from the address.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The session commands of one agent. Shared (`Arc`) by the link and the tasks it spawns.
pub struct Sessions {
    runtime: Arc<dyn Runtime>,
    /// One pooled keep-alive client for every Invoke and HTTP probe: turns are the hot
    /// path, and a warm connection saves a handshake per turn.
    http: HttpClient,
    metrics: Metrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Entry>,
    turns: HashMap<String, Turn>,
    /// Per-session lifecycle queues; a queue exists while it has work.
    queues: HashMap<String, mpsc::UnboundedSender<Job>>,
    /// The current stream, for status changes found in the background.
    outbound: Option<mpsc::Sender<AgentMessage>>,
}

/// A session this agent runs (or adopted).
struct Entry {
    generation: u64,
    container_id: String,
    phase: Phase,
    /// Ends the session's readiness probe and monitor.
    watch: CancellationToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Paused,
}

impl Phase {
    fn state(self) -> SessionState {
        match self {
            Self::Starting => SessionState::Starting,
            Self::Ready => SessionState::Ready,
            Self::Paused => SessionState::Paused,
        }
    }
}

/// A turn in flight.
struct Turn {
    session_id: String,
    cancel: CancellationToken,
}

/// A command that failed: the code and message of its not-ok Reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The gRPC code.
    pub code: Code,
    /// What went wrong, for the user.
    pub message: String,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
}

impl From<RuntimeError> for Failure {
    fn from(error: RuntimeError) -> Self {
        Self::new(runtime_code(&error), error.to_string())
    }
}

/// The one mapping from runtime errors to Reply codes.
pub fn runtime_code(error: &RuntimeError) -> Code {
    match error {
        RuntimeError::ImageNotFound(_)
        | RuntimeError::NotPulled(_)
        | RuntimeError::NotPulledForTenant(_)
        | RuntimeError::NotFound(_) => Code::NotFound,
        RuntimeError::PortNotExposed { .. } | RuntimeError::InvalidSpec { .. } => {
            Code::InvalidArgument
        }
        RuntimeError::PullFailed {
            not_found: true, ..
        } => Code::NotFound,
        RuntimeError::WrongState(_) | RuntimeError::PullFailed { .. } => Code::FailedPrecondition,
        RuntimeError::Backend { .. } => Code::Unavailable,
    }
}

/// How a turn ended other than normally.
enum TurnError {
    /// It failed: the Reply says why.
    Failed(Failure),
    /// Its stream is gone: there is no one left to tell.
    Gone,
}

impl From<Failure> for TurnError {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

impl From<RuntimeError> for TurnError {
    fn from(error: RuntimeError) -> Self {
        Self::Failed(error.into())
    }
}

/// The stream a message was meant for is gone.
struct Gone;

impl From<Gone> for TurnError {
    fn from(_: Gone) -> Self {
        Self::Gone
    }
}

/// A turn in flight: removed from the in-flight map when its task ends, however it ends.
struct TurnGuard {
    sessions: Arc<Sessions>,
    turn_id: String,
    /// Fired by CancelTurn, a stop of its session, or agent shutdown.
    cancel: CancellationToken,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.sessions.lock().turns.remove(&self.turn_id);
    }
}

impl Sessions {
    /// Sessions run on `runtime`, counted in `metrics`.
    pub fn new(runtime: Arc<dyn Runtime>, metrics: Metrics) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector);
        Arc::new(Self {
            runtime,
            http,
            metrics,
            state: Mutex::default(),
        })
    }

    /// "docker" or "process", for `Hello.runtime`.
    pub fn runtime_kind(&self) -> &'static str {
        self.runtime.kind()
    }

    /// The images the host holds ([`Runtime::images`]).
    pub async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        self.runtime.images().await
    }

    /// See [`Runtime::images_version`].
    pub fn images_version(&self) -> u64 {
        self.runtime.images_version()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `outbound` the stream for status changes found in the background (called on
    /// every `Welcome`).
    pub fn attach(&self, outbound: mpsc::Sender<AgentMessage>) {
        self.lock().outbound = Some(outbound);
    }

    /// Sessions with a turn in flight, sorted, for `NodeTelemetry.busy_sessions`.
    pub fn busy_sessions(&self) -> Vec<String> {
        let mut busy: Vec<String> = self
            .lock()
            .turns
            .values()
            .map(|t| t.session_id.clone())
            .collect();
        busy.sort_unstable();
        busy.dedup();
        busy
    }

    /// Cancels a turn in flight: its command is killed or its HTTP request dropped. False
    /// if no such turn runs (it ended already).
    pub fn cancel_turn(&self, turn_id: &str) -> bool {
        match self.lock().turns.get(turn_id) {
            Some(turn) => {
                turn.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every turn and every probe and monitor, at agent shutdown. The workloads
    /// keep running: the next agent process re-adopts them.
    pub fn shutdown(&self) {
        let state = self.lock();
        for turn in state.turns.values() {
            turn.cancel.cancel();
        }
        for entry in state.sessions.values() {
            entry.watch.cancel();
        }
    }

    /// Every session workload running on the host, for `Hello.sessions`, adopting those
    /// this process did not start (after an agent restart): they are monitored from now on.
    /// An error (the runtime cannot list) must not be reported as "no sessions".
    pub async fn running(self: &Arc<Self>) -> Result<Vec<RunningSession>, RuntimeError> {
        let workloads = self.runtime.list().await?;
        let mut running = Vec::new();
        for workload in workloads {
            let paused = match workload.state {
                WorkloadState::Running => false,
                WorkloadState::Paused => true,
                WorkloadState::Exited(_) => continue,
            };
            let mut state = self.lock();
            let phase = match state.sessions.get_mut(&workload.session_id) {
                Some(entry) if entry.generation == workload.generation => {
                    if paused {
                        entry.phase = Phase::Paused;
                    } else if entry.phase == Phase::Paused {
                        entry.phase = Phase::Ready;
                    }
                    entry.phase
                }
                _ => {
                    let phase = if paused { Phase::Paused } else { Phase::Ready };
                    let watch = CancellationToken::new();
                    let old = state.sessions.insert(
                        workload.session_id.clone(),
                        Entry {
                            generation: workload.generation,
                            container_id: workload.id.clone(),
                            phase,
                            watch: watch.clone(),
                        },
                    );
                    if let Some(old) = old {
                        old.watch.cancel();
                    }
                    tracing::info!(session = %workload.session_id, generation = workload.generation, id = %workload.id, "adopted a running workload");
                    tokio::spawn(self.clone().watch(
                        workload.session_id.clone(),
                        workload.generation,
                        workload.id.clone(),
                        Watch::Monitor,
                        watch,
                    ));
                    phase
                }
            };
            drop(state);
            running.push(RunningSession {
                session_id: workload.session_id,
                generation: workload.generation,
                container_id: workload.id,
                state: phase.state().into(),
            });
        }
        Ok(running)
    }

    /// Runs an admitted broker command (epoch fencing is the link's) in the background.
    /// Answers go to `reply_to`, the stream the command came on.
    pub fn dispatch(
        self: &Arc<Self>,
        command: broker_message::Msg,
        reply_to: mpsc::Sender<AgentMessage>,
    ) {
        use broker_message::Msg;
        match command {
            Msg::Welcome(_) => {}
            Msg::CancelTurn(cancel) => {
                self.cancel_turn(&cancel.turn_id);
            }
            Msg::StartSession(command) => {
                let Some(meta) = command.meta.clone() else {
                    return;
                };
                let this = self.clone();
                self.enqueue(&meta.session_id.clone(), async move {
                    this.start_session(command, meta, reply_to).await;
                });
            }
            Msg::StopSession(command) => {
                let Some(meta) = command.meta.clone() else {
                    return;
                };
                let this = self.clone();
                self.enqueue(&meta.session_id.clone(), async move {
                    let result = this.stop_session(command, &meta, &reply_to).await;
                    if let Err(failure) = result {
                        let _ = send(&reply_to, reply(&meta.command_id, Err(failure))).await;
                    }
                });
            }
            Msg::PauseSession(command) => {
                let Some(meta) = command.meta else { return };
                let this = self.clone();
                self.enqueue(&meta.session_id.clone(), async move {
                    this.pause_or_resume(&meta, true, &reply_to).await;
                });
            }
            Msg::ResumeSession(command) => {
                let Some(meta) = command.meta else { return };
                let this = self.clone();
                self.enqueue(&meta.session_id.clone(), async move {
                    this.pause_or_resume(&meta, false, &reply_to).await;
                });
            }
            Msg::Exec(command) => {
                let Some(meta) = command.meta.clone() else {
                    return;
                };
                let turn_id = command.turn_id.clone();
                if let Some(turn) = self.begin_turn(&turn_id, &meta, &reply_to) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let result = this
                            .exec_turn(command, &meta, &reply_to, &turn.cancel)
                            .await;
                        this.finish_turn("exec", &turn_id, result, &reply_to).await;
                        drop(turn);
                    });
                }
            }
            Msg::Invoke(command) => {
                let Some(meta) = command.meta.clone() else {
                    return;
                };
                let turn_id = command.turn_id.clone();
                if let Some(turn) = self.begin_turn(&turn_id, &meta, &reply_to) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let result = this
                            .invoke_turn(command, &meta, &reply_to, &turn.cancel)
                            .await;
                        this.finish_turn("invoke", &turn_id, result, &reply_to)
                            .await;
                        drop(turn);
                    });
                }
            }
        }
    }

    /// Runs `job` after every lifecycle job already queued for `session`.
    fn enqueue(self: &Arc<Self>, session: &str, job: impl Future<Output = ()> + Send + 'static) {
        let mut job: Job = Box::pin(job);
        let mut state = self.lock();
        if let Some(queue) = state.queues.get(session) {
            match queue.send(job) {
                Ok(()) => return,
                // Its worker died (a panicking job): start a new one.
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
        let (queue, jobs) = mpsc::unbounded_channel();
        let _ = queue.send(job);
        state.queues.insert(session.to_owned(), queue);
        tokio::spawn(self.clone().run_queue(session.to_owned(), jobs));
    }

    /// Runs a session's lifecycle jobs one by one; ends (and removes the queue) when there
    /// are none left. Sends happen under the same lock, so no job is stranded.
    async fn run_queue(self: Arc<Self>, session: String, mut jobs: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = {
                let mut state = self.lock();
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => {
                        state.queues.remove(&session);
                        return;
                    }
                }
            };
            job.await;
        }
    }

    /// Refuses a command for a generation older than the one running, or without a session.
    fn fence(&self, meta: &CommandMeta) -> Result<(), Failure> {
        if meta.session_id.is_empty() {
            return Err(Failure::invalid("the command names no session_id"));
        }
        let running = self
            .lock()
            .sessions
            .get(&meta.session_id)
            .map(|e| e.generation);
        match running {
            Some(running) if meta.generation < running => {
                self.metrics.refused("stale_generation");
                Err(Failure::new(
                    Code::FailedPrecondition,
                    format!(
                        "stale generation {} of session {}: this node runs generation {running}",
                        meta.generation, meta.session_id
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Sends a status change found in the background to the current stream, if any.
    async fn announce(&self, status: SessionStatus) {
        let outbound = self.lock().outbound.clone();
        let delivered = match outbound {
            Some(outbound) => send(&outbound, status_message(status.clone()))
                .await
                .is_ok(),
            None => false,
        };
        if !delivered {
            self.metrics.statuses_dropped.inc();
            tracing::info!(session = %status.session_id, state = status.state().as_str_name(), "no broker stream; status dropped (the next Hello reports it)");
        }
    }

    async fn start_session(
        self: Arc<Self>,
        command: StartSessionCommand,
        meta: CommandMeta,
        reply_to: mpsc::Sender<AgentMessage>,
    ) {
        let (container_id, phase, watch) = match self.try_start(command, &meta, &reply_to).await {
            Ok(started) => started,
            Err(failure) => {
                tracing::info!(session = %meta.session_id, generation = meta.generation, error = %failure.message, "start refused");
                let _ = send(&reply_to, reply(&meta.command_id, Err(failure))).await;
                return;
            }
        };
        let status = SessionStatus {
            session_id: meta.session_id.clone(),
            generation: meta.generation,
            state: phase.state().into(),
            reason: String::new(),
            container_id: container_id.clone(),
            ..SessionStatus::default()
        };
        let _ = send(&reply_to, reply(&meta.command_id, Ok(container_id.clone()))).await;
        let _ = send(&reply_to, status_message(status)).await;
        if let Some((probe, timing, token)) = watch {
            tokio::spawn(self.clone().watch(
                meta.session_id,
                meta.generation,
                container_id,
                Watch::Start(probe, timing),
                token,
            ));
        }
    }

    /// Starts the workload, or finds the same generation running already (a retried
    /// command). Pulls the image first where it must, telling the broker how far the
    /// pull has got. Returns its id, its phase, and for a new start what to watch.
    async fn try_start(
        &self,
        command: StartSessionCommand,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) -> Result<
        (
            String,
            Phase,
            Option<(Option<Probe>, Timing, CancellationToken)>,
        ),
        Failure,
    > {
        self.fence(meta)?;
        let spec = command
            .spec
            .ok_or_else(|| Failure::invalid("StartSession carries no spec"))?;
        // Checked before anything starts, so a bad probe leaves nothing behind.
        let probe = Probe::from_proto(spec.readiness.as_ref())?;
        let session = &meta.session_id;

        let same = self
            .lock()
            .sessions
            .get(session)
            .filter(|e| e.generation == meta.generation)
            .map(|e| (e.container_id.clone(), e.phase));
        if let Some((id, phase)) = same
            && let Ok(Some(workload)) = self.runtime.inspect(session).await
            && workload.generation == meta.generation
            && !matches!(workload.state, WorkloadState::Exited(_))
        {
            return Ok((id, phase, None));
        }

        if let Some(old) = self.lock().sessions.remove(session) {
            old.watch.cancel();
        }
        self.cancel_session_turns(session);
        let image = ImageRequest {
            spec: &spec,
            tenant: &command.tenant,
            auth: command.registry_auth.as_ref(),
        };
        let pull_ms = self.prepare_image(image, meta, reply_to).await?;
        let started = Instant::now();
        let workload = self
            .runtime
            .start(&StartRequest {
                session_id: session.clone(),
                generation: meta.generation,
                epoch: meta.epoch,
                tenant: command.tenant,
                spec,
                gpu_uuids: command.gpu_uuids,
                network: command.network,
            })
            .await?;
        tracing::info!(session = %session, generation = meta.generation, id = %workload.id, "workload started");
        let watch = CancellationToken::new();
        let adopted_meanwhile = self.lock().sessions.insert(
            session.clone(),
            Entry {
                generation: meta.generation,
                container_id: workload.id.clone(),
                phase: Phase::Starting,
                watch: watch.clone(),
            },
        );
        if let Some(entry) = adopted_meanwhile {
            // A Hello during the start may have adopted the new workload already.
            entry.watch.cancel();
        }
        Ok((
            workload.id,
            Phase::Starting,
            Some((probe, Timing { pull_ms, started }, watch)),
        ))
    }

    /// Has the runtime make sure the image is here, forwarding the pull's progress to the
    /// broker (at most every [`PULL_PROGRESS_EVERY`], and once more at the end). Returns
    /// how many milliseconds the pull took, 0 when none was needed.
    async fn prepare_image(
        &self,
        request: ImageRequest<'_>,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) -> Result<u64, Failure> {
        let spec = request.spec;
        let (progress, mut seen) = tokio::sync::watch::channel(PullProgress::default());
        let message = |p: PullProgress, done: bool| AgentMessage {
            msg: Some(agent_message::Msg::PullProgress(PullProgressMsg {
                command_id: meta.command_id.clone(),
                session_id: meta.session_id.clone(),
                generation: meta.generation,
                image: spec.image.clone(),
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
                layers_done: p.layers_done,
                layers_total: p.layers_total,
                done,
            })),
        };
        let forward = async {
            seen.mark_unchanged();
            while seen.changed().await.is_ok() {
                let p = *seen.borrow_and_update();
                let _ = reply_to.try_send(message(p, false));
                sleep(PULL_PROGRESS_EVERY).await;
            }
        };
        let began = Instant::now();
        let pulled = tokio::select! {
            pulled = self.runtime.prepare_image(request, progress) => pulled?,
            () = forward => unreachable!("the forwarder ends only when the pull has"),
        };
        if !pulled {
            return Ok(0);
        }
        let took = began.elapsed();
        self.metrics.image_pulls.inc();
        let last = *seen.borrow();
        let _ = send(reply_to, message(last, true).msg.expect("set")).await;
        tracing::info!(session = %meta.session_id, image = %spec.image, took = ?took, "image pulled for the start");
        Ok(took.as_millis() as u64)
    }

    async fn stop_session(
        &self,
        command: StopSessionCommand,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), Failure> {
        self.fence(meta)?;
        let grace =
            optional_duration(command.grace.as_ref(), "grace")?.unwrap_or(DEFAULT_STOP_GRACE);
        let session = &meta.session_id;
        // The monitor goes first, so the exit we cause is not reported as a crash.
        let known = self.lock().sessions.get(session).map(|e| {
            e.watch.cancel();
            (e.container_id.clone(), e.generation)
        });
        self.cancel_session_turns(session);
        self.runtime.stop(session, grace).await?;
        self.lock().sessions.remove(session);
        tracing::info!(session = %session, "workload stopped");
        let (container_id, generation) = known.unwrap_or((String::new(), meta.generation));
        let _ = send(reply_to, reply(&meta.command_id, Ok(String::new()))).await;
        let _ = send(
            reply_to,
            status_message(SessionStatus {
                session_id: session.clone(),
                generation,
                state: SessionState::Stopped.into(),
                reason: "stopped by the broker".into(),
                container_id,
                ..SessionStatus::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn pause_or_resume(
        &self,
        meta: &CommandMeta,
        pause: bool,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) {
        let session = &meta.session_id;
        let result = async {
            self.fence(meta)?;
            if pause {
                self.runtime.pause(session).await?;
            } else {
                self.runtime.resume(session).await?;
            }
            Ok::<_, Failure>(())
        }
        .await;
        let (container_id, generation) = {
            let mut state = self.lock();
            match state.sessions.get_mut(session) {
                Some(entry) => {
                    if result.is_ok() {
                        entry.phase = match (pause, entry.phase) {
                            (true, _) => Phase::Paused,
                            (false, Phase::Paused) => Phase::Ready,
                            (false, other) => other,
                        };
                    }
                    (entry.container_id.clone(), entry.generation)
                }
                None => (String::new(), meta.generation),
            }
        };
        let ok = result.is_ok();
        let _ = send(
            reply_to,
            reply(&meta.command_id, result.map(|()| String::new())),
        )
        .await;
        if ok {
            let state = if pause {
                SessionState::Paused
            } else {
                SessionState::Ready
            };
            let _ = send(
                reply_to,
                status_message(SessionStatus {
                    session_id: session.clone(),
                    generation,
                    state: state.into(),
                    reason: String::new(),
                    container_id,
                    ..SessionStatus::default()
                }),
            )
            .await;
        }
    }

    /// Watches a session's workload until `token` is cancelled: first its readiness (for a
    /// new start), then whether it exits on its own.
    async fn watch(
        self: Arc<Self>,
        session: String,
        generation: u64,
        container_id: String,
        what: Watch,
        token: CancellationToken,
    ) {
        tokio::select! {
            biased;
            () = token.cancelled() => {}
            () = self.watch_inner(&session, generation, &container_id, what) => {}
        }
    }

    async fn watch_inner(
        self: &Arc<Self>,
        session: &str,
        generation: u64,
        container_id: &str,
        what: Watch,
    ) {
        if let Watch::Start(probe, timing) = what {
            if let Some(probe) = probe
                && let Err(reason) = self.await_ready(session, generation, &probe).await
            {
                self.fail(session, generation, reason);
                return;
            }
            let became_ready = {
                let mut state = self.lock();
                match state.sessions.get_mut(session) {
                    Some(e) if e.generation == generation && e.phase == Phase::Starting => {
                        e.phase = Phase::Ready;
                        true
                    }
                    _ => false,
                }
            };
            if became_ready {
                tracing::info!(session = %session, generation, "session ready");
                self.announce(SessionStatus {
                    session_id: session.to_owned(),
                    generation,
                    state: SessionState::Ready.into(),
                    reason: String::new(),
                    container_id: container_id.to_owned(),
                    pull_ms: timing.pull_ms,
                    warmup_ms: timing.started.elapsed().as_millis() as u64,
                })
                .await;
            }
        }
        loop {
            sleep(MONITOR_INTERVAL).await;
            match self.runtime.inspect(session).await {
                Ok(Some(w)) if w.generation != generation => return, // replaced
                Ok(Some(w)) => {
                    if let WorkloadState::Exited(code) = w.state {
                        self.fail(
                            session,
                            generation,
                            format!("the workload exited {}", exit_words(code)),
                        );
                        return;
                    }
                }
                Ok(None) => {
                    self.fail(
                        session,
                        generation,
                        "the workload disappeared from the host (removed outside Hearth?)"
                            .to_owned(),
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(session = %session, error = %e, "cannot inspect the workload");
                }
            }
        }
    }

    /// Runs the readiness probe every period until it passes, the workload exits, or the
    /// probe's timeout passes; the error is the FAILED reason.
    async fn await_ready(
        &self,
        session: &str,
        generation: u64,
        probe: &Probe,
    ) -> Result<(), String> {
        let deadline = Instant::now() + probe.timeout;
        let mut last;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let limit = remaining.clamp(Duration::from_millis(50), PROBE_ATTEMPT_TIMEOUT);
            match tokio::time::timeout(limit, self.probe_once(session, &probe.check)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Attempt::Fatal(why))) => {
                    return Err(format!(
                        "readiness probe {} cannot pass: {why}",
                        probe.describe()
                    ));
                }
                Ok(Err(Attempt::NotYet(why))) => last = why,
                Err(_) => {
                    last = format!("no answer within {}", humantime::format_duration(limit));
                }
            }
            if let Ok(Some(w)) = self.runtime.inspect(session).await
                && w.generation == generation
                && let WorkloadState::Exited(code) = w.state
            {
                return Err(format!(
                    "the workload exited {} before readiness probe {} passed",
                    exit_words(code),
                    probe.describe()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "readiness probe {} did not pass within {} (last attempt: {last})",
                    probe.describe(),
                    humantime::format_duration(probe.timeout)
                ));
            }
            sleep(probe.period.min(deadline - now)).await;
        }
    }

    async fn probe_once(&self, session: &str, check: &Check) -> Result<(), Attempt> {
        let address = |port| async move {
            self.runtime
                .address(session, port)
                .await
                .map_err(|e| match e {
                    RuntimeError::PortNotExposed { .. } | RuntimeError::NotFound(_) => {
                        Attempt::Fatal(e.to_string())
                    }
                    e => Attempt::NotYet(e.to_string()),
                })
        };
        match check {
            Check::Tcp(port) => {
                let addr = address(*port).await?;
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| Attempt::NotYet(e.to_string()))
            }
            Check::Http { port, path } => {
                let addr = address(*port).await?;
                let request = hyper::Request::get(format!("http://{addr}{path}"))
                    .body(Full::default())
                    .map_err(|e| Attempt::Fatal(e.to_string()))?;
                let response = self
                    .http
                    .request(request)
                    .await
                    .map_err(|e| Attempt::NotYet(crate::report(&e)))?;
                let status = response.status();
                // Read the body so the connection goes back to the pool.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(Attempt::NotYet(format!("HTTP {status}")))
                }
            }
            Check::Exec(argv) => {
                let (tx, mut rx) = mpsc::channel(EXEC_BUFFER);
                let spec = ExecSpec {
                    argv: argv.clone(),
                    ..ExecSpec::default()
                };
                let cancel = CancellationToken::new();
                // Dropping this attempt (its time is up) kills the command.
                let _kill = cancel.clone().drop_guard();
                let exec = self.runtime.exec(session, spec, tx, cancel);
                let drain = async { while rx.recv().await.is_some() {} };
                let (code, ()) = tokio::join!(exec, drain);
                match code.map_err(|e| Attempt::NotYet(e.to_string()))? {
                    0 => Ok(()),
                    code => Err(Attempt::NotYet(format!("exit code {code}"))),
                }
            }
        }
    }

    /// Removes a session whose start failed or whose workload died, and reports it FAILED:
    /// queued behind the session's other lifecycle commands, and skipped if the session was
    /// stopped or replaced meanwhile.
    fn fail(self: &Arc<Self>, session: &str, generation: u64, reason: String) {
        let this = self.clone();
        let session = session.to_owned();
        self.enqueue(&session.clone(), async move {
            let container_id = {
                let mut state = this.lock();
                let entry = match state.sessions.remove(&session) {
                    Some(e) if e.generation == generation && !e.watch.is_cancelled() => e,
                    Some(other) => {
                        state.sessions.insert(session.clone(), other);
                        return;
                    }
                    None => return,
                };
                entry.watch.cancel();
                entry.container_id
            };
            tracing::warn!(session = %session, generation, %reason, "session failed");
            this.cancel_session_turns(&session);
            if let Err(e) = this.runtime.stop(&session, FAILED_STOP_GRACE).await {
                tracing::warn!(session = %session, error = %e, "cannot remove the failed workload");
            }
            this.announce(SessionStatus {
                session_id: session,
                generation,
                state: SessionState::Failed.into(),
                reason,
                container_id,
                ..SessionStatus::default()
            })
            .await;
        });
    }

    fn cancel_session_turns(&self, session: &str) {
        for turn in self.lock().turns.values() {
            if turn.session_id == session {
                turn.cancel.cancel();
            }
        }
    }

    /// Records a new turn, or refuses a turn id already in flight (in the background: the
    /// reader must not wait on the mailbox).
    fn begin_turn(
        self: &Arc<Self>,
        turn_id: &str,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) -> Option<TurnGuard> {
        let cancel = CancellationToken::new();
        {
            let mut state = self.lock();
            if turn_id.is_empty() || state.turns.contains_key(turn_id) {
                drop(state);
                let (code, message) = if turn_id.is_empty() {
                    (Code::InvalidArgument, "the turn has no turn_id".to_owned())
                } else {
                    (
                        Code::AlreadyExists,
                        format!("turn {turn_id} is already running"),
                    )
                };
                let id = if turn_id.is_empty() {
                    &meta.command_id
                } else {
                    turn_id
                };
                let message = reply(id, Err(Failure::new(code, message)));
                let reply_to = reply_to.clone();
                tokio::spawn(async move { send(&reply_to, message).await });
                return None;
            }
            state.turns.insert(
                turn_id.to_owned(),
                Turn {
                    session_id: meta.session_id.clone(),
                    cancel: cancel.clone(),
                },
            );
        }
        Some(TurnGuard {
            sessions: self.clone(),
            turn_id: turn_id.to_owned(),
            cancel,
        })
    }

    /// Sends a turn's failure, if it failed and someone is left to tell, and counts it.
    async fn finish_turn(
        &self,
        kind: &'static str,
        turn_id: &str,
        result: Result<&'static str, TurnError>,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(TurnError::Gone) => "abandoned",
            Err(TurnError::Failed(failure)) => {
                let outcome = match failure.code {
                    Code::Cancelled => "cancelled",
                    Code::DeadlineExceeded => "timed_out",
                    _ => "failed",
                };
                tracing::debug!(turn = %turn_id, code = ?failure.code, message = %failure.message, "turn failed");
                let _ = send(reply_to, reply(turn_id, Err(failure))).await;
                outcome
            }
        };
        self.metrics.turn(kind, outcome);
    }

    async fn exec_turn(
        &self,
        command: ExecCommand,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
        cancel: &CancellationToken,
    ) -> Result<&'static str, TurnError> {
        self.fence(meta)?;
        let request: ExecRequest = command
            .request
            .ok_or_else(|| Failure::invalid("Exec carries no request"))?;
        let timeout = optional_duration(request.timeout.as_ref(), "timeout")?;
        let spec = ExecSpec {
            argv: request.argv,
            env: request.env.into_iter().collect(),
            stdin: request.stdin,
            workdir: request.workdir,
        };
        let turn_id = command.turn_id;
        let started = Instant::now();
        // Its own token: a timeout kills the command without looking like a CancelTurn.
        let kill = cancel.child_token();
        let (output, mut chunks) = mpsc::channel(EXEC_BUFFER);
        let exec = self
            .runtime
            .exec(&meta.session_id, spec, output, kill.clone());
        let forward = async {
            let mut gone = false;
            while let Some(chunk) = chunks.recv().await {
                if gone {
                    continue; // drain, so the command is never stuck on a full channel
                }
                let event = match chunk {
                    ExecOutput::Stdout(bytes) => exec_response::Event::Stdout(bytes),
                    ExecOutput::Stderr(bytes) => exec_response::Event::Stderr(bytes),
                };
                if send(reply_to, exec_message(&turn_id, event)).await.is_err() {
                    gone = true;
                    kill.cancel();
                }
            }
            gone
        };
        let run = async { tokio::join!(exec, forward) };
        tokio::pin!(run);
        let mut timed_out = false;
        let (code, gone) = tokio::select! {
            result = &mut run => result,
            () = sleep_or_never(timeout) => {
                timed_out = true;
                kill.cancel();
                run.await
            }
        };
        if gone {
            return Err(TurnError::Gone);
        }
        if cancel.is_cancelled() {
            return Err(cancelled(&turn_id).into());
        }
        let code = code?;
        let exit = ExecExit {
            code: if timed_out { -1 } else { code },
            timed_out,
            duration: Some(hearth_sdk::time::duration(started.elapsed())),
        };
        send(
            reply_to,
            exec_message(&turn_id, exec_response::Event::Exit(exit)),
        )
        .await?;
        Ok(if timed_out { "timed_out" } else { "ok" })
    }

    async fn invoke_turn(
        &self,
        command: InvokeCommand,
        meta: &CommandMeta,
        reply_to: &mpsc::Sender<AgentMessage>,
        cancel: &CancellationToken,
    ) -> Result<&'static str, TurnError> {
        self.fence(meta)?;
        let request = command
            .request
            .ok_or_else(|| Failure::invalid("Invoke carries no request"))?;
        let timeout = optional_duration(request.timeout.as_ref(), "timeout")?
            .unwrap_or(DEFAULT_INVOKE_TIMEOUT);
        let port = request.port;
        let session = &meta.session_id;
        let turn_id = &command.turn_id;
        tokio::select! {
            result = self.invoke(session, turn_id, request, reply_to) => result.map(|()| "ok"),
            () = sleep(timeout) => Err(Failure::new(
                Code::DeadlineExceeded,
                format!(
                    "Invoke to port {port} of session {session} did not complete within {}",
                    humantime::format_duration(timeout)
                ),
            )
            .into()),
            () = cancel.cancelled() => Err(cancelled(turn_id).into()),
        }
    }

    /// One HTTP exchange with the workload, streamed: head, body frames as they arrive, end.
    async fn invoke(
        &self,
        session: &str,
        turn_id: &str,
        request: InvokeRequest,
        reply_to: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), TurnError> {
        let port = request.port;
        let addr = self.runtime.address(session, port).await?;
        let http_request = http_request(addr, request)?;
        let unreachable = |what: &str, e: &(dyn std::error::Error + 'static)| {
            Failure::new(
                Code::Unavailable,
                format!(
                    "{what} port {port} of session {session} ({addr}): {}",
                    crate::report(e)
                ),
            )
        };
        let response = self
            .http
            .request(http_request)
            .await
            .map_err(|e| unreachable("cannot reach", &e))?;
        let head = InvokeHead {
            status: response.status().as_u16().into(),
            headers: response
                .headers()
                .iter()
                .map(|(name, value)| Header {
                    name: name.as_str().to_owned(),
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                })
                .collect(),
        };
        send(
            reply_to,
            invoke_message(turn_id, Some(invoke_response::Event::Head(head)), false),
        )
        .await?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable("the response broke off from", &e))?;
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                let event = invoke_response::Event::Body(data.to_vec());
                send(reply_to, invoke_message(turn_id, Some(event), false)).await?;
            }
        }
        send(reply_to, invoke_message(turn_id, None, true)).await?;
        Ok(())
    }
}

/// What a session watcher does.
enum Watch {
    /// A new start: wait for readiness (or report READY at once), then monitor.
    Start(Option<Probe>, Timing),
    /// An adopted workload: monitor only.
    Monitor,
}

/// How long a start's phases took, reported with READY.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Milliseconds spent pulling the image (0 when the node held it).
    pull_ms: u64,
    /// When the workload was started (after the pull).
    started: Instant,
}

/// How often a pull's progress goes to the broker, at most.
const PULL_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A readiness probe, checked and with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
struct Probe {
    check: Check,
    timeout: Duration,
    period: Duration,
}

#[derive(Clone, Debug, PartialEq)]
enum Check {
    Tcp(u32),
    Http { port: u32, path: String },
    Exec(Vec<String>),
}

/// Why one probe attempt did not pass.
enum Attempt {
    /// It may pass later.
    NotYet(String),
    /// It never will (the port is not declared, the workload is gone).
    Fatal(String),
}

impl Probe {
    /// The probe a spec asks for; `None` when it asks for none ("ready once started").
    fn from_proto(probe: Option<&ReadinessProbe>) -> Result<Option<Self>, Failure> {
        let Some(probe) = probe else { return Ok(None) };
        let port = |port: u32, field: &str| {
            if (1..=65535).contains(&port) {
                Ok(port)
            } else {
                Err(Failure::invalid(format!(
                    "spec.readiness.{field} {port} is not a TCP port (1-65535)"
                )))
            }
        };
        let check = match &probe.check {
            None => return Ok(None),
            Some(readiness_probe::Check::TcpPort(p)) => Check::Tcp(port(*p, "tcp_port")?),
            Some(readiness_probe::Check::Http(http)) => Check::Http {
                port: port(http.port, "http.port")?,
                path: match http.path.as_str() {
                    "" => "/".to_owned(),
                    p if p.starts_with('/') => p.to_owned(),
                    p => format!("/{p}"),
                },
            },
            Some(readiness_probe::Check::Exec(exec)) => {
                if exec.argv.is_empty() {
                    return Err(Failure::invalid(
                        "spec.readiness.exec.argv must name a command",
                    ));
                }
                Check::Exec(exec.argv.clone())
            }
        };
        let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        Ok(Some(Self {
            check,
            timeout: nonzero(optional_duration(
                probe.timeout.as_ref(),
                "spec.readiness.timeout",
            )?)
            .unwrap_or(DEFAULT_PROBE_TIMEOUT),
            period: nonzero(optional_duration(
                probe.period.as_ref(),
                "spec.readiness.period",
            )?)
            .unwrap_or(DEFAULT_PROBE_PERIOD),
        }))
    }

    /// The probe in words, for FAILED reasons: "tcp :8080", "http GET :8080/healthz".
    fn describe(&self) -> String {
        match &self.check {
            Check::Tcp(port) => format!("tcp :{port}"),
            Check::Http { port, path } => format!("http GET :{port}{path}"),
            Check::Exec(argv) => format!("exec {:?}", argv.join(" ")),
        }
    }
}

/// The HTTP request an Invoke asks for, aimed at `addr`.
fn http_request(
    addr: SocketAddr,
    request: InvokeRequest,
) -> Result<hyper::Request<Full<Bytes>>, Failure> {
    let method = if request.method.is_empty() {
        hyper::Method::GET
    } else {
        hyper::Method::from_bytes(request.method.as_bytes()).map_err(|_| {
            Failure::invalid(format!("method {:?} is not an HTTP method", request.method))
        })?
    };
    let path = match request.path.as_str() {
        "" => "/",
        p if p.starts_with('/') => p,
        p => return Err(Failure::invalid(format!("path {p:?} must start with /"))),
    };
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for header in &request.headers {
        let name = header.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::invalid(format!("header name {:?} is not valid", header.name)))?;
        let value = hyper::header::HeaderValue::from_str(&header.value).map_err(|_| {
            Failure::invalid(format!("header {:?} has an invalid value", header.name))
        })?;
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| Failure::invalid(format!("path {path:?}: {e}")))
}

/// A protobuf duration that may be absent; negative is an error naming `field`.
fn optional_duration(
    duration: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, Failure> {
    duration
        .map(|d| hearth_sdk::time::std_duration(d, field).map_err(Failure::invalid))
        .transpose()
}

async fn sleep_or_never(duration: Option<Duration>) {
    match duration.filter(|d| !d.is_zero()) {
        Some(duration) => sleep(duration).await,
        None => std::future::pending().await,
    }
}

fn cancelled(turn_id: &str) -> Failure {
    Failure::new(Code::Cancelled, format!("turn {turn_id} was cancelled"))
}

fn exit_words(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("with code {code}"),
        None => "(exit code unknown)".to_owned(),
    }
}

/// Sends one message, waiting for room (backpressure); `Gone` once the stream has ended.
async fn send(to: &mpsc::Sender<AgentMessage>, msg: agent_message::Msg) -> Result<(), Gone> {
    to.send(AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| Gone)
}

/// A Reply: ok with the container id, or the failure.
fn reply(command_id: &str, result: Result<String, Failure>) -> agent_message::Msg {
    agent_message::Msg::Reply(match result {
        Ok(container_id) => Reply {
            command_id: command_id.to_owned(),
            ok: true,
            code: Code::Ok as i32,
            message: String::new(),
            container_id,
        },
        Err(failure) => Reply {
            command_id: command_id.to_owned(),
            ok: false,
            code: failure.code as i32,
            message: failure.message,
            container_id: String::new(),
        },
    })
}

fn status_message(status: SessionStatus) -> agent_message::Msg {
    agent_message::Msg::SessionStatus(status)
}

fn exec_message(turn_id: &str, event: exec_response::Event) -> agent_message::Msg {
    agent_message::Msg::ExecOutput(ExecOutputMsg {
        turn_id: turn_id.to_owned(),
        response: Some(ExecResponse { event: Some(event) }),
    })
}

fn invoke_message(
    turn_id: &str,
    event: Option<invoke_response::Event>,
    end: bool,
) -> agent_message::Msg {
    agent_message::Msg::InvokeChunk(InvokeChunk {
        turn_id: turn_id.to_owned(),
        response: event.map(|event| InvokeResponse { event: Some(event) }),
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{ExecProbe, HttpProbe};

    #[test]
    fn runtime_errors_map_to_codes() {
        let cases = [
            (RuntimeError::ImageNotFound("x".into()), Code::NotFound),
            (RuntimeError::NotFound("s".into()), Code::NotFound),
            (
                RuntimeError::PortNotExposed {
                    session_id: "s".into(),
                    port: 1,
                },
                Code::InvalidArgument,
            ),
            (
                RuntimeError::WrongState("paused".into()),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::InvalidSpec {
                    field: "f".into(),
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (
                RuntimeError::Backend {
                    runtime: "process",
                    message: "m".into(),
                },
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Failure::from(error).code, code);
        }
    }

    #[test]
    fn probes_get_defaults_and_are_checked() {
        assert_eq!(Probe::from_proto(None).unwrap(), None);
        assert_eq!(
            Probe::from_proto(Some(&ReadinessProbe::default())).unwrap(),
            None
        );
        let tcp = Probe::from_proto(Some(&ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(8080)),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(tcp.timeout, DEFAULT_PROBE_TIMEOUT);
        assert_eq!(tcp.period, DEFAULT_PROBE_PERIOD);
        assert_eq!(tcp.describe(), "tcp :8080");
        let http = Probe::from_proto(Some(&ReadinessProbe {
            check: Some(readiness_probe::Check::Http(HttpProbe {
                port: 80,
                path: "healthz".into(),
            })),
            timeout: Some(hearth_sdk::time::duration(Duration::from_secs(30))),
            period: Some(hearth_sdk::time::duration(Duration::from_millis(50))),
        }))
        .unwrap()
        .unwrap();
        assert_eq!(http.describe(), "http GET :80/healthz");
        assert_eq!(http.timeout, Duration::from_secs(30));
        assert_eq!(http.period, Duration::from_millis(50));

        for bad in [
            readiness_probe::Check::TcpPort(0),
            readiness_probe::Check::Exec(ExecProbe { argv: vec![] }),
        ] {
            let probe = ReadinessProbe {
                check: Some(bad),
                ..Default::default()
            };
            let err = Probe::from_proto(Some(&probe)).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{err:?}");
        }
        let negative = ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(1)),
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        };
        let err = Probe::from_proto(Some(&negative)).unwrap_err();
        assert_eq!(err.message, "spec.readiness.timeout must not be negative");
    }

    #[test]
    fn invoke_requests_drop_hop_by_hop_headers_and_check_the_rest() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let header = |name: &str, value: &str| Header {
            name: name.into(),
            value: value.into(),
        };
        let request = http_request(
            addr,
            InvokeRequest {
                method: "POST".into(),
                path: "/v1/x?q=1".into(),
                headers: vec![
                    header("Content-Type", "application/json"),
                    header("Connection", "close"),
                    header("Host", "elsewhere"),
                    header("Content-Length", "999"),
                ],
                body: b"{}".to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(request.method(), hyper::Method::POST);
        assert_eq!(request.uri().to_string(), "http://127.0.0.1:9/v1/x?q=1");
        assert_eq!(request.headers().len(), 1, "{:?}", request.headers());
        assert_eq!(request.headers()["content-type"], "application/json");

        let get = http_request(addr, InvokeRequest::default()).unwrap();
        assert_eq!(get.method(), hyper::Method::GET);
        assert_eq!(get.uri().path(), "/");

        for bad in [
            InvokeRequest {
                path: "nope".into(),
                ..Default::default()
            },
            InvokeRequest {
                method: "GE T".into(),
                ..Default::default()
            },
            InvokeRequest {
                headers: vec![header("bad name", "v")],
                ..Default::default()
            },
        ] {
            assert_eq!(
                http_request(addr, bad).unwrap_err().code,
                Code::InvalidArgument
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

        /// Whatever a command carries, turning it into the workload's HTTP request never
        /// panics: it is a request with that method and path, or INVALID_ARGUMENT naming
        /// the part that is wrong.
        #[test]
        fn any_invoke_becomes_a_request_or_a_clear_error(
            method in "[A-Z]{0,8}|.{0,8}",
            path in "/[ -~]{0,40}|[ -~]{0,20}|.{0,20}",
            headers in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let request = InvokeRequest {
                method: method.clone(),
                path: path.clone(),
                headers: headers
                    .iter()
                    .map(|(name, value)| Header { name: name.clone(), value: value.clone() })
                    .collect(),
                body: body.clone(),
                ..Default::default()
            };
            match http_request(addr, request) {
                Ok(built) => {
                    let want = if method.is_empty() { "GET" } else { method.as_str() };
                    proptest::prop_assert_eq!(built.method().as_str(), want);
                    proptest::prop_assert!(path.is_empty() || path.starts_with('/'));
                    proptest::prop_assert!(
                        built.headers().keys().all(|k| !HOP_BY_HOP.contains(&k.as_str()))
                    );
                }
                Err(failure) => {
                    proptest::prop_assert_eq!(failure.code, Code::InvalidArgument);
                    let m = &failure.message;
                    proptest::prop_assert!(
                        m.contains("method") || m.contains("path") || m.contains("header"),
                        "{}", m
                    );
                }
            }
        }

        /// Any protobuf duration is a duration, nothing, or an error naming its field.
        #[test]
        fn any_duration_converts_or_names_its_field(
            seconds in proptest::num::i64::ANY,
            nanos in proptest::num::i32::ANY,
        ) {
            let d = prost_types::Duration { seconds, nanos };
            match optional_duration(Some(&d), "spec.idle_timeout") {
                Ok(Some(_)) => proptest::prop_assert!(seconds >= 0),
                Ok(None) => {}
                Err(failure) => proptest::prop_assert!(
                    failure.message.contains("spec.idle_timeout"),
                    "{}", failure.message
                ),
            }
        }
    }
}
