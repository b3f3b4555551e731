//! What the benchmarks print: the machine they ran on, their figures as aligned
//! `name: value` lines, and one JSON object as the last line.

/// This machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {} GiB RAM", kib / (1 << 20)));
    format!("{cores} cores, {cpu}{mem}")
}

/// Prints `report` as `name: value` lines, names right-aligned to `width`.
pub fn print(report: &[(&str, String)], width: usize) {
    for (k, v) in report {
        println!("{k:>width$}: {v}");
    }
}

/// `report` plus the machine as one JSON object. Numbers, booleans and objects stay
/// bare; everything else becomes a string.
pub fn json_line(report: &[(&str, String)]) -> String {
    let fields: Vec<String> = report
        .iter()
        .map(|(k, v)| format!("\"{k}\":{}", json_value(v)))
        .chain([format!("\"machine\":{}", json_value(&machine()))])
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn json_value(v: &str) -> String {
    if v.parse::<f64>().is_ok_and(f64::is_finite)
        || v.starts_with('{')
        || v == "true"
        || v == "false"
    {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_keeps_numbers_bare_and_quotes_text() {
        let line = json_line(&[
            ("p50_ms", "1.25".to_owned()),
            ("ok", "true".to_owned()),
            ("errors", "{\"Unavailable\":2}".to_owned()),
            ("store", "embedded \"x\"".to_owned()),
        ]);
        assert!(
            line.starts_with(
                "{\"p50_ms\":1.25,\"ok\":true,\"errors\":{\"Unavailable\":2},\"store\":\"embedded 'x'\",\"machine\":\""
            ),
            "{line}"
        );
    }
}
