//! Where session workloads run: the [`Runtime`] seam, with a Docker implementation
//! (`runtime/docker.rs`, bollard) for production and a process implementation
//! (`runtime/process.rs`) for hosts without Docker.
//!
//! A runtime knows nothing about the broker. It starts, stops, pauses and resumes the
//! workload of one session, runs commands inside it, says where its ports can be reached,
//! and lists the workloads it finds on the host, so a restarted agent can re-adopt them
//! (Docker owns containers; the process runtime keeps state on disk). Readiness probes,
//! turns and idle handling live above it, in `sessions.rs`, and are the same for both.

pub mod docker;
pub mod process;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use async_trait::async_trait;
use hearth_sdk::proto::v1::SessionSpec;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Label (docker) or state-file field (process) naming the session.
pub const LABEL_SESSION: &str = "hearth.session";
/// Label naming the session generation.
pub const LABEL_GENERATION: &str = "hearth.generation";
/// Label naming the leader epoch that started the workload.
pub const LABEL_EPOCH: &str = "hearth.epoch";
/// Label naming the session's tenant.
pub const LABEL_TENANT: &str = "hearth.tenant";
/// Label naming the node whose agent started the workload: an agent lists and re-adopts
/// only its own, so agents sharing one engine never claim each other's containers.
pub const LABEL_NODE: &str = "hearth.node";

/// Everything needed to start one session's workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartRequest {
    /// Session id.
    pub session_id: String,
    /// Session generation; bumped on every (re)start.
    pub generation: u64,
    /// Leader epoch of the broker that asked.
    pub epoch: i64,
    /// Owner tenant.
    pub tenant: String,
    /// What to run (validated by the broker).
    pub spec: SessionSpec,
    /// GPUs allocated to it, by UUID. Empty for a CPU-only session.
    pub gpu_uuids: Vec<String>,
    /// Its network policy, as the broker resolved it; `None` (an older broker): egress
    /// and sessions of the tenant reaching each other, the broker's defaults.
    pub network: Option<hearth_sdk::proto::v1::SessionNetwork>,
}

/// What a start needs of its image.
#[derive(Clone, Copy, Debug)]
pub struct ImageRequest<'a> {
    /// The session's spec: its image and pull policy.
    pub spec: &'a SessionSpec,
    /// The session's tenant.
    pub tenant: &'a str,
    /// The tenant's credentials for the image's registry, if it set any.
    pub auth: Option<&'a hearth_sdk::proto::v1::RegistryAuth>,
}

/// A workload's state as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadState {
    /// Running.
    Running,
    /// Frozen (docker pause / SIGSTOP).
    Paused,
    /// Not running any more; the exit code if known.
    Exited(Option<i32>),
}

/// A session workload found on (or started on) this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Session id.
    pub session_id: String,
    /// Session generation it was started with.
    pub generation: u64,
    /// Leader epoch that started it.
    pub epoch: i64,
    /// Container id (docker) or process id (process).
    pub id: String,
    /// Its state now.
    pub state: WorkloadState,
}

/// A command to run inside a session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecSpec {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Bytes written to stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Working directory; empty for the workload's own.
    pub workdir: String,
}

/// Output of a command, as it is produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes written to stdout.
    Stdout(Vec<u8>),
    /// Bytes written to stderr.
    Stderr(Vec<u8>),
}

