//! Readable output: aligned tables, key/value views, human ages and sizes.
//!
//! Ages compare the broker's timestamps with this machine's clock. They are for people
//! to read; nothing decides on them.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

/// Columns separated by two spaces, each as wide as its widest cell. The last column is
/// not padded, so lines carry no trailing spaces.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header, each ending in '\n'.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        fn cell(row: &[String], i: usize) -> &str {
            row.get(i).map(String::as_str).unwrap_or("")
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(width(cell(row, i)));
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let text = cell(row, i);
                line.push_str(text);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', w - width(text) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width: characters, which is right for everything Hearth prints.
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `KEY  value` lines with the values aligned; empty values are shown as `-`.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let value = if value.is_empty() { "-" } else { value };
        let _ = writeln!(out, "{key:<w$}  {value}");
    }
    out
}

/// A short human duration: `850ms`, `4.2s`, `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..10 => format!("{:.1}s", d.as_secs_f64()),
        10..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The std time of a protobuf timestamp that is set.
pub fn time_of(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(hearth_sdk::time::system_time)
        .filter(|t| *t > SystemTime::UNIX_EPOCH)
}

/// How long ago `ts` was (`3m12s`), or `-` when it is unset.
pub fn age(ts: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match time_of(ts) {
        Some(t) => human(now.duration_since(t).unwrap_or_default()),
        None => "-".to_owned(),
    }
}

/// `in 29m59s` or `3m12s ago`, or `-` when it is unset.
pub fn relative(ts: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match time_of(ts) {
        None => "-".to_owned(),
        Some(t) => match t.duration_since(now) {
            Ok(ahead) => format!("in {}", human(ahead)),
            Err(behind) => format!("{} ago", human(behind.duration())),
        },
    }
}

/// `2026-01-02T03:04:05Z (3m12s ago)`, or empty when unset.
pub fn timestamp(ts: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match time_of(ts) {
        Some(t) => format!(
            "{} ({})",
            humantime::format_rfc3339_seconds(t),
            relative(ts, now)
        ),
        None => String::new(),
    }
}

/// A byte size with a binary unit: `80GiB`, `1.5MiB`, `512B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// `k=v,k2=v2`, sorted by key.
pub fn labels<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<_> = map.into_iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A protobuf duration as humantime (`30m`), or empty when unset.
pub fn duration(d: Option<&prost_types::Duration>) -> String {
    d.and_then(|d| std::time::Duration::try_from(*d).ok())
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATE", "LABELS"]);
        t.row(vec!["a".into(), "READY".into(), "x=1".into()]);
        t.row(vec!["longer-id".into(), "PAUSED".into(), String::new()]);
        t.row(vec!["b".into()]);
        assert_eq!(
            t.render(),
            "ID         STATE   LABELS\n\
             a          READY   x=1\n\
             longer-id  PAUSED\n\
             b\n"
        );
    }

    #[test]
    fn key_values_align_and_show_blanks_as_dashes() {
        let text = key_values(&[("ID", "abc".into()), ("TEMPLATE", String::new())]);
        assert_eq!(text, "ID        abc\nTEMPLATE  -\n");
    }

    #[test]
    fn human_durations_are_short() {
        let cases = [
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(1234), "1.2s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_secs(192), "3m12s"),
            (Duration::from_secs(2 * 3600 + 5 * 60 + 9), "2h5m"),
            (Duration::from_secs(3 * 86400 + 4 * 3600), "3d4h"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want, "{d:?}");
        }
    }

    #[test]
    fn ages_and_deadlines_are_relative_to_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64| {
            Some(hearth_sdk::time::timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            ))
        };
        assert_eq!(age(at(1_000_000 - 192).as_ref(), now), "3m12s");
        assert_eq!(relative(at(1_000_000 + 60).as_ref(), now), "in 1m0s");
        assert_eq!(relative(at(1_000_000 - 30).as_ref(), now), "30s ago");
        assert_eq!(age(None, now), "-");
        assert_eq!(
            age(Some(&prost_types::Timestamp::default()), now),
            "-",
            "the zero timestamp means unset"
        );
        assert_eq!(
            timestamp(at(1_000_000 - 30).as_ref(), now),
            "1970-01-12T13:46:10Z (30s ago)"
        );
    }

    #[test]
    fn sizes_and_labels() {
        assert_eq!(bytes(80 << 30), "80GiB");
        assert_eq!(bytes(3 << 29), "1.5GiB");
        assert_eq!(bytes(512), "512B");
        let map: std::collections::HashMap<String, String> =
            [("b".into(), "2".into()), ("a".into(), "1".into())].into();
        assert_eq!(labels(&map), "a=1,b=2");
        assert_eq!(
            duration(Some(&prost_types::Duration {
                seconds: 1800,
                nanos: 0
            })),
            "30m"
        );
    }
}
