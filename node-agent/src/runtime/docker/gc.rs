//! Image garbage collection: images this agent pulled are removed once they go unused,
//! while the engine's disk is fuller than a high-water mark (`[docker.image_gc]`).
//!
//! - **Only what Hearth pulled.** The agent records every image it pulls, and when a
//!   start last used it, in `pulled-images.json` in its state directory (so the record
//!   outlives a restart). An image built or loaded on the host is never in it, so never
//!   removed.
//! - **Only what is unused.** An image goes when no container of the engine (running or
//!   not) is made from it, and no start has used it for `unused_for`. Removal is not
//!   forced: an image another tag still names is only untagged, as `docker rmi` does.
//! - **Only under pressure.** Disk use is read with `statvfs` on the engine's
//!   `DockerRootDir`. An agent that cannot see that directory (one in a container without
//!   it mounted) cannot measure, says so once, and removes nothing.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bollard::query_parameters::{ListContainersOptions, RemoveImageOptions};

use super::{DockerRuntime, backend, status_of};
use crate::{config::ImageGcConfig, runtime::RuntimeError};

/// The record's file name in the agent's state directory.
pub const RECORD_FILE: &str = "pulled-images.json";

/// Images this agent pulled, with when a start last used each (seconds since the epoch).
pub struct Pulled {
    path: PathBuf,
    used: Mutex<BTreeMap<String, u64>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Pulled {
    /// Loads the record under `state_dir` (empty when there is none yet).
    pub fn load(state_dir: &Path) -> Result<Self, RuntimeError> {
        let path = state_dir.join(RECORD_FILE);
        let used = read_record(&path, "a record of pulled images")?;
        Ok(Self {
            path,
            used: Mutex::new(used),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `image` was pulled (`pulled`), or that a start used it: an image this
    /// agent did not pull stays out of the record.
    pub fn used(&self, image: &str, pulled: bool) {
        let mut used = self.lock();
        if pulled || used.contains_key(image) {
            used.insert(image.to_owned(), now());
            self.save(&used);
        }
    }

    fn forget(&self, image: &str) {
        let mut used = self.lock();
        if used.remove(image).is_some() {
            self.save(&used);
        }
    }

    /// Images not used for `unused_for`.
    fn stale(&self, unused_for: Duration) -> Vec<String> {
        let cutoff = now().saturating_sub(unused_for.as_secs());
        self.lock()
            .iter()
            .filter(|(_, at)| **at <= cutoff)
            .map(|(image, _)| image.clone())
            .collect()
    }

    fn save(&self, used: &BTreeMap<String, u64>) {
        write_record(&self.path, used, "the record of pulled images");
    }
}

/// Reads a JSON record the agent keeps in its state directory; the default when there is
/// none yet. `what` names it in the error.
pub(super) fn read_record<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &str,
) -> Result<T, RuntimeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            backend(format!(
                "{} is not {what} ({e}); remove it to start afresh",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(backend(format!("reading {}: {e}", path.display()))),
    }
}

/// Writes a JSON record through a temporary file, so a crash leaves the old one; a
/// failure is logged (the record is rewritten at the next change).
pub(super) fn write_record<T: serde::Serialize>(path: &Path, record: &T, what: &str) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not save {what}");
    }
}

/// Percent of the filesystem holding `dir` that is in use, as `df` counts it.
fn disk_use_percent(dir: &Path) -> Result<f64, String> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let total = stat.blocks() as f64;
    let free = stat.blocks_available() as f64;
    let used = total - stat.blocks_free() as f64;
    if total <= 0.0 {
        return Err(format!("{}: the filesystem reports no size", dir.display()));
    }
    Ok(100.0 * used / (used + free).max(1.0))
}

/// What one collection did.
#[derive(Debug, Default)]
pub struct Collected {
    /// Disk use when it started, in percent; `None` when it could not be read.
    pub disk_use_percent: Option<f64>,
    /// Images removed.
    pub removed: Vec<String>,
}

impl DockerRuntime {
    /// One collection: when disk use is past the mark, removes the pulled images that
    /// are stale and that no container is made from.
    pub async fn collect_images(&self, gc: &ImageGcConfig) -> Result<Collected, RuntimeError> {
        let Some(pulled) = &self.pulled else {
            return Ok(Collected::default());
        };
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| backend(format!("reading the engine's info: {e}")))?;
        let root = info
            .docker_root_dir
            .ok_or_else(|| backend("the engine reports no DockerRootDir"))?;
        let usage = disk_use_percent(Path::new(&root)).map_err(|e| {
            backend(format!(
                "cannot measure the disk of the engine's data ({e}); image collection needs \
                 the engine's DockerRootDir visible to the agent"
            ))
        })?;
        let mut collected = Collected {
            disk_use_percent: Some(usage),
            removed: Vec::new(),
        };
        if usage < f64::from(gc.high_water_percent) {
            return Ok(collected);
        }
        let stale = pulled.stale(gc.unused_for);
        if stale.is_empty() {
            return Ok(collected);
        }
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| backend(format!("listing containers: {e}")))?;
        let in_use: HashSet<String> = containers.into_iter().filter_map(|c| c.image_id).collect();
        for image in stale {
            let id = match self.docker.inspect_image(&image).await {
                Ok(found) => found.id.unwrap_or_default(),
                Err(e) if status_of(&e) == Some(404) => {
                    // Removed by someone else: nothing to collect.
                    pulled.forget(&image);
                    continue;
                }
                Err(e) => return Err(backend(format!("inspecting image {image:?}: {e}"))),
            };
            if in_use.contains(&id) {
                continue;
            }
            match self
                .docker
                .remove_image(&image, None::<RemoveImageOptions>, None)
                .await
            {
                Ok(_) => {
                    pulled.forget(&image);
                    self.images_changed();
                    tracing::info!(
                        image,
                        disk_use_percent = usage,
                        "removed an unused pulled image"
                    );
                    collected.removed.push(image);
                }
                // A container made from it meanwhile (409): it stays.
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => tracing::warn!(image, error = %e, "could not remove an unused image"),
            }
        }
        Ok(collected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_pulled_images_only_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let pulled = Pulled::load(dir.path()).unwrap();
        pulled.used("built-here:latest", false);
        pulled.used("registry/model:v1", true);
        assert!(pulled.stale(Duration::ZERO) == vec!["registry/model:v1".to_owned()]);
        assert!(
            pulled.stale(Duration::from_secs(3600)).is_empty(),
            "just used"
        );
        let again = Pulled::load(dir.path()).unwrap();
        assert_eq!(
            again.stale(Duration::ZERO),
            vec!["registry/model:v1".to_owned()]
        );
        again.forget("registry/model:v1");
        assert!(
            Pulled::load(dir.path())
                .unwrap()
                .stale(Duration::ZERO)
                .is_empty()
        );
    }

    #[test]
    fn a_corrupt_record_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD_FILE), b"not json").unwrap();
        let err = Pulled::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains(RECORD_FILE), "{err}");
    }

    #[test]
    fn disk_use_is_a_percentage() {
        let used = disk_use_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&used), "{used}");
        assert!(disk_use_percent(Path::new("/no/such/dir")).is_err());
    }
}
