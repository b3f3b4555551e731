//! The spec flags shared by `sessions create`, `templates create` and `templates update`,
//! and how they become a `SessionSpec`.
//!
//! Every flag is optional and [`SpecArgs::apply`] changes only what was given, so the same
//! flags build a new spec (applied to an empty one) or edit an existing template's.

use std::time::Duration;

use clap::{Args, ValueEnum};
use hearth_sdk::proto::v1::{
    Egress, ExecProbe, GpuRequest, HttpProbe, IdleAction, NetworkSpec, PlacementSpec,
    PlacementStrategy, PortSpec, PullPolicy, ReadinessProbe, Resources, RestartMode, RestartPolicy,
    SecuritySpec, SessionSpec, readiness_probe::Check,
};

use crate::parse;

/// What to do when a session has been idle for `--idle-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Idle {
    /// Freeze the CPU and keep memory and VRAM; the next turn resumes it.
    Pause,
    /// Stop the session and free its GPUs.
    Stop,
    /// Leave it running.
    Keep,
}

/// How placement picks among the nodes that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// Fill the busiest node that fits.
    Binpack,
    /// Prefer the emptiest node that fits.
    Spread,
}

/// Spec flags. See each flag's help.
#[derive(Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Container image (docker runtime) or executable path (process runtime).
    #[arg(long, help_heading = "Workload")]
    pub image: Option<String>,

    /// Environment variable for the workload, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse::key_value, help_heading = "Workload")]
    pub env: Vec<(String, String)>,

    /// A port the workload listens on, reachable with `sessions invoke`: PORT or PORT:NAME
    /// (repeatable).
    #[arg(long = "port", value_name = "PORT[:NAME]", value_parser = parse::port_spec, help_heading = "Workload")]
    pub ports: Vec<(u16, String)>,

    /// Command and arguments, after `--`; the image's entrypoint when left out.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Number of whole GPUs (0 for a CPU-only session).
    #[arg(long, value_name = "N", help_heading = "Resources")]
    pub gpus: Option<u32>,

    /// Only GPUs whose model matches this glob, such as 'NVIDIA H100*'.
    #[arg(long, value_name = "GLOB", help_heading = "Resources")]
    pub gpu_model: Option<String>,

    /// Least memory per GPU, such as 40GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::size, help_heading = "Resources")]
    pub gpu_memory: Option<u64>,

    /// CPU limit in cores, such as 2 or 0.5.
    #[arg(long, value_name = "CORES", value_parser = parse::cpus, help_heading = "Resources")]
    pub cpus: Option<u32>,

    /// Memory limit, such as 16GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::size, help_heading = "Resources")]
    pub memory: Option<u64>,

    /// Ready once a TCP connect to this port succeeds.
    #[arg(long, value_name = "PORT", value_parser = parse::port,
          conflicts_with_all = ["ready_http", "ready_exec"], help_heading = "Readiness")]
    pub ready_tcp: Option<u16>,

    /// Ready once an HTTP GET of PORT/path answers 2xx, such as 8080/healthz.
    #[arg(long, value_name = "PORT[/PATH]", value_parser = parse::http_probe,
          conflicts_with = "ready_exec", help_heading = "Readiness")]
    pub ready_http: Option<(u16, String)>,

    /// Ready once this command, run inside the session, exits 0 (its words up to the next
    /// flag or `--`).
    #[arg(long, value_name = "CMD", num_args = 1..,
          help_heading = "Readiness")]
    pub ready_exec: Option<Vec<String>>,

    /// Give up on a start that is not ready after this long (broker default 120s).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, help_heading = "Readiness")]
    pub ready_timeout: Option<Duration>,

    /// Apply --idle-action after this long without a turn or keep-alive, such as 30m
    /// (broker default 30m).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, help_heading = "Lifetime")]
    pub idle_timeout: Option<Duration>,

    /// What to do when idle (default pause).
    #[arg(long, value_enum, help_heading = "Lifetime")]
    pub idle_action: Option<Idle>,

    /// Stop the session this long after it was created, whatever it is doing.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, help_heading = "Lifetime")]
    pub max_lifetime: Option<Duration>,

    /// How placement picks a node (cluster default when left out).
    #[arg(long, value_enum, help_heading = "Placement")]
    pub strategy: Option<Strategy>,

    /// Only nodes with this label, K=V (repeatable; all must match).
    #[arg(long = "node-selector", value_name = "K=V", value_parser = parse::key_value, help_heading = "Placement")]
    pub node_selector: Vec<(String, String)>,

    /// A node taint this session tolerates, by key (repeatable).
    #[arg(long = "toleration", value_name = "KEY", help_heading = "Placement")]
    pub tolerations: Vec<String>,

    /// A Linux capability to keep, such as SYS_PTRACE (repeatable). Containers drop every
    /// capability; the broker allows adding one back per tenant (limits.tenant_capabilities).
    #[arg(long = "cap-add", value_name = "CAP", help_heading = "Security")]
    pub cap_add: Vec<String>,

    /// Egress to the outside: allow (the tenant's policy permitting) or deny.
    #[arg(long, value_enum, help_heading = "Security")]
    pub egress: Option<EgressArg>,

    /// When a failed workload is started again: never (default), on-failure (at most 3
    /// times) or on-failure:N (at most N times); each restart is cold, after a backoff of
    /// 1 s doubling to 30 s.
    #[arg(long, value_name = "POLICY", value_parser = parse_restart, help_heading = "Lifetime")]
    pub restart: Option<RestartPolicy>,

    /// When the node pulls the image from its registry: if-not-present (default), always
    /// (a digest is still pulled only once), or never (the image must be on the node).
    #[arg(long, value_enum, help_heading = "Image")]
    pub pull_policy: Option<PullPolicyArg>,
}

