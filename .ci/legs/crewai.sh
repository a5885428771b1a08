#!/usr/bin/env bash
# CI leg (issue 6, TEST-02): a real CrewAI crew through the Multiplexer, offline.
#
# CrewAI pins openai<3 and pydantic<2.13, so it cannot share the main environment (openai 3.x):
# this leg builds its own venv in $ROOT/.ci-work/crewai with openai 2.x, then runs the CrewAI
# tests, the runnable example and the OpenAI compatibility suite (under openai 2.x).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VENV="$ROOT/.ci-work/crewai"
start=$(date +%s)
export UV_NO_PROGRESS=1 PYTHONDONTWRITEBYTECODE=1

uv venv -q -p 3.11 --clear "$VENV"
VIRTUAL_ENV="$VENV" uv pip install -q -e ".[crewai,test]" "openai>=2.30,<3"
PY="$VENV/bin/python"
"$PY" -c "import crewai, openai; assert openai.__version__.startswith('2.'), openai.__version__; \
print('crewai leg: crewai', crewai.__version__, 'openai', openai.__version__)"
echo "crewai leg: environment ready in $(( $(date +%s) - start ))s"

# every test of these folders, the slow example run included (only the other legs' markers out)
"$PY" -m pytest -q -p no:cacheprovider -m "not redis and not browser and not openclaw and not vllm and not postgres" \
  tests/integrations/crewai tests/compat
echo "crewai leg: passed in $(( $(date +%s) - start ))s"
