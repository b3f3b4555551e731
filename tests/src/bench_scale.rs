//! `hearth-bench scale`: one broker on a real etcd against a large SIMULATED fleet.
//!
//! Starts a real etcd and a real `hearth-broker` process on it, connects `--hosts`
//! simulated hosts (see [`crate::sim_agent`]; no GPU, container or process is real) with
//! `--gpus-per-host` simulated GPUs each and the broker's 1 s telemetry, then creates and
//! deletes `--sessions` sessions in waves. Each wave asks, in a shuffled order and with
//! `--concurrency` calls in flight, for sessions whose GPU counts follow `--mix`; with the
//! defaults a wave asks for exactly the fleet's GPUs. Once a wave is placed and READY,
//! allocations are audited straight from etcd, then every session is deleted.
//!
//! Placement latency is the client-observed time of `CreateSession` with `no_wait: true`:
//! the broker's placement and its fenced etcd transaction (record and GPU keys). The start
//! (a command to the simulated host, which answers at once, and the etcd write of the
//! STARTING state) goes on in the background; the wave waits for READY before its audit. The broker's RSS is sampled from
//! `/proc/<pid>/status` (peak, with `VmHWM`), its CPU from `/proc/<pid>/stat` over the
//! waves' wall time.
//!
//! `--concurrency 1` measures placement alone. With calls in flight, concurrent creates
//! may pick the same GPUs; the broker's etcd transaction lets one win and the others
//! retry on fresh state (at most five tries, then UNAVAILABLE), which then shows in the
//! latency and in `create_errors`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hearth_sdk::proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, GpuRequest, SessionSpec, SessionState,
    create_session_request, sessions_client::SessionsClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::{
    allocations::{self, Audit},
    api,
    etcd::{Etcd, unique_prefix},
    eventually,
    process::Broker,
    sim_agent::{SimFleet, SimFleetConfig, XorShift},
};

/// Usage of `hearth-bench scale`.
pub const USAGE: &str =
    "usage: hearth-bench scale [--json] [--hosts N] [--gpus-per-host G] [--sessions S]
                          [--waves W] [--concurrency C] [--mix 1:60,2:20,4:15,8:5]
                          [--idle-seconds T] [--streams-per-channel K] [--seed X]

scale   One hearth-broker (release build) on a real etcd, N SIMULATED hosts x G simulated
        GPUs in this process with 1 Hz telemetry, S sessions created and deleted in W waves
        (default: as many waves as keep each wave within the fleet's GPUs). Reports
        CreateSession latency (no_wait: placement + etcd transaction; the start goes on after),
        the broker's peak RSS and CPU, and double-booked GPUs read from etcd.
        Defaults: 1000 hosts, 8 GPUs, 8000 sessions, 16 in flight, mix 1:60,2:20,4:15,8:5
        (percent of sessions asking for 1, 2, 4 and 8 GPUs).";

/// Options of `hearth-bench scale`.
#[derive(Clone, Debug)]
pub struct Options {
    /// End with one JSON line.
    pub json: bool,
    /// Simulated hosts.
    pub hosts: usize,
    /// Simulated GPUs per host.
    pub gpus_per_host: u32,
    /// Sessions created (and deleted) in all.
    pub sessions: usize,
    /// Waves; `None` picks the fewest that keep each wave within the fleet's GPUs.
    pub waves: Option<usize>,
    /// CreateSession / DeleteSession calls in flight.
    pub concurrency: usize,
    /// (GPUs per session, percent of sessions).
    pub mix: Vec<(u32, u32)>,
    /// Seconds of telemetry alone (no API calls) measured before the waves.
    pub idle_seconds: u64,
    /// Simulated hosts per HTTP/2 connection.
    pub streams_per_channel: usize,
    /// Seed of the request order.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            json: false,
            hosts: 1000,
            gpus_per_host: 8,
            sessions: 8000,
            waves: None,
            concurrency: 16,
            mix: vec![(1, 60), (2, 20), (4, 15), (8, 5)],
            idle_seconds: 10,
            streams_per_channel: 100,
            seed: 1,
        }
    }
}

