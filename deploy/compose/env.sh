#!/usr/bin/env bash
# Prints the variables that point the hearth CLI (and the SDKs' examples) at the compose
# cluster, for `eval "$(deploy/compose/env.sh)"`: both brokers through their published
# TLS ports, the cluster's CA, the team-a token as HEARTH_TOKEN and the admin token as
# HEARTH_ADMIN_TOKEN.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
[[ -f $state/secrets/ca.pem ]] || die "no cluster secrets in $state: run deploy/compose/up.sh first"
cat <<ENV
export HEARTH_BROKER=https://127.0.0.1:$HEARTH_BROKER_A_PORT,https://127.0.0.1:$HEARTH_BROKER_B_PORT
export HEARTH_CA=$state/secrets/ca.pem
export HEARTH_TOKEN=$(cat "$state/secrets/team-a.token")
export HEARTH_ADMIN_TOKEN=$(cat "$state/secrets/admin.token")
ENV
