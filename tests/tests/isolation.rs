//! Network isolation of Docker sessions, proved from inside the sessions' own network
//! namespaces (an Exec of the test worker's `connect` tool, which runs in the session's
//! container), on the real Docker engine with a real agent and broker:
//!
//! - a session cannot reach another tenant's session;
//! - sessions of one tenant reach each other where the tenant's `[network]` policy allows
//!   it, and not where it does not;
//! - no session reaches the host's services (a listener on all of the host's addresses)
//!   or the cloud metadata address (169.254.169.254, served here from a network namespace
//!   that stands for the cloud), while a plain container on Docker's default bridge
//!   reaches both: the refusal is Hearth's doing;
//! - egress follows the tenant and the spec: a session reaches the outside (another
//!   network namespace) unless its tenant or spec denies egress, and a spec may not ask
//!   for more than its tenant allows;
//! - tenant networks are labelled, come back with their firewall after an agent restart,
//!   and are removed (with the firewall table) once their last session ends;
//! - the process runtime refuses a second tenant unless told `--mixed-tenants`.
//!
//! Needs root (network namespaces, nftables) and Docker; skips without them except in CI.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::Context as _;
use hearth_sdk::{
    Client, Session,
    proto::v1::{Egress, NetworkSpec, PlacementSpec, SessionSpec, SessionState},
};
use hearth_tests::{
    compose::docker,
    eventually, images,
    netns::{self, Netns},
    process::{Agent, Broker, free_port},
    tenants::create_token,
};

/// How long a `connect` may take before it counts as refused: long enough for a loaded
/// machine, short enough for a dropped SYN.
const CONNECT_MS: &str = "1500";

/// The worker inside `session` opens a TCP connection to `addr`: `Ok(true)` when it did.
async fn reaches(session: &Session, addr: &str) -> anyhow::Result<bool> {
    let out = session
        .exec(["/worker", "connect", addr, CONNECT_MS])
        .await
        .with_context(|| format!("exec connect {addr} in {}", session.id()))?;
    let text = out.stdout_text();
    anyhow::ensure!(
        text.starts_with("connected") || text.starts_with("failed"),
        "connect said {text:?} {}",
        out.stderr_text()
    );
    Ok(out.success())
}

/// A plain container on Docker's default bridge (no Hearth network, no firewall) opens a
/// TCP connection to `addr`: the control that shows a target is reachable at all.
fn plain_container_reaches(addr: &str) -> anyhow::Result<bool> {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            images::WORKER_IMAGE,
            "connect",
            addr,
            CONNECT_MS,
        ])
        .output()?;
    Ok(out.status.success())
}

/// `container`'s address and its network's gateway (the host's side of the bridge).
fn addresses(session: &Session) -> anyhow::Result<(String, String)> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.Gateway}}{{end}}",
        &format!("hearth-{}", session.id()),
    ])?;
    let mut words = out.split_whitespace();
    match (words.next(), words.next()) {
        (Some(ip), Some(gateway)) => Ok((ip.to_owned(), gateway.to_owned())),
        _ => anyhow::bail!("no address for session {}: {out:?}", session.id()),
    }
}

fn spec(egress: Option<Egress>) -> SessionSpec {
    SessionSpec {
        network: egress.map(|e| NetworkSpec { egress: e as i32 }),
        placement: Some(PlacementSpec {
            node_selector: [("runtime".to_owned(), "docker".to_owned())]
                .into_iter()
                .collect(),
            ..PlacementSpec::default()
        }),
        ..images::worker_spec(images::WORKER_IMAGE)
    }
}

/// The Docker networks of `node`, by name, with their `hearth.tenant` and `hearth.policy`.
fn networks(node: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let out = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label=hearth.node={node}"),
        "--format",
        "{{.Name}} {{.Label \"hearth.tenant\"}}/{{.Label \"hearth.policy\"}}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, labels)| (name.to_owned(), labels.to_owned()))
        .collect())
}

/// The agent's nftables table, or `None` when there is none.
fn nft_table(node: &str) -> Option<String> {
    let table = format!("hearth_{}", node.replace(['-', '.'], "_"));
    let out = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cloud: a network namespace serving the worker on `port` at its own address and
/// at 169.254.169.254, which the host routes there for the length of the test.
struct Cloud {
    ns: Netns,
    server: std::process::Child,
}

impl Cloud {
    fn start(port: u16, state: &std::path::Path) -> anyhow::Result<Self> {
        let ns = Netns::create("cloud")?;
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ])?;
        ip(&[
            "route",
            "replace",
            "169.254.169.254/32",
            "via",
            &ns.ns_ip.to_string(),
        ])?;
        let server = ns
            .command(&images::worker_binary())
            .env("PORT", port.to_string())
            .env("STATE_DIR", state)
            .env("WARMUP_MS", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Self { ns, server })
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args([
                "route",
                "del",
                "169.254.169.254/32",
                "via",
                &self.ns.ns_ip.to_string(),
            ])
            .output();
    }
}

