//! `hearth.v1.Sessions`. Sessions on real containers are a later capability: until the
//! broker can place and run them, every RPC answers UNIMPLEMENTED and says so.

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecRequest, ExecResponse, GetSessionRequest,
    InvokeRequest, InvokeResponse, KeepAliveRequest, KeepAliveResponse, ListSessionsRequest,
    ListSessionsResponse, PauseSessionRequest, ResumeSessionRequest, Session, SessionEvent,
    WatchSessionRequest, sessions_server::Sessions,
};
use tonic::{Request, Response, Status};

use super::{BoxStream, unimplemented};
use crate::cluster::Cluster;

const WHAT: &str = "this broker registers nodes but does not run sessions yet";

/// The Sessions service.
pub struct SessionsService {
    cluster: Arc<Cluster>,
}

impl SessionsService {
    /// A service over the shared state.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl Sessions for SessionsService {
    async fn create_session(
        &self,
        _: Request<CreateSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/CreateSession", WHAT).await)
    }

    async fn get_session(
        &self,
        _: Request<GetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/GetSession", WHAT).await)
    }

    async fn list_sessions(
        &self,
        _: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/ListSessions", WHAT).await)
    }

    type WatchSessionStream = BoxStream<SessionEvent>;

    async fn watch_session(
        &self,
        _: Request<WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/WatchSession", WHAT).await)
    }

    async fn keep_alive(
        &self,
        _: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/KeepAlive", WHAT).await)
    }

    type ExecStream = BoxStream<ExecResponse>;

    async fn exec(&self, _: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/Exec", WHAT).await)
    }

    type InvokeStream = BoxStream<InvokeResponse>;

    async fn invoke(
        &self,
        _: Request<InvokeRequest>,
    ) -> Result<Response<Self::InvokeStream>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/Invoke", WHAT).await)
    }

    async fn pause_session(
        &self,
        _: Request<PauseSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/PauseSession", WHAT).await)
    }

    async fn resume_session(
        &self,
        _: Request<ResumeSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/ResumeSession", WHAT).await)
    }

    async fn delete_session(
        &self,
        _: Request<DeleteSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(unimplemented(&self.cluster, "hearth.v1.Sessions/DeleteSession", WHAT).await)
    }
}
