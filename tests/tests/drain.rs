//! Draining a node under load, against a real broker and two real agents (process
//! runtime, simulated GPUs): no turn in flight is interrupted, turns that come after the
//! drain starts are refused before they run, the node is empty by its deadline, nothing
//! new lands on it, and a deadline stops even a turn that will not end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use hearth_sdk::{
    Client, Session,
    proto::v1::{
        DrainNodeRequest, GpuRequest, PlacementSpec, SessionSpec, SessionState,
        UncordonNodeRequest, WatchEventsRequest,
    },
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker},
};
use tonic::Code;

struct Fixture {
    broker: Broker,
    client: Client,
    _agents: Vec<Agent>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A broker and agents `nodes`, each labelled `node=<its id>` with 2 simulated GPUs.
    async fn start(nodes: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
        let mut agents = Vec::new();
        for id in nodes {
            let label = format!("node={id}");
            agents.push(Agent::spawn(
                dir.path(),
                id,
                &[&broker.url],
                &["--simulate-gpus", "2", "--label", &label],
            )?);
        }
        for id in nodes {
            api::node_ready(&broker.url, id).await?;
        }
        let client = Client::connect(&broker.url).await?;
        Ok(Self {
            broker,
            client,
            _agents: agents,
            _dir: dir,
        })
    }

    /// A worker session pinned to `node`.
    async fn session_on(&self, node: &str) -> anyhow::Result<Session> {
        let spec = SessionSpec {
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            placement: Some(PlacementSpec {
                node_selector: [("node".to_owned(), node.to_owned())].into(),
                ..PlacementSpec::default()
            }),
            ..images::worker_spec(images::worker_binary().display().to_string())
        };
        let session = self.client.create(spec).await?;
        assert_eq!(session.info().node_id, node);
        Ok(session)
    }

    async fn drain(&self, node: &str, deadline: Duration) -> anyhow::Result<()> {
        let node = self
            .client
            .admin()
            .drain_node(DrainNodeRequest {
                id: node.to_owned(),
                deadline: Some(hearth_sdk::time::duration(deadline)),
            })
            .await?
            .into_inner();
        assert!(node.draining && !node.schedulable, "{node:?}");
        Ok(())
    }

    async fn state(&self, session: &Session) -> anyhow::Result<SessionState> {
        Ok(self.client.get_session(session.id()).await?.state())
    }
}

