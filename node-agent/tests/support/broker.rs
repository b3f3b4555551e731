//! A scripted broker for the agent's integration tests: a real tonic `NodeAgent` server on
//! `127.0.0.1:0` that hands each agent stream to the test (or, as a standby, refuses it and
//! names the leader), and the agent itself started through the same `run` the binary calls.

#![allow(dead_code)] // each test crate uses its own part of this

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hearth_agent::Config;
use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, Hello, NodeTelemetry, Reply, SessionState, SessionStatus, Welcome,
    agent_message, broker_message,
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

/// How long any one expected message may take.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// One agent stream as the broker sees it, after the agent's Hello.
pub struct Conn {
    /// The agent's Hello.
    pub hello: Hello,
    inbound: Streaming<AgentMessage>,
    to_agent: mpsc::Sender<Result<BrokerMessage, Status>>,
    /// The latest telemetry seen while waiting for other messages.
    pub last_telemetry: Option<NodeTelemetry>,
}

impl Conn {
    /// Sends a message to the agent.
    pub async fn send(&self, msg: broker_message::Msg) {
        self.to_agent
            .send(Ok(BrokerMessage { msg: Some(msg) }))
            .await
            .expect("agent stream open");
    }

    /// Sends `Welcome` with `epoch` and a telemetry interval.
    pub async fn welcome(&self, epoch: i64, telemetry_interval: Duration) {
        self.send(broker_message::Msg::Welcome(Welcome {
            epoch,
            broker_id: "fake-broker".into(),
            telemetry_interval: Some(hearth_sdk::time::duration(telemetry_interval)),
            suspect_after: None,
            cluster_id: String::new(),
        }))
        .await;
    }

    /// The next message of any kind.
    pub async fn next_any(&mut self) -> agent_message::Msg {
        self.next_within(DEADLINE)
            .await
            .expect("agent message in time")
    }

    /// The next message within `limit`, or `None`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<agent_message::Msg> {
        tokio::time::timeout(limit, self.inbound.message())
            .await
            .ok()
            .map(|m| {
                m.expect("stream ok")
                    .expect("stream open")
                    .msg
                    .expect("message set")
            })
    }

    /// The next message that is not telemetry (telemetry is remembered).
    pub async fn next(&mut self) -> agent_message::Msg {
        loop {
            match self.next_any().await {
                agent_message::Msg::Telemetry(t) => self.last_telemetry = Some(t),
                other => return other,
            }
        }
    }

    /// The next telemetry sample.
    pub async fn next_telemetry(&mut self) -> NodeTelemetry {
        loop {
            if let agent_message::Msg::Telemetry(t) = self.next_any().await {
                return t;
            }
        }
    }

    /// The next message, which must be a Reply.
    pub async fn reply(&mut self) -> Reply {
        match self.next().await {
            agent_message::Msg::Reply(r) => r,
            other => panic!("expected a Reply, got {other:?}"),
        }
    }

    /// The next message, which must be a SessionStatus in `state`.
    pub async fn status(&mut self, state: SessionState) -> SessionStatus {
        match self.next().await {
            agent_message::Msg::SessionStatus(s) if s.state() == state => s,
            other => panic!("expected SessionStatus {state:?}, got {other:?}"),
        }
    }
}

struct FakeBroker(mpsc::UnboundedSender<Conn>);

#[tonic::async_trait]
impl NodeAgent for FakeBroker {
    type ConnectStream = ReceiverStream<Result<BrokerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
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
        let _ = self.0.send(Conn {
            hello,
            inbound,
            to_agent,
            last_telemetry: None,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ConnectTurnsStream = ReceiverStream<Result<BrokerMessage, Status>>;

    /// No turn links, as a broker of an older version: these tests script the main stream.
    async fn connect_turns(
        &self,
        _: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectTurnsStream>, Status> {
        Err(Status::unimplemented("the fake broker has no turn links"))
    }
}

/// A standby: refuses every stream, naming `leader` in the `hearth-leader` metadata, and
/// counts its refusals.
struct Standby {
    leader: String,
    refusals: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl NodeAgent for Standby {
    type ConnectStream = ReceiverStream<Result<BrokerMessage, Status>>;

    async fn connect(
        &self,
        _: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        *self.refusals.lock().unwrap() += 1;
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            hearth_sdk::LEADER_METADATA_KEY,
            self.leader.parse().unwrap(),
        );
        Err(status)
    }

    type ConnectTurnsStream = ReceiverStream<Result<BrokerMessage, Status>>;

    async fn connect_turns(
        &self,
        _: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectTurnsStream>, Status> {
        Err(Status::unimplemented("the fake standby has no turn links"))
    }
}

async fn serve<S: NodeAgent>(service: S) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeAgentServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Starts a broker that hands every agent stream to the returned receiver.
pub async fn start_broker() -> (String, mpsc::UnboundedReceiver<Conn>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (serve(FakeBroker(tx)).await, rx)
}

/// Starts a standby that sends agents to `leader`; the counter holds its refusals.
pub async fn start_standby(leader: &str) -> (String, Arc<Mutex<u32>>) {
    let refusals = Arc::new(Mutex::new(0));
    let url = serve(Standby {
        leader: leader.to_owned(),
        refusals: refusals.clone(),
    })
    .await;
    (url, refusals)
}

/// The next agent stream.
pub async fn next_conn(conns: &mut mpsc::UnboundedReceiver<Conn>) -> Conn {
    tokio::time::timeout(DEADLINE, conns.recv())
        .await
        .expect("agent connected in time")
        .expect("broker running")
}

/// An agent running in this process.
pub struct Agent {
    /// Its admin address.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), hearth_agent::Error>>,
    _state_dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Runs the agent with `config`. A config that keeps the default `state_dir` gets a
    /// temporary one instead, so tests never write to the host's.
    pub async fn start(mut config: Config) -> Self {
        let state_dir = (config.state_dir == Config::default().state_dir).then(|| {
            let dir = tempfile::tempdir().unwrap();
            config.state_dir = dir.path().to_owned();
            dir
        });
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

    /// GETs `path` on the agent's admin port: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.admin).await.unwrap();
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

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
    }

    /// Stops the agent and checks that `run` returned Ok.
    pub async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run returns promptly after shutdown")
            .unwrap()
            .expect("run returns Ok");
    }
}

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
