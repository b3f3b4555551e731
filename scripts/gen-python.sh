#!/usr/bin/env bash
# Regenerates the Python gRPC modules of the `hearth` package (sdk/python) from proto/.
#
#   scripts/gen-python.sh [OUT_DIR]
#
# Writes OUT_DIR/hearth/v1/ (default: sdk/python/src, the checked-in copy): *_pb2.py,
# *_pb2.pyi, *_pb2_grpc.py and __init__.py. The generator is grpcio-tools at the version
# pinned in sdk/python/constraints.txt, installed into a virtualenv on first use
# (HEARTH_GEN_VENV, default target/python-gen), so every run gives the same bytes. A test
# (tests/tests/python_client.rs) fails when the checked-in copy differs from a fresh run.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$repo/sdk/python/src}")"
venv="$(realpath -m "${HEARTH_GEN_VENV:-$repo/target/python-gen}")"
constraints="$repo/sdk/python/constraints.txt"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
fi
# A no-op (no download) once the pinned version is installed.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$constraints" grpcio-tools >&2

target="$out/hearth/v1"
mkdir -p "$target"
# Only generated files go, so a module that left proto/ does not linger.
rm -f "$target"/*_pb2.py "$target"/*_pb2.pyi "$target"/*_pb2_grpc.py "$target"/__init__.py

cd "$repo/proto"
# Relative paths, so nothing about this machine ends up in the output. grpc_tools adds
# its bundled google/protobuf/*.proto to the include path by itself.
"$venv/bin/python" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    hearth/v1/*.proto
cat >"$target/__init__.py" <<'PY'
"""Generated from proto/hearth/v1 by scripts/gen-python.sh. Do not edit."""
PY
echo "generated $(find "$target" -maxdepth 1 -name '*.py*' | wc -l) files in $target" >&2
