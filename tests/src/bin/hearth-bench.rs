//! `hearth-bench`: Hearth's benchmarks. Each starts what it needs (broker, agent, the test
//! worker in Docker), prints its figures and the machine it ran on, and ends with one JSON
//! line. Benchmarks never gate CI on a time. Run with `scripts/bench.sh turns --json` or
//! `scripts/bench.sh pool --json`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hearth_sdk::proto::v1::{
    AdminListSessionsRequest, CreateSessionRequest, CreateTemplateRequest, DeleteSessionRequest,
    DeleteTemplateRequest, GetTemplateRequest, GpuRequest, ListSessionsRequest, NodeState,
    PortSpec, ReadinessProbe, SessionSpec, SessionState, Template, admin_client::AdminClient,
    create_session_request, readiness_probe, sessions_client::SessionsClient,
    templates_client::TemplatesClient,
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker},
};
use tonic::transport::Channel;

const USAGE: &str = "usage: hearth-bench turns [--json] [--turns N] [--seconds S] [--concurrency C]
       hearth-bench pool [--json] [--claims N] [--pool P] [--warmup-ms MS] [--etcd]
       hearth-bench scale [--json] ... (hearth-bench scale --help)
       hearth-bench chaos [--json] [--faults N] [--sessions N] [--seed S]

turns   Invoke turn latency (1 KiB, one in flight) through Hearth vs a direct HTTP call to
        the same worker, the loopback TCP floor of one hop, and throughput at C in flight.
        Starts a broker, an agent (docker runtime) and the test worker image.
pool    CreateSession(template=...) latency when a warm-pool member is free (a claim),
        against a cold create of the same spec. Starts a broker (embedded store, or a
        private etcd with --etcd), an agent (process runtime: the static test worker as a
        child process) and a template with a warm pool of P; each claim waits for the
        pool to refill first, and the claimed session is deleted afterwards.
scale   A broker on etcd against 1,000 SIMULATED hosts (hearth-bench scale --help).
chaos   Turns under random faults (leader kill, agent kill, etcd restart, network cut),
        then invariants: double bookings, silent losses, orphans, extra cold starts
        (hearth-bench chaos --help).";

struct Options {
    json: bool,
    turns: usize,
    seconds: u64,
    concurrency: usize,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        json: false,
        turns: 3000,
        seconds: 5,
        concurrency: 64,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} must be a number"))
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--turns" => o.turns = value("--turns")?.max(100),
            "--seconds" => o.seconds = value("--seconds")?.max(1) as u64,
            "--concurrency" => o.concurrency = value("--concurrency")?.max(1),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("turns") => turns(parse(&args[1..])?).await,
        Some("scale") => hearth_tests::bench_scale::main(&args[1..]).await,
        Some("chaos") => hearth_tests::bench_chaos::main(&args[1..]).await,
        Some("pool") => pool(parse_pool(&args[1..])?).await,
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown benchmark {other:?}\n\n{USAGE}"),
    }
}

fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[i]
}

fn summarize(mut samples: Vec<Duration>) -> (f64, f64) {
    let mut us: Vec<f64> = samples.drain(..).map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(|a, b| a.total_cmp(b));
    (percentile(&us, 0.5), percentile(&us, 0.99))
}

