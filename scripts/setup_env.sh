#!/usr/bin/env bash
# Create (or reuse) .venv with timevis and its CPU/dev extras. Needs only Python >= 3.10 (3.11 tested).
# Usage: source scripts/setup_env.sh   (sets up .venv and activates it)
set -euo pipefail
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "timevis needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned to its CPU build: an unpinned torch pulls a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" -e ".[cpu,dev]"
set +euo pipefail
