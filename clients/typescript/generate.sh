#!/usr/bin/env bash
# Generates the TypeScript messages and service definitions from ../../proto into src/gen/ with
# ts-proto (a devDependency: run `npm ci` first).
#
# protoc itself comes from grpcio-tools, which the Python SDK pins (../python/requirements.txt):
# PYTHON (default: ../python/.venv/bin/python when it exists, else python3) must have it. The
# google.rpc error-detail protos (to decode rich errors) come from googleapis-common-protos, pinned
# there too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
out="$here/src/gen"
plugin="$here/node_modules/.bin/protoc-gen-ts_proto"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/../python/.venv/bin/python" ]; then PYTHON="$here/../python/.venv/bin/python"; else PYTHON=python3; fi
fi
[ -x "$plugin" ] || { echo "generate.sh: $plugin missing; run npm ci first" >&2; exit 1; }
googleapis="$("$PYTHON" -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(m.__file__))))')"

# Public services only: the *internal.proto files are service-to-service APIs, not part of the SDK.
mapfile -t protos < <(cd "$proto_root" && find steward -name '*.proto' ! -name 'internal.proto' | sort)

rm -rf "$out"
mkdir -p "$out"
"$PYTHON" -m grpc_tools.protoc -I "$proto_root" -I "$googleapis" \
  --plugin=protoc-gen-ts_proto="$plugin" --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=generic-definitions,env=node,esModuleInterop=true,useExactTypes=false \
  "${protos[@]/#/$proto_root/}" \
  "$googleapis/google/rpc/status.proto" "$googleapis/google/rpc/error_details.proto"
echo "generated $(find "$out" -name '*.ts' | wc -l) TypeScript modules into ${out#"$here"/}"
