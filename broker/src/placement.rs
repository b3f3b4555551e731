//! Choosing a node and GPUs for a session (DESIGN section 6).
//!
//! Filters first: the node is READY, schedulable and not draining; it carries every
//! label of the session's node selector; the session tolerates each of its taints; and it
//! has enough free GPUs of the wanted model and memory. Among the nodes left this version
//! takes the first by id (first fit); scoring comes later. A pure function over a
//! snapshot, so it is cheap to test and to retry when a transaction loses a race.

use std::collections::{HashMap, HashSet};

use hearth_sdk::proto::v1::{GpuRequest, Node, NodeState, PlacementSpec};

/// Where a session goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The node.
    pub node_id: String,
    /// The GPUs, by UUID, in index order.
    pub gpu_uuids: Vec<String>,
}

/// GPUs already allocated, by node: node id → GPU UUIDs.
pub type Allocated = HashMap<String, HashSet<String>>;

/// Matches `name` against a glob with `*` wildcards (case-sensitive). Empty matches all.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// Picks a node and GPUs, or explains why none fits (a message for RESOURCE_EXHAUSTED).
pub fn place(
    nodes: &[Node],
    allocated: &Allocated,
    gpus: &GpuRequest,
    placement: Option<&PlacementSpec>,
) -> Result<Placement, String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for node in sorted {
        match fit(node, allocated.get(&node.id), gpus, placement) {
            Ok(gpu_uuids) => {
                return Ok(Placement {
                    node_id: node.id.clone(),
                    gpu_uuids,
                });
            }
            Err(why) => reasons.push(format!("{}: {why}", node.id)),
        }
    }
    let wanted = if gpus.count == 0 {
        "a CPU-only session".to_owned()
    } else {
        let mut w = format!("{} GPU(s)", gpus.count);
        if !gpus.model.is_empty() {
            w += &format!(" matching {:?}", gpus.model);
        }
        if gpus.min_memory_bytes > 0 {
            w += &format!(" with at least {} bytes each", gpus.min_memory_bytes);
        }
        w
    };
    if reasons.is_empty() {
        Err(format!(
            "no node can take {wanted}: no nodes are registered"
        ))
    } else {
        Err(format!("no node can take {wanted}: {}", reasons.join("; ")))
    }
}

