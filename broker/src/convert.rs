//! The proto boundary: incoming messages are checked here, once, and turned into types
//! the rest of the broker can trust. Every error names the offending field.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use hearth_sdk::proto::v1::{
    Egress, ExecRequest, Gpu, GpuSource, Hello, IdleAction, InvokeRequest, Node, NodeCapacity,
    NodeState, PlacementStrategy, PullPolicy, RestartMode, SessionSpec, SessionState,
    readiness_probe,
};

use crate::error::{Error, Result};

/// Longest node id (a DNS name).
pub const MAX_NODE_ID_LEN: usize = 253;
/// Most GPUs one node may report.
pub const MAX_GPUS_PER_NODE: usize = 64;
/// Most labels or taints on a node.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 253;
/// Most image references one node may report (tags and digests together).
pub const MAX_NODE_IMAGES: usize = 4096;

/// A `Hello` that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedHello {
    /// Node id.
    pub node_id: String,
    /// Agent incarnation.
    pub incarnation: String,
    /// Agent version.
    pub version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<String>,
    /// GPU inventory (UUIDs unique).
    pub gpus: Vec<Gpu>,
    /// Inventory source.
    pub gpu_source: GpuSource,
    /// CPU and memory.
    pub capacity: NodeCapacity,
    /// Session runtime.
    pub runtime: String,
    /// Highest epoch the agent has accepted.
    pub highest_epoch: i64,
    /// Session workloads running on the node.
    pub sessions: Vec<hearth_sdk::proto::v1::RunningSession>,
    /// Images the node holds, by canonical reference.
    pub images: HashSet<String>,
}

/// Checks a node id: 1-253 characters of letters, digits, '.', '-' and '_'.
pub fn node_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} characters; at most {MAX_NODE_ID_LEN}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(Error::invalid(
            field,
            format!("{id:?} contains {c:?}; use letters, digits, '.', '-' and '_'"),
        ));
    }
    Ok(())
}

fn labels(
    field: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            field,
            format!("has {} entries; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "key {:?} must be 1-{MAX_LABEL_LEN} characters",
                    truncated(k)
                ),
            ));
        }
        if v.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(
                format!("{field}[{k}]"),
                format!("value is {} characters; at most {MAX_LABEL_LEN}", v.len()),
            ));
        }
    }
    Ok(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Checks an agent's `Hello`.
pub fn hello(h: Hello) -> Result<CheckedHello> {
    node_id("hello.node_id", &h.node_id)?;
    if h.incarnation.is_empty() {
        return Err(Error::invalid("hello.incarnation", "must not be empty"));
    }
    let gpu_source = GpuSource::try_from(h.gpu_source)
        .ok()
        .filter(|s| *s != GpuSource::Unspecified)
        .ok_or_else(|| {
            Error::invalid(
                "hello.gpu_source",
                format!("{} is not NVML, SIMULATED or NONE", h.gpu_source),
            )
        })?;
    if h.gpus.len() > MAX_GPUS_PER_NODE {
        return Err(Error::invalid(
            "hello.gpus",
            format!("has {} GPUs; at most {MAX_GPUS_PER_NODE}", h.gpus.len()),
        ));
    }
    if gpu_source == GpuSource::None && !h.gpus.is_empty() {
        return Err(Error::invalid(
            "hello.gpus",
            "must be empty when gpu_source is NONE",
        ));
    }
    let mut seen = HashSet::new();
    for (i, gpu) in h.gpus.iter().enumerate() {
        if gpu.uuid.is_empty() {
            return Err(Error::invalid(
                format!("hello.gpus[{i}].uuid"),
                "must not be empty",
            ));
        }
        if !seen.insert(gpu.uuid.as_str()) {
            return Err(Error::invalid(
                format!("hello.gpus[{i}].uuid"),
                format!("{:?} appears twice", gpu.uuid),
            ));
        }
        let simulated_source = gpu_source == GpuSource::Simulated;
        if gpu.simulated != simulated_source {
            return Err(Error::invalid(
                format!("hello.gpus[{i}].simulated"),
                "must be true exactly when gpu_source is SIMULATED",
            ));
        }
    }
    if h.taints.len() > MAX_LABELS {
        return Err(Error::invalid(
            "hello.taints",
            format!("has {} entries; at most {MAX_LABELS}", h.taints.len()),
        ));
    }
    if let Some(i) = h
        .taints
        .iter()
        .position(|t| t.is_empty() || t.len() > MAX_LABEL_LEN)
    {
        return Err(Error::invalid(
            format!("hello.taints[{i}]"),
            format!("must be 1-{MAX_LABEL_LEN} characters"),
        ));
    }
    let images = node_images("hello.images", &h.images)?;
    Ok(CheckedHello {
        images,
        labels: labels("hello.labels", &h.labels)?,
        node_id: h.node_id,
        incarnation: h.incarnation,
        version: h.version,
        taints: h.taints,
        gpus: h.gpus,
        gpu_source,
        capacity: h.capacity.unwrap_or_default(),
        runtime: h.runtime,
        highest_epoch: h.highest_epoch,
        sessions: h.sessions,
    })
}

/// Checks the images a node reports and spells each in full
/// ([`hearth_sdk::image::canonical`]), so that placement compares like with like.
pub fn node_images(field: &str, images: &[String]) -> Result<HashSet<String>> {
    if images.len() > MAX_NODE_IMAGES {
        return Err(Error::invalid(
            field,
            format!("has {} entries; at most {MAX_NODE_IMAGES}", images.len()),
        ));
    }
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            if image.is_empty() || image.len() > MAX_IMAGE_LEN {
                return Err(Error::invalid(
                    format!("{field}[{i}]"),
                    format!("must be 1-{MAX_IMAGE_LEN} characters"),
                ));
            }
            Ok(hearth_sdk::image::canonical(image))
        })
        .collect()
}

