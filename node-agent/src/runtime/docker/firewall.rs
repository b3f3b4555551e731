//! The host's firewall for session networks: an nftables table of this agent's own
//! (`inet hearth_<node>`), rewritten whole, in one transaction, whenever the set of session
//! bridges changes.
//!
//! - **input**: a session never opens a connection to the host itself: not its loopback
//!   services reached through the bridge's gateway address, not the agent's admin port, not
//!   a Docker API on TCP, not sshd. Replies to connections the host opened (the agent's
//!   turns and probes) pass.
//! - **forward**: a session never reaches link-local addresses, where clouds put their
//!   metadata service (169.254.169.254).
//!
//! Tenants are kept apart by Docker itself (each tenant has its own bridge, and Docker drops
//! traffic between bridges), sessions of one tenant by the bridge's `enable_icc`, and egress
//! by `internal` networks; see `network.rs`. These rules add what Docker has no option for.
//! They need the agent in the host's network namespace with CAP_NET_ADMIN, and the `nft`
//! command; the table is named after the node so that agents sharing a host keep to their
//! own. A base chain's `accept` does not bypass the other tables at the same hook, so
//! Docker's own rules (iptables or nftables) still apply.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::backend;
use crate::runtime::RuntimeError;

/// The nftables table of one agent.
#[derive(Clone, Debug)]
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// The firewall of node `node`. Checks at once that `nft` runs and may change the
    /// ruleset, so a host that cannot be firewalled fails at start-up, not at the first
    /// session.
    pub fn new(node: &str) -> Result<Self, RuntimeError> {
        let firewall = Self {
            table: table_name(node),
        };
        firewall.run(&format!("table inet {}\n", firewall.table))?;
        Ok(firewall)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes the rules cover exactly `bridges` (interface names); none removes the table.
    pub fn apply(&self, bridges: &[String]) -> Result<(), RuntimeError> {
        self.run(&ruleset(&self.table, bridges))
    }

    fn run(&self, script: &str) -> Result<(), RuntimeError> {
        let fail = |why: String| {
            backend(format!(
                "docker.firewall: nft could not update table inet {}: {why} (the agent needs \
                 the nft command, root or CAP_NET_ADMIN, and the host's network namespace; \
                 docker.firewall = false runs without these rules)",
                self.table
            ))
        };
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run nft: {e}")))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }
}

/// `hearth_<node>`, with the characters nft names do not take replaced by `_`.
fn table_name(node: &str) -> String {
    let node: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("hearth_{node}")
}

/// One nft transaction that replaces the table with rules for `bridges`: create it (so
/// the delete cannot fail), delete it, and write it again.
fn ruleset(table: &str, bridges: &[String]) -> String {
    let mut script = format!("table inet {table}\ndelete table inet {table}\n");
    if bridges.is_empty() {
        return script;
    }
    let elements = bridges
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    script.push_str(&format!(
        "table inet {table} {{
  set sessions {{ type ifname; elements = {{ {elements} }} }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname @sessions ct state established,related accept
    iifname @sessions drop
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname @sessions ip daddr 169.254.0.0/16 drop
    iifname @sessions ip6 daddr fe80::/10 drop
  }}
}}
"
    ));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_nodes_and_the_rules_name_each_bridge() {
        assert_eq!(table_name("gpu-7.dc1"), "hearth_gpu_7_dc1");
        let rules = ruleset("hearth_n", &["br-1".into(), "br-2".into()]);
        assert!(rules.starts_with("table inet hearth_n\ndelete table inet hearth_n\n"));
        assert!(
            rules.contains("elements = { \"br-1\", \"br-2\" }"),
            "{rules}"
        );
        assert!(rules.contains(
            "iifname @sessions ct state established,related accept\n    iifname @sessions drop"
        ));
        assert!(rules.contains("ip daddr 169.254.0.0/16 drop"));
        // No bridge left: the table goes.
        assert_eq!(
            ruleset("hearth_n", &[]),
            "table inet hearth_n\ndelete table inet hearth_n\n"
        );
    }
}
