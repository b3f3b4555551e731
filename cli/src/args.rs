//! The command tree. Doc comments here are the `--help` text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use hearth_sdk::proto::v1::SessionState;

use crate::{parse, spec::SpecArgs};

/// The broker a command talks to when neither --broker nor HEARTH_BROKER says otherwise.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:7700";

/// Persistent GPU sessions for AI agents: the command line for a Hearth broker.
///
/// A session is one warm workload on a GPU host; every turn (`exec`, `invoke`) reaches that
/// same workload, so its model stays in VRAM between calls.
#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version = hearth_sdk::VERSION,
    propagate_version = true,
    after_help = "Examples:\n  \
        hearth sessions create --image my-model:latest --gpus 1 --port 8080 --ready-tcp 8080\n  \
        hearth sessions exec 01J... -- nvidia-smi\n  \
        hearth sessions invoke 01J... 8080 /v1/completions -d @prompt.json\n  \
        hearth nodes ls\n\n\
        Exit codes: 0 ok, 1 error, 2 usage error; `sessions exec` exits with the command's code."
)]
pub struct Cli {
    /// Connection and output options.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The broker's gRPC URL (http:// or https://), or several, comma-separated. With
    /// several, a broker that cannot be reached is skipped for the next, and a standby
    /// leads the way to the leader (or, when the leader's advertised URL cannot be dialled
    /// from here, the list is tried in turn).
    #[arg(
        long,
        env = "HEARTH_BROKER",
        default_value = DEFAULT_BROKER,
        global = true,
        help_heading = "Global options"
    )]
    pub broker: String,

    /// Token sent as `authorization: Bearer <token>`.
    #[arg(
        long,
        env = "HEARTH_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,

    /// PEM file of the CA that signed the broker's certificate (https:// only; the system
    /// roots otherwise).
    #[arg(
        long,
        value_name = "FILE",
        env = "HEARTH_CA",
        global = true,
        help_heading = "Global options"
    )]
    pub ca: Option<PathBuf>,

    /// The name the broker's certificate must hold, whatever host the URL names: for
    /// brokers dialled by IP address or through a forwarded port (https:// only).
    #[arg(
        long,
        value_name = "NAME",
        env = "HEARTH_TLS_SERVER_NAME",
        global = true,
        help_heading = "Global options"
    )]
    pub tls_server_name: Option<String>,

    /// Machine-readable output: the canonical proto3 JSON (as grpcurl prints it); one
    /// object per line for streams.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and use sessions: exec, invoke, keep-alive, pause, resume, delete.
    #[command(subcommand, visible_alias = "session")]
    Sessions(Sessions),
    /// GPU hosts: list, inspect, cordon, uncordon, drain (operators).
    #[command(subcommand, visible_alias = "node")]
    Nodes(Nodes),
    /// Named session specs with warm pools of ready sessions.
    #[command(subcommand, visible_alias = "template")]
    Templates(Templates),
    /// Stream cluster events (nodes, sessions, leadership) until Ctrl-C.
    Events(EventsArgs),
    /// A development CA: broker and node certificates for TLS (needs no broker).
    #[command(subcommand)]
    Certs(crate::commands::certs::Certs),
    /// Client tokens: made, listed and revoked through the broker, or made offline for a
    /// broker's [[auth.tokens]].
    #[command(subcommand)]
    Token(crate::commands::token::Token),
    /// Your tenant's credentials for private image registries: login, ls, logout.
    #[command(subcommand, visible_alias = "registries")]
    Registry(crate::commands::registry::Registry),
}

