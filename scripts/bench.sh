#!/usr/bin/env bash
# Measures a release build of `steward-server dev` with steward-bench (see docs/benchmarks.md):
# starts dev on a free port with a fresh data directory, signs the owner in, creates a service
# account (a role that reads administrators, checks access and runs commands) and a key, and runs
# every scenario. Arguments go to steward-bench (e.g. --seconds 10 --json bench.json, or
# --agents 1000 --idle 10 for the agent simulator; the server's pid is passed for its CPU).
# With BENCH_POSTGRES=postgres://user@host:port, dev runs on a fresh PostgreSQL database there
# (dropped afterwards) instead of SQLite. BENCH_PEOPLE (default 3) people sign in, so sign-in can
# saturate the password hashing (one account's throttle admits five attempts in flight).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --release -p steward-server -p steward-cli -p steward-bench
bin="$CARGO_TARGET_DIR/release"
data="$(mktemp -d)"
db=""
if [ -n "${BENCH_POSTGRES:-}" ]; then
  db="steward_bench_$$"
  psql "$BENCH_POSTGRES/postgres" -qc "CREATE DATABASE $db" >/dev/null
  export STEWARD_DATABASE__URL="$BENCH_POSTGRES/$db"
fi
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
  if [ -n "$db" ]; then psql "$BENCH_POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null || true; fi
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin/steward-server" dev --listen "127.0.0.1:$port" --internal-listen 127.0.0.1:0 --data-dir "$data/dev" >"$data/dev.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do grep -q 'set-password?token=' "$data/dev.log" 2>/dev/null && break; sleep 0.1; done
token=$(grep -o 'set-password?token=[A-Za-z0-9_-]*' "$data/dev.log" | head -1 | cut -d= -f2)
export STEWARD_SERVER="http://127.0.0.1:$port" STEWARD_CONFIG_DIR="$data/cli"
password='correct horse battery staple 42!'
printf '%s\n%s\n' "$token" "$password" | "$bin/steward" accept-invite --password-stdin >/dev/null
echo "$password" | "$bin/steward" login --email owner@example.com --password-stdin >/dev/null
"$bin/steward" roles create bench --name bench --permission administrators.read \
  --permission access.check --permission commands.read --permission commands.create \
  --permission commands.run --permission connect_keys.create \
  --permission administrators.create --permission runs.read --permission runs.cancel >/dev/null
account=$("$bin/steward" --output json service-accounts create --name bench --role bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
STEWARD_API_KEY=$("$bin/steward" --output json service-accounts keys create "$account" --expires-in 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
# More people for sign-in: each invited, then accepting the invite dev mails into its data dir.
emails=owner@example.com
for i in $(seq 2 "${BENCH_PEOPLE:-3}"); do
  email="person$i@example.com"
  "$bin/steward" admins create --email "$email" --role read-only >/dev/null
  for _ in $(seq 1 100); do
    invite=$(grep -il "^to:.*$email" "$data"/dev/mail/* 2>/dev/null | head -1 \
      | xargs -r grep -o 'token=[A-Za-z0-9_-]*' | head -1 | cut -d= -f2 || true)
    [ -n "$invite" ] && break
    sleep 0.1
  done
  printf '%s\n%s\n' "$invite" "$password" | "$bin/steward" accept-invite --password-stdin >/dev/null
  emails="$emails,$email"
done
export STEWARD_API_KEY STEWARD_EMAIL="$emails" STEWARD_PASSWORD="$password"
"$bin/steward-bench" --server-pid "$server" "$@"
echo
echo "dev RSS after the run: $(awk '/VmRSS/ {print $2, $3}' /proc/$server/status)"
