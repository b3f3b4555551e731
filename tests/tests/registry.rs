//! Image pulls against a real registry: Debian's `docker-registry` (the Distribution
//! registry) on loopback, which Docker trusts over plain HTTP, filled by the test with
//! images built here (the test worker plus a layer of random bytes, so every image has a
//! layer the engine has never held). A real broker and a real agent on the Docker runtime
//! pull them on demand.
//!
//! Skipped without Docker or `docker-registry`, except in CI (`CI` set), where either
//! missing fails the test.

use std::{
    io::Write as _,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, PullPolicy, Session, SessionSpec, SessionState,
    WatchEventsRequest, create_session_request::Source, sessions_client::SessionsClient,
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker, free_port},
};
use tonic::{Code, transport::Channel};

/// A registry on loopback, removed with its storage when dropped.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one, or `None` where `docker-registry` is not installed (outside CI).
    fn start() -> anyhow::Result<Option<Self>> {
        Self::serve(None)
    }

    /// Starts one that serves `open`'s storage (what was pushed there) to clients that log
    /// in as `user` with `password` (htpasswd, bcrypt) and to nobody else.
    fn with_login(open: &Registry, user: &str, password: &str) -> anyhow::Result<Self> {
        Self::serve(Some((open, user, password)))?.context("docker-registry went missing")
    }

    fn serve(login: Option<(&Registry, &str, &str)>) -> anyhow::Result<Option<Self>> {
        let Some(binary) = which("docker-registry") else {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                bail!("docker-registry is required in CI (Debian package docker-registry)");
            }
            eprintln!("SKIPPED: docker-registry not installed");
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("config.yml");
        let (storage, auth) = match login {
            None => (dir.path().join("data"), String::new()),
            Some((open, user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password)?))?;
                (
                    open._dir.path().join("data"),
                    format!(
                        "auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n",
                        htpasswd.display()
                    ),
                )
            }
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let registry = Self {
            child,
            host: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect(&registry.host).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "docker-registry did not listen on {} in 20 s",
                    registry.host
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(registry))
    }

    /// Builds an image of the test worker with a fresh layer of `size` random bytes,
    /// pushes it as `name:tag`, and removes it from the engine, so a start must pull it.
    /// Returns the reference and the digest the registry gave it.
    fn push_fresh(&self, name: &str, tag: &str, size: usize) -> anyhow::Result<(String, String)> {
        let reference = format!("{}/{name}:{tag}", self.host);
        let context = tempfile::tempdir()?;
        let mut blob = std::fs::File::create(context.path().join("blob"))?;
        let mut state = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1;
        let mut bytes = vec![0u8; size];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&state.to_le_bytes()[..n]);
        }
        blob.write_all(&bytes)?;
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("FROM {}\nCOPY blob /blob\n", images::worker_image()?),
        )?;
        docker(&[
            "build",
            "-q",
            "-t",
            &reference,
            &context.path().display().to_string(),
        ])?;
        let pushed = docker(&["push", &reference])?;
        let digest = pushed
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .map(str::to_owned)
            .with_context(|| format!("no digest in the push's output: {pushed}"))?;
        docker(&["rmi", &reference])?;
        assert!(
            !holds(&reference),
            "{reference} is still on the engine after rmi"
        );
        Ok((reference, digest))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt hash of `password` for an htpasswd file (Python's crypt, through the C
/// library; cost 4 keeps each of the registry's checks quick).
fn bcrypt(password: &str) -> anyhow::Result<String> {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
            password,
        ])
        .output()
        .context("running python3 for a bcrypt hash")?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(
        out.status.success() && hash.starts_with("$2"),
        "no bcrypt hash from python3: {hash} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(hash)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn holds(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).is_ok()
}