/// `hearth sessions ...`
// Parsed once per run, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Sessions {
    /// Start a session and wait until it is READY; prints its id.
    ///
    /// Progress (placement, start, readiness) goes to stderr; stdout gets the session id,
    /// or the whole session with --json. A session that fails to start exits 1 with the
    /// reason.
    #[command(after_help = "Examples:\n  \
        hearth sessions create --image my-model:latest --gpus 1 --gpu-memory 40GiB \\\n      \
        --port 8080 --ready-http 8080/healthz --idle-timeout 30m\n  \
        hearth sessions create --image /usr/local/bin/worker --port 8080 --ready-tcp 8080 \
        -- /usr/local/bin/worker serve\n  \
        hearth sessions create --template llama-8b --label user=alice")]
    Create(CreateArgs),

    /// List sessions (all pages) with their state, node, age and idle deadline.
    #[command(visible_alias = "list")]
    Ls(ListArgs),

    /// Show one session in full.
    Get(IdArg),

    /// Run a command inside a session (a tool-call turn).
    ///
    /// stdout and stderr stream to this terminal as the command writes them, and `hearth`
    /// exits with the command's exit code (124 if it timed out, 1 if a signal killed it).
    #[command(after_help = "Examples:\n  \
        hearth sessions exec 01J... -- python -c 'print(1)'\n  \
        hearth sessions exec 01J... --stdin prompt.txt -- ./tool --read-stdin")]
    Exec(ExecArgs),

    /// Send an HTTP request to a port of a session (a turn against its server).
    ///
    /// The body streams to stdout as the workload writes it (server-sent events flow).
    #[command(after_help = "Examples:\n  \
        hearth sessions invoke 01J... 8080 /healthz\n  \
        hearth sessions invoke 01J... 8080 /v1/completions -H 'Content-Type: application/json' \
        -d @prompt.json\n  \
        hearth sessions invoke -i 01J... 8080 /stream")]
    Invoke(InvokeArgs),

    /// Mark a session active now, pushing its idle deadline out; prints the new deadline.
    #[command(visible_alias = "keep-alive")]
    Keepalive(IdArg),

    /// Freeze a session's CPU, keeping its memory and VRAM.
    Pause(IdArg),

    /// Unfreeze a paused session (a turn does this by itself).
    Resume(IdArg),

    /// Stop sessions, remove their workloads and free their GPUs.
    #[command(visible_alias = "delete")]
    Rm(IdsArg),

    /// Print a session's state changes until it ends.
    Watch(IdArg),
}

/// One session id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The session id (`hearth sessions ls` lists them).
    pub id: String,
}

/// Session ids.
#[derive(Debug, Args)]
pub struct IdsArg {
    /// Session ids.
    #[arg(required = true, num_args = 1..)]
    pub ids: Vec<String>,
}

/// `sessions create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Create from this template (claims a warm session when its pool has one) instead of
    /// --image and the other spec flags.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,

    /// A label for the session, K=V (repeatable); `sessions ls --label` filters on them.
    #[arg(long = "label", value_name = "K=V", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,

    /// Idempotency key: creating again with the same id returns the same session
    /// (default: a fresh one).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    /// Return once the session is placed instead of waiting until it is READY.
    #[arg(long)]
    pub no_wait: bool,

    /// The session's spec.
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// `sessions ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sessions in this state, such as ready or paused (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse::session_state)]
    pub states: Vec<SessionState>,

    /// Only sessions with this label, K=V (repeatable; all must match).
    #[arg(long = "label", value_name = "K=V", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
}

/// `sessions exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The session id.
    pub id: String,

    /// The command and its arguments (put them after `--` when they start with '-').
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true,
          value_name = "ARGV")]
    pub argv: Vec<String>,

    /// Feed this file to the command's stdin ('-' reads this terminal's stdin).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<String>,

    /// An extra environment variable for the command, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,

    /// Kill the command after this long, such as 30s (broker default otherwise).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub timeout: Option<Duration>,

    /// Working directory inside the session.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
}

/// `sessions invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The session id.
    pub id: String,

    /// A port listed in the session's spec.
    #[arg(value_parser = parse::port)]
    pub port: u16,

    /// Path and query, such as /v1/completions.
    pub path: String,

    /// HTTP method (default GET, or POST with -d).
    #[arg(short = 'X', long, value_name = "METHOD")]
    pub method: Option<String>,

    /// A request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER", value_parser = parse::header)]
    pub headers: Vec<(String, String)>,

    /// Request body: text, @FILE for a file's contents, or @- for stdin.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,

    /// Print the status line and headers before the body.
    #[arg(short = 'i', long)]
    pub include: bool,

    /// Exit 22 (as curl --fail does) when the status is 400 or more.
    #[arg(short = 'f', long)]
    pub fail: bool,

    /// Abandon the request after this long (broker default otherwise).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub timeout: Option<Duration>,
}

/// `hearth nodes ...`
#[derive(Debug, Subcommand)]
pub enum Nodes {
    /// List nodes: liveness, schedulability, GPUs in use, sessions, telemetry age.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one node: inventory, latest GPU telemetry and sessions.
    Get(NodeArg),
    /// Stop new placements on a node; its sessions keep running.
    Cordon(NodeArg),
    /// Allow placements on a cordoned node again.
    Uncordon(NodeArg),
    /// Cordon a node and stop its sessions between turns, by a deadline.
    ///
    /// Waits until the node has no sessions left (or the deadline passes), printing
    /// progress to stderr, unless --no-wait is given.
    Drain(DrainArgs),
}

