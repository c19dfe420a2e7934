#!/usr/bin/env bash
# `cargo deny check`: advisories (RustSec), bans, licenses and sources, as configured in
# deny.toml. Run by CI.
#
# The advisory database is fetched from GitHub when it can be. Where GitHub cannot be reached
# (CI here reaches package registries only), the snapshot committed in .ci/advisory-db.tar.gz
# is used instead, with its own commit date, so cargo-deny's staleness limit still applies to
# it: refresh it (scripts/deny.sh --refresh-snapshot, on a machine with GitHub access) when CI
# reports the database is too old.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$version"; then
  cargo install --locked "cargo-deny@$version"
fi

export STEWARD_ADVISORY_DBS="${STEWARD_ADVISORY_DBS:-$HOME/.cache/steward-advisory-dbs}"
snapshot=.ci/advisory-db.tar.gz
# Where cargo-deny keeps https://github.com/rustsec/advisory-db under db-path.
db="$STEWARD_ADVISORY_DBS/advisory-db-3157b0e258782691"
# The upstream commit the snapshot was taken from, and its date.
snapshot_commit=bf5c0d245a92671908518d7e765914d437954ed6
snapshot_date=2026-08-21T08:28:40+02:00

if [ "${1:-}" = "--refresh-snapshot" ]; then
  cargo deny fetch db
  git -C "$db" archive --format=tar --prefix=advisory-db/ HEAD crates rust LICENSE.txt \
    README.md support.toml | gzip -9n > "$snapshot"
  echo "update snapshot_commit=$(git -C "$db" rev-parse HEAD)" \
    "snapshot_date=$(git -C "$db" show -s --format=%cI HEAD) in $0"
  exit 0
fi

offline=()
if ! timeout 60 cargo deny fetch db >/dev/null 2>&1; then
  echo "deny: GitHub unreachable; advisories from the committed snapshot of $snapshot_date ($snapshot_commit)"
  rm -rf "$db"
  mkdir -p "$db"
  tar -xzf "$snapshot" -C "$db" --strip-components=1
  git -C "$db" init -q
  git -C "$db" add -A
  GIT_AUTHOR_DATE="$snapshot_date" GIT_COMMITTER_DATE="$snapshot_date" \
    git -C "$db" -c user.name=snapshot -c user.email=snapshot@invalid \
    commit -qm "rustsec/advisory-db at $snapshot_commit"
  offline=(--offline)
fi
# Offline, cargo-deny reads `cargo metadata` from the local registry cache, which must then hold
# every crate of the lock file, for every target (a build fetches only the host's).
if [ ${#offline[@]} -gt 0 ]; then
  cargo fetch --locked --quiet
fi
cargo deny "${offline[@]}" --log-level error check advisories bans licenses sources
