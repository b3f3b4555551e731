# Shared by up.sh, down.sh and env.sh: the settings they agree on, and the compose command.
# shellcheck shell=bash
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hearth}"
export HEARTH_BROKER_A_PORT="${HEARTH_BROKER_A_PORT:-7700}"
export HEARTH_BROKER_B_PORT="${HEARTH_BROKER_B_PORT:-7710}"
export HEARTH_COMPOSE_STATE="${HEARTH_COMPOSE_STATE:-$repo/deploy/compose/local}"
export HEARTH_SECRETS_GID="${HEARTH_SECRETS_GID:-$(id -g)}"
if [[ -z ${HEARTH_VERSION:-} ]]; then
    HEARTH_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
fi
export HEARTH_VERSION
state="$HEARTH_COMPOSE_STATE"

step() { printf '==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# The compose command: $HEARTH_COMPOSE if set, else the `docker compose` plugin where
# present, else docker-compose (1.29 from Debian works).
compose_command() {
    if [[ -n ${HEARTH_COMPOSE:-} ]]; then
        echo "$HEARTH_COMPOSE"
    elif docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null; then
        echo "docker-compose"
    else
        die "neither 'docker compose' nor docker-compose is installed"
    fi
}

compose() {
    local command
    command=$(compose_command)
    # shellcheck disable=SC2086 # "docker compose" is two words
    $command --project-directory "$repo/deploy/compose" \
        -f "$repo/deploy/compose/docker-compose.yml" "$@"
}

command -v docker >/dev/null || die "docker is required"
