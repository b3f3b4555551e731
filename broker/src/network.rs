//! Per-tenant network policy, from `[network]` in the broker config: whether a tenant's
//! sessions may open connections to the outside (egress), and whether they may reach each
//! other. The broker resolves a session's policy (tenant settings, then what the spec asks)
//! and sends it with the start command; the agent builds the tenant's network from it.
//!
//! A spec may ask for less than its tenant allows (`spec.network.egress: DENY` where the
//! tenant allows egress), never more: that is PERMISSION_DENIED naming the field and the
//! setting, checked wherever a spec enters or is used, as the other limits are.
//!
//! Whatever the policy, a Docker session never reaches another tenant's sessions, the
//! host's services (the agent and its admin port, the Docker API) or the cloud metadata
//! address: that is the agent's to enforce, and not a setting.

use std::collections::BTreeMap;

use hearth_sdk::proto::v1::{Egress, SessionNetwork, SessionSpec};
use serde::Deserialize;

use crate::{
    config::ConfigError,
    error::{Error, Result},
};

/// Egress to the outside, as the settings write it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressPolicy {
    /// Outside addresses are reachable (the default).
    #[default]
    Allow,
    /// Nothing leaves the session's network.
    Deny,
}

/// `[network]` in the broker config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Egress for every tenant not listed under `tenants` (default `allow`).
    pub egress: EgressPolicy,
    /// Whether a tenant's sessions may reach each other (default `true`).
    pub intra_tenant: bool,
    /// Overrides for one tenant, field by field: `[network.tenants.team-a]`.
    pub tenants: BTreeMap<String, TenantNetwork>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            egress: EgressPolicy::Allow,
            intra_tenant: true,
            tenants: BTreeMap::new(),
        }
    }
}

/// `[network.tenants.<name>]`: what one tenant gets instead of the defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantNetwork {
    /// Egress for this tenant's sessions.
    pub egress: Option<EgressPolicy>,
    /// Whether this tenant's sessions may reach each other.
    pub intra_tenant: Option<bool>,
}

impl NetworkConfig {
    /// Checks the settings; errors name them under `network.`.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        for tenant in self.tenants.keys() {
            crate::auth::check_tenant(tenant).map_err(|reason| ConfigError {
                setting: format!("network.tenants.{tenant}"),
                reason,
            })?;
        }
        Ok(())
    }

    /// The tenant's egress and intra-tenant settings, with the setting that decided the
    /// egress (for messages).
    fn tenant(&self, tenant: &str) -> (EgressPolicy, bool, String) {
        let own = self.tenants.get(tenant);
        let (egress, setting) = match own.and_then(|t| t.egress) {
            Some(egress) => (egress, format!("network.tenants.{tenant}.egress")),
            None => (self.egress, "network.egress".to_owned()),
        };
        let intra = own
            .and_then(|t| t.intra_tenant)
            .unwrap_or(self.intra_tenant);
        (egress, intra, setting)
    }

    /// Refuses a spec (already through [`crate::convert::session_spec`]) that asks for
    /// egress its tenant is not allowed. `prefix` is where the spec sits in the request.
    pub fn check_spec(&self, tenant: &str, prefix: &str, spec: &SessionSpec) -> Result<()> {
        let asked = spec.network.as_ref().map(|n| n.egress());
        let (egress, _, setting) = self.tenant(tenant);
        if asked == Some(Egress::Allow) && egress == EgressPolicy::Deny {
            return Err(Error::NotAllowed {
                field: format!("{prefix}.network.egress"),
                reason: format!(
                    "ALLOW is not allowed for tenant {tenant:?}, whose sessions have no \
                     egress ({setting} = \"deny\")"
                ),
            });
        }
        Ok(())
    }

    /// The network a session of `tenant` gets: the tenant's policy, narrowed by the spec.
    pub fn resolve(&self, tenant: &str, spec: &SessionSpec) -> SessionNetwork {
        let (egress, intra_tenant, _) = self.tenant(tenant);
        let asked = spec
            .network
            .as_ref()
            .map_or(Egress::Unspecified, |n| n.egress());
        SessionNetwork {
            egress: egress == EgressPolicy::Allow && asked != Egress::Deny,
            intra_tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::NetworkSpec;

    use super::*;

    fn spec(egress: Egress) -> SessionSpec {
        SessionSpec {
            network: Some(NetworkSpec {
                egress: egress as i32,
            }),
            ..SessionSpec::default()
        }
    }

    fn config() -> NetworkConfig {
        toml::from_str(
            r#"
            egress = "allow"
            [tenants.locked]
            egress = "deny"
            intra_tenant = false
            "#,
        )
        .expect("valid [network]")
    }

    #[test]
    fn the_tenant_sets_the_policy_and_a_spec_may_only_narrow_it() {
        let config = config();
        let open = SessionNetwork {
            egress: true,
            intra_tenant: true,
        };
        assert_eq!(config.resolve("team-a", &SessionSpec::default()), open);
        assert_eq!(config.resolve("team-a", &spec(Egress::Allow)), open);
        assert_eq!(
            config.resolve("team-a", &spec(Egress::Deny)),
            SessionNetwork {
                egress: false,
                intra_tenant: true
            }
        );
        let locked = SessionNetwork {
            egress: false,
            intra_tenant: false,
        };
        assert_eq!(config.resolve("locked", &SessionSpec::default()), locked);
        assert_eq!(config.resolve("locked", &spec(Egress::Deny)), locked);

        config
            .check_spec("team-a", "spec", &spec(Egress::Allow))
            .expect("team-a may ask for egress");
        config
            .check_spec("locked", "spec", &spec(Egress::Deny))
            .expect("anyone may ask for less");
        let refused = config
            .check_spec("locked", "template.spec", &spec(Egress::Allow))
            .expect_err("locked may not ask for egress")
            .to_string();
        assert!(
            refused.contains("template.spec.network.egress")
                && refused.contains("network.tenants.locked.egress = \"deny\""),
            "{refused}"
        );
    }

    #[test]
    fn settings_are_checked_by_name() {
        assert_eq!(NetworkConfig::default(), toml::from_str("").unwrap());
        let bad: NetworkConfig = toml::from_str("[tenants.\"a/b\"]\negress = \"deny\"").unwrap();
        let error = bad.validate().expect_err("a/b is no tenant");
        assert_eq!(error.setting, "network.tenants.a/b");
        assert!(toml::from_str::<NetworkConfig>("egress = \"sometimes\"").is_err());
        assert!(toml::from_str::<NetworkConfig>("egres = \"deny\"").is_err());
    }
}
