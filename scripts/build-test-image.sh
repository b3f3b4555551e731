#!/usr/bin/env bash
# Builds the test worker as a static binary and the `hearth-test-worker:latest` image
# (`FROM scratch`) around it. Nothing is pulled: tests never depend on a registry.
#
# The static build has its own target dir (target/static) so that its RUSTFLAGS do not
# invalidate the main build cache. Quick and idempotent: cargo rebuilds nothing when the
# source is unchanged, and docker's layer cache reuses the image when the binary is the
# same. Prints the image id on stdout (everything else goes to stderr).
#
#   --binary-only   build and check the static binary, print its path, build no image
set -euo pipefail
cd "$(dirname "$0")/.."

image="hearth-test-worker:latest"
target="x86_64-unknown-linux-gnu"
binary="target/static/$target/release/hearth-test-worker"

CARGO_TARGET_DIR=target/static RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release -p hearth-test-worker --target "$target" >&2

# A dynamically linked binary would not even start in a scratch image: fail here, clearly.
if command -v file >/dev/null; then
    if ! file -L "$binary" | grep -Eq 'statically linked|static-pie linked'; then
        echo "error: $binary is not statically linked: $(file -L "$binary")" >&2
        exit 1
    fi
elif ldd "$binary" >/dev/null 2>&1; then
    echo "error: $binary is not statically linked: $(ldd "$binary" 2>&1)" >&2
    exit 1
fi

if [[ ${1:-} == --binary-only ]]; then
    realpath "$binary"
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/hearth-test-worker"
# Scratch has no /tmp; the worker keeps its warm-up count there (STATE_DIR).
mkdir -p "$context/tmp"
cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY tmp/ /tmp/
COPY hearth-test-worker /worker
ENV STATE_DIR=/tmp
ENTRYPOINT ["/worker"]
EOF
# Same bytes and mode each time, so the COPY layer's cache key only changes with the
# binary. (Directory mtimes are not part of docker's cache key.)
chmod 0755 "$context/hearth-test-worker"
chmod 1777 "$context/tmp"

# The classic builder: this docker may have no buildx plugin. Its output (a deprecation
# notice) is shown only when the build fails.
if ! log="$(DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$context" 2>&1)"; then
    echo "$log" >&2
    exit 1
fi
docker image inspect --format '{{.Id}}' "$image"
