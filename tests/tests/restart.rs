//! Restart policy end to end: a real broker and agent (process runtime, simulated GPUs),
//! workloads killed with SIGKILL as a crash would.
//!
//! - `spec.restart: ON_FAILURE` (at most 2): a killed workload is started again, cold, on
//!   the same node and GPU, with a new generation and a `session.restarting` event naming
//!   why; `cold_starts` and `restarts` count it, and the worker's own warm-up count shows
//!   it really warmed up again. Past the limit the session is FAILED, saying so, and its
//!   GPU is free.
//! - Without a policy a killed workload leaves its session FAILED at once.
//! - A policy out of range is refused, naming the field.

use std::{process::Command, time::Duration};

use hearth_sdk::{
    Client, Session,
    proto::v1::{GpuRequest, RestartMode, RestartPolicy, SessionSpec, SessionState},
};
use hearth_tests::{
    api,
    events::Events,
    eventually, images,
    process::{Agent, Broker},
};

/// Generous: two busy cores, readiness probes, restart backoffs of 1 s and 2 s.
const SLOW: Duration = Duration::from_secs(60);

fn spec(restart: Option<RestartPolicy>, state_dir: &std::path::Path) -> SessionSpec {
    let mut spec = images::worker_spec(images::worker_binary().display().to_string());
    spec.gpus = Some(GpuRequest {
        count: 1,
        ..GpuRequest::default()
    });
    // Outside the session's scratch directory, so the warm-up count outlives a restart.
    spec.env
        .insert("STATE_DIR".into(), state_dir.display().to_string());
    spec.restart = restart;
    spec
}

fn kill(session: &hearth_sdk::proto::v1::Session) -> anyhow::Result<()> {
    let out = Command::new("kill")
        .args(["-KILL", &session.container_id])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kill {}: {}",
        session.container_id,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn incr(session: &Session) -> anyhow::Result<u64> {
    let reply = session.invoke(8080, "/incr").method("POST").await?;
    Ok(reply.text().trim().parse()?)
}

async fn warmups(session: &Session) -> anyhow::Result<u64> {
    let reply = session.invoke(8080, "/state").await?;
    api::json_field(&reply.body, "warmups")
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no warmups in {}", reply.text()))
}

/// Waits until the session is READY at a generation after `after`.
async fn ready_again(
    session: &Session,
    after: u64,
) -> anyhow::Result<hearth_sdk::proto::v1::Session> {
    eventually("the session READY again", SLOW, || async {
        let now = session.get().await?;
        Ok((now.state == SessionState::Ready as i32 && now.generation > after).then_some(now))
    })
    .await
}

#[tokio::test]
async fn a_failed_workload_is_restarted_cold_up_to_the_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let agent = Agent::spawn(
        dir.path(),
        "restart-node",
        &[&broker.url],
        &["--simulate-gpus", "1"],
    )?;
    api::node_ready(&broker.url, "restart-node").await?;
    let events = Events::watch(&broker.url).await?;
    let client = Client::connect(&broker.url).await?;
    let logs = |e: anyhow::Error| anyhow::anyhow!("{e:#}\n{}", agent.proc.log_tail());

    let policy = RestartPolicy {
        mode: RestartMode::OnFailure as i32,
        max_restarts: 2,
    };
    let state = dir.path().join("worker-state");
    std::fs::create_dir_all(&state)?;
    let session = client.create(spec(Some(policy), &state)).await?;
    let first = session.get().await?;
    assert_eq!((first.cold_starts, first.restarts), (1, 0));
    assert_eq!(incr(&session).await?, 1);
    assert_eq!(incr(&session).await?, 2);

    // Crash 1: restarted cold, on the same node and GPU.
    kill(&first)?;
    let restarting = events
        .wait("session.restarting", &first.id, SLOW)
        .await
        .map_err(logs)?;
    assert!(
        restarting.message.contains("restart 1 of 2") && restarting.message.contains("exited"),
        "{restarting:?}"
    );
    let second = ready_again(&session, first.generation)
        .await
        .map_err(logs)?;
    assert_eq!((second.cold_starts, second.restarts), (2, 1), "{second:?}");
    assert_eq!(second.node_id, first.node_id);
    assert_eq!(second.gpu_uuids, first.gpu_uuids, "it keeps its GPU");
    assert_ne!(second.container_id, first.container_id, "a new workload");
    assert_eq!(warmups(&session).await?, 2, "the worker warmed up again");
    assert_eq!(incr(&session).await?, 1, "a cold start: its memory is new");

    // Crash 2: the last restart allowed.
    kill(&second)?;
    let third = ready_again(&session, second.generation)
        .await
        .map_err(logs)?;
    assert_eq!((third.cold_starts, third.restarts), (3, 2), "{third:?}");
    assert_eq!(warmups(&session).await?, 3);

    // Crash 3: no restart left.
    kill(&third)?;
    let failed = eventually("the session FAILED", SLOW, || async {
        let now = session.get().await?;
        Ok((now.state == SessionState::Failed as i32).then_some(now))
    })
    .await
    .map_err(logs)?;
    assert!(
        failed.state_reason.contains("no restart left")
            && failed
                .state_reason
                .contains("spec.restart.max_restarts is 2"),
        "{}",
        failed.state_reason
    );
    assert_eq!(failed.restarts, 2);

    // Its GPU is free: the node's only GPU goes to the next session.
    let next = client.create(spec(None, &state)).await?;
    assert_eq!(next.info().gpu_uuids, first.gpu_uuids);

    // Without a policy, a crash is the end.
    kill(next.info())?;
    let ended = eventually("the session without a policy FAILED", SLOW, || async {
        let now = next.get().await?;
        Ok((now.state == SessionState::Failed as i32).then_some(now))
    })
    .await
    .map_err(logs)?;
    assert_eq!((ended.restarts, ended.cold_starts), (0, 1));
    assert!(events.find("session.restarting", &ended.id).is_none());
    Ok(())
}

#[tokio::test]
async fn a_policy_out_of_range_is_refused_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    hearth_tests::cluster::until_leads("the broker leads", &broker.url).await?;
    let client = Client::connect(&broker.url).await?;
    for (policy, field) in [
        (
            RestartPolicy {
                mode: RestartMode::OnFailure as i32,
                max_restarts: 101,
            },
            "spec.restart.max_restarts",
        ),
        (
            RestartPolicy {
                mode: 9,
                max_restarts: 1,
            },
            "spec.restart.mode",
        ),
    ] {
        let refused = client
            .create(spec(Some(policy), dir.path()))
            .await
            .expect_err("out of range");
        assert!(refused.to_string().contains(field), "{refused}");
    }
    Ok(())
}
