//! `hearth sessions ...`: create (with progress), list, show, turns, keep-alive, pause,
//! resume, delete, watch.

use std::{
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt as _;
use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecResponse, IdleAction, InvokeResponse,
    KeepAliveRequest, ListSessionsRequest, ListSessionsResponse, PauseSessionRequest,
    ResumeSessionRequest, Session, SessionEvent, SessionState, WatchSessionRequest,
    create_session_request::Source, exec_response, invoke_response, readiness_probe::Check,
};

use super::{Ctx, read_input, stderr, stdout};
use crate::{
    args::{CreateArgs, ExecArgs, IdArg, IdsArg, InvokeArgs, ListArgs, Sessions},
    error::{Error, Result, Subject},
    parse::short_state,
    table::{self, Table},
};

/// Runs one `sessions` subcommand.
pub async fn run(ctx: &Ctx, command: Sessions) -> Result<ExitCode> {
    match command {
        Sessions::Create(args) => create(ctx, args).await,
        Sessions::Ls(args) => list(ctx, args).await,
        Sessions::Get(IdArg { id }) => get(ctx, &id).await,
        Sessions::Exec(args) => exec(ctx, args).await,
        Sessions::Invoke(args) => invoke(ctx, args).await,
        Sessions::Keepalive(IdArg { id }) => keep_alive(ctx, &id).await,
        Sessions::Pause(IdArg { id }) => pause(ctx, &id).await,
        Sessions::Resume(IdArg { id }) => resume(ctx, &id).await,
        Sessions::Rm(IdsArg { ids }) => delete(ctx, &ids).await,
        Sessions::Watch(IdArg { id }) => watch(ctx, &id).await,
    }
}

/// `READY` for `SESSION_STATE_READY`.
pub fn state_name(state: SessionState) -> &'static str {
    short_state(state.as_str_name(), "SESSION_STATE_")
}

fn is_terminal(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Stopped | SessionState::Failed | SessionState::Lost
    )
}

