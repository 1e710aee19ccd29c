#!/usr/bin/env bash
# Set up .venv (see setup_env.sh), lint, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail
ruff check .
python -m pytest -q --timeout=900 --doctest-modules timevis_callback timevis_cli tests "$@"
