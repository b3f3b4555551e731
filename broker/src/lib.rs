//! The Hearth broker.
//!
//! One broker leads (elected in the store); the others are standbys that answer with the
//! leader's address. The leader accepts the node agents' streams (agents dial out, so GPU
//! hosts need no inbound port), tracks node liveness on its own monotonic clock, and
//! writes every change through transactions fenced by its epoch, so a deposed leader can
//! never overwrite its successor. State lives in etcd or, on one machine, in an embedded
//! store persisted to a file.
//!
//! # Layout
//! - `config.rs`: settings, layered defaults → TOML → `HEARTH_*` env → flags, validated.
//! - `store.rs`: the `Store` trait (etcd's data model, election, fencing);
//!   `store/etcd.rs` and `store/embedded.rs` implement it.
//! - `leader.rs`: campaign, take over, step down; the leader-only liveness timer.
//! - `limits.rs`: the deployment's limits on specs (GPUs per session, image allowlist,
//!   capabilities per tenant).
//! - `network.rs`: per-tenant network policy (egress, sessions reaching each other).
//! - `cluster.rs`: shared state every service holds (role, store, nodes, events).
//! - `nodes.rs`: the node registry, agent streams and liveness transitions.
//! - `placement.rs`: which node and GPUs a session gets.
//! - `sessions.rs`: session records, lifecycle, idle policy, GPU allocation, claims.
//! - `templates.rs`: template records, per tenant.
//! - `pools.rs`: warm pools: claiming a member, and the reconciler that keeps them full.
//! - `turns.rs`: commands and turns in flight to agents; routing their output back.
//! - `tls.rs`: TLS on the gRPC port, node identity from agent certificates, the refusal
//!   to listen in plaintext beyond loopback.
//! - `auth.rs`: bearer tokens → tenant and role; the interceptor on the client services.
//! - `tokens.rs`: tokens made through `Admin` and kept in the store; every broker follows
//!   them with a watch.
//! - `credentials.rs`: registry credentials per tenant, sealed in the store, sent only
//!   in the start command that pulls with them.
//! - `quota.rs`: per-tenant session and GPU quotas, the create rate limit.
//! - `convert.rs`: the proto boundary; validation that names the field.
//! - `api.rs` + `api/`: one file per `hearth.v1` gRPC service.
//! - `events.rs`: the cluster event bus behind `Admin.WatchEvents`.
//! - `error.rs`: the error type and its single mapping to gRPC status codes.
//! - `metrics.rs`: Prometheus metrics for the admin port.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod drain;
pub mod error;
pub mod events;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod nodes;
pub mod placement;
pub mod pools;
pub mod quota;
pub mod sessions;
pub mod store;
pub mod templates;
pub mod tls;
pub mod tokens;
pub mod turn_links;
pub mod turns;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use hearth_sdk::proto::v1::{
    FILE_DESCRIPTOR_SET, admin_server::AdminServer, node_agent_server::NodeAgentServer,
    sessions_server::SessionsServer, templates_server::TemplatesServer,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::{
    cluster::{Cluster, Role},
    config::Config,
    metrics::Metrics,
    store::{EmbeddedStore, EtcdStore, Store},
};

/// How long in-flight requests get to finish after shutdown begins; after that the
/// broker exits anyway, so one stuck client cannot hold a restart up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest gRPC message a client may send.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Every hearth.v1 service, for health reporting.
const SERVICES: [&str; 4] = [
    "hearth.v1.Sessions",
    "hearth.v1.Templates",
    "hearth.v1.Admin",
    "hearth.v1.NodeAgent",
];

/// Opens the configured store: etcd when endpoints are given, else the embedded file.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.store.etcd.is_empty() {
        let path = &config.store.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        }
        Ok(Arc::new(EmbeddedStore::open(path)?))
    } else {
        let store = EtcdStore::connect(
            &config.store.etcd,
            &config.store.prefix,
            config.store.dial_timeout,
        )
        .await?;
        Ok(Arc::new(store))
    }
}

