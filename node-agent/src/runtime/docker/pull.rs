//! Image pulls for the Docker runtime: on demand, per `spec.pull_policy`, with progress,
//! and one pull per image at a time however many starts wait for it.
//!
//! - **Which starts pull.** IF_NOT_PRESENT (the default) pulls an image the engine does
//!   not hold. ALWAYS pulls before every start, except a digest reference (`@sha256:`)
//!   the engine holds: its content cannot have changed. NEVER pulls nothing, and a
//!   missing image is [`RuntimeError::NotPulled`].
//! - **Shared pulls.** Concurrent starts of one image on this node wait for the same
//!   pull, which runs in a task of its own: a start that gives up does not cut the pull
//!   off for the others. A pull with a tenant's registry credentials is shared only by
//!   that tenant's starts, so no start gets an image through another tenant's
//!   credentials.
//! - **Progress** is summed over the layers the engine reports: bytes downloaded of the
//!   bytes known so far, and layers done of layers seen. Every waiter sees it.
//! - **Failures** carry the engine's words (the registry's "manifest unknown", "no basic
//!   auth credentials", a refused connection), with `not_found` set when the registry
//!   does not have the image.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bollard::{Docker, models::CreateImageInfo, query_parameters::CreateImageOptions};
use futures::StreamExt as _;
use tokio::sync::watch;

use super::{backend, status_of};
use crate::runtime::{PullProgress, RuntimeError};

/// Where a pull stands, as its waiters see it.
#[derive(Clone, Debug)]
enum State {
    Running(PullProgress),
    Done(Result<(), Failure>),
}

/// Why a pull failed.
#[derive(Clone, Debug)]
struct Failure {
    reason: String,
    not_found: bool,
}

/// A tenant's credentials for a pull.
pub struct Auth {
    /// Whose they are.
    pub tenant: String,
    /// As the engine takes them.
    pub credentials: bollard::auth::DockerCredentials,
}

/// The pulls in progress on this engine, by image reference (and tenant, for a pull with
/// credentials).
#[derive(Default)]
pub struct Pulls {
    running: Mutex<HashMap<String, watch::Receiver<State>>>,
    started: std::sync::atomic::AtomicU64,
}

impl Pulls {
    /// Pulls started (not joined) since the agent started.
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pulls `image` (with `auth` if given), or joins the same pull already running, and
    /// forwards its progress to `progress` until it ends.
    pub async fn pull(
        self: &Arc<Self>,
        docker: &Docker,
        image: &str,
        auth: Option<&Auth>,
        progress: &watch::Sender<PullProgress>,
    ) -> Result<(), RuntimeError> {
        let key = match auth {
            Some(auth) => format!("{image} for tenant {}", auth.tenant),
            None => image.to_owned(),
        };
        let mut state = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(State::Running(PullProgress::default()));
                    running.insert(key.clone(), rx.clone());
                    self.started
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pull = Pull {
                        image: image.to_owned(),
                        key,
                        credentials: auth.map(|a| a.credentials.clone()),
                    };
                    tokio::spawn(run(self.clone(), docker.clone(), pull, tx));
                    rx
                }
            }
        };
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                State::Running(p) => {
                    progress.send_replace(p);
                }
                State::Done(Ok(())) => return Ok(()),
                State::Done(Err(f)) => {
                    return Err(RuntimeError::PullFailed {
                        image: image.to_owned(),
                        reason: f.reason,
                        not_found: f.not_found,
                    });
                }
            }
            if state.changed().await.is_err() {
                // The pull task ended without a final state: only a panic does that.
                return Err(backend(format!("the pull of {image:?} ended unexpectedly")));
            }
        }
    }
}

/// One pull to run. Its credentials are never logged.
struct Pull {
    image: String,
    /// Its key among the running pulls.
    key: String,
    credentials: Option<bollard::auth::DockerCredentials>,
}

/// The pull itself, in its own task; it forgets itself when done.
async fn run(pulls: Arc<Pulls>, docker: Docker, pull: Pull, tx: watch::Sender<State>) {
    let started = std::time::Instant::now();
    let image = pull.image.as_str();
    let authenticated = pull.credentials.is_some();
    let outcome = pull_once(&docker, image, pull.credentials, &tx).await;
    match &outcome {
        Ok(()) => tracing::info!(image, authenticated, took = ?started.elapsed(), "image pulled"),
        Err(f) => tracing::warn!(image, authenticated, reason = %f.reason, "image pull failed"),
    }
    // Forgotten before the outcome is told, so a start that comes after it begins a
    // pull of its own rather than joining a finished one.
    pulls
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pull.key);
    tx.send_replace(State::Done(outcome));
}

async fn pull_once(
    docker: &Docker,
    image: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
    tx: &watch::Sender<State>,
) -> Result<(), Failure> {
    let (from_image, tag) = reference(image);
    let options = CreateImageOptions {
        from_image: Some(from_image),
        tag: Some(tag),
        ..Default::default()
    };
    let authenticated = credentials.is_some();
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut layers = Layers::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if layers.update(&info) {
                    tx.send_replace(State::Running(layers.progress()));
                }
            }
            Err(e) => {
                let reason = match &e {
                    bollard::errors::Error::DockerStreamError { error } => error.clone(),
                    bollard::errors::Error::DockerResponseServerError { message, .. } => {
                        message.clone()
                    }
                    other => other.to_string(),
                };
                let not_found = status_of(&e) == Some(404) || says_not_found(&reason);
                let reason = if says_unauthorized(&reason) {
                    let registry = hearth_sdk::image::registry(image);
                    if authenticated {
                        format!(
                            "registry {registry} refused the credentials (401 Unauthorized): \
                             {reason}; set the right ones with `hearth registry login {registry}`"
                        )
                    } else {
                        format!(
                            "registry {registry} answered 401 Unauthorized and the tenant has \
                             no credentials for it: {reason}; set them with \
                             `hearth registry login {registry}`"
                        )
                    }
                } else {
                    reason
                };
                return Err(Failure { reason, not_found });
            }
        }
    }
    Ok(())
}