/// What `sessions create` starts from: a template, or a spec from the flags. Checked
/// before dialling, so a usage error never waits on the network.
pub fn source(args: &CreateArgs) -> Result<Source> {
    match (&args.template, &args.spec.image) {
        (Some(name), _) => {
            let given = args.spec.given();
            if !given.is_empty() {
                return Err(Error::Usage(format!(
                    "--template takes the whole spec from the template, so {} cannot be given \
                     with it (`hearth templates update` changes the template)",
                    given.join(", ")
                )));
            }
            Ok(Source::Template(name.clone()))
        }
        (None, Some(_)) => Ok(Source::Spec(args.spec.to_spec())),
        (None, None) => Err(Error::Usage(
            "say what to run: --image IMAGE (with the other spec flags) or --template NAME"
                .to_owned(),
        )),
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<ExitCode> {
    let source = source(&args)?;
    let subject = match &args.template {
        Some(name) => Subject::Template(name),
        None => Subject::None,
    };
    let request = CreateSessionRequest {
        source: Some(source),
        // Retries of this create (by the SDK, or by the user with --request-id) send the
        // same id, so they give one session.
        request_id: args
            .request_id
            .clone()
            .unwrap_or_else(|| ulid::Ulid::new().to_string()),
        labels: args.labels.iter().cloned().collect(),
        // Always returns once placed; waiting for READY happens here, through
        // WatchSession, so progress can be shown.
        no_wait: true,
    };
    let started = Instant::now();
    let session = ctx
        .call("Sessions/CreateSession", subject, |c| {
            let request = request.clone();
            async move { c.sessions().create_session(request).await }
        })
        .await?;
    let id = session.id.clone();
    let placed = if session.node_id.is_empty() {
        String::new()
    } else {
        format!(" on node {}", session.node_id)
    };
    stderr(
        format!(
            "session {id} {}{placed} ({})\n",
            state_name(session.state()),
            table::human(started.elapsed())
        )
        .as_bytes(),
    );
    let session = if args.no_wait || session.state() == SessionState::Ready {
        session
    } else {
        wait_ready(ctx, session, started).await?
    };
    ctx.result(&session, || format!("{id}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// How often pull progress is printed when stderr is not a terminal.
const PULL_LINE_EVERY: Duration = Duration::from_secs(1);

/// Follows the session's events until it is READY, printing each change to stderr, and
/// the image pull's progress while it runs.
async fn wait_ready(ctx: &Ctx, session: Session, started: Instant) -> Result<Session> {
    let id = session.id.clone();
    let subject = Subject::Session(&id);
    let mut events = ctx
        .call("Sessions/WatchSession", subject, |c| {
            let request = WatchSessionRequest { id: id.clone() };
            async move { c.sessions().watch_session(request).await }
        })
        .await?;
    let mut last = session.state();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut pull_line: Option<Instant> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| ctx.status("Sessions/WatchSession", s, subject))?;
        let state = event.state();
        let pulling = event.message.starts_with("pulling image ");
        if state == last && (pulling || event.message.starts_with("pulled image ")) {
            // Pull progress: one line redrawn in place on a terminal, else a line a second.
            let due = !pulling || pull_line.is_none_or(|at| at.elapsed() >= PULL_LINE_EVERY);
            if tty {
                let end = if pulling { "" } else { "\n" };
                stderr(format!("\r\x1b[K  {}{end}", event.message).as_bytes());
            } else if due {
                stderr(format!("  {}\n", event.message).as_bytes());
            }
            if due {
                pull_line = Some(Instant::now());
            }
            continue;
        }
        if tty && pull_line.is_some() {
            stderr(b"\n");
            pull_line = None;
        }
        if state != last {
            let message = if event.message.is_empty() {
                String::new()
            } else {
                format!(": {}", event.message)
            };
            stderr(
                format!(
                    "  {} after {}{message}\n",
                    state_name(state),
                    table::human(started.elapsed())
                )
                .as_bytes(),
            );
            last = state;
        }
        if state == SessionState::Ready || is_terminal(state) {
            break;
        }
    }
    let session = get_session(ctx, &id).await?;
    match session.state() {
        SessionState::Ready => {
            let warmup = table::human(Duration::from_millis(session.warmup_ms));
            let line = match session.pull_ms {
                0 => format!("  warm-up {warmup} (the node held the image)\n"),
                ms => format!(
                    "  image pull {}, warm-up {warmup}\n",
                    table::human(Duration::from_millis(ms))
                ),
            };
            stderr(line.as_bytes());
            Ok(session)
        }
        state if is_terminal(state) => Err(Error::SessionEnded {
            id,
            state: state_name(state).to_owned(),
            reason: session.state_reason,
        }),
        state => Err(Error::Other(format!(
            "the broker stopped sending updates while session {id} was {}; \
             `hearth sessions get {id}` shows how it goes on",
            state_name(state)
        ))),
    }
}

async fn get_session(ctx: &Ctx, id: &str) -> Result<Session> {
    ctx.client
        .get_session(id)
        .await
        .map_err(|e| ctx.error(e, Subject::Session(id)))
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode> {
    let filter = ListSessionsRequest {
        states: args.states.iter().map(|s| *s as i32).collect(),
        labels: args.labels.into_iter().collect(),
        ..Default::default()
    };
    let sessions = ctx
        .client
        .list_sessions(filter)
        .await
        .map_err(|e| ctx.error(e, Subject::None))?;
    if !ctx.json && sessions.is_empty() {
        stderr(b"no sessions (`hearth sessions create --help` shows how to start one)\n");
        return Ok(ExitCode::SUCCESS);
    }
    let response = ListSessionsResponse {
        sessions,
        next_page_token: String::new(),
    };
    ctx.result(&response, || {
        session_table(&response.sessions, SystemTime::now())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The `sessions ls` table.
pub fn session_table(sessions: &[Session], now: SystemTime) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "NODE",
        "GPUS",
        "AGE",
        "IDLE/EXPIRES",
        "TURNS",
        "TEMPLATE",
        "LABELS",
    ]);
    for s in sessions {
        table.row(vec![
            s.id.clone(),
            state_name(s.state()).to_owned(),
            or_dash(&s.node_id),
            gpu_count(s).to_string(),
            table::age(s.created_at.as_ref(), now),
            idle_or_expiry(s, now),
            s.turns_served.to_string(),
            or_dash(&s.template),
            table::labels(&s.labels),
        ]);
    }
    table.render()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// GPUs allocated, or asked for before placement.
fn gpu_count(s: &Session) -> usize {
    if s.gpu_uuids.is_empty() {
        s.spec
            .as_ref()
            .and_then(|spec| spec.gpus.as_ref())
            .map_or(0, |g| g.count as usize)
    } else {
        s.gpu_uuids.len()
    }
}

/// `in 29m59s` until the idle action for a running session, `idle 3m12s` for a paused
/// one, `never` when idleness does nothing, `-` once it has ended.
fn idle_or_expiry(s: &Session, now: SystemTime) -> String {
    let keep = s.spec.as_ref().map(|spec| spec.idle_action()) == Some(IdleAction::Keep);
    match s.state() {
        SessionState::Ready if keep => "never".to_owned(),
        SessionState::Ready => table::relative(s.expires_at.as_ref(), now),
        SessionState::Paused => format!("idle {}", table::age(s.last_activity_at.as_ref(), now)),
        _ => "-".to_owned(),
    }
}

async fn get(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let session = get_session(ctx, id).await?;
    ctx.result(&session, || session_view(&session, SystemTime::now()))?;
    Ok(ExitCode::SUCCESS)
}

/// The `sessions get` view.
pub fn session_view(s: &Session, now: SystemTime) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let gpus = spec.gpus.clone().unwrap_or_default();
    let mut asked = format!("{}", gpus.count);
    if !gpus.model.is_empty() {
        asked.push_str(&format!(" × {}", gpus.model));
    }
    if gpus.min_memory_bytes > 0 {
        asked.push_str(&format!(
            ", at least {} each",
            table::bytes(gpus.min_memory_bytes)
        ));
    }
    let ports = spec
        .ports
        .iter()
        .map(|p| match p.name.as_str() {
            "" => p.port.to_string(),
            name => format!("{}:{name}", p.port),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let readiness = match spec.readiness.as_ref().and_then(|r| r.check.as_ref()) {
        None => "as soon as it starts".to_owned(),
        Some(Check::TcpPort(port)) => format!("TCP connect to {port}"),
        Some(Check::Http(h)) => format!("HTTP GET {}{}", h.port, h.path),
        Some(Check::Exec(e)) => format!("exec {}", e.argv.join(" ")),
    };
    let idle = format!(
        "{} then {}",
        match table::duration(spec.idle_timeout.as_ref()) {
            d if d.is_empty() => "default".to_owned(),
            d => d,
        },
        match spec.idle_action() {
            IdleAction::Unspecified | IdleAction::Pause => "pause",
            IdleAction::Stop => "stop",
            IdleAction::Keep => "keep running",
        }
    );
    let resources = spec.resources.unwrap_or_default();
    let mut limits = Vec::new();
    if resources.cpu_millis > 0 {
        limits.push(format!(
            "{} cores",
            f64::from(resources.cpu_millis) / 1000.0
        ));
    }
    if resources.memory_bytes > 0 {
        limits.push(format!("{} memory", table::bytes(resources.memory_bytes)));
    }
    let ready_took = match (
        table::time_of(s.created_at.as_ref()),
        table::time_of(s.ready_at.as_ref()),
    ) {
        (Some(created), Some(ready)) => format!(
            "{}, {} after creation",
            table::timestamp(s.ready_at.as_ref(), now),
            table::human(ready.duration_since(created).unwrap_or_default())
        ),
        _ => String::new(),
    };
    let mut env: Vec<_> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    table::key_values(&[
        ("ID", s.id.clone()),
        ("STATE", state_name(s.state()).to_owned()),
        ("REASON", s.state_reason.clone()),
        ("TENANT", s.tenant.clone()),
        ("TEMPLATE", s.template.clone()),
        ("LABELS", table::labels(&s.labels)),
        ("NODE", s.node_id.clone()),
        ("GPUS", s.gpu_uuids.join(", ")),
        ("CONTAINER", s.container_id.clone()),
        ("GENERATION", s.generation.to_string()),
        ("IMAGE", spec.image),
        ("COMMAND", spec.command.join(" ")),
        ("ENV", env.join(" ")),
        ("GPUS ASKED", asked),
        ("LIMITS", limits.join(", ")),
        ("PORTS", ports),
        ("READY WHEN", readiness),
        ("IDLE", idle),
        ("MAX LIFETIME", table::duration(spec.max_lifetime.as_ref())),
        ("CREATED", table::timestamp(s.created_at.as_ref(), now)),
        ("READY AT", ready_took),
        (
            "LAST ACTIVITY",
            table::timestamp(s.last_activity_at.as_ref(), now),
        ),
        ("EXPIRES", table::timestamp(s.expires_at.as_ref(), now)),
        (
            "MAX DEADLINE",
            table::timestamp(s.max_deadline.as_ref(), now),
        ),
        ("TURNS", s.turns_served.to_string()),
        ("COLD STARTS", s.cold_starts.to_string()),
    ])
}

async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<ExitCode> {
    let stdin = match &args.stdin {
        Some(path) => Some(read_input(path, "--stdin")?),
        None => None,
    };
    let session = ctx
        .client
        .attach(&args.id)
        .await
        .map_err(|e| ctx.error(e, Subject::Session(&args.id)))?;
    // A one-shot command needs no background keep-alive: the turn itself is activity.
    session.stop_keep_alive();
    let mut turn = session.exec(args.argv.clone());
    if let Some(bytes) = stdin {
        turn = turn.stdin(bytes);
    }
    for (k, v) in &args.env {
        turn = turn.env(k, v);
    }
    if let Some(t) = args.timeout {
        turn = turn.timeout(t);
    }
    if let Some(dir) = &args.workdir {
        turn = turn.workdir(dir);
    }
    let subject = Subject::Session(&args.id);
    let mut stream = turn.stream().await.map_err(|e| ctx.error(e, subject))?;
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| ctx.error(e, subject))?;
        if ctx.json {
            let message = ExecResponse {
                event: Some(event.clone()),
            };
            ctx.item(&message, String::new)?;
        }
        match event {
            exec_response::Event::Stdout(bytes) if !ctx.json => stdout(&bytes)?,
            exec_response::Event::Stderr(bytes) if !ctx.json => stderr(&bytes),
            exec_response::Event::Exit(exit) => {
                return Ok(exit_code(&args, exit.code, exit.timed_out));
            }
            _ => {}
        }
    }
    Err(Error::Other(format!(
        "the Exec stream ended before the command's exit status; `hearth sessions get {}` \
         shows whether the session is still there",
        args.id
    )))
}

/// The command's exit code, as a shell reports it: 124 for a timeout (as timeout(1)),
/// 1 with a note when a signal killed it.
fn exit_code(args: &ExecArgs, code: i32, timed_out: bool) -> ExitCode {
    if timed_out {
        let after = args
            .timeout
            .map(|t| format!(" after {}", humantime::format_duration(t)))
            .unwrap_or_default();
        stderr(format!("hearth: the command timed out{after} and was killed\n").as_bytes());
        return ExitCode::from(124);
    }
    match u8::try_from(code) {
        Ok(code) => ExitCode::from(code),
        Err(_) => {
            stderr(
                format!("hearth: the command was killed by a signal (code {code})\n").as_bytes(),
            );
            ExitCode::FAILURE
        }
    }
}

async fn invoke(ctx: &Ctx, args: InvokeArgs) -> Result<ExitCode> {
    let body = match args.data.as_deref() {
        Some(data) => match data.strip_prefix('@') {
            Some(path) => Some(read_input(path, "-d @")?),
            None => Some(data.as_bytes().to_vec()),
        },
        None => None,
    };
    let method = match &args.method {
        Some(m) => m.to_ascii_uppercase(),
        None if body.is_some() => "POST".to_owned(),
        None => "GET".to_owned(),
    };
    let session = ctx
        .client
        .attach(&args.id)
        .await
        .map_err(|e| ctx.error(e, Subject::Session(&args.id)))?;
    session.stop_keep_alive();
    let mut turn = session.invoke(args.port, &args.path).method(method);
    for (name, value) in &args.headers {
        turn = turn.header(name, value);
    }
    if let Some(body) = body {
        turn = turn.body(body);
    }
    if let Some(t) = args.timeout {
        turn = turn.timeout(t);
    }
    let subject = Subject::Session(&args.id);
    let mut stream = turn.stream().await.map_err(|e| ctx.error(e, subject))?;
    let mut status = None;
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| ctx.error(e, subject))?;
        if ctx.json {
            let message = InvokeResponse {
                event: Some(event.clone()),
            };
            ctx.item(&message, String::new)?;
        }
        match event {
            invoke_response::Event::Head(head) => {
                status = Some(head.status);
                if args.include && !ctx.json {
                    let mut text = format!("HTTP {}\n", head.status);
                    for h in &head.headers {
                        text.push_str(&format!("{}: {}\n", h.name, h.value));
                    }
                    text.push('\n');
                    stdout(text.as_bytes())?;
                }
            }
            invoke_response::Event::Body(chunk) if !ctx.json => stdout(&chunk)?,
            invoke_response::Event::Body(_) => {}
        }
    }
    match status {
        None => Err(Error::Other(
            "the Invoke stream ended without a response head".to_owned(),
        )),
        Some(code) if args.fail && code >= 400 => {
            stderr(format!("hearth: the server answered HTTP {code}\n").as_bytes());
            Ok(ExitCode::from(22))
        }
        Some(_) => Ok(ExitCode::SUCCESS),
    }
}

async fn keep_alive(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let response = ctx
        .call("Sessions/KeepAlive", Subject::Session(id), |c| {
            let request = KeepAliveRequest { id: id.to_owned() };
            async move { c.sessions().keep_alive(request).await }
        })
        .await?;
    ctx.result(&response, || {
        format!(
            "session {id} idle deadline: {}\n",
            table::timestamp(response.expires_at.as_ref(), SystemTime::now())
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn pause(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let session = ctx
        .call("Sessions/PauseSession", Subject::Session(id), |c| {
            let request = PauseSessionRequest { id: id.to_owned() };
            async move { c.sessions().pause_session(request).await }
        })
        .await?;
    ctx.result(&session, || {
        format!(
            "session {id} is {}: CPU frozen, memory and VRAM kept; the next turn resumes it\n",
            state_name(session.state())
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn resume(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let session = ctx
        .call("Sessions/ResumeSession", Subject::Session(id), |c| {
            let request = ResumeSessionRequest { id: id.to_owned() };
            async move { c.sessions().resume_session(request).await }
        })
        .await?;
    ctx.result(&session, || {
        format!("session {id} is {}\n", state_name(session.state()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes each session in turn; one that fails does not stop the others, and the exit
/// code is 1 if any failed.
async fn delete(ctx: &Ctx, ids: &[String]) -> Result<ExitCode> {
    let mut failed = None;
    for id in ids {
        let deleted = ctx
            .call("Sessions/DeleteSession", Subject::Session(id), |c| {
                let request = DeleteSessionRequest { id: id.clone() };
                async move { c.sessions().delete_session(request).await }
            })
            .await;
        match deleted {
            Ok(session) => ctx.item(&session, || {
                format!("session {id} deleted ({})\n", state_name(session.state()))
            })?,
            Err(e) => {
                if ids.len() > 1 {
                    stderr(format!("error: {e}\n").as_bytes());
                }
                failed = Some(e);
            }
        }
    }
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some(e) if ids.len() == 1 => Err(e),
        Some(_) => Ok(ExitCode::FAILURE),
    }
}

async fn watch(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let subject = Subject::Session(id);
    let mut events = ctx
        .call("Sessions/WatchSession", subject, |c| {
            let request = WatchSessionRequest { id: id.to_owned() };
            async move { c.sessions().watch_session(request).await }
        })
        .await?;
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| ctx.status("Sessions/WatchSession", s, subject))?;
        ctx.item(&event, || event_line(&event))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One `sessions watch` line: time, state, what happened.
pub fn event_line(event: &SessionEvent) -> String {
    let time = table::time_of(event.time.as_ref())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| "-".to_owned());
    let line = format!(
        "{time}  {:<8}  {}",
        state_name(event.state()),
        event.message
    );
    format!("{}\n", line.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{GpuRequest, SessionSpec};
    use std::time::Duration;

    fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
        Some(hearth_sdk::time::timestamp(t))
    }

    #[test]
    fn the_table_shows_state_age_deadline_and_labels() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ready = Session {
            id: "01JREADY".into(),
            state: SessionState::Ready.into(),
            node_id: "gpu-1".into(),
            gpu_uuids: vec!["GPU-SIM-0".into()],
            created_at: ts(now - Duration::from_secs(192)),
            expires_at: ts(now + Duration::from_secs(60)),
            turns_served: 7,
            labels: [("user".into(), "alice".into())].into(),
            ..Default::default()
        };
        let paused = Session {
            id: "01JPAUSED".into(),
            state: SessionState::Paused.into(),
            template: "llama".into(),
            last_activity_at: ts(now - Duration::from_secs(45)),
            spec: Some(SessionSpec {
                gpus: Some(GpuRequest {
                    count: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = session_table(&[ready, paused], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "ID",
                "STATE",
                "NODE",
                "GPUS",
                "AGE",
                "IDLE/EXPIRES",
                "TURNS",
                "TEMPLATE",
                "LABELS"
            ]
        );
        assert!(
            lines[1].contains("READY") && lines[1].contains("3m12s"),
            "{text}"
        );
        assert!(
            lines[1].contains("in 1m0s") && lines[1].ends_with("user=alice"),
            "{text}"
        );
        assert!(
            lines[2].contains("PAUSED") && lines[2].contains("idle 45s"),
            "{text}"
        );
        assert!(
            lines[2].contains("llama") && lines[2].contains(" 2 "),
            "{text}"
        );
    }

    #[test]
    fn the_view_names_every_part() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Session {
            id: "01JX".into(),
            state: SessionState::Failed.into(),
            state_reason: "readiness probe never passed".into(),
            created_at: ts(now - Duration::from_secs(10)),
            ready_at: ts(now - Duration::from_secs(8)),
            ..Default::default()
        };
        let text = session_view(&s, now);
        assert!(text.contains("STATE          FAILED\n"), "{text}");
        assert!(
            text.contains("REASON         readiness probe never passed"),
            "{text}"
        );
        assert!(text.contains("(8.0s ago), 2.0s after creation"), "{text}");
        assert!(text.contains("TEMPLATE       -\n"), "{text}");
    }

    #[test]
    fn watch_lines_have_time_state_and_message() {
        let event = SessionEvent {
            session_id: "01JX".into(),
            time: ts(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            state: SessionState::Ready.into(),
            message: "ready".into(),
        };
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:01.500Z  READY     ready\n"
        );
    }
}
