//! Operator limits on what a session may ask for, from `[limits]` in the broker config:
//! GPUs per session, an image allowlist, and which tenants may loosen the hardened
//! container defaults by adding Linux capabilities.
//!
//! [`crate::convert`] checks that a spec is well formed; these checks come after it and
//! depend on the deployment. They run wherever a spec enters or is used: CreateSession
//! (a spec, or a template, which also covers warm-pool claims), CreateTemplate and
//! UpdateTemplate, and every warm-pool fill, so a template written before the limits were
//! tightened cannot start sessions past them.
//!
//! A spec over a size limit is INVALID_ARGUMENT; an image or capability the deployment
//! does not allow is PERMISSION_DENIED. Both name the field and the setting.

use std::collections::BTreeMap;

use hearth_sdk::proto::v1::SessionSpec;
use serde::Deserialize;

use crate::{
    config::ConfigError,
    convert,
    error::{Error, Result},
};

/// `[limits]` in the broker config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most GPUs one session may ask for (at most [`convert::MAX_GPUS_PER_SESSION`]).
    pub max_gpus_per_session: u32,
    /// Glob patterns (`*` is any run of characters, `/` included; `?` is one character)
    /// an image must match, such as `hearth-worker:*` or `registry.example.com/models/*`.
    /// An image written without a tag is also tried with `:latest`. Empty: any image.
    pub images: Vec<String>,
    /// Capabilities each tenant's sessions may add back (`spec.security.add_capabilities`),
    /// such as `team-ops = ["SYS_PTRACE"]`. A tenant not listed may add none.
    pub tenant_capabilities: BTreeMap<String, Vec<String>>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_gpus_per_session: 8,
            images: Vec::new(),
            tenant_capabilities: BTreeMap::new(),
        }
    }
}

fn setting(name: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: name.into(),
        reason: reason.into(),
    }
}

