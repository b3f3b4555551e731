#!/usr/bin/env bash
# Builds Hearth's container images offline: nothing is pulled, every image starts
# `FROM scratch`.
#
#   hearth-broker:VERSION   static hearth-broker (and the hearth CLI), user 65532
#   hearth-agent:VERSION    hearth-agent (and nft, for its firewall) with the C libraries
#                           they link, user root
#   hearth-etcd:VERSION     the etcd server installed on this machine, user 65532
#
# Each is also tagged :latest and carries the org.opencontainers.image.* labels
# (version, revision, created, source). The broker is linked statically (crt-static), so
# its image holds two files. The agent is linked dynamically because NVML is loaded at
# run time (dlopen of libnvidia-ml, which the NVIDIA container runtime mounts into the
# container), and that needs the dynamic loader and glibc: its image holds the binary and
# exactly the libraries `ldd` lists, copied from this machine. The etcd image is made
# the same way from the etcd binary on this machine (Debian's etcd-server; scripts/test.sh
# installs it), since no registry is reachable.
#
# Prints each image's size, checks `--version` inside each, and ends with one line per
# image on stdout: `NAME:VERSION SIZE_BYTES`.
#
# The binaries are release builds. `--profile dev` (or HEARTH_IMAGE_PROFILE=dev) packs
# the workspace's debug builds instead, as `cargo build --workspace --bins` left them:
# the same code unoptimised, and no extra build at all, but the broker linked
# dynamically (its image then carries its libraries, as the agent's does). The test suite
# uses it; ship release.
# Each image carries its profile in the label dev.hearth.build-profile.
#
#   scripts/build-images.sh                  # all three
#   scripts/build-images.sh --no-etcd        # broker and agent only
#   scripts/build-images.sh --profile dev    # debug builds, for tests
set -euo pipefail
cd "$(dirname "$0")/.."

with_etcd=1
profile=${HEARTH_IMAGE_PROFILE:-release}
while (( $# )); do
    case "$1" in
        --no-etcd) with_etcd=0 ;;
        --profile)
            [[ $# -ge 2 ]] || { echo "error: --profile needs a value: release or dev" >&2; exit 2; }
            profile=$2
            shift
            ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$profile" in
    release) profile_dir=release ;;
    dev) profile_dir=debug ;;
    *) echo "error: --profile (or HEARTH_IMAGE_PROFILE) is $profile; it must be release or dev" >&2; exit 2 ;;
esac

step() { printf '==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is required to build images"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info' failed)"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || die "no version in Cargo.toml's [workspace.package]"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $revision != unknown ]] && [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    revision="$revision-dirty"
fi
# The commit's time, not the build's, so a rebuild of one commit labels the same.
created=$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

target="x86_64-unknown-linux-gnu"
if [[ $profile == release ]]; then
    broker_dir="target/static/$target/release"
    step "building static hearth-broker and hearth (release, crt-static)"
    CARGO_TARGET_DIR=target/static RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --quiet --release --target "$target" -p hearth-broker -p hearth-cli --bins >&2
    step "building hearth-agent (release, dynamically linked for NVML)"
    cargo build --quiet --release -p hearth-agent --bins >&2
    # A dynamically linked binary would not even start in a scratch image: fail here.
    for binary in "$broker_dir/hearth-broker" "$broker_dir/hearth"; do
        linked=$(ldd "$binary" 2>&1 || true)
        if ! grep -Eq 'statically linked|not a dynamic executable' <<<"$linked"; then
            die "$binary is not statically linked: $(head -n 3 <<<"$linked")"
        fi
    done
else
    # The workspace's own debug build (a no-op after `cargo build --workspace --bins`):
    # dynamically linked, so the broker image gets its libraries as the agent's does.
    broker_dir="target/debug"
    step "building hearth-broker, hearth and hearth-agent (dev, dynamically linked)"
    cargo build --quiet --workspace --bins >&2
