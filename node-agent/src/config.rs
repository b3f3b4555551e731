//! The agent's configuration, layered: built-in defaults, then a TOML file (`--config`), then
//! `HEARTH_*` environment variables, then command-line flags. A layer that sets a setting
//! replaces it whole (a `--label` list replaces the file's labels rather than merging).
//! [`Config::validate`] runs once at start-up and names the setting in every error.

pub mod size;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, builder::BoolishValueParser};
use serde::{Deserialize, Serialize};

use crate::Error;

pub use hearth_sdk::size::parse as parse_size;

/// Most simulated GPUs one agent may claim: the broker accepts at most 64 GPUs per node.
pub const MAX_SIMULATED_GPUS: u32 = 64;

/// The node agent's settings. Every field has a default, so a TOML file names only what it
/// changes. Unknown keys are an error, so a typo never passes silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Broker gRPC URLs, tried round-robin. A standby answers with the leader's URL, which is
    /// dialled next.
    pub broker: Vec<String>,
    /// This node's id in the cluster. Defaults to the host name, lower-cased.
    pub node_id: String,
    /// Node labels, matched by sessions' `node_selector`.
    pub labels: BTreeMap<String, String>,
    /// Node taints; only sessions that tolerate every key are placed here.
    pub taints: Vec<String>,
    /// Address of the admin HTTP server (`/live`, `/ready`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// How often to send telemetry, unless the broker's `Welcome` says otherwise.
    #[serde(with = "humantime_serde")]
    pub telemetry_interval: Duration,
    /// Upper bound of the first reconnect delay (full jitter).
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_min: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// How long to wait for the broker's `Welcome` after sending `Hello`.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// A broker that acknowledges nothing the agent sent for this long counts as gone
    /// (`TCP_USER_TIMEOUT` on the link), and the agent dials the next one. Telemetry
    /// flows every second, so a broker whose host died is noticed within about this long.
    #[serde(with = "humantime_serde")]
    pub dead_link_after: Duration,
    /// Report this many simulated GPUs instead of reading NVML. Explicit opt-in only: the
    /// node is then marked simulated everywhere.
    pub simulate_gpus: Option<u32>,
    /// Model name of the simulated GPUs.
    pub simulate_gpu_model: String,
    /// Memory of each simulated GPU, in bytes (the TOML file also takes "80GiB").
    #[serde(deserialize_with = "size::deserialize")]
    pub simulate_gpu_memory: u64,
    /// Run as a CPU-only node: no NVML, no GPUs.
    pub no_gpus: bool,
    /// Log as JSON lines instead of human-readable text.
    pub log_json: bool,
    /// Export traces over OTLP/gRPC to this endpoint, such as `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// What runs session workloads: Docker containers, or plain processes.
    pub runtime: RuntimeKind,
    /// Where the process runtime keeps its state (pid files, logs), so a restarted agent
    /// re-adopts its sessions.
    pub state_dir: PathBuf,
    /// TLS to the broker (`[tls]`: ca, cert, key), used for `https://` broker URLs.
    pub tls: crate::tls::TlsConfig,
    /// Limits a container gets when its spec leaves them at 0 (`[session_limits]`).
    pub session_limits: SessionLimits,
    /// Docker runtime settings (`[docker]`).
    pub docker: DockerConfig,
    /// Take sessions of several tenants where nothing keeps them apart on the network:
    /// the process runtime, and Docker with one shared `docker.network`. Off by default:
    /// such a node then refuses a session of a second tenant.
    pub mixed_tenants: bool,
}