/// Whether an engine's pull error means the registry does not have the image.
fn says_not_found(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("manifest unknown")
        || r.contains("not found")
        || r.contains("name unknown")
        || r.contains("repository does not exist")
}

/// Whether an engine's pull error means the registry wants (other) credentials.
fn says_unauthorized(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("unauthorized")
        || r.contains("no basic auth credentials")
        || r.contains("authentication required")
        || r.contains("401")
}

/// `image` split as the engine's pull API takes it: the name, and the tag or digest
/// (`latest` when it names neither).
pub fn reference(image: &str) -> (String, String) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_owned(), digest.to_owned());
    }
    // A tag follows the last ':' after the last '/' (a registry's port comes before it).
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (
            image[..last + i].to_owned(),
            image[last + i + 1..].to_owned(),
        ),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

/// Whether `image` names a digest, whose content can never change.
pub fn is_digest(image: &str) -> bool {
    image.contains("@sha256:")
}

/// The layers of one pull, as the engine reports them.
#[derive(Default)]
struct Layers {
    /// Per layer id: bytes done, bytes total, finished.
    by_id: HashMap<String, (u64, u64, bool)>,
}

impl Layers {
    /// Takes one progress message; returns whether the totals changed.
    fn update(&mut self, info: &CreateImageInfo) -> bool {
        let (Some(id), Some(status)) = (&info.id, &info.status) else {
            return false;
        };
        // "Pulling from library/x" carries the tag as its id, not a layer's.
        if status.starts_with("Pulling from") || status.starts_with("Digest:") {
            return false;
        }
        let detail = info.progress_detail.as_ref();
        let current = detail.and_then(|d| d.current).unwrap_or(0).max(0) as u64;
        let total = detail.and_then(|d| d.total).unwrap_or(0).max(0) as u64;
        let layer = self.by_id.entry(id.clone()).or_insert((0, 0, false));
        let before = *layer;
        match status.as_str() {
            "Downloading" => {
                layer.0 = current;
                if total > 0 {
                    layer.1 = total;
                }
            }
            "Download complete" | "Verifying Checksum" => layer.0 = layer.1,
            "Pull complete" | "Already exists" => {
                layer.0 = layer.1;
                layer.2 = true;
            }
            _ => {}
        }
        *layer != before || before == (0, 0, false)
    }

    fn progress(&self) -> PullProgress {
        let mut p = PullProgress::default();
        for (done, total, finished) in self.by_id.values() {
            p.done_bytes += done;
            p.total_bytes += total;
            p.layers_total += 1;
            p.layers_done += u32::from(*finished);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::ProgressDetail;

    use super::*;

    #[test]
    fn references_split_into_name_and_tag_or_digest() {
        for (image, name, tag) in [
            ("busybox", "busybox", "latest"),
            ("busybox:1.36", "busybox", "1.36"),
            (
                "127.0.0.1:5000/team/model",
                "127.0.0.1:5000/team/model",
                "latest",
            ),
            (
                "127.0.0.1:5000/team/model:v3",
                "127.0.0.1:5000/team/model",
                "v3",
            ),
            (
                "registry.example.com/m@sha256:abc",
                "registry.example.com/m",
                "sha256:abc",
            ),
        ] {
            assert_eq!(
                reference(image),
                (name.to_owned(), tag.to_owned()),
                "{image}"
            );
        }
        assert!(is_digest("r/m@sha256:abc"));
        assert!(!is_digest("r/m:v1"));
    }

    fn info(id: &str, status: &str, current: i64, total: i64) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: Some(ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn progress_sums_the_layers() {
        let mut layers = Layers::default();
        assert!(!layers.update(&info("v1", "Pulling from team/model", 0, 0)));
        assert!(layers.update(&info("aaa", "Pulling fs layer", 0, 0)));
        assert!(layers.update(&info("bbb", "Already exists", 0, 0)));
        assert!(layers.update(&info("aaa", "Downloading", 100, 1000)));
        assert_eq!(
            layers.progress(),
            PullProgress {
                done_bytes: 100,
                total_bytes: 1000,
                layers_done: 1,
                layers_total: 2
            }
        );
        assert!(layers.update(&info("aaa", "Download complete", 0, 0)));
        assert!(layers.update(&info("aaa", "Pull complete", 0, 0)));
        assert_eq!(
            layers.progress(),
            PullProgress {
                done_bytes: 1000,
                total_bytes: 1000,
                layers_done: 2,
                layers_total: 2
            }
        );
        assert!(
            !layers.update(&info("aaa", "Extracting", 5, 10)),
            "nothing new"
        );
    }

    #[test]
    fn registry_answers_that_mean_not_found() {
        assert!(says_not_found("manifest unknown: manifest unknown"));
        assert!(says_not_found(
            "pull access denied for x, repository does not exist or may require 'docker login'"
        ));
        assert!(!says_not_found(
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
        ));
        assert!(!says_not_found("no basic auth credentials"));
    }
}
