//! The SIMULATED node agent (`hearth_tests::sim_agent`) against a real broker process:
//! it registers as simulated, sends telemetry, and answers the session lifecycle the way
//! `hearth-agent` does, so tests and benchmarks built on it exercise the real protocol.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecRequest, GpuRequest, GpuSource,
    PauseSessionRequest, ResumeSessionRequest, SessionSpec, SessionState, create_session_request,
    sessions_client::SessionsClient,
};
use hearth_tests::{
    api, eventually,
    process::Broker,
    sim_agent::{RUNTIME, SIMULATED_LABEL, SimFleet, SimFleetConfig},
};
use tonic::Code;

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
    eventually(
        "3 simulated hosts READY",
        Duration::from_secs(20),
        || async {
            let info = api::cluster_info(&broker.url).await?;
            Ok((info.nodes_ready == 3).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.proc.log_tail()))?;

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
