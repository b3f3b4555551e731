//! The systemd units in `deploy/systemd/`, checked as `deploy/systemd/README.md` installs
//! them.
//!
//! - `systemd-analyze verify` has nothing to say about either unit. It runs in a scratch
//!   root laid out like the target host: the units in `/etc/systemd/system`, the real
//!   built binaries in `/usr/local/bin` (verify checks that ExecStart's program exists and
//!   is executable), the `hearth` user made from `hearth.sysusers.conf` by
//!   `systemd-sysusers`, and this host's own units for the targets they depend on. The same
//!   check flags units broken on purpose (an unknown key, a bad value, a missing binary),
//!   which proves that it can fail.
//! - Each unit has the hardening its comments promise. The agent has none of the settings
//!   that would hide its GPUs, kill its sessions on a restart or break process-runtime
//!   workloads. `systemd-analyze security` keeps the broker's exposure low.
//! - Paths agree with `deploy/config/` and with the binaries. ExecStart's `--config` files
//!   exist there. The agent, run as ExecStart says, keeps its state in its
//!   StateDirectory. The broker, run with the unit's layout (config under `/etc/hearth`,
//!   its state directory as working directory, the unit's `Environment=`), answers
//!   `/ready`, keeps its embedded store in the state directory, logs without colour codes,
//!   and exits cleanly on SIGTERM within TimeoutStopSec.
//!
//! Without `systemd-analyze` and `systemd-sysusers`, the tests that need them print
//! `SKIPPED:` and pass, except in CI (`CI` set), where they fail: install Debian's
//! `systemd` package.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hearth_tests::process::{binary, free_port};

const BROKER_UNIT: &str = "hearth-broker.service";
const AGENT_UNIT: &str = "hearth-agent.service";
const SYSUSERS: &str = "hearth.sysusers.conf";

/// The most `systemd-analyze security` may rate the broker's exposure, in tenths (2.0).
const BROKER_MAX_EXPOSURE: u32 = 20;

