#!/usr/bin/env bash
# The soak (not a CI test; see docs/reliability.md): two replicas of every service on one fresh
# PostgreSQL database, a mixed load at 70% of the capacity it measures first, and 1,000
# simulated agents, for 10 minutes. It fails (exit 1) on any failed call, a lost agent
# assignment, resident memory more than 10% above its first sample after warm-up, or more file
# descriptors, sockets, threads, Tokio tasks or pool connections at the end than early on.
#
# Each replica is a release `steward-server dev` process (auth, admin and commands in one
# process, each calling its own peers) on the same PostgreSQL database and data directory (so
# the same signing key): two replicas of each service behind no load balancer, the load tool
# spreading calls and agents over both.
#
#   scripts/soak.sh                      # 600 s, 1,000 agents, warm-up 120 s
#   SOAK_SECONDS=120 SOAK_AGENTS=200 SOAK_WARMUP=40 scripts/soak.sh --json soak.json
#
# SOAK_POSTGRES (default postgres://postgres@127.0.0.1:5432) is the server to create the
# database on (dropped afterwards). Other arguments go to steward-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --release -p steward-server -p steward-cli -p steward-bench
bin="$CARGO_TARGET_DIR/release"
pg="${SOAK_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
data="$(mktemp -d)"
db="steward_soak_$$"
psql "$pg/postgres" -qc "CREATE DATABASE $db" >/dev/null
export STEWARD_DATABASE__URL="$pg/$db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$data"
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

servers=() metrics=()
for replica in 1 2; do
  port=$(free_port) metrics_port=$(free_port)
  STEWARD_TELEMETRY__METRICS_LISTEN="127.0.0.1:$metrics_port" RUST_LOG=warn \
    "$bin/steward-server" dev --listen "127.0.0.1:$port" --internal-listen 127.0.0.1:0 \
    --data-dir "$data/dev" >"$data/replica$replica.log" 2>&1 &
  pids+=("$!")
  servers+=("http://127.0.0.1:$port")
  metrics+=("127.0.0.1:$metrics_port")
  # The first replica creates the organization and mails the owner; the second finds it.
  if [ "$replica" = 1 ]; then
    for _ in $(seq 1 100); do grep -q 'set-password?token=' "$data/replica1.log" 2>/dev/null && break; sleep 0.1; done
  fi
done
for _ in $(seq 1 100); do
  grep -q 'listening on' "$data/replica2.log" 2>/dev/null && break
  sleep 0.1
done
token=$(grep -o 'set-password?token=[A-Za-z0-9_-]*' "$data/replica1.log" | head -1 | cut -d= -f2)
export STEWARD_SERVER="${servers[0]}" STEWARD_CONFIG_DIR="$data/cli"
password='correct horse battery staple 42!'
printf '%s\n%s\n' "$token" "$password" | "$bin/steward" accept-invite --password-stdin >/dev/null
echo "$password" | "$bin/steward" login --email owner@example.com --password-stdin >/dev/null
"$bin/steward" roles create soak --name soak --permission administrators.read \
  --permission administrators.create --permission administrators.delete \
  --permission access.check --permission commands.read --permission commands.create \
  --permission commands.run --permission connect_keys.create \
  --permission runs.read --permission runs.cancel >/dev/null
account=$("$bin/steward" --output json service-accounts create --name soak --role soak | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
STEWARD_API_KEY=$("$bin/steward" --output json service-accounts keys create "$account" --expires-in 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
export STEWARD_API_KEY

join() { local IFS=,; echo "$*"; }
"$bin/steward-bench" --soak "${SOAK_SECONDS:-600}" --warmup "${SOAK_WARMUP:-120}" \
  --agents "${SOAK_AGENTS:-1000}" --servers "$(join "${servers[@]}")" \
  --server-pids "$(join "${pids[@]}")" --metrics "$(join "${metrics[@]}")" "$@"
