//! Turn links: a second stream from every agent to every broker (`NodeAgent.ConnectTurns`),
//! so that turns on READY sessions go on while the control plane fails over.
//!
//! A turn normally travels client → leader → the node's `Connect` stream. When the leader
//! dies, no broker holds that stream until a standby has won the election and the agents
//! have found it: a lease and a reconnect (3-5 s). Every agent therefore also keeps a turn
//! link to each broker it knows. A broker routes a turn through one when it has no
//! `Connect` stream to the session's node: a standby, or a new leader that the node has
//! not yet said Hello to.
//!
//! - **What a standby knows** of a session comes from the store (the record the leader
//!   wrote), cached for [`RECORD_TTL`]: its tenant, node, generation, state and ports. It
//!   serves turns of READY sessions only. A PAUSED session needs a resume, a lifecycle
//!   change that is the leader's alone, so that turn is refused as not run, and the client
//!   retries it at the leader. A standby reads the store, not the leader's memory, so it
//!   lags the leader by the write of a change at most. A turn routed on a stale record is
//!   refused by the agent, which checks the session's generation; no workload ever gets a
//!   turn meant for another.
//! - **No turn runs twice:** the client sends a turn to one broker, and that broker sends
//!   it down one stream. A turn that fails after it left may have run, and nothing repeats
//!   it, as on the leader's path.
//! - **Nothing else changes:** the leader alone places, starts, stops, pauses and
//!   resumes, fenced by its epoch. A turn link carries Exec, Invoke and CancelTurn, and the
//!   agent refuses anything else on it. Turns served this way are not counted in
//!   `turns_served` or as activity by the leader; the agent reports a busy session in its
//!   telemetry anyway.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hearth_sdk::proto::v1::{BrokerMessage, Session, SessionState};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    nodes::Connection,
    sessions::session_key,
    store::Store,
};

/// How long a standby trusts a session record it read from the store.
pub const RECORD_TTL: Duration = Duration::from_secs(1);
/// How long a standby waits for the leader to accept a TCP connection before it counts
/// the leader as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a probe's answer is reused.
pub const PROBE_TTL: Duration = Duration::from_millis(500);

/// The key a turn sent on `node_id`'s turn link is registered under in
/// [`crate::turns::Turns`], so that the link's end fails those turns and no others.
pub fn turns_key(node_id: &str) -> String {
    format!("{node_id} (turn link)")
}

/// Turn links by node, and the session records a broker without the session in memory
/// routes by.
#[derive(Default)]
pub struct TurnLinks {
    links: Mutex<HashMap<String, Connection>>,
    next_id: AtomicU64,
    records: Mutex<HashMap<String, (Session, Instant)>>,
    probes: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Where a turn routed through a turn link goes.
pub struct LinkRoute {
    /// The session's node.
    pub node_id: String,
    /// The session's generation, which the agent checks.
    pub generation: u64,
    /// The session's record as the store holds it.
    pub record: Session,
    /// The node's turn link.
    pub connection: Connection,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TurnLinks {
    /// Registers `node_id`'s new turn link (replacing an older one, which is closed).
    pub fn insert(&self, node_id: &str, tx: mpsc::Sender<BrokerMessage>) -> Connection {
        let connection = Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            tx,
            closed: CancellationToken::new(),
        };
        if let Some(old) = lock(&self.links).insert(node_id.to_owned(), connection.clone()) {
            old.closed.cancel();
        }
        connection
    }

    /// Forgets `node_id`'s link `id` (not a newer one).
    pub fn remove(&self, node_id: &str, id: u64) {
        let mut links = lock(&self.links);
        if links.get(node_id).is_some_and(|c| c.id == id) {
            links.remove(node_id);
        }
    }

    /// The node's turn link, if it has one here.
    pub fn get(&self, node_id: &str) -> Option<Connection> {
        lock(&self.links)
            .get(node_id)
            .filter(|c| !c.closed.is_cancelled() && !c.tx.is_closed())
            .cloned()
    }

    /// Open links.
    pub fn len(&self) -> usize {
        lock(&self.links).len()
    }