/// `--pull-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PullPolicyArg {
    /// Pull when the node does not hold the image.
    IfNotPresent,
    /// Pull before every start.
    Always,
    /// Never pull.
    Never,
}

/// `--egress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EgressArg {
    /// Outside addresses are reachable, where the tenant's policy allows it.
    Allow,
    /// Nothing leaves the session's network.
    Deny,
}

/// `--restart never|on-failure[:N]`.
fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    let (mode, max) = match s.split_once(':') {
        Some((mode, max)) => (
            mode,
            max.parse::<u32>()
                .map_err(|_| format!("{max:?} is not a number of restarts"))?,
        ),
        None => (s, 0),
    };
    let mode = match mode {
        "never" if max == 0 => RestartMode::Never,
        "on-failure" => RestartMode::OnFailure,
        _ => return Err("use never, on-failure or on-failure:N".to_owned()),
    };
    Ok(RestartPolicy {
        mode: mode.into(),
        max_restarts: max,
    })
}

impl SpecArgs {
    /// The long names of the flags that were given, for error messages.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                given.push(name);
            }
        };
        note(self.image.is_some(), "--image");
        note(!self.env.is_empty(), "--env");
        note(!self.ports.is_empty(), "--port");
        note(!self.command.is_empty(), "-- COMMAND");
        note(self.gpus.is_some(), "--gpus");
        note(self.gpu_model.is_some(), "--gpu-model");
        note(self.gpu_memory.is_some(), "--gpu-memory");
        note(self.cpus.is_some(), "--cpus");
        note(self.memory.is_some(), "--memory");
        note(self.ready_tcp.is_some(), "--ready-tcp");
        note(self.ready_http.is_some(), "--ready-http");
        note(self.ready_exec.is_some(), "--ready-exec");
        note(self.ready_timeout.is_some(), "--ready-timeout");
        note(self.idle_timeout.is_some(), "--idle-timeout");
        note(self.idle_action.is_some(), "--idle-action");
        note(self.max_lifetime.is_some(), "--max-lifetime");
        note(self.strategy.is_some(), "--strategy");
        note(!self.node_selector.is_empty(), "--node-selector");
        note(!self.tolerations.is_empty(), "--toleration");
        note(!self.cap_add.is_empty(), "--cap-add");
        note(self.egress.is_some(), "--egress");
        note(self.restart.is_some(), "--restart");
        note(self.pull_policy.is_some(), "--pull-policy");
        given
    }

    /// A spec from these flags alone.
    pub fn to_spec(&self) -> SessionSpec {
        let mut spec = SessionSpec::default();
        self.apply(&mut spec);
        spec
    }

    /// Sets the fields these flags give; maps (`--env`, `--node-selector`) gain or replace
    /// keys, lists (`--port`, `--toleration`, the command) are replaced when given.
    pub fn apply(&self, spec: &mut SessionSpec) {
        if let Some(image) = &self.image {
            spec.image = image.clone();
        }
        if !self.command.is_empty() {
            spec.command = self.command.clone();
        }
        spec.env.extend(self.env.iter().cloned());
        if !self.ports.is_empty() {
            spec.ports = self
                .ports
                .iter()
                .map(|(port, name)| PortSpec {
                    port: (*port).into(),
                    name: name.clone(),
                })
                .collect();
        }

        if self.gpus.is_some() || self.gpu_model.is_some() || self.gpu_memory.is_some() {
            let gpus = spec.gpus.get_or_insert_with(GpuRequest::default);
            if let Some(n) = self.gpus {
                gpus.count = n;
            }
            if let Some(model) = &self.gpu_model {
                gpus.model = model.clone();
            }
            if let Some(bytes) = self.gpu_memory {
                gpus.min_memory_bytes = bytes;
            }
        }
        if self.cpus.is_some() || self.memory.is_some() {
            let resources = spec.resources.get_or_insert_with(Resources::default);
            if let Some(millis) = self.cpus {
                resources.cpu_millis = millis;
            }
            if let Some(bytes) = self.memory {
                resources.memory_bytes = bytes;
            }
        }

        let check = if let Some(port) = self.ready_tcp {
            Some(Check::TcpPort(port.into()))
        } else if let Some((port, path)) = &self.ready_http {
            Some(Check::Http(HttpProbe {
                port: (*port).into(),
                path: path.clone(),
            }))
        } else {
            self.ready_exec
                .as_ref()
                .map(|argv| Check::Exec(ExecProbe { argv: argv.clone() }))
        };
        if check.is_some() || self.ready_timeout.is_some() {
            let probe = spec.readiness.get_or_insert_with(ReadinessProbe::default);
            if check.is_some() {
                probe.check = check;
            }
            if let Some(t) = self.ready_timeout {
                probe.timeout = Some(hearth_sdk::time::duration(t));
            }
        }

        if let Some(t) = self.idle_timeout {
            spec.idle_timeout = Some(hearth_sdk::time::duration(t));
        }
        if let Some(action) = self.idle_action {
            spec.idle_action = match action {
                Idle::Pause => IdleAction::Pause,
                Idle::Stop => IdleAction::Stop,
                Idle::Keep => IdleAction::Keep,
            }
            .into();
        }
        if let Some(t) = self.max_lifetime {
            spec.max_lifetime = Some(hearth_sdk::time::duration(t));
        }

        if self.strategy.is_some() || !self.node_selector.is_empty() || !self.tolerations.is_empty()
        {
            let placement = spec.placement.get_or_insert_with(PlacementSpec::default);
            if let Some(strategy) = self.strategy {
                placement.strategy = match strategy {
                    Strategy::Binpack => PlacementStrategy::Binpack,
                    Strategy::Spread => PlacementStrategy::Spread,
                }
                .into();
            }
            placement
                .node_selector
                .extend(self.node_selector.iter().cloned());
            if !self.tolerations.is_empty() {
                placement.tolerations = self.tolerations.clone();
            }
        }
        if !self.cap_add.is_empty() {
            spec.security
                .get_or_insert_with(SecuritySpec::default)
                .add_capabilities = self.cap_add.clone();
        }
        if let Some(egress) = self.egress {
            spec.network = Some(NetworkSpec {
                egress: match egress {
                    EgressArg::Allow => Egress::Allow,
                    EgressArg::Deny => Egress::Deny,
                }
                .into(),
            });
        }
        if let Some(restart) = self.restart {
            spec.restart = Some(restart);
        }
        if let Some(policy) = self.pull_policy {
            spec.set_pull_policy(match policy {
                PullPolicyArg::IfNotPresent => PullPolicy::IfNotPresent,
                PullPolicyArg::Always => PullPolicy::Always,
                PullPolicyArg::Never => PullPolicy::Never,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        spec: SpecArgs,
    }

    fn parse(args: &[&str]) -> Result<SpecArgs, clap::Error> {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied())).map(|p| p.spec)
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let spec = parse(&[
            "--image",
            "worker:1",
            "--gpus",
            "2",
            "--gpu-model",
            "NVIDIA H100*",
            "--gpu-memory",
            "40GiB",
            "--cpus",
            "1.5",
            "--memory",
            "8GiB",
            "--port",
            "8080:http",
            "--port",
            "9090",
            "--ready-http",
            "8080/healthz",
            "--ready-timeout",
            "30s",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--idle-timeout",
            "10m",
            "--idle-action",
            "stop",
            "--max-lifetime",
            "2h",
            "--strategy",
            "spread",
            "--node-selector",
            "zone=a",
            "--toleration",
            "gpu-only",
            "--cap-add",
            "SYS_PTRACE",
            "--",
            "/worker",
            "serve",
            "--flag",
        ])
        .unwrap()
        .to_spec();
        assert_eq!(spec.image, "worker:1");
        assert_eq!(spec.command, ["/worker", "serve", "--flag"]);
        let gpus = spec.gpus.clone().unwrap();
        assert_eq!((gpus.count, gpus.model.as_str()), (2, "NVIDIA H100*"));
        assert_eq!(gpus.min_memory_bytes, 40 << 30);
        let resources = spec.resources.unwrap();
        assert_eq!(
            (resources.cpu_millis, resources.memory_bytes),
            (1500, 8 << 30)
        );
        assert_eq!(spec.ports.len(), 2);
        assert_eq!(
            (spec.ports[0].port, spec.ports[0].name.as_str()),
            (8080, "http")
        );
        let readiness = spec.readiness.clone().unwrap();
        assert_eq!(
            readiness.check,
            Some(Check::Http(HttpProbe {
                port: 8080,
                path: "/healthz".into()
            }))
        );
        assert_eq!(readiness.timeout.unwrap().seconds, 30);
        assert_eq!(spec.env["B"], "x=y");
        assert_eq!(spec.idle_timeout.unwrap().seconds, 600);
        assert_eq!(spec.idle_action(), IdleAction::Stop);
        assert_eq!(spec.max_lifetime.unwrap().seconds, 7200);
        let placement = spec.placement.unwrap();
        assert_eq!(placement.strategy(), PlacementStrategy::Spread);
        assert_eq!(placement.node_selector["zone"], "a");
        assert_eq!(placement.tolerations, ["gpu-only"]);
        assert_eq!(spec.security.unwrap().add_capabilities, ["SYS_PTRACE"]);
    }

    #[test]
    fn ready_exec_takes_words_up_to_the_next_flag() {
        let args = parse(&[
            "--ready-exec",
            "/worker",
            "echo",
            "ok",
            "--port",
            "8080",
            "--",
            "/worker",
            "serve",
        ])
        .unwrap();
        assert_eq!(
            args.ready_exec.as_deref(),
            Some(&["/worker".to_owned(), "echo".into(), "ok".into()][..])
        );
        assert_eq!(args.command, ["/worker", "serve"]);
        assert_eq!(args.ports, [(8080, String::new())]);
    }

    #[test]
    fn readiness_checks_exclude_each_other_and_bad_values_name_the_flag() {
        let err = parse(&["--ready-tcp", "80", "--ready-http", "80"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse(&["--env", "FOO"]).unwrap_err().to_string();
        assert!(
            err.contains("--env <K=V>") && err.contains("expected K=V"),
            "{err}"
        );
        let err = parse(&["--gpu-memory", "12XB"]).unwrap_err().to_string();
        assert!(
            err.contains("--gpu-memory") && err.contains("unknown unit"),
            "{err}"
        );
        let err = parse(&["--idle-timeout", "30"]).unwrap_err().to_string();
        assert!(
            err.contains("--idle-timeout") && err.contains("30s"),
            "{err}"
        );
    }

    #[test]
    fn apply_changes_only_what_was_given() {
        let mut spec = parse(&[
            "--image", "a", "--gpus", "1", "--env", "A=1", "--port", "80",
        ])
        .unwrap()
        .to_spec();
        parse(&["--env", "B=2", "--gpu-memory", "1GiB"])
            .unwrap()
            .apply(&mut spec);
        assert_eq!(spec.image, "a");
        assert_eq!(spec.gpus.as_ref().unwrap().count, 1);
        assert_eq!(spec.gpus.as_ref().unwrap().min_memory_bytes, 1 << 30);
        assert_eq!(spec.env.len(), 2);
        assert_eq!(spec.ports.len(), 1);
        assert!(SpecArgs::default().given().is_empty());
        assert_eq!(
            parse(&["--gpus", "1", "--", "x"]).unwrap().given(),
            ["-- COMMAND", "--gpus"]
        );
    }

    #[test]
    fn restart_and_egress_flags_fill_the_spec() {
        let p = Probe::try_parse_from([
            "t",
            "--image",
            "x",
            "--restart",
            "on-failure:5",
            "--egress",
            "deny",
        ])
        .unwrap();
        let spec = p.spec.to_spec();
        let restart = spec.restart.unwrap();
        assert_eq!(
            (restart.mode(), restart.max_restarts),
            (RestartMode::OnFailure, 5)
        );
        assert_eq!(spec.network.unwrap().egress(), Egress::Deny);
        assert_eq!(
            parse_restart("on-failure").unwrap().max_restarts,
            0,
            "the broker's default applies"
        );
        assert_eq!(parse_restart("never").unwrap().mode(), RestartMode::Never);
        for bad in ["always", "never:2", "on-failure:x"] {
            assert!(parse_restart(bad).is_err(), "{bad}");
        }
    }
}
