#!/usr/bin/env bash
# Run the train-digits pipeline by hand, without Drover, the way the engine would:
# every task gets its own scratch working directory, a fresh DROVER_INPUTS directory
# holding one file per declared input (named after the input) and an empty
# DROVER_OUTPUTS directory, and an output travels to later tasks by being copied.
#
#   examples/ml/run_local.sh [WORK_DIR]        # default WORK_DIR: a new temp dir (kept)
#   EPOCHS=5 examples/ml/run_local.sh          # quicker
#
# Keep the task list in step with pipeline.yaml.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/drover-ml.XXXXXX")}
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-30}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# run_task TASK [INPUT_NAME=FILE ...] -- COMMAND ...
run_task() {
  local task=$1 dir=$WORK/$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir/inputs" "$dir/outputs" "$dir/scratch"
  while [[ $1 != -- ]]; do
    cp "${1#*=}" "$dir/inputs/${1%%=*}"
    shift
  done
  shift
  echo "== $task: $*"
  (
    cd "$dir/scratch"
    DROVER_RUN_ID=local DROVER_TASK=$task DROVER_ATTEMPT=1 \
      DROVER_INPUTS=$dir/inputs DROVER_OUTPUTS=$dir/outputs "$@"
  )
}

TIMEFORMAT='== all steps: %Rs wall, %Us user + %Ss sys CPU'
time {
  run_task prepare -- "$PYTHON" "$HERE/prepare.py"
  DATASET=$WORK/prepare/outputs/dataset.csv

  for lr in 0.001 0.03 1.0; do
    run_task "train-lr-$lr" dataset="$DATASET" -- \
      "$PYTHON" "$HERE/train.py" --lr "$lr" --epochs "$EPOCHS"
  done

  run_task evaluate \
    model_a="$WORK/train-lr-0.001/outputs/model.json" \
    model_b="$WORK/train-lr-0.03/outputs/model.json" \
    model_c="$WORK/train-lr-1.0/outputs/model.json" \
    dataset="$DATASET" -- \
    "$PYTHON" "$HERE/evaluate.py"
}

echo "== artifacts: $WORK/evaluate/outputs/best_model.json"
echo "              $WORK/evaluate/outputs/metrics.json"