/// Pulls the engine made of `reference` between `since` and now (its own event log).
fn engine_pulls(reference: &str, since: u64) -> anyhow::Result<usize> {
    let until = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 1;
    let out = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=image",
        "--filter",
        "event=pull",
        "--format",
        "{{.Actor.ID}}",
    ])?;
    Ok(out.lines().filter(|l| l.trim() == reference).count())
}

/// A broker on its embedded store and a Docker agent with one simulated GPU; removes the
/// agent's containers and the images the test names when dropped.
struct Cluster {
    broker: Broker,
    agent: Agent,
    client: SessionsClient<Channel>,
    images: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A broker with `broker_extra` flags and a Docker agent with `extra` agent flags;
    /// `admin` is an admin token where the broker requires tokens.
    async fn start_with(
        node: &str,
        broker_extra: &[&str],
        extra: &[&str],
        admin: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store").display().to_string();
        let mut broker_flags = vec!["--store-path", &store];
        broker_flags.extend_from_slice(broker_extra);
        let broker = Broker::spawn(dir.path(), "broker", &broker_flags)?;
        let node = format!("{node}-{}", std::process::id());
        let state = dir.path().join("agent-state").display().to_string();
        let mut flags = vec![
            "--simulate-gpus",
            "1",
            "--runtime",
            "docker",
            "--state-dir",
            &state,
        ];
        flags.extend_from_slice(extra);
        let agent = Agent::spawn(dir.path(), &node, &[&broker.url], &flags)?;
        match admin {
            None => drop(api::node_ready(&broker.url, &agent.node_id).await?),
            Some(token) => {
                // The broker may still be starting: dial until it answers.
                let admin = eventually("the broker answers", Duration::from_secs(20), || async {
                    Ok(hearth_sdk::Client::builder(broker.url.clone())
                        .token(token)
                        .connect()
                        .await
                        .ok())
                })
                .await?;
                api::node_ready_as(&admin, &agent.node_id).await?;
            }
        }
        let client = SessionsClient::new(api::long_channel(&broker.url));
        Ok(Self {
            broker,
            agent,
            client,
            images: Vec::new(),
            _dir: dir,
        })
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}",
            self.broker.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }

    async fn create(&self, spec: SessionSpec, no_wait: bool) -> Result<Session, tonic::Status> {
        let mut client = self.client.clone();
        client
            .create_session(CreateSessionRequest {
                source: Some(Source::Spec(spec)),
                request_id: ulid::Ulid::new().to_string(),
                no_wait,
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        client
            .delete_session(DeleteSessionRequest { id: id.to_owned() })
            .await?;
        Ok(())
    }

    async fn counter(&self, id: &str) -> anyhow::Result<u64> {
        let mut client = self.client.clone();
        let (status, body) = api::invoke(&mut client, id, "POST", "/incr", Vec::new()).await?;
        anyhow::ensure!(status == 200, "POST /incr answered {status}");
        Ok(String::from_utf8_lossy(&body).trim().parse()?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=hearth.node={}", self.agent.node_id),
        ]) {
            for id in ids.lines().filter(|l| !l.trim().is_empty()) {
                let _ = docker(&["rm", "-f", id.trim()]);
            }
        }
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

fn spec(image: &str, gpus: u32) -> SessionSpec {
    let mut spec = images::worker_spec(image);
    spec.gpus = Some(hearth_sdk::proto::v1::GpuRequest {
        count: gpus,
        ..Default::default()
    });
    spec
}

/// Starts a registry and a cluster, or `None` where Docker or the registry is missing.
async fn setup(node: &str) -> anyhow::Result<Option<(Registry, Cluster)>> {
    setup_with(node, &[]).await
}

/// [`setup`] with `extra` agent flags.
async fn setup_with(node: &str, extra: &[&str]) -> anyhow::Result<Option<(Registry, Cluster)>> {
    if !images::docker_or_skip() {
        return Ok(None);
    }
    let Some(registry) = Registry::start()? else {
        return Ok(None);
    };
    images::worker_image()?;
    Ok(Some((
        registry,
        Cluster::start_with(node, &[], extra, None).await?,
    )))
}

/// Polls `check` every 200 ms until it holds or `within` has passed.
async fn until(what: &str, within: Duration, check: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !check() {
        anyhow::ensure!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed())
}

/// With the disk past the mark (a mark of 1 %), a pulled image that no container uses
/// and no start has used for a second is removed; a pulled image a session runs on, and
/// an image built on the host, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_pulled_images_are_collected_and_nothing_else() -> anyhow::Result<()> {
    let gc = [
        "--image-gc-high-water",
        "1",
        "--image-gc-unused-for",
        "1s",
        "--image-gc-interval",
        "300ms",
    ];
    let Some((registry, mut cluster)) = setup_with("pull-gc", &gc).await? else {
        return Ok(());
    };
    let (unused, _) = registry.push_fresh("hearth-pull-gc", "unused", 1 << 20)?;
    let (running, _) = registry.push_fresh("hearth-pull-gc", "running", 1 << 20)?;
    cluster.images.push(unused.clone());
    cluster.images.push(running.clone());
    let a = cluster.create(spec(&unused, 0), false).await?;
    let b = cluster.create(spec(&running, 0), false).await?;
    assert!(a.pull_ms > 0 && b.pull_ms > 0, "{a:?}\n{b:?}");
    cluster.delete(&a.id).await?;

    let took = until(
        "the unused pulled image is removed",
        Duration::from_secs(20),
        || !holds(&unused),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    // Several more rounds: what is in use, and what the agent did not pull, stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        holds(&running),
        "the image of a running session was removed"
    );
    assert!(
        holds(images::WORKER_IMAGE),
        "an image built on the host was removed"
    );
    assert_eq!(
        cluster.counter(&b.id).await?,
        1,
        "the running session still answers"
    );
    let removed = api::metric(&cluster.agent.admin, "hearth_agent_images_removed_total")
        .await
        .unwrap_or(0.0);
    assert_eq!(removed, 1.0, "hearth_agent_images_removed_total");

    // Once its session is gone, that image goes too.
    cluster.delete(&b.id).await?;
    until(
        "the second image is removed",
        Duration::from_secs(20),
        || !holds(&running),
    )
    .await?;
    assert!(holds(images::WORKER_IMAGE));
    eprintln!("image gc: the unused pulled image went {took:?} after its session was deleted");
    Ok(())
}

/// A session whose image is only in the registry: the node pulls it, the session's
/// watchers see the pull's progress, and READY carries the pull and the warm-up apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_with_progress_and_timed_apart() -> anyhow::Result<()> {
    let Some((registry, mut cluster)) = setup("pull-progress").await? else {
        return Ok(());
    };
    let (image, _) = registry.push_fresh("hearth-pull-progress", "v1", 8 << 20)?;
    cluster.images.push(image.clone());
    // The agent reports the images its engine holds (for placement): not this one yet.
    let canonical = hearth_sdk::image::canonical(&image);
    let node_images = async || -> anyhow::Result<Vec<String>> {
        Ok(api::node(&cluster.broker.url, &cluster.agent.node_id)
            .await?
            .images)
    };
    let before = node_images().await?;
    assert!(
        before.contains(&"docker.io/library/hearth-test-worker:latest".to_owned()),
        "the Docker agent's Hello lists the engine's images: {before:?}"
    );
    assert!(!before.contains(&canonical), "{before:?}");

    // The cluster's events, followed from before the create, so none is missed.
    let mut events = api::admin(&cluster.broker.url)
        .watch_events(WatchEventsRequest {
            kinds: vec!["session.pull".into()],
        })
        .await?
        .into_inner();
    let session = cluster.create(spec(&image, 1), false).await;
    let session = session.map_err(|e| anyhow::anyhow!("{e:?}\n{}", cluster.logs()))?;
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(Some(event))) = tokio::time::timeout_at(deadline.into(), events.message()).await
    {
        if event.session_id != session.id {
            continue;
        }
        messages.push(format!("{}: {}", event.kind, event.message));
        if event.kind == "session.pulled" {
            break;
        }
    }
    assert_eq!(
        session.state(),
        SessionState::Ready,
        "{session:?}\n{messages:#?}\n{}",
        cluster.logs()
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("session.pulled: pulled image ")
                && m.contains(&image)
                && m.contains("MiB")),
        "no session.pulled event: {messages:#?}"
    );
    assert!(session.pull_ms > 0, "{session:?}");
    assert_eq!(session.cold_starts, 1);
    assert!(holds(&image), "the engine holds the pulled image");
    // Its own pull is reported at the agent's next telemetry tick.
    eventually(
        "the node reports the pulled image",
        Duration::from_secs(5),
        || async { Ok(node_images().await?.contains(&canonical).then_some(())) },
    )
    .await?;
    assert_eq!(cluster.counter(&session.id).await?, 1);
    assert_eq!(cluster.counter(&session.id).await?, 2);
    eprintln!(
        "pull: {image} (8 MiB layer) pulled in {} ms, warm-up {} ms; watch saw {} pull messages, \
         e.g. {:?}",
        session.pull_ms,
        session.warmup_ms,
        messages.len(),
        messages.first()
    );
    cluster.delete(&session.id).await?;
    Ok(())
}

