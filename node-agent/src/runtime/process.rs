//! Process runtime: each session is a child process in its own process group, for hosts
//! without Docker and for development.
//!
//! - `spec.image` is the executable (a path, or a name looked up on the agent's `PATH`),
//!   `spec.command` its arguments. Output goes to `<state_dir>/<session>.log`.
//! - The workload gets a clean environment: a few basics from the agent ([`INHERITED_ENV`]),
//!   then `spec.env`, then `CUDA_VISIBLE_DEVICES` (the allocated GPU UUIDs; empty for a CPU
//!   session, so it cannot see any GPU), `HEARTH_SESSION_ID`, and the ports below.
//! - Processes share the host network, so each declared port gets a free loopback port:
//!   `HEARTH_PORT_<port>=<host port>`, and `PORT` for the first. [`ProcessRuntime`]'s
//!   `address` answers `127.0.0.1:<host port>`.
//! - Pause and resume are SIGSTOP / SIGCONT to the process group; stop is SIGTERM, then
//!   SIGKILL after the grace period.
//! - State lives in `<state_dir>/<session>.json` (pid, its start time from
//!   `/proc/<pid>/stat`, ports, paused flag, environment), so a restarted agent re-adopts
//!   running workloads. A pid counts as the workload only while its start time matches, so
//!   a recycled pid is never mistaken for it. The directory is private (0700, files 0600):
//!   the environment may hold secrets.
//! - Children (workloads and execs) run with `no_new_privs` set between fork and exec, so
//!   a setuid or file-capability binary cannot raise their privileges. That is all this
//!   runtime enforces: they run as the agent's user, with its capabilities (all of them
//!   when the agent is root), its filesystem and network, and no pids, memory or CPU
//!   limit; `spec.security.add_capabilities` is ignored. Use the docker runtime where
//!   sessions must be isolated from each other and from the host.
//! - A child the agent spawned is waited on by a background task, which reaps it (no
//!   zombies) and keeps its exit status. An adopted workload (spawned by an earlier agent
//!   process) was re-parented to init, which reaps it; its exit code is then unknown.

use std::{
    collections::{BTreeMap, HashMap, btree_map},
    io,
    net::{Ipv4Addr, SocketAddr},
    os::unix::{
        fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
        process::ExitStatusExt as _,
    },
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    process::Command,
    sync::{mpsc, watch},
    task::{AbortHandle, JoinHandle},
};
use tokio_util::sync::CancellationToken;

use super::{ExecOutput, ExecSpec, Runtime, RuntimeError, StartRequest, Workload, WorkloadState};

/// Sets `no_new_privs` in the child between fork and exec: nothing it runs (a setuid
/// binary, a file with capabilities) can gain privileges, and the flag is inherited by
/// everything it starts.
#[allow(unsafe_code)]
fn no_new_privileges(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed; it makes one prctl system call and neither
    // allocates nor takes a lock.
    unsafe {
        command.pre_exec(|| nix::sys::prctl::set_no_new_privs().map_err(io::Error::from));
    }
}

/// Variables a workload (and its execs) inherit from the agent; everything else of the
/// agent's environment (its `HEARTH_*` settings above all) stays out.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
];

/// Grace given to a leftover workload that a new start of the same session replaces.
const REPLACE_GRACE: Duration = Duration::from_secs(5);
/// How long stop waits for the group to die after SIGKILL before reporting a failure.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often stop checks whether the workload has exited.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// Read size for exec output; one chunk is sent per read.
const EXEC_READ_BUFFER: usize = 16 * 1024;

/// What `<state_dir>/<session>.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ProcessState {
    session: String,
    generation: u64,
    epoch: i64,
    tenant: String,
    pid: u32,
    pgid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot): with the pid, identifies
    /// the process across pid reuse.
    start_time: u64,
    /// Session port → host port.
    ports: BTreeMap<u32, u16>,
    paused: bool,
    /// The workload's whole environment, which execs start from.
    env: BTreeMap<String, String>,
}

