#!/usr/bin/env bash
# shellcheck disable=SC2016 # expected messages hold literal backquotes
# Tests ops/install-agent.sh without touching the machine: every run installs
# under a temporary --root with a stand-in binary and a fake nvidia-smi, and
# uses the process executor so no docker daemon is needed.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
script=$repo/ops/install-agent.sh

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  if [ -n "${out:-}" ]; then
    echo "--- output:" >&2
    echo "$out" >&2
  fi
  exit 1
}
pass() { echo "ok: $*"; }

# Runs the installer; its combined output goes to $out, its status to $rc.
run() {
  rc=0
  out=$(PATH="$tmp/bin:$PATH" "$script" "$@" 2>&1) || rc=$?
}
expect_rc() { [ "$rc" = "$1" ] || fail "exit status $rc, expected $1"; }
expect_out() { grep -qF -- "$1" <<<"$out" || fail "output lacks: $1"; }
expect_no_out() { ! grep -qE -- "$1" <<<"$out" || fail "output matches: $1"; }
# Every path, mode and content checksum under a root.
snapshot() { (cd "$1" && find . -printf '%p %m %s %T@\n' | LC_ALL=C sort); }

bash -n "$script" || fail "bash -n $script"
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck "$script" "$0" || fail "shellcheck"
fi
pass "syntax"

mkdir -p "$tmp/bin"
printf '#!/bin/sh\necho drover-agent stand-in\n' >"$tmp/drover-agent"
printf '#!/bin/sh\necho drover-agent stand-in, v2\n' >"$tmp/drover-agent-v2"
# Two GPUs on driver 550.54.15, as `--query-gpu=driver_version` prints them.
printf '#!/bin/sh\nprintf "550.54.15\\n550.54.15\\n"\n' >"$tmp/bin/nvidia-smi"
chmod +x "$tmp/drover-agent" "$tmp/drover-agent-v2" "$tmp/bin/nvidia-smi"

root=$tmp/root
mkdir "$root"
common=(--nats nats://10.0.0.2:4222 --artifacts file:///srv/drover --executors process
  --id gpu-node-1 --root "$root")
args=("${common[@]}" --binary "$tmp/drover-agent")

# --- dry run on a fresh machine: says everything, does nothing ---------------------
run "${args[@]}" --label zone=eu --label gpu=a100 --dry-run
expect_rc 0
expect_out "NVIDIA driver 550.54.15, 2 GPU(s)"
expect_out "would install /usr/local/bin/drover-agent"
expect_out "would install /etc/drover/agent.env"
expect_out "would install /etc/systemd/system/drover-agent.service"
expect_out "would create /var/lib/drover/work"
expect_out "nothing was changed"
[ -z "$(ls -A "$root")" ] || fail "--dry-run wrote under --root: $(find "$root")"
pass "dry run on a fresh root changes nothing"

# --- first install -------------------------------------------------------------------
run "${args[@]}" --label zone=eu --label gpu=a100
expect_rc 0
expect_out "installed /usr/local/bin/drover-agent"
expect_out "installed /etc/drover/agent.env"
expect_out "installed /etc/systemd/system/drover-agent.service"
expect_out "created /var/lib/drover/work"
expect_out "left alone (--root)"
mode() { stat -c %a "$root$1"; }
[ "$(mode /usr/local/bin/drover-agent)" = 755 ] || fail "binary mode $(mode /usr/local/bin/drover-agent)"
[ "$(mode /etc/drover/agent.env)" = 640 ] || fail "env file mode $(mode /etc/drover/agent.env)"
[ "$(mode /etc/systemd/system/drover-agent.service)" = 644 ] || fail "unit mode"
[ -d "$root/var/lib/drover/work" ] || fail "no work dir"
cmp -s "$tmp/drover-agent" "$root/usr/local/bin/drover-agent" || fail "binary differs"
cmp -s ops/systemd/drover-agent.service "$root/etc/systemd/system/drover-agent.service" || fail "unit differs"
expected_env='DROVER_NATS=nats://10.0.0.2:4222
DROVER_ARTIFACTS=file:///srv/drover
DROVER_LABELS=gpu=a100,zone=eu
DROVER_EXECUTORS=process
DROVER_AGENT_ID=gpu-node-1
DROVER_WORK_DIR=/var/lib/drover/work'
actual_env=$(grep -v '^#' "$root/etc/drover/agent.env")
[ "$actual_env" = "$expected_env" ] || fail "agent.env is:
$actual_env"
unit=$root/etc/systemd/system/drover-agent.service
for line in EnvironmentFile=/etc/drover/agent.env ExecStart=/usr/local/bin/drover-agent \
  Restart=always RestartSec=2 KillMode=process LimitNOFILE=65536 \
  "After=network-online.target docker.service" Wants=network-online.target; do
  grep -qxF "$line" "$unit" || fail "unit lacks: $line"
done
pass "first install"

