//! `hearth.v1.NodeAgent.Connect`: the one stream per GPU host, and `ConnectTurns`: the
//! turn links ([`crate::turn_links`]).
//!
//! The agent's first message must be `Hello`; the broker checks it, records the node and
//! answers `Welcome`. After that every agent message counts as a heartbeat. Messages to the
//! agent go through a bounded outbox: a sender that finds it full waits (backpressure), and
//! the whole stream closes when the agent goes away, a newer stream of the same node
//! replaces it, leadership is lost, or the broker shuts down.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CancelTurn, Hello, Welcome, agent_message, broker_message,
    node_agent_server::NodeAgent,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::BoxStream;
use crate::{
    cluster::{Cluster, LeaderState},
    convert,
    error::Error,
    nodes::Connection,
    tls::{self, AgentIdentity},
    turn_links,
    turns::Routed,
};

/// Messages queued to one agent before senders wait.
pub const OUTBOX: usize = 256;

/// The NodeAgent service.
pub struct NodeAgentService {
    cluster: Arc<Cluster>,
}

impl NodeAgentService {
    /// A service over the shared state.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    async fn accept(
        &self,
        peer: Result<AgentIdentity, Status>,
        inbound: &mut Streaming<AgentMessage>,
    ) -> Result<(LeaderState, convert::CheckedHello), Status> {
        let peer = peer?;
        let leader = self.cluster.require_leader().await?;
        let hello = convert::hello(self.read_hello(inbound).await?)?;
        tls::check_hello(&peer, &hello.node_id)?;
        Ok((leader, hello))
    }

    /// The stream's first message, which must be a Hello sent within `hello_timeout`.
    async fn read_hello(&self, inbound: &mut Streaming<AgentMessage>) -> Result<Hello, Status> {
        let first = tokio::time::timeout(self.cluster.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within hello_timeout ({})",
                    humantime::format_duration(self.cluster.config.hello_timeout)
                ))
            })??;
        match first.and_then(|m| m.msg) {
            Some(agent_message::Msg::Hello(hello)) => Ok(hello),
            Some(_) => {
                Err(Error::invalid("msg", "the first message on a stream must be Hello").into())
            }
            None => Err(Status::cancelled(
                "the agent closed its stream before Hello",
            )),
        }
    }

    /// Checks a turn link's Hello: only the node id is read (and, with TLS, checked
    /// against the certificate).
    async fn accept_turn_link(
        &self,
        peer: Result<AgentIdentity, Status>,
        inbound: &mut Streaming<AgentMessage>,
    ) -> Result<String, Status> {
        let peer = peer?;
        let hello = self.read_hello(inbound).await?;
        convert::node_id("hello.node_id", &hello.node_id)?;
        tls::check_hello(&peer, &hello.node_id)?;
        Ok(hello.node_id)
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    type ConnectStream = BoxStream<BrokerMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        // With TLS, the node id comes from the verified client certificate.
        let peer = tls::agent_identity(&self.cluster.config.tls, request.peer_certs());
        let mut inbound = request.into_inner();
        let (leader, hello) = match self.accept(peer, &mut inbound).await {
            Ok(accepted) => accepted,
            Err(status) => {
                self.cluster.metrics.agent_streams_refused_total.inc();
                tracing::info!(code = ?status.code(), "refused an agent stream: {}", status.message());
                return Err(status);
            }
        };
        let node_id = hello.node_id.clone();
        let running = hello.sessions.clone();
        // Taken before the new stream can carry a start: only sessions placed before
        // this Hello are judged against its inventory.
        let expected = self.cluster.sessions.expected_on(&node_id);
        let (tx, rx) = mpsc::channel(OUTBOX);
        let welcome = BrokerMessage {
            msg: Some(broker_message::Msg::Welcome(Welcome {
                epoch: leader.epoch,
                cluster_id: leader.cluster_id.clone(),
                broker_id: self.cluster.broker_id.clone(),
                telemetry_interval: Some(hearth_sdk::time::duration(
                    self.cluster.config.liveness.telemetry_interval,
                )),
                suspect_after: Some(hearth_sdk::time::duration(
                    self.cluster.config.liveness.suspect_after,
                )),
            })),
        };
        // Queued before the node is registered, so that it is the first message on the
        // stream: once `connect` has registered the outbox (and while it persists the node),
        // a turn or a start for this node can be queued, and an agent drops a stream whose
        // first message is not Welcome. The outbox is empty and its receiver is alive: this
        // cannot fail or wait.
        let _ = tx.try_send(welcome);
        let connection = self
            .cluster
            .nodes
            .connect(&leader, hello, tx.clone())
            .await?;
        drop(tx);
        self.cluster.metrics.agent_streams.inc();
        // The node's inventory against the sessions placed on it (sessions.rs: adopt,
        // fail the missing, stop orphans).
        let (cluster, reconcile_leader, reconcile_node) =
            (self.cluster.clone(), leader.clone(), node_id.clone());
        tokio::spawn(async move {
            cluster
                .sessions
                .reconcile(
                    &cluster,
                    &reconcile_leader,
                    &reconcile_node,
                    expected,
                    running,
                )
                .await;
        });
        tokio::spawn(serve(
            self.cluster.clone(),
            leader,
            node_id,
            connection,
            inbound,
        ));
        let outbound = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }

    type ConnectTurnsStream = BoxStream<BrokerMessage>;

    async fn connect_turns(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectTurnsStream>, Status> {
        let peer = tls::agent_identity(&self.cluster.config.tls, request.peer_certs());
        let mut inbound = request.into_inner();
        let node_id = match self.accept_turn_link(peer, &mut inbound).await {
            Ok(node_id) => node_id,
            Err(status) => {
                tracing::info!(code = ?status.code(), "refused a turn link: {}", status.message());
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(OUTBOX);
        // A turn link carries no lifecycle command, so its Welcome carries no epoch.
        let _ = tx.try_send(BrokerMessage {
            msg: Some(broker_message::Msg::Welcome(Welcome {
                broker_id: self.cluster.broker_id.clone(),
                ..Welcome::default()
            })),
        });
        let connection = self.cluster.turn_links.insert(&node_id, tx);
        self.cluster.metrics.turn_links.inc();
        tracing::debug!(node_id, connection = connection.id, "turn link up");
        tokio::spawn(serve_turn_link(
            self.cluster.clone(),
            node_id,
            connection,
            inbound,
        ));
        let outbound = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Reads a turn link's messages (turn output and replies) until it ends.
async fn serve_turn_link(
    cluster: Arc<Cluster>,
    node_id: String,
    connection: Connection,
    mut inbound: Streaming<AgentMessage>,
) {
    let why = loop {
        let message = tokio::select! {
            _ = connection.closed.cancelled() => break "replaced by a newer link".to_owned(),
            _ = cluster.shutdown.cancelled() => break "the broker is shutting down".to_owned(),
            m = inbound.message() => m,
        };
        let routed = match message {
            Ok(Some(m)) => route_turn_message(&cluster, m).await,
            Ok(None) => break "the agent closed the link".to_owned(),
            Err(status) => break format!("stream error: {}", status.message()),
        };
        if let Routed::Cancel(turn_id) = routed {
            let _ = connection.tx.try_send(BrokerMessage {
                msg: Some(broker_message::Msg::CancelTurn(CancelTurn { turn_id })),
            });
        }
    };
    tracing::debug!(
        node_id,
        connection = connection.id,
        "turn link ended: {why}"
    );
    connection.closed.cancel();
    cluster.turn_links.remove(&node_id, connection.id);
    cluster.turns.node_gone(&turn_links::turns_key(&node_id));
    cluster.metrics.turn_links.dec();
}

/// Hands a turn's output or reply to the turn waiting for it.
async fn route_turn_message(cluster: &Cluster, message: AgentMessage) -> Routed {
    match message.msg {
        Some(agent_message::Msg::ExecOutput(out)) => match out.response {
            Some(r) => cluster.turns.on_exec_output(&out.turn_id, r).await,
            None => Routed::Done,
        },
        Some(agent_message::Msg::InvokeChunk(chunk)) => {
            cluster
                .turns
                .on_invoke_chunk(&chunk.turn_id, chunk.response, chunk.end)
                .await
        }
        Some(agent_message::Msg::Reply(reply)) => cluster.turns.on_reply(reply).await,
        _ => Routed::Done,
    }
}

/// Reads the agent's messages until the stream must end, then forgets the stream.
async fn serve(
    cluster: Arc<Cluster>,
    leader: LeaderState,
    node_id: String,
    connection: Connection,
    mut inbound: Streaming<AgentMessage>,
) {
    let why = loop {
        let message = tokio::select! {
            _ = connection.closed.cancelled() => break "closed by the broker (replaced, standby or shutdown)".to_owned(),
            m = inbound.message() => m,
        };
        let message = match message {
            Ok(Some(m)) => m,
            Ok(None) => break "the agent closed the stream".to_owned(),
            Err(status) => break format!("stream error: {}", status.message()),
        };
        let mut telemetry = None;
        let routed = match message.msg {
            Some(agent_message::Msg::Telemetry(t)) => {
                cluster.sessions.touch_busy(&t.busy_sessions);
                telemetry = Some(t);
                Routed::Done
            }
            Some(
                msg @ (agent_message::Msg::ExecOutput(_)
                | agent_message::Msg::InvokeChunk(_)
                | agent_message::Msg::Reply(_)),
            ) => route_turn_message(&cluster, AgentMessage { msg: Some(msg) }).await,
            Some(agent_message::Msg::SessionStatus(status)) => {
                if let Err(e) = cluster
                    .sessions
                    .on_status(&cluster, &leader, &node_id, status)
                    .await
                {
                    tracing::warn!(node_id, error = %e, "could not record a session status");
                }
                Routed::Done
            }
            Some(agent_message::Msg::PullProgress(progress)) => {
                cluster.turns.progress(&progress.command_id);
                cluster
                    .sessions
                    .on_pull_progress(&cluster, &node_id, &progress);
                Routed::Done
            }
            Some(agent_message::Msg::NodeImages(update)) => {
                match crate::convert::node_images("node_images.images", &update.images) {
                    Ok(images) => cluster
                        .nodes
                        .images_changed(&node_id, connection.id, images),
                    Err(e) => tracing::warn!(node_id, error = %e, "ignoring a node's image list"),
                }
                Routed::Done
            }
            Some(agent_message::Msg::Hello(_)) => {
                tracing::warn!(node_id, "ignoring a second Hello on one stream");
                Routed::Done
            }
            None => Routed::Done,
        };
        if let Routed::Cancel(turn_id) = routed {
            let _ = connection.tx.try_send(BrokerMessage {
                msg: Some(broker_message::Msg::CancelTurn(CancelTurn { turn_id })),
            });
        }
        if let Err(e) = cluster
            .nodes
            .heard(&leader, &node_id, connection.id, telemetry)
            .await
        {
            break format!("cannot record the node: {e}");
        }
    };
    tracing::info!(
        node_id,
        connection = connection.id,
        "agent stream ended: {why}"
    );
    // Dropping the registry's sender (and ours) ends the outbound stream.
    connection.closed.cancel();
    cluster.nodes.disconnected(&node_id, connection.id);
    cluster.turns.node_gone(&node_id);
    cluster.metrics.agent_streams.dec();
}
