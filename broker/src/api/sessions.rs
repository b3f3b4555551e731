//! `hearth.v1.Sessions`: what agents call. Turns (Exec, Invoke) are routed to the
//! session's node from memory; only lifecycle changes touch the store. While the leader
//! is down, a standby serves turns of READY sessions through the agents' turn links
//! ([`crate::turn_links`]).

use std::sync::Arc;

use hearth_sdk::proto::v1::{
    BrokerMessage, CommandMeta, CreateSessionRequest, DeleteSessionRequest, ExecCommand,
    ExecRequest, ExecResponse, GetSessionRequest, InvokeCommand, InvokeRequest, InvokeResponse,
    KeepAliveRequest, KeepAliveResponse, ListSessionsRequest, ListSessionsResponse,
    PauseSessionRequest, ResumeSessionRequest, Session, SessionEvent, SessionSpec, SessionState,
    WatchSessionRequest, broker_message, sessions_server::Sessions,
};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use super::BoxStream;
use crate::{
    auth,
    cluster::Cluster,
    convert,
    error::{Error, Result},
    nodes::Connection,
    sessions::is_terminal,
    turn_links,
    turns::{TurnStream, Turns},
};

/// Default and largest page of ListSessions.
const PAGE: (u32, u32) = (100, 1000);

/// The Sessions service.
pub struct SessionsService {
    cluster: Arc<Cluster>,
}

impl SessionsService {
    /// A service over the shared state.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    /// Routes a turn to its session's workload: resumes a paused session, registers the
    /// turn's output stream, sends the command down the node's stream, and keeps the
    /// session busy (no idle pause) until the stream ends.
    ///
    /// A standby serves the turn through the node's turn link while the leader does not
    /// answer ([`crate::turn_links`]); otherwise it refuses with the leader's address. An
    /// Invoke names its `port`, which the session must expose.
    async fn start_turn<T: Send + 'static>(
        &self,
        tenant: &str,
        session_id: &str,
        port: Option<u32>,
        open: impl FnOnce(&Turns, &str, &Connection, &str) -> TurnStream<T>,
        command: impl FnOnce(CommandMeta, String) -> broker_message::Msg,
    ) -> Result<BoxStream<T>> {
        let (key, generation, epoch, connection, guard) = match self.cluster.require_leader().await
        {
            Ok(leader) => {
                if let Some(port) = port {
                    let entry = self.cluster.sessions.entry(tenant, session_id)?;
                    exposes(entry.snapshot().spec.as_ref(), session_id, port)?;
                }
                let (route, connection) = self
                    .cluster
                    .sessions
                    .route(&self.cluster, &leader, tenant, session_id)
                    .await?;
                let key = match route.via_link {
                    true => turn_links::turns_key(&route.node_id),
                    false => route.node_id.clone(),
                };
                if route.via_link {
                    self.cluster.metrics.turns_via_link_total.inc();
                }
                (
                    key,
                    route.generation,
                    leader.epoch,
                    connection,
                    Some(route.guard),
                )
            }
            Err(Error::NotLeader { leader }) => {
                let refuse = || Error::NotLeader {
                    leader: leader.clone(),
                };
                // A leader key naming this broker while it does not lead is a lease of
                // its own past life (it lost leadership, say to an etcd outage): nobody
                // serves behind it until a leader takes over.
                if let Some(info) = &leader
                    && info.broker_id != self.cluster.broker_id
                    && self.cluster.turn_links.answers(&info.address).await
                {
                    return Err(refuse());
                }
                let route = self
                    .cluster
                    .turn_links
                    .route(&*self.cluster.store, tenant, session_id, |why| {
                        tracing::debug!(session = session_id, "turn left to the leader: {why}");
                        refuse()
                    })
                    .await?;
                if let Some(port) = port {
                    exposes(route.record.spec.as_ref(), session_id, port)?;
                }
                self.cluster.metrics.turns_via_link_total.inc();
                let key = turn_links::turns_key(&route.node_id);
                // No epoch: nothing on a turn link is fenced (the agent checks the
                // session's generation).
                (key, route.generation, 0, route.connection, None)
            }
            Err(e) => return Err(e),
        };
        let turn_id = ulid::Ulid::new().to_string();
        let stream = open(&self.cluster.turns, &key, &connection, &turn_id)
            .with_registry(self.cluster.turns.clone());
        let meta = CommandMeta {
            command_id: turn_id.clone(),
            epoch,
            session_id: session_id.to_owned(),
            generation,
        };
        self.cluster.metrics.turns_total.inc();
        connection
            .tx
            .send(BrokerMessage {
                msg: Some(command(meta, turn_id)),
            })
            .await
            .map_err(|_| {
                Error::NotRun(
                    "the session's node disconnected; the turn was not run (retry)".to_owned(),
                )
            })?;
        Ok(Box::pin(stream.map(move |item| {
            let _busy = &guard;
            item
        })))
    }
}

