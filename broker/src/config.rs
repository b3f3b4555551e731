//! Broker configuration: defaults, then a TOML file, then `HEARTH_*` environment variables,
//! then flags. Validated once at start-up; every error names the setting.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

/// Everything the broker can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This broker's id, unique among the brokers sharing a store. Default: `<host>-<port>`.
    pub broker_id: Option<String>,
    /// gRPC address for clients and agents.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP address (`/live`, `/ready`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The URL other brokers hand out to reach this one when it leads. Default:
    /// `http://<grpc_addr>` (`https://` with `[tls]`).
    pub advertise_url: Option<String>,
    /// Where state is kept.
    pub store: StoreConfig,
    /// Node liveness timings (DESIGN section 4).
    pub liveness: LivenessConfig,
    /// How long an agent has to send `Hello` after opening its stream.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    /// OTLP/gRPC endpoint for traces, such as `http://127.0.0.1:4317`. Unset: no export.
    pub otlp_endpoint: Option<String>,
    /// How sessions are placed.
    pub placement: PlacementConfig,
    /// TLS on the gRPC port (`[tls]`: cert, key, client_ca); unset: plaintext.
    pub tls: crate::tls::TlsConfig,
    /// Allows a plaintext gRPC port on a non-loopback address (refused otherwise).
    pub insecure_listen: bool,
    /// What a session may ask for: GPUs, images, capabilities.
    pub limits: crate::limits::LimitsConfig,
    /// Client tokens (`[[auth.tokens]]`); none configured: authentication is off.
    pub auth: crate::auth::AuthConfig,
    /// Per-tenant quotas and the create rate limit (`[quota]`); unlimited by default.
    pub quota: crate::quota::QuotaConfig,
    /// Per-tenant network policy (`[network]`): egress, and sessions reaching each other.
    pub network: crate::network::NetworkConfig,
    /// The key that seals tenants' registry credentials in the store
    /// (`[registry_credentials]`); unset: credentials cannot be stored.
    pub registry_credentials: crate::credentials::CredentialsConfig,
}

/// Placement settings (DESIGN section 6).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Scoring for sessions that do not choose: `binpack` (default) or `spread`.
    pub strategy: crate::placement::Strategy,
}

/// Where the broker keeps its state.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// etcd endpoints such as `http://127.0.0.1:2379`. Empty: the embedded store.
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub prefix: String,
    /// How long to wait for etcd when connecting.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// The embedded store's file.
    pub path: PathBuf,
    /// TTL of the leader lease: a dead leader is replaced this long after it died.
    #[serde(with = "humantime_serde")]
    pub leader_ttl: Duration,
}

/// Node liveness timings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// How often agents send telemetry (any message counts as a heartbeat).
    #[serde(with = "humantime_serde")]
    pub telemetry_interval: Duration,
    /// Silence after which a node is SUSPECT (no new placements).
    #[serde(with = "humantime_serde")]
    pub suspect_after: Duration,
    /// Silence after which a node is DISCONNECTED (turns fail fast, retryable).
    #[serde(with = "humantime_serde")]
    pub disconnected_after: Duration,
    /// Silence after which a node is DOWN and its sessions LOST.
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
    /// After becoming leader, nothing is declared DOWN for this long, so agents have
    /// time to reconnect to the new leader.
    #[serde(with = "humantime_serde")]
    pub takeover_grace: Duration,
    /// A workload an agent reports that belongs to no live session (unknown, or of
    /// another generation) is stopped after this long, unless its session becomes known.
    /// A workload of a session that ended is stopped at once.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker_id: None,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 7701)),
            advertise_url: None,
            store: StoreConfig::default(),
            liveness: LivenessConfig::default(),
            hello_timeout: Duration::from_secs(10),
            log_json: false,
            otlp_endpoint: None,
            placement: PlacementConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            insecure_listen: false,
            limits: crate::limits::LimitsConfig::default(),
            auth: Default::default(),
            quota: Default::default(),
            network: Default::default(),
            registry_credentials: Default::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            prefix: "/hearth".to_owned(),
            dial_timeout: Duration::from_secs(5),
            path: PathBuf::from("hearth-data/broker.hearth-store"),
            leader_ttl: Duration::from_secs(3),
        }
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            telemetry_interval: Duration::from_secs(1),
            suspect_after: Duration::from_secs(5),
            disconnected_after: Duration::from_secs(15),
            lost_after: Duration::from_secs(300),
            takeover_grace: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(300),
        }
    }
}