# --- the same again (labels in another order): nothing changes -------------------------
before=$(snapshot "$root")
run "${args[@]}" --label gpu=a100 --label zone=eu
expect_rc 0
expect_out "nothing changed"
expect_no_out "^  (installed|updated|created|chmod)"
[ "$(snapshot "$root")" = "$before" ] || fail "a second identical run touched files"
run "${args[@]}" --label gpu=a100 --label zone=eu --dry-run
expect_rc 0
expect_out "nothing would change"
pass "second run changes nothing"

# --- different arguments: the env file (and binary) are updated --------------------------
run "${args[@]}" --label zone=us --dry-run
expect_rc 0
expect_out "would update /etc/drover/agent.env"
expect_out "DROVER_LABELS: gpu=a100,zone=eu -> zone=us"
[ "$(snapshot "$root")" = "$before" ] || fail "--dry-run with new arguments touched files"

args2=("${common[@]}" --binary "$tmp/drover-agent-v2")
run "${args2[@]}" --label zone=us
expect_rc 0
expect_out "updated /etc/drover/agent.env"
expect_out "updated /usr/local/bin/drover-agent"
expect_out "unchanged /etc/systemd/system/drover-agent.service"
grep -qx 'DROVER_LABELS=zone=us' "$root/etc/drover/agent.env" || fail "labels not updated"
cmp -s "$tmp/drover-agent-v2" "$root/usr/local/bin/drover-agent" || fail "binary not updated"
[ "$(mode /etc/drover/agent.env)" = 640 ] || fail "env file mode after update"
run "${args2[@]}" --label zone=us
expect_out "nothing changed"
pass "new arguments update the install"

# --- no labels: no DROVER_LABELS line (an empty value would be one empty label) ---------
bare=$tmp/bare
mkdir "$bare"
run --nats nats://x:4222 --artifacts file:///d --executors process --binary "$tmp/drover-agent" --root "$bare"
expect_rc 0
! grep -q '^DROVER_LABELS' "$bare/etc/drover/agent.env" || fail "DROVER_LABELS written without --label"
grep -qx 'DROVER_EXECUTORS=process' "$bare/etc/drover/agent.env" || fail "no DROVER_EXECUTORS"
grep -q '^DROVER_AGENT_ID=[^.]\+$' "$bare/etc/drover/agent.env" || fail "default agent id is not a subject token"
pass "no labels"

# --- NATS identity and TLS: the seed installed 0600, the CA beside it, both in agent.env ---
secure=$tmp/secure
mkdir "$secure"
printf '# NATS NKey seed of drover agent gpu-1\nSUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU\n' >"$tmp/gpu-1.nkey"
printf -- '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' >"$tmp/ca.pem"
secure_args=(--nats tls://nats.internal:4222 --artifacts file:///d --executors process --id gpu-1
  --binary "$tmp/drover-agent" --root "$secure" --nats-creds "$tmp/gpu-1.nkey" --nats-ca "$tmp/ca.pem")
run "${secure_args[@]}"
expect_rc 0
expect_out "installed /etc/drover/nats.nkey (NATS credentials)"
[ "$(stat -c %a "$secure/etc/drover/nats.nkey")" = 600 ] || fail "seed mode $(stat -c %a "$secure/etc/drover/nats.nkey")"
cmp -s "$tmp/gpu-1.nkey" "$secure/etc/drover/nats.nkey" || fail "seed differs"
cmp -s "$tmp/ca.pem" "$secure/etc/drover/nats-ca.pem" || fail "CA differs"
grep -qx 'DROVER_NATS_CREDS=/etc/drover/nats.nkey' "$secure/etc/drover/agent.env" || fail "no DROVER_NATS_CREDS"
grep -qx 'DROVER_NATS_CA=/etc/drover/nats-ca.pem' "$secure/etc/drover/agent.env" || fail "no DROVER_NATS_CA"
run "${secure_args[@]}"
expect_out "nothing changed"
run "${secure_args[@]}" --nats-creds "$tmp/ca.pem"
expect_rc 2
expect_out "holds no NKey seed"
pass "NATS credentials and CA"

# --- argument errors: exit 2, a clear message, nothing written ---------------------------
empty=$tmp/empty
mkdir "$empty"
run --artifacts file:///srv/drover --root "$empty"
expect_rc 2
expect_out "missing --nats URL"
run --nats nats://x:4222 --root "$empty"
expect_rc 2
expect_out "missing --artifacts URL"
run --nats nats://x:4222 --artifacts file:///d --label zone --root "$empty"
expect_rc 2
expect_out '--label `zone`: use KEY=VALUE'
run --nats nats://x:4222 --artifacts file:///d --label 'zone=eu west' --root "$empty"
expect_rc 2
expect_out '--label `zone=eu west`: invalid value `eu west`'
run --nats nats://x:4222 --artifacts file:///d --label '-zone=eu' --root "$empty"
expect_rc 2
expect_out 'invalid key `-zone`'
run --nats nats://x:4222 --artifacts file:///d --executors gpu --root "$empty"
expect_rc 2
expect_out 'unknown executor `gpu`'
run --nats http://x --artifacts file:///d --root "$empty"
expect_rc 2
expect_out 'is not a NATS URL'
[ -z "$(ls -A "$empty")" ] || fail "a rejected run wrote files"
pass "argument errors"

echo "install-agent: all tests passed"
