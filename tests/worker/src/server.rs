//! The model-server stand-in: warm up, count the warm-up on disk, then serve HTTP.
//!
//! Signals: std offers no signal handling without `unsafe`/libc, which this crate does not
//! use, so SIGTERM keeps its default action and terminates the process at once (by signal,
//! not with exit status 0). As PID 1 of a container the kernel ignores a default-action
//! SIGTERM, so `docker stop` ends it with SIGKILL once the grace period is over; give it a
//! short grace in tests.

use std::fs;
use std::io::{self, BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::{self, Chunked, Request};

/// File, under `STATE_DIR`, holding how many times the worker has warmed up.
const WARMUPS_FILE: &str = "hearth-test-worker.warmups";

/// What `/state` reports.
struct State {
    warmups: u64,
    requests: AtomicU64,
    counter: AtomicU64,
    pid: u32,
    hostname: String,
    started_unix_ms: u128,
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a non-negative integer, got {raw:?}")),
        _ => Ok(default),
    }
}

/// Serves until killed.
pub fn serve() -> Result<ExitCode, String> {
    let port = env_number("PORT", 8080)?;
    let port = u16::try_from(port).map_err(|_| format!("PORT {port} is out of range"))?;
    let warmup_ms = env_number("WARMUP_MS", 0)?;
    let state_dir = std::env::var_os("STATE_DIR")
        .filter(|d| !d.is_empty())
        // Default: the temporary directory (TMPDIR), which is private per session under
        // both runtimes.
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());

    // The "model load": nothing listens until it is over, so a TCP probe means warm.
    thread::sleep(Duration::from_millis(warmup_ms));
    let warmups = record_warmup(&state_dir)
        .map_err(|e| format!("recording the warm-up under {}: {e}", state_dir.display()))?;

    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("binding 0.0.0.0:{port}: {e}"))?;
    let state = Arc::new(State {
        warmups,
        requests: AtomicU64::new(0),
        counter: AtomicU64::new(0),
        pid: std::process::id(),
        hostname: hostname(),
        started_unix_ms,
    });
    eprintln!(
        "hearth-test-worker: warm after {warmup_ms} ms (warm-up #{warmups}), listening on 0.0.0.0:{port}"
    );
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let state = Arc::clone(&state);
                thread::spawn(move || {
                    if let Err(e) = connection(stream, &state) {
                        eprintln!("hearth-test-worker: connection: {e}");
                    }
                });
            }
            // Out of descriptors and the like: keep serving the connections we have.
            Err(e) => {
                eprintln!("hearth-test-worker: accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bumps and returns the persisted warm-up count (written to a temporary file, then
/// renamed, so a crash never leaves it half-written).
fn record_warmup(dir: &Path) -> io::Result<u64> {
    let path = dir.join(WARMUPS_FILE);
    let previous = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let warmups = previous + 1;
    let tmp = dir.join(format!("{WARMUPS_FILE}.{}", std::process::id()));
    fs::write(&tmp, format!("{warmups}\n"))?;
    fs::rename(&tmp, &path)?;
    Ok(warmups)
}

/// `/etc/hostname` (docker writes the container id prefix there), else `$HOSTNAME`.
fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

fn connection(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    loop {
        let request = match http::read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = format!("bad request: {e}\n");
                return http::write_response(
                    &mut writer,
                    400,
                    "text/plain",
                    body.as_bytes(),
                    false,
                );
            }
            Err(e) => return Err(e),
        };
        let keep_alive = request.keep_alive();
        respond(&request, state, &mut writer, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Answers one request. `requests` counts the work endpoints (`/echo`, `/incr`,
/// `/stream`), not probes (`/healthz`) or `/state`, so polling does not disturb it.
fn respond<W: io::Write>(
    request: &Request,
    state: &State,
    w: &mut W,
    keep_alive: bool,
) -> io::Result<()> {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/healthz") => http::write_response(w, 200, "text/plain", b"ok", keep_alive),
        ("GET", "/state") => {
            let body = format!(
                r#"{{"warmups":{},"requests":{},"counter":{},"pid":{},"hostname":"{}","started_unix_ms":{}}}"#,
                state.warmups,
                state.requests.load(Ordering::SeqCst),
                state.counter.load(Ordering::SeqCst),
                state.pid,
                json_escape(&state.hostname),
                state.started_unix_ms,
            );
            http::write_response(w, 200, "application/json", body.as_bytes(), keep_alive)
        }
        ("POST", "/echo") => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            http::write_response(
                w,
                200,
                "application/octet-stream",
                &request.body,
                keep_alive,
            )
        }
        ("POST", "/incr") => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let counter = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
            http::write_response(
                w,
                200,
                "text/plain",
                counter.to_string().as_bytes(),
                keep_alive,
            )
        }
        ("GET", "/stream") => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let param = |name: &str, default: u64| {
                http::query_param(&request.query, name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let n = param("n", 5);
            let delay = Duration::from_millis(param("delay_ms", 50));
            let mut body = Chunked::start(w, 200, "text/event-stream", keep_alive)?;
            for i in 0..n {
                if i > 0 {
                    thread::sleep(delay);
                }
                body.chunk(format!("data: token-{i}\n\n").as_bytes())?;
            }
            body.finish()
        }
        _ => http::write_response(w, 404, "text/plain", b"not found\n", keep_alive),
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            warmups: 1,
            requests: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            pid: 7,
            hostname: "h\"x".into(),
            started_unix_ms: 5,
        }
    }

    fn call(state: &State, raw: &str) -> String {
        let request = http::read_request(&mut BufReader::new(raw.as_bytes()))
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        respond(&request, state, &mut out, true).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn incr_keeps_state_and_state_reports_it() {
        let s = state();
        assert!(call(&s, "POST /incr HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n1"));
        assert!(call(&s, "POST /incr HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n2"));
        call(&s, "GET /healthz HTTP/1.1\r\n\r\n");
        let body = call(&s, "GET /state HTTP/1.1\r\n\r\n");
        assert!(
            body.ends_with(
                r#"{"warmups":1,"requests":2,"counter":2,"pid":7,"hostname":"h\"x","started_unix_ms":5}"#
            ),
            "{body}"
        );
    }

    #[test]
    fn echo_stream_and_not_found() {
        let s = state();
        let echo = call(&s, "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(echo.contains("application/octet-stream") && echo.ends_with("\r\n\r\nabc"));
        let stream = call(&s, "GET /stream?n=2&delay_ms=0 HTTP/1.1\r\n\r\n");
        assert!(stream.contains("Transfer-Encoding: chunked"), "{stream}");
        assert!(
            stream
                .ends_with("\r\n\r\nf\r\ndata: token-0\n\n\r\nf\r\ndata: token-1\n\n\r\n0\r\n\r\n")
        );
        assert!(call(&s, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(call(&s, "GET /echo HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn warmups_persist_across_runs() {
        let dir = std::env::temp_dir().join(format!(
            "hearth-test-worker-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(record_warmup(&dir).unwrap(), 1);
        assert_eq!(record_warmup(&dir).unwrap(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