fn fit(
    node: &Node,
    allocated: Option<&HashSet<String>>,
    gpus: &GpuRequest,
    placement: Option<&PlacementSpec>,
) -> Result<Vec<String>, String> {
    if node.state() != NodeState::Ready {
        return Err(node.state().as_str_name().to_owned());
    }
    if !node.schedulable {
        return Err("cordoned".to_owned());
    }
    if node.draining {
        return Err("draining".to_owned());
    }
    if let Some(p) = placement {
        for (k, v) in &p.node_selector {
            if node.labels.get(k) != Some(v) {
                return Err(format!("label {k}={v} missing"));
            }
        }
    }
    let tolerated = |taint: &String| placement.is_some_and(|p| p.tolerations.contains(taint));
    if let Some(taint) = node.taints.iter().find(|t| !tolerated(t)) {
        return Err(format!("taint {taint} not tolerated"));
    }
    let mut free: Vec<_> = node
        .gpus
        .iter()
        .filter(|g| allocated.is_none_or(|a| !a.contains(&g.uuid)))
        .filter(|g| glob_match(&gpus.model, &g.name))
        .filter(|g| g.memory_total_bytes >= gpus.min_memory_bytes)
        .collect();
    if (free.len() as u32) < gpus.count {
        return Err(format!("{} matching free GPU(s)", free.len()));
    }
    free.sort_by_key(|g| g.index);
    Ok(free
        .into_iter()
        .take(gpus.count as usize)
        .map(|g| g.uuid.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::Gpu;

    use super::*;

    fn node(id: &str, gpus: usize, model: &str) -> Node {
        let mut n = Node {
            id: id.into(),
            schedulable: true,
            gpus: (0..gpus)
                .map(|i| Gpu {
                    uuid: format!("GPU-{id}-{i}"),
                    index: i as u32,
                    name: model.into(),
                    memory_total_bytes: 80 << 30,
                    simulated: true,
                })
                .collect(),
            ..Node::default()
        };
        n.set_state(NodeState::Ready);
        n
    }

    fn want(count: u32) -> GpuRequest {
        GpuRequest {
            count,
            ..GpuRequest::default()
        }
    }

    #[test]
    fn globs() {
        for (p, n, m) in [
            ("", "anything", true),
            ("NVIDIA H100*", "NVIDIA H100 80GB HBM3", true),
            ("NVIDIA H100*", "NVIDIA A100", false),
            ("*H100*", "NVIDIA H100 80GB", true),
            ("*80GB", "Simulated H100 80GB", true),
            ("A*C", "ABBC", true),
            ("A*C", "ABBCD", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, n), m, "{p:?} vs {n:?}");
        }
    }

    #[test]
    fn filters() {
        let mut cordoned = node("a", 8, "H100");
        cordoned.schedulable = false;
        let mut suspect = node("b", 8, "H100");
        suspect.set_state(NodeState::Suspect);
        let mut draining = node("c", 8, "H100");
        draining.draining = true;
        let mut tainted = node("d", 8, "H100");
        tainted.taints = vec!["dedicated".into()];
        let small = node("e", 1, "H100");
        let other_model = node("f", 8, "A100");
        let good = node("g", 8, "H100");
        let nodes = vec![
            cordoned,
            suspect,
            draining,
            tainted,
            small,
            other_model,
            good,
        ];
        let request = GpuRequest {
            count: 2,
            model: "H100".into(),
            ..GpuRequest::default()
        };
        let p = place(&nodes, &Allocated::new(), &request, None).unwrap();
        assert_eq!(p.node_id, "g");
        assert_eq!(p.gpu_uuids, vec!["GPU-g-0", "GPU-g-1"]);

        let tolerate = PlacementSpec {
            tolerations: vec!["dedicated".into()],
            ..PlacementSpec::default()
        };
        assert_eq!(
            place(&nodes, &Allocated::new(), &request, Some(&tolerate))
                .unwrap()
                .node_id,
            "d"
        );
    }

    #[test]
    fn allocated_gpus_are_skipped_and_exhaustion_is_explained() {
        let nodes = vec![node("a", 2, "H100")];
        let mut allocated = Allocated::new();
        allocated
            .entry("a".into())
            .or_default()
            .insert("GPU-a-0".into());
        let p = place(&nodes, &allocated, &want(1), None).unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-1"]);
        allocated.get_mut("a").unwrap().insert("GPU-a-1".into());
        let err = place(&nodes, &allocated, &want(1), None).unwrap_err();
        assert!(err.contains("a: 0 matching free GPU(s)"), "{err}");
        // A CPU-only session still fits.
        assert_eq!(
            place(&nodes, &allocated, &want(0), None).unwrap().gpu_uuids,
            Vec::<String>::new()
        );
    }

    #[test]
    fn selector_and_memory() {
        let mut labelled = node("b", 1, "H100");
        labelled.labels.insert("zone".into(), "eu".into());
        let nodes = vec![node("a", 1, "H100"), labelled];
        let selector = PlacementSpec {
            node_selector: [("zone".to_owned(), "eu".to_owned())].into(),
            ..PlacementSpec::default()
        };
        assert_eq!(
            place(&nodes, &Allocated::new(), &want(1), Some(&selector))
                .unwrap()
                .node_id,
            "b"
        );
        let big = GpuRequest {
            count: 1,
            min_memory_bytes: 100 << 30,
            ..GpuRequest::default()
        };
        assert!(place(&nodes, &Allocated::new(), &big, None).is_err());
        assert!(
            place(&[], &Allocated::new(), &want(0), None)
                .unwrap_err()
                .contains("no nodes are registered")
        );
    }
}
