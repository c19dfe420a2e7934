#!/usr/bin/env bash
# Generates the SDKs' code from ../proto with `buf generate` and the repository's buf.gen.yaml,
# which holds every language's plugins, all local:
#
#   clients/generate.sh [python] [typescript]      (default: both)
#
# Only the named SDKs' plugins run (buf.gen.yaml's plugin entries whose `out` is under
# clients/<sdk>/). Their plugins come from:
# - python: PYTHON's environment (default clients/python/.venv, as run-tests.sh makes it from
#   requirements-dev.txt): buf (buf-bin), grpcio-tools, mypy-protobuf;
# - typescript: clients/typescript/node_modules (`npm ci`): @bufbuild/protoc-gen-es.
# `buf` is the one next to PYTHON when there is one, else the one on PATH.
set -euo pipefail
clients="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$clients/.." && pwd)"
sdks=("$@")
[ ${#sdks[@]} -gt 0 ] || sdks=(python typescript)

path="$PATH"
for sdk in "${sdks[@]}"; do
  case "$sdk" in
    python)
      python="${PYTHON:-$clients/python/.venv/bin/python}"
      [ -x "$python" ] || python="$(command -v python3)"
      # The plugin scripts run on `python3` from PATH: this environment's.
      bindir="$(dirname "$python")"
      if [ ! -e "$bindir/python3" ]; then
        bindir="$(mktemp -d)"; ln -s "$python" "$bindir/python3"
      fi
      "$python" -c 'import grpc_tools, mypy_protobuf' 2>/dev/null || {
        echo "generate.sh: $python lacks grpcio-tools / mypy-protobuf (pip install -r clients/python/requirements-dev.txt)" >&2
        exit 1
      }
      path="$bindir:$path"
      ;;
    typescript)
      [ -x "$clients/typescript/node_modules/.bin/protoc-gen-es" ] || {
        echo "generate.sh: protoc-gen-es missing: run npm ci in clients/typescript first" >&2
        exit 1
      }
      path="$clients/typescript/node_modules/.bin:$path"
      ;;
    *) echo "generate.sh: unknown SDK '$sdk' (python, typescript)" >&2; exit 2 ;;
  esac
done
buf="$(PATH="$path" command -v buf)" || { echo "generate.sh: buf not found (pip install buf-bin)" >&2; exit 1; }

# buf.gen.yaml with only the plugin entries of the SDKs asked for.
template="$(awk -v want="$(printf '%s ' "${sdks[@]}")" '
  function flush() { if (item != "" && keep) printf "%s", item; item = ""; keep = 0 }
  /^plugins:/ { in_plugins = 1; print; next }
  !in_plugins { print; next }
  /^[^ #]/ { flush(); in_plugins = 0; print; next }
  /^  - / { flush() }
  /^ *#/ { next }
  { item = item $0 "\n" }
  /^    out: clients\// { split($2, p, "/"); if (index(" " want, " " p[2] " ")) keep = 1 }
  END { flush() }
' "$repo/buf.gen.yaml")"

cd "$repo"
PATH="$path" "$buf" generate --template "$template"
for sdk in "${sdks[@]}"; do
  case "$sdk" in
    python) echo "generated $(find clients/python/steward_client/gen -name '*_pb2*.py' | wc -l) Python modules into clients/python/steward_client/gen" ;;
    typescript) echo "generated $(find clients/typescript/src/gen -name '*.ts' | wc -l) TypeScript modules into clients/typescript/src/gen" ;;
  esac
done