    /// Whether no link is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the broker at `address` (a leader's advertised URL) accepts a TCP
    /// connection within [`PROBE_TIMEOUT`]; answers are reused for [`PROBE_TTL`]. A
    /// standby serves turns only while the leader does not answer: a leader that is up
    /// serves them itself, and counts them towards the session's activity.
    pub async fn answers(&self, address: &str) -> bool {
        if let Some((up, at)) = lock(&self.probes).get(address)
            && at.elapsed() < PROBE_TTL
        {
            return *up;
        }
        let up = probe(address).await;
        let mut probes = lock(&self.probes);
        if probes.len() > 64 {
            probes.clear();
        }
        probes.insert(address.to_owned(), (up, Instant::now()));
        up
    }

    /// Closes every link (the broker shuts down).
    pub fn close_all(&self) {
        for (_, c) in lock(&self.links).drain() {
            c.closed.cancel();
        }
    }

    /// Routes a turn of `tenant`'s session `id` through a turn link, by the record in the
    /// store. `unroutable` is the error when the session exists but cannot be served here
    /// (a standby's "not leader"); it is UNAVAILABLE and says the turn was not run.
    pub async fn route(
        &self,
        store: &dyn Store,
        tenant: &str,
        id: &str,
        unroutable: impl FnOnce(String) -> Error,
    ) -> Result<LinkRoute> {
        let record = self.record(store, id).await?;
        let not_found = || Error::NotFound {
            kind: "session",
            id: id.to_owned(),
        };
        let record = record
            .filter(|r| r.tenant == tenant)
            .ok_or_else(not_found)?;
        if record.labels.contains_key("hearth.pool") {
            return Err(Error::FailedPrecondition(format!(
                "session {id} is an unclaimed member of a warm pool; CreateSession with its \
                 template claims one"
            )));
        }
        if record.state() != SessionState::Ready {
            return Err(unroutable(format!(
                "session {id} is {} and only the leader may change that",
                record.state().as_str_name()
            )));
        }
        let Some(connection) = self.get(&record.node_id) else {
            return Err(unroutable(format!(
                "node {} has no turn link to this broker",
                record.node_id
            )));
        };
        Ok(LinkRoute {
            node_id: record.node_id.clone(),
            generation: record.generation,
            record,
            connection,
        })
    }

    /// The session's record: cached if read within [`RECORD_TTL`], else from the store.
    async fn record(&self, store: &dyn Store, id: &str) -> Result<Option<Session>> {
        if let Some((record, at)) = lock(&self.records).get(id)
            && at.elapsed() < RECORD_TTL
        {
            return Ok(Some(record.clone()));
        }
        let Some(kv) = store.get(&session_key(id)).await? else {
            return Ok(None);
        };
        let record = Session::decode(kv.value.as_slice()).map_err(|e| {
            Error::Store(crate::store::StoreError::Corrupt {
                key: kv.key,
                reason: e.to_string(),
            })
        })?;
        let mut records = lock(&self.records);
        if records.len() > 10_000 {
            records.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
        }
        records.insert(id.to_owned(), (record.clone(), Instant::now()));
        Ok(Some(record))
    }
}

/// A TCP connect to the host and port of `address` (a URL; the scheme's port when none).
async fn probe(address: &str) -> bool {
    let Ok(uri) = address.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_sees_a_listener_and_its_absence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let links = TurnLinks::default();
        assert!(links.answers(&address).await);
        drop(listener);
        assert!(
            links.answers(&address).await,
            "within PROBE_TTL the answer is reused"
        );
        tokio::time::sleep(PROBE_TTL).await;
        assert!(!links.answers(&address).await, "nothing listens any more");
        assert!(!links.answers("not a url").await);
    }

    #[test]
    fn a_newer_link_replaces_and_closes_the_older() {
        let links = TurnLinks::default();
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let first = links.insert("n1", tx1);
        let second = links.insert("n1", tx2);
        assert!(first.closed.is_cancelled());
        assert_eq!(links.get("n1").map(|c| c.id), Some(second.id));
        links.remove("n1", first.id);
        assert!(
            links.get("n1").is_some(),
            "removing the old link keeps the new one"
        );
        links.remove("n1", second.id);
        assert!(links.get("n1").is_none());
        assert!(links.is_empty());
    }
}