/// Three creates of one image at once on one node wait for one pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_image_share_one_pull() -> anyhow::Result<()> {
    let Some((registry, mut cluster)) = setup("pull-shared").await? else {
        return Ok(());
    };
    let (image, _) = registry.push_fresh("hearth-pull-shared", "v1", 8 << 20)?;
    cluster.images.push(image.clone());
    let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (a, b, c) = tokio::join!(
        cluster.create(spec(&image, 0), false),
        cluster.create(spec(&image, 0), false),
        cluster.create(spec(&image, 0), false),
    );
    let sessions = [a?, b?, c?];
    for s in &sessions {
        assert_eq!(s.state(), SessionState::Ready, "{s:?}\n{}", cluster.logs());
        assert_eq!(cluster.counter(&s.id).await?, 1);
    }
    let pulls = engine_pulls(&image, since)?;
    assert_eq!(pulls, 1, "the engine pulled {image} {pulls} times");
    let waited = api::metric(&cluster.agent.admin, "hearth_agent_starts_pulled_total")
        .await
        .unwrap_or(0.0);
    assert!(
        waited >= 1.0,
        "no start waited for a pull (hearth_agent_starts_pulled_total {waited})"
    );
    eprintln!(
        "shared pull: 3 creates, {pulls} engine pull, {waited} starts waited for it, pull_ms {:?}",
        sessions.iter().map(|s| s.pull_ms).collect::<Vec<_>>()
    );
    for s in &sessions {
        cluster.delete(&s.id).await?;
    }
    Ok(())
}

