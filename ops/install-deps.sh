#!/usr/bin/env bash
# Installs what building and running Drover needs on Debian, only if missing:
# etcd, nats-server (JetStream), protoc, Python 3 for the example pipeline,
# Docker (the agent's default executor) and a static busybox (the docker
# tests build their image from it, no registry needed).
# Shared by ops/quickstart.sh and ops/test.sh.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v nats-server >/dev/null || need+=(nats-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# The well-known types (google/protobuf/*.proto) that etcd-client's protos
# import; --no-install-recommends below would leave them out.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v python3 >/dev/null || need+=(python3)
command -v cc >/dev/null || need+=(build-essential)
command -v dockerd >/dev/null || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)

if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