/// One hop of raw TCP on loopback: 1 KiB out, 1 KiB back.
fn tcp_floor(n: usize) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 1024];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    return;
                }
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let out = [7u8; 1024];
    let mut back = [0u8; 1024];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        if i >= 200 {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

/// A keep-alive HTTP/1.1 client over one socket, as a model-server client would use.
fn direct_http(addr: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut s =
        TcpStream::connect(addr).with_context(|| format!("connect to the worker at {addr}"))?;
    s.set_nodelay(true)?;
    let body = vec![b'x'; 1024];
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: worker\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut samples = Vec::with_capacity(n);
    let mut buf = vec![0u8; 8192];
    for i in 0..n + 200 {
        let t = Instant::now();
        s.write_all(&request)?;
        read_http_response(&mut s, &mut buf)?;
        if i >= 200 {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

fn read_http_response(s: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            bail!("worker closed the connection");
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("response without content-length")?;
        let total = end + 4 + length;
        while have < total {
            let n = s.read(&mut buf[have..])?;
            if n == 0 {
                bail!("worker closed mid-body");
            }
            have += n;
        }
        return Ok(());
    }
}

async fn turns(o: Options) -> anyhow::Result<()> {
    if !images::docker_or_skip() {
        bail!("the turns benchmark needs Docker");
    }
    let image = images::worker_image()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let state = dir.path().join("agent").display().to_string();
    let broker = Broker::spawn(dir.path(), "bench-broker", &["--store-path", &store])?;
    let agent = Agent::spawn(
        dir.path(),
        "bench-node",
        &[&broker.url],
        &[
            "--simulate-gpus",
            "1",
            "--runtime",
            "docker",
            "--state-dir",
            &state,
        ],
    )?;
    eventually("bench node READY", Duration::from_secs(30), || async {
        Ok(api::node(&broker.url, &agent.node_id)
            .await
            .ok()
            .filter(|n| n.state() == NodeState::Ready))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail()))?;

    let channel = api::long_channel(&broker.url);
    let mut client = SessionsClient::new(channel.clone());
    let created = Instant::now();
    let session = client
        .create_session(CreateSessionRequest {
            source: Some(create_session_request::Source::Spec(SessionSpec {
                image: image.to_owned(),
                env: [("WARMUP_MS".to_owned(), "500".to_owned())].into(),
                ports: vec![PortSpec {
                    port: 8080,
                    name: "http".into(),
                }],
                readiness: Some(ReadinessProbe {
                    check: Some(readiness_probe::Check::TcpPort(8080)),
                    ..ReadinessProbe::default()
                }),
                ..SessionSpec::default()
            })),
            ..CreateSessionRequest::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("CreateSession: {s}\n{}", agent.proc.log_tail()))?
        .into_inner();
    let create_ms = created.elapsed().as_secs_f64() * 1e3;
    let ip = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &session.container_id,
        ])
        .output()?;
    let worker = format!("{}:8080", String::from_utf8_lossy(&ip.stdout).trim());

    let floor = summarize(tcp_floor(o.turns).context("TCP floor")?);
    let direct = summarize(direct_http(&worker, o.turns).context("direct HTTP")?);

    let body = vec![b'x'; 1024];
    for _ in 0..200 {
        api::invoke(&mut client, &session.id, "POST", "/echo", body.clone())
            .await
            .context("warm-up turns")?;
    }
    let mut samples = Vec::with_capacity(o.turns);
    for _ in 0..o.turns {
        let t = Instant::now();
        let (status, echoed) =
            api::invoke(&mut client, &session.id, "POST", "/echo", body.clone()).await?;
        samples.push(t.elapsed());
        if status != 200 || echoed.len() != body.len() {
            bail!("turn answered {status} with {} bytes", echoed.len());
        }
    }
    let turn = summarize(samples);

    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency {
        let mut c = SessionsClient::new(channel.clone());
        let (id, body, done, failed) = (
            session.id.clone(),
            body.clone(),
            done.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match api::invoke(&mut c, &id, "POST", "/echo", body.clone()).await {
                    Ok((200, _)) => done.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    _ => failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let turns_per_s =
        done.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    let mut hosts = std::collections::BTreeSet::new();
    let mut warmups = String::new();
    for _ in 0..20 {
        let (_, state) = api::invoke(&mut client, &session.id, "GET", "/state", Vec::new()).await?;
        hosts.insert(api::json_field(&state, "hostname").unwrap_or_default());
        warmups = api::json_field(&state, "warmups").unwrap_or_default();
    }
    client
        .delete_session(DeleteSessionRequest {
            id: session.id.clone(),
        })
        .await?;

    let report = [
        ("tcp_floor_p50_us", format!("{:.1}", floor.0)),
        ("p50_direct_us", format!("{:.1}", direct.0)),
        ("p99_direct_us", format!("{:.1}", direct.1)),
        ("p50_turn_us", format!("{:.1}", turn.0)),
        ("p99_turn_us", format!("{:.1}", turn.1)),
        ("p50_overhead_us", format!("{:.1}", turn.0 - direct.0)),
        ("p99_overhead_us", format!("{:.1}", turn.1 - direct.1)),
        ("turns_per_s", format!("{turns_per_s:.0}")),
        (
            "turns_failed_under_load",
            failed
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
        ("concurrency", o.concurrency.to_string()),
        ("cold_starts", warmups.clone()),
        ("distinct_containers", hosts.len().to_string()),
        ("create_to_ready_ms", format!("{create_ms:.0}")),
        ("turns_measured", o.turns.to_string()),
    ];
    println!("machine: {}", hearth_tests::report::machine());
    println!("worker: {image} in Docker at {worker} (warm-up 500 ms)");
    hearth_tests::report::print(&report, 24);
    if o.json {
        println!("{}", hearth_tests::report::json_line(&report));
    }
    Ok(())
}

struct PoolOptions {
    json: bool,
    claims: usize,
    pool: u32,
    warmup_ms: u64,
    etcd: bool,
}

fn parse_pool(args: &[String]) -> anyhow::Result<PoolOptions> {
    let mut o = PoolOptions {
        json: false,
        claims: 100,
        pool: 2,
        warmup_ms: 200,
        etcd: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} must be a number"))
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--etcd" => o.etcd = true,
            "--claims" => o.claims = value("--claims")?.max(10) as usize,
            "--pool" => o.pool = value("--pool")?.clamp(1, 16) as u32,
            "--warmup-ms" => o.warmup_ms = value("--warmup-ms")?,
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(o)
}

fn worker_spec(image: &str, warmup_ms: u64) -> SessionSpec {
    SessionSpec {
        image: image.to_owned(),
        env: [("WARMUP_MS".to_owned(), warmup_ms.to_string())].into(),
        gpus: Some(GpuRequest {
            count: 1,
            ..GpuRequest::default()
        }),
        ports: vec![PortSpec {
            port: 8080,
            name: "http".into(),
        }],
        readiness: Some(ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(8080)),
            ..ReadinessProbe::default()
        }),
        ..SessionSpec::default()
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 in milliseconds.
fn summarize_ms(samples: Vec<Duration>) -> (f64, f64) {
    let (p50, p99) = summarize(samples);
    (p50 / 1e3, p99 / 1e3)
}

async fn pool(o: PoolOptions) -> anyhow::Result<()> {
    let image = images::worker_binary().display().to_string();
    let dir = tempfile::tempdir()?;
    let etcd = if o.etcd {
        Some(hearth_tests::etcd::Etcd::start().await?)
    } else {
        None
    };
    let (store_flags, store) = match &etcd {
        Some(etcd) => (
            vec![
                "--etcd".to_owned(),
                etcd.endpoint(),
                "--etcd-prefix".to_owned(),
                hearth_tests::etcd::unique_prefix("bench-pool"),
            ],
            format!(
                "etcd (a private single-member server at {})",
                etcd.endpoint()
            ),
        ),
        None => {
            let path = dir.path().join("store");
            (
                vec!["--store-path".to_owned(), path.display().to_string()],
                format!(
                    "embedded (file {}; every write is appended to its log and fdatasynced)",
                    path.display()
                ),
            )
        }
    };
    let flags: Vec<&str> = store_flags.iter().map(String::as_str).collect();
    let broker = Broker::spawn(dir.path(), "bench-broker", &flags)?;
    // The pool, the claimed session, and room for cold creates.
    let gpus = (o.pool + 2).to_string();
    let agent = Agent::spawn(
        dir.path(),
        "bench-node",
        &[&broker.url],
        &["--simulate-gpus", &gpus],
    )?;
    let logs = |e: anyhow::Error| {
        anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
    };
    eventually("bench node READY", Duration::from_secs(30), || async {
        Ok(api::node(&broker.url, &agent.node_id)
            .await
            .ok()
            .filter(|n| n.state() == NodeState::Ready))
    })
    .await
    .map_err(logs)?;

    let channel = api::long_channel(&broker.url);
    let mut sessions = SessionsClient::new(channel.clone());
    let mut templates = TemplatesClient::new(channel.clone());
    let admin = AdminClient::new(channel);
    let spec = worker_spec(&image, o.warmup_ms);

    // Cold creates of the same spec, for comparison.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = sessions
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec.clone())),
                ..CreateSessionRequest::default()
            })
            .await
            .map_err(|s| logs(anyhow::anyhow!("cold CreateSession: {s}")))?
            .into_inner();
        cold.push(t.elapsed());
        sessions
            .delete_session(DeleteSessionRequest { id: s.id })
            .await?;
    }

    templates
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                name: "bench".into(),
                spec: Some(spec.clone()),
                warm_pool: o.pool,
                ..Template::default()
            }),
        })
        .await?;
    let members = |mut admin: AdminClient<Channel>| async move {
        let listed = admin
            .list_sessions(AdminListSessionsRequest {
                filter: Some(ListSessionsRequest {
                    labels: [("hearth.pool".to_owned(), "bench".to_owned())].into(),
                    states: vec![SessionState::Ready as i32],
                    ..ListSessionsRequest::default()
                }),
                ..AdminListSessionsRequest::default()
            })
            .await?
            .into_inner();
        anyhow::Ok(
            listed
                .sessions
                .into_iter()
                .map(|s| s.id)
                .collect::<std::collections::BTreeSet<_>>(),
        )
    };
    let full = |templates: TemplatesClient<Channel>| async move {
        let mut templates = templates;
        let t = templates
            .get_template(GetTemplateRequest {
                name: "bench".into(),
            })
            .await?
            .into_inner();
        anyhow::Ok((t.pool_ready == o.pool).then_some(()))
    };
    let first_fill = Instant::now();
    eventually("the pool to fill", Duration::from_secs(60), || {
        full(templates.clone())
    })
    .await
    .map_err(logs)?;
    let fill_ms = millis(first_fill.elapsed());

    let (mut samples, mut refills) = (Vec::with_capacity(o.claims), Vec::new());
    let (mut from_pool, mut not_from_pool) = (0usize, 0usize);
    for i in 0..o.claims {
        let ready = members(admin.clone()).await?;
        let t = Instant::now();
        let claimed = sessions
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Template("bench".into())),
                labels: [("claim".to_owned(), i.to_string())].into(),
                ..CreateSessionRequest::default()
            })
            .await
            .map_err(|s| logs(anyhow::anyhow!("claim {i}: {s}")))?
            .into_inner();
        samples.push(t.elapsed());
        if ready.contains(&claimed.id) {
            from_pool += 1;
        } else {
            not_from_pool += 1;
        }
        eventually("the pool to refill", Duration::from_secs(60), || {
            full(templates.clone())
        })
        .await
        .map_err(logs)?;
        refills.push(t.elapsed());
        sessions
            .delete_session(DeleteSessionRequest { id: claimed.id })
            .await?;
    }
    let gone = templates
        .delete_template(DeleteTemplateRequest {
            name: "bench".into(),
        })
        .await?
        .into_inner()
        .pool_sessions_stopped;

    let max_ms = samples.iter().max().copied().map_or(f64::NAN, millis);
    let claim = summarize_ms(samples);
    let refill = summarize_ms(refills);
    let cold = summarize_ms(cold);
    let report = [
        ("claim_p50_ms", format!("{:.2}", claim.0)),
        ("claim_p99_ms", format!("{:.2}", claim.1)),
        ("claim_max_ms", format!("{max_ms:.2}")),
        ("claims", o.claims.to_string()),
        ("claims_from_pool", from_pool.to_string()),
        ("claims_not_from_pool", not_from_pool.to_string()),
        ("cold_create_p50_ms", format!("{:.1}", cold.0)),
        ("refill_p50_ms", format!("{:.1}", refill.0)),
        ("first_fill_ms", format!("{fill_ms:.0}")),
        ("pool_size", o.pool.to_string()),
        ("pool_members_stopped_on_delete", gone.to_string()),
        ("warmup_ms", o.warmup_ms.to_string()),
        ("runtime", "process".to_owned()),
        ("store", if o.etcd { "etcd" } else { "embedded" }.to_owned()),
    ];
    println!("machine: {}", hearth_tests::report::machine());
    println!(
        "runtime: process (the static test worker {image} as a child process, warm-up {} ms; simulated GPUs)",
        o.warmup_ms
    );
    println!("store: {store}");
    println!(
        "claims: CreateSession(template) round trip over gRPC on loopback, one at a time, each after the pool refilled to {}",
        o.pool
    );
    hearth_tests::report::print(&report, 32);
    if o.json {
        println!("{}", hearth_tests::report::json_line(&report));
    }
    drop(etcd);
    Ok(())
}
