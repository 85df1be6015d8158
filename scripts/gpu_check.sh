#!/usr/bin/env bash
# The GPU run in one call (see scripts/gpu_check.py): the gpu-marked tests, then the measured runs.
#
#   scripts/gpu_check.sh --out DIR [--cpu-smoke]
#
# On the GPU machine, wheels carried in .whl (TRL and what it needs there: make gpu-wheels) are
# installed first into /tmp/site; the project runs from the working tree (PYTHONPATH), so nothing
# else is installed. Everything lands in DIR: pytest.txt, gpu_check.json, the runs' steps.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=""
SMOKE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --cpu-smoke) SMOKE="--cpu-smoke"; shift ;;
    *) echo "error: $1: unknown argument (--out DIR [--cpu-smoke])" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT" ]; then echo "error: --out: give the output folder" >&2; exit 2; fi
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# only where TRL is missing (the GPU machine): here the venv has it, and the wheels are for 3.12
if ! "$PY" -c "import trl" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# 1. the gpu-marked tests (skipped without CUDA); their outcome goes into the output folder
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/llm/test_gpu.py > "$OUT/pytest.txt" 2>&1
echo "gpu tests: exit $? ($(tail -n 1 "$OUT/pytest.txt"))"
# 2–5. pre-train, the probed runs, ours against TRL, one JSON file
"$PY" scripts/gpu_check.py --out "$OUT" $SMOKE
