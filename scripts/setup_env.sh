#!/usr/bin/env bash
# Installs everything ssl_keras needs, idempotently: the Debian package dataset-fashion-mnist
# (Fashion-MNIST without internet) where apt is available, and the package with its extras,
# into the Python that scripts/python.sh picks (a .venv in the repository when the system
# Python is "externally managed", as Debian 12's is).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
cd "$ROOT"

apt_install() {  # apt_install <package>...: as root, where apt-get exists; else returns 1
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 1
  apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "setup: installing dataset-fashion-mnist (apt)"
  apt_install dataset-fashion-mnist \
    || echo "setup: warning: could not install dataset-fashion-mnist (needs root and apt-get);" \
            "Fashion-MNIST then needs its IDX files via --data_dir"
fi

if [ "$PY" = "$ROOT/.venv/bin/python" ] && [ ! -x "$PY" ]; then
  echo "setup: python3 is the system's (externally managed): creating $ROOT/.venv"
  if ! python3 -m venv "$ROOT/.venv" >/dev/null 2>&1; then
    rm -rf "$ROOT/.venv"
    apt_install python3-venv || { echo "setup: error: python3 -m venv failed; install" \
      "python3-venv, or set PYTHON to a Python that pip may install into" >&2; exit 1; }
    python3 -m venv "$ROOT/.venv"
  fi
fi
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "setup: $PY has no pip: installing it"
  "$PY" -m ensurepip --upgrade >/dev/null 2>&1 || apt_install python3-pip || {
    echo "setup: error: no pip for $PY (install python3-pip, or set PYTHON)" >&2; exit 1; }
fi

echo "setup: pip install -e .[test] (into $PY)"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