/// A digest reference is pulled once and never again, even with ALWAYS; a tag with
/// ALWAYS is pulled again; NEVER refuses an image the node lacks, naming the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policies_and_digests() -> anyhow::Result<()> {
    let Some((registry, mut cluster)) = setup("pull-policy").await? else {
        return Ok(());
    };
    let (image, digest) = registry.push_fresh("hearth-pull-policy", "v1", 1 << 20)?;
    let by_digest = format!(
        "{}@{digest}",
        image
            .rsplit_once(':')
            .map(|(name, _)| name)
            .unwrap_or(&image)
    );
    cluster.images.push(image.clone());
    cluster.images.push(by_digest.clone());

    // NEVER, and the node does not hold it.
    let mut never = spec(&image, 0);
    never.set_pull_policy(PullPolicy::Never);
    let err = cluster.create(never, false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("spec.image") && err.message().contains("NEVER"),
        "{err:?}"
    );

    // By digest: pulled the first time, then held.
    let first = cluster.create(spec(&by_digest, 0), false).await?;
    assert!(first.pull_ms > 0, "{first:?}");
    cluster.delete(&first.id).await?;
    let mut always = spec(&by_digest, 0);
    always.set_pull_policy(PullPolicy::Always);
    let again = cluster.create(always, false).await?;
    assert_eq!(
        again.pull_ms, 0,
        "a held digest is never pulled again: {again:?}"
    );
    cluster.delete(&again.id).await?;

    // A tag: pulled once (a pull by digest does not tag it), then held; with ALWAYS,
    // pulled although held.
    let tagged = cluster.create(spec(&image, 0), false).await?;
    assert!(tagged.pull_ms > 0, "{tagged:?}");
    cluster.delete(&tagged.id).await?;
    let held = cluster.create(spec(&image, 0), false).await?;
    assert_eq!(held.pull_ms, 0, "{held:?}");
    cluster.delete(&held.id).await?;
    let mut always = spec(&image, 0);
    always.set_pull_policy(PullPolicy::Always);
    let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let pulled = cluster.create(always, false).await?;
    assert!(pulled.pull_ms > 0, "{pulled:?}");
    assert_eq!(engine_pulls(&image, since)?, 1);
    cluster.delete(&pulled.id).await?;
    Ok(())
}