#[tokio::test]
async fn docker_sessions_are_isolated_by_tenant_and_from_the_host() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    if !netns::available() {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "the isolation test needs root and `ip netns` in CI"
        );
        eprintln!("SKIPPED: needs root and `ip netns`");
        return Ok(());
    }
    images::worker_image()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        "[network]\negress = \"allow\"\nintra_tenant = true\n\
         [network.tenants.gamma]\nintra_tenant = false\n\
         [network.tenants.delta]\negress = \"deny\"\n",
    )?;
    let mut tokens = BTreeMap::new();
    for tenant in ["alpha", "beta", "gamma", "delta"] {
        tokens.insert(tenant, create_token(&config, tenant, "user")?);
    }
    tokens.insert("ops", create_token(&config, "ops", "admin")?);
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &[
            "--config",
            &config.display().to_string(),
            "--store-path",
            &store,
        ],
    )?;
    let node = format!("iso-{}", std::process::id());
    let state = dir.path().join("agent-state").display().to_string();
    let mut agent = Agent::spawn(
        dir.path(),
        &node,
        &[&broker.url],
        &[
            "--simulate-gpus",
            "1",
            "--runtime",
            "docker",
            "--state-dir",
            &state,
            "--label",
            "runtime=docker",
        ],
    )?;
    let client = |tenant: &str| {
        Client::builder(&broker.url)
            .token(tokens[tenant].clone())
            .build()
    };
    let (alpha, beta, gamma, delta) = (
        client("alpha")?,
        client("beta")?,
        client("gamma")?,
        client("delta")?,
    );
    let admin = client("ops")?;
    hearth_tests::api::node_ready_as(&admin, &node)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.proc.log_tail()))?;

    let a1 = alpha.create(spec(None)).await?;
    let a2 = alpha.create(spec(None)).await?;
    let a_closed = alpha.create(spec(Some(Egress::Deny))).await?;
    let b1 = beta.create(spec(None)).await?;
    let g1 = gamma.create(spec(None)).await?;
    let g2 = gamma.create(spec(None)).await?;
    let d1 = delta.create(spec(None)).await?;
    let refused = delta
        .create(spec(Some(Egress::Allow)))
        .await
        .expect_err("delta may not ask for egress");
    let refused = refused.to_string();
    assert!(
        refused.contains("spec.network.egress") && refused.contains("network.tenants.delta.egress"),
        "{refused}"
    );

    // One network per tenant and policy, labelled.
    let nets = networks(&node)?;
    let labels: Vec<&str> = nets.values().map(String::as_str).collect();
    for expected in [
        "alpha/egress-icc",
        "alpha/internal-icc",
        "beta/egress-icc",
        "gamma/egress-noicc",
        "delta/internal-icc",
    ] {
        assert!(
            labels.contains(&expected),
            "no {expected} network: {nets:?}"
        );
    }
    assert_eq!(nets.len(), 5, "{nets:?}");

    let (a2_ip, a_gateway) = addresses(&a2)?;
    let (b1_ip, _) = addresses(&b1)?;
    let (g2_ip, _) = addresses(&g2)?;
    let port = |ip: &str| format!("{ip}:8080");

    // Tenants, and sessions within one.
    assert!(!reaches(&a1, &port(&b1_ip)).await?, "alpha reached beta");
    assert!(!reaches(&b1, &port(&a2_ip)).await?, "beta reached alpha");
    assert!(
        reaches(&a1, &port(&a2_ip)).await?,
        "alpha's sessions reach each other"
    );
    assert!(
        !reaches(&g1, &port(&g2_ip)).await?,
        "gamma's intra_tenant = false"
    );
    assert!(!reaches(&d1, &port(&a2_ip)).await?, "delta reached alpha");

    // The host's services: a listener on every address of the host, reached through the
    // session network's gateway, the host's side of the bridge.
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let host_port = host.local_addr()?.port();
    let accept = tokio::spawn(async move {
        loop {
            if host.accept().await.is_err() {
                return;
            }
        }
    });
    let host_service = format!("{a_gateway}:{host_port}");
    assert!(
        plain_container_reaches(&format!("172.17.0.1:{host_port}"))?,
        "control: a plain container reaches the host's listener"
    );
    assert!(
        !reaches(&a1, &host_service).await?,
        "a session reached the host"
    );
    let agent_admin = agent.admin.replace("127.0.0.1", &a_gateway);
    assert!(
        !reaches(&a1, &agent_admin).await?,
        "a session reached the agent's admin port"
    );

    // The cloud: metadata at 169.254.169.254, and an outside address.
    let cloud_port = free_port();
    let cloud = Cloud::start(cloud_port, dir.path())?;
    let metadata = format!("169.254.169.254:{cloud_port}");
    let outside = format!("{}:{cloud_port}", cloud.ns.ns_ip);
    eventually("the cloud answers", Duration::from_secs(10), || async {
        Ok(plain_container_reaches(&outside)?.then_some(()))
    })
    .await?;
    assert!(
        plain_container_reaches(&metadata)?,
        "control: a plain container reaches the metadata address"
    );
    assert!(
        !reaches(&a1, &metadata).await?,
        "a session reached the metadata address"
    );
    assert!(reaches(&a1, &outside).await?, "alpha has egress");
    assert!(
        !reaches(&a_closed, &outside).await?,
        "the spec denied egress"
    );
    assert!(!reaches(&d1, &outside).await?, "delta has no egress");
    assert!(!reaches(&d1, &metadata).await?);

    // An agent restart keeps every network and rewrites the firewall from them.
    let table = nft_table(&node).context("the agent's nftables table")?;
    assert!(table.contains("iifname @sessions drop"), "{table}");
    agent.proc.kill();
    let _ = Command::new("nft")
        .args([
            "delete",
            "table",
            "inet",
            &format!("hearth_{}", node.replace('-', "_")),
        ])
        .output();
    assert!(nft_table(&node).is_none());
    agent.proc.restart()?;
    eventually("the firewall is back", Duration::from_secs(30), || async {
        Ok(nft_table(&node))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.proc.log_tail()))?;
    assert_eq!(
        networks(&node)?,
        nets,
        "the same networks after the restart"
    );
    hearth_tests::api::node_ready_as(&admin, &node).await?;
    assert!(!reaches(&a1, &host_service).await?, "after the restart");
    assert!(!reaches(&a1, &port(&b1_ip)).await?, "after the restart");
    assert!(reaches(&a1, &port(&a2_ip)).await?, "after the restart");
    assert_eq!(a1.get().await?.cold_starts, 1);

    // The last session of a network takes it along; the last of all, the table.
    b1.delete().await?;
    eventually(
        "beta's network is removed",
        Duration::from_secs(20),
        || async { Ok((!networks(&node)?.values().any(|l| l.starts_with("beta/"))).then_some(())) },
    )
    .await?;
    for session in [a1, a2, a_closed, g1, g2, d1] {
        session.delete().await?;
    }
    eventually(
        "every network is removed",
        Duration::from_secs(20),
        || async { Ok(networks(&node)?.is_empty().then_some(())) },
    )
    .await?;
    assert!(
        nft_table(&node).is_none(),
        "the firewall table outlived its networks"
    );
    accept.abort();
    drop(cloud);
    Ok(())
}

