//! Parsers for flag values. Each returns a message that says what was wrong and what is
//! accepted; clap prefixes it with the flag's name, so a bad value reads as
//! `invalid value 'FOO' for '--env <K=V>': expected K=V, such as FOO=bar`.

use std::time::Duration;

use hearth_sdk::proto::v1::SessionState;

/// `K=V` (the value may be empty or contain `=`; the key may not be empty).
pub fn key_value(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        Some(_) => Err("the key before '=' is empty; expected K=V, such as FOO=bar".to_owned()),
        None => Err("expected K=V, such as FOO=bar (no '=' found)".to_owned()),
    }
}

/// A byte size such as `40GiB`, `512MiB`, `1.5G` or a plain `1024`: the same rules as the
/// agent's `--simulate-gpu-memory`.
pub use hearth_sdk::size::parse as size;

/// A duration with units, such as `30m`, `1h30m`, `90s` or `500ms`.
pub fn duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "a unit is needed, such as {s}s or {s}m (s, m, h, d; ms for milliseconds)"
        ));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration such as 30s, 10m, 1h30m or 500ms"))
}

/// A port number, 1-65535.
pub fn port(input: &str) -> Result<u16, String> {
    match input.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a TCP port number, 1-65535".to_owned()),
        Ok(p) => Ok(p),
    }
}

/// `PORT` or `PORT:NAME`, for `--port`.
pub fn port_spec(input: &str) -> Result<(u16, String), String> {
    let (p, name) = input.split_once(':').unwrap_or((input, ""));
    Ok((port(p)?, name.to_owned()))
}

/// `PORT` or `PORT/path`, for `--ready-http`; the path defaults to `/`.
pub fn http_probe(input: &str) -> Result<(u16, String), String> {
    let (p, path) = match input.find('/') {
        Some(i) => (&input[..i], &input[i..]),
        None => (input, "/"),
    };
    let port =
        port(p).map_err(|e| format!("{e}; expected PORT or PORT/path, such as 8080/healthz"))?;
    Ok((port, path.to_owned()))
}

/// `Name: value`, as curl's `-H` takes it.
pub fn header(input: &str) -> Result<(String, String), String> {
    match input.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() && !name.trim().contains(' ') => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err("expected 'Name: value', such as 'Content-Type: application/json'".to_owned()),
    }
}

/// CPU cores such as `2` or `0.5`, as thousandths of a core.
pub fn cpus(input: &str) -> Result<u32, String> {
    let bad = || "expected a number of CPU cores, such as 2 or 0.5".to_owned();
    let cores: f64 = input.trim().parse().map_err(|_| bad())?;
    if !cores.is_finite() || cores <= 0.0 {
        return Err(bad());
    }
    let millis = (cores * 1000.0).round();
    if millis < 1.0 || millis > f64::from(u32::MAX) {
        return Err("out of range: at least 0.001 cores".to_owned());
    }
    Ok(millis as u32)
}

/// A session state: `ready`, `READY` or `SESSION_STATE_READY`.
pub fn session_state(input: &str) -> Result<SessionState, String> {
    let upper = input.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SESSION_STATE_") {
        upper
    } else {
        format!("SESSION_STATE_{upper}")
    };
    match SessionState::from_str_name(&name) {
        Some(s) if s != SessionState::Unspecified => Ok(s),
        _ => Err(
            "expected one of pending, placed, starting, ready, paused, stopping, stopped, \
                  failed, lost"
                .to_owned(),
        ),
    }
}

/// A state's short name for tables: `SESSION_STATE_READY` → `READY`.
pub fn short_state<'a>(full: &'a str, prefix: &str) -> &'a str {
    full.strip_prefix(prefix).unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(key_value("A=b"), Ok(("A".into(), "b".into())));
        assert_eq!(key_value("A="), Ok(("A".into(), "".into())));
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(key_value("FOO").unwrap_err().contains("expected K=V"));
        assert!(key_value("=x").unwrap_err().contains("key"));
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("30").unwrap_err().contains("30s"));
        assert!(duration("soon").unwrap_err().contains("such as 30s"));
    }

    #[test]
    fn ports_probes_and_headers() {
        assert_eq!(port("8080"), Ok(8080));
        assert!(port("0").is_err());
        assert!(port("70000").is_err());
        assert_eq!(port_spec("8080"), Ok((8080, String::new())));
        assert_eq!(port_spec("8080:http"), Ok((8080, "http".into())));
        assert_eq!(http_probe("8080"), Ok((8080, "/".into())));
        assert_eq!(http_probe("8080/healthz"), Ok((8080, "/healthz".into())));
        assert!(http_probe("x/healthz").unwrap_err().contains("PORT/path"));
        assert_eq!(
            header("Content-Type: text/plain"),
            Ok(("Content-Type".into(), "text/plain".into()))
        );
        assert_eq!(header("X-Empty:"), Ok(("X-Empty".into(), "".into())));
        assert!(header("no colon").is_err());
        assert!(header(": v").is_err());
    }

    #[test]
    fn cpus_become_millis() {
        assert_eq!(cpus("2"), Ok(2000));
        assert_eq!(cpus("0.5"), Ok(500));
        assert!(cpus("0").is_err());
        assert!(cpus("-1").is_err());
        assert!(cpus("lots").is_err());
    }

    #[test]
    fn states_take_short_and_full_names() {
        assert_eq!(session_state("ready"), Ok(SessionState::Ready));
        assert_eq!(session_state("PAUSED"), Ok(SessionState::Paused));
        assert_eq!(
            session_state("SESSION_STATE_FAILED"),
            Ok(SessionState::Failed)
        );
        assert!(session_state("unspecified").is_err());
        assert!(session_state("sleepy").unwrap_err().contains("ready"));
        assert_eq!(
            short_state("SESSION_STATE_READY", "SESSION_STATE_"),
            "READY"
        );
    }
}