/// `[docker]`: how the Docker runtime wires session containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// One network, by name, that every session container joins; it must exist. Unset
    /// (the default): each tenant gets session networks of its own on this node, which no
    /// other tenant's session can reach. An agent that runs in a container (sessions as
    /// sibling containers through the mounted socket) and is not in the host's network
    /// namespace names a network it is attached to itself; tenants sharing it could reach
    /// each other, so it then takes sessions of one tenant only (see `mixed_tenants`).
    pub network: Option<String>,
    /// Keep sessions off this host's own services and the cloud metadata address with an
    /// nftables table of the agent's (default true; needs `nft`, root or CAP_NET_ADMIN,
    /// and the host's network namespace). Not used with `network`.
    pub firewall: bool,
    /// `[docker.image_gc]`: removing images this agent pulled once they go unused.
    pub image_gc: ImageGcConfig,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            network: None,
            firewall: true,
            image_gc: ImageGcConfig::default(),
        }
    }
}

/// `[docker.image_gc]`: images this agent pulled are removed once no session's container
/// uses them and none has started from them for `unused_for`, but only while the disk
/// that holds the engine's images is fuller than `high_water_percent`. Images the agent
/// did not pull (built or loaded on the host) are never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageGcConfig {
    /// Disk use, in percent of the filesystem that holds the engine's data (its
    /// `DockerRootDir`), above which unused pulled images are removed; 100 turns
    /// collection off.
    pub high_water_percent: u8,
    /// How long a pulled image must have gone without a start before it may go.
    #[serde(with = "humantime_serde")]
    pub unused_for: Duration,
    /// How often disk use is checked.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ImageGcConfig {
    fn default() -> Self {
        Self {
            high_water_percent: 85,
            unused_for: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(300),
        }
    }
}

/// Resource limits for sessions whose spec does not set them. Every container gets a pids,
/// memory and CPU limit, so one session cannot take the host down with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionLimits {
    /// Most processes (default 1024).
    pub pids_limit: u32,
    /// Memory in bytes (the TOML file also takes "16GiB"). 0: three quarters of the
    /// host's memory, leaving room for the agent, the engine and the page cache.
    #[serde(deserialize_with = "size::deserialize")]
    pub memory: u64,
    /// CPU in thousandths of a core. 0: every CPU of the host.
    pub cpu_millis: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            pids_limit: 1024,
            memory: 0,
            cpu_millis: 0,
        }
    }
}

impl SessionLimits {
    /// The limits with the host-derived defaults filled in, for `capacity` (see
    /// `host::capacity`). A host whose size is unknown gets 1 GiB and one CPU.
    pub fn resolve(&self, capacity: &hearth_sdk::proto::v1::NodeCapacity) -> Self {
        let memory = match (self.memory, capacity.memory_bytes) {
            (0, 0) => 1 << 30,
            (0, host) => host / 4 * 3,
            (m, _) => m,
        };
        let cpu_millis = match (self.cpu_millis, capacity.cpu_cores) {
            (0, 0) => 1000,
            (0, cores) => cores.saturating_mul(1000),
            (c, _) => c,
        };
        Self {
            pids_limit: self.pids_limit,
            memory,
            cpu_millis,
        }
    }
}

/// Which [`crate::runtime::Runtime`] runs session workloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Containers through the local Docker engine (production).
    #[default]
    Docker,
    /// Child processes in their own process groups (hosts without Docker, development).
    Process,
}

impl RuntimeKind {
    /// The name used in settings and in `Hello.runtime`: "docker" or "process".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Process => "process",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker: vec!["http://127.0.0.1:7700".to_owned()],
            node_id: default_node_id(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 7702)),
            telemetry_interval: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(200),
            reconnect_backoff_max: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            dead_link_after: Duration::from_secs(2),
            simulate_gpus: None,
            simulate_gpu_model: "Simulated H100 80GB".to_owned(),
            simulate_gpu_memory: 80 << 30,
            no_gpus: false,
            log_json: false,
            otlp_endpoint: None,
            runtime: RuntimeKind::Docker,
            state_dir: PathBuf::from("/var/lib/hearth-agent"),
            tls: crate::tls::TlsConfig::default(),
            session_limits: SessionLimits::default(),
            docker: DockerConfig::default(),
            mixed_tenants: false,
        }
    }
}

