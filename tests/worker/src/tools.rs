//! Subcommands for `Exec` turns: a `FROM scratch` image has no shell or coreutils, so the
//! worker brings the few tools the tests run.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

/// The usage text printed for an unknown subcommand.
pub const USAGE: &str = "usage: hearth-test-worker [serve]
       hearth-test-worker echo ARGS...      print ARGS joined by spaces, then a newline
       hearth-test-worker cat               copy stdin to stdout
       hearth-test-worker stderr MSG...     print MSG to stderr
       hearth-test-worker exit N            exit with code N
       hearth-test-worker sleep SECS        sleep (fractions allowed)
       hearth-test-worker env NAME          print the variable's value (exit 1 if unset)
       hearth-test-worker lines N DELAY_MS  print `line 1` .. `line N`, flushing each
       hearth-test-worker connect ADDR MS   open a TCP connection to ADDR (host:port) within
                                            MS milliseconds: prints `connected` (exit 0),
                                            or `failed: <why>` (exit 1)";

type Outcome = Result<ExitCode, String>;

fn arg<'a>(args: &'a [String], index: usize, name: &str) -> Result<&'a str, String> {
    args.get(index)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {name}\n{USAGE}"))
}

fn number<T: std::str::FromStr>(args: &[String], index: usize, name: &str) -> Result<T, String> {
    let raw = arg(args, index, name)?;
    raw.parse()
        .map_err(|_| format!("{name} must be a number, got {raw:?}"))
}

fn io_error(e: io::Error) -> String {
    format!("i/o error: {e}")
}

/// `echo ARGS...`
pub fn echo(args: &[String]) -> Outcome {
    let mut out = io::stdout().lock();
    writeln!(out, "{}", args.join(" ")).map_err(io_error)?;
    out.flush().map_err(io_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `cat`: stdin to stdout until end of input.
pub fn cat() -> Outcome {
    let mut out = io::stdout().lock();
    io::copy(&mut io::stdin().lock(), &mut out).map_err(io_error)?;
    out.flush().map_err(io_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `stderr MSG...`
pub fn stderr(args: &[String]) -> Outcome {
    let mut err = io::stderr().lock();
    writeln!(err, "{}", args.join(" ")).map_err(io_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `exit N`: any `i32`, as `std::process::exit` takes it (the OS keeps the low 8 bits).
pub fn exit(args: &[String]) -> Outcome {
    let code: i32 = number(args, 0, "N")?;
    std::process::exit(code)
}

/// `sleep SECS`
pub fn sleep(args: &[String]) -> Outcome {
    let secs: f64 = number(args, 0, "SECS")?;
    let duration = Duration::try_from_secs_f64(secs).map_err(|e| format!("SECS: {e}"))?;
    thread::sleep(duration);
    Ok(ExitCode::SUCCESS)
}

/// `env NAME`
pub fn env(args: &[String]) -> Outcome {
    let name = arg(args, 0, "NAME")?;
    match std::env::var_os(name) {
        Some(value) => {
            let mut out = io::stdout().lock();
            out.write_all(value.as_encoded_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .map_err(io_error)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("{name} is not set");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `lines N DELAY_MS`: `line 1` to `line N`, each flushed, `DELAY_MS` apart.
pub fn lines(args: &[String]) -> Outcome {
    let n: u64 = number(args, 0, "N")?;
    let delay: u64 = number(args, 1, "DELAY_MS")?;
    let mut out = io::stdout().lock();
    for i in 1..=n {
        if i > 1 {
            thread::sleep(Duration::from_millis(delay));
        }
        writeln!(out, "line {i}").map_err(io_error)?;
        out.flush().map_err(io_error)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `connect ADDR MS`: whether a TCP connection to `ADDR` opens within `MS` milliseconds,
/// from wherever the worker runs (a session's network namespace, for isolation tests).
pub fn connect(args: &[String]) -> Outcome {
    use std::net::{TcpStream, ToSocketAddrs};
    let target = arg(args, 0, "ADDR")?;
    let timeout = Duration::from_millis(number(args, 1, "MS")?);
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("ADDR {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("ADDR {target:?} resolves to nothing"))?;
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => {
            println!("connected");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("failed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
