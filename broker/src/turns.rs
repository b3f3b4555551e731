//! Commands in flight to agents and the turns streaming back from them.
//!
//! A command (start, stop, pause, resume) is sent down the node's stream and its `Reply`
//! is awaited here by command id. A turn (Exec, Invoke) registers a bounded channel under
//! its turn id; the agent's output messages are routed into it as they arrive, with no
//! store access. A reader that stops reading for `SLOW_READER` has its turn cancelled
//! rather than stalling the node's stream for everyone (counted in
//! `hearth_broker_turns_cancelled_slow_total`). A client that goes away drops its stream,
//! and the drop sends `CancelTurn` to the agent. A node whose stream closes fails its
//! pending commands and turns with UNAVAILABLE at once.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use hearth_sdk::proto::v1::{
    BrokerMessage, CancelTurn, ExecResponse, InvokeResponse, Reply, broker_message, exec_response,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    nodes::Connection,
};

/// How long a turn's reader may leave a full buffer unread before the turn is cancelled.
pub const SLOW_READER: Duration = Duration::from_secs(10);
/// Messages buffered per turn between the agent stream and the client.
pub const TURN_BUFFER: usize = 64;

enum Sink {
    Exec(mpsc::Sender<Result<ExecResponse, Status>>),
    Invoke(mpsc::Sender<Result<InvokeResponse, Status>>),
}

struct Pending<T> {
    node_id: String,
    value: T,
}

/// Commands and turns in flight.
pub struct Turns {
    commands: Mutex<HashMap<String, Pending<oneshot::Sender<Reply>>>>,
    /// When a command in flight last showed progress (an image pull); its wait for the
    /// Reply counts from there.
    progress: Mutex<HashMap<String, std::time::Instant>>,
    turns: Mutex<HashMap<String, Pending<Sink>>>,
    metrics: Metrics,
}