impl LimitsConfig {
    /// Checks the settings; errors name them under `limits.`.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.max_gpus_per_session > convert::MAX_GPUS_PER_SESSION {
            return Err(setting(
                "limits.max_gpus_per_session",
                format!(
                    "{} is more than {}, the most GPUs a session can have",
                    self.max_gpus_per_session,
                    convert::MAX_GPUS_PER_SESSION
                ),
            ));
        }
        for (i, pattern) in self.images.iter().enumerate() {
            if pattern.trim().is_empty() || pattern.len() > convert::MAX_IMAGE_LEN {
                return Err(setting(
                    format!("limits.images[{i}]"),
                    format!("must be 1-{} characters", convert::MAX_IMAGE_LEN),
                ));
            }
        }
        for (tenant, caps) in &self.tenant_capabilities {
            for (i, cap) in caps.iter().enumerate() {
                let field = format!("limits.tenant_capabilities.{tenant}[{i}]");
                match convert::capability(&field, cap) {
                    Ok(canonical) if canonical == *cap => {}
                    Ok(canonical) => {
                        return Err(setting(field, format!("write {canonical:?}, not {cap:?}")));
                    }
                    Err(e) => return Err(setting(field, e.to_string())),
                }
            }
        }
        Ok(())
    }

    /// Checks a spec (already through [`convert::session_spec`]) of `tenant` against the
    /// limits. `prefix` is where the spec sits in the request (`spec`, `template.spec`),
    /// so errors name the field as the caller wrote it.
    pub fn check_spec(&self, tenant: &str, prefix: &str, spec: &SessionSpec) -> Result<()> {
        let gpus = spec.gpus.as_ref().map_or(0, |g| g.count);
        if gpus > self.max_gpus_per_session {
            return Err(Error::invalid(
                format!("{prefix}.gpus.count"),
                format!(
                    "{gpus} is more than the limit {} (limits.max_gpus_per_session)",
                    self.max_gpus_per_session
                ),
            ));
        }
        if !self.image_allowed(&spec.image) {
            return Err(Error::NotAllowed {
                field: format!("{prefix}.image"),
                reason: format!(
                    "{:?} is not in the image allowlist (limits.images)",
                    spec.image
                ),
            });
        }
        let allowed = self.tenant_capabilities.get(tenant);
        let caps = spec
            .security
            .as_ref()
            .map(|s| s.add_capabilities.as_slice())
            .unwrap_or_default();
        for (i, cap) in caps.iter().enumerate() {
            if !allowed.is_some_and(|a| a.contains(cap)) {
                return Err(Error::NotAllowed {
                    field: format!("{prefix}.security.add_capabilities[{i}]"),
                    reason: format!(
                        "{cap:?} is not allowed for tenant {tenant:?} \
                         (limits.tenant_capabilities)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether `image` matches the allowlist (always, when it is empty).
    pub fn image_allowed(&self, image: &str) -> bool {
        if self.images.is_empty() {
            return true;
        }
        let last = image.rsplit('/').next().unwrap_or(image);
        let latest = (!last.contains([':', '@'])).then(|| format!("{image}:latest"));
        self.images
            .iter()
            .any(|p| glob_match(p, image) || latest.as_deref().is_some_and(|l| glob_match(p, l)))
    }
}

/// Matches `text` against a glob where `*` is any run of characters (`/` included) and `?`
/// is any one character. Linear in the input: no backtracking blow-up on many `*`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::{GpuRequest, SecuritySpec};

    use super::*;

    fn spec(image: &str, gpus: u32, caps: &[&str]) -> SessionSpec {
        SessionSpec {
            image: image.into(),
            gpus: Some(GpuRequest {
                count: gpus,
                ..GpuRequest::default()
            }),
            security: Some(SecuritySpec {
                add_capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            }),
            ..SessionSpec::default()
        }
    }

    fn limits() -> LimitsConfig {
        LimitsConfig {
            images: vec![
                "hearth-worker:*".into(),
                "registry.example.com/models/*".into(),
            ],
            tenant_capabilities: [("team-ops".to_owned(), vec!["SYS_PTRACE".to_owned()])].into(),
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("hearth-worker:*", "hearth-worker:latest", true),
            ("hearth-worker:*", "hearth-worker", false),
            ("hearth-worker:*", "evil/hearth-worker:1", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("?", "é", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            (
                "registry.example.com/models/*",
                "registry.example.com/models/a/b:1",
                true,
            ),
        ] {
            assert_eq!(glob_match(p, t), m, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn images_follow_the_allowlist() {
        let l = limits();
        assert!(l.image_allowed("hearth-worker:1.2"));
        assert!(l.image_allowed("hearth-worker"), "tried as :latest");
        assert!(l.image_allowed("registry.example.com/models/llama@sha256:ab"));
        assert!(!l.image_allowed("evil:latest"));
        assert!(LimitsConfig::default().image_allowed("anything"));
        match l.check_spec("default", "spec", &spec("evil:latest", 0, &[])) {
            Err(e @ Error::NotAllowed { .. }) => assert_eq!(
                e.to_string(),
                "spec.image: \"evil:latest\" is not in the image allowlist (limits.images)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gpus_per_session() {
        let l = limits();
        assert!(
            l.check_spec("t", "spec", &spec("hearth-worker:1", 8, &[]))
                .is_ok()
        );
        match l.check_spec("t", "template.spec", &spec("hearth-worker:1", 12, &[])) {
            Err(e @ Error::InvalidArgument { .. }) => assert_eq!(
                e.to_string(),
                "invalid template.spec.gpus.count: 12 is more than the limit 8 \
                 (limits.max_gpus_per_session)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capabilities_per_tenant() {
        let l = limits();
        let s = spec("hearth-worker:1", 0, &["SYS_PTRACE"]);
        assert!(l.check_spec("team-ops", "spec", &s).is_ok());
        match l.check_spec("default", "spec", &s) {
            Err(Error::NotAllowed { field, reason }) => {
                assert_eq!(field, "spec.security.add_capabilities[0]");
                assert!(reason.contains("limits.tenant_capabilities"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let s = spec("hearth-worker:1", 0, &["SYS_PTRACE", "NET_ADMIN"]);
        match l.check_spec("team-ops", "spec", &s) {
            Err(Error::NotAllowed { field, .. }) => {
                assert_eq!(field, "spec.security.add_capabilities[1]")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_are_validated() {
        limits().validate().unwrap();
        let mut l = limits();
        l.max_gpus_per_session = 1000;
        assert_eq!(
            l.validate().unwrap_err().setting,
            "limits.max_gpus_per_session"
        );
        let mut l = limits();
        l.images.push(String::new());
        assert_eq!(l.validate().unwrap_err().setting, "limits.images[2]");
        let mut l = limits();
        l.tenant_capabilities
            .insert("x".into(), vec!["cap_sys_admin".into()]);
        assert_eq!(
            l.validate().unwrap_err().setting,
            "limits.tenant_capabilities.x[0]"
        );
    }
}
