//! Hearth's node agent: one per GPU host.
//!
//! The agent dials OUT to the broker (GPU hosts need no inbound port) and keeps exactly one
//! bidirectional gRPC stream, `NodeAgent.Connect`, open for its whole life. It introduces
//! itself with `Hello` (node id, a per-process incarnation, labels, GPUs, capacity), then
//! streams telemetry every interval; any message doubles as the heartbeat the broker uses to
//! judge liveness. When the stream breaks it reconnects with full-jitter backoff, following a
//! standby's `hearth-leader` hint to the leader. It remembers the highest leader epoch seen
//! and refuses commands from lower ones (fencing). Beside it, a turn link to every
//! configured broker carries turns only, so warm sessions answer through an election.
//!
//! GPUs come from NVML, or, by explicit opt-in only, from a simulator whose GPUs are marked
//! simulated everywhere. Without either (or `--no-gpus`) the agent refuses to start.
//!
//! Sessions run on a [`runtime::Runtime`]: Docker containers (the default), or plain
//! processes (`--runtime process`) on hosts without Docker. Each broker command runs in its
//! own task, so the stream reader never waits; turns stream their output back with
//! backpressure. Workloads outlive the agent: a restarted agent re-adopts them and reports
//! them in `Hello`.
//!
//! # Layout
//! - `config.rs` (+ `config/size.rs`): settings, layered defaults → TOML → `HEARTH_*` →
//!   flags, and their validation; human byte sizes.
//! - `dial.rs`: TCP to the broker with `TCP_USER_TIMEOUT`, so a dead broker host is
//!   noticed in seconds.
//! - `link.rs`: the broker stream: dialling, Hello/Welcome, telemetry, leader redirects,
//!   epoch fencing, handing commands to `sessions.rs`.
//! - `turn_link.rs`: a turns-only stream to every configured broker, so turns go on
//!   while the brokers elect a new leader.
//! - `sessions.rs`: the broker's session commands on a runtime: start with readiness
//!   probes, crash monitor, stop/pause/resume, Exec and Invoke turns (pooled HTTP client),
//!   CancelTurn, busy sessions, generation fencing, re-adoption.
//! - `runtime.rs`: the [`runtime::Runtime`] seam; `runtime/docker.rs` (containers, bollard),
//!   `runtime/process.rs` (process groups, state files for re-adoption).
//! - `backoff.rs`: full-jitter exponential reconnect delays.
//! - `gpu.rs`: the [`gpu::GpuInventory`] seam; `gpu/nvml.rs` (real GPUs, raw-reading →
//!   proto conversion, XID watcher), `gpu/simulated.rs`, `gpu/none.rs` (CPU-only node).
//! - `host.rs`: CPU and memory capacity.
//! - `tls.rs`: `[tls]`: the CA the broker is checked against and the node's client
//!   certificate, applied to each dial.
//! - `metrics.rs`: Prometheus metrics for `/metrics`.
//! - `error.rs`: the crate's [`Error`].
//! - `main.rs`: the thin binary: flags, tracing, admin port, signals, then [`run`].
// `deny`, not `forbid`: the process runtime needs one `pre_exec` (no_new_privs in the
// child), allowed where it is written and nowhere else.
#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
mod dial;
mod error;
pub mod gpu;
mod host;
mod link;
mod metrics;
pub mod runtime;
mod sessions;
pub mod tls;
mod turn_link;

use std::{future::Future, sync::Arc};

use hearth_sdk::ops::{AdminState, serve_admin};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

pub use config::{Config, RuntimeKind};
pub use error::{Error, report};

