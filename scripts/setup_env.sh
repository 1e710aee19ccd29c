#!/usr/bin/env bash
# Create (or reuse) .venv with timevis and its CPU/dev extras. Needs only Python >= 3.10 (3.11 tested).
# Usage: source scripts/setup_env.sh   (sets up .venv and activates it)
# After a successful install, .venv/.timevis-setup holds a hash of pyproject.toml and of this
# script; while both are unchanged a re-run skips pip (instant). TIMEVIS_SETUP_FORCE=1 (or
# deleting that file) installs again. A fresh machine always gets the full install.
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
_timevis_stamp=.venv/.timevis-setup
_timevis_hash=$(cat pyproject.toml "${BASH_SOURCE[0]:-scripts/setup_env.sh}" | python -c \
  'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "${TIMEVIS_SETUP_FORCE:-0}" != 1 ] && [ -x .venv/bin/timevis ] && [ -f "$_timevis_stamp" ] \
  && [ "$(cat "$_timevis_stamp")" = "$_timevis_hash" ]; then
  echo "setup: .venv is up to date with pyproject.toml (TIMEVIS_SETUP_FORCE=1 reinstalls)" >&2
else
  rm -f "$_timevis_stamp"
  python -m pip install -q --upgrade pip
  # torch is pinned to its CPU build: an unpinned torch pulls a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0" -e ".[cpu,dev]"
  echo "$_timevis_hash" >"$_timevis_stamp"
fi
unset _timevis_stamp _timevis_hash
set +euo pipefail