impl ProcessState {
    /// True while the recorded process still runs (not exited, not a zombie, pid not reused).
    fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// A child this agent process spawned: its exit status once the reaper task has it.
struct Spawned {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
}

#[derive(Default)]
struct Inner {
    /// Cache of the state files, by session.
    states: HashMap<String, ProcessState>,
    /// Children spawned by this process, by session.
    children: HashMap<String, Spawned>,
}

/// Runs each session as a local process group. See the module docs.
pub struct ProcessRuntime {
    state_dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// Whether sessions of several tenants may run here (`mixed_tenants`).
    mixed_tenants: bool,
    /// Held through a start's tenant check and spawn, so two tenants' starts cannot both
    /// pass the check.
    starting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl ProcessRuntime {
    /// A runtime keeping its state in `state_dir`, which is created (mode 0700) if absent.
    /// Workloads whose state files are there already are adopted as they are found.
    pub fn new(state_dir: PathBuf) -> Result<Self, RuntimeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(|e| {
                backend(format!(
                    "cannot create state_dir {}: {e}",
                    state_dir.display()
                ))
            })?;
        Ok(Self {
            state_dir,
            inner: Arc::default(),
            mixed_tenants: false,
            starting: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory holding the state and log files.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every session's state file, sorted by session (unreadable ones are skipped).
    fn read_states(&self) -> Result<Vec<ProcessState>, RuntimeError> {
        let entries = std::fs::read_dir(&self.state_dir).map_err(|e| {
            backend(format!(
                "cannot read state_dir {}: {e}",
                self.state_dir.display()
            ))
        })?;
        let mut states = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| backend(format!("cannot read state_dir: {e}")))?
                .path();
            let is_state = path.extension().is_some_and(|e| e == "json")
                && path
                    .file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
            if !is_state {
                continue;
            }
            match self.read_state_file(&path) {
                Ok(Some(state)) => states.push(state),
                Ok(None) => {} // removed meanwhile
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable state file"),
            }
        }
        states.sort_by(|a, b| a.session.cmp(&b.session));
        Ok(states)
    }

    /// Allows sessions of several tenants on this node, which the process runtime cannot
    /// keep apart (they share the host's network, user and filesystem). Off by default:
    /// a start for a second tenant is refused while the first has a live session.
    pub fn mixed_tenants(mut self, allowed: bool) -> Self {
        self.mixed_tenants = allowed;
        self
    }

    /// Refuses `tenant` while a live session of another tenant runs here, unless mixed
    /// tenants are allowed.
    fn check_tenant(&self, session: &str, tenant: &str) -> Result<(), RuntimeError> {
        if self.mixed_tenants {
            return Ok(());
        }
        let other = self
            .read_states()?
            .into_iter()
            .find(|s| s.session != session && s.tenant != tenant && s.alive());
        match other {
            None => Ok(()),
            Some(other) => Err(RuntimeError::WrongState(format!(
                "this node runs sessions of tenant {:?} on the process runtime, which keeps \
                 tenants apart in nothing (network, user, files); it takes no session of \
                 tenant {tenant:?} unless started with --mixed-tenants",
                other.tenant
            ))),
        }
    }

    fn state_path(&self, session: &str) -> PathBuf {
        self.state_dir.join(format!("{session}.json"))
    }

    fn log_path(&self, session: &str) -> PathBuf {
        self.state_dir.join(format!("{session}.log"))
    }

    /// The session's private scratch directory: its working directory and `TMPDIR`, as a
    /// container's own filesystem would be. Removed when the session stops.
    fn scratch_dir(&self, session: &str) -> PathBuf {
        self.state_dir.join(format!("{session}.d"))
    }

    /// The session's state: from the cache, else from its file. `None` if it has none.
    fn load(&self, session: &str) -> Result<Option<ProcessState>, RuntimeError> {
        check_session_id(session)?;
        if let Some(state) = self.lock().states.get(session) {
            return Ok(Some(state.clone()));
        }
        let Some(state) = self.read_state_file(&self.state_path(session))? else {
            return Ok(None);
        };
        self.lock().states.insert(session.to_owned(), state.clone());
        Ok(Some(state))
    }

    fn read_state_file(&self, path: &Path) -> Result<Option<ProcessState>, RuntimeError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| backend(format!("corrupt state file {}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes the state file atomically (temp file, then rename) and updates the cache.
    fn save(&self, state: &ProcessState) -> Result<(), RuntimeError> {
        let path = self.state_path(&state.session);
        let tmp = self.state_dir.join(format!(".{}.json.tmp", state.session));
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| backend(format!("cannot encode state: {e}")))?;
        let write = || -> io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| backend(format!("cannot write {}: {e}", path.display())))?;
        self.lock()
            .states
            .insert(state.session.clone(), state.clone());
        Ok(())
    }

    /// Forgets the session: cache, spawned child, state and log files.
    fn forget(&self, session: &str) -> Result<(), RuntimeError> {
        {
            let mut inner = self.lock();
            inner.states.remove(session);
            inner.children.remove(session);
        }
        for path in [self.state_path(session), self.log_path(session)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(backend(format!("cannot remove {}: {e}", path.display()))),
            }
        }
        match std::fs::remove_dir_all(self.scratch_dir(session)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(format!(
                "cannot remove the scratch directory of {session}: {e}"
            ))),
        }
    }

    /// The workload as seen now.
    async fn workload(&self, state: &ProcessState) -> Workload {
        let now = if state.alive() {
            if state.paused {
                WorkloadState::Paused
            } else {
                WorkloadState::Running
            }
        } else {
            WorkloadState::Exited(self.exit_code(state).await)
        };
        Workload {
            session_id: state.session.clone(),
            generation: state.generation,
            epoch: state.epoch,
            id: state.pid.to_string(),
            state: now,
        }
    }

    /// The exit code of a process that is gone, when this agent spawned it (signals become
    /// 128 + the signal number, as shells and Docker report them).
    async fn exit_code(&self, state: &ProcessState) -> Option<i32> {
        let mut exit = {
            let inner = self.lock();
            let spawned = inner.children.get(&state.session)?;
            if spawned.pid != state.pid {
                return None;
            }
            spawned.exit.clone()
        };
        // The reaper records the status right after reaping; a moment's wait covers the
        // window between the pid vanishing and the status being stored.
        let status = tokio::time::timeout(Duration::from_secs(1), exit.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()?;
        let status = (*status)?;
        status.code().or(status.signal().map(|s| 128 + s))
    }

    /// Waits until the workload is gone or `deadline` passes; true if it is gone.
    async fn wait_gone(&self, state: &ProcessState, deadline: Instant) -> bool {
        loop {
            if !state.alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// A running state for `session`, or the error that explains why there is none.
    fn running_state(&self, session: &str) -> Result<ProcessState, RuntimeError> {
        let state = self
            .load(session)?
            .ok_or_else(|| RuntimeError::NotFound(session.to_owned()))?;
        if !state.alive() {
            return Err(RuntimeError::WrongState(format!(
                "the workload of session {session} is not running (process {} exited)",
                state.pid
            )));
        }
        Ok(state)
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, request: &StartRequest) -> Result<Workload, RuntimeError> {
        let session = &request.session_id;
        check_session_id(session)?;
        let spec = &request.spec;
        let executable = resolve_executable(&spec.image)?;
        let mut ports = BTreeMap::new();
        for (i, p) in spec.ports.iter().enumerate() {
            if p.port == 0 || p.port > 65535 {
                return Err(RuntimeError::InvalidSpec {
                    field: format!("spec.ports[{i}].port"),
                    reason: format!("{} is not a TCP port (1-65535)", p.port),
                });
            }
            if let btree_map::Entry::Vacant(slot) = ports.entry(p.port) {
                slot.insert(free_port()?);
            }
        }

        let _starting = self.starting.lock().await;
        self.check_tenant(session, &request.tenant)?;
        // A leftover of this session (an older generation, a failed start) is replaced.
        self.stop(session, REPLACE_GRACE).await?;

        let mut env: BTreeMap<String, String> = INHERITED_ENV
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("CUDA_VISIBLE_DEVICES".into(), request.gpu_uuids.join(","));
        env.insert("HEARTH_SESSION_ID".into(), session.clone());
        let scratch = self.scratch_dir(session);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| backend(format!("cannot create {}: {e}", scratch.display())))?;
        env.insert("TMPDIR".into(), scratch.display().to_string());
        for (port, host_port) in &ports {
            env.insert(format!("HEARTH_PORT_{port}"), host_port.to_string());
        }
        if let Some(first) = spec.ports.first() {
            env.insert("PORT".into(), ports[&first.port].to_string());
        }

        let log_path = self.log_path(session);
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| backend(format!("cannot open {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| backend(format!("cannot open {}: {e}", log_path.display())))?;
        let mut command = Command::new(&executable);
        command
            .args(&spec.command)
            .current_dir(&scratch)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own group: signals reach the whole workload, and a Ctrl-C aimed at the
            // agent does not reach it.
            .process_group(0);
        no_new_privileges(&mut command);
        let mut child = command.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                RuntimeError::ImageNotFound(spec.image.clone())
            }
            _ => backend(format!("cannot start {}: {e}", executable.display())),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| backend("the new process has no pid".into()))?;
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                exit_tx.send_replace(Some(status));
            }
        });
        // The process cannot have been reaped yet (only the task above reaps it), so its
        // stat entry exists, if only as a zombie.
        let start_time = proc_stat(pid).map_or(0, |(_, start)| start);
        let state = ProcessState {
            session: session.clone(),
            generation: request.generation,
            epoch: request.epoch,
            tenant: request.tenant.clone(),
            pid,
            pgid: pid as i32,
            start_time,
            ports,
            paused: false,
            env,
        };
        self.lock()
            .children
            .insert(session.clone(), Spawned { pid, exit: exit_rx });
        if let Err(e) = self.save(&state) {
            // Nothing may be left behind: a workload without a state file is invisible.
            let _ = killpg(Pid::from_raw(state.pgid), Signal::SIGKILL);
            let _ = self.forget(session);
            return Err(e);
        }
        tracing::info!(session = %session, pid, executable = %executable.display(), "process workload started");
        Ok(self.workload(&state).await)
    }

    async fn stop(&self, session_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(state) = self.load(session_id)? else {
            return Ok(());
        };
        // Only a process verified alive is signalled: the group id of a long-dead workload
        // may belong to someone else by now.
        if state.alive() {
            let group = Pid::from_raw(state.pgid);
            let _ = killpg(group, Signal::SIGTERM);
            // A paused group would hold the SIGTERM pending until resumed.
            let _ = killpg(group, Signal::SIGCONT);
            let gone = self.wait_gone(&state, Instant::now() + grace).await;
            // SIGKILL the group even after a clean exit of its leader, to take stragglers.
            let _ = killpg(group, Signal::SIGKILL);
            if !gone && !self.wait_gone(&state, Instant::now() + KILL_WAIT).await {
                return Err(backend(format!(
                    "process {} of session {session_id} survived SIGKILL",
                    state.pid
                )));
            }
            tracing::info!(session = %session_id, pid = state.pid, graceful = gone, "process workload stopped");
        }
        self.forget(session_id)
    }

    async fn pause(&self, session_id: &str) -> Result<(), RuntimeError> {
        let mut state = self.running_state(session_id)?;
        killpg(Pid::from_raw(state.pgid), Signal::SIGSTOP)
            .map_err(|e| backend(format!("SIGSTOP to process group {}: {e}", state.pgid)))?;
        state.paused = true;
        self.save(&state)
    }

    async fn resume(&self, session_id: &str) -> Result<(), RuntimeError> {
        let mut state = self.running_state(session_id)?;
        killpg(Pid::from_raw(state.pgid), Signal::SIGCONT)
            .map_err(|e| backend(format!("SIGCONT to process group {}: {e}", state.pgid)))?;
        if state.paused {
            state.paused = false;
            self.save(&state)?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        session_id: &str,
        spec: ExecSpec,
        output: mpsc::Sender<ExecOutput>,
        cancel: CancellationToken,
    ) -> Result<i32, RuntimeError> {
        let state = self.running_state(session_id)?;
        if state.paused {
            return Err(RuntimeError::WrongState(format!(
                "session {session_id} is paused; resume it before running commands"
            )));
        }
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(RuntimeError::InvalidSpec {
                field: "argv".into(),
                reason: "must name a command".into(),
            });
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(&state.env)
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        no_new_privileges(&mut command);
        if !spec.workdir.is_empty() {
            command.current_dir(&spec.workdir);
        } else if let Ok(cwd) = std::fs::read_link(format!("/proc/{}/cwd", state.pid)) {
            // "The workload's" working directory: the session process's own.
            command.current_dir(cwd);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            // As a shell (and `docker exec`) would: the command's failure, not the turn's.
            Err(e) if !spec.workdir.is_empty() && !Path::new(&spec.workdir).is_dir() => {
                let message = format!("hearth: workdir {}: {e}\n", spec.workdir);
                let _ = output.send(ExecOutput::Stderr(message.into_bytes())).await;
                return Ok(126);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                let code = if e.kind() == io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                let message = format!("hearth: {program}: {e}\n");
                let _ = output.send(ExecOutput::Stderr(message.into_bytes())).await;
                return Ok(code);
            }
            Err(e) => return Err(backend(format!("cannot run {program}: {e}"))),
        };
        let group = child.id().map(|pid| Pid::from_raw(pid as i32));

        let mut stdin = child.stdin.take();
        let input = spec.stdin;
        let feeder = tokio::spawn(async move {
            if let Some(stdin) = &mut stdin {
                // A command that does not read its input is not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        });
        let pumps: Vec<JoinHandle<()>> = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(pump(out, output.clone(), ExecOutput::Stdout))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(pump(err, output.clone(), ExecOutput::Stderr))),
        ]
        .into_iter()
        .flatten()
        .collect();
        drop(output);
        let mut aborts: Vec<AbortHandle> = pumps.iter().map(JoinHandle::abort_handle).collect();
        aborts.push(feeder.abort_handle());
        let kill = || {
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            for task in &aborts {
                task.abort();
            }
        };

        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| backend(format!("waiting for {program}: {e}")))?,
            () = cancel.cancelled() => {
                kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                return Ok(-1);
            }
        };
        // All output is sent before the exit code, unless the caller gives up first (a
        // background process may hold the pipes open).
        tokio::select! {
            _ = futures::future::join_all(pumps) => {}
            () = cancel.cancelled() => {
                kill();
                return Ok(-1);
            }
        }
        Ok(status.code().unwrap_or(-1))
    }

    async fn address(&self, session_id: &str, port: u32) -> Result<SocketAddr, RuntimeError> {
        let state = self
            .load(session_id)?
            .ok_or_else(|| RuntimeError::NotFound(session_id.to_owned()))?;
        let host_port = state
            .ports
            .get(&port)
            .ok_or_else(|| RuntimeError::PortNotExposed {
                session_id: session_id.to_owned(),
                port,
            })?;
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, *host_port)))
    }

    async fn inspect(&self, session_id: &str) -> Result<Option<Workload>, RuntimeError> {
        match self.load(session_id)? {
            Some(state) => Ok(Some(self.workload(&state).await)),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        let states = self.read_states()?;
        let mut workloads = Vec::with_capacity(states.len());
        for state in states {
            self.lock()
                .states
                .insert(state.session.clone(), state.clone());
            workloads.push(self.workload(&state).await);
        }
        Ok(workloads)
    }
}

/// Sends everything `reader` yields as `wrap`ped chunks, waiting on a full channel. A gone
/// receiver does not stop the reading: the command must not block on a full pipe.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    output: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) {
    let mut buf = vec![0; EXEC_READ_BUFFER];
    let mut open = true;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if open && output.send(wrap(buf[..n].to_vec())).await.is_err() {
                    open = false;
                }
            }
        }
    }
}

fn backend(message: String) -> RuntimeError {
    RuntimeError::Backend {
        runtime: "process",
        message,
    }
}

/// Session ids name files in the state directory, so they are held to a safe alphabet.
fn check_session_id(session: &str) -> Result<(), RuntimeError> {
    let ok = (1..=128).contains(&session.len())
        && !session.starts_with('.')
        && session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec {
            field: "session_id".into(),
            reason: format!("{session:?} must be 1-128 characters of [A-Za-z0-9._-]"),
        })
    }
}

/// The executable `image` names: a path, or a bare name found on the agent's `PATH`.
fn resolve_executable(image: &str) -> Result<PathBuf, RuntimeError> {
    if image.trim().is_empty() {
        return Err(RuntimeError::InvalidSpec {
            field: "spec.image".into(),
            reason: "must name an executable for the process runtime".into(),
        });
    }
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if image.contains('/') {
        Some(PathBuf::from(image)).filter(|p| executable(p))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(image))
                .find(|p| executable(p))
        })
    };
    found.ok_or_else(|| RuntimeError::ImageNotFound(image.to_owned()))
}

/// A loopback port that was free a moment ago. Another program could take it before the
/// workload binds it; the readiness probe would then fail and say so.
fn free_port() -> Result<u16, RuntimeError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| backend(format!("cannot find a free port: {e}")))
}

/// The state letter and start time (field 22) of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Fields 3.. follow the command name, which is in parentheses and may itself hold spaces
/// and parentheses, hence the split at the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was `state`; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let me = proc_stat(std::process::id()).unwrap();
        assert!(me.1 > 0, "{me:?}");
    }

    #[test]
    fn session_ids_are_safe_file_names() {
        for ok in ["01HZX3", "s-1_a.b"] {
            check_session_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_session_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn executables_resolve_by_path_or_name() {
        assert_eq!(
            resolve_executable("/bin/sh").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(resolve_executable("sh").unwrap().is_absolute());
        assert!(matches!(
            resolve_executable("/nonexistent/x"),
            Err(RuntimeError::ImageNotFound(_))
        ));
        assert!(matches!(
            resolve_executable("/etc/passwd"),
            Err(RuntimeError::ImageNotFound(_))
        ));
        assert!(matches!(
            resolve_executable(""),
            Err(RuntimeError::InvalidSpec { .. })
        ));
    }
}
