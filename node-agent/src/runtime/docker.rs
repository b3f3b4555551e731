//! The Docker runtime: one container per session, driven through bollard.
//!
//! - A session's container is named `hearth-<session id>` and labelled with the session,
//!   generation, epoch and tenant, so [`Runtime::list`] finds it again after an agent
//!   restart. Docker owns the state; this type keeps only a cache of addresses.
//! - Images are pulled on demand before a start, as `spec.pull_policy` says, one pull per
//!   image however many starts wait for it, with progress (`docker/pull.rs`).
//! - Containers start hardened: not privileged, every capability dropped (the spec's
//!   `security.add_capabilities` are added back; the broker allows them per tenant),
//!   `no-new-privileges`, and always a pids, memory and CPU limit: the spec's, else the
//!   agent's `[session_limits]`.
//!   GPUs are a `DeviceRequest` for the allocated UUIDs (the NVIDIA container runtime then
//!   sets `NVIDIA_VISIBLE_DEVICES`; we set no GPU variables ourselves).
//! - Ports are reached directly at the container's IP on its network (Docker's default
//!   bridge, or the one `docker.network` names), which the agent can route to on Linux;
//!   nothing is published on the host's interfaces. An agent in a container names a
//!   network it is attached to itself.
//!
//! Exec cancellation: Docker has no API to kill an exec'd process. On cancel we look its
//! pid up (`inspect_exec`, a pid in dockerd's pid namespace), check through
//! `/proc/<pid>/cgroup` that it still belongs to the session's container (so a recycled
//! pid is never hit), and SIGKILL it, or its whole process group when it leads one. That
//! needs the agent in the host's pid namespace and allowed to signal the container's
//! processes (root, as the agent runs). Where that fails the call still returns promptly,
//! with an error saying the command runs on until it exits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, DeviceRequest, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SessionLimits;

mod firewall;
pub mod gc;
pub mod network;
pub mod private;
pub mod pull;

pub use firewall::Firewall;
use network::{Networks, Policy};

use super::{
    ExecOutput, ExecSpec, ImageRequest, LABEL_EPOCH, LABEL_GENERATION, LABEL_NODE, LABEL_SESSION,
    LABEL_TENANT, PullProgress, Runtime, RuntimeError, StartRequest, Workload, WorkloadState,
};

/// Pids limit for a session whose spec sets none, unless `session_limits.pids_limit`
/// says otherwise.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Container name prefix; the session id follows.
pub const CONTAINER_PREFIX: &str = "hearth-";

/// Label naming the network a session's container joined, so its address is looked up
/// there (also for a container adopted after an agent restart).
const LABEL_NETWORK: &str = "hearth.network";

/// Label holding the ports the spec lists (comma-separated), so `address` can refuse other
/// ports even for a container adopted after an agent restart. (The container's
/// `ExposedPorts` would not do: it also holds whatever the image `EXPOSE`s.)
const LABEL_PORTS: &str = "hearth.ports";

/// The longest we wait between polls for an exec's exit code.
const EXEC_POLL_MAX: Duration = Duration::from_millis(200);

/// Where a session's ports are, cached: `address` is on the turn hot path.
#[derive(Clone, Debug)]
struct CachedAddress {
    ip: IpAddr,
    ports: Vec<u32>,
}

/// The Docker runtime. Cheap to share behind an `Arc`; all state lives in Docker except the
/// address cache.
pub struct DockerRuntime {
    docker: Docker,
    addresses: Mutex<HashMap<String, CachedAddress>>,
    limits: SessionLimits,
    /// The node whose containers these are (`hearth.node`); `None` means every Hearth
    /// container on the engine.
    node: Option<String>,
    /// The one network every container joins (`docker.network`), shared by tenants.
    network: Option<String>,
    /// Per-tenant session networks (the default for an agent); `None`: the shared
    /// `network`, else Docker's default bridge.
    networks: Option<Networks>,
    /// With a shared network: whether sessions of several tenants may run here.
    mixed_tenants: bool,
    /// Image pulls in progress.
    pulls: std::sync::Arc<pull::Pulls>,
    /// The images this agent pulled, for garbage collection (`gc.rs`); `None` until
    /// [`DockerRuntime::recording_pulls`].
    pulled: Option<gc::Pulled>,
    /// Goes up with every image this agent pulls or removes ([`Runtime::images_version`]).
    images_version: std::sync::atomic::AtomicU64,
    /// Images pulled with a tenant's credentials, kept for that tenant (`private.rs`).
    private: private::Private,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}

/// The container name of a session.
pub fn container_name(session_id: &str) -> String {
    format!("{CONTAINER_PREFIX}{session_id}")
}

