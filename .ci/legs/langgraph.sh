#!/usr/bin/env bash
# CI leg (issue 6, TEST-03/TEST-04): LangChain/LangGraph through the Multiplexer, offline.
#
# Builds its own venv in $ROOT/.ci-work/langgraph with openai 3.x, the `langchain` extra,
# `langchain` (create_agent) and langgraph-checkpoint-conformance, then runs the LangGraph tests
# (ChatMultiplexer, the checkpointer's conformance suite on every session-store backend, the
# BM25 store, the agent that resumes a thread after a process restart) and the OpenAI
# compatibility suite. redis-server must be on PATH (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VENV="$ROOT/.ci-work/langgraph"
start=$(date +%s)
export UV_NO_PROGRESS=1 PYTHONDONTWRITEBYTECODE=1

uv venv -q -p 3.11 --clear "$VENV"
VIRTUAL_ENV="$VENV" uv pip install -q -e ".[langchain,redis,test]" "openai>=3,<4" \
  "langchain>=1.4" "langgraph-checkpoint-conformance>=0.0.2" "langchain-tests>=1.0"
PY="$VENV/bin/python"
"$PY" -c "import langgraph.version as v, openai; assert openai.__version__.startswith('3.'), \
openai.__version__; print('langgraph leg: langgraph', v.__version__, 'openai', openai.__version__)"
echo "langgraph leg: environment ready in $(( $(date +%s) - start ))s"

# Every backend, Redis included (the default `-m` of pyproject.toml leaves Redis out).
"$PY" -m pytest -q -p no:cacheprovider -m "not browser and not openclaw and not vllm and not postgres" \
  tests/integrations/langgraph tests/compat
echo "langgraph leg: passed in $(( $(date +%s) - start ))s"
