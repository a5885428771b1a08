#!/usr/bin/env bash
# gonka-serve on a real GPU host: NVML snapshot, profile fit checks, and the health sidecar's JSON
# with real GPU numbers. Run from the repository root on a machine with an NVIDIA GPU:
#
#   bash bench/gpu_health_check.sh              # ~1 minute, needs no internet and no vLLM
#   bash bench/gpu_health_check.sh --with-vllm  # also serve a tiny model with real vLLM on the GPU
#                                               # (only when vllm, torch and transformers import)
#
# Everything it prints is also written under $OUT (default /tmp/gonka-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/gonka-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WITH_VLLM=0
[[ "${1:-}" == "--with-vllm" ]] && WITH_VLLM=1
exec > >(tee "$OUT/gpu_health_check.log") 2>&1

section() { printf '\n===== %s =====\n' "$*"; }

section "environment"
"$PY" --version
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi; NVML is read through nvidia-ml-py)"
"$PY" - <<'EOF'
import importlib
for name in ("pynvml", "httpx", "openai", "rich", "vllm", "torch", "transformers"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: {getattr(mod, '__version__', 'present')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: missing ({type(exc).__name__})")
EOF

section "install gonka_mux[serve] from this checkout"
# Into a throwaway venv that still sees the system packages (nvidia-ml-py, vLLM, torch), so the
# host's Python is left alone. Offline hosts cannot fetch the build backend: then run from src/
# with whatever the system has (gonka-serve needs only nvidia-ml-py, plus httpx for the sidecar).
VENV="$OUT/venv"
if "$PY" -m venv --system-site-packages "$VENV" 2>"$OUT/venv.err" \
    && timeout 180 "$VENV/bin/python" -m pip install -q -e ".[serve]" 2>"$OUT/pip.err"; then
    PY="$VENV/bin/python"
    echo "installed into $VENV"
else
    echo "pip install failed (offline?): $(tail -1 "$OUT/pip.err" 2>/dev/null); using PYTHONPATH=src"
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import httpx" 2>/dev/null || echo "WARNING: httpx missing: the sidecar step will fail"
# gonka-serve without relying on the console script (absent when running from src/). An array,
# not a function: a backgrounded function is a subshell, and $! would not be gonka-serve's pid.
GS=("$PY" -c 'import sys; from gonka_mux.serving.cli import main; sys.exit(main(sys.argv[1:]))')
gs() { "${GS[@]}" "$@"; }

section "gonka-serve gpus (NVML snapshot)"
gs gpus | tee "$OUT/gpus.json"

section "gonka-serve profiles"
COLUMNS=200 gs profiles

section "fit check: 1-GPU profiles (llama-3.1-8b, qwen3-8b on GPU 0)"
gs run llama-3.1-8b --dry-run | tee "$OUT/dry-run-llama-3.1-8b.txt"
echo "exit code: ${PIPESTATUS[0]} (0 = fits, 2 = refused)"
gs run qwen3-8b --dry-run --gpus 0 | tee "$OUT/dry-run-qwen3-8b.txt"
echo "exit code: ${PIPESTATUS[0]}"

section "fit check: kimi-k2.5 (8 GPUs >= 88 GiB) must be refused on a smaller host"
gs run kimi-k2.5 --dry-run
echo "exit code: $? (2 = refused)"

section "health sidecar with real GPU numbers (supervising the stand-in server)"
PORT=18431
HPORT=18432
cat > "$OUT/standin.toml" <<EOF
[profiles.gpu-standin]
description = "the test stand-in server, fit-checked and pinned like a real 1-GPU profile"
model = "standin"
served_model_name = "standin"
gpus = 1
min_gpu_memory_gib = 1
gpu_memory_utilization = 0.05
vllm_cmd = ["$PY", "$ROOT/tests/serving/fake_vllm.py"]
drain_timeout_s = 10
EOF
"${GS[@]}" --profiles "$OUT/standin.toml" run gpu-standin --port $PORT --health-port $HPORT \
    --drain-notice 0.5 --log-file "$OUT/standin.log" 2>"$OUT/standin.stderr" &
SERVE_PID=$!
for _ in $(seq 1 100); do
    "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$HPORT/health', timeout=2)" \
        2>/dev/null && break
    sleep 0.2
done
"$PY" - "$HPORT" "$OUT/health.json" <<'EOF'
import json, sys, urllib.error, urllib.request
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5).read()
except urllib.error.HTTPError as exc:  # 503 still carries the JSON
    body = exc.read()
except OSError as exc:
    sys.exit(f"sidecar not reachable: {exc} (see standin.stderr below)")
report = json.loads(body)
open(sys.argv[2], "w").write(json.dumps(report, indent=2))
print(json.dumps({k: report[k] for k in ("state", "served_model_name", "gpu_indexes", "gpu")}, indent=2))
EOF
kill -TERM $SERVE_PID 2>/dev/null
wait $SERVE_PID
echo "gonka-serve exit code: $?"
cat "$OUT/standin.stderr"

if [[ $WITH_VLLM == 1 ]]; then
    section "real vLLM on the GPU with a tiny offline model"
    if "$PY" -c "import vllm, torch, transformers" 2>/dev/null; then
        gs tiny-model "$OUT/tiny-model" --python "$PY" >/dev/null 2>&1 || echo "tiny model build failed"
        cat > "$OUT/tiny-gpu.toml" <<EOF
[profiles.tiny-gpu]
description = "the tiny offline model on one GPU"
model = "$OUT/tiny-model"
served_model_name = "tiny"
gpus = 1
min_gpu_memory_gib = 4
gpu_memory_utilization = 0.3
max_model_len = 2048
launcher = "module"
python = "$PY"
extra_args = ["--enforce-eager", "--dtype", "bfloat16"]
env = { HF_HUB_OFFLINE = "1", TRANSFORMERS_OFFLINE = "1" }
startup_timeout_s = 400
drain_timeout_s = 30
EOF
        "${GS[@]}" --profiles "$OUT/tiny-gpu.toml" run tiny-gpu --port $PORT --health-port $HPORT \
            --drain-notice 0.5 --log-file "$OUT/tiny-gpu-vllm.log" 2>"$OUT/tiny-gpu.stderr" &
        SERVE_PID=$!
        "$PY" - "$PORT" "$HPORT" "$OUT" <<'EOF'
import json, sys, time, urllib.request, urllib.error
port, hport, out = sys.argv[1], sys.argv[2], sys.argv[3]
def health():
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{hport}/health", timeout=5).read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except Exception:
        return {"state": "down"}
deadline = time.time() + 420
while time.time() < deadline and health().get("state") != "ready":
    time.sleep(2)
body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})
try:
    reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
    print("chat reply usage:", reply.get("usage"))
except Exception as exc:
    print("chat failed:", exc)
report = health()
open(f"{out}/health-vllm.json", "w").write(json.dumps(report, indent=2))
print(json.dumps({k: report.get(k) for k in ("state", "vllm", "queue", "gpu")}, indent=2))
EOF
        kill -TERM $SERVE_PID 2>/dev/null
        wait $SERVE_PID
        echo "gonka-serve exit code: $?"
        tail -5 "$OUT/tiny-gpu.stderr"
    else
        echo "vllm/torch/transformers not importable here: skipped"
    fi
fi

section "done; files in $OUT"
ls -la "$OUT"