/// The host name, lower-cased; empty if it cannot be read (validation then asks for
/// `--node-id`).
fn default_node_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Command-line flags. Each one can also come from the `HEARTH_*` variable shown in `--help`;
/// a flag beats its variable, and both beat the config file.
#[derive(Debug, Default, Parser)]
#[command(
    name = "hearth-agent",
    version = hearth_sdk::VERSION,
    about = "Hearth node agent: dials the broker, reports this host's GPUs and streams their \
             telemetry.",
    long_about = "Hearth node agent: dials the broker, reports this host's GPUs and streams \
                  their telemetry.\n\n\
                  Settings are layered: built-in defaults, then the TOML file given by \
                  --config, then HEARTH_* environment variables, then flags. A layer that \
                  sets a list or map replaces it whole.\n\n\
                  GPUs are read through NVML. On a host without an NVIDIA driver the agent \
                  refuses to start unless told --simulate-gpus N (development and tests; \
                  every GPU is marked simulated) or --no-gpus (a CPU-only node).",
    after_help = "Durations take humantime values such as 200ms, 1s, 5m. Sizes take 80GiB, \
                  512MiB, 80GB or a plain number of bytes."
)]
pub struct Cli {
    /// TOML config file; flags and HEARTH_* variables override what it sets.
    #[arg(long, env = "HEARTH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Broker gRPC URL; repeat or separate with commas to list standbys
    /// [default: http://127.0.0.1:7700].
    #[arg(long, env = "HEARTH_BROKER", value_name = "URL", value_delimiter = ',')]
    pub broker: Option<Vec<String>>,

    /// This node's id: 1-63 characters of [a-z0-9.-] [default: the host name, lower-cased].
    #[arg(long, env = "HEARTH_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// Node label KEY=VALUE, matched by sessions' node selectors; repeat for more.
    #[arg(
        long = "label",
        env = "HEARTH_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Option<Vec<(String, String)>>,

    /// Node taint; only sessions that tolerate it are placed here. Repeat for more.
    #[arg(
        long = "taint",
        env = "HEARTH_TAINTS",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub taints: Option<Vec<String>>,

    /// Admin HTTP address serving /live, /ready and /metrics [default: 127.0.0.1:7702].
    #[arg(long, env = "HEARTH_ADMIN_ADDR", value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Telemetry period when the broker does not set one [default: 1s].
    #[arg(long, env = "HEARTH_TELEMETRY_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub telemetry_interval: Option<Duration>,

    /// Upper bound of the first reconnect delay; delays are random below a cap that doubles
    /// per failed attempt [default: 200ms].
    #[arg(long, env = "HEARTH_RECONNECT_BACKOFF_MIN", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reconnect_backoff_min: Option<Duration>,

    /// Largest reconnect delay [default: 10s].
    #[arg(long, env = "HEARTH_RECONNECT_BACKOFF_MAX", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reconnect_backoff_max: Option<Duration>,

    /// How long to wait for the broker's Welcome before reconnecting [default: 10s].
    #[arg(long, env = "HEARTH_HELLO_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hello_timeout: Option<Duration>,

    /// A broker that acknowledges nothing sent for this long counts as gone (TCP user
    /// timeout), so a dead broker host is noticed in seconds [default: 2s].
    #[arg(long, env = "HEARTH_DEAD_LINK_AFTER", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dead_link_after: Option<Duration>,

    /// Report N simulated GPUs instead of reading NVML (development and tests only; the node
    /// and every GPU are marked simulated).
    #[arg(long, env = "HEARTH_SIMULATE_GPUS", value_name = "N")]
    pub simulate_gpus: Option<u32>,

    /// Model name of simulated GPUs [default: "Simulated H100 80GB"].
    #[arg(long, env = "HEARTH_SIMULATE_GPU_MODEL", value_name = "NAME")]
    pub simulate_gpu_model: Option<String>,

