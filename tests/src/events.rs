//! Cluster events as they arrive, collected by a background task, for tests that wait on
//! one (`session.lost`, `session.restarting`, ...).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hearth_sdk::proto::v1::{Event, WatchEventsRequest};

use crate::{api, eventually};

/// Cluster events as they arrive, collected by a background task.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    /// Follows every `session.` event of the broker at `url` from now on.
    pub async fn watch(url: &str) -> anyhow::Result<Self> {
        let mut stream = api::admin(url)
            .watch_events(WatchEventsRequest {
                kinds: vec!["session.".into()],
            })
            .await?
            .into_inner();
        let events = Self::default();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(e);
            }
        });
        Ok(events)
    }

    /// The first event of `kind` about session `id`, if any yet.
    pub fn find(&self, kind: &str, id: &str) -> Option<Event> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.kind == kind && e.session_id == id)
            .cloned()
    }

    /// Waits (up to `timeout`) for the first event of `kind` about session `id`.
    pub async fn wait(&self, kind: &str, id: &str, timeout: Duration) -> anyhow::Result<Event> {
        eventually(&format!("event {kind} for {id}"), timeout, || async {
            Ok(self.find(kind, id))
        })
        .await
    }
}
