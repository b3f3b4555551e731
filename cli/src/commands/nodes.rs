//! `hearth nodes ...`: list, show, cordon, uncordon, drain.

use std::{
    collections::HashMap,
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use hearth_sdk::proto::v1::{
    AdminListSessionsRequest, CordonNodeRequest, DrainNodeRequest, GetNodeRequest, GpuSource,
    ListNodesRequest, ListNodesResponse, ListSessionsRequest, Node, Session, SessionState,
    UncordonNodeRequest,
};

use super::{Ctx, sessions::state_name, stderr};
use crate::{
    args::{DrainArgs, NodeArg, Nodes},
    error::{Result, Subject},
    parse::short_state,
    table::{self, Table},
};

/// How often `nodes drain` checks what is left.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// How long past its deadline a drain may take to stop its last sessions (the node has to
/// confirm each stop) before the CLI gives up waiting.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Runs one `nodes` subcommand.
pub async fn run(ctx: &Ctx, command: Nodes) -> Result<ExitCode> {
    match command {
        Nodes::Ls => list(ctx).await,
        Nodes::Get(NodeArg { id }) => get(ctx, &id).await,
        Nodes::Cordon(NodeArg { id }) => cordon(ctx, &id, true).await,
        Nodes::Uncordon(NodeArg { id }) => cordon(ctx, &id, false).await,
        Nodes::Drain(args) => drain(ctx, args).await,
    }
}

/// The states in which a session still holds its node.
const LIVE: [SessionState; 6] = [
    SessionState::Pending,
    SessionState::Placed,
    SessionState::Starting,
    SessionState::Ready,
    SessionState::Paused,
    SessionState::Stopping,
];

/// Live sessions of every tenant, on one node or (`node` empty) all, every page.
async fn live_sessions(ctx: &Ctx, node: &str) -> Result<Vec<Session>> {
    let mut sessions = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = AdminListSessionsRequest {
            filter: Some(ListSessionsRequest {
                states: LIVE.iter().map(|s| *s as i32).collect(),
                page_token: page_token.clone(),
                page_size: 1000,
                ..Default::default()
            }),
            tenant: String::new(),
            node_id: node.to_owned(),
        };
        let page = ctx
            .call("Admin/ListSessions", Subject::None, |c| {
                let request = request.clone();
                async move { c.admin().list_sessions(request).await }
            })
            .await?;
        sessions.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return Ok(sessions);
        }
        page_token = page.next_page_token;
    }
}

/// Per node: live sessions and the GPUs they hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Live sessions.
    pub sessions: usize,
    /// GPUs they hold.
    pub gpus: usize,
}

fn usage_by_node(sessions: &[Session]) -> HashMap<String, Usage> {
    let mut usage: HashMap<String, Usage> = HashMap::new();
    for s in sessions.iter().filter(|s| !s.node_id.is_empty()) {
        let u = usage.entry(s.node_id.clone()).or_default();
        u.sessions += 1;
        u.gpus += s.gpu_uuids.len();
    }
    usage
}