pub(super) fn backend(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Backend {
        runtime: "docker",
        message: message.into(),
    }
}

/// The HTTP status of a Docker engine error, if it was one.
pub(super) fn status_of(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps an engine error about `session_id`: 404 is `NotFound`, 409 (paused, not running,
/// ...) is `WrongState`, anything else `Backend` with what we were doing.
fn map_error(error: DockerError, session_id: &str, doing: &str) -> RuntimeError {
    match error {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(session_id.to_string()),
        DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::WrongState(format!("session {session_id}: {message}")),
        other => backend(format!("{doing} for session {session_id}: {other}")),
    }
}

impl DockerRuntime {
    /// Connects to the local Docker engine (`DOCKER_HOST`, else the default socket),
    /// agrees on an API version with it, and pings it.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let unreachable = |e: DockerError| {
            backend(format!(
                "cannot reach the Docker engine ({e}); is dockerd running, and may this user use its socket (DOCKER_HOST, /var/run/docker.sock)?"
            ))
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        // bollard speaks a newer API than older engines accept; settle on the engine's.
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        let limits = SessionLimits::default().resolve(&crate::host::capacity());
        Ok(Self {
            docker,
            addresses: Mutex::new(HashMap::new()),
            limits,
            node: None,
            network: None,
            networks: None,
            mixed_tenants: false,
            pulls: Default::default(),
            pulled: None,
            images_version: Default::default(),
            private: Default::default(),
        })
    }

    /// Gives each tenant its own session networks on this node (see `network.rs`),
    /// firewalled from the host and the metadata address when `firewall` is set. Adopts
    /// the networks an earlier agent made and removes those left empty. Call after
    /// [`DockerRuntime::for_node`].
    pub async fn with_tenant_networks(mut self, firewall: bool) -> Result<Self, RuntimeError> {
        let node = self
            .node
            .clone()
            .ok_or_else(|| backend("tenant networks need the node id (for_node)"))?;
        let firewall = if firewall {
            Some(Firewall::new(&node)?)
        } else {
            tracing::warn!(
                "docker.firewall is off: sessions can reach this host's services and the \
                 cloud metadata address"
            );
            None
        };
        let networks = Networks::new(self.docker.clone(), node, firewall);
        networks.sweep().await?;
        self.networks = Some(networks);
        Ok(self)
    }

    /// On a shared network (`on_network`), allows sessions of several tenants, which can
    /// then reach each other. Off by default: a start for a second tenant is refused.
    pub fn mixed_tenants(mut self, allowed: bool) -> Self {
        self.mixed_tenants = allowed;
        self
    }

    /// Refuses a start for `tenant` on a shared network that runs another tenant's
    /// sessions, unless mixed tenants are allowed.
    async fn check_shared_network(&self, tenant: &str) -> Result<(), RuntimeError> {
        let Some(network) = &self.network else {
            return Ok(());
        };
        if self.mixed_tenants {
            return Ok(());
        }
        let options = ListContainersOptions {
            all: false,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![match &self.node {
                    Some(node) => format!("{LABEL_NODE}={node}"),
                    None => LABEL_SESSION.to_owned(),
                }],
            )])),
            ..Default::default()
        };
        let running = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| backend(format!("listing containers: {e}")))?;
        let other = running.iter().find_map(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_TENANT))
                .filter(|t| t.as_str() != tenant)
        });
        match other {
            None => Ok(()),
            Some(other) => Err(RuntimeError::WrongState(format!(
                "this node runs sessions of tenant {other:?} on the shared network {network:?} \
                 (docker.network), where tenants could reach each other; it takes no session \
                 of tenant {tenant:?} unless started with --mixed-tenants"
            ))),
        }
    }

    /// Puts session containers on `network` (which must exist) instead of the default
    /// bridge, and reaches their ports there.
    pub async fn on_network(mut self, network: impl Into<String>) -> Result<Self, RuntimeError> {
        let network = network.into();
        match self
            .docker
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {
                return Err(backend(format!(
                    "docker.network: no Docker network named {network:?} (create it, or attach \
                     the agent's own network there)"
                )));
            }
            Err(e) => {
                return Err(backend(format!(
                    "docker.network: inspecting network {network:?}: {e}"
                )));
            }
        }
        self.network = Some(network);
        Ok(self)
    }

    /// Labels new containers with `node` and lists only containers so labelled, so that
    /// agents of several nodes (or clusters) sharing one engine keep to their own.
    pub fn for_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Uses `limits` (resolved: no zeros) for sessions whose spec leaves a limit at 0,
    /// instead of the built-in defaults.
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bollard client, for callers that need more than the trait (events, stats).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes session networks left without sessions; a failure is logged, and the next
    /// sweep tries again.
    async fn sweep_networks(&self) {
        if let Some(networks) = &self.networks
            && let Err(e) = networks.sweep().await
        {
            tracing::warn!(error = %e, "sweeping session networks");
        }
    }

    fn forget_address(&self, session_id: &str) {
        self.addresses
            .lock()
            .expect("address cache poisoned")
            .remove(session_id);
    }

    /// Records the images this agent pulls, and when starts use them, under `state_dir`
    /// (see `gc.rs`), so [`DockerRuntime::collect_images`] can remove them later.
    pub fn recording_pulls(mut self, state_dir: &std::path::Path) -> Result<Self, RuntimeError> {
        self.pulled = Some(gc::Pulled::load(state_dir)?);
        self.private = private::Private::load(state_dir)?;
        Ok(self)
    }

    /// Pulls started since the agent started (a start that joined another's pull counts
    /// no new one).
    pub fn pulls_started(&self) -> u64 {
        self.pulls.started()
    }

    /// Notes that this agent pulled or removed an image.
    fn images_changed(&self) {
        self.images_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The engine's id of `image` if it holds it.
    async fn holds(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(Some(found.id.unwrap_or_default())),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend(format!("inspecting image {image:?}: {e}"))),
        }
    }

    /// Fails with `ImageNotFound` unless the image is on this host. Never pulls (that is
    /// [`Runtime::prepare_image`]'s).
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if image.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                field: "image".into(),
                reason: "must name a container image".into(),
            });
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ImageNotFound(image.to_string()))
            }
            Err(e) => Err(backend(format!("inspecting image {image:?}: {e}"))),
        }
    }

    /// Force-removes the session's container; absent is fine.
    async fn remove(&self, session_id: &str) -> Result<(), RuntimeError> {
        self.forget_address(session_id);
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(&container_name(session_id), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // "removal already in progress": someone else is doing our job.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(map_error(e, session_id, "removing the container")),
        }
    }

    async fn inspect_container(
        &self,
        session_id: &str,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self
            .docker
            .inspect_container(&container_name(session_id), None)
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_error(e, session_id, "inspecting the container")),
        }
    }

    /// Judges a failed pause or unpause by the state it left: already in the wanted state is
    /// success (a retried command must not fail; Docker answers 409 or 500 for it, by
    /// version), a stopped container is `WrongState`, a missing one `NotFound`.
    async fn settle(
        &self,
        session_id: &str,
        error: DockerError,
        wanted: WorkloadState,
        doing: &str,
    ) -> Result<(), RuntimeError> {
        if status_of(&error) == Some(404) {
            return Err(RuntimeError::NotFound(session_id.to_string()));
        }
        match self.inspect(session_id).await? {
            None => Err(RuntimeError::NotFound(session_id.to_string())),
            Some(workload) if workload.state == wanted => Ok(()),
            Some(Workload {
                state: WorkloadState::Exited(code),
                ..
            }) => Err(RuntimeError::WrongState(format!(
                "session {session_id} is not running (exit code {code:?})"
            ))),
            Some(_) => Err(map_error(error, session_id, doing)),
        }
    }

    /// Waits for an exec to finish after its output ended and returns its exit code.
    /// (The output can end a moment before Docker records the exit.)
    async fn exec_exit_code(
        &self,
        session_id: &str,
        exec_id: &str,
        cancel: &CancellationToken,
    ) -> Result<i32, RuntimeError> {
        let mut delay = Duration::from_millis(2);
        loop {
            let info = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|e| map_error(e, session_id, "inspecting an exec"))?;
            if info.running != Some(true) {
                return Ok(info.exit_code.map_or(-1, |c| c as i32));
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => {
                    return self.kill_exec(session_id, exec_id).await;
                }
            }
            delay = (delay * 2).min(EXEC_POLL_MAX);
        }
    }

    /// Cancels an exec: kills its process (see the module docs) and returns -1.
    async fn kill_exec(&self, session_id: &str, exec_id: &str) -> Result<i32, RuntimeError> {
        let info = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| map_error(e, session_id, "inspecting an exec to cancel it"))?;
        if info.running != Some(true) {
            return Ok(-1); // it ended by itself meanwhile
        }
        let pid = info.pid.unwrap_or(0);
        let container_id = info.container_id.unwrap_or_default();
        kill_container_process(&container_id, pid).map_err(|why| {
            backend(format!(
                "exec in session {session_id} was cancelled, but its process (pid {pid}) could not be killed, so it runs on until it exits: {why}"
            ))
        })?;
        Ok(-1)
    }
}

