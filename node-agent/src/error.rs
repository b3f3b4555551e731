//! The crate's one error type.

use std::{path::PathBuf, time::Duration};

/// Everything that can go wrong in the node agent.
///
/// Start-up errors (configuration, GPU source, admin port) end the process with a message an
/// operator can act on. Link errors never do: the link logs them and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration failed validation; each problem names its setting.
    #[error("invalid configuration: {}", .problems.join("; "))]
    InvalidConfig {
        /// One line per problem, each starting with the setting's name.
        problems: Vec<String>,
    },

    /// The `--config` file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The `--config` file is not valid TOML for [`crate::Config`].
    #[error("cannot parse config file {}: {source}", .path.display())]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// Why, with the offending key and line.
        source: Box<toml::de::Error>,
    },

    /// NVML could not be loaded or initialised, so this host cannot report real GPUs.
    #[error(
        "NVML not available (no NVIDIA driver?): {0}; use --simulate-gpus N for a simulated \
         node, or --no-gpus for a CPU-only node"
    )]
    NvmlUnavailable(String),

    /// An NVML call failed while reading the GPUs.
    #[error("NVML: {what}: {source}")]
    Nvml {
        /// What the agent was reading.
        what: String,
        /// The NVML error.
        source: nvml_wrapper::error::NvmlError,
    },

    /// `runtime = "docker"`, but the Docker engine does not answer.
    #[error(
        "cannot reach the Docker engine at {host}; use --runtime process on hosts without \
         Docker ({source})"
    )]
    DockerUnavailable {
        /// Where the engine was looked for (`DOCKER_HOST` or the default socket).
        host: String,
        /// Why it did not answer.
        source: crate::runtime::RuntimeError,
    },

    /// The session runtime failed: its state could not be set up at start, or its
    /// workloads could not be listed for `Hello`.
    #[error("session runtime: {0}")]
    Runtime(#[source] crate::runtime::RuntimeError),

    /// The admin HTTP server failed.
    #[error("admin HTTP server: {0}")]
    Admin(#[source] std::io::Error),

    /// A broker URL could not be turned into a gRPC endpoint.
    #[error("broker URL {url:?}: {source}")]
    BrokerUrl {
        /// The URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },

    /// A TLS file could not be read when dialling the broker.
    #[error("cannot read {setting} {}: {source}", .path.display())]
    TlsFile {
        /// The setting, such as `tls.cert`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The TCP/HTTP2 connection to a broker could not be made.
    #[error("cannot connect to broker: {0}")]
    Connect(#[source] tonic::transport::Error),

    /// The broker refused or ended the stream with a gRPC status (with the transport's
    /// causes when the connection broke, such as a TLS alert).
    #[error("broker answered {}: {}", .0.code(), hearth_sdk::error::describe(.0))]
    Status(tonic::Status),

    /// A standby broker refused the stream and named the leader.
    #[error("broker is a standby; the leader is {leader}")]
    NotLeader {
        /// The leader's URL, from the `hearth-leader` metadata.
        leader: String,
    },

    /// No `Welcome` arrived in time after `Hello`.
    #[error("no Welcome from the broker within hello_timeout ({})", humantime::format_duration(*.0))]
    HelloTimeout(Duration),

    /// The broker's first message was not `Welcome`.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The broker closed the stream.
    #[error("broker closed the stream")]
    StreamClosed,

    /// The file holding the highest leader epoch seen could not be read.
    #[error("leader epoch file {}: {reason}", .path.display())]
    EpochFile {
        /// The file (`state_dir/leader-epoch`).
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

pub use hearth_sdk::error::report;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::ConfigRead {
            path: "/etc/hearth/agent.toml".into(),
            source: io,
        };
        assert_eq!(
            report(&err),
            "cannot read config file /etc/hearth/agent.toml: no such file"
        );
        let admin = Error::Admin(std::io::Error::other("address in use"));
        assert_eq!(report(&admin), "admin HTTP server: address in use");
    }
}