fn parse_mix(text: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    let mut mix = Vec::new();
    for part in text.split(',') {
        let (gpus, percent) = part
            .split_once(':')
            .with_context(|| format!("--mix entry {part:?} is not GPUS:PERCENT"))?;
        mix.push((
            gpus.trim().parse().context("--mix GPUs must be a number")?,
            percent
                .trim()
                .parse()
                .context("--mix percent must be a number")?,
        ));
    }
    let total: u32 = mix.iter().map(|m| m.1).sum();
    if total != 100 {
        bail!("--mix percents add up to {total}, not 100");
    }
    Ok(mix)
}

/// Parses the arguments after `scale`.
pub fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("{name} must be a number, not {v:?}"))
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--hosts" => o.hosts = number(a, value(a)?)?.max(1),
            "--gpus-per-host" => o.gpus_per_host = number(a, value(a)?)?.clamp(1, 64) as u32,
            "--sessions" => o.sessions = number(a, value(a)?)?.max(1),
            "--waves" => o.waves = Some(number(a, value(a)?)?.max(1)),
            "--concurrency" => o.concurrency = number(a, value(a)?)?.max(1),
            "--mix" => o.mix = parse_mix(&value(a)?)?,
            "--idle-seconds" => o.idle_seconds = number(a, value(a)?)? as u64,
            "--streams-per-channel" => o.streams_per_channel = number(a, value(a)?)?.max(1),
            "--seed" => o.seed = number(a, value(a)?)? as u64,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(o)
}

/// Runs `hearth-bench scale` with the arguments after `scale`.
pub async fn main(args: &[String]) -> anyhow::Result<()> {
    run(parse(args)?).await
}

/// GPU counts of `n` sessions following `mix` exactly (largest remainder), shuffled.
pub fn wave_requests(n: usize, mix: &[(u32, u32)], rng: &mut XorShift) -> Vec<u32> {
    let mut counts: Vec<(u32, usize, f64)> = mix
        .iter()
        .map(|&(gpus, pct)| {
            let exact = n as f64 * f64::from(pct) / 100.0;
            (gpus, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = n - counts.iter().map(|c| c.1).sum::<usize>();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].2.total_cmp(&counts[a].2));
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i].1 += 1;
        left -= 1;
    }
    let mut out: Vec<u32> = counts
        .iter()
        .flat_map(|&(gpus, k, _)| std::iter::repeat_n(gpus, k))
        .collect();
    rng.shuffle(&mut out);
    out
}

fn average_gpus(mix: &[(u32, u32)]) -> f64 {
    mix.iter()
        .map(|&(g, p)| f64::from(g) * f64::from(p))
        .sum::<f64>()
        / 100.0
}

/// The 1-minute load average: other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kib(&text, "VmRSS:")?, status_kib(&text, "VmHWM:")?))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: &str, ticks: f64) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU use of a process over an interval.
struct CpuMeter {
    pid: String,
    ticks: f64,
    cpu: f64,
    at: Instant,
}

impl CpuMeter {
    fn start(pid: &str, ticks: f64) -> Self {
        Self {
            pid: pid.to_owned(),
            ticks,
            cpu: cpu_seconds(pid, ticks).unwrap_or(0.0),
            at: Instant::now(),
        }
    }

    /// Average cores used since `start`.
    fn cores(&self) -> f64 {
        let used = cpu_seconds(&self.pid, self.ticks).unwrap_or(self.cpu) - self.cpu;
        used / self.at.elapsed().as_secs_f64()
    }
}

