//! Choosing a node and GPUs for a session (DESIGN section 6).
//!
//! Filters first: the node is READY, schedulable and not draining; it carries every
//! label of the session's node selector; the session tolerates each of its taints; and it
//! has enough free, healthy GPUs of the wanted model and memory. The nodes left are then
//! scored: bin-pack (the default) fills the busiest node that fits, which keeps whole
//! hosts free for large sessions; spread prefers the emptiest. Ties go to the node whose
//! chosen GPUs have the most free VRAM by the latest telemetry, then to the lower id.
//! Among nodes the strategy scores equal (the same GPUs free after placing), one that
//! already holds the session's image wins over one that would have to pull it: a pull of
//! a multi-GB image is most of a cold start.
//! A pure function over a snapshot, so it is cheap to test and to retry when a
//! transaction loses a race.

use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet},
};

use hearth_sdk::proto::v1::{
    Gpu, GpuRequest, Node, NodeState, NodeTelemetry, PlacementSpec, PlacementStrategy,
};
use serde::Deserialize;

/// How the nodes that pass the filters are scored.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fill the busiest node that fits.
    #[default]
    Binpack,
    /// Prefer the emptiest node that fits.
    Spread,
}

impl Strategy {
    /// The request's strategy, or `default` when it leaves the choice to the cluster.
    pub fn for_request(default: Strategy, placement: Option<&PlacementSpec>) -> Strategy {
        match placement.map(PlacementSpec::strategy) {
            Some(PlacementStrategy::Binpack) => Strategy::Binpack,
            Some(PlacementStrategy::Spread) => Strategy::Spread,
            Some(PlacementStrategy::Unspecified) | None => default,
        }
    }
}

/// XID codes after which a GPU gets no new sessions: it fell off the bus (79), had a
/// double-bit or uncontained ECC error (48, 95), needs a row remap (63, 64), or its GSP
/// firmware failed (119, 120).
pub const FATAL_XIDS: [u64; 7] = [48, 63, 64, 79, 95, 119, 120];

/// Where a session goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The node.
    pub node_id: String,
    /// The GPUs, by UUID, in index order.
    pub gpu_uuids: Vec<String>,
    /// The node already holds the session's image.
    pub holds_image: bool,
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

/// A node as placement reads it: its record and its latest telemetry, borrowed from the
/// registry so that a placement over a thousand nodes copies none of them.
#[derive(Clone, Copy, Debug)]
pub struct NodeRef<'a> {
    /// The node's record.
    pub node: &'a Node,
    /// Its latest telemetry, if any.
    pub telemetry: Option<&'a NodeTelemetry>,
    /// The images it holds, by canonical reference, if its agent reported any.
    pub images: Option<&'a HashSet<String>>,
}

impl<'a> NodeRef<'a> {
    /// A node whose record carries its telemetry (as `Admin` returns it).
    pub fn of(node: &'a Node) -> Self {
        Self {
            node,
            telemetry: node.telemetry.as_ref(),
            images: None,
        }
    }
}

/// A node that passed the filters, with the GPUs it would give.
struct Candidate<'a> {
    node: &'a Node,
    gpus: Vec<&'a Gpu>,
    /// Free GPUs of any model left on the node after this placement.
    free_after: usize,
    /// Free VRAM of the chosen GPUs, by the latest telemetry.
    free_vram: u64,
    /// The node holds the wanted image.
    holds_image: bool,
}

/// Picks a node and GPUs among `nodes`, with `allocated` taken; see [`place_among`].
#[cfg(test)]
pub fn place(
    nodes: &[Node],
    allocated: &Allocated,
    gpus: &GpuRequest,
    placement: Option<&PlacementSpec>,
    default: Strategy,
) -> Result<Placement, String> {
    let refs: Vec<NodeRef> = nodes.iter().map(NodeRef::of).collect();
    let taken = |node: &str, uuid: &str| allocated.get(node).is_some_and(|a| a.contains(uuid));
    place_among(&refs, &taken, gpus, placement, default, "")
}