/// What one client loop of `/incr` turns saw.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    /// The largest counter value a turn returned.
    highest: AtomicU64,
    refused: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_load_interrupts_no_turn_and_empties_the_node() -> anyhow::Result<()> {
    let f = Fixture::start(&["drain-a", "drain-b"]).await?;
    let mut events = f
        .client
        .admin()
        .watch_events(WatchEventsRequest {
            kinds: vec!["node.".into()],
        })
        .await?
        .into_inner();
    let idle = f.session_on("drain-a").await?;
    let busy = Arc::new(f.session_on("drain-a").await?);

    // Load: four loops of Invoke turns on `busy`, plus one Exec turn that runs for 1.5 s
    // across the moment the drain starts.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (busy, stop, load) = (busy.clone(), stop.clone(), load.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match busy.invoke(8080, "/incr").method("POST").await {
                    Ok(r) => {
                        assert_eq!(r.status, 200, "{r:?}");
                        let n: u64 = r.text().trim().parse().expect("a counter");
                        load.ok.fetch_add(1, Ordering::SeqCst);
                        load.highest.fetch_max(n, Ordering::SeqCst);
                    }
                    // Refused before it ran: the only failure a drain may cause.
                    Err(e) if e.code() == Some(Code::FailedPrecondition) => {
                        assert!(e.to_string().contains("not run"), "{e}");
                        load.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => panic!("a turn failed under drain: {e}"),
                }
            }
        }));
    }
    let worker = images::worker_binary().display().to_string();
    let long_turn = {
        let busy = busy.clone();
        tokio::spawn(async move { busy.exec([worker.as_str(), "sleep", "1.5"]).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(load.ok.load(Ordering::SeqCst) > 0, "the load is running");

    let deadline = Duration::from_secs(60);
    let drained_at = Instant::now();
    f.drain("drain-a", deadline).await?;

    // The idle session goes at once; the busy one only after its Exec turn ends well.
    let exec = long_turn.await??;
    assert!(exec.success(), "the long turn was interrupted: {exec:?}");
    for loop_ in loops {
        loop_.await?;
    }
    eventually("drain-a empty", Duration::from_secs(30), || async {
        let idle_done = f.state(&idle).await? == SessionState::Stopped;
        let busy_done = f.state(&busy).await? == SessionState::Stopped;
        Ok((idle_done && busy_done).then_some(()))
    })
    .await?;
    assert!(drained_at.elapsed() < deadline, "emptied by the deadline");
    stop.store(true, Ordering::SeqCst);

    // Every turn that ran was answered: the worker's counter went exactly as far as the
    // number of answers, so no turn ran without reaching its caller.
    let (ok, highest) = (
        load.ok.load(Ordering::SeqCst),
        load.highest.load(Ordering::SeqCst),
    );
    assert_eq!(ok, highest, "turns answered vs the worker's own count");
    assert_eq!(
        load.refused.load(Ordering::SeqCst),
        4,
        "each loop was refused once"
    );
    let reason = f.client.get_session(busy.id()).await?.state_reason;
    assert!(reason.contains("draining"), "{reason}");

    // Nothing new lands on the drained node; it stays cordoned while draining.
    let node = api::node(&f.broker.url, "drain-a").await?;
    assert!(node.draining && !node.schedulable, "{node:?}");
    let elsewhere = f
        .client
        .create(SessionSpec {
            image: images::worker_binary().display().to_string(),
            gpus: Some(GpuRequest {
                count: 1,
                ..GpuRequest::default()
            }),
            ..SessionSpec::default()
        })
        .await?;
    assert_eq!(elsewhere.info().node_id, "drain-b");
    let err = f.session_on("drain-a").await.unwrap_err();
    assert!(err.to_string().contains("drain-a: draining"), "{err}");

    // The operator saw it happen.
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "node.drained") {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .expect("the event stream stays open")?;
        if event.node_id == "drain-a" {
            kinds.push(event.kind);
        }
    }
    assert_eq!(kinds, ["node.draining", "node.drained"]);

    // Uncordon ends the drain.
    let node = f
        .client
        .admin()
        .uncordon_node(UncordonNodeRequest {
            id: "drain-a".into(),
        })
        .await?
        .into_inner();
    assert!(!node.draining && node.schedulable, "{node:?}");
    f.session_on("drain-a").await?.delete().await?;
    elsewhere.delete().await?;
    Ok(())
}

/// A turn that outlives the drain's deadline is stopped with its session at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_stops_a_turn_that_will_not_end() -> anyhow::Result<()> {
    let f = Fixture::start(&["deadline-a"]).await?;
    let session = f.session_on("deadline-a").await?;
    let worker = images::worker_binary().display().to_string();
    let mut turn = session
        .exec([worker.as_str(), "sleep", "600"])
        .stream()
        .await?;
    let started = Instant::now();
    f.drain("deadline-a", Duration::from_secs(2)).await?;

    // Still running before the deadline...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(f.state(&session).await?, SessionState::Ready);
    // ...and stopped soon after it.
    eventually(
        "stopped at the deadline",
        Duration::from_secs(20),
        || async { Ok((f.state(&session).await? == SessionState::Stopped).then_some(())) },
    )
    .await?;
    assert!(started.elapsed() >= Duration::from_secs(2));
    let reason = f.client.get_session(session.id()).await?.state_reason;
    assert!(reason.contains("deadline"), "{reason}");
    // The turn's stream ends (with an error or without an exit status), it does not hang.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = turn.next().await {
            if event.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the interrupted turn's stream never ended");

    // Bad input names the field.
    let err = f
        .client
        .admin()
        .drain_node(DrainNodeRequest {
            id: "deadline-a".into(),
            deadline: Some(hearth_sdk::time::duration(Duration::from_secs(
                30 * 24 * 3600,
            ))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("invalid deadline:"), "{err:?}");
    let err = f
        .client
        .admin()
        .drain_node(DrainNodeRequest {
            id: "no-such-node".into(),
            deadline: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    Ok(())
}
