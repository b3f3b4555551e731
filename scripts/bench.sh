#!/usr/bin/env bash
# Runs a Hearth benchmark on optimised builds; it prints figures and, with --json, ends with
# one JSON line. Needs Docker (the test worker image is built locally; nothing is pulled).
#   scripts/bench.sh turns --json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p hearth-broker -p hearth-agent -p hearth-tests --bins
exec target/release/hearth-bench "$@"
