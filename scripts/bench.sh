#!/usr/bin/env bash
# Runs a Hearth benchmark on optimised builds; it prints figures and, with --json, ends with
# one JSON line. Every subcommand of hearth-bench (`hearth-bench --help`) goes through here.
#   scripts/bench.sh turns --json   Invoke turn latency; needs Docker (the test worker image is
#                                   built locally; nothing is pulled)
#   scripts/bench.sh pool --json    warm-pool claim latency; process runtime, no Docker needed
#   scripts/bench.sh scale --json   one broker on etcd vs 1,000 SIMULATED hosts x 8 GPUs:
#                                   placement latency, broker RSS and CPU, double bookings;
#                                   needs etcd (`hearth-bench scale --help` for the flags)
#   scripts/bench.sh chaos --json   turns under random faults (leader kill, agent kill, etcd
#                                   restart, network cut) on etcd, 3 brokers and 3-4 agents,
#                                   then invariants; needs etcd, uses Docker and (as root)
#                                   network namespaces (`hearth-bench chaos --help`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p hearth-broker -p hearth-agent -p hearth-tests --bins
exec target/release/hearth-bench "$@"