/// SIGKILLs `pid` (dockerd's pid namespace) if it is still a process of container
/// `container_id`, or its process group when it leads one (taking its children along).
fn kill_container_process(container_id: &str, pid: i64) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;

    let pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("Docker reported no usable pid ({pid})"))?;
    // The cgroup check guards against a pid recycled since inspect_exec, and against an
    // agent in another pid namespace, where the number names some other process.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
        format!("reading /proc/{pid}/cgroup: {e} (is the agent in the host's pid namespace?)")
    })?;
    if container_id.is_empty() || !cgroup.contains(container_id) {
        return Err(format!(
            "process {pid} is not in the container's cgroup (it exited, or the agent does not share dockerd's pid namespace)"
        ));
    }
    let leads_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| process_group(&stat))
        == Some(pid);
    let result = if leads_group {
        killpg(Pid::from_raw(pid), Signal::SIGKILL)
    } else {
        kill(Pid::from_raw(pid), Signal::SIGKILL)
    };
    match result {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("kill: {e}")),
    }
}

/// The process group field of a `/proc/<pid>/stat` line. The command name, in
/// parentheses, may itself hold spaces and parentheses, so parse after the last `)`.
fn process_group(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state, ppid, pgrp
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The ports label value for a spec.
fn ports_label(ports: &[u32]) -> String {
    ports
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ports_label(value: Option<&String>) -> Vec<u32> {
    value
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The container definition for a start request: hardened defaults, limits (the spec's,
/// else `defaults`), GPUs.
fn container_body(
    request: &StartRequest,
    defaults: &SessionLimits,
) -> Result<ContainerCreateBody, RuntimeError> {
    let spec = &request.spec;
    let mut ports = Vec::with_capacity(spec.ports.len());
    for port in &spec.ports {
        if !(1..=65535).contains(&port.port) {
            return Err(RuntimeError::InvalidSpec {
                field: "ports".into(),
                reason: format!("{} is not a TCP port (1-65535)", port.port),
            });
        }
        ports.push(port.port);
    }

    // Simulated GPUs have no device to pass through (and no NVIDIA runtime to pass it):
    // the workload is told which it was given, in a variable that says so.
    let (simulated, real): (Vec<String>, Vec<String>) = request
        .gpu_uuids
        .iter()
        .cloned()
        .partition(|u| u.starts_with(crate::gpu::simulated::UUID_PREFIX));
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !simulated.is_empty() {
        env.push(format!("HEARTH_SIMULATED_GPUS={}", simulated.join(",")));
    }
    env.sort();

    let labels = HashMap::from([
        (LABEL_SESSION.to_string(), request.session_id.clone()),
        (LABEL_GENERATION.to_string(), request.generation.to_string()),
        (LABEL_EPOCH.to_string(), request.epoch.to_string()),
        (LABEL_TENANT.to_string(), request.tenant.clone()),
        (LABEL_PORTS.to_string(), ports_label(&ports)),
    ]);

    let resources = spec.resources.unwrap_or_default();
    let or_default = |spec: u64, default: u64| if spec > 0 { spec } else { default };
    let memory = i64::try_from(or_default(resources.memory_bytes, defaults.memory))
        .ok()
        .filter(|m| *m > 0)
        .ok_or_else(|| RuntimeError::InvalidSpec {
            field: "resources.memory_bytes".into(),
            reason: "too large".into(),
        })?;
    let cpu_millis = or_default(
        u64::from(resources.cpu_millis),
        u64::from(defaults.cpu_millis).max(1),
    );
    let nano_cpus = i64::try_from(cpu_millis * 1_000_000).unwrap_or(i64::MAX);
    let pids_limit = i64::try_from(or_default(
        u64::from(resources.pids_limit),
        u64::from(defaults.pids_limit).max(1),
    ))
    .unwrap_or(DEFAULT_PIDS_LIMIT);
    // Capabilities come back on top of dropping ALL; the broker has checked them against
    // its per-tenant allowance, and they are names Docker knows without the CAP_ prefix.
    let cap_add = spec
        .security
        .as_ref()
        .map(|s| s.add_capabilities.clone())
        .filter(|c| !c.is_empty());

    let device_requests = (!real.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(real.clone()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });

    let host_config = HostConfig {
        privileged: Some(false),
        // Every capability goes: a model server needs none to read its weights, use its
        // GPUs (device files) or listen on its ports (Docker sets
        // `ip_unprivileged_port_start=0` in a container's network namespace).
        cap_drop: Some(vec!["ALL".into()]),
        cap_add,
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        pids_limit: Some(pids_limit),
        memory: Some(memory),
        // Swap as large as nothing: a model server that swaps is worse than one that is
        // OOM-killed and reported.
        memory_swap: Some(memory),
        nano_cpus: Some(nano_cpus),
        device_requests,
        // A tiny init (dockerd's docker-init) as PID 1 forwards SIGTERM to the workload
        // and reaps its children. A model server as PID 1 that installs no SIGTERM
        // handler would otherwise ignore the stop signal and be killed only after the
        // whole grace period.
        init: Some(true),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!ports.is_empty())
            .then(|| ports.iter().map(|p| format!("{p}/tcp")).collect()),
        host_config: Some(host_config),
        ..Default::default()
    })
}

fn label<T: std::str::FromStr + Default>(labels: Option<&HashMap<String, String>>, key: &str) -> T {
    labels
        .and_then(|l| l.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

fn workload_from_inspect(session_id: &str, info: &ContainerInspectResponse) -> Workload {
    let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
    let state = info.state.as_ref();
    let workload_state = match state.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::PAUSED) => WorkloadState::Paused,
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING) => {
            WorkloadState::Running
        }
        Some(ContainerStateStatusEnum::CREATED) => WorkloadState::Exited(None),
        _ => WorkloadState::Exited(state.and_then(|s| s.exit_code).map(|c| c as i32)),
    };
    Workload {
        session_id: session_id.to_string(),
        generation: label(labels, LABEL_GENERATION),
        epoch: label(labels, LABEL_EPOCH),
        id: info.id.clone().unwrap_or_default(),
        state: workload_state,
    }
}

/// The container's IP: on `network` (the one it was created on), else on its first
/// network with an address, the default bridge first.
fn container_ip(info: &ContainerInspectResponse, network: Option<&str>) -> Option<IpAddr> {
    let networks = info.network_settings.as_ref()?.networks.as_ref()?;
    let preferred = network.unwrap_or("bridge");
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort_by_key(|name| (name.as_str() != preferred, name.as_str()));
    names.into_iter().find_map(|name| {
        networks[name]
            .ip_address
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse().ok())
    })
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn prepare_image(
        &self,
        request: ImageRequest<'_>,
        progress: tokio::sync::watch::Sender<PullProgress>,
    ) -> Result<bool, RuntimeError> {
        use hearth_sdk::proto::v1::PullPolicy;
        let spec = request.spec;
        let image = spec.image.as_str();
        if image.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                field: "image".into(),
                reason: "must name a container image".into(),
            });
        }
        let held = self.holds(image).await?;
        // Held, but pulled with another tenant's credentials: this tenant must show the
        // registry its own (private.rs).
        let theirs = held
            .as_deref()
            .is_some_and(|id| !self.private.allows(id, request.tenant));
        let pull = match spec.pull_policy() {
            PullPolicy::Never if held.is_none() => {
                return Err(RuntimeError::NotPulled(image.to_owned()));
            }
            PullPolicy::Never if theirs => {
                return Err(RuntimeError::NotPulledForTenant(image.to_owned()));
            }
            PullPolicy::Never => false,
            PullPolicy::Always => theirs || !(held.is_some() && pull::is_digest(image)),
            PullPolicy::IfNotPresent | PullPolicy::Unspecified => theirs || held.is_none(),
        };
        if pull {
            let auth = request.auth.map(|auth| pull::Auth {
                tenant: request.tenant.to_owned(),
                credentials: bollard::auth::DockerCredentials {
                    username: Some(auth.username.clone()),
                    password: Some(auth.password.clone()),
                    serveraddress: Some(auth.registry.clone()),
                    ..Default::default()
                },
            });
            self.pulls
                .pull(&self.docker, image, auth.as_ref(), &progress)
                .await?;
            self.images_changed();
            if let Some(id) = self.holds(image).await? {
                self.private
                    .pulled(&id, request.tenant, request.auth.is_some());
            }
        }
        if let Some(pulled) = &self.pulled {
            pulled.used(image, pull);
        }
        Ok(pull)
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let summaries = self
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(|e| backend(format!("listing images: {e}")))?;
        Ok(summaries
            .into_iter()
            .flat_map(|s| s.repo_tags.into_iter().chain(s.repo_digests))
            // An untagged image is listed as "<none>:<none>" or "<none>@<none>".
            .filter(|name| !name.starts_with("<none>"))
            .collect())
    }

    fn images_version(&self) -> u64 {
        self.images_version
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn start(&self, request: &StartRequest) -> Result<Workload, RuntimeError> {
        let session_id = request.session_id.as_str();
        let mut body = container_body(request, &self.limits)?;
        if let (Some(node), Some(labels)) = (&self.node, body.labels.as_mut()) {
            labels.insert(LABEL_NODE.to_string(), node.clone());
        }
        self.ensure_image(&request.spec.image).await?;
        self.check_shared_network(&request.tenant).await?;
        self.remove(session_id).await?;

        let name = container_name(session_id);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        // The network is chosen and joined under the networks' lock, so a sweep cannot
        // remove it in between.
        let held = match &self.networks {
            Some(networks) => Some((networks, networks.hold().await)),
            None => None,
        };
        let network = match &held {
            Some((networks, _)) => {
                let policy = request.network.map_or(Policy::default(), |n| Policy {
                    egress: n.egress,
                    intra_tenant: n.intra_tenant,
                });
                Some(networks.ensure(&request.tenant, policy).await?)
            }
            None => self.network.clone(),
        };
        if let Some(network) = &network {
            if let Some(host) = body.host_config.as_mut() {
                host.network_mode = Some(network.clone());
            }
            if let Some(labels) = body.labels.as_mut() {
                labels.insert(LABEL_NETWORK.to_string(), network.clone());
            }
        }
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| match status_of(&e) {
                // The image vanished between our check and the create.
                Some(404) => RuntimeError::ImageNotFound(request.spec.image.clone()),
                _ => map_error(e, session_id, "creating the container"),
            });
        drop(held);
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                self.sweep_networks().await;
                return Err(e);
            }
        };
        for warning in &created.warnings {
            tracing::warn!(session = session_id, %warning, "docker create");
        }

        let started = async {
            self.docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| {
                    backend(format!("starting container for session {session_id}: {e}"))
                })?;
            self.docker
                .inspect_container(&created.id, None)
                .await
                .map_err(|e| map_error(e, session_id, "inspecting the started container"))
        }
        .await;
        match started {
            Ok(info) => {
                // An `address` racing with this start may have cached the old container.
                self.forget_address(session_id);
                Ok(workload_from_inspect(session_id, &info))
            }
            Err(e) => {
                // Nothing left behind: a created-but-unstarted container would hold the name.
                if let Err(cleanup) = self.remove(session_id).await {
                    tracing::warn!(session = session_id, error = %cleanup, "removing a container that failed to start");
                }
                self.sweep_networks().await;
                Err(e)
            }
        }
    }

    async fn stop(&self, session_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.forget_address(session_id);
        let name = container_name(session_id);
        let Some(info) = self.inspect_container(session_id).await? else {
            return Ok(());
        };
        // A frozen process cannot act on SIGTERM: thaw it first so the grace means something.
        if info.state.as_ref().and_then(|s| s.paused) == Some(true)
            && let Err(e) = self.docker.unpause_container(&name).await
        {
            tracing::debug!(session = session_id, error = %e, "unpausing before stop");
        }
        let options = StopContainerOptions {
            // Docker counts whole seconds; round up so a grace is never cut short.
            t: Some(
                i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
                    .unwrap_or(i32::MAX),
            ),
            ..Default::default()
        };
        match self.docker.stop_container(&name, Some(options)).await {
            // 304: already stopped.
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => {
                tracing::warn!(session = session_id, error = %e, "docker stop failed; removing by force");
            }
        }
        self.remove(session_id).await?;
        self.sweep_networks().await;
        Ok(())
    }

    async fn pause(&self, session_id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .pause_container(&container_name(session_id))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.settle(session_id, e, WorkloadState::Paused, "pausing")
                    .await
            }
        }
    }

    async fn resume(&self, session_id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .unpause_container(&container_name(session_id))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.settle(session_id, e, WorkloadState::Running, "resuming")
                    .await
            }
        }
    }

    /// Output is forwarded chunk by chunk as Docker delivers it (stdout and stderr kept
    /// apart), waiting while `output` is full. If the receiver is gone, output is dropped
    /// and the command still runs to completion: only `cancel` kills it. The exit code is
    /// Docker's, so a command killed by a signal usually reads 128 + the signal; a
    /// cancelled one returns -1.
    async fn exec(
        &self,
        session_id: &str,
        spec: ExecSpec,
        output: mpsc::Sender<ExecOutput>,
        cancel: CancellationToken,
    ) -> Result<i32, RuntimeError> {
        if spec.argv.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                field: "argv".into(),
                reason: "needs a command".into(),
            });
        }
        if cancel.is_cancelled() {
            return Ok(-1); // never started; reported as killed
        }
        let name = container_name(session_id);
        let with_stdin = !spec.stdin.is_empty();
        let options = CreateExecOptions {
            attach_stdin: Some(with_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: Some(spec.argv.clone()),
            working_dir: (!spec.workdir.is_empty()).then(|| spec.workdir.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(&name, options)
            .await
            .map_err(|e| map_error(e, session_id, "creating an exec"))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| map_error(e, session_id, "starting an exec"))?;
        let StartExecResults::Attached {
            output: mut stream,
            mut input,
        } = started
        else {
            return Err(backend("docker started the exec detached"));
        };

        // Stdin is written alongside the output loop: a command that prints before it
        // reads would otherwise deadlock against a full pipe.
        let stdin_writer = tokio::spawn(async move {
            if with_stdin {
                input.write_all(&spec.stdin).await?;
            }
            // Half-close: the command sees end of input.
            input.shutdown().await
        });
        let _abort_stdin = AbortOnDrop(stdin_writer);

        let mut receiver_gone = false;
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return self.kill_exec(session_id, &created.id).await;
                }
                item = stream.next() => item,
            };
            let chunk = match item {
                None => break,
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    ExecOutput::Stdout(message.to_vec())
                }
                Some(Ok(LogOutput::StdErr { message })) => ExecOutput::Stderr(message.to_vec()),
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    return Err(backend(format!(
                        "reading exec output in session {session_id}: {e}"
                    )));
                }
            };
            if receiver_gone {
                continue;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return self.kill_exec(session_id, &created.id).await;
                }
                sent = output.send(chunk) => receiver_gone = sent.is_err(),
            }
        }
        self.exec_exit_code(session_id, &created.id, &cancel).await
    }

    async fn address(&self, session_id: &str, port: u32) -> Result<SocketAddr, RuntimeError> {
        let cached = self
            .addresses
            .lock()
            .expect("address cache poisoned")
            .get(session_id)
            .cloned();
        let cached = match cached {
            Some(cached) => cached,
            None => {
                let info = self
                    .inspect_container(session_id)
                    .await?
                    .ok_or_else(|| RuntimeError::NotFound(session_id.to_string()))?;
                let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
                let ports = parse_ports_label(labels.and_then(|l| l.get(LABEL_PORTS)));
                if !ports.contains(&port) {
                    return Err(RuntimeError::PortNotExposed {
                        session_id: session_id.to_string(),
                        port,
                    });
                }
                let network = labels
                    .and_then(|l| l.get(LABEL_NETWORK))
                    .map(String::as_str)
                    .or(self.network.as_deref());
                let ip = container_ip(&info, network).ok_or_else(|| {
                    RuntimeError::WrongState(format!(
                        "session {session_id} has no network address (its container is not running)"
                    ))
                })?;
                let cached = CachedAddress { ip, ports };
                self.addresses
                    .lock()
                    .expect("address cache poisoned")
                    .insert(session_id.to_string(), cached.clone());
                cached
            }
        };
        if !cached.ports.contains(&port) {
            return Err(RuntimeError::PortNotExposed {
                session_id: session_id.to_string(),
                port,
            });
        }
        let port = u16::try_from(port).map_err(|_| RuntimeError::PortNotExposed {
            session_id: session_id.to_string(),
            port,
        })?;
        Ok(SocketAddr::new(cached.ip, port))
    }

    async fn inspect(&self, session_id: &str) -> Result<Option<Workload>, RuntimeError> {
        let Some(info) = self.inspect_container(session_id).await? else {
            return Ok(None);
        };
        // A container that merely has our name but not our label is not ours.
        let ours = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_SESSION))
            .is_some_and(|s| s == session_id);
        Ok(ours.then(|| workload_from_inspect(session_id, &info)))
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                match &self.node {
                    Some(node) => vec![LABEL_SESSION.to_string(), format!("{LABEL_NODE}={node}")],
                    None => vec![LABEL_SESSION.to_string()],
                },
            )])),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| backend(format!("listing containers: {e}")))?;
        let mut workloads = Vec::with_capacity(containers.len());
        for summary in containers {
            let labels = summary.labels.as_ref();
            let Some(session_id) = labels.and_then(|l| l.get(LABEL_SESSION)).cloned() else {
                continue;
            };
            let state = match summary.state {
                Some(
                    ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING,
                ) => WorkloadState::Running,
                Some(ContainerSummaryStateEnum::PAUSED) => WorkloadState::Paused,
                Some(ContainerSummaryStateEnum::CREATED) => WorkloadState::Exited(None),
                // The summary has no exit code; ask for it (exited containers are few).
                _ => match self.inspect(&session_id).await? {
                    Some(workload) => workload.state,
                    None => continue, // removed meanwhile
                },
            };
            workloads.push(Workload {
                generation: label(labels, LABEL_GENERATION),
                epoch: label(labels, LABEL_EPOCH),
                id: summary.id.unwrap_or_default(),
                session_id,
                state,
            });
        }
        Ok(workloads)
    }
}

