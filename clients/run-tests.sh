#!/usr/bin/env bash
# Tests the generated client SDKs end to end against the real steward-server binary.
#
#   clients/run-tests.sh [python] [typescript]     (default: both)
#
# STEWARD_SERVER_BIN names the binary (default: target/debug/steward-server of this repository;
# build it with `cargo build -p steward-server`). Installs what is missing, and only that: a Python
# venv in clients/python/.venv from requirements.txt, and `npm ci` in clients/typescript, each
# redone only when its pinned inputs change. Then regenerates both SDKs from proto/ (cheap, always
# fresh), builds the TypeScript one with tsc, and runs pytest and `node --test`. Exits non-zero if
# any suite fails; runs every requested suite either way.
set -euo pipefail
clients="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$clients/.." && pwd)"

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(python typescript)
for suite in "${suites[@]}"; do
  case "$suite" in python|typescript) ;; *) echo "run-tests.sh: unknown suite '$suite' (python, typescript)" >&2; exit 2 ;; esac
done

bin="${STEWARD_SERVER_BIN:-$repo/target/debug/steward-server}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "run-tests.sh: steward-server binary not found at $bin" >&2
  echo "  build it with 'cargo build -p steward-server' or set STEWARD_SERVER_BIN" >&2
  exit 1
fi
export STEWARD_SERVER_BIN="$bin"
for suite in "${suites[@]}"; do
  if [ "$suite" = typescript ] && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
    echo "run-tests.sh: node and npm are needed for the typescript suite (Node 20 or later)" >&2
    exit 1
  fi
done

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
step() { printf '\n== clients: %s\n' "$*"; }

# --- Python: venv with the pinned packages (also provides protoc for the TypeScript SDK) --------
py="$clients/python"
venv="$py/.venv"
python="${PYTHON:-python3}"
want="$(hash_of "$py/requirements.txt")-$("$python" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  step "installing Python packages into python/.venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$py/requirements.txt"
  echo "$want" > "$venv/.installed"
fi
PYTHON="$venv/bin/python" "$py/generate.sh"

failed=()
for suite in "${suites[@]}"; do
  case "$suite" in
    python)
      step "pytest (python SDK) against $bin"
      if ! (cd "$py" && "$venv/bin/python" -m pytest -p no:cacheprovider); then failed+=(python); fi
      ;;
    typescript)
      ts="$clients/typescript"
      want="$(hash_of "$ts/package.json" "$ts/package-lock.json")-$(node --version)"
      if [ ! -d "$ts/node_modules" ] || [ "$(cat "$ts/node_modules/.installed" 2>/dev/null)" != "$want" ]; then
        step "npm ci (typescript SDK)"
        (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" > "$ts/node_modules/.installed"
      fi
      PYTHON="$venv/bin/python" "$ts/generate.sh"
      step "tsc + node --test (typescript SDK) against $bin"
      if ! (cd "$ts" && rm -rf dist && npx --no-install tsc -p tsconfig.json && npm test --silent); then
        failed+=(typescript)
      fi
      ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "clients: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "clients: all SDK tests passed (${suites[*]})"