/// A setting that failed validation.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting, as named in the TOML file.
    pub setting: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

impl Config {
    /// Checks every setting; the first problem found is returned, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.broker_id
            && (id.is_empty() || id.len() > 128 || id.chars().any(char::is_whitespace))
        {
            return Err(invalid(
                "broker_id",
                "must be 1-128 characters without whitespace",
            ));
        }
        if let Some(url) = &self.advertise_url {
            check_url("advertise_url", url)?;
        }
        for (i, url) in self.store.etcd.iter().enumerate() {
            check_url(&format!("store.etcd[{i}]"), url)?;
        }
        let prefix = &self.store.prefix;
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(invalid(
                "store.prefix",
                format!("{prefix:?} must start with '/' and not end with '/', such as \"/hearth\""),
            ));
        }
        if self.store.leader_ttl < Duration::from_secs(1) {
            return Err(invalid("store.leader_ttl", "must be at least 1s"));
        }
        if self.store.etcd.is_empty() && self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        let l = &self.liveness;
        if l.telemetry_interval.is_zero() {
            return Err(invalid(
                "liveness.telemetry_interval",
                "must be more than 0",
            ));
        }
        if l.suspect_after <= l.telemetry_interval {
            return Err(invalid(
                "liveness.suspect_after",
                format!(
                    "({}) must be longer than liveness.telemetry_interval ({})",
                    humantime::format_duration(l.suspect_after),
                    humantime::format_duration(l.telemetry_interval)
                ),
            ));
        }
        let order = [
            ("liveness.suspect_after", l.suspect_after),
            ("liveness.disconnected_after", l.disconnected_after),
            ("liveness.lost_after", l.lost_after),
        ];
        for pair in order.windows(2) {
            let ((a, da), (b, db)) = (pair[0], pair[1]);
            if da >= db {
                return Err(invalid(
                    b,
                    format!(
                        "({}) must be longer than {a} ({})",
                        humantime::format_duration(db),
                        humantime::format_duration(da)
                    ),
                ));
            }
        }
        if self.hello_timeout.is_zero() {
            return Err(invalid("hello_timeout", "must be more than 0"));
        }
        if let Some(url) = &self.otlp_endpoint {
            check_url("otlp_endpoint", url)?;
        }
        self.tls.validate()?;
        crate::tls::check_listen(self)?;
        self.limits.validate()?;
        self.auth.validate()?;
        self.quota.validate()?;
        self.network.validate()?;
        Ok(())
    }

    /// Checks a spec of `tenant` (already through [`crate::convert::session_spec`])
    /// against what the deployment allows: `[limits]` and `[network]`. `prefix` is where
    /// the spec sits in the request (`spec`, `template.spec`).
    pub fn check_spec(
        &self,
        tenant: &str,
        prefix: &str,
        spec: &hearth_sdk::proto::v1::SessionSpec,
    ) -> crate::error::Result<()> {
        self.limits.check_spec(tenant, prefix, spec)?;
        self.network.check_spec(tenant, prefix, spec)
    }

    /// This broker's id.
    pub fn broker_id(&self) -> String {
        self.broker_id.clone().unwrap_or_else(|| {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "broker".to_owned());
            format!("{host}-{}", self.grpc_addr.port())
        })
    }

    /// The URL handed out to reach this broker.
    pub fn advertise_url(&self) -> String {
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        self.advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.grpc_addr))
    }

    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Defaults, then `--config` file, then env and flags (clap applies `HEARTH_*` env
    /// under the flags), validated.
    pub fn load(args: Args) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        args.apply(&mut config);
        config.validate()?;
        Ok(config)
    }
}

fn check_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(invalid(
            setting,
            format!("{url:?} must be an http:// or https:// URL, such as http://127.0.0.1:2379"),
        )),
    }
}