/// Errors from a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image (docker) or executable (process) does not exist on this host.
    #[error("image {0:?} not found on this node")]
    ImageNotFound(String),
    /// The image is not on this host and `spec.pull_policy` is NEVER.
    #[error(
        "image {0:?} is not on this node and spec.pull_policy is NEVER (load it there, or allow pulls)"
    )]
    NotPulled(String),
    /// The image on this host was pulled with another tenant's registry credentials, and
    /// `spec.pull_policy` NEVER forbids pulling it with this tenant's.
    #[error(
        "image {0:?} on this node was pulled with another tenant's registry credentials; \
         with spec.pull_policy NEVER this tenant cannot pull it with its own"
    )]
    NotPulledForTenant(String),
    /// Pulling the image from its registry failed: `reason` is the registry's or the
    /// network's, as the engine reported it.
    #[error("pulling image {image:?}: {reason}")]
    PullFailed {
        /// The image as the spec names it.
        image: String,
        /// Why, as the engine said it.
        reason: String,
        /// The registry does not have it (manifest or repository unknown).
        not_found: bool,
    },
    /// No workload of this session exists.
    #[error("no workload for session {0}")]
    NotFound(String),
    /// The session declares no such port.
    #[error(
        "port {port} is not exposed by session {session_id} (spec.ports lists the ports Invoke may use)"
    )]
    PortNotExposed {
        /// The session.
        session_id: String,
        /// The port asked for.
        port: u32,
    },
    /// The workload is not in a state that allows this (e.g. exec in a stopped container).
    #[error("{0}")]
    WrongState(String),
    /// The spec asks for something this runtime cannot do.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The spec field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The container engine or the OS failed.
    #[error("{runtime} runtime: {message}")]
    Backend {
        /// "docker" or "process".
        runtime: &'static str,
        /// What failed.
        message: String,
    },
}

/// How far an image pull has got, over every layer seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Bytes downloaded.
    pub done_bytes: u64,
    /// Bytes to download, as far as known (a layer's size is known once it starts).
    pub total_bytes: u64,
    /// Layers pulled or already held.
    pub layers_done: u32,
    /// Layers seen.
    pub layers_total: u32,
}

/// Where session workloads run.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// "docker" or "process".
    fn kind(&self) -> &'static str;

    /// Makes sure the image the request's spec names is on this host, pulling it (with
    /// the request's credentials) as `spec.pull_policy` says, with its progress on
    /// `progress`. Returns whether it pulled. Called before [`Runtime::start`]. The
    /// default has nothing to pull (the process runtime runs executables of the host).
    async fn prepare_image(
        &self,
        request: ImageRequest<'_>,
        progress: watch::Sender<PullProgress>,
    ) -> Result<bool, RuntimeError> {
        let _ = (request, progress);
        Ok(false)
    }

    /// The images this host holds, as the engine names them: repository tags and
    /// repository digests. The default holds none (the process runtime has no images).
    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Goes up whenever this agent pulls or removes an image, so the broker can be told
    /// at once rather than at the next periodic listing.
    fn images_version(&self) -> u64 {
        0
    }

    /// Creates and starts the workload (no readiness check: that is the caller's). A
    /// leftover workload of the same session is replaced. Fails with `ImageNotFound` when
    /// the image or executable is absent; nothing is left behind on failure.
    async fn start(&self, request: &StartRequest) -> Result<Workload, RuntimeError>;

    /// Stops the workload (SIGTERM, then SIGKILL after `grace`) and removes it.
    /// Idempotent: stopping an absent workload is not an error.
    async fn stop(&self, session_id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Freezes the workload's processes; memory (and VRAM) stay.
    async fn pause(&self, session_id: &str) -> Result<(), RuntimeError>;

    /// Unfreezes a paused workload.
    async fn resume(&self, session_id: &str) -> Result<(), RuntimeError>;

    /// Runs a command inside the workload, sending its output to `output` as it comes
    /// (waiting when `output` is full: backpressure), and returns its exit code (-1 if it
    /// was killed by a signal). When `cancel` fires, the command is killed and the call
    /// returns promptly.
    async fn exec(
        &self,
        session_id: &str,
        spec: ExecSpec,
        output: mpsc::Sender<ExecOutput>,
        cancel: CancellationToken,
    ) -> Result<i32, RuntimeError>;

    /// Where `port` of the session can be reached from this host. Fails with
    /// `PortNotExposed` for a port the spec does not list.
    async fn address(&self, session_id: &str, port: u32) -> Result<SocketAddr, RuntimeError>;

    /// The session's workload, if one exists.
    async fn inspect(&self, session_id: &str) -> Result<Option<Workload>, RuntimeError>;

    /// Every Hearth workload on this host (for re-adoption after an agent restart).
    async fn list(&self) -> Result<Vec<Workload>, RuntimeError>;
}