/// A pull that fails ends the session FAILED with the registry's or the network's words,
/// and its GPU is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_fails_the_session_with_the_reason_and_frees_the_gpu() -> anyhow::Result<()> {
    let Some((registry, cluster)) = setup("pull-fail").await? else {
        return Ok(());
    };
    // A tag the registry does not have.
    let unknown = format!("{}/hearth-pull-fail:nope", registry.host);
    let err = cluster.create(spec(&unknown, 1), false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let said_not_found = err.message().to_lowercase().contains("not found")
        || err.message().contains("manifest unknown");
    assert!(
        err.message().contains("spec.image") && err.message().contains(&unknown) && said_not_found,
        "{err:?}"
    );
    // A registry that does not answer.
    let closed = format!("127.0.0.1:{}/hearth-pull-fail:v1", free_port());
    let err = cluster.create(spec(&closed, 1), false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&closed) && err.message().contains("connection refused"),
        "{err:?}"
    );
    // The error named the session: it is FAILED with the registry's reason.
    let id = err
        .message()
        .split("session ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("the error names no session: {err:?}"))?
        .to_owned();
    let failed = cluster
        .client
        .clone()
        .get_session(hearth_sdk::proto::v1::GetSessionRequest { id })
        .await?
        .into_inner();
    assert_eq!(failed.state(), SessionState::Failed, "{failed:?}");
    assert!(
        failed.state_reason.contains("pulling image")
            && failed.state_reason.contains(&closed)
            && failed.state_reason.contains("connection refused"),
        "{failed:?}"
    );
    // The node's one GPU is free for the next session.
    let ok = cluster.create(spec(images::WORKER_IMAGE, 1), false).await?;
    assert_eq!(ok.state(), SessionState::Ready, "{ok:?}");
    cluster.delete(&ok.id).await?;
    Ok(())
}