/// `hearth-broker` flags. Each also reads a `HEARTH_*` environment variable; a flag wins
/// over its variable, and both win over the config file.
#[derive(Debug, Default, Parser)]
#[command(
    name = "hearth-broker",
    version,
    about = "Hearth broker: places persistent GPU sessions on node agents and keeps state in etcd \
             (or an embedded store on one machine).",
    long_about = None
)]
pub struct Args {
    /// TOML config file (see deploy/config/broker.toml). Flags and HEARTH_* env override it.
    #[arg(long, env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// This broker's id among brokers sharing a store [default: HOST-PORT].
    #[arg(long, env = "HEARTH_BROKER_ID")]
    pub broker_id: Option<String>,
    /// gRPC listen address for clients and agents [default: 127.0.0.1:7700].
    #[arg(long, env = "HEARTH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Admin HTTP listen address: /live, /ready, /metrics [default: 127.0.0.1:7701].
    #[arg(long, env = "HEARTH_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// URL that standbys hand out to reach this broker when it leads [default: http://GRPC_ADDR].
    #[arg(long, env = "HEARTH_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// etcd endpoints, comma-separated (http://host:port,...). Unset: the embedded store.
    #[arg(long, env = "HEARTH_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Key prefix in etcd [default: /hearth].
    #[arg(long, env = "HEARTH_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Embedded store file, used when no etcd is given [default: hearth-data/broker.hearth-store].
    #[arg(long, env = "HEARTH_STORE_PATH")]
    pub store_path: Option<PathBuf>,
    /// Leader lease TTL: how long a dead leader goes unnoticed [default: 3s].
    #[arg(long, env = "HEARTH_LEADER_TTL", value_parser = humantime::parse_duration)]
    pub leader_ttl: Option<Duration>,
    /// Telemetry interval agents are told to use [default: 1s].
    #[arg(long, env = "HEARTH_TELEMETRY_INTERVAL", value_parser = humantime::parse_duration)]
    pub telemetry_interval: Option<Duration>,
    /// Silence before a node is SUSPECT [default: 5s].
    #[arg(long, env = "HEARTH_SUSPECT_AFTER", value_parser = humantime::parse_duration)]
    pub suspect_after: Option<Duration>,
    /// Silence before a node is DISCONNECTED [default: 15s].
    #[arg(long, env = "HEARTH_DISCONNECTED_AFTER", value_parser = humantime::parse_duration)]
    pub disconnected_after: Option<Duration>,
    /// Silence before a node is DOWN and its sessions LOST [default: 5m].
    #[arg(long, env = "HEARTH_LOST_AFTER", value_parser = humantime::parse_duration)]
    pub lost_after: Option<Duration>,
    /// After taking over, nothing is declared DOWN for this long [default: 60s].
    #[arg(long, env = "HEARTH_TAKEOVER_GRACE", value_parser = humantime::parse_duration)]
    pub takeover_grace: Option<Duration>,
    /// How long a workload of no live session runs before it is stopped [default: 5m].
    #[arg(long, env = "HEARTH_ORPHAN_GRACE", value_parser = humantime::parse_duration)]
    pub orphan_grace: Option<Duration>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "HEARTH_LOG_JSON")]
    pub log_json: bool,
    /// OTLP/gRPC endpoint for traces, such as http://127.0.0.1:4317.
    #[arg(long, env = "HEARTH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Placement scoring for sessions that do not choose: binpack fills the busiest node
    /// that fits (keeps whole hosts free), spread the emptiest [default: binpack].
    #[arg(long, env = "HEARTH_PLACEMENT_STRATEGY", value_enum)]
    pub placement_strategy: Option<crate::placement::Strategy>,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key and --tls-client-ca).
    #[arg(long, env = "HEARTH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HEARTH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that node agents' client certificates must chain to.
    #[arg(long, env = "HEARTH_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Listen without TLS on a non-loopback --grpc-addr (refused otherwise): traffic and
    /// tokens are unencrypted and agents unauthenticated.
    #[arg(long, env = "HEARTH_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// File with the key that seals registry credentials in the store: 32 random bytes
    /// in base64 (head -c 32 /dev/urandom | base64). The same on every broker.
    #[arg(long, env = "HEARTH_CREDENTIALS_KEY_FILE", value_name = "FILE")]
    pub credentials_key_file: Option<PathBuf>,
}

