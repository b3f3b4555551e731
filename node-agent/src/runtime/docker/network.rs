//! Session networks: one Docker bridge network per tenant and policy on this node, made on
//! demand, labelled, found again after an agent restart, and removed once its last
//! session is gone.
//!
//! - Tenants never share a network, and Docker drops traffic between bridge networks, so
//!   one tenant's sessions cannot reach another's.
//! - `intra_tenant: false` turns the bridge's inter-container traffic off
//!   (`com.docker.network.bridge.enable_icc`), so even one tenant's sessions cannot reach
//!   each other.
//! - `egress: false` makes the network `internal`: no route leaves it.
//! - The host's firewall ([`Firewall`]) keeps every session off the host's own services and
//!   the metadata address.
//!
//! The name says the policy (`hearth_<node>_<policy>_<tenant>`; node ids have no `_`, so
//! names never collide) and labels say it again for listing: `hearth.node`,
//! `hearth.tenant`, `hearth.policy`. Starts and removals of networks take one lock, so a
//! network is never removed between a start choosing it and its container joining it.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};
use tokio::sync::{Mutex, MutexGuard};

use super::firewall::Firewall;
use super::{backend, status_of};
use crate::runtime::{LABEL_NODE, LABEL_TENANT, RuntimeError};

/// Label holding a network's policy (`egress`/`internal`, `icc`/`noicc`).
pub const LABEL_POLICY: &str = "hearth.policy";

/// How a session's network is set up (resolved by the broker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Connections may leave the network.
    pub egress: bool,
    /// The tenant's sessions may reach each other.
    pub intra_tenant: bool,
}

impl Policy {
    /// The policy's short form, as in names and labels: `egress-icc`, `internal-noicc`, ...
    pub fn tag(self) -> &'static str {
        match (self.egress, self.intra_tenant) {
            (true, true) => "egress-icc",
            (true, false) => "egress-noicc",
            (false, true) => "internal-icc",
            (false, false) => "internal-noicc",
        }
    }
}

/// The session networks of one node.
pub struct Networks {
    docker: Docker,
    node: String,
    firewall: Option<Firewall>,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("node", &self.node)
            .field("firewall", &self.firewall)
            .finish_non_exhaustive()
    }
}

/// The network name for a tenant and policy on a node.
pub fn name(node: &str, tenant: &str, policy: Policy) -> String {
    format!("hearth_{node}_{}_{tenant}", policy.tag())
}

/// The bridge interface Docker gives a network: `br-` and the first 12 characters of its
/// id, unless the network names its own.
fn bridge(id: &str, options: Option<&HashMap<String, String>>) -> String {
    options
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned()
        .unwrap_or_else(|| format!("br-{}", &id[..id.len().min(12)]))
}

impl Networks {
    /// The session networks of `node`, firewalled by `firewall` when given.
    pub fn new(docker: Docker, node: String, firewall: Option<Firewall>) -> Self {
        Self {
            docker,
            node,
            firewall,
            lock: Mutex::new(()),
        }
    }

    /// Holds off removals (and other starts) while a start picks its network and creates
    /// its container there.
    pub async fn hold(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// The network for `tenant` under `policy`, created when missing. Call under
    /// [`Networks::hold`].
    pub async fn ensure(&self, tenant: &str, policy: Policy) -> Result<String, RuntimeError> {
        let name = name(&self.node, tenant, policy);
        match self
            .docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(name),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(backend(format!("inspecting network {name}: {e}"))),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(!policy.egress),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                policy.intra_tenant.to_string(),
            )])),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_owned(), self.node.clone()),
                (LABEL_TENANT.to_owned(), tenant.to_owned()),
                (LABEL_POLICY.to_owned(), policy.tag().to_owned()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {}
            // Engines from API 1.44 refuse a second network of one name: made meanwhile by
            // another agent process with this node id (older engines make a duplicate,
            // which is why one node id must never run twice on one engine).
            Err(e) if status_of(&e) == Some(409) => return Ok(name),
            Err(e) => return Err(backend(format!("creating network {name}: {e}"))),
        }
        tracing::info!(
            network = name,
            tenant,
            policy = policy.tag(),
            "session network created"
        );
        self.refresh_firewall().await?;
        Ok(name)
    }

    /// This node's session networks: name, id and bridge interface.
    async fn list(&self) -> Result<Vec<(String, String, String)>, RuntimeError> {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_NODE}={}", self.node)],
            )])),
        };
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| backend(format!("listing session networks: {e}")))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let id = n.id?;
                let bridge = bridge(&id, n.options.as_ref());
                Some((n.name?, id, bridge))
            })
            .collect())
    }

    /// Makes the firewall cover exactly this node's session networks.
    pub async fn refresh_firewall(&self) -> Result<(), RuntimeError> {
        let Some(firewall) = &self.firewall else {
            return Ok(());
        };
        let bridges: Vec<String> = self.list().await?.into_iter().map(|n| n.2).collect();
        firewall.apply(&bridges)
    }

    /// Removes this node's session networks that no container uses any more, then
    /// refreshes the firewall. At start-up this adopts the networks a previous agent made
    /// (their rules are rewritten) and sweeps the ones it left empty.
    pub async fn sweep(&self) -> Result<(), RuntimeError> {
        let _held = self.lock.lock().await;
        for (name, _, _) in self.list().await? {
            let used = match self
                .docker
                .inspect_network(&name, None::<InspectNetworkOptions>)
                .await
            {
                Ok(network) => network.containers.is_some_and(|c| !c.is_empty()),
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(backend(format!("inspecting network {name}: {e}"))),
            };
            if used {
                continue;
            }
            match self.docker.remove_network(&name).await {
                Ok(()) => {
                    tracing::info!(network = name, "session network removed (no session left)")
                }
                // Gone already, or a container joined meanwhile (one made outside Hearth).
                Err(e) if matches!(status_of(&e), Some(403 | 404 | 409)) => {
                    tracing::debug!(network = name, error = %e, "session network kept");
                }
                Err(e) => return Err(backend(format!("removing network {name}: {e}"))),
            }
        }
        self.refresh_firewall().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bridges() {
        let policy = Policy {
            egress: false,
            intra_tenant: true,
        };
        assert_eq!(
            name("gpu-1", "team_a", policy),
            "hearth_gpu-1_internal-icc_team_a"
        );
        assert_ne!(
            name("gpu-1", "a", Policy::default()),
            name("gpu-1", "a", policy),
            "policies never share a network"
        );
        assert_eq!(bridge("0123456789abcdef", None), "br-0123456789ab");
        let named = HashMap::from([(
            "com.docker.network.bridge.name".to_owned(),
            "hth0".to_owned(),
        )]);
        assert_eq!(bridge("0123456789abcdef", Some(&named)), "hth0");
    }
}
