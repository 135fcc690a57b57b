#!/usr/bin/env bash
# The whole test suite, after installing what it needs. Extra arguments go to pytest; paths
# among them are the caller's (tests/test_thin.py, or ../x/tests/test_thin.py::test_name).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
args=()
for arg in "$@"; do  # the suite runs from the repository root: make the caller's paths absolute
  path=${arg%%::*}
  if [ -n "$path" ] && [ "${path#-}" = "$path" ] && [ -e "$path" ]; then
    arg="$(cd "$(dirname "$path")" && pwd)/$(basename "$path")${arg:${#path}}"
  fi
  args+=("$arg")
done
cd "$ROOT"
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
lint=()
for d in ssl_keras tflite_bench examples benchmarks tests; do [ -d "$d" ] && lint+=("$d"); done
"$PY" -m ruff check "${lint[@]}"
set +e
# two workers: most tests keep one core busy, and a subprocess test waits seconds for
# TensorFlow to import (the suite took 985 s in one process on the AMD EPYC machine); a
# caller's -n 0 (later on the line) runs it in one process
"$PY" -m pytest -q -p no:cacheprovider -n 2 "${args[@]}"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "test: pytest collected no tests: failing"; exit 1; fi
exit "$rc"
