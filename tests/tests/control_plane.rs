//! The control plane end to end, with real `hearth-broker` and `hearth-agent` processes
//! (simulated GPUs, labelled as such) and, where the behaviour depends on it, a real etcd.

use std::time::{Duration, Instant, SystemTime};

use hearth_sdk::proto::v1::{GpuSource, ListNodesRequest, Node, NodeState};
use hearth_tests::{
    api,
    etcd::{etcd_or_skip, unique_prefix},
    eventually,
    process::{Agent, Broker},
};

const SIM: &[&str] = &[
    "--simulate-gpus",
    "2",
    "--simulate-gpu-model",
    "Simulated H100 80GB",
];

async fn ready_node(url: &str, id: &str, timeout: Duration) -> anyhow::Result<Node> {
    eventually(&format!("node {id} READY on {url}"), timeout, || async {
        match api::node(url, id).await {
            Ok(n) if n.state() == NodeState::Ready && n.telemetry.is_some() => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(s) => Err(anyhow::anyhow!("{}: {}", s.code(), s.message())),
        }
    })
    .await
}

async fn leader_url(brokers: &[&Broker]) -> Option<String> {
    for b in brokers {
        if let Ok(info) = api::cluster_info(&b.url).await
            && info.is_leader
        {
            return Some(b.url.clone());
        }
    }
    None
}

#[tokio::test]
async fn embedded_broker_lists_simulated_node_with_fresh_telemetry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let agent = Agent::spawn(dir.path(), "sim-node-1", &[&broker.url], SIM)?;

    let node = ready_node(&broker.url, &agent.node_id, Duration::from_secs(20))
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
        })?;
    assert_eq!(node.gpu_source(), GpuSource::Simulated);
    assert_eq!(node.gpus.len(), 2);
    assert!(
        node.gpus.iter().all(|g| g.simulated),
        "every GPU says simulated"
    );
    assert!(node.schedulable);

    // Telemetry keeps arriving: a sample newer than 2 s, for every GPU, marked simulated.
    let node = eventually(
        "a second telemetry sample",
        Duration::from_secs(5),
        || async {
            let n = api::node(&broker.url, &agent.node_id).await?;
            let received = n
                .telemetry_received_at
                .as_ref()
                .and_then(hearth_sdk::time::system_time)
                .ok_or_else(|| anyhow::anyhow!("no telemetry_received_at"))?;
            let age = SystemTime::now()
                .duration_since(received)
                .unwrap_or_default();
            Ok((age < Duration::from_secs(2)).then_some(n))
        },
    )
    .await?;
    let telemetry = node.telemetry.expect("telemetry");
    assert_eq!(telemetry.gpus.len(), 2);
    for (gpu, sample) in node.gpus.iter().zip(&telemetry.gpus) {
        assert_eq!(gpu.uuid, sample.uuid);
        assert!(sample.simulated);
        assert_eq!(sample.memory_total_bytes, gpu.memory_total_bytes);
    }

    let info = api::cluster_info(&broker.url).await?;
    assert!(info.is_leader);
    assert_eq!(info.store, "embedded");
    assert_eq!(
        (info.nodes_total, info.nodes_ready, info.gpus_total),
        (1, 1, 2)
    );

    // The agent's /ready follows its link.
    let status = http_status(&agent.admin, "/ready").await?;
    assert_eq!(status, 200, "{}", agent.proc.log_tail());
    let metrics = http_body(&broker.admin, "/metrics").await?;
    assert!(metrics.contains("hearth_broker_is_leader 1"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn killed_agent_goes_suspect_then_disconnected_then_ready_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &[
            "--store-path",
            &store,
            "--telemetry-interval",
            "200ms",
            "--suspect-after",
            "1s",
            "--disconnected-after",
            "3s",
            "--lost-after",
            "1m",
        ],
    )?;
    let mut agent = Agent::spawn(dir.path(), "flaky-node", &[&broker.url], SIM)?;
    ready_node(&broker.url, &agent.node_id, Duration::from_secs(20)).await?;
    // Telemetry every 200 ms keeps it READY well past suspect_after.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api::node(&broker.url, &agent.node_id).await?.state(),
        NodeState::Ready
    );

    agent.proc.kill();
    let killed = Instant::now();
    let suspect_at = std::cell::Cell::new(None);
    let disconnected_at = eventually(
        "DISCONNECTED after kill -9",
        Duration::from_secs(15),
        || {
            let url = broker.url.clone();
            let id = agent.node_id.clone();
            let suspect_at = &suspect_at;
            async move {
                let state = api::node(&url, &id).await?.state();
                if state == NodeState::Suspect && suspect_at.get().is_none() {
                    suspect_at.set(Some(killed.elapsed()));
                }
                Ok((state == NodeState::Disconnected).then(|| killed.elapsed()))
            }
        },
    )
    .await?;
    let suspect_at = suspect_at
        .get()
        .expect("the node went through SUSPECT before DISCONNECTED");
    // The last heartbeat came up to one interval (200 ms) before the kill; generous upper
    // bounds because this machine is small and shared.
    assert!(
        suspect_at >= Duration::from_millis(750) && suspect_at < Duration::from_secs(3),
        "SUSPECT after {suspect_at:?}, configured 1s"
    );
    assert!(
        disconnected_at >= Duration::from_millis(2750) && disconnected_at < Duration::from_secs(6),
        "DISCONNECTED after {disconnected_at:?}, configured 3s"
    );
    eprintln!("liveness: SUSPECT after {suspect_at:?}, DISCONNECTED after {disconnected_at:?}");

    agent.proc.restart()?;
    ready_node(&broker.url, &agent.node_id, Duration::from_secs(30))
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
        })?;
    Ok(())
}

