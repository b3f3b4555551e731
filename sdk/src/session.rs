//! A handle on one session: its turns, and a keep-alive that runs while the handle lives.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::{
    client::Client,
    error::{Error, Result},
    proto::v1::{
        self, DeleteSessionRequest, ExecRequest, Header, InvokeRequest, KeepAliveRequest,
        PauseSessionRequest, ResumeSessionRequest, exec_response, invoke_response,
    },
    retry::Kind,
    time,
};

/// The broker's idle timeout when a spec sets none (DESIGN: 30 min).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A live session. Every turn through it reaches the same warm workload.
///
/// While the handle lives, a background task sends `KeepAlive` three times per idle
/// timeout, so the session is never paused or stopped for idleness under an agent that
/// is thinking between turns. Dropping the handle stops the keep-alives but not the
/// session: it then idles out by its own policy. [`Session::delete`] ends it.
#[derive(Debug)]
pub struct Session {
    client: Client,
    info: v1::Session,
    keep_alive: Mutex<Option<KeepAliveTask>>,
}

/// Aborts the keep-alive task when dropped.
#[derive(Debug)]
struct KeepAliveTask(JoinHandle<()>);

impl Drop for KeepAliveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    /// Wraps `info` and starts its keep-alive task. Needs a Tokio runtime.
    pub(crate) fn new(client: Client, info: v1::Session) -> Self {
        let every = keep_alive_interval(&info);
        let task = tokio::spawn(keep_alive_loop(client.clone(), info.id.clone(), every));
        Self {
            client,
            info,
            keep_alive: Mutex::new(Some(KeepAliveTask(task))),
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The session as the broker returned it when this handle was made. See
    /// [`Session::get`] for its current state.
    pub fn info(&self) -> &v1::Session {
        &self.info
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's current record.
    pub async fn get(&self) -> Result<v1::Session> {
        self.client.get_session(self.id()).await
    }

    /// Stops the background keep-alives; the session idles out by its own policy.
    pub fn stop_keep_alive(&self) {
        self.keep_alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// True while the background keep-alive task runs.
    pub fn keeps_alive(&self) -> bool {
        self.keep_alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.0.is_finished())
    }

    /// Marks the session active now; returns its new idle deadline.
    pub async fn keep_alive(&self) -> Result<SystemTime> {
        keep_alive(&self.client, self.id()).await
    }

    /// Runs a command inside the session (a tool-call turn). Set options on the returned
    /// [`Exec`], then `.await` it for the collected output, or call [`Exec::stream`].
    pub fn exec<I, S>(&self, argv: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Exec {
            client: self.client.clone(),
            request: ExecRequest {
                session_id: self.info.id.clone(),
                argv: argv.into_iter().map(Into::into).collect(),
                ..Default::default()
            },
        }
    }

    /// Sends an HTTP request to `port` of the session (a turn against the model server).
    /// Set options on the returned [`Invoke`], then `.await` it for the whole response,
    /// or call [`Invoke::stream`] for the head and then body chunks as they arrive.
    pub fn invoke(&self, port: u16, path: impl Into<String>) -> Invoke {
        Invoke {
            client: self.client.clone(),
            request: InvokeRequest {
                session_id: self.info.id.clone(),
                port: port.into(),
                method: "GET".into(),
                path: path.into(),
                ..Default::default()
            },
        }
    }

    /// Freezes the session's CPU and keeps its memory and VRAM.
    pub async fn pause(&self) -> Result<v1::Session> {
        let request = PauseSessionRequest {
            id: self.info.id.clone(),
        };
        self.client
            .call("Sessions/PauseSession", |c| {
                let request = request.clone();
                async move { c.sessions().pause_session(request).await }
            })
            .await
    }

    /// Unfreezes a paused session. A turn does this by itself.
    pub async fn resume(&self) -> Result<v1::Session> {
        let request = ResumeSessionRequest {
            id: self.info.id.clone(),
        };
        self.client
            .call("Sessions/ResumeSession", |c| {
                let request = request.clone();
                async move { c.sessions().resume_session(request).await }
            })
            .await
    }

    /// Stops the session, removes its workload and frees its GPUs.
    pub async fn delete(self) -> Result<v1::Session> {
        self.stop_keep_alive();
        let request = DeleteSessionRequest {
            id: self.info.id.clone(),
        };
        self.client
            .call("Sessions/DeleteSession", |c| {
                let request = request.clone();
                async move { c.sessions().delete_session(request).await }
            })
            .await
    }
}

/// A third of the session's idle timeout, between 500 ms and 5 min.
fn keep_alive_interval(info: &v1::Session) -> Duration {
    let idle = info
        .spec
        .as_ref()
        .and_then(|s| s.idle_timeout.as_ref())
        .and_then(|d| time::std_duration(d, "idle_timeout").ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    (idle / 3).clamp(Duration::from_millis(500), Duration::from_secs(300))
}

async fn keep_alive(client: &Client, id: &str) -> Result<SystemTime> {
    let request = KeepAliveRequest { id: id.to_owned() };
    let response = client
        .call("Sessions/KeepAlive", |c| {
            let request = request.clone();
            async move { c.sessions().keep_alive(request).await }
        })
        .await?;
    Ok(response
        .expires_at
        .as_ref()
        .and_then(time::system_time)
        .unwrap_or_else(SystemTime::now))
}

async fn keep_alive_loop(client: Client, id: String, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match keep_alive(&client, &id).await {
            Ok(_) => tracing::trace!(session = %id, "keep-alive sent"),
            Err(e) if e.code() == Some(Code::NotFound) => {
                tracing::info!(session = %id, "session is gone; keep-alives stop");
                return;
            }
            Err(e) => tracing::warn!(session = %id, error = %e, "keep-alive failed; will retry"),
        }
    }
}

/// Sends one turn with the retry rules for turns: it is repeated only when it certainly
/// did not run.
async fn open_turn<Req, Resp, F, Fut>(
    client: &Client,
    rpc: &'static str,
    request: Req,
    mut call: F,
) -> Result<tonic::Streaming<Resp>>
where
    Req: Clone,
    F: FnMut(Client, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, tonic::Status>>,
{
    client
        .retrying(rpc, Kind::Turn, |c| {
            let response = call(c, request.clone());
            async move { response.await.map(tonic::Response::into_inner) }
        })
        .await
}

/// A turn's output as a stream of its oneof events; errors name the RPC.
pub struct TurnStream<R> {
    rpc: &'static str,
    inner: tonic::Streaming<R>,
}

/// Messages whose payload is a oneof `event`.
pub trait TurnMessage {
    /// The oneof.
    type Event;
    /// Takes the event out, if the message carried one.
    fn into_event(self) -> Option<Self::Event>;
}

impl TurnMessage for v1::ExecResponse {
    type Event = exec_response::Event;
    fn into_event(self) -> Option<Self::Event> {
        self.event
    }
}

impl TurnMessage for v1::InvokeResponse {
    type Event = invoke_response::Event;
    fn into_event(self) -> Option<Self::Event> {
        self.event
    }
}

impl<R: TurnMessage> Stream for TurnStream<R> {
    type Item = Result<R::Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => match message.into_event() {
                    Some(event) => Poll::Ready(Some(Ok(event))),
                    None => continue,
                },
                Poll::Ready(Some(Err(status))) => {
                    Poll::Ready(Some(Err(Error::rpc(self.rpc)(status))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

fn incomplete(rpc: &'static str, what: &str) -> Error {
    Error::Rpc {
        rpc,
        status: tonic::Status::internal(format!("the turn's stream ended without {what}")),
    }
}

/// A pending Exec turn; set options, then `.await` it or call [`Exec::stream`].
#[must_use = "a turn does nothing until it is awaited or streamed"]
pub struct Exec {
    client: Client,
    request: ExecRequest,
}

/// What an Exec turn printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// The exit code, or -1 if the command was killed by a signal.
    pub code: i32,
    /// True when it was killed because its timeout passed.
    pub timed_out: bool,
    /// How long it ran.
    pub duration: Duration,
}

impl ExecOutput {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

const EXEC: &str = "Sessions/Exec";
const INVOKE: &str = "Sessions/Invoke";

impl Exec {
    /// Writes these bytes to the command's stdin, then closes it.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.request.stdin = bytes.into();
        self
    }

    /// Sets an environment variable for this command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.insert(key.into(), value.into());
        self
    }

    /// Kills the command after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout = Some(time::duration(timeout));
        self
    }

    /// Runs the command in this directory inside the session.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.request.workdir = dir.into();
        self
    }

    /// Starts the turn; stdout and stderr chunks arrive as they are produced, and the
    /// exit status comes last. Dropping the stream cancels the command.
    pub async fn stream(self) -> Result<TurnStream<v1::ExecResponse>> {
        let inner = open_turn(&self.client, EXEC, self.request, |c, r| async move {
            c.sessions().exec(r).await
        })
        .await?;
        Ok(TurnStream { rpc: EXEC, inner })
    }

    async fn output(self) -> Result<ExecOutput> {
        use futures::StreamExt as _;
        let mut stream = self.stream().await?;
        let mut out = ExecOutput::default();
        while let Some(event) = stream.next().await {
            match event? {
                exec_response::Event::Stdout(b) => out.stdout.extend_from_slice(&b),
                exec_response::Event::Stderr(b) => out.stderr.extend_from_slice(&b),
                exec_response::Event::Exit(exit) => {
                    out.code = exit.code;
                    out.timed_out = exit.timed_out;
                    out.duration = exit
                        .duration
                        .as_ref()
                        .and_then(|d| time::std_duration(d, "duration").ok())
                        .unwrap_or_default();
                    return Ok(out);
                }
            }
        }
        Err(incomplete(EXEC, "an exit status"))
    }
}

impl IntoFuture for Exec {
    type Output = Result<ExecOutput>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.output())
    }
}

/// A pending Invoke turn; set options, then `.await` it or call [`Invoke::stream`].
#[must_use = "a turn does nothing until it is awaited or streamed"]
pub struct Invoke {
    client: Client,
    request: InvokeRequest,
}

/// A whole HTTP response from a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in the order the workload sent them.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Invoke {
    /// Sets the HTTP method (default GET).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.request.method = method.into();
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Abandons the request after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout = Some(time::duration(timeout));
        self
    }

    /// Starts the turn: the response head comes first, then body chunks as the workload
    /// writes them (server-sent events flow through). Dropping the stream cancels it.
    pub async fn stream(self) -> Result<TurnStream<v1::InvokeResponse>> {
        let inner = open_turn(&self.client, INVOKE, self.request, |c, r| async move {
            c.sessions().invoke(r).await
        })
        .await?;
        Ok(TurnStream { rpc: INVOKE, inner })
    }

    async fn response(self) -> Result<HttpResponse> {
        use futures::StreamExt as _;
        let mut stream = self.stream().await?;
        let mut response: Option<HttpResponse> = None;
        while let Some(event) = stream.next().await {
            match (event?, response.as_mut()) {
                (invoke_response::Event::Head(head), None) => {
                    response = Some(HttpResponse {
                        status: u16::try_from(head.status).unwrap_or(u16::MAX),
                        headers: head
                            .headers
                            .into_iter()
                            .map(|h| (h.name, h.value))
                            .collect(),
                        body: Vec::new(),
                    });
                }
                (invoke_response::Event::Body(chunk), Some(r)) => r.body.extend_from_slice(&chunk),
                (invoke_response::Event::Head(_), Some(_)) => {
                    return Err(incomplete(INVOKE, "a single response head"));
                }
                (invoke_response::Event::Body(_), None) => {
                    return Err(incomplete(INVOKE, "a response head before the body"));
                }
            }
        }
        response.ok_or_else(|| incomplete(INVOKE, "a response head"))
    }
}