/// What the broker may need after its request grace (`SHUTDOWN_GRACE`) to resign, close
/// the store and exit, before systemd's SIGKILL.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// systemd's PATH for system services.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn systemd_dir() -> PathBuf {
    repo().join("deploy/systemd")
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// True when systemd's tools are installed. Without them this prints `SKIPPED:` and
/// returns false, or panics in CI, which must never pass by skipping.
fn systemd_tools_or_skip() -> bool {
    let missing: Vec<&str> = ["systemd-analyze", "systemd-sysusers"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(" and ");
    assert!(
        !in_ci(),
        "{missing} not found, and CI must not skip: install Debian's systemd package"
    );
    eprintln!("SKIPPED: {missing} not installed (Debian's systemd package)");
    false
}

/// A unit file as systemd reads it: `[Section]` headers, `Key=Value` lines, and comments
/// starting with `#` or `;`.
struct Unit {
    name: &'static str,
    /// (section, key, value), in file order.
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &'static str) -> Self {
        let path = systemd_dir().join(name);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut section = String::new();
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            // Keeps this parser honest: it reads each line on its own.
            assert!(
                !line.ends_with('\\'),
                "{name}:{}: the units use no continuation lines",
                i + 1
            );
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not Key=Value: {line}", i + 1));
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Self { name, entries }
    }

    /// Every value of `key` in `[section]`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of a `[Service]` setting: its last assignment, which is what counts for a
    /// single-valued setting.
    fn service(&self, key: &str) -> &str {
        self.all("Service", key)
            .last()
            .copied()
            .unwrap_or_else(|| panic!("{}: [Service] sets no {key}=", self.name))
    }

    /// Every unit named by `key` in `[Unit]` (After=, Wants=, ...), across its lines.
    fn unit_list(&self, key: &str) -> Vec<&str> {
        self.all("Unit", key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    /// `Environment=NAME=value` pairs, as the service's processes get them.
    fn environment(&self) -> Vec<(String, String)> {
        self.all("Service", "Environment")
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(|pair| {
                assert!(!pair.contains('"'), "{}: quoted Environment=", self.name);
                let (name, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: Environment={pair}", self.name));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// ExecStart's words. The units use no prefixes (`-`, `@`, `+`, ...) and no quoting.
    fn exec_start(&self) -> Vec<&str> {
        let exec = self.service("ExecStart");
        assert!(
            exec.starts_with('/'),
            "{}: ExecStart must be an absolute path with no prefix: {exec}",
            self.name
        );
        exec.split_whitespace().collect()
    }

    /// Asserts each `[Service]` setting has exactly this value.
    fn assert_service(&self, expected: &[(&str, &str)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(key, value)| self.all("Service", key).last() != Some(value))
            .map(|(key, value)| {
                format!(
                    "{key}={value} (found {:?})",
                    self.all("Service", key).last()
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{} lacks the hardening it promises:\n  {}",
            self.name,
            wrong.join("\n  ")
        );
    }
}

/// A systemd duration such as `30s`, `2min` or `45` (seconds).
fn seconds(value: &str) -> Duration {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration this test reads: {value}"));
    match unit {
        "" | "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        _ => panic!("not a duration this test reads: {value}"),
    }
}

#[test]
fn units_read_the_example_configs_from_etc_hearth() {
    for (unit, binary_name, config) in [
        (BROKER_UNIT, "hearth-broker", "broker"),
        (AGENT_UNIT, "hearth-agent", "agent"),
    ] {
        let unit = Unit::load(unit);
        assert_eq!(
            unit.exec_start(),
            [
                format!("/usr/local/bin/{binary_name}").as_str(),
                "--config",
                &format!("/etc/hearth/{config}.toml"),
            ],
            "{}: ExecStart",
            unit.name
        );
        let example = repo().join(format!("deploy/config/{config}.toml"));
        assert!(
            example.is_file(),
            "{} reads /etc/hearth/{config}.toml, installed from {}, which is missing",
            unit.name,
            example.display()
        );
        // `-`: the file is optional; without it the service still starts.
        assert_eq!(
            unit.service("EnvironmentFile"),
            format!("-/etc/hearth/{config}.env")
        );
        unit.assert_service(&[
            ("ConfigurationDirectory", "hearth"),
            ("ReadOnlyPaths", "/etc/hearth"),
        ]);
    }

    // TLS files and everything else the examples place under /etc must be in /etc/hearth,
    // the one configuration directory the units grant.
    for config in ["broker.toml", "agent.toml"] {
        let text = fs::read_to_string(repo().join("deploy/config").join(config)).unwrap();
        for path in text
            .split(|c: char| c == '"' || c.is_whitespace())
            .filter(|word| word.starts_with("/etc/"))
        {
            assert!(
                path.starts_with("/etc/hearth/"),
                "deploy/config/{config} names {path}, outside /etc/hearth, which the units cannot read"
            );
        }
    }

    // The README's install steps name files that exist, and probe the example configs'
    // admin ports.
    let readme = fs::read_to_string(systemd_dir().join("README.md")).unwrap();
    for path in readme
        .split(|c: char| c.is_whitespace() || matches!(c, '`' | '(' | ')' | ','))
        .filter(|word| word.starts_with("deploy/"))
    {
        assert!(
            repo().join(path).exists(),
            "deploy/systemd/README.md names {path}, which does not exist"
        );
    }
    for config in ["broker.toml", "agent.toml"] {
        let text = fs::read_to_string(repo().join("deploy/config").join(config)).unwrap();
        let admin = toml_string(&text, "admin_addr");
        assert!(
            readme.contains(&format!("curl {admin}/ready")),
            "deploy/systemd/README.md should probe {admin}/ready, admin_addr in deploy/config/{config}"
        );
    }
}

/// The value of a top-level `key = "value"` line of a TOML file.
fn toml_string(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| {
            let (k, rest) = line.split_once('=')?;
            (k.trim() == key).then(|| rest.split('"').nth(1).map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("no {key} = \"...\" line"))
}

#[test]
fn broker_unit_is_hardened() {
    let unit = Unit::load(BROKER_UNIT);
    unit.assert_service(&[
        ("Type", "exec"),
        ("User", "hearth"),
        ("Group", "hearth"),
        ("StateDirectory", "hearth-broker"),
        ("StateDirectoryMode", "0700"),
        ("WorkingDirectory", "/var/lib/hearth-broker"),
        ("KillSignal", "SIGTERM"),
        ("KillMode", "control-group"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectProc", "invisible"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RemoveIPC", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ]);
    assert_eq!(
        unit.all("Service", "SystemCallFilter"),
        ["@system-service", "~@privileged @resources"]
    );
    for key in ["After", "Wants"] {
        assert!(
            unit.unit_list(key).contains(&"network-online.target"),
            "{BROKER_UNIT}: {key}=network-online.target"
        );
    }
    assert!(seconds(unit.service("RestartSec")) >= Duration::from_secs(1));
    let stop = seconds(unit.service("TimeoutStopSec"));
    assert!(
        stop >= hearth_broker::SHUTDOWN_GRACE + STOP_MARGIN,
        "{BROKER_UNIT}: TimeoutStopSec={stop:?} leaves the broker too little time after its \
         {:?} request grace: systemd would SIGKILL it mid-shutdown",
        hearth_broker::SHUTDOWN_GRACE
    );
    let nofile: u64 = unit.service("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");

    // The user the unit runs as is the one hearth.sysusers.conf creates.
    let sysusers = fs::read_to_string(systemd_dir().join(SYSUSERS)).unwrap();
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "hearth"])),
        "{SYSUSERS} must create the user hearth"
    );
}

#[test]
fn agent_unit_keeps_sessions_running_and_gpus_visible() {
    let unit = Unit::load(AGENT_UNIT);
    unit.assert_service(&[
        ("Type", "exec"),
        // Only the agent's main process is signalled: process-runtime workloads (its
        // children) survive a stop or restart and are re-adopted from state_dir.
        ("KillMode", "process"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("OOMPolicy", "continue"),
        ("TasksMax", "infinity"),
        ("StateDirectory", "hearth-agent"),
        ("StateDirectoryMode", "0700"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "full"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ]);
    // Each of these would break something the agent or its workloads need.
    let forbidden: [(&[&str], &str); 6] = [
        (
            &[
                "User",
                "DynamicUser",
                "PrivateUsers",
                "CapabilityBoundingSet",
            ],
            "the Docker socket and CAP_KILL over containers' processes need root",
        ),
        (
            &[
                "PrivateDevices",
                "DevicePolicy",
                "DeviceAllow",
                "ProtectClock",
            ],
            "a device allow-list (ProtectClock= implies one) hides /dev/nvidia*",
        ),
        (
            &["ProtectProc", "ProcSubset"],
            "exec cancellation reads /proc/<pid>/cgroup of containers' processes",
        ),
        (
            &["PrivateNetwork"],
            "the agent dials the broker and containers' IPs",
        ),
        (
            &["PrivateTmp"],
            "sessions surviving a restart would lose the old instance's /tmp",
        ),
        (
            &[
                "MemoryDenyWriteExecute",
                "RestrictAddressFamilies",
                "SystemCallFilter",
                "RestrictNamespaces",
            ],
            "process-runtime workloads inherit it (JIT runtimes, NCCL's netlink, sandboxes)",
        ),
    ];
    let present: Vec<String> = forbidden
        .iter()
        .flat_map(|(keys, why)| keys.iter().map(move |key| (key, why)))
        .filter(|(key, _)| !unit.all("Service", key).is_empty())
        .map(|(key, why)| format!("{key}=: {why}"))
        .collect();
    assert!(
        present.is_empty(),
        "{AGENT_UNIT} sets what the agent cannot run with:\n  {}",
        present.join("\n  ")
    );
    // Docker first when there is one, but the agent also runs without it.
    for key in ["After", "Wants"] {
        assert!(
            unit.unit_list(key).contains(&"docker.service"),
            "{AGENT_UNIT}: {key}=docker.service"
        );
    }
    for key in ["Requires", "BindsTo", "Requisite", "PartOf"] {
        assert!(
            !unit.unit_list(key).contains(&"docker.service"),
            "{AGENT_UNIT}: {key}=docker.service would stop the agent (and its process-runtime \
             sessions' supervision) with Docker"
        );
    }
    assert!(unit.unit_list("Wants").contains(&"network-online.target"));
}

#[test]
fn agent_reads_its_config_as_the_unit_runs_it() -> anyhow::Result<()> {
    let unit = Unit::load(AGENT_UNIT);
    let root = tempfile::tempdir()?;
    install_config(root.path(), "agent.toml", |text| text.to_owned())?;
    let args = rooted_args(root.path(), &unit.exec_start()[1..]);
    let out = Command::new(binary("hearth-agent")?)
        .args(&args)
        .arg("--print-config")
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .envs(unit.environment())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hearth-agent {} --print-config: {}\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let state_dir = toml_string(&stdout, "state_dir");
    assert_eq!(
        state_dir,
        format!("/var/lib/{}", unit.service("StateDirectory")),
        "the agent's state_dir must be the unit's StateDirectory, the one place it may write \
         the leader-epoch fence and process-runtime state"
    );
    assert_eq!(toml_string(&stdout, "runtime"), "docker");
    Ok(())
}

#[tokio::test]
async fn broker_runs_with_the_units_layout() -> anyhow::Result<()> {
    let unit = Unit::load(BROKER_UNIT);
    let root = tempfile::tempdir()?;
    // The README's single-machine edit: no etcd, so the embedded store.
    install_config(root.path(), "broker.toml", |text| {
        let etcd_lines = text.lines().filter(|l| l.starts_with("etcd = ")).count();
        assert_eq!(
            etcd_lines, 1,
            "deploy/config/broker.toml: one `etcd = ` line to comment out"
        );
        text.replace("\netcd = ", "\n# etcd = ")
    })?;
    let state = rooted(
        root.path(),
        &format!("/var/lib/{}", unit.service("StateDirectory")),
    );
    fs::create_dir_all(&state)?;
    let workdir = rooted(root.path(), unit.service("WorkingDirectory"));
    let args = rooted_args(root.path(), &unit.exec_start()[1..]);
    let admin = format!("127.0.0.1:{}", free_port());
    let log_path = root.path().join("broker.log");
    let log = fs::File::create(&log_path)?;
    let started = Command::new(binary("hearth-broker")?)
        .args(&args)
        .current_dir(&workdir)
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .envs(unit.environment())
        // What /etc/hearth/broker.env would set: free ports, so tests never collide.
        .env("HEARTH_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("HEARTH_ADMIN_ADDR", &admin)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut broker = KillOnDrop(started);
    let log_tail = || fs::read_to_string(&log_path).unwrap_or_default();

    // Polled by hand rather than with `eventually`: a broker that exits early fails the
    // test at once, with its log.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = broker.0.try_wait()? {
            panic!(
                "the broker exited with {status}\n--- broker log ---\n{}",
                log_tail()
            );
        }
        if http_status(&admin, "/ready").await.ok() == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's /ready did not answer 200 within 20 s\n--- broker log ---\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // store.path as deploy/config/broker.toml sets it, relative to the working directory.
    let example = fs::read_to_string(repo().join("deploy/config/broker.toml"))?;
    let store = workdir.join(toml_string(&example, "path"));
    assert!(
        store.starts_with(&state) && store.is_file(),
        "the embedded store should be {} inside the state directory; the state directory \
         holds {:?}",
        store.display(),
        fs::read_dir(&state)?
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    );

    // systemctl stop: KillSignal=SIGTERM, then SIGKILL after TimeoutStopSec.
    assert_eq!(unit.service("KillSignal"), "SIGTERM");
    let timeout = seconds(unit.service("TimeoutStopSec"));
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &broker.0.id().to_string()])
        .status()?;
    assert!(status.success(), "kill -TERM failed");
    let exit = loop {
        if let Some(exit) = broker.0.try_wait()? {
            break exit;
        }
        assert!(
            sent.elapsed() < timeout,
            "the broker outlived TimeoutStopSec={timeout:?} after SIGTERM; systemd would \
             SIGKILL it\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = log_tail();
    assert!(
        exit.success(),
        "SIGTERM should end the broker cleanly, got {exit}\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "journal lines should carry no colour codes (Environment=NO_COLOR=1):\n{log}"
    );
    assert!(
        log.contains("leading"),
        "no sign that the broker led:\n{log}"
    );
    eprintln!(
        "broker: ready, store at {}, stopped {:?} after SIGTERM",
        store.strip_prefix(root.path())?.display(),
        sent.elapsed()
    );
    Ok(())
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() -> anyhow::Result<()> {
    if !systemd_tools_or_skip() {
        return Ok(());
    }
    let root = Root::new()?;
    let problems = root.verify()?;
    assert!(
        problems.is_empty(),
        "systemd-analyze verify --root={} {BROKER_UNIT} {AGENT_UNIT}:\n  {}",
        root.path().display(),
        problems.join("\n  ")
    );

    // The exposure systemd itself rates; the agent's is shown, not gated: it runs as root
    // on purpose (see the unit).
    let broker = root.exposure(BROKER_UNIT, Some(BROKER_MAX_EXPOSURE))?;
    let agent = root.exposure(AGENT_UNIT, None)?;
    eprintln!("systemd-analyze security: {broker}; {agent}");
    Ok(())
}

#[test]
fn systemd_analyze_verify_flags_broken_units() -> anyhow::Result<()> {
    if !systemd_tools_or_skip() {
        return Ok(());
    }
    let root = Root::new()?;
    let breakages = [
        (
            BROKER_UNIT,
            "unknown key",
            "NoNewPrivileges=yes",
            "NoNewPrivilege=yes",
        ),
        (
            BROKER_UNIT,
            "bad value",
            "ProtectSystem=strict",
            "ProtectSystem=sometimes",
        ),
        (
            BROKER_UNIT,
            "missing binary",
            "ExecStart=/usr/local/bin/hearth-broker ",
            "ExecStart=/usr/local/bin/hearth-brokr ",
        ),
        (
            AGENT_UNIT,
            "bad value",
            "KillMode=process",
            "KillMode=processes",
        ),
        (
            AGENT_UNIT,
            "missing binary",
            "ExecStart=/usr/local/bin/hearth-agent ",
            "ExecStart=/usr/local/hearth-agent ",
        ),
    ];
    for (unit, what, from, to) in breakages {
        // A setting's own line; comments may mention the same text.
        let good = fs::read_to_string(systemd_dir().join(unit))?;
        let broken: Vec<String> = good
            .lines()
            .map(|line| match line.strip_prefix(from) {
                Some(rest) => format!("{to}{rest}"),
                None => line.to_owned(),
            })
            .collect();
        let changed = good.lines().filter(|l| l.starts_with(from)).count();
        assert_eq!(changed, 1, "{unit} has one line starting `{from}`");
        root.install_unit(unit, &(broken.join("\n") + "\n"))?;
        let problems = root.verify()?;
        root.install_unit(unit, &good)?;
        let unit_stem = unit.trim_end_matches(".service");
        assert!(
            problems.iter().any(|p| p.contains(unit_stem)),
            "{unit} with a {what} (`{to}`) should make systemd-analyze verify complain about it; \
             it printed: {problems:?}"
        );
        eprintln!("{unit}, {what}: {}", problems.join(" | "));
    }
    Ok(())
}

/// Runs the broker until dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `path` (absolute, as the unit names it) inside the scratch `root`.
fn rooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.strip_prefix('/').expect("an absolute path"))
}

/// ExecStart's arguments, with paths under /etc/hearth moved into `root`.
fn rooted_args(root: &Path, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a.starts_with("/etc/hearth/") {
                rooted(root, a).display().to_string()
            } else {
                (*a).to_owned()
            }
        })
        .collect()
}

/// Installs `deploy/config/<name>` as `<root>/etc/hearth/<name>`, through `edit`.
fn install_config(root: &Path, name: &str, edit: impl Fn(&str) -> String) -> anyhow::Result<()> {
    let text = fs::read_to_string(repo().join("deploy/config").join(name))?;
    let dir = root.join("etc/hearth");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), edit(&text))?;
    Ok(())
}

async fn http_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not HTTP: {out:?}"))
}

/// A scratch filesystem root laid out as the README installs the units on a host.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> anyhow::Result<Self> {
        // Under target/, so the binaries can be hard links rather than copies.
        let dir = tempfile::Builder::new()
            .prefix("deploy-systemd-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
        let root = Self { dir };
        let bin = root.path().join("usr/local/bin");
        fs::create_dir_all(&bin)?;
        for name in ["hearth-broker", "hearth-agent"] {
            // The real binaries: verify checks ExecStart's program exists and may be run.
            // A symlink would not do: verify resolves it inside the root.
            let (src, dst) = (binary(name)?, bin.join(name));
            if fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst)
                    .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
            }
        }
        // This host's own units: every service depends on sysinit.target and friends.
        let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
            .into_iter()
            .map(Path::new)
            .find(|dir| dir.join("sysinit.target").exists())
            .context(
                "systemd-analyze is installed, but no systemd unit directory with sysinit.target",
            )?;
        copy_tree(host_units, &root.path().join("usr/lib/systemd/system"))?;
        fs::create_dir_all(root.path().join("etc/systemd/system"))?;
        for unit in [BROKER_UNIT, AGENT_UNIT] {
            root.install_unit(unit, &fs::read_to_string(systemd_dir().join(unit))?)?;
        }
        // The hearth user, made as the README says.
        let out = Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(systemd_dir().join(SYSUSERS))
            .output()?;
        let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap_or_default();
        if !out.status.success() || !passwd.lines().any(|l| l.starts_with("hearth:")) {
            bail!(
                "systemd-sysusers {SYSUSERS}: {}, /etc/passwd {passwd:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(root)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn install_unit(&self, name: &str, text: &str) -> anyhow::Result<()> {
        fs::write(self.path().join("etc/systemd/system").join(name), text)?;
        Ok(())
    }

    /// What `systemd-analyze verify` says about both units: one entry per line it prints,
    /// plus its exit status when that is a failure. For units it is content with it prints
    /// nothing. An unknown key or a bad value is only logged ("..., ignoring") and leaves
    /// the exit status at 0, so every line counts as a problem.
    fn verify(&self) -> anyhow::Result<Vec<String>> {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", self.path().display()))
            .args(["--man=no", "--generators=no", BROKER_UNIT, AGENT_UNIT])
            // Bad settings are logged as warnings: an environment that raised the level
            // would hide them.
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .env("SYSTEMD_LOG_COLOR", "no")
            .env("SYSTEMD_LOG_TARGET", "console")
            .output()
            .context("running systemd-analyze verify")?;
        let mut problems: Vec<String> = [&out.stdout, &out.stderr]
            .into_iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !out.status.success() {
            problems.push(format!("systemd-analyze verify exited with {}", out.status));
        }
        Ok(problems)
    }

    /// `systemd-analyze security`'s overall line for `unit`; with `max` (tenths), fails
    /// when the exposure is above it.
    fn exposure(&self, unit: &str, max: Option<u32>) -> anyhow::Result<String> {
        let mut command = Command::new("systemd-analyze");
        command
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", self.path().display()))
            .env("SYSTEMD_LOG_COLOR", "no");
        if let Some(max) = max {
            command.arg(format!("--threshold={max}"));
        }
        let out = command.arg(unit).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let overall = stdout
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .map(|l| {
                l.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
                    .trim()
                    .to_owned()
            })
            .with_context(|| {
                format!(
                    "systemd-analyze security {unit}: no overall level\n{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        if !out.status.success() {
            bail!(
                "systemd-analyze security {unit} (--threshold={max:?}): {overall}\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(overall)
    }
}

/// Copies a directory tree, keeping symbolic links as links.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
        }
    }
    Ok(())
}
