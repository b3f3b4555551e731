//! The agent's Prometheus metrics, served at `/metrics` on the admin port.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicI64, AtomicU64},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

/// Everything the link and the GPU sampler count. Cheap to clone; clones share values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// 1 while a stream to the broker has reached `Welcome`, else 0.
    pub connected: Gauge,
    /// 1 for the broker URL in use (the one being dialled or connected to).
    broker: Family<Labels, Gauge>,
    /// Current `broker` label, so switching URL removes the old series.
    broker_url: std::sync::Arc<Mutex<Option<String>>>,
    /// Reconnect attempts after a failed or lost stream.
    pub reconnects: Counter,
    /// Telemetry samples queued for the broker.
    pub telemetry_sent: Counter,
    /// Telemetry samples dropped because the mailbox to the broker was full (slow broker).
    pub telemetry_dropped: Counter,
    /// Telemetry samples that failed to read any GPU (a heartbeat without GPUs went instead).
    pub telemetry_errors: Counter,
    /// Commands refused, by reason (`stale_epoch`, `stale_generation`).
    pub commands_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Turns (Exec, Invoke) ended, by kind and outcome.
    turns: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Session status changes found in the background while no broker stream was up.
    pub statuses_dropped: Counter,
    /// Starts that waited for an image pull (starts sharing one pull each count).
    pub image_pulls: Counter,
    /// Pulled images removed by image collection.
    pub images_removed: Counter,
    /// Highest leader epoch accepted.
    pub highest_epoch: Gauge<i64, AtomicI64>,
    /// Constant 1 with the agent's identity as labels.
    info: Family<Labels, Gauge<u64, AtomicU64>>,
}

impl Metrics {
    /// Registers every metric under `hearth_agent_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hearth_agent");
        r.register(
            "connected",
            "1 while connected to a broker (Welcome received)",
            self.connected.clone(),
        );
        r.register("broker", "1 for the broker URL in use", self.broker.clone());
        r.register(
            "reconnects",
            "Reconnect attempts after a failed or lost broker stream",
            self.reconnects.clone(),
        );
        r.register(
            "images_removed",
            "Pulled images removed by image collection (unused, disk past the high-water mark)",
            self.images_removed.clone(),
        );
        r.register(
            "starts_pulled",
            "Session starts that waited for an image pull (starts sharing one pull each count)",
            self.image_pulls.clone(),
        );
        r.register(
            "telemetry_samples_sent",
            "Telemetry samples queued for the broker",
            self.telemetry_sent.clone(),
        );
        r.register(
            "telemetry_samples_dropped",
            "Telemetry samples dropped because the mailbox to a slow broker was full",
            self.telemetry_dropped.clone(),
        );
        r.register(
            "telemetry_errors",
            "Telemetry samples in which no GPU could be read",
            self.telemetry_errors.clone(),
        );
        r.register(
            "commands_refused",
            "Broker commands answered not-ok, by reason",
            self.commands_refused.clone(),
        );
        r.register(
            "turns",
            "Turns ended, by kind (exec, invoke) and outcome (ok, failed, cancelled, \
             timed_out, abandoned: the broker stream went away)",
            self.turns.clone(),
        );
        r.register(
            "session_statuses_dropped",
            "Session status changes dropped because no broker stream was up (the next \
             Hello reports the sessions' states)",
            self.statuses_dropped.clone(),
        );
        r.register(
            "highest_epoch",
            "Highest leader epoch accepted; lower ones are refused",
            self.highest_epoch.clone(),
        );
        r.register("info", "Agent identity (constant 1)", self.info.clone());
    }

    /// Records the agent's identity in `hearth_agent_info`.
    pub fn set_info(&self, node_id: &str, incarnation: &str, gpu_source: &str) {
        self.info
            .get_or_create(&vec![
                ("version", hearth_sdk::VERSION.to_owned()),
                ("node_id", node_id.to_owned()),
                ("incarnation", incarnation.to_owned()),
                ("gpu_source", gpu_source.to_owned()),
            ])
            .set(1);
    }

    /// Marks `url` as the broker in use, replacing the previous one.
    pub fn set_broker(&self, url: &str) {
        let mut current = self
            .broker_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_deref() == Some(url) {
            return;
        }
        if let Some(old) = current.take() {
            self.broker.remove(&vec![("url", old)]);
        }
        self.broker
            .get_or_create(&vec![("url", url.to_owned())])
            .set(1);
        *current = Some(url.to_owned());
    }

    /// Counts an ended turn.
    pub fn turn(&self, kind: &'static str, outcome: &'static str) {
        self.turns
            .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
            .inc();
    }

    /// Counts a refused command.
    pub fn refused(&self, reason: &'static str) {
        self.commands_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn series_are_named_and_the_broker_url_is_replaced() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.set_broker("http://a:7700");
        metrics.set_broker("http://b:7700");
        metrics.telemetry_dropped.inc();
        metrics.refused("stale_epoch");
        let text = render(&registry);
        assert!(
            text.contains("hearth_agent_broker{url=\"http://b:7700\"} 1"),
            "{text}"
        );
        assert!(!text.contains("http://a:7700"), "{text}");
        assert!(
            text.contains("hearth_agent_telemetry_samples_dropped_total 1"),
            "{text}"
        );
        assert!(text.contains("hearth_agent_commands_refused_total{reason=\"stale_epoch\"} 1"));
        assert!(text.contains("hearth_agent_connected 0"), "{text}");
    }
}
