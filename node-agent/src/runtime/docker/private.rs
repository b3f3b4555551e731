//! Images pulled with a tenant's registry credentials stay that tenant's.
//!
//! An engine keeps one copy of an image for every container, so without care a session
//! of tenant B would run an image that only tenant A's credentials could pull, just
//! because A's session pulled it first (with `if-not-present`, nothing would ask the
//! registry again). The agent therefore records, by the engine's image id, which tenants
//! pulled an image with their own credentials:
//!
//! - a held image in the record is used without a pull only by those tenants; another
//!   tenant's start pulls it again with its own credentials (or none), and the registry
//!   decides;
//! - a pull without credentials that succeeds shows the image is public: it leaves the
//!   record;
//! - images never pulled with credentials (built or loaded on the host, public pulls)
//!   are not in it.
//!
//! An entry outlives the image's removal (an id names content, so if the same image is
//! pulled again the same tenants may use it), which costs a few bytes, never access.
//!
//! The record is kept in `private-images.json` in the state directory, so a restarted
//! agent still knows; without a state directory it lives in memory.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::gc::{read_record, write_record};
use crate::runtime::RuntimeError;

/// The record's file name in the agent's state directory.
pub const RECORD_FILE: &str = "private-images.json";

/// Image id → tenants that pulled it with their credentials.
type Record = BTreeMap<String, BTreeSet<String>>;

/// Which held images need which tenant's credentials.
#[derive(Default)]
pub struct Private {
    path: Option<PathBuf>,
    by_image: Mutex<Record>,
}

impl Private {
    /// Loads the record under `state_dir` (empty when there is none yet).
    pub fn load(state_dir: &Path) -> Result<Self, RuntimeError> {
        let path = state_dir.join(RECORD_FILE);
        let by_image = read_record(&path, "a record of private images")?;
        Ok(Self {
            path: Some(path),
            by_image: Mutex::new(by_image),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.by_image.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tenant` may start from the held image `image_id` without pulling it.
    pub fn allows(&self, image_id: &str, tenant: &str) -> bool {
        self.lock()
            .get(image_id)
            .is_none_or(|tenants| tenants.contains(tenant))
    }

    /// A pull for `tenant` produced `image_id`: with its credentials, the tenant has shown
    /// it may use the image; without any, the image is public.
    pub fn pulled(&self, image_id: &str, tenant: &str, with_credentials: bool) {
        let mut record = self.lock();
        let changed = if with_credentials {
            record
                .entry(image_id.to_owned())
                .or_default()
                .insert(tenant.to_owned())
        } else {
            record.remove(image_id).is_some()
        };
        if changed {
            self.save(&record);
        }
    }

    fn save(&self, record: &Record) {
        if let Some(path) = &self.path {
            write_record(path, record, "the record of private images");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_pulled_with_credentials_is_only_its_tenants_until_pulled_openly() {
        let dir = tempfile::tempdir().unwrap();
        let private = Private::load(dir.path()).unwrap();
        // Built or loaded on the host: anyone.
        assert!(private.allows("sha256:a", "team-a"));
        private.pulled("sha256:a", "team-a", true);
        assert!(private.allows("sha256:a", "team-a"));
        assert!(!private.allows("sha256:a", "team-b"));
        // team-b pulls it with its own credentials: both now.
        private.pulled("sha256:a", "team-b", true);
        assert!(private.allows("sha256:a", "team-b"));
        // The record outlives the agent.
        let reloaded = Private::load(dir.path()).unwrap();
        assert!(!reloaded.allows("sha256:a", "team-c"));
        // team-c's anonymous pull succeeded: the image is public.
        reloaded.pulled("sha256:a", "team-c", false);
        assert!(reloaded.allows("sha256:a", "team-d"));
        assert!(
            Private::load(dir.path())
                .unwrap()
                .allows("sha256:a", "team-z")
        );
    }
}
