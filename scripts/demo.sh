#!/usr/bin/env bash
# The whole journey on real data shipped in packages (no download):
# train a small ResNet-style CNN with TimeVisCallback, then inspect the run store.
# Usage: bash scripts/demo.sh [--quick]   (--quick: scikit-learn's digits, 5 epochs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail

data=mnist epochs=15 out=demo_out/mnist
if [ "${1:-}" = "--quick" ]; then
  data=digits epochs=5 out=demo_out/digits
fi

python scripts/demo_train.py "$out" --data "$data" --epochs "$epochs"
timevis info "$out/store"
echo
echo "run store: $out/store"
