//! Clients that know several brokers: the Rust SDK, the `hearth` CLI and the Python
//! client, each given a list of broker URLs, against real brokers on a real etcd with a
//! real agent (process runtime, simulated GPUs, the static test worker as the workload).
//!
//! - A client given `[leader, standby]` keeps taking turns through a `kill -9` of the
//!   leader: the turns after the kill go to the standby, which refuses them as not run
//!   until it has taken over and the agent has reconnected, and then serves them on the
//!   same warm workload. Each test prints the gap from the kill to the first good turn.
//! - A list whose first entry is dead (nothing listens there) works through the second.
//! - A leader whose advertised URL cannot be dialled from the client (brokers in a
//!   container network advertise names only that network resolves): the client, given
//!   the brokers' real addresses, falls back to its list instead of sticking to the dead
//!   hint.
//! - `--tls-server-name` (and Python's `tls_server_name=`) checks the broker's
//!   certificate for that name while dialling an IP address.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use hearth_sdk::{Client, Session, proto::v1::ClusterInfo};
use hearth_tests::{
    api,
    cluster::{leader_and_standby, leader_and_standby_with, until_leads},
    etcd::{Etcd, etcd_or_skip, unique_prefix},
    images,
    process::{Agent, Broker, binary, free_port},
    python,
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// Turns must flow again within this long after the leader is killed: the standby takes
/// over when the dead leader's lease (3 s by default) runs out, the agent reconnects, and
/// the client's next retry reaches it. The target is 5 s, and each test prints its gap
/// (2.7-4.2 s measured); the bound is looser so that a loaded CI machine, running these
/// tests side by side on two cores, fails only when turns really stopped coming back.
const RESUME_WITHIN: Duration = Duration::from_secs(10);

/// How long after the kill the next turn is sent. A turn written at the very instant the
/// broker dies fails on the broken connection, and then nobody can say whether it ran, so
/// no client sends it again (and the test would fail, rightly). The tests are about what
/// follows: turns sent once the client's connection has seen the broker go.
const SETTLE: Duration = Duration::from_millis(300);

/// Advertised URLs that no client here can dial: `.invalid` never resolves (RFC 6761),
/// as a name of a container network does not outside it.
const UNREACHABLE_A: &str = "http://broker-a.invalid:7700";
const UNREACHABLE_B: &str = "http://broker-b.invalid:7700";

/// broker-a leading, broker-b standing by, on one etcd, and an agent that knows both.
struct Cluster {
    a: Broker,
    b: Broker,
    agent: Agent,
    first: ClusterInfo,
    _dir: tempfile::TempDir,
    _etcd: Etcd,
}

impl Cluster {
    /// `a_extra` and `b_extra` are each broker's own flags (such as `--advertise-url`).
    async fn start(
        etcd: Etcd,
        test: &str,
        a_extra: &[&str],
        b_extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let endpoint = etcd.endpoint();
        let prefix = unique_prefix(test);
        let common = ["--etcd", endpoint.as_str(), "--etcd-prefix", &prefix];
        let (a, first, b) = if a_extra.is_empty() && b_extra.is_empty() {
            leader_and_standby(dir.path(), &common).await?
        } else {
            let a_flags = [&common[..], a_extra].concat();
            let b_flags = [&common[..], b_extra].concat();
            leader_and_standby_with(dir.path(), &a_flags, &b_flags).await?
        };
        let agent = Agent::spawn(
            dir.path(),
            &format!("{test}-node"),
            &[&a.url, &b.url],
            &["--simulate-gpus", "1"],
        )?;
        let cluster = Self {
            a,
            b,
            agent,
            first,
            _dir: dir,
            _etcd: etcd,
        };
        api::node_ready(&cluster.a.url, &cluster.agent.node_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        Ok(cluster)
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.a.proc.log_tail(),
            self.b.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }

    /// `kill -9` of broker-a, the leader; returns when it happened, and a task that
    /// says how long after that broker-b took over.
    fn kill_leader(&mut self) -> (Instant, tokio::task::JoinHandle<Duration>) {
        self.a.proc.kill();
        let killed = Instant::now();
        let url = self.b.url.clone();
        let takeover = tokio::spawn(async move {
            loop {
                if api::cluster_info(&url).await.is_ok_and(|i| i.is_leader) {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (killed, takeover)
    }

    /// Checks that broker-b took over with a higher epoch.
    async fn b_leads(&self) -> anyhow::Result<()> {
        let info = until_leads("broker-b leads", &self.b.url).await?;
        anyhow::ensure!(
            info.epoch > self.first.epoch,
            "{info:?} after {:?}",
            self.first
        );
        Ok(())
    }
}

/// The test worker as a process-runtime session.
fn worker() -> String {
    images::worker_binary().display().to_string()
}

/// A URL where nothing listens.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// One turn: `POST /incr` on the worker; returns its in-memory counter.
async fn incr(session: &Session) -> anyhow::Result<u64> {
    let r = session.invoke(8080, "/incr").method("POST").await?;
    anyhow::ensure!(r.status == 200, "POST /incr: {r:?}");
    Ok(r.text().trim().parse()?)
}

/// The worker's warm-up count: 1 as long as no turn reached a new workload.
async fn warmups(session: &Session) -> anyhow::Result<u64> {
    let state = session.invoke(8080, "/state").await?.text();
    api::json_field(state.as_bytes(), "warmups")
        .ok_or_else(|| anyhow::anyhow!("no warmups in {state}"))?
        .parse()
        .map_err(Into::into)
}

// ---------------------------------------------------------------------------------------
// Rust SDK

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_keeps_taking_turns_through_a_leader_kill() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let mut c = Cluster::start(etcd, "list-sdk-kill", &[], &[]).await?;
    let client = Client::builder(format!("{},{}", c.a.url, c.b.url)).build()?;
    let session = client
        .create(images::worker_spec(worker()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    for n in 1..=3 {
        assert_eq!(incr(&session).await?, n);
    }
    assert_eq!(client.url(), c.a.url);

    let (killed, takeover) = c.kill_leader();
    tokio::time::sleep(SETTLE).await;
    let counter = incr(&session)
        .await
        .map_err(|e| anyhow::anyhow!("the first turn after the kill: {e}\n{}", c.logs()))?;
    let gap = killed.elapsed();
    let takeover = tokio::time::timeout(Duration::from_secs(30), takeover).await??;
    eprintln!(
        "sdk, brokers [leader, standby]: first good turn {gap:?} after kill -9 of the leader \
         (the standby led after {takeover:?}; turns resumed on {})",
        client.url()
    );
    assert_eq!(counter, 4, "the turn reached the same warm workload");
    assert!(gap < RESUME_WITHIN, "turns resumed only after {gap:?}");
    for n in 5..=6 {
        assert_eq!(incr(&session).await?, n);
    }
    assert_eq!(warmups(&session).await?, 1);
    assert_eq!(client.url(), c.b.url, "the client moved to the standby");
    c.b_leads().await?;
    session.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_falls_back_to_its_list_when_the_named_leader_is_unreachable() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let mut c = Cluster::start(
        etcd,
        "list-sdk-hint",
        &["--advertise-url", UNREACHABLE_A],
        &["--advertise-url", UNREACHABLE_B],
    )
    .await?;
    // The standby first: it names the leader by a URL this client cannot dial.
    let list = format!("{},{}", c.b.url, c.a.url);
    let client = Client::builder(list).build()?;
    let started = Instant::now();
    let session = client
        .create(images::worker_spec(worker()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    eprintln!(
        "sdk, brokers [standby, leader] advertising unreachable URLs: session created in \
         {:?} through {}",
        started.elapsed(),
        client.url()
    );
    assert_eq!(
        client.url(),
        c.a.url,
        "the client reached the leader by its list"
    );
    assert_eq!(incr(&session).await?, 1);

    // The leader dies; the standby, reached by its listed address, takes over.
    let (killed, takeover) = c.kill_leader();
    tokio::time::sleep(SETTLE).await;
    let counter = incr(&session)
        .await
        .map_err(|e| anyhow::anyhow!("the first turn after the kill: {e}\n{}", c.logs()))?;
    let gap = killed.elapsed();
    let takeover = tokio::time::timeout(Duration::from_secs(30), takeover).await??;
    eprintln!(
        "sdk, brokers [standby, leader] advertising unreachable URLs: first good turn {gap:?} \
         after kill -9 of the leader (the standby led after {takeover:?})"
    );
    assert_eq!(counter, 2);
    assert!(gap < RESUME_WITHIN, "turns resumed only after {gap:?}");
    assert_eq!(client.url(), c.b.url);
    c.b_leads().await?;
    session.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_skips_a_dead_first_broker() -> anyhow::Result<()> {
    let f = Lone::start("list-sdk-dead").await?;
    let list = format!("{},{}", dead_url(), f.broker.url);
    // `connect` dials in order and starts at the first broker that answers.
    let client = Client::connect(list.clone()).await?;
    assert_eq!(client.url(), f.broker.url);
    let session = client.create(images::worker_spec(worker())).await?;
    assert_eq!(incr(&session).await?, 1);
    session.delete().await?;
    // `build` dials nothing: the first call finds the dead entry and moves on at once.
    let client = Client::builder(list).build()?;
    let started = Instant::now();
    let info = client.cluster_info().await?;
    assert!(info.is_leader, "{info:?}");
    assert_eq!(client.url(), f.broker.url);
    eprintln!(
        "sdk, brokers [dead, live]: first call answered in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A broker on its embedded store with an agent.
struct Lone {
    broker: Broker,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl Lone {
    async fn start(test: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
        let agent = Agent::spawn(
            dir.path(),
            &format!("{test}-node"),
            &[&broker.url],
            &["--simulate-gpus", "1"],
        )?;
        api::node_ready(&broker.url, &agent.node_id)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
            })?;
        Ok(Self {
            broker,
            agent,
            _dir: dir,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The hearth CLI

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
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success:\n{self:?}");
        &self.stdout
    }
}

/// `hearth ARGS` with `HEARTH_BROKER=brokers` and `env` set, and no other HEARTH_* setting
/// from the environment.
async fn hearth(brokers: &str, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut cmd = Command::new(binary("hearth").expect("the hearth binary is built"));
    cmd.args(args)
        .env("HEARTH_BROKER", brokers)
        .env_remove("HEARTH_TOKEN")
        .env_remove("HEARTH_CA")
        .env_remove("HEARTH_TLS_SERVER_NAME")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("hearth finished within 60 s")
        .expect("hearth ran");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `hearth sessions create` of a test worker session; returns its id.
async fn cli_create(brokers: &str) -> String {
    let worker = worker();
    let out = hearth(
        brokers,
        &[],
        &[
            "sessions",
            "create",
            "--image",
            &worker,
            "--port",
            "8080:http",
            "--ready-tcp",
            "8080",
        ],
    )
    .await;
    let id = out.ok().trim().to_owned();
    assert_eq!(id.len(), 26, "stdout is the session id:\n{out:?}");
    id
}

/// `hearth sessions invoke ID 8080 /incr -X POST`: the worker's counter.
async fn cli_incr(brokers: &str, id: &str) -> Result<u64, Out> {
    let out = hearth(
        brokers,
        &[],
        &["sessions", "invoke", id, "8080", "/incr", "-X", "POST"],
    )
    .await;
    match (out.code, out.stdout.trim().parse()) {
        (0, Ok(n)) => Ok(n),
        _ => Err(out),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keeps_taking_turns_through_a_leader_kill() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let mut c = Cluster::start(etcd, "list-cli-kill", &[], &[]).await?;
    let brokers = format!("{},{}", c.a.url, c.b.url);
    let id = cli_create(&brokers).await;
    for n in 1..=3 {
        assert_eq!(
            cli_incr(&brokers, &id)
                .await
                .map_err(|o| anyhow::anyhow!("{o:?}"))?,
            n
        );
    }

    let (killed, takeover) = c.kill_leader();
    tokio::time::sleep(SETTLE).await;
    let counter = cli_incr(&brokers, &id)
        .await
        .map_err(|o| anyhow::anyhow!("the first turn after the kill: {o:?}\n{}", c.logs()))?;
    let gap = killed.elapsed();
    let takeover = tokio::time::timeout(Duration::from_secs(30), takeover).await??;
    eprintln!(
        "cli, HEARTH_BROKER=leader,standby: first good turn {gap:?} after kill -9 of the leader \
         (the standby led after {takeover:?})"
    );
    assert_eq!(counter, 4, "the turn reached the same warm workload");
    assert!(gap < RESUME_WITHIN, "turns resumed only after {gap:?}");
    for n in 5..=6 {
        assert_eq!(
            cli_incr(&brokers, &id)
                .await
                .map_err(|o| anyhow::anyhow!("{o:?}"))?,
            n
        );
    }
    c.b_leads().await?;
    hearth(&brokers, &[], &["sessions", "rm", &id]).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_falls_back_to_its_list_when_the_named_leader_is_unreachable() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let mut c = Cluster::start(
        etcd,
        "list-cli-hint",
        &["--advertise-url", UNREACHABLE_A],
        &["--advertise-url", UNREACHABLE_B],
    )
    .await?;
    // The standby first, as a client on the host lists published ports.
    let brokers = format!("{},{}", c.b.url, c.a.url);
    let started = Instant::now();
    let out = hearth(&brokers, &[], &["nodes", "ls"]).await;
    assert!(out.ok().contains(&c.agent.node_id), "{out:?}");
    eprintln!(
        "cli, HEARTH_BROKER=standby,leader advertising unreachable URLs: nodes ls in {:?}",
        started.elapsed()
    );
    let id = cli_create(&brokers).await;
    assert_eq!(
        cli_incr(&brokers, &id)
            .await
            .map_err(|o| anyhow::anyhow!("{o:?}"))?,
        1
    );

    let (killed, takeover) = c.kill_leader();
    tokio::time::sleep(SETTLE).await;
    let counter = cli_incr(&brokers, &id)
        .await
        .map_err(|o| anyhow::anyhow!("the first turn after the kill: {o:?}\n{}", c.logs()))?;
    let gap = killed.elapsed();
    let takeover = tokio::time::timeout(Duration::from_secs(30), takeover).await??;
    eprintln!(
        "cli, HEARTH_BROKER=standby,leader advertising unreachable URLs: first good turn \
         {gap:?} after kill -9 of the leader (the standby led after {takeover:?})"
    );
    assert_eq!(counter, 2);
    assert!(gap < RESUME_WITHIN, "turns resumed only after {gap:?}");
    hearth(&brokers, &[], &["sessions", "rm", &id]).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_skips_a_dead_first_broker_and_names_a_bad_one() -> anyhow::Result<()> {
    let f = Lone::start("list-cli-dead").await?;
    let dead = dead_url();
    let brokers = format!("{dead},{}", f.broker.url);
    let out = hearth(&brokers, &[], &["nodes", "ls"]).await;
    assert!(out.ok().contains(&f.agent.node_id), "{out:?}");
    let id = cli_create(&brokers).await;
    assert_eq!(
        cli_incr(&brokers, &id)
            .await
            .map_err(|o| anyhow::anyhow!("{o:?}"))?,
        1
    );
    hearth(&brokers, &[], &["sessions", "rm", &id]).await.ok();

    // A bad entry is a usage error that names it, before anything is dialled.
    let out = hearth(
        &format!("{},127.0.0.1:7700", f.broker.url),
        &[],
        &["nodes", "ls"],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("invalid --broker URL \"127.0.0.1:7700\""),
        "{out:?}"
    );
    // Nothing answers anywhere: the error names every broker tried.
    let other = dead_url();
    let out = hearth(&format!("{dead},{other}"), &[], &["nodes", "ls"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!("{dead}: ")) && out.stderr.contains(&format!("{other}: ")),
        "{out:?}"
    );
    Ok(())
}

/// A TLS broker whose certificate names only `broker.internal`, dialled by IP address.
struct TlsBroker {
    broker: Broker,
    https: String,
    ca: String,
    _dir: tempfile::TempDir,
}

const TLS_NAME: &str = "broker.internal";

impl TlsBroker {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs").display().to_string();
        let out = hearth(
            "",
            &[],
            &["certs", "init", "--dir", &certs, "--broker-name", TLS_NAME],
        )
        .await;
        out.ok();
        let file = |name: &str| format!("{certs}/{name}");
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(
            dir.path(),
            "broker",
            &[
                "--store-path",
                &store,
                "--tls-cert",
                &file("broker.pem"),
                "--tls-key",
                &file("broker-key.pem"),
                "--tls-client-ca",
                &file("ca.pem"),
            ],
        )?;
        let https = broker.url.replace("http://", "https://");
        Ok(Self {
            broker,
            https,
            ca: file("ca.pem"),
            _dir: dir,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tls_server_name_checks_the_certificate_for_that_name() -> anyhow::Result<()> {
    let t = TlsBroker::start().await?;
    // The broker's certificate names broker.internal only; the URL names 127.0.0.1.
    let until_up = Instant::now() + Duration::from_secs(20);
    let named = loop {
        let out = hearth(
            &t.https,
            &[],
            &["--ca", &t.ca, "--tls-server-name", TLS_NAME, "nodes", "ls"],
        )
        .await;
        if out.code == 0 || Instant::now() > until_up {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(named.code, 0, "{named:?}\n{}", t.broker.proc.log_tail());
    let out = hearth(
        &t.https,
        &[("HEARTH_TLS_SERVER_NAME", TLS_NAME), ("HEARTH_CA", &t.ca)],
        &["nodes", "ls"],
    )
    .await;
    out.ok();
    let out = hearth(&t.https, &[], &["--ca", &t.ca, "nodes", "ls"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the broker") && out.stderr.contains("certificate"),
        "the handshake fails on the name: {out:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Python

/// The Python client's driver script (`tests/python/broker_list.py`).
fn python_driver() -> PathBuf {
    python::repo().join("tests/python/broker_list.py")
}

/// A running driver: its JSON lines and its stdin.
struct Driver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl Driver {
    fn start(python: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let stderr = dir.join(format!("driver-{}.log", ulid::Ulid::new()));
        let mut child = Command::new(python)
            .arg(python_driver())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            lines,
            stdin,
            stderr,
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The next JSON line, which must be this `step`.
    async fn next(&mut self, step: &str) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no {step:?} line within 60 s\n{}", self.stderr()))??
            .ok_or_else(|| {
                anyhow::anyhow!("the driver ended before {step:?}\n{}", self.stderr())
            })?;
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{e}: {line}\n{}", self.stderr()))?;
        anyhow::ensure!(
            value["step"] == step,
            "expected {step:?}, got {line}\n{}",
            self.stderr()
        );
        Ok(value)
    }

    /// A `turn` line; returns the counter after checking the Exec half.
    async fn turn(&mut self) -> anyhow::Result<u64> {
        let turn = self.next("turn").await?;
        anyhow::ensure!(turn["exec"] == "tool", "{turn}");
        turn["counter"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no counter in {turn}"))
    }

    async fn resume(&mut self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.take().expect("stdin is piped");
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<Value> {
        let done = self.next("done").await?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "driver: {status}\n{}", self.stderr());
        Ok(done)
    }
}

/// The Python client: its route unit tests; `[leader, standby]` through a kill -9 of the
/// leader; a dead first entry and a leader advertising a URL it cannot dial; and
/// `tls_server_name`. One virtualenv for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_moves_between_brokers() -> anyhow::Result<()> {
    if !python::python_or_skip() {
        return Ok(());
    }
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let install = {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || python::install_client(&dir))
    };
    let mut c = Cluster::start(etcd, "list-py-kill", &[], &[]).await?;
    let py = install.await??;
    python::run(
        "python route unit tests",
        std::process::Command::new(&py)
            .args(["-m", "unittest", "discover", "-v"])
            .arg(python::repo().join("sdk/python/tests")),
    )?;

    // [leader, standby] through a kill -9 of the leader.
    let worker = worker();
    let brokers = format!("{},{}", c.a.url, c.b.url);
    let mut driver = Driver::start(
        &py,
        dir.path(),
        &[
            "--broker", &brokers, "--image", &worker, "--before", "3", "--after", "3", "--pause",
        ],
    )?;
    driver.next("created").await?;
    for n in 1..=3 {
        assert_eq!(driver.turn().await?, n);
    }
    driver.next("paused").await?;
    let (killed, takeover) = c.kill_leader();
    tokio::time::sleep(SETTLE).await;
    driver.resume().await?;
    let counter = driver
        .turn()
        .await
        .map_err(|e| anyhow::anyhow!("the first turn after the kill: {e}\n{}", c.logs()))?;
    let gap = killed.elapsed();
    let takeover = tokio::time::timeout(Duration::from_secs(30), takeover).await??;
    eprintln!(
        "python, brokers \"leader,standby\": first good turn (Invoke + Exec) {gap:?} after \
         kill -9 of the leader (the standby led after {takeover:?})"
    );
    assert_eq!(counter, 4, "the turn reached the same warm workload");
    assert!(gap < RESUME_WITHIN, "turns resumed only after {gap:?}");
    for n in 5..=6 {
        assert_eq!(driver.turn().await?, n);
    }
    let done = driver.finish().await?;
    assert_eq!(done["warmups"], 1, "{done}");
    assert_eq!(done["broker"], c.b.url.as_str(), "{done}");
    c.b_leads().await?;
    drop(c);

    // A dead first entry, then a standby naming a leader it advertises by a URL that
    // cannot be dialled, then the leader by its real address.
    let etcd = Etcd::start().await?;
    let c = Cluster::start(
        etcd,
        "list-py-hint",
        &["--advertise-url", UNREACHABLE_A],
        &["--advertise-url", UNREACHABLE_B],
    )
    .await?;
    let brokers = format!("{},{},{}", dead_url(), c.b.url, c.a.url);
    let mut driver = Driver::start(
        &py,
        dir.path(),
        &[
            "--broker", &brokers, "--image", &worker, "--before", "2", "--after", "0",
        ],
    )?;
    let created = driver.next("created").await?;
    eprintln!(
        "python, brokers \"dead,standby,leader\" advertising unreachable URLs: session \
         created in {:.3} s",
        created["seconds"].as_f64().unwrap_or_default()
    );
    assert_eq!(created["broker"], c.a.url.as_str(), "{created}");
    for n in 1..=2 {
        assert_eq!(driver.turn().await?, n);
    }
    driver.finish().await?;
    drop(c);

    // tls_server_name: a certificate for broker.internal, dialled by IP address.
    let t = TlsBroker::start().await?;
    let script = "import sys, grpc, hearth\n\
        ca = open(sys.argv[2], 'rb').read()\n\
        def ls(**kw):\n\
        \x20   with hearth.Client(sys.argv[1], credentials=grpc.ssl_channel_credentials(ca), **kw) as c:\n\
        \x20       return list(c.list_sessions())\n\
        ls(tls_server_name=sys.argv[3], retry_timeout=20)\n\
        try:\n\
        \x20   ls(retries=0)\n\
        except hearth.Unavailable as e:\n\
        \x20   print('refused:', e)\n\
        else:\n\
        \x20   sys.exit('the certificate was accepted for 127.0.0.1')\n";
    let out = python::run(
        "python tls_server_name",
        std::process::Command::new(&py).args(["-c", script, &t.https, &t.ca, TLS_NAME]),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused:"), "{stdout}");
    Ok(())
}
