#!/usr/bin/env bash
# Installs drover-agent as a systemd service on this machine (typically a GPU
# node): the binary in /usr/local/bin, its settings in /etc/drover/agent.env,
# the unit in /etc/systemd/system, and the work directory; then enables and
# (re)starts the service. Safe to re-run: with the same arguments it changes
# nothing; with new ones it updates what differs and restarts the agent.
#
#   sudo ops/install-agent.sh --nats nats://10.0.0.2:4222 \
#     --artifacts s3://ml-artifacts/drover --label zone=eu --label tier=gold
#
# With its own NATS identity (`drover agent enroll ID --out DIR` on an admin
# machine) and NATS over TLS:
#
#   sudo ops/install-agent.sh --id gpu-1 --nats tls://nats.internal:4222 \
#     --nats-creds gpu-1.nkey --nats-ca nats-ca.pem --artifacts s3://ml-artifacts/drover
#
# Run with --help for every option.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unit_src="$repo/ops/systemd/drover-agent.service"

# Where things go, relative to --root.
bin_path=/usr/local/bin/drover-agent
env_dir=/etc/drover
env_path=$env_dir/agent.env
creds_path=$env_dir/nats.nkey
ca_path=$env_dir/nats-ca.pem
unit_path=/etc/systemd/system/drover-agent.service
service=drover-agent

# Same rules as a task's node_selector (services/api/src/spec/validate.rs),
# so every label can be selected on.
label_key_re='^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$'
label_value_re='^[A-Za-z0-9_.-]{0,63}$'
# shellcheck disable=SC2016 # backquotes are literal, as in the spec's messages
label_key_rule='use up to 63 letters, digits, `_`, `.`, `/` or `-`, starting with a letter or digit'
# shellcheck disable=SC2016
label_value_rule='use up to 63 letters, digits, `_`, `.` or `-`'

