#!/usr/bin/env bash
# The whole test suite, after installing what it needs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
lint=()
for d in ssl_keras tflite_bench examples benchmarks tests; do [ -d "$d" ] && lint+=("$d"); done
"$PY" -m ruff check "${lint[@]}"
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "test: pytest collected no tests: failing"; exit 1; fi
exit "$rc"
