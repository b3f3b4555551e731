//! `hearth.v1.NodeAgent.Connect`: the one stream per GPU host.
//!
//! The agent's first message must be `Hello`; the broker checks it, records the node and
//! answers `Welcome`. After that every agent message counts as a heartbeat. Messages to the
//! agent go through a bounded outbox: a sender that finds it full waits (backpressure), and
//! the whole stream closes when the agent goes away, a newer stream of the same node
//! replaces it, leadership is lost, or the broker shuts down.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, CancelTurn, Welcome, agent_message, broker_message,
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
        let first = tokio::time::timeout(self.cluster.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within hello_timeout ({})",
                    humantime::format_duration(self.cluster.config.hello_timeout)
                ))
            })??;
        let hello = match first.and_then(|m| m.msg) {
            Some(agent_message::Msg::Hello(hello)) => hello,
            Some(_) => {
                return Err(
                    Error::invalid("msg", "the first message on a stream must be Hello").into(),
                );
            }
            None => {
                return Err(Status::cancelled(
                    "the agent closed its stream before Hello",
                ));
            }
        };
        let hello = convert::hello(hello)?;
        tls::check_hello(&peer, &hello.node_id)?;
        Ok((leader, hello))
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
        let connection = self
            .cluster
            .nodes
            .connect(&leader, hello, tx.clone())
            .await?;
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
        // The outbox is empty and its receiver is alive: this cannot fail or wait.
        let _ = tx.try_send(welcome);
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
