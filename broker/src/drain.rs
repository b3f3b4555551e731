//! Draining a node: no new placements, and every session on it stopped between turns, or
//! at its deadline even mid-turn.
//!
//! `DrainNode` marks the node draining and unschedulable, with its deadline, in the node
//! record. A pass on the leader's session timer then
//! stops each session on the node that has no turn in flight: it closes the session to
//! new turns first and checks for turns after, so a turn is either refused before it
//! runs or finishes before the stop. Warm-pool members are retired, and the pool refills
//! on another node. Past the deadline, sessions still busy are stopped anyway. The node
//! stays cordoned once empty; `UncordonNode` ends a drain.
//!
//! A broker that takes over finds the drain and its deadline in the node record, and keeps
//! the deadline: it reads the wall-clock deadline the previous leader wrote against its
//! own clock (a record without one, from an older broker, gets the default from then).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hearth_sdk::proto::v1::Node;

use crate::{
    cluster::{Cluster, LeaderState},
    error::{Error, Result},
    sessions::{Entry, Stop},
};

/// A drain's deadline when the request sets none (the proto's default).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// The longest deadline accepted.
pub const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Drains in progress on this leader.
#[derive(Default)]
pub struct Drains {
    /// Node id → when sessions are stopped even mid-turn.
    deadlines: Mutex<HashMap<String, Instant>>,
    /// Sessions whose stop is under way, so a pass does not start it twice.
    stopping: Mutex<HashSet<String>>,
    /// Nodes already announced as empty.
    announced: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drains {
    /// Starts (or restarts, with a new deadline) draining `node_id`.
    pub async fn start(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        node_id: &str,
        deadline: Duration,
    ) -> Result<Node> {
        let node = cluster
            .nodes
            .set_draining(leader, node_id, SystemTime::now() + deadline)
            .await?;
        lock(&self.deadlines).insert(node_id.to_owned(), Instant::now() + deadline);
        lock(&self.announced).remove(node_id);
        let sessions = cluster.sessions.on_node(node_id).len();
        cluster.events.emit(
            "node.draining",
            node_id,
            "",
            format!(
                "node {node_id} is draining: {sessions} session(s) to stop between turns, \
                 all of them by {} from now",
                humantime::format_duration(deadline)
            ),
        );
        Ok(node)
    }

    /// Forgets a drain that `UncordonNode` ended.
    pub fn cancel(&self, node_id: &str) {
        lock(&self.deadlines).remove(node_id);
        lock(&self.announced).remove(node_id);
    }

    /// One pass: stops what can be stopped on every draining node. Stops run in their own
    /// tasks, so a slow agent does not hold up the pass.
    pub fn tick(&self, cluster: &Arc<Cluster>, leader: &LeaderState) {
        let draining: Vec<(String, Option<SystemTime>)> = cluster
            .nodes
            .list()
            .into_iter()
            .filter(|n| n.draining)
            .map(|n| {
                (
                    n.id,
                    n.drain_deadline
                        .as_ref()
                        .and_then(hearth_sdk::time::system_time),
                )
            })
            .collect();
        let now = Instant::now();
        for (node_id, recorded) in draining {
            let deadline = *lock(&self.deadlines)
                .entry(node_id.clone())
                .or_insert_with(|| match recorded {
                    // Taken over: what is left of the deadline the record holds.
                    Some(at) => now + at.duration_since(SystemTime::now()).unwrap_or_default(),
                    None => now + DEFAULT_DEADLINE,
                });
            let sessions = cluster.sessions.on_node(&node_id);
            if sessions.is_empty() {
                if lock(&self.announced).insert(node_id.clone()) {
                    cluster.events.emit(
                        "node.drained",
                        &node_id,
                        "",
                        format!("node {node_id} is drained: no sessions left; it stays cordoned"),
                    );
                }
                continue;
            }
            let forced = now >= deadline;
            for entry in sessions {
                let id = entry.id();
                if !lock(&self.stopping).insert(id.clone()) {
                    continue;
                }
                let (cluster, leader, node_id) = (cluster.clone(), leader.clone(), node_id.clone());
                tokio::spawn(async move {
                    let outcome = stop(&cluster, &leader, &entry, &node_id, forced).await;
                    if let Err(e) = outcome {
                        tracing::warn!(session = %entry.id(), node = %node_id, error = %e,
                            "drain could not stop a session; will retry");
                    }
                    lock(&cluster.drains.stopping).remove(&entry.id());
                });
            }
        }
    }
}

async fn stop(
    cluster: &Cluster,
    leader: &LeaderState,
    entry: &Arc<Entry>,
    node_id: &str,
    forced: bool,
) -> Result<()> {
    let why = if forced {
        format!("node {node_id} drain deadline passed; stopped even if a turn was running")
    } else {
        format!("node {node_id} is draining; stopped between turns")
    };
    let stop = if forced {
        Stop::Now
    } else {
        Stop::BetweenTurns
    };
    match cluster
        .sessions
        .stop(cluster, leader, entry, &why, stop)
        .await
    {
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks a requested deadline; zero means the default.
pub fn deadline(requested: Option<Duration>) -> Result<Duration> {
    match requested {
        None => Ok(DEFAULT_DEADLINE),
        Some(d) if d.is_zero() => Ok(DEFAULT_DEADLINE),
        Some(d) if d > MAX_DEADLINE => Err(Error::invalid(
            "deadline",
            format!(
                "{} is longer than the most allowed, {}",
                humantime::format_duration(d),
                humantime::format_duration(MAX_DEADLINE)
            ),
        )),
        Some(d) => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_default_and_are_bounded() {
        assert_eq!(deadline(None).unwrap(), DEFAULT_DEADLINE);
        assert_eq!(deadline(Some(Duration::ZERO)).unwrap(), DEFAULT_DEADLINE);
        assert_eq!(
            deadline(Some(Duration::from_secs(5))).unwrap(),
            Duration::from_secs(5)
        );
        let err = deadline(Some(MAX_DEADLINE * 2)).unwrap_err();
        assert!(err.to_string().starts_with("invalid deadline:"), "{err}");
    }
}