/// What users see of a pull: `hearth sessions create` prints its progress and the pull
/// and warm-up apart, and the Python client hands the same steps to `progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_python_client_show_the_pull() -> anyhow::Result<()> {
    if !hearth_tests::python::python_or_skip() {
        return Ok(());
    }
    let Some((registry, mut cluster)) = setup("pull-clients").await? else {
        return Ok(());
    };
    let (for_cli, _) = registry.push_fresh("hearth-pull-clients", "cli", 4 << 20)?;
    let (for_python, _) = registry.push_fresh("hearth-pull-clients", "python", 4 << 20)?;
    cluster.images.push(for_cli.clone());
    cluster.images.push(for_python.clone());

    let cli = hearth_tests::process::binary("hearth")?;
    let out = Command::new(&cli)
        .args([
            "--broker",
            &cluster.broker.url,
            "sessions",
            "create",
            "--image",
        ])
        .arg(&for_cli)
        .args(["--port", "8080", "--ready-tcp", "8080"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", cluster.logs());
    assert!(
        stderr.contains(&format!("pulled image {for_cli}")) && stderr.contains("image pull "),
        "the CLI did not show the pull:\n{stderr}"
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    cluster.delete(&id).await?;

    let venv = tempfile::tempdir()?;
    let python = tokio::task::spawn_blocking({
        let dir = venv.path().to_owned();
        move || hearth_tests::python::install_client(&dir)
    })
    .await??;
    let script = format!(
        r#"
import json, hearth
steps = []
with hearth.Client({url:?}) as client:
    spec = hearth.session_spec({image:?}, ports=[8080], ready_tcp_port=8080, pull_policy="if-not-present")
    with client.create_session(spec, progress=steps.append) as session:
        info = session.refresh()
        print(json.dumps({{"steps": steps, "state": session.state, "pull_ms": info.pull_ms}}))
"#,
        url = cluster.broker.url,
        image = for_python,
    );
    let out = hearth_tests::python::run(
        "the Python client creates a session whose image is pulled",
        Command::new(&python).args(["-c", &script]),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("not one JSON line: {stdout}"))?;
    let steps: Vec<String> = serde_json::from_value(report["steps"].clone())?;
    assert_eq!(report["state"], "SESSION_STATE_READY", "{report}");
    assert!(report["pull_ms"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with(&format!("pulled image {for_python}")))
            && steps.iter().any(|s| s.starts_with("image pull ")),
        "the Python client's progress missed the pull: {steps:#?}"
    );
    eprintln!("clients: CLI stderr\n{stderr}python steps {steps:#?}");
    Ok(())
}

/// Registry credentials: a tenant's are sealed in the store and used for its pulls only.
/// Against a registry with htpasswd logins: no credentials and wrong ones fail naming the
/// registry and 401; the right ones pull; another tenant cannot start from the image the
/// first one pulled (it must show the registry its own); the password shows nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_pull_for_their_tenant_only() -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        return Ok(());
    }
    let Some(open) = Registry::start()? else {
        return Ok(());
    };
    images::worker_image()?;
    let (pushed, _) = open.push_fresh("hearth-private", "v1", 2 << 20)?;
    const PASSWORD: &str = "alice-registry-pw-7d1f";
    let private = Registry::with_login(&open, "alice", PASSWORD)?;
    let image = pushed.replace(&open.host, &private.host);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    let token_a = hearth_tests::tenants::create_token(&config, "team-a", "user")?;
    let token_b = hearth_tests::tenants::create_token(&config, "team-b", "user")?;
    let token_admin = hearth_tests::tenants::create_token(&config, "ops", "admin")?;
    let key = dir.path().join("credentials.key");
    std::fs::write(&key, "c2VhbGluZy1rZXktZm9yLXRoZS1yZWdpc3RyeS10c3Q=\n")?;
    let config_flag = config.display().to_string();
    let key_flag = key.display().to_string();
    let mut cluster = Cluster::start_with(
        "pull-auth",
        &[
            "--config",
            &config_flag,
            "--credentials-key-file",
            &key_flag,
        ],
        &[],
        Some(&token_admin),
    )
    .await?;
    cluster.images.push(image.clone());
    let connect = async |token: &str| {
        hearth_sdk::Client::builder(cluster.broker.url.clone())
            .token(token)
            .connect()
            .await
    };
    let (a, b) = (connect(&token_a).await?, connect(&token_b).await?);
    let create = async |client: &hearth_sdk::Client| {
        client
            .sessions()
            .create_session(CreateSessionRequest {
                source: Some(Source::Spec(spec(&image, 0))),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let login = async |client: &hearth_sdk::Client, password: &str| {
        client
            .templates()
            .set_registry_credential(hearth_sdk::proto::v1::SetRegistryCredentialRequest {
                registry: private.host.clone(),
                username: "alice".to_owned(),
                password: password.to_owned(),
            })
            .await
            .map(|r| r.into_inner())
    };
    let refused = |err: &tonic::Status, says: &str| {
        let m = err.message();
        eprintln!("refused as expected: {m}");
        assert!(
            m.contains(&private.host) && m.contains("401") && m.contains(says),
            "expected a refusal naming {} and 401 ({says}): {err:?}",
            private.host
        );
    };

    // No credentials: the registry refuses, and the session is FAILED saying so.
    let err = create(&a).await.unwrap_err();
    refused(&err, "no credentials");
    // Wrong ones.
    login(&a, "not-the-password").await?;
    let err = create(&a).await.unwrap_err();
    refused(&err, "refused the credentials");
    // The right ones: pulled with them, READY.
    // The right ones, through the CLI as the README shows: the password on stdin.
    let hearth = |args: &[&str], stdin: &str| -> anyhow::Result<String> {
        let mut child = Command::new(hearth_tests::process::binary("hearth")?)
            .args(["--broker", &cluster.broker.url, "--token", &token_a])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "hearth {args:?}: {text}");
        Ok(text)
    };
    let said = hearth(
        &["registry", "login", &private.host, "--username", "alice"],
        &format!("{PASSWORD}\n"),
    )?;
    assert!(
        said.contains(&format!(
            "credentials for {} (user alice) stored",
            private.host
        )),
        "{said}"
    );
    let table = hearth(&["registry", "ls"], "")?;
    assert!(
        table.contains(&private.host) && table.contains("alice") && !table.contains(PASSWORD),
        "{table}"
    );
    let session = create(&a)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}\n{}", cluster.logs()))?;
    assert_eq!(session.state(), SessionState::Ready, "{session:?}");
    assert!(session.pull_ms > 0, "{session:?}");
    assert!(holds(&image));
    // team-b has no credentials: though the node holds the image, b's start must pull
    // it with its own, and the registry refuses.
    let err = create(&b).await.unwrap_err();
    refused(&err, "no credentials");
    // Listing shows the registry and user, never the password; nothing else shows it
    // either: not the store, not a log.
    let listed = a
        .templates()
        .list_registry_credentials(hearth_sdk::proto::v1::ListRegistryCredentialsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.credentials.len(), 1, "{listed:?}");
    assert!(!format!("{listed:?}").contains(PASSWORD));
    let listed_b = b
        .templates()
        .list_registry_credentials(hearth_sdk::proto::v1::ListRegistryCredentialsRequest {})
        .await?
        .into_inner();
    assert!(listed_b.credentials.is_empty(), "{listed_b:?}");
    let mut leaks = Vec::new();
    for entry in walk(dir.path())?
        .into_iter()
        .chain(walk(cluster._dir.path())?)
    {
        if std::fs::read(&entry)?
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
        {
            leaks.push(entry);
        }
    }
    assert!(leaks.is_empty(), "the password is readable in {leaks:?}");
    assert!(
        !cluster.logs().contains(PASSWORD),
        "a log shows the password"
    );
    eprintln!(
        "credentials: anonymous and wrong-password pulls refused with 401, team-a pulled {image} \
         in {} ms with its credentials, team-b refused from the cached image",
        session.pull_ms
    );
    a.sessions()
        .delete_session(DeleteSessionRequest { id: session.id })
        .await?;
    hearth(&["registry", "logout", &private.host], "")?;
    let table = hearth(&["registry", "ls"], "")?;
    assert!(!table.contains(&private.host), "{table}");
    Ok(())
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
