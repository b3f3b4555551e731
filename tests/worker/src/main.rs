//! `hearth-test-worker`: a small but real stand-in for a model server, used by Hearth's
//! tests, that makes "no re-warm" observable.
//!
//! `hearth-test-worker [serve]` sleeps `WARMUP_MS` (a model load) *before* binding
//! `0.0.0.0:$PORT`, so a TCP readiness probe passes only once it is warm; it then counts
//! the warm-up in `$STATE_DIR/hearth-test-worker.warmups` (a restarted process or
//! container reports 2) and serves HTTP/1.1 with keep-alive: `/healthz`, `/state`,
//! `/echo`, `/incr` (a counter held in memory) and `/stream` (chunked server-sent events).
//!
//! The other subcommands are tools for `Exec` turns inside a `FROM scratch` image, where no
//! shell exists: `echo`, `cat`, `stderr`, `exit`, `sleep`, `env`, `lines`, and `connect`
//! (can this session open a TCP connection there?).
//!
//! It depends on std only, so it links statically (`-C target-feature=+crt-static`).
//!
//! # Layout
//! - `server.rs`: the HTTP endpoints and the warm-up counter.
//! - `http.rs`: request parsing, query strings, response framing.
//! - `tools.rs`: the `Exec` subcommands.

mod http;
mod server;
mod tools;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        None => ("serve", &[][..]),
        Some((command, rest)) => (command.as_str(), rest),
    };
    let result = match command {
        "serve" => server::serve(),
        "echo" => tools::echo(rest),
        "cat" => tools::cat(),
        "stderr" => tools::stderr(rest),
        "exit" => tools::exit(rest),
        "sleep" => tools::sleep(rest),
        "env" => tools::env(rest),
        "lines" => tools::lines(rest),
        "connect" => tools::connect(rest),
        other => Err(format!("unknown subcommand {other:?}\n{}", tools::USAGE)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("hearth-test-worker: {message}");
            ExitCode::from(2)
        }
    }
}