/// Aborts a spawned task when dropped, so an exec that returns early leaves nothing behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{PortSpec, Resources, SessionSpec};

    fn request() -> StartRequest {
        StartRequest {
            session_id: "01S".into(),
            generation: 3,
            epoch: 7,
            tenant: "acme".into(),
            spec: SessionSpec {
                image: "img".into(),
                command: vec!["serve".into()],
                env: [
                    ("B".to_string(), "2".to_string()),
                    ("A".to_string(), "1".to_string()),
                ]
                .into(),
                ports: vec![PortSpec {
                    port: 8080,
                    name: "http".into(),
                }],
                resources: Some(Resources {
                    cpu_millis: 1500,
                    memory_bytes: 1 << 30,
                    pids_limit: 0,
                }),
                ..Default::default()
            },
            gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
            network: None,
        }
    }

    const LIMITS: SessionLimits = SessionLimits {
        pids_limit: 1024,
        memory: 4 << 30,
        cpu_millis: 2000,
    };

    #[test]
    fn the_container_is_hardened_labelled_and_limited() {
        let body = container_body(&request(), &LIMITS).unwrap();
        let host = body.host_config.unwrap();
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(host.pids_limit, Some(DEFAULT_PIDS_LIMIT));
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        let gpus = &host.device_requests.unwrap()[0];
        assert_eq!(gpus.driver.as_deref(), Some("nvidia"));
        assert_eq!(
            gpus.device_ids,
            Some(vec!["GPU-a".to_string(), "GPU-b".to_string()])
        );
        assert_eq!(gpus.capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert_eq!(body.env, Some(vec!["A=1".to_string(), "B=2".to_string()]));
        assert_eq!(body.cmd, Some(vec!["serve".to_string()]));
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_SESSION], "01S");
        assert_eq!(labels[LABEL_GENERATION], "3");
        assert_eq!(labels[LABEL_EPOCH], "7");
        assert_eq!(labels[LABEL_TENANT], "acme");
        assert_eq!(parse_ports_label(labels.get(LABEL_PORTS)), vec![8080]);
    }

    #[test]
    fn defaults_keep_the_image_command_and_request_no_gpus() {
        let mut req = request();
        req.spec.command.clear();
        req.spec.resources = None;
        req.gpu_uuids.clear();
        let body = container_body(&req, &LIMITS).unwrap();
        assert_eq!(body.cmd, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.device_requests, None);
        assert_eq!(host.memory, Some(4 << 30), "the agent's default");
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.pids_limit, Some(1024));
    }

    #[test]
    fn capabilities_are_added_back_only_as_the_spec_says() {
        let mut req = request();
        req.spec.security = Some(hearth_sdk::proto::v1::SecuritySpec {
            add_capabilities: vec!["SYS_PTRACE".into()],
        });
        let host = container_body(&req, &LIMITS).unwrap().host_config.unwrap();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, Some(vec!["SYS_PTRACE".to_string()]));
    }

    #[test]
    fn host_derived_limits_are_never_zero() {
        use hearth_sdk::proto::v1::NodeCapacity;
        let unknown = SessionLimits::default().resolve(&NodeCapacity::default());
        assert!(unknown.memory > 0 && unknown.cpu_millis > 0 && unknown.pids_limit > 0);
        let host = SessionLimits::default().resolve(&NodeCapacity {
            cpu_cores: 8,
            memory_bytes: 64 << 30,
        });
        assert_eq!((host.cpu_millis, host.memory), (8000, 48 << 30));
    }

    #[test]
    fn simulated_gpus_are_named_in_the_environment_not_passed_through() {
        let mut req = request();
        req.gpu_uuids = vec!["GPU-SIM-n1-0".into(), "GPU-SIM-n1-1".into()];
        let body = container_body(&req, &LIMITS).unwrap();
        assert_eq!(body.host_config.unwrap().device_requests, None);
        assert!(
            body.env
                .unwrap()
                .contains(&"HEARTH_SIMULATED_GPUS=GPU-SIM-n1-0,GPU-SIM-n1-1".to_string())
        );
    }

    #[test]
    fn a_bad_port_is_an_invalid_spec() {
        let mut req = request();
        req.spec.ports[0].port = 70000;
        assert!(matches!(
            container_body(&req, &LIMITS),
            Err(RuntimeError::InvalidSpec { field, .. }) if field == "ports"
        ));
    }

    #[test]
    fn reads_the_process_group_from_stat() {
        assert_eq!(process_group("42 (a b) c) S 1 42 42 0 -1"), Some(42));
        assert_eq!(process_group("42 (x) S 1 7 7"), Some(7));
        assert_eq!(process_group("garbage"), None);
    }
}
