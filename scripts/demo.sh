#!/usr/bin/env bash
# The main job: the end-to-end LeNet example on Fashion-MNIST (train dense, SSL, thin,
# fine-tune the thinned model, export to TFLite, benchmark), after installing what it needs.
# Extra arguments go to the example (e.g. --quick); it runs in the caller's folder, so a
# relative --out_dir (default: results) or --data_dir is the caller's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the examples package (not installed)
for arg in "$@"; do  # help needs no set-up (and works offline) once the package is installed
  case "$arg" in -h|--help|--helpshort|--helpfull)
    if "$PY" -c "import absl" >/dev/null 2>&1; then exec "$PY" -m examples.lenet --help; fi;;
  esac
done
bash "$ROOT/scripts/setup_env.sh"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec "$PY" -m examples.lenet "$@"
