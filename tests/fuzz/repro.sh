#!/usr/bin/env bash
# Run one fuzz target on one input (a crash-* file make fuzz left), with the same sanitized build:
#   tests/fuzz/repro.sh scans|state FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?scans or state}; input=${2:?a crash file}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${FUZZ_OUT:-${FNSESSION_CACHE:-$HOME/.cache/fnsession}/fuzz}
so=$(ls "$OUT"/build/_lane_asan*.so 2>/dev/null | head -1)
[ -n "$so" ] || { echo "no sanitized build in $OUT/build: run make fuzz FUZZ_SECONDS=1 first" >&2; exit 1; }
ATHERIS=$("$PYTHON" -c "import atheris; print(atheris.path())")
FUZZ_LANE_SO=$so PYTHONMALLOC=malloc PYTHONPATH=tests/fuzz ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$ATHERIS/asan_with_fuzzer.so" exec "$PYTHON" "tests/fuzz/fuzz_$target.py" "$input"
