#!/usr/bin/env bash
# Takes the compose cluster down, leaving no container, network or volume behind: the
# session containers agent-docker started (Docker keeps them when an agent stops, so
# that sessions outlive agent restarts), then every service, network and volume of the
# project.
#
#   deploy/compose/down.sh            # keeps the certificates and tokens for the next up
#   deploy/compose/down.sh --purge    # removes them too ($HEARTH_COMPOSE_STATE)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"

purge=0
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (try --help)" ;;
    esac
done

# Sessions of agent-docker: Hearth's containers on its network.
sessions=$(docker ps -aq --filter "network=${COMPOSE_PROJECT_NAME}_host-a" --filter label=hearth.session)
if [[ -n $sessions ]]; then
    step "removing $(wc -l <<<"$sessions") session container(s) of agent-docker"
    # shellcheck disable=SC2086
    docker rm -f $sessions >/dev/null
fi
step "stopping the cluster (project $COMPOSE_PROJECT_NAME)"
compose down --volumes --remove-orphans --timeout 15 >&2
if [[ $purge == 1 ]]; then
    step "removing $state"
    rm -rf "$state"
fi
