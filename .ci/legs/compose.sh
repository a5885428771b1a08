#!/usr/bin/env bash
# CI leg: docker/compose.yaml checked as far as a machine without a Docker engine allows (issue 15).
#   1. the Compose specification's JSON schema (the copy check-jsonschema vendors);
#   2. docker-compose (Debian's 1.29) resolves every compose profile: YAML anchors and merge keys,
#      variable interpolation with and without HEAD_ADDRESS, depends_on targets (1.29 does not
#      filter services by profile: step 3 checks what compose v2 would refuse there);
#   3. the project's own checks (tests/serving/test_serve_docker.py, test_compose_gateway.py):
#      every service's command parses with gonka-serve's / gonka-mux gateway's CLI, every
#      gateway waits for its model service (service_healthy) and reaches it, no dependency can
#      be left out by a profile (compose v2 refuses that project), the shipped gateway config
#      builds a Multiplexer, and the gateway command, run with the compose environment, serves
#      /health while the node is down and routes once it is up.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK="$ROOT/.ci-work/compose"
mkdir -p "$WORK"
start=$(date +%s)
stamp() { echo "[compose-leg $(( $(date +%s) - start ))s] $*"; }

stamp "check-jsonschema (vendors the compose-spec schema)"
if ! "$WORK/venv/bin/check-jsonschema" --version >/dev/null 2>&1; then
  command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
  uv venv -q --clear -p 3.11 "$WORK/venv"
  VIRTUAL_ENV="$WORK/venv" uv pip install -q "check-jsonschema>=0.29"
fi
"$WORK/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml

stamp "docker-compose config, per compose profile (no engine needed)"
if ! command -v docker-compose >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
profiles=$(grep -oE '^    profiles: \["[^"]+"\]' docker/compose.yaml | sed -E 's/.*\["([^"]+)"\]/\1/' | sort -u)
count=0
for profile in $profiles; do
  HEAD_ADDRESS=10.0.0.1 docker-compose -f docker/compose.yaml --profile "$profile" config -q
  count=$((count + 1))
done
# Single-node profiles must not need HEAD_ADDRESS (compose interpolates every service).
env -u HEAD_ADDRESS docker-compose -f docker/compose.yaml --profile qwen3-8b config -q
stamp "$count compose profiles resolve"

stamp "the project's compose checks"
PY="$ROOT/.ci-work/v3/bin/python"
[ -x "$PY" ] || PY="$ROOT/.venv/bin/python"
"$PY" -m pytest -q -p no:cacheprovider tests/serving/test_serve_docker.py \
  tests/serving/test_compose_gateway.py
stamp "compose leg passed"