/// What the agent-stream reader must do after routing a message.
#[must_use]
pub enum Routed {
    /// Nothing more.
    Done,
    /// The turn's reader is gone or too slow: tell the agent to stop it.
    Cancel(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Turns {
    /// Nothing in flight.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            commands: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Notes that command `command_id` is making progress (the agent pulls an image for
    /// it): its wait for the Reply starts again.
    pub fn progress(&self, command_id: &str) {
        if lock(&self.commands).contains_key(command_id) {
            lock(&self.progress).insert(command_id.to_owned(), std::time::Instant::now());
        }
    }

    /// Waits for a command's Reply: `timeout` from the send, or from the command's last
    /// progress if later.
    async fn wait_reply(
        &self,
        command_id: &str,
        rx: &mut oneshot::Receiver<Reply>,
        timeout: Duration,
    ) -> Option<std::result::Result<Reply, oneshot::error::RecvError>> {
        let sent = tokio::time::Instant::now();
        loop {
            let heard = lock(&self.progress)
                .get(command_id)
                .map(|at| tokio::time::Instant::from_std(*at));
            let deadline = heard.map_or(sent, |h| h.max(sent)) + timeout;
            match tokio::time::timeout_at(deadline, &mut *rx).await {
                Ok(reply) => return Some(reply),
                Err(_) => {
                    let moved = lock(&self.progress)
                        .get(command_id)
                        .map(|at| tokio::time::Instant::from_std(*at))
                        != heard;
                    if !moved {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends a command and waits for the agent's Reply (not-ok replies become errors).
    pub async fn command(
        &self,
        node_id: &str,
        connection: &Connection,
        command_id: &str,
        message: broker_message::Msg,
        timeout: Duration,
    ) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        lock(&self.commands).insert(
            command_id.to_owned(),
            Pending {
                node_id: node_id.to_owned(),
                value: tx,
            },
        );
        let sent = connection
            .tx
            .send(BrokerMessage { msg: Some(message) })
            .await;
        if sent.is_err() {
            lock(&self.commands).remove(command_id);
            return Err(Error::Unavailable(format!(
                "node {node_id} disconnected before the command could be sent; retry"
            )));
        }
        let mut rx = rx;
        let waited = self.wait_reply(command_id, &mut rx, timeout).await;
        lock(&self.progress).remove(command_id);
        let reply = match waited {
            Some(Ok(reply)) => reply,
            Some(Err(_)) => {
                return Err(Error::Unavailable(format!(
                    "node {node_id} disconnected before answering; retry"
                )));
            }
            None => {
                lock(&self.commands).remove(command_id);
                return Err(Error::DeadlineExceeded(format!(
                    "node {node_id} did not answer within {}",
                    humantime::format_duration(timeout)
                )));
            }
        };
        if reply.ok {
            Ok(reply)
        } else {
            Err(Error::Node {
                code: Code::from_i32(reply.code),
                message: reply.message,
            })
        }
    }

    /// Opens an Exec turn; the stream ends after the exit status.
    pub fn open_exec(
        &self,
        node_id: &str,
        connection: &Connection,
        turn_id: &str,
    ) -> TurnStream<ExecResponse> {
        let (tx, rx) = mpsc::channel(TURN_BUFFER);
        self.register(node_id, turn_id, Sink::Exec(tx));
        TurnStream::new(rx, turn_id, connection)
    }

    /// Opens an Invoke turn; the stream ends after the agent's `end` chunk.
    pub fn open_invoke(
        &self,
        node_id: &str,
        connection: &Connection,
        turn_id: &str,
    ) -> TurnStream<InvokeResponse> {
        let (tx, rx) = mpsc::channel(TURN_BUFFER);
        self.register(node_id, turn_id, Sink::Invoke(tx));
        TurnStream::new(rx, turn_id, connection)
    }

    fn register(&self, node_id: &str, turn_id: &str, sink: Sink) {
        lock(&self.turns).insert(
            turn_id.to_owned(),
            Pending {
                node_id: node_id.to_owned(),
                value: sink,
            },
        );
    }

    /// Forgets a turn (it finished or its reader left).
    pub fn close(&self, turn_id: &str) {
        lock(&self.turns).remove(turn_id);
    }

    /// True while the turn is registered.
    pub fn is_open(&self, turn_id: &str) -> bool {
        lock(&self.turns).contains_key(turn_id)
    }

    /// Routes an agent's Reply: to the command awaiting it, or, for a failed turn, to the
    /// turn's reader as an error status.
    pub async fn on_reply(&self, reply: Reply) -> Routed {
        if let Some(p) = lock(&self.commands).remove(&reply.command_id) {
            let _ = p.value.send(reply);
            return Routed::Done;
        }
        let Some(p) = lock(&self.turns).remove(&reply.command_id) else {
            return Routed::Done;
        };
        let status = Status::new(Code::from_i32(reply.code), reply.message);
        match p.value {
            Sink::Exec(tx) => {
                let _ = tx.try_send(Err(status));
            }
            Sink::Invoke(tx) => {
                let _ = tx.try_send(Err(status));
            }
        }
        Routed::Done
    }

    /// Routes a piece of Exec output; the exit status closes the turn.
    pub async fn on_exec_output(&self, turn_id: &str, response: ExecResponse) -> Routed {
        let last = matches!(response.event, Some(exec_response::Event::Exit(_)));
        let tx = match lock(&self.turns).get(turn_id) {
            Some(Pending {
                value: Sink::Exec(tx),
                ..
            }) => tx.clone(),
            _ => return Routed::Done,
        };
        self.forward(turn_id, &tx, response, last).await
    }

    /// Routes a piece of an Invoke response; `end` closes the turn.
    pub async fn on_invoke_chunk(
        &self,
        turn_id: &str,
        response: Option<InvokeResponse>,
        end: bool,
    ) -> Routed {
        let tx = match lock(&self.turns).get(turn_id) {
            Some(Pending {
                value: Sink::Invoke(tx),
                ..
            }) => tx.clone(),
            _ => return Routed::Done,
        };
        match response {
            Some(r) => self.forward(turn_id, &tx, r, end).await,
            None => {
                if end {
                    self.close(turn_id);
                }
                Routed::Done
            }
        }
    }

    async fn forward<T>(
        &self,
        turn_id: &str,
        tx: &mpsc::Sender<Result<T, Status>>,
        item: T,
        last: bool,
    ) -> Routed {
        let routed = match tokio::time::timeout(SLOW_READER, tx.send(Ok(item))).await {
            Ok(Ok(())) => Routed::Done,
            Ok(Err(_)) => Routed::Cancel(turn_id.to_owned()),
            Err(_) => {
                self.metrics.turns_cancelled_slow_total.inc();
                let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                    "the turn was cancelled: its output went unread for {SLOW_READER:?}"
                ))));
                Routed::Cancel(turn_id.to_owned())
            }
        };
        if last || matches!(routed, Routed::Cancel(_)) {
            self.close(turn_id);
        }
        routed
    }

    /// Fails everything in flight on a node whose stream closed.
    pub fn node_gone(&self, node_id: &str) {
        lock(&self.commands).retain(|_, p| p.node_id != node_id);
        let gone: Vec<Pending<Sink>> = {
            let mut turns = lock(&self.turns);
            let ids: Vec<String> = turns
                .iter()
                .filter(|(_, p)| p.node_id == node_id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| turns.remove(id)).collect()
        };
        for p in gone {
            let status = Status::unavailable(format!(
                "node {node_id} disconnected during the turn; it may or may not have run to completion"
            ));
            match p.value {
                Sink::Exec(tx) => {
                    let _ = tx.try_send(Err(status));
                }
                Sink::Invoke(tx) => {
                    let _ = tx.try_send(Err(status));
                }
            }
        }
    }
}

/// The client's side of a turn. Dropping it before the turn finished cancels the turn at
/// the agent (a client cancel or deadline ends the gRPC stream, which drops this).
pub struct TurnStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    turn_id: String,
    node_tx: mpsc::Sender<BrokerMessage>,
    turns: Option<Arc<Turns>>,
    finished: bool,
}

impl<T> TurnStream<T> {
    fn new(rx: mpsc::Receiver<Result<T, Status>>, turn_id: &str, connection: &Connection) -> Self {
        Self {
            rx,
            turn_id: turn_id.to_owned(),
            node_tx: connection.tx.clone(),
            turns: None,
            finished: false,
        }
    }

    /// Lets the stream forget its turn when dropped early.
    pub fn with_registry(mut self, turns: Arc<Turns>) -> Self {
        self.turns = Some(turns);
        self
    }
}

impl<T> Stream for TurnStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            self.finished = true;
        }
        polled
    }
}

impl<T> Drop for TurnStream<T> {
    fn drop(&mut self) {
        let still_open = self
            .turns
            .as_ref()
            .is_some_and(|t| t.is_open(&self.turn_id));
        if !self.finished && still_open {
            if let Some(t) = &self.turns {
                t.close(&self.turn_id);
            }
            // Best effort: if the node's outbox is full the turn still ends at its timeout.
            let _ = self.node_tx.try_send(BrokerMessage {
                msg: Some(broker_message::Msg::CancelTurn(CancelTurn {
                    turn_id: self.turn_id.clone(),
                })),
            });
        }
    }
}
