#!/usr/bin/env bash
# Runs Hearth on this machine: a broker with the embedded store and one node agent with
# two simulated GPUs, ready to take sessions on 127.0.0.1:7700. Sessions run in Docker
# when an engine answers, else as processes. Ctrl-C stops both.
#
#   scripts/dev.sh            # simulated GPUs (labelled simulated everywhere)
#   scripts/dev.sh --nvml     # real GPUs through NVML (needs the NVIDIA driver)
set -euo pipefail
cd "$(dirname "$0")/.."

gpu_flags=(--simulate-gpus 2 --simulate-gpu-model "Simulated H100 80GB" --simulate-gpu-memory 80GiB)
if [[ "${1:-}" == "--nvml" ]]; then
    gpu_flags=()
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is required: install Rust from https://rustup.rs" >&2
    exit 1
fi
echo "==> building hearth-broker, hearth-agent and hearth (the CLI)"
cargo build --quiet -p hearth-broker -p hearth-agent -p hearth-cli --bins

mkdir -p hearth-data
pids=()
cleanup() {
    trap - EXIT INT TERM
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "==> starting hearth-broker (embedded store in hearth-data/)"
./target/debug/hearth-broker --store-path hearth-data/broker.hearth-store &
pids+=($!)
for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/7701) 2>/dev/null; then break; fi
    sleep 0.1
done

# Sessions run as Docker containers when an engine answers, else as child processes.
runtime=process
if docker info >/dev/null 2>&1; then runtime=docker; fi
echo "==> starting hearth-agent (${gpu_flags[*]:-real GPUs via NVML}; $runtime runtime)"
./target/debug/hearth-agent --broker http://127.0.0.1:7700 "${gpu_flags[@]}" \
    --runtime "$runtime" --state-dir "$PWD/hearth-data/agent" &
pids+=($!)

cat <<MSG
==> Hearth is running.
    gRPC    127.0.0.1:7700   try: grpcurl -plaintext 127.0.0.1:7700 hearth.v1.Admin/ListNodes
    broker  http://127.0.0.1:7701/metrics   /ready   /live
    agent   http://127.0.0.1:7702/metrics   /ready   /live
    CLI     in another shell: export PATH="$PWD/target/debug:\$PATH"; hearth nodes ls
    Ctrl-C stops both.
MSG
wait -n "${pids[@]}"
