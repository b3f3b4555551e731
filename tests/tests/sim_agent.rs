//! The SIMULATED node agent (`hearth_tests::sim_agent`) against a real broker process:
//! it registers as simulated, sends telemetry, and answers the session lifecycle the way
//! `hearth-agent` does, so tests and benchmarks built on it exercise the real protocol.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecRequest, GpuRequest, GpuSource,
    PauseSessionRequest, PlacementSpec, PlacementStrategy, ResumeSessionRequest, Session,
    SessionSpec, SessionState, create_session_request, sessions_client::SessionsClient,
};
use hearth_tests::{
    api,
    events::Events,
    eventually,
    process::Broker,
    sim_agent::{RUNTIME, SIMULATED_LABEL, SimFleet, SimFleetConfig},
};
use tonic::Code;

/// Waits until `count` hosts are READY on `broker`.
async fn hosts_ready(broker: &Broker, count: u32) -> anyhow::Result<()> {
    eventually(
        &format!("{count} simulated hosts READY"),
        Duration::from_secs(20),
        || async {
            let info = api::cluster_info(&broker.url).await?;
            Ok((info.nodes_ready == count).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.proc.log_tail()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_hosts_register_report_and_follow_the_session_lifecycle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(
        dir.path(),
        "broker",
        &["--store-path", &store, "--telemetry-interval", "200ms"],
    )?;
    let fleet = SimFleet::start(SimFleetConfig {
        brokers: vec![broker.url.clone()],
        hosts: 3,
        gpus_per_host: 2,
        streams_per_channel: 2,
        ..SimFleetConfig::default()
    });
    let ids = fleet.node_ids();
    assert_eq!(ids, ["sim-host-0000", "sim-host-0001", "sim-host-0002"]);
    hosts_ready(&broker, 3).await?;

    // Labelled simulated everywhere, with telemetry at the broker's interval.
    let node = eventually("telemetry from a host", Duration::from_secs(5), || async {
        let n = api::node(&broker.url, &ids[1]).await?;
        Ok(n.telemetry.is_some().then_some(n))
    })
    .await?;
    assert_eq!(node.gpu_source(), GpuSource::Simulated);
    assert_eq!(node.runtime, RUNTIME);
    assert!(node.agent_version.ends_with("-simulated"));
    assert_eq!(
        node.labels.get(SIMULATED_LABEL.0).map(String::as_str),
        Some(SIMULATED_LABEL.1)
    );
    assert_eq!(node.gpus.len(), 2);
    assert!(
        node.gpus
            .iter()
            .all(|g| g.simulated && g.uuid.starts_with("GPU-SIM-"))
    );
    let telemetry = node.telemetry.expect("telemetry");
    assert!(telemetry.gpus.iter().all(|g| g.simulated));
    let sent = fleet
        .stats()
        .telemetry_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = fleet
        .stats()
        .telemetry_sent
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent;
    assert!(
        (9..=21).contains(&per_second),
        "3 hosts at 200 ms send about 15 samples a second, not {per_second}"
    );

    // Create waits for READY, which the host reports at once; then pause, resume, a
    // turn (refused: nothing runs), delete.
    let mut client = SessionsClient::new(api::long_channel(&broker.url));
    let session = tokio::time::timeout(
        Duration::from_secs(20),
        client.create_session(CreateSessionRequest {
            source: Some(create_session_request::Source::Spec(SessionSpec {
                image: "simulated-workload".to_owned(),
                gpus: Some(GpuRequest {
                    count: 2,
                    ..GpuRequest::default()
                }),
                ..SessionSpec::default()
            })),
            ..CreateSessionRequest::default()
        }),
    )
    .await??
    .into_inner();
    assert_eq!(session.state(), SessionState::Ready, "{session:?}");
    assert_eq!(session.gpu_uuids.len(), 2);
    assert_eq!(session.cold_starts, 1);
    assert!(session.container_id.starts_with("sim-"), "{session:?}");
    assert_eq!(fleet.running(), 1);

    let paused = client
        .pause_session(PauseSessionRequest {
            id: session.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(paused.state(), SessionState::Paused);
    let resumed = client
        .resume_session(ResumeSessionRequest {
            id: session.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(resumed.state(), SessionState::Ready);

    let mut exec = client
        .exec(ExecRequest {
            session_id: session.id.clone(),
            argv: vec!["true".to_owned()],
            ..ExecRequest::default()
        })
        .await?
        .into_inner();
    let refused = loop {
        match exec.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a simulated host ran a turn"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    let deleted = client
        .delete_session(DeleteSessionRequest {
            id: session.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(deleted.state(), SessionState::Stopped);
    assert_eq!(fleet.running(), 0);
    let stats = fleet.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (
            load(&stats.starts),
            load(&stats.stops),
            load(&stats.pauses_resumes)
        ),
        (1, 1, 2)
    );
    fleet.stop().await;
    Ok(())
}

/// Image-aware placement: among nodes the strategy scores equal, the one whose agent
/// reported holding the image gets the session, and the placement event says so. The
/// hosts are SIMULATED; the broker is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_prefers_a_node_that_holds_the_image() -> anyhow::Result<()> {
    const TAGGED: &str = "127.0.0.1:5000/team/model:v1";
    const DIGEST: &str = "127.0.0.1:5000/team/model@sha256:5e1f";
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    // Host 2 holds the tag and host 1 the digest, as Docker lists them.
    let fleet = SimFleet::start(SimFleetConfig {
        brokers: vec![broker.url.clone()],
        hosts: 3,
        gpus_per_host: 2,
        node_prefix: "holder-".to_owned(),
        images: [
            (1, vec![DIGEST.to_owned(), "busybox:latest".to_owned()]),
            (2, vec![TAGGED.to_owned()]),
        ]
        .into(),
        ..SimFleetConfig::default()
    });
    hosts_ready(&broker, 3).await?;
    // The broker shows what each node holds, spelled in full.
    let node = api::node(&broker.url, "holder-0001").await?;
    assert_eq!(
        node.images,
        [
            DIGEST.to_owned(),
            "docker.io/library/busybox:latest".to_owned()
        ]
    );
    assert!(
        api::node(&broker.url, "holder-0000")
            .await?
            .images
            .is_empty()
    );

    let events = Events::watch(&broker.url).await?;
    let mut client = SessionsClient::new(api::long_channel(&broker.url));
    let create = |image: &str, strategy: PlacementStrategy| CreateSessionRequest {
        source: Some(create_session_request::Source::Spec(SessionSpec {
            image: image.to_owned(),
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            placement: Some(PlacementSpec {
                strategy: strategy.into(),
                ..PlacementSpec::default()
            }),
            ..SessionSpec::default()
        })),
        ..CreateSessionRequest::default()
    };
    let placed = async |client: &mut SessionsClient<tonic::transport::Channel>,
                        request: CreateSessionRequest|
           -> anyhow::Result<(Session, String)> {
        let session: Session = client.create_session(request).await?.into_inner();
        let event = events
            .wait("session.placed", &session.id, Duration::from_secs(5))
            .await?;
        Ok((session, event.message))
    };

    // Three empty hosts score equal: without the image the lowest id would win.
    let (first, message) = placed(&mut client, create(TAGGED, PlacementStrategy::Binpack)).await?;
    assert_eq!(first.node_id, "holder-0002", "{message}");
    assert!(
        message.contains(&format!("which already holds image {TAGGED}")),
        "{message}"
    );
    // Spread: hosts 0 and 1 are the emptiest; host 1 holds the digest.
    let (second, message) = placed(&mut client, create(DIGEST, PlacementStrategy::Spread)).await?;
    assert_eq!(second.node_id, "holder-0001", "{message}");
    assert!(message.contains("already holds image"), "{message}");
    // "busybox" is the same image as "busybox:latest", but the strategy comes first:
    // spread goes to host 0, the only host with both GPUs free, which lacks it.
    let (third, message) =
        placed(&mut client, create("busybox", PlacementStrategy::Spread)).await?;
    assert_eq!(third.node_id, "holder-0000", "{message}");
    assert!(!message.contains("already holds"), "{message}");
    // Binpack among hosts with one GPU free each: host 1 holds busybox.
    let (fourth, message) =
        placed(&mut client, create("busybox", PlacementStrategy::Binpack)).await?;
    assert_eq!(fourth.node_id, "holder-0001", "{message}");
    assert!(message.contains("already holds image busybox"), "{message}");

    for session in [first, second, third, fourth] {
        client
            .delete_session(DeleteSessionRequest { id: session.id })
            .await?;
    }
    fleet.stop().await;
    Ok(())
}