impl CheckedHello {
    /// A node record from this Hello (liveness fields are filled in by the registry).
    pub fn into_node(self) -> Node {
        let mut node = Node {
            id: self.node_id,
            schedulable: true,
            labels: self.labels.into_iter().collect(),
            taints: self.taints,
            gpus: self.gpus,
            capacity: Some(self.capacity),
            agent_version: self.version,
            incarnation: self.incarnation,
            runtime: self.runtime,
            ..Node::default()
        };
        node.set_gpu_source(self.gpu_source);
        node.set_state(NodeState::Ready);
        node
    }
}

/// Parses node-state filters.
pub fn node_states(field: &str, states: &[i32]) -> Result<Vec<NodeState>> {
    states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            NodeState::try_from(*s)
                .ok()
                .filter(|s| *s != NodeState::Unspecified)
                .ok_or_else(|| {
                    Error::invalid(format!("{field}[{i}]"), format!("{s} is not a node state"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Hello {
        Hello {
            node_id: "gpu-1".into(),
            incarnation: "01J0".into(),
            version: "0.1.0".into(),
            gpus: vec![
                Gpu {
                    uuid: "GPU-SIM-a".into(),
                    simulated: true,
                    ..Gpu::default()
                },
                Gpu {
                    uuid: "GPU-SIM-b".into(),
                    index: 1,
                    simulated: true,
                    ..Gpu::default()
                },
            ],
            gpu_source: GpuSource::Simulated as i32,
            ..Hello::default()
        }
    }

    #[test]
    fn a_good_hello_becomes_a_ready_schedulable_node() {
        let node = hello(good()).unwrap().into_node();
        assert_eq!(node.id, "gpu-1");
        assert_eq!(node.state(), NodeState::Ready);
        assert!(node.schedulable);
        assert_eq!(node.gpu_source(), GpuSource::Simulated);
        assert_eq!(node.gpus.len(), 2);
    }

    #[test]
    fn a_nodes_images_are_spelled_in_full() {
        let mut h = good();
        h.images = vec!["busybox:latest".into(), "127.0.0.1:5000/w@sha256:ab".into()];
        let checked = hello(h).unwrap();
        let mut images: Vec<_> = checked.images.into_iter().collect();
        images.sort();
        assert_eq!(
            images,
            [
                "127.0.0.1:5000/w@sha256:ab",
                "docker.io/library/busybox:latest"
            ]
        );
    }

    #[test]
    fn bad_hellos_name_the_field() {
        type Breaker = fn(&mut Hello);
        let cases: Vec<(Breaker, &str)> = vec![
            (|h| h.node_id.clear(), "hello.node_id"),
            (|h| h.node_id = "a/b".into(), "hello.node_id"),
            (|h| h.node_id = "x".repeat(300), "hello.node_id"),
            (|h| h.incarnation.clear(), "hello.incarnation"),
            (|h| h.gpu_source = 0, "hello.gpu_source"),
            (|h| h.gpu_source = 99, "hello.gpu_source"),
            (
                |h| h.gpus[1].uuid = "GPU-SIM-a".into(),
                "hello.gpus[1].uuid",
            ),
            (|h| h.gpus[0].uuid.clear(), "hello.gpus[0].uuid"),
            (|h| h.gpus[0].simulated = false, "hello.gpus[0].simulated"),
            (
                |h| h.gpu_source = GpuSource::Nvml as i32,
                "hello.gpus[0].simulated",
            ),
            (|h| h.gpu_source = GpuSource::None as i32, "hello.gpus"),
            (
                |h| {
                    h.labels.insert(String::new(), "v".into());
                },
                "hello.labels",
            ),
            (|h| h.taints = vec![String::new()], "hello.taints[0]"),
            (
                |h| h.images = vec!["busybox:1".into(), String::new()],
                "hello.images[1]",
            ),
            (
                |h| h.images = vec!["m".repeat(MAX_IMAGE_LEN + 1)],
                "hello.images[0]",
            ),
            (
                |h| h.images = vec!["busybox".into(); MAX_NODE_IMAGES + 1],
                "hello.images",
            ),
        ];
        for (break_it, field) in cases {
            let mut h = good();
            break_it(&mut h);
            match hello(h) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn node_state_filters_reject_unknown_values() {
        assert_eq!(
            node_states("states", &[1, 2]).unwrap(),
            vec![NodeState::Ready, NodeState::Suspect]
        );
        match node_states("states", &[1, 42]) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "states[1]"),
            other => panic!("{other:?}"),
        }
    }
}

/// Most GPUs one session can have: a whole node. The deployment's own, usually lower,
/// limit is `limits.max_gpus_per_session` ([`crate::limits`]).
pub const MAX_GPUS_PER_SESSION: u32 = MAX_GPUS_PER_NODE as u32;
/// Most restarts `spec.restart.max_restarts` may allow.
pub const MAX_RESTARTS: u32 = 100;
/// Restarts allowed by `ON_FAILURE` when `max_restarts` is 0.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// Most env entries or arguments (spec command, Exec argv, exec probe argv).
pub const MAX_LIST_ENTRIES: usize = 256;
/// Longest env value or argument.
pub const MAX_VALUE_LEN: usize = 32 * 1024;
/// Longest env variable name.
pub const MAX_ENV_NAME_LEN: usize = 1024;
/// Longest image reference (or executable path).
pub const MAX_IMAGE_LEN: usize = 1024;
/// Most ports in a spec.
pub const MAX_PORTS: usize = 64;
/// Longest port name or GPU model pattern.
pub const MAX_NAME_LEN: usize = 253;
/// Most capabilities a spec may add.
pub const MAX_CAPABILITIES: usize = 64;
/// Longest capability name (the longest Linux has is 18 characters).
pub const MAX_CAPABILITY_LEN: usize = 32;
/// Largest request body an Invoke may carry.
pub const MAX_INVOKE_BODY: usize = 4 * 1024 * 1024;
/// Largest stdin an Exec may carry.
pub const MAX_EXEC_STDIN: usize = 4 * 1024 * 1024;
/// Most headers on an Invoke.
pub const MAX_HEADERS: usize = 128;
/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;
/// Longest Invoke path (with its query) or Exec working directory.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest HTTP method.
pub const MAX_METHOD_LEN: usize = 32;
/// Default idle timeout (DESIGN section 3).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default readiness timeout.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A session spec that passed validation, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedSpec {
    /// The spec as it will be stored and sent to the node (defaults applied).
    pub spec: SessionSpec,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// What to do when idle.
    pub idle_action: IdleAction,
    /// Hard cap on the session's life.
    pub max_lifetime: Option<Duration>,
    /// How long the readiness probe may take.
    pub ready_timeout: Duration,
}

fn optional_duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    d.map(|d| {
        hearth_sdk::time::std_duration(d, field).map_err(|reason| Error::invalid(field, reason))
    })
    .transpose()
}

fn strings(field: &str, values: &[String]) -> Result<()> {
    if values.len() > MAX_LIST_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("has {} entries; at most {MAX_LIST_ENTRIES}", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| v.len() > MAX_VALUE_LEN) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("is longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    if let Some(i) = values.iter().position(|v| v.contains('\0')) {
        return Err(Error::invalid(format!("{field}[{i}]"), "contains NUL"));
    }
    Ok(())
}

/// Checks an environment map: names are non-empty, without '=' or NUL.
pub fn env(field: &str, env: &std::collections::HashMap<String, String>) -> Result<()> {
    if env.len() > MAX_LIST_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("has {} entries; at most {MAX_LIST_ENTRIES}", env.len()),
        ));
    }
    for (k, v) in env {
        if k.is_empty() || k.len() > MAX_ENV_NAME_LEN || k.contains(['=', '\0']) {
            return Err(Error::invalid(
                field,
                format!(
                    "name {:?} must be 1-{MAX_ENV_NAME_LEN} bytes without '=' or NUL",
                    truncated(k)
                ),
            ));
        }
        if v.len() > MAX_VALUE_LEN || v.contains('\0') {
            return Err(Error::invalid(
                format!("{field}[{k}]"),
                format!("must be at most {MAX_VALUE_LEN} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

/// Checks a session spec and fills in defaults.
pub fn session_spec(spec: Option<SessionSpec>) -> Result<CheckedSpec> {
    let mut spec =
        spec.ok_or_else(|| Error::invalid("spec", "is required (or give a template)"))?;
    if spec.image.trim().is_empty() {
        return Err(Error::invalid(
            "spec.image",
            "must name an image (or an executable for the process runtime)",
        ));
    }
    if spec.image.len() > MAX_IMAGE_LEN {
        return Err(Error::invalid(
            "spec.image",
            format!("is {} bytes; at most {MAX_IMAGE_LEN}", spec.image.len()),
        ));
    }
    if spec.image.contains('\0') {
        return Err(Error::invalid("spec.image", "contains NUL"));
    }
    strings("spec.command", &spec.command)?;
    env("spec.env", &spec.env)?;
    let gpus = spec.gpus.get_or_insert_with(Default::default);
    if gpus.count > MAX_GPUS_PER_SESSION {
        return Err(Error::invalid(
            "spec.gpus.count",
            format!(
                "{} is more than the {MAX_GPUS_PER_SESSION} GPUs a node may have",
                gpus.count
            ),
        ));
    }
    if gpus.model.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "spec.gpus.model",
            format!("is {} bytes; at most {MAX_NAME_LEN}", gpus.model.len()),
        ));
    }
    if spec.ports.len() > MAX_PORTS {
        return Err(Error::invalid(
            "spec.ports",
            format!("has {} entries; at most {MAX_PORTS}", spec.ports.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 || p.port > 65535 {
            return Err(Error::invalid(
                format!("spec.ports[{i}].port"),
                format!("{} is not a TCP port (1-65535)", p.port),
            ));
        }
        if !seen.insert(p.port) {
            return Err(Error::invalid(
                format!("spec.ports[{i}].port"),
                format!("{} is listed twice", p.port),
            ));
        }
        if p.name.len() > MAX_NAME_LEN {
            return Err(Error::invalid(
                format!("spec.ports[{i}].name"),
                format!("is {} bytes; at most {MAX_NAME_LEN}", p.name.len()),
            ));
        }
    }
    let readiness = spec.readiness.get_or_insert_with(Default::default);
    let probe_port = match &readiness.check {
        Some(readiness_probe::Check::TcpPort(p)) => Some(*p),
        Some(readiness_probe::Check::Http(h)) => Some(h.port),
        Some(readiness_probe::Check::Exec(e)) => {
            if e.argv.is_empty() {
                return Err(Error::invalid(
                    "spec.readiness.exec.argv",
                    "must not be empty",
                ));
            }
            strings("spec.readiness.exec.argv", &e.argv)?;
            None
        }
        None => None,
    };
    if let Some(port) = probe_port
        && !spec.ports.iter().any(|p| p.port == port)
    {
        return Err(Error::invalid(
            "spec.readiness",
            format!("probes port {port}, which is not listed in spec.ports"),
        ));
    }
    let ready_timeout = optional_duration("spec.readiness.timeout", readiness.timeout.as_ref())?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_READY_TIMEOUT);
    readiness.timeout = Some(hearth_sdk::time::duration(ready_timeout));
    let idle_timeout = optional_duration("spec.idle_timeout", spec.idle_timeout.as_ref())?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    spec.idle_timeout = Some(hearth_sdk::time::duration(idle_timeout));
    let idle_action = match IdleAction::try_from(spec.idle_action) {
        Ok(IdleAction::Unspecified) => IdleAction::Pause,
        Ok(a) => a,
        Err(_) => {
            return Err(Error::invalid(
                "spec.idle_action",
                format!("{} is not PAUSE, STOP or KEEP", spec.idle_action),
            ));
        }
    };
    spec.set_idle_action(idle_action);
    // Unset stays unset: the agent reads it as IF_NOT_PRESENT.
    if PullPolicy::try_from(spec.pull_policy).is_err() {
        return Err(Error::invalid(
            "spec.pull_policy",
            format!(
                "{} is not IF_NOT_PRESENT, ALWAYS or NEVER",
                spec.pull_policy
            ),
        ));
    }
    let max_lifetime = optional_duration("spec.max_lifetime", spec.max_lifetime.as_ref())?
        .filter(|d| !d.is_zero());
    if let Some(network) = &spec.network
        && Egress::try_from(network.egress).is_err()
    {
        return Err(Error::invalid(
            "spec.network.egress",
            format!("{} is not ALLOW or DENY", network.egress),
        ));
    }
    if let Some(restart) = spec.restart.as_mut() {
        match RestartMode::try_from(restart.mode) {
            Ok(RestartMode::Unspecified | RestartMode::Never) => {
                restart.set_mode(RestartMode::Never);
                restart.max_restarts = 0;
            }
            Ok(RestartMode::OnFailure) => {
                if restart.max_restarts > MAX_RESTARTS {
                    return Err(Error::invalid(
                        "spec.restart.max_restarts",
                        format!(
                            "{} is more than {MAX_RESTARTS}; a workload that keeps failing \
                             needs fixing, not restarting",
                            restart.max_restarts
                        ),
                    ));
                }
                if restart.max_restarts == 0 {
                    restart.max_restarts = DEFAULT_MAX_RESTARTS;
                }
            }
            Err(_) => {
                return Err(Error::invalid(
                    "spec.restart.mode",
                    format!("{} is not NEVER or ON_FAILURE", restart.mode),
                ));
            }
        }
    }
    if let Some(placement) = &spec.placement {
        labels("spec.placement.node_selector", &placement.node_selector)?;
        if PlacementStrategy::try_from(placement.strategy).is_err() {
            return Err(Error::invalid(
                "spec.placement.strategy",
                format!("{} is not BINPACK or SPREAD", placement.strategy),
            ));
        }
        if placement.tolerations.len() > MAX_LABELS {
            return Err(Error::invalid(
                "spec.placement.tolerations",
                format!(
                    "has {} entries; at most {MAX_LABELS}",
                    placement.tolerations.len()
                ),
            ));
        }
        if let Some(i) = placement
            .tolerations
            .iter()
            .position(|t| t.is_empty() || t.len() > MAX_LABEL_LEN)
        {
            return Err(Error::invalid(
                format!("spec.placement.tolerations[{i}]"),
                format!("must be 1-{MAX_LABEL_LEN} characters"),
            ));
        }
    }
    if let Some(security) = &mut spec.security {
        security.add_capabilities =
            capabilities("spec.security.add_capabilities", &security.add_capabilities)?;
    }
    Ok(CheckedSpec {
        spec,
        idle_timeout,
        idle_action,
        max_lifetime,
        ready_timeout,
    })
}

/// The first 64 characters of `s`, so an error about a huge value stays readable.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// Checks one Linux capability name and returns it in the form Docker and the limits
/// config use: upper case, without the `CAP_` prefix (`cap_sys_ptrace` → `SYS_PTRACE`).
pub fn capability(field: &str, name: &str) -> Result<String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare.is_empty()
        || bare.len() > MAX_CAPABILITY_LEN
        || !bare
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::invalid(
            field,
            format!(
                "{:?} is not a capability name (1-{MAX_CAPABILITY_LEN} letters, digits and '_', \
                 such as \"SYS_PTRACE\")",
                truncated(name)
            ),
        ));
    }
    Ok(bare.to_owned())
}

/// Checks a list of capabilities to add; returns them normalised by [`capability`].
pub fn capabilities(field: &str, names: &[String]) -> Result<Vec<String>> {
    if names.len() > MAX_CAPABILITIES {
        return Err(Error::invalid(
            field,
            format!("has {} entries; at most {MAX_CAPABILITIES}", names.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let cap = capability(&field, name)?;
        if out.contains(&cap) {
            return Err(Error::invalid(field, format!("{cap:?} is listed twice")));
        }
        out.push(cap);
    }
    Ok(out)
}

/// Checks an Exec request before it is routed to the session's node.
pub fn exec_request(request: &ExecRequest) -> Result<()> {
    session_id("session_id", &request.session_id)?;
    if request.argv.first().is_none_or(String::is_empty) {
        return Err(Error::invalid("argv", "must name a command"));
    }
    strings("argv", &request.argv)?;
    env("env", &request.env)?;
    if request.stdin.len() > MAX_EXEC_STDIN {
        return Err(Error::invalid(
            "stdin",
            format!("is {} bytes; at most {MAX_EXEC_STDIN}", request.stdin.len()),
        ));
    }
    if request.workdir.len() > MAX_PATH_LEN || request.workdir.contains('\0') {
        return Err(Error::invalid(
            "workdir",
            format!("must be at most {MAX_PATH_LEN} bytes without NUL"),
        ));
    }
    optional_duration("timeout", request.timeout.as_ref())?;
    Ok(())
}

/// Checks an Invoke request before it is routed, filling in the defaults (method `GET`,
/// path `/`). Whether the session exposes the port is for the caller to check.
pub fn invoke_request(mut request: InvokeRequest) -> Result<InvokeRequest> {
    session_id("session_id", &request.session_id)?;
    if request.port == 0 || request.port > 65535 {
        return Err(Error::invalid(
            "port",
            format!("{} is not a TCP port", request.port),
        ));
    }
    if request.body.len() > MAX_INVOKE_BODY {
        return Err(Error::invalid(
            "body",
            format!("is {} bytes; at most {MAX_INVOKE_BODY}", request.body.len()),
        ));
    }
    if request.method.is_empty() {
        request.method = "GET".to_owned();
    }
    if request.method.len() > MAX_METHOD_LEN
        || !request.method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(Error::invalid(
            "method",
            format!("{:?} is not an HTTP method", truncated(&request.method)),
        ));
    }
    if request.path.is_empty() {
        request.path = "/".to_owned();
    }
    if !request.path.starts_with('/') {
        return Err(Error::invalid("path", "must start with '/'"));
    }
    if request.path.len() > MAX_PATH_LEN {
        return Err(Error::invalid(
            "path",
            format!("is {} bytes; at most {MAX_PATH_LEN}", request.path.len()),
        ));
    }
    if request
        .path
        .contains(|c: char| c.is_ascii_control() || c == ' ')
    {
        return Err(Error::invalid(
            "path",
            "must not contain spaces or control characters",
        ));
    }
    if request.headers.len() > MAX_HEADERS {
        return Err(Error::invalid(
            "headers",
            format!(
                "has {} entries; at most {MAX_HEADERS}",
                request.headers.len()
            ),
        ));
    }
    for (i, h) in request.headers.iter().enumerate() {
        // RFC 9110 token characters.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if h.name.is_empty() || h.name.len() > MAX_HEADER_NAME_LEN || !h.name.bytes().all(token) {
            return Err(Error::invalid(
                format!("headers[{i}].name"),
                format!(
                    "{:?} is not a header name (1-{MAX_HEADER_NAME_LEN} token characters)",
                    truncated(&h.name)
                ),
            ));
        }
        if h.value.len() > MAX_HEADER_VALUE_LEN
            || h.value
                .contains(|c: char| c.is_ascii_control() && c != '\t')
        {
            return Err(Error::invalid(
                format!("headers[{i}].value"),
                format!("must be at most {MAX_HEADER_VALUE_LEN} bytes without control characters"),
            ));
        }
    }
    optional_duration("timeout", request.timeout.as_ref())?;
    Ok(request)
}

/// Checks a session id: a ULID as the broker makes them.
pub fn session_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    ulid::Ulid::from_string(id)
        .map(|_| ())
        .map_err(|_| Error::invalid(field, format!("{:?} is not a session id", truncated(id))))
}

/// Label keys starting with this are the broker's own (such as [`POOL_LABEL`]); users may
/// not set them, so the broker's markers can be trusted.
pub const RESERVED_LABEL_PREFIX: &str = "hearth.";
/// The label an unclaimed warm-pool member carries: its template's name.
pub const POOL_LABEL: &str = "hearth.pool";

/// Checks user labels on a session.
pub fn session_labels(
    labels_in: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let checked = labels("labels", labels_in)?;
    if let Some(k) = checked
        .keys()
        .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
    {
        return Err(Error::invalid(
            format!("labels[{k}]"),
            format!("keys starting with {RESERVED_LABEL_PREFIX:?} are reserved for the broker"),
        ));
    }
    Ok(checked)
}

/// Longest template name (a DNS label).
pub const MAX_TEMPLATE_NAME_LEN: usize = 63;
/// Longest template description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Largest warm pool one template may ask for. Every member holds its GPUs, so a typo
/// such as 1000 would otherwise book the whole fleet.
pub const MAX_WARM_POOL: u32 = 64;

/// Checks a template name: 1-63 lowercase letters, digits and '-'.
pub fn template_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_TEMPLATE_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "is {} characters; at most {MAX_TEMPLATE_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(Error::invalid(
            field,
            format!("{name:?} contains {c:?}; use lowercase letters, digits and '-'"),
        ));
    }
    Ok(())
}

