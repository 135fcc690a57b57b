# Sourced by setup_env.sh, demo.sh and test.sh (not run): sets PY, the Python that the
# package is installed into and run with.
#   1. $PYTHON, when set;
#   2. else python3, unless pip may not install into it: an "externally managed" system Python
#      (PEP 668: Debian 12's /usr/bin/python3) outside a virtual environment. Then the
#      virtual environment .venv of the repository, which setup_env.sh creates on first use.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
elif command -v python3 >/dev/null 2>&1 && python3 - <<'PYEOF'
import os, sys, sysconfig
managed = os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PYEOF
then
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi
