//! The `hearth` CLI end to end: the real binary against a real broker and agent (process
//! runtime, simulated GPUs, the static test worker as the workload). Every command runs
//! at least once, in its readable form and with `--json` (parsed, fields checked), and so
//! do the errors a user meets first: no broker, an unknown session, a bad flag, a session
//! that fails to start.
//!
//! Each test function shares one broker and agent across its cases, to stay fast.

use std::{path::PathBuf, process::Stdio, time::Duration};

use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker, binary, free_port},
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader, Lines},
    process::{Child, Command},
};

/// The longest any one CLI run may take here.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Fixture {
    broker: Broker,
    agent: Agent,
    dir: tempfile::TempDir,
    worker: String,
}

/// What one run of `hearth` did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success:\n{self:?}");
        &self.stdout
    }

    /// Asserts exit 0 and parses stdout as one JSON value.
    #[track_caller]
    fn json(&self) -> Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{self:?}"))
    }

    /// Asserts exit 0 and parses each stdout line as JSON.
    #[track_caller]
    fn json_lines(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{self:?}")))
            .collect()
    }

    /// Asserts this exit code and that stderr says each of `needles`.
    #[track_caller]
    fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "wrong exit code:\n{self:?}");
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{self:?}"
            );
        }
    }
}

impl Fixture {
    async fn start(node: &str) -> anyhow::Result<Self> {
        let worker = images::worker_binary().display().to_string();
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
        let agent = Agent::spawn(dir.path(), node, &[&broker.url], &["--simulate-gpus", "2"])?;
        let f = Self {
            broker,
            agent,
            dir,
            worker,
        };
        api::node_ready(&f.broker.url, &f.agent.node_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
        Ok(f)
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}",
            self.broker.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }

    /// `hearth ARGS` against this broker (through HEARTH_BROKER, as a user would set it).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hearth());
        cmd.args(args)
            .env("HEARTH_BROKER", &self.broker.url)
            .env_remove("HEARTH_TOKEN")
            .env_remove("HEARTH_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Out {
        run(self.command(args)).await
    }

    /// `hearth` with a command line split at whitespace (for arguments without spaces).
    async fn line(&self, line: &str) -> Out {
        self.run(&line.split_whitespace().collect::<Vec<_>>()).await
    }

    /// Starts `hearth ARGS` in the background, with stdout and stderr as line readers.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self.command(args).spawn().expect("spawn hearth");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Spec flags for a test worker session that is READY once it listens on 8080.
    fn worker_flags(&self) -> Vec<String> {
        [
            "--image",
            &self.worker,
            "--port",
            "8080:http",
            "--ready-tcp",
            "8080",
            "--env",
            "WARMUP_MS=200",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Creates a worker session with extra flags; returns its id.
    async fn create(&self, extra: &[&str]) -> String {
        let mut args: Vec<String> = vec!["sessions".into(), "create".into()];
        args.extend(self.worker_flags());
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = self
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        let id = out.ok().trim().to_owned();
        assert_eq!(
            id.len(),
            26,
            "stdout is the session id:\n{out:?}\n{}",
            self.logs()
        );
        id
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

fn hearth() -> PathBuf {
    binary("hearth").expect("the hearth binary is built")
}

async fn run(mut cmd: Command) -> Out {
    let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("hearth finished in time")
        .expect("hearth ran");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `hearth` process still running.
struct Running {
    child: Child,
    stdout: Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Lines<BufReader<tokio::process::ChildStderr>>,
}

/// The next line, within 20 s.
async fn next_line<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20 s")
        .expect("readable")
        .expect("a line before the end")
}

impl Running {
    /// Waits for the process to exit by itself; returns its code and remaining stdout.
    async fn finish(mut self) -> (i32, String) {
        let mut rest = String::new();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
                .await
                .expect("output ends within 20 s")
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits within 20 s")
            .expect("wait");
        (status.code().unwrap_or(-1), rest)
    }
}

/// Sessions: create (spec flags, progress, --json, --no-wait, FAILED), ls with filters,
/// get, exec (streamed, exit codes, stdin, env, timeout, --json), invoke (streamed, -i,
/// -d, -X, --json), keepalive, pause, resume, watch, rm; and the errors around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commands_end_to_end() -> anyhow::Result<()> {
    let f = Fixture::start("cli-node").await?;
    let w = f.worker.as_str();

    // create: progress on stderr, the id on stdout, every spec flag reaching the spec.
    let out = f
        .line(&format!(
            "sessions create --image {w} --gpus 1 --gpu-memory 40GiB --port 8080:http \
             --ready-tcp 8080 --ready-timeout 30s --env WARMUP_MS=200 --label team=cli \
             --idle-timeout 5m --idle-action pause --max-lifetime 1h --cpus 1 --strategy binpack"
        ))
        .await;
    let id = out.ok().trim().to_owned();
    assert_eq!(id.len(), 26, "{out:?}");
    assert!(out.stderr.contains("on node cli-node"), "{out:?}");
    assert!(out.stderr.contains("READY after"), "{out:?}");

    let v = f.run(&["sessions", "get", &id, "--json"]).await.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "SESSION_STATE_READY");
    assert_eq!(v["nodeId"], "cli-node");
    assert_eq!(v["labels"]["team"], "cli");
    assert_eq!(v["coldStarts"], 1);
    assert_eq!(v["spec"]["gpus"]["count"], 1);
    assert_eq!(v["spec"]["gpus"]["minMemoryBytes"], "42949672960");
    assert_eq!(v["spec"]["readiness"]["tcpPort"], 8080);
    assert_eq!(v["spec"]["readiness"]["timeout"], "30s");
    assert_eq!(v["spec"]["env"]["WARMUP_MS"], "200");
    assert_eq!(v["spec"]["idleTimeout"], "300s");
    assert_eq!(v["spec"]["maxLifetime"], "3600s");
    assert_eq!(v["spec"]["resources"]["cpuMillis"], 1000);
    assert_eq!(
        v["spec"]["placement"]["strategy"],
        "PLACEMENT_STRATEGY_BINPACK"
    );
    assert_eq!(v["spec"]["ports"][0]["name"], "http");
    assert_eq!(v["gpuUuids"].as_array().map(Vec::len), Some(1));

    let text = f.run(&["sessions", "get", &id]).await;
    let text = text.ok();
    for want in [
        format!("ID             {id}"),
        "STATE          READY".to_owned(),
        "NODE           cli-node".to_owned(),
        "LABELS         team=cli".to_owned(),
        "GPUS ASKED     1, at least 40GiB each".to_owned(),
        "READY WHEN     TCP connect to 8080".to_owned(),
        "IDLE           5m then pause".to_owned(),
    ] {
        assert!(text.contains(&want), "no {want:?} in\n{text}");
    }

    // A second session, returned once placed, with --json.
    let out = f
        .line(&format!(
            "--json sessions create --no-wait --image {w} --port 8080 \
             --ready-http 8080/healthz --label team=other --request-id cli-req-1"
        ))
        .await;
    let second = out.json();
    let second_id = second["id"].as_str().expect("an id").to_owned();
    assert_eq!(second["spec"]["readiness"]["http"]["path"], "/healthz");
    assert_eq!(second["labels"]["team"], "other");
    // The same request id gives the same session.
    let again = f
        .line(&format!(
            "--json sessions create --no-wait --image {w} --port 8080 \
             --ready-http 8080/healthz --label team=other --request-id cli-req-1"
        ))
        .await
        .json();
    assert_eq!(again["id"], second_id.as_str());

    // ls: the readable table, filters, and --json with every session.
    let out = f.run(&["sessions", "ls"]).await;
    let table = out.ok();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
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
    let row = table.lines().find(|l| l.starts_with(&id)).expect("a row");
    assert!(row.contains("READY") && row.contains("cli-node"), "{row}");
    assert!(row.contains(" in ") && row.ends_with("team=cli"), "{row}");

    let v = f
        .run(&["sessions", "ls", "--label", "team=cli", "--json"])
        .await
        .json();
    let listed = v["sessions"].as_array().expect("sessions");
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["id"], id.as_str());
    let all = f.run(&["sessions", "ls", "--json"]).await.json();
    assert_eq!(all["sessions"].as_array().map(Vec::len), Some(2), "{all}");
    let out = f.run(&["sessions", "ls", "--state", "paused"]).await;
    assert_eq!(out.ok(), "", "{out:?}");
    assert!(out.stderr.contains("no sessions"), "{out:?}");

    // exec: output streams as the command writes it, and the exit code is the command's.
    let mut running = f.spawn(&["sessions", "exec", &id, "--", w, "lines", "2", "1500"]);
    assert_eq!(next_line(&mut running.stdout).await, "line 1");
    assert!(
        running.child.try_wait()?.is_none(),
        "the first line arrived only when the command had ended"
    );
    let (code, rest) = running.finish().await;
    assert_eq!((code, rest.as_str()), (0, "line 2\n"));

    let out = f
        .run(&["sessions", "exec", &id, "--", w, "exit", "7"])
        .await;
    assert_eq!(out.code, 7, "{out:?}");
    let out = f.run(&["sessions", "exec", &id, w, "stderr", "oops"]).await;
    assert_eq!((out.code, out.stderr.trim()), (0, "oops"), "{out:?}");
    let input = f.file("stdin.txt", b"from a file");
    let out = f
        .line(&format!(
            "sessions exec {id} --stdin {} -- {w} cat",
            input.display()
        ))
        .await;
    assert_eq!(out.ok(), "from a file");
    let out = f
        .run(&[
            "sessions",
            "exec",
            &id,
            "--env",
            "GREETING=hi there",
            "--",
            w,
            "env",
            "GREETING",
        ])
        .await;
    assert_eq!(out.ok().trim(), "hi there");
    let out = f
        .line(&format!("sessions exec {id} --timeout 1s -- {w} sleep 10"))
        .await;
    out.fails(124, &["timed out"]);
    let lines = f
        .run(&["--json", "sessions", "exec", &id, "--", w, "echo", "hi"])
        .await
        .json_lines();
    assert_eq!(
        lines.first().map(|l| &l["stdout"]),
        Some(&Value::from("aGkK"))
    );
    let exit = &lines.last().expect("an exit line")["exit"];
    assert!(
        exit.is_object() && exit.get("code").is_none(),
        "exit 0: {exit}"
    );

    // invoke: body to stdout as it streams, -i, -d (text and @file), -X, --json.
    let out = f
        .run(&["sessions", "invoke", &id, "8080", "/echo", "-d", "ping"])
        .await;
    assert_eq!(out.ok(), "ping");
    let body = f.file("body.txt", b"from a body file");
    let at_body = format!("@{}", body.display());
    let out = f
        .run(&[
            "sessions", "invoke", "-i", &id, "8080", "/echo", "-d", &at_body,
        ])
        .await;
    let text = out.ok();
    assert!(text.starts_with("HTTP 200\n"), "{out:?}");
    assert!(
        text.to_lowercase().contains("content-length: 16\n"),
        "{out:?}"
    );
    assert!(text.ends_with("\n\nfrom a body file"), "{out:?}");
    for want in ["1", "2"] {
        let out = f
            .run(&["sessions", "invoke", &id, "8080", "/incr", "-X", "post"])
            .await;
        assert_eq!(out.ok().trim(), want, "state carries between turns");
    }
    let out = f
        .run(&["sessions", "invoke", "-f", &id, "8080", "/missing"])
        .await;
    out.fails(22, &["HTTP 404"]);
    let mut running = f.spawn(&[
        "sessions",
        "invoke",
        &id,
        "8080",
        "/stream?n=2&delay_ms=1500",
    ]);
    assert_eq!(next_line(&mut running.stdout).await, "data: token-0");
    assert!(
        running.child.try_wait()?.is_none(),
        "the body was not streamed"
    );
    let (code, rest) = running.finish().await;
    assert_eq!(code, 0);
    assert!(rest.contains("data: token-1"), "{rest}");
    let lines = f
        .line(&format!(
            "--json sessions invoke {id} 8080 /stream?n=2&delay_ms=10"
        ))
        .await
        .json_lines();
    assert_eq!(lines[0]["head"]["status"], 200, "{lines:?}");
    assert!(
        lines[1..].iter().all(|l| l["body"].is_string()),
        "{lines:?}"
    );
    assert!(lines.len() >= 2, "{lines:?}");

    // keepalive, pause, resume.
    let out = f.run(&["sessions", "keepalive", &id]).await;
    assert!(
        out.ok().contains("idle deadline: ") && out.stdout.contains("(in 4m"),
        "{out:?}"
    );
    let v = f
        .run(&["sessions", "keepalive", &id, "--json"])
        .await
        .json();
    let expires = v["expiresAt"].as_str().expect("expiresAt");
    assert!(expires.contains('T') && expires.ends_with('Z'), "{v}");

    let out = f.run(&["sessions", "pause", &id]).await;
    assert!(out.ok().contains("is PAUSED"), "{out:?}");
    let paused = f
        .run(&["sessions", "ls", "--state", "paused", "--json"])
        .await
        .json();
    assert_eq!(paused["sessions"][0]["id"], id.as_str());
    let v = f.run(&["sessions", "resume", &id, "--json"]).await.json();
    assert_eq!(v["state"], "SESSION_STATE_READY");
    let out = f
        .run(&["sessions", "invoke", &id, "8080", "/incr", "-X", "POST"])
        .await;
    assert_eq!(
        out.ok().trim(),
        "3",
        "the same warm workload after pause and resume"
    );

    // watch follows the session until rm ends it.
    let mut watch = f.spawn(&["sessions", "watch", &id]);
    let first = next_line(&mut watch.stdout).await;
    assert!(first.contains("READY"), "{first}");
    let out = f.run(&["sessions", "rm", &id]).await;
    assert!(
        out.ok().contains(&format!("session {id} deleted")),
        "{out:?}"
    );
    let (code, rest) = watch.finish().await;
    assert_eq!(code, 0, "watch ends by itself when the session does");
    assert!(rest.contains("STOPPED"), "{rest}");

    let mut watch_json = f.spawn(&["--json", "sessions", "watch", &second_id]);
    let v: Value = serde_json::from_str(&next_line(&mut watch_json.stdout).await)?;
    assert_eq!(v["sessionId"], second_id.as_str());
    let lines = f
        .run(&["--json", "sessions", "rm", &second_id])
        .await
        .json_lines();
    assert_eq!(lines[0]["id"], second_id.as_str());
    let (code, rest) = watch_json.finish().await;
    assert_eq!(code, 0);
    assert!(rest.contains("SESSION_STATE_STOPPED"), "{rest}");

    // Errors a user meets first.
    let unknown = "01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let not_found = format!("session {unknown} not found; `hearth sessions ls` lists yours");
    for args in [
        vec!["sessions", "get", unknown],
        vec!["sessions", "exec", unknown, "--", w, "echo"],
        vec!["sessions", "invoke", unknown, "8080", "/"],
        vec!["sessions", "pause", unknown],
        vec!["sessions", "rm", unknown],
    ] {
        f.run(&args).await.fails(1, &[&not_found]);
    }
    f.run(&["sessions", "get", "not-an-id"])
        .await
        .fails(1, &["the broker refused the request", "not a session id"]);
    f.run(&["sessions", "create", "--image", "/nonexistent/worker"])
        .await
        .fails(1, &["spec.image"]);
    f.run(&["sessions", "create", "--image", w, "--env", "FOO"])
        .await
        .fails(2, &["--env <K=V>", "expected K=V"]);
    f.run(&["sessions", "create", "--image", w, "--gpu-memory", "12XB"])
        .await
        .fails(2, &["--gpu-memory <SIZE>", "unknown unit"]);
    f.run(&["sessions", "create", "--gpus", "1"])
        .await
        .fails(2, &["--image", "--template"]);

    f.run(&["--token", "line\nbreak", "sessions", "ls"])
        .await
        .fails(2, &["invalid --token"]);
    f.run(&["--token", "s3cret", "sessions", "ls"]).await.ok();

    let port = free_port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let mut cmd = f.command(&["sessions", "ls", "--broker", &nowhere]);
    cmd.env("HEARTH_BROKER", &f.broker.url);
    run(cmd).await.fails(
        1,
        &[
            &format!("cannot reach the broker at {nowhere}"),
            "hearth-broker",
            "HEARTH_BROKER",
        ],
    );

    // A session whose readiness never passes: FAILED, with the reason, exit 1.
    let out = f
        .line(&format!(
            "sessions create --image {w} --port 8080 --port 9999 --ready-tcp 9999 \
             --ready-timeout 1s"
        ))
        .await;
    out.fails(1, &["FAILED", "readiness"]);
    assert_eq!(out.stdout, "", "nothing on stdout for a failed create");
    Ok(())
}

/// Nodes and events: ls (table and --json), get, cordon, uncordon, drain, and
/// `events --json` seeing what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_events() -> anyhow::Result<()> {
    let f = Fixture::start("cli-ops").await?;
    let node = "cli-ops";
    let id = f.create(&["--gpus", "1"]).await;

    let mut events = f.spawn(&["events", "--json"]);
    let ready = next_line(&mut events.stderr).await;
    assert!(ready.contains("watching cluster events"), "{ready}");

    let out = f.run(&["nodes", "ls"]).await;
    let table = out.ok();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "STATE",
            "SCHEDULING",
            "GPUS",
            "GPU",
            "MODEL",
            "SESSIONS",
            "TELEMETRY",
            "LABELS"
        ]
    );
    let row = table.lines().find(|l| l.starts_with(node)).expect("a row");
    assert!(
        row.contains("READY") && row.contains("schedulable"),
        "{row}"
    );
    assert!(
        row.contains(" 1/2 ") && row.contains("(SIMULATED)"),
        "{row}"
    );
    assert!(row.contains(" ago"), "telemetry age: {row}");

    let v = f.run(&["nodes", "ls", "--json"]).await.json();
    let n = &v["nodes"][0];
    assert_eq!(n["id"], node);
    assert_eq!(n["gpuSource"], "GPU_SOURCE_SIMULATED");
    assert_eq!(n["gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(n["gpus"][0]["simulated"], true);

    let out = f.run(&["nodes", "get", node]).await;
    let text = out.ok();
    assert!(
        text.contains("GPU SOURCE   SIMULATED (not real hardware)"),
        "{text}"
    );
    assert!(text.contains("SESSIONS     1"), "{text}");
    assert!(
        text.contains(&id),
        "the node's sessions are listed:\n{text}"
    );
    assert!(text.contains("GPU-SIM-"), "{text}");

    let out = f.run(&["nodes", "cordon", node]).await;
    assert!(out.ok().contains("cordoned: no new placements"), "{out:?}");
    let v = f.run(&["nodes", "get", node, "--json"]).await.json();
    assert!(v.get("schedulable").is_none(), "false is left out: {v}");
    let out = f.run(&["nodes", "ls"]).await;
    assert!(out.ok().contains(" cordoned "), "{out:?}");
    let v = f.run(&["nodes", "uncordon", node, "--json"]).await.json();
    assert_eq!(v["schedulable"], true);

    // events saw both, as JSON lines.
    let mut kinds = Vec::new();
    while !kinds.contains(&"node.uncordoned".to_owned()) {
        let v: Value = serde_json::from_str(&next_line(&mut events.stdout).await)?;
        if v["nodeId"] == node {
            kinds.push(v["kind"].as_str().unwrap_or("").to_owned());
        }
    }
    assert!(kinds.contains(&"node.cordoned".to_owned()), "{kinds:?}");
    drop(events);

    f.run(&["nodes", "get", "no-such-node"]).await.fails(
        1,
        &["node no-such-node not found; `hearth nodes ls` lists them"],
    );
    f.run(&["nodes", "drain", node, "--deadline", "soon"])
        .await
        .fails(2, &["--deadline"]);

    // drain: waits until the node is empty; the node stays cordoned.
    let out = f.run(&["nodes", "drain", node, "--deadline", "5s"]).await;
    assert!(out.ok().contains("drained"), "{out:?}");
    let v = f.run(&["sessions", "get", &id, "--json"]).await;
    let state = if v.code == 0 {
        v.json()["state"].as_str().unwrap_or("").to_owned()
    } else {
        "gone".to_owned()
    };
    assert!(
        state == "SESSION_STATE_STOPPED" || state == "gone",
        "the node's session still runs: {state}"
    );
    let v = f.run(&["nodes", "get", node, "--json"]).await.json();
    assert!(
        v.get("schedulable").is_none(),
        "a drained node stays cordoned: {v}"
    );
    assert_eq!(v["draining"], true, "{v}");
    Ok(())
}

/// Templates: create, ls, get, update, rm, and a session created from one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_commands() -> anyhow::Result<()> {
    let f = Fixture::start("cli-templates").await?;
    let mut create: Vec<String> = vec!["templates".into(), "create".into(), "cli-worker".into()];
    create.extend(f.worker_flags());
    create.extend(
        [
            "--gpus",
            "1",
            "--warm-pool",
            "1",
            "--description",
            "the test worker",
        ]
        .map(String::from),
    );
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let out = f.run(&create).await;
    assert!(out.ok().contains("template cli-worker created"), "{out:?}");
    f.run(&create)
        .await
        .fails(1, &["already exists", "hearth templates update"]);

    // The warm pool fills.
    eventually("a READY pool member", Duration::from_secs(30), || async {
        let v = f
            .run(&["templates", "get", "cli-worker", "--json"])
            .await
            .json();
        Ok((v["poolReady"] == 1).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    let out = f.run(&["templates", "ls"]).await;
    let table = out.ok();
    assert!(table.starts_with("NAME "), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("cli-worker"))
        .expect("a row");
    assert!(
        row.contains(" 1/1 ") && row.ends_with("the test worker"),
        "{row}"
    );
    let out = f.run(&["templates", "get", "cli-worker"]).await;
    assert!(out.ok().contains("WARM POOL    1 ready of 1"), "{out:?}");
    let v = f.run(&["templates", "ls", "--json"]).await.json();
    assert_eq!(v["templates"][0]["spec"]["ports"][0]["port"], 8080);

    // A session from the template claims the warm one.
    let out = f
        .line("sessions create --template cli-worker --label from=pool")
        .await;
    let id = out.ok().trim().to_owned();
    let v = f.run(&["sessions", "get", &id, "--json"]).await.json();
    assert_eq!(v["template"], "cli-worker");
    assert_eq!(v["state"], "SESSION_STATE_READY");
    let out = f.run(&["sessions", "ls", "--label", "from=pool"]).await;
    assert!(out.ok().contains("cli-worker"), "TEMPLATE column: {out:?}");
    f.run(&["sessions", "create", "--template", "no-such-template"])
        .await
        .fails(1, &["template no-such-template not found"]);

    // update changes only what is given.
    let v = f
        .line(
            "templates update cli-worker --warm-pool 0 --description changed --env EXTRA=1 --json",
        )
        .await
        .json();
    assert_eq!(v["description"], "changed");
    assert!(v.get("warmPool").is_none(), "0 is left out: {v}");
    assert_eq!(v["spec"]["env"]["EXTRA"], "1");
    assert_eq!(
        v["spec"]["env"]["WARMUP_MS"], "200",
        "untouched fields stay"
    );
    assert_eq!(v["spec"]["gpus"]["count"], 1);
    f.run(&["templates", "update", "cli-worker"])
        .await
        .fails(2, &["nothing to change"]);

    let out = f.run(&["templates", "rm", "cli-worker"]).await;
    assert!(out.ok().contains("template cli-worker deleted"), "{out:?}");
    f.run(&["templates", "get", "cli-worker"]).await.fails(
        1,
        &["template cli-worker not found; `hearth templates ls` lists yours"],
    );
    f.run(&["sessions", "rm", &id]).await.ok();
    Ok(())
}