/// Runs the agent until `shutdown` completes: the broker link, and the admin HTTP server
/// (`/live`, `/ready` — 200 while a broker stream has reached `Welcome` — and `/metrics`) on
/// `admin_listener`.
///
/// Fails at once, before dialling anything, when `config` is invalid, the GPU source cannot
/// be opened (no NVML without `--simulate-gpus`/`--no-gpus`), or the runtime cannot (no
/// Docker engine, an unusable `state_dir`). Afterwards it fails only if the admin server
/// does; broker trouble is logged and retried forever.
///
/// Session workloads are left running at shutdown: the next agent process re-adopts them.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let gpus = gpu::open(&config)?;
    let inventory = gpus.inventory()?;
    let source = gpus.source();
    let (runtime, docker) = open_runtime(&config).await?;
    let incarnation = ulid::Ulid::new().to_string();

    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics.set_info(&config.node_id, &incarnation, source.as_str_name());

    tracing::info!(
        node_id = %config.node_id,
        %incarnation,
        version = hearth_sdk::VERSION,
        gpu_source = source.as_str_name(),
        gpus = inventory.len(),
        runtime = runtime.kind(),
        brokers = ?config.broker,
        admin = ?admin_listener.local_addr().ok(),
        "hearth-agent starting"
    );

    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut admin = tokio::spawn(serve_admin(
        admin_listener,
        AdminState {
            registry: Arc::new(registry),
            ready: ready_rx,
            standby: None,
        },
        axum::Router::new(),
        stop.clone().cancelled_owned(),
    ));
    if let Some(docker) = docker {
        tokio::spawn(collect_images(
            docker,
            config.docker.image_gc,
            metrics.clone(),
            stop.clone(),
        ));
    }
    let fence = link::EpochFence::load(config.state_dir.join(link::EPOCH_FILE))?;
    let sessions = sessions::Sessions::new(runtime, metrics.clone());
    let config = Arc::new(config);
    let turn_links = tokio::spawn(turn_link::run_all(
        config.clone(),
        sessions.clone(),
        incarnation.clone(),
        stop.clone(),
    ));
    let link = link::Link::new(
        config,
        fence,
        gpus,
        sessions.clone(),
        incarnation,
        metrics,
        ready_tx,
    );
    let link = tokio::spawn(link.run(stop.clone()));

    let admin_ended_early = tokio::select! {
        () = shutdown => None,
        ended = &mut admin => Some(ended),
    };
    tracing::info!("hearth-agent shutting down");
    stop.cancel();
    sessions.shutdown();
    let early = admin_ended_early.is_some();
    let admin_result = match admin_ended_early {
        Some(ended) => ended,
        None => admin.await,
    };
    for task in [link, turn_links] {
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    match admin_result {
        Ok(Ok(())) if !early => Ok(()),
        Ok(Ok(())) => Err(Error::Admin(std::io::Error::other("stopped unexpectedly"))),
        Ok(Err(e)) => Err(Error::Admin(e)),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Removes unused pulled images every `gc.interval` while the engine's disk is past the
/// mark (`runtime/docker/gc.rs`), until `stop`.
async fn collect_images(
    docker: Arc<runtime::docker::DockerRuntime>,
    gc: config::ImageGcConfig,
    metrics: metrics::Metrics,
    stop: CancellationToken,
) {
    if gc.high_water_percent >= 100 {
        tracing::info!("image collection is off (docker.image_gc.high_water_percent 100)");
        return;
    }
    let mut warned = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(gc.interval) => {}
        }
        match docker.collect_images(&gc).await {
            Ok(collected) => {
                metrics
                    .images_removed
                    .inc_by(collected.removed.len() as u64);
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "image collection cannot run; it will keep trying");
            }
            Err(e) => tracing::debug!(error = %e, "image collection"),
        }
    }
}

/// The runtime `config` asks for, ready to use, and the Docker runtime itself when it is
/// that one (for image collection).
async fn open_runtime(
    config: &Config,
) -> Result<
    (
        Arc<dyn runtime::Runtime>,
        Option<Arc<runtime::docker::DockerRuntime>>,
    ),
    Error,
> {
    match config.runtime {
        RuntimeKind::Process => {
            let process = runtime::process::ProcessRuntime::new(config.state_dir.clone())
                .map_err(Error::Runtime)?
                .mixed_tenants(config.mixed_tenants);
            Ok((Arc::new(process), None))
        }
        RuntimeKind::Docker => {
            let unavailable = |source| Error::DockerUnavailable {
                host: std::env::var("DOCKER_HOST")
                    .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned()),
                source,
            };
            let mut docker = runtime::docker::DockerRuntime::connect()
                .await
                .map_err(unavailable)?
                .with_limits(config.session_limits.resolve(&host::capacity()))
                .for_node(config.node_id.clone())
                .recording_pulls(&config.state_dir)
                .map_err(Error::Runtime)?;
            docker = match &config.docker.network {
                Some(network) => docker
                    .on_network(network)
                    .await
                    .map_err(Error::Runtime)?
                    .mixed_tenants(config.mixed_tenants),
                None => docker
                    .with_tenant_networks(config.docker.firewall)
                    .await
                    .map_err(Error::Runtime)?,
            };
            let docker = Arc::new(docker);
            Ok((docker.clone(), Some(docker)))
        }
    }
}
