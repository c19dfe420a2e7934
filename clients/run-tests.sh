#!/usr/bin/env bash
# Tests the client SDKs end to end, as installed packages, against the real steward-server binary.
#
#   clients/run-tests.sh [python] [typescript]     (default: both)
#
# STEWARD_SERVER_BIN names the binary (default: target/debug/steward-server of this repository;
# build it with `cargo build -p steward-server`). Installs what is missing, from PyPI and npm only,
# redone only when its pinned inputs change: the Python dev venv clients/python/.venv
# (requirements-dev.txt: buf, grpcio-tools, mypy-protobuf, setuptools) and `npm ci` in
# clients/typescript. Then, per SDK:
# - python: generates (buf generate, ../buf.gen.yaml) and builds the wheel, installs it with the
#   pinned test requirements into a fresh venv (clients/python/.test-venv), and runs pytest there;
# - typescript: generates, compiles with tsc, `npm pack`s the package, installs the tarball into a
#   fresh throwaway project, and runs the compiled tests there with `node --test`.
# Exits non-zero if any suite fails; runs every requested suite either way.
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
step() { printf '\n== clients: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
pip_quiet=(--quiet --disable-pip-version-check --no-input)
python="${PYTHON:-python3}"
py="$clients/python"
ts="$clients/typescript"

# --- Python dev venv: code generation (buf, grpcio-tools, mypy-protobuf) and building ---------
venv="$py/.venv"
want="$(hash_of "$py/requirements-dev.txt")-$("$python" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  step "installing the Python dev packages into python/.venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install "${pip_quiet[@]}" -r "$py/requirements-dev.txt"
  echo "$want" > "$venv/.installed"
fi

python_suite() {
  step "python: generate, build the wheel"
  local dist="$py/dist" testvenv="$py/.test-venv"
  rm -rf "$dist" "$py/build"
  # setup.py runs clients/generate.sh python with this venv's generators.
  "$venv/bin/python" -m pip wheel "${pip_quiet[@]}" --no-deps --no-build-isolation -w "$dist" "$py"
  local wheel
  wheel="$(ls "$dist"/steward_client-*.whl)"
  step "python: install $(basename "$wheel") into a fresh venv"
  rm -rf "$testvenv"
  # Without a pip of its own: the dev venv's pip installs into it (quicker than ensurepip; pip
  # 22.3 or later, else the venv gets its own).
  local reqs=(-r "$py/requirements.txt" "$wheel")
  "$python" -m venv --without-pip "$testvenv"
  if ! "$venv/bin/python" -m pip --python "$testvenv/bin/python" install "${pip_quiet[@]}" --no-compile "${reqs[@]}"; then
    rm -rf "$testvenv"
    "$python" -m venv "$testvenv"
    "$testvenv/bin/python" -m pip install "${pip_quiet[@]}" "${reqs[@]}"
  fi
  step "python: pytest against $bin"
  # bin/pytest, not `python -m pytest`: the current directory must not shadow the installed package.
  (cd "$py" && "$testvenv/bin/pytest" -p no:cacheprovider)
}

typescript_suite() {
  local want
  want="$(hash_of "$ts/package.json" "$ts/package-lock.json")-$(node --version)"
  if [ ! -d "$ts/node_modules" ] || [ "$(cat "$ts/node_modules/.installed" 2>/dev/null)" != "$want" ]; then
    step "typescript: npm ci"
    (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$ts/node_modules/.installed"
  fi
  step "typescript: generate, tsc, npm pack"
  PYTHON="$venv/bin/python" "$clients/generate.sh" typescript
  (cd "$ts" && rm -rf dist && npx --no-install tsc -p tsconfig.json)
  local pack="$ts/.pack" project="$ts/.test-project"
  rm -rf "$pack" "$project"
  mkdir -p "$pack" "$project"
  (cd "$ts" && npm pack --silent --pack-destination "$pack" >/dev/null)
  local tarball
  tarball="$(ls "$pack"/*.tgz)"
  step "typescript: install $(basename "$tarball") into a fresh project"
  cat > "$project/package.json" <<'EOF'
{ "name": "steward-client-tests", "version": "0.0.0", "private": true }
EOF
  (cd "$project" && npm install --no-audit --no-fund --loglevel=error --no-package-lock "$tarball")
  cp -r "$ts/dist/test" "$project/test"
  step "typescript: node --test against $bin"
  (cd "$project" && node --test --test-concurrency=1 test/*.test.js)
}

failed=()
for suite in "${suites[@]}"; do
  # A subshell outside any condition, so that `set -e` holds inside it.
  set +e
  (set -e; "${suite}_suite")
  status=$?
  set -e
  [ $status -eq 0 ] || failed+=("$suite")
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "clients: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "clients: all SDK tests passed (${suites[*]})"