fi

contexts=$(mktemp -d)
trap 'rm -rf "$contexts"' EXIT

# Images get stripped copies (symbols are for profiling a local build, not for shipping).
strip_copy() {
    if command -v strip >/dev/null; then strip --strip-unneeded "$1"; fi
}

# Copies $1 to $2/usr/local/bin and every shared library it links (as ldd resolves
# them on this machine) to the same path under $2, so the dynamic loader finds them.
with_libraries() {
    local binary=$1 root=$2
    install -D -m 0755 "$binary" "$root/usr/local/bin/$(basename "$binary")"
    strip_copy "$root/usr/local/bin/$(basename "$binary")"
    local lib
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
    # glibc reads it for host lookups; without it, "files" may be skipped.
    install -D -m 0644 /dev/stdin "$root/etc/nsswitch.conf" <<<'hosts: files dns'
}

# The labels every image carries; $1 is its title, $2 its description.
labels() {
    cat <<EOF
LABEL org.opencontainers.image.title="$1" \\
      org.opencontainers.image.description="$2" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$revision" \\
      org.opencontainers.image.created="$created" \\
      org.opencontainers.image.source="$source_url" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      org.opencontainers.image.vendor="Hearth" \\
      dev.hearth.build-profile="$profile"
EOF
}

# The classic builder: this docker may have no buildx plugin. Its output is shown only
# when the build fails.
build() {
    local name=$1 context=$2 log
    if ! log=$(DOCKER_BUILDKIT=0 docker build --quiet -t "$name:$version" -t "$name:latest" "$context" 2>&1); then
        echo "$log" >&2
        die "building $name failed"
    fi
}

step "image hearth-broker:$version"
broker="$contexts/broker"
if [[ $profile == release ]]; then
    install -D -m 0755 "$broker_dir/hearth-broker" "$broker/rootfs/usr/local/bin/hearth-broker"
    install -D -m 0755 "$broker_dir/hearth" "$broker/rootfs/usr/local/bin/hearth"
    strip_copy "$broker/rootfs/usr/local/bin/hearth-broker"
    strip_copy "$broker/rootfs/usr/local/bin/hearth"
else
    with_libraries "$broker_dir/hearth-broker" "$broker/rootfs"
    with_libraries "$broker_dir/hearth" "$broker/rootfs"
fi
# The embedded store's default path is relative (hearth-data/...): the working directory
# is the broker's own, writable by its user. Directories its user owns come from owned/,
# copied with --chown onto paths that do not exist yet (COPY leaves an existing
# directory's owner alone).
mkdir -p "$broker/owned" "$broker/rootfs/var/lib" "$broker/rootfs/tmp"
chmod 0750 "$broker/owned"
chmod 1777 "$broker/rootfs/tmp"
printf 'hearth:x:65532:65532:hearth:/var/lib/hearth-broker:/sbin/nologin\n' \
    | install -D -m 0644 /dev/stdin "$broker/rootfs/etc/passwd"
printf 'hearth:x:65532:\n' | install -D -m 0644 /dev/stdin "$broker/rootfs/etc/group"
cat >"$broker/Dockerfile" <<EOF
FROM scratch
COPY --chown=0:0 rootfs/ /
COPY --chown=65532:65532 owned/ /var/lib/hearth-broker/
$(labels hearth-broker "Hearth broker: places GPU sessions, keeps state in etcd, routes turns")
USER 65532:65532
WORKDIR /var/lib/hearth-broker
# Listen beyond loopback; without [tls] the broker still refuses that unless told
# --insecure-listen, so a plaintext port is never opened by accident.
ENV HEARTH_GRPC_ADDR=0.0.0.0:7700 HEARTH_ADMIN_ADDR=0.0.0.0:7701
EXPOSE 7700 7701
ENTRYPOINT ["/usr/local/bin/hearth-broker"]
EOF
build hearth-broker "$broker"

