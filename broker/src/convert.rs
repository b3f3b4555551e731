//! The proto boundary: incoming messages are checked here, once, and turned into types
//! the rest of the broker can trust. Every error names the offending field.

use std::collections::{BTreeMap, HashSet};

use hearth_sdk::proto::v1::{Gpu, GpuSource, Hello, Node, NodeCapacity, NodeState};

use crate::error::{Error, Result};

/// Longest node id (a DNS name).
pub const MAX_NODE_ID_LEN: usize = 253;
/// Most GPUs one node may report.
pub const MAX_GPUS_PER_NODE: usize = 64;
/// Most labels or taints on a node.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 253;

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
                format!("key {k:?} must be 1-{MAX_LABEL_LEN} characters"),
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
    Ok(CheckedHello {
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
    })
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
