//! The broker's Prometheus metrics, served at `/metrics` on the admin port.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label for per-state node gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// Node state, lower case ("ready", "suspect", ...).
    pub state: String,
}

/// Every metric the broker exports. Cloning shares the same series.
#[derive(Clone, Default)]
pub struct Metrics {
    /// 1 while this broker leads.
    pub is_leader: Gauge,
    /// The leader epoch held (0 on a standby).
    pub epoch: Gauge,
    /// Times this broker became leader.
    pub leader_elections_total: Counter,
    /// Nodes by liveness state.
    pub nodes: Family<StateLabel, Gauge>,
    /// Agent streams open now.
    pub agent_streams: Gauge,
    /// Agent streams refused (standby, bad Hello).
    pub agent_streams_refused_total: Counter,
    /// Turn links open now (`NodeAgent.ConnectTurns`).
    pub turn_links: Gauge,
    /// Turns sent through a turn link (no main stream to the node here: a standby while
    /// the leader is down, or a new leader before the node's stream reached it).
    pub turns_via_link_total: Counter,
    /// Telemetry samples received.
    pub telemetry_received_total: Counter,
    /// Writes to the store.
    pub store_writes_total: Counter,
    /// Store writes that failed (unreachable, or fenced out).
    pub store_write_failures_total: Counter,
    /// Session bookings whose store transaction lost (GPUs booked by another writer, a
    /// concurrent retry of the same request, or a new leader); each is retried.
    pub placement_races_total: Counter,
    /// Events recorded.
    pub events_total: Counter,
    /// Events that slow watchers missed.
    pub events_dropped_total: Counter,
    /// Sessions created.
    pub sessions_created_total: Counter,
    /// Sessions marked LOST because their node was silent past `lost_after`.
    pub sessions_lost_total: Counter,
    /// Turns (Exec and Invoke) routed.
    pub turns_total: Counter,
    /// Template creates served by claiming a warm-pool member.
    pub pool_claims_total: Counter,
    /// Template creates that found no free member and started cold.
    pub pool_misses_total: Counter,
    /// Warm-pool members booked.
    pub pool_fills_total: Counter,
    /// Failed tries to fill a warm pool (no capacity, start or readiness failure).
    pub pool_fill_failures_total: Counter,
    /// Turns cancelled because their reader stopped reading.
    pub turns_cancelled_slow_total: Counter,
}

impl Metrics {
    /// Registers every metric under the `hearth_broker` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hearth_broker");
        r.register(
            "is_leader",
            "1 while this broker leads",
            self.is_leader.clone(),
        );
        r.register(
            "epoch",
            "Leader epoch held (0 on a standby)",
            self.epoch.clone(),
        );
        r.register(
            "leader_elections",
            "Times this broker became leader",
            self.leader_elections_total.clone(),
        );
        r.register("nodes", "Nodes by liveness state", self.nodes.clone());
        r.register(
            "agent_streams",
            "Agent streams open now",
            self.agent_streams.clone(),
        );
        r.register(
            "agent_streams_refused",
            "Agent streams refused (standby or bad Hello)",
            self.agent_streams_refused_total.clone(),
        );
        r.register(
            "turn_links",
            "Turn links (NodeAgent.ConnectTurns) open now",
            self.turn_links.clone(),
        );
        r.register(
            "turns_via_link",
            "Turns sent through a turn link, with no main stream to the node here",
            self.turns_via_link_total.clone(),
        );
        r.register(
            "telemetry_received",
            "Telemetry samples received from agents",
            self.telemetry_received_total.clone(),
        );
        r.register(
            "store_writes",
            "Writes to the store",
            self.store_writes_total.clone(),
        );
        r.register(
            "store_write_failures",
            "Store writes that failed or were fenced out",
            self.store_write_failures_total.clone(),
        );
        r.register(
            "placement_races",
            "Session bookings whose store transaction lost a race and were retried",
            self.placement_races_total.clone(),
        );
        r.register(
            "events",
            "Cluster events recorded",
            self.events_total.clone(),
        );
        r.register(
            "sessions_created",
            "Sessions created",
            self.sessions_created_total.clone(),
        );
        r.register(
            "sessions_lost",
            "Sessions marked LOST because their node was silent past lost_after",
            self.sessions_lost_total.clone(),
        );
        r.register(
            "turns",
            "Turns (Exec and Invoke) routed",
            self.turns_total.clone(),
        );
        r.register(
            "turns_cancelled_slow",
            "Turns cancelled because their reader stopped reading",
            self.turns_cancelled_slow_total.clone(),
        );
        r.register(
            "pool_claims",
            "Template creates served by claiming a warm-pool member",
            self.pool_claims_total.clone(),
        );
        r.register(
            "pool_misses",
            "Template creates that found no free warm-pool member and started cold",
            self.pool_misses_total.clone(),
        );
        r.register(
            "pool_fills",
            "Warm-pool members booked",
            self.pool_fills_total.clone(),
        );
        r.register(
            "pool_fill_failures",
            "Failed tries to fill a warm pool",
            self.pool_fill_failures_total.clone(),
        );
        r.register(
            "events_dropped",
            "Events that slow WatchEvents readers missed",
            self.events_dropped_total.clone(),
        );
    }
}