usage() {
  cat <<'EOF'
usage: ops/install-agent.sh --nats URL --artifacts URL [options]

Installs drover-agent and its systemd unit on this machine.

required:
  --nats URL          NATS server URL(s), comma-separated (nats://host:4222)
  --artifacts URL     object store for artifacts and logs
                      (file:///dir, s3://bucket/prefix, gs://..., az://...)
options:
  --label KEY=VALUE   a label tasks can select with node_selector; repeatable
  --executors LIST    comma-separated: docker, process (default: docker)
  --id ID             agent id (default: the host name, dots as dashes); with
                      --nats-creds, the id the credentials were enrolled for
  --nats-creds FILE   the agent's NATS credentials (`drover agent enroll ID --out DIR`
                      writes DIR/ID.nkey); installed as /etc/drover/nats.nkey, mode 0600
  --nats-ca FILE      CA certificate (PEM) of a NATS server over TLS (tls:// URLs);
                      installed as /etc/drover/nats-ca.pem
  --binary PATH       drover-agent to install (default: target/release/drover-agent
                      if present, else built with cargo build --release)
  --work-dir DIR      where tasks get their working directories
                      (default: /var/lib/drover/work)
  --root DIR          install under DIR instead of / and leave systemd alone
                      (for packaging and tests)
  --dry-run           print what would be done, change nothing
  -h, --help          this help
EOF
}

die() {
  echo "install-agent: error: $*" >&2
  exit 1
}

# Bad arguments: exit 2, with a pointer to --help.
usage_error() {
  echo "install-agent: error: $*" >&2
  echo "run ops/install-agent.sh --help for usage" >&2
  exit 2
}

warn() { echo "warning: $*" >&2; }

# --- arguments -----------------------------------------------------------------

nats=""
artifacts=""
labels=()
executors=docker
agent_id=""
binary=""
work_dir=/var/lib/drover/work
root=""
dry_run=0
nats_creds=""
nats_ca=""

while (($#)); do
  arg=$1
  shift
  value=""
  case $arg in
    --*=*)
      value=${arg#*=}
      arg=${arg%%=*}
      ;;
    --nats | --artifacts | --label | --executors | --id | --binary | --work-dir | --root | --nats-creds | --nats-ca)
      (($#)) || usage_error "$arg needs a value"
      value=$1
      shift
      ;;
  esac
  case $arg in
    --nats) nats=$value ;;
    --artifacts) artifacts=$value ;;
    --label) labels+=("$value") ;;
    --executors) executors=$value ;;
    --id) agent_id=$value ;;
    --binary) binary=$value ;;
    --work-dir) work_dir=$value ;;
    --root) root=$value ;;
    --nats-creds) nats_creds=$value ;;
    --nats-ca) nats_ca=$value ;;
    --dry-run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument \`$arg\`" ;;
  esac
done

# Values go into agent.env unquoted, which systemd and `set -a; . agent.env`
# both read literally only without whitespace, quotes or backslashes.
plain_value() { # name value
  case $2 in
    *[[:space:]\"\'\\]*) usage_error "$1: \`$2\` must not contain whitespace, quotes or backslashes" ;;
  esac
}

[ -n "$nats" ] || usage_error "missing --nats URL (e.g. --nats nats://10.0.0.2:4222)"
plain_value --nats "$nats"
IFS=, read -r -a nats_urls <<<"$nats"
for url in "${nats_urls[@]}"; do
  [[ $url =~ ^(nats|tls|ws|wss)://[^/]+ ]] ||
    usage_error "--nats: \`$url\` is not a NATS URL (use e.g. nats://10.0.0.2:4222; several comma-separated)"
done

[ -n "$artifacts" ] || usage_error "missing --artifacts URL (e.g. --artifacts s3://bucket/drover or file:///srv/drover)"
plain_value --artifacts "$artifacts"
[[ $artifacts =~ ^([a-z][a-z0-9+.-]*)://.+ ]] ||
  usage_error "--artifacts: \`$artifacts\` is not a URL (use e.g. file:///srv/drover, s3://bucket/prefix, gs://bucket, az://container)"
artifacts_scheme=${BASH_REMATCH[1]}
case $artifacts_scheme in
  file)
    [[ $artifacts == file:///* ]] ||
      usage_error "--artifacts: \`$artifacts\` needs an absolute path (file:///srv/drover)"
    ;;
  s3 | gs | az | azure | abfs | abfss | adl) ;;
  *) usage_error "--artifacts: unsupported scheme \`$artifacts_scheme://\` (use file://, s3://, gs:// or az://)" ;;
esac

# Labels: validated, one per key, sorted so their order on the command line
# does not matter to the env file.
declare -A label_map=()
for label in "${labels[@]}"; do
  [[ $label == *=* ]] || usage_error "--label \`$label\`: use KEY=VALUE (one label per --label)"
  key=${label%%=*}
  val=${label#*=}
  [[ $key =~ $label_key_re ]] || usage_error "--label \`$label\`: invalid key \`$key\` ($label_key_rule)"
  [[ $val =~ $label_value_re ]] || usage_error "--label \`$label\`: invalid value \`$val\` ($label_value_rule)"
  [ -z "${label_map[$key]+x}" ] || usage_error "--label: key \`$key\` given twice"
  label_map[$key]=$val
done
labels_csv=""
if ((${#label_map[@]})); then
  labels_csv=$(for key in "${!label_map[@]}"; do echo "$key=${label_map[$key]}"; done | LC_ALL=C sort | paste -sd, -)
fi

# Executors: known, de-duplicated, in the order given.
executor_list=()
IFS=, read -r -a requested <<<"$executors"
for executor in "${requested[@]}"; do
  case $executor in
    docker | process) ;;
    *) usage_error "--executors: unknown executor \`$executor\` (use docker and/or process, comma-separated)" ;;
  esac
  [[ " ${executor_list[*]} " == *" $executor "* ]] || executor_list+=("$executor")
done
((${#executor_list[@]})) || usage_error "--executors: give at least one of docker, process"
executors=$(IFS=,; echo "${executor_list[*]}")

# The id is a NATS subject token (agent/src/options.rs).
if [ -z "$agent_id" ]; then
  agent_id=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname 2>/dev/null || true)
  agent_id=${agent_id//[.*>]/-}
  [ -n "$agent_id" ] || usage_error "cannot read the host name: pass --id"
fi
[[ $agent_id =~ ^[^.*\>[:space:]\"\'\\]+$ ]] ||
  usage_error "--id: \`$agent_id\` must not contain \`.\`, \`*\`, \`>\`, whitespace, quotes or backslashes (it is a NATS subject token)"

[[ $work_dir == /* ]] || usage_error "--work-dir: \`$work_dir\` must be an absolute path"
plain_value --work-dir "$work_dir"
work_dir=${work_dir%/}
[ -n "$work_dir" ] || usage_error "--work-dir: must not be /"

if [ -n "$binary" ]; then
  { [ -f "$binary" ] && [ -x "$binary" ]; } || usage_error "--binary: \`$binary\` is not an executable file"
fi

if [ -n "$nats_creds" ]; then
  { [ -f "$nats_creds" ] && [ -r "$nats_creds" ]; } || usage_error "--nats-creds: \`$nats_creds\` is not a readable file"
  grep -qE '^(SU[A-Z2-7]+|-----BEGIN NATS USER JWT-----)' "$nats_creds" ||
    usage_error "--nats-creds: \`$nats_creds\` holds no NKey seed (a line starting with SU) nor NATS user JWT"
fi
if [ -n "$nats_ca" ]; then
  { [ -f "$nats_ca" ] && [ -r "$nats_ca" ]; } || usage_error "--nats-ca: \`$nats_ca\` is not a readable file"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$nats_ca" ||
    usage_error "--nats-ca: \`$nats_ca\` is not a PEM certificate"
fi

if [ -n "$root" ]; then
  [ -d "$root" ] || usage_error "--root: \`$root\` is not a directory"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
elif ((!dry_run)) && [ "$(id -u)" != 0 ]; then
  die "installing into / needs root: run with sudo (or use --dry-run, or --root DIR)"
fi
[ -f "$unit_src" ] || die "missing $unit_src (run the script from a Drover checkout)"

# --- reporting -------------------------------------------------------------------

changes=0
say() { echo "  $*"; }
# Records one change: done, or only described under --dry-run.
changed() {
  changes=$((changes + 1))
  if ((dry_run)); then say "would $1"; else say "$2"; fi
}

# --- host checks (read-only) -----------------------------------------------------

echo "== host"
gpu_note=""
detect_gpus() {
  local out version count
  if command -v nvidia-smi >/dev/null 2>&1; then
    if out=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1) && [ -n "$out" ]; then
      version=$(head -n1 <<<"$out" | tr -d '[:space:]')
      count=$(grep -c . <<<"$out")
      say "NVIDIA driver $version, $count GPU(s) (nvidia-smi)"
      return
    fi
    say "nvidia-smi is installed but failed: $(head -n1 <<<"$out")"
  fi
  if [ -r /proc/driver/nvidia/version ]; then
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar 5 ..."
    # or "... Open Kernel Module for x86_64  560.35.03  Release Build ...".
    version=$(grep -m1 '^NVRM version:' /proc/driver/nvidia/version |
      grep -oE '[[:space:]][0-9]+\.[0-9]+(\.[0-9]+)?([[:space:]]|$)' | head -n1 | tr -d '[:space:]' || true)
    count=0
    if [ -d /proc/driver/nvidia/gpus ]; then
      count=$(find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 | wc -l)
    fi
    say "NVIDIA driver ${version:-(unknown version)}, $count GPU(s) (/proc/driver/nvidia)"
    return
  fi
  say "no NVIDIA driver: the agent will report 0 GPUs"
  gpu_note=none
}
detect_gpus

has_executor() { [[ ",$executors," == *",$1,"* ]]; }
if has_executor docker; then
  if ! command -v docker >/dev/null 2>&1; then
    warn "docker is not installed: the docker executor will not work until it is (or pass --executors process)"
  elif ! docker_err=$(timeout 20 docker info 2>&1 >/dev/null); then
    warn "\`docker info\` failed, so the docker executor will not work until docker runs: $(tail -n1 <<<"$docker_err")"
  else
    say "docker is running"
    if [ -z "$gpu_note" ] && ! command -v nvidia-ctk >/dev/null 2>&1 && ! command -v nvidia-container-cli >/dev/null 2>&1; then
      warn "GPUs but no NVIDIA Container Toolkit (nvidia-ctk): docker tasks cannot use the GPUs until it is installed"
    fi
  fi
fi

# --- the binary ------------------------------------------------------------------

echo "== drover-agent"
if [ -z "$binary" ]; then
  binary=${CARGO_TARGET_DIR:-$repo/target}/release/drover-agent
  if [ ! -e "$binary" ]; then
    build=(cargo build --release --bin drover-agent)
    # gs:// and az:// stores are behind the agent's `cloud` feature (s3:// is built in).
    case "$artifacts_scheme" in gs | az | azure | abfs | abfss | adl) build+=(--features drover-agent/cloud) ;; esac
    if ((dry_run)); then
      say "would build it: (cd $repo && ${build[*]})"
      binary=""
    else
      command -v cargo >/dev/null 2>&1 ||
        die "no $binary and cargo is not on PATH: build it first (${build[*]}) or pass --binary"
      echo "building: ${build[*]}"
      (cd "$repo" && "${build[@]}") || die "build failed"
    fi
  fi
fi
if [ -n "$binary" ]; then
  { [ -f "$binary" ] && [ -x "$binary" ]; } || die "\`$binary\` is not an executable file"
fi

# Installs `src` (or the text on stdin when src is -) at $root$dst with `mode`,
# only when content or mode differ.
install_file() { # src dst mode what
  local src=$1 dst=$root$2 mode=$3 what=$4 tmp=""
  if [ "$src" = - ]; then
    tmp=$(umask 077 && mktemp)
    cat >"$tmp"
    src=$tmp
  fi
  if [ -z "$src" ]; then
    changed "install $2 (once built)" ""
  elif [ ! -e "$dst" ]; then
    ((dry_run)) || { install -d -m 0755 "$(dirname "$dst")" && install -m "$mode" "$src" "$dst"; }
    changed "install $2 ($what)" "installed $2 ($what)"
    if ((dry_run)) && [ "$what" = settings ]; then
      grep -v '^#' "$src" | sed 's/^/      /'
    fi
  elif ! cmp -s "$src" "$dst"; then
    changed "update $2" "updated $2"
    [ "$what" != "settings" ] || describe_env_changes "$dst" "$src"
    ((dry_run)) || install -m "$mode" "$src" "$dst"
  elif [ "$(stat -c %a "$dst")" != "${mode#0}" ]; then
    ((dry_run)) || chmod "$mode" "$dst"
    changed "chmod $mode $2" "chmod $mode $2"
  else
    say "unchanged $2"
  fi
  [ -z "$tmp" ] || rm -f "$tmp"
}

# Prints which settings an env file update changes.
describe_env_changes() { # old new
  local key line
  declare -A old=() new=()
  while IFS= read -r line; do [[ $line == DROVER_*=* ]] && old[${line%%=*}]=${line#*=}; done <"$1"
  while IFS= read -r line; do [[ $line == DROVER_*=* ]] && new[${line%%=*}]=${line#*=}; done <"$2"
  for key in $(printf '%s\n' "${!old[@]}" "${!new[@]}" | LC_ALL=C sort -u); do
    [ "${old[$key]-<unset>}" = "${new[$key]-<unset>}" ] ||
      say "  $key: ${old[$key]-<unset>} -> ${new[$key]-<unset>}"
  done
}

install_file "$binary" "$bin_path" 0755 "binary"

# --- settings, unit, work dir ------------------------------------------------------

echo "== configuration"
if [ ! -d "$root$env_dir" ]; then
  ((dry_run)) || install -d -m 0755 "$root$env_dir"
  changed "create $env_dir" "created $env_dir"
fi
# 0640: URLs may carry credentials (nats://user:pass@..., signed store URLs).
# Without --label there is no DROVER_LABELS line at all: an empty value is
# still a value to the agent's flag parser (clap), which may read it as one
# empty label.
install_file - "$env_path" 0640 "settings" <<EOF
# drover-agent settings, written by ops/install-agent.sh; re-run it to change
# them (or edit, then: systemctl restart drover-agent).
DROVER_NATS=$nats
DROVER_ARTIFACTS=$artifacts
${labels_csv:+DROVER_LABELS=$labels_csv
}${nats_creds:+DROVER_NATS_CREDS=$creds_path
}${nats_ca:+DROVER_NATS_CA=$ca_path
}DROVER_EXECUTORS=$executors
DROVER_AGENT_ID=$agent_id
DROVER_WORK_DIR=$work_dir
EOF
# The seed is the agent's secret: readable by root (the agent's user) only.
[ -z "$nats_creds" ] || install_file "$nats_creds" "$creds_path" 0600 "NATS credentials"
[ -z "$nats_ca" ] || install_file "$nats_ca" "$ca_path" 0644 "NATS CA"
install_file "$unit_src" "$unit_path" 0644 "systemd unit"

if [ ! -d "$root$work_dir" ]; then
  ((dry_run)) || install -d -m 0750 "$root$work_dir"
  changed "create $work_dir" "created $work_dir"
else
  say "unchanged $work_dir"
fi

# --- systemd -------------------------------------------------------------------------

echo "== service"
if [ -n "$root" ]; then
  say "left alone (--root): enable it on the target with systemctl enable --now $service"
elif [ ! -d /run/systemd/system ]; then
  say "systemd is not running here; start the agent yourself:"
  say "  set -a; . $env_path; set +a; $bin_path"
else
  if systemctl is-active --quiet "$service"; then active=1; else active=0; fi
  if systemctl is-enabled --quiet "$service" 2>/dev/null; then enabled=1; else enabled=0; fi
  if ((changes)); then
    if ((dry_run)); then
      say "would run systemctl daemon-reload && systemctl enable --now $service"
      ((!active)) || say "would restart $service (running with the old configuration)"
    else
      systemctl daemon-reload
      systemctl enable --now "$service"
      if ((active)); then
        systemctl restart "$service"
        say "restarted $service with the new configuration"
      else
        say "enabled and started $service"
      fi
    fi
  elif ((!active || !enabled)); then
    ((dry_run)) || systemctl enable --now "$service"
    changed "run systemctl enable --now $service (it is installed but not enabled and running)" \
      "enabled and started $service"
  else
    say "$service is enabled and running"
  fi
  # A bad setting shows up as an agent that exits at once and is restarted
  # every RestartSec; say so here rather than leave it to the journal.
  if ((changes && !dry_run)); then
    sleep 3
    if ! systemctl is-active --quiet "$service"; then
      warn "$service is not running ($(systemctl is-active "$service" || true)); its last log lines:"
      journalctl -u "$service" -n 10 --no-pager >&2 || true
    fi
  fi
fi

echo
if ((changes == 0)); then
  if ((dry_run)); then echo "nothing would change"; else echo "nothing changed: drover-agent is installed as asked"; fi
elif ((dry_run)); then
  echo "dry run: $changes change(s) would be made; nothing was changed"
else
  echo "done: $changes change(s)"
  [ -n "$root" ] || echo "logs: journalctl -u $service -f"
fi