/// A template that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedTemplate {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The spec, checked exactly as CreateSession checks one, with defaults filled in.
    pub spec: CheckedSpec,
    /// READY, unclaimed sessions to keep.
    pub warm_pool: u32,
}

/// Checks the `template` field of CreateTemplate and UpdateTemplate. Errors name the
/// field under `template.` (`template.spec.image`). `tenant`, `pool_ready` and
/// `created_at` are ignored: the broker sets them.
pub fn template(t: Option<hearth_sdk::proto::v1::Template>) -> Result<CheckedTemplate> {
    let t = t.ok_or_else(|| Error::invalid("template", "is required"))?;
    template_name("template.name", &t.name)?;
    if t.description.len() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(
            "template.description",
            format!(
                "is {} bytes; at most {MAX_DESCRIPTION_LEN}",
                t.description.len()
            ),
        ));
    }
    if t.warm_pool > MAX_WARM_POOL {
        return Err(Error::invalid(
            "template.warm_pool",
            format!("{} is more than {MAX_WARM_POOL}", t.warm_pool),
        ));
    }
    let spec = session_spec(t.spec).map_err(|e| match e {
        Error::InvalidArgument { field, reason } => Error::InvalidArgument {
            field: format!("template.{field}"),
            reason: reason
                .replace("(or give a template)", "")
                .trim_end()
                .to_owned(),
        },
        other => other,
    })?;
    Ok(CheckedTemplate {
        name: t.name,
        description: t.description,
        spec,
        warm_pool: t.warm_pool,
    })
}