async fn list(ctx: &Ctx) -> Result<ExitCode> {
    let nodes = ctx
        .call("Admin/ListNodes", Subject::None, |c| async move {
            c.admin().list_nodes(ListNodesRequest::default()).await
        })
        .await?
        .nodes;
    let response = ListNodesResponse { nodes };
    if ctx.json {
        ctx.result(&response, String::new)?;
        return Ok(ExitCode::SUCCESS);
    }
    if response.nodes.is_empty() {
        stderr(b"no nodes: start `hearth-agent --broker URL` on a GPU host\n");
        return Ok(ExitCode::SUCCESS);
    }
    // GPUs in use come from the sessions that hold them; without them the table still
    // shows everything else.
    let usage = match live_sessions(ctx, "").await {
        Ok(sessions) => Some(usage_by_node(&sessions)),
        Err(e) => {
            stderr(format!("warning: GPUs in use are unknown: {e}\n").as_bytes());
            None
        }
    };
    ctx.result(&response, || {
        node_table(&response.nodes, usage.as_ref(), SystemTime::now())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `READY` for `NODE_STATE_READY`.
fn node_state(node: &Node) -> &'static str {
    short_state(node.state().as_str_name(), "NODE_STATE_")
}

fn scheduling(node: &Node) -> &'static str {
    if node.draining {
        "draining"
    } else if node.schedulable {
        "schedulable"
    } else {
        "cordoned"
    }
}

/// `NVIDIA H100 80GB HBM3 (SIMULATED)`, `2 models`, or `none`.
fn gpu_model(node: &Node) -> String {
    let mut models: Vec<&str> = node.gpus.iter().map(|g| g.name.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let model = match models.as_slice() {
        [] => return "none".to_owned(),
        [one] => one.to_string(),
        many => format!("{} models", many.len()),
    };
    if node.gpu_source() == GpuSource::Simulated || node.gpus.iter().any(|g| g.simulated) {
        format!("{model} (SIMULATED)")
    } else {
        model
    }
}

fn telemetry_age(node: &Node, now: SystemTime) -> String {
    match table::time_of(node.telemetry_received_at.as_ref()) {
        Some(_) => format!(
            "{} ago",
            table::age(node.telemetry_received_at.as_ref(), now)
        ),
        None => "never".to_owned(),
    }
}

/// The `nodes ls` table.
pub fn node_table(
    nodes: &[Node],
    usage: Option<&HashMap<String, Usage>>,
    now: SystemTime,
) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "SCHEDULING",
        "GPUS",
        "GPU MODEL",
        "SESSIONS",
        "TELEMETRY",
        "LABELS",
    ]);
    for node in nodes {
        let (used, sessions) = match usage {
            Some(usage) => {
                let u = usage.get(&node.id).copied().unwrap_or_default();
                (u.gpus.to_string(), u.sessions.to_string())
            }
            None => ("?".to_owned(), node.session_ids.len().to_string()),
        };
        table.row(vec![
            node.id.clone(),
            node_state(node).to_owned(),
            scheduling(node).to_owned(),
            format!("{used}/{}", node.gpus.len()),
            gpu_model(node),
            sessions,
            telemetry_age(node, now),
            table::labels(&node.labels),
        ]);
    }
    table.render()
}

async fn get_node(ctx: &Ctx, id: &str) -> Result<Node> {
    ctx.call("Admin/GetNode", Subject::Node(id), |c| {
        let request = GetNodeRequest { id: id.to_owned() };
        async move { c.admin().get_node(request).await }
    })
    .await
}