/// Samples a process's RSS until stopped; keeps the peak.
struct RssSampler {
    peak_kib: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, done) = (peak_kib.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_kib(pid) {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = (*p).max(rss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            peak_kib,
            stop,
            task,
        }
    }

    async fn finish(self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let sampled = *self.peak_kib.lock().unwrap_or_else(|e| e.into_inner());
        sampled.max(rss_kib(pid).map_or(0, |(_, hwm)| hwm))
    }
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Latency figures of one kind of call.
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let mean = if samples.is_empty() {
            f64::NAN
        } else {
            samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e3
        };
        Self {
            p50: percentile_ms(&samples, 0.50),
            p90: percentile_ms(&samples, 0.90),
            p99: percentile_ms(&samples, 0.99),
            max: percentile_ms(&samples, 1.0),
            mean,
        }
    }
}

/// Outcomes of a batch of calls.
#[derive(Default)]
struct Calls {
    ok_latency: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    first_error: BTreeMap<String, String>,
    created: Vec<String>,
}

impl Calls {
    fn record_error(&mut self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        *self.errors.entry(code.clone()).or_default() += 1;
        self.first_error
            .entry(code)
            .or_insert_with(|| status.message().chars().take(300).collect());
    }
}

fn sessions_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("valid URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Runs `work` over `items` with `concurrency` calls in flight.
async fn in_flight<T, F, Fut>(items: Vec<T>, concurrency: usize, work: F) -> Calls
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (Duration, Result<Option<String>, tonic::Status>)> + Send,
{
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(Mutex::new(Calls::default()));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (items, next, calls, work) = (items.clone(), next.clone(), calls.clone(), work.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                let (took, result) = work(item.clone()).await;
                let mut c = calls.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(id) => {
                        c.ok_latency.push(took);
                        c.created.extend(id);
                    }
                    Err(status) => c.record_error(&status),
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Arc::try_unwrap(calls)
        .ok()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

async fn create_wave(channel: &Channel, requests: Vec<u32>, concurrency: usize) -> Calls {
    let channel = channel.clone();
    in_flight(requests, concurrency, move |gpus| {
        let mut client = SessionsClient::new(channel.clone());
        async move {
            let request = CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(SessionSpec {
                    image: "simulated-workload".to_owned(),
                    gpus: Some(GpuRequest {
                        count: gpus,
                        ..GpuRequest::default()
                    }),
                    ..SessionSpec::default()
                })),
                labels: [("bench".to_owned(), "scale".to_owned())].into(),
                no_wait: true,
                ..CreateSessionRequest::default()
            };
            let t = Instant::now();
            let result = client.create_session(request).await;
            (t.elapsed(), result.map(|r| Some(r.into_inner().id)))
        }
    })
    .await
}

async fn delete_all(channel: &Channel, ids: Vec<String>, concurrency: usize) -> Calls {
    let channel = channel.clone();
    in_flight(ids, concurrency, move |id| {
        let mut client = SessionsClient::new(channel.clone());
        async move {
            let t = Instant::now();
            let result = client.delete_session(DeleteSessionRequest { id }).await;
            (t.elapsed(), result.map(|_| None))
        }
    })
    .await
}

fn json_counts(counts: &BTreeMap<String, usize>) -> String {
    let inner: Vec<String> = counts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Runs the benchmark.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let capacity = o.hosts * o.gpus_per_host as usize;
    let avg = average_gpus(&o.mix);
    let waves = o.waves.unwrap_or_else(|| {
        ((o.sessions as f64 * avg) / capacity as f64)
            .ceil()
            .max(1.0) as usize
    });
    let mix_text = o
        .mix
        .iter()
        .map(|(g, p)| format!("{g}:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let ticks = clock_ticks();
    let load_start = load_average();
    println!(
        "machine: {} (load average {load_start})",
        crate::report::machine()
    );
    println!(
        "fleet: {} SIMULATED hosts x {} simulated GPUs = {capacity} GPUs (no real GPU or workload; \
         hosts speak the real NodeAgent protocol from this process, {} per HTTP/2 connection)",
        o.hosts, o.gpus_per_host, o.streams_per_channel
    );
    println!(
        "load: {} sessions in {waves} wave(s), {} in flight; mix {mix_text} (GPUs:percent, {avg:.2} GPUs per session on average)",
        o.sessions, o.concurrency
    );

    let etcd = Etcd::start()
        .await
        .context("the scale benchmark needs etcd (Debian's etcd-server)")?;
    let dir = tempfile::tempdir()?;
    let prefix = unique_prefix("bench-scale");
    let endpoint = etcd.endpoint();
    let broker = Broker::spawn(
        dir.path(),
        "scale-broker",
        &[
            "--etcd",
            &endpoint,
            "--etcd-prefix",
            &prefix,
            "--telemetry-interval",
            "1s",
        ],
    )?;
    let pid = broker.proc.pid().context("broker pid")?;
    let pid_text = pid.to_string();
    eventually("the broker leads", Duration::from_secs(30), || async {
        Ok(api::cluster_info(&broker.url)
            .await
            .ok()
            .filter(|i| i.is_leader))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.proc.log_tail()))?;
    let run_cpu = CpuMeter::start(&pid_text, ticks);
    let rss = RssSampler::start(pid);

    // The fleet connects; first dials are spread over one telemetry interval.
    let connect_started = Instant::now();
    let fleet = SimFleet::start(SimFleetConfig {
        brokers: vec![broker.url.clone()],
        hosts: o.hosts,
        gpus_per_host: o.gpus_per_host,
        streams_per_channel: o.streams_per_channel,
        start_jitter: Duration::from_secs(1),
        ..SimFleetConfig::default()
    });
    let hosts = o.hosts as u32;
    eventually(
        "every simulated host READY on the broker",
        Duration::from_secs(180),
        || async {
            let info = api::cluster_info(&broker.url).await?;
            Ok((info.nodes_ready == hosts).then_some(info))
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e} ({} of {hosts} hosts welcomed)\n{}",
            fleet.connected(),
            broker.proc.log_tail()
        )
    })?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    println!(
        "connected: {hosts} hosts READY after {connect_s:.1} s; broker RSS {} MiB",
        rss_kib(pid).map_or(0, |r| r.0 / 1024)
    );

    // Telemetry alone: the fleet's steady cost with no API calls.
    let telemetry_name = "hearth_broker_telemetry_received_total";
    let idle = CpuMeter::start(&pid_text, ticks);
    let before = api::metric(&broker.admin, telemetry_name)
        .await
        .unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(o.idle_seconds)).await;
    let after = api::metric(&broker.admin, telemetry_name)
        .await
        .unwrap_or(0.0);
    let idle_secs = idle.at.elapsed().as_secs_f64();
    let idle_cores = idle.cores();
    let telemetry_per_s = (after - before) / idle_secs;
    println!(
        "telemetry only: {telemetry_per_s:.0} samples/s received over {idle_secs:.0} s, broker CPU {idle_cores:.3} cores"
    );

    // The waves.
    let channel = sessions_channel(&broker.url);
    let mut rng = XorShift::new(o.seed);
    let waves_cpu = CpuMeter::start(&pid_text, ticks);
    let own_cpu = CpuMeter::start("self", ticks);
    let mut create_latency = Vec::new();
    let mut delete_latency = Vec::new();
    let mut create_errors = BTreeMap::new();
    let mut delete_errors = BTreeMap::new();
    let mut first_errors = BTreeMap::new();
    let (mut created, mut deleted, mut peak_live) = (0usize, 0usize, 0usize);
    let mut audits: Vec<Audit> = Vec::new();
    let mut create_secs = 0.0;
    let per_wave = o.sessions.div_ceil(waves);
    for wave in 0..waves {
        let n = per_wave.min(o.sessions - wave * per_wave);
        if n == 0 {
            break;
        }
        let requests = wave_requests(n, &o.mix, &mut rng);
        let asked: u64 = requests.iter().map(|&g| u64::from(g)).sum();
        let t = Instant::now();
        let calls = create_wave(&channel, requests, o.concurrency).await;
        let took = t.elapsed().as_secs_f64();
        create_secs += took;
        let ids = calls.created.clone();
        println!(
            "wave {}: {} of {n} sessions placed ({asked} GPUs asked of {capacity}) in {took:.1} s ({:.0}/s); errors {:?}",
            wave + 1,
            ids.len(),
            ids.len() as f64 / took,
            calls.errors
        );
        created += ids.len();
        create_latency.extend(calls.ok_latency);
        for (k, v) in calls.errors {
            *create_errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in calls.first_error {
            first_errors.entry(format!("create {k}")).or_insert(v);
        }
        // Every placed session reaches READY (the simulated hosts answer at once), then
        // etcd is audited with the fleet at its fullest.
        let want = ids.len();
        let settled = eventually(
            "the wave's sessions READY in etcd",
            Duration::from_secs(120),
            || async {
                let a = allocations::audit(&endpoint, &prefix).await?;
                Ok((a.in_state(SessionState::Ready) >= want).then_some(a))
            },
        )
        .await;
        let audit = match settled {
            Ok(a) => a,
            Err(e) => {
                println!("  {e}");
                allocations::audit(&endpoint, &prefix).await?
            }
        };
        peak_live = peak_live.max(audit.live());
        println!(
            "  etcd at the peak: {} live sessions {:?}, {} GPUs claimed, {} double-booked, {} keys missing, {} dangling",
            audit.live(),
            audit.live_by_state,
            audit.gpus_claimed,
            audit.double_booked,
            audit.missing_keys,
            audit.dangling_keys
        );
        for e in &audit.examples {
            println!("    {e}");
        }
        audits.push(audit);

        let t = Instant::now();
        let calls = delete_all(&channel, ids, o.concurrency).await;
        let took = t.elapsed().as_secs_f64();
        deleted += calls.ok_latency.len();
        println!(
            "  deleted {} in {took:.1} s; errors {:?}",
            calls.ok_latency.len(),
            calls.errors
        );
        delete_latency.extend(calls.ok_latency);
        for (k, v) in calls.errors {
            *delete_errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in calls.first_error {
            first_errors.entry(format!("delete {k}")).or_insert(v);
        }
    }
    let broker_cores = waves_cpu.cores();
    let waves_secs = waves_cpu.at.elapsed().as_secs_f64();
    let own_cores = own_cpu.cores();
    let end = allocations::audit(&endpoint, &prefix).await?;
    println!(
        "  etcd at the end: {} live sessions, {} GPU keys, {} double-booked, {} missing, {} dangling",
        end.live(),
        end.gpu_keys,
        end.double_booked,
        end.missing_keys,
        end.dangling_keys
    );
    for e in &end.examples {
        println!("    {e}");
    }
    audits.push(end);
    let whole_run_cores = run_cpu.cores();
    let peak_kib = rss.finish(pid).await;
    let write_failures = api::metric(&broker.admin, "hearth_broker_store_write_failures_total")
        .await
        .unwrap_or(f64::NAN);
    let sim = fleet.stats();
    let (dropped, overlaps, reconnects) = (
        sim.telemetry_dropped.load(Ordering::Relaxed),
        sim.gpu_overlaps.load(Ordering::Relaxed),
        sim.streams_ended.load(Ordering::Relaxed),
    );
    let broker_alive = broker.proc.pid().is_some_and(|p| rss_kib(p).is_some());
    fleet.stop().await;

    let double_booked = audits.iter().map(|a| a.double_booked).max().unwrap_or(0);
    let missing = audits.iter().map(|a| a.missing_keys).max().unwrap_or(0);
    let dangling = audits.iter().map(|a| a.dangling_keys).max().unwrap_or(0);
    let placement = Latency::of(create_latency);
    let deletion = Latency::of(delete_latency);
    let report: Vec<(&str, String)> = vec![
        ("placement_p50_ms", format!("{:.2}", placement.p50)),
        ("placement_p90_ms", format!("{:.2}", placement.p90)),
        ("placement_p99_ms", format!("{:.2}", placement.p99)),
        ("placement_max_ms", format!("{:.2}", placement.max)),
        ("placement_mean_ms", format!("{:.2}", placement.mean)),
        ("delete_p50_ms", format!("{:.2}", deletion.p50)),
        ("delete_p99_ms", format!("{:.2}", deletion.p99)),
        (
            "creates_per_s",
            format!("{:.0}", created as f64 / create_secs),
        ),
        ("broker_rss_mib", format!("{:.1}", peak_kib as f64 / 1024.0)),
        ("broker_cpu_cores", format!("{broker_cores:.3}")),
        (
            "broker_cpu_cores_telemetry_only",
            format!("{idle_cores:.3}"),
        ),
        (
            "broker_cpu_cores_whole_run",
            format!("{whole_run_cores:.3}"),
        ),
        ("bench_process_cpu_cores", format!("{own_cores:.3}")),
        ("telemetry_per_s", format!("{telemetry_per_s:.0}")),
        ("telemetry_dropped_by_hosts", dropped.to_string()),
        ("double_booked", double_booked.to_string()),
        ("missing_gpu_keys", missing.to_string()),
        ("dangling_gpu_keys", dangling.to_string()),
        ("host_gpu_overlaps", overlaps.to_string()),
        ("hosts", o.hosts.to_string()),
        ("gpus", capacity.to_string()),
        ("gpus_per_host", o.gpus_per_host.to_string()),
        ("sessions_requested", o.sessions.to_string()),
        ("sessions_created", created.to_string()),
        ("sessions_deleted", deleted.to_string()),
        ("peak_live_sessions", peak_live.to_string()),
        ("create_errors", json_counts(&create_errors)),
        ("delete_errors", json_counts(&delete_errors)),
        ("store_write_failures", format!("{write_failures:.0}")),
        ("host_streams_ended", reconnects.to_string()),
        ("waves", waves.to_string()),
        ("concurrency", o.concurrency.to_string()),
        ("mix", mix_text.clone()),
        ("connect_s", format!("{connect_s:.1}")),
        ("waves_s", format!("{waves_secs:.1}")),
        ("load_average_start", load_start.clone()),
        ("load_average_end", load_average()),
        ("simulated", "true".to_owned()),
    ];
    println!();
    crate::report::print(&report, 32);
    for (k, v) in &first_errors {
        println!("{:>32}: {v}", format!("first {k}"));
    }
    if !broker_alive {
        println!(
            "the broker process died during the run:\n{}",
            broker.proc.log_tail()
        );
    }
    if o.json {
        println!("{}", crate::report::json_line(&report));
    }
    drop(etcd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_follows_the_mix_exactly() {
        let mix = [(1, 60), (2, 20), (4, 15), (8, 5)];
        let wave = wave_requests(4000, &mix, &mut XorShift::new(1));
        assert_eq!(wave.len(), 4000);
        let count = |g: u32| wave.iter().filter(|&&x| x == g).count();
        assert_eq!(
            (count(1), count(2), count(4), count(8)),
            (2400, 800, 600, 200)
        );
        assert_eq!(wave.iter().map(|&g| g as usize).sum::<usize>(), 8000);
        // Rounding never loses or adds sessions.
        assert_eq!(wave_requests(7, &mix, &mut XorShift::new(2)).len(), 7);
    }

    #[test]
    fn mixes_must_add_up() {
        assert!(parse_mix("1:50,2:50").is_ok());
        assert!(parse_mix("1:50,2:40").is_err());
        assert!(parse_mix("1-50").is_err());
    }

    #[test]
    fn cpu_fields_are_read_after_the_command_name() {
        // Our own process: its CPU time is a small non-negative number.
        let secs = cpu_seconds("self", 100.0).expect("readable /proc/self/stat");
        assert!(secs >= 0.0);
    }
}
