#!/usr/bin/env bash
# Quickstart: install what is missing, build, start a local Drover cluster
# (`drover dev`: etcd, nats-server, scheduler, one agent), run the example ML
# pipeline, show the chosen model and its metrics, then stop the cluster.
#   ops/quickstart.sh          run the example and stop everything
#   ops/quickstart.sh --keep   leave the cluster running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  *) echo "usage: ops/quickstart.sh [--keep]" >&2; exit 2 ;;
esac

ops/install-deps.sh

echo "== building drover"
cargo build --locked --bin drover
drover="$root/target/debug/drover"

data="$root/.drover"
mkdir -p "$data"
dev_pid=""
stop_dev() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
}

# Reuse a dev cluster that is already up (e.g. from an earlier --keep).
if [ -f "$data/dev.env" ] && (set -a; . "$data/dev.env"; "$drover" list >/dev/null 2>&1); then
  echo "== reusing the running dev cluster"
  keep=1
else
  rm -f "$data/dev.env"
  echo "== starting drover dev (log: .drover/dev.log)"
  "$drover" dev --data-dir "$data" >"$data/dev.log" 2>&1 &
  dev_pid=$!
  [ "$keep" = 1 ] || trap stop_dev EXIT
  for _ in $(seq 1 300); do
    [ -f "$data/dev.env" ] && break
    kill -0 "$dev_pid" 2>/dev/null || { cat "$data/dev.log" >&2; echo "error: drover dev exited" >&2; exit 1; }
    sleep 0.2
  done
  [ -f "$data/dev.env" ] || { cat "$data/dev.log" >&2; echo "error: drover dev did not come up" >&2; exit 1; }
fi
set -a; . "$data/dev.env"; set +a

echo "== submitting examples/ml/pipeline.yaml"
run=$("$drover" submit examples/ml/pipeline.yaml)
echo "run: $run"
status=0
"$drover" watch "$run" || status=$?

echo
"$drover" get "$run"
echo
echo "== evaluate's log"
"$drover" logs "$run" evaluate || true
echo "== register (runs only if the model is accurate enough) and summary (finally)"
"$drover" logs "$run" register || true
"$drover" logs "$run" summary || true

if [ "$status" = 0 ]; then
  echo "== chosen model and metrics (from the artifact store)"
  "$drover" get "$run" -o json | python3 -c '
import json, sys, os
run = json.load(sys.stdin)
ev = next(t for t in run["tasks"] if t["name"] == "evaluate")
outs = {o["name"]: o for o in ev["attempts"][-1]["outputs"]}
store = os.path.join(sys.argv[1], "artifacts")
metrics = json.load(open(os.path.join(store, outs["metrics"]["key"])))
chosen = metrics["chosen"]
print("chosen model:", json.dumps(chosen))
print("best_model:  ", outs["best_model"]["key"], "sha256", outs["best_model"]["sha256"][:16])
print("metrics.json:", json.dumps(metrics, indent=2)[:1500])
' "$data"
  echo "== lineage of the best model (dataset, code, learning rates, agents, times)"
  "$drover" lineage "$run" evaluate best_model || true
fi

if [ "$keep" = 1 ]; then
  echo
  echo "The cluster keeps running. In another shell:"
  echo "  export DROVER_SERVER=$DROVER_SERVER"
  echo "  $drover list"
  if [ -n "$dev_pid" ]; then
    echo "Stop it with: kill -INT $dev_pid"
  fi
fi
exit "$status"
