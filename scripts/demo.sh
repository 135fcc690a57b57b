#!/usr/bin/env bash
# The main job: the end-to-end LeNet example on Fashion-MNIST (train dense, SSL, thin,
# fine-tune the thinned model, export to TFLite, benchmark), after installing what it needs. Extra arguments go to
# the example (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do  # help needs no set-up (and works offline)
  case "$arg" in -h|--help|--helpshort|--helpfull) exec "${PYTHON:-python3}" -m examples.lenet --help;; esac
done
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec "${PYTHON:-python3}" -m examples.lenet "$@"