impl Args {
    fn apply(self, c: &mut Config) {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        if self.broker_id.is_some() {
            c.broker_id = self.broker_id;
        }
        set(&mut c.grpc_addr, self.grpc_addr);
        set(&mut c.admin_addr, self.admin_addr);
        if self.advertise_url.is_some() {
            c.advertise_url = self.advertise_url;
        }
        set(&mut c.store.etcd, self.etcd);
        set(&mut c.store.prefix, self.etcd_prefix);
        set(&mut c.store.path, self.store_path);
        set(&mut c.store.leader_ttl, self.leader_ttl);
        set(&mut c.liveness.telemetry_interval, self.telemetry_interval);
        set(&mut c.liveness.suspect_after, self.suspect_after);
        set(&mut c.liveness.disconnected_after, self.disconnected_after);
        set(&mut c.liveness.lost_after, self.lost_after);
        set(&mut c.liveness.takeover_grace, self.takeover_grace);
        set(&mut c.liveness.orphan_grace, self.orphan_grace);
        c.log_json |= self.log_json;
        if self.otlp_endpoint.is_some() {
            c.otlp_endpoint = self.otlp_endpoint;
        }
        set(&mut c.placement.strategy, self.placement_strategy);
        if self.tls_cert.is_some() {
            c.tls.cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls.key = self.tls_key;
        }
        if self.tls_client_ca.is_some() {
            c.tls.client_ca = self.tls_client_ca;
        }
        c.insecure_listen |= self.insecure_listen;
        if self.credentials_key_file.is_some() {
            c.registry_credentials.key_file = self.credentials_key_file;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:7700");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7701");
        assert_eq!(c.store.prefix, "/hearth");
        assert_eq!(c.liveness.suspect_after, Duration::from_secs(5));
        assert_eq!(c.liveness.disconnected_after, Duration::from_secs(15));
        assert_eq!(c.liveness.lost_after, Duration::from_secs(300));
        assert_eq!(c.liveness.orphan_grace, Duration::from_secs(300));
        assert_eq!(c.placement.strategy, crate::placement::Strategy::Binpack);
    }

    #[test]
    fn example_config_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/broker.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.store.etcd, vec!["http://127.0.0.1:2379".to_owned()]);
    }

    #[test]
    fn flags_beat_the_file() {
        let mut c: Config =
            toml::from_str("grpc_addr = \"127.0.0.1:9000\"\n[liveness]\nsuspect_after = \"7s\"\n")
                .unwrap();
        assert_eq!(c.liveness.suspect_after, Duration::from_secs(7));
        let args = Args::parse_from([
            "hearth-broker",
            "--grpc-addr",
            "127.0.0.1:9100",
            "--etcd",
            "http://a:1,http://b:2",
        ]);
        args.apply(&mut c);
        assert_eq!(c.grpc_addr.port(), 9100);
        assert_eq!(c.store.etcd, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.liveness.suspect_after, Duration::from_secs(7));
    }

    #[test]
    fn errors_name_the_setting() {
        type Breaker = fn(&mut Config);
        let cases: Vec<(Breaker, &str)> = vec![
            (
                |c| c.liveness.disconnected_after = Duration::from_secs(1),
                "liveness.disconnected_after",
            ),
            (
                |c| c.liveness.suspect_after = Duration::from_millis(500),
                "liveness.suspect_after",
            ),
            (
                |c| c.liveness.lost_after = Duration::from_secs(15),
                "liveness.lost_after",
            ),
            (|c| c.store.prefix = "hearth".into(), "store.prefix"),
            (
                |c| c.store.etcd = vec!["127.0.0.1:2379".into()],
                "store.etcd[0]",
            ),
            (
                |c| c.store.leader_ttl = Duration::from_millis(100),
                "store.leader_ttl",
            ),
            (|c| c.broker_id = Some("a b".into()), "broker_id"),
        ];
        for (break_it, setting) in cases {
            let mut c = Config::default();
            break_it(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.to_string().contains(setting));
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        let err = toml::from_str::<Config>("grpc_adr = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }
}