    /// Memory of each simulated GPU, such as 80GiB [default: 80GiB].
    #[arg(long, env = "HEARTH_SIMULATE_GPU_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub simulate_gpu_memory: Option<u64>,

    /// Run as a CPU-only node: no NVML, no GPUs.
    #[arg(long, env = "HEARTH_NO_GPUS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub no_gpus: Option<bool>,

    /// Log JSON lines instead of human-readable text (RUST_LOG sets the filter).
    #[arg(long, env = "HEARTH_LOG_JSON", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub log_json: Option<bool>,

    /// Export traces over OTLP/gRPC to this endpoint, such as http://127.0.0.1:4317.
    #[arg(long, env = "HEARTH_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// What runs session workloads: docker containers, or plain processes on hosts without
    /// Docker [default: docker].
    #[arg(long, env = "HEARTH_RUNTIME", value_name = "KIND", value_enum)]
    pub runtime: Option<RuntimeKind>,

    /// Directory where the process runtime keeps session state and logs
    /// [default: /var/lib/hearth-agent].
    #[arg(long, env = "HEARTH_STATE_DIR", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,

    /// PEM CA certificates the broker's certificate must chain to (https:// brokers)
    /// [default: the system roots].
    #[arg(long, env = "HEARTH_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate naming this node (`hearth certs node`); with --tls-key. The
    /// node id defaults to the name it holds.
    #[arg(long, env = "HEARTH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "HEARTH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Name every broker's certificate must hold, whatever host its URL names (brokers
    /// that advertise pod IPs behind a Service) [default: the URL's host].
    #[arg(long, env = "HEARTH_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// One Docker network that every session container joins, for an agent in a container
    /// (it must be on it too); tenants then share it [default: a network per tenant].
    #[arg(long, env = "HEARTH_DOCKER_NETWORK", value_name = "NAME")]
    pub docker_network: Option<String>,

    /// Firewall sessions off this host's services and the metadata address (nftables)
    /// [default: true].
    #[arg(long, env = "HEARTH_DOCKER_FIREWALL", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub docker_firewall: Option<bool>,

    /// Take sessions of several tenants where the network keeps nothing apart: the
    /// process runtime, or one shared --docker-network [default: false].
    #[arg(long, env = "HEARTH_MIXED_TENANTS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub mixed_tenants: Option<bool>,

    /// Remove images this agent pulled, unused, while the engine's disk is fuller than
    /// this percent; 100 turns it off [default: 85].
    #[arg(long, env = "HEARTH_IMAGE_GC_HIGH_WATER", value_name = "PERCENT")]
    pub image_gc_high_water: Option<u8>,

    /// How long a pulled image must go without a start before it may be removed
    /// [default: 24h].
    #[arg(long, env = "HEARTH_IMAGE_GC_UNUSED_FOR", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub image_gc_unused_for: Option<Duration>,

