//! The agent's broker link against a scripted in-process broker (a real tonic server on
//! `127.0.0.1:0`), with the agent started through the same `run` the binary calls.
//! GPUs are simulated and sessions run on the process runtime (in a temporary state
//! directory): this is link behaviour, not hardware or Docker.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hearth_agent::{Config, RuntimeKind};
use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CancelTurn, CommandMeta, ExecCommand, GpuSource, Hello,
    NodeTelemetry, Reply, StartSessionCommand, Welcome, agent_message, broker_message,
    node_agent_server::{NodeAgent, NodeAgentServer},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One agent stream as the broker sees it, after the agent's Hello.
struct Conn {
    hello: Hello,
    inbound: Streaming<AgentMessage>,
    to_agent: mpsc::Sender<Result<BrokerMessage, Status>>,
}

impl Conn {
    async fn send(&self, msg: broker_message::Msg) {
        self.to_agent
            .send(Ok(BrokerMessage { msg: Some(msg) }))
            .await
            .expect("agent stream open");
    }

    async fn welcome(&self, epoch: i64, telemetry_interval: Duration) {
        self.send(broker_message::Msg::Welcome(Welcome {
            epoch,
            broker_id: "fake-broker".into(),
            telemetry_interval: Some(hearth_sdk::time::duration(telemetry_interval)),
            suspect_after: None,
        }))
        .await;
    }

    async fn next(&mut self) -> agent_message::Msg {
        tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("agent message in time")
            .expect("stream ok")
            .expect("stream open")
            .msg
            .expect("message set")
    }

    async fn next_telemetry(&mut self) -> NodeTelemetry {
        loop {
            if let agent_message::Msg::Telemetry(t) = self.next().await {
                return t;
            }
        }
    }

    async fn next_reply(&mut self) -> Reply {
        loop {
            match self.next().await {
                agent_message::Msg::Reply(r) => return r,
                agent_message::Msg::Telemetry(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[derive(Clone)]
enum Role {
    /// Hands every stream to the test after reading its Hello.
    Leader(mpsc::UnboundedSender<Conn>),
    /// Refuses every stream, naming `leader` in the `hearth-leader` metadata.
    Standby {
        leader: String,
        refusals: Arc<Mutex<u32>>,
    },
}

struct FakeBroker(Role);

#[tonic::async_trait]
impl NodeAgent for FakeBroker {
    type ConnectStream = ReceiverStream<Result<BrokerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        match &self.0 {
            Role::Standby { leader, refusals } => {
                *refusals.lock().unwrap() += 1;
                let mut status = Status::unavailable("not the leader");
                status
                    .metadata_mut()
                    .insert(hearth_sdk::LEADER_METADATA_KEY, leader.parse().unwrap());
                Err(status)
            }
            Role::Leader(conns) => {
                let mut inbound = request.into_inner();
                let hello = match inbound.message().await? {
                    Some(AgentMessage {
                        msg: Some(agent_message::Msg::Hello(hello)),
                    }) => hello,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "want Hello, got {other:?}"
                        )));
                    }
                };
                let (to_agent, rx) = mpsc::channel(16);
                let _ = conns.send(Conn {
                    hello,
                    inbound,
                    to_agent,
                });
                Ok(Response::new(ReceiverStream::new(rx)))
            }
        }
    }
}

async fn start_broker(role: Role) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeAgentServer::new(FakeBroker(role)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn start_leader() -> (String, mpsc::UnboundedReceiver<Conn>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (start_broker(Role::Leader(tx)).await, rx)
}

async fn next_conn(conns: &mut mpsc::UnboundedReceiver<Conn>) -> Conn {
    tokio::time::timeout(DEADLINE, conns.recv())
        .await
        .expect("agent connected in time")
        .expect("broker running")
}

struct Agent {
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), hearth_agent::Error>>,
    _state_dir: tempfile::TempDir,
}

impl Agent {
    async fn start(mut config: Config) -> Self {
        let state_dir = tempfile::tempdir().unwrap();
        config.state_dir = state_dir.path().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hearth_agent::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            admin,
            stop: Some(stop),
            task,
            _state_dir: state_dir,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run returns promptly after shutdown")
            .unwrap()
            .expect("run returns Ok");
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

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
    let (url, mut conns) = start_leader().await;
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
    let (url, mut conns) = start_leader().await;
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
    let reply = conn.next_reply().await;
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
    let reply = conn.next_reply().await;
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
    let reply = conn.next_reply().await;
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
    let (url, mut conns) = start_leader().await;
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
    let (leader, mut conns) = start_leader().await;
    let refusals = Arc::new(Mutex::new(0));
    let standby = start_broker(Role::Standby {
        leader: leader.clone(),
        refusals: refusals.clone(),
    })
    .await;
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
    let (url, mut conns) = start_leader().await;
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
    let (url, mut conns) = start_leader().await;
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
    let (url, mut conns) = start_leader().await;
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