/// Checks an idempotency key.
pub fn request_id(id: &str) -> Result<()> {
    if id.len() > 128 {
        return Err(Error::invalid(
            "request_id",
            "must be at most 128 characters",
        ));
    }
    if id.contains(['/', '\0']) {
        return Err(Error::invalid("request_id", "must not contain '/' or NUL"));
    }
    Ok(())
}

/// Parses session-state filters.
pub fn session_states(field: &str, states: &[i32]) -> Result<Vec<SessionState>> {
    states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            SessionState::try_from(*s)
                .ok()
                .filter(|s| *s != SessionState::Unspecified)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("{field}[{i}]"),
                        format!("{s} is not a session state"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod spec_tests {
    use hearth_sdk::proto::v1::{GpuRequest, HttpProbe, PortSpec, ReadinessProbe};

    use super::*;

    fn good() -> SessionSpec {
        SessionSpec {
            image: "hearth-test-worker:latest".into(),
            ports: vec![PortSpec {
                port: 8080,
                name: "http".into(),
            }],
            readiness: Some(ReadinessProbe {
                check: Some(readiness_probe::Check::TcpPort(8080)),
                ..ReadinessProbe::default()
            }),
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            ..SessionSpec::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = session_spec(Some(good())).unwrap();
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.idle_action, IdleAction::Pause);
        assert_eq!(c.ready_timeout, DEFAULT_READY_TIMEOUT);
        assert_eq!(c.max_lifetime, None);
        assert_eq!(c.spec.idle_action(), IdleAction::Pause);
    }

    #[test]
    fn bad_specs_name_the_field() {
        type Breaker = fn(&mut SessionSpec);
        let cases: Vec<(Breaker, &str)> = vec![
            (|s| s.image.clear(), "spec.image"),
            (|s| s.gpus.as_mut().unwrap().count = 99, "spec.gpus.count"),
            (|s| s.ports[0].port = 70000, "spec.ports[0].port"),
            (
                |s| {
                    s.ports.push(PortSpec {
                        port: 8080,
                        name: String::new(),
                    })
                },
                "spec.ports[1].port",
            ),
            (
                |s| {
                    s.env.insert("A=B".into(), "x".into());
                },
                "spec.env",
            ),
            (|s| s.idle_action = 42, "spec.idle_action"),
            (
                |s| {
                    s.readiness.as_mut().unwrap().check =
                        Some(readiness_probe::Check::Http(HttpProbe {
                            port: 9,
                            path: "/".into(),
                        }))
                },
                "spec.readiness",
            ),
            (
                |s| {
                    s.idle_timeout = Some(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    })
                },
                "spec.idle_timeout",
            ),
        ];
        for (break_it, field) in cases {
            let mut s = good();
            break_it(&mut s);
            match session_spec(Some(s)) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error naming {field}, got {other:?}"),
            }
        }
        match session_spec(None) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "spec"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn template_names_follow_the_proto_rules() {
        for good in ["a", "llama-70b", "x1", &"a".repeat(63)] {
            assert!(template_name("name", good).is_ok(), "{good}");
        }
        for bad in ["", "Llama", "a_b", "a.b", "a/b", "é", &"a".repeat(64)] {
            match template_name("name", bad) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "name"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_templates_name_the_field() {
        use hearth_sdk::proto::v1::Template;
        let good_template = || Template {
            name: "llama".into(),
            spec: Some(good()),
            warm_pool: 2,
            ..Template::default()
        };
        let checked = template(Some(good_template())).unwrap();
        assert_eq!(checked.warm_pool, 2);
        assert_eq!(checked.spec.idle_action, IdleAction::Pause, "spec defaults");
        type Breaker = fn(&mut Template);
        let cases: Vec<(Breaker, &str)> = vec![
            (|t| t.name.clear(), "template.name"),
            (|t| t.name = "Big".into(), "template.name"),
            (|t| t.spec = None, "template.spec"),
            (
                |t| t.spec.as_mut().unwrap().image.clear(),
                "template.spec.image",
            ),
            (
                |t| t.spec.as_mut().unwrap().gpus.as_mut().unwrap().count = 99,
                "template.spec.gpus.count",
            ),
            (|t| t.warm_pool = 1000, "template.warm_pool"),
            (|t| t.description = "x".repeat(5000), "template.description"),
        ];
        for (break_it, field) in cases {
            let mut t = good_template();
            break_it(&mut t);
            match template(Some(t)) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error naming {field}, got {other:?}"),
            }
        }
        match template(None) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "template"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broker_label_keys_are_reserved() {
        let ok = [("team".to_owned(), "a".to_owned())].into();
        assert!(session_labels(&ok).is_ok());
        let spoof = [(POOL_LABEL.to_owned(), "x".to_owned())].into();
        match session_labels(&spoof) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "labels[hearth.pool]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_and_request_ids() {
        assert!(session_id("id", &ulid::Ulid::new().to_string()).is_ok());
        assert!(session_id("id", "nope").is_err());
        assert!(request_id("retry-1").is_ok());
        assert!(request_id("a/b").is_err());
        assert!(request_id(&"x".repeat(200)).is_err());
    }
}

#[cfg(test)]
mod limit_tests {
    use std::collections::HashMap;

    use hearth_sdk::proto::v1::{
        ExecProbe, GpuRequest, Header, PlacementSpec, PortSpec, ReadinessProbe, SecuritySpec,
    };

    use super::*;

    fn many(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("a{i}")).collect()
    }

    fn map(n: usize) -> HashMap<String, String> {
        (0..n).map(|i| (format!("K{i}"), "v".to_owned())).collect()
    }

    fn big(n: usize) -> String {
        "x".repeat(n)
    }

    fn spec() -> SessionSpec {
        SessionSpec {
            image: "hearth-worker:1".into(),
            ..SessionSpec::default()
        }
    }

    fn exec() -> ExecRequest {
        ExecRequest {
            session_id: ulid::Ulid::new().to_string(),
            argv: vec!["true".into()],
            ..ExecRequest::default()
        }
    }

    fn invoke() -> InvokeRequest {
        InvokeRequest {
            session_id: ulid::Ulid::new().to_string(),
            port: 8080,
            ..InvokeRequest::default()
        }
    }

    fn expect_invalid(what: &str, result: Result<()>, field: &str, fragment: &str) {
        match result {
            Err(e @ Error::InvalidArgument { .. }) => {
                let Error::InvalidArgument { field: f, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(f, field, "{what}: {e}");
                assert!(e.to_string().contains(fragment), "{what}: {e}");
            }
            other => panic!("{what}: expected an error naming {field}, got {other:?}"),
        }
    }

    /// Every count and size limit on a session spec: the largest allowed value passes, one
    /// more fails naming the field and the limit.
    #[test]
    fn spec_limits() {
        type Setter = fn(&mut SessionSpec, usize);
        let cases: Vec<(&str, Setter, usize, &str, &str)> = vec![
            (
                "image length",
                |s, n| s.image = big(n),
                MAX_IMAGE_LEN,
                "spec.image",
                "at most 1024",
            ),
            (
                "command entries",
                |s, n| s.command = many(n),
                MAX_LIST_ENTRIES,
                "spec.command",
                "at most 256",
            ),
            (
                "command argument size",
                |s, n| s.command = vec![big(n)],
                MAX_VALUE_LEN,
                "spec.command[0]",
                "32768 bytes",
            ),
            (
                "env entries",
                |s, n| s.env = map(n),
                MAX_LIST_ENTRIES,
                "spec.env",
                "at most 256",
            ),
            (
                "env name size",
                |s, n| s.env = [(big(n), String::new())].into(),
                MAX_ENV_NAME_LEN,
                "spec.env",
                "1-1024 bytes",
            ),
            (
                "env value size",
                |s, n| s.env = [("K".to_owned(), big(n))].into(),
                MAX_VALUE_LEN,
                "spec.env[K]",
                "at most 32768 bytes",
            ),
            (
                "gpus",
                |s, n| {
                    s.gpus = Some(GpuRequest {
                        count: n as u32,
                        ..GpuRequest::default()
                    })
                },
                MAX_GPUS_PER_SESSION as usize,
                "spec.gpus.count",
                "64 GPUs",
            ),
            (
                "gpu model size",
                |s, n| {
                    s.gpus = Some(GpuRequest {
                        model: big(n),
                        ..GpuRequest::default()
                    })
                },
                MAX_NAME_LEN,
                "spec.gpus.model",
                "at most 253",
            ),
            (
                "ports",
                |s, n| {
                    s.ports = (1..=n as u32)
                        .map(|port| PortSpec {
                            port,
                            name: String::new(),
                        })
                        .collect()
                },
                MAX_PORTS,
                "spec.ports",
                "at most 64",
            ),
            (
                "port name size",
                |s, n| {
                    s.ports = vec![PortSpec {
                        port: 80,
                        name: big(n),
                    }]
                },
                MAX_NAME_LEN,
                "spec.ports[0].name",
                "at most 253",
            ),
            (
                "exec probe argv",
                |s, n| {
                    s.readiness = Some(ReadinessProbe {
                        check: Some(readiness_probe::Check::Exec(ExecProbe { argv: many(n) })),
                        ..ReadinessProbe::default()
                    })
                },
                MAX_LIST_ENTRIES,
                "spec.readiness.exec.argv",
                "at most 256",
            ),
            (
                "node selector entries",
                |s, n| {
                    s.placement = Some(PlacementSpec {
                        node_selector: map(n),
                        ..PlacementSpec::default()
                    })
                },
                MAX_LABELS,
                "spec.placement.node_selector",
                "at most 64",
            ),
            (
                "node selector value size",
                |s, n| {
                    s.placement = Some(PlacementSpec {
                        node_selector: [("k".to_owned(), big(n))].into(),
                        ..PlacementSpec::default()
                    })
                },
                MAX_LABEL_LEN,
                "spec.placement.node_selector[k]",
                "at most 253",
            ),
            (
                "tolerations",
                |s, n| {
                    s.placement = Some(PlacementSpec {
                        tolerations: many(n),
                        ..PlacementSpec::default()
                    })
                },
                MAX_LABELS,
                "spec.placement.tolerations",
                "at most 64",
            ),
            (
                "toleration size",
                |s, n| {
                    s.placement = Some(PlacementSpec {
                        tolerations: vec![big(n)],
                        ..PlacementSpec::default()
                    })
                },
                MAX_LABEL_LEN,
                "spec.placement.tolerations[0]",
                "1-253",
            ),
            (
                "capabilities",
                |s, n| {
                    s.security = Some(SecuritySpec {
                        add_capabilities: (0..n).map(|i| format!("C{i}")).collect(),
                    })
                },
                MAX_CAPABILITIES,
                "spec.security.add_capabilities",
                "at most 64",
            ),
            (
                "capability size",
                |s, n| {
                    s.security = Some(SecuritySpec {
                        add_capabilities: vec!["C".repeat(n)],
                    })
                },
                MAX_CAPABILITY_LEN,
                "spec.security.add_capabilities[0]",
                "1-32",
            ),
        ];
        for (what, set, limit, field, fragment) in cases {
            let mut s = spec();
            set(&mut s, limit);
            if let Err(e) = session_spec(Some(s)) {
                panic!("{what}: {limit} should be allowed: {e}");
            }
            let mut s = spec();
            set(&mut s, limit + 1);
            expect_invalid(what, session_spec(Some(s)).map(|_| ()), field, fragment);
        }
    }

    /// Labels on a session: count, key and value sizes.
    #[test]
    fn label_limits() {
        type Make = fn(usize) -> HashMap<String, String>;
        let cases: Vec<(&str, Make, usize, &str, &str)> = vec![
            ("label entries", map, MAX_LABELS, "labels", "at most 64"),
            (
                "label key size",
                |n| [(big(n), String::new())].into(),
                MAX_LABEL_LEN,
                "labels",
                "1-253",
            ),
            (
                "label value size",
                |n| [("k".to_owned(), big(n))].into(),
                MAX_LABEL_LEN,
                "labels[k]",
                "at most 253",
            ),
        ];
        for (what, make, limit, field, fragment) in cases {
            assert!(session_labels(&make(limit)).is_ok(), "{what}");
            expect_invalid(
                what,
                session_labels(&make(limit + 1)).map(|_| ()),
                field,
                fragment,
            );
        }
    }

    /// Exec and Invoke: every count and size limit.
    #[test]
    fn turn_limits() {
        type ExecSetter = fn(&mut ExecRequest, usize);
        let cases: Vec<(&str, ExecSetter, usize, &str, &str)> = vec![
            (
                "argv entries",
                |r, n| r.argv = many(n),
                MAX_LIST_ENTRIES,
                "argv",
                "at most 256",
            ),
            (
                "argument size",
                |r, n| r.argv = vec![big(n)],
                MAX_VALUE_LEN,
                "argv[0]",
                "32768 bytes",
            ),
            (
                "env entries",
                |r, n| r.env = map(n),
                MAX_LIST_ENTRIES,
                "env",
                "at most 256",
            ),
            (
                "env value size",
                |r, n| r.env = [("K".to_owned(), big(n))].into(),
                MAX_VALUE_LEN,
                "env[K]",
                "32768",
            ),
            (
                "stdin size",
                |r, n| r.stdin = vec![0; n],
                MAX_EXEC_STDIN,
                "stdin",
                "at most 4194304",
            ),
            (
                "workdir size",
                |r, n| r.workdir = format!("/{}", big(n - 1)),
                MAX_PATH_LEN,
                "workdir",
                "at most 8192",
            ),
        ];
        for (what, set, limit, field, fragment) in cases {
            let mut r = exec();
            set(&mut r, limit);
            if let Err(e) = exec_request(&r) {
                panic!("{what}: {limit} should be allowed: {e}");
            }
            let mut r = exec();
            set(&mut r, limit + 1);
            expect_invalid(what, exec_request(&r), field, fragment);
        }

        type InvokeSetter = fn(&mut InvokeRequest, usize);
        let cases: Vec<(&str, InvokeSetter, usize, &str, &str)> = vec![
            (
                "body size",
                |r, n| r.body = vec![0; n],
                MAX_INVOKE_BODY,
                "body",
                "at most 4194304",
            ),
            (
                "path size",
                |r, n| r.path = format!("/{}", big(n - 1)),
                MAX_PATH_LEN,
                "path",
                "at most 8192",
            ),
            (
                "method size",
                |r, n| r.method = "G".repeat(n),
                MAX_METHOD_LEN,
                "method",
                "not an HTTP method",
            ),
            (
                "headers",
                |r, n| {
                    r.headers = (0..n)
                        .map(|i| Header {
                            name: format!("x-{i}"),
                            value: "v".into(),
                        })
                        .collect()
                },
                MAX_HEADERS,
                "headers",
                "at most 128",
            ),
            (
                "header name size",
                |r, n| {
                    r.headers = vec![Header {
                        name: big(n),
                        value: String::new(),
                    }]
                },
                MAX_HEADER_NAME_LEN,
                "headers[0].name",
                "1-256",
            ),
            (
                "header value size",
                |r, n| {
                    r.headers = vec![Header {
                        name: "x".into(),
                        value: big(n),
                    }]
                },
                MAX_HEADER_VALUE_LEN,
                "headers[0].value",
                "at most 8192",
            ),
        ];
        for (what, set, limit, field, fragment) in cases {
            let mut r = invoke();
            set(&mut r, limit);
            if let Err(e) = invoke_request(r) {
                panic!("{what}: {limit} should be allowed: {e}");
            }
            let mut r = invoke();
            set(&mut r, limit + 1);
            expect_invalid(what, invoke_request(r).map(|_| ()), field, fragment);
        }
    }

    #[test]
    fn invoke_defaults_and_capability_names() {
        let r = invoke_request(invoke()).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"));
        assert_eq!(
            capability("c", "cap_sys_ptrace").unwrap(),
            "SYS_PTRACE",
            "normalised as Docker writes it"
        );
        assert!(capability("c", "SYS PTRACE").is_err());
        assert!(capability("c", "CAP_").is_err());
        let mut s = spec();
        s.security = Some(SecuritySpec {
            add_capabilities: vec!["SYS_PTRACE".into(), "cap_sys_ptrace".into()],
        });
        expect_invalid(
            "duplicate capability",
            session_spec(Some(s)).map(|_| ()),
            "spec.security.add_capabilities[1]",
            "listed twice",
        );
    }
}
