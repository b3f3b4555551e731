//! Known nodes, their agent streams and their liveness (DESIGN section 4).
//!
//! Only the leader fills this registry. Liveness is judged on the leader's monotonic
//! clock from the time it last heard from each agent (any message counts), never from the
//! agent's wall clock. Silence escalates a node READY → SUSPECT → DISCONNECTED → DOWN at
//! the configured times; only a message from the agent brings it back to READY. A stream
//! that closes does not change the state by itself, so a flapping link cannot make a node
//! skip SUSPECT.
//!
//! The node record in the store holds everything but telemetry, which lives only here
//! (1 Hz from every host would be far too many writes). Records are written only when
//! something about the node changes, through fenced transactions.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hearth_sdk::proto::v1::{BrokerMessage, GpuExclusion, Node, NodeState, NodeTelemetry};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::LeaderState,
    config::LivenessConfig,
    convert::CheckedHello,
    error::{Error, Result},
    events::Events,
    metrics::{Metrics, StateLabel},
    store::{Store, StoreError, Txn},
};

/// Key prefix of node records.
pub const NODES_PREFIX: &str = "nodes/";

fn node_key(id: &str) -> String {
    format!("{NODES_PREFIX}{id}")
}

/// One agent stream, as the registry sees it.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Unique per stream on this broker.
    pub id: u64,
    /// Commands to the agent.
    pub tx: mpsc::Sender<BrokerMessage>,
    /// Cancelled when the stream must close (replaced by a newer one, or cleared).
    pub closed: CancellationToken,
}

struct Entry {
    node: Node,
    last_heard: Instant,
    connection: Option<Connection>,
    telemetry: Option<(NodeTelemetry, SystemTime)>,
    /// Images the node holds, by canonical reference (memory only, like telemetry).
    images: HashSet<String>,
}

/// The registry of nodes.
pub struct Nodes {
    entries: Mutex<HashMap<String, Entry>>,
    next_connection: AtomicU64,
    store: Arc<dyn Store>,
    events: Arc<Events>,
    metrics: Metrics,
    liveness: LivenessConfig,
}

/// The liveness a silence of `silence` calls for. DOWN only once the leader has led for
/// `takeover_grace`, so agents get time to find a new leader.
pub fn state_for_silence(
    silence: Duration,
    leading_for: Duration,
    liveness: &LivenessConfig,
) -> NodeState {
    if silence >= liveness.lost_after && leading_for >= liveness.takeover_grace {
        NodeState::Down
    } else if silence >= liveness.disconnected_after {
        NodeState::Disconnected
    } else if silence >= liveness.suspect_after {
        NodeState::Suspect
    } else {
        NodeState::Ready
    }
}

/// How bad a state is, for "escalate only" comparisons.
fn severity(state: NodeState) -> u8 {
    match state {
        NodeState::Unspecified | NodeState::Ready => 0,
        NodeState::Suspect => 1,
        NodeState::Disconnected => 2,
        NodeState::Down => 3,
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Unspecified => "unspecified",
        NodeState::Ready => "ready",
        NodeState::Suspect => "suspect",
        NodeState::Disconnected => "disconnected",
        NodeState::Down => "down",
    }
}

/// A state change to persist and announce once the registry lock is released.
struct Transition {
    node: Node,
    from: NodeState,
    why: String,
}

