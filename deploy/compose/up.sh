#!/usr/bin/env bash
# Brings the compose cluster up, ready to take sessions: 3 etcd members, 2 brokers with
# TLS and tokens, and 2 agents (one on Docker, one on the process runtime), each agent on
# its own network. Nothing is pulled from a registry.
#
#   deploy/compose/up.sh             # build, start, wait until ready
#   deploy/compose/up.sh --no-build  # use the images already there (say, pulled)
#
# 1. Images: scripts/build-images.sh, so they match this checkout (quick when nothing
#    changed: cargo and Docker reuse what they built); the demo workload (the test
#    worker) as the image hearth-test-worker:latest for the Docker agent and as an
#    executable for the process agent. With --no-build, the images must be there.
# 2. Secrets, once, in $HEARTH_COMPOSE_STATE (default deploy/compose/local): a CA and
#    certificates from `hearth certs` (the broker's names broker-a, broker-b, localhost
#    and 127.0.0.1; nodes host-a and host-b), an admin token and a team-a token
#    (`hearth token create`; the broker's config gets only their hashes). They are made
#    with the hearth CLI inside the broker image, so no host install is needed.
# 3. docker compose up, then a wait until both agents are READY.
#
# `deploy/compose/env.sh` prints the variables that point the hearth CLI at the cluster;
# deploy/compose/down.sh takes it all down again. Settings (environment):
#   COMPOSE_PROJECT_NAME (hearth), HEARTH_BROKER_A_PORT (7700), HEARTH_BROKER_B_PORT (7710),
#   HEARTH_COMPOSE_STATE, HEARTH_COMPOSE (the compose command; found when unset),
#   HEARTH_READY_TIMEOUT (seconds to wait for the agents, 180), and the brokers'
#   HEARTH_LOST_AFTER, HEARTH_TAKEOVER_GRACE, HEARTH_ORPHAN_GRACE.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (try --help)" ;;
    esac
done
started=$(date +%s.%N)

# 1. Images.
if [[ $build == 1 ]]; then
    step "building images (scripts/build-images.sh)"
    "$repo/scripts/build-images.sh" >/dev/null
    step "building the demo workload (scripts/build-test-image.sh)"
    "$repo/scripts/build-test-image.sh" >/dev/null
    mkdir -p "$state/workloads"
    install -m 0755 "$("$repo/scripts/build-test-image.sh" --binary-only)" "$state/workloads/worker"
fi
for image in hearth-broker hearth-agent hearth-etcd; do
    docker image inspect "$image:$HEARTH_VERSION" >/dev/null 2>&1 \
        || die "image $image:$HEARTH_VERSION is missing: run without --no-build, or load it"
done
mkdir -p "$state/workloads"

# 2. Secrets and configs, made once; a CA is never replaced behind running agents' backs.
hearth_cli() {
    docker run --rm --user "$(id -u):$(id -g)" -v "$state:/state" \
        --entrypoint /usr/local/bin/hearth "hearth-broker:$HEARTH_VERSION" "$@"
}
if [[ ! -f $state/secrets/ca.pem ]]; then
    step "making a CA, certificates and tokens in $state"
    mkdir -p "$state/secrets"
    chmod 0700 "$state/secrets"
    hearth_cli certs init --dir /state/secrets --broker-name broker-a --broker-name broker-b \
        --broker-name localhost --broker-name 127.0.0.1 >/dev/null
    for node in host-a host-b; do
        hearth_cli certs node --dir /state/secrets "$node" >/dev/null
    done
    cp "$here/broker.toml" "$state/broker.toml.new"
    hearth_cli token create --tenant ops --role admin --append /state/broker.toml.new \
        >"$state/secrets/admin.token"
    hearth_cli token create --tenant team-a --append /state/broker.toml.new \
        >"$state/secrets/team-a.token"
    chmod 0600 "$state/secrets/admin.token" "$state/secrets/team-a.token"
    mv "$state/broker.toml.new" "$state/broker.toml"
fi
# The broker runs as user 65532 with the group of whoever runs this script (see
# HEARTH_SECRETS_GID in docker-compose.yml), so its key is readable by that group only.
chmod 0640 "$state/secrets/broker-key.pem"
chmod 0750 "$state/secrets"
for config in agent-docker.toml agent-process.toml; do
    cp "$here/$config" "$state/$config"
done

# 3. Start, then wait for both agents.
built=$(date +%s.%N)
step "starting the cluster (project $COMPOSE_PROJECT_NAME, $(compose_command))"
compose up -d --remove-orphans >&2
step "waiting for both agents to be READY"
deadline=$(( $(date +%s) + ${HEARTH_READY_TIMEOUT:-180} ))
admin=$(cat "$state/secrets/admin.token")
while true; do
    nodes=$(docker run --rm --network "${COMPOSE_PROJECT_NAME}_brokers" -v "$state/secrets:/secrets:ro" \
        --user "$(id -u):$(id -g)" --entrypoint /usr/local/bin/hearth "hearth-broker:$HEARTH_VERSION" \
        --broker https://broker-a:7700,https://broker-b:7700 --ca /secrets/ca.pem --token "$admin" \
        nodes ls 2>&1) || true
    ready=$(grep -Ec '^host-[ab] +READY' <<<"$nodes" || true)
    if [[ $ready == 2 ]]; then break; fi
    if (( $(date +%s) > deadline )); then
        echo "$nodes" >&2
        compose ps >&2
        compose logs --tail 20 >&2
        die "the agents were not READY within ${HEARTH_READY_TIMEOUT:-180}s (above: the brokers' view, then the logs)"
    fi
    sleep 1
done
echo "$nodes" >&2
now=$(date +%s.%N)
seconds() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.1f", e - s }'; }
cat >&2 <<MSG
==> Hearth is up in $(seconds "$built" "$now")s from start to both agents READY \
(builds and secrets before that: $(seconds "$started" "$built")s)
    brokers at https://127.0.0.1:$HEARTH_BROKER_A_PORT and https://127.0.0.1:$HEARTH_BROKER_B_PORT
    eval "\$($here/env.sh)"     # HEARTH_BROKER, HEARTH_CA, HEARTH_TOKEN (team-a), HEARTH_ADMIN_TOKEN
    hearth --token "\$HEARTH_ADMIN_TOKEN" nodes ls
    $here/down.sh                 # removes every container, network and volume
MSG