/// Picks a node and GPUs, or explains why none fits (a message for RESOURCE_EXHAUSTED).
/// `taken(node, uuid)` says whether a GPU is allocated or reserved. `default` is the
/// cluster's strategy, used unless the request names one. `image` is the session's
/// image by canonical reference ([`hearth_sdk::image::canonical`]), or empty.
pub fn place_among(
    nodes: &[NodeRef<'_>],
    taken: &dyn Fn(&str, &str) -> bool,
    gpus: &GpuRequest,
    placement: Option<&PlacementSpec>,
    default: Strategy,
    image: &str,
) -> Result<Placement, String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut candidates = Vec::new();
    for node in nodes {
        match fit(*node, taken, gpus, placement) {
            Ok(mut candidate) => {
                candidate.holds_image =
                    !image.is_empty() && node.images.is_some_and(|held| held.contains(image));
                candidates.push(candidate);
            }
            Err(why) => reasons.push(format!("{}: {why}", node.node.id)),
        }
    }
    let best = match Strategy::for_request(default, placement) {
        Strategy::Binpack => candidates.into_iter().min_by_key(|c| {
            (
                c.free_after,
                Reverse(c.holds_image),
                Reverse(c.node.session_ids.len()),
                Reverse(c.free_vram),
                c.node.id.clone(),
            )
        }),
        Strategy::Spread => candidates.into_iter().min_by_key(|c| {
            (
                Reverse(c.free_after),
                Reverse(c.holds_image),
                c.node.session_ids.len(),
                Reverse(c.free_vram),
                c.node.id.clone(),
            )
        }),
    };
    if let Some(c) = best {
        let mut chosen = c.gpus;
        chosen.sort_by_key(|g| g.index);
        return Ok(Placement {
            node_id: c.node.id.clone(),
            gpu_uuids: chosen.into_iter().map(|g| g.uuid.clone()).collect(),
            holds_image: c.holds_image,
        });
    }
    reasons.sort();
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
        // A thousand nodes make a message nobody reads; the first few show the pattern.
        const SHOWN: usize = 8;
        let more = reasons.len().saturating_sub(SHOWN);
        reasons.truncate(SHOWN);
        let mut message = format!("no node can take {wanted}: {}", reasons.join("; "));
        if more > 0 {
            message += &format!("; and {more} more node(s)");
        }
        Err(message)
    }
}

/// Free memory of `gpu` by the node's latest telemetry, or its total without telemetry.
fn free_vram(telemetry: Option<&NodeTelemetry>, gpu: &Gpu) -> u64 {
    telemetry
        .and_then(|t| t.gpus.iter().find(|s| s.uuid == gpu.uuid))
        .map(|s| s.memory_total_bytes.saturating_sub(s.memory_used_bytes))
        .unwrap_or(gpu.memory_total_bytes)
}

/// True when the node's record excludes `gpu` after a fatal XID, or the latest telemetry
/// reports one (before the exclusion is written).
fn lost_to_xid(node: &Node, telemetry: Option<&NodeTelemetry>, gpu: &Gpu) -> bool {
    node.excluded_gpus.iter().any(|x| x.uuid == gpu.uuid)
        || telemetry.is_some_and(|t| {
            t.gpus
                .iter()
                .filter(|s| s.uuid == gpu.uuid)
                .flat_map(|s| &s.xid_events)
                .any(|x| FATAL_XIDS.contains(&x.code))
        })
}

