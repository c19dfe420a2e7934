#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs from ../../proto into steward_client/gen/.
#
# Uses grpcio-tools (pinned in requirements.txt) from PYTHON (default: .venv/bin/python when it
# exists, else python3). The generated modules import each other as `steward.admin.v1...`; they are
# rewritten to `steward_client.gen.steward...` so that the SDK needs no sys.path tricks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
out="$here/steward_client/gen"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

# Public services only: the *internal.proto files are service-to-service APIs, not part of the SDK.
mapfile -t protos < <(cd "$proto_root" && find steward -name '*.proto' ! -name 'internal.proto' | sort)

rm -rf "$out"
mkdir -p "$out"
"$PYTHON" -m grpc_tools.protoc -I "$proto_root" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "${protos[@]/#/$proto_root/}"

# Make every generated directory a regular package and rewrite the absolute imports.
find "$out" -type d -exec touch {}/__init__.py \;
find "$out" -name '*.py' -o -name '*.pyi' | while read -r f; do
  sed -i -E 's/^(from|import) steward\./\1 steward_client.gen.steward./' "$f"
done
echo "generated $(find "$out" -name '*_pb2*.py' | wc -l) Python modules into ${out#"$here"/}"
