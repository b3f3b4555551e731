//! The broker's shared state: config, store, role (leader or standby), nodes, sessions,
//! templates and events.
//! Every gRPC service holds an `Arc<Cluster>`.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    error::{Error, Result},
    events::Events,
    metrics::Metrics,
    nodes::Nodes,
    pools::Pools,
    sessions::Sessions,
    store::{CLUSTER_KEY, Compare, LeaderInfo, Leadership, Store, Txn},
    templates::Templates,
    turns::Turns,
};

/// What this broker is right now.
#[derive(Clone, Debug)]
pub enum Role {
    /// Not leading: every hearth.v1 RPC but `GetClusterInfo` is refused with the
    /// leader's address.
    Standby,
    /// Leading with this epoch.
    Leader(LeaderState),
}

/// What a leader needs to act: its epoch for fencing, and the token that says it lost.
#[derive(Clone, Debug)]
pub struct LeaderState {
    /// The leader key's create revision.
    pub epoch: i64,
    /// The cluster's identity (a ULID written once per store), sent to agents with the epoch.
    pub cluster_id: String,
    /// When this broker became leader (wall clock, for display).
    pub since: SystemTime,
    /// The same moment on the monotonic clock, for grace periods.
    pub since_instant: Instant,
    /// Cancelled when leadership is lost; everything leader-only stops then.
    pub lost: CancellationToken,
}

impl LeaderState {
    /// Gives leadership up at once, such as when a fenced write failed: someone else has
    /// taken over and this broker must stop acting as leader.
    pub fn depose(&self) {
        self.lost.cancel();
    }
}

/// The broker's shared state.
pub struct Cluster {
    /// Validated configuration.
    pub config: Config,
    /// This broker's id.
    pub broker_id: String,
    /// The URL handed out to reach this broker.
    pub advertise_url: String,
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// Known nodes and their agent streams.
    pub nodes: Nodes,
    /// Live sessions.
    pub sessions: Sessions,
    /// Templates.
    pub templates: Templates,
    /// Warm-pool bookkeeping.
    pub pools: Pools,
    /// Node drains in progress.
    pub drains: crate::drain::Drains,
    /// Commands and turns in flight to agents.
    pub turns: Arc<Turns>,
    /// Every agent's turn link to this broker, leader or standby.
    pub turn_links: crate::turn_links::TurnLinks,
    /// Cluster events.
    pub events: Arc<Events>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Per-tenant quotas and create rate limits.
    pub quotas: crate::quota::Quotas,
    /// Client tokens: the config file's, and the store's as [`crate::tokens::follow`]
    /// keeps them.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The key that seals registry credentials in the store, if configured.
    pub credentials: crate::credentials::Credentials,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    role: watch::Sender<Role>,
}

impl Cluster {
    /// Shared state for a broker that starts as a standby.
    pub fn new(
        config: Config,
        advertise_url: String,
        store: Arc<dyn Store>,
        tokens: Arc<crate::auth::Tokens>,
        credentials: crate::credentials::Credentials,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let events = Arc::new(Events::new(metrics.clone()));
        let nodes = Nodes::new(
            store.clone(),
            events.clone(),
            metrics.clone(),
            config.liveness.clone(),
        );
        Self {
            quotas: crate::quota::Quotas::new(config.quota.clone()),
            tokens,
            credentials,
            broker_id: config.broker_id(),
            advertise_url,
            config,
            store,
            nodes,
            sessions: Sessions::default(),
            templates: Templates::default(),
            pools: Pools::default(),
            drains: Default::default(),
            turns: Arc::new(Turns::new(metrics.clone())),
            turn_links: Default::default(),
            events,
            metrics,
            shutdown,
            role: watch::Sender::new(Role::Standby),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Follows role changes (for health reporting).
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The leader state, or `NotLeader` naming whoever leads.
    pub async fn require_leader(&self) -> Result<LeaderState> {
        match self.role() {
            Role::Leader(state) if !state.lost.is_cancelled() => Ok(state),
            _ => Err(Error::NotLeader {
                leader: self.leader_info().await,
            }),
        }
    }

    /// Who leads, as far as the store says (None if unknown or unreachable).
    pub async fn leader_info(&self) -> Option<LeaderInfo> {
        match self.store.leader().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the leader key");
                None
            }
        }
    }

    /// The cluster's identity: read from the store, or created by the first leader of an
    /// empty store (only if still absent, so two first leaders agree). Agents key their
    /// epoch fence by it, so a wiped store's epochs starting over are not mistaken for a
    /// deposed leader.
    async fn cluster_id(&self, epoch: i64) -> Result<String> {
        let read = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
        if let Some(kv) = self.store.get(CLUSTER_KEY).await? {
            return Ok(read(&kv.value));
        }
        let id = ulid::Ulid::new().to_string();
        let txn = Txn::fenced(epoch)
            .when(Compare::Absent(CLUSTER_KEY.to_owned()))
            .put(CLUSTER_KEY, id.clone().into_bytes());
        if self.store.txn(txn).await?.succeeded {
            tracing::info!(cluster_id = id, "new store: created the cluster's identity");
            return Ok(id);
        }
        // Someone wrote it first, or this broker no longer leads (then taking over fails
        // on the next fenced write anyway).
        match self.store.get(CLUSTER_KEY).await? {
            Some(kv) => Ok(read(&kv.value)),
            None => Err(Error::Deposed),
        }
    }

    /// Takes up leadership: loads nodes, sessions (with their warm-pool memberships) and
    /// templates from the store, then starts acting as leader.
    pub async fn become_leader(&self, leadership: &Leadership) -> Result<()> {
        let state = LeaderState {
            epoch: leadership.epoch,
            cluster_id: self.cluster_id(leadership.epoch).await?,
            since: SystemTime::now(),
            since_instant: Instant::now(),
            lost: leadership.lost.clone(),
        };
        self.nodes.load(&state).await?;
        self.sessions.load(self).await?;
        self.templates.load(self).await?;
        self.quotas.load(&*self.store).await?;
        self.pools.clear();
        self.metrics.is_leader.set(1);
        self.metrics.epoch.set(state.epoch);
        self.metrics.leader_elections_total.inc();
        self.events.emit(
            "broker.leader",
            "",
            "",
            format!(
                "broker {} is leader with epoch {} (store: {})",
                self.broker_id,
                state.epoch,
                self.store.kind()
            ),
        );
        self.role.send_replace(Role::Leader(state));
        Ok(())
    }

    /// Stops acting as leader: agent streams close and in-memory node state is dropped
    /// (the store keeps the records; the next leader reloads them).
    pub fn become_standby(&self, why: &str) {
        if let Role::Leader(state) = self.role.send_replace(Role::Standby) {
            state.lost.cancel();
            self.events.emit(
                "broker.standby",
                "",
                "",
                format!("broker {} stopped leading: {why}", self.broker_id),
            );
        }
        self.nodes.clear();
        self.sessions.clear();
        self.templates.clear();
        self.pools.clear();
        self.metrics.is_leader.set(0);
        self.metrics.epoch.set(0);
    }
}
