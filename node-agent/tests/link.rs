//! The agent's broker link against a scripted in-process broker (a real tonic server on
//! `127.0.0.1:0`), with the agent started through the same `run` the binary calls.
//! GPUs are simulated and sessions run on the process runtime (in a temporary state
//! directory): this is link behaviour, not hardware or Docker.

#[path = "support/broker.rs"]
mod broker;

use std::time::{Duration, Instant};

use broker::{Agent, eventually, next_conn, start_broker, start_standby};
use hearth_agent::{Config, RuntimeKind};
use hearth_sdk::proto::v1::{
    CancelTurn, CommandMeta, ExecCommand, GpuSource, StartSessionCommand, broker_message,
};

fn config(brokers: &[&str]) -> Config {
    Config {
        broker: brokers.iter().map(|b| b.to_string()).collect(),
        node_id: "test-node".into(),
        labels: [("zone".to_owned(), "z1".to_owned())].into(),
        taints: vec!["dedicated".into()],
        simulate_gpus: Some(2),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        hello_timeout: Duration::from_secs(5),
        runtime: RuntimeKind::Process,
        ..Config::default()
    }
}

#[tokio::test]
async fn hello_welcome_telemetry_and_ready() {
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&[&url])).await;
    let mut conn = next_conn(&mut conns).await;

    let hello = &conn.hello;
    assert_eq!(hello.node_id, "test-node");
    assert_eq!(hello.version, hearth_sdk::VERSION);
    assert!(
        ulid::Ulid::from_string(&hello.incarnation).is_ok(),
        "{hello:?}"
    );
    assert_eq!(hello.labels["zone"], "z1");
    assert_eq!(hello.taints, ["dedicated"]);
    assert_eq!(hello.gpu_source(), GpuSource::Simulated);
    assert_eq!(hello.gpus.len(), 2);
    assert!(
        hello
            .gpus
            .iter()
            .all(|g| g.simulated && g.uuid.starts_with("GPU-SIM-test-node-"))
    );
    let capacity = hello.capacity.unwrap();
    assert!(
        capacity.cpu_cores >= 1 && capacity.memory_bytes > 0,
        "{capacity:?}"
    );
    assert_eq!(hello.runtime, "process");
    assert!(hello.sessions.is_empty());
    assert_eq!(hello.highest_epoch, 0);

    // Not ready before Welcome.
    assert_eq!(agent.get("/ready").await.0, 503);
    assert_eq!(agent.get("/live").await.0, 200);

    // Welcome's interval (50 ms) beats the config's 1 s: five samples arrive quickly.
    conn.welcome(3, Duration::from_millis(50)).await;
    let start = Instant::now();
    for _ in 0..5 {
        let t = conn.next_telemetry().await;
        assert_eq!(t.gpus.len(), 2);
        assert!(t.gpus.iter().all(|g| g.simulated));
        assert!(t.sampled_at.is_some());
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );

    eventually("/ready", || async {
        (agent.get("/ready").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(agent.metric("hearth_agent_connected").await, 1.0);
    assert!(
        agent
            .metric("hearth_agent_telemetry_samples_sent_total")
            .await
            >= 5.0
    );
    assert_eq!(agent.metric("hearth_agent_highest_epoch").await, 3.0);
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.contains(&format!("hearth_agent_broker{{url=\"{url}\"}} 1")),
        "{metrics}"
    );

    agent.shutdown().await;
}

#[tokio::test]
async fn bad_commands_are_refused_and_stale_epochs_fenced() {
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&[&url])).await;
    let mut conn = next_conn(&mut conns).await;
    conn.welcome(5, Duration::from_secs(1)).await;

    let meta = |id: &str, epoch| {
        Some(CommandMeta {
            command_id: id.into(),
            epoch,
            session_id: "s1".into(),
            generation: 1,
        })
    };
    conn.send(broker_message::Msg::StartSession(StartSessionCommand {
        meta: meta("c1", 5),
        ..Default::default()
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(reply.command_id, "c1");
    assert!(!reply.ok);
    assert_eq!(reply.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(reply.code, 3);
    assert_eq!(reply.message, "StartSession carries no spec");

    // CancelTurn gets no reply; a command from an older leader is refused for its epoch.
    conn.send(broker_message::Msg::CancelTurn(CancelTurn {
        turn_id: "t1".into(),
    }))
    .await;
    conn.send(broker_message::Msg::Exec(ExecCommand {
        meta: meta("c2", 4),
        turn_id: "t2".into(),
        request: None,
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(
        reply.command_id, "t2",
        "CancelTurn must not be answered; a turn's Reply carries the turn id"
    );
    assert!(!reply.ok);
    assert_eq!(reply.code, tonic::Code::FailedPrecondition as i32);
    assert!(
        reply.message.contains("stale leader epoch 4"),
        "{}",
        reply.message
    );

    // A newer epoch raises the fence, and the next Hello reports it.
    conn.send(broker_message::Msg::Exec(ExecCommand {
        meta: meta("c3", 9),
        turn_id: "t3".into(),
        request: None,
    }))
    .await;
    let reply = conn.reply().await;
    assert_eq!(
        (reply.command_id.as_str(), reply.code),
        ("t3", 3),
        "{reply:?}"
    );
    let incarnation = conn.hello.incarnation.clone();
    drop(conn); // the broker hangs up

    let conn = next_conn(&mut conns).await;
    assert_eq!(conn.hello.highest_epoch, 9, "fence survives reconnects");
    assert_eq!(
        conn.hello.incarnation, incarnation,
        "same process, same incarnation"
    );
    assert!(agent.metric("hearth_agent_reconnects_total").await >= 1.0);
    let (_, metrics) = agent.get("/metrics").await;
    assert!(metrics.contains("hearth_agent_commands_refused_total{reason=\"stale_epoch\"} 1"));
    assert!(
        metrics.contains("hearth_agent_turns_total{kind=\"exec\",outcome=\"failed\"} 1"),
        "{metrics}"
    );

    agent.shutdown().await;
}

#[tokio::test]
async fn ready_follows_the_stream_and_reconnect_follows_a_drop() {
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(config(&[&url])).await;
    let conn = next_conn(&mut conns).await;
    conn.welcome(1, Duration::from_secs(1)).await;
    eventually("ready", || async {
        (agent.get("/ready").await.0 == 200).then_some(())
    })
    .await;

    // A new stream is held without Welcome: the agent must report not ready meanwhile.
    drop(conn);
    let conn = next_conn(&mut conns).await;
    eventually("not ready", || async {
        (agent.get("/ready").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(agent.metric("hearth_agent_connected").await, 0.0);
    conn.welcome(1, Duration::from_secs(1)).await;
    eventually("ready again", || async {
        (agent.get("/ready").await.0 == 200).then_some(())
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test]
async fn standby_redirects_to_the_leader() {
    let (leader, mut conns) = start_broker().await;
    let (standby, refusals) = start_standby(&leader).await;
    // Only the standby is configured: the leader can be found only through its hint.
    let agent = Agent::start(config(&[&standby])).await;
    let conn = next_conn(&mut conns).await;
    assert_eq!(conn.hello.node_id, "test-node");
    assert_eq!(*refusals.lock().unwrap(), 1);
    conn.welcome(1, Duration::from_secs(1)).await;
    eventually("ready", || async {
        (agent.get("/ready").await.0 == 200).then_some(())
    })
    .await;
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.contains(&format!("hearth_agent_broker{{url=\"{leader}\"}} 1")),
        "{metrics}"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn missing_welcome_times_out_and_redials() {
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(Config {
        hello_timeout: Duration::from_millis(300),
        ..config(&[&url])
    })
    .await;
    let first = next_conn(&mut conns).await;
    let start = Instant::now();
    let second = next_conn(&mut conns).await; // `first` is still open: the agent gave up on it
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(first.hello.incarnation, second.hello.incarnation);
    assert_eq!(agent.get("/ready").await.0, 503);
    agent.shutdown().await;
}

#[tokio::test]
async fn slow_broker_gets_samples_dropped_not_buffered() {
    let (url, mut conns) = start_broker().await;
    // Many GPUs with long UUIDs make each sample large (~8 KB), so HTTP/2 flow control fills
    // quickly when the broker stops reading; after that only the bounded mailbox is left,
    // then samples are dropped.
    let agent = Agent::start(Config {
        simulate_gpus: Some(hearth_agent::config::MAX_SIMULATED_GPUS),
        node_id: format!("slow-{}", "x".repeat(58)),
        ..config(&[&url])
    })
    .await;
    let conn = next_conn(&mut conns).await;
    conn.welcome(1, Duration::from_millis(10)).await;
    // Never read `conn.inbound` again.
    let dropped = eventually("dropped samples", || async {
        let n = agent
            .metric("hearth_agent_telemetry_samples_dropped_total")
            .await;
        (n > 0.0).then_some(n)
    })
    .await;
    assert!(dropped > 0.0);
    assert_eq!(
        agent.metric("hearth_agent_connected").await,
        1.0,
        "dropping is not disconnecting"
    );
    drop(conn);
    agent.shutdown().await;
}

#[tokio::test]
async fn cpu_only_node_says_so() {
    let (url, mut conns) = start_broker().await;
    let agent = Agent::start(Config {
        simulate_gpus: None,
        no_gpus: true,
        ..config(&[&url])
    })
    .await;
    let conn = next_conn(&mut conns).await;
    assert_eq!(conn.hello.gpu_source(), GpuSource::None);
    assert!(conn.hello.gpus.is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn invalid_config_fails_before_dialling() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        reconnect_backoff_min: Duration::from_secs(20),
        ..config(&["http://127.0.0.1:1"])
    };
    let err = hearth_agent::run(config, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("reconnect_backoff_min (20s)"),
        "{err}"
    );
}
