//! What a broker that takes over keeps from the store, with a real etcd, a leader and a
//! standby, and SIMULATED hosts speaking the real agent protocol (no GPU is real):
//!
//! - a GPU that reported a fatal XID stays out of placement after a `kill -9` of the
//!   leader, although the samples since are clean, until `UncordonNode`;
//! - a drain keeps its deadline (the one the operator gave, not a fresh default).

use std::time::Duration;

use hearth_sdk::{
    Client,
    proto::v1::{DrainNodeRequest, GetNodeRequest, GpuRequest, SessionSpec, UncordonNodeRequest},
};
use hearth_tests::{
    cluster,
    etcd::{etcd_or_skip, unique_prefix},
    eventually,
    sim_agent::{SimFleet, SimFleetConfig},
};

fn one_gpu() -> SessionSpec {
    SessionSpec {
        image: "simulated".into(),
        gpus: Some(GpuRequest {
            count: 1,
            ..GpuRequest::default()
        }),
        ..SessionSpec::default()
    }
}

#[tokio::test]
async fn gpu_exclusions_and_drain_deadlines_survive_a_leader_kill() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("takeover-state");
    let flags = ["--etcd", &endpoint, "--etcd-prefix", &prefix];
    let (mut a, _, b) = cluster::leader_and_standby(dir.path(), &flags).await?;
    let fleet = SimFleet::start(SimFleetConfig {
        brokers: vec![a.url.clone(), b.url.clone()],
        hosts: 2,
        gpus_per_host: 2,
        telemetry_interval: Some(Duration::from_millis(200)),
        backoff: (Duration::from_millis(50), Duration::from_millis(500)),
        ..SimFleetConfig::default()
    });
    let [sick, drained] = [fleet.node_ids()[0].clone(), fleet.node_ids()[1].clone()];
    let client = Client::builder(format!("{},{}", a.url, b.url)).build()?;
    let node = |id: String| {
        let client = client.clone();
        async move {
            client
                .call("Admin/GetNode", |c| {
                    let id = id.clone();
                    async move { c.admin().get_node(GetNodeRequest { id }).await }
                })
                .await
        }
    };
    eventually("both hosts READY", Duration::from_secs(30), || async {
        Ok((fleet.connected() == 2).then_some(()))
    })
    .await?;

    // GPU 0 of the sick host reports XID 79 (fallen off the bus) once.
    assert!(fleet.report_xid(&sick, 0, 79));
    let excluded = eventually("the GPU is excluded", Duration::from_secs(20), || async {
        let n = node(sick.clone()).await?;
        Ok((!n.excluded_gpus.is_empty()).then_some(n))
    })
    .await?;
    let bad = excluded.excluded_gpus[0].uuid.clone();
    assert_eq!(excluded.excluded_gpus[0].xid, 79);
    assert_eq!(bad, excluded.gpus[0].uuid);

    // The other host drains with a deadline of an hour.
    let drain = client
        .admin()
        .drain_node(DrainNodeRequest {
            id: drained.clone(),
            deadline: Some(hearth_sdk::time::duration(Duration::from_secs(3600))),
        })
        .await?
        .into_inner();
    let deadline = drain
        .drain_deadline
        .expect("the drain records its deadline");

    // The leader dies; the standby takes over from the store.
    a.proc.kill();
    cluster::until_leads("broker-b takes over", &b.url).await?;
    eventually(
        "both hosts back on the new leader",
        Duration::from_secs(30),
        || async {
            let ready = |n: hearth_sdk::proto::v1::Node| {
                n.state() == hearth_sdk::proto::v1::NodeState::Ready
            };
            Ok(
                (ready(node(sick.clone()).await?) && ready(node(drained.clone()).await?))
                    .then_some(()),
            )
        },
    )
    .await?;
    let after = node(sick.clone()).await?;
    assert_eq!(
        after.excluded_gpus, excluded.excluded_gpus,
        "the exclusion is kept"
    );
    let still = node(drained.clone()).await?;
    assert!(still.draining && !still.schedulable, "{still:?}");
    assert_eq!(
        still.drain_deadline,
        Some(deadline),
        "the same deadline, not a fresh one"
    );

    // Placement on the new leader: the sick host's other GPU only (the drained host takes
    // nothing), although its samples have been clean since.
    let first = client.create(one_gpu()).no_wait().await?;
    assert_eq!(first.info().node_id, sick);
    assert_ne!(first.info().gpu_uuids, vec![bad.clone()]);
    let refused = client
        .create(one_gpu())
        .no_wait()
        .await
        .expect_err("no GPU left to place on");
    assert!(refused.to_string().contains("exhausted"), "{refused}");

    // Uncordoning the host (it was reset) gives the GPU back.
    client
        .admin()
        .uncordon_node(UncordonNodeRequest { id: sick.clone() })
        .await?;
    assert!(node(sick.clone()).await?.excluded_gpus.is_empty());
    let second = client.create(one_gpu()).no_wait().await?;
    assert_eq!(second.info().gpu_uuids, vec![bad]);
    fleet.stop().await;
    Ok(())
}
