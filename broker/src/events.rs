//! Cluster events: a bounded broadcast that `Admin.WatchEvents` subscribes to.
//!
//! A watcher that falls more than `CAPACITY` events behind misses the oldest ones rather
//! than making the broker buffer without bound; the miss is counted in
//! `hearth_events_dropped_total` and the watcher is told how many it missed.

use std::sync::atomic::{AtomicU64, Ordering};

use hearth_sdk::proto::v1::Event;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Events a slow watcher may fall behind before it misses some.
pub const CAPACITY: usize = 1024;

/// Publishes events to every watcher.
pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
    metrics: Metrics,
}

impl Events {
    /// A bus with no watchers.
    pub fn new(metrics: Metrics) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            tx,
            seq: AtomicU64::new(0),
            metrics,
        }
    }

    /// Records an event: logs it and sends it to every watcher.
    pub fn emit(&self, kind: &str, node_id: &str, session_id: &str, message: String) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(kind, node_id, session_id, "{message}");
        self.metrics.events_total.inc();
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Event {
            seq,
            time: Some(hearth_sdk::time::now()),
            kind: kind.to_owned(),
            node_id: node_id.to_owned(),
            session_id: session_id.to_owned(),
            message,
        });
    }

    /// A new watcher, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Counts events a slow watcher missed.
    pub fn record_dropped(&self, n: u64) {
        self.metrics.events_dropped_total.inc_by(n);
    }
}