#[tokio::test]
async fn embedded_broker_restart_keeps_node_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let mut broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let mut agent = Agent::spawn(dir.path(), "kept-node", &[&broker.url], SIM)?;
    ready_node(&broker.url, &agent.node_id, Duration::from_secs(20)).await?;
    agent.proc.kill();
    assert!(
        broker.proc.terminate(Duration::from_secs(10)).await,
        "broker exits on SIGTERM"
    );

    broker.proc.restart()?;
    let node = eventually(
        "node record after restart",
        Duration::from_secs(20),
        || async { Ok(api::node(&broker.url, "kept-node").await.ok()) },
    )
    .await?;
    assert_eq!(node.gpus.len(), 2);
    assert_ne!(
        node.state(),
        NodeState::Ready,
        "nothing heard from it since the restart"
    );
    Ok(())
}

#[tokio::test]
async fn etcd_broker_restart_keeps_node_records() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let prefix = unique_prefix("restart");
    let endpoint = etcd.endpoint();
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let mut broker = Broker::spawn(dir.path(), "broker", &flags)?;
    let mut agent = Agent::spawn(dir.path(), "etcd-node", &[&broker.url], SIM)?;
    ready_node(&broker.url, &agent.node_id, Duration::from_secs(20)).await?;
    agent.proc.kill();
    broker.proc.kill();

    broker.proc.restart()?;
    let node = eventually(
        "node record from etcd after restart",
        Duration::from_secs(20),
        || async { Ok(api::node(&broker.url, "etcd-node").await.ok()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.proc.log_tail()))?;
    assert_eq!(node.gpus.len(), 2);
    assert_eq!(node.gpu_source(), GpuSource::Simulated);
    assert_eq!(api::cluster_info(&broker.url).await?.store, "etcd");

    agent.proc.restart()?;
    ready_node(&broker.url, "etcd-node", Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn standby_takes_over_within_5s_of_a_leader_kill_and_agents_follow() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let prefix = unique_prefix("failover");
    let endpoint = etcd.endpoint();
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let mut a = Broker::spawn(dir.path(), "broker-a", &flags)?;
    let first = eventually("broker-a leads", Duration::from_secs(20), || async {
        Ok(api::cluster_info(&a.url).await.ok().filter(|i| i.is_leader))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", a.proc.log_tail()))?;
    let b = Broker::spawn(dir.path(), "broker-b", &flags)?;
    let agent = Agent::spawn(dir.path(), "follower", &[&a.url, &b.url], SIM)?;
    ready_node(&a.url, "follower", Duration::from_secs(20)).await?;

    // B is a standby: it names A, and refuses leader work with A's address attached.
    let info = eventually(
        "broker-b up as standby",
        Duration::from_secs(20),
        || async { Ok(api::cluster_info(&b.url).await.ok()) },
    )
    .await?;
    assert!(!info.is_leader);
    assert_eq!(info.leader_id, "broker-a");
    assert_eq!(info.leader_address, a.url);
    let refused = api::admin(&b.url)
        .list_nodes(ListNodesRequest::default())
        .await
        .expect_err("a standby refuses ListNodes");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        refused
            .metadata()
            .get(hearth_sdk::LEADER_METADATA_KEY)
            .map(|v| v.to_str().unwrap()),
        Some(a.url.as_str())
    );

    // Readiness: /ready is the leader's alone; /ready?standby=ok takes in a standby that
    // reads the store, for orchestrators; any other value is an error naming the one.
    assert_eq!(http_status(&a.admin, "/ready").await?, 200);
    assert_eq!(http_status(&b.admin, "/ready").await?, 503);
    assert_eq!(http_status(&a.admin, "/ready?standby=ok").await?, 200);
    let standby_ready = eventually(
        "broker-b ready as a standby",
        Duration::from_secs(10),
        || async {
            let (status, body) = http_get(&b.admin, "/ready?standby=ok").await?;
            Ok((status == 200).then_some(body))
        },
    )
    .await?;
    assert!(standby_ready.contains("ready (standby)"), "{standby_ready}");
    let (status, body) = http_get(&b.admin, "/ready?standby=yes").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the only value is \"ok\""), "{body}");

    a.proc.kill();
    let killed = Instant::now();
    let info = eventually("broker-b takes over", Duration::from_secs(20), || async {
        Ok(api::cluster_info(&b.url).await.ok().filter(|i| i.is_leader))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", b.proc.log_tail()))?;
    let takeover = killed.elapsed();
    eprintln!("failover: broker-b leads {takeover:?} after kill -9 of broker-a");
    assert!(
        takeover <= Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    assert!(
        info.epoch > first.epoch,
        "a new epoch: {} > {}",
        info.epoch,
        first.epoch
    );

    // The agent finds the new leader by itself, and the node record came along.
    let node = ready_node(&b.url, "follower", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", b.proc.log_tail(), agent.proc.log_tail()))?;
    assert_eq!(node.gpus.len(), 2);
    assert_eq!(leader_url(&[&b]).await.as_deref(), Some(b.url.as_str()));
    Ok(())
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_over_at_once() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let prefix = unique_prefix("resign");
    let endpoint = etcd.endpoint();
    // A long lease: only resigning can explain a fast hand-over.
    let flags = [
        "--etcd",
        &endpoint,
        "--etcd-prefix",
        &prefix,
        "--leader-ttl",
        "30s",
    ];
    let mut a = Broker::spawn(dir.path(), "broker-a", &flags)?;
    eventually("broker-a leads", Duration::from_secs(20), || async {
        Ok(api::cluster_info(&a.url).await.ok().filter(|i| i.is_leader))
    })
    .await?;
    let b = Broker::spawn(dir.path(), "broker-b", &flags)?;
    eventually("broker-b standby", Duration::from_secs(20), || async {
        Ok(api::cluster_info(&b.url).await.ok())
    })
    .await?;
    assert!(
        a.proc.terminate(Duration::from_secs(10)).await,
        "{}",
        a.proc.log_tail()
    );
    eventually(
        "broker-b leads well before the 30s lease lapses",
        Duration::from_secs(10),
        || async { Ok(api::cluster_info(&b.url).await.ok().filter(|i| i.is_leader)) },
    )
    .await?;
    Ok(())
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not HTTP: {out:?}"))?;
    Ok((status, out))
}

async fn http_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    Ok(http_get(addr, path).await?.0)
}

async fn http_body(addr: &str, path: &str) -> anyhow::Result<String> {
    Ok(http_get(addr, path).await?.1)
}