step "image hearth-agent:$version"
agent="$contexts/agent"
with_libraries "target/$profile_dir/hearth-agent" "$agent/rootfs"
# nft for the agent's firewall (docker.firewall), with the libraries it links.
if nft=$(command -v nft); then
    with_libraries "$nft" "$agent/rootfs"
else
    echo "warning: no nft on this machine: the agent image cannot firewall sessions \
(apt-get install nftables; or run agents with docker.firewall = false)" >&2
fi
mkdir -p "$agent/rootfs/var/lib/hearth-agent" "$agent/rootfs/tmp"
chmod 1777 "$agent/rootfs/tmp"
cat >"$agent/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
$(labels hearth-agent "Hearth node agent: runs GPU sessions on this host and streams NVML telemetry")
# Root: the Docker runtime drives the engine through its socket (root-equivalent anyway)
# and kills a cancelled exec by its host pid. See docs/decisions.md.
USER 0:0
ENV PATH=/usr/local/bin HEARTH_ADMIN_ADDR=0.0.0.0:7702 HEARTH_STATE_DIR=/var/lib/hearth-agent
EXPOSE 7702
ENTRYPOINT ["/usr/local/bin/hearth-agent"]
EOF
build hearth-agent "$agent"

images=(hearth-broker hearth-agent)
if [[ $with_etcd == 1 ]]; then
    etcd_bin=$(command -v etcd || true)
    [[ -n $etcd_bin ]] || die "no etcd binary on this machine to make hearth-etcd from \
(apt-get install etcd-server), or pass --no-etcd"
    etcd_version=$("$etcd_bin" --version | sed -n 's/^etcd Version: //p')
    step "image hearth-etcd:$version (etcd $etcd_version from $etcd_bin)"
    etcd="$contexts/etcd"
    with_libraries "$etcd_bin" "$etcd/rootfs"
    # etcd wants its data directory private (0700) and its own.
    mkdir -p "$etcd/owned" "$etcd/rootfs/var/lib" "$etcd/rootfs/tmp"
    chmod 0700 "$etcd/owned"
    chmod 1777 "$etcd/rootfs/tmp"
    cat >"$etcd/Dockerfile" <<EOF
FROM scratch
COPY --chown=0:0 rootfs/ /
COPY --chown=65532:65532 owned/ /var/lib/etcd/
$(labels hearth-etcd "etcd $etcd_version for Hearth's store, from the build machine's etcd binary")
LABEL io.etcd.version="$etcd_version"
USER 65532:65532
ENV ETCD_DATA_DIR=/var/lib/etcd
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
EOF
    build hearth-etcd "$etcd"
    images+=(hearth-etcd)
fi

step "checking --version inside each image"
for name in "${images[@]}"; do
    out=$(docker run --rm "$name:$version" --version 2>&1) || die "$name:$version --version failed: $out"
    printf '    %-22s %s\n' "$name:$version" "$(head -n 1 <<<"$out")" >&2
done
out=$(docker run --rm --entrypoint /usr/local/bin/hearth "hearth-broker:$version" --version 2>&1) \
    || die "hearth (in hearth-broker:$version) --version failed: $out"
printf '    %-22s %s\n' "hearth (CLI)" "$out" >&2
if [[ -n ${nft:-} ]]; then
    out=$(docker run --rm --entrypoint /usr/local/bin/nft "hearth-agent:$version" --version 2>&1) \
        || die "nft (in hearth-agent:$version) --version failed: $out"
    printf '    %-22s %s\n' "nft (in the agent)" "$out" >&2
fi

step "image sizes"
for name in "${images[@]}"; do
    size=$(docker image inspect --format '{{.Size}}' "$name:$version")
    awk -v n="$name:$version" -v s="$size" 'BEGIN { printf "    %-22s %6.1f MiB\n", n, s / 1048576 }' >&2
    echo "$name:$version $size"
done
