#!/usr/bin/env bash
# Installs everything ssl_keras needs, idempotently: the Debian package dataset-fashion-mnist
# (Fashion-MNIST without internet) where apt is available, and the package with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing dataset-fashion-mnist (apt)"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: warning: could not install dataset-fashion-mnist; Fashion-MNIST needs --data_dir"
  else
    echo "setup: note: not root or no apt-get: Fashion-MNIST needs the IDX files via --data_dir"
  fi
fi

echo "setup: pip install -e .[test]"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
