//! Turn links: one more stream to every configured broker (`NodeAgent.ConnectTurns`),
//! leader and standbys alike, carrying turns only.
//!
//! The main link ([`crate::link`]) follows the leader, so when the leader dies this node
//! has no path for turns until a standby has won the election and the link has found it
//! (a lease and a reconnect). A turn link to each broker is already up when that
//! happens, and a broker with no main stream to this node routes turns of READY sessions
//! through it (`broker/src/turn_links.rs`). So the node's warm sessions keep answering
//! through the election.
//!
//! - **Turns only.** Exec, Invoke and CancelTurn are run exactly as on the main link
//!   ([`Sessions::dispatch`], which checks each session's generation); every other
//!   command is refused not-ok, `FAILED_PRECONDITION`. Nothing here starts, stops,
//!   pauses or resumes a session, so no leader epoch needs fencing: a turn changes no
//!   lifecycle state, and a turn routed on a stale record meets the generation check.
//! - **No Hello inventory.** The Hello names the node (with TLS, the broker checks it
//!   against the certificate) and nothing else is read from it.
//! - **Reconnects** use the main link's backoff settings, one loop per broker. A broker
//!   that does not offer turn links (`UNIMPLEMENTED`, an older version) is asked again
//!   only every [`UNSUPPORTED_RETRY`].

use std::{convert::Infallible, sync::Arc, time::Duration};

use hearth_sdk::proto::v1::{
    AgentMessage, BrokerMessage, Hello, Reply, agent_message, broker_message,
    node_agent_client::NodeAgentClient,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;

use crate::{
    Config, Error,
    backoff::Backoff,
    link::{self, MAILBOX, kind},
    sessions::Sessions,
};

/// How often a broker that answered `UNIMPLEMENTED` is asked again.
pub const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);

