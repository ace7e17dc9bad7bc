#!/usr/bin/env bash
# Installs what building and running Drover needs on Debian, only if missing:
# etcd, nats-server (JetStream), protoc, Python 3 for the example pipeline,
# Docker (the agent's default executor) and a static busybox (the docker
# tests build their image from it, no registry needed).
# Shared by ops/quickstart.sh and ops/test.sh.
#
# --with-garage (ops/test.sh): also the servers only tests start: Garage, the
# S3 server the tests of S3 stores start, built once with cargo into a cache
# directory (${XDG_CACHE_HOME:-$HOME/.cache}/drover/garage; about 11 minutes
# on 2 cores) and reused from there (the tests find it there, or at
# $DROVER_GARAGE); and Debian's prometheus-alertmanager, which the alert
# trigger's test sends alerts through (installed with its system service
# left stopped and disabled: the test starts its own on loopback).
set -euo pipefail

with_garage=false
for arg in "$@"; do
  case "$arg" in
    --with-garage) with_garage=true ;;
    *) echo "usage: $0 [--with-garage]" >&2; exit 2 ;;
  esac
done

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

if $with_garage; then
  garage_version=2.5.0
  garage_root="${XDG_CACHE_HOME:-$HOME/.cache}/drover/garage"
  garage="$garage_root/bin/garage"
  if ! { [ -x "$garage" ] && "$garage" --version 2>/dev/null | grep -qF "$garage_version"; }; then
    echo "building garage $garage_version into $garage_root (once; about 11 minutes on 2 cores)"
    cargo install garage --locked --version "$garage_version" --root "$garage_root" --quiet
  fi
  if ! command -v prometheus-alertmanager >/dev/null; then
    echo "installing prometheus-alertmanager (its system service stays stopped: the tests start their own)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    # policy-rc.d answering 101 keeps the package from starting its
    # service (Debian's default listens on every address).
    policy=/usr/sbin/policy-rc.d
    ours=false
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
      $sudo chmod 755 "$policy"
      ours=true
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
    if $ours; then $sudo rm -f "$policy"; fi
    if [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || true
    fi
  fi
fi
