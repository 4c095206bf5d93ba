#!/usr/bin/env bash
# make fuzz: the gateway lane's C scans and the connection state machine under ASan and UBSan, with
# atheris (libFuzzer, coverage-guided), FUZZ_SECONDS in all (half each). Exits non-zero on a crash, a
# sanitizer report or a broken invariant; the input that did it is left in $OUT/crash-* (see README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
OUT=${FUZZ_OUT:-${FNSESSION_CACHE:-$HOME/.cache/fnsession}/fuzz}
CC=${FUZZ_CC:-clang}
mkdir -p "$OUT/build" "$OUT/corpus"

command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (hack/install-deps.sh installs clang)" >&2; exit 1; }
"$PYTHON" -c "import atheris" 2>/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check "atheris>=2.3,<4"
ATHERIS=$("$PYTHON" -c "import atheris; print(atheris.path())")

# _lane.c with ASan, UBSan (every report fatal) and libFuzzer's coverage hooks; atheris's runtime is preloaded
so="$OUT/build/_lane_asan$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
"$CC" -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link \
  -fno-sanitize-recover=undefined -Wall -I"$include" operator/fnsession/gateway/_lane.c -o "$so"
echo "fuzz: built $so"

rm -rf "$OUT/seeds" && "$PYTHON" tests/fuzz/seeds.py "$OUT/seeds"
export FUZZ_LANE_SO=$so PYTHONMALLOC=malloc PYTHONPATH=tests/fuzz${PYTHONPATH:+:$PYTHONPATH}
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:allocator_may_return_null=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
half=$(( FUZZ_SECONDS / 2 > 0 ? FUZZ_SECONDS / 2 : 1 ))
total=0
for target in scans state; do
  mkdir -p "$OUT/corpus/$target"
  log="$OUT/$target.log"
  echo "fuzz: $target for ${half}s (corpus $OUT/corpus/$target, log $log)"
  set +e
  LD_PRELOAD="$ATHERIS/asan_with_fuzzer.so" "$PYTHON" "tests/fuzz/fuzz_$target.py" \
    -max_total_time="$half" -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$OUT/" "$OUT/corpus/$target" "$OUT/seeds/$target" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz: $target: ${runs:-?} inputs executed, exit $rc"
  if [ "$rc" -ne 0 ] || grep -qE "ERROR: (AddressSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:" "$log"; then
    tail -60 "$log" >&2
    echo "fuzz: $target FAILED; reproduce with: tests/fuzz/repro.sh $target $OUT/crash-<id>" >&2
    exit 1
  fi
  total=$(( total + ${runs:-0} ))
done
echo "fuzz: ok, $total inputs executed in all, no crash, no sanitizer report"
