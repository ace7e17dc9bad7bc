#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests and the integration
# tests (which start their own etcd and nats-server on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-deps.sh

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