/// One node id.
#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node id (`hearth nodes ls` lists them).
    pub id: String,
}

/// `nodes drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node id.
    pub id: String,
    /// Sessions still running after this long are stopped even mid-turn.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, default_value = "10m")]
    pub deadline: Duration,
    /// Return once the drain has started instead of waiting for the node to empty.
    #[arg(long)]
    pub no_wait: bool,
}

/// `hearth templates ...`
#[derive(Debug, Subcommand)]
pub enum Templates {
    /// Create a template from spec flags, optionally with a warm pool.
    #[command(after_help = "Example:\n  \
        hearth templates create llama-8b --image my-llama:latest --gpus 1 --port 8080 \
        --ready-http 8080/healthz --warm-pool 2 --description 'Llama 3 8B, warm'")]
    Create(TemplateArgs),
    /// List templates with their warm pools (ready/target).
    #[command(visible_alias = "list")]
    Ls,
    /// Show one template in full.
    Get(TemplateName),
    /// Change a template: the flags given replace those fields, the rest stay.
    Update(TemplateArgs),
    /// Delete templates and stop their unclaimed warm sessions.
    #[command(visible_alias = "delete")]
    Rm(TemplateNames),
}

/// A template name.
#[derive(Debug, Args)]
pub struct TemplateName {
    /// The template's name.
    pub name: String,
}

/// Template names.
#[derive(Debug, Args)]
pub struct TemplateNames {
    /// Template names.
    #[arg(required = true, num_args = 1..)]
    pub names: Vec<String>,
}

/// `templates create` and `templates update`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Name: lowercase letters, digits and '-', up to 63 characters.
    pub name: String,
    /// What the template is for.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Keep this many READY, unclaimed sessions for instant creates.
    #[arg(long, value_name = "N")]
    pub warm_pool: Option<u32>,
    /// The spec every session from this template gets.
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// `hearth events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events whose kind starts with this, such as node. or session.ready
    /// (repeatable).
    #[arg(long = "kind", value_name = "PREFIX")]
    pub kinds: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hearth").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["sessions", "ls", "--json", "--broker", "http://b:1"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.broker, "http://b:1");
        let cli = parse(&[
            "nodes",
            "ls",
            "--broker",
            "https://10.0.0.1:7700,https://10.0.0.2:7700",
            "--tls-server-name",
            "broker.internal",
        ])
        .unwrap();
        assert_eq!(
            cli.global.broker,
            "https://10.0.0.1:7700,https://10.0.0.2:7700"
        );
        assert_eq!(
            cli.global.tls_server_name.as_deref(),
            Some("broker.internal")
        );
    }

    #[test]
    fn exec_takes_argv_with_or_without_a_separator() {
        for args in [
            &[
                "sessions",
                "exec",
                "ID",
                "--timeout",
                "5s",
                "--",
                "ls",
                "-la",
            ][..],
            &["sessions", "exec", "ID", "--timeout", "5s", "ls", "-la"][..],
        ] {
            let Command::Sessions(Sessions::Exec(exec)) = parse(args).unwrap().command else {
                panic!("not exec");
            };
            assert_eq!(exec.argv, ["ls", "-la"]);
            assert_eq!(exec.timeout, Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn invoke_takes_curl_style_flags() {
        let cli = parse(&[
            "sessions", "invoke", "ID", "8080", "/echo", "-X", "PUT", "-H", "A: b", "-d", "x", "-i",
        ])
        .unwrap();
        let Command::Sessions(Sessions::Invoke(invoke)) = cli.command else {
            panic!("not invoke");
        };
        assert_eq!(
            (
                invoke.port,
                invoke.method.as_deref(),
                invoke.data.as_deref()
            ),
            (8080, Some("PUT"), Some("x"))
        );
        assert_eq!(invoke.headers, [("A".to_owned(), "b".to_owned())]);
        assert!(invoke.include);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let err = parse(&["sessions", "create", "--image", "x", "--env", "FOO"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["sessions", "ls", "--state", "sleepy"]).unwrap_err();
        assert!(err.to_string().contains("--state"), "{err}");
        assert!(parse(&["sessions", "rm"]).is_err(), "rm needs an id");
    }
}