impl Nodes {
    /// An empty registry.
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<Events>,
        metrics: Metrics,
        liveness: LivenessConfig,
    ) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            store,
            events,
            metrics,
            liveness,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock is a bug elsewhere; the map itself stays
        // consistent (every update is a single assignment), so keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads node records from the store when this broker becomes leader. Nodes that are
    /// not DOWN start as SUSPECT: nothing has been heard from them on this leader yet.
    pub async fn load(&self, leader: &LeaderState) -> Result<()> {
        let records = self.store.list(NODES_PREFIX).await?;
        let now = Instant::now();
        let mut entries = self.lock();
        entries.clear();
        for kv in records {
            let mut node = Node::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
            if node.state() != NodeState::Down {
                node.set_state(NodeState::Suspect);
            }
            entries.insert(
                node.id.clone(),
                Entry {
                    node,
                    last_heard: now,
                    connection: None,
                    telemetry: None,
                    images: HashSet::new(),
                },
            );
        }
        tracing::info!(
            nodes = entries.len(),
            epoch = leader.epoch,
            "loaded node records"
        );
        self.update_gauges(&entries);
        Ok(())
    }

    /// Forgets everything held in memory (leadership lost or shutdown); every agent
    /// stream is closed.
    pub fn clear(&self) {
        let mut entries = self.lock();
        for entry in entries.values() {
            if let Some(c) = &entry.connection {
                c.closed.cancel();
            }
        }
        entries.clear();
        self.update_gauges(&entries);
    }

    /// Registers an agent stream after its `Hello`: the node is READY, its record is
    /// written, and any older stream of the same node is closed.
    pub async fn connect(
        &self,
        leader: &LeaderState,
        mut hello: CheckedHello,
        tx: mpsc::Sender<BrokerMessage>,
    ) -> Result<Connection> {
        let images = std::mem::take(&mut hello.images);
        let connection = Connection {
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            tx,
            closed: leader.lost.child_token(),
        };
        let now = SystemTime::now();
        let (node, replaced, previous_state) = {
            let mut entries = self.lock();
            let previous = entries.remove(&hello.node_id);
            let mut node = hello.into_node();
            node.connected_at = Some(hearth_sdk::time::timestamp(now));
            node.last_seen_at = node.connected_at;
            node.set_state(NodeState::Ready);
            node.state_changed_at = node.connected_at;
            let (replaced, previous_state) = match &previous {
                Some(p) => {
                    // Operator decisions survive reconnects.
                    node.schedulable = p.node.schedulable;
                    node.draining = p.node.draining;
                    node.drain_deadline = p.node.drain_deadline;
                    node.excluded_gpus = p.node.excluded_gpus.clone();
                    node.session_ids = p.node.session_ids.clone();
                    if p.node.state() == NodeState::Ready {
                        node.state_changed_at = p.node.state_changed_at;
                    }
                    if let Some(c) = &p.connection {
                        c.closed.cancel();
                    }
                    (p.connection.is_some(), Some(p.node.state()))
                }
                None => (false, None),
            };
            entries.insert(
                node.id.clone(),
                Entry {
                    node: node.clone(),
                    last_heard: Instant::now(),
                    connection: Some(connection.clone()),
                    telemetry: None,
                    images,
                },
            );
            self.update_gauges(&entries);
            (node, replaced, previous_state)
        };
        self.persist(leader, &node).await?;
        let gpus = node.gpus.len();
        let source = node.gpu_source().as_str_name();
        let message = match (replaced, previous_state) {
            (true, _) => format!(
                "node {} reconnected (incarnation {}); its previous stream was closed",
                node.id, node.incarnation
            ),
            (false, Some(state)) => format!(
                "node {} is READY again (was {}) with {gpus} GPUs ({source})",
                node.id,
                state_name(state)
            ),
            (false, None) => format!(
                "node {} registered with {gpus} GPUs ({source}), agent {}",
                node.id, node.agent_version
            ),
        };
        self.events.emit("node.ready", &node.id, "", message);
        Ok(connection)
    }

    /// The agent reported the images its node holds now (already canonical).
    pub fn images_changed(&self, node_id: &str, connection_id: u64, images: HashSet<String>) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(node_id)
            && entry.connection.as_ref().map(|c| c.id) == Some(connection_id)
        {
            tracing::debug!(node = node_id, images = images.len(), "node images changed");
            entry.images = images;
        }
    }

    /// The agent's stream ended. The node keeps its state; silence timers do the rest.
    pub fn disconnected(&self, node_id: &str, connection_id: u64) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(node_id)
            && entry.connection.as_ref().map(|c| c.id) == Some(connection_id)
        {
            entry.connection = None;
        }
    }

    /// Any message from an agent: it is alive. A node that had gone quiet is READY again.
    pub async fn heard(
        &self,
        leader: &LeaderState,
        node_id: &str,
        connection_id: u64,
        telemetry: Option<NodeTelemetry>,
    ) -> Result<()> {
        // Rare: only a sample reporting an XID is kept aside, for the exclusion check.
        let with_xid = telemetry
            .as_ref()
            .filter(|t| t.gpus.iter().any(|g| !g.xid_events.is_empty()))
            .cloned();
        let transition = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(node_id) else {
                return Ok(());
            };
            if entry.connection.as_ref().map(|c| c.id) != Some(connection_id) {
                // A stale stream still delivering: it no longer speaks for the node.
                return Ok(());
            }
            entry.last_heard = Instant::now();
            if let Some(t) = telemetry {
                self.metrics.telemetry_received_total.inc();
                entry.telemetry = Some((t, SystemTime::now()));
            }
            let from = entry.node.state();
            if from == NodeState::Ready {
                None
            } else {
                let t = set_state(entry, NodeState::Ready, SystemTime::now());
                self.update_gauges(&entries);
                Some(Transition {
                    node: t,
                    from,
                    why: "heard from its agent again".to_owned(),
                })
            }
        };
        if let Some(t) = transition {
            self.apply(leader, t).await?;
        }
        if let Some(t) = with_xid {
            self.exclude_failed_gpus(leader, node_id, &t).await?;
        }
        Ok(())
    }

    /// Escalates nodes that have been silent too long. Called on a short timer.
    pub async fn check_liveness(&self, leader: &LeaderState) -> Result<()> {
        let now = Instant::now();
        let leading_for = now.saturating_duration_since(leader.since_instant);
        let transitions: Vec<Transition> = {
            let mut entries = self.lock();
            let mut out = Vec::new();
            for entry in entries.values_mut() {
                let silence = now.saturating_duration_since(entry.last_heard);
                let wanted = state_for_silence(silence, leading_for, &self.liveness);
                let from = entry.node.state();
                if severity(wanted) > severity(from) {
                    if wanted == NodeState::Down
                        && let Some(c) = entry.connection.take()
                    {
                        // Its sessions are about to be LOST: a stream that survived the
                        // silence must not carry on as if nothing happened. The agent
                        // dials again and its Hello has the workloads reconciled.
                        c.closed.cancel();
                    }
                    let node = set_state(entry, wanted, SystemTime::now());
                    out.push(Transition {
                        node,
                        from,
                        why: format!(
                            "silent for {}",
                            humantime::format_duration(Duration::from_millis(
                                silence.as_millis() as u64
                            ))
                        ),
                    });
                }
            }
            if !out.is_empty() {
                self.update_gauges(&entries);
            }
            out
        };
        for t in transitions {
            self.apply(leader, t).await?;
        }
        Ok(())
    }

    async fn apply(&self, leader: &LeaderState, t: Transition) -> Result<()> {
        let to = t.node.state();
        self.persist(leader, &t.node).await?;
        self.events.emit(
            &format!("node.{}", state_name(to)),
            &t.node.id,
            "",
            format!(
                "node {} is {} (was {}): {}",
                t.node.id,
                state_name(to).to_uppercase(),
                state_name(t.from).to_uppercase(),
                t.why
            ),
        );
        Ok(())
    }

    /// Cordons or uncordons a node. Uncordoning also ends a drain and gives back the
    /// GPUs excluded after a fatal XID (the operator says the node is fixed).
    pub async fn set_schedulable(
        &self,
        leader: &LeaderState,
        node_id: &str,
        schedulable: bool,
    ) -> Result<Node> {
        self.update(leader, node_id, |node| {
            node.schedulable = schedulable;
            if schedulable {
                node.draining = false;
                node.drain_deadline = None;
                node.excluded_gpus.clear();
            }
        })
        .await?;
        let (kind, verb) = if schedulable {
            ("node.uncordoned", "schedulable again")
        } else {
            ("node.cordoned", "cordoned: no new placements")
        };
        self.events
            .emit(kind, node_id, "", format!("node {node_id} is {verb}"));
        self.get(node_id)
    }

    /// Marks a node draining (and cordoned) until `deadline`, kept in the store so a
    /// broker that takes over keeps it.
    pub async fn set_draining(
        &self,
        leader: &LeaderState,
        node_id: &str,
        deadline: SystemTime,
    ) -> Result<Node> {
        self.update(leader, node_id, |node| {
            node.draining = true;
            node.schedulable = false;
            node.drain_deadline = Some(hearth_sdk::time::timestamp(deadline));
        })
        .await?;
        self.get(node_id)
    }

    /// Takes GPUs that reported a fatal XID in `telemetry` out of placement for good (until
    /// `UncordonNode`), in the node's record, with an event for each.
    async fn exclude_failed_gpus(
        &self,
        leader: &LeaderState,
        node_id: &str,
        telemetry: &NodeTelemetry,
    ) -> Result<()> {
        let failed: Vec<(String, u64)> = {
            let entries = self.lock();
            let Some(entry) = entries.get(node_id) else {
                return Ok(());
            };
            telemetry
                .gpus
                .iter()
                .filter(|g| !entry.node.excluded_gpus.iter().any(|x| x.uuid == g.uuid))
                .filter_map(|g| {
                    g.xid_events
                        .iter()
                        .find(|x| crate::placement::FATAL_XIDS.contains(&x.code))
                        .map(|x| (g.uuid.clone(), x.code))
                })
                .collect()
        };
        if failed.is_empty() {
            return Ok(());
        }
        let at = hearth_sdk::time::now();
        self.update(leader, node_id, |node| {
            for (uuid, xid) in &failed {
                node.excluded_gpus.push(GpuExclusion {
                    uuid: uuid.clone(),
                    xid: *xid,
                    at: Some(at),
                });
            }
        })
        .await?;
        for (uuid, xid) in failed {
            self.events.emit(
                "gpu.excluded",
                node_id,
                "",
                format!(
                    "GPU {uuid} on node {node_id} reported fatal XID {xid}: no new sessions \
                     on it until `UncordonNode` (after a reset or a reboot)"
                ),
            );
        }
        Ok(())
    }

    /// Changes a node's record with `change` and persists it.
    async fn update(
        &self,
        leader: &LeaderState,
        node_id: &str,
        change: impl FnOnce(&mut Node),
    ) -> Result<()> {
        let node = {
            let mut entries = self.lock();
            let entry = entries.get_mut(node_id).ok_or_else(|| Error::NotFound {
                kind: "node",
                id: node_id.to_owned(),
            })?;
            change(&mut entry.node);
            entry.node.clone()
        };
        self.persist(leader, &node).await
    }

    /// Writes a node record (without telemetry), fenced by the leader's epoch.
    async fn persist(&self, leader: &LeaderState, node: &Node) -> Result<()> {
        let mut record = node.clone();
        record.telemetry = None;
        record.telemetry_received_at = None;
        let txn = Txn::fenced(leader.epoch).put(node_key(&node.id), record.encode_to_vec());
        self.metrics.store_writes_total.inc();
        match self.store.txn(txn).await {
            Ok(outcome) if outcome.succeeded => Ok(()),
            Ok(_) => {
                self.metrics.store_write_failures_total.inc();
                tracing::warn!(
                    epoch = leader.epoch,
                    "a fenced write failed: another broker leads now; stepping down"
                );
                leader.depose();
                Err(Error::Deposed)
            }
            Err(e) => {
                self.metrics.store_write_failures_total.inc();
                Err(e.into())
            }
        }
    }

    /// One node with its latest telemetry.
    pub fn get(&self, node_id: &str) -> Result<Node> {
        let entries = self.lock();
        entries
            .get(node_id)
            .map(view)
            .ok_or_else(|| Error::NotFound {
                kind: "node",
                id: node_id.to_owned(),
            })
    }

    /// Every node, ordered by id.
    pub fn list(&self) -> Vec<Node> {
        let entries = self.lock();
        let mut nodes: Vec<Node> = entries.values().map(view).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Runs `f` over every node as placement reads it, borrowed rather than copied: a
    /// create reads the whole fleet, and copying a thousand nodes with their telemetry
    /// cost more than placing. `f` runs under the registry's lock, so it must be quick.
    pub fn with_placement_view<R>(
        &self,
        f: impl FnOnce(&[crate::placement::NodeRef<'_>]) -> R,
    ) -> R {
        let entries = self.lock();
        let views: Vec<crate::placement::NodeRef<'_>> = entries
            .values()
            .map(|e| crate::placement::NodeRef {
                node: &e.node,
                telemetry: e.telemetry.as_ref().map(|(t, _)| t),
                images: Some(&e.images),
            })
            .collect();
        f(&views)
    }

    /// The node's liveness state, if it is known.
    pub fn state(&self, node_id: &str) -> Option<NodeState> {
        self.lock().get(node_id).map(|e| e.node.state())
    }

    /// The stream to a node's agent, if it is connected.
    pub fn connection(&self, node_id: &str) -> Option<Connection> {
        self.lock().get(node_id).and_then(|e| e.connection.clone())
    }

    fn update_gauges(&self, entries: &HashMap<String, Entry>) {
        for state in [
            NodeState::Ready,
            NodeState::Suspect,
            NodeState::Disconnected,
            NodeState::Down,
        ] {
            let n = entries.values().filter(|e| e.node.state() == state).count();
            self.metrics
                .nodes
                .get_or_create(&StateLabel {
                    state: state_name(state).to_owned(),
                })
                .set(n as i64);
        }
    }
}

fn set_state(entry: &mut Entry, state: NodeState, now: SystemTime) -> Node {
    entry.node.set_state(state);
    entry.node.state_changed_at = Some(hearth_sdk::time::timestamp(now));
    entry.node.clone()
}

/// The API view of an entry: the record plus live fields.
fn view(entry: &Entry) -> Node {
    let mut node = entry.node.clone();
    let heard_ago = entry.last_heard.elapsed();
    node.last_seen_at = Some(hearth_sdk::time::timestamp(SystemTime::now() - heard_ago));
    if let Some((t, at)) = &entry.telemetry {
        node.telemetry = Some(t.clone());
        node.telemetry_received_at = Some(hearth_sdk::time::timestamp(*at));
    }
    node.images = entry.images.iter().cloned().collect();
    node.images.sort();
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness() -> LivenessConfig {
        LivenessConfig::default()
    }

    #[test]
    fn silence_escalates_at_the_configured_times() {
        let l = liveness();
        let long = Duration::from_secs(3600);
        let cases = [
            (0, NodeState::Ready),
            (4_999, NodeState::Ready),
            (5_000, NodeState::Suspect),
            (14_999, NodeState::Suspect),
            (15_000, NodeState::Disconnected),
            (299_999, NodeState::Disconnected),
            (300_000, NodeState::Down),
        ];
        for (ms, want) in cases {
            assert_eq!(
                state_for_silence(Duration::from_millis(ms), long, &l),
                want,
                "{ms} ms of silence"
            );
        }
    }

    #[test]
    fn a_new_leader_declares_nothing_down_during_its_grace() {
        let l = liveness();
        let silence = Duration::from_secs(3600);
        assert_eq!(
            state_for_silence(silence, Duration::from_secs(59), &l),
            NodeState::Disconnected
        );
        assert_eq!(
            state_for_silence(silence, Duration::from_secs(60), &l),
            NodeState::Down
        );
    }

    #[test]
    fn severity_orders_the_states() {
        let order = [
            NodeState::Ready,
            NodeState::Suspect,
            NodeState::Disconnected,
            NodeState::Down,
        ];
        for pair in order.windows(2) {
            assert!(severity(pair[0]) < severity(pair[1]));
        }
    }
}