#[tokio::test]
async fn the_process_runtime_takes_one_tenant_unless_told_otherwise() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    let alpha = create_token(&config, "alpha", "user")?;
    let beta = create_token(&config, "beta", "user")?;
    let ops = create_token(&config, "ops", "admin")?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &[
            "--config",
            &config.display().to_string(),
            "--store-path",
            &store,
        ],
    )?;
    let agent = Agent::spawn(
        dir.path(),
        "one-tenant",
        &[&broker.url],
        &["--simulate-gpus", "1", "--mixed-tenants=false"],
    )?;
    let admin = Client::builder(&broker.url).token(ops).build()?;
    hearth_tests::api::node_ready_as(&admin, "one-tenant").await?;
    let worker = images::worker_binary().display().to_string();
    let alpha = Client::builder(&broker.url).token(alpha).build()?;
    let beta = Client::builder(&broker.url).token(beta).build()?;
    let first = alpha.create(images::worker_spec(worker.clone())).await?;
    let second = alpha.create(images::worker_spec(worker.clone())).await?;
    let refused = beta
        .create(images::worker_spec(worker.clone()))
        .await
        .expect_err("a second tenant on a process node");
    let said = refused.to_string();
    assert!(
        said.contains("tenant \"alpha\"") && said.contains("--mixed-tenants"),
        "the refusal names the tenant there and the flag: {said}\n{}",
        agent.proc.log_tail()
    );
    let live = beta.list_sessions(Default::default()).await?;
    assert!(
        live.iter().all(|s| s.state == SessionState::Failed as i32),
        "the refused session holds nothing: {live:?}"
    );
    // Once alpha's sessions are gone, beta may have the node.
    first.delete().await?;
    second.delete().await?;
    let now_beta = beta.create(images::worker_spec(worker)).await?;
    assert_eq!(now_beta.info().state, SessionState::Ready as i32);
    now_beta.delete().await?;
    Ok(())
}
