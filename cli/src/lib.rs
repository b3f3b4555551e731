//! `hearth`, the command line for a Hearth broker: sessions and their turns, templates,
//! nodes and cluster events.
//!
//! Every command is a thin layer over one or a few gRPC calls made through the Rust SDK
//! (`hearth_sdk::Client`), so it gets the SDK's token, TLS, retries of `UNAVAILABLE` and
//! leader redirects. Human output is aligned tables and key/value views; `--json` prints
//! the canonical proto3 JSON of the same messages, one object per line for streams.
//! Errors say what to do next, and the exit code tells scripts what happened (see
//! `error.rs`).
//!
//! # Layout
//! - `args.rs`: the command tree (clap); its doc comments are the `--help` text.
//! - `spec.rs`: the spec flags shared by `sessions create` and `templates create|update`,
//!   and how they become a `SessionSpec`.
//! - `parse.rs`: flag value parsers (K=V, sizes, durations, ports, headers, states).
//! - `commands.rs`: the connection and output context every command gets; one file per
//!   command group under `commands/` (`sessions`, `nodes`, `templates`, `events`; `certs`
//!   and `token` work on local files and need no broker).
//! - `table.rs`: aligned tables, key/value views, human ages and sizes.
//! - `json.rs`: proto messages as canonical proto3 JSON (through prost-reflect).
//! - `error.rs`: the error type, what each gRPC code tells the user, exit codes.
#![forbid(unsafe_code)]

pub mod args;
pub mod commands;
pub mod error;
pub mod json;
pub mod parse;
pub mod spec;
pub mod table;

use std::process::ExitCode;

use args::{Cli, Command};

/// Runs one parsed command line and returns the process exit code; errors are printed
/// to stderr here.
pub async fn run(cli: Cli) -> ExitCode {
    let result = async {
        commands::check(&cli.command)?;
        // Commands that work on local files only never dial the broker.
        if let Command::Certs(command) = &cli.command {
            return commands::certs::run(command);
        }
        if let Command::Token(commands::token::Token::Create(args)) = &cli.command
            && args.offline()
        {
            return commands::token::run_offline(args);
        }
        let ctx = commands::Ctx::connect(&cli.global).await?;
        match cli.command {
            Command::Sessions(command) => commands::sessions::run(&ctx, command).await,
            Command::Nodes(command) => commands::nodes::run(&ctx, command).await,
            Command::Templates(command) => commands::templates::run(&ctx, command).await,
            Command::Events(args) => commands::events::run(&ctx, args).await,
            Command::Certs(command) => commands::certs::run(&command),
            Command::Token(command) => commands::token::run(&ctx, command).await,
            Command::Registry(command) => commands::registry::run(&ctx, command).await,
        }
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if e.exit_code() == 2 {
                eprintln!("\nFor more information, try '--help'.");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
