#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests and the integration
# tests (which start their own etcd, nats-server and Garage S3 server on free
# loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-deps.sh --with-garage
# Where install-deps.sh caches it: the S3 tests start this Garage.
export DROVER_GARAGE="${DROVER_GARAGE:-${XDG_CACHE_HOME:-$HOME/.cache}/drover/garage/bin/garage}"

# The docker executor's tests need a Docker engine: start one unless one
# answers (or is starting) already; a running engine is left alone.
echo "== docker engine"
docker_up() { timeout 5 docker info >/dev/null 2>&1; }
if ! docker_up; then
  if ! pgrep -x dockerd >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    dockerd_log="${DROVER_DOCKERD_LOG:-${TMPDIR:-/tmp}/drover-dockerd.log}"
    echo "starting dockerd (log: $dockerd_log)"
    # No bridge or iptables: the tests' containers use network `none`, and
    # this works inside CI containers without NET_ADMIN.
    $sudo dockerd --bridge=none --iptables=false >"$dockerd_log" 2>&1 &
  fi
  for _ in $(seq 60); do
    docker_up && break
    sleep 0.5
  done
  if ! docker_up; then
    echo "error: no Docker engine answers after 30s (if dockerd runs: can $(id -un) use" \
      "/var/run/docker.sock? add it to the \`docker\` group)" >&2
    [ -n "${dockerd_log:-}" ] && tail -n 20 "$dockerd_log" >&2
    exit 1
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== ops/install-agent.sh"
ops/tests/install-agent.test.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
