#!/usr/bin/env bash
# Starts the release build of each service on its own (auth, admin, commands; SQLite, as the
# Kubernetes deployments run them but on one machine) and prints each process's resident memory
# once it is serving and idle, then again after `dev`-style first use (one owner accepting an
# invite and signing in through the CLI). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --release -p steward-server -p steward-cli
bin="$CARGO_TARGET_DIR/release"
data="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
auth=$(free_port) admin=$(free_port) commands=$(free_port)
# Each service's internal listener, which its peers dial.
auth_internal=$(free_port) admin_internal=$(free_port) commands_internal=$(free_port)

# Keys as dev makes them: run dev once on the data directory, then stop it.
dev_port=$(free_port)
"$bin/steward-server" dev --listen "127.0.0.1:$dev_port" --internal-listen 127.0.0.1:0 --data-dir "$data/dev" >"$data/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 100); do grep -q 'set-password?token=' "$data/dev.log" 2>/dev/null && break; sleep 0.1; done
kill "$dev"; wait "$dev" 2>/dev/null || true

token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
cat >"$data/steward.toml" <<EOF
[database]
data_dir = "$data/dev"

[auth]
console_url = "http://127.0.0.1"

[[auth.signing_keys]]
kid = "dev-1"
path = "$data/dev/keys/dev-signing-key.pem"

[[auth.mfa_keys]]
id = "dev-1"
path = "$data/dev/keys/dev-mfa-key"

[internal]
service_token = "$token"
auth_url = "http://127.0.0.1:$auth_internal"
admin_url = "http://127.0.0.1:$admin_internal"
commands_url = "http://127.0.0.1:$commands_internal"
EOF
for service in auth admin commands; do
  port=${!service} internal_var="${service}_internal"
  RUST_LOG=warn STEWARD_SERVER__LISTEN="127.0.0.1:$port" \
    STEWARD_SERVER__INTERNAL_LISTEN="127.0.0.1:${!internal_var}" \
    "$bin/steward-server" --config "$data/steward.toml" "$service" >"$data/$service.log" 2>&1 &
  pids+=($!)
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
report() {
  echo "$1"
  local i=0
  for service in auth admin commands; do
    echo "  $service: $(( $(rss "${pids[$i]}") / 1024 )) MiB"
    i=$((i + 1))
  done
}
sleep "${IDLE_RSS_SETTLE:-5}"
report "idle, after start:"

# First use: the owner dev created accepts its invite (its newest link) and signs in.
link=$(grep -o 'set-password?token=[A-Za-z0-9_-]*' "$data/dev.log" | head -1 | cut -d= -f2)
export STEWARD_SERVER="http://127.0.0.1:$auth" STEWARD_CONFIG_DIR="$data/cli"
password='correct horse battery staple 42!'
printf '%s\n%s\n' "$link" "$password" | "$bin/steward" accept-invite --password-stdin >/dev/null
echo "$password" | "$bin/steward" login --email owner@example.com --password-stdin >/dev/null
sleep "${IDLE_RSS_SETTLE:-5}"
report "idle, after one sign-in:"