/// Keeps a turn link to every configured broker until `shutdown` is cancelled.
pub async fn run_all(
    config: Arc<Config>,
    sessions: Arc<Sessions>,
    incarnation: String,
    shutdown: CancellationToken,
) {
    let links: Vec<_> = config
        .broker
        .iter()
        .map(|url| {
            tokio::spawn(run(
                config.clone(),
                url.clone(),
                sessions.clone(),
                incarnation.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for link in links {
        if let Err(e) = link.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Keeps the turn link to `url` up until `shutdown` is cancelled.
async fn run(
    config: Arc<Config>,
    url: String,
    sessions: Arc<Sessions>,
    incarnation: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.reconnect_backoff_min, config.reconnect_backoff_max);
    loop {
        let mut welcomed = false;
        let reason = tokio::select! {
            () = shutdown.cancelled() => break,
            Err(reason) = serve(&config, &url, &sessions, &incarnation, &mut welcomed) => reason,
        };
        if welcomed {
            backoff.reset();
        }
        let unsupported =
            matches!(&reason, Error::Status(s) if s.code() == tonic::Code::Unimplemented);
        let delay = if unsupported {
            UNSUPPORTED_RETRY
        } else {
            backoff.next_delay()
        };
        // Debug, not warn: while a broker is down its main link says so already.
        tracing::debug!(broker = %url, error = %crate::report(&reason), retry_in = ?delay, "turn link down");
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One turn link, from dialling to its end.
async fn serve(
    config: &Config,
    url: &str,
    sessions: &Arc<Sessions>,
    incarnation: &str,
    welcomed: &mut bool,
) -> Result<Infallible, Error> {
    let mut client = NodeAgentClient::new(link::dial(config, url).await?);
    let (tx, rx) = mpsc::channel(MAILBOX);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node_id: config.node_id.clone(),
            incarnation: incarnation.to_owned(),
            version: hearth_sdk::VERSION.to_owned(),
            runtime: sessions.runtime_kind().to_owned(),
            ..Hello::default()
        })),
    };
    tx.send(hello).await.map_err(|_| Error::StreamClosed)?;
    let hello_timeout = config.hello_timeout;
    let mut inbound = tokio::time::timeout(hello_timeout, async {
        let mut inbound = client
            .connect_turns(ReceiverStream::new(rx))
            .await
            .map_err(Error::Status)?
            .into_inner();
        match inbound.next().await {
            Some(Ok(BrokerMessage {
                msg: Some(broker_message::Msg::Welcome(_)),
            })) => Ok(inbound),
            Some(Ok(other)) => Err(Error::Protocol(format!(
                "expected Welcome as the broker's first message on a turn link, got {}",
                kind(&other)
            ))),
            Some(Err(status)) => Err(Error::Status(status)),
            None => Err(Error::StreamClosed),
        }
    })
    .await
    .map_err(|_| Error::HelloTimeout(hello_timeout))??;
    *welcomed = true;
    tracing::debug!(broker = %url, "turn link up");
    loop {
        match inbound.next().await {
            Some(Ok(message)) => handle(sessions, message, &tx),
            Some(Err(status)) => return Err(Error::Status(status)),
            None => return Err(Error::StreamClosed),
        }
    }
}

/// What a turn link does with a broker message.
#[derive(Debug)]
enum Action {
    /// A turn or a cancel: run it as the main link would.
    Dispatch,
    /// Nothing to do (a second Welcome, an empty message, a command without meta).
    Ignore,
    /// A lifecycle command: refuse it with this reply.
    Refuse(Reply),
}

fn action(message: &BrokerMessage) -> Action {
    use broker_message::Msg;
    let meta = match &message.msg {
        None | Some(Msg::Welcome(_)) => return Action::Ignore,
        Some(Msg::Exec(_) | Msg::Invoke(_) | Msg::CancelTurn(_)) => return Action::Dispatch,
        Some(Msg::StartSession(c)) => c.meta.as_ref(),
        Some(Msg::StopSession(c)) => c.meta.as_ref(),
        Some(Msg::PauseSession(c)) => c.meta.as_ref(),
        Some(Msg::ResumeSession(c)) => c.meta.as_ref(),
    };
    let Some(meta) = meta else {
        return Action::Ignore;
    };
    Action::Refuse(Reply {
        command_id: meta.command_id.clone(),
        ok: false,
        code: tonic::Code::FailedPrecondition as i32,
        message: format!(
            "{} is not accepted on a turn link; it carries turns only",
            kind(message)
        ),
        container_id: String::new(),
    })
}

/// Runs a turn (or cancels one); refuses every other command.
fn handle(sessions: &Arc<Sessions>, message: BrokerMessage, tx: &mpsc::Sender<AgentMessage>) {
    match action(&message) {
        Action::Ignore => {}
        Action::Dispatch => {
            if let Some(command) = message.msg {
                sessions.dispatch(command, tx.clone());
            }
        }
        Action::Refuse(reply) => {
            tracing::warn!(
                command = kind(&message),
                "refused a lifecycle command sent on a turn link"
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(AgentMessage {
                        msg: Some(agent_message::Msg::Reply(reply)),
                    })
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::{
        CommandMeta, ExecCommand, InvokeCommand, ResumeSessionCommand, StartSessionCommand,
        StopSessionCommand, Welcome,
    };

    use super::*;

    fn meta() -> Option<CommandMeta> {
        Some(CommandMeta {
            command_id: "c1".into(),
            ..CommandMeta::default()
        })
    }

    fn message(msg: broker_message::Msg) -> BrokerMessage {
        BrokerMessage { msg: Some(msg) }
    }

    #[test]
    fn turns_are_run_and_lifecycle_commands_refused() {
        use broker_message::Msg;
        for turn in [
            Msg::Exec(ExecCommand::default()),
            Msg::Invoke(InvokeCommand::default()),
            Msg::CancelTurn(Default::default()),
        ] {
            assert!(matches!(action(&message(turn)), Action::Dispatch));
        }
        for (command, name) in [
            (
                Msg::StartSession(StartSessionCommand {
                    meta: meta(),
                    ..Default::default()
                }),
                "StartSession",
            ),
            (
                Msg::StopSession(StopSessionCommand {
                    meta: meta(),
                    ..Default::default()
                }),
                "StopSession",
            ),
            (
                Msg::ResumeSession(ResumeSessionCommand { meta: meta() }),
                "ResumeSession",
            ),
        ] {
            let Action::Refuse(reply) = action(&message(command)) else {
                panic!("{name} must be refused");
            };
            assert_eq!(reply.command_id, "c1");
            assert!(!reply.ok);
            assert_eq!(reply.code, tonic::Code::FailedPrecondition as i32);
            assert!(reply.message.starts_with(name), "{}", reply.message);
        }
        assert!(matches!(
            action(&message(Msg::StopSession(StopSessionCommand::default()))),
            Action::Ignore
        ));
        assert!(matches!(
            action(&message(Msg::Welcome(Welcome::default()))),
            Action::Ignore
        ));
    }
}