/// Runs a broker on the given listeners until `shutdown` completes, then shuts down
/// gracefully: agent and watch streams close, leadership is resigned so a standby takes
/// over at once, and in-flight requests finish.
pub async fn run(
    mut config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Listeners may be bound to port 0 (tests): advertise what was actually bound.
    config.grpc_addr = grpc.local_addr()?;
    config.admin_addr = admin.local_addr()?;
    config.validate()?;
    let advertise_url = config.advertise_url();
    let store = open_store(&config).await?;
    let tokens = Arc::new(auth::Tokens::from_config(&config.auth)?);
    let credentials = credentials::Credentials::load(&config.registry_credentials)?;
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let stop = CancellationToken::new();
    let cluster = Arc::new(Cluster::new(
        config,
        advertise_url,
        store,
        tokens.clone(),
        credentials,
        metrics,
        stop.clone(),
    ));
    tracing::info!(
        broker_id = cluster.broker_id,
        grpc = %cluster.config.grpc_addr,
        admin = %cluster.config.admin_addr,
        store = cluster.store.kind(),
        "broker starting as standby; campaigning for leadership"
    );

    let (ready_tx, ready_rx) = watch::channel(false);
    let (standby_tx, standby_rx) = watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions, because the grpcurl operators run (1.8.x) asks v1alpha;
    // each lists both so either shows the whole surface.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let election = tokio::spawn(leader::run(cluster.clone(), stop.clone()));
    let liveness = tokio::spawn(leader::check_liveness(cluster.clone(), stop.clone()));
    let idle = tokio::spawn(leader::check_sessions(cluster.clone(), stop.clone()));
    let pools = tokio::spawn(leader::fill_pools(cluster.clone(), stop.clone()));
    // Every broker, standbys too, so a revoked token is refused wherever it is sent.
    let follow_tokens = tokio::spawn(tokens::follow(cluster.clone(), stop.clone()));
    let health = tokio::spawn(report_health(
        cluster.watch_role(),
        health_reporter,
        ready_tx,
        stop.clone(),
    ));
    let standby_health = tokio::spawn(report_standby(cluster.clone(), standby_tx, stop.clone()));

    let admin_state = hearth_sdk::ops::AdminState {
        registry: Arc::new(registry),
        ready: ready_rx,
        standby: Some(standby_rx),
    };
    let admin_stop = stop.clone();
    let admin_server = tokio::spawn(async move {
        hearth_sdk::ops::serve_admin(admin, admin_state, axum::Router::new(), async move {
            admin_stop.cancelled().await
        })
        .await
        .map_err(anyhow::Error::from)
    });

    // Client services sit behind the token interceptor, which puts the caller's tenant
    // and role in each request; health and reflection stay open (probes, grpcurl list),
    // and NodeAgent is for agents, which their certificates identify.
    if tokens.enabled() {
        tracing::info!(
            tokens = tokens.count(),
            "client authentication on: Sessions, Templates and Admin need a bearer token"
        );
    } else {
        tracing::info!(
            "client authentication off (no [[auth.tokens]]): every caller is tenant default \
             with the admin role"
        );
    }
    let grpc_stop = stop.clone();
    tls::warn_if_insecure(&cluster.config);
    let server = cluster
        .config
        .tls
        .server()?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Above the API's own body and stdin limits, so oversized requests get an error
        // that names the field instead of a bare decode failure.
        .add_service(InterceptedService::new(
            SessionsServer::new(api::sessions::SessionsService::new(cluster.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
            auth::Authenticate::any_role(tokens.clone()),
        ))
        .add_service(InterceptedService::new(
            TemplatesServer::new(api::templates::TemplatesService::new(cluster.clone())),
            auth::Authenticate::any_role(tokens.clone()),
        ))
        .add_service(InterceptedService::new(
            AdminServer::new(api::admin::AdminService::new(cluster.clone())),
            auth::Authenticate::admin_only(tokens, "hearth.v1.Admin"),
        ))
        .add_service(NodeAgentServer::new(
            api::node_agent::NodeAgentService::new(cluster.clone()),
        ))
        // Turns are small request/response exchanges: without TCP_NODELAY, Nagle's
        // algorithm meets delayed ACKs and a turn waits ~40 ms.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            async move { grpc_stop.cancelled().await },
        );
    let server = tokio::spawn(async move { server.await.map_err(anyhow::Error::from) });

    shutdown.await;
    tracing::info!("shutting down: closing streams and resigning leadership");
    stop.cancel();
    // Resign before the server finishes, so a standby takes over as soon as possible.
    let _ = election.await;
    let _ = liveness.await;
    let _ = idle.await;
    let _ = pools.await;
    let _ = follow_tokens.await;
    let _ = health.await;
    let _ = standby_health.await;
    for (name, task) in [("gRPC server", server), ("admin HTTP server", admin_server)] {
        let abort = task.abort_handle();
        match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
            Ok(joined) => joined?.with_context(|| format!("{name} failed"))?,
            Err(_) => {
                tracing::warn!(
                    "{name} still had open connections after {SHUTDOWN_GRACE:?}; closing them"
                );
                abort.abort();
            }
        }
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// How often a standby checks that it can still read the store, for
/// `/ready?standby=ok`.
const STANDBY_CHECK: Duration = Duration::from_secs(1);

/// Keeps `standby` true while this broker could take over: it leads, or it read the
/// leader key from the store within the last check. A standby cut off from the store
/// could neither lead nor name the leader, so it drops out of `/ready?standby=ok` and a
/// Service stops sending it clients.
async fn report_standby(
    cluster: Arc<Cluster>,
    standby: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    loop {
        let ok = match cluster.role() {
            Role::Leader(_) => true,
            Role::Standby => cluster.store.leader().await.is_ok(),
        };
        standby.send_replace(ok);
        tokio::select! {
            _ = shutdown.cancelled() => {
                standby.send_replace(false);
                return;
            }
            _ = tokio::time::sleep(STANDBY_CHECK) => {}
        }
    }
}

/// Health follows the role: SERVING only on the leader, so load balancers and `/ready`
/// send traffic to it and not to standbys.
async fn report_health(
    mut role: watch::Receiver<Role>,
    reporter: tonic_health::server::HealthReporter,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    loop {
        let leading = matches!(*role.borrow_and_update(), Role::Leader(_));
        let status = if leading {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        for service in SERVICES {
            reporter.set_service_status(service, status).await;
        }
        ready.send_replace(leading);
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
            changed = role.changed() => if changed.is_err() { return },
        }
    }
}
