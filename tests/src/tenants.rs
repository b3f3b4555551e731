//! Brokers whose config holds tenant tokens: tokens made by `hearth token create`, and a
//! broker started on such a config with one agent beside it.

use std::path::Path;

use crate::process::{Agent, Broker, binary};

/// Runs `hearth token create` for `tenant` with `role`, appending the token's hash to
/// `config`, and returns the token.
pub fn create_token(config: &Path, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(binary("hearth")?)
        .args(["token", "create", "--tenant", tenant, "--role", role])
        .arg("--append")
        .arg(config)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hearth token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A broker on its embedded store, started with a config file, and one agent (process
/// runtime, simulated GPUs) dialling it.
pub struct TokenCluster {
    /// The agent (first, so that it ends before the broker).
    pub agent: Agent,
    /// The broker.
    pub broker: Broker,
}

impl TokenCluster {
    /// Starts the broker with `config` and the agent `node_id` with `gpus` simulated GPUs.
    pub fn spawn(dir: &Path, config: &Path, node_id: &str, gpus: &str) -> anyhow::Result<Self> {
        let store = dir.join("store").display().to_string();
        let broker = Broker::spawn(
            dir,
            "broker",
            &[
                "--config",
                &config.display().to_string(),
                "--store-path",
                &store,
            ],
        )?;
        let agent = Agent::spawn(dir, node_id, &[&broker.url], &["--simulate-gpus", gpus])?;
        Ok(Self { broker, agent })
    }

    /// `e` followed by the ends of the broker's and the agent's logs.
    pub fn logs(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "{e:#}\n{}\n{}",
            self.broker.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }
}