impl IntoFuture for Invoke {
    type Output = Result<HttpResponse>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_idle(idle: Option<Duration>) -> v1::Session {
        v1::Session {
            spec: Some(v1::SessionSpec {
                idle_timeout: idle.map(time::duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keep_alive_runs_three_times_per_idle_timeout_within_bounds() {
        let cases = [
            (Some(Duration::from_secs(6)), Duration::from_secs(2)),
            (Some(Duration::from_millis(600)), Duration::from_millis(500)),
            (Some(Duration::from_secs(3600)), Duration::from_secs(300)),
            (Some(Duration::ZERO), Duration::from_secs(300)),
            (None, Duration::from_secs(300)),
        ];
        for (idle, want) in cases {
            assert_eq!(keep_alive_interval(&with_idle(idle)), want, "idle {idle:?}");
        }
    }

    #[test]
    fn exec_output_reports_success_and_text() {
        let out = ExecOutput {
            stdout: b"hi\n".to_vec(),
            code: 0,
            ..Default::default()
        };
        assert!(out.success());
        assert_eq!(out.stdout_text(), "hi\n");
        assert!(
            !ExecOutput {
                code: 0,
                timed_out: true,
                ..Default::default()
            }
            .success()
        );
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let r = HttpResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
        };
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-missing"), None);
        assert_eq!(r.text(), "ok");
    }
}