fn fit<'a>(
    view: NodeRef<'a>,
    taken: &dyn Fn(&str, &str) -> bool,
    gpus: &GpuRequest,
    placement: Option<&PlacementSpec>,
) -> Result<Candidate<'a>, String> {
    let node = view.node;
    if node.state() != NodeState::Ready {
        return Err(node.state().as_str_name().to_owned());
    }
    // A drain also cordons; "draining" says more.
    if node.draining {
        return Err("draining".to_owned());
    }
    if !node.schedulable {
        return Err("cordoned".to_owned());
    }
    if let Some(p) = placement {
        let mut selector: Vec<_> = p.node_selector.iter().collect();
        selector.sort();
        for (k, v) in selector {
            if node.labels.get(k) != Some(v) {
                return Err(format!("label {k}={v} missing"));
            }
        }
    }
    let tolerated = |taint: &String| placement.is_some_and(|p| p.tolerations.contains(taint));
    if let Some(taint) = node.taints.iter().find(|t| !tolerated(t)) {
        return Err(format!("taint {taint} not tolerated"));
    }
    let free: Vec<&Gpu> = node
        .gpus
        .iter()
        .filter(|g| !taken(&node.id, &g.uuid))
        .filter(|g| !lost_to_xid(node, view.telemetry, g))
        .collect();
    let mut matching: Vec<(&Gpu, u64)> = free
        .iter()
        .filter(|g| glob_match(&gpus.model, &g.name))
        .filter(|g| g.memory_total_bytes >= gpus.min_memory_bytes)
        .map(|g| (*g, free_vram(view.telemetry, g)))
        .collect();
    if (matching.len() as u32) < gpus.count {
        return Err(format!("{} matching free GPU(s)", matching.len()));
    }
    // The emptiest GPUs by VRAM first, then by index.
    matching.sort_by_key(|(g, vram)| (Reverse(*vram), g.index));
    matching.truncate(gpus.count as usize);
    Ok(Candidate {
        node,
        free_after: free.len() - matching.len(),
        free_vram: matching.iter().map(|(_, vram)| vram).sum(),
        holds_image: false,
        gpus: matching.into_iter().map(|(g, _)| g).collect(),
    })
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::{GpuTelemetry, NodeTelemetry, XidEvent};

    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, gpus: usize, model: &str) -> Node {
        let mut n = Node {
            id: id.into(),
            schedulable: true,
            gpus: (0..gpus)
                .map(|i| Gpu {
                    uuid: format!("GPU-{id}-{i}"),
                    index: i as u32,
                    name: model.into(),
                    memory_total_bytes: 80 * GIB,
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

    /// Marks `n` GPUs of `node` allocated (from index 0).
    fn allocate(allocated: &mut Allocated, node: &Node, n: usize) {
        let set = allocated.entry(node.id.clone()).or_default();
        set.extend(node.gpus.iter().take(n).map(|g| g.uuid.clone()));
    }

    /// Telemetry with `used` bytes of memory in use on GPU `index`, and `xid` if any.
    fn sample(node: &mut Node, index: usize, used: u64, xid: Option<u64>) {
        let gpu = node.gpus[index].clone();
        let telemetry = node.telemetry.get_or_insert_with(NodeTelemetry::default);
        telemetry.gpus.push(GpuTelemetry {
            uuid: gpu.uuid,
            memory_used_bytes: used,
            memory_total_bytes: gpu.memory_total_bytes,
            xid_events: xid
                .map(|code| XidEvent { code, time: None })
                .into_iter()
                .collect(),
            ..GpuTelemetry::default()
        });
    }

    fn strategy(s: PlacementStrategy) -> PlacementSpec {
        let mut p = PlacementSpec::default();
        p.set_strategy(s);
        p
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

    /// Every filter, one row each: a node that only that filter rules out, the request,
    /// and the reason the error gives for it. Each row is checked twice: alone, the
    /// placement fails naming the reason; beside a good node, the good node is chosen.
    #[test]
    fn every_filter_rules_out_its_node_and_says_why() {
        type Tweak = fn(&mut Node);
        let h100 = |count| GpuRequest {
            count,
            model: "H100*".into(),
            ..GpuRequest::default()
        };
        let rows: Vec<(&str, Tweak, GpuRequest, Option<PlacementSpec>, &str)> = vec![
            (
                "suspect",
                |n| n.set_state(NodeState::Suspect),
                want(1),
                None,
                "NODE_STATE_SUSPECT",
            ),
            (
                "disconnected",
                |n| n.set_state(NodeState::Disconnected),
                want(1),
                None,
                "NODE_STATE_DISCONNECTED",
            ),
            (
                "down",
                |n| n.set_state(NodeState::Down),
                want(1),
                None,
                "NODE_STATE_DOWN",
            ),
            (
                "cordoned",
                |n| n.schedulable = false,
                want(1),
                None,
                "cordoned",
            ),
            ("draining", |n| n.draining = true, want(1), None, "draining"),
            (
                "tainted",
                |n| n.taints = vec!["dedicated".into()],
                want(1),
                None,
                "taint dedicated not tolerated",
            ),
            (
                "unlabelled",
                |_| {},
                want(1),
                Some(PlacementSpec {
                    node_selector: [("zone".to_owned(), "eu".to_owned())].into(),
                    ..PlacementSpec::default()
                }),
                "label zone=eu missing",
            ),
            (
                "model",
                |n| n.gpus.iter_mut().for_each(|g| g.name = "A100".into()),
                h100(1),
                None,
                "0 matching free GPU(s)",
            ),
            (
                "memory",
                |n| {
                    n.gpus
                        .iter_mut()
                        .for_each(|g| g.memory_total_bytes = 40 * GIB)
                },
                GpuRequest {
                    count: 1,
                    min_memory_bytes: 80 * GIB,
                    ..GpuRequest::default()
                },
                None,
                "0 matching free GPU(s)",
            ),
            (
                "count",
                |n| n.gpus.truncate(1),
                want(2),
                None,
                "1 matching free GPU(s)",
            ),
            (
                "xid",
                |n| {
                    for i in 0..n.gpus.len() {
                        sample(n, i, 0, Some(79));
                    }
                },
                want(1),
                None,
                "0 matching free GPU(s)",
            ),
        ];
        for (name, tweak, request, spec, reason) in rows {
            let mut bad = node("bad", 2, "H100 80GB");
            tweak(&mut bad);
            // The good node carries the label so that the selector row isolates `bad`.
            let mut good = node("good", 2, "H100 80GB");
            good.labels.insert("zone".into(), "eu".into());

            let alone = place(
                std::slice::from_ref(&bad),
                &Allocated::new(),
                &request,
                spec.as_ref(),
                Strategy::Binpack,
            )
            .unwrap_err();
            assert!(alone.contains(&format!("bad: {reason}")), "{name}: {alone}");

            for s in [Strategy::Binpack, Strategy::Spread] {
                let p = place(
                    &[bad.clone(), good.clone()],
                    &Allocated::new(),
                    &request,
                    spec.as_ref(),
                    s,
                )
                .unwrap_or_else(|e| panic!("{name} {s:?}: {e}"));
                assert_eq!(p.node_id, "good", "{name} {s:?}");
            }
        }
    }

    #[test]
    fn tolerations_and_selectors_admit_their_nodes() {
        let mut tainted = node("a", 1, "H100");
        tainted.taints = vec!["dedicated".into()];
        let mut labelled = node("b", 1, "H100");
        labelled.labels.insert("zone".into(), "eu".into());
        let nodes = [tainted, labelled];
        let tolerate = PlacementSpec {
            tolerations: vec!["dedicated".into()],
            ..PlacementSpec::default()
        };
        // Without the toleration only b fits; with it, both do and id breaks the tie.
        let p = |spec: Option<&PlacementSpec>| {
            place(&nodes, &Allocated::new(), &want(1), spec, Strategy::Binpack).map(|p| p.node_id)
        };
        assert_eq!(p(None).unwrap(), "b");
        assert_eq!(p(Some(&tolerate)).unwrap(), "a");
    }

    #[test]
    fn allocated_gpus_are_skipped_and_exhaustion_is_explained() {
        let nodes = vec![node("a", 2, "H100")];
        let mut allocated = Allocated::new();
        allocate(&mut allocated, &nodes[0], 1);
        let p = place(&nodes, &allocated, &want(1), None, Strategy::Binpack).unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-1"]);
        allocate(&mut allocated, &nodes[0], 2);
        let err = place(&nodes, &allocated, &want(1), None, Strategy::Binpack).unwrap_err();
        assert!(err.contains("a: 0 matching free GPU(s)"), "{err}");
        // A CPU-only session still fits.
        assert_eq!(
            place(&nodes, &allocated, &want(0), None, Strategy::Binpack)
                .unwrap()
                .gpu_uuids,
            Vec::<String>::new()
        );
        assert!(
            place(&[], &Allocated::new(), &want(0), None, Strategy::Binpack)
                .unwrap_err()
                .contains("no nodes are registered")
        );
    }

    #[test]
    fn a_long_refusal_is_cut_short() {
        let nodes: Vec<Node> = (0..20)
            .map(|i| node(&format!("n{i:02}"), 1, "H100"))
            .collect();
        let err = place(&nodes, &Allocated::new(), &want(2), None, Strategy::Binpack).unwrap_err();
        assert!(err.contains("n00: 1 matching free GPU(s)"), "{err}");
        assert!(err.ends_with("and 12 more node(s)"), "{err}");
    }

    /// Both scoring modes over the same fleet: an 8-GPU node with 6 in use, an 8-GPU node
    /// with 2 in use, and an empty 8-GPU node.
    #[test]
    fn binpack_fills_the_busiest_node_and_spread_the_emptiest() {
        let nodes = vec![
            node("empty", 8, "H100"),
            node("half", 8, "H100"),
            node("full", 8, "H100"),
        ];
        let mut allocated = Allocated::new();
        allocate(&mut allocated, &nodes[1], 2);
        allocate(&mut allocated, &nodes[2], 6);
        let rows = [
            // (cluster default, request's strategy, GPUs, chosen node)
            (Strategy::Binpack, None, 1, "full"),
            (Strategy::Binpack, None, 2, "full"),
            // Three do not fit on "full" any more: the next busiest.
            (Strategy::Binpack, None, 3, "half"),
            // Eight need a whole host, which bin-packing kept free.
            (Strategy::Binpack, None, 8, "empty"),
            (Strategy::Spread, None, 1, "empty"),
            (Strategy::Spread, None, 8, "empty"),
            // The request overrides the cluster's default, both ways.
            (
                Strategy::Binpack,
                Some(PlacementStrategy::Spread),
                1,
                "empty",
            ),
            (
                Strategy::Spread,
                Some(PlacementStrategy::Binpack),
                1,
                "full",
            ),
            (
                Strategy::Spread,
                Some(PlacementStrategy::Unspecified),
                1,
                "empty",
            ),
            // CPU-only sessions are scored the same way.
            (Strategy::Binpack, None, 0, "full"),
            (Strategy::Spread, None, 0, "empty"),
        ];
        for (default, request, count, expect) in rows {
            let spec = request.map(strategy);
            let p = place(&nodes, &allocated, &want(count), spec.as_ref(), default).unwrap();
            assert_eq!(p.node_id, expect, "{default:?} {request:?} {count} GPU(s)");
            assert_eq!(p.gpu_uuids.len(), count as usize);
        }
    }

    /// Bin-packing many one-GPU sessions in a row fills one host before the next.
    #[test]
    fn binpack_in_sequence_fills_hosts_one_by_one() {
        let nodes = vec![node("a", 4, "H100"), node("b", 4, "H100")];
        let mut allocated = Allocated::new();
        let mut order = Vec::new();
        for _ in 0..8 {
            let p = place(&nodes, &allocated, &want(1), None, Strategy::Binpack).unwrap();
            allocated
                .entry(p.node_id.clone())
                .or_default()
                .extend(p.gpu_uuids);
            order.push(p.node_id);
        }
        assert_eq!(order, ["a", "a", "a", "a", "b", "b", "b", "b"]);

        let mut allocated = Allocated::new();
        let mut order = Vec::new();
        for _ in 0..4 {
            let p = place(&nodes, &allocated, &want(1), None, Strategy::Spread).unwrap();
            allocated
                .entry(p.node_id.clone())
                .or_default()
                .extend(p.gpu_uuids);
            order.push(p.node_id);
        }
        assert_eq!(order, ["a", "b", "a", "b"]);
    }

    /// Equal scores go to the node whose chosen GPUs have the most free VRAM, and within
    /// a node the emptiest GPUs are chosen.
    #[test]
    fn ties_break_on_free_vram_from_telemetry() {
        let mut busy = node("a", 2, "H100");
        sample(&mut busy, 0, 70 * GIB, None);
        sample(&mut busy, 1, 60 * GIB, None);
        let mut idle = node("b", 2, "H100");
        sample(&mut idle, 0, 10 * GIB, None);
        sample(&mut idle, 1, 50 * GIB, None);
        let nodes = [busy, idle];
        for s in [Strategy::Binpack, Strategy::Spread] {
            let p = place(&nodes, &Allocated::new(), &want(1), None, s).unwrap();
            assert_eq!(p.node_id, "b", "{s:?}");
            assert_eq!(p.gpu_uuids, vec!["GPU-b-0"], "{s:?}");
        }
        // Within a node: GPU 1 has more free memory than GPU 0 on "a".
        let p = place(
            &nodes[..1],
            &Allocated::new(),
            &want(1),
            None,
            Strategy::Binpack,
        )
        .unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-1"]);
        // Several GPUs come back in index order whatever the VRAM order.
        let p = place(
            &nodes[..1],
            &Allocated::new(),
            &want(2),
            None,
            Strategy::Binpack,
        )
        .unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-0", "GPU-a-1"]);
    }

    /// Among nodes the strategy scores equal, the one holding the image wins, even over
    /// more free VRAM; it never outweighs the strategy itself.
    #[test]
    fn a_node_holding_the_image_wins_among_equals() {
        let image = hearth_sdk::image::canonical("127.0.0.1:5000/model:v1");
        let held: HashSet<String> = [image.clone()].into();
        let other: HashSet<String> = [hearth_sdk::image::canonical("model:v2")].into();
        let mut roomy = node("a", 2, "H100");
        sample(&mut roomy, 0, 0, None);
        sample(&mut roomy, 1, 0, None);
        let mut holder = node("b", 2, "H100");
        sample(&mut holder, 0, 40 * GIB, None);
        sample(&mut holder, 1, 40 * GIB, None);
        let spare = node("c", 4, "H100");
        let place_with = |nodes: &[&Node], holding: &[Option<&HashSet<String>>], s, image: &str| {
            let refs: Vec<NodeRef> = nodes
                .iter()
                .zip(holding)
                .map(|(n, images)| NodeRef {
                    node: n,
                    telemetry: n.telemetry.as_ref(),
                    images: *images,
                })
                .collect();
            place_among(&refs, &|_, _| false, &want(1), None, s, image).unwrap()
        };
        for s in [Strategy::Binpack, Strategy::Spread] {
            let p = place_with(&[&roomy, &holder], &[Some(&other), Some(&held)], s, &image);
            assert_eq!((p.node_id.as_str(), p.holds_image), ("b", true), "{s:?}");
            // No image wanted, or nobody holds it: free VRAM decides as before.
            let p = place_with(&[&roomy, &holder], &[Some(&other), Some(&held)], s, "");
            assert_eq!((p.node_id.as_str(), p.holds_image), ("a", false), "{s:?}");
            let p = place_with(&[&roomy, &holder], &[None, Some(&other)], s, &image);
            assert_eq!((p.node_id.as_str(), p.holds_image), ("a", false), "{s:?}");
        }
        // The strategy comes first: spread takes the emptier node without the image.
        let p = place_with(
            &[&holder, &spare],
            &[Some(&held), None],
            Strategy::Spread,
            &image,
        );
        assert_eq!((p.node_id.as_str(), p.holds_image), ("c", false));
        let p = place_with(
            &[&holder, &spare],
            &[Some(&held), None],
            Strategy::Binpack,
            &image,
        );
        assert_eq!((p.node_id.as_str(), p.holds_image), ("b", true));
    }

    #[test]
    fn a_gpu_with_a_fatal_xid_is_skipped_and_others_are_not() {
        let mut n = node("a", 2, "H100");
        sample(&mut n, 0, 0, Some(79));
        sample(&mut n, 1, 0, Some(31)); // a page fault in one app: not fatal
        let p = place(&[n], &Allocated::new(), &want(1), None, Strategy::Binpack).unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-1"]);
    }

    #[test]
    fn a_gpu_excluded_in_the_record_stays_out_after_clean_telemetry() {
        let mut n = node("a", 2, "H100");
        sample(&mut n, 0, 0, None);
        sample(&mut n, 1, 0, None);
        n.excluded_gpus.push(hearth_sdk::proto::v1::GpuExclusion {
            uuid: "GPU-a-0".into(),
            xid: 79,
            at: None,
        });
        let p = place(
            &[n.clone()],
            &Allocated::new(),
            &want(1),
            None,
            Strategy::Binpack,
        )
        .unwrap();
        assert_eq!(p.gpu_uuids, vec!["GPU-a-1"]);
        assert!(place(&[n], &Allocated::new(), &want(2), None, Strategy::Binpack).is_err());
    }

    #[test]
    fn strategy_reads_from_toml_and_the_request() {
        #[derive(Deserialize)]
        struct T {
            s: Strategy,
        }
        let t: T = toml::from_str("s = \"spread\"").unwrap();
        assert_eq!(t.s, Strategy::Spread);
        assert!(toml::from_str::<T>("s = \"random\"").is_err());
        assert_eq!(
            Strategy::for_request(Strategy::Spread, None),
            Strategy::Spread
        );
    }
}
