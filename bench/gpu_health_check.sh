#!/usr/bin/env bash
# gonka-serve on a real GPU host: NVML snapshot, profile fit checks, and the health sidecar's JSON
# with real GPU numbers. Run from the repository root on a machine with an NVIDIA GPU:
#
#   bash bench/gpu_health_check.sh              # NVML snapshot, the fit check of every profile,
#                                               # the sidecar, and a real run of the largest
#                                               # profile that fits (when vLLM imports here)
#   bash bench/gpu_health_check.sh --skip-run   # ~1 minute: everything but the real run
#   MAX_WAIT=600 bash bench/gpu_health_check.sh # bound the wait for that run's readiness (s)
#
# Needs no internet: a profile whose checkpoint is not in the local Hugging Face cache is run
# with its own launch (parallelism, GPU pinning, parsers) and the tiny offline model instead.
#
# Everything it prints is also written under $OUT (default /tmp/gonka-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/gonka-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SKIP_RUN=0
for arg in "$@"; do
    case "$arg" in
        --skip-run) SKIP_RUN=1 ;;
        --with-vllm) ;;  # the real run is the default now; kept for old command lines
        *) echo "unknown option $arg (use --skip-run)"; exit 2 ;;
    esac
done
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

section "fit check: every profile on this host"
# One dry run per profile (exit 0 = fits, 2 = refused, with the reason); 2-node profiles are
# checked for this node's share (--head-address 127.0.0.1).
gs profiles --json > "$OUT/profiles.json"
"$PY" - "$OUT/profiles.json" > "$OUT/profile-names.txt" <<'PYEOF'
import json, sys
for row in json.load(open(sys.argv[1])):
    # name, GPUs in all, per-GPU GiB, nodes (the largest single-node fit gets the real run)
    print(row["name"], row["gpus"], row["min_gpu_memory_gib"], row["nodes"])
PYEOF
: > "$OUT/fit.tsv"
while read -r name gpus gib nodes; do
    extra=()
    [[ "$nodes" != "1" ]] && extra=(--head-address 127.0.0.1)
    gs run "$name" --dry-run "${extra[@]}" > "$OUT/dry-run-$name.txt" 2>&1
    code=$?
    reason=$(grep -m1 '^  fit:' "$OUT/dry-run-$name.txt" | sed 's/^  fit: //' | cut -c1-150)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$code" "$gpus" "$gib" "$nodes" "$reason" \
        >> "$OUT/fit.tsv"
done < "$OUT/profile-names.txt"
printf '%-30s %-5s %s\n' "profile" "fits" "fit check"
while IFS=$'\t' read -r name code gpus gib nodes reason; do
    printf '%-30s %-5s %s\n' "$name" "$([[ $code == 0 ]] && echo yes || echo no)" "$reason"
done < "$OUT/fit.tsv"
# The largest profile that fits one node here: most GPUs, then most memory per GPU (CPU and
# 2-node profiles excluded: the first needs no GPU, the second needs another host).
LARGEST=$(awk -F'\t' '$2 == 0 && $3 > 0 && $5 == 1 {print $3 * 1000 + $4 "\t" $1}' \
    "$OUT/fit.tsv" | sort -g -r | head -1 | cut -f2)
echo "largest profile that fits this host: ${LARGEST:-none}"

section "health sidecar with real GPU numbers (supervising the stand-in server, no vLLM needed)"
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

section "real run of the largest profile that fits: ${LARGEST:-none}"
# With vLLM importable here: the profile as shipped when its checkpoint is on this host (a local
# path, or in the Hugging Face cache; nothing is downloaded), otherwise the same profile (its
# parallelism, GPU pinning, parsers, flags) with the tiny offline model in place of the weights,
# and it says which. The sidecar's health JSON is saved as health-run.json.
if [[ $SKIP_RUN == 1 ]]; then
    echo "skipped (--skip-run)"
elif [[ -z "${LARGEST:-}" ]]; then
    echo "no GPU profile fits this host: nothing to run (see the fit checks above)"
elif ! "$PY" -c "import vllm, torch, transformers" 2>/dev/null; then
    echo "vllm/torch/transformers not importable here: the real run is skipped"
else
    MODEL=$("$PY" - "$OUT/profiles.json" "$LARGEST" <<'PYEOF'
import json, os, sys
row = next(r for r in json.load(open(sys.argv[1])) if r["name"] == sys.argv[2])
model = row["model"]
hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
    os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
cached = os.path.isdir(os.path.join(hub, "models--" + model.replace("/", "--"), "snapshots"))
print(model if (os.path.isdir(model) or cached) else "")
PYEOF
)
    cat > "$OUT/run.toml" <<TOMLEOF
[profiles.run-largest]
extends = "$LARGEST"
launcher = "module"
python = "$PY"
env = { HF_HUB_OFFLINE = "1" }
TOMLEOF
    if [[ -z "$MODEL" ]]; then
        echo "the checkpoint of $LARGEST is not on this host: running its launch with the tiny model"
        gs tiny-model "$OUT/tiny-model" --python "$PY" --kimi-tokens >/dev/null 2>&1 \
            || echo "tiny model build failed"
        cat >> "$OUT/run.toml" <<TOMLEOF
model = "$OUT/tiny-model"
max_model_len = 2048
startup_timeout_s = 600
extra_args = ["--enforce-eager", "--dtype", "bfloat16"]
TOMLEOF
    else
        echo "running $LARGEST with its checkpoint $MODEL (from the local cache)"
    fi
    "${GS[@]}" --profiles "$OUT/run.toml" run run-largest --port $PORT --health-port $HPORT \
        --drain-notice 0.5 --log-file "$OUT/run-vllm.log" 2>"$OUT/run.stderr" &
    SERVE_PID=$!
    "$PY" - "$PORT" "$HPORT" "$OUT" "${MAX_WAIT:-3600}" <<'PYEOF'
import json, sys, time, urllib.request, urllib.error
port, hport, out, max_wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def health():
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{hport}/health", timeout=5).read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except Exception:
        return {"state": "down"}
start = time.time()
report = health()
while time.time() - start < max_wait and report.get("state") not in ("ready", "failed", "stopped"):
    time.sleep(2)
    report = health()
print(f"state {report.get('state')} after {time.time() - start:.0f} s")
name = report.get("served_model_name") or "tiny"
body = json.dumps({"model": name, "messages": [{"role": "user", "content": "hello"}],
                   "max_tokens": 16}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})
if report.get("state") == "ready":
    try:
        reply = json.loads(urllib.request.urlopen(req, timeout=120).read())
        print("chat reply usage:", reply.get("usage"))
    except Exception as exc:
        print("chat failed:", exc)
    report = health()
open(f"{out}/health-run.json", "w").write(json.dumps(report, indent=2))
print(json.dumps({k: report.get(k) for k in ("state", "profile", "model", "vllm", "queue",
                                              "latency", "gpu_indexes", "gpu")}, indent=2))
PYEOF
    kill -TERM $SERVE_PID 2>/dev/null
    wait $SERVE_PID
    echo "gonka-serve exit code: $?"
    tail -8 "$OUT/run.stderr"
fi

section "done; files in $OUT"
ls -la "$OUT"