    /// How often the image collector checks disk use [default: 5m].
    #[arg(long, env = "HEARTH_IMAGE_GC_INTERVAL", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub image_gc_interval: Option<Duration>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) => Ok((k.trim().to_owned(), v.trim().to_owned())),
        None => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl Config {
    /// Builds the effective configuration from parsed flags (which already carry the
    /// `HEARTH_*` variables): defaults, then the file named by `--config`, then the flags.
    /// The result is validated.
    pub fn load(cli: Cli) -> Result<Self, Error> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        let node_id_given = cli.node_id.is_some();
        config.apply(cli);
        // A node certificate names the node: unless set explicitly (a flag, or a file
        // value other than the host-name default), the node id is that name.
        if !node_id_given
            && config.node_id == default_node_id()
            && let Some(id) = config.tls.node_id()
        {
            config.node_id = id;
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file over the defaults (not validated).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text over the defaults (not validated).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML, for `--print-config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Overrides every setting that `cli` carries (from a flag or its variable).
    fn apply(&mut self, cli: Cli) {
        let Cli {
            config: _,
            print_config: _,
            broker,
            node_id,
            labels,
            taints,
            admin_addr,
            telemetry_interval,
            reconnect_backoff_min,
            reconnect_backoff_max,
            hello_timeout,
            dead_link_after,
            simulate_gpus,
            simulate_gpu_model,
            simulate_gpu_memory,
            no_gpus,
            log_json,
            otlp_endpoint,
            runtime,
            state_dir,
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name,
            docker_network,
            docker_firewall,
            mixed_tenants,
            image_gc_high_water,
            image_gc_unused_for,
            image_gc_interval,
        } = cli;
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *slot = value;
            }
        }
        set(&mut self.broker, broker);
        set(&mut self.node_id, node_id);
        set(&mut self.labels, labels.map(|l| l.into_iter().collect()));
        set(&mut self.taints, taints);
        set(&mut self.admin_addr, admin_addr);
        set(&mut self.telemetry_interval, telemetry_interval);
        set(&mut self.reconnect_backoff_min, reconnect_backoff_min);
        set(&mut self.reconnect_backoff_max, reconnect_backoff_max);
        set(&mut self.hello_timeout, hello_timeout);
        set(&mut self.dead_link_after, dead_link_after);
        set(&mut self.simulate_gpus, simulate_gpus.map(Some));
        set(&mut self.simulate_gpu_model, simulate_gpu_model);
        set(&mut self.simulate_gpu_memory, simulate_gpu_memory);
        set(&mut self.no_gpus, no_gpus);
        set(&mut self.log_json, log_json);
        set(&mut self.otlp_endpoint, otlp_endpoint.map(Some));
        set(&mut self.runtime, runtime);
        set(&mut self.state_dir, state_dir);
        set(&mut self.tls.ca, tls_ca.map(Some));
        set(&mut self.tls.cert, tls_cert.map(Some));
        set(&mut self.tls.key, tls_key.map(Some));
        set(&mut self.tls.server_name, tls_server_name.map(Some));
        set(&mut self.docker.network, docker_network.map(Some));
        set(&mut self.docker.firewall, docker_firewall);
        set(&mut self.mixed_tenants, mixed_tenants);
        set(
            &mut self.docker.image_gc.high_water_percent,
            image_gc_high_water,
        );
        set(&mut self.docker.image_gc.unused_for, image_gc_unused_for);
        set(&mut self.docker.image_gc.interval, image_gc_interval);
    }

    /// Checks every setting and reports all problems at once, each naming its setting.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut bad = |p: String| problems.push(p);

        if self.broker.is_empty() {
            bad("broker must list at least one URL, such as http://127.0.0.1:7700".into());
        }
        for url in &self.broker {
            if let Err(why) = check_broker_url(url) {
                bad(format!("broker URL {url:?} {why}"));
            }
        }
        if !valid_node_id(&self.node_id) {
            bad(format!(
                "node_id {:?} must be 1-63 chars of [a-z0-9.-], starting and ending with a \
                 letter or digit (it defaults to the host name; set --node-id)",
                self.node_id
            ));
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.len() > 253 || key.contains(char::is_whitespace) {
                bad(format!(
                    "labels: key {key:?} must be 1-253 characters without whitespace"
                ));
            }
        }
        for taint in &self.taints {
            if taint.is_empty() || taint.contains(char::is_whitespace) {
                bad(format!(
                    "taints: {taint:?} must be non-empty, without whitespace"
                ));
            }
        }
        for (name, value) in [
            ("telemetry_interval", self.telemetry_interval),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("hello_timeout", self.hello_timeout),
            ("dead_link_after", self.dead_link_after),
            ("docker.image_gc.interval", self.docker.image_gc.interval),
        ] {
            if value.is_zero() {
                bad(format!("{name} must be greater than 0"));
            }
        }
        if !(1..=100).contains(&self.docker.image_gc.high_water_percent) {
            bad(format!(
                "docker.image_gc.high_water_percent ({}) must be 1-100 (100 turns collection off)",
                self.docker.image_gc.high_water_percent
            ));
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            bad(format!(
                "reconnect_backoff_min ({}) must not exceed reconnect_backoff_max ({})",
                humantime::format_duration(self.reconnect_backoff_min),
                humantime::format_duration(self.reconnect_backoff_max)
            ));
        }
        match self.simulate_gpus {
            Some(n) if n == 0 || n > MAX_SIMULATED_GPUS => bad(format!(
                "simulate_gpus ({n}) must be 1-{MAX_SIMULATED_GPUS} (use no_gpus, --no-gpus, \
                 for a CPU-only node)"
            )),
            Some(_) if self.no_gpus => bad(
                "simulate_gpus and no_gpus are mutually exclusive: pick simulated GPUs or none"
                    .into(),
            ),
            _ => {}
        }
        if self.simulate_gpu_model.trim().is_empty() {
            bad("simulate_gpu_model must not be empty".into());
        }
        if self.simulate_gpu_memory == 0 {
            bad("simulate_gpu_memory must be greater than 0".into());
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && endpoint.trim().is_empty()
        {
            bad("otlp_endpoint must not be empty when set".into());
        }
        if self.session_limits.pids_limit == 0 {
            bad("session_limits.pids_limit must be greater than 0".into());
        }
        if i64::try_from(self.session_limits.memory).is_err() {
            bad("session_limits.memory is too large".into());
        }
        problems.extend(self.tls.problems(&self.broker));
        let mut bad = |p: String| problems.push(p);
        if let Some(network) = &self.docker.network
            && (network.is_empty() || network.contains(char::is_whitespace))
        {
            bad(format!(
                "docker.network {network:?} must name a Docker network (no whitespace)"
            ));
        }
        if !self.state_dir.is_absolute() {
            bad(format!(
                "state_dir {:?} must be an absolute path, such as /var/lib/hearth-agent",
                self.state_dir
            ));
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }
}

/// Node ids double as DNS-ish names in logs, labels and keys, hence the tight alphabet.
fn valid_node_id(id: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&id.len())
        && id.chars().all(|c| alnum(c) || c == '.' || c == '-')
        && id.starts_with(alnum)
        && id.ends_with(alnum)
}

fn check_broker_url(url: &str) -> Result<(), &'static str> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|_| "is not a URL; use http://host:port")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            node_id: "gpu-7".into(),
            ..Config::default()
        }
    }

    fn problems(config: &Config) -> Vec<String> {
        match config.validate() {
            Err(Error::InvalidConfig { problems }) => problems,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.broker, ["http://127.0.0.1:7700"]);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7702");
        assert_eq!(c.telemetry_interval, Duration::from_secs(1));
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(200));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(10));
        assert_eq!(c.hello_timeout, Duration::from_secs(10));
        assert_eq!(c.simulate_gpus, None);
        assert_eq!(c.simulate_gpu_memory, 80 * (1 << 30));
        assert!(!c.no_gpus);
        assert_eq!(c.runtime, RuntimeKind::Docker);
        assert_eq!(c.state_dir, Path::new("/var/lib/hearth-agent"));
        valid().validate().unwrap();
    }

    #[test]
    fn example_config_in_deploy_loads_and_validates() {
        let text = include_str!("../../deploy/config/agent.toml");
        let config = Config::from_toml(text).expect("deploy/config/agent.toml parses");
        config
            .validate()
            .expect("deploy/config/agent.toml is valid");
        // It is an example: it must show the non-default forms, not just be empty.
        assert!(!config.labels.is_empty());
        assert_ne!(config.telemetry_interval, Duration::ZERO);
        assert_eq!(config.runtime, RuntimeKind::Docker);
        assert_eq!(config.state_dir, Path::new("/var/lib/hearth-agent"));
    }

    #[test]
    fn toml_takes_humantime_durations_and_human_sizes() {
        let c = Config::from_toml(
            r#"
            broker = ["http://a:7700", "http://b:7700"]
            node_id = "n1"
            telemetry_interval = "250ms"
            reconnect_backoff_max = "30s"
            simulate_gpus = 4
            simulate_gpu_memory = "40GiB"
            [labels]
            zone = "eu-1"
            "#,
        )
        .unwrap();
        assert_eq!(c.broker.len(), 2);
        assert_eq!(c.telemetry_interval, Duration::from_millis(250));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(30));
        // Unset keys keep their defaults.
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(200));
        assert_eq!(c.simulate_gpus, Some(4));
        assert_eq!(c.simulate_gpu_memory, 40 << 30);
        assert_eq!(c.labels["zone"], "eu-1");

        let bytes = Config::from_toml("simulate_gpu_memory = 1024").unwrap();
        assert_eq!(bytes.simulate_gpu_memory, 1024);
    }

    #[test]
    fn toml_typos_and_bad_values_are_errors() {
        let err = Config::from_toml("telemetry_intervall = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("telemetry_intervall"), "{err}");
        let err = Config::from_toml("hello_timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("hello_timeout"), "{err}");
        let err = Config::from_toml("simulate_gpu_memory = \"80XB\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }

    #[test]
    fn flags_override_the_file_and_unset_flags_leave_it_alone() {
        let dir = std::env::temp_dir().join(format!("hearth-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\ntelemetry_interval = \"5s\"\ntaints = [\"gpu\"]\n\
             [labels]\nzone = \"file\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "hearth-agent",
            "--config",
            path.to_str().unwrap(),
            "--node-id",
            "from-flag",
            "--label",
            "zone=flag",
            "--label",
            "rack=r1",
            "--broker",
            "http://a:1,http://b:2",
            "--broker",
            "http://c:3",
            "--reconnect-backoff-min",
            "50ms",
            "--simulate-gpus",
            "2",
            "--simulate-gpu-memory",
            "24GiB",
            "--log-json",
        ])
        .unwrap();
        let c = Config::load(cli).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(
            c.telemetry_interval,
            Duration::from_secs(5),
            "file value kept"
        );
        assert_eq!(c.taints, ["gpu"], "file value kept");
        assert_eq!(
            c.labels,
            BTreeMap::from([("zone".into(), "flag".into()), ("rack".into(), "r1".into())]),
            "flag labels replace the file's"
        );
        assert_eq!(c.broker, ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(50));
        assert_eq!(c.simulate_gpus, Some(2));
        assert_eq!(c.simulate_gpu_memory, 24 << 30);
        assert!(c.log_json);
    }

    #[test]
    fn boolean_flags_take_an_optional_value() {
        let cli = Cli::try_parse_from(["hearth-agent", "--no-gpus=false", "--log-json=yes"]);
        let cli = cli.unwrap();
        assert_eq!(cli.no_gpus, Some(false));
        assert_eq!(cli.log_json, Some(true));
        let cli = Cli::try_parse_from(["hearth-agent"]).unwrap();
        assert_eq!((cli.no_gpus, cli.log_json), (None, None));
    }

    #[test]
    fn bad_flag_values_are_refused_by_the_parser() {
        assert!(Cli::try_parse_from(["hearth-agent", "--label", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["hearth-agent", "--hello-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["hearth-agent", "--simulate-gpu-memory", "8XB"]).is_err());
    }

    #[test]
    fn missing_config_file_is_named() {
        let cli = Cli {
            config: Some("/nonexistent/hearth/agent.toml".into()),
            ..Cli::default()
        };
        let err = Config::load(cli).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/hearth/agent.toml"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let c = Config {
            reconnect_backoff_min: Duration::from_secs(20),
            ..valid()
        };
        assert_eq!(
            problems(&c),
            ["reconnect_backoff_min (20s) must not exceed reconnect_backoff_max (10s)"]
        );

        for bad_id in ["", "GPU-7", "gpu_7", "-gpu", "gpu.", &"a".repeat(64)] {
            let c = Config {
                node_id: bad_id.into(),
                ..valid()
            };
            let p = problems(&c);
            assert!(p[0].starts_with("node_id"), "{bad_id:?}: {p:?}");
            assert!(p[0].contains("[a-z0-9.-]"), "{p:?}");
        }
        for good_id in ["a", "gpu-7", "gpu-7.dc1.example", &"a".repeat(63)] {
            let c = Config {
                node_id: good_id.into(),
                ..valid()
            };
            c.validate().unwrap();
        }

        let c = Config {
            broker: vec!["127.0.0.1:7700".into(), "ftp://b:7700".into()],
            ..valid()
        };
        let p = problems(&c);
        assert!(p[0].starts_with("broker URL \"127.0.0.1:7700\""), "{p:?}");
        assert!(p[1].contains("https://"), "{p:?}");
        let c = Config {
            broker: vec![],
            ..valid()
        };
        assert!(problems(&c)[0].starts_with("broker must list"));

        let c = Config {
            telemetry_interval: Duration::ZERO,
            hello_timeout: Duration::ZERO,
            ..valid()
        };
        assert_eq!(
            problems(&c),
            [
                "telemetry_interval must be greater than 0",
                "hello_timeout must be greater than 0"
            ]
        );
    }

    #[test]
    fn gpu_source_settings_are_checked() {
        let c = Config {
            simulate_gpus: Some(0),
            ..valid()
        };
        assert!(problems(&c)[0].starts_with("simulate_gpus (0)"));
        let c = Config {
            simulate_gpus: Some(2),
            no_gpus: true,
            ..valid()
        };
        assert!(problems(&c)[0].contains("mutually exclusive"));
        let c = Config {
            simulate_gpus: Some(2),
            simulate_gpu_memory: 0,
            simulate_gpu_model: " ".into(),
            ..valid()
        };
        let p = problems(&c);
        assert!(
            p.iter().any(|p| p.starts_with("simulate_gpu_model")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("simulate_gpu_memory")),
            "{p:?}"
        );
    }

    #[test]
    fn runtime_and_state_dir_come_from_toml_and_flags() {
        let c = Config::from_toml("runtime = \"process\"\nstate_dir = \"/srv/hearth\"").unwrap();
        assert_eq!(c.runtime, RuntimeKind::Process);
        assert_eq!(c.state_dir, Path::new("/srv/hearth"));
        let err = Config::from_toml("runtime = \"podman\"").unwrap_err();
        assert!(err.to_string().contains("runtime"), "{err}");

        let cli = Cli::try_parse_from([
            "hearth-agent",
            "--runtime",
            "process",
            "--state-dir",
            "/tmp/h",
        ])
        .unwrap();
        let mut c = valid();
        c.apply(cli);
        assert_eq!(c.runtime, RuntimeKind::Process);
        assert_eq!(c.state_dir, Path::new("/tmp/h"));
        assert!(Cli::try_parse_from(["hearth-agent", "--runtime", "podman"]).is_err());

        let c = Config {
            state_dir: "relative/dir".into(),
            ..valid()
        };
        assert_eq!(
            problems(&c),
            ["state_dir \"relative/dir\" must be an absolute path, such as /var/lib/hearth-agent"]
        );
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config {
            simulate_gpus: Some(3),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            runtime: RuntimeKind::Process,
            state_dir: "/srv/hearth".into(),
            ..valid()
        };
        assert_eq!(Config::from_toml(&c.to_toml().unwrap()).unwrap(), c);
    }
}