/// Checks that a session whose spec is `spec` exposes `port` to Invoke.
fn exposes(spec: Option<&SessionSpec>, session_id: &str, port: u32) -> Result<()> {
    if spec.is_some_and(|s| s.ports.iter().any(|p| p.port == port)) {
        return Ok(());
    }
    Err(Error::invalid(
        "port",
        format!(
            "{port} is not exposed by session {session_id} (spec.ports lists the ports Invoke may use)"
        ),
    ))
}

/// Filters and pages a sorted list of sessions.
pub fn page(all: Vec<Session>, filter: &ListSessionsRequest) -> Result<ListSessionsResponse> {
    let states = convert::session_states("states", &filter.states)?;
    let size = match filter.page_size {
        0 => PAGE.0,
        n if n > PAGE.1 => {
            return Err(Error::invalid(
                "page_size",
                format!("{n} is more than {}", PAGE.1),
            ));
        }
        n => n,
    } as usize;
    let mut sessions: Vec<Session> = all
        .into_iter()
        .filter(|s| filter.page_token.is_empty() || s.id > filter.page_token)
        .filter(|s| states.is_empty() || states.contains(&s.state()))
        .filter(|s| {
            filter
                .labels
                .iter()
                .all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .take(size + 1)
        .collect();
    let next_page_token = if sessions.len() > size {
        sessions.truncate(size);
        sessions.last().map(|s| s.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListSessionsResponse {
        sessions,
        next_page_token,
    })
}

fn id_of(field: &str, id: &str) -> Result<()> {
    convert::session_id(field, id)
}

#[tonic::async_trait]
impl Sessions for SessionsService {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let caller = auth::caller(&request)?;
        let leader = self.cluster.require_leader().await?;
        let session = self
            .cluster
            .sessions
            .create(&self.cluster, &leader, &caller.tenant, request.into_inner())
            .await?;
        Ok(Response::new(session))
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        self.cluster.require_leader().await?;
        Ok(Response::new(
            self.cluster
                .sessions
                .get(&self.cluster, &caller.tenant, id)
                .await?,
        ))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.cluster.require_leader().await?;
        let all = self.cluster.sessions.list(Some(&caller.tenant));
        Ok(Response::new(page(all, request.get_ref())?))
    }

    type WatchSessionStream = BoxStream<SessionEvent>;

    async fn watch_session(
        &self,
        request: Request<WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        self.cluster.require_leader().await?;
        let entry = match self.cluster.sessions.entry(&caller.tenant, id) {
            Ok(e) => e,
            Err(Error::NotFound { .. }) => {
                // Already ended: one event with its final state.
                let s = self
                    .cluster
                    .sessions
                    .get(&self.cluster, &caller.tenant, id)
                    .await?;
                let event = SessionEvent {
                    session_id: s.id.clone(),
                    time: Some(hearth_sdk::time::now()),
                    state: s.state,
                    message: s.state_reason.clone(),
                };
                return Ok(Response::new(Box::pin(tokio_stream::once(Ok(event)))));
            }
            Err(e) => return Err(e.into()),
        };
        let mut changes = entry.subscribe();
        let shutdown = self.cluster.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let event = changes.borrow_and_update().clone();
                let state = event.state();
                if tx.send(Ok(event)).await.is_err() || is_terminal(state) {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        self.cluster.require_leader().await?;
        let s = self.cluster.sessions.keep_alive(&caller.tenant, id)?;
        Ok(Response::new(KeepAliveResponse {
            expires_at: s.expires_at,
        }))
    }

    type ExecStream = BoxStream<ExecResponse>;

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        convert::exec_request(&request)?;
        let session_id = request.session_id.clone();
        let stream = self
            .start_turn(
                &caller.tenant,
                &session_id,
                None,
                |turns, node, connection, turn| turns.open_exec(node, connection, turn),
                |meta, turn_id| {
                    broker_message::Msg::Exec(ExecCommand {
                        meta: Some(meta),
                        turn_id,
                        request: Some(request),
                    })
                },
            )
            .await?;
        Ok(Response::new(stream))
    }

    type InvokeStream = BoxStream<InvokeResponse>;

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<Self::InvokeStream>, Status> {
        let caller = auth::caller(&request)?;
        let request = convert::invoke_request(request.into_inner())?;
        let session_id = request.session_id.clone();
        let stream = self
            .start_turn(
                &caller.tenant,
                &session_id,
                Some(request.port),
                |turns, node, connection, turn| turns.open_invoke(node, connection, turn),
                |meta, turn_id| {
                    broker_message::Msg::Invoke(InvokeCommand {
                        meta: Some(meta),
                        turn_id,
                        request: Some(request),
                    })
                },
            )
            .await?;
        Ok(Response::new(stream))
    }

    async fn pause_session(
        &self,
        request: Request<PauseSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        let leader = self.cluster.require_leader().await?;
        let entry = self.cluster.sessions.entry(&caller.tenant, id)?;
        Ok(Response::new(
            self.cluster
                .sessions
                .pause(&self.cluster, &leader, &entry, "paused by request")
                .await?,
        ))
    }

    async fn resume_session(
        &self,
        request: Request<ResumeSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        let leader = self.cluster.require_leader().await?;
        let entry = self.cluster.sessions.entry(&caller.tenant, id)?;
        Ok(Response::new(
            self.cluster
                .sessions
                .resume(&self.cluster, &leader, &entry, "resumed by request")
                .await?,
        ))
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let caller = auth::caller(&request)?;
        let id = &request.get_ref().id;
        id_of("id", id)?;
        let leader = self.cluster.require_leader().await?;
        match self.cluster.sessions.entry(&caller.tenant, id) {
            Ok(entry) => Ok(Response::new(
                self.cluster
                    .sessions
                    .delete(&self.cluster, &leader, &entry, "deleted by request")
                    .await?,
            )),
            // Already ended: deleting again is a no-op that returns the final record.
            Err(Error::NotFound { .. }) => {
                let s = self
                    .cluster
                    .sessions
                    .get(&self.cluster, &caller.tenant, id)
                    .await?;
                debug_assert!(is_terminal(s.state()) || s.state() == SessionState::Unspecified);
                Ok(Response::new(s))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(n: usize) -> Vec<Session> {
        (0..n)
            .map(|i| {
                let mut s = Session {
                    id: format!("{i:03}"),
                    ..Session::default()
                };
                s.set_state(if i % 2 == 0 {
                    SessionState::Ready
                } else {
                    SessionState::Paused
                });
                if i % 3 == 0 {
                    s.labels.insert("team".into(), "a".into());
                }
                s
            })
            .collect()
    }

    #[test]
    fn pages_walk_the_whole_list_in_order() {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = page(
                sessions(25),
                &ListSessionsRequest {
                    page_size: 10,
                    page_token: token.clone(),
                    ..ListSessionsRequest::default()
                },
            )
            .unwrap();
            seen.extend(r.sessions.into_iter().map(|s| s.id));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        assert_eq!(seen, (0..25).map(|i| format!("{i:03}")).collect::<Vec<_>>());
    }

    #[test]
    fn filters_by_state_and_label() {
        let r = page(
            sessions(12),
            &ListSessionsRequest {
                states: vec![SessionState::Paused as i32],
                labels: [("team".to_owned(), "a".to_owned())].into(),
                ..ListSessionsRequest::default()
            },
        )
        .unwrap();
        let ids: Vec<_> = r.sessions.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["003", "009"]);
        assert!(
            page(
                sessions(1),
                &ListSessionsRequest {
                    page_size: 5000,
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            page(
                sessions(1),
                &ListSessionsRequest {
                    states: vec![77],
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
