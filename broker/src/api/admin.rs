//! `hearth.v1.Admin`, for operators.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    AdminListSessionsRequest, ClusterInfo, CordonNodeRequest, CreateTokenRequest,
    CreateTokenResponse, DrainNodeRequest, Event, GetClusterInfoRequest, GetNodeRequest,
    ListNodesRequest, ListNodesResponse, ListSessionsResponse, ListTokensRequest,
    ListTokensResponse, Node, NodeState, RevokeTokenRequest, TokenInfo, UncordonNodeRequest,
    WatchEventsRequest, admin_server::Admin,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::BoxStream;
use crate::{
    auth,
    cluster::{Cluster, Role},
    convert,
    error::Error,
    nodes::NODES_PREFIX,
    tokens,
};

/// The Admin service.
pub struct AdminService {
    cluster: Arc<Cluster>,
}

impl AdminService {
    /// A service over the shared state.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let states = convert::node_states("states", &request.get_ref().states)?;
        self.cluster.require_leader().await?;
        let nodes = self
            .cluster
            .nodes
            .list()
            .into_iter()
            .filter(|n| states.is_empty() || states.contains(&n.state()))
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, request: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        let id = &request.get_ref().id;
        convert::node_id("id", id)?;
        self.cluster.require_leader().await?;
        Ok(Response::new(self.cluster.nodes.get(id)?))
    }

    async fn cordon_node(
        &self,
        request: Request<CordonNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let id = &request.get_ref().id;
        convert::node_id("id", id)?;
        let leader = self.cluster.require_leader().await?;
        Ok(Response::new(
            self.cluster
                .nodes
                .set_schedulable(&leader, id, false)
                .await?,
        ))
    }

    async fn uncordon_node(
        &self,
        request: Request<UncordonNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let id = &request.get_ref().id;
        convert::node_id("id", id)?;
        let leader = self.cluster.require_leader().await?;
        let node = self
            .cluster
            .nodes
            .set_schedulable(&leader, id, true)
            .await?;
        self.cluster.drains.cancel(id);
        self.cluster.sessions.reopen(id);
        Ok(Response::new(node))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let request = request.into_inner();
        convert::node_id("id", &request.id)?;
        let requested = request
            .deadline
            .as_ref()
            .map(|d| hearth_sdk::time::std_duration(d, "deadline"))
            .transpose()
            .map_err(|reason| Error::invalid("deadline", reason))?;
        let deadline = crate::drain::deadline(requested)?;
        let leader = self.cluster.require_leader().await?;
        Ok(Response::new(
            self.cluster
                .drains
                .start(&self.cluster, &leader, &request.id, deadline)
                .await?,
        ))
    }

    async fn list_sessions(
        &self,
        request: Request<AdminListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let request = request.into_inner();
        self.cluster.require_leader().await?;
        let tenant = (!request.tenant.is_empty()).then_some(request.tenant.as_str());
        let all = self
            .cluster
            .sessions
            .list(tenant)
            .into_iter()
            .filter(|s| request.node_id.is_empty() || s.node_id == request.node_id)
            .collect();
        let filter = request.filter.unwrap_or_default();
        Ok(Response::new(super::sessions::page(all, &filter)?))
    }

    type WatchEventsStream = BoxStream<Event>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let kinds = request.into_inner().kinds;
        self.cluster.require_leader().await?;
        let mut rx = self.cluster.events.subscribe();
        let events = self.cluster.events.clone();
        let shutdown = self.cluster.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = rx.recv() => e,
                };
                let event = match event {
                    Ok(e) => e,
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(n)) => {
                        events.record_dropped(n);
                        Event {
                            time: Some(hearth_sdk::time::now()),
                            kind: "events.dropped".to_owned(),
                            message: format!("this watcher fell behind and missed {n} events"),
                            ..Event::default()
                        }
                    }
                };
                let wanted = event.kind == "events.dropped"
                    || kinds.is_empty()
                    || kinds.iter().any(|k| event.kind.starts_with(k.as_str()));
                if wanted && tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_cluster_info(
        &self,
        _: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        let c = &self.cluster;
        let mut info = ClusterInfo {
            version: hearth_sdk::VERSION.to_owned(),
            broker_id: c.broker_id.clone(),
            store: c.store.kind().to_owned(),
            ..ClusterInfo::default()
        };
        match c.role() {
            Role::Leader(leader) => {
                info.is_leader = true;
                info.leader_id = c.broker_id.clone();
                info.leader_address = c.advertise_url.clone();
                info.epoch = leader.epoch;
                info.leader_since = Some(hearth_sdk::time::timestamp(leader.since));
                let nodes = c.nodes.list();
                info.nodes_total = nodes.len() as u32;
                info.nodes_ready = nodes
                    .iter()
                    .filter(|n| n.state() == NodeState::Ready)
                    .count() as u32;
                info.gpus_total = nodes.iter().map(|n| n.gpus.len() as u32).sum();
            }
            Role::Standby => {
                if let Some(leader) = c.leader_info().await {
                    info.leader_id = leader.broker_id;
                    info.leader_address = leader.address;
                    info.epoch = leader.epoch;
                }
                // A standby holds no live state; the store still knows how many nodes exist.
                if let Ok(records) = c.store.list(NODES_PREFIX).await {
                    info.nodes_total = records.len() as u32;
                }
            }
        }
        Ok(Response::new(info))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let created = tokens::create(&self.cluster, &caller, request.into_inner()).await?;
        Ok(Response::new(created))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tokens = tokens::list(&self.cluster, request.get_ref()).await?;
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        let caller = auth::caller(&request)?;
        let revoked = tokens::revoke(&self.cluster, &caller, &request.get_ref().id).await?;
        Ok(Response::new(revoked))
    }
}

/// A server stream fed by a task through a small bounded channel: a slow reader makes the
/// task wait instead of the broker buffering.
fn async_stream<T, F, Fut>(body: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