async fn get(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let node = get_node(ctx, id).await?;
    if ctx.json {
        ctx.result(&node, String::new)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The sessions come from a second call; without it the node's own view still shows.
    let sessions = match live_sessions(ctx, id).await {
        Ok(sessions) => sessions,
        Err(e) => {
            stderr(format!("warning: the node's sessions are unknown: {e}\n").as_bytes());
            Vec::new()
        }
    };
    ctx.result(&node, || node_view(&node, &sessions, SystemTime::now()))?;
    Ok(ExitCode::SUCCESS)
}

/// The `nodes get` view: facts, a GPU table with the latest telemetry, and the sessions
/// that hold the node.
pub fn node_view(node: &Node, sessions: &[Session], now: SystemTime) -> String {
    let capacity = node.capacity.unwrap_or_default();
    let source = match node.gpu_source() {
        GpuSource::Nvml => "NVML (real hardware)",
        GpuSource::Simulated => "SIMULATED (not real hardware)",
        GpuSource::None => "none (CPU-only node)",
        GpuSource::Unspecified => "",
    };
    let mut text = table::key_values(&[
        ("ID", node.id.clone()),
        (
            "STATE",
            match table::time_of(node.state_changed_at.as_ref()) {
                Some(_) => format!(
                    "{} for {}",
                    node_state(node),
                    table::age(node.state_changed_at.as_ref(), now)
                ),
                None => node_state(node).to_owned(),
            },
        ),
        ("SCHEDULING", scheduling(node).to_owned()),
        ("LABELS", table::labels(&node.labels)),
        ("TAINTS", node.taints.join(", ")),
        ("RUNTIME", node.runtime.clone()),
        ("AGENT", node.agent_version.clone()),
        ("INCARNATION", node.incarnation.clone()),
        (
            "CONNECTED",
            table::timestamp(node.connected_at.as_ref(), now),
        ),
        (
            "LAST SEEN",
            table::timestamp(node.last_seen_at.as_ref(), now),
        ),
        ("TELEMETRY", telemetry_age(node, now)),
        (
            "CAPACITY",
            format!(
                "{} cores, {} memory",
                capacity.cpu_cores,
                table::bytes(capacity.memory_bytes)
            ),
        ),
        ("GPU SOURCE", source.to_owned()),
        ("SESSIONS", sessions.len().to_string()),
        ("IMAGES", node.images.len().to_string()),
    ]);
    if !node.gpus.is_empty() {
        text.push('\n');
        text.push_str(&gpu_table(node));
    }
    if !sessions.is_empty() {
        let mut table = Table::new(&["SESSION", "STATE", "TENANT", "GPUS", "AGE"]);
        for s in sessions {
            table.row(vec![
                s.id.clone(),
                state_name(s.state()).to_owned(),
                s.tenant.clone(),
                s.gpu_uuids.join(","),
                table::age(s.created_at.as_ref(), now),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    if !node.images.is_empty() {
        // A host may hold hundreds; the first few show what placement sees.
        const SHOWN: usize = 20;
        let mut table = Table::new(&["IMAGE"]);
        for image in node.images.iter().take(SHOWN) {
            table.row(vec![image.clone()]);
        }
        text.push('\n');
        text.push_str(&table.render());
        if node.images.len() > SHOWN {
            text.push_str(&format!(
                "... and {} more (--json lists them all)\n",
                node.images.len() - SHOWN
            ));
        }
    }
    text
}

/// Each GPU with its latest telemetry sample.
fn gpu_table(node: &Node) -> String {
    let samples: HashMap<&str, _> = node
        .telemetry
        .iter()
        .flat_map(|t| &t.gpus)
        .map(|g| (g.uuid.as_str(), g))
        .collect();
    let mut gpus = Table::new(&[
        "INDEX",
        "UUID",
        "MODEL",
        "MEMORY",
        "UTIL",
        "TEMP",
        "POWER",
        "SIMULATED",
    ]);
    for gpu in &node.gpus {
        let sample = samples.get(gpu.uuid.as_str());
        let memory = match sample {
            Some(s) => format!(
                "{}/{}",
                table::bytes(s.memory_used_bytes),
                table::bytes(gpu.memory_total_bytes)
            ),
            None => table::bytes(gpu.memory_total_bytes),
        };
        gpus.row(vec![
            gpu.index.to_string(),
            gpu.uuid.clone(),
            gpu.name.clone(),
            memory,
            sample.map_or("-".into(), |s| format!("{}%", s.utilization_gpu_percent)),
            sample.map_or("-".into(), |s| format!("{}C", s.temperature_celsius)),
            sample.map_or("-".into(), |s| {
                format!("{:.0}/{:.0}W", s.power_watts, s.power_limit_watts)
            }),
            if gpu.simulated { "yes" } else { "no" }.to_owned(),
        ]);
    }
    gpus.render()
}

async fn cordon(ctx: &Ctx, id: &str, cordon: bool) -> Result<ExitCode> {
    let node = if cordon {
        ctx.call("Admin/CordonNode", Subject::Node(id), |c| {
            let request = CordonNodeRequest { id: id.to_owned() };
            async move { c.admin().cordon_node(request).await }
        })
        .await?
    } else {
        ctx.call("Admin/UncordonNode", Subject::Node(id), |c| {
            let request = UncordonNodeRequest { id: id.to_owned() };
            async move { c.admin().uncordon_node(request).await }
        })
        .await?
    };
    ctx.result(&node, || {
        if node.schedulable {
            format!("node {id} is schedulable: new sessions may be placed there\n")
        } else {
            format!(
                "node {id} is cordoned: no new placements; its sessions keep running \
                 (`hearth nodes uncordon {id}` undoes this)\n"
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn drain(ctx: &Ctx, args: DrainArgs) -> Result<ExitCode> {
    let id = args.id.as_str();
    let started = Instant::now();
    let node = ctx
        .call("Admin/DrainNode", Subject::Node(id), |c| {
            let request = DrainNodeRequest {
                id: id.to_owned(),
                deadline: Some(hearth_sdk::time::duration(args.deadline)),
            };
            async move { c.admin().drain_node(request).await }
        })
        .await?;
    if args.no_wait {
        ctx.result(&node, || {
            format!(
                "node {id} is draining: its sessions stop between turns, the last ones by {}\n",
                humantime::format_duration(args.deadline)
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let give_up = started + args.deadline + DRAIN_GRACE;
    let mut shown = None;
    loop {
        let left = live_sessions(ctx, id).await?;
        if left.is_empty() {
            break;
        }
        let summary = drain_progress(&left);
        if shown.as_ref() != Some(&summary) {
            let deadline = (started + args.deadline).saturating_duration_since(Instant::now());
            stderr(
                format!(
                    "draining {id}: {summary} (deadline in {})\n",
                    table::human(deadline)
                )
                .as_bytes(),
            );
            shown = Some(summary);
        }
        if Instant::now() >= give_up {
            return Err(crate::error::Error::Other(format!(
                "node {id} still has {} live sessions {} after the drain deadline; \
                 `hearth nodes get {id}` lists them",
                left.len(),
                table::human(DRAIN_GRACE)
            )));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    stderr(format!("node {id} drained in {}\n", table::human(started.elapsed())).as_bytes());
    let node = get_node(ctx, id).await?;
    ctx.result(&node, || {
        format!(
            "node {id} is drained: no sessions left; it stays cordoned until \
             `hearth nodes uncordon {id}`\n"
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `2 sessions left: 1 READY, 1 STOPPING`.
fn drain_progress(left: &[Session]) -> String {
    let mut by_state: Vec<(&'static str, usize)> = Vec::new();
    for s in left {
        let name = state_name(s.state());
        match by_state.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => by_state.push((name, 1)),
        }
    }
    by_state.sort();
    let parts: Vec<String> = by_state.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let noun = if left.len() == 1 {
        "session"
    } else {
        "sessions"
    };
    format!("{} {noun} left: {}", left.len(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{Gpu, NodeState};

    fn node() -> Node {
        Node {
            id: "gpu-1".into(),
            state: NodeState::Ready.into(),
            schedulable: true,
            gpu_source: GpuSource::Simulated.into(),
            gpus: (0..2)
                .map(|i| Gpu {
                    uuid: format!("GPU-SIM-{i}"),
                    index: i,
                    name: "NVIDIA H100 80GB HBM3".into(),
                    memory_total_bytes: 80 << 30,
                    simulated: true,
                })
                .collect(),
            labels: [("zone".into(), "a".into())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_shows_gpus_in_use_and_simulation() {
        let sessions = vec![Session {
            node_id: "gpu-1".into(),
            gpu_uuids: vec!["GPU-SIM-0".into()],
            ..Default::default()
        }];
        let usage = usage_by_node(&sessions);
        let text = node_table(&[node()], Some(&usage), SystemTime::now());
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("gpu-1  READY  schedulable  1/2"), "{text}");
        assert!(row.contains("NVIDIA H100 80GB HBM3 (SIMULATED)"), "{text}");
        assert!(row.contains("never") && row.ends_with("zone=a"), "{text}");

        let mut cordoned = node();
        cordoned.schedulable = false;
        let text = node_table(&[cordoned], None, SystemTime::now());
        assert!(
            text.contains(" cordoned ") && text.contains(" ?/2 "),
            "{text}"
        );
    }

    #[test]
    fn the_view_lists_each_gpu() {
        let session = Session {
            id: "01JX".into(),
            state: SessionState::Ready.into(),
            gpu_uuids: vec!["GPU-SIM-0".into()],
            ..Default::default()
        };
        let text = node_view(&node(), &[session], SystemTime::now());
        assert!(text.contains("SIMULATED (not real hardware)"), "{text}");
        assert!(text.contains("01JX     READY"), "{text}");
        assert!(text.contains("GPU-SIM-1"), "{text}");
        assert!(text.contains("80GiB"), "{text}");
    }

    #[test]
    fn drain_progress_counts_by_state() {
        let s = |state: SessionState| Session {
            state: state.into(),
            ..Default::default()
        };
        assert_eq!(
            drain_progress(&[
                s(SessionState::Ready),
                s(SessionState::Stopping),
                s(SessionState::Ready)
            ]),
            "3 sessions left: 2 READY, 1 STOPPING"
        );
    }
}
