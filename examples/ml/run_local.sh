#!/usr/bin/env bash
# Run the train-digits pipeline by hand, without Drover, the way the engine would:
# every task runs in the code directory (this folder, `code: .` in pipeline.yaml; the
# engine's copy is read-only, so nothing is written there), a fresh DROVER_INPUTS directory
# holding one file per declared input (named after the input; the sweep's models as
# models/0, 1, 2 with models.json listing them) and an empty DROVER_OUTPUTS
# directory, and an output travels to later tasks by being copied.
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
MIN_ACCURACY=${MIN_ACCURACY:-0.8}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# run_task TASK [INPUT_NAME=PATH ...] -- COMMAND ...   (a directory PATH is copied whole)
run_task() {
  local task=$1 dir=$WORK/$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir/inputs" "$dir/outputs"
  while [[ $1 != -- ]]; do
    cp -r "${1#*=}" "$dir/inputs/${1%%=*}"
    shift
  done
  shift
  echo "== $task: $*"
  (
    cd "$HERE"
    DROVER_RUN_ID=local DROVER_TASK=$task DROVER_ATTEMPT=1 DROVER_CODE=$HERE \
      DROVER_INPUTS=$dir/inputs DROVER_OUTPUTS=$dir/outputs PYTHONDONTWRITEBYTECODE=1 "$@"
  )
}

TIMEFORMAT='== all steps: %Rs wall, %Us user + %Ss sys CPU'
time {
  run_task prepare -- "$PYTHON" prepare.py
  DATASET=$WORK/prepare/outputs/dataset.csv

  mkdir -p "$WORK/models"
  listing=()
  i=0
  for lr in 0.001 0.03 1.0; do
    run_task "train[lr=$lr]" dataset="$DATASET" -- \
      "$PYTHON" train.py --lr "$lr" --epochs "$EPOCHS"
    cp "$WORK/train[lr=$lr]/outputs/model.json" "$WORK/models/$i"
    listing+=("{\"index\": $i, \"matrix\": {\"lr\": \"$lr\"}, \"file\": \"$i\"}")
    i=$((i + 1))
  done
  (IFS=,; echo "[${listing[*]}]") >"$WORK/models.json"

  run_task evaluate models="$WORK/models" models.json="$WORK/models.json" \
    dataset="$DATASET" -- "$PYTHON" evaluate.py
  METRICS=$WORK/evaluate/outputs/metrics.json

  # The pipeline's `when:` on register, by hand.
  summary_inputs=(metrics="$METRICS")
  if "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["chosen"]["accuracy"] < float(sys.argv[2]))' \
    "$METRICS" "$MIN_ACCURACY"; then
    run_task register best_model="$WORK/evaluate/outputs/best_model.json" metrics="$METRICS" -- \
      "$PYTHON" register.py
    summary_inputs+=(registered="$WORK/register/outputs/registered.json")
  else
    echo "== register: skipped (accuracy below $MIN_ACCURACY)"
  fi
  DROVER_RUN_STATE=succeeded run_task summary "${summary_inputs[@]}" -- "$PYTHON" summary.py
}

echo "== artifacts: $WORK/evaluate/outputs/best_model.json"
echo "              $WORK/evaluate/outputs/metrics.json"
echo "              $WORK/summary/outputs/summary.json"
